"""``LanguageModelModule``: next-word training and exact perplexity for the word-level language models.

Metrics (lower is better; monitor ``val_loss`` with ``mode="min"``):

* ``train_loss``: mean cross-entropy per token of each training window, logged every step.
* ``val_loss`` / ``val_ppl``: cross-entropy per token over the whole validation split and its exponential.
* ``test_loss`` / ``test_ppl``: the same on the test split, from ``test_step``, and also during validation when
  the datamodule gives a second validation loader (``WikiText2DataModule(eval_test=True)``).

Split losses are token-weighted means over every predicted token of the split (accumulated in float64 by a
``MeanMetric``, which also reduces across DDP processes), not means of per-batch means: the last window of a
split is usually shorter than the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.nn import functional as F
from torchmetrics import MeanMetric

from lightning_lottery.models.language import build_language_model
from lightning_lottery.modules.optim import build_optimizer, resolve_optimizer

_NAMED_DEFAULTS = {"lr": 1e-3, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.0}


def _token_mean() -> MeanMetric:
    # float64: the sum of ~10^5-10^6 per-token losses should not lose digits in the last place of the ppl.
    return MeanMetric().set_dtype(torch.float64)


def _reset(*metrics: MeanMetric) -> None:
    # Reset creates new state tensors; made under trainer.validate/test's inference mode they would be
    # inference tensors, which the next fit's validation (run under no_grad) could not update in place.
    with torch.inference_mode(False):
        for metric in metrics:
            metric.reset()


class LanguageModelModule(pl.LightningModule):
    """Trains an LSTM or Transformer language model on ``(inputs, targets)`` windows of token indices.

    Built only from hyperparameters (``self.save_hyperparameters()``), so ``type(m)(**m.hparams)`` gives the
    same architecture with a new random initialisation. Gradient clipping belongs to the Trainer
    (``gradient_clip_val``).

    Args:
        vocab_size: number of words (``datamodule.vocab_size``).
        arch: ``"lstm"`` (:class:`LSTMLanguageModel`) or ``"transformer"`` (:class:`TransformerLanguageModel`).
        arch_kwargs: keyword arguments of the network besides ``vocab_size``.
        lr: learning rate of a named optimizer (default 1e-3); with a spec, leave it None.
        optimizer: any optimizer as a spec, ``{"_target_": "torch.optim.AdamW", "lr": 1e-3, ...}`` (built afresh in
            every round), or ``"adam"`` / ``"sgd"`` with the settings around it.
        adam_eps: a named Adam's epsilon (default 1e-8).
        weight_decay: L2 penalty of a named optimizer (added to the gradient, as in ``torch.optim``; default 0).
        momentum: a named SGD's momentum (default 0).
    """

    def __init__(
        self,
        vocab_size: int,
        arch: Literal["lstm", "transformer"] = "lstm",
        arch_kwargs: Mapping[str, Any] | None = None,
        lr: float | None = None,
        optimizer: Literal["adam", "sgd"] | Mapping[str, Any] = "adam",
        adam_eps: float | None = None,
        weight_decay: float | None = None,
        momentum: float | None = None,
    ) -> None:
        super().__init__()
        if isinstance(optimizer, str) and optimizer not in ("adam", "sgd"):
            raise ValueError(f"`optimizer={optimizer!r}` is not one of 'adam', 'sgd' (or a spec with _target_)")
        self.save_hyperparameters()
        settings = {"lr": lr, "eps": adam_eps, "weight_decay": weight_decay, "momentum": momentum}
        self.optimizer_spec = resolve_optimizer(optimizer, _NAMED_DEFAULTS, **settings)
        self.model = build_language_model(arch, vocab_size, **dict(arch_kwargs or {}))
        # One accumulator per split and stage: validation may see valid and test loaders in the same epoch.
        self.val_loss_mean = _token_mean()
        self.val_test_loss_mean = _token_mean()
        self.test_loss_mean = _token_mean()

    def forward(self, tokens: Tensor) -> Tensor:
        """Next-token logits ``(batch, time, vocab)``."""
        return self.model(tokens)

    def _loss(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, int]:
        """Mean cross-entropy per token of the window, and the number of tokens it averages over."""
        inputs, targets = batch
        logits = self.model(inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        return loss, targets.numel()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, tokens = self._loss(batch)
        self.log("train_loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=tokens)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx not in (0, 1):
            raise ValueError(f"Expected at most two validation loaders (valid, test), got index {dataloader_idx}")
        loss, tokens = self._loss(batch)
        metric = self.val_loss_mean if dataloader_idx == 0 else self.val_test_loss_mean
        metric.update(loss.detach(), tokens)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        loss, tokens = self._loss(batch)
        self.test_loss_mean.update(loss.detach(), tokens)

    def _log_split(self, prefix: str, metric: MeanMetric) -> None:
        """Log ``<prefix>_loss`` and ``<prefix>_ppl`` of a split and reset its accumulator."""
        loss = metric.compute()  # reduced across processes (a collective: every rank must call it)
        _reset(metric)
        # Logged from the epoch-end hook, so Lightning adds no "/dataloader_idx_k" suffix. The value is the same
        # on every rank already; sync_dist only averages identical numbers (and avoids Lightning's DDP warning).
        self.log(f"{prefix}_loss", loss.float(), prog_bar=prefix == "val", sync_dist=True)
        self.log(f"{prefix}_ppl", torch.exp(loss).float(), sync_dist=True)

    def _num_val_loaders(self) -> int:
        return len(self.trainer.num_val_batches)  # one entry per loader of the running fit/validate

    def on_validation_epoch_start(self) -> None:
        _reset(self.val_loss_mean, self.val_test_loss_mean)  # drop anything left by an interrupted run

    def on_test_epoch_start(self) -> None:
        _reset(self.test_loss_mean)

    def on_validation_epoch_end(self) -> None:
        # Decided from the loaders, not from local update counts, so that all DDP ranks take the same branch.
        self._log_split("val", self.val_loss_mean)
        if self._num_val_loaders() > 1:
            self._log_split("test", self.val_test_loss_mean)

    def on_test_epoch_end(self) -> None:
        self._log_split("test", self.test_loss_mean)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """A fresh optimizer over every parameter on each call (every lottery round)."""
        return build_optimizer(self.optimizer_spec, self.parameters())
