"""Pruning at initialisation: saliency scores computed before any training, and masks from them.

Four criteria, each scoring every weight of the prunable tensors so that **higher scores survive**:

- ``"magnitude_init"``: |θ| of the weights as they are (call it on θ₀).
- ``"snip"`` (Lee et al. 2019, "SNIP: single-shot network pruning based on connection sensitivity"):
  |∂L/∂θ ⊙ θ|, the loss gradient averaged over a few batches of data.
- ``"grasp"`` (Wang et al. 2020, "Picking winning tickets before training by preserving gradient flow"):
  the paper scores S(−θ) = −θ ⊙ Hg (H the Hessian of the loss, g its gradient) and *removes* the weights with the
  highest S, those whose removal reduces the gradient norm least (or increases it). Here the score is θ ⊙ Hg = −S,
  so that keeping the highest scores removes exactly the paper's highest-S weights.
- ``"synflow"`` (Tanaka et al. 2020, "Pruning neural networks without any data by iteratively conserving synaptic
  flow"): data-free and iterative. Every parameter and buffer is replaced by its absolute value, an all-ones input
  goes through the network in eval mode and R = Σ output, i.e. 1ᵀ(∏ₗ|Wₗ|)1 for a network without biases; the
  score is |∂R/∂θ ⊙ θ|, computed in float64 by default (R overflows float32 in deep networks). Masks come from
  ``iterations`` (100 in the paper) rounds of scoring and pruning on an exponential schedule: after iteration k,
  a fraction (keep / alive)^(k / iterations) of the weights survives.

Masks have exact counts per :class:`~lightning_lottery.core.schedule.PruneGroup` (global or per-layer, as the
schedule's groups say) and break ties by position, through the same selection as magnitude pruning. Scoring
leaves the model as it found it: parameters, buffers (BatchNorm statistics included), ``.grad`` and train/eval
mode.

Example::

    >>> from torch import nn
    >>> from lightning_lottery.core import select_prunable
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> tensors = select_prunable(model)
    >>> groups = sparsity_groups(tensors, sparsity=0.75, scope="layer")
    >>> masks = pruning_at_init_masks("synflow", model, tensors, groups, input_shape=(4,), iterations=10)
    >>> [int(m.sum()) for m in masks.values()]
    [8, 4]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_lottery.core.pruning import Masks, magnitude_masks
from lightning_lottery.core.schedule import PruneGroup, SparsitySchedule
from lightning_lottery.core.selection import PrunableTensor

Method = Literal["snip", "grasp", "synflow", "magnitude_init"]
METHODS: tuple[str, ...] = ("snip", "grasp", "synflow", "magnitude_init")
DATA_METHODS: tuple[str, ...] = ("snip", "grasp")  # the criteria that need batches and a loss
Scores = dict[str, Tensor]
LossFn = Callable[[nn.Module, Any], Tensor]
"""``loss_fn(model, batch)`` → a scalar loss; the batch is passed as the caller's iterable yields it."""


def classification_loss(temperature: float = 1.0) -> LossFn:
    """Cross-entropy of ``model(x) / temperature`` on a batch ``(x, y)`` (GraSP's reference code divides the
    logits by 200; SNIP uses 1)."""
    if not temperature > 0:
        raise ValueError(f"`temperature={temperature!r}` must be > 0")

    def loss(model: nn.Module, batch: Any) -> Tensor:
        x, y = batch[0], batch[1]
        return nn.functional.cross_entropy(model(x) / temperature, y)

    return loss


def sparsity_groups(tensors: Mapping[str, PrunableTensor], sparsity: float, scope: str = "global") -> list[PruneGroup]:
    """Groups pruning ``tensors`` to ``sparsity`` in one shot: one group for all (``"global"``) or one per tensor
    (``"layer"``), with exact surviving counts."""
    schedule = SparsitySchedule.build([sparsity], 1, scope)
    return schedule.groups({name: t.numel() for name, t in tensors.items()}, 1)


# ---------------------------------------------------------------------------------------------------- scores


def magnitude_scores(tensors: Mapping[str, PrunableTensor]) -> Scores:
    """|θ| of each prunable tensor as it is now."""
    return {name: t.tensor.detach().abs().clone() for name, t in tensors.items()}


