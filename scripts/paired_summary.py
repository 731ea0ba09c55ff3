"""Compare two arms of a report's summary.csv level by level, paired by seed, with 95% Student-t intervals.

An arm is a set of rows chosen by column filters (``variant=IMP ticket,branch=ticket``; ``group=`` or ``run=``
where variant labels coincide). Levels are matched by the % of weights remaining (rounded to 0.1), so arms pruned
by different routes to the same sparsities (pruning at initialisation vs. IMP, one-shot vs. iterative) line up. For
each level present in both arms: each arm's mean over seeds and the mean [95% CI] of the per-seed difference A − B;
``--total`` adds the per-seed sum over the levels both arms have (e.g. ``--metric steps``: the compute of a search).

    python scripts/paired_summary.py REPORT/summary.csv --a "variant=snip,branch=ticket" \\
        --b "variant=IMP ticket,branch=ticket" [--metric at_best.test_acc] [--scale 100] [--total]
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Mapping
from pathlib import Path

from lightning_lottery.core.connectivity import confidence_interval

Arm = dict[float, dict[int, float]]  # % remaining -> seed -> value


def parse_filter(text: str) -> dict[str, str]:
    pairs = [part.split("=", 1) for part in text.split(",") if part.strip()]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ValueError(f"{text!r}: expected column=value[,column=value...]")
    return {k.strip(): v.strip() for k, v in pairs}


def select(rows: list[Mapping[str, str]], where: Mapping[str, str], metric: str, scale: float) -> Arm:
    arm: Arm = {}
    for row in rows:
        if all(row.get(k) == v for k, v in where.items()) and row.get(metric):
            level = arm.setdefault(round(float(row["weights_pct"]), 1), {})
            seed = int(row["seed"])
            if seed in level:
                raise ValueError(f"{where}: two rows for seed {seed} at {row['weights_pct']}% remaining; filter more")
            level[seed] = float(row[metric]) * scale
    return arm


def _interval(values: list[float]) -> str:
    ci = confidence_interval(values)
    return f"{ci.mean:+.2f}" + (f" [{ci.lo:+.2f}, {ci.hi:+.2f}]" if ci.n > 1 else " (no CI)")


def compare(a: Arm, b: Arm, total: bool = False) -> list[list[str]]:
    """Rows: % remaining, n, mean A, mean B, A − B mean [95% CI]; with ``total`` a last row over shared levels."""
    out = []
    sums: dict[int, list[float]] = {}
    for pct in sorted(set(a) & set(b), reverse=True):
        seeds = sorted(set(a[pct]) & set(b[pct]))
        if not seeds:
            continue
        diffs = [a[pct][s] - b[pct][s] for s in seeds]
        mean_a, mean_b = (sum(arm[pct][s] for s in seeds) / len(seeds) for arm in (a, b))
        out.append([f"{pct:g}", str(len(seeds)), f"{mean_a:.2f}", f"{mean_b:.2f}", _interval(diffs)])
        for s in seeds:
            sums.setdefault(s, [0.0, 0.0])
            sums[s][0] += a[pct][s]
            sums[s][1] += b[pct][s]
    if total and sums:
        seeds = sorted(sums)
        mean_a, mean_b = (sum(sums[s][i] for s in seeds) / len(seeds) for i in (0, 1))
        diffs = [x - y for x, y in sums.values()]
        out.append(["total", str(len(seeds)), f"{mean_a:.2f}", f"{mean_b:.2f}", _interval(diffs)])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("summary", type=Path)
    parser.add_argument("--a", required=True, help="column=value filters of arm A")
    parser.add_argument("--b", required=True, help="column=value filters of arm B")
    parser.add_argument("--metric", default="at_best.test_acc", help="summary.csv column (default: %(default)s)")
    parser.add_argument("--scale", type=float, default=100.0, help="multiply values (default 100: %% and points)")
    parser.add_argument("--total", action="store_true", help="add the per-seed sum over the levels both arms have")
    args = parser.parse_args(argv)
    try:
        with open(args.summary, newline="") as f:
            rows = list(csv.DictReader(f))
        a, b = (select(rows, parse_filter(w), args.metric, args.scale) for w in (args.a, args.b))
    except (OSError, ValueError) as error:
        print(f"paired_summary: {error}", file=sys.stderr)
        return 2
    table = compare(a, b, args.total)
    if not table:
        print(f"paired_summary: no level with a seed in both arms ({args.a} / {args.b})", file=sys.stderr)
        return 2
    print(f"| % remaining | n | A: {args.a} | B: {args.b} | A − B, mean [95% CI] |")
    print("|---:|---:|---:|---:|---|")
    for row in table:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
