"""Ticket files: bit-packed masks, old unpacked files, and every malformed header or tensor refused as TicketError."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from lightning_lottery import Ticket, TicketError
from lightning_lottery.core.bits import pack_bits, packed_size, unpack_bits
from lightning_lottery.core.structure import NMStructure, kept_per_group, nm_masks


def _ticket() -> Ticket:
    g = torch.Generator().manual_seed(0)
    weights = {"fc.weight": torch.randn(60, 80, generator=g), "fc.bias": torch.randn(60, generator=g)}
    weights["conv.weight"] = torch.randn(8, 4, 3, 3, generator=g)
    masks = {n: torch.rand(w.shape, generator=g) > 0.7 for n, w in weights.items() if n.endswith("weight")}
    return Ticket(masks, weights, round=3, metadata={"model_class": "Net", "settings": {"amount": 0.2}})


def _header(**changes: str | None) -> dict[str, str]:
    header = {"format": "lightning_lottery.ticket", "format_version": "2", "round": "1", "metadata": "{}"}
    header.update(changes)
    return {k: v for k, v in header.items() if v is not None}


def _raw_file(path: Path, entries: dict[str, tuple[str, list[int], bytes]], metadata: dict[str, str]) -> Path:
    """A safetensors file written byte by byte, so a test can store what torch would not (a bool byte of 7)."""
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name, (dtype, shape, data) in entries.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(data for _, _, data in entries.values()))
    return path


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(0, 9), min_size=1, max_size=3), seed=st.integers(0, 2**16))
def test_pack_unpack_round_trip(shape, seed):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) > 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_size(mask.numel())
    assert torch.equal(unpack_bits(packed, shape), mask)


def test_packing_is_most_significant_bit_first():
    assert pack_bits(torch.tensor([True, False, False, False, False, False, False, True, True])).tolist() == [129, 128]


def test_packed_file_round_trips_and_is_smaller(tmp_path: Path):
    ticket = _ticket()
    packed = Ticket.load(ticket.save(tmp_path / "packed.safetensors"))
    plain = Ticket.load(ticket.save(tmp_path / "plain.safetensors", pack_masks=False))
    for loaded in (packed, plain):
        assert loaded.round == 3 and loaded.metadata == ticket.metadata
        assert set(loaded.masks) == set(ticket.masks)
        assert all(
            torch.equal(loaded.masks[n], m) and loaded.masks[n].dtype == torch.bool for n, m in ticket.masks.items()
        )
        assert all(torch.equal(loaded.weights[n], w) for n, w in ticket.weights.items())
    saved = (tmp_path / "plain.safetensors").stat().st_size - (tmp_path / "packed.safetensors").stat().st_size
    expected = sum(m.numel() - packed_size(m.numel()) for m in ticket.masks.values())  # 7/8 of the mask bytes
    assert expected - 200 <= saved <= expected  # less the longer header (shapes, "maskbits/" names)


def test_format_1_files_still_load(tmp_path: Path):
    ticket = _ticket()
    tensors = {f"mask/{n}": m for n, m in ticket.masks.items()}
    tensors.update({f"weight/{n}": w for n, w in ticket.weights.items()})
    save_file(tensors, tmp_path / "v1.safetensors", metadata=_header(format_version="1", round="3", metadata="{}"))
    loaded = Ticket.load(tmp_path / "v1.safetensors")
    assert loaded.round == 3 and all(torch.equal(loaded.masks[n], m) for n, m in ticket.masks.items())


def _save(tmp_path: Path, tensors: dict[str, torch.Tensor], **header: str | None) -> Path:
    path = tmp_path / "bad.safetensors"
    save_file(tensors, path, metadata=_header(**header))
    return path


GOOD = {"weight/w": torch.ones(2, 4), "mask/w": torch.ones(2, 4, dtype=torch.bool)}


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"round": None}, r"header's 'round' is None, not a non-negative integer"),
        ({"round": "two"}, r"header's 'round' is 'two', not a non-negative integer"),
        ({"round": "-1"}, r"header's 'round' is '-1'"),
        ({"metadata": None}, r"header has no 'metadata' field"),
        ({"metadata": "{not json"}, r"header's 'metadata' is not valid JSON"),
        ({"metadata": "[1, 2]"}, r"header's 'metadata' is a list, not a JSON object"),
        ({"mask_shapes": "nope"}, r"header's 'mask_shapes' is not valid JSON"),
        ({"format_version": "9"}, r"has ticket format '9', this version reads 1, 2"),
    ],
)
def test_bad_headers_are_ticket_errors(tmp_path: Path, header, message):
    with pytest.raises(TicketError, match=message):
        Ticket.load(_save(tmp_path, GOOD, **header))


@pytest.mark.parametrize(
    ("mask", "shown"),
    [
        (torch.tensor([[1, 7, 0, 1]], dtype=torch.uint8), "7"),
        (torch.tensor([[1.0, 0.5, 0.0, 1.0]]), "0.5"),
        (torch.tensor([[1.0, float("nan"), 0.0, 1.0]]), "nan"),
        (torch.tensor([[-1, 0, 1, 1]], dtype=torch.int64), "-1"),
    ],
)
def test_masks_other_than_zero_and_one_are_refused_by_name(tmp_path: Path, mask, shown):
    path = _save(tmp_path, {"weight/fc.weight": torch.ones(1, 4), "mask/fc.weight": mask})
    with pytest.raises(TicketError, match=rf"mask fc\.weight holds {shown} .*masks hold only 0 and 1"):
        Ticket.load(path)


def test_a_bool_mask_with_a_byte_of_seven_is_refused(tmp_path: Path):
    weight = torch.ones(4).numpy().tobytes()
    path = _raw_file(
        tmp_path / "byte.safetensors",
        {"mask/fc.weight": ("BOOL", [4], bytes([1, 7, 0, 1])), "weight/fc.weight": ("F32", [4], weight)},
        _header(),
    )
    with pytest.raises(TicketError, match=r"mask fc\.weight holds 7"):
        Ticket.load(path)


def test_a_zero_one_mask_of_another_dtype_loads_as_bool(tmp_path: Path):
    path = _save(tmp_path, {"weight/w": torch.ones(1, 4), "mask/w": torch.tensor([[1.0, 0.0, 0.0, 1.0]])})
    mask = Ticket.load(path).masks["w"]
    assert mask.dtype == torch.bool and mask.tolist() == [[True, False, False, True]]


@pytest.mark.parametrize(
    ("tensors", "header", "message"),
    [
        (
            {"weight/w": torch.ones(2, 4), "mask/w": torch.ones(4, 2, dtype=torch.bool)},
            {},
            r"mask w \(4, 2\) vs weight \(2, 4\)",
        ),
        ({"weight/v": torch.ones(2, 4), "mask/w": torch.ones(2, 4, dtype=torch.bool)}, {}, r"mask w has no weight"),
        ({**GOOD, "extra/w": torch.ones(1)}, {}, r"unexpected tensor 'extra/w'"),
        (
            {"weight/w": torch.ones(2, 4), "maskbits/w": torch.tensor([255], dtype=torch.uint8)},
            {},
            r"packed mask w has no shape",
        ),
        (
            {"weight/w": torch.ones(2, 4), "maskbits/w": torch.tensor([255, 0], dtype=torch.uint8)},
            {"mask_shapes": '{"w": [2, 4]}'},
            r"mask w: packed bits are torch.uint8 of shape \(2,\); a mask of shape \(2, 4\) needs 1 uint8 bytes",
        ),
        (
            {"weight/w": torch.ones(1, 3), "maskbits/w": torch.tensor([0b11100001], dtype=torch.uint8)},
            {"mask_shapes": '{"w": [1, 3]}'},
            r"mask w: padding bits after the last mask entry are set",
        ),
        (
            {"weight/w": torch.ones(1, 3), "maskbits/w": torch.tensor([0], dtype=torch.uint8)},
            {"mask_shapes": '{"w": "1x3"}'},
            r"shape of mask w is '1x3', not a list of sizes",
        ),
        ({**GOOD}, {"mask_shapes": '{"v": [2]}'}, r"'mask_shapes' lists v but the file has no packed mask v"),
        (
            {**GOOD, "maskbits/w": torch.tensor([255], dtype=torch.uint8)},
            {"mask_shapes": '{"w": [2, 4]}'},
            r"two masks for w",
        ),
    ],
)
def test_inconsistent_tensors_are_refused(tmp_path: Path, tensors, header, message):
    with pytest.raises(TicketError, match=message):
        Ticket.load(_save(tmp_path, tensors, **header))


def test_random_like_with_a_structure_keeps_the_n_of_m_pattern():
    weights = {"fc.weight": torch.randn(8, 16), "fc.bias": torch.zeros(8)}
    masks = nm_masks(weights, {"fc.weight": torch.ones(8, 16, dtype=torch.bool)}, NMStructure(2, 4))
    ticket = Ticket(masks, weights, round=1)
    control = ticket.random_like(seed=0, structure="2:4")
    assert bool((kept_per_group(control.masks["fc.weight"], 4) == 2).all())
    assert not torch.equal(control.masks["fc.weight"], masks["fc.weight"])
    assert control.metadata["control_structure"] == "2:4"
    unstructured = ticket.random_like(seed=0)
    assert not bool((kept_per_group(unstructured.masks["fc.weight"], 4) == 2).all())
