"""Find the runs of a lottery-ticket search on disk and load them.

A run is one ``history.json`` written by :class:`~lightning_lottery.LotteryTicketCallback` (its lottery folder),
optionally with a ``run.json`` from the Hydra app next to that folder. The history has one record per (level,
branch): the ``"ticket"`` branch is the search itself, the others are its controls (``"reinit"``, ``"random"``, ...)
trained on the same masks; level 0 (dense) exists once, on the ticket branch, and is shared by all branches.
Per-branch curves are ``round_XX/<branch>/curve.csv``; histories of the older flat layout (``round_XX/curve.csv``,
records without ``"branch"``) read as ticket-only runs.

Everything the report needs that ``run.json`` does not say (label, experiment, seed) is derived from the history's
settings and the folders. What makes two runs the same experiment is their :func:`fingerprint`: every setting but
the seed (and the output paths).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import inspect
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_lottery.core.search import SearchSettings
from lightning_lottery.transfer import LABELS as TRANSFER_LABELS

HISTORY = "history.json"
RUN_INFO = "run.json"
TICKET = "ticket"
# Folder names that only count runs (Lightning's ``version_N``, Hydra's multirun job ``N``): not experiment names.
_COUNTER_NAME = re.compile(r"(version_)?\d+")

BRANCH_LABELS = {
    "reinit": "random reinit",
    "random": "random pruning",
    "reshuffle": "reshuffled θ₀",
    "signed_constant": "signed constant init",
    "noise": "θ₀ + noise",
}
BRANCH_ORDER = (TICKET, *BRANCH_LABELS)

# Settings that say where a run wrote or how it printed, not what it trained: never part of a fingerprint. `rounds`
# and `controls` neither: a level does not depend on how many levels follow it, and controls leave the ticket
# branch unchanged (each branch is its own series anyway).
_IGNORED_KEYS = frozenset(
    {
        "seed",
        "rounds",
        "controls",
        "dirpath",
        "save_tickets",
        "verbose",
        "default_root_dir",
        "output_dir",
        "data_root",
        "root",
        "save_dir",
        "enable_progress_bar",
        "enable_model_summary",
        "ckpt_path",
        "report",
    }
)
_IGNORED_GROUPS = frozenset({"paths", "hydra", "logger", "fast"})  # `fast`: already in the trainer/data it sets
# The dense level-0 network does not depend on the lottery's settings (except a transfer, which sets its weights).
_LOTTERY_PREFIX = "lottery."


class ReportError(ValueError):
    """Artifacts that cannot be reported on: none found, unreadable, or lacking the requested metric."""


@dataclass
class Run:
    """One lottery search: its settings, one record per (level, branch), and where it lives."""

    history_path: Path
    run_dir: Path
    experiment: str
    label: str
    seed: int | None
    settings: dict[str, Any]
    records: list[dict[str, Any]]
    info: dict[str, Any] | None = None
    _curves: dict[tuple[int, str], list[dict[str, float]]] = field(default_factory=dict, repr=False)

    @property
    def lottery_dir(self) -> Path:
        return self.history_path.parent

    @property
    def monitor(self) -> str | None:
        return self.settings.get("monitor")

    @property
    def mode(self) -> str:
        return self.settings.get("mode") or "min"

    @property
    def config(self) -> dict[str, Any]:
        """The app's resolved config (``run.json``), or {} for a plain Lightning run."""
        config = (self.info or {}).get("config")
        return config if isinstance(config, dict) else {}

    @property
    def kept_fraction(self) -> float:
        """Fraction of each layer a supermask keeps (edge-popup: ``model.supermask.keep``); 1 without one."""
        supermask = (self.config.get("model") or {}).get("supermask")
        keep = supermask.get("keep") if isinstance(supermask, dict) else None
        return float(keep) if isinstance(keep, (int, float)) and 0 < keep <= 1 else 1.0

    @property
    def branches(self) -> list[str]:
        """The branches this run trained, the ticket first."""
        present = {branch_of(r) for r in self.records}
        return sorted(present, key=branch_rank)

    def branch_records(self, branch: str) -> list[dict[str, Any]]:
        """One record per level of ``branch``: the shared dense level 0, then the branch's own levels."""
        return [r for r in self.records if branch_of(r) == branch or (r["round"] == 0 and branch_of(r) == TICKET)]

    def weights_pct(self, record: dict[str, Any]) -> float:
        """% of the prunable weights the network of ``record`` uses: the lottery's remaining times a supermask."""
        return float(record["remaining_pct"]) * self.kept_fraction

    def budget(self, record: dict[str, Any]) -> float | None:
        """Optimizer steps the branch of ``record`` could train: the settings' budget (from the branch's start), else
        its ``end_step - start_step``, else its ``steps`` (the older layout, where every level restarted at 0)."""
        start = record.get("start_step") or 0
        budget = self.settings.get("budget")
        if isinstance(budget, (int, float)) and not isinstance(budget, bool) and budget > 0:
            return float(budget) - start
        if isinstance(record.get("end_step"), (int, float)):
            return float(record["end_step"]) - start
        steps = record.get("steps")
        return float(steps) if isinstance(steps, (int, float)) else None

    def curve(self, round_index: int, branch: str = TICKET) -> list[dict[str, float]]:
        """The ``curve.csv`` (one row per validation) of a level's branch as floats; NaN for empty cells; [] if
        absent. Level 0 is the ticket branch's for every branch."""
        if round_index == 0:
            branch = TICKET
        key = (round_index, branch)
        if key not in self._curves:
            folder = self.lottery_dir / f"round_{round_index:02d}"
            path = folder / branch / "curve.csv"
            if not path.is_file() and branch == TICKET:
                path = folder / "curve.csv"  # the older flat layout
            self._curves[key] = read_curve(path)
        return self._curves[key]

    def fingerprint(self) -> dict[str, Any]:
        """Every setting that defines the experiment (flattened), the seed and output paths left out, and the label
        the run was given (runs labelled apart are kept apart)."""
        return {**fingerprint(self.settings, self.config), "label": self.label}

    def dense_fingerprint(self) -> dict[str, Any]:
        """The settings of the dense level-0 network: the fingerprint without the lottery's, plus the seed."""
        keep = {
            key: value
            for key, value in self.fingerprint().items()
            if key not in ("variant", "label")
            and (not key.startswith(_LOTTERY_PREFIX) or key.startswith("lottery.transfer"))
        }
        return {**keep, "seed": self.seed, "experiment": self.experiment}


