"""Lightning parts the app adds to every run so that a killed run loses nothing.

* :class:`AtomicCheckpointIO`: checkpoints (``last.ckpt`` above all) are written to a temporary file in their own
  folder, synced and renamed over the old one, so a kill at any moment leaves the previous complete file or the new
  one. Lightning's own path writes through fsspec's local transaction, whose temporary file lives in the system
  temp folder: when that is another file system (a cluster's local ``/tmp`` and a shared run folder) the final move
  is a copy, and a kill during the copy leaves a truncated checkpoint.
* :class:`ResumableCSVLogger` and :class:`CSVResumePoint`: ``metrics.csv`` survives a resume. Every checkpoint
  records how many rows the file held when it was written (after flushing the rows logged so far); a resume cuts
  the rows the killed run logged after that checkpoint, which the resumed run logs again, and appends.
* :class:`TrainingStarted`: whether a training step has run, so that errors before it count as bad input.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from lightning_lottery.callbacks import AtomicCheckpointIO as AtomicCheckpointIO  # the app's checkpoint writer
from lightning_lottery.io import atomic_write

__all__ = ["AtomicCheckpointIO", "CSVResumePoint", "ResumableCSVLogger", "TrainingStarted", "route_lightning_logs"]


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer that keeps an existing ``metrics.csv`` (and its columns) instead of deleting it."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self.rows = 0
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                reader = csv.reader(file)
                self.metrics_keys = next(reader, [])
                self.rows = sum(1 for _ in reader)

    def _check_log_dir_exists(self) -> None:
        """Lightning deletes ``metrics.csv`` here; a resumed run appends to it instead."""

    def save(self) -> None:
        self.rows += len(self.metrics)
        super().save()

    def _rewrite(self, fieldnames: list[str], rows: list[dict[str, str]]) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=fieldnames)
                writer.writeheader()
                writer.writerows(rows)

        if isinstance(self._fs, LocalFileSystem):
            atomic_write(Path(self.metrics_file_path), write)
            return
        with self._fs.open(self.metrics_file_path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)

    def _read_rows(self) -> list[dict[str, str]]:
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            return list(csv.DictReader(file))

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        self._rewrite(fieldnames, self._read_rows())  # atomic: a kill mid-way keeps the old file whole

    def keep_rows(self, count: int) -> None:
        """Keep the first ``count`` rows of ``metrics.csv`` (what a checkpoint saw) and drop the rest."""
        if not self._fs.isfile(self.metrics_file_path):
            self.rows = 0
            return
        rows = self._read_rows()
        if len(rows) > count:
            self._rewrite(self.metrics_keys, rows[:count])
        self.rows = min(count, len(rows))


class ResumableCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger`` that appends to an existing ``metrics.csv`` rather than deleting it.

    Pair it with :class:`CSVResumePoint` (the app adds it) so that a resumed run first drops the rows logged after
    its checkpoint. Arguments are ``CSVLogger``'s.

    Example::

        logger = ResumableCSVLogger("runs/a", name="csv", version="")
        trainer = Trainer(logger=logger, callbacks=[CSVResumePoint()])
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment  # type: ignore[return-value]

    @property
    def rows_written(self) -> int:
        """Data rows in ``metrics.csv`` after the last flush."""
        return self.experiment.rows

    def keep_rows(self, count: int) -> None:
        """Drop every row after the first ``count`` (rows a killed run logged after its last checkpoint)."""
        self.experiment.keep_rows(count)


class CSVResumePoint(pl.Callback):
    """Records in each checkpoint how many rows ``metrics.csv`` held; on resume, cuts the file back to that."""

    def __init__(self) -> None:
        self._trainer: pl.Trainer | None = None

    def _loggers(self) -> list[ResumableCSVLogger]:
        trainer = self._trainer
        if trainer is None or not trainer.is_global_zero:
            return []
        return [logger for logger in trainer.loggers if isinstance(logger, ResumableCSVLogger)]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        loggers = self._loggers()
        for logger in loggers:
            logger.save()  # the rows logged before this checkpoint reach the disk with it
        return {"rows": loggers[0].rows_written if loggers else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        rows = state_dict.get("rows")
        if rows is not None:
            for logger in self._loggers():
                logger.keep_rows(int(rows))


class TrainingStarted(pl.Callback):
    """``started`` turns True at the first training batch of the fit."""

    def __init__(self) -> None:
        self.started = False

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        self.started = True


def route_lightning_logs() -> None:
    """Let Lightning's log lines (and the callback's ``rank_zero_info``) reach the root logger's handlers.

    Lightning gives its loggers console handlers of their own (on stderr), and stops their propagation when it is
    imported before logging is configured; under Hydra the root logger has the job's console and file handlers, so
    lines would go to stderr, twice, or miss the job log. Only the root's handlers are kept.
    """
    if not logging.getLogger().handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True
