"""Every recipe against its paper: composed with Hydra (no training), the real module built on the CPU, the prunable
tensors and per-level rates compared with a table of the papers' values kept here, not read from the recipes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

import lightning_lottery
from lightning_lottery.core import SparsitySchedule, select_prunable
from lightning_lottery.core.selection import matches
from lightning_lottery.modules.classifier import WarmupMultiStep

CONF = Path(lightning_lottery.__file__).parent / "conf"
REPO = Path(lightning_lottery.__file__).parents[1]
RECIPES = sorted(p.stem for p in (CONF / "recipe").glob("*.yaml"))
REWIND_WORDS = ("init", "finetune", "lr_rewind")

CONV = (nn.Conv2d,)
CONV_AND_LINEAR = (nn.Conv2d, nn.Linear)
TRANSFORMER_WEIGHTS = (
    "model.encoder.layers.*.self_attn.in_proj_weight",
    "model.encoder.layers.*.self_attn.out_proj.weight",
    "model.encoder.layers.*.linear1.weight",
    "model.encoder.layers.*.linear2.weight",
    "model.decoder.weight",
)


@dataclass(frozen=True)
class Paper:
    """What a recipe must prune, at which rate, per its source.

    ``layer``: per-level rate of each tensor pruned on its own (pattern -> rate); ``pooled``: tensors under one
    global threshold at ``pooled_rate`` per level (or ``cumulative`` targets), by name pattern or as the weights of
    every layer of ``pooled_kinds`` (less ``dense``); ``kept``: fraction of each tensor left after the last level
    (Han et al. publish the end point, not the rates); ``dense``: tensors that must stay unpruned. The prunable set
    must be exactly ``layer`` + ``pooled`` + ``kept``.
    """

    source: str
    layer: dict[str, float] = field(default_factory=dict)
    pooled: tuple[str, ...] = ()
    pooled_kinds: tuple[type[nn.Module], ...] = ()
    pooled_rate: float = 0.2
    cumulative: tuple[float, ...] = ()
    kept: dict[str, float] = field(default_factory=dict)
    dense: tuple[str, ...] = ()
    init: str | None = None
    controls: tuple[str, ...] = ()
    lr: float | None = None
    dropout: float | None = None
    supermask_keep: float | None = None
    overrides: tuple[str, ...] = ()  # only to build a smaller network with the same parameter names


def conv_net(depth: int, conv_rate: float, lr: float, dropout: float = 0.0) -> Paper:
    convs = {f"model.conv{i}.weight": conv_rate for i in range(1, depth + 1)}
    return Paper(
        "Frankle & Carbin 2019, Figure 2 (conv / fc 20% / output 10%) and Figure 6 (dropout learning rates)",
        layer={**convs, "model.fc1.weight": 0.2, "model.fc2.weight": 0.2, "model.fc3.weight": 0.1},
        init="glorot_normal",
        controls=("reinit", "random"),
        lr=lr,
        dropout=dropout,
    )


HAN_LENET5_KEPT = {"model.conv1.weight": 0.66, "model.conv2.weight": 0.12, "model.fc1.weight": 0.08}
HAN_LENET5_KEPT["model.fc2.weight"] = 0.19
SMALL_STUDY = "small-network study (papers.md): global over the named tensors, cumulative targets"

PAPERS: dict[str, Paper] = {
    "mnist_lenet300": Paper(
        "Frankle & Carbin 2019, Figure 2: 20% per layer, output layer 10%, Gaussian Glorot",
        layer={"model.fc1.weight": 0.2, "model.fc2.weight": 0.2, "model.fc3.weight": 0.1},
        init="glorot_normal",
        controls=("reinit", "random"),
        lr=1.2e-3,
    ),
    "mnist_lenet300_oneshot": Paper(
        "Frankle & Carbin 2019, Figure 4: one level straight to iterative level 7's sparsities (0.8^7, 0.9^7)",
        layer={"model.fc1.weight": 0.7902848, "model.fc2.weight": 0.7902848, "model.fc3.weight": 0.5217031},
        init="glorot_normal",
        controls=("reinit", "random"),
        lr=1.2e-3,
    ),
    "cifar10_conv2": conv_net(2, 0.1, 2e-4),
    "cifar10_conv4": conv_net(4, 0.1, 3e-4),
    "cifar10_conv6": conv_net(6, 0.15, 3e-4),
    "cifar10_conv2_dropout": conv_net(2, 0.1, 3e-4, dropout=0.5),
    "cifar10_conv4_dropout": conv_net(4, 0.1, 2e-4, dropout=0.5),
    "cifar10_conv6_dropout": conv_net(6, 0.15, 2e-4, dropout=0.5),
    "cifar10_resnet20": Paper(
        "Frankle & Carbin 2019, Figure 2: global, conv 20%, fc 0%, Gaussian Glorot",
        pooled_kinds=CONV,
        dense=("model.fc.weight",),
        init="glorot_normal",
    ),
    "cifar10_resnet18": Paper(  # an extension with the ResNet-20 protocol
        "cifar10_resnet20's protocol", pooled_kinds=CONV, dense=("model.fc.weight",), init="glorot_normal"
    ),
    "cifar10_vgg19": Paper(
        "Frankle & Carbin 2019, Figure 2: global, conv 20%, fc 0%, Gaussian Glorot",
        pooled_kinds=CONV,
        dense=("model.fc.weight",),
        init="glorot_normal",
    ),
    "mnist_lenet5": Paper(
        "Han et al. 2015, Table 3: weights kept per layer; retraining at 1/10 of the learning rate",
        kept=HAN_LENET5_KEPT,
        lr=0.01,
    ),
    "wikitext2_lstm": Paper("Yu et al. 2020: global 20% of every tensor, biases and embedding included", pooled=("*",)),
    "wikitext2_transformer": Paper(
        "Yu et al.'s protocol: attention (packed in_proj_weight), feed-forward and output weights",
        pooled=TRANSFORMER_WEIGHTS,
        dense=("model.embedding.weight", "*norm*", "*bias"),
    ),
    "imagenet_resnet50": Paper("Frankle et al. 2020: global 20%", pooled_kinds=CONV_AND_LINEAR),
    "places365_resnet50": Paper("Morcos et al. 2019: global 20%", pooled_kinds=CONV_AND_LINEAR),
    "imagenet_vgg19": Paper(
        "Morcos et al. 2019: global 20%, every convolution and linear layer",
        pooled_kinds=CONV_AND_LINEAR,
        overrides=("+model.arch_kwargs.hidden=64",),  # same names, ~21M instead of 144M parameters
    ),
    "transfer_cifar10": Paper(
        "imagenet_resnet50's schedule, new head dense", pooled_kinds=CONV_AND_LINEAR, dense=("model.fc.weight",)
    ),
    "transfer_mnist": Paper("cifar10_vgg19's schedule, new head dense", pooled_kinds=CONV, dense=("model.fc.weight",)),
    "transfer_demo_cifar_source": Paper(
        "a CPU demo (no paper rates): global 45%, head dense",
        pooled=("model.conv*.weight", "model.fc1.weight"),
        pooled_rate=0.45,
        dense=("model.fc2.weight",),
    ),
    "cora_gcn": Paper(
        SMALL_STUDY,
        pooled=("model.conv*.lin.weight",),
        cumulative=(0.2, 0.52, 0.8, 0.96, 0.996),
        dense=("model.fc.weight",),
        controls=("reinit",),
    ),
    "mnist_cnn_schedule": Paper(
        SMALL_STUDY,
        pooled=("model.conv1.weight", "model.conv2.weight"),
        cumulative=(0.2, 0.52, 0.8, 0.96, 0.9996),
        dense=("model.fc.weight",),
        controls=("reinit",),
    ),
    "mnist_lenet300_edgepopup": Paper("Ramanujan et al. 2020: top 50% per layer", supermask_keep=0.5),
    "cifar10_conv4_edgepopup": Paper("Ramanujan et al. 2020: top 50% per layer", supermask_keep=0.5),
}
for _demo in ("transfer_demo_cifar5to5", "transfer_demo_mnist"):
    PAPERS[_demo] = PAPERS["transfer_demo_cifar_source"]


def _compose(recipe: str, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "config", overrides=[f"recipe={recipe}", f"experiment={recipe}", "paths.output_dir=.", *overrides]
        )


def _module(cfg: DictConfig):
    """The recipe's LightningModule, built as the app builds it (data-derived sizes at the models' defaults)."""
    if "vocab_size" in cfg.model:
        cfg.model.vocab_size = 50  # the tensors' names and kinds do not depend on the vocabulary
    if cfg.model._target_.endswith("NodeClassifier"):
        pytest.importorskip("torch_geometric", reason="the GCN recipe needs PyTorch Geometric")
    return instantiate(cfg.model, _convert_="all")


def _expand(patterns: tuple[str, ...] | list[str], names: list[str]) -> set[str]:
    return {n for n in names if matches(n, list(patterns))}


def _pooled(paper: Paper, module: nn.Module, names: list[str]) -> set[str]:
    """The tensors the paper pools under one threshold: by pattern, or every weight of the given layer kinds."""
    kinds = paper.pooled_kinds
    by_kind = {f"{prefix}.weight" for prefix, m in module.named_modules() if kinds and isinstance(m, kinds)}
    return (_expand(paper.pooled, names) | by_kind) - _expand(paper.dense, names)


def test_every_recipe_has_a_paper_entry():
    assert sorted(PAPERS) == RECIPES, "a new recipe needs its paper's values in PAPERS"


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_prunes_what_its_paper_prunes(recipe: str):
    paper = PAPERS[recipe]
    cfg = _compose(recipe, *paper.overrides)
    lottery = cfg.lottery
    module = _module(cfg)
    names = [n for n, _ in module.named_parameters()]

    rewind = lottery.rewind
    assert rewind in REWIND_WORDS or isinstance(rewind, int) or re.fullmatch(r"epoch:\d+", str(rewind)), rewind
    assert tuple(lottery.get("controls") or ()) == paper.controls
    if paper.init is not None:
        assert cfg.model.init == paper.init
    if paper.lr is not None:
        assert cfg.model.optimizer.lr == pytest.approx(paper.lr)
    if paper.dropout is not None:
        assert cfg.model.arch_kwargs.dropout == paper.dropout
    if paper.supermask_keep is not None:  # edge-popup trains a mask, not a lottery search
        assert cfg.model.supermask.keep == paper.supermask_keep and lottery.rounds == 0
        return

    prunable = select_prunable(module, lottery.parameters, lottery.exclude)
    pooled = _pooled(paper, module, names)
    expected = _expand(tuple(paper.layer) + tuple(paper.kept), names) | pooled
    assert set(prunable) == expected, f"{paper.source}: prunes {set(prunable) ^ expected} wrongly"
    assert not (_expand(paper.dense, names) & set(prunable)), "a tensor the paper keeps dense is pruned"

    schedule = SparsitySchedule.build(lottery.amount, lottery.rounds, lottery.scope, lottery.layer_amounts)
    sizes = {name: tensor.numel() for name, tensor in prunable.items()}
    groups = {group.names: group for group in schedule.groups(sizes, 1)}  # after the first pruning level
    final = {group.names: group for group in schedule.groups(sizes, lottery.rounds)}
    for name, rate in paper.layer.items():
        for tensor in _expand([name], names):
            assert groups[(tensor,)].keep / sizes[tensor] == pytest.approx(1 - rate, abs=1e-3), tensor
    for name, fraction in paper.kept.items():
        (tensor,) = _expand([name], names)
        assert final[(tensor,)].keep / sizes[tensor] == pytest.approx(fraction, abs=0.005), tensor
    if pooled:
        group = next(g for g in groups.values() if len(g.names) > 1 or set(g.names) == pooled)
        assert set(group.names) == pooled, "one global threshold over exactly the paper's tensors"
        total = sum(sizes[n] for n in pooled)
        first = 1 - (paper.cumulative[0] if paper.cumulative else paper.pooled_rate)
        assert group.keep / total == pytest.approx(first, abs=1e-4)
        last = final[group.names].keep / total
        expected_last = 1 - paper.cumulative[-1] if paper.cumulative else (1 - paper.pooled_rate) ** lottery.rounds
        assert last == pytest.approx(expected_last, rel=1e-3, abs=1 / total)  # whole weights


def test_lenet5_fine_tunes_at_a_tenth_of_the_learning_rate():
    """Han et al. retrain at 1/10 of the original rate: `finetune` keeps the rate round 0 ended with."""
    cfg = _compose("mnist_lenet5")
    assert cfg.lottery.rewind == "finetune" and cfg.lottery.scope == "layer"
    schedule = WarmupMultiStep(cfg.model.warmup_steps, cfg.model.milestones, cfg.model.gamma)
    assert schedule(0) == 1.0 and schedule(cfg.trainer.max_steps - 1) == pytest.approx(0.1)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_header_names_files_that_exist(recipe: str):
    header = (CONF / "recipe" / f"{recipe}.yaml").read_text().split("defaults:")[0]
    assert "Source:" in header
    for path in re.findall(r"\b((?:docs|scripts)/[\w./-]*\w)", header):
        assert (REPO / path).exists(), f"{recipe} cites {path}, which does not exist"
    for other in re.findall(r"recipe=(\w+)", header):
        assert other in RECIPES, f"{recipe} points at recipe={other}, which does not exist"
