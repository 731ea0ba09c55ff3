"""Masks on torch.nn.utils.prune: selection, installation, the enforced fast path, snapshots."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from lightning_lottery.core import (
    MaskEnforcer,
    current_masks,
    dense_state,
    install_masks,
    load_dense_state,
    remove_masks,
    select_prunable,
)


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.conv = nn.Conv1d(8, 8, 3)
        self.norm = nn.LayerNorm(8)
        self.lstm = nn.LSTM(8, 8, num_layers=2)
        self.attn = nn.MultiheadAttention(8, 2)
        self.head = nn.Linear(8, 20)


def test_default_selection_takes_weight_matrices_only():
    names = set(select_prunable(Mixed()))
    assert names == {
        "conv.weight",
        "lstm.weight_ih_l0",
        "lstm.weight_hh_l0",
        "lstm.weight_ih_l1",
        "lstm.weight_hh_l1",
        "attn.in_proj_weight",
        "attn.out_proj.weight",
        "head.weight",
    }


def test_patterns_select_and_exclude():
    names = set(select_prunable(Mixed(), parameters=["lstm.*", "head.weight"], exclude=["*_l1"]))
    assert names == {
        "lstm.weight_ih_l0",
        "lstm.weight_hh_l0",
        "lstm.bias_ih_l0",
        "lstm.bias_hh_l0",
        "head.weight",
    }


@pytest.mark.parametrize("kwargs", [{"parameters": ["nope*"]}, {"exclude": ["fc9.weight"]}])
def test_pattern_matching_nothing_is_an_error(kwargs):
    with pytest.raises(ValueError, match="match no parameter"):
        select_prunable(Mixed(), **kwargs)


def test_nothing_prunable_is_an_error():
    with pytest.raises(ValueError, match="Nothing to prune"):
        select_prunable(nn.Sequential(nn.Embedding(4, 4), nn.LayerNorm(4)))


def _half_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {n: torch.rand(t.shape, generator=g) > 0.5 for n, t in select_prunable(model).items()}


def test_installed_masks_are_standard_prune_reparametrisation():
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    tensors = select_prunable(model)
    masks = _half_masks(model)
    install_masks(tensors, masks)
    assert prune.is_pruned(model)
    assert {"0.weight_orig", "2.weight_orig"} <= {n for n, _ in model.named_parameters()}
    assert {"0.weight_mask", "2.weight_mask"} <= {n for n, _ in model.named_buffers()}
    for name, mask in current_masks(tensors).items():
        assert torch.equal(mask, masks[name])
    assert torch.equal(model[0].weight_orig[~masks["0.weight"]], torch.zeros(int((~masks["0.weight"]).sum())))


def test_masks_only_shrink():
    model = nn.Linear(10, 10)
    tensors = select_prunable(model)
    first = {"weight": torch.arange(100).view(10, 10) % 2 == 0}
    second = {"weight": torch.arange(100).view(10, 10) % 3 == 0}
    install_masks(tensors, first)
    install_masks(tensors, second)
    assert torch.equal(current_masks(tensors)["weight"], first["weight"] & second["weight"])


def test_fast_path_trains_like_stock_prune():
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    ours = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    ours.load_state_dict(reference.state_dict())
    masks = _half_masks(reference)
    for name, mask in masks.items():
        prune.custom_from_mask(reference[int(name[0])], "weight", mask)
    install_masks(select_prunable(ours), masks)
    enforcer = MaskEnforcer(ours)
    enforcer.activate()
    opts = [torch.optim.AdamW(m.parameters(), lr=0.05, weight_decay=0.1) for m in (reference, ours)]
    x, y = torch.randn(16, 6), torch.randint(0, 2, (16,))
    for _ in range(5):
        for model, opt in zip((reference, ours), opts):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            if model is ours:
                enforcer.mask_gradients()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            opt.step()
            if model is ours:
                enforcer.zero_masked_weights()
    for i in (0, 2):  # ``module.weight`` of stock prune is stale until the next forward: compare orig * mask
        assert torch.allclose(reference[i].weight_orig * reference[i].weight_mask, ours[i].weight_orig, atol=1e-6)
        assert torch.equal(ours[i].weight_orig * ours[i].weight_mask, ours[i].weight_orig), "masked entry not zero"
    enforcer.deactivate()
    assert torch.allclose(reference(x), ours(x), atol=1e-6)


def test_fast_path_hands_out_the_parameter_without_registering_it_twice():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    install_masks(select_prunable(model), _half_masks(model))
    names = [name for name, _ in model.named_parameters()]
    enforcer = MaskEnforcer(model).attach([])
    model(torch.randn(3, 6)).sum().backward()
    layer = model[0]
    assert layer.weight is layer.weight_orig  # no per-forward view: the gradient lands on the parameter directly
    assert [name for name, _ in model.named_parameters()] == names
    assert set(model.state_dict()) == {f"{i}.{k}" for i in (0, 2) for k in ("weight_orig", "weight_mask", "bias")}
    assert prune.is_pruned(model)
    assert torch.equal(layer.weight_orig.grad * (1 - layer.weight_mask), torch.zeros(5, 6))
    enforcer.detach()
    model(torch.randn(3, 6))
    assert layer.weight is not layer.weight_orig and layer.weight.grad_fn is not None  # back to orig * mask


def test_tied_weights_get_one_mask():
    embed = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = embed.weight
    model = nn.ModuleDict({"embed": embed, "head": head})
    tensors = select_prunable(model, parameters=["embed.weight"])
    assert len(tensors) == 1 and len(tensors["embed.weight"].sites) == 2
    install_masks(tensors, {"embed.weight": torch.rand(10, 4) > 0.5})
    assert model["embed"].weight_mask is model["head"].weight_mask
    assert model["embed"].weight_orig is model["head"].weight_orig
    assert len(MaskEnforcer(model)) == 1
    out = model["head"](torch.eye(4))
    assert torch.equal(out.T, model["embed"].weight_orig * model["embed"].weight_mask)


def test_foreign_pruning_is_taken_over_and_intersected():
    model = nn.Linear(8, 8)
    prune.l1_unstructured(model, "weight", amount=0.25)
    prune.random_unstructured(model, "weight", amount=0.25)  # a PruningContainer now
    before = model.weight_mask.bool().clone()
    tensors = select_prunable(model)
    assert set(tensors) == {"weight"}
    extra = torch.rand(8, 8) > 0.3
    install_masks(tensors, {"weight": extra})
    assert torch.equal(current_masks(tensors)["weight"], before & extra)
    hooks = list(model._forward_pre_hooks.values())
    assert len(hooks) == 1 and type(hooks[0]).__name__ == "LotteryMask"


def test_snapshot_rewinds_real_parameters_not_the_derived_weight():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    theta0 = dense_state(model)
    tensors = select_prunable(model)
    install_masks(tensors, _half_masks(model))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.add_(3.0)
    load_dense_state(model, theta0)
    assert torch.equal(model[0].weight_orig, theta0["0.weight"])  # the parameter, masked values included
    assert torch.equal(model[1].running_mean, theta0["1.running_mean"])
    assert set(theta0) == set(dense_state(model))


def test_snapshot_mismatch_lists_every_problem():
    theta = dense_state(nn.Linear(4, 3))
    with pytest.raises(KeyError, match=r"shape mismatch.*weight.*bias"):
        load_dense_state(nn.Linear(4, 2), theta)


def test_remove_masks_leaves_dense_modules_with_zeros():
    model = nn.Linear(6, 6)
    masks = {"weight": torch.rand(6, 6) > 0.5}
    install_masks(select_prunable(model), masks)
    remove_masks(model)
    assert not prune.is_pruned(model)
    assert bool((model.weight[~masks["weight"]] == 0).all())
    assert isinstance(model.weight, nn.Parameter)


def test_pruning_keeps_parameter_order():
    """Optimizer state in checkpoints is matched by position: pruned and dense models must list alike."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    dense_order = [n for n, _ in model.named_parameters()]
    install_masks(select_prunable(model), _half_masks(model))
    assert [n.replace("_orig", "") for n, _ in model.named_parameters()] == dense_order
    remove_masks(model)
    assert [n for n, _ in model.named_parameters()] == dense_order


