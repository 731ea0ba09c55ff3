"""scripts/paired_summary.py: arms chosen by filters, levels matched by % remaining, pairing by seed, totals."""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "paired_summary", Path(__file__).resolve().parents[1] / "scripts" / "paired_summary.py"
)
paired = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(paired)

ROWS = [
    # variant, seed, % remaining, accuracy, steps
    ("IMP ticket", 0, 51.28, 0.980, 4000),
    ("IMP ticket", 1, 51.28, 0.970, 5000),
    ("IMP ticket", 2, 51.28, 0.975, 4500),
    ("IMP ticket", 0, 21.07, 0.982, 3000),
    ("IMP ticket", 1, 21.07, 0.972, 3000),
    ("snip", 0, 51.3, 0.975, 1000),
    ("snip", 1, 51.3, 0.966, 1000),
    ("snip", 2, 51.3, 0.969, 1000),
]


def _write(path: Path) -> Path:
    fields = ["variant", "branch", "seed", "weights_pct", "at_best.test_acc", "steps"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        writer.writerows([variant, "ticket", seed, pct, acc, steps] for variant, seed, pct, acc, steps in ROWS)
    return path


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_levels_match_by_remaining_and_differences_pair_by_seed(tmp_path: Path):
    rows = _rows(_write(tmp_path / "s.csv"))
    a = paired.select(rows, paired.parse_filter("variant=snip,branch=ticket"), "at_best.test_acc", 100)
    b = paired.select(rows, paired.parse_filter("variant=IMP ticket"), "at_best.test_acc", 100)
    table = paired.compare(a, b)
    assert [r[:2] for r in table] == [["51.3", "3"]], "21.1% has no snip arm"
    half = 4.303 * 0.1 / math.sqrt(3)  # per-seed differences -0.5, -0.4, -0.6 points: sd 0.1
    assert table[0][4] == f"{-0.5:+.2f} [{-0.5 - half:+.2f}, {-0.5 + half:+.2f}]", table


def test_total_sums_the_shared_levels_per_seed(tmp_path: Path):
    rows = _rows(_write(tmp_path / "s.csv"))
    a = paired.select(rows, {"variant": "IMP ticket"}, "steps", 1)
    b = paired.select(rows, {"variant": "snip"}, "steps", 1)
    total = paired.compare(a, b, total=True)[-1]
    assert total[:4] == ["total", "3", "4500.00", "1000.00"]


def test_ambiguous_filters_and_bad_input_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture):
    path = _write(tmp_path / "s.csv")
    assert paired.main([str(path), "--a", "branch=ticket", "--b", "variant=snip"]) == 2  # two variants per seed
    assert paired.main([str(path), "--a", "nonsense", "--b", "variant=snip"]) == 2
    assert paired.main([str(tmp_path / "none.csv"), "--a", "x=1", "--b", "y=2"]) == 2
    assert all(line.startswith("paired_summary: ") for line in capsys.readouterr().err.splitlines())


def test_help_renders_every_option(capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as stop:
        paired.main(["--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default 100: % and points)" in text and "(default: at_best.test_acc)" in text
