"""Choose the headline metric and aggregate runs over seeds: per experiment, per series, per level.

A series is one branch (the ticket or one of its controls) of one group of runs, a group being the runs whose
settings differ only in the seed (:func:`~lightning_lottery.report.collect.fingerprint`): runs with other budgets,
schedules or scopes are never averaged together, and the report names the settings that tell groups apart.

Every number is taken at the early-stop iteration of its level (``record["metrics"]``: all metrics at the
validation with the best ``monitor``), never the best test value over training: the protocol of Frankle & Carbin
(test accuracy at the iteration of minimum validation loss).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lightning_lottery.report.collect import (
    BRANCH_LABELS,
    TICKET,
    ReportError,
    Run,
    branch_of,
    branch_rank,
    fingerprint_key,
    variant_order,
)
from lightning_lottery.report.stats import Stat

__all__ = [
    "DEFAULT_METRICS",
    "DenseReference",
    "Experiment",
    "Group",
    "Headline",
    "Series",
    "Stat",
    "build_experiments",
    "summary_rows",
]

# Preferred headline metrics, in order, when none is requested; then the monitor.
DEFAULT_METRICS = ("test_acc", "val_acc", "test_ppl", "val_ppl")
_LOWER_IS_BETTER = ("loss", "ppl", "perplexity", "err")
TRAIN_ACC, TEST_ACC = "train_acc", "test_acc"


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
class Group:
    """Runs whose settings differ only in the seed."""

    key: str
    runs: list[Run]
    settings: dict[str, Any]
    differs: dict[str, Any] = field(default_factory=dict)  # its values of the settings that differ between groups

    def describe(self) -> str:
        return ", ".join(f"{key}={_show(value)}" for key, value in self.differs.items())


@dataclass
class Series:
    """One branch of one group of runs: per level, the headline metric, early stop and train accuracy over seeds."""

    label: str
    branch: str
    group: Group
    runs: list[Run]
    remaining: dict[int, float]  # mean % of weights used (remaining, times a supermask's keep), by level
    metric: dict[int, Stat]
    early_stop: dict[int, Stat]
    train_acc: dict[int, Stat]
    gap: dict[int, Stat]  # train - test accuracy at the early stop (Frankle & Carbin's generalisation gap)
    budget: dict[int, float | None]  # optimizer steps each level's branch could train
    compute: dict[int, Stat] = field(default_factory=dict)  # ticket line: optimizer steps of levels 0..r, summed

    @property
    def rounds(self) -> list[int]:
        return sorted(self.remaining)

    @property
    def seeds(self) -> list[int | None]:
        return [run.seed for run in self.runs]

    @property
    def is_control(self) -> bool:
        return self.branch != TICKET

    # The old name of a series' label.
    @property
    def variant(self) -> str:
        return self.label


@dataclass
class DenseReference:
    """The dense (level-0) networks of one group of settings, each unique network once."""

    metric: Stat
    early_stop: Stat
    description: str  # the settings telling it apart from other dense references; "" when there is one


@dataclass
class Experiment:
    """All series of one experiment, aggregated over seeds."""

    name: str
    runs: list[Run]
    headline: Headline
    groups: list[Group]
    series: list[Series]
    dense_references: list[DenseReference]

    @property
    def rounds(self) -> list[int]:
        return sorted({r for s in self.series for r in s.rounds})

    @property
    def supermask(self) -> bool:
        """Some run trains a supermask (edge-popup): the x axis is the % of weights kept."""
        return any(run.kept_fraction < 1 for run in self.runs)

    @property
    def weights_word(self) -> str:
        return "kept" if self.supermask else "remaining"

    def remaining_range(self, round_index: int) -> tuple[float, float]:
        """Smallest and largest % of weights in this level among the series (equal unless schedules differ)."""
        values = [s.remaining[round_index] for s in self.series if round_index in s.remaining]
        return min(values), max(values)

    def dense(self, quantity: str = "metric") -> Stat | None:
        """The dense networks' ``"metric"`` or ``"early_stop"``, when the experiment has one kind of them."""
        if len(self.dense_references) != 1:
            return None
        reference = self.dense_references[0]
        return reference.metric if quantity == "metric" else reference.early_stop

    @property
    def monitors(self) -> list[tuple[str, str]]:
        """The (monitor, mode) pairs that defined the early stops (one, unless runs were set up differently)."""
        return sorted({(run.monitor, run.mode) for run in self.runs if run.monitor})

    @property
    def differing_settings(self) -> list[str]:
        return sorted({key for group in self.groups for key in group.differs})

    @property
    def has_train_acc(self) -> bool:
        return any(stat.n for s in self.series for stat in s.train_acc.values())


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
    names = [{name for record in run.records for name in record.get("metrics") or {}} for run in runs]
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
    """The metric at the level's early-stop iteration (never its best value over the level)."""
    return (record.get("metrics") or {}).get(metric)


