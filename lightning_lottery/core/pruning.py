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


_SAMPLE = 1 << 18  # magnitudes sampled to bracket the threshold


def _scores(weight: Tensor, alive: Tensor, fully_alive: bool) -> Tensor:
    """|w| with pruned entries at -1, below every magnitude (skipped when nothing is pruned yet)."""
    return weight.abs() if fully_alive else torch.where(alive, weight.abs(), -1.0)


def _bracket(sample: Tensor, fraction_kept: float, widen: int) -> tuple[float, float]:
    """Scores between which the threshold very probably lies; each retry widens the bracket 4x."""
    n = sample.numel()
    if widen >= 3 or n == 0:
        return -1.0, float("inf")
    margin = (4.0 / n**0.5 + 1e-3) * 4**widen
    lo_rank = int((1.0 - fraction_kept - margin) * n)
    hi_rank = int((1.0 - fraction_kept + margin) * n)
    lo = -1.0 if lo_rank < 1 else float(torch.kthvalue(sample, lo_rank).values)
    hi = float("inf") if hi_rank > n else float(torch.kthvalue(sample, max(hi_rank, 1)).values)
    return lo, hi


def _threshold(weights: Sequence[Tensor], alive: Sequence[Tensor], full: Sequence[bool], keep: int) -> float:
    """The ``keep``-th largest alive |w|, found without concatenating all scores: a strided sample brackets it,
    one pass counts what lies above the bracket and gathers what lies inside (about 1% of the weights)."""
    total = sum(w.numel() for w in weights)
    available = sum(int(a.count_nonzero()) for a in alive)
    stride = max(1, total // _SAMPLE)
    sample = torch.cat(
        [
            _scores(w.flatten()[::stride], a.flatten()[::stride], f).double().cpu()
            for w, a, f in zip(weights, alive, full)
        ]
    )
    sample = sample[sample >= 0]
    for widen in range(4):
        lo, hi = _bracket(sample, keep / available, widen)
        above, candidates = 0, []
        for w, a, f in zip(weights, alive, full):
            s = _scores(w, a, f)
            above += int((s > hi).count_nonzero())
            candidates.append(s[(s > lo) & (s <= hi)].double().cpu())
        inside = torch.cat(candidates)
        need = keep - above
        if 0 < need <= inside.numel():
            return float(torch.kthvalue(inside, inside.numel() - need + 1).values)
        if need == 0:
            return hi
    raise AssertionError("unreachable: the last bracket spans every score")


def _select_largest(weights: Sequence[Tensor], alive: Sequence[Tensor], keep: int) -> list[Tensor]:
    """Keep exactly ``keep`` alive entries with the largest magnitudes, across all tensors together.

    Ties at the threshold are broken by position (first tensor first, then flat index), so the result is
    deterministic. Memory: one tensor's scores at a time, never a copy of all of them.
    """
    alive_counts = [int(a.count_nonzero()) for a in alive]
    if keep >= sum(alive_counts):
        return [a.clone() for a in alive]
    if keep <= 0:
        return [torch.zeros_like(a) for a in alive]
    full = [count == a.numel() for count, a in zip(alive_counts, alive)]
    threshold = _threshold(weights, alive, full, keep)
    kept = [_scores(w, a, f) > threshold for w, a, f in zip(weights, alive, full)]
    missing = keep - sum(int(k.count_nonzero()) for k in kept)
    for k, w, a, f in zip(kept, weights, alive, full):
        if missing <= 0:
            break
        ties = (_scores(w, a, f) == threshold).flatten().nonzero().squeeze(1)[:missing]
        k.view(-1)[ties] = True
        missing -= ties.numel()
    return kept


def magnitude_masks(weights: Mapping[str, Tensor], masks: Mapping[str, Tensor], groups: Sequence[PruneGroup]) -> Masks:
    """Prune the smallest-magnitude surviving weights of each group down to the group's ``keep`` count.

    Args:
        weights: current (trained) values, by tensor name.
        masks: current masks; only weights they keep can survive.
        groups: tensors sharing one threshold (one group per tensor for layer-wise pruning).
    """
    new: Masks = {}
    for group in groups:
        values = [weights[n].detach() for n in group.names]
        alive = [masks[n].to(device=w.device, dtype=torch.bool) for n, w in zip(group.names, values)]
        for name, kept in zip(group.names, _select_largest(values, alive, group.keep)):
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
