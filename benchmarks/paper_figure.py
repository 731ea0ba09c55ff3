"""What one seed of Frankle & Carbin's LeNet-300-100 figure costs: the protocol timed on a sample, extrapolated.

The figure (Figs. 3-4) is 16 levels (15 pruning levels to 3.5% of the hidden layers' weights), each with the ticket
and two controls (random reinit, random pruning) as branches, 50,000 iterations of batch 60 per branch, validation
every 100 iterations (5K held-out images, and the 10K test images for the accuracy at the early stop). Here the
app's recipe ``mnist_lenet300`` (fused Adam) runs level 0 and level 1's three branches for ``--steps`` iterations
each, on real MNIST when ``$LOTTERY_DATA`` has it (else synthetic data of the same size); the time per iteration of
the dense and of the pruned branches, validation included, is extrapolated to 1 + 15 x 3 branches x 50,000
iterations and set beside open_lth's rate on this machine: LeNet-300-100 at ~15 s per epoch (30.4 s per 2-epoch
level at batch 128, docs/results.md; 93% of it per-image PIL loading), i.e. ~14 minutes per 50,000-iteration level
at batch 60 and ~11 hours per seed for the figure.

    python -m benchmarks paper_figure [--steps 2000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import emit, machine, table

LEVELS, BRANCHES, ITERATIONS = 16, 3, 50_000
OPENLTH_HOURS_PER_SEED = 11.0  # ~14 min per 50K-iteration level x 46-48 trainings, measured on this machine


def _run(steps: int, out: Path) -> list[dict]:
    from hydra import compose, initialize_config_dir

    from lightning_lottery import app

    root = os.environ.get("LOTTERY_DATA")
    data = [] if root and (Path(root) / "MNIST").is_dir() else ["data=synthetic", "data.num_train=60000"]
    overrides = [
        "recipe=mnist_lenet300",
        "experiment=mnist_lenet300",
        f"trainer.max_steps={steps}",
        "lottery.rounds=1",
        "trainer.enable_progress_bar=false",
        "report=false",
        "logger=none",
        "callbacks.checkpoint=null",
        f"paths.output_dir={out}",
        *data,
    ]
    with initialize_config_dir(config_dir=str(Path(app.__file__).parent / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    return app.run(cfg)["history"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000, help="iterations per sampled branch")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        history = _run(args.steps, Path(folder))
        wall = time.perf_counter() - start
    dense = history[0]["seconds"] / history[0]["steps"]
    pruned = sum(r["seconds"] for r in history[1:]) / sum(r["steps"] for r in history[1:])
    branches = 1 + (LEVELS - 1) * BRANCHES
    hours = (dense + (branches - 1) * pruned) * ITERATIONS / 3600
    speedup = OPENLTH_HOURS_PER_SEED / hours
    emit(
        {
            "benchmark": "paper_figure",
            "sampled_steps": args.steps,
            "dense_ms_per_step": 1000 * dense,
            "pruned_ms_per_step": 1000 * pruned,
            "hours_per_seed": hours,
            "openlth_hours_per_seed": OPENLTH_HOURS_PER_SEED,
            "speedup_vs_openlth": speedup,
            "sample_wall_seconds": wall,
            **machine(),
        }
    )
    table(
        f"LeNet-300-100 figure, one seed: {branches} branches x {ITERATIONS:,} iterations (sampled: {args.steps:,})",
        [
            ["dense branch, ms/iteration (validation included)", f"{1000 * dense:.2f}"],
            ["pruned branches, ms/iteration", f"{1000 * pruned:.2f}"],
            ["hours per seed, extrapolated", f"{hours:.2f}"],
            ["open_lth on this machine, hours per seed", f"{OPENLTH_HOURS_PER_SEED:.1f}"],
            ["speed-up", f"{speedup:.1f}x"],
        ],
        ["", "value"],
    )


if __name__ == "__main__":
    main()
