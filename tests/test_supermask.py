"""Edge-popup supermasks: frozen weights, exact per-layer top-k, straight-through gradients to the scores."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from tiny import TinyNet, loaders
from torch import nn

from lightning_lottery import LotteryTicketCallback
from lightning_lottery.data.vision import SyntheticImageDataModule
from lightning_lottery.modules.classifier import ImageClassifier
from lightning_lottery.supermask import (
    EdgePopup,
    EdgePopupCallback,
    SupermaskConv2d,
    SupermaskLinear,
    active_counts,
    kept_count,
    score_parameters,
    supermask_layers,
)


def _trainer(steps: int, **kwargs: Any) -> pl.Trainer:
    options: dict[str, Any] = dict(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    options.update(kwargs)
    return pl.Trainer(**options)


def _classifier(arch: str = "lenet300", keep: float = 0.5, **kwargs: Any) -> ImageClassifier:
    supermask = {"keep": keep, "init": "signed_constant"}
    return ImageClassifier(arch=arch, optimizer="sgd", lr=0.1, supermask=supermask, **kwargs)


def test_layers_are_converted_in_place_and_keep_their_names():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    conv, linear = model[0], model[2]
    EdgePopup(keep=0.3).apply(model)
    assert model[0] is conv and type(conv) is SupermaskConv2d and isinstance(conv, nn.Conv2d)
    assert type(linear) is SupermaskLinear and isinstance(linear, nn.Linear)
    assert [n for n, _ in model.named_parameters()] == [
        "0.weight",
        "0.bias",
        "0.scores",
        "2.weight",
        "2.bias",
        "2.scores",
    ]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["0.scores", "2.scores"]
    assert torch.all(conv.bias == 0) and torch.all(linear.bias == 0)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)


@pytest.mark.parametrize("keep", [0.5, 0.3, 0.05, 1.0])
def test_exactly_keep_of_each_layer_is_active(keep: float):
    model = _classifier(keep=keep).model  # LeNet-300-100: 235,200 / 30,000 / 1,000 weights
    counts = active_counts(model)
    assert set(counts) == {"fc1", "fc2", "fc3"}
    for active, total in counts.values():
        assert active == kept_count(total, keep) == round(keep * total)
    # And the forward really uses only those: the effective weight has exactly that many nonzeros.
    for layer in supermask_layers(model).values():
        assert int((layer.masked_weight() != 0).sum()) == kept_count(layer.weight.numel(), keep)


def test_kept_count_is_at_least_one_weight():
    assert kept_count(10, 0.01) == 1 and kept_count(7, 0.5) == 4 and kept_count(3, 1.0) == 3


def test_initialisations_have_the_kaiming_scale():
    torch.manual_seed(0)
    signed = EdgePopup(init="signed_constant").apply(nn.Linear(400, 300))
    std = math.sqrt(2 / 400)
    assert torch.allclose(signed.weight.abs(), torch.full_like(signed.weight, std))
    assert 0.45 < float((signed.weight > 0).float().mean()) < 0.55
    normal = EdgePopup(init="kaiming_normal").apply(nn.Linear(400, 300))
    assert float(normal.weight.std()) == pytest.approx(std, rel=0.02)
    scaled = EdgePopup(init="signed_constant", keep=0.5, scale_fan=True).apply(nn.Linear(400, 300))
    assert float(scaled.weight.abs().max()) == pytest.approx(math.sqrt(2 / 200))


def test_scores_get_the_straight_through_gradient():
    torch.manual_seed(0)
    layer = EdgePopup(keep=0.5).apply(nn.Linear(6, 4))
    x = torch.randn(5, 6)
    layer(x).pow(2).sum().backward()
    assert layer.weight.grad is None and layer.bias.grad is None
    # d loss / d score = d loss / d (weight * mask) * weight * sign(score), for kept and dropped weights alike.
    effective = (layer.weight * layer.mask()).detach().requires_grad_(True)
    nn.functional.linear(x, effective, layer.bias).pow(2).sum().backward()
    expected = effective.grad * layer.weight * layer.scores.sign()
    assert torch.allclose(layer.scores.grad, expected)
    assert bool((layer.scores.grad[layer.mask() == 0] != 0).any())  # dropped weights can pop back in


def test_training_changes_scores_never_weights():
    torch.manual_seed(0)
    model = _classifier(arch="mnist_cnn")  # conv and linear layers
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    scores = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    masks = {n: layer.mask().clone() for n, layer in supermask_layers(model).items()}
    data = SyntheticImageDataModule(num_train=96, val_size=32, num_test=32, batch_size=32)
    trainer = _trainer(steps=6)
    trainer.fit(model, data)

    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in score_parameters(model)}  # the optimizer sees only the scores
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert all(not torch.equal(p, scores[n]) for n, p in model.named_parameters() if n in scores)
    assert any(not torch.equal(layer.mask(), masks[n]) for n, layer in supermask_layers(model).items())
    for active, total in active_counts(model).values():
        assert active == round(0.5 * total)


def test_module_rebuilds_from_hparams_and_reloads_from_checkpoints(tmp_path: Path):
    model = _classifier()
    fresh = type(model)(**model.hparams)  # a new random draw of weights and scores, same structure
    assert fresh.state_dict().keys() == model.state_dict().keys()
    assert not torch.equal(fresh.model.fc1.weight, model.model.fc1.weight)
    trainer = _trainer(steps=2)
    trainer.fit(model, SyntheticImageDataModule(num_train=64, val_size=32, num_test=32, batch_size=32))
    trainer.save_checkpoint(tmp_path / "edgepopup.ckpt")
    loaded = ImageClassifier.load_from_checkpoint(tmp_path / "edgepopup.ckpt")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert torch.equal(loaded.model.fc1.mask(), model.model.fc1.mask())


def test_round_zero_of_the_lottery_callback_leaves_a_supermask_model_alone():
    """The supermask recipes run the callback with rounds=0: it records the run and prunes nothing."""
    model = _classifier()
    lottery = LotteryTicketCallback(rounds=0)
    _trainer(steps=2, callbacks=[lottery]).fit(model, SyntheticImageDataModule(num_train=64, val_size=32, num_test=32))
    assert [r["round"] for r in lottery.history] == [0] and lottery.history[0]["best"] is not None
    assert not any(hasattr(m, "weight_mask") for m in model.modules())


def test_callback_converts_any_module_before_its_optimizer_is_built():
    model = TinyNet()
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    train, val = loaders()
    _trainer(steps=4, callbacks=[EdgePopupCallback(keep=0.25, init="kaiming_normal")]).fit(model, train, val)
    assert set(supermask_layers(model)) == {"fc1", "fc2"}
    assert not torch.equal(model.fc1.weight, weights["fc1.weight"])  # re-drawn once, at conversion
    assert {n: c[0] for n, c in active_counts(model).items()} == {"fc1": 32, "fc2": 12}


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="keep must be in"):
        EdgePopup(keep=0.0)
    with pytest.raises(ValueError, match="Unknown supermask init"):
        EdgePopup(init="uniform")  # type: ignore[arg-type]
    model = EdgePopup().apply(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="apply EdgePopup once"):
        EdgePopup().apply(model)
    with pytest.raises(ValueError, match=r"No nn\.Linear"):
        EdgePopup().apply(nn.ReLU())
