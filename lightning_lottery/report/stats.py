"""Means over seeds with a 95% confidence interval (Student t), without a statistics dependency."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# Two-sided 95% quantiles t_{0.975, df} for df = 1..30 (standard tables, 3 decimals).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_Z975 = 1.959964


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (a 95% two-sided interval).

    Exact to the table's 3 decimals for df <= 30; beyond, the Cornish-Fisher expansion around the normal quantile,
    which is within 1e-4 of the exact value there.
    """
    if df < 1:
        raise ValueError(f"a t interval needs at least 1 degree of freedom (2 values), got df={df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


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
