"""Positive control for the instability analysis on real data: two LeNet-300-100s from *different* initialisations,
each trained as the children are, and the linear path between them. Unlike two children of one θ₀, these are not
expected to share a linearly connected minimum, so the measurement should show a large barrier.

    LOTTERY_DATA=/path/to/data python scripts/instability_control.py --budget 5000 --pairs 3 --out control.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from lightning_lottery.analysis import train_parent
from lightning_lottery.core.connectivity import classification_evaluator, confidence_interval, linear_path
from lightning_lottery.data.vision import MNISTDataModule
from lightning_lottery.io import atomic_write_json
from lightning_lottery.modules.classifier import ImageClassifier


def trained(seed: int, budget: int, data: MNISTDataModule, folder: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    module = ImageClassifier(arch="lenet300", lr=1.2e-3)
    cpu = {"accelerator": "cpu"}
    path = train_parent(module, data, [budget], folder / f"init{seed}", seed=seed, trainer_kwargs=cpu)
    state = torch.load(path[budget], map_location="cpu", weights_only=True)["state_dict"]
    return dict(state)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=int, default=5000)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    data = MNISTDataModule(batch_size=60, val_size=5000)
    data.prepare_data()
    data.setup("test")
    evaluate = classification_evaluator(data.test_dataloader())
    pairs = []
    with tempfile.TemporaryDirectory() as tmp:
        for pair in range(args.pairs):
            a = trained(100 + 2 * pair, args.budget, data, Path(tmp))
            b = trained(101 + 2 * pair, args.budget, data, Path(tmp))
            path = linear_path(ImageClassifier(arch="lenet300"), a, b, evaluate, points=11)
            pairs.append({"seeds": [100 + 2 * pair, 101 + 2 * pair], **path.to_dict()})
            print(f"pair {pair}: error barrier {100 * path.error_barrier:.2f} pp", flush=True)
    interval = confidence_interval([p["error_barrier"] for p in pairs])
    summary = {"budget": args.budget, "pairs": pairs, "error_barrier_ci95": interval._asdict()}
    atomic_write_json(args.out, summary)
    print(json.dumps(summary["error_barrier_ci95"]))


if __name__ == "__main__":
    main()
