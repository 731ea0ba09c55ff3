"""Tickets: safe files, applied to fresh models (with a new head), random-pruning control, export."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from safetensors.torch import save_file
from tiny import TinyNet, loaders, trainer
from torch import nn
from torch.nn.utils import prune

from lightning_lottery import LotteryTicketCallback, Ticket, TicketError, export_pruned


@pytest.fixture(scope="module")
def searched() -> tuple[LotteryTicketCallback, TinyNet]:
    model = TinyNet()
    lottery = LotteryTicketCallback(rounds=2, amount=0.5, monitor="val_loss", save_tickets=False)
    train, val = loaders()
    trainer(max_epochs=1, callbacks=[lottery]).fit(model, train, val)
    return lottery, model


def test_ticket_holds_masks_rewind_weights_and_metadata(searched):
    lottery = searched[0]
    ticket = lottery.ticket()
    assert ticket.round == 2
    assert set(ticket.masks) == {"fc1.weight", "fc2.weight"}
    assert set(ticket.weights) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert all(torch.equal(ticket.weights[k], v) for k, v in lottery.rewind_weights.items())
    assert ticket.sparsity == pytest.approx(0.75, abs=1 / ticket.total)
    meta = ticket.metadata
    assert meta["model_class"].endswith("TinyNet")
    assert meta["shapes"] == {"fc1.weight": [16, 8], "fc2.weight": [3, 16]}
    assert meta["settings"]["amount"] == 0.5 and meta["rewind_kind"] == "init"
    assert {"torch", "lightning", "lightning_lottery"} <= set(meta)
    assert meta["record"]["round"] == 2


def test_save_load_round_trip(searched, tmp_path: Path):
    ticket = searched[0].ticket()
    path = ticket.save(tmp_path / "t.safetensors")
    loaded = Ticket.load(path)
    assert loaded.round == ticket.round and loaded.metadata == json.loads(json.dumps(ticket.metadata, default=str))
    assert all(
        torch.equal(loaded.masks[n], ticket.masks[n]) and loaded.masks[n].dtype == torch.bool for n in ticket.masks
    )
    assert all(torch.equal(loaded.weights[n], ticket.weights[n]) for n in ticket.weights)
    assert list(tmp_path.iterdir()) == [path], "no temporary files left behind"


def test_a_pickle_is_refused_without_being_unpickled(tmp_path: Path):
    class Boom:
        def __reduce__(self):
            return (Path(tmp_path / "exploited").touch, ())

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"masks": Boom()}))
    with pytest.raises(TicketError, match="not a ticket file"):
        Ticket.load(path)
    torch.save({"masks": {}}, tmp_path / "torch.pt")
    with pytest.raises(TicketError, match="not a ticket file"):
        Ticket.load(tmp_path / "torch.pt")
    assert not (tmp_path / "exploited").exists()


def test_truncated_and_foreign_files_are_refused(searched, tmp_path: Path):
    path = searched[0].ticket().save(tmp_path / "t.safetensors")
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 3, 5):
        (tmp_path / "cut.safetensors").write_bytes(data[:cut])
        with pytest.raises(TicketError, match=r"corrupt.* truncated"):
            Ticket.load(tmp_path / "cut.safetensors")
    save_file({"x": torch.zeros(2)}, tmp_path / "foreign.safetensors")
    with pytest.raises(TicketError, match="not a lightning_lottery ticket"):
        Ticket.load(tmp_path / "foreign.safetensors")
    with pytest.raises(FileNotFoundError):
        Ticket.load(tmp_path / "missing.safetensors")


def test_apply_installs_masks_and_rewind_weights_on_a_fresh_model(searched):
    ticket = searched[0].ticket()
    fresh = TinyNet()
    ticket.apply(fresh)
    assert prune.is_pruned(fresh)
    for name, mask in ticket.masks.items():
        module = getattr(fresh, name.split(".")[0])
        assert torch.equal(module.weight_mask.bool(), mask)
        assert torch.equal(module.weight, ticket.weights[name] * mask)
    assert torch.equal(fresh.fc1.bias, ticket.weights["fc1.bias"])


def test_apply_with_a_new_head_keeps_it_fresh_and_dense(searched):
    ticket = searched[0].ticket()
    target = TinyNet(classes=5)  # another dataset: 5 classes, so fc2 differs
    head_before = target.fc2.weight.detach().clone()
    ticket.apply(target, reinit=["fc2.*"])
    assert not hasattr(target.fc2, "weight_mask")
    assert torch.equal(target.fc2.weight, head_before)
    assert torch.equal(target.fc1.weight_mask.bool(), ticket.masks["fc1.weight"])
    assert torch.equal(target.fc1.weight, ticket.weights["fc1.weight"] * ticket.masks["fc1.weight"])


def test_apply_lists_every_mismatch(searched):
    ticket = searched[0].ticket()
    other = nn.Sequential(nn.Linear(8, 32), nn.Linear(32, 3))
    with pytest.raises(TicketError) as err:
        ticket.apply(other)
    text = str(err.value)
    assert "found on" in text and "TinyNet" in text
    for expected in ("fc1.weight: in the ticket, not in the model", "0.weight: in the model, not in the ticket"):
        assert expected in text
    with pytest.raises(TicketError, match=r"fc1.weight: ticket \(16, 8\) vs model \(32, 8\)"):
        ticket.apply(TinyNet(hidden=32), reinit=["fc2.*"])
    with pytest.raises(ValueError, match=r"`reinit`: \['head.\*'\] match no parameter"):
        ticket.apply(TinyNet(), reinit=["head.*"])


def test_random_like_keeps_per_tensor_counts(searched):
    ticket = searched[0].ticket()
    control = ticket.random_like(seed=3)
    again = ticket.random_like(seed=3)
    for name, mask in ticket.masks.items():
        assert int(control.masks[name].sum()) == int(mask.sum())
        assert torch.equal(control.masks[name], again.masks[name])
    assert any(not torch.equal(control.masks[n], ticket.masks[n]) for n in ticket.masks)
    assert control.metadata["control"] == "random_pruning"


def test_export_makes_pruning_permanent_and_counts(searched, tmp_path: Path):
    ticket = searched[0].ticket()
    model = ticket.apply(TinyNet())
    summary = export_pruned(model, tmp_path / "model.safetensors")
    assert not prune.is_pruned(model)
    assert summary.dense_parameters == 8 * 16 + 16 + 16 * 3 + 3
    assert summary.nonzero_parameters == ticket.remaining + 16 + 3
    assert summary.compression > 1
    assert (tmp_path / "model.safetensors").is_file()


def test_callback_writes_round_artifacts(tmp_path: Path):
    lottery = LotteryTicketCallback(rounds=2, monitor="val_loss", dirpath=tmp_path / "lottery")
    train, val = loaders()
    trainer(max_epochs=1, callbacks=[lottery]).fit(TinyNet(), train, val)
    for r in range(3):
        folder = tmp_path / "lottery" / f"round_{r:02d}" / "ticket"
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["record"]["round"] == r
        assert summary["record"]["sparsity"] == pytest.approx(lottery.history[r]["sparsity"])
        assert set(summary["record"]["tensor_sparsity"]) == {"fc1.weight", "fc2.weight"}
        assert Ticket.load(folder / "ticket.safetensors").round == r
    history = json.loads((tmp_path / "lottery" / "history.json").read_text())
    assert [r["round"] for r in history["history"]] == [0, 1, 2]
    assert history["finished"] is True and history["stopped"] is None
    assert not list((tmp_path / "lottery").rglob("*.tmp"))


def test_pruned_checkpoint_loads_into_a_fresh_model(tmp_path: Path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    lottery = LotteryTicketCallback(rounds=1, amount=0.5, monitor=None, save_tickets=False)
    model = TinyNet()
    train, val = loaders()
    trainer(max_epochs=1, enable_checkpointing=True, callbacks=[lottery, checkpoint]).fit(model, train, val)
    loaded = TinyNet.load_from_checkpoint(tmp_path / "last.ckpt")
    assert not prune.is_pruned(loaded)
    mask = lottery.masks["fc1.weight"]
    assert torch.equal(loaded.fc1.weight, model.fc1.weight_orig * model.fc1.weight_mask)
    assert bool((loaded.fc1.weight[~mask] == 0).all())
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert "masks" in state["callbacks"][lottery.state_key]["progress"]


def test_round_curves_and_listeners(tmp_path: Path):
    import csv

    heard = []

    class Listener(pl.Callback):
        def on_lottery_round_end(self, trainer, pl_module, record, folder):
            heard.append((record["round"], record["branch"], folder.relative_to(tmp_path).as_posix()))
            if record["round"] > 0:  # the module still holds the branch's masks
                for name, mask in lottery.masks.items():
                    assert torch.equal(pl_module.get_submodule(name[: -len(".weight")]).weight_mask.bool(), mask)

    lottery = LotteryTicketCallback(rounds=1, monitor="val_loss", dirpath=tmp_path, controls=["random"])
    train, val = loaders()
    trainer(max_epochs=3, callbacks=[lottery, Listener()]).fit(TinyNet(), train, val)
    assert heard == [
        (0, "ticket", "round_00/ticket"),
        (1, "ticket", "round_01/ticket"),
        (1, "random", "round_01/random"),
    ]
    with open(tmp_path / "round_01" / "ticket" / "curve.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["round_step"]) for r in rows] == [4, 8, 12]
    assert {"val_loss", "val_acc", "epoch"} <= set(rows[0])


def test_artifacts_go_to_an_fsspec_url():
    import fsspec

    url = "memory://lottery-artifacts/run"
    lottery = LotteryTicketCallback(rounds=1, controls=["random"], monitor="val_loss", dirpath=url)
    train, val = loaders()
    trainer(max_epochs=1, callbacks=[lottery]).fit(TinyNet(), train, val)
    fs = fsspec.filesystem("memory")
    written = sorted(p.removeprefix("/lottery-artifacts/run/") for p in fs.find("/lottery-artifacts/run"))
    assert written == [
        "history.json",
        *[
            f"round_0{r}/{b}/{f}"
            for r, b in [(0, "ticket"), (1, "random"), (1, "ticket")]
            for f in ("curve.csv", "summary.json", "ticket.safetensors")
        ],
    ]
    with fs.open("/lottery-artifacts/run/history.json") as f:
        assert [r["branch"] for r in json.load(f)["history"]] == ["ticket", "ticket", "random"]
