"""``rewind="auto"``: the earliest point of round 0 from which training is stable (Frankle et al. 2020).

While round 0 trains, every step of a grid (fractions of its budget) gets a Lightning checkpoint and a
:class:`~lightning_lottery._resume.ResumePoint`. When round 0 ends, the instability of each point is measured in
grid order (two children resumed from its checkpoint with different data orders, the validation error along the
linear path between them; :func:`lightning_lottery.analysis.instability`) until one is stable (error barrier below
the threshold); the levels then rewind to it exactly as with ``rewind=k``. Every measured barrier, the rule and the
chosen step are recorded (``history.json``, ticket metadata). The children train in their own ``Trainer.fit``
(single device), so they cost compute but leave the search's trainer, RNG and data order as they were.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from lightning_lottery._resume import ResumePoint, RewindPointRecorder
from lightning_lottery.core.connectivity import earliest_stable, grid_steps
from lightning_lottery.core.levels import Rewind
from lightning_lottery.core.snapshot import State
from lightning_lottery.io import atomic_write_json

RESULTS = "results.json"


def _accelerator(trainer: pl.Trainer) -> str:
    """The search's accelerator as ``Trainer(accelerator=...)`` names it (``CUDAAccelerator`` -> ``"cuda"``)."""
    return type(trainer.accelerator).__name__.removesuffix("Accelerator").lower() or "auto"


class AutoRewind:
    """Candidates on a grid of round 0, their instability, and the chosen rewind point."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)
        self.steps: list[int] = []
        self.recorders: dict[int, RewindPointRecorder] = {}
        self.checkpoints: dict[int, str] = {}
        self.results: dict[int, dict[str, Any]] = {}
        self.chosen: int | None = None

    # ------------------------------------------------------------------ round 0

    def plan(self, total_steps: int) -> None:
        """The grid of candidate steps for a round 0 of ``total_steps``."""
        if not self.steps:
            self.steps = grid_steps(total_steps, self.settings["grid"])
            self.recorders = {k: RewindPointRecorder(Rewind("step", k)) for k in self.steps if k > 0}

    def save(self, trainer: pl.Trainer, step: int, folder: Path) -> None:
        """A checkpoint of round 0 at ``step``, which the children of that candidate resume."""
        if step in self.checkpoints or step not in self.steps:
            return
        path = folder / f"step_{step:07d}.ckpt"
        trainer.save_checkpoint(path)
        self.checkpoints[step] = str(path)

    def after_batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, folder: Path) -> None:
        for step, recorder in self.recorders.items():
            if trainer.global_step == step:
                self.save(trainer, step, folder)
            recorder.after_batch(trainer, pl_module)

    def before_epoch(self, trainer: pl.Trainer) -> None:
        for recorder in self.recorders.values():
            recorder.before_epoch(trainer)

    def before_batch(self, trainer: pl.Trainer, epoch_rng: dict[str, Any] | None) -> None:
        for recorder in self.recorders.values():
            recorder.before_batch(trainer, epoch_rng)

    def finish_round_0(self, trainer: pl.Trainer) -> None:
        for recorder in self.recorders.values():
            recorder.finish(trainer, epoch=trainer.fit_loop.epoch_progress.current.processed, batch=0)

    # ------------------------------------------------------------------ after round 0

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule, seed: int, folder: Path) -> int:
        """The instability of the candidates in grid order, until one is stable; returns the chosen step.

        Each result is written to ``folder/results.json`` as soon as it is measured, and a resumed search that was
        killed while measuring takes the finished ones from there.
        """
        from lightning_lottery.analysis.instability import child_seeds, instability

        saved = folder / RESULTS
        if saved.is_file():
            self.results = {int(k): v for k, v in json.loads(saved.read_text()).items()} | self.results

        module_class, hparams = type(pl_module), dict(pl_module.hparams)
        datamodule = trainer.datamodule
        data = datamodule if datamodule is not None else trainer.train_dataloader
        validation = trainer.val_dataloaders
        validation = validation[0] if isinstance(validation, (list, tuple)) else validation
        total = int(trainer.estimated_stepping_batches)
        saved_env = {key: os.environ.get(key) for key in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")}
        try:
            for step in self.steps:
                if step in self.results:
                    continue  # measured before a resume
                if self._stable_so_far() is not None:
                    break
                budget = self.settings["budget"] or total - step
                result = instability(
                    lambda: module_class(**hparams),
                    data,
                    budget,
                    self.checkpoints[step],
                    seeds=child_seeds(seed, step),
                    points=self.settings["points"],
                    eval_data=validation,
                    trainer_kwargs={"accelerator": _accelerator(trainer), "devices": 1, "precision": trainer.precision},
                )
                self.results[step] = {**result.to_dict(), "steps_trained": 2 * budget}
                atomic_write_json(saved, {str(k): v for k, v in self.results.items()})
        finally:
            if datamodule is not None:
                datamodule.trainer = trainer  # the children's fits took it over
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        stable = self._stable_so_far()
        self.chosen = stable if stable is not None else max(self.results)
        return self.chosen

    def _stable_so_far(self) -> int | None:
        measured = [k for k in self.steps if k in self.results]
        barriers = [self.results[k]["error_barrier"] for k in measured]
        return earliest_stable(measured, barriers, self.settings["threshold"]) if measured else None

    def point(self, start_point: ResumePoint, theta0: State) -> tuple[ResumePoint, State]:
        """The chosen rewind point and its weights (θ₀ and round 0's start when step 0 was chosen)."""
        assert self.chosen is not None
        if self.chosen == 0:
            return start_point, theta0
        recorder = self.recorders[self.chosen]
        assert recorder.point is not None and recorder.weights is not None
        return recorder.point, recorder.weights

    def summary(self) -> dict[str, Any]:
        """What history.json and ticket metadata record of the choice."""
        return {
            "grid_steps": self.steps,
            "rule": f"the earliest grid step whose validation error barrier is below {self.settings['threshold']}",
            "threshold": self.settings["threshold"],
            "barriers": {str(k): r["error_barrier"] for k, r in sorted(self.results.items())},
            "results": {str(k): r for k, r in sorted(self.results.items())},
            "chosen_step": self.chosen,
            "stable": self.chosen is not None and self._stable_so_far() == self.chosen,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "recorders": {k: r.state_dict() for k, r in self.recorders.items()},
            "checkpoints": self.checkpoints,
            "results": self.results,
            "chosen": self.chosen,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps = list(state["steps"])
        self.recorders = {}
        for step, recorder_state in state["recorders"].items():
            recorder = RewindPointRecorder(Rewind("step", int(step)))
            recorder.load_state_dict(recorder_state)
            self.recorders[int(step)] = recorder
        self.checkpoints = {int(k): v for k, v in state["checkpoints"].items()}
        self.results = {int(k): v for k, v in state["results"].items()}
        self.chosen = state["chosen"]
