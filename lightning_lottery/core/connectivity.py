"""Linear mode connectivity (Frankle, Dziugaite, Roy & Carbin 2020): is a network stable to SGD noise?

Two copies trained from the same weights with different data order end at θ_a and θ_b. Evaluate the network at
evenly spaced points θ(α) = (1 − α)·θ_a + α·θ_b of the straight line between them; the *error barrier* is the
highest error on the path minus the mean of the endpoints' errors. A barrier near zero (the paper: below 2%)
means both copies found the same linearly connected minimum: the network was *stable* where they started.

Everything here is plain torch and works on any ``nn.Module``:

* :func:`interpolate` mixes two state dicts, keeping masked weights exactly zero;
* :func:`recompute_batchnorm` re-estimates BatchNorm running statistics on training data, which an
  interpolated network needs (averaging the endpoints' statistics does not describe its activations);
* :func:`linear_path` evaluates error and loss along the path and returns a :class:`PathResult`;
* :func:`earliest_stable` picks the earliest starting step whose barrier is below a threshold (automatic
  rewinding), and :func:`confidence_interval` gives the Student-t interval used for decisions over seeds.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from lightning_lottery.core.connectivity import linear_path, classification_evaluator
    >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    >>> model = nn.Linear(4, 3)
    >>> a, b = model.state_dict(), {k: v + 0.1 for k, v in model.state_dict().items()}
    >>> path = linear_path(model, a, b, classification_evaluator([(x, y)]), points=5)
    >>> len(path.errors), path.error_barrier >= 0
    (5, True)
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_lottery.core.selection import pruning_hook
from lightning_lottery.core.snapshot import State, dense_state, load_dense_state

__all__ = [
    "DEFAULT_GRID",
    "DEFAULT_THRESHOLD",
    "Evaluator",
    "Forward",
    "Interval",
    "PathResult",
    "PointMetrics",
    "barrier",
    "batchnorm_layers",
    "classification_evaluator",
    "confidence_interval",
    "default_forward",
    "earliest_stable",
    "evenly_spaced",
    "grid_steps",
    "installed_masks",
    "interpolate",
    "linear_path",
    "recompute_batchnorm",
    "stability_bound",
]

DEFAULT_THRESHOLD = 0.02  # the paper's "stable": error barrier below 2 percentage points


class PointMetrics(NamedTuple):
    """Error (fraction in [0, 1]) and mean loss of one network."""

    error: float
    loss: float


Forward = Callable[[nn.Module, Any], Tensor]
Evaluator = Callable[[nn.Module], PointMetrics]


# ---------------------------------------------------------------------------------------------- interpolation


def installed_masks(model: nn.Module) -> dict[str, Tensor]:
    """The bool mask of every ``torch.nn.utils.prune``-masked tensor of ``model``, by its unpruned name."""
    masks = {}
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for attr in list(module._buffers):
            name = attr[: -len("_mask")]
            if attr.endswith("_mask") and pruning_hook(module, name) is not None:
                masks.setdefault(prefix + name, module._buffers[attr].detach().bool().cpu())
    return masks


def interpolate(
    a: Mapping[str, Tensor], b: Mapping[str, Tensor], alpha: float, masks: Mapping[str, Tensor] | None = None
) -> State:
    """``(1 − alpha)·a + alpha·b`` for every floating-point tensor; other tensors (integer buffers such as
    BatchNorm's ``num_batches_tracked``) are taken from ``a``.

    The endpoints are exact: ``alpha=0`` returns ``a``'s values and ``alpha=1`` ``b``'s. Tensors named in
    ``masks`` are multiplied by their mask, so masked weights are exactly zero at every point of the path.

    Raises:
        KeyError: the two states differ in names or shapes (every difference listed).
        ValueError: ``alpha`` outside [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    masks = masks or {}
    problems = [f"{n}: only in the first state" for n in a if n not in b]
    problems += [f"{n}: only in the second state" for n in b if n not in a]
    problems += [f"{n}: {tuple(a[n].shape)} vs {tuple(b[n].shape)}" for n in a if n in b and a[n].shape != b[n].shape]
    if unknown := sorted(set(masks) - set(a)):
        problems.append(f"masks for tensors not in the states: {unknown}")
    if problems:
        raise KeyError("The two states do not match: " + "; ".join(problems))
    out: State = {}
    for name, start in a.items():
        if start.is_floating_point():
            # lerp computes end − (end − start)·(1 − w) for w ≥ 0.5, so alpha = 1 gives b exactly.
            value = torch.lerp(start.detach().cpu(), b[name].detach().to("cpu", start.dtype), alpha)
        else:
            value = start.detach().cpu().clone()
        if name in masks:
            value = value.masked_fill(~masks[name].to(torch.bool), 0)  # exact zeros, even from inf or nan
        out[name] = value
    return out


def evenly_spaced(points: int) -> list[float]:
    """``points`` values of α from 0 to 1 inclusive (``points >= 2``), exact at both ends."""
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ValueError(f"points must be an int >= 2 (the path's two endpoints at least), got {points!r}")
    return [i / (points - 1) for i in range(points)]


# ---------------------------------------------------------------------------------------------- BatchNorm


def _device(model: nn.Module) -> torch.device:
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def default_forward(model: nn.Module, batch: Any) -> Tensor:
    """``model(x)`` for a batch ``x`` or ``(x, y, ...)``, with ``x`` moved to the model's device."""
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    return model(x.to(_device(model)))


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """BatchNorm layers (any dimension, SyncBatchNorm too) that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_batchnorm(
    model: nn.Module, batches: Iterable[Any], num_batches: int | None = None, forward: Forward = default_forward
) -> int:
    """Re-estimate every BatchNorm layer's running mean and variance from ``batches`` of training data.

    The statistics are reset and then accumulated as an equal-weight average over the batches (``momentum=None``),
    with the BatchNorm layers in training mode and every other module in eval mode (dropout off: the statistics
    should describe the activations of the network that is evaluated). Momenta and train/eval modes are restored.

    Args:
        model: any module; one without BatchNorm is left untouched (no data is read).
        batches: training batches, ``x`` or ``(x, y, ...)`` as ``forward`` expects.
        num_batches: use at most this many batches (``None``: all of them).
        forward: how to run the model on a batch (default: ``model(batch[0])``).

    Returns:
        The number of batches used (0 without BatchNorm layers).

    Raises:
        ValueError: ``batches`` is empty or ``num_batches < 1``.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches must be >= 1 or None, got {num_batches}")
    modes = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in layers]
    used = 0
    try:
        model.eval()
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average: every batch counts the same
            layer.train()
        for batch in batches:
            if num_batches is not None and used >= num_batches:
                break
            forward(model, batch)
            used += 1
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        for module, training in modes.items():
            module.training = training
    if used == 0:
        raise ValueError("recompute_batchnorm got no batches: pass training data to estimate statistics from")
    return used


# ---------------------------------------------------------------------------------------------- evaluation


def classification_evaluator(batches: Iterable[Any], forward: Forward = default_forward) -> Evaluator:
    """An evaluator for classifiers: error = fraction of ``argmax(logits) != y``, loss = mean cross-entropy.

    ``batches`` yields ``(x, y, ...)`` and must be re-iterable (a DataLoader or a list). ``forward(model, batch)``
    returns logits of shape ``(N, C)``, or ``(..., C)`` with labels of shape ``(...)`` (e.g. tokens). The model is
    evaluated in eval mode under ``no_grad`` and put back in the mode it was in.
    """

    @torch.no_grad()
    def evaluate(model: nn.Module) -> PointMetrics:
        training = model.training
        model.eval()
        wrong, loss, count = 0, 0.0, 0
        try:
            for batch in batches:
                logits = forward(model, batch)
                labels = batch[1].to(logits.device).reshape(-1)
                logits = logits.reshape(labels.numel(), -1).float()
                loss += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
                wrong += int((logits.argmax(-1) != labels).sum())
                count += labels.numel()
        finally:
            model.train(training)
        if count == 0:
            raise ValueError("the evaluation data is empty")
        return PointMetrics(wrong / count, loss / count)

    return evaluate


def barrier(values: Sequence[float]) -> float:
    """Highest value on the path minus the mean of its two endpoints (``values[0]`` and ``values[-1]``).

    Never negative: the maximum includes both endpoints.
    """
    if len(values) < 2:
        raise ValueError(f"a path needs its two endpoints at least, got {len(values)} values")
    return max(values) - (values[0] + values[-1]) / 2


@dataclass(frozen=True)
class PathResult:
    """Error and loss at evenly spaced points of the linear path between two networks.

    Attributes:
        alphas: interpolation weights, from 0 (first network) to 1 (second network).
        errors: error (fraction) at each alpha.
        losses: mean loss at each alpha.
    """

    alphas: tuple[float, ...]
    errors: tuple[float, ...]
    losses: tuple[float, ...]

    @property
    def error_barrier(self) -> float:
        return barrier(self.errors)

    @property
    def loss_barrier(self) -> float:
        return barrier(self.losses)

    @property
    def endpoint_errors(self) -> tuple[float, float]:
        return self.errors[0], self.errors[-1]

    @property
    def endpoint_losses(self) -> tuple[float, float]:
        return self.losses[0], self.losses[-1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "alphas": list(self.alphas),
            "errors": list(self.errors),
            "losses": list(self.losses),
            "error_barrier": self.error_barrier,
            "loss_barrier": self.loss_barrier,
            "endpoint_errors": list(self.endpoint_errors),
            "endpoint_losses": list(self.endpoint_losses),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PathResult:
        return cls(tuple(data["alphas"]), tuple(data["errors"]), tuple(data["losses"]))


def _copy(state: Mapping[str, Tensor]) -> State:
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in state.items()}


def _is_reiterable(batches: Any) -> bool:
    return batches is not None and iter(batches) is not batches


def linear_path(
    model: nn.Module,
    state_a: Mapping[str, Tensor],
    state_b: Mapping[str, Tensor],
    evaluate: Evaluator,
    points: int = 11,
    *,
    bn_batches: Iterable[Any] | None = None,
    bn_num_batches: int | None = None,
    recompute_bn: bool = True,
    forward: Forward = default_forward,
    masks: Mapping[str, Tensor] | None = None,
) -> PathResult:
    """Evaluate ``model`` with the weights of ``points`` evenly spaced points between ``state_a`` and ``state_b``.

    Args:
        model: a network of the architecture both states come from; pruned models keep their masks, and the
            masked weights are zero at every point. Its own weights are put back afterwards.
        state_a, state_b: the endpoints, as :func:`~lightning_lottery.core.dense_state` names them (a plain
            ``state_dict()`` for an unpruned model).
        evaluate: returns :class:`PointMetrics` for the model as loaded, e.g. :func:`classification_evaluator`.
        points: how many evenly spaced α in [0, 1], both endpoints included.
        bn_batches: re-iterable training batches (a DataLoader or a list) from which BatchNorm statistics are
            recomputed at every point, the endpoints included, so all points are measured alike.
        bn_num_batches: how many of those batches to use (``None``: all).
        recompute_bn: ``False`` keeps the interpolated running statistics (wrong for an interpolated network;
            for comparison only).
        forward: how to run the model on a batch for the BatchNorm pass.
        masks: masks to enforce on the path; default: the masks installed on ``model``.

    Raises:
        ValueError: the model has BatchNorm layers, ``recompute_bn`` is set and no ``bn_batches`` were given.
        TypeError: ``bn_batches`` is a one-shot iterator (it would be empty after the first point).
    """
    alphas = evenly_spaced(points)
    needs_bn = recompute_bn and bool(batchnorm_layers(model))
    if needs_bn and bn_batches is None:
        raise ValueError(
            "the model has BatchNorm layers: pass bn_batches (training data) so their running statistics are "
            "recomputed at every point of the path, or recompute_bn=False to keep interpolated statistics"
        )
    if needs_bn and not _is_reiterable(bn_batches):
        raise TypeError("bn_batches must be re-iterable (a DataLoader or a list), not a one-shot iterator")
    masks = installed_masks(model) if masks is None else masks
    # Copies first: the states may hold the model's own live tensors, which every point overwrites.
    state_a, state_b = _copy(state_a), _copy(state_b)
    original = dense_state(model)
    errors, losses = [], []
    try:
        for alpha in alphas:
            load_dense_state(model, interpolate(state_a, state_b, alpha, masks))
            if needs_bn:
                recompute_batchnorm(model, bn_batches, bn_num_batches, forward)  # type: ignore[arg-type]
            metrics = evaluate(model)
            errors.append(float(metrics.error))
            losses.append(float(metrics.loss))
    finally:
        load_dense_state(model, original)
    return PathResult(tuple(alphas), tuple(errors), tuple(losses))


# ---------------------------------------------------------------------------------------------- decisions

# Two-sided 95% Student-t quantiles t(0.975, df) for df = 1..30.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_Z975 = 1.959964


def t_quantile_975(df: int) -> float:
    """t(0.975, df): a table up to 30 degrees of freedom, the Cornish-Fisher expansion beyond (error < 1e-4)."""
    if df < 1:
        raise ValueError(f"a t interval needs at least 1 degree of freedom (2 values), got df={df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


class Interval(NamedTuple):
    """Mean of ``n`` values and its two-sided 95% Student-t confidence interval ``[lo, hi]``."""

    mean: float
    lo: float
    hi: float
    n: int


def confidence_interval(values: Sequence[float]) -> Interval:
    """Mean ± t(0.975, n − 1)·sd/√n over ``values`` (e.g. seeds). With one value the interval is that value
    (no spread is known)."""
    values = [float(v) for v in values]
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(f"need one or more finite values, got {values}")
    mean = statistics.fmean(values)
    if len(values) == 1:
        return Interval(mean, mean, mean, 1)
    half = t_quantile_975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half, len(values))


def stability_bound(barriers: float | Sequence[float]) -> float:
    """The number compared with the threshold: a single barrier itself, or over several seeds the upper end of
    their 95% confidence interval (stable only if the data rule out a barrier at the threshold)."""
    if isinstance(barriers, (int, float)):
        return float(barriers)
    return confidence_interval(barriers).hi


DEFAULT_GRID = (0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1)  # fractions of the training budget


def grid_steps(total_steps: int, fractions: Sequence[float] = DEFAULT_GRID) -> list[int]:
    """Candidate rewind steps: ``round(f * total_steps)`` for each fraction, deduplicated and sorted.

    Example: ``grid_steps(30000)`` is ``[0, 30, 150, 300, 600, 1500, 3000]``.

    Raises:
        ValueError: ``total_steps < 1`` or a fraction outside [0, 1).
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be an int >= 1, got {total_steps!r}")
    if bad := [f for f in fractions if not 0.0 <= f < 1.0]:
        raise ValueError(f"grid fractions must be in [0, 1), got {bad}")
    return sorted({round(f * total_steps) for f in fractions})


def earliest_stable(
    points: Sequence[int],
    barriers: Sequence[float | Sequence[float]],
    threshold: float = DEFAULT_THRESHOLD,
    persistent: bool = False,
) -> int | None:
    """The earliest grid point at which the network is stable, or ``None`` if it is stable at none.

    Args:
        points: starting steps (or any increasing positions), e.g. ``[0, 100, 500, 2000]``.
        barriers: the error barrier measured from each point: one value, or one value per seed (then the upper
            end of the 95% confidence interval is compared, see :func:`stability_bound`).
        threshold: stable means a barrier (bound) strictly below this; the paper's 2% is ``0.02``.
        persistent: require every later grid point to be stable too (ignores an isolated early dip).

    Raises:
        ValueError: lengths differ, points are not strictly increasing, or the threshold is not positive.
    """
    if len(points) != len(barriers):
        raise ValueError(f"{len(points)} points but {len(barriers)} barriers")
    if any(b <= a for a, b in itertools.pairwise(points)):
        raise ValueError(f"points must be strictly increasing, got {list(points)}")
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    stable = [stability_bound(b) < threshold for b in barriers]
    for i, point in enumerate(points):
        if stable[i] and (not persistent or all(stable[i:])):
            return point
    return None
