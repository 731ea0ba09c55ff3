"""The small-CNN schedule study: exact cumulative sparsities, and what each variant rewinds to."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from lightning_lottery import LotteryTicketCallback
from lightning_lottery.data.vision import SyntheticImageDataModule
from lightning_lottery.models.vision import MnistCNN, build_model, output_parameter
from lightning_lottery.modules.classifier import ImageClassifier

SCHEDULE = [0.2, 0.52, 0.8, 0.96, 0.9996]
CONV = ["model.conv1.weight", "model.conv2.weight"]


def _data() -> SyntheticImageDataModule:
    return SyntheticImageDataModule(num_train=64, val_size=32, num_test=32, batch_size=32, image_shape=(1, 28, 28))


def _trainer(callbacks: list[pl.Callback], steps: int = 2) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )


def _model() -> ImageClassifier:
    return ImageClassifier(arch="mnist_cnn", init="default", optimizer="adagrad", lr=0.05)


class RoundStarts(pl.Callback):
    """The effective conv weights at the start of every round (fit-loop run), and at the end of round 0."""

    def __init__(self) -> None:
        self.starts: list[dict[str, torch.Tensor]] = []
        self.end_of_round0: dict[str, torch.Tensor] | None = None

    @staticmethod
    def _weights(module: pl.LightningModule) -> dict[str, torch.Tensor]:
        return {name: module.get_submodule(name[: -len(".weight")]).weight.detach().clone() for name in CONV}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.starts.append(self._weights(pl_module))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.end_of_round0 is None:
            self.end_of_round0 = self._weights(pl_module)


def test_mnist_cnn_is_the_study_network():
    model = build_model("mnist_cnn")
    assert isinstance(model, MnistCNN) and output_parameter("mnist_cnn") == "fc.weight"
    assert model.conv1.weight.numel() + model.conv2.weight.numel() == 13_200
    out = model(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10) and bool(((out > 0) & (out < 1)).all())  # sigmoid output


def test_callback_reaches_each_cumulative_target_exactly():
    lottery = LotteryTicketCallback(rounds=5, amount=SCHEDULE, scope="global", parameters=CONV, monitor=None)
    model = _model()
    _trainer([lottery], steps=1).fit(model, _data())
    pruned = [r["total"] - r["remaining"] for r in lottery.history]
    assert [r["total"] for r in lottery.history] == [13_200] * 6
    assert pruned == [0, 2640, 6864, 10560, 12672, 13195]  # round half up of 13,200 x target; 5 weights left
    assert set(lottery.history[-1]["tensor_sparsity"]) == set(CONV)
    assert not hasattr(model.model.fc, "weight_mask")  # only the conv layers are pruned
    kept = sum(int(m.sum()) for m in lottery.masks.values())
    assert kept == 5


def _level_one(rewind: str, controls: tuple[str, ...] = ()) -> tuple[RoundStarts, LotteryTicketCallback, dict]:
    torch.manual_seed(0)
    model = _model()
    theta0 = {name: model.get_parameter(name).detach().clone() for name in CONV}
    lottery = LotteryTicketCallback(
        rounds=1,
        amount=[0.5],
        scope="global",
        parameters=CONV,
        rewind=rewind,
        controls=controls,
        seed=3,
        save_tickets=False,
    )
    starts = RoundStarts()
    torch.manual_seed(1)
    _trainer([lottery, starts]).fit(model, _data())
    return starts, lottery, theta0


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The study's variants: the ticket (θ₀) with its reinit control in one search, LR rewinding in another."""
    # Module-scoped, so set up before the per-test working directory: run in a temporary one of its own.
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("variants"))
        return {"init": _level_one("init", ("reinit",)), "lr_rewind": _level_one("lr_rewind")}


def test_the_variants_prune_the_same_weights(variants: dict[str, Any]):
    masks = [variants[r][1].masks for r in ("lr_rewind", "init")]
    assert all(torch.equal(m[name], masks[0][name]) for m in masks for name in CONV)
    assert all(
        torch.equal(v[0].end_of_round0[n], variants["init"][0].end_of_round0[n])
        for v in variants.values()
        for n in CONV
    )


def test_init_rewinds_to_theta0(variants: dict[str, Any]):
    starts, lottery, theta0 = variants["init"]
    for name in CONV:
        assert torch.equal(starts.starts[1][name], theta0[name] * lottery.masks[name])


def test_lr_rewind_continues_from_the_trained_weights(variants: dict[str, Any]):
    starts, lottery, theta0 = variants["lr_rewind"]
    for name in CONV:
        trained = starts.end_of_round0[name]
        assert not torch.equal(trained, theta0[name])
        assert torch.equal(starts.starts[1][name], trained * lottery.masks[name])


def test_reinit_control_draws_a_fresh_initialisation(variants: dict[str, Any]):
    starts, lottery, theta0 = variants["init"]
    for name in CONV:
        start, mask = starts.starts[2][name], lottery.masks[name]
        assert torch.all(start[~mask] == 0)
        assert not torch.equal(start[mask], theta0[name][mask])
        assert not torch.equal(start[mask], starts.end_of_round0[name][mask])
        # From the same distribution as θ₀ (PyTorch's default conv init: uniform within ±1/sqrt(fan_in)).
        bound = 1 / (starts.starts[0][name][0].numel() ** 0.5)
        assert float(start.abs().max()) <= bound
        assert float(start[mask].std()) == pytest.approx(float(theta0[name].std()), rel=0.15)
