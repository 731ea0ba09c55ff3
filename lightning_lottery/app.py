"""The ``lightning-lottery`` command: a Hydra application that runs one lottery-ticket search per job.

    lightning-lottery                                   # the default recipe: LeNet-300-100 on MNIST
    lightning-lottery recipe=cifar10_conv2 lottery.rounds=10 trainer.max_steps=5000
    lightning-lottery -m recipe=mnist_lenet300 lottery.rewind=init,reinit seed=0,1 preset=fast

Each job writes into its Hydra run folder: ``lottery/`` (tickets, summaries, history), ``checkpoints/`` (resume
with ``ckpt_path=last hydra.run.dir=<folder>``), the logger's files, ``run.json``, ``.hydra/``, the job log
``lightning-lottery.log`` and ``report/``. A multirun also gets one report over all its jobs. The job returns the
search's headline number (``objective``), which sweepers such as Optuna's optimise.

Bad input stops the command before any training with one line on stderr naming the setting, what was given and
what is allowed, and exit code 2 (``HYDRA_FULL_ERROR=1`` shows the traceback instead). Torch and Lightning are
imported only once a job runs, so ``--help``, ``--cfg job`` and tab completion answer at once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback as HydraCallback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from lightning_lottery.cli.errors import ConfigError, describe, is_input_error, mark_input_error, one_line
from lightning_lottery.cli.help import register_help_resolver, render_help

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lightning_lottery.transfer import TicketSequence

__all__ = ["ConfigError", "SweepReport", "main", "objective", "run"]

CONFIG_DIR = str(Path(__file__).parent / "conf")
FAILED_JOBS = ".failed_jobs"  # in a sweep folder: one file per job that failed, read when the sweep ends
log = logging.getLogger(__name__)
register_help_resolver()


def _build(cfg: DictConfig, group: str, **kwargs: Any) -> Any:
    """Instantiate ``cfg.<group>``, turning Hydra's wrapped errors into one clear message naming the group."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        # Plain dicts and lists, not OmegaConf nodes: modules save their arguments as hyperparameters, and a
        # checkpoint holding OmegaConf objects cannot be resumed with torch.load(weights_only=True).
        return instantiate(cfg[group], _convert_="all", **kwargs)
    except InstantiationException as err:
        cause = err.__cause__ or err
        message = one_line(str(cause))
        setting = _setting_named(cfg, group, message) or f"{group} ({OmegaConf.select(cfg, f'{group}._target_')})"
        raise ConfigError(f"{setting}: {message}") from cause


def _setting_named(cfg: DictConfig, group: str, message: str) -> str | None:
    """The setting of ``group`` an error message is about (``lottery.amount`` for "`amount=1.5` is outside
    (0, 1)", ``model.arch`` for "Unknown model 'alexnet'"), or None."""
    spec = OmegaConf.to_container(cfg[group], resolve=True) if cfg.get(group) is not None else None
    if isinstance(spec, dict):
        for key in spec:
            if not key.startswith("_") and f"{group}.{key}=" in message:  # the message names it itself
                return f"{group}.{key}"
        for key, value in spec.items():
            if key.startswith("_"):
                continue
            if f"`{key}=" in message or message.startswith((f"{key}=", f"{key} must", f"`{key}`")):
                return f"{group}.{key}"
            if isinstance(value, str) and len(value) > 1 and (f"'{value}'" in message or f"`{value}`" in message):
                return f"{group}.{key}"
    return None


def _fill_from_data(cfg: DictConfig, datamodule: pl.LightningDataModule) -> None:
    """Fill model settings that only the data knows (vocabulary size, classes, channels) when left unset."""
    model = cfg.model
    with open_dict(model):
        if "vocab_size" in model and model.vocab_size is None:
            model.vocab_size = datamodule.vocab_size
        if "arch_kwargs" in model:
            for key in ("num_classes", "in_channels"):
                if key not in model.arch_kwargs and hasattr(datamodule, key):
                    model.arch_kwargs[key] = getattr(datamodule, key)


def _tickets(cfg: DictConfig) -> TicketSequence | None:
    """The source tickets of a transfer run (``transfer.ticket``), or None for an ordinary search."""
    from lightning_lottery.transfer import TicketSequence

    transfer = cfg.get("transfer") or {}
    variant = transfer.get("variant", "transferred")
    if not transfer.get("ticket") or variant == "target":
        return None
    try:
        return TicketSequence(transfer.ticket, variant, list(transfer.reinit), transfer.seed)
    except (OSError, ValueError) as err:
        mark_input_error(err)
        raise


