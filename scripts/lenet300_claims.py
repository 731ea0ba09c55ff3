"""Label Frankle & Carbin's LeNet-300-100 claims (Figs. 3-5) from a report's summary.csv, by written rules.

Reads the ``summary.csv`` that ``lightning-lottery-report`` wrote for the searches of scripts/reproduce_lenet300.sh
(one row per run, branch and level; every value at the branch's early stop). Each comparison is paired by seed: the
difference between two arms of the same seed (same θ₀, same data), then the mean and the 95% Student-t interval of
those differences over the seeds. Rules (each needs at least MIN_SEEDS seeds, else "undecided: n < 3"):

* reproduced: at the levels the paper names, the interval lies on the paper's side of zero (and the other
  conditions of the claim hold);
* partly: the means point the paper's way there, but an interval includes zero or a condition fails;
* not reproduced: a mean points the other way at a level the paper names.

    python scripts/lenet300_claims.py REPORT/summary.csv [--experiment mnist_lenet300]
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

from lightning_lottery.core.connectivity import Interval, confidence_interval

MIN_SEEDS = 3
NAMED = (21.1, 16.9)  # % of weights remaining where the paper puts the ticket's largest gains
SMALLEST = 3.6  # the paper's tickets stay above dense down to here

COLUMNS = (("acc", "at_best.test_acc"), ("stop", "best_round_step"), ("gap", "generalisation_gap"))
Table = dict[tuple[str, float, int], float]  # (branch, % remaining rounded to 0.1, seed) -> value


def read(path: Path, experiment: str | None) -> dict[str, Table]:
    """The per-seed values of each metric used below, from a report's summary.csv."""
    values: dict[str, Table] = defaultdict(dict)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if experiment and row["experiment"] != experiment:
                continue
            key = (row["branch"], round(float(row["weights_pct"]), 1), int(row["seed"]))
            for name, column in COLUMNS:
                if row.get(column):
                    scale = 100.0 if name in ("acc", "gap") else 1.0
                    values[name][key] = float(row[column]) * scale
    if not values:
        raise SystemExit(f"{path}: no rows{f' of experiment {experiment!r}' if experiment else ''}")
    return values


def levels(table: Table) -> list[float]:
    return sorted({pct for _, pct, _ in table if pct < 100.0}, reverse=True)


def paired(table: Table, arm: tuple[str, float], base: tuple[str, float]) -> Interval | None:
    """Mean and 95% interval over seeds of ``arm − base`` (each a (branch, % remaining)), None without a pair."""
    seeds = {s for b, p, s in table if (b, p) == arm} & {s for b, p, s in table if (b, p) == base}
    if not seeds:
        return None
    return confidence_interval([table[(*arm, s)] - table[(*base, s)] for s in sorted(seeds)])


def negated(interval: Interval | None) -> Interval | None:
    return None if interval is None else Interval(-interval.mean, -interval.hi, -interval.lo, interval.n)


def mean_of(table: Table, arm: tuple[str, float]) -> float:
    found = [v for (b, p, _), v in table.items() if (b, p) == arm]
    return sum(found) / len(found)


def show(interval: Interval | None, unit: str = "", digits: int = 2) -> str:
    if interval is None:
        return "not run"
    mean, lo, hi = (f"{v:+.{digits}f}" for v in interval[:3])
    return f"{mean}{unit} (n=1)" if interval.n == 1 else f"{mean}{unit} [{lo}, {hi}] (n={interval.n})"


def label(named: Sequence[Interval | None], sign: int, also: bool = True) -> str:
    """The rule above for intervals at the paper's levels; ``sign`` +1: the paper's side is above zero."""
    found = [i for i in named if i is not None]
    if not found or len(found) < len(named):
        return "undecided: a level was not run"
    if min(i.n for i in found) < MIN_SEEDS:
        return f"undecided: n < {MIN_SEEDS}"
    if any(sign * i.mean <= 0 for i in found):
        return "not reproduced"
    strict = all((i.lo > 0) if sign > 0 else (i.hi < 0) for i in found)
    return "reproduced" if strict and also else "partly"


