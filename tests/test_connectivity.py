"""Linear mode connectivity in plain torch: interpolation, BatchNorm re-estimation, barriers, stable points."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_lottery.core import install_masks, select_prunable
from lightning_lottery.core.connectivity import (
    PathResult,
    PointMetrics,
    barrier,
    classification_evaluator,
    confidence_interval,
    earliest_stable,
    evenly_spaced,
    grid_steps,
    installed_masks,
    interpolate,
    linear_path,
    recompute_batchnorm,
    stability_bound,
    t_quantile_975,
)
from lightning_lottery.core.snapshot import dense_state


def _blobs(n: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Four Gaussian blobs at the corners of a square: needs a hidden layer to separate (XOR-like labels)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[2.0, 2.0], [-2.0, -2.0], [2.0, -2.0], [-2.0, 2.0]])
    which = torch.randint(0, 4, (n,), generator=g)
    x = centres[which] + 0.5 * torch.randn(n, 2, generator=g)
    return x, (which >= 2).long()


def _mlp(hidden: int = 32, seed: int = 0, batchnorm: bool = False) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(2, hidden)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(hidden))
    return nn.Sequential(*layers, nn.ReLU(), nn.Linear(hidden, 2))


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 150, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def _permuted(model: nn.Sequential, seed: int = 1) -> dict[str, torch.Tensor]:
    """The same function with its hidden units in another order (every per-unit tensor permuted alike)."""
    perm = torch.randperm(model[0].out_features, generator=torch.Generator().manual_seed(seed))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    last = len(model) - 1
    for name, value in state.items():
        if name.startswith(f"{last}.") and name.endswith("weight"):
            state[name] = value[:, perm]  # output layer: permute its inputs
        elif not name.startswith(f"{last}.") and value.dim() >= 1:
            state[name] = value[perm]  # hidden layer and its BatchNorm: permute the units
    return state


# ---------------------------------------------------------------------------------------------- interpolation


def test_interpolation_is_exact_at_the_ends_and_linear_between():
    a = {"w": torch.randn(5, 3), "steps": torch.tensor(7)}
    b = {"w": torch.randn(5, 3), "steps": torch.tensor(9)}
    assert torch.equal(interpolate(a, b, 0.0)["w"], a["w"])
    assert torch.equal(interpolate(a, b, 1.0)["w"], b["w"])
    assert torch.allclose(interpolate(a, b, 0.25)["w"], 0.75 * a["w"] + 0.25 * b["w"], atol=1e-6)
    assert interpolate(a, b, 0.5)["steps"].item() == 7  # integer buffers come from the first state


def test_interpolation_refuses_mismatched_states_naming_every_problem():
    a = {"w": torch.zeros(2, 2), "only_a": torch.zeros(1)}
    b = {"w": torch.zeros(3, 2), "only_b": torch.zeros(1)}
    with pytest.raises(KeyError) as err:
        interpolate(a, b, 0.5)
    for word in ("only_a", "only_b", "(2, 2) vs (3, 2)"):
        assert word in str(err.value)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        interpolate(a, a, 1.5)


def test_evenly_spaced_points_include_both_ends():
    assert evenly_spaced(5) == [0.0, 0.25, 0.5, 0.75, 1.0]
    with pytest.raises(ValueError, match="points must be an int >= 2"):
        evenly_spaced(1)


def test_barrier_is_the_peak_above_the_endpoints_mean():
    assert barrier([0.1, 0.5, 0.3]) == pytest.approx(0.5 - 0.2)
    assert barrier([0.1, 0.05, 0.3]) == pytest.approx(0.3 - 0.2)  # a path below both ends: max is an endpoint
    assert barrier([0.2, 0.2]) == 0.0


# ---------------------------------------------------------------------------------------------- barriers


def test_barrier_between_a_network_and_itself_is_zero():
    x, y = _blobs()
    model = _train(_mlp(), x, y)
    state = dense_state(model)
    path = linear_path(model, state, state, classification_evaluator([(x, y)]), points=7)
    assert path.error_barrier == 0.0 and path.loss_barrier == 0.0
    assert len(set(path.errors)) == 1
    assert path.errors[0] < 0.05  # a trained network, not a trivially constant one
    assert torch.equal(dense_state(model)["0.weight"], state["0.weight"])  # the model's own weights are back


def test_convex_problem_trained_to_its_optimum_has_no_barrier():
    """L2-regularised logistic regression is strictly convex: two runs from different inits with different
    minibatch orders reach the same optimum, and the path between them is flat."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=g)
    y = (x @ torch.randn(5, 3, generator=g) + 0.5 * torch.randn(300, 3, generator=g)).argmax(1)
    ends = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = nn.Linear(5, 3)
        nn.init.normal_(model.weight, std=3.0)  # far-apart starts
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        order = torch.Generator().manual_seed(seed)
        for step in range(600):
            idx = torch.randint(0, 300, (32,), generator=order) if step < 300 else torch.arange(300)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx]) + 0.05 * model.weight.square().sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        ends.append(dense_state(model))
    assert (ends[0]["weight"] - ends[1]["weight"]).abs().max() < 1e-3  # the unique optimum, twice
    path = linear_path(nn.Linear(5, 3), ends[0], ends[1], classification_evaluator([(x, y)]), points=11)
    assert path.error_barrier == pytest.approx(0.0, abs=1e-9)
    assert path.loss_barrier < 1e-5
    assert 0.05 < path.errors[0] < 0.6  # a real classification problem, not a trivial one


