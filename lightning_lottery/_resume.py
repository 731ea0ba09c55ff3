"""Resuming round 0's training at a point: loop progress, learning-rate schedule, data position and RNG.

A level that rewinds to step k is round 0 resumed at k with other weights: ``global_step`` continues from k, the
epoch and batch position are round 0's, every scheduler is where round 0's was, the data from k onward are round
0's batches and the RNG (dropout, augmentation, worker seeds) continues as round 0's did; only the optimizer state
is fresh. A :class:`ResumePoint` holds what that needs, captured while round 0 trains.

Two kinds of points (both resumed through Lightning's own loop-state machinery):

- at an epoch boundary (step 0, ``epoch:E``, or a step k that ends an epoch): the loops' state from right before
  the next epoch starts, and the RNG of that moment; Lightning then starts the epoch as usual (hooks, data
  iterator) and the iterator draws round 0's shuffle from that RNG;
- inside an epoch: the loops' state at the end of step k (what a mid-epoch checkpoint holds), the RNG from right
  before the data iterator of that epoch was made, and the RNG from right before round 0 fetched its next batch.
  The epoch's iterator is made again from the first, the batches round 0 already trained on are drawn and
  discarded (same sampler order, same worker assignment), then the second RNG is restored. That costs loading at
  most one epoch's batches per branch, nothing for epoch rewinds.

Everything is plain data (ints, floats, tensors), so checkpoints holding it load with ``weights_only=True``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.utilities.data import _set_sampler_epoch
from lightning.pytorch.loops.fetchers import _DataLoaderIterDataFetcher

from lightning_lottery._relaunch import capture_schedule, restore_schedule
from lightning_lottery._rng import collect_rng_state, restore_rng_state
from lightning_lottery.core.levels import Rewind
from lightning_lottery.core.snapshot import State, dense_state


@dataclass
class ResumePoint:
    """Round 0's state at global step ``step``: where a late-rewound branch continues from.

    Attributes:
        step: the global step (optimizer steps taken).
        epoch: the epoch in which training continues (0-based).
        batch: batches of that epoch already trained on (0 at an epoch boundary).
        loops: ``trainer.fit_loop.state_dict()`` at that point.
        schedule: optimizer hyperparameters and scheduler states (``_relaunch.capture_schedule``).
        rng: the global RNG from where training continues.
        epoch_rng: the global RNG from right before the epoch's data iterator was made (mid-epoch points).
        reload_epoch: the epoch at which round 0 last (re)loaded its training dataloader.
    """

    step: int
    epoch: int
    batch: int
    loops: dict[str, Any]
    schedule: dict[str, Any]
    rng: dict[str, Any]
    epoch_rng: dict[str, Any] | None = None
    reload_epoch: float = float("-inf")

    def to_state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ResumePoint:
        return cls(**state)


def loop_state(trainer: pl.Trainer) -> dict[str, Any]:
    return copy.deepcopy(trainer.fit_loop.state_dict())


def _clear_restart(loop: Any) -> None:
    """A loop that starts afresh from its loaded progress instead of Lightning's mid-run restart."""
    loop.restarting = False
    for child in [loop, *(v for v in vars(loop).values() if hasattr(v, "_loaded_from_state_dict"))]:
        child._loaded_from_state_dict = False
        child._resuming_from_checkpoint = False
        child.reset_restart_stage()
        if child is not loop:
            _clear_restart(child)


def resume_at(trainer: pl.Trainer, point: ResumePoint, logger_step: int, schedule: bool = True) -> None:
    """Put a freshly relaunched fit loop (new optimizers already built) at ``point`` of round 0.

    ``logger_step``: where the loggers' step counter continues (the optimizer steps of the search so far, so logged
    curves stay monotonic across branches). ``schedule=False`` leaves the optimizers and schedulers as built
    (fine-tuning holds its own learning rates).
    """
    fit_loop = trainer.fit_loop
    fit_loop.load_state_dict(copy.deepcopy(point.loops))
    fit_loop._last_train_dl_reload_epoch = point.reload_epoch
    fit_loop.epoch_loop._batches_that_stepped = logger_step
    trainer.should_stop = False
    if schedule:
        restore_schedule(trainer, point.schedule)
    if point.batch == 0:
        _clear_restart(fit_loop)
        if point.epoch == 0:
            # Lightning makes epoch 0's iterator in ``setup_data`` at the start of fit, not per run: make it here.
            new_iterator(trainer, 0, point.rng)
        else:
            restore_rng_state(point.rng)  # Lightning makes the epoch's iterator from it
        return
    assert point.epoch_rng is not None
    position_data(trainer, point.epoch, point.batch, point.epoch_rng)
    restore_rng_state(point.rng)


