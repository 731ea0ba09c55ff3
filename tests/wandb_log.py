"""Read the records of an offline W&B run (``run-<id>.wandb``) to check what was logged, without a server.

The file is a LevelDB-style log: a 7-byte header (":W&B", magic 0xBEE1, version), then 32 KiB blocks of records,
each with a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) and a protobuf ``Record``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32 * 1024
HEADER = 7


def records(path: Path) -> list[Any]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B run log"
    out, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < HEADER:  # the rest of a block too small for a header is padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:
            break
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def history_keys(path: Path) -> set[str]:
    return {
        item.key or "/".join(item.nested_key) for r in records(path) if r.HasField("history") for item in r.history.item
    }


def metric_definitions(path: Path) -> dict[str, str]:
    return {r.metric.name or r.metric.glob_name: r.metric.step_metric for r in records(path) if r.HasField("metric")}


def artifacts(path: Path) -> list[tuple[str, str]]:
    return [(r.artifact.name, r.artifact.type) for r in records(path) if r.HasField("artifact")]


def config_keys(path: Path) -> set[str]:
    return {item.key for r in records(path) if r.HasField("config") for item in r.config.update}


def run_info(path: Path) -> dict[str, Any]:
    """The run's id, name, group, job type and tags."""
    run = next(r.run for r in records(path) if r.HasField("run"))
    return {
        "id": run.run_id,
        "name": run.display_name,
        "group": run.run_group,
        "job_type": run.job_type,
        "tags": list(run.tags),
    }


def config(path: Path) -> dict[str, Any]:
    """The run's config as it ends up: later updates win, values JSON-decoded."""
    out: dict[str, Any] = {}
    for r in records(path):
        items = r.run.config.update if r.HasField("run") else r.config.update if r.HasField("config") else []
        for item in items:
            out[item.key] = json.loads(item.value_json)
    return out


def logged_artifacts(path: Path) -> list[dict[str, Any]]:
    """Every artifact the run logged: name, type, aliases, metadata."""
    return [
        {"name": a.name, "type": a.type, "aliases": list(a.aliases), "metadata": json.loads(a.metadata or "{}")}
        for a in (r.artifact for r in records(path) if r.HasField("artifact"))
    ]
