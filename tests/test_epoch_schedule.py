"""ImageClassifier(schedule_unit="epoch"): warmup and milestones in epochs, converted to optimizer steps from the
trainer's epoch length at configure_optimizers time (ImageNet recipes: 5-epoch warmup, drops at 30/60/80)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest

from lightning_lottery import LotteryTicketCallback
from lightning_lottery.data.vision import SyntheticImageDataModule
from lightning_lottery.modules.classifier import ImageClassifier, steps_per_epoch


def make_trainer(**kwargs: Any) -> pl.Trainer:
    defaults = {
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "limit_val_batches": 0,
    }
    return pl.Trainer(**{**defaults, **kwargs})


def data() -> SyntheticImageDataModule:
    """128 training images in batches of 32: 4 optimizer steps per epoch."""
    return SyntheticImageDataModule(num_train=128, val_size=16, num_test=16, batch_size=32, eval_batch_size=32)


def epoch_model(warmup: int = 1, milestones: tuple[int, ...] = (2,)) -> ImageClassifier:
    return ImageClassifier(
        "lenet300", optimizer="sgd", lr=0.1, warmup_steps=warmup, milestones=milestones, schedule_unit="epoch"
    )


class RecordLR(pl.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        self.lrs.append(optimizer.param_groups[0]["lr"])


# 1 epoch (4 steps) of warmup, x0.1 at epoch 2 (step 8).
EXPECTED = [0.0, 0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.01]


def test_epochs_become_steps_of_this_trainer() -> None:
    record = RecordLR()
    make_trainer(max_epochs=3, callbacks=[record]).fit(epoch_model(), data())
    assert record.lrs == pytest.approx(EXPECTED, rel=1e-12)


def test_max_steps_cutting_training_short_does_not_shrink_the_epoch() -> None:
    # estimated_stepping_batches / max_epochs would say 2 steps per epoch here; an epoch is still 4 steps.
    record = RecordLR()
    make_trainer(max_epochs=3, max_steps=6, callbacks=[record]).fit(epoch_model(), data())
    assert record.lrs == pytest.approx(EXPECTED[:6], rel=1e-12)


class Probe(pl.Callback):
    """At the start of training: the epoch length, and two configure_optimizers results."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.per_epoch = steps_per_epoch(trainer)
        self.first, self.second = pl_module.configure_optimizers(), pl_module.configure_optimizers()


@pytest.mark.parametrize(
    ("kwargs", "per_epoch"), [({}, 4), ({"accumulate_grad_batches": 3}, 2), ({"limit_train_batches": 3}, 3)]
)
def test_epoch_length_counts_optimizer_steps(kwargs: dict[str, Any], per_epoch: int) -> None:
    probe = Probe()
    make_trainer(max_epochs=1, max_steps=1, callbacks=[probe], **kwargs).fit(epoch_model(), data())
    assert probe.per_epoch == per_epoch


def test_configure_optimizers_is_pure_with_epochs() -> None:
    probe = Probe()
    make_trainer(max_epochs=2, max_steps=1, callbacks=[probe]).fit(epoch_model(warmup=1, milestones=(1,)), data())
    first, second = probe.first, probe.second
    assert first["optimizer"] is not second["optimizer"]
    assert first["lr_scheduler"]["scheduler"] is not second["lr_scheduler"]["scheduler"]
    schedules = [c["lr_scheduler"]["scheduler"].lr_lambdas[0] for c in (first, second)]
    assert [(s.warmup_steps, s.milestones) for s in schedules] == [(4, [4]), (4, [4])]
    assert second["optimizer"].param_groups[0]["lr"] == 0.0  # a fresh schedule, at its step 0


def test_epochs_need_max_epochs() -> None:
    with pytest.raises(ValueError, match=r"schedule_unit='epoch' needs the Trainer's max_epochs"):
        make_trainer(max_steps=4).fit(epoch_model(), data())


def test_steps_remain_the_default_and_bad_units_fail_at_construction() -> None:
    record = RecordLR()
    model = ImageClassifier("lenet300", optimizer="sgd", lr=0.1, warmup_steps=1, milestones=[2])
    assert model.hparams.schedule_unit == "step"
    make_trainer(max_steps=3, callbacks=[record]).fit(model, data())
    assert record.lrs == pytest.approx([0.0, 0.1, 0.01], rel=1e-12)
    with pytest.raises(ValueError, match="schedule_unit"):
        ImageClassifier(schedule_unit="epochs")
    with pytest.raises(ValueError, match="milestones"):
        ImageClassifier(milestones=[60, 30], schedule_unit="epoch")


def test_late_rewinding_resumes_the_epoch_schedule_in_every_round() -> None:
    record = RecordLR()
    lottery = LotteryTicketCallback(rounds=1, amount=0.2, rewind="epoch:1", monitor=None, save_tickets=False)
    make_trainer(max_epochs=3, callbacks=[lottery, record]).fit(epoch_model(), data())
    assert record.lrs[:12] == pytest.approx(EXPECTED, rel=1e-12)  # round 0
    # Round 1 starts from the rewind point, the end of epoch 1: past the warmup, before the drop at epoch 2.
    assert record.lrs[12:16] == pytest.approx([0.1] * 4, rel=1e-12)
    assert record.lrs[16] == pytest.approx(0.01, rel=1e-12)
