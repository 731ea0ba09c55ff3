"""Ticket transfer through the app: a source search, then transfer runs of its tickets (Hydra compose API)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

import lightning_lottery
from lightning_lottery import Ticket, TicketError
from lightning_lottery.app import run

CONF = Path(lightning_lottery.__file__).parent / "conf"
HEAD = ("model.fc2.weight", "model.fc2.bias")  # LeNet-5's classifier: replaced on the target
SOURCE_ROUNDS = 3  # more than preset=fast's 2: a transfer run's rounds must come from the tickets
LABELS = {
    "transferred": "transferred ticket",
    "random": "random ticket",
    "reinit": "random reinit of transferred mask",
    "target": "target ticket (found on the target)",
}


def _compose(recipe: str, out: Path, *overrides: str) -> DictConfig:
    quiet = ["preset=fast", "trainer.enable_progress_bar=false", "report=false", "logger=none"]
    quiet += ["trainer.max_steps=10", "trainer.val_check_interval=5", "lottery.rewind=2"]  # seconds per run
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "config",
            overrides=[f"recipe={recipe}", f"experiment={recipe}", f"paths.output_dir={out}", *quiet, *overrides],
        )


def _synthetic(shape: str) -> list[str]:
    return ["data=synthetic", f"data.image_shape={shape}", "data.num_train=300", "data.num_test=100"]


def _tickets(run_dir: Path) -> list[Ticket]:
    return [Ticket.load(p) for p in sorted((run_dir / "lottery").glob("round_*/ticket/ticket.safetensors"))]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's source search (LeNet-5 on RGB 32x32), with its head pruned too (lottery.exclude=[])."""
    out = tmp_path_factory.mktemp("source")
    torch.set_num_threads(1)
    cfg = _compose(
        "transfer_demo_cifar_source",
        out,
        f"lottery.rounds={SOURCE_ROUNDS}",
        "lottery.exclude=[]",
        "data.num_classes=5",
        *_synthetic("[3,32,32]"),
    )
    run(cfg)
    assert len(_tickets(out)) == SOURCE_ROUNDS + 1
    assert "model.fc2.weight" in _tickets(out)[-1].masks
    return out


def _transfer(source: Path, out: Path, variant: str) -> tuple[Path, DictConfig, list[dict]]:
    # The demo's MNIST target: greyscale 28x28 stand-in data, resized to 32 and replicated to 3 channels.
    cfg = _compose(
        "transfer_demo_mnist",
        out,
        f"transfer.ticket={source}",
        f"transfer.variant={variant}",
        "seed=3",
        *_synthetic("[1,28,28]"),
    )
    torch.set_num_threads(1)
    return out, cfg, run(cfg)["history"]


@pytest.fixture(scope="module")
def transfer(source: Path, tmp_path_factory: pytest.TempPathFactory):
    """``transfer(variant)``: (run folder, config, history) of that variant's run, each run once per module."""
    done: dict[str, tuple[Path, DictConfig, list[dict]]] = {}

    def get(variant: str) -> tuple[Path, DictConfig, list[dict]]:
        if variant not in done:
            done[variant] = _transfer(source, tmp_path_factory.mktemp(variant), variant)
        return done[variant]

    return get


def _target_init(cfg: DictConfig) -> dict[str, torch.Tensor]:
    """The target model's own initial weights: the app seeds, then builds the model (cfg was filled by run)."""
    pl.seed_everything(cfg.seed, verbose=False)
    return {k: v.clone() for k, v in instantiate(cfg.model).state_dict().items()}


@pytest.mark.parametrize("variant", ["transferred", "random", "reinit", "target"])
def test_transfer_run_trains_one_round_per_source_ticket(transfer, variant: str):
    out, cfg, history = transfer(variant)
    info = json.loads((out / "run.json").read_text())
    assert info["variant"] == LABELS[variant]
    assert info["config"]["transfer"]["variant"] == variant
    expected_rounds = SOURCE_ROUNDS if variant != "target" else cfg.lottery.rounds  # target: an ordinary search
    assert [r["round"] for r in history] == list(range(expected_rounds + 1))
    settings = json.loads((out / "lottery" / "history.json").read_text())["settings"]
    if variant == "target":
        assert settings["transfer"] is None
        assert "model.fc2.weight" not in history[-1]["tensor_sparsity"], "the recipe keeps the head dense"
    else:
        assert settings["transfer"]["variant"] == variant
        assert len(settings["transfer"]["sources"]) == SOURCE_ROUNDS + 1


