"""ImageClassifier: training, rebuilding from hparams, logged metric names, exact epoch metrics, LR schedule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from lightning.pytorch.loggers import Logger

from lightning_lottery.data.vision import SyntheticImageDataModule
from lightning_lottery.modules.classifier import ImageClassifier, WarmupMultiStep

TRAIN_METRICS = {"train_loss", "train_loss_step", "train_loss_epoch"}


def make_trainer(**kwargs: Any) -> pl.Trainer:
    defaults = {
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
    }
    return pl.Trainer(**{**defaults, **kwargs})


def small_data(**kwargs: Any) -> SyntheticImageDataModule:
    args = {"num_train": 128, "val_size": 70, "num_test": 50, "batch_size": 32, "eval_batch_size": 32, "signal": 0.2}
    return SyntheticImageDataModule(**{**args, **kwargs})


def test_training_reduces_the_loss() -> None:
    torch.manual_seed(0)
    dm = small_data()
    dm.setup()
    model = ImageClassifier("lenet300", lr=1e-3)
    x, y = dm.val_set.__getitems__(list(range(70)))
    before = torch.nn.functional.cross_entropy(model(x), y).item()
    make_trainer(max_steps=12, limit_val_batches=0).fit(model, dm)
    after = torch.nn.functional.cross_entropy(model(x), y).item()
    assert after < 0.7 * before


def test_hparams_rebuild_the_architecture_with_new_weights() -> None:
    model = ImageClassifier("conv2", arch_kwargs={"num_classes": 5, "dropout": 0.5}, optimizer="sgd", lr=0.01)
    twin = type(model)(**model.hparams)
    ours, theirs = dict(model.named_parameters()), dict(twin.named_parameters())
    assert list(ours) == list(theirs)
    assert all(ours[n].shape == theirs[n].shape for n in ours)
    assert not torch.equal(ours["model.fc1.weight"], theirs["model.fc1.weight"])
    assert twin.hparams == model.hparams
    assert model.output_parameter == "model.fc3.weight" and ours[model.output_parameter].shape[0] == 5


def test_load_from_checkpoint_needs_no_extra_arguments(tmp_path: Path) -> None:
    model = ImageClassifier("lenet300", arch_kwargs={"image_size": 8}, init="kaiming_normal")
    trainer = make_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(model, small_data(image_shape=(1, 8, 8)))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = ImageClassifier.load_from_checkpoint(tmp_path / "m.ckpt")
    assert torch.equal(loaded.model.fc1.weight, model.model.fc1.weight)


def test_logged_metric_names_with_test_evaluation() -> None:
    trainer = make_trainer(max_epochs=1)
    trainer.fit(ImageClassifier("lenet300"), small_data())
    evaluated = {"train_acc", "val_loss", "val_acc", "test_loss", "test_acc"}
    assert set(trainer.callback_metrics) == TRAIN_METRICS | evaluated


def test_logged_metric_names_without_test_evaluation() -> None:
    model, dm = ImageClassifier("lenet300"), small_data(eval_test=False)
    trainer = make_trainer(max_epochs=1)
    trainer.fit(model, dm)
    assert set(trainer.callback_metrics) == TRAIN_METRICS | {"train_acc", "val_loss", "val_acc"}
    (results,) = trainer.test(model, dm, verbose=False)
    assert set(results) == {"test_loss", "test_acc"}


class _RecordLosses(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[tuple[int, float, int]] = []  # (epoch, loss, batch size) per step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        self.losses.append((trainer.current_epoch, outputs["loss"].item(), len(batch[1])))

    @staticmethod
    def mean(rows: list[tuple[int, float, int]]) -> float:
        return sum(loss * n for _, loss, n in rows) / sum(n for _, _, n in rows)

    def epoch_mean(self, epoch: int) -> float:
        return self.mean([row for row in self.losses if row[0] == epoch])


class _CaptureLogger(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "capture"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append((step, dict(metrics)))


@pytest.mark.filterwarnings("ignore:The number of training batches .* is smaller than the logging interval")
@pytest.mark.parametrize(("every", "logged_steps"), [(1, [1, 2, 3, 4, 5, 6, 7, 8]), (3, [3, 6]), (50, [])])
def test_train_loss_is_exact_per_epoch_and_windowed_per_logging_step(every: int, logged_steps: list[int]) -> None:
    # 100 examples in batches of 32: 4 steps per epoch (the last of 4 examples), 2 epochs.
    record, logger = _RecordLosses(), _CaptureLogger()
    trainer = make_trainer(
        max_epochs=2, limit_val_batches=0, log_every_n_steps=every, logger=logger, callbacks=[record]
    )
    trainer.fit(ImageClassifier("lenet300"), small_data(num_train=100))
    epochs = [m["train_loss_epoch"] for _, m in logger.rows if "train_loss_epoch" in m]
    assert epochs == pytest.approx([record.epoch_mean(0), record.epoch_mean(1)], rel=1e-5)
    # Step values: the mean over the steps since the previous hand-over (logging steps and epoch ends).
    handovers = sorted({*logged_steps, 4, 8})
    windows = {end: record.losses[start:end] for start, end in zip([0, *handovers], handovers)}
    steps = {step + 1: m["train_loss_step"] for step, m in logger.rows if "train_loss_step" in m}
    assert list(steps) == logged_steps
    assert list(steps.values()) == pytest.approx([record.mean(windows[s]) for s in logged_steps], rel=1e-5)
    assert not any("train_loss" in m for _, m in logger.rows)  # only the suffixed names reach the logger
    assert trainer.callback_metrics["train_loss"] == pytest.approx(record.epoch_mean(1), rel=1e-5)
    assert trainer.callback_metrics["train_loss_step"] == pytest.approx(record.mean(windows[8]), rel=1e-5)


def test_train_loss_is_visible_to_callbacks_during_validation() -> None:
    seen = {}

    class Peek(pl.Callback):
        def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if not trainer.sanity_checking:
                seen.update(trainer.callback_metrics)

    make_trainer(max_epochs=1, callbacks=[Peek()]).fit(ImageClassifier("lenet300"), small_data())
    assert TRAIN_METRICS - {"train_loss_epoch"} <= set(seen)  # as with self.log(on_step=True, on_epoch=True)


def test_train_loss_epoch_when_max_steps_ends_the_epoch_early() -> None:
    record = _RecordLosses()
    trainer = make_trainer(max_steps=6, limit_val_batches=0, callbacks=[record])
    trainer.fit(ImageClassifier("lenet300"), small_data(num_train=100))
    assert [e for e, _, _ in record.losses] == [0, 0, 0, 0, 1, 1]
    assert trainer.callback_metrics["train_loss_epoch"] == pytest.approx(record.epoch_mean(1), rel=1e-5)


def test_epoch_metrics_are_exact_over_uneven_batches() -> None:
    # 70 validation and 50 test examples in batches of 32: the last batches hold 6 and 18.
    torch.manual_seed(0)
    model, dm = ImageClassifier("lenet300"), small_data()
    per_loader = make_trainer().validate(model, dm, verbose=False)  # one dict per dataloader
    results = {k: v for metrics in per_loader for k, v in metrics.items()}
    assert set(per_loader[0]) == {"val_loss", "val_acc"} and set(per_loader[1]) == {"test_loss", "test_acc"}
    model.eval()
    with torch.no_grad():
        for prefix, split in (("val", dm.val_set), ("test", dm.test_set)):
            x, y = split.__getitems__(list(range(len(split))))
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits, y).item()
            acc = (logits.argmax(1) == y).float().mean().item()
            assert results[f"{prefix}_loss"] == pytest.approx(loss, rel=1e-5)
            assert results[f"{prefix}_acc"] == pytest.approx(acc, abs=1e-7)


def test_each_validation_counts_only_its_own_batches() -> None:
    # The accuracy Metric is logged once per epoch: its counts must still start afresh at every validation.
    torch.manual_seed(0)
    model, dm = ImageClassifier("lenet300"), small_data()
    trainer = make_trainer()
    trainer.validate(model, dm, verbose=False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # another model: another accuracy
    second = {k: v for metrics in trainer.validate(model, dm, verbose=False) for k, v in metrics.items()}
    model.eval()
    with torch.no_grad():
        x, y = dm.val_set.__getitems__(list(range(len(dm.val_set))))
        expected = (model(x).argmax(1) == y).float().mean().item()
    assert second["val_acc"] == pytest.approx(expected, abs=1e-7)


def test_schedule_values_at_chosen_steps() -> None:
    f = WarmupMultiStep(warmup_steps=10, milestones=[20, 30], gamma=0.1)
    steps = [0, 1, 5, 9, 10, 19, 20, 29, 30, 1000]
    expected = [0.0, 0.1, 0.5, 0.9, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    assert [f(s) for s in steps] == pytest.approx(expected, rel=1e-12)
    assert WarmupMultiStep()(12345) == 1.0
    with pytest.raises(ValueError, match="milestones"):
        WarmupMultiStep(milestones=[30, 20])


@given(
    warmup=st.integers(0, 50),
    milestones=st.lists(st.integers(0, 200), max_size=3).map(sorted),
    step=st.integers(0, 300),
)
def test_schedule_is_warmup_times_drops(warmup: int, milestones: list[int], step: int) -> None:
    f = WarmupMultiStep(warmup, milestones, gamma=0.5)
    warm = 1.0 if warmup == 0 else min(1.0, step / warmup)
    assert f(step) == pytest.approx(warm * 0.5 ** len([m for m in milestones if m <= step]))
    assert 0.0 <= f(step) <= 1.0


class _RecordLR(pl.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        self.lrs.append(optimizer.param_groups[0]["lr"])


def test_schedule_is_stepped_per_optimizer_step_in_training() -> None:
    record = _RecordLR()
    model = ImageClassifier("lenet300", optimizer="sgd", lr=0.1, warmup_steps=4, milestones=[6], gamma=0.1)
    make_trainer(max_steps=8, limit_val_batches=0, callbacks=[record]).fit(model, small_data())
    assert record.lrs == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1, 0.1, 0.01, 0.01], rel=1e-12)


def test_configure_optimizers_is_pure() -> None:
    model = ImageClassifier("lenet300", optimizer="sgd", lr=0.1, momentum=0.8, nesterov=True, warmup_steps=5)
    first, second = model.configure_optimizers(), model.configure_optimizers()
    assert first["optimizer"] is not second["optimizer"]
    assert first["lr_scheduler"]["interval"] == "step"
    first["optimizer"].step()  # no gradients: a no-op, but keeps torch's step-order check quiet
    first["lr_scheduler"]["scheduler"].step()
    assert second["optimizer"].param_groups[0]["lr"] == 0.0
    group = second["optimizer"].param_groups[0]
    assert (group["momentum"], group["nesterov"], group["initial_lr"]) == (0.8, True, 0.1)


@pytest.mark.parametrize(("name", "cls"), [("adam", torch.optim.Adam), ("adagrad", torch.optim.Adagrad)])
def test_optimizer_choice_without_schedule(name: str, cls: type) -> None:
    opt = ImageClassifier("lenet300", optimizer=name, lr=0.01, weight_decay=1e-4).configure_optimizers()
    assert type(opt) is cls and opt.param_groups[0]["weight_decay"] == 1e-4


def test_bad_settings_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="rmsprop"):
        ImageClassifier(optimizer="rmsprop")
    with pytest.raises(ValueError, match="glorot_normal"):
        ImageClassifier(init="xavier")
    with pytest.raises(ValueError, match="milestones"):
        ImageClassifier(milestones=[-1])
    with pytest.raises(ValueError, match="valid names"):
        ImageClassifier(arch="alexnet")


@pytest.mark.slow
def test_lenet300_learns_real_mnist_in_one_epoch(shared_data: Path) -> None:
    """End to end on the real data: 917 Adam steps (batch 60) reach well above 90% validation and test accuracy."""
    from lightning_lottery.data.vision import MNISTDataModule

    if not (shared_data / "MNIST" / "raw").is_dir():
        pytest.skip(f"MNIST not found under {shared_data}")
    torch.manual_seed(0)
    trainer = make_trainer(max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(ImageClassifier("lenet300", lr=1.2e-3), MNISTDataModule(root=shared_data))
    metrics = trainer.callback_metrics
    assert metrics["val_acc"] > 0.93 and metrics["test_acc"] > 0.93
    assert metrics["train_loss_epoch"] < 0.4


def test_train_acc_at_each_validation_covers_the_batches_since_the_previous_one() -> None:
    """Frankle & Carbin's train-test gap needs the training accuracy at the early-stop validation."""
    correct: list[tuple[int, int]] = []  # per step: (correct predictions, batch size), before the step's update
    seen: list[float] = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            x, y = batch
            with torch.no_grad():  # lenet300 has no dropout: the training step's own predictions
                correct.append((int((pl_module(x).argmax(1) == y).sum()), len(y)))

        def on_validation_end(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking:
                seen.append(float(trainer.callback_metrics["train_acc"]))

    trainer = make_trainer(max_steps=6, val_check_interval=2, check_val_every_n_epoch=None, callbacks=[Record()])
    trainer.fit(ImageClassifier("lenet300", lr=1e-2), small_data(num_train=256))
    windows = [correct[i : i + 2] for i in (0, 2, 4)]
    expected = [sum(c for c, _ in w) / sum(n for _, n in w) for w in windows]
    assert seen == pytest.approx(expected)
    assert len(set(seen)) > 1, "a window of its own per validation, not one running mean"
