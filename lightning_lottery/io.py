"""Artifacts that behave like files: atomic writes that respect the umask, on local paths and fsspec URLs.

Every artifact of a search (tickets, summaries, curves, checkpoints) is written through :func:`atomic_write`: the
bytes go to a temporary file next to the target (``.<name>.<8 chars>.tmp``), are flushed to disk, and the temporary
file is renamed over the target. A crash leaves either the old file or the new one, never half of one; what a
crash can leave is the temporary file, which :func:`cleanup_stale_temp` removes on the next start. A checkpoint cut
short by a full disk is moved aside by :func:`quarantine_corrupt_checkpoints`.

Paths may be local (``str`` or :class:`~pathlib.Path`) or fsspec URLs given as ``str`` (``memory://runs/a``,
``file:///tmp/a``, ``s3://bucket/a`` with s3fs installed). A :class:`~pathlib.Path` cannot hold a URL (it folds
``//``), so keep URLs as strings and build child paths with :func:`join`.

Example::

    >>> from lightning_lottery import io
    >>> io.atomic_write_json("memory://demo/run/summary.json", {"round": 3})
    >>> io.read_json("memory://demo/run/summary.json")
    {'round': 3}
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import pickletools
import re
import secrets
import struct
import tempfile
import threading
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

PathLike = str | os.PathLike[str]

# The names of this module's temporary files: ``.<target name>.<8 characters>.tmp`` (tempfile's random part is 8
# characters of [a-z0-9_]; the remote variant uses 8 hex digits).
TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")

__all__ = [
    "TEMP_NAME",
    "CorruptCheckpointWarning",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_csv",
    "atomic_write_json",
    "atomic_write_text",
    "checkpoint_problem",
    "cleanup_stale_temp",
    "current_umask",
    "exists",
    "filesystem",
    "is_local",
    "join",
    "local_copy",
    "makedirs",
    "quarantine_corrupt_checkpoints",
    "read_json",
]


class CorruptCheckpointWarning(UserWarning):
    """A checkpoint that cannot be read was moved aside."""


# ---------------------------------------------------------------------------------------------------- paths


def filesystem(path: PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of ``path`` and the path within it (``file://`` URLs become plain local paths)."""
    return fsspec.core.url_to_fs(os.fspath(path))


def is_local(path: PathLike) -> bool:
    """Whether ``path`` is on the local filesystem (a plain path or a ``file://`` URL)."""
    return isinstance(filesystem(path)[0], LocalFileSystem)


def join(base: PathLike, *parts: str) -> PathLike:
    """``base / part / ...``, keeping a URL a URL (``Path`` would fold its ``//``) and a local path a ``Path``."""
    text = os.fspath(base)
    if "://" in text:
        return "/".join([text.rstrip("/"), *(p.strip("/") for p in parts)])
    return Path(text, *parts)


def exists(path: PathLike) -> bool:
    fs, inner = filesystem(path)
    return fs.exists(inner)


def makedirs(path: PathLike) -> None:
    """Create a folder and its parents (modes follow the umask, as ``mkdir`` does)."""
    fs, inner = filesystem(path)
    fs.makedirs(inner, exist_ok=True)


def read_json(path: PathLike) -> Any:
    fs, inner = filesystem(path)
    with fs.open(inner, "r") as f:
        return json.load(f)


@contextlib.contextmanager
def local_copy(path: PathLike) -> Iterator[Path]:
    """A local path holding ``path``'s bytes: the file itself when local, else a temporary download."""
    fs, inner = filesystem(path)
    if isinstance(fs, LocalFileSystem):
        yield Path(inner)
        return
    fd, tmp = tempfile.mkstemp(suffix=Path(inner).suffix)
    os.close(fd)
    try:
        fs.get_file(inner, tmp)
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------- umask

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux: /proc/self/status)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _umask_lock:  # elsewhere: set and restore it (briefly process-wide)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: str) -> None:
    """Make a rename in ``folder`` durable (not possible on every OS; skipped where it is not)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------------------------- writes


def atomic_write(path: PathLike, write: Callable[[str], object]) -> None:
    """Create or replace ``path`` with what ``write(tmp)`` writes to the local file ``tmp``, all or nothing.

    The temporary file lies next to the target (``.<name>.<random>.tmp``), is fsynced, given the mode a new file
    gets under the current umask (``0o666 & ~umask``, e.g. 0644 with umask 022), then renamed over the target.
    If ``write`` raises, the temporary file is removed and the target is untouched. On a non-local filesystem the
    file is written locally, uploaded under a temporary name next to the target and moved into place.
    """
    fs, inner = filesystem(path)
    if isinstance(fs, LocalFileSystem):
        _atomic_write_local(Path(inner), write)
    else:
        _atomic_write_remote(fs, inner, write)


def _atomic_write_local(path: Path, write: Callable[[str], object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        _fsync_file(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp made it 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(str(path.parent))


def _atomic_write_remote(fs: fsspec.AbstractFileSystem, path: str, write: Callable[[str], object]) -> None:
    parent, name = path.rsplit("/", 1) if "/" in path else ("", path)
    fd, local = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp")
    os.close(fd)
    staged = f"{parent}/.{name}.{secrets.token_hex(4)}.tmp" if parent else f".{name}.{secrets.token_hex(4)}.tmp"
    try:
        write(local)
        if parent:
            fs.makedirs(parent, exist_ok=True)
        fs.put_file(local, staged)
        fs.mv(staged, path)
    except BaseException:
        with contextlib.suppress(Exception):
            if fs.exists(staged):
                fs.rm(staged)
        raise
    finally:
        Path(local).unlink(missing_ok=True)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: PathLike, data: Any) -> None:
    """JSON with sorted keys and indentation (stable diffs); objects JSON lacks are written as their ``str``."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str))


