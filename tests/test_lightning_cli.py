"""The callback under Lightning's own LightningCLI (the README's "LightningCLI" example), on a tiny search."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("jsonargparse", reason="LightningCLI needs jsonargparse: pip install 'lightning-lottery[cli]'")

from lightning.pytorch.cli import LightningCLI

from lightning_lottery import LotteryTicketCallback
from lightning_lottery.data.vision import SyntheticImageDataModule
from lightning_lottery.modules.classifier import ImageClassifier


def test_lightning_cli_runs_a_search_with_the_callback_from_its_arguments(tmp_path: Path):
    args = [
        "fit",
        "--model.arch=lenet300",
        '--model.optimizer={"_target_": "torch.optim.AdamW", "lr": 0.001, "fused": true}',
        "--data.num_train=120",
        "--data.val_size=30",
        "--data.num_test=30",
        "--data.batch_size=30",
        "--trainer.max_steps=4",
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.callbacks+=lightning_lottery.LotteryTicketCallback",
        "--trainer.callbacks.rounds=1",
        "--trainer.callbacks.amount=0.5",
        f"--trainer.callbacks.dirpath={tmp_path / 'lottery'}",
    ]
    cli = LightningCLI(ImageClassifier, SyntheticImageDataModule, args=args, save_config_callback=None)
    (lottery,) = [c for c in cli.trainer.callbacks if isinstance(c, LotteryTicketCallback)]
    assert (lottery.rounds, lottery.amount) == (1, 0.5)
    assert [r["round"] for r in lottery.history] == [0, 1]
    assert lottery.history[-1]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert (tmp_path / "lottery" / "round_01").is_dir() and (tmp_path / "lottery" / "history.json").is_file()
    assert type(cli.trainer.optimizers[0]).__name__ == "AdamW"
