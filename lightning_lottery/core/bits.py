"""Bool masks packed 8 to a byte (most significant bit first, zero padding), for small ticket files."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def packed_size(numel: int) -> int:
    return math.ceil(numel / 8)


def pack_bits(mask: Tensor) -> Tensor:
    """A 1-D uint8 tensor of ``ceil(numel / 8)`` bytes; the shape is kept by the caller."""
    flat = mask.detach().to("cpu", torch.bool).flatten()
    padded = torch.zeros(packed_size(flat.numel()) * 8, dtype=torch.uint8)
    padded[: flat.numel()] = flat.to(torch.uint8)
    return (padded.view(-1, 8) * _WEIGHTS).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, shape: Sequence[int]) -> Tensor:
    """The bool mask of ``shape`` that :func:`pack_bits` packed.

    Raises:
        ValueError: ``packed`` is not 1-D uint8 of the right length, or its padding bits are set.
    """
    numel = math.prod(shape)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != packed_size(numel):
        raise ValueError(
            f"packed bits are {packed.dtype} of shape {tuple(packed.shape)}; a mask of shape {tuple(shape)} needs "
            f"{packed_size(numel)} uint8 bytes"
        )
    bits = (packed.unsqueeze(1) & _WEIGHTS).ne(0).flatten()
    if bool(bits[numel:].any()):
        raise ValueError("padding bits after the last mask entry are set")
    return bits[:numel].view(tuple(shape)).clone()
