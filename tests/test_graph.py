"""Node classification on graphs: the datamodules, the GCN module, and the lottery callback on GCN weights."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from tiny import trainer

from lightning_lottery import LotteryTicketCallback
from lightning_lottery.core import select_prunable
from lightning_lottery.data.graph import CORA_FILES, CoraDataModule, GraphBatch, SyntheticGraphDataModule
from lightning_lottery.modules.node_classifier import NodeClassifier

needs_pyg = pytest.mark.skipif(
    importlib.util.find_spec("torch_geometric") is None,
    reason="graph models need PyTorch Geometric: pip install -e '.[graph]'",
)

GCN_WEIGHTS = ("model.conv1.lin.weight", "model.conv2.lin.weight")


def _trainer(**kwargs: Any) -> pl.Trainer:
    return trainer(**{"max_epochs": 6, **kwargs})


def _module(data: SyntheticGraphDataModule, **kwargs: Any) -> NodeClassifier:
    arch_kwargs = {"in_channels": data.in_channels, "num_classes": data.num_classes, "hidden": 16, **kwargs}
    return NodeClassifier(arch_kwargs=arch_kwargs, lr=0.01)


class MaskWatcher(pl.Callback):
    """After every optimizer step: are the masked GCN weights zero, in the parameter and in what the forward uses?"""

    def __init__(self, lottery: LotteryTicketCallback) -> None:
        self.lottery = lottery
        self.checked = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.lottery.round == 0:
            return
        for name in GCN_WEIGHTS:
            lin = pl_module.get_submodule(name.rsplit(".", 1)[0])
            mask = self.lottery.masks[name]
            assert not mask.all()
            assert torch.all(lin.weight_orig[~mask] == 0), name
            assert torch.all(lin.weight[~mask] == 0), name
        self.checked += 1


def test_synthetic_graph_is_a_valid_planetoid_like_split():
    data = SyntheticGraphDataModule(num_nodes=200, num_classes=4, train_per_class=5, num_val=40, num_test=60)
    data.setup()
    assert data.split_sizes() == {"train": 20, "val": 40, "test": 60}
    g = data.graph
    masks = torch.stack([g["train_mask"], g["val_mask"], g["test_mask"]])
    assert int(masks.sum(0).max()) == 1  # disjoint
    src, dst = g["edge_index"]
    assert not torch.any(src == dst)
    edges = set(zip(src.tolist(), dst.tolist()))
    assert all((d, s) in edges for s, d in edges)  # undirected
    same = (g["y"][src] == g["y"][dst]).float().mean()
    assert same > 0.6  # homophilous (0.8 + chance)
    batch = next(iter(data.val_dataloader()[1]))
    assert isinstance(batch, GraphBatch) and torch.equal(batch.mask, g["test_mask"])


def test_subset_keeps_the_first_training_nodes_and_eval_batch_size_is_accepted():
    data = SyntheticGraphDataModule(subset=7, eval_batch_size=100)
    data.setup()
    assert data.split_sizes()["train"] == 7


@needs_pyg
def test_module_logs_the_vision_classifier_names_and_rebuilds_from_hparams():
    data = SyntheticGraphDataModule()
    model = _module(data)
    at_validation: list[set[str]] = []

    class Peek(pl.Callback):  # what the lottery callback reads at each validation
        def on_validation_end(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking:
                at_validation.append(set(trainer.callback_metrics))

    trainer = _trainer(max_epochs=3, callbacks=[Peek()])
    trainer.fit(model, data)
    names = {"train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"}
    assert names == set(trainer.callback_metrics)
    assert at_validation and all({"train_acc", "test_acc"} <= seen for seen in at_validation)
    assert 0.0 <= float(trainer.callback_metrics["train_acc"]) <= 1.0
    fresh = type(model)(**model.hparams)  # what rewind="reinit" does
    assert fresh.state_dict().keys() == model.state_dict().keys()
    assert not torch.equal(fresh.model.conv1.lin.weight, model.model.conv1.lin.weight)


@needs_pyg
def test_default_selection_misses_pyg_linear_so_recipes_name_the_gcn_weights():
    model = _module(SyntheticGraphDataModule())
    assert list(select_prunable(model)) == ["model.fc.weight"]  # PyG's Linear is not an nn.Linear
    assert list(select_prunable(model, ["model.conv*.lin.weight"])) == list(GCN_WEIGHTS)


@needs_pyg
@pytest.mark.parametrize("controls", [[], ["reinit"]], ids=["ticket", "with-reinit"])
def test_callback_masks_gcn_weights_during_training(controls: list[str], tmp_path: Path):
    data = SyntheticGraphDataModule()
    model = _module(data)
    lottery = LotteryTicketCallback(
        rounds=2, amount=[0.5, 0.9], scope="global", parameters=["model.conv*.lin.weight"], controls=controls, seed=0
    )
    watcher = MaskWatcher(lottery)
    trainer = _trainer(callbacks=[lottery, watcher])
    trainer.fit(model, data)

    branches = 1 + len(controls)
    assert watcher.checked == 2 * 6 * branches  # every step of every branch of levels 1 and 2
    total = sum(model.get_parameter(n.replace(".weight", ".weight_orig")).numel() for n in GCN_WEIGHTS)
    expected = [0] + [round(0.5 * total)] * branches + [round(0.9 * total)] * branches
    assert [r["total"] - r["remaining"] for r in lottery.history] == expected
    assert set(lottery.history[-1]["tensor_sparsity"]) == set(GCN_WEIGHTS)
    assert not hasattr(model.model.fc, "weight_mask")  # the head stays dense
    assert all(r["best"] is not None and "test_acc" in r["metrics"] for r in lottery.history)

    # A checkpoint holds dense weights (zeros where masked) and loads into a fresh, unpruned module.
    path = tmp_path / "gcn.ckpt"
    trainer.save_checkpoint(path)
    loaded = NodeClassifier.load_from_checkpoint(path)
    for name in GCN_WEIGHTS:
        used = model.get_submodule(name.rsplit(".", 1)[0]).weight.detach()  # what the pruned model computes with
        assert torch.equal(loaded.get_parameter(name), used)
        assert torch.all(loaded.get_parameter(name)[~lottery.masks[name]] == 0)


def test_missing_cora_files_say_where_to_put_them(tmp_path: Path):
    data = CoraDataModule(root=tmp_path / "nothing", cache_dir=tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match=r"(?s)Cora not found under .*nothing.*ind\.cora.*LOTTERY_DATA"):
        data.setup()


def test_missing_pyg_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setitem(sys.modules, "torch_geometric", None)  # import torch_geometric now raises ImportError
    with pytest.raises(ImportError, match=r"PyTorch Geometric.*lightning-lottery\[graph\]"):
        CoraDataModule(root=tmp_path, cache_dir=tmp_path / "cache", download=True).setup()  # downloads need PyG
    with pytest.raises(ImportError, match=r"PyTorch Geometric"):
        NodeClassifier(arch_kwargs={"in_channels": 4, "num_classes": 2})


def test_cora_is_read_in_place_and_has_the_public_split(shared_data: Path, tmp_path: Path):
    raw = shared_data / "Cora" / "raw"
    if not all((raw / name).is_file() for name in CORA_FILES):
        pytest.skip(f"Cora's Planetoid files are not in {raw}")
    before = sorted(p.name for p in (shared_data / "Cora").iterdir())
    data = CoraDataModule(root=shared_data, cache_dir=tmp_path / "cache")
    data.setup()
    assert sorted(p.name for p in (shared_data / "Cora").iterdir()) == before  # nothing written to the data root
    assert not (tmp_path / "cache").exists()  # nor to the cache: it only holds downloads
    assert data.split_sizes() == {"train": 140, "val": 500, "test": 1000}
    g = data.graph
    assert g["x"].shape == (2708, 1433) and g["edge_index"].shape == (2, 10556) and int(g["y"].max()) == 6
    assert torch.allclose(g["x"].sum(1)[g["x"].sum(1) > 0], torch.ones(1))  # row-normalised
    # Without the root's files, a cache that has them is used.
    shutil.copytree(raw, tmp_path / "cache" / "Cora" / "raw")
    again = CoraDataModule(root=tmp_path / "empty", cache_dir=tmp_path / "cache")
    again.setup()
    assert torch.equal(again.graph["edge_index"], g["edge_index"])
