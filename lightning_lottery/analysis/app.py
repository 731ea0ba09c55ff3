"""The ``analysis=instability`` mode of the ``lightning-lottery`` command: measure instability instead of searching.

    lightning-lottery recipe=mnist_lenet300 analysis=instability analysis.points=[0,100,500,2000] analysis.budget=3000
    lightning-lottery recipe=mnist_lenet300 analysis=instability analysis.points=[] analysis.tickets=<search folder>

The recipe's data, model and trainer settings are used as they are. For starting points k > 0 one parent run trains
from θ₀ to the largest k, checkpointing after each k; two children per point resume the checkpoint with different
data orders and train ``budget`` more steps. With ``tickets``, every level's ticket of a finished search is measured
the same way (children start from the ticket's masks and rewind weights). Writes ``instability.json`` (updated
after every point, so a long run shows its progress) and figures under ``instability/``.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lightning_lottery._rng import derive_seed
from lightning_lottery.analysis.instability import InstabilityResult, child_seeds, instability, train_parent
from lightning_lottery.analysis.report import write_figures
from lightning_lottery.core.connectivity import DEFAULT_THRESHOLD, earliest_stable, evenly_spaced
from lightning_lottery.io import atomic_write_json
from lightning_lottery.ticket import Ticket, TicketError

ANALYSES = ("instability",)
_EVAL_SPLITS = ("test", "val", "train")
# Trainer settings the children share with the recipe; the rest (budget, logging, validation) is the analysis'.
_TRAINER_KEYS = (
    "accelerator",
    "precision",
    "gradient_clip_val",
    "gradient_clip_algorithm",
    "accumulate_grad_batches",
    "deterministic",
    "benchmark",
    "limit_train_batches",
)
_TICKET_SEED_KEY = 1_000_000  # children of tickets get other seeds than children of steps


def _int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`analysis.{name}={value!r}` must be an int >= {minimum}")
    return value


@dataclass(frozen=True)
class InstabilitySettings:
    """The ``analysis`` config group, validated before any training.

    Attributes:
        points: global steps k of one parent run from which children start (0: θ₀); ``[]`` to skip.
        budget: optimizer steps each child trains after its start.
        path_points: evenly spaced α on each path, endpoints included.
        eval_split: the datamodule split where error and loss are measured.
        bn_batches: training batches that re-estimate BatchNorm statistics at every point.
        threshold: stable means an error barrier below this (the paper: 0.02).
        tickets: a finished search's folder (or its ``lottery/``): measure every level's ticket too.
        keep_checkpoints: keep the parent's checkpoints (``instability/parent/step_<k>.ckpt``).
    """

    points: tuple[int, ...] = (0, 100, 500, 2000)
    budget: int = 2000
    path_points: int = 11
    eval_split: str = "test"
    bn_batches: int = 100
    threshold: float = DEFAULT_THRESHOLD
    tickets: str | None = None
    keep_checkpoints: bool = False

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> InstabilitySettings:
        node = dict(node)
        name = node.pop("name", "instability")
        if name not in ANALYSES:
            raise ValueError(f"`analysis.name={name!r}` is not one of {list(ANALYSES)}")
        allowed = [f.name for f in fields(cls)]
        if unknown := sorted(set(node) - set(allowed)):
            raise ValueError(f"unknown setting(s) {unknown}; allowed: {allowed}")
        points = node.get("points", cls.points)
        if not isinstance(points, Sequence) or isinstance(points, str):
            raise ValueError(f"`analysis.points={points!r}` must be a list of steps, e.g. [0,100,500,2000]")
        points = tuple(_int(k, "points[...]", 0) for k in points)
        if list(points) != sorted(set(points)):
            raise ValueError(f"`analysis.points={list(points)}` must be strictly increasing steps")
        evenly_spaced(_int(node.get("path_points", cls.path_points), "path_points", 2))
        eval_split = node.get("eval_split", cls.eval_split)
        if eval_split not in _EVAL_SPLITS:
            raise ValueError(f"`analysis.eval_split={eval_split!r}` is not one of {list(_EVAL_SPLITS)}")
        threshold = node.get("threshold", cls.threshold)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
            raise ValueError(f"`analysis.threshold={threshold!r}` must be a fraction in (0, 1), e.g. 0.02")
        tickets = node.get("tickets")
        if not points and not tickets:
            raise ValueError("nothing to measure: give `analysis.points` (steps) or `analysis.tickets` (a search)")
        return cls(
            points=points,
            budget=_int(node.get("budget", cls.budget), "budget", 1),
            path_points=node.get("path_points", cls.path_points),
            eval_split=eval_split,
            bn_batches=_int(node.get("bn_batches", cls.bn_batches), "bn_batches", 1),
            threshold=float(threshold),
            tickets=str(tickets) if tickets else None,
            keep_checkpoints=bool(node.get("keep_checkpoints", False)),
        )


def ticket_files(folder: str | Path) -> list[Path]:
    """The main-line ticket of every level of a search, in level order: ``round_XX/ticket/ticket.safetensors``
    (or ``round_XX/ticket.safetensors``), under ``folder`` or ``folder/lottery``."""
    root = Path(folder)
    if (root / "lottery").is_dir():
        root = root / "lottery"
    if not root.is_dir():
        raise ValueError(f"`analysis.tickets={str(folder)!r}` is not a folder")
    found = {}
    for level in root.glob("round_*"):
        match = re.fullmatch(r"round_(\d+)", level.name)
        if match is None:
            continue
        for candidate in (level / "ticket" / "ticket.safetensors", level / "ticket.safetensors"):
            if candidate.is_file():
                found[int(match.group(1))] = candidate
                break
    if not found:
        raise ValueError(
            f"`analysis.tickets={str(folder)!r}`: no round_XX/ticket/ticket.safetensors or round_XX/ticket.safetensors "
            f"under {root} (point it at a search's run folder or its lottery/ folder)"
        )
    return [found[r] for r in sorted(found)]


def _trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(trainer, dict)
    kwargs = {k: trainer[k] for k in _TRAINER_KEYS if trainer.get(k) is not None}
    return {**kwargs, "devices": 1}


def _header(cfg: DictConfig, settings: InstabilitySettings) -> dict[str, Any]:
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    return {
        "analysis": "instability",
        "experiment": cfg.experiment,
        "seed": cfg.seed,
        "settings": {**asdict(settings), "points": list(settings.points)},
        "overrides": overrides,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "points": [],
        "tickets": [],
    }


def _say(entry: Mapping[str, Any], what: str) -> None:
    ends = ", ".join(f"{100 * e:.2f}%" for e in entry["endpoint_errors"])
    print(
        f"[instability] {what}: error barrier {100 * entry['error_barrier']:.2f} pp, loss barrier "
        f"{entry['loss_barrier']:.4f}, endpoints' errors {ends}",
        flush=True,
    )


def run_analysis(
    cfg: DictConfig,
    build: Callable[..., Any],
    fill_from_data: Callable[[DictConfig, pl.LightningDataModule], None],
) -> dict[str, Any]:
    """Run ``cfg.analysis`` on the recipe's data and model; ``build(cfg, group)`` instantiates a config group.

    Returns what the app's ``run`` returns (an empty history) plus ``"instability"``: the written payload.
    """
    from lightning_lottery.app import ConfigError

    try:
        settings = InstabilitySettings.from_config(OmegaConf.to_container(cfg.analysis, resolve=True))
        tickets = ticket_files(settings.tickets) if settings.tickets else []
    except ValueError as err:
        raise ConfigError(f"config group `analysis`: {err}") from err
    out = Path(cfg.paths.output_dir)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build(cfg, "data")
    fill_from_data(cfg, datamodule)
    model = build(cfg, "model")  # θ₀ of this seed: the parent and the k = 0 children start from it
    loaded = []
    for path in tickets:  # every ticket is read and checked against the model before any training
        try:
            ticket = Ticket.load(path)
            ticket.check_fits(model)
        except (TicketError, FileNotFoundError) as err:
            raise ConfigError(f"config group `analysis`: ticket {path}: {err}") from err
        loaded.append((path, ticket))
    trainer_kwargs = _trainer_kwargs(cfg)
    payload = _header(cfg, settings)
    json_path = out / "instability.json"
    atomic_write_json(json_path, payload)

    def measure(start: Any, key: int) -> dict[str, Any]:
        result: InstabilityResult = instability(
            model,
            datamodule,
            settings.budget,
            start,
            seeds=child_seeds(cfg.seed, key),
            points=settings.path_points,
            eval_split=settings.eval_split,  # type: ignore[arg-type]
            bn_batches=settings.bn_batches,
            trainer_kwargs=trainer_kwargs,
        )
        return result.to_dict()

    if settings.points:
        parent_dir = out / "instability" / "parent"
        later = [k for k in settings.points if k > 0]
        checkpoints = {}
        if later:
            parent_seed = derive_seed(cfg.seed, 18) % 2**32
            checkpoints = train_parent(model, datamodule, later, parent_dir, parent_seed, trainer_kwargs)
        for k in settings.points:
            entry = {"step": k, **measure(checkpoints[k] if k else None, k)}
            payload["points"].append(entry)
            atomic_write_json(json_path, payload)
            _say(entry, f"k={k}")
        barriers = [e["error_barrier"] for e in payload["points"]]
        payload["earliest_stable_step"] = earliest_stable(settings.points, barriers, settings.threshold)
        if not settings.keep_checkpoints:
            shutil.rmtree(parent_dir, ignore_errors=True)
    for path, ticket in loaded:
        entry = {"round": ticket.round, "file": str(path), **measure(ticket, _TICKET_SEED_KEY + ticket.round)}
        payload["tickets"].append(entry)
        atomic_write_json(json_path, payload)
        _say(entry, f"ticket round {ticket.round} ({100 * entry['sparsity']:.1f}% pruned)")
    atomic_write_json(json_path, payload)
    figures = write_figures([payload], out / "instability")
    print(f"[instability] wrote {json_path} and {len(figures)} figure(s) in {out / 'instability'}", flush=True)
    return {"history": [], "output_dir": str(out), "report": None, "instability": payload}
