"""What a branch's validations said: its best ``monitor`` value (the early-stop iteration), the metrics there, and
its curve (every validation), measured in steps of the branch and of round 0's schedule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from lightning_lottery.core.search import SearchSettings


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The one-number entries of Lightning's ``callback_metrics`` as floats."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, Tensor):
            if value.numel() != 1:
                continue
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


class BranchMetrics:
    """The validations of the branch being trained."""

    def __init__(self, settings: SearchSettings) -> None:
        self.settings = settings
        self.best: dict[str, Any] | None = None
        self.last: dict[str, float] = {}
        self.curve: list[dict[str, float]] = []
        self._monitor_checked = False

    def reset(self) -> None:
        self.best, self.last, self.curve = None, {}, []

    def check_monitor(self, available: Mapping[str, Any]) -> None:
        monitor = self.settings.monitor
        if monitor is None or self._monitor_checked:
            return
        if monitor not in available:
            raise ValueError(
                f"`monitor={monitor!r}` was not logged; logged metrics are {sorted(available)}. Log it with "
                "self.log(...) in validation_step, or pass monitor=<one of those> (or monitor=None)."
            )
        self._monitor_checked = True

    def observe(self, callback_metrics: Mapping[str, Any], step: int, epoch: int, start_step: int) -> dict[str, float]:
        """Record one validation at global ``step``; returns the metrics as floats."""
        self.check_monitor(callback_metrics)
        metrics = scalar_metrics(callback_metrics)
        self.last = metrics
        monitor = self.settings.monitor
        if monitor is not None and self.settings.better(metrics[monitor], self.best and self.best["value"]):
            self.best = {"value": metrics[monitor], "step": step, "epoch": epoch, "metrics": metrics}
        self.curve.append({"round_step": step - start_step, "step": step, "epoch": epoch, **metrics})
        return metrics

    def record(self, start_step: int) -> dict[str, Any]:
        """The history fields of the branch: its best value and where it was reached."""
        best = self.best or {}
        return {
            "monitor": self.settings.monitor,
            "best": best.get("value"),
            "best_step": best.get("step"),
            "best_round_step": best["step"] - start_step if best else None,
            "best_epoch": best.get("epoch"),
            "metrics": best.get("metrics", {}),
            "final_metrics": dict(self.last),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "last_metrics": self.last, "curve": self.curve}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = state["best"]
        self.last = dict(state["last_metrics"])
        self.curve = list(state["curve"])
