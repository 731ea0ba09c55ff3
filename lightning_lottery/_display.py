"""What a search shows while it runs: metrics for the trainer's loggers, the progress bar, one line per branch."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info


def log_metrics(trainer: pl.Trainer, metrics: Mapping[str, float], step: int | None = None) -> None:
    """Send ``metrics`` to every logger at ``step``, by default the trainer's logger step (monotonic across
    branches: the optimizer steps of the whole search so far)."""
    if not trainer.is_global_zero or not metrics:
        return
    if step is None:
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
    for logger in trainer.loggers:
        logger.log_metrics(dict(metrics), step=step)


def curve_prefix(level: int, branch: str) -> str:
    """``round_03/`` for the ticket, ``round_03/random/`` for a control: one curve per metric, branch and level."""
    return f"round_{level:02d}/" if branch == "ticket" else f"round_{level:02d}/{branch}/"


def announce(level: int, rounds: int, branch: str, remaining_pct: float, total: int, how: str) -> None:
    rank_zero_info(
        f"[lottery] round {level}/{rounds}, branch {branch}: {remaining_pct:.2f}% of {total} prunable weights "
        f"remain ({how})"
    )


def announce_text(text: str) -> None:
    rank_zero_info(f"[lottery] {text}")


def show_in_progress_bar(trainer: pl.Trainer, extra: Callable[[], dict[str, str]]) -> None:
    """Add the search's position to the progress bar's metrics (``ProgressBar.get_metrics`` is its public hook)."""
    bar = trainer.progress_bar_callback
    if bar is None or "get_metrics" in vars(bar):
        return
    original = bar.get_metrics

    def get_metrics(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        return {**original(trainer, pl_module), **extra()}

    bar.get_metrics = get_metrics


def hide_from_progress_bar(trainer: pl.Trainer) -> None:
    bar = trainer.progress_bar_callback
    if bar is not None:
        vars(bar).pop("get_metrics", None)
