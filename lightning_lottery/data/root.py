"""Where datasets live: the configured root, else ``$LOTTERY_DATA``, else ``./data``."""

from __future__ import annotations

import os
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
    return FileNotFoundError(
        f"{dataset} not found under {root.resolve()} (expected {expected}).{reason} "
        f"Point at a folder that holds it with `data.root=<path>` (Hydra), the datamodule's `root` argument, "
        f"or the environment variable {ENV_VAR}=<path>."
    )
