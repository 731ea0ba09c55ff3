"""W&B under sweeps: one offline run per job, named and grouped, levels overlaid, tickets as versioned artifacts.

Everything is checked from the offline run records (``run-<id>.wandb``), read by ``wandb_log``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from wandb_log import config, history_keys, logged_artifacts, metric_definitions, run_info

import lightning_lottery
from lightning_lottery.app import ConfigError, run
from lightning_lottery.integrations.wandb import (
    WandbLottery,
    WandbUnavailable,
    check_wandb_usable,
    run_identity,
    ticket_artifact_name,
)

CONF = Path(lightning_lottery.__file__).parent / "conf"
TINY = [  # LeNet-300-100 on 600 synthetic images, 2 levels of 6 steps
    "preset=fast",
    "fast.rounds=1",
    "lottery.controls=[]",
    "fast.max_steps=6",
    "fast.val_check_interval=3",
    "data=synthetic",
    "data.image_shape=[1,28,28]",
    "data.num_train=600",
    "data.num_test=100",
    "trainer.enable_progress_bar=false",
    "logger=wandb",
]


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Offline W&B, with no run left open by an earlier test of this process (a logger would join it)."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb.finish()
    yield
    wandb.finish()


def _compose(out: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "config",
            overrides=["recipe=mnist_lenet300", "experiment=mnist_lenet300", f"paths.output_dir={out}", *overrides],
        )


def _run_log(job: Path) -> Path:
    logs = list((job / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 1, f"{job}: expected one W&B run, found {logs}"
    return logs[0]


def _check_job(log: Path, seed: int, variant: str = "init-magnitude") -> dict[str, Any]:
    info = run_info(log)
    assert info["name"] == f"mnist_lenet300-{variant}-seed{seed}"
    assert info["group"] == "mnist_lenet300" and info["job_type"] == variant
    assert info["tags"] == ["mnist_lenet300", variant, f"seed{seed}"]
    settings = config(log)
    assert settings["seed"] == seed  # the job's seed, not the DataModule's split seed ...
    assert settings["data"]["seed"] == 0  # ... which is kept under data
    tickets = [a for a in logged_artifacts(log) if a["type"] == "lottery-ticket"]
    assert {a["name"] for a in tickets} == {ticket_artifact_name("mnist_lenet300", variant, seed)}
    assert [sorted(a["aliases"]) for a in tickets] == [["latest", "round-00"], ["latest", "round-01"]]
    assert [(a["metadata"]["round"], a["metadata"]["branch"]) for a in tickets] == [(0, "ticket"), (1, "ticket")]
    return info


def test_two_jobs_in_one_process_get_two_runs(tmp_path: Path, offline):
    """What Hydra's basic launcher does: jobs one after the other in one process."""
    for seed in (0, 1):
        run(_compose(tmp_path / str(seed), *TINY, f"seed={seed}"))
    logs = [_run_log(tmp_path / str(seed)) for seed in (0, 1)]
    ids = {_check_job(log, seed)["id"] for seed, log in enumerate(logs)}
    assert len(ids) == 2

    log = logs[1]
    steps = metric_definitions(log)
    levels = [f"val_acc_by_level/round_{r:02d}-ticket" for r in (0, 1)]
    assert all(steps[key] == "level_step" for key in levels)  # levels share one x-axis ...
    keys = history_keys(log)
    assert set(levels) | {"level_step", "remaining_pct", "by_remaining/ticket/val_acc"} <= keys
    assert steps["by_remaining/ticket/val_acc"] == "remaining_pct"
    # ... and one chart per metric overlays them; so does the value at the early stop vs % remaining.
    charts = {k.split("_table/")[0] for k in keys if "_table/" in k}
    assert {"overlay/val_acc", "overlay/test_acc", "lottery/test_acc_vs_remaining"} <= charts
    assert not any(c.startswith("overlay/train") for c in charts)
    assert "lottery/levels/_type" in keys
    assert any(k.startswith("report/mnist_lenet300_test_acc_vs_weights") for k in keys)  # the report's figures


