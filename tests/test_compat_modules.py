"""The callback on modules written the way public templates write them: masks at the expected sparsity, masked
weights exactly zero after every optimizer step and after ``fit``, every level a relaunch, and the usual flows after
the search (``validate``, ``test``, ``predict``, ``test(ckpt_path="best")``)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from compat_modules import (
    LazyNet,
    ResNetModule,
    TiedLanguageModel,
    TwoOptimizers,
    WeightNormNet,
    image_loaders,
    template_module,
    token_loaders,
)
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from tiny import trainer
from torch.nn.utils import prune

from lightning_lottery import LotteryTicketCallback
from lightning_lottery.core import select_prunable


class MaskCheck(pl.Callback):
    """After every training batch: masked weights exactly zero; at every train start: which branch relaunched."""

    def __init__(self, lottery: LotteryTicketCallback) -> None:
        self.lottery = lottery
        self.checked = 0
        self.starts: list[tuple[int, str, int]] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.starts.append((self.lottery.round, self.lottery.branch, trainer.global_step))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.lottery.round > 0:
            assert_masked_weights_zero(pl_module, self.lottery.masks)
            self.checked += 1


def assert_masked_weights_zero(model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> None:
    tensors = select_prunable(model, parameters=list(masks))
    for name, mask in masks.items():
        assert not bool(mask.all()), name
        assert bool((tensors[name].tensor.detach()[~mask] == 0).all()), f"{name}: a masked weight is not zero"


def _search(
    model: pl.LightningModule, loaders: tuple, rounds: int = 2, best: str | None = "val_loss", **kwargs: Any
) -> tuple:
    """A search with a ModelCheckpoint keeping the ``best`` checkpoint (by that metric) and the last one."""
    lottery = LotteryTicketCallback(rounds=rounds, amount=0.5, **{"monitor": None, **kwargs})
    check = MaskCheck(lottery)
    checkpoint = ModelCheckpoint(monitor=kwargs.get("monitor") or best, save_top_k=1, save_last=True)
    fit = trainer(max_epochs=2, callbacks=[lottery, check, checkpoint], enable_checkpointing=True, default_root_dir=".")
    fit.fit(model, *loaders)
    return lottery, check, fit


def _expected_relaunches(lottery: LotteryTicketCallback, check: MaskCheck) -> None:
    assert [(r, b) for r, b, _ in check.starts] == [(r["round"], r["branch"]) for r in lottery.history]
    assert all(step == 0 for _, _, step in check.starts), "every level resumes round 0 at step 0 (rewind=init)"


def test_a_template_module_with_torchmetrics_partials_and_plateau_scheduler():
    model = template_module()
    lottery, check, fit = _search(model, image_loaders(), monitor="val/loss", controls=["random"])
    assert [(r["round"], r["branch"]) for r in lottery.history] == [
        (0, "ticket"),
        (1, "ticket"),
        (1, "random"),
        (2, "ticket"),
        (2, "random"),
    ]
    assert [round(r["sparsity"], 2) for r in lottery.history] == [0.0, 0.5, 0.5, 0.75, 0.75]
    assert all(r["best"] is not None and "val/acc_best" in r["metrics"] for r in lottery.history)
    _expected_relaunches(lottery, check)
    assert check.checked == 4 * 12  # every step of the four pruned branches (6 batches x 2 epochs)
    assert_masked_weights_zero(model, lottery.masks)
    test_loader = image_loaders()[1]
    assert fit.validate(model, test_loader)[0]["val/loss"] > 0
    assert 0 <= fit.test(model, test_loader)[0]["test/acc"] <= 1
    predictions = torch.cat(fit.predict(model, test_loader))
    assert predictions.shape == (48,)
    # The template stores functools.partial objects in its hparams, which Lightning's default weights_only load
    # refuses whatever the callback does; a user who trusts the file says so.
    best = fit.test(model, test_loader, ckpt_path="best", weights_only=False)[0]
    assert 0 <= best["test/acc"] <= 1, "the best checkpoint (dense weights, zeros where pruned) loads"


def test_the_reinit_control_on_a_module_that_cannot_be_rebuilt_is_refused_before_training():
    model = template_module()  # save_hyperparameters(ignore=["net"]): hparams cannot rebuild the network
    with pytest.raises(ValueError, match="save_hyperparameters"):
        _search(model, image_loaders(), controls=["reinit"])
    assert not prune.is_pruned(model)


def test_boring_model():
    model = BoringModel()
    lottery, check, fit = _search(model, (model.train_dataloader(), model.val_dataloader()), best=None)
    assert [round(r["sparsity"], 2) for r in lottery.history] == [0.0, 0.5, 0.75]
    _expected_relaunches(lottery, check)
    assert check.checked == 2 * 128
    assert_masked_weights_zero(model, lottery.masks)
    fit.test(model, model.test_dataloader())
    assert len(fit.predict(model, model.predict_dataloader())) == 64


def test_a_torchvision_resnet_with_batchnorm_rewinds_its_running_statistics():
    torch.manual_seed(0)
    model = ResNetModule()
    bn_at_init = model.net.bn1.running_mean.clone()
    lottery, check, fit = _search(model, image_loaders(24, (3, 16, 16), batch=8), rounds=1, monitor="val_loss")
    masks = lottery.masks
    assert "net.conv1.weight" in masks and "net.fc.weight" in masks and "net.bn1.weight" not in masks
    assert lottery.history[1]["sparsity"] == pytest.approx(0.5, abs=1e-4)
    assert torch.equal(lottery.ticket().weights["net.bn1.running_mean"], bn_at_init), "θ₀ includes BN statistics"
    assert_masked_weights_zero(model, masks)
    _expected_relaunches(lottery, check)
    assert fit.test(model, image_loaders(24, (3, 16, 16))[1], ckpt_path="best")[0]["val_loss"] > 0


def test_manual_optimisation_with_two_optimisers():
    model = TwoOptimizers()
    data = torch.utils.data.TensorDataset(torch.randn(48, 8))
    loaders = (torch.utils.data.DataLoader(data, batch_size=8), torch.utils.data.DataLoader(data, batch_size=8))
    lottery, check, _ = _search(model, loaders, monitor="val_loss")
    assert {n.split(".")[0] for n in lottery.masks} == {"generator", "discriminator"}
    assert [round(r["sparsity"], 2) for r in lottery.history] == [0.0, 0.5, 0.75]
    assert check.checked == 2 * 12
    _expected_relaunches(lottery, check)
    assert [r["steps"] for r in lottery.history] == [24, 24, 24], "manual steps: two optimizers step per batch"
    assert_masked_weights_zero(model, lottery.masks)


def test_tied_weights_share_one_mask():
    model = TiedLanguageModel()
    lottery, check, _ = _search(model, token_loaders(), parameters=["embedding.weight", "hidden.weight"])
    assert set(lottery.masks) == {"embedding.weight", "hidden.weight"}
    assert model.decoder.weight_mask is model.embedding.weight_mask, "the tied tensor has one mask"
    assert model.decoder.weight_orig is model.embedding.weight_orig
    assert_masked_weights_zero(model, lottery.masks)
    assert check.checked > 0


def test_weight_norm_layers_are_named_in_a_warning_and_prunable_by_name():
    with pytest.warns(UserWarning, match=r"parametrized weights \(fc1.weight;.*original1"):
        lottery, _, _ = _search(WeightNormNet(), image_loaders(), rounds=1)
    assert set(lottery.masks) == {"fc2.weight"}, "left dense, as the warning says"
    model = WeightNormNet()
    named = ["fc1.parametrizations.weight.original1"]
    lottery, check, _ = _search(model, image_loaders(), rounds=1, parameters=named, dirpath="named")
    mask = lottery.masks["fc1.parametrizations.weight.original1"]
    assert 1 - float(mask.float().mean()) == pytest.approx(0.5, abs=0.01)
    effective = model.fc1.weight.detach()  # g * v / ||v||: zero wherever v is masked
    assert bool((effective[~mask] == 0).all())
    assert check.checked == 12


def test_lazy_modules_are_refused_until_materialised():
    model = LazyNet()
    loaders = image_loaders()
    with pytest.raises(ValueError, match=r"uninitialised \(lazy\) parameters.*Run one forward pass"):
        _search(model, loaders)
    model(next(iter(loaders[0]))[0])  # the dry run the message asks for
    lottery, _, _ = _search(model, loaders, rounds=1, dirpath="materialised")
    assert "net.1.weight" in lottery.masks
