"""``ImageClassifier``: a LightningModule for the vision recipes, built from hyperparameters only.

It knows nothing of pruning. Because the network is built inside ``__init__`` from ``arch`` /
``arch_kwargs`` / ``init`` (all saved as hyperparameters), ``type(m)(**m.hparams)`` builds the same
architecture with a fresh random initialisation, and ``load_from_checkpoint`` works without extra arguments.

Logged metrics (``add_dataloader_idx=False``):

* ``train_loss``: named as ``self.log("train_loss", on_step=True, on_epoch=True)`` names it: ``train_loss_step``
  (the mean over the logging window) and ``train_loss_epoch`` (the exact per-example mean over the epoch);
  ``train_loss`` in ``callback_metrics`` is the latest of them. ``self.log`` costs a fraction of a millisecond per
  call, so the loss is summed on-device every step and handed to Lightning only on the steps the logger writes
  (every ``log_every_n_steps``) and at the epoch's last batch. The sums live in this module, not in Lightning's
  epoch aggregation, and go into checkpoints: a run resumed in the middle of an epoch logs what an uninterrupted
  one would;
* ``train_acc``: accuracy on the training batches seen since the previous validation (in training mode, dropout
  included), logged with each validation, so that the record of the early-stop iteration has the training accuracy
  of the steps leading to it (Frankle & Carbin's train-test gap at early stop). Counted on-device, no host sync;
* ``val_loss``, ``val_acc``: on validation dataloader 0;
* ``test_loss``, ``test_acc``: on validation dataloader 1 (a datamodule with ``eval_test=True`` passes the
  test set there, so test accuracy is known at the validation-selected early-stop iteration) and in
  ``test_step``.

Epoch values are exact over the whole split: the loss is a batch-size-weighted mean and accuracy counts
correct predictions (torchmetrics ``MulticlassAccuracy`` with ``average="micro"``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics.classification import MulticlassAccuracy

from lightning_lottery.models.vision import INIT_SCHEMES, build_model, output_parameter
from lightning_lottery.modules.optim import NAMED_OPTIMIZERS, build_optimizer, build_scheduler, resolve_optimizer
from lightning_lottery.supermask import EdgePopup

__all__ = ["OPTIMIZERS", "SCHEDULE_UNITS", "ImageClassifier", "WarmupMultiStep", "steps_per_epoch"]

OPTIMIZERS = tuple(NAMED_OPTIMIZERS)  # optimizers by name; any other is a spec (see ImageClassifier)
_NAMED_DEFAULTS = {"lr": 1.2e-3, "momentum": 0.9, "weight_decay": 0.0, "nesterov": False}
SCHEDULE_UNITS = ("step", "epoch")  # what warmup_steps and milestones count


class WarmupMultiStep:
    """LR multiplier at optimizer step ``s`` (0-based): ``min(1, s / warmup_steps) * gamma ** k``, where ``k``
    is the number of ``milestones <= s``; with ``cosine_steps`` T > 0, also times ``(1 + cos(pi * s / T)) / 2``.

    Linear warmup from 0 (step 0 trains at LR 0, as in open_lth's warmup), step drops at the milestones and
    cosine decay (edge-popup's schedule), in one function so they compose in a single ``LambdaLR`` stepped every
    optimizer step. A callable object rather than a closure, so ``LambdaLR.state_dict()`` stores its settings.
    """

    def __init__(
        self, warmup_steps: int = 0, milestones: Sequence[int] = (), gamma: float = 0.1, cosine_steps: int = 0
    ) -> None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        milestones = [int(m) for m in milestones]
        if any(m < 0 for m in milestones) or milestones != sorted(milestones):
            raise ValueError(f"milestones must be increasing optimizer-step indices >= 0, got {milestones}")
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        if cosine_steps < 0:
            raise ValueError(f"cosine_steps must be >= 0, got {cosine_steps}")
        self.warmup_steps = int(warmup_steps)
        self.milestones = milestones
        self.gamma = float(gamma)
        self.cosine_steps = int(cosine_steps)

    def __call__(self, step: int) -> float:
        factor = min(1.0, step / self.warmup_steps) if self.warmup_steps else 1.0
        drops = sum(1 for m in self.milestones if m <= step)
        if self.cosine_steps:
            factor *= 0.5 * (1.0 + math.cos(math.pi * min(step, self.cosine_steps) / self.cosine_steps))
        return factor * self.gamma**drops

    def __repr__(self) -> str:
        return (
            f"WarmupMultiStep(warmup_steps={self.warmup_steps}, milestones={self.milestones}, gamma={self.gamma}, "
            f"cosine_steps={self.cosine_steps})"
        )


def steps_per_epoch(trainer: pl.Trainer) -> int:
    """Optimizer steps in one training epoch of ``trainer`` (per rank under DDP, after ``limit_train_batches``).

    Reads ``trainer.estimated_stepping_batches`` (which loads the training dataloader if needed) and requires
    ``max_epochs``: an epoch-based schedule needs an epoch budget. The epoch length is the per-epoch factor of
    that estimate, ``ceil(num_training_batches / accumulate_grad_batches)``, rather than the estimate divided by
    ``max_epochs``, which would shrink the epoch whenever ``max_steps`` ends training before ``max_epochs``.
    """
    max_epochs = trainer.max_epochs
    if max_epochs is None or max_epochs < 1:
        raise ValueError(
            f"schedule_unit='epoch' needs the Trainer's max_epochs (got {max_epochs}): warmup_steps and milestones "
            "are then epochs, converted to optimizer steps with the epoch length. Set max_epochs (e.g. "
            "trainer.max_epochs=90), or give warmup_steps and milestones in steps with schedule_unit='step'."
        )
    total = trainer.estimated_stepping_batches
    batches = trainer.num_training_batches
    if not math.isfinite(total) or not math.isfinite(batches):
        raise ValueError(
            "schedule_unit='epoch' needs a training dataloader with a length (an iterable dataset has no epochs); "
            "use schedule_unit='step'"
        )
    return max(1, math.ceil(batches / trainer.accumulate_grad_batches))


class _LossSum:
    """Sum of per-example losses and their count since the last flush, kept on-device (no host sync)."""

    def __init__(self) -> None:
        self.total: Tensor | None = None
        self.count = 0

    def state(self) -> dict[str, Any]:
        return {"total": None if self.total is None else self.total.detach().clone(), "count": self.count}

    def load(self, state: Mapping[str, Any], device: Any) -> None:
        self.total = None if state["total"] is None else state["total"].to(device)
        self.count = state["count"]

    def add(self, mean_loss: Tensor, count: int) -> None:
        self.total = mean_loss * count if self.total is None else self.total.add_(mean_loss, alpha=count)
        self.count += count

    def pop(self) -> tuple[Tensor, int]:
        """(mean, count) of what was added since the last pop."""
        if self.total is None or not self.count:
            raise RuntimeError("nothing to pop: add() a loss first")
        mean, count = self.total / self.count, self.count
        self.total, self.count = None, 0
        return mean, count


class _CorrectCount:
    """Correct predictions and examples since the last pop, kept on-device (no host sync per step)."""

    def __init__(self) -> None:
        self.correct: Tensor | None = None
        self.count = 0

    def state(self) -> dict[str, Any]:
        return {"correct": None if self.correct is None else self.correct.detach().clone(), "count": self.count}

    def load(self, state: Mapping[str, Any], device: Any) -> None:
        self.correct = None if state["correct"] is None else state["correct"].to(device)
        self.count = state["count"]

    def add(self, logits: Tensor, target: Tensor) -> None:
        hits = (logits.argmax(dim=1) == target).sum()
        self.correct = hits if self.correct is None else self.correct.add_(hits)
        self.count += target.shape[0]

    def pop(self) -> Tensor | None:
        """Accuracy over what was added since the last pop, or None if nothing was."""
        if self.correct is None or not self.count:
            return None
        accuracy = self.correct.float() / self.count
        self.correct, self.count = None, 0
        return accuracy


class ImageClassifier(pl.LightningModule):
    """Cross-entropy image classification around a network from :func:`~lightning_lottery.models.vision.build_model`.

    Args:
        arch: registered network name (``"lenet300"``, ``"lenet5"``, ``"conv2"``, ``"conv4"``, ``"conv6"``,
            ``"vgg19"``, ``"resnet20"``, ``"resnet18"``, ``"resnet50"``, ``"vgg19_imagenet"``).
        arch_kwargs: constructor arguments of the network, e.g. ``{"num_classes": 5, "dropout": 0.5}``.
        init: ``"glorot_normal"`` (the papers' Gaussian Glorot), ``"kaiming_normal"`` or ``"default"``.
        optimizer: any optimizer as a spec, ``{"_target_": "torch.optim.AdamW", "lr": 1e-3, ...}`` (its other keys
            are the optimizer's arguments; built afresh over the trainable parameters in every round), or one of
            ``"adam"``, ``"sgd"``, ``"adagrad"`` with the four settings below.
        lr: base learning rate of a named optimizer (default 1.2e-3); with a spec, leave it None.
        momentum: SGD momentum of a named optimizer (default 0.9; ignored by Adam/Adagrad).
        weight_decay: L2 penalty added by a named optimizer (to all parameters; default 0).
        nesterov: Nesterov momentum for a named SGD (default False).
        warmup_steps: linear LR warmup from 0 over this many optimizer steps (epochs with ``schedule_unit="epoch"``).
        milestones: optimizer-step indices at which the LR is multiplied by ``gamma`` (e.g. ``[20000, 25000]``),
            or epochs with ``schedule_unit="epoch"`` (e.g. ``[30, 60, 80]``).
        gamma: LR multiplier at each milestone.
        cosine: multiply the LR by a cosine decay from 1 to 0 over the whole fit (``trainer.max_steps`` or
            ``max_epochs`` worth of optimizer steps), as edge-popup trains.
        supermask: ``{"keep": 0.5, "init": "signed_constant", "scale_fan": False}``: train an edge-popup
            supermask over frozen random weights instead of the weights
            (:class:`~lightning_lottery.supermask.EdgePopup`, whose own ``init`` replaces the one above).
            ``None``: ordinary training.
        schedule_unit: ``"step"`` (default) or ``"epoch"``: ``warmup_steps`` and ``milestones`` count epochs,
            converted to optimizer steps by :meth:`configure_optimizers` with the trainer's epoch length
            (:func:`steps_per_epoch`; needs ``max_epochs``). The warmup still rises every step, and milestone E
            drops the LR at the first step of epoch E (0-based), after E full epochs, as the ImageNet recipes do.
        lr_scheduler: any LR scheduler as a spec instead of the schedule above, e.g.
            ``{"_target_": "torch.optim.lr_scheduler.StepLR", "step_size": 1000, "interval": "step"}``
            (``interval``/``frequency`` as in Lightning; stepped per optimizer step by default).

    Only parameters with ``requires_grad`` reach the optimizer (with a supermask: the scores).

    The network is the submodule ``model``, so parameter names are ``model.<layer>.weight``; the output
    layer's is :attr:`output_parameter` (e.g. ``"model.fc3.weight"``).
    """

    def __init__(
        self,
        arch: str = "lenet300",
        arch_kwargs: Mapping[str, Any] | None = None,
        init: str = "glorot_normal",
        optimizer: str | Mapping[str, Any] = "adam",
        lr: float | None = None,
        momentum: float | None = None,
        weight_decay: float | None = None,
        nesterov: bool | None = None,
        warmup_steps: int = 0,
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        cosine: bool = False,
        supermask: Mapping[str, Any] | None = None,
        schedule_unit: str = "step",
        lr_scheduler: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        settings = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "nesterov": nesterov}
        self.optimizer_spec = resolve_optimizer(optimizer, _NAMED_DEFAULTS, **settings)
        if init not in INIT_SCHEMES:
            raise ValueError(f"Unknown init scheme {init!r}; valid: {', '.join(INIT_SCHEMES)}")
        self.schedule = WarmupMultiStep(warmup_steps, milestones, gamma)  # validates now, not at fit time
        if lr_scheduler is not None and (warmup_steps or list(milestones) or cosine):
            raise ValueError("lr_scheduler replaces warmup_steps, milestones and cosine: set only one of them")
        if schedule_unit not in SCHEDULE_UNITS:  # with "epoch", self.schedule counts epochs until configure time
            raise ValueError(f"Unknown schedule_unit {schedule_unit!r}; valid: {', '.join(SCHEDULE_UNITS)}")
        self.model: nn.Module = build_model(arch, init=init, **dict(arch_kwargs or {}))
        if supermask is not None:
            EdgePopup(**dict(supermask)).apply(self.model)
        num_classes = int(self.model.num_classes)
        # One accumulator per split: validation-time test metrics and test_step must not share state.
        self.val_accuracy = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_test_accuracy = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_accuracy = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self._train_loss = _LossSum()  # since the last hand-over to Lightning
        self._epoch_loss = _LossSum()  # since the epoch started
        self._train_correct = _CorrectCount()
        self._restored = False  # accumulators just came from a checkpoint: the resumed run goes on with them

    @property
    def output_parameter(self) -> str:
        """Name of the output layer's weight in this module, e.g. ``"model.fc3.weight"``."""
        return output_parameter(self.model, prefix="model.")

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def on_train_start(self) -> None:
        if not self._restored:
            self._train_correct = _CorrectCount()  # a new fit (or lottery branch) starts a new window
        self._restored = False

    def on_train_epoch_start(self) -> None:
        self._train_loss = _LossSum()
        self._epoch_loss = _LossSum()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["train_accumulators"] = {
            "loss": self._train_loss.state(),
            "epoch_loss": self._epoch_loss.state(),
            "correct": self._train_correct.state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("train_accumulators")
        if state is not None:
            self._train_loss.load(state["loss"], self.device)
            self._epoch_loss.load(state["epoch_loss"], self.device)
            self._train_correct.load(state["correct"], self.device)
            self._restored = True

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self.model(x)
        loss = nn.functional.cross_entropy(logits, y)
        self._train_loss.add(loss.detach(), y.shape[0])
        self._epoch_loss.add(loss.detach(), y.shape[0])
        self._train_correct.add(logits.detach(), y)
        last = self._last_step_of_epoch()
        if self._logger_writes_this_step() or last:
            mean, count = self._train_loss.pop()
            self.log("train_loss_step", mean, batch_size=count, sync_dist=True)
            if last:  # the epoch's mean, handed over once (at epoch end Lightning's "mean" of one value is it)
                mean, count = self._epoch_loss.pop()
                self.log("train_loss_epoch", mean, on_step=False, on_epoch=True, batch_size=count, sync_dist=True)
            self.log("train_loss", mean, prog_bar=True, logger=False, batch_size=count, sync_dist=True)
        return loss

    def _logger_writes_this_step(self) -> bool:
        trainer = self._trainer
        if trainer is None:
            return False
        connector = getattr(trainer, "_logger_connector", None)  # Lightning's own every-n-steps decision
        if connector is not None:
            return bool(connector.should_update_logs)
        every = trainer.log_every_n_steps
        return every > 0 and (self.global_step + 1) % every == 0

    def _last_step_of_epoch(self) -> bool:
        """Last batch of the epoch, or within the last optimizer step of ``max_steps``: hand over the rest of
        the epoch here, in ``training_step``, so callbacks see the whole epoch in ``on_train_epoch_end``."""
        trainer = self._trainer
        if trainer is None:
            return False
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return True
        return 0 <= trainer.max_steps <= self.global_step + 1

    def _evaluate(
        self, batch: tuple[Tensor, Tensor], batch_idx: int, prefix: str, accuracy: MulticlassAccuracy
    ) -> None:
        x, y = batch
        logits = self.model(x)
        loss = nn.functional.cross_entropy(logits, y)
        accuracy.update(logits, y)
        # batch_size weights the epoch mean, so a smaller last batch does not skew it.
        self.log(f"{prefix}_loss", loss, batch_size=y.shape[0], add_dataloader_idx=False, sync_dist=True)
        if batch_idx == 0:
            # Once per epoch: Lightning computes (and resets) the logged Metric at the epoch's end over every
            # update; logging it on each batch would move it to the device each time (~0.5 ms a batch on a CPU).
            self.log(f"{prefix}_acc", accuracy, add_dataloader_idx=False)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx == 0:
            self._evaluate(batch, batch_idx, "val", self.val_accuracy)
        elif dataloader_idx == 1:
            self._evaluate(batch, batch_idx, "test", self.val_test_accuracy)
        else:
            raise ValueError(
                f"ImageClassifier expects at most 2 validation dataloaders (val, test), got #{dataloader_idx}"
            )

    def on_validation_epoch_end(self) -> None:
        # Every rank trained the same number of batches, so all log (or all skip: sanity check, validate()).
        accuracy = self._train_correct.pop()
        if accuracy is not None:
            self.log("train_acc", accuracy, sync_dist=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, batch_idx, "test", self.test_accuracy)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.model(x)

    def configure_optimizers(self) -> OptimizerLRScheduler:
        """A fresh optimizer (and LambdaLR stepped per optimizer step, if any schedule) on every call."""
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]  # a supermask freezes the weights
        optimizer = build_optimizer(self.optimizer_spec, params)
        if hp.get("lr_scheduler") is not None:
            return {"optimizer": optimizer, "lr_scheduler": build_scheduler(hp.lr_scheduler, optimizer)}
        cosine_steps = self._total_steps() if hp.get("cosine", False) else 0
        if not self.schedule.warmup_steps and not self.schedule.milestones and not cosine_steps:
            return optimizer  # no scheduler: nothing to step after every optimizer step
        warmup, milestones = self._schedule_in_steps()
        schedule = WarmupMultiStep(warmup, milestones, self.schedule.gamma, cosine_steps)
        scheduler = LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def _schedule_in_steps(self) -> tuple[int, list[int]]:
        """``(warmup_steps, milestones)`` in optimizer steps; epochs are converted with the attached trainer's
        epoch length, afresh on every call (each pruning round's configure_optimizers gets its own)."""
        warmup, milestones = self.schedule.warmup_steps, list(self.schedule.milestones)
        if self.hparams.get("schedule_unit", "step") == "step":  # checkpoints from before schedule_unit: steps
            return warmup, milestones
        per_epoch = steps_per_epoch(self.trainer)
        return warmup * per_epoch, [m * per_epoch for m in milestones]

    def _total_steps(self) -> int:
        """Optimizer steps of one fit (one round under the lottery callback), for the cosine schedule."""
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total) or total < 1:
            raise ValueError("cosine=True needs a finite training length: set trainer max_steps or max_epochs")
        return int(total)
