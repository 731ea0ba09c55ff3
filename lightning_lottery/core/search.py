"""The settings that define a search, checked once, as plain data: what the callback, its checkpoints, tickets and
reports all refer to. Resuming with other values of any of them would mix two searches."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lightning_lottery.core.connectivity import DEFAULT_GRID
from lightning_lottery.core.early_bird import EarlyBirdTracker
from lightning_lottery.core.levels import Rewind, SearchPlan, parse_controls, validate_scale
from lightning_lottery.core.saliency import METHODS as METHODS_AT_INIT
from lightning_lottery.core.schedule import SparsitySchedule
from lightning_lottery.core.structure import NMStructure, parse_structure

PRUNING = ("magnitude", "random", *METHODS_AT_INIT)
_EARLY_BIRD_KEYS = {"every", "patience", "threshold"}


def check_type(value: Any, types: type | tuple[type, ...], argument: str, allowed: str) -> None:
    """Raise ``TypeError`` naming the argument, what was given and what is allowed (bools are not ints here)."""
    accepted = types if isinstance(types, tuple) else (types,)
    if (isinstance(value, bool) and bool not in accepted) or not isinstance(value, accepted):
        raise TypeError(f"`{argument}={value!r}`: expected {allowed}")


def patterns(value: Any, argument: str) -> tuple[str, ...] | None:
    """Parameter names or fnmatch patterns: one string or a sequence of strings."""
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    try:
        value = tuple(value)
    except TypeError:
        value = (value,)
    if not all(isinstance(v, str) for v in value):
        raise TypeError(f"`{argument}` must be parameter names or fnmatch patterns (strings), got {value!r}")
    return value


def parse_early_bird(early_bird: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{"every": steps, "patience": 5, "threshold": 0.1}`` with the defaults of You et al. filled in."""
    if early_bird is None:
        return {}
    if not isinstance(early_bird, Mapping) or not set(early_bird) <= _EARLY_BIRD_KEYS or "every" not in early_bird:
        raise ValueError(
            f"`early_bird={early_bird!r}` must be a mapping with 'every' (optimizer steps between prospective "
            "masks) and optionally 'patience' (default 5) and 'threshold' (default 0.1)"
        )
    settings = {"every": early_bird["every"], "patience": early_bird.get("patience", 5)}
    settings["threshold"] = early_bird.get("threshold", 0.1)
    check_type(settings["every"], int, "early_bird['every']", "an int >= 1 (optimizer steps)")
    if settings["every"] < 1:
        raise ValueError(f"`early_bird['every']={settings['every']}` must be >= 1")
    EarlyBirdTracker(settings["patience"], settings["threshold"])  # validates them
    return settings


AUTO_REWIND = {"grid": DEFAULT_GRID, "budget": None, "threshold": 0.02, "points": 11}


