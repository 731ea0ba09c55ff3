"""Optimizers and LR schedulers from plain specs: ``{"_target_": "torch.optim.AdamW", "lr": 1e-3, ...}``.

A module stores the spec (a dict of plain values, so its checkpoints load with ``torch.load(weights_only=True)``)
and builds a fresh optimizer from it in every ``configure_optimizers`` call, over the parameters it chooses. Any
``torch.optim`` class (or another ``Optimizer`` subclass) is a config change; ``_partial_: true`` marks the spec
as waiting for its parameters, as Hydra configs write it, and is optional here.

Example:
    >>> from torch import nn
    >>> spec = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3, "weight_decay": 0.01}
    >>> build_optimizer(spec, nn.Linear(2, 2).parameters())
    AdamW (...)
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from importlib import import_module
from typing import Any

import torch

__all__ = [
    "NAMED_OPTIMIZERS",
    "build_optimizer",
    "build_scheduler",
    "named_optimizer_spec",
    "optimizer_class",
    "resolve_optimizer",
]

NAMED_OPTIMIZERS = {"adam": "torch.optim.Adam", "sgd": "torch.optim.SGD", "adagrad": "torch.optim.Adagrad"}
_SPEC_KEYS = ("_target_", "_partial_")


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    if not module:
        raise ValueError(f"`_target_={path!r}` is not a dotted path such as 'torch.optim.AdamW'")
    try:
        return getattr(import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"`_target_={path!r}` cannot be imported: {err}") from err


def optimizer_class(spec: Mapping[str, Any]) -> type[torch.optim.Optimizer]:
    """The optimizer class a spec names; ValueError if it names none."""
    target = spec.get("_target_")
    if not isinstance(target, str):
        raise ValueError(f"an optimizer spec needs `_target_` (e.g. 'torch.optim.AdamW'), got {dict(spec)}")
    cls = _import(target)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ValueError(f"`_target_={target!r}` is not a torch.optim.Optimizer subclass")
    lr = spec.get("lr")
    if lr is not None and not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"the optimizer's `lr` must be a positive number, got {lr!r}")
    return cls


def _arguments(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.items() if k not in _SPEC_KEYS}


def build_optimizer(spec: Mapping[str, Any], params: Iterable[Any]) -> torch.optim.Optimizer:
    """A new optimizer of the spec's class over ``params`` (lists in the spec become tuples, e.g. ``betas``)."""
    return optimizer_class(spec)(params, **_arguments(spec))


def build_scheduler(spec: Mapping[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """A Lightning ``lr_scheduler`` entry from ``{"_target_": <scheduler class>, "interval": "step", ...}``.

    ``interval`` (``"step"``, the default, or ``"epoch"``) and ``frequency`` are Lightning's; the other keys are
    the scheduler's arguments.
    """
    arguments = _arguments(spec)
    interval = arguments.pop("interval", "step")
    frequency = arguments.pop("frequency", 1)
    if interval not in ("step", "epoch"):
        raise ValueError(f"lr_scheduler `interval` must be 'step' or 'epoch', got {interval!r}")
    target = spec.get("_target_")
    cls = _import(target) if isinstance(target, str) else None
    if cls is None or not callable(cls):
        raise ValueError(f"an lr_scheduler spec needs `_target_` (e.g. 'torch.optim.lr_scheduler.StepLR'), got {spec}")
    return {"scheduler": cls(optimizer, **arguments), "interval": interval, "frequency": frequency}


def named_optimizer_spec(name: str, **settings: Any) -> dict[str, Any]:
    """The spec of a named optimizer (``"adam"``, ``"sgd"``, ``"adagrad"``) with those of ``settings`` that it takes
    (``momentum`` and ``nesterov`` only reach SGD, ``eps`` only Adam and Adagrad)."""
    if name not in NAMED_OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}; valid: {', '.join(NAMED_OPTIMIZERS)} or a spec with _target_")
    target = NAMED_OPTIMIZERS[name]
    accepted = inspect.signature(_import(target)).parameters
    return {"_target_": target, **{k: v for k, v in settings.items() if k in accepted}}


def resolve_optimizer(
    optimizer: str | Mapping[str, Any], defaults: Mapping[str, Any], **settings: Any
) -> dict[str, Any]:
    """The spec a module trains with.

    ``optimizer`` is a spec (returned as a plain dict, after checking that it names an optimizer) or a name from
    :data:`NAMED_OPTIMIZERS`, whose spec takes ``settings`` (``lr``, ``momentum``, ...; None takes ``defaults``).
    With a spec, the separate settings must stay None: they belong inside the spec.
    """
    if isinstance(optimizer, Mapping):
        given = sorted(k for k, v in settings.items() if v is not None)
        if given:
            raise ValueError(
                f"with an optimizer spec ({optimizer.get('_target_')}), give {', '.join(given)} inside the spec, "
                "not as separate arguments"
            )
        spec = dict(optimizer)
        optimizer_class(spec)
        return spec
    merged = {**defaults, **{k: v for k, v in settings.items() if v is not None}}
    lr, weight_decay = merged.get("lr"), merged.get("weight_decay", 0.0)
    if lr is None or lr <= 0 or weight_decay < 0:
        raise ValueError(f"lr must be > 0 and weight_decay >= 0, got lr={lr}, weight_decay={weight_decay}")
    return named_optimizer_spec(optimizer, **merged)
