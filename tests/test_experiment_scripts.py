"""The experiment scripts compose the runs their headers promise: each arm's Hydra overrides, the recipe and the
overrides of the environment, and a clear refusal of a bad arm before any training. A stand-in for
``lightning-lottery`` records every command line instead of training."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the experiment scripts are bash scripts")

# Records its arguments; for a 2:4 search it also writes the history.json the summary reads.
STAND_IN = """#!{python}
import json, sys
from pathlib import Path
args = sys.argv[1:]
with open({calls!r}, "a") as f:
    f.write(json.dumps(args) + "\\n")
opts = dict(a.split("=", 1) for a in args if "=" in a)
run_dir = Path(opts["hydra.run.dir"])
if opts.get("lottery.structure") == "2:4":
    seed = int(opts["seed"])
    records = [{{"round": 0, "branch": "ticket", "metrics": {{"test_acc": 0.60 + seed / 100}}}}]
    if opts["lottery.rewind"] == "init":
        records.append({{"round": 1, "branch": "ticket", "metrics": {{"test_acc": 0.62 + seed / 100}}}})
        records.append({{"round": 1, "branch": "random", "metrics": {{"test_acc": 0.55 + seed / 100}}}})
    else:
        records.append({{"round": 1, "branch": "ticket", "metrics": {{"test_acc": 0.63 + seed / 100}}}})
    (run_dir / "lottery").mkdir(parents=True, exist_ok=True)
    (run_dir / "lottery" / "history.json").write_text(json.dumps({{"history": records}}))
"""


def _stand_in(tmp_path: Path) -> tuple[Path, Path]:
    calls = tmp_path / "calls.jsonl"
    program = tmp_path / "bin" / "lightning-lottery"
    program.parent.mkdir()
    program.write_text(STAND_IN.format(python=sys.executable, calls=str(calls)))
    program.chmod(0o755)
    report = program.with_name("lightning-lottery-report")
    report.write_text(f'#!/bin/sh\necho report "$@" >> {calls}.report\n')
    report.chmod(0o755)
    return program, calls


def _run(script: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPTS / script), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _calls(calls: Path) -> list[dict[str, str]]:
    lines = calls.read_text().splitlines() if calls.exists() else []
    return [dict(a.split("=", 1) for a in json.loads(line)) for line in lines]


def test_cheaper_tickets_runs_the_chosen_arms_with_the_recipe_and_overrides(tmp_path: Path):
    program, calls = _stand_in(tmp_path)
    env = {
        "LIGHTNING_LOTTERY": str(program),
        "RECIPE": "cifar10_conv2",
        "EXPERIMENT": "conv2_cheaper_tickets",
        "STEPS": "1000",
        "ROUNDS": "4",
        "AT_IMP_LEVELS": "[0.358374, 0.588042]",
        "ARMS": "imp early_bird synflow",
        "OVERRIDES": "trainer.val_check_interval=250 +data.eval_batch_size=60",
    }
    proc = _run("cheaper_tickets.sh", [str(tmp_path / "out"), "3"], env)
    assert proc.returncode == 0, proc.stderr
    imp, early_bird, synflow = _calls(calls)
    for call, name in ((imp, "imp"), (early_bird, "early_bird"), (synflow, "synflow")):
        assert call["recipe"] == "cifar10_conv2" and call["experiment"] == "conv2_cheaper_tickets"
        assert call["seed"] == "3" and call["trainer.max_steps"] == "1000" and call["ckpt_path"] == "auto"
        assert call["trainer.val_check_interval"] == "250" and call["+data.eval_batch_size"] == "60"
        assert call["hydra.run.dir"] == str(tmp_path / "out" / name / "seed3")
    assert imp["lottery.rounds"] == early_bird["lottery.rounds"] == "4" and "lottery.early_bird" not in imp
    assert early_bird["lottery.early_bird"] == "{every:100,patience:5,threshold:0.1}"
    # Pruning at initialisation: one level per target sparsity, global, with its random control.
    assert synflow["lottery.pruning"] == "synflow" and synflow["lottery.rounds"] == "2"
    assert synflow["lottery.amount"] == "[0.358374, 0.588042]" and synflow["lottery.scope"] == "global"
    assert synflow["lottery.controls"] == "[random]"
    assert (tmp_path / "calls.jsonl.report").read_text().split() == [
        "report",
        str(tmp_path / "out"),
        "--out",
        str(tmp_path / "out" / "report"),
    ]


def test_cheaper_tickets_refuses_an_unknown_arm_before_training(tmp_path: Path):
    program, calls = _stand_in(tmp_path)
    proc = _run("cheaper_tickets.sh", [str(tmp_path / "out")], {"LIGHTNING_LOTTERY": str(program), "ARMS": "imp snipp"})
    assert proc.returncode == 2
    assert "unknown arm 'snipp' in ARMS (allowed: imp early_bird snip grasp synflow magnitude_init)" in proc.stderr
    assert not calls.exists() and not (tmp_path / "out").exists()


def test_two_four_runs_both_searches_per_seed_and_summarises_them(tmp_path: Path):
    program, calls = _stand_in(tmp_path)
    env = {
        "LIGHTNING_LOTTERY": str(program),
        "PYTHON": sys.executable,
        "RECIPE": "cifar10_conv2",
        "STEPS": "2000",
        "TOLERANCE": "1.0",
        "OVERRIDES": "lottery.exclude=[model.conv1.weight]",
    }
    proc = _run("two_four.sh", [str(tmp_path / "out"), "0", "1", "2"], env)
    assert proc.returncode == 0, proc.stderr
    runs = _calls(calls)
    assert [(c["seed"], c["lottery.rewind"]) for c in runs] == [(s, r) for s in "012" for r in ("init", "finetune")]
    for call in runs:
        assert call["recipe"] == "cifar10_conv2" and call["lottery.structure"] == "2:4"
        assert call["lottery.rounds"] == "1" and call["lottery.exclude"] == "[model.conv1.weight]"
    assert {c["lottery.controls"] for c in runs if c["lottery.rewind"] == "init"} == {"[random]"}
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| 2:4 rewind θ₀ | random 2:4 | 3 | +7.00 [" in summary
    assert "2:4 fine-tune matches dense (within 1 point)" not in summary  # +3 points: better, not "matches"
    assert "| 2:4 fine-tune | dense | 3 | +3.00 [" in summary
