"""Training-step cost of masks at 90% sparsity, relative to plain dense Lightning training with the same optimizer.

Variants (same LightningModule, same in-memory batches, each one ``trainer.fit`` in its own process):
  dense            no masks
  lottery          our LotteryTicketCallback enforcing 90%-sparse masks
  torch.prune      torch.nn.utils.prune forward pre-hooks at 90% (orig * mask on every forward)
  ModelPruning     Lightning's ModelPruning(use_lottery_ticket_hypothesis=True), 90% from the end of epoch 0
  dense_again      a second dense process: the A/A check of the method
Optimizers: SGD with momentum 0.9, stock (foreach) and fused (the recipes' choice), fused Adam (one kernel per step,
the recipes' choice) and stock (foreach) Adam.

The variants take turns (benchmarks/turns.py): each runs a chunk of a few optimizer steps (~50-600 ms) while the
others wait, in a fixed cycle, so neighbouring chunks ran under the same conditions of this shared machine; a pair's
ratio is the median over its chunks of variant / dense (epoch 0 skipped as warm-up). A process can also be slower
than another for its whole life (perhaps where its memory landed), which no pairing of its chunks removes: so the
variants run in ``--pairs`` fresh sets of processes. Which process starts first may matter too: of two identical
dense processes on Conv-2 the one started second read 1.12x the first (median of 10 pairs, 9 of them above 1; a
rotated rerun did not show it). So the start order rotates from one set to the next (every variant takes every
position equally often), each run of len(variants) consecutive sets is one balanced group whose ratio is the
geometric mean of its sets' ratios (a factor of the position alone cancels there), and the ratio reported is the
median over the groups, with a distribution-free 95% confidence interval for that median (order statistics; with
6-8 groups it is their range). ``--variants dense_again`` runs a second dense process: the method's own A/A check,
which should read 1.
Goal: lottery / dense <= 1.05 with SGD (stock and fused) and fused Adam on every model.

Stock Adam takes ``sqrt`` of its second moments every step, and those of masked weights are exactly zero (their
gradients are zero, with our masks and with torch.nn.utils.prune alike); on some CPUs ``sqrt`` of exact zeros is
many times slower. The "sqrt share" is the extra time that would cost per step (sqrt of every prunable tensor at 90%
zeros minus at positive values, measured here) as a fraction of the dense step; the callback's enforcer avoids it
(those moments hold 1 while it trains: ``ROOTED_STATE`` in ``lightning_lottery.core.reparam``).

    python -m benchmarks mask_overhead [--models lenet300 conv2 resnet20] [--optimizers sgd sgd_fused adam_fused adam]
        [--pairs 12] [--epochs N (default: per model)] [--variants dense lottery torch.prune ModelPruning dense_again]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelPruning
from torch.nn.utils import prune

from benchmarks.common import balanced_ratios, emit, machine, median_interval, paired_ratios, rotated, table
from benchmarks.turns import Turn, paired_laps, take_turns
from lightning_lottery import LotteryTicketCallback
from lightning_lottery.core import install_masks, select_prunable
from lightning_lottery.modules.classifier import ImageClassifier

# model -> (arch, input shape, batch size, steps per epoch)
MODELS: dict[str, tuple[str, tuple[int, ...], int, int]] = {
    "lenet300": ("lenet300", (1, 28, 28), 60, 300),
    "conv2": ("conv2", (3, 32, 32), 60, 25),
    "resnet20": ("resnet20", (3, 32, 32), 128, 15),
}
# model -> (optimizer steps per turn, epochs per fit): turns of ~50 ms (LeNet-300-100) to ~600 ms (ResNet-20) on 2 CPU
# cores, a divisor of the epoch so that every epoch's end falls at a turn's end, and 15-30 timed turns per fit.
TURNS: dict[str, tuple[int, int]] = {"lenet300": (50, 6), "conv2": (5, 4), "resnet20": (3, 4)}
# Learning rates small enough that the weights stay near θ₀ over the few hundred timed steps. The batches are noise
# with random labels, and at the recipes' rates the dense Conv-2 trained with Adam loses every ReLU of its second
# convolution within ~50 steps; an all-zero activation max-pools 3x faster than a live one, so the dense baseline got
# cheaper for reasons that have nothing to do with masks. The arithmetic per step does not depend on the rate.
OPTIMIZERS: dict[str, dict[str, Any]] = {
    "sgd": {"_target_": "torch.optim.SGD", "lr": 1e-4, "momentum": 0.9},  # stock: foreach
    "sgd_fused": {"_target_": "torch.optim.SGD", "lr": 1e-4, "momentum": 0.9, "fused": True},  # the recipes' SGD
    "adam_fused": {"_target_": "torch.optim.Adam", "lr": 1e-5, "fused": True},
    "adam": {"_target_": "torch.optim.Adam", "lr": 1e-5},  # stock: foreach
}
SPARSITY = 0.9
VARIANTS = ("dense", "lottery", "torch.prune", "ModelPruning", "dense_again")  # dense_again: the A/A check


class Laps(pl.Callback):
    """Hands the turn over every ``steps`` training batches (the chunk's time is recorded by ``turn``)."""

    def __init__(self, turn: Turn, steps: int) -> None:
        self.turn, self.steps, self.batches = turn, steps, 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.turn.begin()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.batches and self.batches % self.steps == 0:
            self.turn.lap()
        self.batches += 1


class Batches:
    """Fixed in-memory batches: the cheapest possible loader, so the model and the masks dominate."""

    def __init__(self, shape: tuple[int, ...], batch_size: int, steps: int, device: str) -> None:
        g = torch.Generator().manual_seed(0)
        self.batches = [
            (
                torch.randn(batch_size, *shape, generator=g).to(device),
                torch.randint(0, 10, (batch_size,), generator=g).to(device),
            )
            for _ in range(steps)
        ]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def random_masks(model: torch.nn.Module, sparsity: float = SPARSITY) -> dict[str, torch.Tensor]:
    """Fixed random masks (seed 1) keeping about ``1 - sparsity`` of every prunable tensor."""
    g = torch.Generator().manual_seed(1)
    return {n: torch.rand(t.shape, generator=g) >= sparsity for n, t in select_prunable(model).items()}


def fit_variant(name: str, optimizer: str, variant: str, epochs: int, callbacks: list[pl.Callback]) -> None:
    """One variant's ``trainer.fit`` of model ``name`` on in-memory batches, with ``callbacks`` (the timing)."""
    arch, shape, batch_size, steps = MODELS[name]
    accelerator, device = ("gpu", "cuda") if torch.cuda.is_available() else ("cpu", "cpu")
    batches = Batches(shape, batch_size, steps, device)
    torch.manual_seed(0)
    model = ImageClassifier(arch=arch, optimizer=dict(OPTIMIZERS[optimizer]), init="default")
    callbacks = list(callbacks)
    if variant == "lottery":
        install_masks(select_prunable(model), random_masks(model))
        callbacks.append(LotteryTicketCallback(rounds=0, monitor=None, save_tickets=False, verbose=False))
    elif variant == "torch.prune":
        for tensor in select_prunable(model).values():
            prune.random_unstructured(tensor.sites[0][0], tensor.sites[0][1], SPARSITY)
    elif variant == "ModelPruning":
        targets = [t.sites[0] for t in select_prunable(model).values()]
        callbacks.append(
            ModelPruning(
                "random_unstructured",
                amount=SPARSITY,
                parameters_to_prune=targets,
                use_lottery_ticket_hypothesis=True,
                apply_pruning=lambda epoch: epoch == 0,
                make_pruning_permanent=False,
                verbose=0,
            )
        )
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks,
    )
    trainer.fit(model, batches)


