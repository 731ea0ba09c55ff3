"""LotteryTicketCallback: every round trains like a fresh fit of the rewound, masked model."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from tiny import Recorder, TinyNet, effective_weights, loaders, trainer
from torch.nn.utils import prune

from lightning_lottery import LotteryTicketCallback


def _reference_fit(theta0: dict, masks: dict, shuffle: bool, max_epochs: int, **hparams) -> TinyNet:
    """A fresh Trainer.fit of θ₀ with the masks applied by stock torch.nn.utils.prune."""
    model = TinyNet(**hparams)
    model.load_state_dict(theta0)
    for name, mask in masks.items():
        prune.custom_from_mask(getattr(model, name.split(".")[0]), "weight", mask)
    train, val = loaders(shuffle=shuffle)
    torch.manual_seed(1234)
    trainer(max_epochs=max_epochs).fit(model, train, val)
    return model


@pytest.mark.parametrize(
    ("hparams", "shuffle"),
    [
        (dict(optimizer="sgd", momentum=0.9, scheduler="step"), False),
        (dict(optimizer="adam", scheduler="per_step"), False),
        (dict(optimizer="sgd", momentum=0.9, scheduler="step", dropout=0.3), True),
    ],
    ids=["sgd-momentum-steplr", "adam-per-step-schedule", "shuffled-with-dropout"],
)
def test_round_one_equals_fresh_fit_of_masked_theta0(hparams, shuffle):
    torch.manual_seed(0)
    model = TinyNet(**hparams)
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    lottery = LotteryTicketCallback(rounds=1, amount=0.5, scope="layer", rewind="init", monitor=None)
    train, val = loaders(shuffle=shuffle)
    torch.manual_seed(1234)
    trainer(max_epochs=3, callbacks=[lottery]).fit(model, train, val)

    reference = _reference_fit(theta0, lottery.masks, shuffle, max_epochs=3, **hparams)
    ours, theirs = effective_weights(model), effective_weights(reference)
    for name in theirs:
        assert torch.allclose(ours[name], theirs[name], atol=1e-6), name


def test_rounds_see_the_same_data_order():
    recorder = Recorder()
    train, val = loaders(shuffle=True)
    torch.manual_seed(7)
    trainer(max_epochs=1, callbacks=[LotteryTicketCallback(rounds=2, monitor=None), recorder]).fit(
        TinyNet(), train, val
    )
    assert len(recorder.first_batches) == 3
    assert all(torch.equal(b, recorder.first_batches[0]) for b in recorder.first_batches)


def test_history_and_masks_after_fit():
    model = TinyNet()
    lottery = LotteryTicketCallback(rounds=3, amount=0.2, scope="global", monitor="val_loss")
    train, val = loaders()
    trainer(max_epochs=2, callbacks=[lottery]).fit(model, train, val)

    assert [r["round"] for r in lottery.history] == [0, 1, 2, 3]
    total = 8 * 16 + 16 * 3
    for record, expected in zip(lottery.history, (0.0, 0.2, 0.36, 0.488)):
        assert record["total"] == total
        assert record["total"] - record["remaining"] == round(total * expected)
        assert record["sparsity"] == pytest.approx(expected, abs=1 / total)
        assert set(record["tensor_sparsity"]) == {"fc1.weight", "fc2.weight"}
        assert record["best"] is not None and record["best_round_step"] in (4, 8)
        assert record["best_step"] == record["best_round_step"], "rewinding to θ₀ resumes round 0 at step 0"
        assert record["cumulative_steps"] == 8 * (record["round"] + 1)
        assert {"val_loss", "val_acc", "train_loss"} <= set(record["metrics"])
        assert record["steps"] == 8 and record["epochs"] == 2
    assert set(lottery.masks) == {"fc1.weight", "fc2.weight"}
    assert all(m.dtype == torch.bool for m in lottery.masks.values())
    assert prune.is_pruned(model)
    for name, mask in lottery.masks.items():
        module = getattr(model, name.split(".")[0])
        assert torch.equal(module.weight_mask.bool(), mask)
        assert bool((module.weight_orig[~mask] == 0).all()), "masked weights must stay exactly zero"


def test_masked_weights_stay_zero_during_training():
    checked_steps = []

    class Check(Recorder):
        def on_train_batch_end(self, trainer, pl_module, *args):
            if hasattr(pl_module.fc1, "weight_mask"):
                for module in (pl_module.fc1, pl_module.fc2):
                    assert bool((module.weight_orig[module.weight_mask == 0] == 0).all())
                    assert bool((module.weight[module.weight_mask == 0] == 0).all())
                checked_steps.append(trainer.global_step)

    check = Check()
    train, val = loaders()
    trainer(max_epochs=2, callbacks=[LotteryTicketCallback(rounds=2, amount=0.5, monitor=None), check]).fit(
        TinyNet(optimizer="adam"), train, val
    )
    assert checked_steps == list(range(1, 9)) * 2  # every step of rounds 1 and 2


def test_rewind_to_step_k_restores_weights_and_schedule():
    recorder = Recorder(at_step=5)
    train, val = loaders()
    lottery = LotteryTicketCallback(rounds=2, amount=0.3, rewind=5, monitor=None)
    trainer(max_epochs=3, callbacks=[lottery, recorder]).fit(TinyNet(scheduler="per_step"), train, val)

    theta_k = recorder.at_step_weights
    for start in recorder.starts[1:]:  # rounds 1 and 2 start from θ_k under their masks
        assert torch.equal(start["fc1.bias"], theta_k["fc1.bias"])
        for name in lottery.masks:
            kept = start[name] != 0
            assert torch.equal(start[name][kept], theta_k[name][kept])
            assert int(kept.sum()) < theta_k[name].numel()
    for name, mask in lottery.masks.items():
        assert torch.equal(recorder.starts[-1][name], theta_k[name] * mask)
    assert recorder.start_lrs[1] == recorder.at_step_lr == pytest.approx([0.1 / 6])
    assert recorder.start_lrs[0] == [0.1]


def test_rewind_to_an_epoch_restores_the_weights_at_its_end():
    recorder = Recorder(at_step=4)  # 4 batches per epoch: the end of epoch 1 is step 4
    train, val = loaders()
    lottery = LotteryTicketCallback(rounds=1, amount=0.3, rewind="epoch:1", monitor=None)
    trainer(max_epochs=3, callbacks=[lottery, recorder]).fit(TinyNet(scheduler="step"), train, val)
    for name, mask in lottery.masks.items():
        assert torch.equal(recorder.starts[1][name], recorder.at_step_weights[name] * mask)
    assert recorder.start_lrs[1] == [0.05]  # StepLR halved the LR at the end of epoch 1
    assert lottery.ticket().metadata["rewind_step"] == 4


def test_random_pruning_is_seeded_and_keeps_counts():
    def masks(pruning: str, seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        lottery = LotteryTicketCallback(
            rounds=2, amount=0.3, scope="global", pruning=pruning, seed=seed, monitor=None, save_tickets=False
        )
        train, val = loaders()
        trainer(max_epochs=1, callbacks=[lottery]).fit(TinyNet(), train, val)
        return lottery.masks

    magnitude, rand_a, rand_b, rand_c = (
        masks("magnitude", 0),
        masks("random", 1),
        masks("random", 1),
        masks("random", 2),
    )
    assert all(torch.equal(rand_a[n], rand_b[n]) for n in rand_a)
    assert any(not torch.equal(rand_a[n], rand_c[n]) for n in rand_a)
    assert sum(int(m.sum()) for m in rand_a.values()) == sum(int(m.sum()) for m in magnitude.values())


def test_early_stopping_ends_only_the_round():
    stopper = EarlyStopping(monitor="val_loss", patience=0, min_delta=10.0)  # stops at the 2nd validation
    lottery = LotteryTicketCallback(rounds=2, monitor="val_loss")
    train, val = loaders()
    trainer(max_epochs=6, callbacks=[lottery, stopper]).fit(TinyNet(), train, val)
    assert [r["round"] for r in lottery.history] == [0, 1, 2]
    assert [r["epochs"] for r in lottery.history] == [2, 2, 2]


def test_checkpoint_top_k_restarts_each_round(tmp_path: Path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=1)
    lottery = LotteryTicketCallback(rounds=2, monitor="val_loss")
    train, val = loaders()
    trainer(max_epochs=2, enable_checkpointing=True, callbacks=[lottery, checkpoint]).fit(TinyNet(), train, val)
    assert len(list(tmp_path.glob("*.ckpt"))) == 3  # each round's best survives its successors


def test_logger_gets_round_metrics_and_per_round_curves(tmp_path: Path):
    logger = CSVLogger(tmp_path, name="run")
    lottery = LotteryTicketCallback(rounds=2, monitor="val_loss")
    train, val = loaders()
    trainer(max_epochs=2, logger=logger, log_every_n_steps=1, callbacks=[lottery]).fit(TinyNet(), train, val)
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0])
    assert {"round", "sparsity", "remaining_weights", "round_step"} <= columns
    assert {"round_00/val_loss", "round_01/val_loss", "round_02/val_loss"} <= columns
    rounds = [float(r["round"]) for r in rows if r["round"]]
    assert rounds == [0.0, 1.0, 2.0]
    remaining = [float(r["remaining_weights"]) for r in rows if r["remaining_weights"]]
    assert remaining == pytest.approx([100.0, 80.0, 64.0], abs=0.6)
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(steps), "logger steps must stay monotonic across rounds"


def test_progress_bar_shows_round_and_remaining_weights():
    seen = []

    class Peek(Recorder):
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen.append(trainer.progress_bar_callback.get_metrics(trainer, pl_module))

    train, val = loaders()
    trainer(
        max_epochs=1,
        enable_progress_bar=True,
        callbacks=[LotteryTicketCallback(rounds=1, monitor=None), Peek()],
    ).fit(TinyNet(), train, val)
    assert seen[0]["round"] == "0/1" and seen[0]["weights"] == "100.0%"
    assert seen[-1]["round"] == "1/1" and seen[-1]["weights"] == "80.1%"


def test_each_round_is_a_full_relaunch_of_the_fit_loop():
    recorder = Recorder()
    seen_steps = []

    class Steps(Recorder):
        def on_train_batch_start(self, trainer, pl_module, batch, i):
            seen_steps.append((trainer.current_epoch, trainer.global_step))

    train, val = loaders()
    trainer(max_epochs=2, callbacks=[LotteryTicketCallback(rounds=2, monitor=None), recorder, Steps()]).fit(
        TinyNet(), train, val
    )
    assert recorder.train_starts == 3
    per_round = [(e, s) for e in range(2) for s in range(e * 4, e * 4 + 4)]
    assert seen_steps == per_round * 3


def test_rounds_zero_trains_dense_and_snapshots():
    model = TinyNet()
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    lottery = LotteryTicketCallback(rounds=0, monitor="val_loss")
    train, val = loaders()
    trainer(max_epochs=1, callbacks=[lottery]).fit(model, train, val)
    assert len(lottery.history) == 1 and lottery.history[0]["sparsity"] == 0.0
    assert not prune.is_pruned(model)
    assert all(torch.equal(lottery.rewind_weights[k], v) for k, v in theta0.items())


def test_reusing_the_callback_for_another_fit_is_refused():
    model = TinyNet()
    lottery = LotteryTicketCallback(rounds=1, monitor=None)
    train, val = loaders()
    trainer(max_epochs=1, callbacks=[lottery]).fit(model, train, val)
    history = list(lottery.history)
    with pytest.raises(RuntimeError, match=r"already ran a search.*Create a new LotteryTicketCallback"):
        trainer(max_epochs=1, callbacks=[lottery]).fit(TinyNet(), train, val)
    assert lottery.history == history, "the first search's results are untouched"


def test_stock_multihead_attention_out_proj_is_trained_and_masked():
    """nn.MultiheadAttention reads out_proj.weight without calling out_proj, so out_proj's hook never runs."""

    class Attention(TinyNet):
        def __init__(self) -> None:
            super().__init__()
            self.attn = torch.nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = x.unsqueeze(1)
            return super().forward(self.attn(h, h, h, need_weights=False)[0].squeeze(1))

    recorder = Recorder()
    model = Attention()
    lottery = LotteryTicketCallback(rounds=1, amount=0.5, scope="layer", monitor=None)
    train, val = loaders()
    trainer(max_epochs=2, callbacks=[lottery, recorder]).fit(model, train, val)
    out_proj = model.attn.out_proj
    mask = lottery.masks["attn.out_proj.weight"]
    start = lottery.rewind_weights["attn.out_proj.weight"] * mask
    assert not torch.allclose(out_proj.weight_orig, start), "out_proj was not trained in the pruned round"
    assert bool((out_proj.weight_orig[~mask] == 0).all())
    x = torch.randn(4, 8).unsqueeze(1)
    reference = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(model.attn.in_proj_weight)
        reference.in_proj_bias.copy_(model.attn.in_proj_bias)
        reference.out_proj.weight.copy_(out_proj.weight_orig * out_proj.weight_mask)
        reference.out_proj.bias.copy_(out_proj.bias)
        assert torch.allclose(model.attn(x, x, x)[0], reference(x, x, x)[0], atol=1e-6)