def test_a_joblib_multirun_gives_one_run_per_job(tmp_path: Path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="needs hydra-joblib-launcher (extra `joblib`)")
    sweep = tmp_path / "sweep"
    command = [
        str(Path(sys.executable).parent / "lightning-lottery"),
        "-m",
        *TINY,
        "seed=0,1",
        "report=false",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=1",  # one worker process runs both jobs: the case that used to share a run
        f"hydra.sweep.dir={sweep}",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    infos = [_check_job(_run_log(sweep / str(seed)), seed) for seed in (0, 1)]
    assert infos[0]["id"] != infos[1]["id"]


def test_a_transfer_run_names_its_source_artifact(tmp_path: Path, offline):
    source = tmp_path / "source"  # any search that wrote run.json; W&B or not
    run(_compose(source, *TINY, "report=false", "logger=csv"))
    target = tmp_path / "target"
    run(_compose(target, *TINY, "report=false", f"transfer.ticket={source}", "transfer.variant=transferred"))
    settings = config(_run_log(target))
    # W&B cannot link artifacts offline (use_artifact refuses); the source is kept in the config to link on sync.
    assert settings["lottery_source_artifact"] == ticket_artifact_name("mnist_lenet300", "init-magnitude", 0)
    assert run_info(_run_log(target))["job_type"] == "transferred ticket"


def test_an_online_transfer_run_uses_its_source_artifact():
    class Run:
        offline = False

        def __init__(self) -> None:
            self.used: list[tuple[str, str]] = []

        def use_artifact(self, name: str, type: str) -> None:
            self.used.append((name, type))

    online = Run()
    WandbLottery(source_artifact="tickets-a-b-seed0")._use_source(online)
    WandbLottery(source_artifact="tickets-a-b-seed0:round-03")._use_source(online)
    assert online.used == [
        ("tickets-a-b-seed0:latest", "lottery-ticket"),
        ("tickets-a-b-seed0:round-03", "lottery-ticket"),
    ]


def test_names_groups_and_artifact_names():
    assert run_identity("cifar10_conv2", "ticket (rewind to θ₀)", 3) == {
        "name": "cifar10_conv2-ticket (rewind to θ₀)-seed3",
        "group": "cifar10_conv2",
        "job_type": "ticket (rewind to θ₀)",
        "tags": ["cifar10_conv2", "ticket (rewind to θ₀)", "seed3"],
    }
    assert (
        ticket_artifact_name("cifar10_conv2", "ticket (rewind to θ₀)", 3)
        == "tickets-cifar10_conv2-ticket-rewind-to-seed3"
    )
    with pytest.raises(ValueError, match="artifact_name"):
        WandbLottery(artifact_name="")


# ---------------------------------------------------------------------------------------------- no network


@pytest.fixture
def online_without_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DISABLED", "WANDB_IDENTITY_TOKEN_FILE", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc


def test_online_wandb_without_a_key_fails_at_once(tmp_path: Path, online_without_credentials):
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"no API key.*WANDB_MODE=offline"):
        run(_compose(tmp_path / "run", *TINY))
    assert time.monotonic() - start < 10
    assert not (tmp_path / "run" / "lottery").exists()  # before any training


def test_online_wandb_without_a_server_fails_at_once(online_without_credentials, monkeypatch):
    import socket

    with socket.socket() as sock:  # a local port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(
        WandbUnavailable, match=rf"cannot reach the W&B server http://127.0.0.1:{port}.*WANDB_MODE=offline"
    ):
        check_wandb_usable()


def test_offline_and_disabled_modes_need_no_network(online_without_credentials, monkeypatch):
    assert check_wandb_usable(offline=True) == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert check_wandb_usable() == "disabled"


def test_a_netrc_entry_counts_as_a_key(tmp_path: Path, online_without_credentials, monkeypatch):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1\n  login user\n  password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # the key is found: the failure is the server
    with pytest.raises(WandbUnavailable, match="cannot reach"):
        check_wandb_usable(timeout=1)


def test_control_branches_get_their_own_aliases_and_lines(tmp_path: Path, offline):
    """Records of a search with control branches, as the lottery callback hands them over, one per (level, branch)."""
    from types import SimpleNamespace

    import wandb
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(project="test", name="branches", save_dir=str(tmp_path), offline=True)
    history = []
    for level, branch, pct, acc in [(0, "ticket", 100.0, 0.9), (1, "ticket", 80.0, 0.92), (1, "random", 80.0, 0.85)]:
        history.append(
            {
                "round": level,
                "branch": branch,
                "remaining_pct": pct,
                "sparsity": 1 - pct / 100,
                "best": 1 - acc,
                "best_round_step": 6,
                "metrics": {"test_acc": acc, "train_loss": 0.1},
            }
        )
    lottery = SimpleNamespace(round=1, branch="random", history=history)
    trainer = SimpleNamespace(
        is_global_zero=True,
        loggers=[logger],
        callbacks=[lottery],
        datamodule=None,
        sanity_checking=False,
        global_step=6,
        callback_metrics={"val_acc": 0.5},
    )
    callback = WandbLottery(artifact_name="tickets-demo")
    callback.setup(trainer, None, "fit")
    for record in history:
        folder = tmp_path / f"round_{record['round']:02d}" / record["branch"]
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text("{}")
        lottery.round, lottery.branch = record["round"], record["branch"]
        callback.on_validation_end(trainer, None)
        callback.on_lottery_round_end(trainer, None, record, folder)
    callback.on_fit_end(trainer, None)
    wandb.finish()

    log = _run_log(tmp_path)
    tickets = [a for a in logged_artifacts(log) if a["type"] == "lottery-ticket"]
    assert [sorted(a["aliases"]) for a in tickets] == [
        ["latest", "round-00"],
        ["latest", "round-01"],
        ["latest", "round-01-random"],
    ]
    assert [a["metadata"]["branch"] for a in tickets] == ["ticket", "ticket", "random"]
    keys = history_keys(log)
    assert {"by_remaining/ticket/test_acc", "by_remaining/random/test_acc"} <= keys
    assert {f"val_acc_by_level/{label}" for label in ("round_00-ticket", "round_01-ticket", "round_01-random")} <= keys
    assert "lottery/test_acc_vs_remaining_table/_type" in keys and "overlay/val_acc_table/_type" in keys
    assert not any(k.startswith("lottery/train_loss_vs_remaining") for k in keys)
    assert callback.state_dict()["curves"]["round_01-random"] == [{"level_step": 6.0, "val_acc": 0.5}]
