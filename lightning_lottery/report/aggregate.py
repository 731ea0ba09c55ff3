"""Choose the headline metric and aggregate runs over seeds: per experiment, per variant, per round.

Every number is taken at the early-stop iteration of its round (``record["metrics"]``: all metrics at the
validation with the best ``monitor``), never the best test value over training: the protocol of Frankle & Carbin
(test accuracy at the iteration of minimum validation loss).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from lightning_lottery.report.collect import ReportError, Run, variant_order

# Preferred headline metrics, in order, when none is requested; then the monitor.
DEFAULT_METRICS = ("test_acc", "val_acc", "test_ppl", "val_ppl")
_LOWER_IS_BETTER = ("loss", "ppl", "perplexity", "err")
_DENSE_PCT = 100.0 - 1e-6  # remaining_pct of an unpruned round (float noise aside)


@dataclass(frozen=True)
class Stat:
    """Summary of one value over seeds (missing and NaN values left out)."""

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
    def lo(self) -> float:
        return min(self.values, default=math.nan)

    @property
    def hi(self) -> float:
        return max(self.values, default=math.nan)


@dataclass(frozen=True)
class Headline:
    """The metric the report is about, which way is better, and how to display it."""

    metric: str
    higher_is_better: bool | None
    scale: float = 1.0  # accuracies in [0, 1] are shown in percent
    unit: str = ""

    @property
    def label(self) -> str:
        return f"{self.metric} (%)" if self.unit == "%" else self.metric

    @property
    def better(self) -> str:
        if self.higher_is_better is None:
            return ""
        return "higher is better" if self.higher_is_better else "lower is better"


@dataclass
class Series:
    """One variant of one experiment: per round, the headline metric and early-stop iteration over seeds."""

    variant: str
    runs: list[Run]
    remaining: dict[int, float]  # mean % of weights remaining, by round
    metric: dict[int, Stat]
    early_stop: dict[int, Stat]

    @property
    def rounds(self) -> list[int]:
        return sorted(self.remaining)

    @property
    def seeds(self) -> list[int | None]:
        return [run.seed for run in self.runs]


@dataclass
class Experiment:
    """All variants of one experiment, aggregated over seeds."""

    name: str
    runs: list[Run]
    headline: Headline
    series: list[Series]

    @property
    def rounds(self) -> list[int]:
        return sorted({r for s in self.series for r in s.rounds})

    def remaining_range(self, round_index: int) -> tuple[float, float]:
        """Smallest and largest % remaining among the runs in this round (equal unless schedules differ)."""
        values = [r["remaining_pct"] for run in self.runs for r in run.records if r["round"] == round_index]
        return min(values), max(values)

    def dense(self, quantity: str = "metric") -> Stat | None:
        """The headline ``"metric"`` or ``"early_stop"`` iteration over every dense (100% weights) round of the
        experiment, whatever the variant: the reference the sparse rounds are compared with. None if no round is."""
        values = [
            at_early_stop(r, self.headline.metric) if quantity == "metric" else r.get("best_round_step")
            for run in self.runs
            for r in run.records
            if r["remaining_pct"] >= _DENSE_PCT
        ]
        stat = Stat.of(values)
        return stat if stat.n else None

    @property
    def monitors(self) -> list[tuple[str, str]]:
        """The (monitor, mode) pairs that defined the early stops (one, unless runs were set up differently)."""
        return sorted({(run.monitor, run.mode) for run in self.runs if run.monitor})


def metric_direction(metric: str, runs: Sequence[Run]) -> bool | None:
    """True if higher is better, False if lower is, None if unknown: the monitor's mode, else the name."""
    for run in runs:
        if run.monitor == metric:
            return run.mode == "max"
    name = metric.lower()
    if "acc" in name:
        return True
    if any(word in name for word in _LOWER_IS_BETTER):
        return False
    return None


