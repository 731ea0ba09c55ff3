"""Weights & Biases: per-round curves overlaid on one axis, the round summary table, tickets as artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import WandbLogger


def _wandb_loggers(trainer: pl.Trainer) -> list[WandbLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


class WandbLottery(pl.Callback):
    """Add next to a ``WandbLogger`` and a :class:`~lightning_lottery.LotteryTicketCallback`.

    - ``round_XX/<metric>`` curves use ``round_step`` (the step within the round) as their x-axis, so every
      round's curve starts at 0 and rounds overlay in one panel per metric;
    - after each round, its ticket folder is logged as an artifact (type ``lottery-ticket``) and the table
      ``lottery/rounds`` (one row per round: sparsity, early-stop iteration, metrics there) is updated.

    Works offline (``WANDB_MODE=offline``); the ``lightning-lottery`` app adds it whenever ``logger=wandb``.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        for logger in _wandb_loggers(trainer):
            run = logger.experiment
            run.define_metric("round_step")
            run.define_metric("round_*", step_metric="round_step")
            run.define_metric("round_summary/*", step_metric="round_summary/round")

    def on_lottery_round_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, record: dict[str, Any], folder: Path | None
    ) -> None:
        if not trainer.is_global_zero:
            return
        import wandb

        history = next(cb.history for cb in trainer.callbacks if hasattr(cb, "ticket") and hasattr(cb, "history"))
        metric_names = sorted({k for r in history for k in r["metrics"]})
        columns = ["round", "remaining_pct", "sparsity", "best", "best_round_step", *metric_names]
        rows = [
            [r["round"], r["remaining_pct"], r["sparsity"], r["best"], r["best_round_step"]]
            + [r["metrics"].get(k) for k in metric_names]
            for r in history
        ]
        for logger in _wandb_loggers(trainer):
            run = logger.experiment
            run.log({"lottery/rounds": wandb.Table(columns=columns, data=rows)}, commit=False)
            run.summary["lottery/remaining_pct"] = record["remaining_pct"]
            run.summary["lottery/round"] = record["round"]
            if folder is not None:
                artifact = wandb.Artifact(
                    f"ticket-{run.id}-round{record['round']:02d}",
                    type="lottery-ticket",
                    metadata={k: v for k, v in record.items() if not isinstance(v, dict)},
                )
                artifact.add_dir(str(folder))
                run.log_artifact(artifact)
