"""Relaunching training inside one ``trainer.fit``: everything here touches Lightning internals.

A branch of a search trains exactly as round 0 would from its rewind point: between two runs of
``trainer.fit_loop`` we rebuild what a fresh fit starts without (optimizers and LR schedulers from
``configure_optimizers``, EarlyStopping / ModelCheckpoint state, ``should_stop``) and put loop progress, schedule
and data where round 0 had them (see ``_resume``). Lightning has no hooks at some of the points the search must
observe (right before an epoch starts, right before a batch is fetched, when a data iterator is made), so the fit
loop's methods are wrapped on the instance while the callback runs. The behaviour of the installed Lightning this
relies on is pinned by ``tests/test_protocol.py`` (every step's LR, batch and RNG equal round 0's) and the resume
tests.

Lightning has no public API for these, so the project's uses of its internals are all here and in ``_resume``:
the fit loop's ``run`` / ``setup_data`` / ``on_advance_start`` and the epoch loop's ``on_run_start`` / ``advance``
(wrapped), the loops' progress ``state_dict`` / ``load_state_dict`` (Lightning's own mid-epoch restart),
``fit_loop._data_fetcher`` / ``_combined_loader`` (the data iterator), ``strategy.setup_optimizers`` (a new
``configure_optimizers``), ``ModelCheckpoint`` / ``EarlyStopping`` bookkeeping, the logger connector's metric
reset and the epoch loop's logger step (``_batches_that_stepped``). Where a public API exists it is used:
``ProgressBar.get_metrics``, ``Optimizer.register_step_post_hook``, the global RNG getters and setters.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.optimizer import _optimizers_to_device
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, StochasticWeightAveraging, Timer
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_warn

from lightning_lottery._rng import collect_rng_state


def check_trainer(trainer: pl.Trainer) -> None:
    """Refuse strategies and callbacks the search cannot honour, before any training."""
    strategy = trainer.strategy
    if not isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)) or "XLA" in type(strategy).__name__:
        raise ValueError(
            f"LotteryTicketCallback supports single-device and DDP-family strategies (ddp, ddp_spawn, "
            f"ddp_find_unused_parameters_true, ...); got {type(strategy).__name__}. Strategies that shard "
            "parameters (FSDP, DeepSpeed, model parallel) would make each rank prune a different slice."
        )
    if getattr(strategy, "_start_method", "popen") in ("spawn", "fork", "forkserver"):
        rank_zero_warn(
            "With a spawned DDP strategy the search runs in worker processes: this callback object (history, "
            "masks, ticket()) is not updated in the main process. Read the artifacts it writes (lottery/"
            "history.json, round_XX/<branch>/ticket.safetensors) or use strategy='ddp'."
        )
    if any(isinstance(cb, StochasticWeightAveraging) for cb in trainer.callbacks):
        raise ValueError(
            "StochasticWeightAveraging cannot run inside a lottery search: it would average weights across levels "
            "(bringing pruned weights back) and swap the model's parameters under the masks. Train the search "
            "without it, then fine-tune the ticket with SWA in a separate fit (Ticket.apply on a fresh model)."
        )
    if trainer.max_steps == 0 or trainer.max_epochs == 0:
        raise ValueError(
            f"The trainer's budget trains nothing (max_steps={trainer.max_steps}, max_epochs={trainer.max_epochs}): "
            "each level of the search trains that budget; give max_steps > 0 or max_epochs > 0"
        )


@dataclass
class LoopEvents:
    """What the search observes in the fit loop; ``next_branch`` starts another run of the loop when it returns
    True."""

    next_branch: Callable[[], bool]
    before_first_run: Callable[[], None]
    before_epoch: Callable[[], None]
    before_batch: Callable[[], None]
    new_iterator: Callable[[dict[str, Any]], None]
    epoch_data_start: Callable[[], None]


def _wrap(obj: Any, name: str, wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    original = getattr(obj, name)
    setattr(obj, name, wrapper(original))  # an instance attribute: ``unwrap_fit_loop`` deletes it again


def _train_iterator(trainer: pl.Trainer) -> Any:
    """The iterator over the training data (``iter(fetcher)`` makes a new one inside the CombinedLoader)."""
    loader = trainer.fit_loop._combined_loader
    return getattr(loader, "_iterator", None) if loader is not None else None


def _watch_iterator(trainer: pl.Trainer, events: LoopEvents) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Report the RNG state from right before a method that may create the training data iterator, if it did."""

    def wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            before = _train_iterator(trainer)
            rng = collect_rng_state()
            out = original(*args, **kwargs)
            now = _train_iterator(trainer)
            if now is not None and now is not before:
                events.new_iterator(rng)
            return out

        return call

    return wrapper


