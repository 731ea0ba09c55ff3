"""Pruning at initialisation: SNIP, GraSP, SynFlow and magnitude scores against closed forms on a 2-layer network,
exact counts, and SynFlow never seeing data."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from lightning_lottery.core import PruneGroup, install_masks, select_prunable
from lightning_lottery.core.saliency import (
    _order_keys,
    classification_loss,
    grasp_scores,
    magnitude_scores,
    pruning_at_init_masks,
    snip_scores,
    sparsity_groups,
    synflow_masks,
    synflow_scores,
    top_score_masks,
)


class TwoLayer(nn.Module):
    """y = W2 relu(W1 x + b1) + b2: small enough for its gradients and Hessian-gradient product by hand."""

    def __init__(self, bias: bool = False, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc1 = nn.Linear(3, 4, bias=bias, dtype=torch.float64)
        self.fc2 = nn.Linear(4, 2, bias=bias, dtype=torch.float64)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _batches(count: int = 2, size: int = 5) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(size, 3, generator=g, dtype=torch.float64), torch.randn(size, 2, generator=g, dtype=torch.float64))
        for _ in range(count)
    ]


def squared_error(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    return 0.5 * ((model(x) - y) ** 2).sum() / x.shape[0]


def _closed_form_gradient(w1: Tensor, w2: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """∇L of L = ½‖W2 D W1 x − y‖² / n, D = diag(W1 x > 0): ∂/∂W2 = r uᵀ, ∂/∂W1 = D W2ᵀ r xᵀ (summed over samples)."""
    n = x.shape[0]
    pre = x @ w1.T  # n x 4
    d = (pre > 0).double()
    u = pre * d
    r = u @ w2.T - y  # n x 2
    g2 = r.T @ u / n
    g1 = ((r @ w2) * d).T @ x / n
    return g1, g2


def _closed_form_hessian_gradient(
    w1: Tensor, w2: Tensor, x: Tensor, y: Tensor, v1: Tensor, v2: Tensor
) -> tuple[Tensor, Tensor]:
    """H·v by differentiating the closed-form gradient along v (D is locally constant):
    du = D V1 x, dr = V2 u + W2 du; d(∂/∂W2) = dr uᵀ + r duᵀ; d(∂/∂W1) = D (V2ᵀ r + W2ᵀ dr) xᵀ."""
    n = x.shape[0]
    pre = x @ w1.T
    d = (pre > 0).double()
    u = pre * d
    r = u @ w2.T - y
    du = (x @ v1.T) * d
    dr = u @ v2.T + du @ w2.T
    h2 = (dr.T @ u + r.T @ du) / n
    h1 = ((r @ v2 + dr @ w2) * d).T @ x / n
    return h1, h2


def test_magnitude_scores_are_the_absolute_weights():
    model = TwoLayer()
    scores = magnitude_scores(select_prunable(model))
    assert torch.equal(scores["fc1.weight"], model.fc1.weight.detach().abs())
    assert torch.equal(scores["fc2.weight"], model.fc2.weight.detach().abs())


def test_snip_scores_match_the_closed_form_gradient_averaged_over_batches():
    model = TwoLayer()
    batches = _batches()
    scores = snip_scores(model, select_prunable(model), batches, squared_error)
    w1, w2 = model.fc1.weight.detach(), model.fc2.weight.detach()
    grads = [_closed_form_gradient(w1, w2, x, y) for x, y in batches]
    g1 = (grads[0][0] + grads[1][0]) / 2
    g2 = (grads[0][1] + grads[1][1]) / 2
    torch.testing.assert_close(scores["fc1.weight"], (g1 * w1).abs(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(scores["fc2.weight"], (g2 * w2).abs(), rtol=1e-12, atol=1e-12)


def test_snip_on_a_one_weight_network_by_hand():
    # y = w2 · w1 · x with w1 = 2, w2 = -3, x = 1, target 0: L = ½ (w1 w2 x)² = 18.
    # ∂L/∂w1 = w1 w2² x² = 18, ∂L/∂w2 = w1² w2 x² = -12; SNIP: |18 · 2| = 36, |-12 · -3| = 36.
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(2.0)
        model[1].weight.fill_(-3.0)
    batch = (torch.ones(1, 1), torch.zeros(1, 1))
    scores = snip_scores(model, select_prunable(model), [batch], lambda m, b: 0.5 * ((m(b[0]) - b[1]) ** 2).sum())
    assert scores["0.weight"].item() == pytest.approx(36.0)
    assert scores["1.weight"].item() == pytest.approx(36.0)


def test_grasp_scores_match_the_closed_form_hessian_gradient_product():
    model = TwoLayer()
    batches = _batches()
    scores = grasp_scores(model, select_prunable(model), batches, squared_error)
    w1, w2 = model.fc1.weight.detach(), model.fc2.weight.detach()
    grads = [_closed_form_gradient(w1, w2, x, y) for x, y in batches]
    v1 = (grads[0][0] + grads[1][0]) / 2
    v2 = (grads[0][1] + grads[1][1]) / 2
    hg = [_closed_form_hessian_gradient(w1, w2, x, y, v1, v2) for x, y in batches]
    h1 = (hg[0][0] + hg[1][0]) / 2
    h2 = (hg[0][1] + hg[1][1]) / 2
    # The returned score is θ ⊙ Hg = −S(−θ), the negative of the paper's score.
    torch.testing.assert_close(scores["fc1.weight"], w1 * h1, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(scores["fc2.weight"], w2 * h2, rtol=1e-10, atol=1e-12)
    assert (scores["fc1.weight"] < 0).any() and (scores["fc1.weight"] > 0).any()  # signed: the test means something


def test_grasp_masks_remove_the_weights_with_the_highest_paper_score():
    model = TwoLayer()
    batches = _batches()
    tensors = select_prunable(model)
    w1, w2 = model.fc1.weight.detach(), model.fc2.weight.detach()
    grads = [_closed_form_gradient(w1, w2, x, y) for x, y in batches]
    v1, v2 = (grads[0][0] + grads[1][0]) / 2, (grads[0][1] + grads[1][1]) / 2
    hg = [_closed_form_hessian_gradient(w1, w2, x, y, v1, v2) for x, y in batches]
    paper = torch.cat([(-w1 * (hg[0][0] + hg[1][0]) / 2).flatten(), (-w2 * (hg[0][1] + hg[1][1]) / 2).flatten()])
    masks = pruning_at_init_masks(
        "grasp", model, tensors, sparsity_groups(tensors, 0.5), batches=batches, loss_fn=squared_error
    )
    kept = torch.cat([masks["fc1.weight"].flatten(), masks["fc2.weight"].flatten()])
    assert int(kept.sum()) == 10  # 20 weights, half kept
    removed = paper.argsort(descending=True)[:10]
    assert not kept[removed].any()


def test_synflow_scores_match_the_closed_form_of_the_linearised_network():
    # Linearised with an all-ones input: h = |W1| 1 + |b1|, R = 1ᵀ(|W2| h + |b2|);
    # ∂R/∂W2_ij = h_j, ∂R/∂W1_jk = (1ᵀ|W2|)_j; scores |∂R/∂θ ⊙ θ|.
    model = TwoLayer(bias=True)
    w1, w2, b1 = model.fc1.weight.detach().clone(), model.fc2.weight.detach().clone(), model.fc1.bias.detach().clone()
    scores = synflow_scores(model, select_prunable(model), input_shape=(3,))
    hidden = w1.abs().sum(1) + b1.abs()
    column = w2.abs().sum(0)
    torch.testing.assert_close(scores["fc2.weight"], w2.abs() * hidden[None, :], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(scores["fc1.weight"], w1.abs() * column[:, None], rtol=1e-12, atol=1e-12)


def test_synflow_scores_respect_masks():
    model = TwoLayer()
    tensors = select_prunable(model)
    w1, w2 = model.fc1.weight.detach().clone(), model.fc2.weight.detach().clone()
    masks = {"fc1.weight": torch.ones(4, 3, dtype=torch.bool), "fc2.weight": torch.ones(2, 4, dtype=torch.bool)}
    masks["fc1.weight"][1] = False  # hidden unit 1 has no input left: its outgoing weights carry no flow
    scores = synflow_scores(model, tensors, (3,), masks)
    hidden = (w1.abs() * masks["fc1.weight"]).sum(1)
    torch.testing.assert_close(scores["fc2.weight"], w2.abs() * hidden[None, :], rtol=1e-12, atol=1e-12)
    assert (scores["fc2.weight"][:, 1] == 0).all()
    assert (scores["fc1.weight"][1] == 0).all()


class RaisingLoader:
    """A data loader that fails the test if anyone iterates it."""

    def __iter__(self):
        raise AssertionError("SynFlow read data")


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def test_synflow_touches_no_data_and_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = BNNet()
    model.train()
    with torch.no_grad():  # non-trivial running statistics, so restoring them is checked
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
        model.bn.num_batches_tracked.fill_(7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inputs: list[Tensor] = []
    model.register_forward_pre_hook(lambda _, args: inputs.append(args[0].detach().clone()))
    tensors = select_prunable(model)
    groups = sparsity_groups(tensors, 0.9, scope="global")
    with pytest.raises(ValueError, match="data-free"):
        pruning_at_init_masks("synflow", model, tensors, groups, batches=RaisingLoader(), input_shape=(1, 8, 8))
    masks = pruning_at_init_masks("synflow", model, tensors, groups, input_shape=(1, 8, 8), iterations=20)
    assert len(inputs) == 20 and all(torch.equal(x, torch.ones(1, 1, 8, 8)) for x in inputs)  # only all-ones inputs
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and model.bn.training
    assert all(p.grad is None for p in model.parameters())
    assert sum(int(m.sum()) for m in masks.values()) == groups[0].keep


def test_snip_and_grasp_leave_weights_batchnorm_statistics_and_grads_unchanged():
    torch.manual_seed(0)
    model = BNNet().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tensors = select_prunable(model)
    batches = [(torch.randn(6, 1, 8, 8), torch.randint(0, 3, (6,))) for _ in range(2)]
    for method in ("snip", "grasp"):
        pruning_at_init_masks(
            method, model, tensors, sparsity_groups(tensors, 0.5), batches=batches, loss_fn=classification_loss()
        )
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training
    assert all(p.grad is None for p in model.parameters())


def test_synflow_iterations_follow_the_exponential_schedule_to_exact_counts():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10))
    tensors = select_prunable(model)
    groups = sparsity_groups(tensors, 0.95, scope="layer")
    masks = synflow_masks(model, tensors, groups, (20,), iterations=10)
    assert [int(m.sum()) for m in masks.values()] == [g.keep for g in groups] == [30, 15]
    # One iteration is one-shot pruning on one scoring pass.
    one = synflow_masks(model, tensors, groups, (20,), iterations=1)
    everything = {n: torch.ones(t.shape, dtype=torch.bool) for n, t in tensors.items()}
    expected = top_score_masks(synflow_scores(model, tensors, (20,)), everything, groups)
    assert all(torch.equal(one[n], expected[n]) for n in one)


def test_iterative_synflow_avoids_layer_collapse_where_one_shot_magnitude_may_not():
    # A wide first layer with large weights and a narrow last layer with tiny ones: global magnitude pruning at
    # 99% empties the last layer (layer collapse); SynFlow keeps a path through every layer.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(50, 100, bias=False), nn.ReLU(), nn.Linear(100, 2, bias=False))
    with torch.no_grad():
        model[2].weight.mul_(1e-3)
    tensors = select_prunable(model)
    groups = sparsity_groups(tensors, 0.99)
    magnitude = pruning_at_init_masks("magnitude_init", model, tensors, groups)
    synflow = pruning_at_init_masks("synflow", model, tensors, groups, input_shape=(50,))
    assert int(magnitude["2.weight"].sum()) == 0
    assert int(synflow["2.weight"].sum()) > 0 and int(synflow["0.weight"].sum()) > 0
    assert sum(int(m.sum()) for m in synflow.values()) == groups[0].keep


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("method", ["snip", "grasp", "synflow", "magnitude_init"])
def test_every_method_gives_exact_counts_and_is_deterministic(method: str, scope: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 5))
    tensors = select_prunable(model)
    groups = sparsity_groups(tensors, 0.6, scope)
    data = {"batches": [(torch.randn(8, 6), torch.randint(0, 5, (8,)))], "loss_fn": classification_loss()}
    kwargs: dict = {"magnitude_init": {}, "synflow": {"input_shape": (6,), "iterations": 5}}.get(method, data)
    first = pruning_at_init_masks(method, model, tensors, groups, **kwargs)
    second = pruning_at_init_masks(method, model, tensors, groups, **kwargs)
    for group in groups:
        assert sum(int(first[n].sum()) for n in group.names) == group.keep
    assert all(torch.equal(first[n], second[n]) and first[n].dtype == torch.bool for n in first)


def test_ties_are_broken_by_position():
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    tensors = select_prunable(model)
    masks = pruning_at_init_masks("magnitude_init", model, tensors, [PruneGroup(("0.weight", "1.weight"), 13)])
    assert masks["0.weight"].all() and masks["1.weight"].flatten().tolist() == [True, False, False, False, False, False]


def test_installed_and_given_masks_are_respected():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))
    tensors = select_prunable(model)
    prior = {n: torch.rand(t.shape) < 0.5 for n, t in tensors.items()}
    install_masks(tensors, prior)
    for method, kwargs in [
        ("synflow", {"input_shape": (5,), "iterations": 4}),
        ("snip", {"batches": [(torch.randn(4, 5), torch.randint(0, 3, (4,)))], "loss_fn": classification_loss()}),
    ]:
        keep = sum(int(m.sum()) for m in prior.values()) // 2
        masks = pruning_at_init_masks(method, model, tensors, [PruneGroup(tuple(tensors), keep)], prior, **kwargs)
        assert all(not (masks[n] & ~prior[n]).any() for n in masks)  # masks only shrink
        assert sum(int(m.sum()) for m in masks.values()) == keep


def test_order_keys_preserve_the_order_of_signed_scores():
    values = torch.tensor([-3.0, 2.5, -0.0, 0.0, 1e-30, -1e-30, 7e30, -7e30, 0.1, -0.1], dtype=torch.float32)
    keys = _order_keys(values)
    assert (keys >= 0).all()
    for i in range(len(values)):
        for j in range(len(values)):
            assert (values[i] < values[j]) == (keys[i] < keys[j])


def test_bad_arguments_are_refused_with_what_is_allowed():
    model = TwoLayer()
    tensors = select_prunable(model)
    groups = sparsity_groups(tensors, 0.5)
    with pytest.raises(ValueError, match="'snip', 'grasp', 'synflow', 'magnitude_init'"):
        pruning_at_init_masks("obd", model, tensors, groups)
    with pytest.raises(ValueError, match="pass `batches` and `loss_fn`"):
        pruning_at_init_masks("snip", model, tensors, groups)
    with pytest.raises(ValueError, match="needs `input_shape`"):
        pruning_at_init_masks("synflow", model, tensors, groups)
    with pytest.raises(ValueError, match="no batches"):
        pruning_at_init_masks("grasp", model, tensors, groups, batches=[], loss_fn=squared_error)
    with pytest.raises(ValueError, match="iterations"):
        synflow_masks(model, tensors, groups, (3,), iterations=0)
    with pytest.raises(ValueError, match="NaN"):
        top_score_masks({"fc1.weight": torch.full((4, 3), float("nan"))}, {"fc1.weight": torch.ones(4, 3)}, groups[:0])


def test_synflow_scores_deep_networks_in_float64_where_float32_overflows():
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(50, 50, bias=False) for _ in range(30)])
    with torch.no_grad():
        for layer in model:
            layer.weight.normal_()  # |W|·1 is about 40 per layer: R ~ 40^30, beyond float32's 3.4e38
    tensors = select_prunable(model)
    with pytest.raises(ValueError, match=r"overflowed in torch\.float32"):
        synflow_scores(model, tensors, (50,), dtype=torch.float32)
    scores = synflow_scores(model, tensors, (50,))
    assert all(s.dtype == torch.float64 and torch.isfinite(s).all() and (s > 0).all() for s in scores.values())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the model itself stays float32
