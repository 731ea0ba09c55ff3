"""One global magnitude pruning round on ResNet-50 (25.6M parameters, random init): wall time and extra peak memory.

Ours: ``core.rounds.next_masks`` + ``core.rounds.rewind`` (masks from the trained weights, rewind to θ₀, install),
the code the callback runs. Reference: ``torch.nn.utils.prune.global_unstructured(L1Unstructured, 0.2)`` alone
(it neither rewinds nor keeps θ₀). "first" prunes a dense model (masks get created); "next" prunes a model that
already carries masks (every later round). Each measurement runs in its own process; extra peak memory is the
peak resident set during the call minus the resident set just before it (Linux: /proc/self/clear_refs); with
``--device cuda`` the model is on the GPU (θ₀ and the search's masks stay in CPU memory, as the callback keeps them;
torch.nn.utils.prune's masks go with the weights) and the memory is the peak of allocated GPU memory during the call
minus what was allocated just before it.

    python -m benchmarks prune_round [--repeats 5] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from torch.nn.utils import prune

from benchmarks.common import emit, machine, table, timed

VARIANTS = ("lottery-first", "lottery-next", "torch-first", "torch-next")


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _measure(fn, device: str) -> tuple[float, float, float]:
    """(seconds, extra peak MiB, MiB still held afterwards) of ``fn()``."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        seconds = timed(fn)
        return (
            seconds,
            (torch.cuda.max_memory_allocated() - before) / 2**20,
            (torch.cuda.memory_allocated() - before) / 2**20,
        )
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak-RSS counter (VmHWM)
    before = _rss_kib("VmRSS")
    seconds = timed(fn)
    return seconds, (_rss_kib("VmHWM") - before) / 1024, (_rss_kib("VmRSS") - before) / 1024


def _one(variant: str, device: str = "cpu") -> dict:
    """Run in a child process: build the model on ``device``, prepare the state, measure one round."""
    from torchvision.models import resnet50

    from lightning_lottery.core import SparsitySchedule, current_masks, dense_state, select_prunable
    from lightning_lottery.core.rounds import next_masks, rewind

    torch.manual_seed(0)
    model = resnet50(weights=None).to(device)
    weights_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    tensors = select_prunable(model)  # conv + linear weights: 25.5M
    if variant.startswith("lottery"):
        schedule = SparsitySchedule.build(0.2, 5, "global")
        theta0 = dense_state(model)
        masks = {n: m.cpu() for n, m in current_masks(tensors).items()}
        round_index = 1
        if variant == "lottery-next":
            masks = next_masks(tensors, masks, schedule, 1)
            rewind(model, tensors, masks, theta0)
            round_index = 2

        def step() -> None:
            new = next_masks(tensors, masks, schedule, round_index)
            rewind(model, tensors, new, theta0)

    else:
        targets = [(m, a) for t in tensors.values() for m, a in t.sites[:1]]
        if variant == "torch-next":
            prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=0.2)

        def step() -> None:
            prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=0.2)

    seconds, extra, retained = _measure(step, device)
    prunable = sum(t.numel() for t in tensors.values())
    return {
        "variant": variant,
        "seconds": seconds,
        "extra_peak_mib": extra,
        "retained_mib": retained,
        "weights_mib": weights_mib,
        "prunable": prunable,
        "device": device,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA GPU here")
    if args.child:
        print(json.dumps(_one(args.child, args.device)))
        return
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):
        for variant in VARIANTS:
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.prune_round", "--child", variant, "--device", args.device],
                capture_output=True,
                text=True,
                check=True,
            )
            results[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = []
    for variant, runs in results.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        extra = statistics.median(r["extra_peak_mib"] for r in runs)
        retained = statistics.median(r["retained_mib"] for r in runs)
        transient = extra - max(retained, 0.0)
        weights = runs[0]["weights_mib"]
        record = {
            "benchmark": "prune_round",
            "model": "resnet50",
            "variant": variant,
            "median_seconds": seconds,
            "extra_peak_mib": extra,
            "retained_mib": retained,
            "transient_mib": transient,
            "weights_mib": weights,
            "transient_over_weights": transient / weights,
            "repeats": len(runs),
            "prunable": runs[0]["prunable"],
            "device": args.device,
            **machine(),
        }
        emit(record)
        rows.append([variant, f"{seconds:.3f}", f"{extra:.0f}", f"{retained:.0f}", f"{transient / weights:.2f}"])
    table(
        f"prune round on ResNet-50 ({args.device}), {weights:.0f} MiB of weights (median of {args.repeats})",
        rows,
        ["variant", "seconds", "extra peak MiB", "kept MiB (masks...)", "transient / weights"],
    )


if __name__ == "__main__":
    main()