def snip_scores(
    model: nn.Module, tensors: Mapping[str, PrunableTensor], batches: Iterable[Any], loss_fn: LossFn
) -> Scores:
    """SNIP: |∂L/∂θ ⊙ θ| with the gradient averaged over ``batches`` (the network in train mode, as masked now)."""
    params = _params(tensors)
    total = [torch.zeros_like(p) for p in params]
    with _untouched(model, train=True):
        count = 0
        for batch in batches:
            grads = torch.autograd.grad(_loss(loss_fn, model, batch), params, allow_unused=True)
            _accumulate(total, grads)
            count += 1
    _require_batches(count, "snip")
    return {name: (g / count * p.detach()).abs() for name, g, p in zip(tensors, total, params)}


def grasp_scores(
    model: nn.Module, tensors: Mapping[str, PrunableTensor], batches: Iterable[Any], loss_fn: LossFn
) -> Scores:
    """GraSP, signed so that higher survives: θ ⊙ Hg = −S(−θ) of the paper.

    g is the loss gradient averaged over ``batches``; Hg the Hessian-gradient product, averaged over the same
    batches (one double-backward each). Both are taken with respect to the prunable tensors only, as in the paper.
    """
    params = _params(tensors)
    batches = list(batches)
    _require_batches(len(batches), "grasp")
    with _untouched(model, train=True):
        gradient = [torch.zeros_like(p) for p in params]
        for batch in batches:
            _accumulate(gradient, torch.autograd.grad(_loss(loss_fn, model, batch), params, allow_unused=True))
        gradient = [g / len(batches) for g in gradient]
        hessian_gradient = [torch.zeros_like(p) for p in params]
        for batch in batches:
            grads = torch.autograd.grad(_loss(loss_fn, model, batch), params, create_graph=True, allow_unused=True)
            flow = sum((gr * g).sum() for gr, g in zip(grads, gradient) if gr is not None)
            if isinstance(flow, Tensor) and flow.requires_grad:
                _accumulate(hessian_gradient, torch.autograd.grad(flow, params, allow_unused=True))
    return {name: p.detach() * hg / len(batches) for name, p, hg in zip(tensors, params, hessian_gradient)}


def synflow_scores(
    model: nn.Module,
    tensors: Mapping[str, PrunableTensor],
    input_shape: Sequence[int],
    masks: Mapping[str, Tensor] | None = None,
    dtype: torch.dtype | None = torch.float64,
) -> Scores:
    """One SynFlow scoring of the network linearised as |θ| (masked by ``masks``); touches no data.

    ``dtype``: the precision of the scoring pass (``None``: the model's). R, a product of absolute weights over the
    layers, overflows float32 in deep networks, so float64 by default."""
    with _linearised(model, tensors, dtype) as magnitudes:
        return _synflow_pass(model, tensors, magnitudes, input_shape, _full_masks(tensors, masks))


# ---------------------------------------------------------------------------------------------------- masks


def top_score_masks(scores: Mapping[str, Tensor], masks: Mapping[str, Tensor], groups: Sequence[PruneGroup]) -> Masks:
    """Keep the ``keep`` highest-scored surviving entries of each group (exact counts, ties by position).

    Non-negative scores rank as they are; signed scores (GraSP) are first mapped onto non-negative keys in the
    same order (exactly for float32 scores; float64 scores are ranked at float32 precision, ties by position).

    Raises:
        ValueError: a score is NaN.
    """
    _check_numbers(scores)
    signed = any(bool((score < 0).any()) for score in scores.values())
    keys = {name: _order_keys(s) if signed else s for name, s in scores.items()}
    return magnitude_masks(keys, masks, groups)


def synflow_masks(
    model: nn.Module,
    tensors: Mapping[str, PrunableTensor],
    groups: Sequence[PruneGroup],
    input_shape: Sequence[int],
    masks: Mapping[str, Tensor] | None = None,
    iterations: int = 100,
    dtype: torch.dtype | None = torch.float64,
) -> Masks:
    """SynFlow's iterative pruning: ``iterations`` rounds of scoring and pruning along an exponential schedule
    down to each group's ``keep`` count; data-free (an all-ones input of ``input_shape``, no batch dimension).
    ``dtype`` as for :func:`synflow_scores`."""
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"`iterations={iterations!r}` must be an int >= 1 (the paper uses 100)")
    current = _full_masks(tensors, masks)
    alive = {g: sum(int(current[n].count_nonzero()) for n in g.names) for g in groups}
    with _linearised(model, tensors, dtype) as magnitudes:
        for k in range(1, iterations + 1):
            scores = _synflow_pass(model, tensors, magnitudes, input_shape, current)
            stage = [PruneGroup(g.names, _exponential_keep(alive[g], g.keep, k, iterations)) for g in groups]
            _check_numbers(scores)
            current = {**current, **magnitude_masks(scores, current, stage)}  # scores >= 0: rank them as they are
    return {name: current[name].cpu() for name in tensors}


