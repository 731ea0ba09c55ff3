"""Summarise a 2:4 rewinding vs fine-tuning comparison (scripts/two_four.sh) from its history.json files.

Layout read: ``OUT/seed<S>/rewind/**/history.json`` (level 0 dense; level 1: the 2:4 ticket rewound to θ₀ and the
random 2:4 control) and ``OUT/seed<S>/finetune/**/history.json`` (level 1: the 2:4 mask on the trained weights,
trained on). Every number is the metric at the branch's early stop (``record["metrics"]``: the validation with the
best monitored value). Comparisons are paired by seed; the claim rule is in docs/sparse.md and ``verdict`` below.

    python scripts/two_four_summary.py OUT [--metric test_acc]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_lottery.core.connectivity import confidence_interval

MIN_SEEDS = 3
TOLERANCE = 0.2  # points: "matches dense" when the interval's lower end is above -0.2 points (LeNet-300-100's spread)

# (arm folder, level, branch) -> label
ARMS = {
    ("rewind", 0, "ticket"): "dense",
    ("rewind", 1, "ticket"): "2:4 rewind θ₀",
    ("rewind", 1, "random"): "random 2:4",
    ("rewind", 1, "reinit"): "2:4 reinit",
    ("finetune", 1, "ticket"): "2:4 fine-tune",
}
COMPARISONS = (
    ("2:4 rewind θ₀", "2:4 fine-tune"),
    ("2:4 rewind θ₀", "random 2:4"),
    ("2:4 fine-tune", "random 2:4"),
    ("2:4 rewind θ₀", "dense"),
    ("2:4 fine-tune", "dense"),
)


class SummaryError(ValueError):
    pass


def interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and two-sided 95% Student-t confidence interval (the mean itself for one value)."""
    mean, lo, hi, _ = confidence_interval(values)
    return mean, lo, hi


def verdict(a: str, b: str, differences: Sequence[float], tolerance: float = TOLERANCE) -> str:
    """The claim rule: a label only from >= 3 seeds, and only when the 95% interval of the paired difference
    excludes 0 (or, against dense, lies above -tolerance points)."""
    if len(differences) < MIN_SEEDS:
        return f"no claim: {len(differences)} seeds (the rule needs {MIN_SEEDS})"
    _, lo, hi = interval(differences)
    if lo > 0:
        return f"{a} better"
    if hi < 0:
        return f"{a} worse"
    if b == "dense" and lo >= -tolerance:
        return f"{a} matches dense (within {tolerance:g} point{'' if tolerance == 1 else 's'})"
    return "no difference detected"


def _history(folder: Path) -> list[dict[str, Any]]:
    found = sorted(folder.rglob("history.json"))
    if len(found) != 1:
        raise SummaryError(f"{folder}: expected one history.json, found {len(found)}")
    return json.loads(found[0].read_text())["history"]


def _at_early_stop(record: Mapping[str, Any], metric: str, where: str) -> float:
    metrics = record.get("metrics") or {}
    if metric not in metrics:
        raise SummaryError(f"{where}: no {metric!r} at early stop (it has {sorted(metrics)}); pick one with --metric")
    value = float(metrics[metric])
    return 100 * value if metric.endswith("acc") else value


def collect(out: Path, metric: str) -> dict[str, dict[str, tuple[float, int | None]]]:
    """{seed folder: {arm label: (metric at early stop, iterations to early stop within the branch)}}."""
    seeds = sorted(p for p in out.glob("seed*") if p.is_dir())
    if not seeds:
        raise SummaryError(f"{out}: no seed*/ folders")
    table: dict[str, dict[str, tuple[float, int | None]]] = {}
    for seed in seeds:
        row = table.setdefault(seed.name, {})
        for arm in ("rewind", "finetune"):
            if not (seed / arm).is_dir():
                continue
            for record in _history(seed / arm):
                key = (arm, record["round"], record.get("branch", "ticket"))
                if key in ARMS:
                    where = f"{seed.name}/{arm} level {key[1]} {key[2]}"
                    steps = record.get("best_round_step", record.get("best_step"))
                    row[ARMS[key]] = (_at_early_stop(record, metric, where), steps)
    return table


def render(
    table: Mapping[str, Mapping[str, tuple[float, int | None]]], metric: str, tolerance: float = TOLERANCE
) -> str:
    labels = [label for label in ARMS.values() if any(label in row for row in table.values())]
    lines = [f"### {metric} at early stop ({len(table)} seeds; mean [95% CI])", "", "| arm | n | mean [95% CI] |"]
    lines.append("|---|---:|---|")
    for label in labels:
        values = [row[label][0] for row in table.values() if label in row]
        mean, lo, hi = interval(values)
        lines.append(f"| {label} | {len(values)} | {mean:.2f} [{lo:.2f}, {hi:.2f}] |")
    lines += ["", "### Paired differences (A − B, same seed)", "", "| A | B | n | mean [95% CI] | label |"]
    lines.append("|---|---|---:|---|---|")
    for a, b in COMPARISONS:
        differences = [row[a][0] - row[b][0] for row in table.values() if a in row and b in row]
        if not differences:
            continue
        mean, lo, hi = interval(differences)
        label = verdict(a, b, differences, tolerance)
        lines.append(f"| {a} | {b} | {len(differences)} | {mean:+.2f} [{lo:+.2f}, {hi:+.2f}] | {label} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--metric", default="test_acc")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=TOLERANCE,
        help="points below dense that still 'match dense' (default %(default)s: LeNet-300-100's seed-to-seed spread)",
    )
    args = parser.parse_args(argv)
    if args.tolerance < 0:
        parser.error(f"--tolerance must be >= 0 points, got {args.tolerance}")
    try:
        print(render(collect(args.out, args.metric), args.metric, args.tolerance))
    except (SummaryError, OSError, json.JSONDecodeError, KeyError) as err:
        print(f"two_four_summary.py: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
