"""A search as data: levels, the branches trained on each level's mask, and what every branch starts from.

Level 0 trains the dense network. Level r >= 1 prunes the trained weights of level r-1's ``ticket`` branch and
trains the ticket again from its rewind point; each control named in ``controls`` is one more branch of the level,
trained on the same mask (or the same per-tensor counts) and from the same point of round 0's training, differing
from the ticket in exactly one thing (Frankle & Carbin 2019; open_lth's levels and branches).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_lottery.core.inits import add_noise, reshuffle, signed_constant
from lightning_lottery.core.pruning import counts, random_masks
from lightning_lottery.core.snapshot import State
from lightning_lottery.core.structure import NMStructure, random_nm_masks

TICKET = "ticket"
CONTROLS = ("reinit", "random", "reshuffle", "signed_constant", "noise")
_CONTROL_HELP = {
    "reinit": "the ticket's mask over weights drawn afresh from the module's initialiser",
    "random": "the ticket's per-tensor counts at random positions, survivors at the rewind point",
    "reshuffle": "the ticket's mask, the survivors' rewind values permuted within each tensor",
    "signed_constant": "the ticket's mask, sign(rewind value) x the tensor's standard deviation",
    "noise": "the ticket's mask, rewind values plus Gaussian noise of `rewind_noise` standard deviations",
}
# The rewind words of earlier versions, and what replaced them.
_RENAMED = {
    "none": "rewind='none' is now rewind='finetune' (keep the trained weights, train at round 0's final learning "
    "rate) or rewind='lr_rewind' (keep the trained weights, replay round 0's learning-rate schedule)",
    "reinit": "rewind='reinit' is now a control branch of every level: controls=['reinit'] with rewind='init'",
    "reshuffle": "rewind='reshuffle' is now a control branch of every level: controls=['reshuffle']",
    "signed_constant": "rewind='signed_constant' is now a control branch of every level: controls=['signed_constant']",
}

RewindKind = Literal["init", "step", "epoch", "auto", "finetune", "lr_rewind"]


@dataclass(frozen=True)
class Rewind:
    """Where each level >= 1 starts.

    ``init`` (θ₀) and ``step``/``epoch`` (θ_k) rewind the surviving weights and resume round 0's training at that
    point (global step, learning-rate schedule, data order); ``auto`` does so at the earliest stable point of a grid
    (instability analysis after round 0); ``finetune`` and ``lr_rewind`` keep the trained
    weights and restart at step 0, the former at round 0's final learning rate, the latter replaying its schedule.
    """

    kind: RewindKind
    value: int = 0

    @classmethod
    def parse(cls, rewind: Any) -> Rewind:
        if isinstance(rewind, str) and rewind.strip().isdigit():
            rewind = int(rewind)
        if isinstance(rewind, int) and not isinstance(rewind, bool):
            if rewind < 0:
                raise ValueError(f"`rewind={rewind}`: a rewind step must be >= 0")
            return cls("init") if rewind == 0 else cls("step", rewind)
        if isinstance(rewind, str):
            if rewind in ("init", "auto", "finetune", "lr_rewind"):
                return cls(rewind)  # type: ignore[arg-type]
            if rewind in _RENAMED:
                raise ValueError(_RENAMED[rewind])
            if rewind.startswith("epoch:") and rewind[6:].isdigit() and int(rewind[6:]) >= 1:
                return cls("epoch", int(rewind[6:]))
        raise ValueError(
            f"`rewind={rewind!r}` is not one of 'init', a step k >= 0, 'epoch:E' (E >= 1), 'auto', 'finetune', "
            "'lr_rewind'"
        )

    @property
    def late(self) -> bool:
        """θ_k of round 0 rather than θ₀ (``auto``: the k its instability chooses, possibly 0)."""
        return self.kind in ("step", "epoch", "auto")

    @property
    def keeps_trained_weights(self) -> bool:
        return self.kind in ("finetune", "lr_rewind")

    @property
    def setting(self) -> int | str:
        """The value as a user writes it."""
        if self.kind == "step":
            return self.value
        if self.kind == "epoch":
            return f"epoch:{self.value}"
        return self.kind


def parse_controls(controls: Any, rewind_noise: float) -> tuple[str, ...]:
    """Validate the control branches; ``noise`` needs ``rewind_noise`` > 0 and only it uses that scale."""
    if controls is None:
        controls = ()
    if isinstance(controls, str):
        controls = (controls,)
    try:
        controls = tuple(controls)
    except TypeError as err:
        raise TypeError(f"`controls` must be a list of control names from {list(CONTROLS)}, got {controls!r}") from err
    unknown = [c for c in controls if c not in CONTROLS]
    if unknown:
        allowed = "; ".join(f"{name!r}: {text}" for name, text in _CONTROL_HELP.items())
        raise ValueError(f"`controls` has unknown entries {unknown}; allowed: {allowed}")
    if len(set(controls)) != len(controls):
        raise ValueError(f"`controls={list(controls)}` names a control twice")
    if "noise" in controls and not rewind_noise:
        raise ValueError("controls=['noise'] needs its scale: set `rewind_noise` > 0 (standard deviations)")
    if rewind_noise and "noise" not in controls:
        raise ValueError(
            f"`rewind_noise={rewind_noise}` is the scale of the 'noise' control branch: add 'noise' to `controls`"
        )
    return controls


@dataclass(frozen=True)
class Branch:
    """One training run of a search: a level and what is trained on its mask."""

    round: int
    name: str = TICKET

    @property
    def is_ticket(self) -> bool:
        return self.name == TICKET

    def __str__(self) -> str:
        return f"round {self.round} ({self.name})"


@dataclass(frozen=True)
class SearchPlan:
    """Every branch of a search, in the order they train: each level's ticket, then its controls."""

    rounds: int
    controls: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[Branch]:
        yield Branch(0)
        for level in range(1, self.rounds + 1):
            yield Branch(level)
            for control in self.controls:
                yield Branch(level, control)

    def __len__(self) -> int:
        return 1 + self.rounds * (1 + len(self.controls))

    def __getitem__(self, index: int) -> Branch:
        if not 0 <= index < len(self):
            raise IndexError(index)
        if index == 0:
            return Branch(0)
        level, offset = divmod(index - 1, 1 + len(self.controls))
        return Branch(level + 1, TICKET if offset == 0 else self.controls[offset - 1])

    def index(self, branch: Branch) -> int:
        if branch.round == 0:
            return 0
        offset = 0 if branch.is_ticket else 1 + self.controls.index(branch.name)
        return 1 + (branch.round - 1) * (1 + len(self.controls)) + offset