class _SaveOnce(pl.Callback):
    """Writes one checkpoint at the end of epoch 0 of level 1 (as ModelCheckpoint would there)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_epoch_end(self, fit: pl.Trainer, pl_module: pl.LightningModule) -> None:
        lottery = next(cb for cb in fit.callbacks if isinstance(cb, LotteryTicketCallback))
        if lottery.round == 1 and fit.current_epoch == 0 and not self.path.exists():
            fit.save_checkpoint(self.path)


def _as_version_2(checkpoint: dict) -> dict:
    """The callback state in the layout of version 2: the progress's fields at the top level, no auto rewind."""
    state = dict(checkpoint["callbacks"]["LotteryTicketCallback"])
    state.update(state.pop("progress"), version=2)
    del state["auto_rewind"]
    checkpoint["callbacks"]["LotteryTicketCallback"] = state
    return checkpoint


def test_a_checkpoint_of_the_previous_state_layout_resumes_to_the_same_search(tmp_path: Path):
    train, val = loaders()
    settings = dict(rounds=2, amount=0.3, controls=["reinit"])
    whole = LotteryTicketCallback(**settings)
    saved = tmp_path / "mid.ckpt"
    trainer(callbacks=[whole, _SaveOnce(saved)]).fit(TinyNet(), train, val)
    old = tmp_path / "v2.ckpt"
    torch.save(_as_version_2(torch.load(saved, weights_only=True)), old)

    resumed = LotteryTicketCallback(**settings)
    trainer(callbacks=[resumed]).fit(TinyNet(), train, val, ckpt_path=str(old))
    assert [(r["round"], r["branch"]) for r in resumed.history] == [(r["round"], r["branch"]) for r in whole.history]
    for ours, theirs in zip(resumed.history, whole.history):
        assert ours["metrics"] == pytest.approx(theirs["metrics"], rel=1e-5)
    assert all(torch.equal(resumed.masks[n], whole.masks[n]) for n in whole.masks)