def test_transferred_masks_are_the_sources_and_the_head_is_dense_and_fresh(source: Path, transfer):
    out, cfg, history = transfer("transferred")
    sources, transfers = _tickets(source), _tickets(out)
    assert len(transfers) == len(sources) == len(history)
    init = _target_init(cfg)
    for r, (src, dst) in enumerate(zip(sources, transfers)):
        body = set(src.masks) - set(HEAD)
        assert set(dst.masks) == body, f"round {r}: no mask on the head"
        for name in body:
            assert torch.equal(dst.masks[name], src.masks[name]), (r, name)
            assert torch.equal(dst.weights[name], src.weights[name]), (r, name)  # the source's rewind weights
        for name in HEAD:  # the target's own init, every round, not the source's head
            assert torch.equal(dst.weights[name], init[name]), (r, name)
            assert dst.weights[name].shape[0] == 10 != src.weights[name].shape[0]
        assert history[r]["sparsity"] == pytest.approx(dst.sparsity)
    assert sources[-1].masks["model.fc2.weight"].sum() < sources[-1].masks["model.fc2.weight"].numel()
    assert history[-1]["tensor_sparsity"].keys() == transfers[-1].masks.keys()
    # After training (the last checkpoint: dense tensors, pruned entries zero), the body still carries the last
    # source mask exactly, and the head is dense.
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    for name, mask in sources[-1].masks.items():
        if name not in HEAD:
            assert torch.equal(state[name] != 0, mask), name
    assert bool((state["model.fc2.weight"] != 0).all())


def test_random_and_reinit_controls_change_what_they_should(source: Path, transfer):
    sources = _tickets(source)
    random_dir, _, _ = transfer("random")
    reinit_dir, reinit_cfg, _ = transfer("reinit")
    init = _target_init(reinit_cfg)
    last = SOURCE_ROUNDS
    src, random_ticket, reinit_ticket = (
        sources[last],
        _tickets(random_dir)[last],
        _tickets(reinit_dir)[last],
    )
    for name in set(src.masks) - set(HEAD):
        # random: the same count per tensor at other positions, over the source's weights
        assert int(random_ticket.masks[name].sum()) == int(src.masks[name].sum()), name
        assert torch.equal(random_ticket.weights[name], src.weights[name]), name
        # reinit: the source's mask over the target's own initial weights
        assert torch.equal(reinit_ticket.masks[name], src.masks[name]), name
        assert torch.equal(reinit_ticket.weights[name], init[name]), name
    assert not torch.equal(random_ticket.masks["model.fc1.weight"], src.masks["model.fc1.weight"])


def test_a_ticket_of_another_architecture_is_refused_before_training(source: Path, tmp_path: Path):
    # LeNet-300-100 on 28x28 greyscale: none of the ticket's tensors fit.
    cfg = _compose(
        "mnist_lenet300",
        tmp_path,
        f"transfer.ticket={source}",
        "transfer.reinit=[model.fc3.*]",
        *_synthetic("[1,28,28]"),
    )
    with pytest.raises(TicketError, match=r"(?s)ticket 0 of the transfer.*does not fit.*model.conv1.weight"):
        run(cfg)
    assert not (tmp_path / "lottery").exists()


def test_forgetting_resize_and_channels_is_refused_before_training(source: Path, tmp_path: Path):
    # The same LeNet-5 built for 28x28 greyscale input: every shape that depends on the input is listed.
    cfg = _compose(
        "transfer_demo_mnist",
        tmp_path,
        f"transfer.ticket={source}",
        "data.resize=null",
        "data.channels=1",
        "model.arch_kwargs.image_size=28",
        *_synthetic("[1,28,28]"),
    )
    with pytest.raises(TicketError) as err:
        run(cfg)
    message = str(err.value)
    assert "model.conv1.weight: ticket (20, 3, 5, 5) vs model (20, 1, 5, 5)" in message
    assert "model.fc1.weight: ticket (500, 1250) vs model (500, 800)" in message
    assert not (tmp_path / "lottery").exists()
