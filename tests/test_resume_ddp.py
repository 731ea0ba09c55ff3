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
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    _run(out, "--shuffle")
    return out


@pytest.mark.parametrize(
    ("kill_epoch", "where"),
    [(1, "mid-round: last checkpoint after epoch 0 of round 2"), (0, "round boundary: last checkpoint ends round 1")],
)
def test_sigkilled_search_resumes_to_the_same_masks_and_history(tmp_path, uninterrupted, kill_epoch, where):
    _run(tmp_path, "--shuffle", "--kill-round", "2", "--kill-epoch", str(kill_epoch), expect_kill=True)
    assert not (tmp_path / "result_rank0.json").exists()
    history = json.loads((tmp_path / "lottery" / "history.json").read_text())["history"]
    assert [r["round"] for r in history] == [0, 1], "artifacts of finished rounds survive the kill"
    _run(tmp_path, "--shuffle", "--resume")
    _assert_same_search(uninterrupted, tmp_path)


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
    assert sorted(per_round) == [f"0 round_0{r}" for r in range(4)], "round artifacts are written by rank 0 only"
