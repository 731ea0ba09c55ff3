"""Instability analysis of any LightningModule: train two children from one starting point with different SGD
noise (real ``Trainer.fit`` runs), then measure error and loss along the straight line between them.

The mathematics is in :mod:`lightning_lottery.core.connectivity`; this module only trains the children and
collects the data. Children differ in the global RNG seeded before each ``fit``: that changes the order a shuffling
training dataloader draws (a ``RandomSampler`` without its own generator) and the dropout masks, which is the SGD
noise of Frankle et al. (2020). A dataloader with a fixed generator would give both children the same order.

Example::

    from lightning_lottery.analysis import instability
    result = instability(lambda: ImageClassifier(arch="lenet300"), MNISTDataModule(), budget=2000)
    result.error_barrier            # 0.003: stable from θ₀ (below the paper's 2%)
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor, nn

from lightning_lottery._rng import derive_seed
from lightning_lottery.core.connectivity import (
    Evaluator,
    Forward,
    PathResult,
    classification_evaluator,
    default_forward,
    installed_masks,
    linear_path,
)
from lightning_lottery.core.snapshot import dense_state, load_dense_state, state_mismatches
from lightning_lottery.ticket import Ticket

__all__ = [
    "Children",
    "InstabilityResult",
    "Start",
    "StepCheckpoints",
    "child_seeds",
    "instability",
    "train_children",
    "train_parent",
]

Start = None | Mapping[str, Tensor] | Ticket | str | os.PathLike[str]
ModuleSource = pl.LightningModule | Callable[[], pl.LightningModule]
Split = Literal["test", "val", "train"]

# Settings a child trainer always has: no validation, logging or checkpoints of its own (the path is evaluated
# afterwards), a step budget.
_CHILD_TRAINER = dict(
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    num_sanity_val_steps=0,
    limit_val_batches=0,
    max_epochs=-1,
)
# A child resumed from a mid-epoch checkpoint starts a fresh pass over the data: that is the point here.
_MID_EPOCH_WARNING = ".*resuming from a checkpoint that ended before the epoch ended.*"
_NO_VALIDATION_WARNING = ".*but have no `val_dataloader`.*"  # children do not validate


def child_seeds(seed: int, key: int = 0) -> tuple[int, int]:
    """Two different data-order seeds for the children of one starting point (``key``: e.g. its step)."""
    first = derive_seed(seed, 17, key, 0) % 2**32
    second = derive_seed(seed, 17, key, 1) % 2**32
    return first, (second if second != first else (first + 1) % 2**32)


@dataclass(frozen=True)
class InstabilityResult:
    """The linear path between two children trained from one starting point.

    Attributes:
        start: what the children started from (``"init"``, ``"step:500"``, ``"ticket:round 3"``, ...).
        path: error and loss at each α (:class:`~lightning_lottery.core.connectivity.PathResult`).
        seeds: the children's data-order seeds.
        budget: optimizer steps each child trained after the start.
        start_step: the global step the children started at (0 unless resumed from a checkpoint).
        sparsity: fraction of the masked tensors' weights that are pruned (0.0 for a dense network).
        extra: other entries of a stored result (e.g. the app's ``step``), kept through a dict round trip.
    """

    start: str
    path: PathResult
    seeds: tuple[int, int]
    budget: int
    start_step: int = 0
    sparsity: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def error_barrier(self) -> float:
        return self.path.error_barrier

    @property
    def loss_barrier(self) -> float:
        return self.path.loss_barrier

    @property
    def endpoint_errors(self) -> tuple[float, float]:
        return self.path.endpoint_errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "seeds": list(self.seeds),
            "budget": self.budget,
            "start_step": self.start_step,
            "sparsity": self.sparsity,
            **self.path.to_dict(),
            **self.extra,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InstabilityResult:
        known = {"start", "seeds", "budget", "start_step", "sparsity", *PathResult.__dataclass_fields__}
        derived = {"error_barrier", "loss_barrier", "endpoint_errors", "endpoint_losses"}
        extra = {k: v for k, v in data.items() if k not in known | derived}
        return cls(
            data["start"],
            PathResult.from_dict(data),
            tuple(data["seeds"]),
            int(data["budget"]),
            int(data.get("start_step", 0)),
            float(data.get("sparsity", 0.0)),
            extra,
        )


# ---------------------------------------------------------------------------------------------- starting points


def _copy_module(module: pl.LightningModule) -> pl.LightningModule:
    """A deep copy that does not drag along the trainer the module may be attached to."""
    trainer = module._trainer
    module._trainer = None
    try:
        return copy.deepcopy(module)
    except RuntimeError as err:
        raise TypeError(
            f"cannot copy {type(module).__name__} ({err}); a module with masks installed cannot be deep-copied: "
            "pass a factory (a function returning a fresh module) instead"
        ) from err
    finally:
        module._trainer = trainer


def _module_maker(source: ModuleSource) -> Callable[[], pl.LightningModule]:
    if isinstance(source, pl.LightningModule):
        return lambda: _copy_module(source)
    if not callable(source):
        raise TypeError(f"module must be a LightningModule or a function returning one, got {type(source).__name__}")

    def make() -> pl.LightningModule:
        module = source()
        if not isinstance(module, pl.LightningModule):
            raise TypeError(f"the module factory returned {type(module).__name__}, not a LightningModule")
        return module

    return make


@dataclass(frozen=True)
class _Resolved:
    """A starting point made concrete: how to prepare a fresh module, and a checkpoint to resume from."""

    label: str
    prepare: Callable[[nn.Module], None]
    ckpt_path: Path | None = None
    start_step: int = 0


def _checkpoint_step(path: Path) -> int:
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(checkpoint.get("global_step", 0))


def _resolve(start: Start, make: Callable[[], pl.LightningModule]) -> _Resolved:
    if start is None:
        theta0 = dense_state(make())  # one draw of θ₀, shared by both children
        return _Resolved("init", lambda m: load_dense_state(m, theta0))
    if isinstance(start, Ticket):
        label = f"ticket:round {start.round}"
        return _Resolved(label, lambda m: start.apply(m))
    if isinstance(start, (str, os.PathLike)):
        path = Path(start)
        step = _checkpoint_step(path)
        return _Resolved(f"step:{step}", lambda m: None, path, step)
    if isinstance(start, Mapping):
        state = {n: t.detach().cpu().clone() for n, t in start.items()}
        if problems := state_mismatches(make(), state):
            raise KeyError("The starting state does not fit the module: " + "; ".join(problems))
        return _Resolved("state", lambda m: load_dense_state(m, state))
    raise TypeError(
        "start must be None (θ₀ of a fresh module), a state dict, a Ticket or a Lightning checkpoint path, "
        f"got {type(start).__name__}"
    )


def _sparsity(masks: Mapping[str, Tensor]) -> float:
    total = sum(m.numel() for m in masks.values())
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / total if total else 0.0


# ---------------------------------------------------------------------------------------------- training


def _fit(
    module: pl.LightningModule,
    data: pl.LightningDataModule | Any,
    max_steps: int,
    seed: int,
    trainer_kwargs: Mapping[str, Any],
    ckpt_path: Path | None = None,
    callbacks: Sequence[pl.Callback] = (),
) -> pl.Trainer:
    """One real ``Trainer.fit`` with the global RNG seeded to ``seed`` (data order, dropout), then restored."""
    trainer = pl.Trainer(**{**trainer_kwargs, **_CHILD_TRAINER, "max_steps": max_steps, "callbacks": list(callbacks)})
    datamodule = data if isinstance(data, pl.LightningDataModule) else None
    with isolate_rng(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_MID_EPOCH_WARNING)
        warnings.filterwarnings("ignore", message=_NO_VALIDATION_WARNING)
        pl.seed_everything(seed, workers=True, verbose=False)
        if datamodule is not None:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        else:
            trainer.fit(module, train_dataloaders=data, ckpt_path=ckpt_path, weights_only=True)
    if trainer.global_step < max_steps:
        raise RuntimeError(
            f"training stopped at step {trainer.global_step} before its budget ({max_steps}): an early-stopping "
            "callback or an epoch limit in trainer_kwargs? Children must train for the whole budget"
        )
    return trainer


@dataclass
class Children:
    """Two trained children and a third, untrained module of the same shape (masks included) to evaluate with."""

    first: pl.LightningModule
    second: pl.LightningModule
    probe: pl.LightningModule
    label: str
    seeds: tuple[int, int]
    start_step: int


def train_children(
    module: ModuleSource,
    data: pl.LightningDataModule | Any,
    budget: int,
    start: Start = None,
    seeds: tuple[int, int] = (1, 2),
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> Children:
    """Train two copies of ``start`` for ``budget`` optimizer steps each, with data-order seeds ``seeds``.

    See :func:`instability` for the arguments.
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be an int >= 1 (optimizer steps per child), got {budget!r}")
    if len(seeds) != 2 or seeds[0] == seeds[1]:
        raise ValueError(f"seeds must be two different ints (the children's data orders), got {seeds!r}")
    make = _module_maker(module)
    resolved = _resolve(start, make)
    trained = []
    for seed in seeds:
        child = make()
        resolved.prepare(child)
        _fit(child, data, resolved.start_step + budget, seed, trainer_kwargs or {}, resolved.ckpt_path)
        trained.append(child)
    probe = make()
    resolved.prepare(probe)
    return Children(trained[0], trained[1], probe, resolved.label, (seeds[0], seeds[1]), resolved.start_step)


# ---------------------------------------------------------------------------------------------- data for the path


def _setup(datamodule: pl.LightningDataModule, stage: str) -> None:
    datamodule.prepare_data()
    datamodule.setup(stage)


def _split_loader(data: pl.LightningDataModule | Any, split: Split) -> Iterable[Any]:
    if not isinstance(data, pl.LightningDataModule):
        raise ValueError(
            f"eval_split={split!r} needs a LightningDataModule; with plain dataloaders pass eval_data (and bn_data)"
        )
    stage = {"test": "test", "val": "validate", "train": "fit"}[split]
    _setup(data, stage)
    loader = getattr(data, f"{split}_dataloader")()
    if isinstance(loader, (list, tuple)):
        if not loader:
            raise ValueError(f"the datamodule's {split}_dataloader() is empty")
        loader = loader[0]  # e.g. [validation, test]: the split itself comes first
    return loader


def _training_batches(data: pl.LightningDataModule | Any, count: int, seed: int) -> list[Any]:
    """The first ``count`` batches of the training data, drawn once (so every point of the path uses the same)."""
    if isinstance(data, pl.LightningDataModule):
        _setup(data, "fit")
        data = data.train_dataloader()
    with isolate_rng():
        torch.manual_seed(seed)
        return list(islice(iter(data), count))


# ---------------------------------------------------------------------------------------------- the analysis


def instability(
    module: ModuleSource,
    data: pl.LightningDataModule | Any,
    budget: int,
    start: Start = None,
    *,
    seeds: tuple[int, int] = (1, 2),
    points: int = 11,
    evaluate: Evaluator | None = None,
    eval_split: Split = "test",
    eval_data: Iterable[Any] | None = None,
    bn_data: Iterable[Any] | None = None,
    bn_batches: int = 100,
    forward: Forward = default_forward,
    trainer_kwargs: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
) -> InstabilityResult:
    """Train two children from ``start`` with different SGD noise and evaluate the linear path between them.

    Args:
        module: a LightningModule (copied for each child, never trained itself) or a function returning a fresh one.
        data: a LightningDataModule, or the training dataloader(s) passed to ``Trainer.fit``.
        budget: optimizer steps each child trains after its start.
        start: where both children start:

            * ``None``: θ₀, the weights of one fresh module (``module`` itself when an instance is given);
            * a state dict (names as :func:`~lightning_lottery.core.dense_state` gives them), e.g. θ_k snapshot:
              weights only, with a fresh optimizer and LR schedule;
            * a :class:`~lightning_lottery.ticket.Ticket`: its masks are installed (``torch.nn.utils.prune``, so
              masked weights stay zero while training) and its rewind weights loaded;
            * a path to a Lightning checkpoint (e.g. one of :func:`train_parent`'s): the children *resume* it, with
              its optimizer state, LR schedule and global step k, and train to step k + ``budget``.
        seeds: the children's data-order seeds (seeded into the global RNG before each ``fit``).
        points: evenly spaced α in [0, 1] to evaluate, endpoints included.
        evaluate: ``evaluate(module) -> PointMetrics(error, loss)``. Default, for classifiers:
            :func:`~lightning_lottery.core.connectivity.classification_evaluator` on ``eval_data``: error is the
            fraction of ``argmax(module(x)) != y`` over ``(x, y)`` batches, loss the mean cross-entropy. It calls
            the module's ``forward`` directly (no Lightning batch hooks): pass ``evaluate`` for anything else.
        eval_split: which datamodule split the default evaluator reads (``"test"``, ``"val"`` or ``"train"``).
        eval_data: batches for the default evaluator instead of ``eval_split``.
        bn_data: training batches for recomputing BatchNorm statistics (default: the datamodule's training data).
        bn_batches: how many training batches estimate BatchNorm statistics at each point (the same batches at
            every point). Ignored for a network without BatchNorm.
        forward: how the default evaluator and the BatchNorm pass run the module on a batch.
        trainer_kwargs: extra ``lightning.pytorch.Trainer`` arguments for the children (accelerator, precision,
            gradient clipping...); logging, checkpointing, validation and the step budget are set here.
        device: where the path is evaluated (default: CUDA when available and the trainer may use it, else CPU).

    Returns:
        An :class:`InstabilityResult`: errors and losses along the path, the barriers, the endpoints' errors.
    """
    if evaluate is None and eval_data is None:
        _split_loader(data, eval_split)  # a bad split is refused before any training
    children = train_children(module, data, budget, start, seeds, trainer_kwargs)
    if evaluate is None:
        batches = eval_data if eval_data is not None else _split_loader(data, eval_split)
        evaluate = classification_evaluator(batches, forward)
    probe = children.probe.to(_eval_device(device, trainer_kwargs or {}))
    bn = None
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in probe.modules()):
        bn = _training_batches(bn_data if bn_data is not None else data, bn_batches, seeds[0])
    first, second = dense_state(children.first), dense_state(children.second)
    if all(torch.equal(first[name], second[name]) for name in first):
        warnings.warn(
            "the two children ended with identical weights: their data order did not differ. Does the training "
            "dataloader shuffle, and with the global RNG (not a sampler with its own fixed generator)?",
            stacklevel=2,
        )
    path = linear_path(
        probe,
        first,
        second,
        evaluate,
        points,
        bn_batches=bn,
        forward=forward,
    )
    return InstabilityResult(
        children.label,
        path,
        children.seeds,
        budget,
        children.start_step,
        _sparsity(installed_masks(probe)),
    )