def test_a_checkpoint_mid_search_holds_stock_adams_state_as_prune_training_has_it(tmp_path: Path):
    class SaveInRoundOne(pl.Callback):
        def __init__(self, lottery: LotteryTicketCallback) -> None:
            self.lottery, self.live = lottery, None

        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
            if self.lottery.round == 1 and self.live is None:
                opt = trainer.optimizers[0]
                self.index = [id(p) for p in opt.param_groups[0]["params"]].index(id(pl_module.fc1.weight_orig))
                masked = pl_module.fc1.weight_mask == 0
                self.masked = masked.clone()
                state = opt.state[pl_module.fc1.weight_orig]["exp_avg_sq"]
                self.live, self.kept = state[masked].clone(), state[~masked].clone()
                trainer.save_checkpoint(tmp_path / "mid.ckpt")

    lottery = LotteryTicketCallback(rounds=1, amount=0.5, monitor=None, save_tickets=False)
    saver = SaveInRoundOne(lottery)
    train, val = loaders()
    trainer(max_epochs=1, callbacks=[lottery, saver]).fit(TinyNet(optimizer="adam"), train, val)
    assert saver.live is not None and bool((saver.live > 0).all()), "while training: no zeros to take sqrt of"
    saved = torch.load(tmp_path / "mid.ckpt", weights_only=True)["optimizer_states"][0]["state"][saver.index]
    assert bool((saved["exp_avg_sq"][saver.masked] == 0).all()), "in the checkpoint: zeros, as prune training has"
    assert torch.equal(saved["exp_avg_sq"][~saver.masked], saver.kept)