def branch_start(
    name: str,
    mask: Mapping[str, Tensor],
    state: State,
    generator: torch.Generator,
    fresh_state: Callable[[], State] | None = None,
    noise: float = 0.0,
    structure: NMStructure | None = None,
) -> tuple[dict[str, Tensor], State]:
    """The masks and weights a branch of a level starts from.

    Args:
        name: ``"ticket"`` or a control.
        mask: the level's ticket mask (bool, by prunable tensor name).
        state: the level's start point: θ₀, θ_k, or the trained weights (finetune / lr_rewind).
        generator: the branch's own seeded generator (positions, permutations, noise).
        fresh_state: draws a new initialisation of the whole network (``reinit``).
        noise: the ``noise`` control's scale.
        structure: an N:M search: the ``random`` control keeps the pattern (N random positions of every M).
    """
    masks = {n: m.bool() for n, m in mask.items()}
    if name == TICKET:
        return masks, state
    if name == "reinit":
        if fresh_state is None:
            raise ValueError("the reinit control needs a way to draw fresh weights")
        return masks, fresh_state()
    if name == "random":
        if structure is not None:
            return random_nm_masks(masks, structure, generator), state
        everywhere = {n: torch.ones_like(m) for n, m in masks.items()}
        return random_masks(everywhere, counts(masks), generator), state
    out = dict(state)
    for tensor, m in masks.items():
        theta = state[tensor]
        if name == "reshuffle":
            out[tensor] = reshuffle(theta, m, generator)
        elif name == "signed_constant":
            out[tensor] = signed_constant(theta, m)
        elif name == "noise":
            out[tensor] = add_noise(theta, noise, generator)
        else:
            raise ValueError(f"unknown branch {name!r}; controls are {list(CONTROLS)}")
    return masks, out


def check_finite(state: Mapping[str, Tensor], what: str) -> None:
    """Refuse NaN/inf weights before a branch trains on them (they would train a whole level on garbage)."""
    bad = [n for n, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ValueError(f"{what} holds NaN or infinite values in {bad[:5]}{' ...' if len(bad) > 5 else ''}")


def validate_scale(value: Any, argument: str) -> float:
    """A finite float >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"`{argument}={value!r}` must be a finite float >= 0")
    return float(value)
