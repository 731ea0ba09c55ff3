"""Weights & Biases for lottery-ticket searches: one run per search, levels overlaid, tickets as versioned artifacts.

:class:`WandbLottery` sits next to a ``WandbLogger`` and a :class:`~lightning_lottery.LotteryTicketCallback`:

- **curves per level, overlaid:** every validation is logged as ``<metric>_by_level/round_XX-<branch>`` against the
  step metric ``level_step`` (the trainer's step within the level), so all levels and branches of a metric share
  one x-axis and one section; at the end of the search one chart per metric (``overlay/<metric>``) draws them all
  as lines of a single plot;
- **levels:** after each (level, branch) its numbers are logged against ``remaining_pct``
  (``by_remaining/<branch>/<metric>``) and, at the end, the table ``lottery/levels`` and one chart per metric of
  the value at the early-stop point against % of weights remaining (``lottery/<metric>_vs_remaining``, a line per
  branch);
- **tickets:** one artifact per search (type ``lottery-ticket``), a version per (level, branch) with the alias
  ``round-XX`` (the ticket branch) or ``round-XX-<branch>`` (a control), the branch and the level's numbers in its
  metadata; a transfer run declares its source's artifact as input (``source_artifact``);
- **config:** the DataModule's hyperparameters are logged under ``data`` rather than at the top level, where its
  ``seed`` (the split's) would overwrite the job's ``seed``.

:func:`prepare_wandb_logger` names and groups a run (experiment, variant, seed), refuses up front a W&B that would
hang (online mode with no key or no network) and closes a run left open by an earlier job in the same process,
which is what gives every job of a Hydra multirun its own run (basic and joblib launchers alike).

Example::

    logger = WandbLogger(project="lottery", **run_identity("mnist_lenet300", "init-magnitude", seed=0))
    trainer = pl.Trainer(logger=logger, callbacks=[LotteryTicketCallback(rounds=5), WandbLottery()])
"""

from __future__ import annotations

import netrc
import os
import re
import socket
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import lightning.pytorch as pl
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_lottery.callbacks import find_lottery

__all__ = [
    "WandbLottery",
    "WandbUnavailable",
    "check_wandb_usable",
    "finish_open_run",
    "prepare_wandb_logger",
    "run_identity",
    "ticket_artifact_name",
]

OFFLINE_MODES = ("offline", "dryrun", "disabled")
DEFAULT_BASE_URL = "https://api.wandb.ai"
LEVEL_STEP = "level_step"
REMAINING = "remaining_pct"


class WandbUnavailable(RuntimeError):
    """W&B is asked to log online but cannot (no API key, no network): it would hang instead of failing."""


# ---------------------------------------------------------------------------------------------------- run set-up


def _slug(text: str) -> str:
    """Letters, digits, ``-``, ``_`` and ``.`` only (what W&B allows in artifact names)."""
    return re.sub(r"-{2,}", "-", re.sub(r"[^A-Za-z0-9_.-]+", "-", text)).strip("-") or "x"


def run_identity(experiment: str, variant: str, seed: int) -> dict[str, Any]:
    """W&B ``name``, ``group``, ``job_type`` and ``tags`` of one search: grouped by experiment, typed by variant."""
    return {
        "name": f"{experiment}-{variant}-seed{seed}",
        "group": experiment,
        "job_type": variant[:64],  # W&B's limit
        "tags": [experiment, variant, f"seed{seed}"],
    }


def ticket_artifact_name(experiment: str, variant: str, seed: int) -> str:
    """The ticket artifact of a search (versions: its levels and branches); derived from what defines the search,
    so a transfer run can name its source's."""
    return _slug(f"tickets-{experiment}-{variant}-seed{seed}")


