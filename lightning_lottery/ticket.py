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

from lightning_lottery.core import State, install_masks, select_prunable
from lightning_lottery.core.bits import pack_bits, unpack_bits
from lightning_lottery.core.selection import check_patterns, matches, named_tensor_sites
from lightning_lottery.core.snapshot import canonical_tensors
from lightning_lottery.core.structure import NMStructure, random_nm_masks
from lightning_lottery.io import atomic_write, is_local

FORMAT = "lightning_lottery.ticket"
FORMAT_VERSION = "2"  # 2: masks may be bit-packed ("maskbits/<name>", shapes in the header's "mask_shapes")
READABLE_VERSIONS = ("1", "2")


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

    def save(self, path: str | os.PathLike[str], pack_masks: bool = True) -> Path | str:
        """Write one safetensors file (no pickled objects), atomically.

        Args:
            path: where to write; a local path or an fsspec URL (a ``str``).
            pack_masks: store each mask as bits, 8 to a byte (``maskbits/<name>``, shape in the header), instead of
                one byte per entry (``mask/<name>``, format 1).
        """
        path = Path(path) if is_local(path) else os.fspath(path)
        masks = {n: m.detach().to("cpu", torch.bool).contiguous() for n, m in self.masks.items()}
        if pack_masks:
            tensors = {f"maskbits/{n}": pack_bits(m) for n, m in masks.items()}
        else:
            tensors = {f"mask/{n}": m for n, m in masks.items()}
        tensors.update({f"weight/{n}": w.detach().cpu().contiguous().clone() for n, w in self.weights.items()})
        header = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "round": str(self.round),
            "metadata": json.dumps(self.metadata, default=str),
        }
        if pack_masks:
            header["mask_shapes"] = json.dumps({n: list(m.shape) for n, m in masks.items()})
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Ticket:
        """Read a ticket written by :meth:`save` (packed or not); anything else is refused with a clear error.

        Raises:
            FileNotFoundError: no file at ``path``.
            TicketError: not a ticket file, a bad header, masks with values other than 0/1, bad packed bits, or
                masks and weights that do not match; the message names the field or tensor.
        """
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
        if header.get("format_version") not in READABLE_VERSIONS:
            raise TicketError(
                f"{path} has ticket format {header.get('format_version')!r}, this version reads "
                f"{', '.join(READABLE_VERSIONS)}"
            )
        round_index = _header_round(path, header)
        metadata = _header_json(path, header, "metadata", required=True)
        shapes = _header_json(path, header, "mask_shapes", required=False)
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise TicketError(f"{path} is corrupt or truncated ({err})") from err
        masks, weights = _ticket_tensors(path, tensors, shapes)
        return cls(masks, weights, round_index, metadata)

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

    def random_like(self, seed: int, structure: str | None = None) -> Ticket:
        """The random-pruning control: the same per-tensor counts, positions drawn uniformly at random.

        With ``structure="N:M"`` (an N:M ticket) the positions keep the pattern: N random of every M along each
        weight's input dimension (see :func:`lightning_lottery.core.random_nm_masks`).
        """
        generator = torch.Generator().manual_seed(seed)
        if structure is not None:
            masks = random_nm_masks(self.masks, NMStructure.parse(structure), generator)
        else:
            masks = {}
            for name, mask in self.masks.items():
                flat = torch.zeros(mask.numel(), dtype=torch.bool)
                flat[torch.randperm(mask.numel(), generator=generator)[: int(mask.sum())]] = True
                masks[name] = flat.view(mask.shape)
        metadata = {**self.metadata, "control": "random_pruning", "control_seed": seed}
        if structure is not None:
            metadata["control_structure"] = str(structure)
        return Ticket(masks, {n: w.clone() for n, w in self.weights.items()}, self.round, metadata)


def _header_round(path: Path, header: Mapping[str, str]) -> int:
    value = header.get("round")
    if value is None or not value.isdigit():
        raise TicketError(f"{path}: the ticket header's 'round' is {value!r}, not a non-negative integer")
    return int(value)


def _header_json(path: Path, header: Mapping[str, str], key: str, required: bool) -> dict[str, Any]:
    """A JSON object stored in the header under ``key`` ({} when absent and not required)."""
    if key not in header:
        if required:
            raise TicketError(f"{path}: the ticket header has no {key!r} field")
        return {}
    try:
        value = json.loads(header[key])
    except json.JSONDecodeError as err:
        raise TicketError(f"{path}: the ticket header's {key!r} is not valid JSON ({err})") from err
    if not isinstance(value, dict):
        raise TicketError(f"{path}: the ticket header's {key!r} is a {type(value).__name__}, not a JSON object")
    return value


def _checked_mask(path: Path, name: str, value: Tensor) -> Tensor:
    """A stored mask as bool, refusing any entry other than 0 and 1 (a bool tensor's bytes included)."""
    raw = value.view(torch.uint8) if value.dtype == torch.bool else value
    if raw.is_complex():
        raise TicketError(f"{path}: mask {name} is {value.dtype}; masks hold only 0 and 1")
    bad = (raw != 0) & (raw != 1)
    if bool(bad.any()):
        example = raw[bad].flatten()[0].item()
        raise TicketError(
            f"{path}: mask {name} holds {example!r} (and {int(bad.sum())} entries other than 0 and 1 in all); "
            "masks hold only 0 and 1"
        )
    return raw != 0


def _unpacked_mask(path: Path, name: str, packed: Tensor, shape: Any) -> Tensor:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise TicketError(f"{path}: the header's shape of mask {name} is {shape!r}, not a list of sizes")
    try:
        return unpack_bits(packed, shape)
    except ValueError as err:
        raise TicketError(f"{path}: mask {name}: {err}") from err


def _ticket_tensors(path: Path, tensors: Mapping[str, Tensor], shapes: Mapping[str, Any]) -> tuple[dict, dict]:
    """Masks and weights from the file's tensors, refusing unknown entries and masks that do not fit their weights."""
    masks: dict[str, Tensor] = {}
    weights: dict[str, Tensor] = {}
    for key, value in tensors.items():
        kind, _, name = key.partition("/")
        if kind in ("mask", "maskbits") and name in masks:
            raise TicketError(f"{path}: two masks for {name} (mask/ and maskbits/)")
        if kind == "weight":
            weights[name] = value
        elif kind == "mask":
            masks[name] = _checked_mask(path, name, value)
        elif kind == "maskbits":
            if name not in shapes:
                raise TicketError(f"{path}: packed mask {name} has no shape in the header's 'mask_shapes'")
            masks[name] = _unpacked_mask(path, name, value, shapes[name])
        else:
            raise TicketError(f"{path}: unexpected tensor {key!r} (a ticket holds weight/, mask/ or maskbits/ entries)")
    problems = [f"'mask_shapes' lists {n} but the file has no packed mask {n}" for n in shapes if n not in masks]
    for name, mask in masks.items():
        if name not in weights:
            problems.append(f"mask {name} has no weight")
        elif tuple(weights[name].shape) != tuple(mask.shape):
            problems.append(f"mask {name} {tuple(mask.shape)} vs weight {tuple(weights[name].shape)}")
    if problems:
        raise TicketError(f"{path}: masks and weights do not match:\n  " + "\n  ".join(problems))
    return masks, weights


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
