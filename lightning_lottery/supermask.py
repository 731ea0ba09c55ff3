"""Supermasks on frozen random weights: edge-popup (Ramanujan et al. 2020; Zhou et al. 2019 for supermasks).

Every Linear/Conv layer keeps its weights frozen at a random initialisation and learns one score per weight.
The forward uses ``weight * mask``, where the mask keeps the ``keep`` fraction of the layer's weights with the
largest ``|score|`` (exactly ``round(keep * numel)`` per layer, the paper's per-layer top-k). The top-k is not
differentiable; its gradient is passed straight through to the scores, so ``d loss / d score = d loss / d
(weight * mask) * weight`` (times ``sign(score)`` from the absolute value), as in the paper.

Why an in-place class swap rather than ``torch.nn.utils.parametrize``: each converted layer stays the same object
and an instance of its class (``isinstance(m, nn.Linear)`` holds), and its frozen weight keeps its name
(``fc1.weight``; the scores are the new ``fc1.scores``). Everything keyed on parameter names -- checkpoints,
``output_parameter``, the lottery callback's default selection, tickets -- keeps working, where a parametrization
would rename the weight to ``fc1.parametrizations.weight.original`` and recompute it on every attribute access.

Biases are set to zero and frozen, i.e. the paper's bias-free layers without changing the architecture; every
other parameter of the model (e.g. BatchNorm affine weights) is frozen too, which makes BatchNorm the paper's
non-affine variant. Only the scores are trainable: optimizers should be given
``[p for p in model.parameters() if p.requires_grad]`` (``ImageClassifier`` does); plain ``model.parameters()``
also works with Adam/SGD/Adagrad, which skip parameters without gradients.

Usage::

    model = EdgePopup(keep=0.5, init="signed_constant").apply(model)   # returns the same, converted model
    trainer = pl.Trainer(callbacks=[EdgePopupCallback(keep=0.5)])      # or: convert at fit start
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

__all__ = [
    "INITS",
    "EdgePopup",
    "EdgePopupCallback",
    "SupermaskConv1d",
    "SupermaskConv2d",
    "SupermaskConv3d",
    "SupermaskLinear",
    "active_counts",
    "kept_count",
    "score_parameters",
    "supermask_layers",
]

Init = Literal["kaiming_normal", "signed_constant"]
INITS: tuple[str, ...] = ("kaiming_normal", "signed_constant")


def kept_count(numel: int, keep: float) -> int:
    """Weights a layer of ``numel`` weights keeps: ``round(keep * numel)``, at least 1."""
    return min(numel, max(1, round(keep * numel)))


class _TopK(torch.autograd.Function):
    """Mask of the ``k`` largest entries of ``scores`` (1.0 kept, 0.0 dropped); straight-through gradient."""

    @staticmethod
    def forward(ctx: Any, scores: Tensor, k: int) -> Tensor:
        flat = scores.flatten()
        mask = torch.zeros_like(flat)
        mask.scatter_(0, torch.topk(flat, k, sorted=False).indices, 1.0)
        return mask.view_as(scores)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


class _SupermaskMixin:
    """What converted layers share: the scores, ``keep``, and the masked weight."""

    weight: Tensor
    scores: nn.Parameter
    keep: float

    def mask(self) -> Tensor:
        """The current 0/1 mask (differentiable towards the scores, straight-through)."""
        return _TopK.apply(self.scores.abs(), kept_count(self.scores.numel(), self.keep))

    def masked_weight(self) -> Tensor:
        return self.weight * self.mask()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, keep={self.keep}"  # type: ignore[misc]


class SupermaskLinear(_SupermaskMixin, nn.Linear):
    """An ``nn.Linear`` whose forward uses ``weight * top-k(|scores|)``; made by :class:`EdgePopup`."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.masked_weight(), self.bias)


class SupermaskConv1d(_SupermaskMixin, nn.Conv1d):
    """An ``nn.Conv1d`` with a supermask; see :class:`SupermaskLinear`."""

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.masked_weight(), self.bias)


class SupermaskConv2d(_SupermaskMixin, nn.Conv2d):
    """An ``nn.Conv2d`` with a supermask; see :class:`SupermaskLinear`."""

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.masked_weight(), self.bias)


class SupermaskConv3d(_SupermaskMixin, nn.Conv3d):
    """An ``nn.Conv3d`` with a supermask; see :class:`SupermaskLinear`."""

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.masked_weight(), self.bias)


