"""Pruning criteria: which weights survive a round, with exact counts.

A mask is a bool tensor shaped like its weight: ``True`` keeps the weight. Masks only shrink: a criterion
chooses survivors among the weights its input mask still keeps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from lightning_lottery.core.schedule import PruneGroup

Masks = dict[str, Tensor]


def _select_largest(scores: Sequence[Tensor], alive: Sequence[Tensor], keep: int) -> list[Tensor]:
    """Keep exactly ``keep`` alive entries with the largest scores, across all tensors together.

    Ties at the threshold are broken by position (first tensor first, then flat index), so the result is
    deterministic.
    """
    available = sum(int(a.sum()) for a in alive)
    if keep >= available:
        return [a.clone() for a in alive]
    if keep <= 0:
        return [torch.zeros_like(a) for a in alive]
    # Dead entries score -1, below every magnitude, so they are never chosen while keep <= available.
    flat = torch.cat([torch.where(a, s, -1.0).flatten() for s, a in zip(scores, alive)])
    threshold = torch.kthvalue(flat, flat.numel() - keep + 1).values
    above = flat > threshold
    missing = keep - int(above.sum())
    if missing > 0:
        ties = (flat == threshold).nonzero().squeeze(1)[:missing]
        above[ties] = True
    del flat
    out, offset = [], 0
    for a in alive:
        out.append(above[offset : offset + a.numel()].view_as(a))
        offset += a.numel()
    return out


def magnitude_masks(weights: Mapping[str, Tensor], masks: Mapping[str, Tensor], groups: Sequence[PruneGroup]) -> Masks:
    """Prune the smallest-magnitude surviving weights of each group down to the group's ``keep`` count.

    Args:
        weights: current (trained) values, by tensor name.
        masks: current masks; only weights they keep can survive.
        groups: tensors sharing one threshold (one group per tensor for layer-wise pruning).
    """
    new: Masks = {}
    for group in groups:
        scores = [weights[n].detach().abs().float() for n in group.names]
        alive = [masks[n].to(device=s.device, dtype=torch.bool) for n, s in zip(group.names, scores)]
        for name, kept in zip(group.names, _select_largest(scores, alive, group.keep)):
            new[name] = kept
    return new


def random_masks(masks: Mapping[str, Tensor], keep: Mapping[str, int], generator: torch.Generator) -> Masks:
    """Keep exactly ``keep[name]`` surviving weights of each tensor, chosen uniformly at random."""
    new: Masks = {}
    for name, mask in masks.items():
        flat = mask.detach().cpu().flatten().bool()
        alive = flat.nonzero().squeeze(1)
        chosen = alive[torch.randperm(alive.numel(), generator=generator)[: keep[name]]]
        kept = torch.zeros_like(flat)
        kept[chosen] = True
        new[name] = kept.view_as(mask).to(mask.device)
    return new


def counts(masks: Mapping[str, Tensor]) -> dict[str, int]:
    """Surviving weights per tensor."""
    return {name: int(mask.sum()) for name, mask in masks.items()}
