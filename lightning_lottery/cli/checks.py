"""Checks of a composed app config before anything is built: names, types and values of every setting.

Each config group that names a ``_target_`` is checked against that class's signature: unknown keys and values of
the wrong type (``trainer.max_steps=abc``, ``data.batch_size=[1]``, ``optim.lr=fast``) are refused with
:class:`~lightning_lottery.cli.errors.ConfigError`, naming the setting, the value given and what is allowed.
Values are judged from the type hints only where the hint is plain data (numbers, strings, booleans, literals,
lists, mappings, None); a setting annotated with a class the config cannot express is left to its constructor.
"""

from __future__ import annotations

import collections.abc as abc
import inspect
import math
import os
import types
import typing
from collections.abc import Iterable
from importlib import import_module
from pathlib import Path, PurePath
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lightning_lottery.cli.errors import ConfigError, show

__all__ = ["check_arguments", "check_config", "check_model", "locate"]

_HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
_SEQUENCES = (list, tuple, abc.Sequence, abc.MutableSequence, abc.Iterable, abc.Collection, set, frozenset)
_MAPPINGS = (dict, abc.Mapping, abc.MutableMapping)
_CKPT_WORDS = ("last", "auto")


def locate(path: str, setting: str) -> Any:
    """The object a dotted ``_target_`` names, or a ConfigError naming ``setting``."""
    if not isinstance(path, str) or not path or path.startswith(".") or ".." in path:
        raise ConfigError(f"{setting}: got {show(path)}; allowed: a dotted path such as torch.optim.AdamW")
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = import_module(".".join(parts[:cut]))
        except ModuleNotFoundError as err:
            if err.name and not ".".join(parts[:cut]).startswith(err.name):
                raise ConfigError(f"{setting}={path}: importing it needs {err.name!r}, which is not installed") from err
            continue
        try:
            for attribute in parts[cut:]:
                obj = getattr(obj, attribute)
        except AttributeError:
            break
        return obj
    raise ConfigError(f"{setting}: cannot import {path!r}; allowed: an importable class such as torch.optim.AdamW")


def _describe(hint: Any) -> str:
    """A type hint in words, for the 'allowed:' part of a message."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "null"
    if origin is typing.Literal:
        return "one of " + ", ".join(show(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(a) for a in args))
    if origin in _SEQUENCES or hint in _SEQUENCES:
        inner = f" of {_describe(args[0])}" if args and args[0] is not Ellipsis else ""
        return f"a list{inner}"
    if origin in _MAPPINGS or hint in _MAPPINGS:
        return "a mapping"
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    return getattr(hint, "__name__", str(hint))


def _matches(value: Any, hint: Any) -> bool | None:
    """Whether a config value fits ``hint``; None when the hint says nothing a config value could check."""
    if hint is Any or isinstance(hint, (typing.TypeVar, str, typing.ForwardRef)):
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args) or (
            isinstance(value, (int, float)) and not isinstance(value, bool) and value in args
        )
    if origin in (typing.Union, types.UnionType):
        verdicts = [_matches(value, a) for a in args]
        if any(v is True for v in verdicts):
            return True
        return None if any(v is None for v in verdicts) else False
    if origin is typing.Annotated:
        return _matches(value, args[0])
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in _SEQUENCES or hint in _SEQUENCES:
        if not isinstance(value, (list, tuple)):
            return False
        inner = args[0] if args and (origin is not tuple or (len(args) == 2 and args[1] is Ellipsis)) else None
        if inner is None:
            return True
        verdicts = [_matches(item, inner) for item in value]
        return not any(v is False for v in verdicts)
    if origin in _MAPPINGS or hint in _MAPPINGS:
        return isinstance(value, dict)
    if origin is not None and origin in (abc.Callable, typing.Callable):
        return None
    if isinstance(hint, type):
        if isinstance(value, hint) or (isinstance(value, dict) and "_target_" in value):
            return True
        if isinstance(value, str) and issubclass(hint, (PurePath, os.PathLike)):
            return True
        if hint.__module__ in ("builtins", "datetime", "pathlib"):
            return False
        if isinstance(value, (bool, int, float, str, list, dict)) or value is None:
            return False  # plain data where an object is expected (e.g. lr=fast for float | Tensor is decided above)
    return None


def _own_signature(function: Any) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    try:
        parameters = dict(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return {}, {}, True
    parameters.pop("self", None)
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # unresolvable forward references: check names only
        hints = {}
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    parameters = {n: p for n, p in parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return parameters, hints, takes_kwargs


def _signature(target: Any) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """(parameters by name, resolved type hints, whether it takes **kwargs) of a class or function. A class whose
    ``__init__`` passes ``**kwargs`` on to its base (e.g. a ModelCheckpoint subclass) gets the base's arguments too."""
    if not isinstance(target, type):
        return _own_signature(target)
    parameters: dict[str, inspect.Parameter] = {}
    hints: dict[str, Any] = {}
    for cls in (c for c in target.__mro__ if "__init__" in vars(c) and c is not object):
        own, own_hints, takes_kwargs = _own_signature(vars(cls)["__init__"])
        parameters = {**own, **parameters}
        hints = {**own_hints, **hints}
        if not takes_kwargs:
            return parameters, hints, False
    return parameters, hints, True


