"""A run folder and what may be done in it: who holds it, whether and from what to resume, and its records.

A search owns its run folder (``hydra.run.dir``) for as long as its process lives: an exclusive ``flock`` on
``<run dir>/.lock``, which the kernel releases when the process ends, also by SIGKILL. Before anything is written,
:meth:`RunFolder.plan` decides what the command does there:

* ``ckpt_path=null``: a new search, refused if the folder already holds one (``run.json``);
* ``ckpt_path=last``: resume from ``<checkpoints>/last.ckpt``, refused when there is nothing valid to resume from
  (no such file, a dangling link, a truncated or unreadable checkpoint), instead of silently starting over;
* ``ckpt_path=auto``: resume when the folder holds a valid last checkpoint, else start a new search there (what a
  requeued cluster job wants);
* ``ckpt_path=<file>``: resume from that checkpoint.

A resume is refused when the settings that define the search differ from the run's own (``run.json``), naming each
difference; an optimizer or Trainer argument the run's record lacks (a recipe default added since) is left out, so
the search goes on as it began; a search that has finished (``lottery/history.json``) is reported as such and left
untouched. A refused command leaves the folder as it was: the run's records (``run.json``, ``.hydra/``) are written
only by a new search that passed every check.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightning_lottery.cli.errors import ConfigError, show

__all__ = [
    "ARGUMENT_SECTIONS",
    "LOCK_NAME",
    "RUN_INFO",
    "SEARCH_SETTINGS",
    "Plan",
    "RunFolder",
    "arguments_the_run_lacks",
    "checkpoint_problem",
    "search_finished",
]

LOCK_NAME = ".lock"
RUN_INFO = "run.json"
# Settings that define a search (what a resume must keep); keys under them listed in FREE_SETTINGS may change.
SEARCH_SETTINGS = ("seed", "data", "model", "optim", "trainer", "lottery", "transfer", "callbacks.early_stopping")
FREE_SETTINGS = (
    "data.root",
    "data.num_workers",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "trainer.default_root_dir",
    "lottery.verbose",
)

# Sections that are one object's keyword arguments, with that library's defaults: the optimizer (`optim`, which the
# model's `optimizer` repeats) and Lightning's Trainer. A key the run's record lacks was not passed when the run
# began, so a resume leaves it out and builds the object as the run did: a recipe default added later
# (`optim.fused: true`) must neither change how the search goes on nor refuse the resume.
ARGUMENT_SECTIONS = ("optim", "model.optimizer", "trainer")

# Model settings the app fills in from the data when the config leaves them unset.
FILLED_BY_DATA = ("model.vocab_size", "model.arch_kwargs.num_classes", "model.arch_kwargs.in_channels")


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` cannot be resumed from, or None when it is a complete checkpoint."""
    if path.is_symlink() and not path.exists():
        return f"{path} is a dangling link (to {os.readlink(path)})"
    if not path.exists():
        return f"there is no {path}"
    if not zipfile.is_zipfile(path):
        return f"{path} is truncated or not a checkpoint"
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        return f"{path} cannot be read ({str(err).splitlines()[0]})"
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        return f"{path} is not a Lightning checkpoint"
    return None


def _history(lottery_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any], bool]:
    """(records, settings, finished flag) of a search's ``history.json``; empty when there is none."""
    try:
        data = json.loads((lottery_dir / "history.json").read_text())
    except (OSError, ValueError):
        return [], {}, False
    if isinstance(data, list):
        return data, {}, False
    return list(data.get("history", [])), dict(data.get("settings") or {}), data.get("finished") is True


def search_finished(lottery_dir: Path) -> bool:
    """Whether the search whose artifacts are in ``lottery_dir`` has trained every level and branch."""
    records, settings, finished = _history(lottery_dir)
    if finished:
        return True
    rounds = settings.get("rounds")
    if not isinstance(rounds, int):
        return False
    controls = settings.get("controls") or []
    return len(records) >= 1 + rounds * (1 + len(controls))


def _flatten(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):  # an empty mapping adds no key: {} and null read the same
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}.{key}")
    else:
        yield prefix, value


def _search_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for section in SEARCH_SETTINGS:
        node: Any = config
        for part in section.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        flat.update(_flatten(node, section))
    return {k: v for k, v in flat.items() if not k.startswith(FREE_SETTINGS)}


