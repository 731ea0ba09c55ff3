"""open_lth's LeNet-300-100 protocol run through our recipe: seconds per level and test accuracy.

open_lth (Frankle's framework) defaults for mnist_lenet_300_100: SGD lr 0.1, batch 128, 2 epochs per level,
global pruning 20% per level, output layer not pruned; measured here at 30.4 s per level (~93% of it per-image
PIL data loading). Ours: `recipe=mnist_lenet300` with those settings (5K of the 60K training images held out
for validation, which open_lth does not do). Needs real MNIST ($LOTTERY_DATA or ../shared/data).

    python -m benchmarks openlth_protocol [--levels 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import lightning_lottery
from benchmarks.common import emit, machine, table

OVERRIDES = [
    "recipe=mnist_lenet300",
    "optim=sgd",
    "optim.lr=0.1",
    "optim.momentum=0.0",
    "optim.weight_decay=0.0",
    "data.batch_size=128",
    "trainer.max_steps=-1",
    "trainer.max_epochs=2",
    "trainer.val_check_interval=null",
    "trainer.check_val_every_n_epoch=1",
    "trainer.enable_progress_bar=false",
    "lottery.scope=global",
    "lottery.layer_amounts=null",
    "lottery.exclude=[model.fc3.weight]",
    "model.init=kaiming_normal",  # open_lth initialises with kaiming_normal
    "report=false",
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", type=int, default=3, help="levels (rounds + 1) to run")
    args = parser.parse_args(argv)
    from hydra import compose, initialize_config_dir

    from lightning_lottery.app import run

    conf = Path(lightning_lottery.__file__).parent / "conf"
    with tempfile.TemporaryDirectory() as out, initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        overrides = [
            *OVERRIDES,
            f"lottery.rounds={args.levels - 1}",
            f"paths.output_dir={out}",
            "experiment=openlth_protocol",
        ]
        history = run(compose("config", overrides=overrides))["history"]
    rows = []
    for record in history:
        final = record["final_metrics"]
        emit(
            {
                "benchmark": "openlth_protocol",
                "level": record["round"],
                "seconds": record["seconds"],
                "remaining_pct": record["remaining_pct"],
                "final_test_acc": final.get("test_acc"),
                "early_stop_test_acc": record["metrics"].get("test_acc"),
                **machine(),
            }
        )
        rows.append(
            [
                record["round"],
                f"{record['remaining_pct']:.1f}",
                f"{record['seconds']:.1f}",
                f"{100 * final.get('test_acc', float('nan')):.2f}",
            ]
        )
    seconds = statistics.median(r["seconds"] for r in history)
    emit({"benchmark": "openlth_protocol", "median_seconds_per_level": seconds, "levels": len(history), **machine()})
    table(
        f"open_lth LeNet-300-100 protocol through our recipe: median {seconds:.1f} s per level",
        rows,
        ["level", "% remaining", "seconds", "test acc (%) after 2 epochs"],
    )


if __name__ == "__main__":
    main()
