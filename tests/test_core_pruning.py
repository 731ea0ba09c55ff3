"""Pruning criteria and schedules, without Lightning: exact counts, monotone masks, overrides, controls."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_lottery.core import (
    SparsitySchedule,
    counts,
    cumulative_sparsity,
    magnitude_masks,
    pruned_count,
    random_masks,
)

shapes = st.lists(
    st.tuples(st.integers(1, 12), st.integers(1, 12)),
    min_size=1,
    max_size=4,
)


def _weights(shape_list: list[tuple[int, int]], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"layer{i}.weight": torch.randn(*s, generator=g) for i, s in enumerate(shape_list)}


def _run(schedule: SparsitySchedule, weights: dict[str, torch.Tensor], rounds: int, pruning: str = "magnitude"):
    """Prune for ``rounds`` rounds (weights fixed; only masks evolve) and return the masks after each."""
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    sizes = {n: w.numel() for n, w in weights.items()}
    out = []
    for r in range(1, rounds + 1):
        new = magnitude_masks(weights, masks, schedule.groups(sizes, r))
        if pruning == "random":
            new = random_masks(masks, counts(new), torch.Generator().manual_seed(r))
        out.append(new)
        masks = new
    return out


@settings(max_examples=60, deadline=None)
@given(shape_list=shapes, amount=st.floats(0.01, 0.95), rounds=st.integers(1, 5), seed=st.integers(0, 99))
def test_layer_scope_prunes_each_tensor_exactly(shape_list, amount, rounds, seed):
    weights = _weights(shape_list, seed)
    schedule = SparsitySchedule.build(amount, rounds, "layer")
    history = _run(schedule, weights, rounds)
    previous = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    for r, masks in enumerate(history, start=1):
        for name, mask in masks.items():
            n = weights[name].numel()
            assert n - int(mask.sum()) == pruned_count(n, 1 - (1 - amount) ** r)
            assert not (mask & ~previous[name]).any(), "a pruned weight came back"
        previous = masks


@settings(max_examples=60, deadline=None)
@given(shape_list=shapes, amount=st.floats(0.01, 0.95), rounds=st.integers(1, 5), seed=st.integers(0, 99))
def test_global_scope_hits_total_and_keeps_the_largest(shape_list, amount, rounds, seed):
    weights = _weights(shape_list, seed)
    total = sum(w.numel() for w in weights.values())
    history = _run(SparsitySchedule.build(amount, rounds, "global"), weights, rounds)
    for r, masks in enumerate(history, start=1):
        remaining = sum(counts(masks).values())
        assert total - remaining == pruned_count(total, 1 - (1 - amount) ** r)
        kept = torch.cat([weights[n].abs()[m] for n, m in masks.items()])
        dropped = torch.cat([weights[n].abs()[~m] for n, m in masks.items()])
        if kept.numel() and dropped.numel():
            assert kept.min() >= dropped.max(), "a pruned weight is larger than a kept one"


@settings(max_examples=40, deadline=None)
@given(
    shape_list=shapes.filter(lambda s: len(s) >= 2),
    rounds=st.integers(1, 4),
    rate=st.floats(0.0, 0.9),
    scope=st.sampled_from(["global", "layer"]),
    seed=st.integers(0, 99),
)
def test_layer_amounts_override_their_tensor(shape_list, rounds, rate, scope, seed):
    weights = _weights(shape_list, seed)
    last = f"layer{len(shape_list) - 1}.weight"
    schedule = SparsitySchedule.build(0.3, rounds, scope, {last: rate})
    history = _run(schedule, weights, rounds)
    n = weights[last].numel()
    for r, masks in enumerate(history, start=1):
        assert n - int(masks[last].sum()) == pruned_count(n, 1 - (1 - rate) ** r)
    if rate == 0.0:
        assert all(bool(m[last].all()) for m in history), "rate 0 must leave the tensor dense"


@settings(max_examples=40, deadline=None)
@given(
    shape_list=shapes,
    scope=st.sampled_from(["global", "layer"]),
    data=st.data(),
    seed=st.integers(0, 99),
)
def test_cumulative_schedules_are_exact(shape_list, scope, data, seed):
    targets = sorted(set(data.draw(st.lists(st.floats(0.01, 0.99), min_size=1, max_size=5))))
    weights = _weights(shape_list, seed)
    history = _run(SparsitySchedule.build(targets, len(targets), scope), weights, len(targets))
    total = sum(w.numel() for w in weights.values())
    for target, masks in zip(targets, history):
        pruned = total - sum(counts(masks).values())
        if scope == "global":
            assert pruned == pruned_count(total, target)
        else:
            assert pruned == sum(pruned_count(w.numel(), target) for w in weights.values())
            for mask in masks.values():  # exact to one weight per tensor
                assert abs((1 - mask.float().mean().item()) - target) <= 1 / mask.numel() + 1e-9


@settings(max_examples=40, deadline=None)
@given(
    shape_list=shapes,
    scope=st.sampled_from(["global", "layer"]),
    rounds=st.integers(1, 4),
    seed=st.integers(0, 99),
)
def test_random_pruning_keeps_magnitude_counts(shape_list, scope, rounds, seed):
    weights = _weights(shape_list, seed)
    schedule = SparsitySchedule.build(0.35, rounds, scope)
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    sizes = {n: w.numel() for n, w in weights.items()}
    for r in range(1, rounds + 1):
        magnitude = magnitude_masks(weights, masks, schedule.groups(sizes, r))
        first = random_masks(masks, counts(magnitude), torch.Generator().manual_seed(seed))
        again = random_masks(masks, counts(magnitude), torch.Generator().manual_seed(seed))
        assert counts(first) == counts(magnitude)
        assert all(torch.equal(first[n], again[n]) for n in first), "same seed, different mask"
        assert all(not (first[n] & ~masks[n]).any() for n in first), "random pruning revived a weight"
        masks = first


def test_random_pruning_differs_from_magnitude_and_across_seeds():
    weights = _weights([(40, 40)], 0)
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    magnitude = magnitude_masks(
        weights, masks, SparsitySchedule.build(0.5, 1, "layer").groups({"layer0.weight": 1600}, 1)
    )
    a = random_masks(masks, counts(magnitude), torch.Generator().manual_seed(0))
    b = random_masks(masks, counts(magnitude), torch.Generator().manual_seed(1))
    assert not torch.equal(a["layer0.weight"], magnitude["layer0.weight"])
    assert not torch.equal(a["layer0.weight"], b["layer0.weight"])


def test_ties_are_broken_exactly():
    weights = {"w": torch.ones(10), "v": torch.ones(10)}
    masks = {n: torch.ones(10, dtype=torch.bool) for n in weights}
    out = magnitude_masks(weights, masks, SparsitySchedule.build(0.25, 1, "global").groups({"w": 10, "v": 10}, 1))
    assert sum(counts(out).values()) == 15


def test_paper_schedule_values():
    assert cumulative_sparsity(0.2, 0) == 0.0
    assert cumulative_sparsity(0.2, 3) == pytest.approx(0.488)
    assert cumulative_sparsity((0.2, 0.52, 0.8), 2) == 0.52
    assert pruned_count(1000, 0.488) == 488


@pytest.mark.parametrize("case", ["gaussian", "ties", "scales", "quantized"])
def test_global_selection_on_large_tensors_matches_a_full_sort(case):
    """Past 2^20 weights the threshold is bracketed from a sample: the result must still be exact."""
    g = torch.Generator().manual_seed(1)
    sizes = [(700, 900), (512, 1024), (1, 77)]
    weights = {f"t{i}": torch.randn(*s, generator=g) for i, s in enumerate(sizes)}
    if case == "ties":
        weights["t0"][:, :300] = 0.25  # a block of equal magnitudes right at the threshold region
    elif case == "scales":
        weights["t0"] *= 1e-3  # one tensor far below the others (the sample barely sees its values)
        weights["t1"][::2] = 0.0
    elif case == "quantized":
        weights = {n: (w * 4).round() / 4 for n, w in weights.items()}  # few distinct values: massive ties
    masks = {n: torch.rand(w.shape, generator=g) > 0.1 for n, w in weights.items()}
    total_alive = sum(int(m.sum()) for m in masks.values())
    keep = int(total_alive * 0.37)
    from lightning_lottery.core import PruneGroup

    out = magnitude_masks(weights, masks, [PruneGroup(tuple(weights), keep)])
    assert sum(counts(out).values()) == keep
    assert all(not (out[n] & ~masks[n]).any() for n in out)
    kept = torch.cat([weights[n].abs()[out[n]] for n in out])
    dropped = torch.cat([weights[n].abs()[masks[n] & ~out[n]] for n in out])
    reference = torch.cat([weights[n].abs()[masks[n]] for n in out]).sort(descending=True).values[keep - 1]
    assert kept.min() == reference and dropped.max() <= reference


def test_float64_weights_that_float32_cannot_tell_apart_keep_exact_counts():
    from lightning_lottery.core import PruneGroup

    # 1 - 1e-12, 1 and 1 + 2e-12 are one float32 number: the threshold must be found at the weights' precision.
    weights = {"a": torch.tensor([1.0, 1.0 - 1e-12, 1.0 + 2e-12, 0.5], dtype=torch.float64)}
    masks = {"a": torch.ones(4, dtype=torch.bool)}
    for keep, expected in [(1, [False, False, True, False]), (2, [True, False, True, False])]:
        kept = magnitude_masks(weights, masks, [PruneGroup(("a",), keep)])["a"]
        assert kept.tolist() == expected
