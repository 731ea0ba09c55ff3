"""One pruning round on a model, as plain functions: the callback and the benchmarks run exactly these."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from lightning_lottery.core.pruning import Masks, counts, magnitude_masks, random_masks
from lightning_lottery.core.reparam import install_masks
from lightning_lottery.core.schedule import SparsitySchedule
from lightning_lottery.core.selection import PrunableTensor
from lightning_lottery.core.snapshot import State, load_dense_state
from lightning_lottery.core.structure import NMStructure, structured_next_masks


def next_masks(
    tensors: Mapping[str, PrunableTensor],
    masks: Mapping[str, Tensor],
    schedule: SparsitySchedule,
    round_index: int,
    pruning: str = "magnitude",
    generator: torch.Generator | None = None,
    start_counts: Mapping[str, int] | None = None,
    structure: NMStructure | None = None,
) -> Masks:
    """The masks of round ``round_index`` (>= 1), from the current (trained) weights and masks; CPU bool tensors.

    ``pruning="random"`` keeps the per-tensor counts magnitude pruning would give, at random positions.
    ``start_counts``: weights per tensor unpruned at the start of the search (default: all), which the
    schedule's rates apply to. ``structure``: an N:M search (level 1 is N:M, later levels prune inside the pattern).
    """
    weights = {name: t.tensor.detach() for name, t in tensors.items()}
    if structure is not None:
        return structured_next_masks(weights, masks, structure, schedule, round_index, pruning, generator)
    sizes = {name: w.numel() for name, w in weights.items()}
    groups = schedule.groups({**sizes, **(start_counts or {})}, round_index)
    new = magnitude_masks(weights, masks, groups)
    if pruning == "random":
        if generator is None:
            raise ValueError("random pruning needs a seeded torch.Generator")
        new = random_masks(masks, counts(new), generator)
    return {name: mask.cpu() for name, mask in new.items()}


def rewind(
    model: nn.Module,
    tensors: Mapping[str, PrunableTensor],
    masks: Masks,
    state: State | None,
    replace: bool = False,
) -> None:
    """Write ``state`` (θ₀, θ_k or a fresh init; ``None`` keeps the trained weights) and install ``masks``
    (replacing the current ones if ``replace``, else intersecting)."""
    if state is not None:
        load_dense_state(model, state)
    install_masks(tensors, masks, replace)