def pruning_at_init_masks(
    method: Method | str,
    model: nn.Module,
    tensors: Mapping[str, PrunableTensor],
    groups: Sequence[PruneGroup],
    masks: Mapping[str, Tensor] | None = None,
    *,
    batches: Iterable[Any] | None = None,
    loss_fn: LossFn | None = None,
    input_shape: Sequence[int] | None = None,
    iterations: int = 100,
) -> Masks:
    """One-shot masks before training by ``method``; CPU bool tensors with each group's exact ``keep`` count.

    Args:
        method: ``"snip"``, ``"grasp"``, ``"synflow"`` or ``"magnitude_init"``.
        model: the network at initialisation (masks already installed on it are respected).
        tensors: its prunable tensors (:func:`~lightning_lottery.core.select_prunable`).
        groups: tensors sharing a threshold and their surviving counts, e.g. ``SparsitySchedule.groups(...)``
            or :func:`sparsity_groups`.
        masks: current masks; only weights they keep can survive (default: all kept).
        batches: SNIP/GraSP only: a few batches, on the model's device, as ``loss_fn`` takes them.
        loss_fn: SNIP/GraSP only: ``loss_fn(model, batch)`` → scalar loss, e.g. :func:`classification_loss`.
        input_shape: SynFlow only: the shape of one input, without the batch dimension (e.g. ``(1, 28, 28)``).
        iterations: SynFlow only: prune-and-rescore iterations (100 in the paper).

    Raises:
        ValueError: an unknown method, or the inputs a method needs are missing (or given to SynFlow: it must
            not see data).
    """
    if method not in METHODS:
        raise ValueError(f"`pruning={method!r}` is not one of {', '.join(repr(m) for m in METHODS)}")
    current = _full_masks(tensors, masks)
    if method in DATA_METHODS:
        if batches is None or loss_fn is None:
            raise ValueError(f"`pruning={method!r}` scores weights on data: pass `batches` and `loss_fn`")
        score = snip_scores if method == "snip" else grasp_scores
        scores = score(model, tensors, batches, loss_fn)
    elif method == "synflow":
        if batches is not None:
            raise ValueError("`pruning='synflow'` is data-free: pass `input_shape`, not `batches`")
        if input_shape is None:
            raise ValueError("`pruning='synflow'` needs `input_shape`: the shape of one input without the batch")
        return synflow_masks(model, tensors, groups, input_shape, current, iterations)
    else:
        scores = magnitude_scores(tensors)
    return {name: mask.cpu() for name, mask in top_score_masks(scores, current, groups).items()}


# ---------------------------------------------------------------------------------------------------- helpers


def _params(tensors: Mapping[str, PrunableTensor]) -> list[Tensor]:
    params = [t.tensor for t in tensors.values()]
    frozen = [name for name, p in zip(tensors, params) if not p.requires_grad]
    if frozen:
        raise ValueError(f"saliency needs gradients, but {frozen} have requires_grad=False")
    return params


def _loss(loss_fn: LossFn, model: nn.Module, batch: Any) -> Tensor:
    loss = loss_fn(model, batch)
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ValueError(f"`loss_fn` must return a scalar tensor, got {type(loss).__name__}")
    return loss.reshape(())


def _accumulate(total: list[Tensor], grads: Sequence[Tensor | None]) -> None:
    for acc, grad in zip(total, grads):
        if grad is not None:
            acc.add_(grad.detach())


def _require_batches(count: int, method: str) -> None:
    if count == 0:
        raise ValueError(f"`pruning={method!r}` got no batches to score on")


def _full_masks(tensors: Mapping[str, PrunableTensor], masks: Mapping[str, Tensor] | None) -> Masks:
    masks = masks or {}
    return {
        name: (masks[name] if name in masks else torch.ones(t.shape, dtype=torch.bool)).to(
            device=t.tensor.device, dtype=torch.bool
        )
        for name, t in tensors.items()
    }


def _state_tensors(model: nn.Module) -> list[Tensor]:
    """Every parameter and buffer of the model, each once."""
    seen: dict[int, Tensor] = {}
    for tensor in (*model.parameters(), *model.buffers()):
        seen.setdefault(id(tensor), tensor)
    return list(seen.values())