def check_arguments(spec: dict[str, Any], prefix: str, skip: Iterable[str] = ()) -> Any:
    """Check a ``{_target_: ..., key: value}`` spec against the target's signature; returns the target.

    ``prefix`` names the spec in messages (``"trainer"`` gives ``trainer.max_steps: ...``); ``skip`` lists
    arguments that are filled in later and not judged now.
    """
    target = locate(spec.get("_target_"), f"{prefix}._target_")
    parameters, hints, takes_kwargs = _signature(target)
    if not parameters and takes_kwargs:
        return target
    skipped = set(skip)
    name = f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', target)}"
    for key, value in spec.items():
        if key in _HYDRA_KEYS or key in skipped:
            continue
        setting = f"{prefix}.{key}"
        if key not in parameters:
            if takes_kwargs:
                continue
            allowed = ", ".join(p for p in parameters if p not in skipped)
            raise ConfigError(f"{setting}: {name} has no argument {key!r}; allowed: {allowed}")
        hint = hints.get(key)
        if hint is None or (isinstance(value, dict) and "_target_" in value):
            continue
        if _matches(value, hint) is False:
            raise ConfigError(f"{setting}: got {show(value)}; allowed: {_describe(hint)}")
    return target


def _section(cfg: DictConfig, key: str) -> Any:
    try:
        node = OmegaConf.select(cfg, key, throw_on_missing=True)
        return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    except OmegaConfBaseException as err:
        where = getattr(err, "full_key", None) or key
        raise ConfigError(f"{where}: {str(err).splitlines()[0]}") from err