def test_permuted_copies_of_one_network_have_a_barrier_between_them():
    """Non-convex: hidden-unit permutations are the same function, but the average of two of them is not."""
    x, y = _blobs()
    model = _train(_mlp(), x, y)
    a, b = dense_state(model), _permuted(model)
    path = linear_path(model, a, b, classification_evaluator([(x, y)]), points=11)
    assert path.errors[0] == path.errors[-1] < 0.05  # functionally identical endpoints
    assert path.losses[0] == pytest.approx(path.losses[-1], rel=1e-5)
    assert path.error_barrier > 0.1
    assert path.loss_barrier > 0.1
    assert max(range(11), key=lambda i: path.errors[i]) not in (0, 10)  # the peak is inside the path


# ---------------------------------------------------------------------------------------------- BatchNorm


def _activation_stats(model: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        h = model[0](x)
    return h.mean(0), h.var(0, unbiased=True)


def test_batchnorm_statistics_are_recomputed_at_every_point():
    """At α = 0.5 between permuted copies the interpolated running statistics belong to no network; the path's
    statistics must be those of the interpolated network's own pre-BatchNorm activations."""
    x, y = _blobs()
    x = x + 3.0  # a large input mean: wrong statistics are far off
    model = _train(_mlp(batchnorm=True), x, y)
    a, b = dense_state(model), _permuted(model)
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def record(m: nn.Module) -> PointMetrics:
        mean, var = _activation_stats(m, x)
        seen.append((m[1].running_mean.clone(), m[1].running_var.clone(), mean, var))
        return PointMetrics(0.0, 0.0)

    batches = list(zip(x.split(100), y.split(100)))
    linear_path(model, a, b, record, points=3, bn_batches=batches)
    for running_mean, running_var, mean, var in seen:
        assert torch.allclose(running_mean, mean, atol=1e-4)
        assert torch.allclose(running_var, var, rtol=0.05, atol=1e-3)  # mean of per-batch variances

    seen.clear()
    linear_path(model, a, b, record, points=3, recompute_bn=False)
    running_mean, _, mean, _ = seen[1]  # the midpoint: interpolated statistics are wrong
    assert not torch.allclose(running_mean, mean, atol=1e-2)


def test_batchnorm_models_need_training_batches_for_the_path():
    model = _mlp(batchnorm=True)
    state = dense_state(model)
    evaluate = classification_evaluator([_blobs(50)])
    with pytest.raises(ValueError, match="pass bn_batches"):
        linear_path(model, state, state, evaluate)
    with pytest.raises(TypeError, match="re-iterable"):
        linear_path(model, state, state, evaluate, bn_batches=iter([_blobs(50)]))


def test_recompute_batchnorm_restores_modes_and_momentum_and_keeps_dropout_off():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.9), nn.BatchNorm1d(8, momentum=0.3))
    model.train()
    x = torch.randn(200, 4)
    used = recompute_batchnorm(model, [(x[:100],), (x[100:],)], num_batches=1)
    assert used == 1
    assert model[2].momentum == 0.3 and model.training and model[1].training
    with torch.no_grad():
        h = model[0](x[:100])  # no dropout: the statistics of the evaluated (eval-mode) network
    assert torch.allclose(model[2].running_mean, h.mean(0), atol=1e-5)
    assert model[2].num_batches_tracked.item() == 1
    assert recompute_batchnorm(nn.Linear(2, 2), []) == 0  # nothing to do, no data read
    with pytest.raises(ValueError, match="no batches"):
        recompute_batchnorm(model, [])