@contextmanager
def _untouched(model: nn.Module, train: bool) -> Iterator[None]:
    """Run in train or eval mode; afterwards every parameter, buffer and mode is as before."""
    modes = {module: module.training for module in model.modules()}
    state = _state_tensors(model)
    saved = [t.detach().clone() for t in state]
    model.train(train)
    try:
        yield
    finally:
        with torch.no_grad():
            for tensor, value in zip(state, saved):
                tensor.copy_(value)
        for module, mode in modes.items():
            module.training = mode


@contextmanager
def _linearised(
    model: nn.Module, tensors: Mapping[str, PrunableTensor], dtype: torch.dtype | None
) -> Iterator[dict[str, Tensor]]:
    """SynFlow's linearised network, in eval mode: every floating-point parameter and buffer swapped for its absolute
    value (in ``dtype`` if given); yields |θ| of the prunable tensors. The original tensors are swapped back on exit,
    never written to."""
    modes = {module: module.training for module in model.modules()}
    params = list(dict.fromkeys(model.parameters()))
    originals = [p.data for p in params]
    buffers = [(m, name, b) for m in model.modules() for name, b in m._buffers.items() if b is not None]
    swapped: dict[int, Tensor] = {}
    try:
        with torch.no_grad():
            for p in params:
                if p.is_floating_point():
                    p.data = p.data.abs().to(dtype or p.dtype)
            for module, name, buffer in buffers:
                if buffer.is_floating_point():  # a buffer shared by several modules stays shared
                    module._buffers[name] = swapped.setdefault(id(buffer), buffer.abs().to(dtype or buffer.dtype))
        model.eval()
        yield {name: t.tensor.detach().clone() for name, t in tensors.items()}
    finally:
        for p, data in zip(params, originals):
            p.data = data
        for module, name, buffer in buffers:
            module._buffers[name] = buffer
        for module, mode in modes.items():
            module.training = mode


def _synflow_pass(
    model: nn.Module,
    tensors: Mapping[str, PrunableTensor],
    magnitudes: Mapping[str, Tensor],
    input_shape: Sequence[int],
    masks: Mapping[str, Tensor],
) -> Scores:
    params = _params(tensors)
    with torch.no_grad():
        for name, p in zip(tensors, params):
            p.copy_(magnitudes[name] * masks[name])
    ones = torch.ones((1, *input_shape), dtype=params[0].dtype, device=params[0].device)
    with torch.enable_grad():
        output = model(ones)
        if not isinstance(output, Tensor):
            raise ValueError(f"SynFlow needs a model that returns one tensor, got {type(output).__name__}")
        flow = output.sum()
        if not torch.isfinite(flow):
            raise ValueError(
                f"SynFlow's R (the product of absolute weights over the layers) overflowed in {flow.dtype}: "
                "score in float64 (dtype=torch.float64, the default)"
            )
        grads = torch.autograd.grad(flow, params, allow_unused=True)
    return {
        name: (torch.zeros_like(p) if g is None else (g * p).abs()).detach()
        for name, g, p in zip(tensors, grads, params)
    }


def _check_numbers(scores: Mapping[str, Tensor]) -> None:
    for name, score in scores.items():
        if torch.isnan(score).any():
            raise ValueError(f"saliency scores of {name!r} contain NaN: the scoring pass overflowed or diverged")


def _exponential_keep(alive: int, keep: int, step: int, steps: int) -> int:
    """Survivors after ``step`` of ``steps`` on the exponential schedule from ``alive`` down to ``keep``."""
    if step >= steps or alive <= keep:
        return min(alive, keep)
    if keep == 0:
        return math.floor(alive * (1.0 - step / steps) + 0.5)  # a target of nothing: shrink linearly instead
    return max(keep, min(alive, math.floor(alive * (keep / alive) ** (step / steps) + 0.5)))


def _order_keys(score: Tensor) -> Tensor:
    """Non-negative float64 keys in exactly the order of ``score`` (as float32): the IEEE bit patterns, with
    negative numbers' order reversed, are integers below 2**32, which float64 holds exactly."""
    value = score.detach().float() + 0.0  # -0.0 becomes +0.0
    bits = value.view(torch.int32).to(torch.int64)
    magnitude = bits & 0x7FFFFFFF
    keys = torch.where(bits >= 0, magnitude + 2**31, 2**31 - 1 - magnitude)
    return keys.to(torch.float64)
