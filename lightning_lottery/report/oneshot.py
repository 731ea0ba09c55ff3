"""One-shot runs beside iterative ones: line up their levels by sparsity.

A one-shot search (``rounds=1, amount=[s]``) has a dense level 0 and one pruned level 1, whatever its target; a
one-shot vs. iterative comparison runs several targets. The report aggregates by level, so each one-shot run's
pruned level is shown at the level of the experiment's iterative runs that has the same % of weights remaining
(within 2%, relative), e.g. one-shot to 21% beside iterative level 7. If some target matches no iterative level
(or there is no iterative run), the one-shot levels are numbered by target instead: 1 for the least sparse.
Records are copied, never changed on disk; ``record["level_on_disk"]`` keeps the original level.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from lightning_lottery.report.collect import Run

TOLERANCE = 0.02  # relative difference in % remaining still counted as the same level


@dataclasses.dataclass
class AlignedRun(Run):
    """A one-shot run whose pruned level is shown as another level; ``level_on_disk`` maps shown to stored."""

    level_on_disk: dict[int, int] = dataclasses.field(default_factory=dict)

    def curve(self, round_index: int, *args: Any, **kwargs: Any) -> list[dict[str, float]]:
        return super().curve(self.level_on_disk.get(round_index, round_index), *args, **kwargs)


def is_one_shot(run: Run) -> bool:
    return run.settings.get("rounds") == 1 and {r["round"] for r in run.records} <= {0, 1}


def shown_level(run: Run, level_on_disk: int) -> int:
    """The level a run's stored level is shown at (itself unless the run was aligned)."""
    mapping = getattr(run, "level_on_disk", {})
    return next((shown for shown, stored in mapping.items() if stored == level_on_disk), level_on_disk)


def _pruned_remaining(run: Run) -> float | None:
    return next((r["remaining_pct"] for r in run.records if r["round"] == 1), None)


def _reference_levels(runs: Sequence[Run]) -> dict[int, float]:
    """% remaining by level over the experiment's multi-level runs (mean where they differ slightly)."""
    values: dict[int, list[float]] = {}
    for run in runs:
        for record in run.records:
            values.setdefault(record["round"], []).append(record["remaining_pct"])
    return {level: sum(v) / len(v) for level, v in values.items() if level > 0}


def _match(remaining: float, reference: dict[int, float]) -> int | None:
    level = min(reference, key=lambda k: abs(reference[k] - remaining), default=None)
    if level is not None and abs(reference[level] - remaining) <= TOLERANCE * remaining:
        return level
    return None


def _aligned(run: Run, level: int) -> AlignedRun:
    values = {f.name: getattr(run, f.name) for f in dataclasses.fields(run) if f.init}
    records = []
    for record in run.records:
        if record["round"] == 1:
            record = {**record, "round": level, "level_on_disk": 1}
        records.append(record)
    values.update(records=records, level_on_disk={level: 1})
    return AlignedRun(**values)


def align_one_shot(runs: Sequence[Run]) -> list[Run]:
    """The runs, with every one-shot run of an experiment that also has other runs shown at matching levels."""
    by_experiment: dict[str, list[Run]] = {}
    for run in runs:
        by_experiment.setdefault(run.experiment, []).append(run)
    levels: dict[int, int] = {}  # id(run) -> shown level of its pruned level
    for members in by_experiment.values():
        one_shot = [run for run in members if is_one_shot(run) and _pruned_remaining(run) is not None]
        targets = sorted({round(_pruned_remaining(run), 6) for run in one_shot}, reverse=True)
        if len(targets) < 2 and len(one_shot) == len(members):
            continue  # a lone one-shot search: nothing to line up with
        reference = _reference_levels([run for run in members if not is_one_shot(run)])
        matched = {t: _match(t, reference) for t in targets}
        if not all(level is not None for level in matched.values()):
            matched = {t: rank for rank, t in enumerate(targets, start=1)}
        for run in one_shot:
            levels[id(run)] = matched[round(_pruned_remaining(run), 6)]
    return [_aligned(run, levels[id(run)]) if levels.get(id(run), 1) != 1 else run for run in runs]
