"""rewind="auto": candidates on a grid of round 0, their instability, and levels rewound to the earliest stable one."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from tiny import TinyNet, effective_weights, loaders, trainer

from lightning_lottery import LotteryTicketCallback
from lightning_lottery.analysis.instability import InstabilityResult
from lightning_lottery.core.connectivity import PathResult

# The module, not the function the package re-exports under the same name.
instability_module = importlib.import_module("lightning_lottery.analysis.instability")

GRID = [0.0, 0.25, 0.5]  # of 12 steps: candidates at steps 0, 3 and 6


def _search(tmp_path: Path, **auto: Any) -> tuple[LotteryTicketCallback, list[dict[str, torch.Tensor]]]:
    starts: list[dict[str, torch.Tensor]] = []

    class Record(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            starts.append(effective_weights(pl_module))

    lottery = LotteryTicketCallback(
        rounds=2,
        amount=0.5,
        rewind="auto",
        auto_rewind={"grid": GRID, "budget": 4, **auto},
        monitor=None,
        dirpath=tmp_path / "lottery",
        seed=5,
    )
    train, val = loaders(shuffle=True)
    torch.manual_seed(0)
    trainer(max_steps=12, max_epochs=None, callbacks=[lottery, Record()]).fit(TinyNet(), train, val)
    return lottery, starts


def test_the_earliest_stable_candidate_is_chosen_and_the_levels_rewind_to_it(tmp_path, monkeypatch):
    measured: list[int] = []
    barriers = {0: 0.10, 3: 0.01, 6: 0.0}  # unstable from θ₀, stable from step 3 on

    def fake(module, data, budget, start, **kwargs):
        step = int(torch.load(start, weights_only=True)["global_step"])
        measured.append(step)
        errors = (0.1, 0.1 + barriers[step], 0.1)
        return InstabilityResult(f"step:{step}", PathResult((0.0, 0.5, 1.0), errors, (1.0, 1.0, 1.0)), (1, 2), budget)

    monkeypatch.setattr(instability_module, "instability", fake)
    lottery, starts = _search(tmp_path)
    assert measured == [0, 3], "measured in grid order until one is stable"
    assert lottery.theta_k is not None
    assert [(r["round"], r["start_step"], r["steps"]) for r in lottery.history] == [(0, 0, 12), (1, 3, 9), (2, 3, 9)]
    for name, mask in lottery.masks.items():
        assert torch.equal(starts[-1][name], lottery.theta_k[name] * mask), "the level starts from θ_3"
    summary = json.loads((tmp_path / "lottery" / "history.json").read_text())["auto_rewind"]
    assert summary["chosen_step"] == 3 and summary["stable"] is True and summary["grid_steps"] == [0, 3, 6]
    assert summary["barriers"] == {"0": pytest.approx(0.10), "3": pytest.approx(0.01)}
    assert lottery.ticket().metadata["rewind_step"] == 3
    assert lottery.history[1]["cumulative_steps"] == 12 + 2 * 2 * 4 + 9, "the children's steps count as compute"


def test_with_no_stable_candidate_the_last_one_is_taken_with_a_warning(tmp_path, monkeypatch):
    def fake(module, data, budget, start, **kwargs):
        errors = (0.1, 0.5, 0.1)
        return InstabilityResult("x", PathResult((0.0, 0.5, 1.0), errors, (1.0, 1.0, 1.0)), (1, 2), budget)

    monkeypatch.setattr(instability_module, "instability", fake)
    with pytest.warns(UserWarning, match="no candidate of \\[0, 3, 6\\] was stable"):
        lottery, _ = _search(tmp_path)
    assert [r["start_step"] for r in lottery.history[1:]] == [6, 6]


def test_real_children_measure_every_candidate_and_the_search_finishes(tmp_path):
    lottery, _ = _search(tmp_path, threshold=0.5)
    summary = json.loads((tmp_path / "lottery" / "history.json").read_text())["auto_rewind"]
    chosen = summary["chosen_step"]
    assert chosen in (0, 3, 6) and str(chosen) in summary["barriers"]
    for k, result in summary["results"].items():
        assert len(result["errors"]) == 11 and result["budget"] == 4 and int(k) in (0, 3, 6)
    assert [r["start_step"] for r in lottery.history[1:]] == [chosen, chosen]
    assert (tmp_path / "lottery" / "auto_rewind" / "step_0000000.ckpt").is_file()


def test_auto_rewind_settings_are_checked():
    with pytest.raises(ValueError, match=r"auto_rewind.*needs rewind='auto'"):
        LotteryTicketCallback(auto_rewind={"budget": 10})
    with pytest.raises(ValueError, match="allowed keys"):
        LotteryTicketCallback(rewind="auto", auto_rewind={"steps": [0, 10]})
    with pytest.raises(ValueError, match=r"grid.*\[0, 1\)"):
        LotteryTicketCallback(rewind="auto", auto_rewind={"grid": [0.0, 1.5]})


def test_a_search_killed_while_measuring_keeps_the_finished_candidates(tmp_path, monkeypatch):
    """Results go to auto_rewind/results.json as they come: a resumed measurement does not repeat them."""
    folder = tmp_path / "lottery" / "auto_rewind"
    folder.mkdir(parents=True)
    earlier = {"errors": [0.1, 0.2, 0.1], "error_barrier": 0.1, "steps_trained": 8, "budget": 4}
    (folder / "results.json").write_text(json.dumps({"0": earlier}))
    measured: list[int] = []

    def fake(module, data, budget, start, **kwargs):
        measured.append(int(torch.load(start, weights_only=True)["global_step"]))
        return InstabilityResult("x", PathResult((0.0, 0.5, 1.0), (0.1, 0.1, 0.1), (1.0, 1.0, 1.0)), (1, 2), budget)

    monkeypatch.setattr(instability_module, "instability", fake)
    lottery, _ = _search(tmp_path)
    assert measured == [3], "step 0 was measured before the kill"
    saved = json.loads((folder / "results.json").read_text())
    assert set(saved) == {"0", "3"} and lottery.history[1]["start_step"] == 3
