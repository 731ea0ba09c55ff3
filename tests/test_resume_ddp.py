"""A killed search resumes to the same result; under DDP every rank holds the same masks and weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_lottery import Ticket

SCRIPT = Path(__file__).parent / "scripts" / "lottery_run.py"


def _run(out: Path, *args: str, expect_kill: bool = False) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out), *args], capture_output=True, text=True, timeout=300)
    if expect_kill:
        assert proc.returncode == -9, f"expected SIGKILL, got {proc.returncode}\n{proc.stderr[-3000:]}"
    else:
        assert proc.returncode == 0, proc.stderr[-3000:]


def _result(out: Path, rank: int = 0) -> tuple[dict, Ticket]:
    result = json.loads((out / f"result_rank{rank}.json").read_text())
    return result, Ticket.load(out / "final" / f"ticket_rank{rank}.safetensors")


def _assert_same_search(a: Path, b: Path, rank_a: int = 0, rank_b: int = 0) -> None:
    (result_a, ticket_a), (result_b, ticket_b) = _result(a, rank_a), _result(b, rank_b)
    timeless = [[{k: v for k, v in r.items() if k != "seconds"} for r in x["history"]] for x in (result_a, result_b)]
    assert timeless[0] == timeless[1]  # everything but wall time
    assert set(ticket_a.masks) == set(ticket_b.masks)
    for name in ticket_a.masks:
        assert torch.equal(ticket_a.masks[name], ticket_b.masks[name]), name
    for name in ticket_a.weights:
        assert torch.equal(ticket_a.weights[name], ticket_b.weights[name]), name


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The uninterrupted searches, by their settings."""
    runs = {}
    for name, args in SEARCHES.items():
        runs[name] = tmp_path_factory.mktemp(name)
        _run(runs[name], "--shuffle", *args)
    return runs


SEARCHES = {
    "init": (),
    "late-rewind-with-controls": ("--rewind", "5", "--controls", "reinit", "random"),
}


@pytest.mark.parametrize(
    ("search", "kill", "finished"),
    [
        ("init", ("2", "ticket", "1"), [(0, "ticket"), (1, "ticket")]),
        ("init", ("2", "ticket", "0"), [(0, "ticket"), (1, "ticket")]),
        ("late-rewind-with-controls", ("1", "random", "1"), [(0, "ticket"), (1, "ticket"), (1, "reinit")]),
        (
            "late-rewind-with-controls",
            ("2", "reinit", "2"),
            [(0, "ticket"), *[(r, b) for r in (1, 2) for b in ("ticket", "reinit", "random")][:4]],
        ),
    ],
    ids=[
        "mid-branch: last checkpoint after epoch 0 of level 2",
        "branch boundary: last checkpoint ends level 1",
        "inside a control branch, mid-epoch resume point",
        "inside a control branch of level 2",
    ],
)
def test_sigkilled_search_resumes_to_the_same_masks_and_history(tmp_path, uninterrupted, search, kill, finished):
    round_index, branch, epoch = kill
    args = SEARCHES[search]
    kill_args = ("--kill-round", round_index, "--kill-branch", branch, "--kill-epoch", epoch)
    _run(tmp_path, "--shuffle", *args, *kill_args, expect_kill=True)
    assert not (tmp_path / "result_rank0.json").exists()
    history = json.loads((tmp_path / "lottery" / "history.json").read_text())["history"]
    assert [(r["round"], r["branch"]) for r in history] == finished, "artifacts of finished branches survive"
    _run(tmp_path, "--shuffle", *args, "--resume")
    _assert_same_search(uninterrupted[search], tmp_path)


@pytest.mark.ddp
def test_ddp_ranks_hold_identical_masks_and_write_artifacts_once(tmp_path):
    _run(tmp_path, "--devices", "2", "--shuffle")
    result0, ticket0 = _result(tmp_path, 0)
    assert result0["world_size"] == 2
    _assert_same_search(tmp_path, tmp_path, 0, 1)
    total = sum(m.numel() for m in ticket0.masks.values())
    for record, rounds in zip(result0["history"], range(4)):
        assert total - record["remaining"] == round(total * (1 - 0.7**rounds))  # exact, from the masks
    writes = (tmp_path / "ticket_writes.log").read_text().split("\n")
    per_round = [w for w in writes if w.startswith(("0 round", "1 round"))]
    expected = [f"0 round_0{r}/ticket" for r in range(4)]
    assert sorted(per_round) == expected, "round artifacts are written by rank 0 only"
