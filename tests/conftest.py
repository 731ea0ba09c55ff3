"""Shared test setup: every test runs in its own temporary directory, so nothing is written into the repo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _run_in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def shared_data() -> Path:
    """The real datasets (read-only), from $LOTTERY_DATA or ../shared/data; skips when absent."""
    root = Path(os.environ.get("LOTTERY_DATA", SHARED_DATA))
    if not root.is_dir():
        pytest.skip(f"real datasets not found at {root} (set LOTTERY_DATA to run this test)")
    return root