def generalisation_gap(record: dict[str, Any]) -> float | None:
    """Train minus test accuracy at the early stop, when both were logged."""
    train, test = at_early_stop(record, TRAIN_ACC), at_early_stop(record, TEST_ACC)
    if isinstance(train, (int, float)) and isinstance(test, (int, float)):
        return float(train) - float(test)
    return None


def build_series(label: str, branch: str, group: Group, metric: str) -> Series:
    members = [run for run in group.runs if branch in run.branches]
    by_round: dict[int, list[tuple[Run, dict[str, Any]]]] = {}
    for run in members:
        for record in run.branch_records(branch):
            by_round.setdefault(record["round"], []).append((run, record))
    budgets = {k: [b for run, r in recs if (b := run.budget(r)) is not None] for k, recs in by_round.items()}
    return Series(
        label=label,
        branch=branch,
        group=group,
        runs=members,
        remaining={k: statistics.fmean(run.weights_pct(r) for run, r in recs) for k, recs in by_round.items()},
        metric={k: Stat.of(at_early_stop(r, metric) for _, r in recs) for k, recs in by_round.items()},
        early_stop={k: Stat.of(r.get("best_round_step") for _, r in recs) for k, recs in by_round.items()},
        train_acc={k: Stat.of(at_early_stop(r, TRAIN_ACC) for _, r in recs) for k, recs in by_round.items()},
        gap={k: Stat.of(generalisation_gap(r) for _, r in recs) for k, recs in by_round.items()},
        budget={k: max(values) if values else None for k, values in budgets.items()},
        compute=_search_compute(members) if branch == TICKET else {},
    )