def _drop_persistent_workers(trainer: pl.Trainer) -> None:
    """A persistent worker pool would carry the previous branch's worker RNG: start a fresh pool instead."""
    loader = trainer.fit_loop._combined_loader
    for dl in loader.flattened if loader is not None else ():
        iterator = getattr(dl, "_iterator", None)
        if getattr(dl, "persistent_workers", False) and iterator is not None:
            iterator._shutdown_workers()
            dl._iterator = None


def new_iterator(trainer: pl.Trainer, epoch: int, rng: dict[str, Any]) -> None:
    """The training data iterator of ``epoch``, made from the global RNG state ``rng``."""
    fit_loop = trainer.fit_loop
    fit_loop.setup_data()  # builds the dataloaders at the start of a fit (and makes an iterator we replace)
    restore_rng_state(rng)
    if fit_loop._combined_loader is None or fit_loop._data_fetcher is None:
        return
    _drop_persistent_workers(trainer)
    for dl in fit_loop._combined_loader.flattened:
        _set_sampler_epoch(dl, epoch)
    iter(fit_loop._data_fetcher)


def position_data(trainer: pl.Trainer, epoch: int, batches: int, epoch_rng: dict[str, Any]) -> None:
    """A data iterator for ``epoch`` made as round 0 made it, past the ``batches`` it already trained on."""
    new_iterator(trainer, epoch, epoch_rng)
    fetcher = trainer.fit_loop._data_fetcher
    if fetcher is None:
        return
    for _ in range(batches):
        if isinstance(fetcher, _DataLoaderIterDataFetcher):
            next(fetcher.iterator)
        else:
            next(fetcher)
    # The epoch loop adds the batches it has done to ``fetched`` when it starts again.
    fetcher.fetched = 0
    fetcher.done = False


def mid_epoch_batches(trainer: pl.Trainer) -> int:
    """Batches of the current epoch a restored (checkpoint) loop has trained on; 0 when none or all."""
    epoch_loop = trainer.fit_loop.epoch_loop
    done = epoch_loop.batch_progress.current.processed
    total = trainer.num_training_batches
    if not trainer.fit_loop.restarting or done <= 0 or (total != float("inf") and done >= total):
        return 0
    return done


def reposition_after_checkpoint(trainer: pl.Trainer, epoch_rng: dict[str, Any] | None, rng: dict[str, Any]) -> bool:
    """After Lightning restored a mid-epoch checkpoint: the data where the killed run was, the RNG as it was.

    Returns whether the current epoch's iterator was made here (else the next epoch makes its own).
    """
    batches = mid_epoch_batches(trainer)
    positioned = bool(batches) and epoch_rng is not None
    if positioned:
        assert epoch_rng is not None
        position_data(trainer, trainer.fit_loop.epoch_progress.current.processed, batches, epoch_rng)
    restore_rng_state(rng)
    return positioned


