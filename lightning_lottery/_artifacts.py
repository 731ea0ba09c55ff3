"""The files a search writes: one folder per branch of every level, and the history of the whole search.

    <dirpath>/history.json                         settings, one record per (level, branch), finished or not
    <dirpath>/round_03/ticket/ticket.safetensors   the branch's masks and the weights it started from
    <dirpath>/round_03/ticket/summary.json         its history record and the search's settings
    <dirpath>/round_03/ticket/curve.csv            its metrics at every validation
    <dirpath>/round_03/random/...                  the same for each control branch of the level

Written by rank zero, each file atomically (a killed run never leaves half a file).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lightning_lottery import io
from lightning_lottery.io import PathLike, atomic_write_csv, atomic_write_json
from lightning_lottery.ticket import Ticket

HISTORY = "history.json"


def folder(dirpath: str | Any) -> PathLike:
    """The artifact folder as given: a local ``Path``, or an fsspec URL kept as a string (``memory://...``)."""
    return io.join(dirpath) if io.is_local(dirpath) else str(dirpath)


def branch_folder(dirpath: PathLike, level: int, branch: str) -> PathLike:
    return io.join(dirpath, f"round_{level:02d}", branch)


def check_writable(dirpath: PathLike, setting: str = "dirpath") -> None:
    """Fail before training when a folder the search writes to cannot be written."""
    probe = io.join(dirpath, ".write-check.tmp")
    try:
        io.makedirs(dirpath)
        io.atomic_write_text(probe, "")
        fs, inner = io.filesystem(probe)
        fs.rm(inner)
    except OSError as err:
        reason = err.strerror or err
        raise ValueError(f"`{setting}={str(dirpath)!r}` cannot be written ({reason}); pass a writable folder") from err


def check_unused(dirpath: PathLike) -> None:
    """Refuse to mix a new search into a folder that already holds another search's artifacts."""
    fs, inner = io.filesystem(dirpath)
    used = fs.exists(f"{inner}/{HISTORY}") or bool(fs.glob(f"{inner}/round_*"))
    if used:
        raise ValueError(
            f"`dirpath={str(dirpath)!r}` already holds the artifacts of a search ({HISTORY}, round_XX/). Pass "
            "another dirpath, remove that folder, or resume that search with trainer.fit(..., ckpt_path=...)."
        )


def write_branch(
    dirpath: PathLike,
    ticket: Ticket,
    record: Mapping[str, Any],
    curve: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Any],
) -> PathLike:
    where = branch_folder(dirpath, record["round"], record["branch"])
    ticket.save(io.join(where, "ticket.safetensors"))
    summary = {"record": record, "settings": settings, "ticket": "ticket.safetensors"}
    atomic_write_json(io.join(where, "summary.json"), summary)
    atomic_write_csv(io.join(where, "curve.csv"), curve)
    return where


def write_history(
    dirpath: PathLike, settings: Mapping[str, Any], history: Sequence[Mapping[str, Any]], status: Mapping[str, Any]
) -> None:
    atomic_write_json(io.join(dirpath, HISTORY), {"settings": settings, "history": list(history), **status})