def _train_steps(model: nn.Module, opt: torch.optim.Optimizer, enforcer: MaskEnforcer, steps: int, mask_grads=True):
    x, y = torch.randn(16, 6), torch.randint(0, 2, (16,))
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if mask_grads:
            enforcer.mask_gradients()
        opt.step()


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01, fused=True),
        lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=0.01),
        lambda p: torch.optim.Adam(p, lr=0.05, fused=True),
        lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1),
        lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5),
        lambda p: torch.optim.Adagrad(p, lr=0.1, initial_accumulator_value=0.1),
    ],
    ids=["sgd-nesterov-wd", "sgd-fused-wd", "adam-l2", "adam-fused", "adamw", "rmsprop", "adagrad"],
)
def test_element_wise_optimizers_keep_masked_weights_zero_without_a_weight_multiply(make_opt):
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    install_masks(select_prunable(model), _half_masks(model))
    opt = make_opt(model.parameters())
    enforcer = MaskEnforcer(model, verify_every=1).attach([opt])  # checks after every step
    multiplies = []
    enforcer.zero_masked_weights = lambda: multiplies.append(1)  # type: ignore[method-assign]
    _train_steps(model, opt, enforcer, 20)
    assert not multiplies and not enforcer.always, "no multiply needed, and every check found zeros"
    for i in (0, 2):
        assert bool((model[i].weight_orig[model[i].weight_mask == 0] == 0).all())