def _eval_device(device: str | torch.device | None, trainer_kwargs: Mapping[str, Any]) -> torch.device:
    if device is not None:
        return torch.device(device)
    accelerator = str(trainer_kwargs.get("accelerator", "auto"))
    return torch.device("cuda" if torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda") else "cpu")


class StepCheckpoints(pl.Callback):
    """Saves a full Lightning checkpoint (weights, optimizer, LR schedule, loop state) after given global steps,
    to ``<dirpath>/step_<k>.ckpt``: the parent run of an instability analysis, whose children resume them.

    Args:
        steps: global steps k >= 1 after which to save.
        dirpath: folder for the checkpoints.
    """

    def __init__(self, steps: Sequence[int], dirpath: str | os.PathLike[str]) -> None:
        steps = sorted({int(s) for s in steps})
        if not steps or steps[0] < 1:
            raise ValueError(f"steps must be global steps >= 1, got {steps}")
        self.steps = steps
        self.dirpath = Path(dirpath)
        self.saved: dict[int, Path] = {}

    def path(self, step: int) -> Path:
        return self.dirpath / f"step_{step}.ckpt"

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step in self.steps and step not in self.saved:
            trainer.save_checkpoint(self.path(step), weights_only=False)  # optimizer and schedule too
            self.saved[step] = self.path(step)


def train_parent(
    module: ModuleSource,
    data: pl.LightningDataModule | Any,
    steps: Sequence[int],
    dirpath: str | os.PathLike[str],
    seed: int = 0,
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> dict[int, Path]:
    """Train one run from ``module``'s weights up to the largest of ``steps``, checkpointing after each step k.

    Returns ``{k: checkpoint path}``: pass one as ``start`` to :func:`instability` to measure stability at step k.
    """
    saver = StepCheckpoints(steps, dirpath)
    parent = _module_maker(module)()
    _fit(parent, data, saver.steps[-1], seed, trainer_kwargs or {}, callbacks=[saver])
    return dict(saver.saved)
