"""Deployable pruned models: permanent zeros, safetensors files any loader reads, and 2:4 semi-structured Linear
weights that run on sparse tensor cores (CUDA, compute capability >= 8.0).

The file always holds the dense masked weights: safetensors stores plain tensors, and the compressed 2:4 format is
specific to a GPU backend (cuSPARSELt or CUTLASS). On a capable GPU :func:`to_semi_structured` compresses the eligible
Linear layers in memory, from the model or from the file loaded anywhere.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from lightning_lottery.core import remove_masks
from lightning_lottery.core.selection import named_tensor_sites
from lightning_lottery.core.structure import NMStructure, kept_per_group

SEMI_STRUCTURED = NMStructure(2, 4)
SEMI_STRUCTURED_DTYPES = (torch.float16, torch.bfloat16)
_MIN_CAPABILITY = (8, 0)
# Modules whose eval forward may hand the weights of their Linear children to one fused native kernel, which does not
# accept a semi-structured tensor.
_FUSED_OWNERS = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


@dataclass(frozen=True)
class ExportSummary:
    """What an export did.

    Attributes:
        dense_parameters: all parameters of the model.
        nonzero_parameters: those that are not zero after pruning.
        semi_structured: Linear layers now holding 2:4 semi-structured weights (empty unless converted on a GPU).
        kept_dense: Linear layers left dense by a semi-structured export, with the reason for each.
    """

    dense_parameters: int
    nonzero_parameters: int
    semi_structured: tuple[str, ...] = ()
    kept_dense: Mapping[str, str] = field(default_factory=dict)

    @property
    def compression(self) -> float:
        return self.dense_parameters / max(self.nonzero_parameters, 1)


def semi_structured_unavailable() -> str | None:
    """Why this machine cannot run 2:4 semi-structured kernels, or ``None`` when it can."""
    if not torch.cuda.is_available():
        return "no CUDA GPU is available"
    capability = torch.cuda.get_device_capability()
    if tuple(capability) < _MIN_CAPABILITY:
        return f"{torch.cuda.get_device_name()} has compute capability {capability[0]}.{capability[1]}"
    return None


def semi_structured_candidates(model: nn.Module) -> tuple[dict[str, nn.Linear], dict[str, str]]:
    """The Linear layers whose weight can be stored 2:4 semi-structured, and why each other Linear cannot.

    A weight qualifies when every group of 4 consecutive input features holds at most 2 nonzeros, it is used by this
    Linear alone (not tied to an embedding), and no fused native module (attention, ``nn.Transformer*Layer``) reads it.
    """
    shared = [sites for sites in named_tensor_sites(model).values() if len(sites) > 1]
    tied = {id(module) for sites in shared for module, attr in sites if attr == "weight"}
    fused = {id(child) for owner in model.modules() if isinstance(owner, _FUSED_OWNERS) for child in owner.modules()}
    eligible: dict[str, nn.Linear] = {}
    reasons: dict[str, str] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        reason = _ineligible(module, tied, fused)
        if reason is None:
            eligible[name] = module
        else:
            reasons[name] = reason
    return eligible, reasons


def _ineligible(module: nn.Linear, tied: set[int], fused: set[int]) -> str | None:
    weight = module.weight.detach()
    if id(module) in fused:
        return "inside a module with a fused native forward (attention or nn.Transformer*Layer)"
    if any(isinstance(h, nn.utils.prune.BasePruningMethod) for h in module._forward_pre_hooks.values()):
        return "still pruned by a mask hook (export removes the hooks first)"
    if id(module) in tied:
        return "its weight is tied to another module (e.g. an embedding)"
    if weight.shape[1] % SEMI_STRUCTURED.m:
        return f"in_features {weight.shape[1]} is not a multiple of 4"
    dense_groups = int((kept_per_group(weight, SEMI_STRUCTURED.m) > SEMI_STRUCTURED.n).sum())
    if dense_groups:
        groups = weight.numel() // SEMI_STRUCTURED.m
        return f"not 2:4: {dense_groups} of {groups} groups of 4 input weights hold more than 2 nonzeros"
    return None


def _compress(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (CUDA, fp16/bf16, 2:4) compressed by cuSPARSELt, or by CUTLASS where cuSPARSELt is missing."""
    from torch.sparse import SparseSemiStructuredTensorCUTLASS, to_sparse_semi_structured

    if torch.backends.cusparselt.is_available():
        return to_sparse_semi_structured(weight)
    return SparseSemiStructuredTensorCUTLASS.from_dense(weight)


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in SEMI_STRUCTURED_DTYPES:
        raise ValueError(
            f"`dtype={dtype}`: 2:4 semi-structured kernels run in torch.float16 or torch.bfloat16 (pass one of them)"
        )