def fit_in_turns(turn: Turn, name: str, optimizer: str, variant: str, epochs: int) -> None:
    """One variant's fit, a turn of ``TURNS[name][0]`` steps at a time (run in its own process)."""
    fit_variant(name, optimizer, variant, epochs, [Laps(turn, TURNS[name][0])])
    turn.finish()


def sqrt_of_zeros(shapes: list[tuple[int, ...]], repeats: int = 50) -> dict[str, float]:
    """Median microseconds of ``sqrt`` over tensors of ``shapes`` (one model's prunable tensors): positive values
    vs. 90% exact zeros (Adam's masked second moments)."""
    g = torch.Generator().manual_seed(0)
    dense = [torch.rand(shape, generator=g) + 1e-3 for shape in shapes]
    sparse = [t * (torch.rand(t.shape, generator=g) >= SPARSITY) for t in dense]
    out: dict[str, float] = {}
    for name, tensors in (("positive", dense), ("90% zeros", sparse)):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for tensor in tensors:
                tensor.sqrt()
            times.append(time.perf_counter() - start)
        out[name] = 1e6 * statistics.median(times)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    parser.add_argument(
        "--pairs", type=int, default=12, help="fresh sets of processes per model and optimizer (a multiple of variants)"
    )
    parser.add_argument("--epochs", type=int, default=None, help="epochs per fit (default: TURNS, per model)")
    parser.add_argument("--variants", nargs="+", default=["dense", "lottery"], choices=VARIANTS)
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 2:
        parser.error(f"--epochs must be >= 2 (epoch 0 is warm-up), got {args.epochs}")
    variants = ["dense", *dict.fromkeys(v for v in args.variants if v != "dense")]
    if args.pairs < len(variants) or args.pairs % len(variants):
        parser.error(
            f"--pairs must be a positive multiple of the {len(variants)} variants (each start order equally often), "
            f"got {args.pairs}"
        )
    rows: list[list[Any]] = []
    for name in args.models:
        _, _, batch_size, steps = MODELS[name]
        chunk, default_epochs = TURNS[name]
        epochs = args.epochs or default_epochs
        shapes = [t.shape for t in select_prunable(ImageClassifier(arch=MODELS[name][0], init="default")).values()]
        for optimizer in args.optimizers:
            # per pair of processes: each variant's median chunk time, and its median chunk ratio to dense
            times: dict[str, list[float]] = {v: [] for v in variants}
            pair_ratios: dict[str, list[float]] = {v: [] for v in variants}
            for index in range(args.pairs):
                order = rotated(variants, index)
                laps = take_turns({v: (fit_in_turns, (name, optimizer, v, epochs)) for v in order})
                chunks = paired_laps(laps, skip=steps // chunk)  # epoch 0: warm-up (and ModelPruning's pruning)
                for variant, ratio in paired_ratios(chunks, "dense").items():
                    pair_ratios[variant].append(ratio)
                    times[variant].append(statistics.median(chunks[variant]))
            groups = {v: balanced_ratios(r, len(variants)) for v, r in pair_ratios.items()}
            ratios = {v: statistics.median(g) for v, g in groups.items()}
            intervals = {v: median_interval(g) for v, g in groups.items()}
            dense_ms = 1000 * statistics.median(times["dense"]) / chunk
            share = None
            if optimizer == "adam" and not torch.cuda.is_available():
                sqrt_us = sqrt_of_zeros(shapes)
                share = (sqrt_us["90% zeros"] - sqrt_us["positive"]) / 1000 / dense_ms
            for variant, ts in times.items():
                step_ms = 1000 * statistics.median(ts) / chunk
                emit(
                    {
                        "benchmark": "mask_overhead",
                        "model": name,
                        "optimizer": optimizer,
                        "variant": variant,
                        "sparsity": SPARSITY,
                        "median_step_ms": step_ms,
                        "ratio_to_dense": ratios[variant],
                        "ratio_ci95": intervals[variant],
                        "sqrt_share_of_dense_step": share if variant == "lottery" else None,
                        "pairs": args.pairs,
                        "pair_ratios": pair_ratios[variant],  # in run order; the start order rotates
                        "balanced_ratios": groups[variant],
                        "steps_per_turn": chunk,
                        "epochs": epochs,
                        "steps_per_epoch": steps,
                        "batch_size": batch_size,
                        **machine(),
                    }
                )
                sqrt_cell = f"{100 * share:.1f}%" if share is not None and variant == "lottery" else ""
                low, high = intervals[variant]
                ratio_cell = f"{ratios[variant]:.3f} [{low:.3f}, {high:.3f}]"
                rows.append([name, optimizer, variant, f"{step_ms:.2f}", ratio_cell, len(groups[variant]), sqrt_cell])
    table(
        f"training step at {SPARSITY:.0%} sparsity vs dense with the same optimizer (variants taking turns)",
        rows,
        ["model", "optimizer", "variant", "ms/step", "ratio to dense [95% CI of the median]", "groups", "sqrt share"],
    )


if __name__ == "__main__":
    main()
