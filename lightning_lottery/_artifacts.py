"""The files a search writes: one folder per branch of every level, and the history of the whole search.

    <dirpath>/history.json                         settings, one record per (level, branch), finished or not
    <dirpath>/round_03/ticket/ticket.safetensors   the branch's masks and the weights it started from
    <dirpath>/round_03/ticket/summary.json         its history record and the search's settings
    <dirpath>/round_03/ticket/curve.csv            its metrics at every validation
    <dirpath>/round_03/random/...                  the same for each control branch of the level

Written by rank zero, each file atomically (a killed run never leaves half a file).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_lottery.io import atomic_write_csv, atomic_write_json
from lightning_lottery.ticket import Ticket

HISTORY = "history.json"


def branch_folder(dirpath: Path, level: int, branch: str) -> Path:
    return dirpath / f"round_{level:02d}" / branch


def check_writable(dirpath: Path) -> None:
    """Fail before training when the artifact folder cannot be written."""
    try:
        dirpath.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=dirpath, prefix=".write-check.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or err
        raise ValueError(f"`dirpath={str(dirpath)!r}` cannot be written ({reason}); pass a writable folder") from err


def check_unused(dirpath: Path) -> None:
    """Refuse to mix a new search into a folder that already holds another search's artifacts."""
    if (dirpath / HISTORY).exists() or any(dirpath.glob("round_*")):
        raise ValueError(
            f"`dirpath={str(dirpath)!r}` already holds the artifacts of a search ({HISTORY}, round_XX/). Pass "
            "another dirpath, remove that folder, or resume that search with trainer.fit(..., ckpt_path=...)."
        )


def write_branch(
    dirpath: Path,
    ticket: Ticket,
    record: Mapping[str, Any],
    curve: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Any],
) -> Path:
    folder = branch_folder(dirpath, record["round"], record["branch"])
    ticket.save(folder / "ticket.safetensors")
    atomic_write_json(folder / "summary.json", {"record": record, "settings": settings, "ticket": "ticket.safetensors"})
    atomic_write_csv(folder / "curve.csv", curve)
    return folder


def write_history(
    dirpath: Path, settings: Mapping[str, Any], history: Sequence[Mapping[str, Any]], status: Mapping[str, Any]
) -> None:
    atomic_write_json(dirpath / HISTORY, {"settings": settings, "history": list(history), **status})
