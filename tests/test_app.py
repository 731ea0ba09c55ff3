"""The lightning-lottery Hydra app: every recipe composes and runs its fast preset; sweeps get a report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fake_images import write_image_folder
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig
from wandb_log import artifacts, config_keys, history_keys, metric_definitions

import lightning_lottery
from lightning_lottery import LotteryTicketCallback
from lightning_lottery.app import ConfigError, run
from lightning_lottery.cli.errors import describe

CONF = Path(lightning_lottery.__file__).parent / "conf"
RECIPES = sorted(p.stem for p in (CONF / "recipe").glob("*.yaml"))
TINY_CORPUS = "the cat sat on the mat <unk> a dog ran far away from the cat and the mat"


def _compose(recipe: str, tmp: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "config",
            overrides=[f"recipe={recipe}", f"experiment={recipe}", f"paths.output_dir={tmp}", *overrides],
        )


def _offline_data(recipe: str, tmp: Path) -> list[str]:
    """Overrides that swap a recipe's dataset for tiny synthetic data of the same shape."""
    if recipe.startswith("wikitext2"):
        folder = tmp / "corpus" / "wikitext-2"
        folder.mkdir(parents=True, exist_ok=True)
        for split, repeat in (("train", 40), ("valid", 8), ("test", 8)):
            (folder / f"{split}.txt").write_text((TINY_CORPUS + "\n") * repeat)
        return [f"data.root={tmp / 'corpus'}"]
    if recipe.startswith(("imagenet", "places365")):
        # A tiny fake ImageFolder. Places365 runs through the ImageFolder module: torchvision's Places365 checks the
        # MD5 of its file lists, which no fake can pass (tests/test_folder_data.py covers it with the check patched).
        folder = recipe.split("_")[0]
        write_image_folder(tmp / "images" / folder)
        swap = ["data=image_folder", f"data.folder={folder}"] if folder == "places365" else []
        return [*swap, f"data.root={tmp / 'images'}"]
    if recipe.startswith("cora"):  # a small random graph; the GCN itself needs PyG
        pytest.importorskip("torch_geometric", reason="graph recipes need PyTorch Geometric: pip install -e '.[graph]'")
        return ["data=synthetic_graph"]
    shape = "[1,28,28]" if recipe.startswith("mnist") else "[3,32,32]"
    return ["data=synthetic", f"data.image_shape={shape}", "data.num_train=600", "data.num_test=100"]


def test_the_recipes_we_promise_exist():
    expected = {"mnist_lenet300", "mnist_lenet5", "cifar10_conv2", "cifar10_conv4", "cifar10_conv6"}
    expected |= {"cifar10_vgg19", "cifar10_resnet20", "cifar10_resnet18", "wikitext2_lstm", "wikitext2_transformer"}
    expected |= {"cifar10_conv2_dropout", "cifar10_conv4_dropout", "cifar10_conv6_dropout"}
    assert expected <= set(RECIPES)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_composes_and_states_its_source(recipe: str, tmp_path: Path):
    header = (CONF / "recipe" / f"{recipe}.yaml").read_text().split("defaults:")[0]
    assert "Source:" in header
    assert "should reproduce" in header.lower() or "should show" in header.lower()
    for preset in ("full", "fast"):
        cfg = _compose(recipe, tmp_path, f"preset={preset}")
        lottery = instantiate(cfg.lottery)  # validates every lottery argument
        assert isinstance(lottery, LotteryTicketCallback)
        assert cfg.model._target_.startswith("lightning_lottery.modules.")
        assert cfg.data._target_.startswith("lightning_lottery.data.")
        assert cfg.lottery.seed == cfg.seed
    full, fast = _compose(recipe, tmp_path), _compose(recipe, tmp_path, "preset=fast")
    # 0: supermask recipes (dense round only); 1: one-shot recipes (nothing to shorten)
    assert fast.lottery.rounds < full.lottery.rounds or full.lottery.rounds <= 1
    assert 0 < fast.trainer.max_steps <= 50


def test_overrides_work_as_hydra_users_expect(tmp_path: Path):
    cfg = _compose("mnist_lenet300", tmp_path, "lottery.rounds=10", "lottery.rewind=500", "trainer.max_epochs=5")
    assert (cfg.lottery.rounds, cfg.lottery.rewind, cfg.trainer.max_epochs) == (10, 500, 5)
    assert cfg.lottery.layer_amounts == {"model.fc3.weight": 0.1}
    assert _compose("mnist_lenet300", tmp_path, "model.init=kaiming_normal").model.init == "kaiming_normal"


