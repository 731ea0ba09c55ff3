"""Optimizer step time, stock (foreach) vs. fused, over each model's parameters: why the recipes set ``fused: true``.

Every parameter gets a fixed random gradient; one sample is the time of ``steps`` calls of ``optimizer.step()``.
Stock and fused run in turn within each repeat; the speed-up is stock / fused within each repeat, then the median
over repeats, with a distribution-free 95% confidence interval for that median (it needs >= 6 repeats).
Dense gradients: the comparison of the two implementations, without Adam's slow square roots of masked zeros on
CPUs (``mask_overhead`` measures those).

    python -m benchmarks optimizer_step [--models lenet300 conv2 resnet20] [--repeats 11] [--steps 50]
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch

from benchmarks.common import emit, interleaved, machine, paired_ratio_intervals, paired_ratios, table, timed
from lightning_lottery.modules.classifier import ImageClassifier

ARCHS = ("lenet300", "conv2", "resnet20")
# The recipes' settings (conf/optim/sgd.yaml, adam.yaml), without `fused`.
OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    "sgd": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}),
    "adam": (torch.optim.Adam, {"lr": 1.2e-3}),
}


def _optimizer(arch: str, name: str, fused: bool, device: str) -> torch.optim.Optimizer:
    torch.manual_seed(0)
    model = ImageClassifier(arch=arch, init="default").to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    cls, settings = OPTIMIZERS[name]
    optimizer = cls(model.parameters(), **settings, **({"fused": True} if fused else {"foreach": True}))
    optimizer.step()  # creates the state (momentum, moments) outside the timing
    return optimizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows: list[list[Any]] = []
    for arch in args.models:
        for name in args.optimizers:
            optimizers = {kind: _optimizer(arch, name, kind == "fused", device) for kind in ("stock", "fused")}
            runs = {
                kind: (lambda o=o: timed(lambda: [o.step() for _ in range(args.steps)]))
                for kind, o in optimizers.items()
            }
            times = interleaved(runs, repeats=args.repeats)
            speedup = paired_ratios(times, "fused")["stock"]
            low, high = paired_ratio_intervals(times, "fused")["stock"]
            stock_us, fused_us = (1e6 * statistics.median(times[k]) / args.steps for k in ("stock", "fused"))
            params = sum(p.numel() for group in optimizers["stock"].param_groups for p in group["params"])
            emit(
                {
                    "benchmark": "optimizer_step",
                    "model": arch,
                    "optimizer": name,
                    "parameters": params,
                    "stock_us": stock_us,
                    "fused_us": fused_us,
                    "speedup": speedup,
                    "speedup_ci95": [low, high],
                    "repeats": args.repeats,
                    "steps": args.steps,
                    **machine(),
                }
            )
            rows.append([arch, name, f"{params:,}", f"{stock_us:.0f}", f"{fused_us:.0f}",
                         f"{speedup:.2f} [{low:.2f}, {high:.2f}]"])  # fmt: skip
    table(
        f"optimizer step, stock (foreach) vs fused (median of {args.repeats} x {args.steps} steps)",
        rows,
        ["model", "optimizer", "parameters", "stock us", "fused us", "speed-up [95% CI of the median]"],
    )


if __name__ == "__main__":
    main()