def branch_of(record: Mapping[str, Any]) -> str:
    return str(record.get("branch") or TICKET)


def branch_rank(branch: str) -> tuple[int, str]:
    return (BRANCH_ORDER.index(branch) if branch in BRANCH_ORDER else len(BRANCH_ORDER), branch)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values (as JSON-comparable lists)."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: value} if prefix else {}


def fingerprint(settings: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The flattened settings that define an experiment: the app's config (if any) with the callback's settings
    under ``lottery.``, minus the seed, the number of levels, the controls and everything about output paths."""
    merged = flatten(dict(config or {}))
    merged.update(flatten(dict(settings), _LOTTERY_PREFIX))
    for name, default in _setting_defaults().items():
        key = _LOTTERY_PREFIX + name
        if key not in merged and not any(k.startswith(key + ".") for k in merged):
            merged[key] = default  # a run older than the setting behaved as its default does
    kept = {}
    for key, value in merged.items():
        parts = key.split(".")
        if parts[0] in _IGNORED_GROUPS or parts[-1] in _IGNORED_KEYS:
            continue
        kept[key] = value
    return dict(sorted(kept.items()))


@functools.cache
def _setting_defaults() -> dict[str, Any]:
    """Every search setting's default, as a run records it: a run recorded before a setting existed is grouped
    with newer runs that left it at its default (new settings default to the old behaviour)."""
    parameters = inspect.signature(SearchSettings.build).parameters.values()
    return {
        p.name: json.loads(json.dumps(p.default, default=str))
        for p in parameters
        if p.default is not inspect.Parameter.empty
    }


def fingerprint_key(items: Mapping[str, Any]) -> str:
    """A short stable hash of a fingerprint (the report's group id)."""
    text = json.dumps(items, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def read_curve(path: Path) -> list[dict[str, float]]:
    """Rows of a ``curve.csv``. Columns are the union over validations, so early rows may have empty cells."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{key: _to_float(value) for key, value in row.items() if key} for row in csv.DictReader(f)]


def _to_float(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "") else math.nan
    except ValueError:
        return math.nan


def find_histories(dirs: Iterable[Path]) -> list[Path]:
    """Every ``history.json`` under ``dirs`` (recursively), each once, in path order."""
    dirs = [Path(d) for d in dirs]
    missing = [str(d) for d in dirs if not d.exists()]
    if missing:
        raise ReportError(f"No such directory: {', '.join(missing)}")
    found: dict[Path, Path] = {}
    for root in dirs:
        candidates = [root] if root.is_file() and root.name == HISTORY else sorted(root.rglob(HISTORY))
        for path in candidates:
            found.setdefault(path.resolve(), path)  # overlapping dirs (a sweep and one of its jobs) count once
    if not found:
        searched = ", ".join(str(d) for d in dirs)
        raise ReportError(
            f"No lottery runs found under {searched}: expected at least one {HISTORY} (written by "
            "LotteryTicketCallback into <log_dir>/lottery/ or <run_dir>/lottery/), searched recursively."
        )
    return sorted(found.values(), key=lambda p: _natural_key(str(p)))


def variant_label(settings: Mapping[str, Any]) -> str:
    """What a search's ticket branch trains, from the callback's settings (when no ``run.json`` names it).

    Settings of histories written before controls were branches (``rewind="reinit"``, ``"none"``, ...) are still
    labelled, so that old runs can be read.
    """
    transfer = settings.get("transfer")
    if transfer:
        return TRANSFER_LABELS.get(transfer.get("variant"), "transferred ticket")
    rewind = settings.get("rewind", "init")
    random_pruning = settings.get("pruning") == "random"
    noise = settings.get("rewind_noise") or 0.0
    words = {
        "reinit": "random reinit",
        "none": "fine-tune (no rewind)",
        "finetune": "fine-tune (no rewind)",
        "lr_rewind": "LR rewinding (no weight rewind)",
        "reshuffle": "reshuffled θ₀",
        "signed_constant": "signed constant init",
    }
    if rewind in words:
        rewound = words[rewind]
    elif isinstance(rewind, int) and not isinstance(rewind, bool):
        rewound = f"rewind to step {rewind}"
    elif isinstance(rewind, str) and rewind.startswith("epoch:"):
        rewound = f"rewind to epoch {rewind[6:]}"
    else:
        rewound = "rewind to θ₀"
    if noise:
        rewound += f" + noise {noise:g}σ"
    if random_pruning:
        return "random pruning" if rewind == "init" else f"random pruning + {rewound}"
    if rewound.startswith("rewind"):
        return f"ticket ({rewound})"
    return rewound


def variant_order(variant: str, settings: Mapping[str, Any]) -> tuple[int, float, str]:
    """Sort key: tickets first (θ₀, then later rewind steps), then random reinit, random pruning, fine-tune, others."""
    label = variant.lower()
    if "ticket" in label and "random" not in label and "control" not in label:
        rank = 0
    elif "reinit" in label or "reshuffled" in label or "signed constant" in label:
        rank = 1
    elif "random" in label:
        rank = 2
    elif "fine-tune" in label or "no rewind" in label or "lr rewinding" in label:
        rank = 3
    else:
        rank = 4
    rewind = settings.get("rewind")
    step = float(rewind) if isinstance(rewind, int) and not isinstance(rewind, bool) else -1.0
    return rank, step, label


def experiment_name(run_dir: Path) -> str:
    """The run folder's name, skipping counter folders (``version_3``, Hydra job ``7``) that name no experiment."""
    folder = run_dir.resolve()
    while _COUNTER_NAME.fullmatch(folder.name) and folder.parent != folder:
        folder = folder.parent
    return folder.name or str(folder)


def load_run(history_path: Path) -> Run:
    """Read one run: ``history.json`` and, if present, the Hydra app's ``run.json`` next to its lottery folder."""
    data = _read_json(history_path)
    if not isinstance(data, dict) or not isinstance(data.get("history"), list):
        raise ReportError(f"{history_path} is not a lottery history (expected {{'settings': ..., 'history': [...]}})")
    settings = dict(data.get("settings") or {})
    records = sorted(data["history"], key=lambda r: (r["round"], branch_rank(branch_of(r))))
    lottery_dir = history_path.parent
    info_path = next((p for p in (lottery_dir.parent / RUN_INFO, lottery_dir / RUN_INFO) if p.is_file()), None)
    info = _read_json(info_path) if info_path is not None else None
    if info_path is not None:
        run_dir = info_path.parent
    else:
        # The callback's default folder is <log_dir>/lottery: the run is the folder around it.
        run_dir = lottery_dir.parent if lottery_dir.name == "lottery" else lottery_dir
    info = info if isinstance(info, dict) else None
    seed = (info or {}).get("seed")
    seed = seed if seed is not None else settings.get("seed")
    return Run(
        history_path=history_path,
        run_dir=run_dir,
        experiment=str((info or {}).get("experiment") or experiment_name(run_dir)),
        label=str((info or {}).get("variant") or variant_label(settings)),
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        settings=settings,
        records=records,
        info=info,
    )


def collect_runs(dirs: Sequence[Path | str]) -> list[Run]:
    """Load every run under ``dirs``: a run folder, a Hydra multirun sweep, or several of either.

    Runs come back ordered by experiment, then label (tickets first), then seed.
    """
    runs = [load_run(path) for path in find_histories(Path(d) for d in dirs)]
    return sorted(
        runs,
        key=lambda r: (r.experiment, variant_order(r.label, r.settings), r.seed if r.seed is not None else -1),
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ReportError(f"Cannot read {path}: {err}") from err


def _natural_key(text: str) -> list[Any]:
    """Sort ``job_10`` after ``job_9``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]
