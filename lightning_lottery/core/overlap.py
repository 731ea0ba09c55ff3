"""How alike two sets of masks are: Jaccard overlap of the kept weights, what chance alone would give, and the
sparsity of each tensor.

Example::

    >>> import torch
    >>> a = {"w": torch.tensor([1, 1, 0, 0], dtype=torch.bool)}
    >>> b = {"w": torch.tensor([1, 0, 1, 0], dtype=torch.bool)}
    >>> o = jaccard(a, b)
    >>> round(o.jaccard, 4), round(o.chance, 4), o.tensors
    (0.3333, 0.3333, {'w': 0.3333333333333333})
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class Overlap:
    """Jaccard overlap |A ∩ B| / |A ∪ B| of the weights two mask sets keep.

    Attributes:
        jaccard: pooled over tensors: Σ|A∩B| / Σ|A∪B| (1 when both keep nothing).
        chance: the same ratio for random masks with the same per-tensor counts: the expected intersection of two
            uniformly drawn subsets of sizes kₐ, k_b out of n is kₐ·k_b / n (a ratio of expectations).
        tensors: the Jaccard overlap of each tensor compared.
        kept_a, kept_b: weights kept by each set, over the tensors compared.
        total: weights in the tensors compared.
    """

    jaccard: float
    chance: float
    tensors: dict[str, float]
    kept_a: int
    kept_b: int
    total: int


def jaccard(a: Mapping[str, Tensor], b: Mapping[str, Tensor], common_only: bool = False) -> Overlap:
    """The Jaccard overlap of two mask sets (``True`` keeps a weight), per tensor and pooled.

    Args:
        a, b: masks by tensor name.
        common_only: compare the tensors both sets mask (e.g. a transferred ticket without the classifier head
            next to a ticket that has one); otherwise both must mask the same tensors.

    Raises:
        ValueError: different tensors (unless ``common_only``), none in common, or shapes that differ.
    """
    names = [n for n in a if n in b]
    if not common_only and set(a) != set(b):
        raise ValueError(f"mask sets name different tensors: only in one {sorted(set(a) ^ set(b))}")
    if not names:
        raise ValueError("the two mask sets have no tensor in common")
    shapes = [f"{n}: {tuple(a[n].shape)} vs {tuple(b[n].shape)}" for n in names if a[n].shape != b[n].shape]
    if shapes:
        raise ValueError(f"mask shapes differ: {shapes}")
    per_tensor: dict[str, float] = {}
    inter = union = expected_inter = expected_union = 0.0
    kept_a = kept_b = total = 0
    for name in names:
        x, y = a[name].bool(), b[name].to(a[name].device).bool()
        both, either = int((x & y).count_nonzero()), int((x | y).count_nonzero())
        ka, kb, n = int(x.count_nonzero()), int(y.count_nonzero()), x.numel()
        per_tensor[name] = both / either if either else 1.0
        inter, union = inter + both, union + either
        chance_inter = ka * kb / n if n else 0.0
        expected_inter, expected_union = expected_inter + chance_inter, expected_union + ka + kb - chance_inter
        kept_a, kept_b, total = kept_a + ka, kept_b + kb, total + n
    return Overlap(
        jaccard=inter / union if union else 1.0,
        chance=expected_inter / expected_union if expected_union else 1.0,
        tensors=per_tensor,
        kept_a=kept_a,
        kept_b=kept_b,
        total=total,
    )


def tensor_sparsity(masks: Mapping[str, Tensor]) -> dict[str, float]:
    """Fraction of each tensor's weights that its mask prunes."""
    return {n: 1.0 - int(m.bool().count_nonzero()) / m.numel() if m.numel() else 0.0 for n, m in masks.items()}


def remaining_fraction(masks: Mapping[str, Tensor]) -> float:
    """Fraction of all masked weights that are kept."""
    total = sum(m.numel() for m in masks.values())
    return sum(int(m.bool().count_nonzero()) for m in masks.values()) / total if total else 1.0
