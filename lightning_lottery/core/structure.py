"""N:M fine-grained structured masks: in every group of M consecutive weights along a tensor's input dimension,
N survive (2:4 is the pattern NVIDIA's sparse tensor cores run, Ampere and newer).

**Layout.** Groups run along dim 1 of a weight: ``in_features`` of a Linear, RNN or attention weight ``(out, in)``;
``in_channels`` of a convolution ``(out, in, *kernel)``, at each output channel and kernel position. For a Linear this
is the ``(out, in)`` matrix ``torch.sparse.to_sparse_semi_structured`` compresses. For a convolution it is the
reduction dimension of its implicit GEMM in channels-last order ``(out, kh, kw, in)``, the layout NVIDIA's ASP prunes;
flattening ``in * kh * kw`` in PyTorch's memory order instead would mix kernel positions inside a group and match no
kernel. A tensor whose input dimension is not a multiple of M (e.g. the first convolution of an RGB network, 3 input
channels) is refused up front: :func:`check_structure` names it and its shape, and ``exclude`` keeps it dense.

**Levels.** Level 1 prunes the trained dense weights straight to N:M, magnitude-selected within each group (one
shot). This is NVIDIA's ASP recipe (Mishra et al. 2021, "Accelerating sparse deep neural networks": train dense,
prune once to 2:4, retrain), the baseline Zhou et al. 2021 ("Learning N:M fine-grained structured sparse neural
networks from scratch") compare with; Frankle & Carbin (2019) find winning tickets by one-shot pruning as well, and
what iterative pruning buys is smaller tickets, which N:M's fixed density (50% for 2:4) does not ask for. So
``amount``, ``scope`` and ``layer_amounts`` play no part at level 1: every tensor ends at exactly N/M density. Levels
r >= 2 (optional) prune ``amount`` of the survivors per level, unstructured, inside the kept pattern (``scope`` and
``layer_amounts`` as usual, counted from the N:M level): groups then keep at most N, which the 2:4 kernels still run
(the extra zeros save no time). The question "does rewinding find better N:M subnetworks than fine-tuning?" needs
only level 1.

**Controls.** The random-pruning control keeps the pattern: N random positions in each group of M, then (after level
1) a random subset of the ticket's per-tensor count (:func:`random_nm_masks`). The reinit control keeps the ticket's
mask, so it is N:M as it is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_lottery.core.pruning import Masks, counts, magnitude_masks, random_masks
from lightning_lottery.core.schedule import SparsitySchedule

_SPEC = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class NMStructure:
    """Keep ``n`` of every ``m`` consecutive weights along each weight's input dimension.

    Example::

        >>> NMStructure.parse("2:4")
        NMStructure(n=2, m=4)
        >>> str(NMStructure(2, 4)), NMStructure(2, 4).density
        ('2:4', 0.5)
    """

    n: int
    m: int

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or isinstance(self.m, bool) or not 0 < self.n < self.m:
            raise ValueError(
                f"N:M structure {self.n}:{self.m} needs integers 0 < N < M (N weights kept in every group of M)"
            )

    @classmethod
    def parse(cls, spec: str | NMStructure) -> NMStructure:
        if isinstance(spec, NMStructure):
            return spec
        match = _SPEC.match(spec) if isinstance(spec, str) else None
        if match is None or not 0 < int(match[1]) < int(match[2]):
            # YAML 1.1 (PyYAML, OmegaConf) reads an unquoted 2:4 as the base-60 integer 124.
            hint = " (in YAML, quote it: structure: '2:4')" if isinstance(spec, int) else ""
            raise ValueError(
                f"`structure={spec!r}` is not 'N:M' with integers 0 < N < M, e.g. '2:4' (2 of every 4 consecutive "
                f"weights kept: the pattern sparse tensor cores run){hint}"
            )
        return cls(int(match[1]), int(match[2]))

    @property
    def density(self) -> float:
        return self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


def parse_structure(spec: str | NMStructure | None) -> NMStructure | None:
    """``None`` (unstructured masks) or a checked :class:`NMStructure`."""
    return None if spec is None else NMStructure.parse(spec)


# ---------------------------------------------------------------------------------------------------- layout


def grouped(tensor: Tensor, m: int) -> Tensor:
    """``tensor`` as ``(groups, m)``: dim 1 (the input dimension) moved last, then cut into runs of ``m``."""
    return tensor.movedim(1, -1).reshape(-1, m)


def ungrouped(groups: Tensor, shape: Sequence[int]) -> Tensor:
    """Inverse of :func:`grouped` for a tensor of ``shape``."""
    moved = (shape[0], *shape[2:], shape[1])
    return groups.reshape(moved).movedim(-1, 1).contiguous()


def incompatible(shapes: Mapping[str, Sequence[int]], structure: NMStructure) -> dict[str, str]:
    """Tensors that cannot hold an N:M mask, each with the reason."""
    problems = {}
    for name, shape in shapes.items():
        shape = tuple(shape)
        if len(shape) < 2:
            problems[name] = f"{name} {shape}: a 1-D tensor has no input dimension to group"
        elif shape[1] % structure.m:
            problems[name] = f"{name} {shape}: input dimension {shape[1]} (dim 1) is not a multiple of {structure.m}"
    return problems


def check_structure(
    structure: NMStructure,
    shapes: Mapping[str, Sequence[int]],
    schedule: SparsitySchedule | None = None,
) -> None:
    """Refuse, before any training, tensors that cannot be N:M and schedule settings that cannot apply.

    Raises:
        ValueError: listing every tensor whose input dimension is not a multiple of M (with the ``exclude`` that
            keeps them dense), a cumulative ``amount`` schedule, or a ``layer_amounts`` rate of 0 (N:M prunes every
            selected tensor at level 1; ``exclude`` keeps a tensor dense).
    """
    problems = incompatible(shapes, structure)
    if problems:
        raise ValueError(
            f"`structure='{structure}'` keeps {structure.n} of every {structure.m} consecutive weights along each "
            "weight's input dimension (in_features of a Linear, in_channels of a convolution); these tensors cannot "
            "be grouped:\n  " + "\n  ".join(problems.values()) + f"\nKeep them dense with exclude={sorted(problems)}"
        )
    if schedule is None:
        return
    if isinstance(schedule.amount, tuple):
        raise ValueError(
            f"`amount={list(schedule.amount)}` (cumulative targets) cannot be combined with "
            f"`structure='{structure}'`: level 1 is {structure} by construction ({1 - structure.density:.0%} "
            "sparse); give a float rate for the optional levels after it"
        )
    dense = [pattern for pattern, rate in schedule.layer_amounts if rate == 0.0]
    if dense:
        raise ValueError(
            f"`layer_amounts` sets rate 0 (keep dense) for {dense}, but `structure='{structure}'` prunes every "
            f"selected tensor to {structure} at level 1: use exclude={dense} to keep them dense"
        )


# ---------------------------------------------------------------------------------------------------- checks


def kept_per_group(mask: Tensor, m: int) -> Tensor:
    """Nonzero entries in each group of ``m`` (a 1-D int tensor, one entry per group)."""
    return (grouped(mask, m) != 0).sum(dim=1)


def satisfies(tensor: Tensor, structure: NMStructure, exact: bool = False) -> bool:
    """Whether every group of M holds at most N nonzeros (exactly N if ``exact``)."""
    if tensor.dim() < 2 or tensor.shape[1] % structure.m:
        return False
    kept = kept_per_group(tensor, structure.m)
    return bool((kept == structure.n).all()) if exact else bool((kept <= structure.n).all())


# ---------------------------------------------------------------------------------------------------- masks


def nm_masks(weights: Mapping[str, Tensor], masks: Mapping[str, Tensor], structure: NMStructure) -> Masks:
    """Keep the ``n`` largest-magnitude weights of every group of ``m``, among those ``masks`` still keep.

    Ties are broken by position (the earlier weight of a group wins), so the result is deterministic.

    Raises:
        ValueError: a tensor cannot be grouped, or a group keeps fewer than ``n`` weights already (masks only shrink).
    """
    check_structure(structure, {name: tuple(weights[name].shape) for name in masks})
    new: Masks = {}
    for name, mask in masks.items():
        weight = weights[name].detach()
        alive = grouped(mask.to(device=weight.device, dtype=torch.bool), structure.m)
        short = int((alive.sum(dim=1) < structure.n).sum())
        if short:
            raise ValueError(
                f"{name}: {short} groups of {structure.m} keep fewer than {structure.n} weights already, so the "
                f"mask cannot become {structure} (masks only shrink); N:M selection starts from a denser mask"
            )
        scores = torch.where(alive, grouped(weight, structure.m).abs().float(), -1.0)
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, : structure.n]
        kept = torch.zeros_like(alive).scatter_(1, order, True)
        new[name] = ungrouped(kept, weight.shape)
    return new


def random_nm_masks(masks: Mapping[str, Tensor], structure: NMStructure, generator: torch.Generator) -> Masks:
    """The random-pruning control of an N:M ticket: the same per-tensor counts as ``masks``, N:M at random.

    Each tensor gets ``n`` uniformly random positions in every group of ``m``; when the ticket keeps fewer (levels
    after the N:M level), a uniformly random subset of them of the ticket's count.

    Raises:
        ValueError: a tensor cannot be grouped, or ``masks`` keep more weights than N:M allows.
    """
    check_structure(structure, {name: tuple(mask.shape) for name, mask in masks.items()})
    new: Masks = {}
    for name, mask in masks.items():
        count, groups = int(mask.count_nonzero()), mask.numel() // structure.m
        if count > groups * structure.n:
            raise ValueError(
                f"{name}: the mask keeps {count} of {mask.numel()} weights, more than {structure} allows "
                f"({groups * structure.n}); it is not an N:M mask"
            )
        order = torch.rand(groups, structure.m, generator=generator).argsort(dim=1)[:, : structure.n]
        kept = torch.zeros(groups, structure.m, dtype=torch.bool).scatter_(1, order, True)
        if count < groups * structure.n:
            survivors = kept.flatten().nonzero().squeeze(1)
            dropped = survivors[torch.randperm(survivors.numel(), generator=generator)[count:]]
            kept.view(-1)[dropped] = False
        new[name] = ungrouped(kept, mask.shape).to(mask.device)
    return new


def structured_next_masks(
    weights: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    structure: NMStructure,
    schedule: SparsitySchedule,
    round_index: int,
    pruning: str = "magnitude",
    generator: torch.Generator | None = None,
) -> Masks:
    """The masks of level ``round_index`` (>= 1) of an N:M search, as CPU bool tensors.

    Level 1 is N:M (magnitude within each group). Levels r >= 2 prune inside the kept pattern, unstructured, to the
    counts ``schedule`` gives after r - 1 rounds on tensors the size of their N:M survivors: a ``scope="global"``
    schedule shares one threshold, ``"layer"`` prunes each tensor on its own.

    Args:
        weights: current (trained) values, by tensor name.
        masks: current masks (all ``True`` before level 1; the level-(r-1) masks after).
        structure: the N:M pattern.
        schedule: per-level rates for the levels after the N:M level (see :func:`check_structure`).
        round_index: the level being pruned to, >= 1.
        pruning: ``"magnitude"``, or ``"random"`` (a random-pruning search: N:M at random at level 1, then the
            magnitude counts at random positions among the survivors).
        generator: seeded generator for ``pruning="random"``.
    """
    if round_index < 1:
        raise ValueError(f"`round_index={round_index}`: level 0 trains dense; N:M masks start at level 1")
    if pruning not in ("magnitude", "random"):
        raise ValueError(f"`pruning={pruning!r}` is not one of 'magnitude', 'random'")
    if pruning == "random" and generator is None:
        raise ValueError("random pruning needs a seeded torch.Generator")
    if round_index == 1:
        new = nm_masks(weights, masks, structure)
        if pruning == "random":
            new = random_nm_masks(new, structure, generator)
        return {name: mask.cpu() for name, mask in new.items()}
    loose = [name for name, mask in masks.items() if not satisfies(mask, structure)]
    if loose:
        raise ValueError(f"Level {round_index} prunes inside an {structure} pattern, but {loose} are not {structure}")
    base = {name: masks[name].numel() // structure.m * structure.n for name in masks}
    new = magnitude_masks(weights, masks, schedule.groups(base, round_index - 1))
    if pruning == "random":
        new = random_masks(masks, counts(new), generator)
    return {name: mask.cpu() for name, mask in new.items()}