def _variant_label(cfg: DictConfig) -> str | None:
    from lightning_lottery.transfer import LABELS as TRANSFER_LABELS

    if cfg.variant is not None:
        return cfg.variant
    transfer = cfg.get("transfer") or {}
    if transfer.get("ticket"):
        variant = transfer.get("variant", "transferred")
        return TRANSFER_LABELS.get(variant, "target ticket (found on the target)")
    return None


def _callbacks(cfg: DictConfig, logger: Any) -> list[pl.Callback]:
    tickets = _tickets(cfg)
    callbacks = [_build(cfg, "lottery", **({"tickets": tickets} if tickets is not None else {}))]
    for name, spec in (cfg.get("callbacks") or {}).items():
        if spec is not None:
            callbacks.append(_build(cfg.callbacks, name))
    if type(logger).__name__ == "WandbLogger":
        from lightning_lottery.integrations.wandb import WandbLottery, ticket_artifact_name

        name = ticket_artifact_name(cfg.experiment, _wandb_variant(_variant_label(cfg), cfg.lottery), cfg.seed)
        callbacks.append(WandbLottery(artifact_name=name, source_artifact=_wandb_source_artifact(cfg)))
    return callbacks


# ---------------------------------------------------------------------------------------------------- W&B


def _uses_wandb(cfg: DictConfig) -> bool:
    return str(OmegaConf.select(cfg, "logger._target_", default="")).endswith("WandbLogger")


def _wandb_variant(label: str | None, lottery: Any) -> str:
    """The variant that types a W&B run (``job_type``): the run's label, else its rewind and pruning."""
    return label or f"{lottery.get('rewind')}-{lottery.get('pruning')}"


def _wandb_source_artifact(cfg: DictConfig) -> str | None:
    """A transfer run's source ticket artifact, named from the source run's ``run.json`` (None if it has none)."""
    source = (cfg.get("transfer") or {}).get("ticket")
    if not source:
        return None
    for folder in (Path(source), Path(source).parent):
        if (folder / "run.json").is_file():
            info = json.loads((folder / "run.json").read_text())
            from lightning_lottery.integrations.wandb import ticket_artifact_name

            variant = _wandb_variant(info["variant"], info["config"].get("lottery") or {})
            return ticket_artifact_name(info["experiment"], variant, info["seed"])
    return None


def _prepare_wandb(cfg: DictConfig) -> None:
    """Name and group this job's W&B run, fail at once if W&B cannot log, close a run an earlier job left open."""
    from lightning_lottery.integrations.wandb import WandbUnavailable, prepare_wandb_logger

    try:
        with open_dict(cfg.logger):
            variant = _wandb_variant(_variant_label(cfg), cfg.lottery)
            prepare_wandb_logger(cfg.logger, cfg.experiment, variant, cfg.seed)
    except WandbUnavailable as err:
        raise ConfigError(str(err)) from err


