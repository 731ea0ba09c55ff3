"""The console command killed with SIGKILL at many points and resumed with ``ckpt_path=last`` ends exactly as an
uninterrupted run: the same ``history.json`` (wall-clock seconds aside), the same tickets, the same logged curves."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

HELPERS = Path(__file__).parent / "helpers"
COMMAND = Path(sys.executable).parent / "lightning-lottery"
SEARCH = [  # a search with late rewinding (a resume point inside an epoch) and a control branch, ~10 s
    "preset=fast",
    "data=synthetic",
    "fast.subset=600",  # 10 batches of 60 per epoch
    "fast.rounds=2",
    "fast.max_steps=24",
    "fast.val_check_interval=6",
    "lottery.rewind=5",
    "lottery.controls=[random]",
    "trainer.enable_progress_bar=false",
    "report=false",
    "seed=3",
]


# The same search rewinding to θ₀ with the reinit control: round 0's data set up only when the loop first runs.
SEARCH_TO_INIT = [
    *(a for a in SEARCH if not a.startswith(("lottery.rewind=", "lottery.controls="))),
    "lottery.rewind=init",
    "lottery.controls=[reinit]",
]


def _command(run_dir: Path, *extra: str, search: list[str] = SEARCH) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(HELPERS), "OMP_NUM_THREADS": "1"}
    args = [str(COMMAND), *search, f"hydra.run.dir={run_dir}", *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)


def _history(run_dir: Path) -> dict:
    data = json.loads((run_dir / "lottery" / "history.json").read_text())
    data["history"] = [{k: v for k, v in r.items() if k != "seconds"} for r in data["history"]]
    return data


def _tickets(run_dir: Path) -> dict[str, tuple[dict, dict]]:
    """Every ticket file: its tensors as bytes and its metadata without wall-clock time."""
    out = {}
    for path in sorted((run_dir / "lottery").glob("round_*/*/ticket.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k).numpy().tobytes() for k in f.keys()}  # noqa: SIM118
            header = dict(f.metadata())
        metadata = json.loads(header.pop("metadata"))
        metadata["record"].pop("seconds")
        out[str(path.relative_to(run_dir))] = (tensors, {**header, **metadata})
    return out


# Not compared: the wall-clock time of a branch, and Lightning's epoch-end row (its on_epoch aggregation is not in
# checkpoints: a run killed between a branch's last checkpoint and that epoch's end does not log it again).
_UNCOMPARED = {"round_summary/seconds", "epoch", "train_loss_epoch"}


def _curves(run_dir: Path) -> list[dict[str, str]]:
    """Every row the search logged, but the columns above."""
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        rows = [{k: v for k, v in row.items() if k not in _UNCOMPARED} for row in csv.DictReader(f)]
    return [row for row in rows if any(v for k, v in row.items() if k != "step")]


def _uninterrupted(tmp_path_factory: pytest.TempPathFactory, search: list[str]) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    done = _command(run_dir, search=search)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _uninterrupted(tmp_path_factory, SEARCH)


@pytest.fixture(scope="module")
def uninterrupted_to_init(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _uninterrupted(tmp_path_factory, SEARCH_TO_INIT)


def _kill_and_resume(run_dir: Path, search: list[str], round_index: int, branch: str, step: int, during: str) -> None:
    killer = [
        "+callbacks.killer._target_=killer.KillAt",
        f"+callbacks.killer.round={round_index}",
        f"+callbacks.killer.branch={branch}",
        f"+callbacks.killer.step={step}",
        f"+callbacks.killer.during={during}",
    ]
    killed = _command(run_dir, *killer, search=search)
    assert killed.returncode == -9, f"expected SIGKILL, got {killed.returncode}\n{killed.stderr[-3000:]}"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and not (
        run_dir / "checkpoints" / "last.ckpt"
    ).is_symlink()
    resumed = _command(run_dir, "ckpt_path=last", search=search)
    assert resumed.returncode == 0, resumed.stderr[-3000:]


@pytest.mark.parametrize(
    ("round_index", "branch", "step", "during"),
    [
        (0, "ticket", 15, "step"),
        (2, "ticket", 17, "step"),
        (1, "random", 13, "step"),
        (1, "ticket", 24, "step"),
        (1, "ticket", 12, "checkpoint"),
        (1, "random", 20, "ticket"),
    ],
    ids=[
        "inside round 0",
        "mid-way through level 2",
        "inside a control branch",
        "at a level's last step",
        "while a checkpoint is written",
        "while a ticket is written",
    ],
)
def test_a_sigkilled_run_resumed_with_ckpt_path_last_ends_as_the_uninterrupted_one(
    uninterrupted: Path, tmp_path: Path, round_index: int, branch: str, step: int, during: str
):
    run_dir = tmp_path / "run"
    _kill_and_resume(run_dir, SEARCH, round_index, branch, step, during)

    assert _history(run_dir) == _history(uninterrupted)
    assert _tickets(run_dir) == _tickets(uninterrupted)
    assert _curves(run_dir) == _curves(uninterrupted), "the logged curves, the killed run's rows kept"
    assert not list(run_dir.rglob("*.tmp")), "temporary files of the killed writes are cleaned up"


@pytest.mark.parametrize(
    ("round_index", "branch", "step"),
    [(0, "ticket", 15), (1, "reinit", 13)],
    ids=["inside round 0", "inside the reinit branch"],
)
def test_a_sigkilled_search_rewinding_to_init_resumes_to_the_uninterrupted_one(
    uninterrupted_to_init: Path, tmp_path: Path, round_index: int, branch: str, step: int
):
    # Here the training data is first set up inside the search's loop: the checkpoint's data order must survive it.
    run_dir = tmp_path / "run"
    _kill_and_resume(run_dir, SEARCH_TO_INIT, round_index, branch, step, "step")
    assert _history(run_dir) == _history(uninterrupted_to_init)
    assert _tickets(run_dir) == _tickets(uninterrupted_to_init)
    assert _curves(run_dir) == _curves(uninterrupted_to_init)


def test_a_sigkilled_search_with_stock_adam_resumes_to_the_uninterrupted_one(tmp_path_factory, tmp_path: Path):
    # Stock Adam's masked second moments hold 1 while the enforcer runs and 0 in checkpoints: the resumed run
    # starts from the zeros and must still train the same weights.
    search = [*SEARCH_TO_INIT, "~optim.fused"]
    uninterrupted = _uninterrupted(tmp_path_factory, search)
    run_dir = tmp_path / "run"
    _kill_and_resume(run_dir, search, 2, "ticket", 17, "step")
    assert _history(run_dir) == _history(uninterrupted)
    assert _tickets(run_dir) == _tickets(uninterrupted)
    assert _curves(run_dir) == _curves(uninterrupted)
