"""``NodeClassifier``: a LightningModule for full-batch node classification, built from hyperparameters only.

Like :class:`~lightning_lottery.modules.classifier.ImageClassifier` it knows nothing of pruning, and because the
network is built in ``__init__`` from saved hyperparameters, ``type(m)(**m.hparams)`` draws a fresh network (the
lottery callback's ``rewind="reinit"`` control) and ``load_from_checkpoint`` needs no extra arguments.

Batches are :class:`~lightning_lottery.data.graph.GraphBatch`\\ es: the whole graph and a node mask. Logged
metrics, over the masked nodes (one batch per epoch, so each value is exact for its split):

* ``train_loss``, ``train_acc``: once per epoch (= per optimizer step in full-batch training), on the training
  nodes in training mode (dropout included);
* ``val_loss``, ``val_acc``: on validation dataloader 0;
* ``test_loss``, ``test_acc``: on validation dataloader 1 (``eval_test=True``) and in ``test_step``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from lightning_lottery.data.graph import GraphBatch
from lightning_lottery.models.graph import GRAPH_INIT_SCHEMES, build_graph_model

__all__ = ["NodeClassifier"]

_OPTIMIZERS = ("adam", "sgd", "adagrad")


class NodeClassifier(pl.LightningModule):
    """Cross-entropy node classification around a network from :func:`~.models.graph.build_graph_model`.

    Args:
        arch: registered graph network (``"gcn"``).
        arch_kwargs: its constructor arguments, e.g. ``{"hidden": 64, "dropout": 0.5}``; the app fills
            ``in_channels`` and ``num_classes`` from the datamodule.
        init: ``"default"`` (PyG's Glorot uniform) or ``"glorot_normal"``.
        optimizer: ``"adam"``, ``"sgd"`` or ``"adagrad"``.
        lr: learning rate.
        weight_decay: L2 penalty on every parameter (Kipf & Welling use 5e-4).
        momentum: SGD momentum (ignored otherwise).

    The network is the submodule ``model``: the GCN weights are ``model.conv1.lin.weight`` and
    ``model.conv2.lin.weight``, the classifier's ``model.fc.weight``.
    """

    def __init__(
        self,
        arch: str = "gcn",
        arch_kwargs: Mapping[str, Any] | None = None,
        init: str = "default",
        optimizer: str = "adam",
        lr: float = 0.01,
        weight_decay: float = 5e-4,
        momentum: float = 0.9,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if optimizer not in _OPTIMIZERS:
            raise ValueError(f"Unknown optimizer {optimizer!r}; valid: {', '.join(_OPTIMIZERS)}")
        if init not in GRAPH_INIT_SCHEMES:
            raise ValueError(f"Unknown init scheme {init!r}; valid: {', '.join(GRAPH_INIT_SCHEMES)}")
        if lr <= 0 or weight_decay < 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got lr={lr}, weight_decay={weight_decay}")
        self.model: nn.Module = build_graph_model(arch, init=init, **dict(arch_kwargs or {}))

    @property
    def output_parameter(self) -> str:
        """Name of the output layer's weight in this module: ``"model.fc.weight"``."""
        return f"model.{self.model.output_layer}.weight"

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        return self.model(x, edge_index)

    def _scores(self, batch: GraphBatch) -> tuple[Tensor, Tensor]:
        """(logits, labels) of the batch's masked nodes."""
        logits = self.model(batch.x, batch.edge_index)
        return logits[batch.mask], batch.y[batch.mask]

    def training_step(self, batch: GraphBatch, batch_idx: int) -> Tensor:
        logits, y = self._scores(batch)
        loss = nn.functional.cross_entropy(logits, y)
        # One step per epoch: per-step values are the epoch's (no _step/_epoch variants), and unlike on_epoch values
        # (computed after the epoch's validation) they reach the callbacks at this epoch's validation.
        self.log("train_loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True, batch_size=len(y))
        accuracy = (logits.detach().argmax(dim=1) == y).float().mean()
        self.log("train_acc", accuracy, on_step=True, on_epoch=False, batch_size=len(y))
        return loss

    def _evaluate(self, batch: GraphBatch, prefix: str) -> None:
        logits, y = self._scores(batch)
        loss = nn.functional.cross_entropy(logits, y)
        accuracy = (logits.argmax(dim=1) == y).float().mean()
        self.log(f"{prefix}_loss", loss, batch_size=len(y), add_dataloader_idx=False, sync_dist=True)
        self.log(f"{prefix}_acc", accuracy, batch_size=len(y), add_dataloader_idx=False, sync_dist=True)

    def validation_step(self, batch: GraphBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx > 1:
            raise ValueError(
                f"NodeClassifier expects at most 2 validation dataloaders (val, test), got #{dataloader_idx}"
            )
        self._evaluate(batch, "val" if dataloader_idx == 0 else "test")

    def test_step(self, batch: GraphBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """A fresh optimizer over the trainable parameters on every call (every lottery round)."""
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        if hp.optimizer == "adam":
            return torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.optimizer == "sgd":
            return torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        return torch.optim.Adagrad(params, lr=hp.lr, weight_decay=hp.weight_decay)