def _write_run_records(cfg: DictConfig, out: Path) -> None:
    """``run.json`` and, under Hydra, ``.hydra/`` (config, Hydra config, overrides), written by a new search only."""
    from lightning_lottery.io import atomic_write, atomic_write_json

    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    info = {
        "experiment": cfg.experiment,
        "seed": cfg.seed,
        "variant": _variant_label(cfg),
        "overrides": overrides,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    atomic_write_json(out / "run.json", info)
    if not HydraConfig.initialized() or HydraConfig.get().output_subdir is not None:
        return  # Hydra wrote .hydra/ itself
    hydra_cfg = OmegaConf.create({"hydra": HydraConfig.get()})
    for name, node in (("config.yaml", cfg), ("hydra.yaml", hydra_cfg), ("overrides.yaml", overrides)):
        text = OmegaConf.to_yaml(node if OmegaConf.is_config(node) else OmegaConf.create(node))
        atomic_write(out / ".hydra" / name, lambda tmp, text=text: Path(tmp).write_text(text))


def objective(history: list[dict[str, Any]], metric: str | None = None) -> float:
    """The search's headline number: the last ticket record's best monitored value, or ``metric`` at that step."""
    tickets = [r for r in history if r.get("branch", "ticket") == "ticket"]
    if not tickets:
        return math.nan
    last = tickets[-1]
    value = last.get("best") if metric is None else (last.get("metrics") or {}).get(metric)
    if value is None:
        if metric is not None:
            log.warning("objective=%s: the run logged no such metric (%s)", metric, sorted(last.get("metrics") or {}))
        return math.nan
    return float(value)


def _process_rank() -> int:
    """This process's global rank as the launcher set it (Lightning reads the same variables); 0 when alone."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def _output_dir(cfg: DictConfig) -> Path:
    try:
        return Path(str(cfg.paths.output_dir))
    except Exception as err:
        raise ConfigError(f"paths.output_dir: {one_line(str(err))}") from err


def _fit(
    cfg: DictConfig, trainer: pl.Trainer, module: Any, datamodule: Any, checkpoint: Path | None, started: Any
) -> None:
    """``trainer.fit``; an error before the first training step is bad input (data, folders, the callback's setup):
    it keeps its type, marked for :func:`~lightning_lottery.cli.errors.describe` to print as one line."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(checkpoint) if checkpoint else None)
    except (OSError, ValueError, TypeError, KeyError, MisconfigurationException) as err:
        if not started.started:
            message = one_line(str(err))
            settings = (_setting_named(cfg, group, message) for group in ("lottery", "data", "trainer", "callbacks"))
            mark_input_error(err, next((s for s in settings if s), None))
        raise


def _leave_out(cfg: DictConfig, keys: tuple[str, ...]) -> None:
    """Delete the settings ``keys`` (``section.name``) from ``cfg`` (``model.optimizer`` usually is ``${optim}``:
    its key goes with ``optim``'s)."""
    for key in keys:
        section, name = key.rsplit(".", 1)
        node = OmegaConf.select(cfg, section)
        if isinstance(node, DictConfig) and name in node:
            with open_dict(node):
                del node[name]


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the search described by ``cfg``; returns its history, where it wrote, and its report.

    The run folder is taken (:class:`~lightning_lottery.cli.run_folder.RunFolder`), every setting checked
    (:func:`~lightning_lottery.cli.checks.check_config`) and the resume decided; any refusal, up to an error
    before the first training step, raises :class:`ConfigError` and leaves the folder as the command found it.
    A finished search is left alone (``finished: True`` in the result).
    """
    if cfg.get("analysis"):  # analysis=instability: an analysis of the recipe's network instead of a search
        from lightning_lottery.analysis.app import run_analysis

        return run_analysis(cfg, _build, _fill_from_data)
    from lightning_lottery.cli.checks import check_config, check_model
    from lightning_lottery.cli.run_folder import RunFolder

    folder = RunFolder(_output_dir(cfg), cfg, primary=_process_rank() == 0)
    out = folder.path
    try:
        folder.lock()
        check_config(cfg)
        if _uses_wandb(cfg):
            _prepare_wandb(cfg)  # fails at once when W&B cannot log (no network, no key)
        import lightning.pytorch as pl

        from lightning_lottery.cli.plugins import (
            AtomicCheckpointIO,
            CSVResumePoint,
            TrainingStarted,
            route_lightning_logs,
        )

        route_lightning_logs()
        plan = folder.plan()
        if plan.finished:
            records = folder.history()
            print(f"[lottery] {out}: the search is finished ({len(records)} records); nothing to resume")
            return {"history": records, "output_dir": str(out), "report": None, "finished": True}
        if plan.checkpoint is not None:
            log.info("resuming %s from %s", out, plan.checkpoint)
        if plan.left_out:
            _leave_out(cfg, plan.left_out)
            repeated = {"model.optimizer." + k.removeprefix("optim.") for k in plan.left_out if k.startswith("optim.")}
            shown = [k for k in plan.left_out if k not in repeated]  # model.optimizer is ${optim}: say it once
            print(f"[lottery] {out}: resuming as the run began, without {', '.join(shown)} (newer than the run)")
        pl.seed_everything(cfg.seed, workers=True)
        datamodule = _build(cfg, "data")
        try:
            _fill_from_data(cfg, datamodule)  # may read the data (a vocabulary): a missing corpus shows here
        except (OSError, ValueError) as err:
            mark_input_error(err, _setting_named(cfg, "data", one_line(str(err))))
            raise
        check_model(cfg)
        module = _build(cfg, "model")
        logger = _build(cfg, "logger") if cfg.get("logger") else False
        started = TrainingStarted()
        callbacks = [*_callbacks(cfg, logger), CSVResumePoint(), started]
        lottery = callbacks[0]
        trainer = _build(cfg, "trainer", callbacks=callbacks, logger=logger, plugins=[AtomicCheckpointIO()])
        folder.sign()
        folder.remove_temporary_files()
        if trainer.is_global_zero and (plan.checkpoint is None or folder.recorded_config() is None):
            folder.wrote_records = True
            _write_run_records(cfg, out)
        if logger and hasattr(logger, "log_hyperparams"):
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        _fit(cfg, trainer, module, datamodule, plan.checkpoint, started)
    except Exception as err:
        if is_input_error(err):
            folder.abandon()  # no training step ran: leave the folder as the command found it
        raise
    finally:
        folder.release()

    report = None
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if cfg.report and trainer.is_global_zero and (not multirun or _uses_wandb(cfg)):  # W&B gets the job's figures
        from lightning_lottery.report import write_report

        report = write_report([out], out / "report")
    if _uses_wandb(cfg):
        from lightning_lottery.integrations.wandb import WandbLottery, finish_open_run

        for callback in (c for c in callbacks if isinstance(c, WandbLottery) and report is not None):
            callback.log_report(trainer, report.parent)
        finish_open_run()  # this job's run ends here: the next job of a multirun gets its own
    return {"history": lottery.history, "output_dir": str(out), "report": str(report) if report else None}


# ---------------------------------------------------------------------------------------------- sweeps


def _sweep_dir(config: DictConfig) -> Path:
    return Path(str(config.hydra.sweep.dir))


def _record_failed_job(message: str, config_error: bool) -> None:
    hydra_cfg = HydraConfig.get()
    folder = Path(str(hydra_cfg.sweep.dir)) / FAILED_JOBS
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{hydra_cfg.job.num}.json").write_text(json.dumps({"message": message, "config_error": config_error}))


def _report_sweep(sweep_dir: Path) -> None:
    from lightning_lottery.report import write_report

    if any(sweep_dir.rglob("history.json")):
        print(f"[lottery] report: {write_report([sweep_dir], sweep_dir / 'report')}")


_SWEEP: dict[str, Any] = {"dir": None, "report": True}  # the sweep under way in this process, if any
_FULL_ERROR = {"user": False}  # whether the user asked for tracebacks (HYDRA_FULL_ERROR=1)


class SweepReport(HydraCallback):
    """After a multirun, one report over all of its jobs (variants side by side, seeds aggregated).

    Jobs that failed are left out of it; the command then exits with code 2 (every failure a bad setting) or 1.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = _sweep_dir(config)
        shutil.rmtree(sweep_dir / FAILED_JOBS, ignore_errors=True)  # a previous sweep's
        _SWEEP.update(dir=sweep_dir, report=bool(config.get("report", True)))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = _sweep_dir(config)
        _SWEEP["dir"] = None
        if config.get("report", True):
            _report_sweep(sweep_dir)
        failed = [json.loads(p.read_text()) for p in sorted((sweep_dir / FAILED_JOBS).glob("*.json"))]
        if failed:
            print(f"[lottery] {len(failed)} job(s) of the sweep failed; the report covers the others")
            raise SystemExit(2 if all(f["config_error"] for f in failed) else 1)


# ---------------------------------------------------------------------------------------------- the command


def _job(cfg: DictConfig) -> float:
    logging.captureWarnings(True)  # warnings go to the job log: stderr keeps the errors
    try:
        result = run(cfg)
    finally:
        logging.captureWarnings(False)
    if result["report"]:
        print(f"[lottery] report: {result['report']}")
    history = result["history"]
    if history and not result.get("finished"):
        keys = ("round", "branch", "sparsity", "best", "best_round_step")
        print(json.dumps({k: history[-1][k] for k in keys if k in history[-1]}, default=str))
    return objective(history, cfg.get("objective"))


def _refuse(message: str) -> NoReturn:
    print(f"lightning-lottery: {message}", file=sys.stderr)
    sys.exit(2)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> float:
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        try:
            return _job(cfg)
        except Exception as err:
            message = None if _FULL_ERROR["user"] else describe(err)
            if message is None:
                raise
            _refuse(message)  # here, not in main(): Hydra would first print its own line about the failed job
    try:
        return _job(cfg)
    except Exception as err:  # one job's failure must not cost the others their report
        message = describe(err)
        if message is None:
            log.exception("job %s failed", HydraConfig.get().job.num)
        text = message or one_line(f"{type(err).__name__}: {err}")
        _record_failed_job(text, config_error=message is not None)
        overrides = " ".join(HydraConfig.get().overrides.task)
        print(f"lightning-lottery: job {HydraConfig.get().job.num} ({overrides}): {text}", file=sys.stderr)
        return math.nan


def main() -> None:
    """Console entry point (``lightning-lottery`` and ``python -m lightning_lottery``)."""
    if {"--help", "-h"} & set(sys.argv[1:]):
        print(render_help())
        return
    full_error = _FULL_ERROR["user"] = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # errors reach the handler below instead of Hydra's multi-line report
    try:
        _hydra_main()
    except Exception as err:
        message = None if full_error else describe(err)
        sweep_dir = _SWEEP["dir"]
        if sweep_dir is not None and _SWEEP["report"]:
            _report_sweep(sweep_dir)  # a job's config failed to compose: report the jobs that ran
        if message is None:
            raise
        _refuse(message)
    finally:
        if not full_error:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        _SWEEP["dir"] = None
        GlobalHydra.instance().clear()  # in-process callers (tests) may compose again
        HydraConfig.instance().cfg = None  # type: ignore[assignment]