# Exact classes only: a subclass of nn.Linear may have its own forward, which the swap would silently replace.
_SWAPS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: SupermaskLinear,
    nn.Conv1d: SupermaskConv1d,
    nn.Conv2d: SupermaskConv2d,
    nn.Conv3d: SupermaskConv3d,
}


def supermask_layers(model: nn.Module) -> dict[str, _SupermaskMixin]:
    """The converted layers of ``model`` by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, _SupermaskMixin)}


def score_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The scores of every converted layer (what the optimizer should train)."""
    return [layer.scores for layer in supermask_layers(model).values()]


@torch.no_grad()
def active_counts(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``(active weights, total weights)`` per converted layer, from the current masks."""
    return {name: (int(layer.mask().sum()), layer.scores.numel()) for name, layer in supermask_layers(model).items()}


def _fan_in(weight: Tensor) -> int:
    return weight.shape[1] * math.prod(weight.shape[2:])


class EdgePopup:
    """Turn a model's Linear/Conv layers into edge-popup supermask layers over frozen random weights.

    Args:
        keep: fraction of each layer's weights the mask keeps (the paper's ``prune_rate``), in (0, 1].
        init: the frozen weights: ``"kaiming_normal"`` N(0, std²) or ``"signed_constant"`` ±std with random
            signs, where ``std = sqrt(2 / fan_in)`` (Kaiming, ReLU gain). The paper's signed constant is its best.
        scale_fan: use ``fan_in * keep`` in ``std`` (the paper's "scaled" variants), which keeps activations at
            the scale of a dense Kaiming network once only ``keep`` of the inputs are active.
        exclude: module names (as in ``named_modules``) left as they are (their parameters still frozen).

    Scores are drawn with ``kaiming_uniform_(a=sqrt(5))`` (PyTorch's default weight init); only their order
    matters at the start. Random draws come from the global torch RNG (seed it for reproducible runs).
    """

    def __init__(
        self, keep: float = 0.5, init: Init = "signed_constant", scale_fan: bool = False, exclude: Sequence[str] = ()
    ) -> None:
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"keep must be in (0, 1] (the fraction of weights each layer keeps), got {keep}")
        if init not in INITS:
            raise ValueError(f"Unknown supermask init {init!r}; valid: {', '.join(INITS)}")
        self.keep = float(keep)
        self.init = init
        self.scale_fan = bool(scale_fan)
        self.exclude = tuple(exclude)

    def apply(self, model: nn.Module) -> nn.Module:
        """Convert ``model`` in place and return it. Raises ``ValueError`` if it has no Linear/Conv layer."""
        if supermask_layers(model):
            raise ValueError("The model already has supermask layers: apply EdgePopup once")
        targets = [(n, m) for n, m in model.named_modules() if type(m) in _SWAPS and n not in self.exclude]
        if not targets:
            raise ValueError(f"No nn.Linear/nn.Conv1d/2d/3d layer to convert in {type(model).__name__}")
        for param in model.parameters():
            param.requires_grad_(False)
        for _, module in targets:
            self._convert(module)
        return model

    @torch.no_grad()
    def _convert(self, module: nn.Module) -> None:
        weight = module.weight
        fan = _fan_in(weight) * (self.keep if self.scale_fan else 1.0)
        std = math.sqrt(2.0 / fan)
        if self.init == "kaiming_normal":
            weight.normal_(0.0, std)
        else:
            weight.copy_(torch.where(torch.rand_like(weight) < 0.5, -std, std))
        if module.bias is not None:
            module.bias.zero_()
        scores = torch.empty_like(weight)
        nn.init.kaiming_uniform_(scores, a=math.sqrt(5))
        module.__class__ = _SWAPS[type(module)]  # same object, same attributes; only the forward changes
        module.keep = self.keep
        module.scores = nn.Parameter(scores)  # registered after the weight: state_dict order is weight, bias, scores


class EdgePopupCallback(pl.Callback):
    """Apply :class:`EdgePopup` to the LightningModule at the start of fitting, before optimizers are built.

    For modules that cannot take a supermask option. The module's ``configure_optimizers`` then sees frozen
    weights (``requires_grad=False``) beside the scores; Adam/SGD/Adagrad skip them. A checkpoint of such a run
    holds ``*.scores``: load it into ``EdgePopup(...).apply(MyModule(...))``, not into a plain ``MyModule``.
    """

    def __init__(self, keep: float = 0.5, init: Init = "signed_constant", scale_fan: bool = False) -> None:
        self.edge_popup = EdgePopup(keep=keep, init=init, scale_fan=scale_fan)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and not supermask_layers(pl_module):
            self.edge_popup.apply(pl_module)
