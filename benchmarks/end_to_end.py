"""One pruned LeNet-300-100 round, end to end: Lightning + LotteryTicketCallback vs. a plain PyTorch loop.

The floor is the same optimizer steps in a plain loop over in-memory tensors (dense, no masks). Variants:
  plain              the floor: dense LeNet-300-100, fused Adam 1.2e-3 (the recipe's), batch 60, in-memory batches
  plain+prune        the same loop with torch.nn.utils.prune hooks at 80% sparsity
  lightning          dense, Lightning Trainer (no logger, progress bar or checkpoints) + ImageClassifier
  lightning+lottery  Lightning + LotteryTicketCallback enforcing 80%-sparse masks (a pruned round)
Then a cProfile of the lightning+lottery round, grouped by where the time goes.

    python -m benchmarks end_to_end [--steps 1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn.utils import prune

from benchmarks.common import emit, interleaved, machine, paired_ratios, table
from benchmarks.mask_overhead import Batches, random_masks
from lightning_lottery import LotteryTicketCallback
from lightning_lottery.core import install_masks, select_prunable
from lightning_lottery.models.vision import LeNet300
from lightning_lottery.modules.classifier import ImageClassifier

SPARSITY = 0.8
ADAM = {"lr": 1.2e-3, "fused": True}  # as recipe=mnist_lenet300 trains


def plain(batches: Batches, masked: bool) -> float:
    torch.manual_seed(0)
    model = LeNet300()
    if masked:
        for name, mask in random_masks(model, SPARSITY).items():
            prune.custom_from_mask(getattr(model, name.split(".")[0]), "weight", mask)
    optimizer = torch.optim.Adam(model.parameters(), **ADAM)
    start = time.perf_counter()
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return time.perf_counter() - start


class _Clock(pl.Callback):
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds = time.perf_counter() - self.start


def lightning(batches: Batches, masked: bool, profile: cProfile.Profile | None = None) -> float:
    torch.manual_seed(0)
    module = ImageClassifier(arch="lenet300", optimizer={"_target_": "torch.optim.Adam", **ADAM}, init="default")
    clock = _Clock()
    callbacks: list[pl.Callback] = [clock]
    if masked:
        install_masks(select_prunable(module), random_masks(module, SPARSITY))
        callbacks.append(LotteryTicketCallback(rounds=0, monitor=None, save_tickets=False, verbose=False))
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks,
    )
    if profile is not None:
        profile.enable()
    trainer.fit(module, batches)
    if profile is not None:
        profile.disable()
    return clock.seconds


# Where the time goes: cumulative time of these (mutually non-nested) functions; the rest is the framework.
BUCKETS: dict[str, list[tuple[str, str]]] = {
    "model forward": [("lightning_lottery/models/vision.py", "forward")],
    "loss.backward": [("torch/_tensor.py", "backward")],
    "Adam update": [("torch/optim/adam.py", "step")],  # minus the closure (forward/backward) it runs
    "mask enforcement (fused multiplies)": [
        ("lightning_lottery/core/reparam.py", "mask_gradients"),
        ("lightning_lottery/core/reparam.py", "zero_masked_weights"),
    ],
    "prune forward pre-hooks": [("torch/nn/utils/prune.py", "__call__")],
}


def _breakdown(profile: cProfile.Profile, total: float) -> dict[str, float]:
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    shares: dict[str, float] = {}
    for label, functions in BUCKETS.items():
        seconds = sum(
            cumulative
            for (filename, _, function), (_, _, _, cumulative, _) in stats.items()
            if any(filename.endswith(f) and function == name for f, name in functions)
        )
        shares[label] = seconds / total
    closure = sum(
        cumulative
        for (filename, _, function), (_, _, _, cumulative, _) in stats.items()
        if filename.endswith("loops/optimization/automatic.py") and function == "__call__"
    )
    shares["Adam update"] -= closure / total
    shares["Lightning loop, hooks, closures, logging (the rest)"] = 1.0 - sum(shares.values())
    return shares


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    batches = Batches((1, 28, 28), 60, args.steps, "cpu")
    variants = {
        "plain": lambda: plain(batches, masked=False),
        "plain+prune": lambda: plain(batches, masked=True),
        "lightning": lambda: lightning(batches, masked=False),
        "lightning+lottery": lambda: lightning(batches, masked=True),
    }
    times = interleaved(variants, repeats=args.repeats)
    ratios = paired_ratios(times, "plain")
    rows: list[list[Any]] = []
    for name, ts in times.items():
        step_ms = 1000 * sorted(ts)[len(ts) // 2] / args.steps
        emit(
            {
                "benchmark": "end_to_end",
                "variant": name,
                "sparsity": SPARSITY,
                "median_step_ms": step_ms,
                "ratio_to_plain": ratios[name],
                "steps": args.steps,
                "repeats": args.repeats,
                **machine(),
            }
        )
        rows.append([name, f"{step_ms:.3f}", f"{ratios[name]:.3f}"])
    table(f"LeNet-300-100 round, {args.steps} steps (median of {args.repeats})", rows, ["variant", "ms/step", "ratio"])

    profile = cProfile.Profile()
    total = lightning(batches, masked=True, profile=profile)
    shares = _breakdown(profile, total)
    emit({"benchmark": "end_to_end_profile", "variant": "lightning+lottery", "seconds": total, "shares": shares})
    table(
        "where the time goes (cProfile, cumulative share of the round)",
        [[k, f"{v:.1%}"] for k, v in shares.items()],
        ["part", "share"],
    )


if __name__ == "__main__":
    main()