def _api_key_known(base_url: str) -> bool:
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc").expanduser()
    try:
        return netrc.netrc(str(path)).authenticators(urlparse(base_url).hostname or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def check_wandb_usable(offline: bool = False, timeout: float = 3.0) -> str:
    """The W&B mode a run will use (``online``, ``offline``, ...), after checking that online logging can work.

    Online W&B without an API key, or without a route to the server, waits a long time before failing; this
    check fails at once with what to do instead.

    Raises:
        WandbUnavailable: online mode and no API key (``WANDB_API_KEY``, ``~/.netrc``), or the server
            (``WANDB_BASE_URL``, default api.wandb.ai) cannot be reached within ``timeout`` seconds.
    """
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if os.environ.get("WANDB_DISABLED", "").lower() in ("1", "true"):
        mode = "disabled"
    if offline or mode in OFFLINE_MODES:
        return mode if mode in OFFLINE_MODES else "offline"
    hint = "set WANDB_MODE=offline to log locally (upload later with `wandb sync <run folder>/wandb/offline-run-*`)"
    base_url = os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL
    if not _api_key_known(base_url):
        raise WandbUnavailable(
            f"logger=wandb: W&B is in online mode but has no API key (WANDB_API_KEY or `wandb login`); {hint}"
        )
    parsed = urlparse(base_url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname or "", port), timeout=timeout).close()
    except OSError as err:
        raise WandbUnavailable(f"logger=wandb: cannot reach the W&B server {base_url} ({err}); {hint}") from err
    return "online"


def finish_open_run() -> bool:
    """Finish a W&B run left open in this process (by an earlier job); ``WandbLogger`` would otherwise log into it."""
    import wandb

    if wandb.run is None:
        return False
    wandb.run.finish()
    return True


def prepare_wandb_logger(
    logger_cfg: MutableMapping[str, Any], experiment: str, variant: str, seed: int, offline_check: bool = True
) -> None:
    """Get a ``WandbLogger`` config (a Hydra node or dict) ready for one job of a (multi)run.

    Fills ``name``, ``group``, ``job_type`` and ``tags`` left unset from :func:`run_identity`, checks that W&B can
    log (:func:`check_wandb_usable`) and finishes a run an earlier job of this process left open.
    """
    if offline_check:
        check_wandb_usable(offline=bool(logger_cfg.get("offline")))
    for key, value in run_identity(experiment, variant, seed).items():
        if logger_cfg.get(key) is None:
            logger_cfg[key] = value
    if finish_open_run():
        rank_zero_info("[lottery] W&B: finished the run an earlier job left open; this job logs to a new one")


# ---------------------------------------------------------------------------------------------------- callback


