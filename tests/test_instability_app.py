"""``lightning-lottery analysis=instability``: the app mode, its config checks, its artifacts and report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

import lightning_lottery
from lightning_lottery.analysis.app import InstabilitySettings, ticket_files
from lightning_lottery.analysis.report import main as report_main
from lightning_lottery.analysis.report import markdown_table, summary_rows
from lightning_lottery.app import ConfigError, run
from lightning_lottery.core import dense_state
from lightning_lottery.ticket import Ticket

CONF = Path(lightning_lottery.__file__).parent / "conf"
SYNTHETIC = ["data=synthetic", "data.image_shape=[1,28,28]", "data.num_train=300", "data.num_test=100"]


def _compose(tmp: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "config",
            overrides=[
                "recipe=mnist_lenet300",
                "experiment=mnist_lenet300",
                f"paths.output_dir={tmp}",
                "analysis=instability",
                "trainer.enable_progress_bar=false",
                "+model.arch_kwargs.hidden=[20,10]",
                *SYNTHETIC,
                *overrides,
            ],
        )


def _save_tickets(cfg: DictConfig, folder: Path) -> list[float]:
    """Two levels of a search as files, in both layouts: a dense level 0 and a half-pruned level 1."""
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, arch_kwargs={"hidden": [20, 10], "num_classes": datamodule.num_classes})
    weights = dense_state(model)
    full = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items() if n.endswith("weight")}
    half = {n: torch.rand(m.shape, generator=torch.Generator().manual_seed(0)) > 0.5 for n, m in full.items()}
    Ticket(full, weights, round=0).save(folder / "lottery" / "round_00" / "ticket" / "ticket.safetensors")
    Ticket(half, weights, round=1).save(folder / "lottery" / "round_01" / "ticket.safetensors")
    return [Ticket(full, weights).sparsity, Ticket(half, weights).sparsity]


def test_points_mode_writes_barriers_per_step_and_figures(tmp_path: Path):
    cfg = _compose(tmp_path, "analysis.points=[0,4,8]", "analysis.budget=6", "analysis.path_points=3")
    result = run(cfg)
    payload = json.loads((tmp_path / "instability.json").read_text())
    assert payload == json.loads(json.dumps(result["instability"], default=str))
    assert [e["step"] for e in payload["points"]] == [0, 4, 8]
    assert [e["start_step"] for e in payload["points"]] == [0, 4, 8]  # children resumed the parent at k
    for entry in payload["points"]:
        assert entry["alphas"] == [0.0, 0.5, 1.0] and entry["budget"] == 6
        assert entry["error_barrier"] == pytest.approx(max(entry["errors"]) - sum(entry["endpoint_errors"]) / 2)
    assert "earliest_stable_step" in payload and payload["settings"]["threshold"] == 0.02
    assert (tmp_path / "instability" / "instability_path.png").stat().st_size > 0
    assert (tmp_path / "instability" / "instability_vs_step.png").stat().st_size > 0
    assert not (tmp_path / "instability" / "parent").exists()  # the parent's checkpoints are cleaned up
    assert result["history"] == []


def test_tickets_mode_measures_every_level_of_a_search(tmp_path: Path):
    search = tmp_path / "search"
    sparsities = _save_tickets(_compose(tmp_path), search)
    assert [p.parent.name for p in ticket_files(search)] == ["ticket", "round_01"]
    cfg = _compose(tmp_path, "analysis.points=[]", f"analysis.tickets={search}", "analysis.budget=4")
    cfg.analysis.path_points = 3
    payload = run(cfg)["instability"]
    assert [e["round"] for e in payload["tickets"]] == [0, 1]
    assert [e["sparsity"] for e in payload["tickets"]] == pytest.approx(sparsities)
    assert payload["points"] == []
    assert (tmp_path / "instability" / "instability_vs_sparsity.png").is_file()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("analysis.points=[5,1]", "strictly increasing"),
        ("analysis.points=[-1]", "int >= 0"),
        ("analysis.eval_split=holdout", "not one of"),
        ("analysis.budget=0", "budget"),
        ("analysis.threshold=2", "fraction"),
        ("analysis.path_points=1", "path_points"),
        ("analysis.points=[]", "nothing to measure"),
        ("analysis.tickets=/no/such/folder", "is not a folder"),
    ],
)
def test_bad_analysis_settings_fail_before_training(tmp_path: Path, override: str, message: str):
    with pytest.raises(ConfigError, match=message):
        run(_compose(tmp_path, override))
    assert not (tmp_path / "instability.json").exists()


def test_a_ticket_of_another_network_is_refused_before_training(tmp_path: Path):
    search = tmp_path / "search"
    _save_tickets(_compose(tmp_path), search)
    cfg = _compose(tmp_path, "analysis.points=[]", f"analysis.tickets={search}", "model.arch_kwargs.hidden=[30,10]")
    with pytest.raises(ConfigError, match="does not fit"):
        run(cfg)
    empty = tmp_path / "empty" / "lottery"
    empty.mkdir(parents=True)
    with pytest.raises(ConfigError, match="no round_XX"):
        run(_compose(tmp_path, "analysis.points=[]", f"analysis.tickets={empty.parent}"))


def test_settings_refuse_unknown_keys_and_names():
    with pytest.raises(ValueError, match="unknown setting"):
        InstabilitySettings.from_config({"name": "instability", "budgte": 3})
    with pytest.raises(ValueError, match=r"analysis\.name"):
        InstabilitySettings.from_config({"name": "pruning"})
    assert InstabilitySettings.from_config({"points": [0, 10]}).points == (0, 10)


def test_command_line_names_the_bad_setting_and_trains_nothing(tmp_path: Path):
    command = [sys.executable, "-m", "lightning_lottery", "analysis=instability", "analysis.eval_split=holdout"]
    done = subprocess.run([*command, f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "config group `analysis`: `analysis.eval_split='holdout'` is not one of" in done.stderr
    assert not (tmp_path / "instability.json").exists()


def _payload(barriers: list[float], seed: int) -> dict:
    points = []
    for step, b in zip([0, 100], barriers):
        errors = [0.02, 0.02 + b, 0.02]
        points.append(
            {"step": step, "alphas": [0, 0.5, 1], "errors": errors, "losses": [0.1, 0.1 + b, 0.1]}
            | {"error_barrier": b, "loss_barrier": b, "endpoint_errors": [0.02, 0.02], "sparsity": 0.0}
        )
    return {"experiment": "toy", "seed": seed, "settings": {"threshold": 0.02}, "points": points, "tickets": []}


def test_report_aggregates_seeds_with_student_t_intervals(tmp_path: Path, capsys):
    payloads = [_payload([0.2, 0.001], 0), _payload([0.3, 0.002], 1), _payload([0.25, 0.003], 2)]
    rows = summary_rows(payloads)
    assert [r["step"] for r in rows] == [0, 100] and all(r["n"] == 3 for r in rows)
    assert rows[0]["error_barrier"] == pytest.approx(0.25)
    assert rows[0]["error_barrier_hi"] - 0.25 == pytest.approx(4.303 * 0.05 / 3**0.5, rel=1e-3)
    assert [r["stable"] for r in rows] == [False, True]
    assert [r["unstable"] for r in rows] == [True, False]  # 0.25 [0.13, 0.37] lies above 2 pp
    assert rows[0]["peak_above_worse_end"] == pytest.approx(0.25)  # the toy paths' ends agree: all bump
    table = markdown_table(rows)
    assert "| k=100 | 3 | 0.20 [" in table and table.count("| unstable |") == 1 and table.count("| stable |") == 1
    for i, payload in enumerate(payloads):
        (tmp_path / f"{i}.json").write_text(json.dumps(payload))
    report_main([str(tmp_path / f"{i}.json") for i in range(3)] + ["--out", str(tmp_path / "figs")])
    assert "| k=0 | 3 |" in capsys.readouterr().out
    assert (tmp_path / "figs" / "instability_vs_step.png").is_file()
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(tmp_path / "missing.json")])
    assert exit_info.value.code == 2
