"""The LeNet-300-100 claim labels: paired by seed, Student-t intervals, the written rule, from summary.csv alone."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "lenet300_claims", Path(__file__).resolve().parents[1] / "scripts" / "lenet300_claims.py"
)
claims = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(claims)

LEVELS = (100.0, 26.3, 21.1, 16.9, 3.6)
FIELDS = ["experiment", "branch", "seed", "weights_pct", "at_best.test_acc", "best_round_step", "generalisation_gap"]


def _summary(path: Path, seeds: int, ticket_gain: float, jitter: float = 0.001) -> Path:
    """Dense at 97.8%; the ticket ``ticket_gain`` points above it below 100%, the controls 0.5 points below dense."""
    rows = []
    for seed in range(seeds):
        for pct in LEVELS:
            branches = ("ticket",) if pct == 100.0 else ("ticket", "reinit", "random")
            for branch in branches:
                noise = jitter * (seed - 1) if branch == "ticket" and pct != 100.0 else 0.0  # not cancelled by pairing
                gain = 0.0 if pct == 100.0 else (ticket_gain if branch == "ticket" else -0.5)
                stop = 5000 if pct == 100.0 or branch != "ticket" else (2000 if pct == 21.1 else 3000)
                gap = 1.2 if pct == 100.0 or branch != "ticket" else 0.8
                rows.append(
                    {
                        "experiment": "mnist_lenet300",
                        "branch": branch,
                        "seed": seed,
                        "weights_pct": pct,
                        "at_best.test_acc": 0.978 + gain / 100 + noise,
                        "best_round_step": stop + 100 * seed,
                        "generalisation_gap": gap / 100 + noise,
                    }
                )
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _labels(path: Path) -> list[str]:
    return [label for *_, label in claims.claims(claims.read(path, None))]


def test_clear_effects_over_three_seeds_are_reproduced(tmp_path: Path):
    assert _labels(_summary(tmp_path / "s.csv", seeds=3, ticket_gain=0.4)) == ["reproduced"] * 5


def test_the_opposite_direction_is_not_reproduced(tmp_path: Path):
    labels = _labels(_summary(tmp_path / "s.csv", seeds=3, ticket_gain=-0.4))
    assert labels[1] == "not reproduced", "the ticket below dense at 17-21%"


def test_an_interval_that_includes_zero_is_only_partly(tmp_path: Path):
    labels = _labels(_summary(tmp_path / "s.csv", seeds=3, ticket_gain=0.4, jitter=0.02))  # ±2 points per seed
    assert labels[1] == "partly"


def test_fewer_than_three_seeds_decide_nothing(tmp_path: Path):
    assert set(_labels(_summary(tmp_path / "s.csv", seeds=2, ticket_gain=0.4))) == {"undecided: n < 3"}


def test_a_missing_summary_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture):
    assert claims.main([str(tmp_path / "none.csv")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