def _wandb_loggers(trainer: pl.Trainer) -> list[WandbLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def _level(record: Mapping[str, Any]) -> tuple[int, str]:
    """A record's level and branch (``"ticket"`` for records written before branches existed)."""
    return int(record.get("round") or 0), str(record.get("branch") or "ticket")


class WandbLottery(pl.Callback):
    """Log a lottery-ticket search to W&B (see the module docstring for what goes where).

    Args:
        artifact_name: the search's ticket artifact; default ``tickets-<run name>``.
        source_artifact: for a transfer run, the ticket artifact it trains (``name`` or ``name:alias``): declared
            as the run's input with ``use_artifact``. W&B cannot do that offline: the name is then kept in the
            run's config (``lottery_source_artifact``) instead.
        log_tickets: log the tickets as artifacts.
        chart_metrics: the metrics that get end-of-search charts (overlays, value vs % remaining); default every
            logged metric except the training ones (``train*``), whose value at a validation is one batch's.

    Works offline (``WANDB_MODE=offline``); the ``lightning-lottery`` app adds it whenever ``logger=wandb``.

    Example::

        trainer = pl.Trainer(logger=WandbLogger(project="lottery"),
                             callbacks=[LotteryTicketCallback(rounds=5), WandbLottery()])
    """

    def __init__(
        self,
        artifact_name: str | None = None,
        source_artifact: str | None = None,
        log_tickets: bool = True,
        chart_metrics: Sequence[str] | None = None,
    ) -> None:
        for name, value in (("artifact_name", artifact_name), ("source_artifact", source_artifact)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"WandbLottery({name}=...) must be a non-empty string or None, got {value!r}")
        self.artifact_name = _slug(artifact_name) if artifact_name else None
        self.source_artifact = source_artifact
        self.log_tickets = bool(log_tickets)
        if isinstance(chart_metrics, str):
            raise TypeError(f"WandbLottery(chart_metrics=...) takes a list of metric names, got {chart_metrics!r}")
        self.chart_metrics = tuple(chart_metrics) if chart_metrics is not None else None
        self.curves: dict[str, list[dict[str, float]]] = {}  # "round_XX-<branch>" -> validations
        self._defined: set[str] = set()

    # -------------------------------------------------------------- set-up

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero:
            return
        runs = [logger.experiment for logger in _wandb_loggers(trainer)]
        self._defined = set()
        for run in runs:
            run.define_metric(LEVEL_STEP, hidden=True)
            run.define_metric(REMAINING, hidden=True)
            # What the lottery callback logs itself: per-round curves against the step within the round.
            run.define_metric("round_step")
            run.define_metric("round_*", step_metric="round_step")
            run.define_metric("round_summary/*", step_metric="round_summary/round")
            self._use_source(run)
        self._nest_datamodule_hparams(trainer, runs)

    def _use_source(self, run: Any) -> None:
        if self.source_artifact is None:
            return
        if run.offline:
            run.config.update({"lottery_source_artifact": self.source_artifact}, allow_val_change=True)
            return
        name = self.source_artifact if ":" in self.source_artifact else f"{self.source_artifact}:latest"
        try:
            run.use_artifact(name, type="lottery-ticket")
        except Exception as err:  # a source logged elsewhere (or not at all) must not stop the search
            rank_zero_warn(f"W&B: could not declare the source tickets {name} as this run's input: {err}")

    @staticmethod
    def _nest_datamodule_hparams(trainer: pl.Trainer, runs: list[Any]) -> None:
        """Log the DataModule's hyperparameters under ``data`` and stop Lightning from merging them into the
        top level, where e.g. its split ``seed`` would overwrite the job's ``seed``."""
        datamodule = trainer.datamodule
        if not runs or datamodule is None or not datamodule.hparams_initial:
            return
        hparams = dict(datamodule.hparams_initial)
        datamodule.save_hyperparameters(hparams, logger=False)  # public API: keep them, do not auto-log them
        for run in runs:
            existing = run.config.get("data")
            merged = {**existing, **hparams} if isinstance(existing, Mapping) else hparams
            run.config.update({"data": merged}, allow_val_change=True)

    # -------------------------------------------------------------- curves

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        lottery = find_lottery(trainer)
        if trainer.sanity_checking or not trainer.is_global_zero or lottery is None:
            return
        metrics = _scalars(trainer.callback_metrics)
        if not metrics:
            return
        level, branch = int(lottery.round), str(getattr(lottery, "branch", None) or "ticket")
        label = f"round_{level:02d}-{branch}"
        self.curves.setdefault(label, []).append({LEVEL_STEP: float(trainer.global_step), **metrics})
        row = {f"{name}_by_level/{label}": value for name, value in metrics.items()}
        for logger in _wandb_loggers(trainer):
            self._define(logger.experiment, row, LEVEL_STEP)
            logger.experiment.log({**row, LEVEL_STEP: float(trainer.global_step)})

    def _define(self, run: Any, row: Mapping[str, Any], step_metric: str) -> None:
        for key in row:
            if key not in self._defined:
                run.define_metric(key, step_metric=step_metric)
                self._defined.add(key)

    # -------------------------------------------------------------- levels

    def on_lottery_round_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, record: dict[str, Any], folder: Path | None
    ) -> None:
        if not trainer.is_global_zero:
            return
        level, branch = _level(record)
        numbers = {"best": record.get("best"), **record.get("metrics", {})}
        row = {f"by_remaining/{branch}/{k}": float(v) for k, v in numbers.items() if isinstance(v, (int, float))}
        for logger in _wandb_loggers(trainer):
            run = logger.experiment
            self._define(run, row, REMAINING)
            run.log({**row, REMAINING: float(record["remaining_pct"])})
            run.summary["lottery/round"] = level
            run.summary["lottery/remaining_pct"] = record["remaining_pct"]
            if folder is not None and self.log_tickets:
                self._log_ticket(run, record, level, branch, Path(folder))

    def _log_ticket(self, run: Any, record: dict[str, Any], level: int, branch: str, folder: Path) -> None:
        import wandb

        metadata = {k: v for k, v in record.items() if not isinstance(v, (dict, list))}
        artifact = wandb.Artifact(
            self.artifact_name or _slug(f"tickets-{run.name or run.id}"),
            type="lottery-ticket",
            description=f"level {level}, branch {branch}",
            metadata={**metadata, "round": level, "branch": branch},
        )
        artifact.add_dir(str(folder))
        alias = f"round-{level:02d}" if branch == "ticket" else f"round-{level:02d}-{branch}"
        run.log_artifact(artifact, aliases=[alias, "latest"])

    # -------------------------------------------------------------- end of the search

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        lottery = find_lottery(trainer)
        history = list(getattr(lottery, "history", []) or [])
        for logger in _wandb_loggers(trainer):
            self._log_overlays(logger.experiment)
            self._log_levels(logger.experiment, history)

    def _log_overlays(self, run: Any) -> None:
        """One chart per metric with every level's (and branch's) curve as a line over ``level_step``."""
        import wandb

        labels = sorted(self.curves)
        names = self._charted({k for points in self.curves.values() for p in points for k in p} - {LEVEL_STEP})
        for name in names:
            series = [(label, [p for p in self.curves[label] if name in p]) for label in labels]
            series = [(label, points) for label, points in series if points]
            if not series:
                continue
            chart = wandb.plot.line_series(
                xs=[[p[LEVEL_STEP] for p in points] for _, points in series],
                ys=[[p[name] for p in points] for _, points in series],
                keys=[label for label, _ in series],
                title=f"{name} per level",
                xname=LEVEL_STEP,
            )
            run.log({f"overlay/{name}": chart})

    def _charted(self, names: set[str]) -> list[str]:
        if self.chart_metrics is not None:
            return [n for n in self.chart_metrics if n in names]
        return sorted(n for n in names if not n.startswith("train"))

    def _log_levels(self, run: Any, history: list[dict[str, Any]]) -> None:
        """The table of levels and, per metric, the value at the early-stop point vs % of weights remaining."""
        import wandb

        if not history:
            return
        names = sorted({k for r in history for k in r.get("metrics", {})})
        columns = ["round", "branch", REMAINING, "sparsity", "best", "best_round_step", *names]
        rows = [
            [
                r["round"],
                r.get("branch", "ticket"),
                r[REMAINING],
                r["sparsity"],
                r.get("best"),
                r.get("best_round_step"),
            ]
            + [r.get("metrics", {}).get(k) for k in names]
            for r in history
        ]
        run.log({"lottery/levels": wandb.Table(columns=columns, data=rows)})
        branches = sorted({r.get("branch", "ticket") for r in history}, key=lambda b: (b != "ticket", b))
        for name in self._charted(set(names)):
            xs, ys, keys = [], [], []
            for branch in branches:
                points = sorted(
                    (r[REMAINING], r["metrics"][name])
                    for r in history
                    if r.get("branch", "ticket") == branch and r.get("metrics", {}).get(name) is not None
                )
                if points:
                    xs.append([x for x, _ in points])
                    ys.append([y for _, y in points])
                    keys.append(branch)
            if keys:
                chart = wandb.plot.line_series(
                    xs=xs, ys=ys, keys=keys, title=f"{name} vs % of weights remaining", xname="% weights remaining"
                )
                run.log({f"lottery/{name}_vs_remaining": chart})

    def log_report(self, trainer: pl.Trainer, folder: str | os.PathLike[str]) -> None:
        """Log the figures of a report folder (``*.png``) as images under ``report/<name>``."""
        import wandb

        if not trainer.is_global_zero:
            return
        figures = sorted(Path(folder).glob("*.png"))
        for logger in _wandb_loggers(trainer):
            if figures:
                logger.experiment.log({f"report/{p.stem}": wandb.Image(str(p), caption=p.stem) for p in figures})

    # -------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        return {"curves": {label: [dict(p) for p in points] for label, points in self.curves.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.curves = {label: [dict(p) for p in points] for label, points in state_dict.get("curves", {}).items()}
