"""The 2:4 comparison's summary: pairing by seed, Student-t intervals and the claim rule, from history.json alone."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "two_four_summary", Path(__file__).resolve().parents[1] / "scripts" / "two_four_summary.py"
)
summary = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(summary)


def _record(level: int, branch: str, acc: float, step: int = 100) -> dict:
    return {"round": level, "branch": branch, "metrics": {"test_acc": acc, "val_loss": 0.1}, "best_round_step": step}


def _write(out: Path, seed: int, dense: float, rewind: float, random: float, finetune: float) -> None:
    for arm, records in {
        "rewind": [_record(0, "ticket", dense), _record(1, "ticket", rewind), _record(1, "random", random)],
        "finetune": [_record(0, "ticket", dense), _record(1, "ticket", finetune)],
    }.items():
        folder = out / f"seed{seed}" / arm / "lottery"
        folder.mkdir(parents=True)
        (folder / "history.json").write_text(json.dumps({"settings": {}, "history": records}))


def test_interval_is_the_student_t_interval():
    mean, lo, hi = summary.interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and hi - mean == mean - lo == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    assert summary.interval([5.0]) == (5.0, 5.0, 5.0)


@pytest.mark.parametrize(
    ("a", "b", "differences", "label"),
    [
        ("x", "y", [0.5, 0.6, 0.4], "x better"),
        ("x", "y", [-0.5, -0.6, -0.4], "x worse"),
        ("x", "y", [0.5, -0.6, 0.4], "no difference detected"),
        ("x", "dense", [0.05, -0.05, 0.0], "x matches dense (within 0.2 points)"),
        ("x", "dense", [0.5, -0.9, 0.0], "no difference detected"),
        ("x", "y", [0.5, 0.6], "no claim: 2 seeds (the rule needs 3)"),
    ],
)
def test_claim_rule(a, b, differences, label):
    assert summary.verdict(a, b, differences) == label


def test_summary_pairs_arms_by_seed(tmp_path: Path, capsys):
    for seed, (dense, rewind, random, finetune) in enumerate(
        [(0.978, 0.981, 0.970, 0.979), (0.976, 0.980, 0.969, 0.976), (0.977, 0.982, 0.971, 0.978)]
    ):
        _write(tmp_path, seed, dense, rewind, random, finetune)
    table = summary.collect(tmp_path, "test_acc")
    assert table["seed1"]["2:4 rewind θ₀"] == (pytest.approx(98.0), 100)
    assert set(table["seed0"]) == {"dense", "2:4 rewind θ₀", "random 2:4", "2:4 fine-tune"}
    assert summary.main([str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "| 2:4 rewind θ₀ | random 2:4 | 3 | +1.10 [" in text and "2:4 rewind θ₀ better |" in text
    assert "| 2:4 rewind θ₀ | 2:4 fine-tune | 3 | +0.33 [" in text


def test_missing_metric_and_folders_are_one_line_errors(tmp_path: Path, capsys):
    assert summary.main([str(tmp_path)]) == 2
    assert "no seed*/ folders" in capsys.readouterr().err
    _write(tmp_path, 0, 0.97, 0.98, 0.96, 0.97)
    assert summary.main([str(tmp_path), "--metric", "test_ppl"]) == 2
    assert "no 'test_ppl' at early stop (it has ['test_acc', 'val_loss'])" in capsys.readouterr().err


def test_tolerance_sets_what_matches_dense(tmp_path: Path, capsys):
    # Conv-2 on CIFAR-10 spreads more between seeds than LeNet-300-100: the "matches dense" margin is an option.
    differences = [-0.3, -0.5, 0.2]
    assert summary.verdict("x", "dense", differences) == "no difference detected"
    assert summary.verdict("x", "dense", differences, tolerance=2.0) == "x matches dense (within 2 points)"
    assert summary.verdict("x", "dense", [0.1, -0.1, 0.0], tolerance=1.0) == "x matches dense (within 1 point)"
    for seed, (dense, finetune) in enumerate([(0.650, 0.647), (0.640, 0.635), (0.655, 0.657)]):
        _write(tmp_path, seed, dense, 0.64, 0.62, finetune)
    assert summary.main([str(tmp_path), "--tolerance", "2"]) == 0
    text = capsys.readouterr().out
    assert "| 2:4 fine-tune | dense | 3 | -0.20 [" in text and "2:4 fine-tune matches dense (within 2 points) |" in text
    with pytest.raises(SystemExit) as exit_info:
        summary.main([str(tmp_path), "--tolerance", "-1"])
    assert exit_info.value.code == 2
    assert "--tolerance must be >= 0 points, got -1.0" in capsys.readouterr().err
