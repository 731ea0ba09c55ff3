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
from dataclasses import asdict, dataclass
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.utilities.data import _set_sampler_epoch
from lightning.pytorch.loops.fetchers import _DataLoaderIterDataFetcher

from lightning_lottery._relaunch import restore_schedule
from lightning_lottery._rng import restore_rng_state


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


def resume_at(trainer: pl.Trainer, point: ResumePoint, schedule: bool = True) -> None:
    """Put a freshly relaunched fit loop (new optimizers already built) at ``point`` of round 0.

    ``schedule=False`` leaves the optimizers and schedulers as built (fine-tuning holds its own learning rates).
    """
    fit_loop = trainer.fit_loop
    logger_step = fit_loop.epoch_loop._batches_that_stepped
    fit_loop.load_state_dict(copy.deepcopy(point.loops))
    fit_loop._last_train_dl_reload_epoch = point.reload_epoch
    fit_loop.epoch_loop._batches_that_stepped = logger_step  # logged curves stay monotonic across branches
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
