"""Mask analytics: Jaccard overlap and per-layer sparsity, by hand on tiny masks, and read from ticket files in a
search's lottery folder (branch layout and the older flat one)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_lottery import Ticket
from lightning_lottery.analysis import (
    branch_overlaps,
    find_tickets,
    layer_sparsity,
    level_overlaps,
    run_overlaps,
    seed_overlaps,
)
from lightning_lottery.core.overlap import jaccard, remaining_fraction, tensor_sparsity


def _m(*rows: list[int]) -> torch.Tensor:
    return torch.tensor(rows[0] if len(rows) == 1 else list(rows), dtype=torch.bool)


A = {"fc1.weight": _m([1, 1, 0, 0]), "fc2.weight": _m([1, 0], [1, 1])}
B = {"fc1.weight": _m([1, 0, 1, 0]), "fc2.weight": _m([1, 0], [0, 1])}


def test_jaccard_per_tensor_pooled_and_chance_by_hand():
    o = jaccard(A, B)
    # fc1: A keeps {0,1}, B {0,2}: 1 shared of 3 kept by either. fc2: A {0,2,3}, B {0,3}: 2 of 3.
    assert o.tensors == pytest.approx({"fc1.weight": 1 / 3, "fc2.weight": 2 / 3})
    assert o.jaccard == pytest.approx(3 / 6)  # pooled counts, not the mean of the ratios
    # Chance: E|A∩B| = ka·kb/n: fc1 2·2/4 = 1 (union 3), fc2 3·2/4 = 1.5 (union 3.5).
    assert o.chance == pytest.approx(2.5 / 6.5)
    assert (o.kept_a, o.kept_b, o.total) == (5, 4, 8)
    assert jaccard(A, A).jaccard == 1.0
    assert jaccard(A, {n: ~m for n, m in A.items()}).jaccard == 0.0


def test_jaccard_of_two_empty_masks_is_one_and_mismatches_are_refused():
    empty = {"w": torch.zeros(3, dtype=torch.bool)}
    assert jaccard(empty, empty).jaccard == 1.0 and jaccard(empty, empty).tensors == {"w": 1.0}
    with pytest.raises(ValueError, match="different tensors"):
        jaccard(A, {"fc1.weight": A["fc1.weight"]})
    with pytest.raises(ValueError, match="shapes differ"):
        jaccard({"w": torch.ones(2, dtype=torch.bool)}, {"w": torch.ones(3, dtype=torch.bool)})
    only_fc1 = jaccard(A, {"fc1.weight": B["fc1.weight"]}, common_only=True)
    assert only_fc1.tensors == pytest.approx({"fc1.weight": 1 / 3}) and only_fc1.total == 4


def test_sparsity_per_tensor_and_remaining_fraction():
    assert tensor_sparsity(A) == pytest.approx({"fc1.weight": 0.5, "fc2.weight": 0.25})
    assert remaining_fraction(A) == pytest.approx(5 / 8)


def _save(path: Path, masks: dict[str, torch.Tensor], round_index: int) -> None:
    weights = {n: torch.zeros(m.shape) for n, m in masks.items()}  # a ticket file holds a weight for every mask
    Ticket(masks={n: m.clone() for n, m in masks.items()}, weights=weights, round=round_index).save(path)


DENSE = {"fc1.weight": _m([1, 1, 1, 1]), "fc2.weight": _m([1, 1], [1, 1])}
LEVEL1 = A
LEVEL2 = {"fc1.weight": _m([1, 0, 0, 0]), "fc2.weight": _m([1, 0], [0, 1])}
RANDOM1 = {"fc1.weight": _m([0, 0, 1, 1]), "fc2.weight": _m([0, 1], [1, 1])}
RANDOM2 = {"fc1.weight": _m([0, 0, 0, 1]), "fc2.weight": _m([1, 0], [0, 1])}


def _search(folder: Path, levels: list[dict], randoms: list[dict] | None = None, flat: bool = False) -> Path:
    """A lottery folder as a search writes it: round_00/ticket, round_XX/{ticket,random}/."""
    lottery = folder / "lottery"
    for r, masks in enumerate(levels):
        _save(lottery / f"round_{r:02d}" / ("" if flat else "ticket") / "ticket.safetensors", masks, r)
    for r, masks in enumerate(randoms or [], start=1):
        _save(lottery / f"round_{r:02d}" / "random" / "ticket.safetensors", masks, r)
    return folder


def test_find_tickets_reads_the_branch_layout_and_the_flat_one(tmp_path: Path):
    run = _search(tmp_path / "run", [DENSE, LEVEL1, LEVEL2], [RANDOM1, RANDOM2])
    found = find_tickets(run)
    assert list(found) == [0, 1, 2]
    assert list(found[0]) == ["ticket"] and list(found[2]) == ["ticket", "random"]
    assert found[1]["random"] == run / "lottery" / "round_01" / "random" / "ticket.safetensors"
    assert find_tickets(run / "lottery") == found  # the lottery folder itself works too
    flat = _search(tmp_path / "flat", [DENSE, LEVEL1], flat=True)
    assert {r: list(b) for r, b in find_tickets(flat).items()} == {0: ["ticket"], 1: ["ticket"]}
    with pytest.raises(FileNotFoundError, match="No tickets"):
        find_tickets(tmp_path / "nothing")


def test_consecutive_levels_by_hand(tmp_path: Path):
    run = _search(tmp_path / "run", [DENSE, LEVEL1, LEVEL2], [RANDOM1, RANDOM2])
    levels = level_overlaps(run)
    assert [(c.kind, c.round) for c in levels] == [("levels", 1), ("levels", 2)]
    # Nested masks: J = |later| / |earlier|: 5/8, then LEVEL2 (3 kept) inside LEVEL1 (5 kept): 3/5.
    assert [c.overlap.jaccard for c in levels] == pytest.approx([5 / 8, 3 / 5])
    assert levels[1].overlap.tensors == pytest.approx({"fc1.weight": 1 / 2, "fc2.weight": 2 / 3})
    assert (levels[1].remaining_pct_a, levels[1].remaining_pct_b) == pytest.approx((62.5, 37.5))
    # The random branch's levels are not nested: RANDOM1 {2,3 | 1,2,3} vs RANDOM2 {3 | 0,3}.
    random_levels = level_overlaps(run, branch="random")
    assert [c.round for c in random_levels] == [2]
    assert random_levels[0].overlap.jaccard == pytest.approx((1 + 1) / (2 + 4))


def test_branches_of_a_level_by_hand(tmp_path: Path):
    run = _search(tmp_path / "run", [DENSE, LEVEL1, LEVEL2], [RANDOM1, RANDOM2])
    comparisons = branch_overlaps(run)
    assert [(c.round, c.a, c.b) for c in comparisons] == [(1, "ticket", "random"), (2, "ticket", "random")]
    # Level 1: fc1 {0,1} vs {2,3}: 0 of 4; fc2 {0,2,3} vs {1,2,3}: 2 of 4. Level 2: equal fc2, fc1 {0} vs {3}.
    assert [c.overlap.jaccard for c in comparisons] == pytest.approx([2 / 8, 2 / 4])


def test_seeds_at_the_same_level_every_pair(tmp_path: Path):
    other = {"fc1.weight": _m([1, 1, 0, 0]), "fc2.weight": _m([1, 1], [1, 0])}
    runs = [
        _search(tmp_path / "s0", [DENSE, A, LEVEL2]),
        _search(tmp_path / "s1", [DENSE, B]),
        _search(tmp_path / "s2", [DENSE, other]),
    ]
    comparisons = seed_overlaps(runs, labels=["seed 0", "seed 1", "seed 2"])
    # Levels all three reached: 0 and 1 (s1 and s2 stop at 1); three pairs each.
    assert [(c.round, c.a, c.b) for c in comparisons][3:] == [
        (1, "seed 0", "seed 1"),
        (1, "seed 0", "seed 2"),
        (1, "seed 1", "seed 2"),
    ]
    assert all(c.overlap.jaccard == 1.0 for c in comparisons[:3])  # dense tickets agree
    # A vs other: fc1 equal (2 of 2), fc2 {0,2,3} vs {0,1,2}: 2 of 4 -> 4/6. B vs other: fc1 1/3, fc2 {0,3} vs
    # {0,1,2}: 1 of 4 -> 2/7.
    assert [c.overlap.jaccard for c in comparisons[3:]] == pytest.approx([3 / 6, 4 / 6, 2 / 7])


def test_two_runs_matched_by_round_or_by_sparsity(tmp_path: Path):
    iterative = _search(tmp_path / "iterative", [DENSE, LEVEL1, LEVEL2])
    # A one-shot run: its only level has LEVEL2's sparsity (3 of 8 kept), and a transfer-like ticket without fc2.
    one_shot = _search(tmp_path / "oneshot", [DENSE, RANDOM2])
    by_round = run_overlaps(iterative, one_shot)
    assert [c.round for c in by_round] == [0, 1]
    assert by_round[1].overlap.jaccard == pytest.approx(jaccard(LEVEL1, RANDOM2).jaccard)
    by_sparsity = run_overlaps(one_shot, iterative, match="sparsity")
    assert [c.round for c in by_sparsity] == [0, 2]  # one-shot level 1 (37.5% kept) meets iterative level 2
    assert by_sparsity[1].a.endswith("round 1 ticket") and by_sparsity[1].b.endswith("round 2 ticket")
    assert by_sparsity[1].overlap.jaccard == pytest.approx(jaccard(RANDOM2, LEVEL2).jaccard)
    headless = _search(tmp_path / "transferred", [{"fc1.weight": DENSE["fc1.weight"]}, {"fc1.weight": A["fc1.weight"]}])
    common = run_overlaps(headless, iterative)
    assert [set(c.overlap.tensors) for c in common] == [{"fc1.weight"}, {"fc1.weight"}]
    assert common[1].overlap.jaccard == 1.0
    with pytest.raises(ValueError, match="match"):
        run_overlaps(iterative, one_shot, match="closest")


def test_layer_sparsity_by_level(tmp_path: Path):
    run = _search(tmp_path / "run", [DENSE, LEVEL1, LEVEL2], [RANDOM1, RANDOM2])
    assert layer_sparsity(run) == {
        0: {"fc1.weight": 0.0, "fc2.weight": 0.0},
        1: {"fc1.weight": 0.5, "fc2.weight": 0.25},
        2: {"fc1.weight": 0.75, "fc2.weight": 0.5},
    }
    assert layer_sparsity(run, "random")[1] == {"fc1.weight": 0.5, "fc2.weight": 0.25}