def parse_auto_rewind(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """How ``rewind="auto"`` chooses: ``grid`` (fractions of round 0's budget), ``budget`` (steps per child, None: to
    the end of round 0), ``threshold`` (error barrier, the paper's 0.02), ``points`` (on the linear path)."""
    if settings is not None and (not isinstance(settings, Mapping) or set(settings) - set(AUTO_REWIND)):
        raise ValueError(f"`auto_rewind={settings!r}`: allowed keys are {sorted(AUTO_REWIND)}")
    out = {**AUTO_REWIND, **(settings or {})}
    grid = out["grid"]
    if isinstance(grid, (str, bytes)) or not grid or not all(isinstance(f, (int, float)) and 0 <= f < 1 for f in grid):
        raise ValueError(f"`auto_rewind['grid']={grid!r}` must be fractions of round 0's budget in [0, 1)")
    budget = out["budget"]
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise ValueError(f"`auto_rewind['budget']={budget!r}` must be None (to the end of round 0) or steps >= 1")
    threshold = out["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise ValueError(f"`auto_rewind['threshold']={threshold!r}` must be an error barrier in (0, 1)")
    if isinstance(out["points"], bool) or not isinstance(out["points"], int) or out["points"] < 2:
        raise ValueError(f"`auto_rewind['points']={out['points']!r}` must be an int >= 2")
    return {**out, "grid": [float(f) for f in grid], "threshold": float(threshold)}


@dataclass(frozen=True)
class SearchSettings:
    """Everything that defines a search (see :class:`~lightning_lottery.LotteryTicketCallback` for each)."""

    rounds: int
    schedule: SparsitySchedule
    rewind: Rewind
    parameters: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    controls: tuple[str, ...] = ()
    rewind_noise: float = 0.0
    pruning: str = "magnitude"
    pruning_batches: int = 1
    input_shape: tuple[int, ...] | None = None
    structure: NMStructure | None = None
    early_bird: dict[str, Any] = field(default_factory=dict)
    auto_rewind: dict[str, Any] | None = None
    monitor: str | None = "val_loss"
    mode: str = "min"

    @classmethod
    def build(
        cls,
        rounds: Any = 5,
        amount: Any = 0.2,
        scope: Any = "global",
        layer_amounts: Any = None,
        parameters: Any = None,
        exclude: Any = (),
        rewind: Any = "init",
        controls: Any = (),
        rewind_noise: Any = 0.0,
        pruning: Any = "magnitude",
        pruning_batches: Any = 1,
        input_shape: Any = None,
        structure: Any = None,
        early_bird: Any = None,
        auto_rewind: Any = None,
        monitor: Any = "val_loss",
        mode: Any = "min",
    ) -> SearchSettings:
        """Check every argument, raising an error that names it, what was given and what is allowed."""
        check_type(rounds, int, "rounds", "an int >= 0 (pruning levels after the dense level 0)")
        if rounds < 0:
            raise ValueError(f"`rounds={rounds!r}` must be an int >= 0 (pruning levels after the dense level 0)")
        if isinstance(amount, str):
            raise TypeError(f"`amount={amount!r}` is a string: give a float in (0, 1) or a list of floats")
        if layer_amounts is not None and not isinstance(layer_amounts, Mapping):
            raise TypeError(
                f"`layer_amounts={layer_amounts!r}` must map names or patterns to rates, e.g. {{'fc3.weight': 0.1}}"
            )
        schedule = SparsitySchedule.build(amount, rounds, scope, layer_amounts)
        parsed_rewind = Rewind.parse(rewind)
        noise = validate_scale(rewind_noise, "rewind_noise")
        if pruning not in PRUNING:
            raise ValueError(f"`pruning={pruning!r}` is not one of {', '.join(repr(p) for p in PRUNING)}")
        if pruning in METHODS_AT_INIT and parsed_rewind.kind != "init":
            raise ValueError(
                f"`pruning={pruning!r}` chooses masks at initialisation and trains them from θ₀: it needs "
                f"rewind='init', not {parsed_rewind.setting!r}"
            )
        check_type(pruning_batches, int, "pruning_batches", "an int >= 1 (training batches SNIP / GraSP score)")
        if pruning_batches < 1:
            raise ValueError(f"`pruning_batches={pruning_batches}` must be >= 1")
        shape = None if input_shape is None else tuple(input_shape)
        if shape is not None and not all(isinstance(d, int) and d > 0 for d in shape):
            raise ValueError(f"`input_shape={input_shape!r}` must be positive ints, e.g. (1, 28, 28)")
        nm = parse_structure(structure)
        if nm is not None and pruning in METHODS_AT_INIT:
            raise ValueError(
                f"`structure` and `pruning={pruning!r}` cannot be combined: N:M masks are magnitude-chosen"
            )
        if auto_rewind is not None and parsed_rewind.kind != "auto":
            raise ValueError("`auto_rewind` sets how rewind='auto' chooses its step: it needs rewind='auto'")
        auto = parse_auto_rewind(auto_rewind) if parsed_rewind.kind == "auto" else None
        if monitor is not None and not isinstance(monitor, str):
            raise TypeError(f"`monitor={monitor!r}` must be a metric name or None")
        if mode not in ("min", "max"):
            raise ValueError(f"`mode={mode!r}` is not one of 'min', 'max'")
        return cls(
            rounds=rounds,
            schedule=schedule,
            rewind=parsed_rewind,
            parameters=patterns(parameters, "parameters"),
            exclude=patterns(exclude, "exclude") or (),
            controls=parse_controls(controls, noise),
            rewind_noise=noise,
            pruning=pruning,
            pruning_batches=pruning_batches,
            input_shape=shape,
            structure=nm,
            early_bird=parse_early_bird(early_bird),
            auto_rewind=auto,
            monitor=monitor,
            mode=mode,
        )

    @property
    def plan(self) -> SearchPlan:
        return SearchPlan(self.rounds, self.controls)

    @property
    def at_init(self) -> bool:
        """Masks chosen at initialisation (SNIP, GraSP, SynFlow, magnitude at θ₀) rather than after training."""
        return self.pruning in METHODS_AT_INIT

    def as_dict(self) -> dict[str, Any]:
        """Plain values, as stored with checkpoints, tickets and ``history.json``."""
        amount = self.schedule.amount
        return {
            "rounds": self.rounds,
            "amount": list(amount) if isinstance(amount, tuple) else amount,
            "scope": self.schedule.scope,
            "layer_amounts": dict(self.schedule.layer_amounts),
            "parameters": list(self.parameters) if self.parameters is not None else None,
            "exclude": list(self.exclude),
            "rewind": self.rewind.setting,
            "controls": list(self.controls),
            "rewind_noise": self.rewind_noise,
            "pruning": self.pruning,
            "structure": str(self.structure) if self.structure is not None else None,
            "early_bird": dict(self.early_bird) or None,
            "auto_rewind": self.auto_rewind,
            "monitor": self.monitor,
            "mode": self.mode,
        }

    def better(self, value: float, best: float | None) -> bool:
        """Whether ``value`` of the monitored metric improves on ``best``."""
        if math.isnan(value):
            return False
        return best is None or (value < best if self.mode == "min" else value > best)


DEFINING = tuple(SearchSettings.build().as_dict())