@pytest.mark.parametrize("recipe", RECIPES)
def test_fast_preset_runs_end_to_end(recipe: str, tmp_path: Path):
    out = tmp_path / "run"
    cfg = _compose(recipe, out, "preset=fast", "trainer.enable_progress_bar=false", *_offline_data(recipe, tmp_path))
    torch.set_num_threads(1)
    result = run(cfg)
    history = result["history"]
    assert [r["round"] for r in history if r["branch"] == "ticket"] == list(range(cfg.lottery.rounds + 1))
    branches = 1 + cfg.lottery.rounds * (1 + len(cfg.lottery.controls))
    assert len(history) == branches, "every control is a branch of every level"
    if cfg.lottery.rounds:  # supermask recipes (edge-popup) train round 0 only
        assert history[-1]["sparsity"] >= history[1]["sparsity"] > 0
    assert all(r["best"] is not None for r in history)
    lottery_dir = out / "lottery"
    assert (lottery_dir / "history.json").is_file()
    assert (lottery_dir / f"round_{cfg.lottery.rounds:02d}" / "ticket" / "ticket.safetensors").is_file()
    info = json.loads((out / "run.json").read_text())
    assert info["experiment"] == recipe and info["seed"] == cfg.seed
    assert (out / "report" / "report.md").is_file()
    assert (out / "checkpoints" / "last.ckpt").exists()
    for checkpoint in (out / "checkpoints").glob("*.ckpt"):  # resumable: no pickled objects beyond tensors
        assert "state_dict" in torch.load(checkpoint, map_location="cpu", weights_only=True)


def test_bad_lottery_config_fails_before_training(tmp_path: Path):
    cfg = _compose("mnist_lenet300", tmp_path, "lottery.amount=1.5", *_offline_data("mnist_lenet300", tmp_path))
    with pytest.raises(ConfigError, match=r"^lottery\.amount: `amount=1.5` is outside \(0, 1\)"):
        run(cfg)
    assert not any(tmp_path.glob("lottery")) and not any(tmp_path.glob("checkpoints"))


def test_missing_data_says_where_it_looked_and_how_to_point_at_it(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("LOTTERY_DATA", raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = _compose("wikitext2_lstm", tmp_path, "preset=fast", f"paths.data_root={empty}")
    with pytest.raises(FileNotFoundError, match=r"(?s)wikitext-2.*not found under.*empty.*LOTTERY_DATA") as refused:
        run(cfg)
    assert describe(refused.value).startswith("data.root: Language-model corpus 'wikitext-2' not found")  # one line


def test_console_command_runs_a_sweep_and_reports_it(tmp_path: Path):
    sweep = tmp_path / "sweep"
    command = [
        str(Path(sys.executable).parent / "lightning-lottery"),
        "-m",
        "preset=fast",
        "lottery.controls=[reinit,random]",
        "seed=0,1",
        "data=synthetic",
        "trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "report"]
    report = sweep / "report"
    assert (report / "summary.csv").is_file()
    text = (report / "report.md").read_text()
    assert "ticket (rewind to θ₀)" in text and "random reinit" in text and "random pruning" in text
    assert "(n=2)" in text, "the two seeds of each branch averaged, with their confidence interval"
    pngs = list(report.glob("*.png"))  # metric, early stop, learning curves, layer-wise sparsity
    assert len(pngs) == 4 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_wandb_offline_run_records_per_round_metrics(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    cfg = _compose(
        "mnist_lenet300",
        out,
        "preset=fast",
        "logger=wandb",
        "trainer.enable_progress_bar=false",
        *_offline_data("mnist_lenet300", tmp_path),
    )
    run_result = run(cfg)
    import wandb

    wandb.finish()
    logs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 1
    keys = history_keys(logs[0])
    assert {"round", "sparsity", "remaining_weights", "round_step"} <= keys
    assert {f"round_{r:02d}/val_loss" for r in range(3)} <= keys
    assert metric_definitions(logs[0])["round_*"] == "round_step"  # rounds overlay on the within-round step
    assert [t for _, t in artifacts(logs[0])].count("lottery-ticket") == len(run_result["history"])
    assert {"lottery", "model", "experiment"} <= config_keys(logs[0])