def _after(hook: Callable[[], None]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            hook()
            return out

        return call

    return wrapper


def _before(hook: Callable[[], None]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            hook()
            return original(*args, **kwargs)

        return call

    return wrapper


def wrap_fit_loop(trainer: pl.Trainer, events: LoopEvents) -> None:
    """Run ``trainer.fit_loop`` once per branch, and report the points the search observes."""
    loop = trainer.fit_loop
    epoch_loop = loop.epoch_loop
    original_run = loop.run

    def run_branches() -> None:
        with warnings.catch_warnings():
            # Branches resumed inside an epoch get their data positioned by the search, so Lightning's warning
            # about mid-epoch restarts of non-resumable dataloaders does not apply.
            warnings.filterwarnings("ignore", message=".*ended before the epoch ended and your dataloader is not")
            events.before_first_run()
            original_run()
            while events.next_branch():
                original_run()

    loop.run = run_branches
    _wrap(loop, "setup_data", _watch_iterator(trainer, events))
    # Lightning makes an epoch's iterator in ``on_run_start`` except when it restarts from a checkpoint, where it
    # reuses the one ``setup_data`` made: ``epoch_data_start`` lets the search make it then, as round 0 did.
    _wrap(epoch_loop, "on_run_start", _watch_iterator(trainer, events))
    _wrap(epoch_loop, "on_run_start", _after(events.epoch_data_start))
    _wrap(loop, "on_advance_start", _before(events.before_epoch))
    _wrap(epoch_loop, "advance", _before(events.before_batch))


def unwrap_fit_loop(trainer: pl.Trainer) -> None:
    loop = trainer.fit_loop
    for obj, name in ((loop, "run"), (loop, "setup_data"), (loop, "on_advance_start")):
        vars(obj).pop(name, None)
    for name in ("on_run_start", "advance"):
        vars(loop.epoch_loop).pop(name, None)


def search_interrupted(trainer: pl.Trainer) -> str | None:
    """A stop that ends the whole search, not the branch: Timer's ``max_time`` or a SIGTERM."""
    for timer in (cb for cb in trainer.callbacks if isinstance(cb, Timer)):
        remaining = timer.time_remaining()
        if remaining is not None and remaining <= 0:
            return "max_time"
    return "SIGTERM" if getattr(trainer, "received_sigterm", False) else None


def recreate_optimizers(trainer: pl.Trainer) -> None:
    """Run ``configure_optimizers`` again: fresh optimizer state, fresh LR schedulers."""
    strategy = trainer.strategy
    strategy.setup_optimizers(trainer)
    _optimizers_to_device(strategy.optimizers, strategy.root_device)


def capture_schedule(trainer: pl.Trainer) -> dict[str, Any]:
    """Optimizer hyperparameters (lr, momentum, ...) and LR-scheduler states at this point of training."""
    return {
        "param_groups": [
            [{k: copy.deepcopy(v) for k, v in group.items() if k != "params"} for group in opt.param_groups]
            for opt in trainer.optimizers
        ],
        "schedulers": [copy.deepcopy(cfg.scheduler.state_dict()) for cfg in trainer.lr_scheduler_configs],
    }


def _restore_param_groups(trainer: pl.Trainer, groups: list[list[dict[str, Any]]]) -> None:
    if len(groups) != len(trainer.optimizers) or any(
        len(opt.param_groups) != len(saved) for opt, saved in zip(trainer.optimizers, groups)
    ):
        raise RuntimeError(
            "configure_optimizers returned other optimizers or parameter groups than in round 0; the search "
            "cannot put the learning-rate schedule where round 0 had it"
        )
    for opt, saved in zip(trainer.optimizers, groups):
        for group, values in zip(opt.param_groups, saved):
            group.update(copy.deepcopy(values))


def restore_schedule(trainer: pl.Trainer, state: dict[str, Any]) -> None:
    """Put fresh optimizers and schedulers at the point captured by :func:`capture_schedule`."""
    _restore_param_groups(trainer, state["param_groups"])
    if len(state["schedulers"]) != len(trainer.lr_scheduler_configs):
        raise RuntimeError(
            "configure_optimizers returned another number of LR schedulers than in round 0; the search cannot "
            "put the learning-rate schedule where round 0 had it"
        )
    for cfg, saved in zip(trainer.lr_scheduler_configs, state["schedulers"]):
        cfg.scheduler.load_state_dict(copy.deepcopy(saved))


def hold_learning_rates(trainer: pl.Trainer, state: dict[str, Any]) -> None:
    """Fine-tuning: the optimizer hyperparameters round 0 ended with, held constant (schedulers dropped)."""
    _restore_param_groups(trainer, state["param_groups"])
    trainer.strategy.lr_scheduler_configs = []


def _reset_early_stopping(callback: EarlyStopping) -> None:
    callback.wait_count = 0
    callback.stopped_epoch = 0
    callback.best_score = torch.tensor(torch.inf if callback.monitor_op == torch.lt else -torch.inf)
    callback.stopping_reason = EarlyStoppingReason.NOT_STOPPED
    callback.stopping_reason_message = None


def _reset_checkpoint(callback: ModelCheckpoint) -> None:
    # Top-k bookkeeping restarts per branch; ``last_model_path`` is kept so last.ckpt is overwritten in place.
    callback.best_k_models = {}
    callback.kth_best_model_path = ""
    callback.best_model_score = None
    callback.best_model_path = ""
    callback.current_score = None
    callback.kth_value = torch.tensor(torch.inf if callback.mode == "min" else -torch.inf)
    callback._last_global_step_saved = -1
    callback._defer_save_until_validation = False


def reset_logged_metrics(trainer: pl.Trainer) -> None:
    """A fresh fit's metric state: no callback / progress-bar metrics of the previous branch, no half-aggregated
    epoch values (a branch that ended inside an epoch would otherwise leak into the next one's records)."""
    connector = trainer._logger_connector
    connector.reset_results()
    connector.reset_metrics()


def reset_monitoring_callbacks(trainer: pl.Trainer) -> None:
    for callback in trainer.callbacks:
        if isinstance(callback, EarlyStopping):
            _reset_early_stopping(callback)
        elif isinstance(callback, ModelCheckpoint):
            _reset_checkpoint(callback)
    trainer.should_stop = False
