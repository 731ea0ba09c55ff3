"""N:M structured masks, without Lightning: exact N per group on every level, layout, ties, controls, refusals."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lightning_lottery.core import (
    NMStructure,
    SparsitySchedule,
    check_structure,
    nm_masks,
    random_nm_masks,
    select_prunable,
    structured_next_masks,
)
from lightning_lottery.core.structure import kept_per_group, parse_structure, satisfies

TWO_FOUR = NMStructure(2, 4)


def _ones(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}


def _groups_by_loop(tensor: torch.Tensor, m: int) -> list[torch.Tensor]:
    """Every group of ``m`` consecutive entries along dim 1, enumerated by explicit indexing (the reference layout)."""
    out = []
    rest = [range(s) for s in tensor.shape[2:]]
    for o in range(tensor.shape[0]):
        for g in range(tensor.shape[1] // m):
            for pos in itertools.product(*rest):
                out.append(tensor[(o, slice(g * m, (g + 1) * m), *pos)])
    return out


@pytest.mark.parametrize("spec", ["2:4", " 1 : 8 ", NMStructure(4, 8)])
def test_parse_accepts_n_of_m(spec):
    parsed = NMStructure.parse(spec)
    assert 0 < parsed.n < parsed.m and str(parsed) == f"{parsed.n}:{parsed.m}"


@pytest.mark.parametrize("spec", ["2-4", "4:4", "0:4", "5:4", "2:4:8", "a:b", 2, 0.5])
def test_parse_refuses_what_is_not_n_of_m(spec):
    with pytest.raises(ValueError, match=r"is not 'N:M' with integers 0 < N < M, e\.g\. '2:4'"):
        NMStructure.parse(spec)


def test_an_unquoted_yaml_2_4_gets_a_quoting_hint():
    from omegaconf import OmegaConf

    value = OmegaConf.create("structure: 2:4").structure  # YAML 1.1 reads it as 2 * 60 + 4
    with pytest.raises(ValueError, match=r"`structure=124` is not 'N:M'.*quote it: structure: '2:4'"):
        NMStructure.parse(value)
    assert NMStructure.parse(OmegaConf.create("structure: '2:4'").structure) == TWO_FOUR


def test_parse_structure_none_is_unstructured():
    assert parse_structure(None) is None
    assert parse_structure("2:4") == TWO_FOUR


@settings(max_examples=40, deadline=None)
@given(
    out=st.integers(1, 6),
    groups=st.integers(1, 5),
    nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4), (2, 8), (4, 8)]),
    kernel=st.sampled_from([(), (1,), (3, 2)]),
    seed=st.integers(0, 2**16),
)
def test_every_group_keeps_exactly_n_of_its_largest(out, groups, nm, kernel, seed):
    structure = NMStructure(*nm)
    shape = (out, groups * structure.m, *kernel)
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    mask = nm_masks({"w": weight}, {"w": torch.ones(shape, dtype=torch.bool)}, structure)["w"]
    assert mask.shape == weight.shape and mask.dtype == torch.bool
    for w, m in zip(_groups_by_loop(weight, structure.m), _groups_by_loop(mask, structure.m)):
        assert int(m.sum()) == structure.n
        if structure.n < structure.m:
            assert float(w.abs()[m].min()) >= float(w.abs()[~m].max())


def test_conv_groups_run_along_input_channels_at_each_kernel_position():
    # out=1, in=4, 1x2 kernel: every channel is larger at kernel position 0 than at position 1.
    weight = torch.tensor([[[[9.0, 1.0]], [[8.0, 2.0]], [[7.0, 3.0]], [[6.0, 4.0]]]])
    mask = nm_masks({"conv": weight}, {"conv": torch.ones_like(weight, dtype=torch.bool)}, TWO_FOUR)["conv"]
    assert mask[0, :, 0, 0].tolist() == [True, True, False, False]
    assert mask[0, :, 0, 1].tolist() == [False, False, True, True]
    # Groups of the flattened in*kh*kw row (9, 1, 8, 2 | 7, 3, 6, 4) would keep nothing at position 1.
    assert kept_per_group(mask, 4).tolist() == [2, 2]


def test_linear_groups_are_consecutive_input_features():
    weight = torch.tensor([[1.0, 5.0, 2.0, 4.0, 0.0, 0.0, 3.0, 3.0]])
    mask = nm_masks({"fc": weight}, {"fc": torch.ones_like(weight, dtype=torch.bool)}, TWO_FOUR)["fc"]
    assert mask.tolist() == [[False, True, False, True, False, False, True, True]]


def test_ties_keep_the_earliest_positions_deterministically():
    weight = torch.ones(3, 8)
    weight[:, 5] = -1.0  # same magnitude, other sign: still a tie
    masks = [nm_masks({"w": weight}, _ones({"w": weight}), TWO_FOUR)["w"] for _ in range(2)]
    assert torch.equal(masks[0], masks[1])
    assert masks[0][0].tolist() == [True, True, False, False, True, True, False, False]


def test_masks_only_shrink_and_too_sparse_groups_are_refused():
    weight = torch.arange(1.0, 9.0).view(1, 8)
    alive = torch.tensor([[True, True, True, False, True, True, False, True]])
    mask = nm_masks({"w": weight}, {"w": alive}, TWO_FOUR)["w"]
    assert not bool((mask & ~alive).any())
    assert mask.tolist() == [[False, True, True, False, False, True, False, True]]
    sparse = torch.tensor([[True, False, False, False, True, True, True, True]])
    with pytest.raises(ValueError, match=r"w: 1 groups of 4 keep fewer than 2 weights already"):
        nm_masks({"w": weight}, {"w": sparse}, TWO_FOUR)


def test_incompatible_tensors_are_refused_by_name_and_shape():
    shapes = {"conv1.weight": (16, 3, 5, 5), "fc.weight": (10, 64), "odd.weight": (4, 6), "bias": (8,)}
    with pytest.raises(ValueError) as err:
        check_structure(TWO_FOUR, shapes)
    text = str(err.value)
    assert "conv1.weight (16, 3, 5, 5): input dimension 3 (dim 1) is not a multiple of 4" in text
    assert "odd.weight (4, 6): input dimension 6 (dim 1) is not a multiple of 4" in text
    assert "bias (8,): a 1-D tensor has no input dimension" in text
    assert "fc.weight" not in text.split("exclude=")[0]
    assert "exclude=['bias', 'conv1.weight', 'odd.weight']" in text
    with pytest.raises(ValueError, match=r"odd.weight \(4, 6\)"):
        nm_masks({"odd.weight": torch.ones(4, 6)}, {"odd.weight": torch.ones(4, 6, dtype=torch.bool)}, TWO_FOUR)


def test_schedules_that_cannot_apply_are_refused():
    shapes = {"fc.weight": (8, 8)}
    with pytest.raises(ValueError, match=r"cumulative targets\) cannot be combined with `structure='2:4'`"):
        check_structure(TWO_FOUR, shapes, SparsitySchedule.build([0.5, 0.7], rounds=2))
    with pytest.raises(ValueError, match=r"rate 0 \(keep dense\) for \['fc\.\*'\].*exclude=\['fc\.\*'\]"):
        check_structure(TWO_FOUR, shapes, SparsitySchedule.build(0.2, rounds=2, layer_amounts={"fc.*": 0.0}))
    check_structure(TWO_FOUR, shapes, SparsitySchedule.build(0.2, rounds=2, layer_amounts={"fc.*": 0.1}))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.Linear(16, 12))


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("pruning", ["magnitude", "random"])
def test_levels_of_a_search_stay_n_of_m(scope, pruning):
    model = _model()
    tensors = select_prunable(model)
    weights = {n: t.tensor.detach() for n, t in tensors.items()}
    schedule = SparsitySchedule.build(0.5, rounds=3, scope=scope)
    check_structure(TWO_FOUR, {n: w.shape for n, w in weights.items()}, schedule)
    masks = _ones(weights)
    history = []
    for level in (1, 2, 3):
        generator = torch.Generator().manual_seed(level)
        new = structured_next_masks(weights, masks, TWO_FOUR, schedule, level, pruning, generator)
        assert all(not bool((new[n] & ~masks[n]).any()) for n in new), "masks only shrink"
        history.append(new)
        masks = new
        weights = {n: w + 0.1 * torch.randn_like(w) for n, w in weights.items()}  # training moves the weights
    for name, mask in history[0].items():
        assert bool((kept_per_group(mask, 4) == 2).all()), f"level 1: {name} is exactly 2:4"
    total = sum(m.numel() for m in history[0].values())
    for level, masks in enumerate(history, start=1):
        assert all(satisfies(m, TWO_FOUR) for m in masks.values()), f"level {level}: at most 2 of every 4"
        kept = sum(int(m.sum()) for m in masks.values())
        assert kept == pytest.approx(total / 2 * 0.5 ** (level - 1), abs=len(masks))
    if scope == "layer":
        for name, mask in history[2].items():
            assert int(mask.sum()) == pytest.approx(mask.numel() / 8, abs=1), f"{name}: a quarter of its 2:4 survivors"


def test_level_one_ignores_amount_and_scope():
    weights = {"a.weight": torch.randn(4, 8), "b.weight": torch.randn(2, 16) * 10}
    for schedule in (SparsitySchedule.build(0.9, 1), SparsitySchedule.build(0.1, 1, scope="layer")):
        masks = structured_next_masks(weights, _ones(weights), TWO_FOUR, schedule, 1)
        assert {n: int(m.sum()) for n, m in masks.items()} == {"a.weight": 16, "b.weight": 16}


def test_later_levels_refuse_masks_that_are_not_n_of_m():
    weights = {"w": torch.randn(2, 8)}
    with pytest.raises(ValueError, match=r"Level 2 prunes inside an 2:4 pattern, but \['w'\] are not 2:4"):
        structured_next_masks(weights, _ones(weights), TWO_FOUR, SparsitySchedule.build(0.2, 2), 2)
    with pytest.raises(ValueError, match="level 0 trains dense"):
        structured_next_masks(weights, _ones(weights), TWO_FOUR, SparsitySchedule.build(0.2, 2), 0)
    with pytest.raises(ValueError, match=r"seeded torch\.Generator"):
        structured_next_masks(weights, _ones(weights), TWO_FOUR, SparsitySchedule.build(0.2, 2), 1, "random")


def test_random_control_keeps_the_pattern_and_the_counts():
    weights = {"fc1.weight": torch.randn(16, 32), "conv.weight": torch.randn(8, 8, 3, 3)}
    ticket = nm_masks(weights, _ones(weights), TWO_FOUR)
    control = random_nm_masks(ticket, TWO_FOUR, torch.Generator().manual_seed(0))
    again = random_nm_masks(ticket, TWO_FOUR, torch.Generator().manual_seed(0))
    other = random_nm_masks(ticket, TWO_FOUR, torch.Generator().manual_seed(1))
    for name, mask in ticket.items():
        assert bool((kept_per_group(control[name], 4) == 2).all())
        assert torch.equal(control[name], again[name])
        assert not torch.equal(control[name], mask) and not torch.equal(control[name], other[name])
    # After further (unstructured) levels the control matches the ticket's count, still at most 2 of 4.
    later = structured_next_masks(weights, ticket, TWO_FOUR, SparsitySchedule.build(0.3, 2, scope="layer"), 2)
    control = random_nm_masks(later, TWO_FOUR, torch.Generator().manual_seed(0))
    for name, mask in later.items():
        assert int(control[name].sum()) == int(mask.sum()) < mask.numel() // 2
        assert satisfies(control[name], TWO_FOUR)


def test_random_control_refuses_a_mask_denser_than_n_of_m():
    with pytest.raises(ValueError, match=r"w: the mask keeps 8 of 8 weights, more than 2:4 allows \(4\)"):
        random_nm_masks({"w": torch.ones(2, 4, dtype=torch.bool)}, TWO_FOUR, torch.Generator().manual_seed(0))