def _require(setting: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{setting}: got {show(value)}; allowed: {allowed}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_top_level(cfg: DictConfig) -> None:
    seed = _section(cfg, "seed")
    _require("seed", seed, _is_int(seed), "an integer, e.g. seed=0")
    ckpt = _section(cfg, "ckpt_path")
    _require(
        "ckpt_path",
        ckpt,
        ckpt is None or (isinstance(ckpt, str) and bool(ckpt)),
        "null (a new search), last (resume this run folder), auto (resume if it holds a checkpoint) or a .ckpt path",
    )
    if isinstance(ckpt, str) and ckpt not in _CKPT_WORDS and not Path(ckpt).is_file():
        raise ConfigError(f"ckpt_path: got {ckpt!r}, which is no file; allowed: null, last, auto or a .ckpt file")
    for key in ("report",):
        value = _section(cfg, key)
        _require(key, value, isinstance(value, bool), "true or false")
    for key in ("variant", "objective"):
        value = _section(cfg, key) if key in cfg else None
        _require(key, value, value is None or isinstance(value, str), "null or a string")


def _check_trainer_budget(trainer: dict[str, Any]) -> None:
    steps, epochs = trainer.get("max_steps", -1), trainer.get("max_epochs")
    if _is_int(steps):
        _require("trainer.max_steps", steps, steps == -1 or steps > 0, "-1 (no step limit) or a positive integer")
    if _is_int(epochs):
        _require("trainer.max_epochs", epochs, epochs == -1 or epochs > 0, "null, -1 or a positive integer")


def _check_transfer(cfg: DictConfig) -> None:
    from lightning_lottery.transfer import VARIANTS

    transfer = _section(cfg, "transfer") if "transfer" in cfg else None
    if not transfer:
        return
    variant = transfer.get("variant", "transferred")
    allowed = (*VARIANTS, "target")
    _require("transfer.variant", variant, variant in allowed, "one of " + ", ".join(allowed))
    ticket = transfer.get("ticket")
    _require("transfer.ticket", ticket, ticket is None or isinstance(ticket, str), "null or a run folder")
    if ticket and not Path(ticket).exists():
        raise ConfigError(f"transfer.ticket: got {ticket!r}, which does not exist; allowed: a source run folder")
    reinit = transfer.get("reinit", [])
    ok = isinstance(reinit, list) and all(isinstance(r, str) for r in reinit)
    _require("transfer.reinit", reinit, ok, "a list of tensor names or patterns, e.g. [model.fc.*]")
    seed = transfer.get("seed", 0)
    _require("transfer.seed", seed, _is_int(seed), "an integer")


def _check_group(cfg: DictConfig, group: str, skip: Iterable[str] = ()) -> None:
    spec = _section(cfg, group)
    if spec is None:
        return
    if not isinstance(spec, dict) or "_target_" not in spec:
        raise ConfigError(f"{group}: got {show(spec)}; allowed: a config with a _target_ (or null where optional)")
    check_arguments(spec, group, skip)


def check_config(cfg: DictConfig) -> None:
    """Refuse a config whose settings cannot work, before anything is built (see the module docstring).

    The ``model`` group is checked by :func:`check_model`, once the data has filled in what it knows.
    """
    _check_top_level(cfg)
    _check_transfer(cfg)
    _check_group(cfg, "data")
    _check_group(cfg, "trainer", skip=("callbacks", "logger", "plugins"))
    _check_group(cfg, "lottery", skip=("tickets",))
    trainer = _section(cfg, "trainer") or {}
    _check_trainer_budget(trainer)
    if cfg.get("logger"):
        _check_group(cfg, "logger")
    for name, spec in (_section(cfg, "callbacks") or {}).items():
        if spec is not None:
            _check_group(cfg, f"callbacks.{name}")
    if cfg.get("optim") is not None:
        optimizer = locate(_section(cfg, "optim._target_"), "optim._target_")
        if not (isinstance(optimizer, type) and _is_optimizer(optimizer)):
            allowed = "a torch.optim.Optimizer class such as torch.optim.AdamW"
            raise ConfigError(f"optim._target_: got {_section(cfg, 'optim._target_')!r}; allowed: {allowed}")
        _check_group(cfg, "optim", skip=("params",))
    lr = _section(cfg, "optim.lr") if OmegaConf.select(cfg, "optim.lr") is not None else None
    if isinstance(lr, (int, float)) and not isinstance(lr, bool):
        _require("optim.lr", lr, math.isfinite(lr) and lr > 0, "a positive number")


def check_model(cfg: DictConfig) -> None:
    """Check the ``model`` group against its LightningModule's signature (after the data filled it in)."""
    _check_group(cfg, "model")


def _is_optimizer(cls: type) -> bool:
    import torch

    return issubclass(cls, torch.optim.Optimizer)
