"""Search modes beyond magnitude IMP: N:M tickets, pruning at initialisation and early-bird levels, in the callback."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from tiny import TinyNet, effective_weights, loaders, trainer

from lightning_lottery import LotteryTicketCallback
from lightning_lottery.core.structure import NMStructure, kept_per_group, satisfies


class Starts(pl.Callback):
    def __init__(self, lottery: LotteryTicketCallback) -> None:
        self.lottery = lottery
        self.starts: dict[tuple[int, str], dict[str, torch.Tensor]] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.starts[(self.lottery.round, self.lottery.branch)] = effective_weights(pl_module)


def _fit(lottery: LotteryTicketCallback, model: pl.LightningModule | None = None, **kwargs: Any) -> Starts:
    starts = Starts(lottery)
    train, val = loaders(shuffle=True)
    torch.manual_seed(0)
    trainer(callbacks=[lottery, starts], **{"max_epochs": 1, **kwargs}).fit(model or TinyNet(), train, val)
    return starts


def test_two_four_tickets_keep_two_of_every_four_on_every_level_and_in_the_random_control():
    lottery = LotteryTicketCallback(
        rounds=2, amount=0.5, structure="2:4", controls=["random", "reinit"], monitor=None, save_tickets=False
    )
    starts = _fit(lottery)
    two_four = NMStructure(2, 4)
    for (level, branch), weights in starts.starts.items():
        if level == 0:
            continue
        for name in ("fc1.weight", "fc2.weight"):
            mask = weights[name] != 0
            if level == 1:
                assert bool((kept_per_group(mask, 4) == 2).all()), (level, branch, name)
            assert satisfies(mask, two_four), (level, branch, name)
    ticket, random = starts.starts[(1, "ticket")], starts.starts[(1, "random")]
    assert not torch.equal(ticket["fc1.weight"] != 0, random["fc1.weight"] != 0), "random positions"
    sparsity = {(r["round"], r["branch"]): r["sparsity"] for r in lottery.history}
    assert sparsity[(1, "ticket")] == pytest.approx(0.5) and sparsity[(2, "ticket")] == pytest.approx(0.75)
    assert lottery.settings()["structure"] == "2:4"


def test_tensors_that_cannot_be_n_m_are_refused_before_training():
    model = TinyNet(in_dim=6)  # fc1 has 6 inputs: no groups of 4
    train, val = loaders()
    lottery = LotteryTicketCallback(structure="2:4", save_tickets=False)
    with pytest.raises(ValueError, match=r"(?s)fc1.weight \(16, 6\).*exclude=\['fc1.weight'\]"):
        trainer(callbacks=[lottery]).fit(model, train, val)
    assert model.training_steps == 0


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow", "magnitude_init"])
def test_pruning_at_initialisation_trains_each_levels_mask_from_theta0(method):
    torch.manual_seed(0)
    model = TinyNet()
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    lottery = LotteryTicketCallback(
        rounds=2, amount=0.5, pruning=method, input_shape=(8,), controls=["random"], monitor=None, save_tickets=False
    )
    starts = _fit(lottery, model)
    for level, sparsity in ((1, 0.5), (2, 0.75)):
        start = starts.starts[(level, "ticket")]
        kept = {n: start[n] != 0 for n in ("fc1.weight", "fc2.weight")}
        total = sum(m.numel() for m in kept.values())
        assert sum(int(m.sum()) for m in kept.values()) == total - round(total * sparsity)
        for name, mask in kept.items():
            assert torch.equal(start[name][mask], theta0[name][mask]), "trained from θ₀"
    if method == "magnitude_init":  # the largest |θ₀| survive, globally
        start = starts.starts[(2, "ticket")]
        kept_values = torch.cat([theta0[n][start[n] != 0].abs() for n in ("fc1.weight", "fc2.weight")])
        pruned_values = torch.cat([theta0[n][start[n] == 0].abs() for n in ("fc1.weight", "fc2.weight")])
        assert float(kept_values.min()) >= float(pruned_values.max())


def test_pruning_at_initialisation_leaves_the_data_order_and_rng_alone():
    seen: list[torch.Tensor] = []

    class Batches(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, i):
            if i == 0:
                seen.append(batch[1].clone())

    lottery = LotteryTicketCallback(rounds=1, amount=0.5, pruning="snip", monitor=None, save_tickets=False)
    train, val = loaders(shuffle=True)
    torch.manual_seed(0)
    trainer(callbacks=[lottery, Batches()], max_epochs=1).fit(TinyNet(), train, val)
    assert len(seen) == 2 and torch.equal(seen[0], seen[1])


def test_pruning_at_initialisation_needs_rewinding_to_theta0():
    with pytest.raises(ValueError, match=r"pruning='snip'.*needs rewind='init'"):
        LotteryTicketCallback(pruning="snip", rewind=100)


def test_early_bird_ends_ticket_levels_once_the_next_mask_settles():
    lottery = LotteryTicketCallback(
        rounds=2,
        amount=0.5,
        early_bird={"every": 1, "patience": 2, "threshold": 0.5},
        controls=["random"],
        monitor=None,
        save_tickets=False,
    )
    _fit(lottery, max_epochs=4)  # 16 steps per level
    records = {(r["round"], r["branch"]): r for r in lottery.history}
    for key in [(0, "ticket"), (1, "ticket")]:
        record = records[key]
        assert record["early_bird_step"] is not None and record["steps"] < 16
        assert record["steps_saved"] == 16 - record["steps"]
        assert record["early_bird_step"] == record["end_step"]
    assert records[(2, "ticket")]["steps"] == 16, "the last level trains in full"
    assert records[(1, "random")]["steps"] == 16 and records[(1, "random")]["early_bird_step"] is None
    assert lottery.history[-1]["cumulative_steps"] == sum(r["steps"] for r in lottery.history)


def test_early_bird_settings_are_checked():
    with pytest.raises(ValueError, match="must be a mapping with 'every'"):
        LotteryTicketCallback(early_bird={"patience": 5})
    with pytest.raises(ValueError, match="patience"):
        LotteryTicketCallback(early_bird={"every": 10, "patience": 0})
