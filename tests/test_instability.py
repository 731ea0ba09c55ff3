"""Instability analysis through real Lightning fits: children, starting points, masks, BatchNorm, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from tiny import TinyNet, make_data
from torch import nn
from torch.utils.data import DataLoader

from lightning_lottery.analysis import instability, train_children, train_parent
from lightning_lottery.analysis.instability import InstabilityResult, child_seeds
from lightning_lottery.core import dense_state
from lightning_lottery.core.connectivity import PointMetrics, classification_evaluator
from lightning_lottery.ticket import Ticket

CPU = {"accelerator": "cpu"}


def _train_loader(shuffle: bool = True) -> DataLoader:
    return DataLoader(make_data(96), batch_size=16, shuffle=shuffle)


def _eval_batches() -> list[Any]:
    data = make_data(64, seed=1)
    return [(data.tensors[0], data.tensors[1])]


class TinyBatchNorm(TinyNet):
    def __init__(self) -> None:
        super().__init__(hidden=16)
        self.fc1 = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16))


def test_children_differ_only_through_the_data_order():
    torch.manual_seed(0)
    module = TinyNet(lr=0.05)
    before = dense_state(module)
    shuffled = train_children(module, _train_loader(), budget=12, seeds=(1, 2), trainer_kwargs=CPU)
    first, second = dense_state(shuffled.first), dense_state(shuffled.second)
    assert not torch.equal(first["fc1.weight"], second["fc1.weight"])
    assert torch.equal(dense_state(module)["fc1.weight"], before["fc1.weight"])  # the source is never trained
    fixed = train_children(module, _train_loader(shuffle=False), budget=12, seeds=(1, 2), trainer_kwargs=CPU)
    assert torch.equal(dense_state(fixed.first)["fc1.weight"], dense_state(fixed.second)["fc1.weight"])
    assert shuffled.first.training_steps == 12 and shuffled.label == "init"


def test_instability_from_init_evaluates_the_whole_path():
    torch.manual_seed(0)
    result = instability(
        TinyNet(lr=0.05), _train_loader(), budget=12, eval_data=_eval_batches(), points=5, trainer_kwargs=CPU
    )
    assert result.path.alphas == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert len(result.path.errors) == len(result.path.losses) == 5
    assert result.error_barrier == pytest.approx(max(result.path.errors) - sum(result.endpoint_errors) / 2)
    assert result.budget == 12 and result.start == "init" and result.sparsity == 0.0
    assert InstabilityResult.from_dict(result.to_dict()) == result


def test_endpoints_are_the_trained_children():
    torch.manual_seed(0)
    module = TinyNet(lr=0.05)
    children = train_children(module, _train_loader(), budget=10, seeds=(3, 4), trainer_kwargs=CPU)
    evaluate = classification_evaluator(_eval_batches())
    torch.manual_seed(0)
    result = instability(
        TinyNet(lr=0.05), _train_loader(), budget=10, seeds=(3, 4), eval_data=_eval_batches(), trainer_kwargs=CPU
    )
    assert result.endpoint_errors == (evaluate(children.first).error, evaluate(children.second).error)


def test_identical_children_are_flagged():
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="identical weights"):
        result = instability(
            TinyNet(lr=0.05), _train_loader(shuffle=False), budget=4, eval_data=_eval_batches(), trainer_kwargs=CPU
        )
    assert result.error_barrier == 0.0


def test_children_from_a_ticket_keep_masked_weights_at_zero():
    torch.manual_seed(0)
    source = TinyNet(lr=0.05)
    masks = {"fc1.weight": torch.rand(16, 8) > 0.6, "fc2.weight": torch.rand(3, 16) > 0.3}
    ticket = Ticket(masks, dense_state(source), round=2)
    children = train_children(TinyNet, _train_loader(), budget=15, start=ticket, trainer_kwargs=CPU)
    for child in (children.first, children.second):
        for name, layer in (("fc1.weight", child.fc1), ("fc2.weight", child.fc2)):
            assert (layer.weight_orig[~masks[name]] == 0).all()
            assert (layer.weight[~masks[name]] == 0).all()
            moved = layer.weight_orig[masks[name]] != ticket.weights[name][masks[name]]
            assert moved.any()  # the survivors did train
    result = instability(
        TinyNet, _train_loader(), budget=15, start=ticket, eval_data=_eval_batches(), trainer_kwargs=CPU
    )
    assert result.start == "ticket:round 2"
    expected = 1 - sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert result.sparsity == pytest.approx(expected)


def test_children_resume_the_parent_at_step_k(tmp_path: Path):
    torch.manual_seed(0)
    module = TinyNet(lr=0.05, optimizer="adam")
    saved = train_parent(module, _train_loader(), steps=[6, 3], dirpath=tmp_path, seed=5, trainer_kwargs=CPU)
    assert sorted(saved) == [3, 6] and all(p.is_file() for p in saved.values())
    children = train_children(module, _train_loader(), budget=4, start=saved[6], trainer_kwargs=CPU)
    assert children.start_step == 6 and children.label == "step:6"
    assert children.first.trainer.global_step == 10
    assert children.first.training_steps == 4  # resumed, not retrained from the start
    checkpoint = torch.load(saved[6], weights_only=True)
    assert checkpoint["optimizer_states"][0]["state"]  # Adam's moments travel with step k
    result = instability(
        module, _train_loader(), budget=4, start=str(saved[3]), eval_data=_eval_batches(), trainer_kwargs=CPU
    )
    assert result.start_step == 3 and result.start == "step:3"


def test_children_from_a_state_dict():
    torch.manual_seed(0)
    state = dense_state(TinyNet())
    children = train_children(TinyNet, _train_loader(), budget=3, start=state, trainer_kwargs=CPU)
    assert children.label == "state"
    assert torch.equal(dense_state(children.probe)["fc1.weight"], state["fc1.weight"])
    with pytest.raises(KeyError, match="does not fit"):
        train_children(TinyNet, _train_loader(), budget=3, start={"nope": torch.zeros(1)}, trainer_kwargs=CPU)


def test_batchnorm_statistics_come_from_the_training_data():
    x = make_data(64, seed=3).tensors[0] + 2.0
    bn_data = [(part, torch.zeros(len(part), dtype=torch.long)) for part in x.split(16)]
    checked = []

    def evaluate(module: nn.Module) -> PointMetrics:
        with torch.no_grad():
            activations = module.fc1[0](x)
        checked.append(torch.allclose(module.fc1[1].running_mean, activations.mean(0), atol=1e-5))
        return classification_evaluator(_eval_batches())(module)

    torch.manual_seed(0)
    result = instability(
        TinyBatchNorm(), _train_loader(), budget=8, evaluate=evaluate, points=3, bn_data=bn_data, trainer_kwargs=CPU
    )
    assert checked == [True, True, True] and len(result.path.errors) == 3


class _Data(pl.LightningDataModule):
    def train_dataloader(self) -> DataLoader:
        return _train_loader()

    def test_dataloader(self) -> DataLoader:
        data = make_data(64, seed=1)
        return DataLoader(data, batch_size=32)


def test_a_datamodule_supplies_training_and_test_data():
    torch.manual_seed(0)
    result = instability(TinyNet(lr=0.05), _Data(), budget=6, points=3, trainer_kwargs=CPU)
    assert len(result.path.errors) == 3 and 0.0 <= result.path.errors[0] <= 1.0


def test_bad_arguments_fail_before_training():
    with pytest.raises(ValueError, match="budget must be an int >= 1"):
        train_children(TinyNet, _train_loader(), budget=0)
    with pytest.raises(ValueError, match="two different ints"):
        train_children(TinyNet, _train_loader(), budget=1, seeds=(1, 1))
    with pytest.raises(TypeError, match="start must be None"):
        train_children(TinyNet, _train_loader(), budget=1, start=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a LightningDataModule"):
        instability(TinyNet, _train_loader(), budget=1)
    with pytest.raises(TypeError, match="not a LightningModule"):
        train_children(lambda: nn.Linear(2, 2), _train_loader(), budget=1)  # type: ignore[arg-type,return-value]
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        train_children(TinyNet, _train_loader(), budget=1, start="missing.ckpt")


def test_child_seeds_differ_and_depend_on_the_point():
    assert child_seeds(0, 100)[0] != child_seeds(0, 100)[1]
    assert child_seeds(0, 100) != child_seeds(0, 500) != child_seeds(1, 100)
    assert all(0 <= s < 2**32 for s in child_seeds(7, 3))