class RewindPointRecorder:
    """Captures θ_k and its :class:`ResumePoint` while round 0 trains.

    θ_k (the weights) is taken at the end of step k (or of epoch E); the rest right before round 0 goes on (the next
    epoch starts, or the next batch is fetched), so everything round 0 did at that step (validation, checkpoints,
    epoch-end hooks) is behind the point.
    """

    def __init__(self, rewind: Rewind) -> None:
        self.rewind = rewind
        self.point: ResumePoint | None = None
        self.weights: State | None = None
        self.pending: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        return not self.rewind.late or self.point is not None

    def after_batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.done or self.pending is not None or self.rewind.kind != "step":
            return
        if trainer.global_step < self.rewind.value:
            return
        progress = trainer.fit_loop.epoch_loop.batch_progress
        batch = progress.current.processed
        at_epoch_end = batch >= trainer.num_training_batches or progress.is_last_batch
        self.weights = dense_state(pl_module)
        self.pending = {"step": trainer.global_step, "boundary": bool(at_epoch_end)}
        if not at_epoch_end:
            self.pending.update(epoch=trainer.current_epoch, batch=batch, loops=loop_state(trainer))

    def after_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.done or self.pending is not None or self.rewind.kind != "epoch":
            return
        if trainer.current_epoch + 1 >= self.rewind.value:
            self.weights = dense_state(pl_module)
            self.pending = {"step": trainer.global_step, "boundary": True}

    def before_epoch(self, trainer: pl.Trainer) -> None:
        if self.pending is not None and self.pending["boundary"]:
            self.finish(trainer, epoch=trainer.fit_loop.epoch_progress.current.processed, batch=0)

    def before_batch(self, trainer: pl.Trainer, epoch_rng: dict[str, Any] | None) -> None:
        if self.pending is not None and not self.pending["boundary"]:
            self.finish(trainer, self.pending["epoch"], self.pending["batch"], epoch_rng)

    def finish(self, trainer: pl.Trainer, epoch: int, batch: int, epoch_rng: dict[str, Any] | None = None) -> None:
        """Complete the pending point (also when round 0 ends right at it)."""
        pending, self.pending = self.pending, None
        if pending is None:
            return
        self.point = ResumePoint(
            step=pending["step"],
            epoch=epoch,
            batch=batch,
            loops=pending.get("loops") or loop_state(trainer),
            schedule=capture_schedule(trainer),
            rng=collect_rng_state(),
            epoch_rng=epoch_rng if batch else None,
            reload_epoch=trainer.fit_loop._last_train_dl_reload_epoch,
        )

    def state_dict(self) -> dict[str, Any]:
        point = self.point.to_state() if self.point is not None else None
        return {"point": point, "weights": self.weights, "pending": self.pending}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.point = ResumePoint.from_state(state["point"]) if state["point"] is not None else None
        self.weights = state["weights"]
        self.pending = state["pending"]


def check_rewind_point(trainer: pl.Trainer, rewind: Rewind) -> None:
    """A rewind point round 0 never reaches is refused before round 0 trains."""
    trainer.fit_loop.setup_data()  # what fit does first; the number of batches per epoch is known after it
    total = trainer.estimated_stepping_batches
    batches = trainer.num_training_batches
    per_epoch = math.ceil(batches / trainer.accumulate_grad_batches) if math.isfinite(batches) else math.inf
    budget = f"max_epochs={trainer.max_epochs}, max_steps={trainer.max_steps}"
    if rewind.kind == "epoch":
        epoch = rewind.value
        if math.isfinite(total) and math.isfinite(per_epoch) and epoch * per_epoch >= total:
            raise ValueError(
                f"`rewind='epoch:{epoch}'` is not inside round 0: it trains {int(total)} optimizer steps, "
                f"{per_epoch} per epoch ({budget}); rewind to an epoch < {math.ceil(total / per_epoch)}"
            )
        return
    if math.isfinite(total) and rewind.value >= total:
        raise ValueError(
            f"`rewind={rewind.value}` is not inside round 0: it trains {int(total)} optimizer steps ({budget}); "
            f"rewind to a step k < {int(total)}"
        )


def check_workers(trainer: pl.Trainer, late_rewinding: bool) -> None:
    """Set up the training data; refuse persistent workers when branches resume round 0 in mid-training."""
    trainer.fit_loop.setup_data()
    loader = trainer.fit_loop._combined_loader
    loaders = loader.flattened if loader is not None else []
    if late_rewinding and any(getattr(dl, "persistent_workers", False) for dl in loaders):
        raise ValueError(
            "Late rewinding resumes round 0 in the middle of its training, but the training DataLoader has "
            "persistent_workers=True: its workers' random state cannot be put back where round 0's was. Use "
            "persistent_workers=False (workers restart each epoch, seeded as in round 0)."
        )
