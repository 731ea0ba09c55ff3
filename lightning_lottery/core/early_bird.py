"""Early-bird tickets (You et al. 2020, "Drawing early-bird tickets"): stop training a level once the mask it
would produce has stopped changing.

During a level, the next level's prospective mask is computed every so often from the current weights; the
tracker keeps the normalised Hamming distance between consecutive prospective masks and reports convergence when
the last ``patience`` distances are all below ``threshold`` (the paper: 5 and 0.1).

Example::

    >>> import torch
    >>> tracker = EarlyBirdTracker(patience=2, threshold=0.3)
    >>> for bits in ([1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 1, 0], [1, 0, 1, 1]):
    ...     _ = tracker.update({"w": torch.tensor(bits, dtype=torch.bool)})
    >>> tracker.distances, tracker.converged
    ([0.5, 0.0, 0.25], True)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor


def mask_distance(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """Normalised Hamming distance between two sets of masks: the fraction of all their positions (pooled over
    tensors) that one keeps and the other prunes; 0 for equal masks, 1 for complementary ones.

    Raises:
        ValueError: the two sets name different tensors or shapes differ.
    """
    _check_same_layout(a, b)
    total = sum(m.numel() for m in a.values())
    if total == 0:
        return 0.0
    differ = sum(int((a[n].bool() != b[n].to(a[n].device).bool()).count_nonzero()) for n in a)
    return differ / total


class EarlyBirdTracker:
    """Feeds on prospective masks; says when the last ``patience`` consecutive distances are all below
    ``threshold``.

    Args:
        patience: how many consecutive distances must be small (the paper's queue length, 5).
        threshold: the distance each of them must stay below (the paper's ε, 0.1).

    Call :meth:`reset` when a new level starts: its masks are not comparable with the last level's.
    """

    def __init__(self, patience: int = 5, threshold: float = 0.1) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"`patience={patience!r}` must be an int >= 1 (consecutive mask distances; paper: 5)")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold <= 1.0:
            raise ValueError(f"`threshold={threshold!r}` must be a number in (0, 1] (a mask distance; paper: 0.1)")
        self.patience = patience
        self.threshold = float(threshold)
        self.distances: list[float] = []
        self._previous: dict[str, Tensor] | None = None

    @property
    def updates(self) -> int:
        """Prospective masks seen since the last reset."""
        return len(self.distances) + (self._previous is not None)

    @property
    def converged(self) -> bool:
        recent = self.distances[-self.patience :]
        return len(recent) == self.patience and max(recent) < self.threshold

    def update(self, masks: Mapping[str, Tensor]) -> float | None:
        """Record the next prospective mask; returns its distance to the previous one (``None`` for the first)."""
        current = {name: mask.detach().to("cpu", torch.bool, copy=True) for name, mask in masks.items()}
        distance = None if self._previous is None else mask_distance(self._previous, current)
        if distance is not None:
            self.distances.append(distance)
        self._previous = current
        return distance

    def reset(self) -> None:
        self.distances = []
        self._previous = None

    def state_dict(self) -> dict[str, Any]:
        """Tensors and numbers only: loadable with ``torch.load(..., weights_only=True)``."""
        return {
            "distances": torch.tensor(self.distances, dtype=torch.float64),
            "previous": dict(self._previous) if self._previous is not None else {},
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        missing = {"distances", "previous"} - set(state_dict)
        if missing:
            raise KeyError(f"early-bird state lacks {sorted(missing)}")
        self.distances = [float(d) for d in state_dict["distances"].tolist()]
        previous = state_dict["previous"]
        self._previous = {n: m.to("cpu", torch.bool) for n, m in previous.items()} if previous else None


def _check_same_layout(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> None:
    if set(a) != set(b):
        raise ValueError(f"masks name different tensors: only in one {sorted(set(a) ^ set(b))}")
    shapes = [f"{n}: {tuple(a[n].shape)} vs {tuple(b[n].shape)}" for n in a if a[n].shape != b[n].shape]
    if shapes:
        raise ValueError(f"mask shapes differ: {shapes}")
