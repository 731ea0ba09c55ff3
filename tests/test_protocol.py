"""The protocol as the papers define it: levels resume round 0 at the rewind point; controls are branches on the
ticket's own mask; fine-tuning and learning-rate rewinding."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from tiny import TinyBase, effective_weights, loaders, trainer
from torch import nn

from lightning_lottery import LotteryTicketCallback

BATCHES_PER_EPOCH = 4  # 64 samples, batch 16
BUDGET = 12  # optimizer steps per level: 3 epochs


class Scheduled(TinyBase):
    """Two linear layers, SGD with momentum and one of several LR schedules; dropout draws from the global RNG."""

    def __init__(self, schedule: str = "onecycle", dropout: float = 0.2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.drop = nn.Dropout(dropout)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        if self.hparams.schedule == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=BUDGET)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        if self.hparams.schedule == "step_per_step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


class StepLog(pl.Callback):
    """Per (level, branch): the learning rate, the batch and the global RNG at every optimizer step."""

    def __init__(self, lottery: LotteryTicketCallback) -> None:
        self.lottery = lottery
        self.steps: dict[tuple[int, str], dict[int, tuple[float, torch.Tensor, torch.Tensor]]] = {}
        self.starts: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
        self.first_step: dict[tuple[int, str], int] = {}

    def _key(self) -> tuple[int, str]:
        return (self.lottery.round, self.lottery.branch)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.starts[self._key()] = effective_weights(pl_module)
        self.first_step[self._key()] = trainer.global_step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        entry = (lr, batch[0].clone(), torch.get_rng_state())
        self.steps.setdefault(self._key(), {})[trainer.global_step] = entry


def _search(
    rewind: Any,
    schedule: str = "onecycle",
    shuffle: bool = True,
    controls: tuple[str, ...] = (),
    rounds: int = 2,
    seed: int = 3,
) -> tuple[LotteryTicketCallback, StepLog, Scheduled]:
    torch.manual_seed(0)
    model = Scheduled(schedule)
    lottery = LotteryTicketCallback(
        rounds=rounds,
        amount=0.5,
        scope="layer",
        rewind=rewind,
        controls=controls,
        monitor=None,
        seed=seed,
        save_tickets=False,
    )
    log = StepLog(lottery)
    train, val = loaders(shuffle=shuffle)
    torch.manual_seed(1234)
    trainer(max_steps=BUDGET, max_epochs=None, callbacks=[lottery, log]).fit(model, train, val)
    return lottery, log, model


@pytest.mark.parametrize("schedule", ["onecycle", "step_per_step", "epoch"])
@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffled", "in-order"])
@pytest.mark.parametrize(("rewind", "k"), [(5, 5), (8, 8), ("epoch:1", 4)], ids=["mid-epoch", "epoch-end", "epoch:1"])
def test_late_rewinding_resumes_round_0_at_k(schedule, shuffle, rewind, k):
    lottery, log, _ = _search(rewind, schedule, shuffle, controls=("random",))
    round0 = log.steps[(0, "ticket")]
    assert sorted(round0) == list(range(BUDGET))
    for key in [(1, "ticket"), (1, "random"), (2, "ticket"), (2, "random")]:
        steps = log.steps[key]
        assert sorted(steps) == list(range(k, BUDGET)), f"{key} trains T-k steps, global step k..T"
        for step, (lr, batch, rng) in steps.items():
            lr0, batch0, rng0 = round0[step]
            assert lr == pytest.approx(lr0, abs=1e-12), f"{key} step {step}: LR of round 0 at that step"
            assert torch.equal(batch, batch0), f"{key} step {step}: round 0's batch at that step"
            assert torch.equal(rng, rng0), f"{key} step {step}: round 0's RNG (dropout) at that step"
    for record in lottery.history[1:]:
        assert (record["start_step"], record["end_step"], record["steps"]) == (k, BUDGET, BUDGET - k)


def test_rewind_to_k_starts_from_theta_k_under_the_mask():
    lottery, log, _ = _search(5, "onecycle")
    theta_k = lottery.theta_k
    for key in [(1, "ticket"), (2, "ticket")]:
        start = log.starts[key]
        assert torch.equal(start["fc1.bias"], theta_k["fc1.bias"])
    for name, mask in lottery.masks.items():
        assert torch.equal(log.starts[(2, "ticket")][name], theta_k[name] * mask)
    assert lottery.ticket().metadata["rewind_step"] == 5


def test_init_resumes_round_0_at_step_0():
    _, log, _ = _search("init", "onecycle")
    round0 = log.steps[(0, "ticket")]
    for step, (lr, batch, rng) in log.steps[(2, "ticket")].items():
        assert lr == pytest.approx(round0[step][0]) and torch.equal(batch, round0[step][1])
        assert torch.equal(rng, round0[step][2])


def test_finetune_holds_round_0s_final_learning_rate():
    lottery, log, _ = _search("finetune", "step_per_step")
    round0 = log.steps[(0, "ticket")]
    final_lr = lottery._final_schedule["param_groups"][0][0]["lr"]
    assert final_lr == pytest.approx(0.1 * 0.5**4) and final_lr < round0[0][0]
    for key in [(1, "ticket"), (2, "ticket")]:
        assert sorted(log.steps[key]) == list(range(BUDGET))
        assert {lr for lr, _, _ in log.steps[key].values()} == {final_lr}


def test_lr_rewind_replays_round_0s_schedule_from_the_trained_weights():
    lottery, log, _ = _search("lr_rewind", "onecycle")
    round0 = log.steps[(0, "ticket")]
    for step, (lr, batch, _) in log.steps[(1, "ticket")].items():
        assert lr == pytest.approx(round0[step][0]) and torch.equal(batch, round0[step][1])
    assert sorted(log.steps[(1, "ticket")]) == list(range(BUDGET))
    history = {(r["round"], r["branch"]): r for r in lottery.history}
    assert history[(1, "ticket")]["start_step"] == 0


class EndWeights(pl.Callback):
    def __init__(self) -> None:
        self.ends: list[dict[str, torch.Tensor]] = []

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.ends.append(effective_weights(pl_module))


@pytest.mark.parametrize("rewind", ["finetune", "lr_rewind"])
def test_finetune_and_lr_rewind_start_from_the_trained_pruned_weights(rewind):
    torch.manual_seed(0)
    lottery = LotteryTicketCallback(rounds=1, amount=0.5, rewind=rewind, monitor=None, save_tickets=False)
    log, end = StepLog(lottery), EndWeights()
    train, val = loaders()
    trainer(max_epochs=1, callbacks=[lottery, log, end]).fit(Scheduled("epoch"), train, val)
    start = log.starts[(1, "ticket")]
    assert torch.equal(start["fc1.bias"], end.ends[0]["fc1.bias"])
    for name, mask in lottery.masks.items():
        assert torch.equal(start[name], end.ends[0][name] * mask)


@pytest.mark.parametrize(
    ("word", "replacement"),
    [
        ("none", "finetune"),
        ("reinit", "controls=['reinit']"),
        ("reshuffle", "controls=['reshuffle']"),
        ("signed_constant", "controls=['signed_constant']"),
    ],
)
def test_old_rewind_words_are_refused_naming_the_replacement(word, replacement):
    with pytest.raises(ValueError, match=replacement.replace("[", r"\[").replace("]", r"\]")):
        LotteryTicketCallback(rewind=word)


def test_controls_train_on_the_tickets_mask_of_their_level():
    lottery, log, _ = _search("init", "epoch", controls=("reinit", "random"), rounds=2)
    theta0 = log.starts[(0, "ticket")]
    history = {(r["round"], r["branch"]): r for r in lottery.history}
    assert list(history) == [
        (0, "ticket"),
        (1, "ticket"),
        (1, "reinit"),
        (1, "random"),
        (2, "ticket"),
        (2, "reinit"),
        (2, "random"),
    ]
    for level in (1, 2):
        ticket = log.starts[(level, "ticket")]
        reinit, random = log.starts[(level, "reinit")], log.starts[(level, "random")]
        for name in ("fc1.weight", "fc2.weight"):
            mask = ticket[name] != 0
            assert torch.equal(reinit[name] != 0, mask), "reinit keeps the ticket's mask"
            assert not torch.allclose(reinit[name][mask], theta0[name][mask]), "with new weights"
            bound = 1 / theta0[name].shape[1] ** 0.5  # nn.Linear's own init: U(-1/sqrt(in), 1/sqrt(in))
            assert float(reinit[name].abs().max()) <= bound
            kept = random[name] != 0
            assert int(kept.sum()) == int(mask.sum()), "random keeps the ticket's per-tensor counts"
            assert not torch.equal(kept, mask), "at other positions"
            assert torch.equal(random[name][kept], theta0[name][kept]), "survivors at θ₀"
        assert history[(level, "reinit")]["remaining"] == history[(level, "ticket")]["remaining"]
    assert not torch.equal(log.starts[(1, "reinit")]["fc1.bias"], log.starts[(2, "reinit")]["fc1.bias"]), (
        "a new draw per level"
    )


def test_controls_never_change_the_ticket_line():
    with_controls, log_a, _ = _search(5, "onecycle", controls=("reinit", "random", "reshuffle"), rounds=3)
    without, log_b, _ = _search(5, "onecycle", controls=(), rounds=3)
    ours = [r for r in with_controls.history if r["branch"] == "ticket"]
    assert [r["remaining"] for r in ours] == [r["remaining"] for r in without.history]
    assert [r["final_metrics"] for r in ours] == [r["final_metrics"] for r in without.history]
    for level in range(4):
        a, b = log_a.starts[(level, "ticket")], log_b.starts[(level, "ticket")]
        assert all(torch.equal(a[n], b[n]) for n in a)