def choose_metric(experiment: str, runs: Sequence[Run], requested: str | None = None) -> str:
    """The requested metric, else the first of ``DEFAULT_METRICS`` that every run recorded, else the monitor."""
    names = [run.metric_names() for run in runs]
    common = set.intersection(*names)
    available = ", ".join(sorted(common)) or "none"
    partial = sorted(set.union(*names) - common)
    if partial:
        available += f" (in some runs only: {', '.join(partial)})"
    if requested is not None:
        lacking = [str(run.run_dir) for run, got in zip(runs, names) if requested not in got]
        if lacking:
            shown = ", ".join(lacking[:3]) + (f" and {len(lacking) - 3} more" if len(lacking) > 3 else "")
            raise ReportError(
                f"Metric {requested!r} was not recorded at the early-stop iteration of {len(lacking)} run(s) of "
                f"experiment {experiment!r} ({shown}). Available metrics: {available}."
            )
        return requested
    for candidate in DEFAULT_METRICS:
        if candidate in common:
            return candidate
    monitors = {run.monitor for run in runs}
    monitor = next(iter(monitors))
    if len(monitors) == 1 and monitor in common:
        return monitor
    raise ReportError(
        f"No headline metric for experiment {experiment!r}: none of {', '.join(DEFAULT_METRICS)} or the monitor "
        f"was recorded at the early-stop iteration of every run (runs with monitor=None record none). "
        f"Available metrics: {available}. Choose one with --metric NAME."
    )


def headline_for(experiment: str, runs: Sequence[Run], requested: str | None = None) -> Headline:
    metric = choose_metric(experiment, runs, requested)
    values = [v for run in runs for r in run.records if (v := (r.get("metrics") or {}).get(metric)) is not None]
    as_percent = "acc" in metric.lower() and all(0.0 <= v <= 1.0 for v in values)
    return Headline(metric, metric_direction(metric, runs), 100.0 if as_percent else 1.0, "%" if as_percent else "")


def at_early_stop(record: dict[str, Any], metric: str) -> float | None:
    """The metric at the round's early-stop iteration (never its best value over the round)."""
    return (record.get("metrics") or {}).get(metric)


def build_series(variant: str, runs: list[Run], metric: str) -> Series:
    by_round: dict[int, list[dict[str, Any]]] = {}
    for run in runs:
        for record in run.records:
            by_round.setdefault(record["round"], []).append(record)
    return Series(
        variant=variant,
        runs=runs,
        remaining={k: statistics.fmean(r["remaining_pct"] for r in recs) for k, recs in by_round.items()},
        metric={k: Stat.of(at_early_stop(r, metric) for r in recs) for k, recs in by_round.items()},
        early_stop={k: Stat.of(r.get("best_round_step") for r in recs) for k, recs in by_round.items()},
    )


def build_experiments(runs: Sequence[Run], metric: str | None = None) -> list[Experiment]:
    """Group runs by (experiment, variant) and aggregate over seeds; ``runs`` as :func:`collect_runs` orders them."""
    experiments: dict[str, list[Run]] = {}
    for run in runs:
        experiments.setdefault(run.experiment, []).append(run)
    out = []
    for name, members in experiments.items():
        headline = headline_for(name, members, metric)
        variants: dict[str, list[Run]] = {}
        for run in members:
            variants.setdefault(run.variant, []).append(run)
        ordered = sorted(variants.items(), key=lambda item: variant_order(item[0], item[1][0].settings))
        out.append(
            Experiment(
                name=name,
                runs=members,
                headline=headline,
                series=[build_series(variant, group, headline.metric) for variant, group in ordered],
            )
        )
    return out


def summary_rows(experiments: Sequence[Experiment]) -> list[dict[str, Any]]:
    """One row per (run, round) for ``summary.csv``: identity, sparsity, early stop, every metric at best and final."""
    rows = []
    for experiment in experiments:
        for series in experiment.series:
            for run in series.runs:
                for record in run.records:
                    row: dict[str, Any] = {
                        "experiment": experiment.name,
                        "variant": series.variant,
                        "seed": run.seed,
                        "run": str(run.run_dir),
                        "round": record["round"],
                        "remaining_pct": record["remaining_pct"],
                        "sparsity": record["sparsity"],
                        "monitor": record.get("monitor"),
                        "best": record.get("best"),
                        "best_round_step": record.get("best_round_step"),
                        "best_epoch": record.get("best_epoch"),
                        "steps": record.get("steps"),
                        "headline_metric": experiment.headline.metric,
                        "headline": at_early_stop(record, experiment.headline.metric),
                    }
                    row.update({f"at_best.{k}": v for k, v in sorted((record.get("metrics") or {}).items())})
                    row.update({f"final.{k}": v for k, v in sorted((record.get("final_metrics") or {}).items())})
                    rows.append(row)
    return rows
