"""Training-step cost of masks at 90% sparsity, relative to plain dense Lightning training of the same model.

Variants (same LightningModule, same in-memory batches, each one a full ``trainer.fit``):
  dense            no masks
  lottery          our LotteryTicketCallback enforcing 90%-sparse masks
  torch.prune      torch.nn.utils.prune forward pre-hooks at 90% (orig * mask on every forward)
  ModelPruning     Lightning's ModelPruning(use_lottery_ticket_hypothesis=True), 90% from the end of epoch 0
Time = median epoch time over epochs 1.. (epoch 0 warms up; ModelPruning prunes at its end). The ratio is
variant / dense within each repeat (variants interleaved), then the median over repeats.

Also measured: ``sqrt`` of a LeNet fc1-sized tensor that is 90% exact zeros vs. one of positive values. Adam takes
the square root of its second moments every step, and those of masked weights are exactly zero (their gradients
are zero, with our masks and with torch.nn.utils.prune alike); on some CPUs that costs several times more.

    python -m benchmarks mask_overhead [--models lenet300 conv2 resnet20] [--repeats 5]
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

from benchmarks.common import emit, interleaved, machine, paired_ratios, table
from lightning_lottery import LotteryTicketCallback
from lightning_lottery.core import install_masks, select_prunable
from lightning_lottery.modules.classifier import ImageClassifier

# model -> (arch, input shape, batch size, optimizer, steps per epoch)
MODELS: dict[str, tuple[str, tuple[int, ...], int, str, int]] = {
    "lenet300": ("lenet300", (1, 28, 28), 60, "adam", 300),
    "conv2": ("conv2", (3, 32, 32), 60, "adam", 25),
    "resnet20": ("resnet20", (3, 32, 32), 128, "sgd", 15),
}
SPARSITY = 0.9
EPOCHS = 4


class EpochTimer(pl.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._start)


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


def _fit(name: str, variant: str, batches: Batches, accelerator: str) -> float:
    arch, _, _, optimizer, _ = MODELS[name]
    torch.manual_seed(0)
    model = ImageClassifier(arch=arch, optimizer=optimizer, lr=0.01, init="default")
    timer = EpochTimer()
    callbacks: list[pl.Callback] = [timer]
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
        max_epochs=EPOCHS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks,
    )
    trainer.fit(model, batches)
    return statistics.median(timer.times[1:])


def sqrt_of_zeros(repeats: int = 200) -> dict[str, float]:
    """Median microseconds of ``sqrt`` on a 300x784 tensor: positive values vs. 90% exact zeros (Adam's masked
    second moments)."""
    g = torch.Generator().manual_seed(0)
    dense = torch.rand(300, 784, generator=g) + 1e-3
    sparse = dense * (torch.rand(300, 784, generator=g) >= SPARSITY)
    out: dict[str, float] = {}
    for name, tensor in (("positive", dense), ("90% zeros", sparse)):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            tensor.sqrt()
            times.append(time.perf_counter() - start)
        out[name] = 1e6 * statistics.median(times)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=["dense", "lottery", "torch.prune", "ModelPruning"])
    args = parser.parse_args(argv)
    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    device = "cuda" if accelerator == "gpu" else "cpu"
    rows: list[list[Any]] = []
    for name in args.models:
        _, shape, batch_size, _, steps = MODELS[name]
        batches = Batches(shape, batch_size, steps, device)
        runs = {v: (lambda v=v, n=name, b=batches: _fit(n, v, b, accelerator)) for v in args.variants}
        times = interleaved(runs, repeats=args.repeats, warmup=0)
        ratios = paired_ratios(times, "dense")
        for variant, ts in times.items():
            step_ms = 1000 * statistics.median(ts) / steps
            emit(
                {
                    "benchmark": "mask_overhead",
                    "model": name,
                    "variant": variant,
                    "sparsity": SPARSITY,
                    "median_step_ms": step_ms,
                    "ratio_to_dense": ratios[variant],
                    "repeats": args.repeats,
                    "steps_per_epoch": steps,
                    "batch_size": batch_size,
                    **machine(),
                }
            )
            rows.append([name, variant, f"{step_ms:.2f}", f"{ratios[variant]:.3f}"])
    table(
        f"training step at {SPARSITY:.0%} sparsity (median of {args.repeats})",
        rows,
        ["model", "variant", "ms/step", "ratio to dense"],
    )
    sqrt_us = sqrt_of_zeros()
    emit({"benchmark": "mask_overhead", "measure": "sqrt_us_300x784", **sqrt_us, **machine()})
    table(
        "sqrt of Adam's second moments (300x784, median us)",
        [[name, f"{us:.0f}"] for name, us in sqrt_us.items()],
        ["values", "us"],
    )


if __name__ == "__main__":
    main()
