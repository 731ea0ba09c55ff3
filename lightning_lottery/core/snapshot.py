"""Weight snapshots (θ₀, θ_k) under the model's unpruned names, and rewinding to them."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from lightning_lottery.core.selection import pruning_hook

State = dict[str, Tensor]


def canonical_tensors(model: nn.Module) -> dict[str, Tensor]:
    """Live tensors of ``model.state_dict()``, keyed by their unpruned names, masks left out."""
    entries: dict[str, Tensor] = {}
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for attr, param in module._parameters.items():
            if param is None:
                continue
            if attr.endswith("_orig") and pruning_hook(module, attr[: -len("_orig")]) is not None:
                attr = attr[: -len("_orig")]
            entries.setdefault(prefix + attr, param)
        for attr, buffer in module._buffers.items():
            if buffer is None or attr in module._non_persistent_buffers_set:
                continue
            if attr.endswith("_mask") and pruning_hook(module, attr[: -len("_mask")]) is not None:
                continue
            entries.setdefault(prefix + attr, buffer)
    return entries


def dense_state(model: nn.Module) -> State:
    """A CPU copy of every parameter and persistent buffer, named as in the unpruned model.

    For a pruned tensor the copy holds ``<name>_orig`` (the values under the mask included).
    """
    return {name: t.detach().to("cpu", copy=True) for name, t in canonical_tensors(model).items()}


def state_mismatches(model: nn.Module, state: Mapping[str, Tensor]) -> list[str]:
    """Every difference in names and shapes between ``state`` and the model's unpruned state."""
    entries = canonical_tensors(model)
    problems = []
    if missing := sorted(set(entries) - set(state)):
        problems.append(f"missing {missing}")
    if unexpected := sorted(set(state) - set(entries)):
        problems.append(f"unexpected {unexpected}")
    shapes = [
        f"{n}: model {tuple(entries[n].shape)} vs snapshot {tuple(state[n].shape)}"
        for n in entries
        if n in state and entries[n].shape != state[n].shape
    ]
    if shapes:
        problems.append(f"shape mismatch {shapes}")
    return problems


@torch.no_grad()
def load_dense_state(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Write ``state`` into the model's real tensors (``<name>_orig`` when pruned, never the derived ``<name>``).

    Raises:
        KeyError: names or shapes differ, listing every mismatch.
    """
    if problems := state_mismatches(model, state):
        raise KeyError("Snapshot does not fit the model: " + "; ".join(problems))
    for name, target in canonical_tensors(model).items():
        target.copy_(state[name].to(device=target.device, dtype=target.dtype))
