"""Mask analytics over the tickets a search wrote: overlap between consecutive levels, between seeds, between the
branches of a level and between two runs (e.g. a transferred ticket and one found on the target), and per-layer
sparsity by level.

A search's lottery folder holds ``round_XX/<branch>/ticket.safetensors`` (``ticket`` for the main line, else a
control's name); the older flat layout ``round_XX/ticket.safetensors`` is read as branch ``ticket``. Every
function takes a run folder (with a ``lottery/`` folder in it) or the lottery folder itself.

Example::

    from lightning_lottery.analysis import level_overlaps, seed_overlaps
    for c in level_overlaps("outputs/mnist_lenet300/run"):
        print(c.round, c.remaining_pct_b, c.overlap.jaccard)
    pairs = seed_overlaps(["multirun/x/0", "multirun/x/1", "multirun/x/2"])
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations, pairwise
from pathlib import Path

from torch import Tensor

from lightning_lottery.core.overlap import Overlap, jaccard, remaining_fraction, tensor_sparsity
from lightning_lottery.ticket import Ticket

PathLike = str | os.PathLike[str]
TICKET_FILE = "ticket.safetensors"
MAIN_BRANCH = "ticket"
_ROUND = re.compile(r"round_(\d+)")


@dataclass(frozen=True)
class MaskComparison:
    """One overlap between two tickets.

    Attributes:
        kind: ``"levels"`` (consecutive levels of one run), ``"seeds"`` (two runs at one level), ``"branches"``
            (two branches of one level) or ``"runs"`` (two runs matched by level or sparsity).
        round: the level of ``b`` (the later level for ``"levels"``).
        a, b: what was compared, e.g. ``"round 3 ticket"`` or ``"seed 1"``.
        overlap: the Jaccard overlap, pooled and per tensor, with its chance level.
        round_a: the level of ``a``.
    """

    kind: str
    round: int
    a: str
    b: str
    overlap: Overlap
    round_a: int = -1

    @property
    def remaining_pct_a(self) -> float:
        return 100.0 * self.overlap.kept_a / self.overlap.total

    @property
    def remaining_pct_b(self) -> float:
        return 100.0 * self.overlap.kept_b / self.overlap.total


def lottery_folder(run: PathLike) -> Path:
    """The folder holding ``round_XX``: ``run/lottery`` if present, else ``run`` itself."""
    folder = Path(run)
    return folder / "lottery" if (folder / "lottery").is_dir() else folder


def find_tickets(run: PathLike) -> dict[int, dict[str, Path]]:
    """Ticket files by level, then branch, in level order; the main line first in each level.

    Raises:
        FileNotFoundError: no ticket under the folder.
    """
    folder = lottery_folder(run)
    found: dict[int, dict[str, Path]] = {}
    for round_dir in folder.glob("round_*"):
        match = _ROUND.fullmatch(round_dir.name)
        if not match or not round_dir.is_dir():
            continue
        branches: dict[str, Path] = {}
        if (round_dir / TICKET_FILE).is_file():
            branches[MAIN_BRANCH] = round_dir / TICKET_FILE
        for branch_dir in sorted(round_dir.iterdir()):
            if (branch_dir / TICKET_FILE).is_file():
                branches[branch_dir.name] = branch_dir / TICKET_FILE
        if branches:
            main = {MAIN_BRANCH: branches.pop(MAIN_BRANCH)} if MAIN_BRANCH in branches else {}
            found[int(match.group(1))] = {**main, **branches}
    if not found:
        raise FileNotFoundError(
            f"No tickets under {folder}: expected round_XX/<branch>/{TICKET_FILE} (or round_XX/{TICKET_FILE}), "
            "as a lottery search with save_tickets=True writes them"
        )
    return dict(sorted(found.items()))


def read_masks(path: PathLike) -> dict[str, Tensor]:
    """The bool masks of one ticket file (read with :meth:`Ticket.load`; the last few are cached)."""
    resolved = Path(path).resolve()
    return dict(_cached_masks(str(resolved), resolved.stat().st_mtime_ns))


@lru_cache(maxsize=8)
def _cached_masks(path: str, mtime_ns: int) -> dict[str, Tensor]:
    return {name: mask.bool() for name, mask in Ticket.load(path).masks.items()}


def level_overlaps(run: PathLike, branch: str = MAIN_BRANCH) -> list[MaskComparison]:
    """Overlap of each level's ``branch`` ticket with the previous level's (levels present in the run only)."""
    levels = [(r, b[branch]) for r, b in find_tickets(run).items() if branch in b]
    return [
        MaskComparison(
            "levels", r, f"round {p} {branch}", f"round {r} {branch}", jaccard(read_masks(pp), read_masks(rp)), p
        )
        for (p, pp), (r, rp) in pairwise(levels)
    ]


def branch_overlaps(run: PathLike, reference: str = MAIN_BRANCH) -> list[MaskComparison]:
    """At every level, the overlap of the ``reference`` branch's ticket with every other branch's."""
    comparisons = []
    for r, branches in find_tickets(run).items():
        if reference not in branches:
            continue
        base = read_masks(branches[reference])
        for name, path in branches.items():
            if name != reference:
                overlap = jaccard(base, read_masks(path))
                comparisons.append(MaskComparison("branches", r, reference, name, overlap, r))
    return comparisons


def seed_overlaps(
    runs: Sequence[PathLike], branch: str = MAIN_BRANCH, labels: Sequence[str] | None = None
) -> list[MaskComparison]:
    """At every level all the runs reached, the overlap of every pair of runs (e.g. seeds of one recipe)."""
    labels = list(labels) if labels is not None else [str(r) for r in runs]
    if len(labels) != len(runs):
        raise ValueError(f"{len(labels)} labels for {len(runs)} runs")
    tickets = [{r: b[branch] for r, b in find_tickets(run).items() if branch in b} for run in runs]
    shared = sorted(set.intersection(*(set(t) for t in tickets))) if tickets else []
    comparisons = []
    for r in shared:
        for i, j in combinations(range(len(runs)), 2):
            overlap = jaccard(read_masks(tickets[i][r]), read_masks(tickets[j][r]))
            comparisons.append(MaskComparison("seeds", r, labels[i], labels[j], overlap, r))
    return comparisons


def run_overlaps(
    run_a: PathLike,
    run_b: PathLike,
    branch_a: str = MAIN_BRANCH,
    branch_b: str = MAIN_BRANCH,
    match: str = "round",
    tolerance: float = 0.02,
) -> list[MaskComparison]:
    """Overlap of two runs' tickets, e.g. a transferred ticket against the ticket found on the target, or a
    one-shot against an iterative ticket. Only the tensors both mask are compared (a transferred ticket may leave
    the classifier head unmasked).

    Args:
        match: ``"round"`` pairs equal levels; ``"sparsity"`` pairs each ticket of ``run_a`` with the ticket of
            ``run_b`` whose fraction of weights remaining is closest, if within ``tolerance`` (relative), so that
            runs with different schedules (one-shot vs. iterative) line up.
    """
    if match not in ("round", "sparsity"):
        raise ValueError(f"`match={match!r}` is not one of 'round', 'sparsity'")
    a = {r: b[branch_a] for r, b in find_tickets(run_a).items() if branch_a in b}
    b = {r: t[branch_b] for r, t in find_tickets(run_b).items() if branch_b in t}
    pairs: list[tuple[int, int]] = []
    if match == "round":
        pairs = [(r, r) for r in sorted(set(a) & set(b))]
    else:
        density_b = {r: remaining_fraction(read_masks(p)) for r, p in b.items()}
        for r, path in a.items():
            density = remaining_fraction(read_masks(path))
            closest = min(density_b, key=lambda k: abs(density_b[k] - density), default=None)
            if closest is not None and abs(density_b[closest] - density) <= tolerance * density:
                pairs.append((r, closest))
    return [
        MaskComparison(
            "runs",
            rb,
            f"{run_a} round {ra} {branch_a}",
            f"{run_b} round {rb} {branch_b}",
            jaccard(read_masks(a[ra]), read_masks(b[rb]), common_only=True),
            ra,
        )
        for ra, rb in pairs
    ]


def layer_sparsity(run: PathLike, branch: str = MAIN_BRANCH) -> dict[int, dict[str, float]]:
    """Fraction of each tensor pruned, by level, for one branch."""
    return {
        r: tensor_sparsity(read_masks(branches[branch]))
        for r, branches in find_tickets(run).items()
        if branch in branches
    }