def test_other_optimizers_and_unmasked_steps_get_the_multiply_and_a_leak_switches_it_on():
    class Noisy(torch.optim.SGD):  # not element-wise in our sense: it moves weights whose gradient is zero
        def step(self, closure=None):
            super().step(closure)
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        p.add_(0.01)

    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    install_masks(select_prunable(model), _half_masks(model))
    opt = Noisy(model.parameters(), lr=0.1)
    noisy = MaskEnforcer(model).attach([opt])
    _train_steps(model, opt, noisy, 3)  # gradients masked, but the optimizer is not one we trust
    for i in (0, 2):
        assert bool((model[i].weight_orig[model[i].weight_mask == 0] == 0).all()), "zeroed after every step"

    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    enforcer = MaskEnforcer(model, verify_every=2).attach([sgd])
    _train_steps(model, sgd, enforcer, 1, mask_grads=False)  # a step without masked gradients: zeroed after it
    assert not enforcer.leaked() and not enforcer.always
    with torch.no_grad():
        model[0].weight_orig.add_(1.0)  # something else wrote into masked weights
    _train_steps(model, sgd, enforcer, 2)
    assert enforcer.always and not enforcer.leaked(), "the check found the leak, zeroed it and keeps zeroing"


def _masked_grads_are_zero(model: nn.Module) -> bool:
    return all(bool((model[i].weight_orig.grad[model[i].weight_mask == 0] == 0).all()) for i in (0, 2))


def test_backward_masks_gradients_and_a_gradient_rewritten_after_it_is_masked_again():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    install_masks(select_prunable(model), _half_masks(model))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    enforcer = MaskEnforcer(model).attach([opt])
    x, y = torch.randn(8, 6), torch.randint(0, 2, (8,))
    nn.functional.cross_entropy(model(x), y).backward()
    assert _masked_grads_are_zero(model), "masked by backward alone"

    with torch.no_grad():
        model[0].weight_orig.grad.add_(1.0)  # e.g. a user's on_after_backward adding noise
    model[2].weight_orig.grad = torch.ones_like(model[2].weight_orig)  # or replacing a gradient
    enforcer.mask_gradients()
    assert _masked_grads_are_zero(model)
    opt.step()
    assert not enforcer.leaked()


def test_without_backward_hooks_mask_gradients_masks_every_gradient():
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    install_masks(select_prunable(model), _half_masks(model))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    enforcer = MaskEnforcer(model).attach([opt], in_backward=False)  # what a data-parallel run gets
    nn.functional.cross_entropy(model(torch.randn(8, 6)), torch.randint(0, 2, (8,))).backward()
    assert not _masked_grads_are_zero(model), "backward leaves the gradients alone"
    enforcer.mask_gradients()
    assert _masked_grads_are_zero(model)