def to_semi_structured(
    model: nn.Module,
    dtype: torch.dtype = torch.float16,
    device: torch.device | str | None = None,
) -> tuple[tuple[str, ...], dict[str, str]]:
    """Move ``model`` to the GPU in ``dtype`` and store its eligible Linear weights 2:4 semi-structured, in place.

    The converted weights are frozen (inference only) and the model is put in eval mode.

    Args:
        model: a model whose pruning is permanent (e.g. after :func:`export_pruned`, or loaded from its file).
        dtype: ``torch.float16`` or ``torch.bfloat16``.
        device: a CUDA device (default: the current one).

    Returns:
        The converted Linear layers' names, and the other Linear layers with the reason each stays dense.

    Raises:
        RuntimeError: no CUDA GPU of compute capability >= 8.0.

    Example (on an Ampere or newer GPU)::

        model = Net()
        model.load_state_dict(safetensors.torch.load_file("model.safetensors"))
        converted, dense = to_semi_structured(model, torch.bfloat16)
        with torch.inference_mode():
            logits = model(x.cuda().bfloat16())
    """
    _check_dtype(dtype)
    reason = semi_structured_unavailable()
    if reason is not None:
        raise RuntimeError(
            f"2:4 semi-structured kernels need a CUDA GPU of compute capability >= 8.0 (Ampere or newer): {reason}"
        )
    eligible, kept_dense = semi_structured_candidates(model)
    model.to(device=device if device is not None else torch.device("cuda", torch.cuda.current_device()), dtype=dtype)
    converted = []
    for name, module in eligible.items():
        try:
            sparse = _compress(module.weight.detach().contiguous())
        except RuntimeError as err:  # e.g. a shape the kernels do not tile
            kept_dense[name] = f"torch refused it: {err}"
            continue
        module.weight = nn.Parameter(sparse, requires_grad=False)
        converted.append(name)
    model.eval()
    return tuple(converted), kept_dense


def export_pruned(
    model: nn.Module,
    path: str | os.PathLike[str] | None = None,
    semi_structured: bool = False,
    dtype: torch.dtype = torch.float16,
) -> ExportSummary:
    """Make pruning permanent (``prune.remove``): a plain model with zeros, optionally saved as safetensors.

    Args:
        model: a pruned model (e.g. after ``Ticket.apply`` and training), changed in place.
        path: where to write the dense masked weights (safetensors, metadata ``{"format": "pt", ...}`` so standard
            loaders read it; ``semi_structured_layers`` lists the 2:4 Linear layers).
        semi_structured: also store eligible (2:4) Linear weights as ``torch.sparse`` semi-structured tensors on the
            GPU in ``dtype`` (see :func:`to_semi_structured`). Without a CUDA GPU of compute capability >= 8.0, one
            warning says so and the model keeps its dense masked weights.
        dtype: the semi-structured precision, ``torch.float16`` or ``torch.bfloat16``.

    Returns:
        The dense and nonzero parameter counts (the compression is their ratio) and the semi-structured layers.

    Example::

        ticket.apply(model)                # then train the ticket
        summary = export_pruned(model, "model.safetensors", semi_structured=True, dtype=torch.bfloat16)
        summary.semi_structured            # ('fc1', 'fc2') on an A100/H100, () with a warning on a CPU
    """
    if semi_structured:
        _check_dtype(dtype)
    remove_masks(model)
    params = list(model.parameters())
    counts = {"dense": sum(p.numel() for p in params), "nonzero": sum(int((p != 0).sum()) for p in params)}
    eligible, kept_dense = semi_structured_candidates(model) if semi_structured else ({}, {})
    if path is not None:
        _write(Path(path), model, counts, list(eligible))
    if not semi_structured:
        return ExportSummary(counts["dense"], counts["nonzero"])
    reason = semi_structured_unavailable()
    if reason is not None:
        warnings.warn(
            "export_pruned(semi_structured=True): 2:4 semi-structured kernels need a CUDA GPU of compute capability "
            f">= 8.0 (Ampere or newer), and {reason}. The model keeps its dense masked weights; "
            f"{len(eligible)} Linear layers are 2:4 and would be converted on such a GPU (to_semi_structured(model)).",
            UserWarning,
            stacklevel=2,
        )
        return ExportSummary(counts["dense"], counts["nonzero"], (), {**kept_dense, **dict.fromkeys(eligible, reason)})
    converted, kept_dense = to_semi_structured(model, dtype)
    return ExportSummary(counts["dense"], counts["nonzero"], converted, kept_dense)


def _write(path: Path, model: nn.Module, counts: Mapping[str, int], semi_structured: list[str]) -> None:
    from lightning_lottery import __version__
    from lightning_lottery.io import atomic_write

    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {
        "format": "pt",
        "lightning_lottery": "export",
        "lightning_lottery_version": __version__,
        "dense_parameters": str(counts["dense"]),
        "nonzero_parameters": str(counts["nonzero"]),
        "semi_structured_layers": json.dumps(semi_structured),
        "semi_structured_pattern": "2:4 along in_features",
    }
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))