# ---------------------------------------------------------------------------------------------- masks


def test_masked_weights_are_zero_at_every_point_of_the_path():
    x, y = _blobs()
    model = _train(_mlp(), x, y)
    a = dense_state(model)
    b = {k: v + torch.randn_like(v) for k, v in a.items()}  # nonzero everywhere, masked positions included
    tensors = select_prunable(model)
    masks = {n: torch.rand(t.tensor.shape) > 0.5 for n, t in tensors.items()}
    install_masks(tensors, masks)
    assert set(installed_masks(model)) == set(masks)
    for alpha in (0.0, 0.3, 1.0):
        mixed = interpolate(a, b, alpha, masks)
        assert all((mixed[n][~m] == 0).all() for n, m in masks.items())

    def check(m: nn.Module) -> PointMetrics:
        for layer, name in ((m[0], "0.weight"), (m[2], "2.weight")):
            assert (layer.weight_orig[~masks[name]] == 0).all()
            assert (layer.weight[~masks[name]] == 0).all()
            assert (layer.weight_orig[masks[name]] != 0).any()
        return classification_evaluator([(x, y)])(m)

    path = linear_path(model, a, b, check, points=5)
    assert len(path.errors) == 5


# ---------------------------------------------------------------------------------------------- decisions


def test_earliest_stable_point_on_a_constructed_grid():
    points = [0, 100, 500, 2000]
    assert earliest_stable(points, [0.30, 0.15, 0.01, 0.005]) == 500
    assert earliest_stable(points, [0.30, 0.15, 0.01, 0.005], threshold=0.2) == 100
    assert earliest_stable(points, [0.30, 0.01, 0.2, 0.01]) == 100
    assert earliest_stable(points, [0.30, 0.01, 0.2, 0.01], persistent=True) == 2000
    assert earliest_stable(points, [0.30, 0.25, 0.2, 0.1]) is None
    assert earliest_stable(points, [0.02, 0.02, 0.02, 0.019]) == 2000  # strictly below the threshold


def test_earliest_stable_over_seeds_uses_the_confidence_bound():
    # At 100 the mean (0.01) is below 2% but three seeds cannot rule out 2%; at 500 they can.
    barriers = [[0.3, 0.28, 0.33], [0.0, 0.0, 0.03], [0.004, 0.006, 0.005], [0.0, 0.001, 0.0]]
    assert earliest_stable([0, 100, 500, 2000], barriers) == 500
    assert stability_bound([0.0, 0.0, 0.03]) > 0.02 > stability_bound(0.01)


def test_grid_steps_are_fractions_of_the_budget():
    assert grid_steps(30000) == [0, 30, 150, 300, 600, 1500, 3000]
    assert grid_steps(100, [0.0, 0.001, 0.004, 0.5]) == [0, 50]  # rounded, duplicates merged
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        grid_steps(100, [0.0, 1.0])
    with pytest.raises(ValueError, match="total_steps"):
        grid_steps(0)


def test_earliest_stable_refuses_bad_grids():
    with pytest.raises(ValueError, match="strictly increasing"):
        earliest_stable([0, 500, 100], [0.1, 0.1, 0.1])
    with pytest.raises(ValueError, match="3 points but 2 barriers"):
        earliest_stable([0, 1, 2], [0.1, 0.1])
    with pytest.raises(ValueError, match="threshold"):
        earliest_stable([0], [0.1], threshold=0)


def test_confidence_interval_matches_student_t():
    interval = confidence_interval([1.0, 2.0, 3.0])
    assert interval.mean == 2.0 and interval.n == 3
    assert interval.hi - interval.mean == pytest.approx(4.303 * 1.0 / math.sqrt(3), rel=1e-4)
    assert confidence_interval([0.5]) == (0.5, 0.5, 0.5, 1)
    stats = pytest.importorskip("scipy.stats", reason="scipy checks the quantile formula beyond the table")
    for df in (1, 2, 5, 29, 30, 31, 45, 120, 1000):
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-3)


def test_path_result_round_trips_through_a_dict():
    path = PathResult((0.0, 0.5, 1.0), (0.1, 0.4, 0.2), (0.3, 0.9, 0.5))
    data = path.to_dict()
    assert data["error_barrier"] == pytest.approx(0.25) and data["endpoint_errors"] == [0.1, 0.2]
    assert PathResult.from_dict(data) == path
