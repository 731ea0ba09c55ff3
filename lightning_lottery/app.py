"""The ``lightning-lottery`` command: a Hydra application that runs one lottery-ticket search per job.

    lightning-lottery                                   # the default recipe: LeNet-300-100 on MNIST
    lightning-lottery recipe=cifar10_conv2 lottery.rounds=10 trainer.max_steps=5000
    lightning-lottery -m recipe=mnist_lenet300 lottery.rewind=init,reinit seed=0,1 preset=fast

Each job writes into its Hydra run folder: ``lottery/`` (tickets, summaries, history), ``checkpoints/`` (resume
with ``ckpt_path=last hydra.run.dir=<folder>``), the logger's files, ``run.json`` and ``report/``. A multirun also
gets one report over all its jobs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback as HydraCallback
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from lightning_lottery.ticket import atomic_write_json
from lightning_lottery.transfer import LABELS as TRANSFER_LABELS
from lightning_lottery.transfer import VARIANTS as TRANSFER_VARIANTS
from lightning_lottery.transfer import TicketSequence

CONFIG_DIR = str(Path(__file__).parent / "conf")


class ConfigError(ValueError):
    """A config group that cannot be built, with the reason, raised before any training starts."""


def _build(cfg: DictConfig, group: str, **kwargs: Any) -> Any:
    """Instantiate ``cfg.<group>``, turning Hydra's wrapped errors into one clear message naming the group."""
    try:
        # Plain dicts and lists, not OmegaConf nodes: modules save their arguments as hyperparameters, and a
        # checkpoint holding OmegaConf objects cannot be resumed with torch.load(weights_only=True).
        return instantiate(cfg[group], _convert_="all", **kwargs)
    except InstantiationException as err:
        cause = err.__cause__ or err
        target = OmegaConf.select(cfg, f"{group}._target_")
        raise ConfigError(f"config group `{group}` ({target}): {cause}") from cause


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
    transfer = cfg.get("transfer") or {}
    variant = transfer.get("variant", "transferred")
    if variant not in (*TRANSFER_VARIANTS, "target"):
        raise ConfigError(f"`transfer.variant={variant!r}` is not one of {[*TRANSFER_VARIANTS, 'target']}")
    if not transfer.get("ticket") or variant == "target":
        return None
    return TicketSequence(transfer.ticket, variant, list(transfer.reinit), transfer.seed)


def _variant_label(cfg: DictConfig) -> str | None:
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
        from lightning_lottery.integrations.wandb import WandbLottery

        callbacks.append(WandbLottery())
    return callbacks


def _write_run_info(cfg: DictConfig, out: Path) -> None:
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    info = {
        "experiment": cfg.experiment,
        "seed": cfg.seed,
        "variant": _variant_label(cfg),
        "overrides": overrides,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    atomic_write_json(out / "run.json", info)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the search described by ``cfg``; returns the lottery history and where the run wrote."""
    if cfg.get("analysis"):  # analysis=instability: an analysis of the recipe's network instead of a search
        from lightning_lottery.analysis.app import run_analysis

        return run_analysis(cfg, _build, _fill_from_data)
    out = Path(cfg.paths.output_dir)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = _build(cfg, "data")
    _fill_from_data(cfg, datamodule)
    module = _build(cfg, "model")
    logger = _build(cfg, "logger") if cfg.get("logger") else False
    callbacks = _callbacks(cfg, logger)
    lottery = callbacks[0]
    trainer = _build(cfg, "trainer", callbacks=callbacks, logger=logger)
    if trainer.is_global_zero:
        _write_run_info(cfg, out)
    if logger and hasattr(logger, "log_hyperparams"):
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)

    report = None
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if cfg.report and trainer.is_global_zero and not multirun:
        from lightning_lottery.report import write_report

        report = write_report([out], out / "report")
    return {"history": lottery.history, "output_dir": str(out), "report": str(report) if report else None}


class SweepReport(HydraCallback):
    """After a multirun, one report over all of its jobs (variants side by side, seeds aggregated)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.get("report", True):
            return
        from lightning_lottery.report import write_report

        sweep_dir = Path(config.hydra.sweep.dir)
        if any(sweep_dir.rglob("history.json")):
            print(f"[lottery] report: {write_report([sweep_dir], sweep_dir / 'report')}")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    result = run(cfg)
    if result["report"]:
        print(f"[lottery] report: {result['report']}")
    history = result["history"]
    if history:
        print(json.dumps({k: history[-1][k] for k in ("round", "sparsity", "best", "best_round_step")}, default=str))


def main() -> None:
    """Console entry point (``lightning-lottery`` and ``python -m lightning_lottery``)."""
    try:
        _hydra_main()
    except ConfigError as err:
        print(f"lightning-lottery: {err}", file=sys.stderr)
        sys.exit(2)
