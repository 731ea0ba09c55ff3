"""Optimizers and schedulers as specs (``_target_`` + arguments): any torch optimizer by config, fused Adam and SGD
in the recipes, checkpoints that stay loadable with ``weights_only=True``; the node classifier's accuracy metric."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn

import lightning_lottery
from lightning_lottery.modules.classifier import ImageClassifier
from lightning_lottery.modules.optim import build_optimizer, build_scheduler

CONF = Path(lightning_lottery.__file__).parent / "conf"
RECIPES = sorted(p.stem for p in (CONF / "recipe").glob("*.yaml"))


def _model_from_config(*overrides: str) -> ImageClassifier:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=x", "paths.output_dir=.", *overrides])
    return instantiate(cfg.model, _convert_="all")


def test_any_torch_optimizer_is_a_config_change():
    adamw = _model_from_config("optim=adamw", "optim.lr=3e-4").configure_optimizers()
    assert type(adamw) is torch.optim.AdamW
    assert (adamw.defaults["lr"], adamw.defaults["weight_decay"], adamw.defaults["fused"]) == (3e-4, 0.01, True)
    rmsprop = _model_from_config(
        "optim._target_=torch.optim.RMSprop", "~optim.fused", "~optim.eps", "+optim.alpha=0.9"
    ).configure_optimizers()
    assert type(rmsprop) is torch.optim.RMSprop and rmsprop.defaults["alpha"] == 0.9


def test_the_model_keeps_the_spec_as_plain_data_so_checkpoints_load_safely():
    model = _model_from_config("optim=sgd", "model.warmup_steps=5", "model.milestones=[10]")
    spec = model.hparams["optimizer"]  # optim/sgd.yaml, with the recipe's (mnist_lenet300) learning rate
    assert spec == {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 1.2e-3, "momentum": 0.9,
                    "weight_decay": 1.0e-4, "nesterov": False, "fused": True}  # fmt: skip
    buffer = io.BytesIO()
    torch.save({"hyper_parameters": dict(model.hparams)}, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["hyper_parameters"]["optimizer"] == spec
    rebuilt = type(model)(**model.hparams)  # what rewind="reinit" does
    scheduled = rebuilt.configure_optimizers()
    assert type(scheduled["optimizer"]) is torch.optim.SGD and scheduled["lr_scheduler"]["interval"] == "step"


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipes_use_the_fused_implementation_of_their_optimizer(recipe: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"recipe={recipe}", "experiment=x", "paths.output_dir=."])
    if cfg.optim._target_ in ("torch.optim.Adam", "torch.optim.AdamW", "torch.optim.SGD"):
        assert cfg.optim.fused is True
    assert cfg.model.optimizer == cfg.optim  # the model trains with the optim group's spec


@pytest.mark.parametrize(
    "spec",
    [
        {"_target_": "torch.optim.Adam", "lr": 1e-3},
        {"_target_": "torch.optim.SGD", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
        {"_target_": "torch.optim.SGD", "lr": 0.05, "momentum": 0.9, "nesterov": True},
    ],
    ids=["adam", "sgd-momentum-wd", "sgd-nesterov"],
)
def test_the_fused_optimizer_trains_like_the_stock_one(spec: dict):
    """The fused implementation (the recipes' choice) computes the same updates as the stock (foreach) one, to
    float tolerance."""
    data = torch.Generator().manual_seed(0)
    inputs, labels = torch.randn(8, 32, 1, 28, 28, generator=data), torch.randint(0, 10, (8, 32), generator=data)
    weights = []
    for fused in (False, True):
        torch.manual_seed(0)
        model = ImageClassifier("lenet300", optimizer={**spec, "fused": fused})
        optimizer = model.configure_optimizers()
        for x, y in zip(inputs, labels):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    stock, fused_weights = weights
    assert stock.keys() == fused_weights.keys()
    moved = max((stock[k] - ImageClassifier().state_dict()[k]).abs().max() for k in stock if "weight" in k)
    assert moved > 1e-4  # the steps did change the weights
    for name in stock:
        torch.testing.assert_close(fused_weights[name], stock[name], rtol=1e-5, atol=1e-6)


def test_a_spec_refuses_separate_settings_and_a_class_that_is_no_optimizer():
    with pytest.raises(ValueError, match="give lr inside the spec"):
        ImageClassifier(optimizer={"_target_": "torch.optim.AdamW", "lr": 1e-3}, lr=0.1)
    with pytest.raises(ValueError, match=r"not a torch\.optim\.Optimizer"):
        ImageClassifier(optimizer={"_target_": "torch.nn.Linear"})
    with pytest.raises(ValueError, match="lr_scheduler replaces warmup_steps"):
        ImageClassifier(warmup_steps=5, lr_scheduler={"_target_": "torch.optim.lr_scheduler.StepLR", "step_size": 2})


def test_any_torch_scheduler_is_a_spec_too():
    model = ImageClassifier(lr_scheduler={"_target_": "torch.optim.lr_scheduler.StepLR", "step_size": 2, "gamma": 0.5})
    config = model.configure_optimizers()
    scheduler = config["lr_scheduler"]["scheduler"]
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR) and config["lr_scheduler"]["interval"] == "step"
    optimizer = build_optimizer({"_target_": "torch.optim.SGD", "lr": 1.0}, nn.Linear(2, 2).parameters())
    entry = build_scheduler(
        {"_target_": "torch.optim.lr_scheduler.StepLR", "step_size": 1, "interval": "epoch"}, optimizer
    )
    optimizer.step()
    entry["scheduler"].step()
    assert entry["interval"] == "epoch" and optimizer.param_groups[0]["lr"] == pytest.approx(0.1)


@pytest.mark.skipif(importlib.util.find_spec("torch_geometric") is None, reason="needs PyTorch Geometric")
def test_node_accuracy_is_torchmetrics_micro_accuracy_over_the_masked_nodes():
    from torchmetrics.classification import MulticlassAccuracy

    from lightning_lottery.data.graph import SyntheticGraphDataModule
    from lightning_lottery.modules.node_classifier import NodeClassifier

    data = SyntheticGraphDataModule()
    data.setup()
    arch = {"in_channels": data.in_channels, "num_classes": data.num_classes, "hidden": 8}
    model = NodeClassifier(arch_kwargs=arch).eval()
    assert all(isinstance(m, MulticlassAccuracy) and m.average == "micro" for m in model.accuracy.values())
    batch = next(iter(data.val_dataloader()[0]))
    logits, y = model._scores(batch)
    model.accuracy["val"].update(logits, y)
    expected = (logits.argmax(1) == y).float().mean()
    assert model.accuracy["val"].compute() == pytest.approx(expected.item())
