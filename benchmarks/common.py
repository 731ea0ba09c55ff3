"""Shared benchmark plumbing: interleaved repeats, medians, paired ratios, one JSON line per measurement."""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch


def machine() -> dict[str, Any]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def emit(record: Mapping[str, Any]) -> None:
    """One JSON line per measurement on stdout (the table goes to stderr)."""
    print(json.dumps(record, default=str), flush=True)


def timed(fn: Callable[[], Any]) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved(variants: Mapping[str, Callable[[], float]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run every variant once per repeat, in turn, so slow drifts of the machine hit all variants alike.

    The order reverses every other repeat (A B, B A, ...), so a drift within a repeat favours no variant, and
    garbage is collected before each run, so no run pays for the collection of another's objects.
    """
    names = list(variants)
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            gc.collect()
            times[name].append(variants[name]())
    return times


def _per_repeat_ratios(times: Mapping[str, list[float]], baseline: str) -> dict[str, list[float]]:
    base = times[baseline]
    return {name: [t / b for t, b in zip(ts, base)] for name, ts in times.items()}


def paired_ratios(times: Mapping[str, list[float]], baseline: str) -> dict[str, float]:
    """Median over repeats of (variant / baseline) taken within each repeat."""
    return {name: statistics.median(r) for name, r in _per_repeat_ratios(times, baseline).items()}


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval for the median: the order statistics ``x_(k)`` and ``x_(n+1-k)``
    with the largest ``k`` whose coverage under Binomial(n, 1/2) is still at least ``level``.

    Needs no assumption about the shape of the noise (a shared machine's timings have long right tails). With
    fewer than 6 values no pair of order statistics reaches 95%: the interval is then the whole range, and its
    coverage is below ``level``.
    """
    if not values:
        raise ValueError("median_interval needs at least one value")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    ordered = sorted(values)
    n = len(ordered)

    def coverage(k: int) -> float:  # x_(k) lies above the median when fewer than k values fall below it
        return 1 - 2 * sum(math.comb(n, j) for j in range(k)) / 2**n

    k = 1
    while k < (n + 1) // 2 and coverage(k + 1) >= level:
        k += 1
    return ordered[k - 1], ordered[n - k]


def paired_ratio_intervals(
    times: Mapping[str, list[float]], baseline: str, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """:func:`median_interval` of the per-repeat ratios variant / baseline."""
    return {name: median_interval(r, level) for name, r in _per_repeat_ratios(times, baseline).items()}


def rotated(names: list[str], index: int) -> list[str]:
    """``names`` rotated left by ``index``: over ``len(names)`` consecutive runs every name takes every position."""
    shift = index % len(names)
    return names[shift:] + names[:shift]


def balanced_ratios(ratios: list[float], group: int) -> list[float]:
    """Geometric means of consecutive groups of ``group`` ratios (runs whose start order was rotated through every
    position, :func:`rotated`): a factor that depends on the position alone cancels within a group. A last,
    incomplete group is dropped."""
    if group < 1:
        raise ValueError(f"group must be >= 1, got {group}")
    full = len(ratios) - len(ratios) % group
    return [math.prod(ratios[i : i + group]) ** (1 / group) for i in range(0, full, group)]


def table(title: str, rows: list[list[Any]], header: list[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    print(f"\n{title}\n{line(header)}\n{line(['-' * w for w in widths])}", file=sys.stderr)
    for row in rows:
        print(line(row), file=sys.stderr)
