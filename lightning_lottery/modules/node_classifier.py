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
from torchmetrics.classification import MulticlassAccuracy

from lightning_lottery.data.graph import GraphBatch
from lightning_lottery.models.graph import GRAPH_INIT_SCHEMES, build_graph_model
from lightning_lottery.modules.optim import build_optimizer, resolve_optimizer

__all__ = ["NodeClassifier"]

_NAMED_DEFAULTS = {"lr": 0.01, "weight_decay": 5e-4, "momentum": 0.9}
_SPLITS = ("val", "val_test", "test")  # validation loader 0, validation loader 1 (the test set), test_step


class NodeClassifier(pl.LightningModule):
    """Cross-entropy node classification around a network from :func:`~.models.graph.build_graph_model`.

    Args:
        arch: registered graph network (``"gcn"``).
        arch_kwargs: its constructor arguments, e.g. ``{"hidden": 64, "dropout": 0.5}``; the app fills
            ``in_channels`` and ``num_classes`` from the datamodule.
        init: ``"default"`` (PyG's Glorot uniform) or ``"glorot_normal"``.
        optimizer: any optimizer as a spec, ``{"_target_": "torch.optim.AdamW", "lr": 0.01, ...}`` (built afresh
            in every round), or ``"adam"``, ``"sgd"`` or ``"adagrad"`` with the settings below.
        lr: learning rate of a named optimizer (default 0.01); with a spec, leave it None.
        weight_decay: L2 penalty of a named optimizer on every parameter (default 5e-4, as Kipf & Welling).
        momentum: a named SGD's momentum (default 0.9; ignored otherwise).

    Accuracy is torchmetrics' ``MulticlassAccuracy(average="micro")`` over the split's masked nodes.

    The network is the submodule ``model``: the GCN weights are ``model.conv1.lin.weight`` and
    ``model.conv2.lin.weight``, the classifier's ``model.fc.weight``.
    """

    def __init__(
        self,
        arch: str = "gcn",
        arch_kwargs: Mapping[str, Any] | None = None,
        init: str = "default",
        optimizer: str | Mapping[str, Any] = "adam",
        lr: float | None = None,
        weight_decay: float | None = None,
        momentum: float | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        settings = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum}
        self.optimizer_spec = resolve_optimizer(optimizer, _NAMED_DEFAULTS, **settings)
        if init not in GRAPH_INIT_SCHEMES:
            raise ValueError(f"Unknown init scheme {init!r}; valid: {', '.join(GRAPH_INIT_SCHEMES)}")
        self.model: nn.Module = build_graph_model(arch, init=init, **dict(arch_kwargs or {}))
        num_classes = int(self.model.num_classes)
        # One accumulator per split (one full-batch evaluation per epoch, so each value is exact for its split).
        self.accuracy = nn.ModuleDict(
            {split: MulticlassAccuracy(num_classes, average="micro", validate_args=False) for split in _SPLITS}
        )

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

    def _evaluate(self, batch: GraphBatch, prefix: str, split: str) -> None:
        logits, y = self._scores(batch)
        loss = nn.functional.cross_entropy(logits, y)
        accuracy = self.accuracy[split]
        accuracy.update(logits, y)
        self.log(f"{prefix}_loss", loss, batch_size=len(y), add_dataloader_idx=False, sync_dist=True)
        self.log(f"{prefix}_acc", accuracy, add_dataloader_idx=False)

    def validation_step(self, batch: GraphBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx > 1:
            raise ValueError(
                f"NodeClassifier expects at most 2 validation dataloaders (val, test), got #{dataloader_idx}"
            )
        if dataloader_idx == 0:
            self._evaluate(batch, "val", "val")
        else:
            self._evaluate(batch, "test", "val_test")

    def test_step(self, batch: GraphBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, "test", "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """A fresh optimizer over the trainable parameters on every call (every lottery round)."""
        return build_optimizer(self.optimizer_spec, [p for p in self.parameters() if p.requires_grad])
