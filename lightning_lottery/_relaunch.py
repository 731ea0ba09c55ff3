"""Relaunching training inside one ``trainer.fit``: everything here touches Lightning internals.

A round must train exactly as a fresh ``Trainer.fit`` would. Between two runs of ``trainer.fit_loop`` we
therefore reset what a fresh fit starts without: loop progress (epoch, step, batch counters), optimizers and LR
schedulers (``configure_optimizers`` runs again), EarlyStopping / ModelCheckpoint state, ``should_stop`` and
the data iterator. The logger step (``_batches_that_stepped``) keeps counting, so logged curves stay monotonic.
The pinned Lightning version's behaviour is covered by ``tests/test_relaunch.py``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.optimizer import _optimizers_to_device
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, Timer
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_warn


def check_strategy(trainer: pl.Trainer) -> None:
    """Masks are computed on whole tensors: refuse strategies that shard parameters."""
    strategy = trainer.strategy
    if isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)) and "XLA" not in type(strategy).__name__:
        if getattr(strategy, "_start_method", "popen") in ("spawn", "fork", "forkserver"):
            rank_zero_warn(
                "With a spawned DDP strategy the search runs in worker processes: this callback object (history, "
                "masks, ticket()) is not updated in the main process. Read the artifacts it writes (lottery/"
                "history.json, round_XX/ticket.safetensors) or use strategy='ddp'."
            )
        return
    raise ValueError(
        f"LotteryTicketCallback supports single-device and DDP-family strategies (ddp, ddp_spawn, "
        f"ddp_find_unused_parameters_true, ...); got {type(strategy).__name__}. Strategies that shard "
        "parameters (FSDP, DeepSpeed, model parallel) would make each rank prune a different slice."
    )


def wrap_fit_loop(trainer: pl.Trainer, next_round: Callable[[], bool]) -> None:
    """Run ``trainer.fit_loop`` again for as long as ``next_round()`` starts another round."""
    loop = trainer.fit_loop
    original_run = loop.run

    def run_rounds() -> None:
        original_run()
        while next_round():
            original_run()

    loop.run = run_rounds  # instance attribute: removed again by ``unwrap_fit_loop``
    loop._lottery_original_run = original_run


def unwrap_fit_loop(trainer: pl.Trainer) -> None:
    loop = trainer.fit_loop
    if "run" in vars(loop):
        del loop.run
        del loop._lottery_original_run


def search_interrupted(trainer: pl.Trainer) -> bool:
    """A stop that ends the whole search, not the round: Timer's ``max_time`` or a SIGTERM."""
    timers = [cb for cb in trainer.callbacks if isinstance(cb, Timer)]
    expired = any(t.time_remaining() is not None and t.time_remaining() <= 0 for t in timers)
    return expired or bool(getattr(trainer, "received_sigterm", False))


def recreate_optimizers(trainer: pl.Trainer) -> None:
    """Run ``configure_optimizers`` again: fresh optimizer state, fresh LR schedulers."""
    strategy = trainer.strategy
    strategy.setup_optimizers(trainer)
    _optimizers_to_device(strategy.optimizers, strategy.root_device)


def capture_schedule(trainer: pl.Trainer) -> dict[str, Any]:
    """Optimizer hyperparameters (lr, momentum, ...) and LR-scheduler states, to fast-forward a fresh schedule."""
    return {
        "param_groups": [
            [{k: copy.deepcopy(v) for k, v in group.items() if k != "params"} for group in opt.param_groups]
            for opt in trainer.optimizers
        ],
        "schedulers": [copy.deepcopy(cfg.scheduler.state_dict()) for cfg in trainer.lr_scheduler_configs],
    }


def restore_schedule(trainer: pl.Trainer, state: dict[str, Any]) -> None:
    """Put fresh optimizers and schedulers at the point of the schedule captured by :func:`capture_schedule`."""
    groups, schedulers = state["param_groups"], state["schedulers"]
    if len(groups) != len(trainer.optimizers) or len(schedulers) != len(trainer.lr_scheduler_configs):
        raise RuntimeError(
            "configure_optimizers returned a different number of optimizers or schedulers than in round 0; "
            "late rewinding cannot restore the learning-rate schedule"
        )
    for opt, saved in zip(trainer.optimizers, groups):
        for group, values in zip(opt.param_groups, saved):
            group.update(copy.deepcopy(values))
    for cfg, saved in zip(trainer.lr_scheduler_configs, schedulers):
        cfg.scheduler.load_state_dict(copy.deepcopy(saved))


def reset_loop_progress(trainer: pl.Trainer) -> None:
    """Epoch 0, step 0, as at the start of a fresh fit; the logger step is left counting."""
    fit_loop = trainer.fit_loop
    epoch_loop = fit_loop.epoch_loop
    fit_loop.epoch_progress.reset()
    epoch_loop.batch_progress.reset()
    epoch_loop.scheduler_progress.reset()
    epoch_loop.automatic_optimization.optim_progress.reset()
    epoch_loop.manual_optimization.optim_step_progress.reset()
    epoch_loop.val_loop.batch_progress.reset()
    fit_loop._restarting = False
    epoch_loop._restarting = False
    if fit_loop._last_train_dl_reload_epoch != float("-inf"):
        fit_loop._last_train_dl_reload_epoch = 0
    trainer.should_stop = False


def restart_data(trainer: pl.Trainer) -> None:
    """A fresh iterator over the training data (the epoch loop only makes one itself after epoch 0)."""
    fetcher = trainer.fit_loop._data_fetcher
    if fetcher is not None and fetcher._combined_loader is not None:
        iter(fetcher)


def _reset_early_stopping(callback: EarlyStopping) -> None:
    callback.wait_count = 0
    callback.stopped_epoch = 0
    callback.best_score = torch.tensor(torch.inf if callback.monitor_op == torch.lt else -torch.inf)
    callback.stopping_reason = EarlyStoppingReason.NOT_STOPPED
    callback.stopping_reason_message = None


def _reset_checkpoint(callback: ModelCheckpoint) -> None:
    # Top-k bookkeeping restarts per round; ``last_model_path`` is kept so last.ckpt is overwritten in place.
    callback.best_k_models = {}
    callback.kth_best_model_path = ""
    callback.best_model_score = None
    callback.best_model_path = ""
    callback.current_score = None
    callback.kth_value = torch.tensor(torch.inf if callback.mode == "min" else -torch.inf)
    callback._last_global_step_saved = 0
    callback._defer_save_until_validation = False


def reset_monitoring_callbacks(trainer: pl.Trainer) -> None:
    for callback in trainer.callbacks:
        if isinstance(callback, EarlyStopping):
            _reset_early_stopping(callback)
        elif isinstance(callback, ModelCheckpoint):
            _reset_checkpoint(callback)
