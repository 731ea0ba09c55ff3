"""Where datasets live: the configured root, else ``$LOTTERY_DATA``, else ``./data``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

ENV_VAR = "LOTTERY_DATA"


def resolve_data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The data root: ``root`` if given, else ``$LOTTERY_DATA``, else ``./data``."""
    if root not in (None, ""):
        return Path(root).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path("data")


def missing_data_error(
    dataset: str, root: Path, expected: str, download_error: BaseException | None = None
) -> FileNotFoundError:
    """The error for data that is neither on disk nor downloadable, saying how to point at it."""
    reason = f" Downloading failed: {download_error}." if download_error is not None else ""
    absent = "" if root.is_dir() else " (that folder does not exist)"
    return FileNotFoundError(
        f"{dataset} not found under {root.resolve()}{absent} (expected {expected}).{reason} "
        f"Point at a folder that holds it with `data.root=<path>` (Hydra), the datamodule's `root` argument, "
        f"or the environment variable {ENV_VAR}=<path>."
    )


class CorruptDataError(ValueError):
    """A dataset file that exists but cannot be read (truncated, corrupt, or of another format); names the file."""


@contextlib.contextmanager
def removing_new_empty_folders(folder: Path) -> Iterator[None]:
    """If the block fails, remove ``folder`` and those of its parents that it created, as long as they are empty.

    A failed download (offline, read-only disk) then leaves no empty ``MNIST/raw`` behind, neither under a
    mistyped root nor under ``./data``.
    """
    folder = Path(folder).absolute()
    missing = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    try:
        yield
    except BaseException:
        for path in missing:
            try:
                path.rmdir()
            except OSError:  # not empty (something was written), or already gone
                break
        raise
