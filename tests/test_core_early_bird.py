"""Early-bird tickets: the normalised Hamming distance by hand, the convergence rule, and resumable state."""

from __future__ import annotations

import io

import pytest
import torch

from lightning_lottery.core.early_bird import EarlyBirdTracker, mask_distance


def _masks(a: list[int], b: list[list[int]]) -> dict[str, torch.Tensor]:
    return {"fc1.weight": torch.tensor(a, dtype=torch.bool), "fc2.weight": torch.tensor(b, dtype=torch.bool)}


def test_distance_is_the_fraction_of_positions_that_differ_pooled_over_tensors():
    first = _masks([1, 1, 0, 0], [[1, 0], [0, 1]])
    second = _masks([1, 0, 1, 0], [[1, 0], [0, 1]])  # 2 of the 8 positions differ
    assert mask_distance(first, second) == pytest.approx(2 / 8)
    assert mask_distance(first, first) == 0.0
    complement = {n: ~m for n, m in first.items()}
    assert mask_distance(first, complement) == 1.0
    # Float masks (as installed buffers) count the same as bool ones.
    assert mask_distance({n: m.float() for n, m in first.items()}, second) == pytest.approx(0.25)


def test_distance_refuses_masks_of_different_models():
    with pytest.raises(ValueError, match="different tensors"):
        mask_distance({"a": torch.ones(2, dtype=torch.bool)}, {"b": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="shapes differ"):
        mask_distance({"a": torch.ones(2, dtype=torch.bool)}, {"a": torch.ones(3, dtype=torch.bool)})


def _stream(n: int, flips: list[int], size: int = 100) -> list[dict[str, torch.Tensor]]:
    """n prospective masks of ``size`` positions; mask i differs from mask i-1 in ``flips[i-1]`` positions."""
    mask = torch.zeros(size, dtype=torch.bool)
    mask[: size // 2] = True
    out = [{"w": mask.clone()}]
    for i in range(1, n):
        mask[: flips[i - 1]] = ~mask[: flips[i - 1]]
        out.append({"w": mask.clone()})
    return out


def test_converges_when_the_last_patience_distances_are_all_below_the_threshold():
    tracker = EarlyBirdTracker()  # the paper's 5 and 0.1
    assert (tracker.patience, tracker.threshold) == (5, 0.1)
    flips = [30, 20, 5, 5, 5, 12, 5, 5, 5, 5, 5, 9]  # distances 0.30 0.20 0.05 x3 0.12 0.05 x5 0.09
    states = []
    for masks in _stream(len(flips) + 1, flips):
        tracker.update(masks)
        states.append(tracker.converged)
    assert tracker.distances == pytest.approx([f / 100 for f in flips])
    # The first mask has no distance; 0.12 breaks the first run of small ones; converged after the 5th small one
    # in a row (mask 11) and still so when 0.09 < 0.1 follows.
    assert states == [False] * 11 + [True, True]
    assert tracker.updates == 13


def test_a_distance_equal_to_the_threshold_is_not_below_it():
    tracker = EarlyBirdTracker(patience=1, threshold=0.1)
    for masks in _stream(2, [10]):
        tracker.update(masks)
    assert tracker.distances == [0.1] and not tracker.converged


def test_reset_starts_a_new_level():
    tracker = EarlyBirdTracker(patience=1, threshold=0.5)
    for masks in _stream(2, [1]):
        tracker.update(masks)
    assert tracker.converged
    tracker.reset()
    assert not tracker.converged and tracker.updates == 0
    assert tracker.update(_stream(1, [])[0]) is None  # the first mask of a level has nothing to compare with


def test_state_dict_round_trips_through_weights_only_load_and_resumes_identically():
    flips = [30, 4, 3, 2, 8, 1, 1]
    stream = _stream(len(flips) + 1, flips)
    straight = EarlyBirdTracker(patience=3, threshold=0.05)
    for masks in stream:
        straight.update(masks)

    first = EarlyBirdTracker(patience=3, threshold=0.05)
    for masks in stream[:4]:
        first.update(masks)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = EarlyBirdTracker(patience=3, threshold=0.05)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.distances == first.distances and resumed.updates == 4
    for masks in stream[4:]:
        resumed.update(masks)
    assert resumed.distances == straight.distances
    assert resumed.converged == straight.converged


def test_empty_state_round_trips():
    tracker = EarlyBirdTracker()
    buffer = io.BytesIO()
    torch.save(tracker.state_dict(), buffer)
    buffer.seek(0)
    other = EarlyBirdTracker()
    other.load_state_dict(torch.load(buffer, weights_only=True))
    assert other.updates == 0 and other.distances == []
    with pytest.raises(KeyError, match="previous"):
        other.load_state_dict({"distances": torch.zeros(0)})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"patience": 0}, "patience"), ({"patience": 2.5}, "patience"), ({"threshold": 0}, "threshold")],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EarlyBirdTracker(**kwargs)
