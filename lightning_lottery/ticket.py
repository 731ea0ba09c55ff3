"""Tickets as artifacts: masks plus the weights they apply to, saved safely, applied to new models."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from lightning_lottery.core import State, install_masks, remove_masks, select_prunable
from lightning_lottery.core.selection import check_patterns, matches, named_tensor_sites
from lightning_lottery.core.snapshot import canonical_tensors
from lightning_lottery.io import atomic_write as atomic_write
from lightning_lottery.io import atomic_write_csv as atomic_write_csv
from lightning_lottery.io import atomic_write_json as atomic_write_json
from lightning_lottery.io import is_local

FORMAT = "lightning_lottery.ticket"
FORMAT_VERSION = "1"


class TicketError(ValueError):
    """A ticket file that cannot be read, or a ticket that does not fit a model."""


@dataclass
class Ticket:
    """A lottery ticket: one bool mask per pruned tensor and the weights its survivors start from.

    Attributes:
        masks: bool masks by parameter name (``True`` keeps the weight).
        weights: the rewind weights (θ₀ or θ_k): every parameter and persistent buffer of the model, by name.
        round: the pruning round whose mask this is (0: dense).
        metadata: settings of the search, parameter shapes, library versions, model class.

    Example::

        ticket = lottery.ticket()                     # after trainer.fit(..., callbacks=[lottery])
        ticket.save("ticket.safetensors")
        ticket = Ticket.load("ticket.safetensors")
        ticket.apply(fresh_model, reinit=["fc3.*"])   # masks + rewind weights; a new, dense output layer
    """

    masks: dict[str, Tensor]
    weights: State
    round: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ numbers

    @property
    def total(self) -> int:
        return sum(m.numel() for m in self.masks.values())

    @property
    def remaining(self) -> int:
        return sum(int(m.sum()) for m in self.masks.values())

    @property
    def sparsity(self) -> float:
        """Fraction of the masked tensors' weights that are pruned."""
        return 1.0 - self.remaining / self.total if self.total else 0.0

    @property
    def tensor_sparsity(self) -> dict[str, float]:
        return {n: 1.0 - float(m.sum()) / m.numel() for n, m in self.masks.items()}

    # ------------------------------------------------------------------ files

    def save(self, path: str | os.PathLike[str]) -> Path | str:
        """Write one safetensors file (no pickled objects), atomically; ``path`` may be an fsspec URL (a ``str``)."""
        path = Path(path) if is_local(path) else os.fspath(path)
        tensors = {f"mask/{n}": m.detach().to("cpu", torch.bool).contiguous() for n, m in self.masks.items()}
        tensors.update({f"weight/{n}": w.detach().cpu().contiguous().clone() for n, w in self.weights.items()})
        header = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "round": str(self.round),
            "metadata": json.dumps(self.metadata, default=str),
        }
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Ticket:
        """Read a ticket written by :meth:`save`; anything else is refused with a clear error."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No ticket at {path}")
        try:
            with safe_open(str(path), framework="pt") as f:  # reads the header only
                header = f.metadata() or {}
        except (SafetensorError, OSError, ValueError) as err:
            raise TicketError(
                f"{path} is not a ticket file (a safetensors file written by Ticket.save): it is corrupt, truncated "
                f"or of another format ({err}). Tickets never unpickle objects."
            ) from err
        if header.get("format") != FORMAT:
            raise TicketError(f"{path} is a safetensors file but not a lightning_lottery ticket (no ticket header)")
        if header.get("format_version") != FORMAT_VERSION:
            raise TicketError(
                f"{path} has ticket format {header.get('format_version')}, this version reads {FORMAT_VERSION}"
            )
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise TicketError(f"{path} is corrupt or truncated ({err})") from err
        masks = {k[len("mask/") :]: v for k, v in tensors.items() if k.startswith("mask/")}
        weights = {k[len("weight/") :]: v for k, v in tensors.items() if k.startswith("weight/")}
        return cls(masks, weights, int(header["round"]), json.loads(header["metadata"]))

    # ------------------------------------------------------------------ use

    def apply(self, model: nn.Module, reinit: Sequence[str] = ()) -> nn.Module:
        """Install the masks (torch.nn.utils.prune) and the rewind weights into ``model``.

        Args:
            model: a model of the architecture the ticket was found on (pruned or not).
            reinit: names/patterns of tensors that keep the model's own (fresh) values and get no mask, e.g. a
                new classifier head for another dataset: ``["fc3.*"]``.

        Raises:
            TicketError: missing tensors or shape mismatches, listing every one.
        """
        fresh = self.check_fits(model, reinit)
        state = self.merged_state(canonical_tensors(model), fresh)
        with torch.no_grad():
            for name, target in canonical_tensors(model).items():
                target.copy_(state[name].to(device=target.device, dtype=target.dtype))
        masked = {n: m for n, m in self.masks.items() if n not in fresh}
        install_masks(select_prunable(model, parameters=list(masked)), masked)
        return model

    def check_fits(self, model: nn.Module, reinit: Sequence[str] = ()) -> set[str]:
        """The names ``reinit`` selects; raises :class:`TicketError` listing every tensor that does not fit."""
        entries = canonical_tensors(model)
        check_patterns("reinit", list(reinit), entries)
        fresh = {n for n in entries if matches(n, reinit)}
        problems = []
        for name, value in self.weights.items():
            if name in fresh:
                continue
            if name not in entries:
                problems.append(f"{name}: in the ticket, not in the model")
            elif entries[name].shape != value.shape:
                problems.append(f"{name}: ticket {tuple(value.shape)} vs model {tuple(entries[name].shape)}")
        problems += [
            f"{n}: in the model, not in the ticket" for n in entries if n not in self.weights and n not in fresh
        ]
        sites = named_tensor_sites(model)
        for name, mask in self.masks.items():
            if name in fresh:
                continue
            if name not in sites:
                problems.append(f"mask {name}: no such parameter in the model")
            elif tuple(entries[name].shape) != tuple(mask.shape):
                problems.append(f"mask {name}: ticket {tuple(mask.shape)} vs model {tuple(entries[name].shape)}")
        if problems:
            expected = self.metadata.get("model_class")
            hint = f" (the ticket was found on {expected})" if expected else ""
            raise TicketError(f"The ticket does not fit {type(model).__name__}{hint}:\n  " + "\n  ".join(problems))
        return fresh

    def merged_state(self, own: Mapping[str, Tensor], fresh: set[str]) -> State:
        """The ticket's weights, with the model's own values (``own``) for the ``fresh`` names."""
        return {n: (own[n] if n in fresh else self.weights[n]).detach().cpu().clone() for n in own}

    def random_like(self, seed: int) -> Ticket:
        """The random-pruning control: the same per-tensor counts, positions drawn uniformly at random."""
        generator = torch.Generator().manual_seed(seed)
        masks = {}
        for name, mask in self.masks.items():
            flat = torch.zeros(mask.numel(), dtype=torch.bool)
            flat[torch.randperm(mask.numel(), generator=generator)[: int(mask.sum())]] = True
            masks[name] = flat.view(mask.shape)
        metadata = {**self.metadata, "control": "random_pruning", "control_seed": seed}
        return Ticket(masks, {n: w.clone() for n, w in self.weights.items()}, self.round, metadata)


@dataclass(frozen=True)
class ExportSummary:
    """Parameter counts of an exported (permanently pruned) model."""

    dense_parameters: int
    nonzero_parameters: int

    @property
    def compression(self) -> float:
        return self.dense_parameters / max(self.nonzero_parameters, 1)


def export_pruned(model: nn.Module, path: str | os.PathLike[str] | None = None) -> ExportSummary:
    """Make pruning permanent (``prune.remove``): a plain model with zeros, optionally saved as safetensors.

    Returns the dense and nonzero parameter counts (the compression is their ratio).
    """
    remove_masks(model)
    params = list(model.parameters())
    summary = ExportSummary(sum(p.numel() for p in params), sum(int((p != 0).sum()) for p in params))
    if path is not None:
        state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        atomic_write(Path(path), lambda tmp: save_file(state, tmp, metadata={"format": "lightning_lottery.export"}))
    return summary


def ticket_metadata(model_class: str, masks: Mapping[str, Tensor], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata stored with a ticket: versions, model class, shapes."""
    import lightning

    from lightning_lottery import __version__

    return {
        "model_class": model_class,
        "shapes": {n: list(m.shape) for n, m in masks.items()},
        "lightning_lottery": __version__,
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        **extra,
    }
