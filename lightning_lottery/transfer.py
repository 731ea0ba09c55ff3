"""Ticket transfer (Morcos et al. 2019, "One ticket to win them all"): train a source search's tickets on a target.

A :class:`TicketSequence` makes round r of a :class:`~lightning_lottery.LotteryTicketCallback` run train ticket r
of the source search (all its rounds, so the results spread over % weights remaining), as one of the paper's
comparisons:

- ``"transferred"``: the source masks and the source's rewind weights (θ₀ or θ_k);
- ``"random"``: a random ticket: the same number of weights kept in each tensor, at random positions, with the
  same weights (the random-pruning control);
- ``"reinit"``: the source masks over the target model's own random initialisation (the random-reinit control).

Tensors named by ``reinit`` (e.g. a classifier head for another number of classes) keep the target model's
initial values and get no mask. The two further comparisons are ordinary runs: a ticket found on the target
itself (a plain lottery search) and the dense model (its round 0).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from torch import Tensor, nn

from lightning_lottery.core import State
from lightning_lottery.core.snapshot import canonical_tensors
from lightning_lottery.ticket import Ticket, TicketError

Variant = Literal["transferred", "random", "reinit"]
VARIANTS = ("transferred", "random", "reinit")
LABELS = {
    "transferred": "transferred ticket",
    "random": "random ticket",
    "reinit": "random reinit of transferred mask",
}


def _round_tickets(source: str | os.PathLike[str]) -> list[Path]:
    """The ticket branch of every level of a search: ``round_XX/ticket/ticket.safetensors`` in its lottery folder
    (or in a run folder holding ``lottery/``); folders of earlier versions hold ``round_XX/ticket.safetensors``."""
    folder = Path(source)
    if (folder / "lottery").is_dir():
        folder = folder / "lottery"
    paths = sorted(folder.glob("round_*/ticket/ticket.safetensors")) or sorted(
        folder.glob("round_*/ticket.safetensors")
    )
    if not paths:
        raise FileNotFoundError(
            f"No tickets under {folder}: expected round_XX/ticket/ticket.safetensors, as a lottery search writes "
            "them (point at its run folder, its lottery/ folder, or list ticket files)"
        )
    return paths


class TicketSequence:
    """The tickets a transfer run trains, one per round, and how (see the module docstring).

    Args:
        tickets: a search's run or ``lottery/`` folder (all its rounds), or ticket files / :class:`Ticket` objects.
        variant: ``"transferred"``, ``"random"`` or ``"reinit"``.
        reinit: names/patterns of the target model's tensors that keep their own initial values, unmasked.
        seed: positions of the random tickets.

    Example::

        tickets = TicketSequence("outputs/imagenet_resnet50/2026-11-21_10-00-00", reinit=["model.fc.*"])
        lottery = LotteryTicketCallback(tickets=tickets, monitor="val_loss")
    """

    def __init__(
        self,
        tickets: str | os.PathLike[str] | Sequence[str | os.PathLike[str] | Ticket],
        variant: Variant = "transferred",
        reinit: Sequence[str] = (),
        seed: int = 0,
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"`variant={variant!r}` is not one of {', '.join(repr(v) for v in VARIANTS)}")
        if isinstance(tickets, (str, os.PathLike)):
            tickets = _round_tickets(tickets)
        self.tickets = [t if isinstance(t, Ticket) else Ticket.load(t) for t in tickets]
        if not self.tickets:
            raise ValueError("`tickets` is empty")
        self.variant = variant
        self.reinit = tuple(reinit)
        self.seed = seed
        self.sources = [str(t) for t in tickets if not isinstance(t, Ticket)]

    def __len__(self) -> int:
        return len(self.tickets)

    @property
    def label(self) -> str:
        return LABELS[self.variant]

    def check(self, model: nn.Module) -> set[str]:
        """Refuse a model that the tickets do not fit (another architecture), before any training; returns
        the names kept fresh."""
        fresh: set[str] = set()
        for index, ticket in enumerate(self.tickets):
            try:
                fresh = ticket.check_fits(model, self.reinit)
            except TicketError as err:
                raise TicketError(f"ticket {index} of the transfer: {err}") from err
        return fresh

    def masks(self, round_index: int, model: nn.Module) -> dict[str, Tensor]:
        """Masks of round ``round_index`` (the ``reinit`` tensors get none)."""
        ticket = self.tickets[round_index]
        if self.variant == "random":
            ticket = ticket.random_like(self.seed + round_index)
        fresh = self.check(model) if round_index == 0 else ticket.check_fits(model, self.reinit)
        return {n: m.bool() for n, m in ticket.masks.items() if n not in fresh}

    def weights(self, round_index: int, model: nn.Module, target_init: State) -> State:
        """What round ``round_index`` starts from: source weights (with the target's own values for the ``reinit``
        tensors), or for ``"reinit"`` the target model's initial weights."""
        if self.variant == "reinit":
            return {n: w.clone() for n, w in target_init.items()}
        ticket = self.tickets[round_index]
        fresh = ticket.check_fits(model, self.reinit)
        own = {n: target_init[n] for n in canonical_tensors(model)}
        return ticket.merged_state(own, fresh)

    def settings(self) -> dict[str, object]:
        return {"variant": self.variant, "reinit": list(self.reinit), "seed": self.seed, "sources": self.sources}