STOCK_ROOTED = {
    "adam-l2-amsgrad": lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=0.01, amsgrad=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1),
    "adam-foreach-maximize": lambda p: torch.optim.Adam(p, lr=0.05, foreach=True, maximize=True),
    "nadam": lambda p: torch.optim.NAdam(p, lr=0.05),
    "radam": lambda p: torch.optim.RAdam(p, lr=0.05),
    "rmsprop-centered": lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5, centered=True),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.1),
}


def _masked_training(make_opt, enforced: bool, steps: int):
    """Masked training of a tiny MLP: with an enforcer (checks every 100 steps), or torch.nn.utils.prune's way (the
    forward multiplies by the mask, autograd masks the gradient)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    install_masks(select_prunable(model), _half_masks(model))
    opt = make_opt(model.parameters())
    enforcer = MaskEnforcer(model).attach([opt]) if enforced else None
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, 6, generator=g), torch.randint(0, 2, (16,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if enforcer is not None:
            enforcer.mask_gradients()
        opt.step()
    return model, opt, enforcer


def _rooted_entries(model: nn.Module, opt: torch.optim.Optimizer, masked: bool) -> list[torch.Tensor]:
    keys = ("exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum")
    out = []
    for i in (0, 2):
        state = opt.state[model[i].weight_orig]
        where = model[i].weight_mask == 0 if masked else model[i].weight_mask == 1
        out += [state[k][where] for k in keys if k in state]
    return out


@pytest.mark.parametrize("name", list(STOCK_ROOTED))
def test_stock_optimizers_square_root_no_zeros_yet_train_and_leave_state_bit_for_bit_as_prune_does(name):
    make_opt = STOCK_ROOTED[name]
    reference, ref_opt, _ = _masked_training(make_opt, enforced=False, steps=250)
    model, opt, enforcer = _masked_training(make_opt, enforced=True, steps=250)
    assert _rooted_entries(reference, ref_opt, masked=True), "the reference has the state entries checked"
    assert all(bool((e == 0).all()) for e in _rooted_entries(reference, ref_opt, masked=True))
    # While attached, the masked weights' square-rooted state is a normal positive number (refreshed every 100
    # steps: 250 steps of decay would take RMSprop's 0.99 down to 0.08 without it).
    assert all(bool((e > 0.3).all()) for e in _rooted_entries(model, opt, masked=True))
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        assert torch.equal(ours, theirs), "the same weights, bit for bit"

    checkpoint = opt.state_dict()
    enforcer.stock_optimizer_states([opt], [checkpoint])
    assert all(bool((e > 0.3).all()) for e in _rooted_entries(model, opt, masked=True)), "live state untouched"
    expected = ref_opt.state_dict()["state"]
    for index, state in checkpoint["state"].items():
        for key, value in state.items():
            assert torch.equal(value, expected[index][key]), f"checkpoint: {key} of parameter {index}"

    enforcer.detach()
    for ours, theirs in zip(opt.state.values(), ref_opt.state.values()):
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), "after detach: the state prune training has"


def test_adagrad_starting_above_zero_keeps_its_masked_state_as_prune_training_does():
    make_opt = lambda p: torch.optim.Adagrad(p, lr=0.1, initial_accumulator_value=0.1)  # noqa: E731
    _, ref_opt, _ = _masked_training(make_opt, enforced=False, steps=5)
    _, opt, enforcer = _masked_training(make_opt, enforced=True, steps=5)
    checkpoint = opt.state_dict()
    enforcer.stock_optimizer_states([opt], [checkpoint])
    enforcer.detach()
    for ours, saved, theirs in zip(opt.state.values(), checkpoint["state"].values(), ref_opt.state.values()):
        assert torch.equal(ours["sum"], theirs["sum"]) and torch.equal(saved["sum"], theirs["sum"])


def test_fused_optimizers_and_other_state_are_left_alone():
    fused = lambda p: torch.optim.Adam(p, lr=0.05, fused=True)  # noqa: E731 - fused Adam has no slow square root
    model, opt, _ = _masked_training(fused, enforced=True, steps=3)
    assert all(bool((e == 0).all()) for e in _rooted_entries(model, opt, masked=True)), "left as training leaves it"
    _, _, enforcer = _masked_training(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), True, steps=3)
    assert not enforcer._rooted
