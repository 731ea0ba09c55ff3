"""Pruning at initialisation inside a search: what the pure-torch scores need from Lightning (θ₀ on the model, a few
training batches drawn without touching the run's RNG or data iterator, the input shape for SynFlow)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import islice
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor

from lightning_lottery.core import PrunableTensor, State, install_masks
from lightning_lottery.core.saliency import DATA_METHODS, classification_loss, pruning_at_init_masks
from lightning_lottery.core.schedule import PruneGroup
from lightning_lottery.core.snapshot import load_dense_state

METHODS_AT_INIT = ("snip", "grasp", "synflow", "magnitude_init")
# GraSP's reference code divides the logits by 200 before the loss; SNIP uses them as they are.
_TEMPERATURE = {"snip": 1.0, "grasp": 200.0}


def _training_batches(trainer: pl.Trainer, count: int) -> list[Any]:
    """The first ``count`` batches of a fresh pass over the training data, on the model's device; the global RNG
    and the data iterator training uses are left as they were."""
    loader = trainer.fit_loop._combined_loader
    if loader is None:
        trainer.fit_loop.setup_data()
        loader = trainer.fit_loop._combined_loader
    assert loader is not None
    dataloader = loader.flattened[0]
    with isolate_rng():
        if getattr(dataloader, "persistent_workers", False):
            raise ValueError(
                "pruning at initialisation draws a few batches of its own; with persistent_workers=True that would "
                "reset the training iterator. Use persistent_workers=False."
            )
        batches = list(islice(iter(dataloader), count))
    return [trainer.strategy.batch_to_device(batch) for batch in batches]


def masks_at_init(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    method: str,
    tensors: Mapping[str, PrunableTensor],
    groups: Sequence[PruneGroup],
    theta0: State,
    batches: int,
    input_shape: Sequence[int] | None,
) -> dict[str, Tensor]:
    """A level's masks chosen at θ₀ by ``method`` (independently of earlier levels): the model is put back at θ₀,
    unmasked, and scored there; the branch that trains next installs its own weights and masks."""
    install_masks(tensors, {name: torch.ones_like(t.tensor, dtype=torch.bool) for name, t in tensors.items()}, True)
    load_dense_state(pl_module, theta0)
    if method in DATA_METHODS:
        data = _training_batches(trainer, batches)
        loss_fn = classification_loss(_TEMPERATURE[method])
        return pruning_at_init_masks(method, pl_module, tensors, groups, batches=data, loss_fn=loss_fn)
    if method == "synflow":
        shape = input_shape or getattr(trainer.datamodule, "input_shape", None)
        if shape is None:
            raise ValueError(
                "pruning='synflow' is data-free and needs the shape of one input: pass `input_shape` (e.g. "
                "(1, 28, 28)) or give the DataModule an `input_shape` attribute"
            )
        return pruning_at_init_masks(method, pl_module, tensors, groups, input_shape=tuple(shape))
    return pruning_at_init_masks(method, pl_module, tensors, groups)
