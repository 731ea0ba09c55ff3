"""How much is pruned by each round: cumulative sparsity targets and the groups that share a threshold."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

from lightning_lottery.core.selection import check_patterns, matches

Amount = float | tuple[float, ...]


def validate_amount(amount: float | Sequence[float], rounds: int, argument: str = "amount") -> Amount:
    """Check a per-round rate in (0, 1) or a schedule of cumulative targets, one per round."""
    if isinstance(amount, bool):
        raise TypeError(f"`{argument}` must be a float in (0, 1) or a sequence of floats, got {amount!r}")
    if isinstance(amount, (int, float)):
        if not 0.0 < float(amount) < 1.0:
            raise ValueError(
                f"`{argument}={amount!r}` is outside (0, 1): it is the fraction of the still-unpruned "
                "weights removed each round (the paper uses 0.2)"
            )
        return float(amount)
    try:
        schedule = tuple(float(a) for a in amount)
    except TypeError as err:
        raise TypeError(f"`{argument}` must be a float in (0, 1) or a sequence of floats, got {amount!r}") from err
    if len(schedule) != rounds:
        raise ValueError(
            f"`{argument}` has {len(schedule)} cumulative sparsity targets but `rounds={rounds}`: "
            "give one target per pruning round"
        )
    if any(not 0.0 < s < 1.0 for s in schedule):
        raise ValueError(f"`{argument}={list(schedule)}`: every cumulative sparsity target must lie in (0, 1)")
    if any(b <= a for a, b in pairwise(schedule)):
        raise ValueError(
            f"`{argument}={list(schedule)}` is not strictly increasing: masks only shrink, so each round's "
            "cumulative sparsity must exceed the previous one"
        )
    return schedule


def validate_layer_amounts(layer_amounts: Mapping[str, float] | None) -> dict[str, float]:
    """Per-tensor per-round rates: 0 keeps a tensor dense."""
    if layer_amounts is None:
        return {}
    checked = {}
    for pattern, rate in dict(layer_amounts).items():
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= float(rate) < 1.0:
            raise ValueError(
                f"`layer_amounts[{pattern!r}]={rate!r}`: a per-round rate must be a float in [0, 1) "
                "(0 keeps the tensor dense)"
            )
        checked[str(pattern)] = float(rate)
    return checked


def cumulative_sparsity(amount: Amount, round_index: int) -> float:
    """Target fraction of a tensor (or group) pruned after ``round_index`` pruning rounds."""
    if round_index <= 0:
        return 0.0
    if isinstance(amount, tuple):
        return amount[min(round_index, len(amount)) - 1]
    return 1.0 - (1.0 - amount) ** round_index


def pruned_count(size: int, sparsity: float) -> int:
    """Number of weights to prune to reach ``sparsity`` exactly (rounded half up)."""
    return min(size, math.floor(size * sparsity + 0.5))


@dataclass(frozen=True)
class PruneGroup:
    """Tensors that share one magnitude threshold, and how many of their weights survive in total."""

    names: tuple[str, ...]
    keep: int


@dataclass(frozen=True)
class SparsitySchedule:
    """Cumulative sparsity targets per tensor and round.

    ``scope="global"`` pools all tensors without an override under one threshold; ``"layer"`` gives each tensor
    its own. Tensors matched by ``layer_amounts`` are always pruned on their own at their own per-round rate.
    """

    amount: Amount
    scope: str = "global"
    layer_amounts: tuple[tuple[str, float], ...] = ()

    @classmethod
    def build(
        cls,
        amount: float | Sequence[float],
        rounds: int,
        scope: str = "global",
        layer_amounts: Mapping[str, float] | None = None,
    ) -> SparsitySchedule:
        if scope not in ("global", "layer"):
            raise ValueError(f"`scope={scope!r}` is not one of 'global', 'layer'")
        return cls(
            validate_amount(amount, rounds),
            scope,
            tuple(validate_layer_amounts(layer_amounts).items()),
        )

    def check_names(self, names: Sequence[str]) -> None:
        check_patterns("layer_amounts", [p for p, _ in self.layer_amounts], names)

    def override(self, name: str) -> float | None:
        """The per-round rate set for ``name`` by ``layer_amounts`` (the last matching entry wins)."""
        rate = None
        for pattern, value in self.layer_amounts:
            if matches(name, [pattern]):
                rate = value
        return rate

    def groups(self, sizes: Mapping[str, int], round_index: int) -> list[PruneGroup]:
        """The threshold groups after ``round_index`` rounds, with exact surviving counts.

        Args:
            sizes: the weights of each tensor that survive at the start of the search (its size when dense):
                rates apply to what is still unpruned, so a search from a pruned model continues from its masks.
            round_index: the level (0: no pruning).
        """
        pooled = [n for n in sizes if self.override(n) is None]
        groups = []
        if self.scope == "global" and pooled:
            total = sum(sizes[n] for n in pooled)
            target = cumulative_sparsity(self.amount, round_index)
            groups.append(PruneGroup(tuple(pooled), total - pruned_count(total, target)))
        for name, size in sizes.items():
            rate = self.override(name)
            if rate is None and self.scope == "global":
                continue
            target = cumulative_sparsity(self.amount if rate is None else rate, round_index)
            groups.append(PruneGroup((name,), size - pruned_count(size, target)))
        return groups