def atomic_write_csv(path: PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows of metrics as CSV; columns are the union of the rows' keys, first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


# ---------------------------------------------------------------------------------------------------- clean-up


def cleanup_stale_temp(folder: PathLike, recursive: bool = True, older_than: float = 0.0) -> list[str]:
    """Delete the temporary files that interrupted :func:`atomic_write` calls left in ``folder``.

    Call it when nothing else writes into ``folder`` (at the start of a run that owns it).

    Args:
        folder: the artifact or checkpoint folder; a missing folder has nothing to clean.
        recursive: also look in its subfolders.
        older_than: only delete files last modified at least this many seconds ago.

    Returns:
        The deleted paths.
    """
    fs, inner = filesystem(folder)
    if not fs.isdir(inner):
        return []
    names = fs.find(inner) if recursive else fs.ls(inner, detail=False)
    now = time.time()
    removed = []
    for name in names:
        if not TEMP_NAME.match(name.rsplit("/", 1)[-1]) or not fs.isfile(name):
            continue
        if older_than > 0 and now - _modified(fs, name) < older_than:
            continue
        fs.rm(name)
        removed.append(name)
    return removed


def _modified(fs: fsspec.AbstractFileSystem, path: str) -> float:
    try:
        stamp = fs.modified(path)
    except (NotImplementedError, OSError):
        return 0.0
    return stamp.timestamp()


def checkpoint_problem(path: PathLike) -> str | None:
    """Why the checkpoint file ``path`` cannot be loaded, or ``None`` when it looks whole.

    Checks the structure ``torch.save`` writes (a zip archive), without unpickling anything: a dangling link,
    an empty file, a missing or damaged zip directory (a file cut short), members extending past the end of the
    file, a ``data.pkl`` whose checksum or pickle opcodes are broken. Tensor payloads are not checksummed (that
    would read the whole file); a file in torch's legacy (non-zip) format is not judged.
    """
    fs, inner = filesystem(path)
    if isinstance(fs, LocalFileSystem) and os.path.islink(inner) and not os.path.exists(inner):
        return f"a link to a missing file ({os.readlink(inner)})"
    try:
        size = fs.size(inner)
        with fs.open(inner, "rb") as f:
            head = f.read(4)
            if size == 0:
                return "an empty file"
            if head != b"PK\x03\x04":
                return None if head[:1] == b"\x80" else "not a torch checkpoint (no zip or pickle header)"
            f.seek(0)
            return _zip_problem(f, size)
    except OSError as err:
        return f"unreadable ({err})"


def _zip_problem(f: Any, size: int) -> str | None:
    try:
        archive = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        return f"a damaged or truncated zip archive ({err})"
    with archive:
        members = archive.infolist()
        for info in members:
            f.seek(info.header_offset)
            local = f.read(30)  # the member's local header: its own name and extra-field lengths
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                return f"damaged: no local header for member {info.filename}"
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            if info.header_offset + 30 + name_len + extra_len + info.compress_size > size:
                return f"truncated: member {info.filename} extends past the end of the file"
        pickles = [m for m in members if m.filename.endswith("/data.pkl") or m.filename == "data.pkl"]
        if not pickles:
            return "a zip archive without torch's data.pkl"
        try:
            payload = archive.read(pickles[0])  # checks its CRC
            for _ in pickletools.genops(payload):  # parses opcodes; executes nothing
                pass
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
            return f"a damaged pickle in {pickles[0].filename} ({err})"
    return None


def quarantine_corrupt_checkpoints(folder: PathLike, pattern: str = "*.ckpt") -> list[str]:
    """Move aside the checkpoints in ``folder`` that cannot be loaded (see :func:`checkpoint_problem`).

    A checkpoint cut short by a full disk or a crash would otherwise be picked as the resume point (or make
    ``ckpt_path=last`` fail); it is renamed ``<name>.corrupt`` (``.corrupt-1``, ... if taken) with a
    :class:`CorruptCheckpointWarning`, so no data is deleted. Returns the new paths.
    """
    fs, inner = filesystem(folder)
    if not fs.isdir(inner):
        return []
    moved = []
    candidates = set(fs.glob(f"{inner.rstrip('/')}/{pattern}"))
    if isinstance(fs, LocalFileSystem):  # fsspec's glob skips dangling links
        candidates |= {str(p) for p in Path(inner).glob(pattern) if p.is_symlink()}
    for name in sorted(candidates):
        problem = checkpoint_problem(name)
        if problem is None:
            continue
        target = _free_name(fs, f"{name}.corrupt")
        if isinstance(fs, LocalFileSystem):
            os.replace(name, target)  # also moves a dangling link itself
        else:
            fs.mv(name, target)
        warnings.warn(
            f"Checkpoint {name} is {problem}; moved it aside to {target} so it is not resumed from.",
            CorruptCheckpointWarning,
            stacklevel=2,
        )
        moved.append(target)
    return moved


def _free_name(fs: fsspec.AbstractFileSystem, name: str) -> str:
    candidate, n = name, 0
    while fs.exists(candidate) or (isinstance(fs, LocalFileSystem) and os.path.islink(candidate)):
        n += 1
        candidate = f"{name}-{n}"
    return candidate