def _predates(recorded: Mapping[str, Any], key: str) -> bool:
    """Whether ``key`` is a direct setting of a section (``lottery.pruning_batches``, ``model.optimizer.fused``) that
    the run's record lacks altogether: the setting is newer than the run. Keys inside a setting's own mapping
    (``layer_amounts``) are the user's data and always compared."""
    for section in sorted({*SEARCH_SETTINGS, *ARGUMENT_SECTIONS}, key=len, reverse=True):  # model.optimizer first
        name = key.removeprefix(f"{section}.")
        if name != key and "." not in name:
            node: Any = recorded
            for part in section.split("."):
                node = node.get(part) if isinstance(node, Mapping) else None
            return isinstance(node, Mapping) and name not in node
    return False


def setting_differences(recorded: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    """``"key: the run has X, given Y"`` for every search setting that differs (None and absent count as one).

    A setting the run's record does not have at all was added to the app after the run started; the run behaved as
    its default does (new settings default to the old behaviour), so it is not a difference."""
    old, new = _search_settings(recorded), _search_settings(given)
    differences = []
    for key in sorted(set(old) | set(new)):
        if key in FILLED_BY_DATA and new.get(key) is None:
            continue  # the app fills it from the data, as it did for the run
        if key not in old and _predates(recorded, key):
            continue
        if old.get(key) != new.get(key):
            differences.append(f"{key}: the run has {show(old.get(key))}, given {show(new.get(key))}")
    return differences


def arguments_the_run_lacks(recorded: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    """The keys of :data:`ARGUMENT_SECTIONS` given now that the run's record does not have at all (a resume leaves
    them out; settings that may change freely are kept)."""
    old, new = _search_settings(recorded), _search_settings(given)
    sections = tuple(f"{section}." for section in ARGUMENT_SECTIONS)
    return sorted(k for k in new if k.startswith(sections) and k not in old and _predates(recorded, k))


@dataclass
class Plan:
    """What the command does in its run folder."""

    checkpoint: Path | None  # resume from here; None: a new search
    finished: bool = False  # the search in the folder is complete: nothing to do
    left_out: tuple[str, ...] = ()  # settings newer than the run, which the resume leaves out


class RunFolder:
    """The run folder of one search (see the module docstring).

    Args:
        path: the run folder (``paths.output_dir``).
        cfg: the run's config (``ckpt_path``, ``lottery.dirpath``, the checkpoint callback's ``dirpath``).
        primary: whether this process owns the folder (rank zero); other ranks of a DDP run only read it.
    """

    def __init__(self, path: Path, cfg: DictConfig, primary: bool = True) -> None:
        self.path = Path(path)
        self.cfg = cfg
        self.primary = primary
        self._lock_fd: int | None = None
        self._untouched = self._is_untouched()
        self._created_lock = False
        self.wrote_records = False  # set by the app once it wrote run.json and .hydra/ for a new search

    # ------------------------------------------------------------------ lock

    def _is_untouched(self) -> bool:
        """Nothing but an empty job log or the lock in it: a folder this command created (Hydra makes it first)."""
        if not self.path.exists():
            return True
        for entry in self.path.iterdir():
            if entry.name == LOCK_NAME or (entry.suffix == ".log" and entry.is_file() and not entry.stat().st_size):
                continue
            return False
        return True

    def lock(self) -> None:
        """Take the folder, or raise ConfigError naming the process that holds it."""
        if not self.primary:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self._created_lock = not (self.path / LOCK_NAME).exists()
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "not yet known"
            os.close(fd)
            raise ConfigError(
                f"hydra.run.dir={self.path}: another process (pid {owner}) is running a search in this folder; "
                "allowed: a folder no live process uses (wait for it to end, or stop it first)"
            ) from None
        self._lock_fd = fd

    def sign(self) -> None:
        """Write this process's id into the lock file, once the command is sure to run (a refusal leaves it)."""
        if self._lock_fd is not None:
            os.ftruncate(self._lock_fd, 0)
            os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def abandon(self) -> None:
        """After a refusal (no training step ran): undo what this command wrote.

        A folder the command created goes away whole; in a folder that held something before, only the run records
        this command wrote (``run.json``, ``.hydra/``) are removed.
        """
        if self._lock_fd is None:
            return  # refused before taking the folder (another process holds it): touch nothing
        if self._untouched:
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            if self.wrote_records:
                (self.path / RUN_INFO).unlink(missing_ok=True)
                shutil.rmtree(self.path / ".hydra", ignore_errors=True)
            for log in self.path.glob("*.log"):  # an empty job log is this command's (any run logs something)
                if not log.stat().st_size:
                    log.unlink()
            if self._created_lock:
                (self.path / LOCK_NAME).unlink(missing_ok=True)
        self.release()

    def remove_temporary_files(self) -> None:
        """Delete the ``.<name>.*.tmp`` files of atomic writes that a killed run left behind (the lock is ours)."""
        if self._lock_fd is None:
            return
        for tmp in self.path.rglob(".*.tmp"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------------ decisions

    @property
    def checkpoint_dir(self) -> Path | None:
        spec = OmegaConf.select(self.cfg, "callbacks.checkpoint")
        if spec is None:
            return None
        return Path(spec.get("dirpath") or self.path / "checkpoints")

    @property
    def lottery_dir(self) -> Path:
        return Path(OmegaConf.select(self.cfg, "lottery.dirpath") or self.path / "lottery")

    def history(self) -> list[dict[str, Any]]:
        """The records of the search's ``history.json`` (empty when there is none)."""
        return _history(self.lottery_dir)[0]

    def recorded_config(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.path / RUN_INFO).read_text()).get("config")
        except (OSError, ValueError, AttributeError):
            return None

    def plan(self) -> Plan:
        """Decide what to do here (see the module docstring); ConfigError when the command must not run."""
        ckpt = self.cfg.get("ckpt_path")
        where = f"hydra.run.dir={self.path}"
        if ckpt is None:
            if self.primary and (self.path / RUN_INFO).exists():
                raise ConfigError(
                    f"ckpt_path=null: {where} already holds a search ({RUN_INFO}); allowed: ckpt_path=last to resume "
                    "it, or a new hydra.run.dir for a new search"
                )
            return Plan(checkpoint=None)
        if ckpt in ("last", "auto"):
            if search_finished(self.lottery_dir):
                return Plan(checkpoint=None, finished=True)
            checkpoint_dir = self.checkpoint_dir
            if checkpoint_dir is None:
                raise ConfigError(
                    f"ckpt_path={ckpt}: callbacks.checkpoint is null, so the run keeps no checkpoint to resume; "
                    "allowed: the default callbacks.checkpoint, or ckpt_path=<a .ckpt file>"
                )
            last = checkpoint_dir / "last.ckpt"
            problem = checkpoint_problem(last)
            if problem is None:
                checkpoint: Path | None = last
            elif ckpt == "auto" and not last.exists() and not last.is_symlink():
                return Plan(checkpoint=None)  # nothing yet: start the search here
            else:
                raise ConfigError(
                    f"ckpt_path={ckpt}: nothing to resume in {where}: {problem}; allowed: the folder of a run that "
                    "saved a checkpoint, or ckpt_path=null for a new search"
                )
        else:
            checkpoint = Path(ckpt)
            problem = checkpoint_problem(checkpoint)
            if problem is not None:
                raise ConfigError(f"ckpt_path={ckpt}: {problem}; allowed: a complete Lightning checkpoint")
            if search_finished(self.lottery_dir):
                return Plan(checkpoint=None, finished=True)
        return Plan(checkpoint=checkpoint, left_out=self._check_same_search(ckpt))

    def _check_same_search(self, ckpt: str) -> tuple[str, ...]:
        """Refuse other search settings; returns the arguments newer than the run (:func:`arguments_the_run_lacks`)."""
        recorded = self.recorded_config()
        if recorded is None:
            return ()
        given = OmegaConf.to_container(self.cfg, resolve=True)
        assert isinstance(given, dict)
        differences = setting_differences(recorded, given)
        if differences:
            raise ConfigError(
                f"ckpt_path={ckpt}: these settings differ from the run's own ({self.path / RUN_INFO}): "
                + "; ".join(differences)
                + "; allowed: the run's settings (a resume continues the same search), or a new hydra.run.dir"
            )
        return tuple(arguments_the_run_lacks(recorded, given))