Claim = tuple[str, str, str, str]  # claim, paper, ours, label


def claims(values: dict[str, Table]) -> list[Claim]:
    acc, stop, gap = values["acc"], values["stop"], values.get("gap", {})
    base = ("ticket", 100.0)
    out: list[Claim] = []

    faster = [paired(stop, ("ticket", p), base) for p in NAMED]
    means = {p: mean_of(stop, ("ticket", p)) for p in levels(stop)}
    fastest = min(means, key=means.__getitem__) if means else None
    near = fastest is not None and 16.0 <= fastest <= 27.0
    out.append(
        (
            "tickets reach their early stop sooner than dense, fastest around 21% remaining",
            "~27-38% sooner than dense; fastest near 21%",
            "; ".join(f"{p}%: {show(i, ' it.', 0)}" for p, i in zip(NAMED, faster))
            + (f"; fastest level (mean): {fastest}%" if fastest is not None else ""),
            label(faster, -1, also=near),
        )
    )

    better = [paired(acc, ("ticket", p), base) for p in NAMED]
    smallest = [p for p in levels(acc) if p >= SMALLEST - 0.2]
    worst = [paired(acc, ("ticket", p), base) for p in smallest]
    holds = all(i is not None and i.hi >= 0 for i in worst) and bool(smallest) and min(smallest) <= SMALLEST + 0.2
    out.append(
        (
            "tickets are more accurate than dense down to ~3.6% remaining",
            "+0.3-0.4 points around 17-21%; above dense to ~3.6%",
            "; ".join(f"{p}%: {show(i, ' pt')}" for p, i in zip(NAMED, better))
            + (f"; {min(smallest)}%: {show(worst[-1], ' pt')}" if smallest else ""),
            label(better, +1, also=holds),
        )
    )

    for control, name in (("reinit", "random reinitialisation"), ("random", "random pruning")):
        small = [p for p in levels(acc) if p <= NAMED[0] + 0.05]
        worse = [paired(acc, (control, p), ("ticket", p)) for p in small]
        slower = paired(stop, (control, NAMED[0]), ("ticket", NAMED[0]))
        out.append(
            (
                f"{name} of the ticket's structure learns slower and is less accurate from ~21% remaining",
                "below the ticket and dense from ~20-26% remaining; later early stop",
                f"accuracy vs. ticket at {NAMED[0]}%: {show(worse[0] if worse else None, ' pt')}, at "
                f"{small[-1] if small else '-'}%: {show(worse[-1] if worse else None, ' pt')}; early stop vs. ticket "
                f"at {NAMED[0]}%: {show(slower, ' it.', 0)}",
                label([*worse, negated(slower)], -1),
            )
        )

    if gap:
        smaller = [paired(gap, ("ticket", p), base) for p in NAMED]
        out.append(
            (
                "the train − test gap is smaller for tickets",
                "smaller than dense's",
                "; ".join(f"{p}%: {show(i, ' pt')}" for p, i in zip(NAMED, smaller)),
                label(smaller, -1),
            )
        )
    return out


def markdown(rows: list[Claim]) -> str:
    lines = ["| claim | paper | ours: paired difference, mean [95% CI] (n seeds) | label |", "|---|---|---|---|"]
    lines += [f"| {c} | {p} | {o} | {lab} |" for c, p, o, lab in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None, echo: Callable[[str], object] = print) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("summary", type=Path)
    parser.add_argument("--experiment", default=None)
    args = parser.parse_args(argv)
    if not args.summary.is_file():
        print(f"lenet300_claims: {args.summary}: no such file (a report's summary.csv)", file=sys.stderr)
        return 2
    echo(markdown(claims(read(args.summary, args.experiment))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