def _search_compute(runs: Sequence[Run]) -> dict[int, Stat]:
    """Per level, the optimizer steps the ticket line took to reach it (levels 0..r summed: what a search costs,
    which early-bird levels cut), over seeds."""
    totals: dict[int, list[float]] = {}
    for run in runs:
        spent = 0.0
        for record in sorted(run.branch_records(TICKET), key=lambda r: r["round"]):
            spent += float(record.get("steps") or 0)
            totals.setdefault(record["round"], []).append(spent)
    return {level: Stat.of(values) for level, values in totals.items()}


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Runs grouped by fingerprint; each group is told which settings set it apart from the others."""
    groups: dict[str, Group] = {}
    for run in runs:
        settings = run.fingerprint()
        key = fingerprint_key(settings)
        groups.setdefault(key, Group(key, [], settings)).runs.append(run)
    ordered = sorted(groups.values(), key=lambda g: (variant_order(g.runs[0].label, g.runs[0].settings), g.key))
    for key in _differing_keys([g.settings for g in ordered]):
        for group in ordered:
            group.differs[key] = group.settings.get(key, "(unset)")
    return ordered


def _differing_keys(settings: Sequence[dict[str, Any]]) -> list[str]:
    keys = sorted({key for s in settings for key in s})
    missing = object()
    return [k for k in keys if len({json.dumps(s.get(k, missing), default=str) for s in settings}) > 1]


def _series_of(groups: Sequence[Group], metric: str) -> list[Series]:
    """One series per (group, branch), labelled so that no two share a label."""
    plan = []
    for group in groups:
        ticket_label = group.runs[0].label
        branches = sorted({b for run in group.runs for b in run.branches}, key=branch_rank)
        for branch in branches:
            base = ticket_label if branch == TICKET else BRANCH_LABELS.get(branch, branch)
            plan.append([base, branch, group, ticket_label])
    shared = _shared_labels(plan)  # a control's label names its ticket when two searches bring the same control
    for entry in plan:
        if entry[1] != TICKET and entry[0] in shared:
            entry[0] = f"{entry[0]} (control of {entry[3]})"
    shared = _shared_labels(plan)  # the same label from groups with other settings: name the settings
    for entry in plan:
        if entry[0] in shared and entry[2].describe():
            entry[0] = f"{entry[0]} [{entry[2].describe()}]"
    series = [build_series(label, branch, group, metric) for label, branch, group, _ in plan]
    order = {id(g): i for i, g in enumerate(groups)}
    return sorted(
        series,
        key=lambda s: (variant_order(s.label, s.group.runs[0].settings), order[id(s.group)], branch_rank(s.branch)),
    )


def _shared_labels(plan: Sequence[list[Any]]) -> set[str]:
    labels = [entry[0] for entry in plan]
    return {label for label in labels if labels.count(label) > 1}


def _dense_references(runs: Sequence[Run], metric: str) -> list[DenseReference]:
    """Every unique dense network once (a run's level 0 is shared by its branches; separate runs with the same seed
    and non-lottery settings trained the same dense network), grouped by their settings other than the seed."""
    networks: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for run in runs:
        dense = next((r for r in run.records if r["round"] == 0 and branch_of(r) == TICKET), None)
        if dense is not None:
            settings = run.dense_fingerprint()
            networks.setdefault(fingerprint_key(settings), (settings, dense))
    kinds: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for settings, record in networks.values():
        without_seed = {k: v for k, v in settings.items() if k != "seed"}
        kinds.setdefault(fingerprint_key(without_seed), []).append((without_seed, record))
    differing = _differing_keys([members[0][0] for members in kinds.values()])
    return [
        DenseReference(
            metric=Stat.of(at_early_stop(record, metric) for _, record in members),
            early_stop=Stat.of(record.get("best_round_step") for _, record in members),
            description=", ".join(f"{k}={_show(members[0][0].get(k, '(unset)'))}" for k in differing),
        )
        for members in kinds.values()
    ]


def build_experiments(runs: Sequence[Run], metric: str | None = None) -> list[Experiment]:
    """Group runs by experiment, then by fingerprint, and aggregate each branch over seeds; ``runs`` as
    :func:`~lightning_lottery.report.collect.collect_runs` orders them."""
    experiments: dict[str, list[Run]] = {}
    for run in runs:
        experiments.setdefault(run.experiment, []).append(run)
    out = []
    for name, members in experiments.items():
        headline = headline_for(name, members, metric)
        groups = group_runs(members)
        out.append(
            Experiment(
                name=name,
                runs=members,
                headline=headline,
                groups=groups,
                series=_series_of(groups, headline.metric),
                dense_references=_dense_references(members, headline.metric),
            )
        )
    return out


def summary_rows(experiments: Sequence[Experiment]) -> list[dict[str, Any]]:
    """One row per (run, branch, level) for ``summary.csv``; a run's dense level 0 once, under its ticket branch."""
    rows = []
    for experiment in experiments:
        for series in experiment.series:
            for run in series.runs:
                for record in run.branch_records(series.branch):
                    if series.is_control and record["round"] == 0:
                        continue
                    row: dict[str, Any] = {
                        "experiment": experiment.name,
                        "variant": series.label,
                        "branch": series.branch,
                        "group": series.group.key,
                        "seed": run.seed,
                        "run": str(run.run_dir),
                        "round": record["round"],
                        "remaining_pct": record["remaining_pct"],
                        "weights_pct": run.weights_pct(record),
                        "sparsity": record["sparsity"],
                        "monitor": record.get("monitor"),
                        "best": record.get("best"),
                        "best_step": record.get("best_step"),
                        "best_round_step": record.get("best_round_step"),
                        "best_epoch": record.get("best_epoch"),
                        "start_step": record.get("start_step"),
                        "end_step": record.get("end_step"),
                        "budget": run.budget(record),
                        "steps": record.get("steps"),
                        "headline_metric": experiment.headline.metric,
                        "headline": at_early_stop(record, experiment.headline.metric),
                        "train_acc": at_early_stop(record, TRAIN_ACC),
                        "generalisation_gap": generalisation_gap(record),
                    }
                    row.update({f"at_best.{k}": v for k, v in sorted((record.get("metrics") or {}).items())})
                    row.update({f"final.{k}": v for k, v in sorted((record.get("final_metrics") or {}).items())})
                    rows.append(row)
    return rows


def _show(value: Any) -> str:
    return json.dumps(value, default=str) if not isinstance(value, str) else value
