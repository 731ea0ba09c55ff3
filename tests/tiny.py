"""Tiny models and synthetic data shared by the callback tests (seconds per test on a CPU)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def make_data(n: int = 64, in_dim: int = 8, classes: int = 3, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_dim, generator=g)
    y = (x[:, :classes] + 0.3 * torch.randn(n, classes, generator=g)).argmax(1)
    return TensorDataset(x, y)


def loaders(batch_size: int = 16, shuffle: bool = False, n: int = 64) -> tuple[DataLoader, DataLoader]:
    return (
        DataLoader(make_data(n), batch_size=batch_size, shuffle=shuffle),
        DataLoader(make_data(32, seed=1), batch_size=32),
    )


class TinyBase(pl.LightningModule):
    """Two linear layers and plain SGD, with no saved hyperparameters."""

    def __init__(self, fc1: nn.Module | None = None, in_dim: int = 8, hidden: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.fc1 = fc1 if fc1 is not None else nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, classes)
        self.drop = nn.Dropout(0.0)
        self.training_steps = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.relu(self.fc1(x))))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.training_steps += 1
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        out = self(x)
        split = "val" if dataloader_idx == 0 else "test"  # a second loader plays the test set
        self.log(f"{split}_loss", nn.functional.cross_entropy(out, y), add_dataloader_idx=False)
        self.log(f"{split}_acc", (out.argmax(1) == y).float().mean(), add_dataloader_idx=False)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class TinyNet(TinyBase):
    """Two linear layers; optimizer and schedule chosen by hyperparameters."""

    def __init__(
        self,
        in_dim: int = 8,
        hidden: int = 16,
        classes: int = 3,
        lr: float = 0.1,
        momentum: float = 0.9,
        optimizer: str = "sgd",
        scheduler: str | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_dim=in_dim, hidden=hidden, classes=classes)
        self.save_hyperparameters()
        self.drop = nn.Dropout(dropout)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        if hp.optimizer == "adam":
            opt = torch.optim.Adam(self.parameters(), lr=hp.lr)
        else:
            opt = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum)
        if hp.scheduler == "step":
            return {
                "optimizer": opt,
                "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
            }
        if hp.scheduler == "per_step":
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        return opt


def trainer(**kwargs: Any) -> pl.Trainer:
    defaults: dict[str, Any] = dict(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


def effective_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """What the forward uses: ``weight`` (orig * mask when pruned) for each Linear."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            weight = module.weight_orig * module.weight_mask if hasattr(module, "weight_mask") else module.weight
            out[f"{name}.weight"] = weight.detach().clone()
            out[f"{name}.bias"] = module.bias.detach().clone()
    return out


class Recorder(pl.Callback):
    """Records the model's effective weights and learning rates at the start of every fit-loop run (round)."""

    def __init__(self, at_step: int | None = None) -> None:
        self.starts: list[dict[str, torch.Tensor]] = []
        self.start_lrs: list[list[float]] = []
        self.ends: list[dict[str, torch.Tensor]] = []
        self.at_step = at_step
        self.at_step_weights: dict[str, torch.Tensor] | None = None
        self.at_step_lr: list[float] | None = None
        self.first_batches: list[torch.Tensor] = []
        self.train_starts = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.train_starts += 1
        self.starts.append(effective_weights(pl_module))
        self.start_lrs.append([g["lr"] for opt in trainer.optimizers for g in opt.param_groups])

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        if i == 0 and trainer.current_epoch == 0:
            self.first_batches.append(batch[1].clone())

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.at_step is not None and self.at_step_weights is None and trainer.global_step == self.at_step:
            self.at_step_weights = effective_weights(pl_module)
            self.at_step_lr = [g["lr"] for opt in trainer.optimizers for g in opt.param_groups]

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.ends.append(effective_weights(pl_module))
