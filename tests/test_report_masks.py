"""The report's mask analytics: overlap tables, CSVs and figure from ticket files, values checked by hand; and on
the artifacts of a real (tiny) search."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from tiny import TinyNet, loaders, trainer

from lightning_lottery import LotteryTicketCallback, Ticket
from lightning_lottery.report import collect_runs, write_report
from lightning_lottery.report.oneshot import align_one_shot


def _weights(masks: dict) -> dict:
    """A ticket file holds a weight for every mask; their values do not matter here."""
    return {n: torch.zeros(m.shape) for n, m in masks.items()}


def _m(*rows: list[int]) -> torch.Tensor:
    return torch.tensor(rows[0] if len(rows) == 1 else list(rows), dtype=torch.bool)


DENSE = {"fc1.weight": _m([1, 1, 1, 1]), "fc2.weight": _m([1, 1], [1, 1])}
# Seed 0 and seed 1 of the iterative search; each level nested in the one before (8 -> 5 -> 3 weights kept).
SEED0 = [DENSE, {"fc1.weight": _m([1, 1, 0, 0]), "fc2.weight": _m([1, 0], [1, 1])}]
SEED0.append({"fc1.weight": _m([1, 0, 0, 0]), "fc2.weight": _m([1, 0], [0, 1])})
SEED1 = [DENSE, {"fc1.weight": _m([1, 0, 1, 0]), "fc2.weight": _m([1, 1], [0, 1])}]
SEED1.append({"fc1.weight": _m([0, 0, 1, 0]), "fc2.weight": _m([1, 0], [0, 1])})
RANDOM0 = [
    {"fc1.weight": _m([0, 0, 1, 1]), "fc2.weight": _m([0, 1], [1, 1])},
    {"fc1.weight": _m([0, 0, 0, 1]), "fc2.weight": _m([1, 0], [0, 1])},
]
# One-shot to the last level's sparsity (3 of 8 kept): seed 0 finds seed 0's iterative mask, seed 1 another one.
ONE_SHOT = {0: [DENSE, SEED0[2]], 1: [DENSE, RANDOM0[1]]}


def _run(
    folder: Path, variant: str, seed: int, levels: list[dict], randoms: list[dict] = (), reinit: bool = False
) -> None:
    lottery = folder / "lottery"
    history = []
    for r, masks in enumerate(levels):
        Ticket(masks=masks, weights=_weights(masks), round=r).save(
            lottery / f"round_{r:02d}" / "ticket" / "ticket.safetensors"
        )
        kept = sum(int(m.sum()) for m in masks.values())
        history.append(
            {
                "round": r,
                "branch": "ticket",
                "sparsity": 1 - kept / 8,
                "remaining": kept,
                "total": 8,
                "remaining_pct": 100 * kept / 8,
                "monitor": "val_loss",
                "best": 0.5,
                "best_round_step": 10,
                "metrics": {"val_loss": 0.5, "test_acc": 0.9},
                "steps": 20,
            }
        )
    for r, masks in enumerate(randoms, start=1):
        Ticket(masks=masks, weights=_weights(masks), round=r).save(
            lottery / f"round_{r:02d}" / "random" / "ticket.safetensors"
        )
    for r, masks in enumerate(levels[1:] if reinit else [], start=1):  # the ticket's own mask, fresh weights
        Ticket(masks=masks, weights=_weights(masks), round=r).save(
            lottery / f"round_{r:02d}" / "reinit" / "ticket.safetensors"
        )
    settings = {"rounds": len(levels) - 1, "monitor": "val_loss", "mode": "min", "seed": seed, "rewind": "init"}
    (lottery / "history.json").write_text(json.dumps({"settings": settings, "history": history}))
    (folder / "run.json").write_text(json.dumps({"experiment": "toy", "variant": variant, "seed": seed}))


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    _run(root / "0", "iterative", 0, SEED0, RANDOM0, reinit=True)
    _run(root / "1", "iterative", 1, SEED1)
    _run(root / "2", "one-shot", 0, ONE_SHOT[0])
    _run(root / "3", "one-shot", 1, ONE_SHOT[1])
    return root


def _value(rows: list[dict[str, str]], variant: str, comparison: str, round_index: int) -> dict[str, float]:
    row = next(
        r for r in rows if (r["variant"], r["comparison"], r["round"]) == (variant, comparison, str(round_index))
    )
    return {k: float(row[k]) for k in ("jaccard", "jaccard_min", "jaccard_max", "chance", "n", "remaining_pct")}


def test_overlaps_in_the_csv_by_hand(sweep: Path):
    out = sweep / "report"
    write_report([sweep], out=out)
    rows = _rows(out / "masks" / "mask_overlap.csv")
    # Consecutive levels: nested masks give kept(r) / kept(r-1): 5/8 then 3/5 for both seeds.
    assert _value(rows, "iterative", "consecutive levels", 1)["jaccard"] == pytest.approx(5 / 8)
    level2 = _value(rows, "iterative", "consecutive levels", 2)
    assert (level2["jaccard"], level2["n"], level2["remaining_pct"]) == pytest.approx((3 / 5, 2, 37.5))
    # Between seeds, level 1: fc1 {0,1} vs {0,2} (1 of 3), fc2 {0,2,3} vs {0,1,3} (2 of 4): 3/7.
    # Level 2: fc1 {0} vs {2} (0 of 2), fc2 equal (2 of 2): 2/4. Chance at level 2: fc1 1·1/4 over 1.75,
    # fc2 2·2/4 over 3: (0.25 + 1) / (1.75 + 3).
    assert _value(rows, "iterative", "between seeds", 1)["jaccard"] == pytest.approx(3 / 7)
    seeds2 = _value(rows, "iterative", "between seeds", 2)
    assert (seeds2["jaccard"], seeds2["chance"]) == pytest.approx((0.5, 1.25 / 4.75))
    # Ticket vs random branch (seed 0 only): 2/8 and 2/4.
    assert _value(rows, "iterative", "ticket vs random", 1)["jaccard"] == pytest.approx(0.25)
    assert _value(rows, "iterative", "ticket vs random", 2)["n"] == 1
    assert not any(r["comparison"] == "ticket vs reinit" for r in rows)  # the ticket's own mask: nothing to learn
    # One-shot vs iterative at matched sparsity (one-shot level 1 meets iterative level 2), paired by seed:
    # seed 0 identical (1), seed 1: fc1 {3} vs {2}, fc2 equal: 2/4.
    across = _value(rows, "one-shot", "vs iterative", 2)  # shown at the iterative level of its sparsity
    assert (across["jaccard"], across["jaccard_min"], across["jaccard_max"], across["n"]) == pytest.approx(
        (0.75, 0.5, 1.0, 2)
    )


def test_report_md_has_the_overlap_table_figure_and_per_layer_sparsity(sweep: Path):
    out = sweep / "report"
    text = write_report([sweep], out=out).read_text()
    section = text[text.index("# Mask analytics") :]
    iterative = section[section.index("**iterative**") : section.index("**one-shot**")]
    assert "| Round | Weights remaining (%) | consecutive levels | between seeds | ticket vs random |" in iterative
    one_shot = section[section.index("**one-shot**") : section.index("![")]
    # One-shot level 1 keeps 37.5%, as iterative level 2 does: it is shown as level 2, dense level 0 left out.
    assert "| 2 | 37.5 | 0.375 [0.375–0.375] (0.375) | 0.500 (0.263) | 0.750 [0.500–1.000] (0.263) |" in one_shot
    # Round 2 of consecutive levels: mean 0.6 with no spread (both seeds 3/5); chance in parentheses.
    assert "0.600 [0.600–0.600] (" in section
    figure = out / "masks" / "toy_mask_overlap.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "](masks/toy_mask_overlap.png)" in section
    # Per-layer sparsity, mean over seeds: iterative level 1 prunes 2 of 4 (fc1) and 1 of 4 (fc2) in both seeds.
    assert "| 1 | 50.0 | 25.0 |" in section and "| 2 | 75.0 | 50.0 |" in section
    sparsity = _rows(out / "masks" / "layer_sparsity.csv")
    one_shot = [r for r in sparsity if r["variant"] == "one-shot" and r["round"] == "2"]
    assert {r["tensor"]: float(r["sparsity_pct"]) for r in one_shot} == {"fc1.weight": 75.0, "fc2.weight": 50.0}


def test_runs_without_tickets_add_no_section(sweep: Path):
    for ticket in sweep.rglob("ticket.safetensors"):
        ticket.unlink()
    text = write_report([sweep], out=sweep / "report").read_text()
    assert "# Mask analytics" not in text


def test_a_real_search_reports_its_nested_levels(tmp_path: Path):
    torch.manual_seed(0)
    lottery = LotteryTicketCallback(rounds=2, amount=0.5, dirpath=tmp_path / "run" / "lottery", verbose=False)
    train, val = loaders()
    trainer(max_epochs=1, callbacks=[lottery]).fit(TinyNet(), train, val)
    out = tmp_path / "report"
    write_report([tmp_path / "run"], out=out)
    rows = [r for r in _rows(out / "masks" / "mask_overlap.csv") if r["comparison"] == "consecutive levels"]
    # Magnitude pruning only shrinks masks: the overlap of level r with r-1 is the fraction it kept (0.5 each).
    assert [int(r["round"]) for r in rows] == [1, 2]
    assert [float(r["jaccard"]) for r in rows] == pytest.approx([0.5, 0.5], abs=0.01)


def test_one_shot_runs_are_shown_at_the_iterative_level_of_their_sparsity(tmp_path: Path):
    root = tmp_path / "sweep"
    _run(root / "0", "iterative", 0, SEED0)
    _run(root / "1", "one-shot", 0, [DENSE, SEED0[1]])  # 5 of 8 kept: iterative level 1
    _run(root / "2", "one-shot", 0, [DENSE, SEED0[2]])  # 3 of 8 kept: iterative level 2
    (root / "2" / "lottery" / "round_01" / "curve.csv").write_text("round_step,val_loss\n10,0.25\n")
    runs = align_one_shot(collect_runs([root]))
    shown = {str(run.run_dir.name): [r["round"] for r in run.records] for run in runs}
    assert shown == {"0": [0, 1, 2], "1": [0, 1], "2": [0, 2]}
    aligned = next(run for run in runs if run.run_dir.name == "2")
    assert aligned.curve(2) == [{"round_step": 10.0, "val_loss": 0.25}]  # read from round_01 on disk
    assert aligned.records[1]["level_on_disk"] == 1
    out = tmp_path / "report"
    write_report([root], out=out)
    rows = [r for r in _rows(out / "summary.csv") if r["variant"] == "one-shot"]
    assert sorted((r["round"], r["remaining_pct"]) for r in rows) == [
        ("0", "100.0"),
        ("0", "100.0"),
        ("1", "62.5"),
        ("2", "37.5"),
    ]
    # Without an iterative run the one-shot targets are numbered from the least sparse.
    (root / "0" / "lottery" / "history.json").unlink()
    ranked = {run.run_dir.name: [r["round"] for r in run.records] for run in align_one_shot(collect_runs([root]))}
    assert ranked == {"1": [0, 1], "2": [0, 2]}
