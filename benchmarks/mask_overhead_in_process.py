"""Mask overhead with the variants' fits alternating inside one process: the check on ``mask_overhead``.

``mask_overhead`` puts each variant in a process of its own, and on this shared 2-core machine a process can run
10-20% slower than another for its whole life (two identical dense Conv-2 processes taking turns read 0.84-1.27 from
one pair to the next). Here every fit runs in this one process instead, so that effect is common to all variants:
the variants' whole fits alternate (the order reverses every repeat, garbage collected before each), each fit's time
is the median of its per-step times after epoch 0 (batch start to batch start), and a repeat's ratio is variant /
dense between neighbouring fits. Reported: the median of those ratios over ``--repeats`` with its distribution-free
95% interval (``benchmarks.common.median_interval``). Same models, batches, optimizers and masks as
``mask_overhead``.

    python -m benchmarks mask_overhead_in_process [--models conv2 resnet20] [--optimizers sgd sgd_fused adam_fused]
        [--repeats 8] [--epochs N (default: per model)] [--variants dense lottery dense_again]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from typing import Any

import lightning.pytorch as pl

from benchmarks.common import emit, interleaved, machine, paired_ratio_intervals, paired_ratios, table
from benchmarks.mask_overhead import MODELS, OPTIMIZERS, SPARSITY, TURNS, VARIANTS, fit_variant


class StepClock(pl.Callback):
    """Per-step wall times of one fit (batch start to batch start), epoch 0 left out as warm-up."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._last: float | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        now = time.perf_counter()
        if self._last is not None and trainer.current_epoch > 0:
            self.times.append(now - self._last)
        self._last = now


def median_step(name: str, optimizer: str, variant: str, epochs: int) -> float:
    """Median seconds per training step of one fit (after epoch 0)."""
    clock = StepClock()
    fit_variant(name, optimizer, variant, epochs, [clock])
    if not clock.times:
        raise RuntimeError(f"{name}: no step timed after epoch 0 (epochs={epochs})")
    return statistics.median(clock.times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--optimizers", nargs="+", default=["sgd", "sgd_fused", "adam_fused"], choices=list(OPTIMIZERS))
    parser.add_argument("--repeats", type=int, default=8, help="fits per variant (after one warm-up fit each)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per fit (default: as mask_overhead)")
    parser.add_argument("--variants", nargs="+", default=["dense", "lottery"], choices=VARIANTS)
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 2:
        parser.error(f"--epochs must be >= 2 (epoch 0 is warm-up), got {args.epochs}")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    variants = ["dense", *dict.fromkeys(v for v in args.variants if v != "dense")]
    rows: list[list[Any]] = []
    for name in args.models:
        epochs = args.epochs or TURNS[name][1]
        for optimizer in args.optimizers:
            fits = {v: functools.partial(median_step, name, optimizer, v, epochs) for v in variants}
            times = interleaved(fits, args.repeats)
            ratios, intervals = paired_ratios(times, "dense"), paired_ratio_intervals(times, "dense")
            for variant in variants:
                step_ms = 1000 * statistics.median(times[variant])
                low, high = intervals[variant]
                emit(
                    {
                        "benchmark": "mask_overhead_in_process",
                        "model": name,
                        "optimizer": optimizer,
                        "variant": variant,
                        "sparsity": SPARSITY,
                        "median_step_ms": step_ms,
                        "ratio_to_dense": ratios[variant],
                        "ratio_ci95": (low, high),
                        "repeats": args.repeats,
                        "fit_step_ms": [1000 * t for t in times[variant]],
                        "epochs": epochs,
                        **machine(),
                    }
                )
                ratio_cell = f"{ratios[variant]:.3f} [{low:.3f}, {high:.3f}]"
                rows.append([name, optimizer, variant, f"{step_ms:.2f}", ratio_cell, args.repeats])
    table(
        f"training step at {SPARSITY:.0%} sparsity vs dense, fits alternating in one process",
        rows,
        ["model", "optimizer", "variant", "ms/step", "ratio to dense [95% CI of the median]", "repeats"],
    )


if __name__ == "__main__":
    main()
