"""Means over seeds with a 95% confidence interval (Student t), without a statistics dependency."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lightning_lottery.core.connectivity import t_quantile_975

__all__ = ["Stat", "t_quantile_975"]


@dataclass(frozen=True)
class Stat:
    """One quantity over seeds (missing and NaN values left out): mean, spread and a 95% CI of the mean."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Iterable[Any]) -> Stat:
        kept = (float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool))
        return cls(tuple(v for v in kept if math.isfinite(v)))

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation (n - 1); 0 for a single seed."""
        return statistics.stdev(self.values) if self.n > 1 else 0.0

    @property
    def half_width(self) -> float:
        """Half-width of the 95% confidence interval of the mean (Student t, n - 1 df); NaN for n < 2."""
        if self.n < 2:
            return math.nan
        return t_quantile_975(self.n - 1) * self.std / math.sqrt(self.n)

    @property
    def ci(self) -> tuple[float, float]:
        """The 95% confidence interval of the mean; (mean, mean) for a single seed, which has none."""
        width = self.half_width if self.n > 1 else 0.0
        return self.mean - width, self.mean + width

    @property
    def lo(self) -> float:
        return min(self.values, default=math.nan)

    @property
    def hi(self) -> float:
        return max(self.values, default=math.nan)
