"""The command around a search: help and start-up, the job log, run folders (lock, resume, refusals), metrics kept
across an interruption, sweeps (a failed job, Optuna), the cluster preset, atomic checkpoints."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from lightning_lottery.app import main
from lightning_lottery.cli.errors import ConfigError
from lightning_lottery.cli.help import CONF, recipe_summaries
from lightning_lottery.cli.plugins import AtomicCheckpointIO, ResumableCSVLogger
from lightning_lottery.cli.run_folder import RunFolder

COMMAND = str(Path(sys.executable).parent / "lightning-lottery")
# A search of seconds: 2 levels of 4 steps on 120 synthetic images.
TINY = [
    "preset=fast",
    "data=synthetic",
    "data.num_train=120",
    "fast.max_steps=4",
    "fast.val_check_interval=2",
    "fast.rounds=1",
    "lottery.controls=[]",
    "trainer.enable_progress_bar=false",
    "report=false",
]


def _main(*argv: str) -> tuple[int, str, str]:
    """Run the command in this process; (exit code, stdout, stderr)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    out, err = io.StringIO(), io.StringIO()
    code: Any = 0
    with pytest.MonkeyPatch.context() as patch, redirect_stdout(out), redirect_stderr(err):
        patch.setattr(sys, "argv", ["lightning-lottery", *argv])
        patch.delenv("HYDRA_FULL_ERROR", raising=False)
        try:
            main()
        except SystemExit as stop:
            code = stop.code
    return int(code or 0), out.getvalue(), err.getvalue()


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and modification time (but empty job logs: Hydra opens one before the command runs)."""
    files = [p for p in folder.rglob("*") if p.is_file() and not (p.suffix == ".log" and not p.stat().st_size)]
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny search, started with ckpt_path=auto in a new folder (auto: nothing to resume, so it starts)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    code, _, err = _main(*TINY, "ckpt_path=auto", f"hydra.run.dir={run_dir}")
    assert code == 0, err
    assert err == "", err  # warnings and Lightning's lines go to the job log and stdout, stderr stays for errors
    return run_dir


# ---------------------------------------------------------------------------------------------- help and start-up


def test_help_lists_each_recipe_on_one_line_with_examples_and_no_internal_groups():
    proc = subprocess.run([COMMAND, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    summaries = recipe_summaries()
    assert len(summaries) == len(list((CONF / "recipe").glob("*.yaml"))) > 20
    for recipe, summary in summaries.items():
        assert summary and any(line.split() == [recipe, *summary.split()] for line in text.splitlines()), recipe
    assert "Examples:" in text and "lightning-lottery -m " in text and "cluster=slurm_imagenet" in text
    assert "optim: adagrad, adam, adamw, sgd" in text
    assert "recipe_preset" not in text and "powered by Hydra" not in text.lower().replace("hydra jobs", "")


def test_reading_configs_imports_neither_torch_nor_lightning():
    """What keeps --help, --cfg and tab completion fast (benchmarks/cli_startup.py measures the time)."""
    script = (
        "import sys; from lightning_lottery.app import main\n"
        "for args in (['--help'], ['--cfg', 'job', 'recipe=cifar10_resnet20'], ['--shell-completion', 'query=rec']):\n"
        "    sys.argv = ['lightning-lottery', *args]\n"
        "    try:\n        main()\n    except SystemExit:\n        pass\n"
        "print('IMPORTED', sorted(m for m in ('torch', 'lightning') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "IMPORTED []" in proc.stdout
    assert "_target_: lightning_lottery.modules.classifier.ImageClassifier" in proc.stdout  # --cfg job printed


def test_the_console_command_reports_a_bad_setting_in_one_line_unless_asked_for_a_traceback(tmp_path: Path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [COMMAND, "seed=abc", f"hydra.run.dir={run_dir}"], capture_output=True, text=True, timeout=120
    )
    assert (proc.returncode, proc.stderr) == (
        2,
        "lightning-lottery: seed: got 'abc'; allowed: an integer, e.g. seed=0\n",
    )
    assert not run_dir.exists()  # the folder Hydra made for the refused job is gone
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run([COMMAND, "seed=abc"], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ConfigError: seed: got 'abc'" in proc.stderr


# ---------------------------------------------------------------------------------------------- a run and its folder


def test_a_run_writes_its_records_and_its_job_log_holds_lightnings_and_the_callbacks_lines(finished_run: Path):
    log = (finished_run / "lightning-lottery.log").read_text()
    assert "[lottery] round 1/1, branch ticket:" in log  # the callback's rank_zero_info
    assert "`Trainer.fit` stopped: `max_steps=4` reached." in log  # Lightning's own
    overrides = yaml.safe_load((finished_run / ".hydra" / "overrides.yaml").read_text())
    assert "ckpt_path=auto" in overrides and "fast.max_steps=4" in overrides
    assert json.loads((finished_run / "run.json").read_text())["config"]["trainer"]["max_steps"] == 4
    assert (finished_run / "checkpoints" / "last.ckpt").is_file()
    assert not (finished_run / "checkpoints" / "last.ckpt").is_symlink()  # save_last=true: a file, never a link


def test_resuming_a_finished_search_says_so_and_changes_nothing(finished_run: Path, tmp_path: Path):
    run_dir = shutil.copytree(finished_run, tmp_path / "run", symlinks=True)
    before = _snapshot(run_dir)
    for ckpt in ("last", "auto"):
        code, out, err = _main(*TINY, f"ckpt_path={ckpt}", f"hydra.run.dir={run_dir}")
        assert (code, err) == (0, ""), err
        assert "the search is finished (2 records); nothing to resume" in out
    assert _snapshot(run_dir) == before


def test_a_new_search_in_a_used_folder_is_refused(finished_run: Path, tmp_path: Path):
    run_dir = shutil.copytree(finished_run, tmp_path / "run", symlinks=True)
    before = _snapshot(run_dir)
    code, _, err = _main(*TINY, f"hydra.run.dir={run_dir}")
    assert code == 2 and err.startswith("lightning-lottery: ckpt_path=null: hydra.run.dir=") and "ckpt_path=last" in err
    assert _snapshot(run_dir) == before


def test_resuming_with_other_search_settings_is_refused_naming_each_and_changes_nothing(
    finished_run: Path, tmp_path: Path
):
    run_dir = shutil.copytree(finished_run, tmp_path / "run", symlinks=True)
    history = run_dir / "lottery" / "history.json"
    data = json.loads(history.read_text())
    history.write_text(json.dumps({**data, "history": data["history"][:1], "finished": False}))  # killed in level 1
    before = _snapshot(run_dir)
    code, _, err = _main(*TINY, "fast.max_steps=8", "seed=3", "ckpt_path=last", f"hydra.run.dir={run_dir}")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "seed: the run has 0, given 3" in err
    assert "trainer.max_steps: the run has 4, given 8" in err
    assert "lottery.seed: the run has 0, given 3" in err
    assert _snapshot(run_dir) == before  # run.json and .hydra/overrides.yaml included


def test_a_folder_in_use_is_refused_and_a_killed_owner_does_not_leave_it_locked(tmp_path: Path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(run_dir / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, f'{os.getpid()}\\n'.encode())\n"
            "print('locked', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        before = _snapshot(run_dir)
        code, _, err = _main(*TINY, f"hydra.run.dir={run_dir}")
        assert code == 2 and len(err.splitlines()) == 1
        assert f"another process (pid {holder.pid}) is running a search in this folder" in err
        assert _snapshot(run_dir) == before
        with pytest.raises(ConfigError, match=f"pid {holder.pid}"):
            RunFolder(run_dir, OmegaConf.create({})).lock()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    folder = RunFolder(run_dir, OmegaConf.create({}))
    folder.lock()  # the kernel dropped the dead owner's lock
    folder.sign()
    assert (run_dir / ".lock").read_text().strip() == str(os.getpid())
    folder.release()


# ---------------------------------------------------------------------------------------------- interrupted runs


class StopAfterBatches(pl.Callback):
    """Fails the fit at the start of training batch ``batches`` (counted over all levels): a crash mid-search."""

    def __init__(self, batches: int) -> None:
        self.batches = batches
        self.seen = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        self.seen += 1
        if self.seen == self.batches:
            raise RuntimeError("simulated crash")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def test_an_interrupted_search_resumes_and_keeps_the_metrics_logged_before_its_checkpoint(tmp_path: Path):
    settings = [*TINY, "data.num_train=300", "fast.max_steps=20", "fast.val_check_interval=5", "fast.rounds=2"]
    crashed = tmp_path / "crashed"
    interrupt = ["+callbacks.interrupt._target_=test_app_cli.StopAfterBatches", "+callbacks.interrupt.batches=33"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        main_args = [*settings, *interrupt, f"hydra.run.dir={crashed}"]
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys, "argv", ["lightning-lottery", *main_args])
            patch.setenv("HYDRA_FULL_ERROR", "1")
            main()
    metrics = crashed / "csv" / "metrics.csv"
    killed = _rows(metrics)
    kept = torch.load(crashed / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]["CSVResumePoint"]["rows"]
    assert 0 < kept < len(killed)  # rows were logged (and flushed) after the last checkpoint: the resume cuts them

    code, _, err = _main(*settings, "ckpt_path=last", f"hydra.run.dir={crashed}")
    assert code == 0, err
    resumed = _rows(metrics)
    columns = list(killed[0])  # the resumed run adds columns (round_02/...): the old rows have them empty
    assert [{k: row[k] for k in columns} for row in resumed[:kept]] == killed[:kept]
    assert all(not row[k] for row in resumed[:kept] for k in set(row) - set(columns))
    assert len(resumed) > kept  # and the resumed run's rows follow
    history = json.loads((crashed / "lottery" / "history.json").read_text())["history"]
    assert [r["round"] for r in history if r.get("branch", "ticket") == "ticket"] == [0, 1, 2]

    clean = tmp_path / "clean"
    assert _main(*settings, f"hydra.run.dir={clean}")[0] == 0
    uninterrupted = json.loads((clean / "lottery" / "history.json").read_text())["history"]
    assert history[0]["metrics"] == uninterrupted[0]["metrics"]  # level 0 ended before the crash
    timed = [k for k in columns if k.endswith("seconds")]  # wall-clock time differs between runs
    same = [k for k in columns if k not in timed]
    clean_rows = _rows(clean / "csv" / "metrics.csv")[:kept]
    assert [{k: row[k] for k in same} for row in clean_rows] == [{k: row[k] for k in same} for row in killed[:kept]]


def test_the_csv_logger_appends_and_a_resume_cuts_what_came_after_its_checkpoint(tmp_path: Path):
    logger = ResumableCSVLogger(tmp_path, name="csv", version="")
    for step in range(4):
        logger.log_metrics({"loss": float(step)}, step=step)
    logger.save()
    assert logger.rows_written == 4
    again = ResumableCSVLogger(tmp_path, name="csv", version="")  # a new process on the same folder
    assert again.rows_written == 4  # Lightning's CSVLogger would have deleted the file here
    again.keep_rows(2)
    again.log_metrics({"loss": 9.0, "acc": 0.5}, step=2)  # a new column: the header is rewritten, rows kept
    again.save()
    rows = _rows(tmp_path / "csv" / "metrics.csv")
    assert [(r["step"], r["loss"], r["acc"]) for r in rows] == [("0", "0.0", ""), ("1", "1.0", ""), ("2", "9.0", "0.5")]


def test_checkpoints_are_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    real_save = torch.save

    def crash_mid_write(obj: Any, file: Any) -> None:
        real_save(obj, file)
        with open(file, "r+b") as written:
            written.truncate(10)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], torch.ones(3))  # the old one, whole
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left


# ---------------------------------------------------------------------------------------------- sweeps


def test_a_sweep_with_a_bad_job_still_reports_the_good_ones(tmp_path: Path):
    sweep = tmp_path / "sweep"
    code, _, err = _main("-m", *TINY, "report=true", "lottery.amount=0.2,1.5", f"hydra.sweep.dir={sweep}")
    assert code == 2
    assert len(err.splitlines()) == 1 and "job 1" in err and "lottery.amount: `amount=1.5` is outside" in err
    assert (sweep / "0" / "lottery" / "history.json").is_file() and not (sweep / "1").exists()
    summary = list(csv.DictReader((sweep / "report" / "summary.csv").open()))
    assert summary and all(row.get("experiment", "mnist_lenet300") == "mnist_lenet300" for row in summary)


def test_an_optuna_sweep_tunes_the_learning_rate_on_the_jobs_objective(tmp_path: Path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install 'lightning-lottery[optuna]'")
    sweep = tmp_path / "sweep"
    args = ["hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.seed=0"]
    code, _, err = _main("-m", *TINY, *args, "optim.lr=interval(1e-4,1e-2)", f"hydra.sweep.dir={sweep}")
    assert code == 0, err
    objectives = []
    for job in ("0", "1"):
        records = json.loads((sweep / job / "lottery" / "history.json").read_text())["history"]
        tickets = [r for r in records if r["branch"] == "ticket"]
        objectives.append(tickets[-1]["best"])  # the default objective: the last ticket's best val_loss
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert math.isfinite(result["best_value"]) and result["best_value"] == pytest.approx(min(objectives))
    assert 1e-4 <= result["best_params"]["optim.lr"] <= 1e-2


def test_the_cluster_preset_runs_the_imagenet_shape_in_stable_folders_that_resume():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install 'lightning-lottery[slurm]'")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["cluster=slurm_imagenet", "recipe=imagenet_resnet50", "seed=1"],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    try:
        launcher, sweep = cfg.hydra.launcher, cfg.hydra.sweep
        assert launcher._target_.endswith("SlurmLauncher")
        assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (1, 8, 8)
        assert (cfg.trainer.devices, cfg.trainer.num_nodes) == (8, 1)  # one task per GPU: Lightning's SLURM DDP
        assert launcher.max_num_timeout > 0  # requeued on time-out / preemption
        assert (sweep.dir, sweep.subdir) == ("cluster/imagenet_resnet50", "seed=1")  # no timestamp
        assert cfg.ckpt_path == "auto"
    finally:
        HydraConfig.instance().cfg = None  # type: ignore[assignment]


def test_a_run_that_takes_its_folder_clears_the_temporary_files_of_a_killed_write(tmp_path: Path):
    leftovers = [tmp_path / "checkpoints" / ".last.ckpt.a1b2.tmp", tmp_path / "lottery" / "round_01" / ".x.tmp"]
    kept = [tmp_path / "checkpoints" / "last.ckpt", tmp_path / "lottery" / ".keep"]
    for path in leftovers + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    folder = RunFolder(tmp_path, OmegaConf.create({}))
    folder.remove_temporary_files()  # not before the folder is ours
    assert all(p.exists() for p in leftovers)
    folder.lock()
    folder.remove_temporary_files()
    folder.release()
    assert not any(p.exists() for p in leftovers) and all(p.exists() for p in kept)


def test_a_setting_newer_than_the_run_is_no_difference_but_a_changed_or_emptied_one_is():
    from lightning_lottery.cli.run_folder import setting_differences

    recorded = {"seed": 0, "lottery": {"amount": 0.2, "layer_amounts": {}}, "trainer": {"max_steps": 4}}
    newer = {**recorded, "lottery": {"amount": 0.2, "layer_amounts": {}, "pruning_batches": 1}}
    assert setting_differences(recorded, newer) == []  # the run predates pruning_batches
    changed = {**newer, "lottery": {"amount": 0.3, "layer_amounts": {"fc.weight": 0.1}, "pruning_batches": 1}}
    assert setting_differences(recorded, changed) == [
        "lottery.amount: the run has 0.2, given 0.3",
        "lottery.layer_amounts.fc.weight: the run has null, given 0.1",
    ]
    recorded_null = {**recorded, "lottery": {**recorded["lottery"], "pruning_batches": None}}
    assert setting_differences(recorded_null, newer) == ["lottery.pruning_batches: the run has null, given 1"]


def test_only_optimizer_and_trainer_arguments_newer_than_the_run_are_left_out_of_a_resume():
    from lightning_lottery.cli.run_folder import arguments_the_run_lacks, setting_differences

    sgd = {"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.9}
    recorded = {
        "optim": sgd,
        "model": {"arch": "lenet300", "optimizer": sgd},
        "trainer": {"max_steps": 4},
        "lottery": {"amount": 0.2},
    }
    fused = {**sgd, "fused": True}
    given = {
        "optim": fused,
        "model": {"arch": "lenet300", "optimizer": fused, "warmup_steps": 0},
        "trainer": {"max_steps": 4, "gradient_clip_val": 1.0, "enable_progress_bar": False},
        "lottery": {"amount": 0.2, "pruning_batches": 1},  # our own settings: new ones default to the old behaviour
    }
    lacking = ["model.optimizer.fused", "optim.fused", "trainer.gradient_clip_val"]
    assert arguments_the_run_lacks(recorded, given) == lacking
    assert setting_differences(recorded, given) == []  # and none of them refuses the resume
    assert arguments_the_run_lacks(given, given) == []
    assert arguments_the_run_lacks({"seed": 0}, given) == []  # no such section recorded: nothing to go by


def _optimizer_groups(run_dir: Path) -> list[dict[str, Any]]:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return checkpoint["optimizer_states"][0]["param_groups"]


@pytest.mark.parametrize("recorded_fused", [False, True], ids=["run-predates-fused", "run-has-fused"])
def test_a_resume_builds_the_optimizer_as_the_run_did_when_a_recipe_default_came_later(
    tmp_path: Path, recorded_fused: bool
):
    settings = [*TINY, "optim=sgd", "optim.lr=0.01", "data.num_train=300", "fast.max_steps=10"]
    run_dir = tmp_path / "run"
    interrupt = ["+callbacks.interrupt._target_=test_app_cli.StopAfterBatches", "+callbacks.interrupt.batches=7"]
    with pytest.raises(RuntimeError, match="simulated crash"), pytest.MonkeyPatch.context() as patch:
        started = [*settings, *interrupt, *([] if recorded_fused else ["~optim.fused"])]
        patch.setattr(sys, "argv", ["lightning-lottery", *started, f"hydra.run.dir={run_dir}"])
        patch.setenv("HYDRA_FULL_ERROR", "1")
        main()
    assert _optimizer_groups(run_dir)[0]["fused"] is (True if recorded_fused else None)
    recorded = json.loads((run_dir / "run.json").read_text())["config"]["optim"]
    assert ("fused" in recorded) is recorded_fused  # as a run started before the recipe set `fused` records it

    code, out, err = _main(*settings, "ckpt_path=last", f"hydra.run.dir={run_dir}")
    assert code == 0, err
    history = json.loads((run_dir / "lottery" / "history.json").read_text())["history"]
    assert [r["round"] for r in history] == [0, 1]
    level_1 = _optimizer_groups(run_dir)[0]  # the optimizer built for level 1, after the resume
    assert level_1["fused"] is (True if recorded_fused else None)
    assert ("without optim.fused" in out) is not recorded_fused
