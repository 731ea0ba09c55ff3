"""Find the runs of a lottery-ticket search on disk and load them.

A run is one ``history.json`` written by :class:`~lightning_lottery.LotteryTicketCallback` (its lottery folder),
optionally with a ``run.json`` from the Hydra app next to that folder. Everything the report needs that
``run.json`` does not say (variant, experiment, seed) is derived from the history's settings and the folders.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_lottery.transfer import LABELS as TRANSFER_LABELS

HISTORY = "history.json"
RUN_INFO = "run.json"
# Folder names that only count runs (Lightning's ``version_N``, Hydra's multirun job ``N``): not experiment names.
_COUNTER_NAME = re.compile(r"(version_)?\d+")


class ReportError(ValueError):
    """Artifacts that cannot be reported on: none found, unreadable, or lacking the requested metric."""


@dataclass
class Run:
    """One lottery search: its settings, one record per round, and where it lives."""

    history_path: Path
    run_dir: Path
    experiment: str
    variant: str
    seed: int | None
    settings: dict[str, Any]
    records: list[dict[str, Any]]
    info: dict[str, Any] | None = None
    _curves: dict[int, list[dict[str, float]]] = field(default_factory=dict, repr=False)

    @property
    def lottery_dir(self) -> Path:
        return self.history_path.parent

    @property
    def monitor(self) -> str | None:
        return self.settings.get("monitor")

    @property
    def mode(self) -> str:
        return self.settings.get("mode") or "min"

    def metric_names(self) -> set[str]:
        """Every metric recorded at the early-stop iteration of any round."""
        return {name for record in self.records for name in record.get("metrics") or {}}

    def curve(self, round_index: int) -> list[dict[str, float]]:
        """The round's ``curve.csv`` (one row per validation) as floats; NaN for empty cells; [] if absent."""
        if round_index not in self._curves:
            self._curves[round_index] = read_curve(self.lottery_dir / f"round_{round_index:02d}" / "curve.csv")
        return self._curves[round_index]


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


def variant_label(settings: dict[str, Any]) -> str:
    """What kind of network a search trains, from the callback's settings (when no ``run.json`` names it)."""
    transfer = settings.get("transfer")
    if transfer:
        return TRANSFER_LABELS.get(transfer.get("variant"), "transferred ticket")
    rewind = settings.get("rewind", "init")
    random_pruning = settings.get("pruning") == "random"
    noise = settings.get("rewind_noise") or 0.0
    if rewind == "reinit":
        rewound = "random reinit"
    elif rewind == "none":
        rewound = "fine-tune (no rewind)"
    elif rewind in ("reshuffle", "signed_constant"):
        rewound = "reshuffled θ₀" if rewind == "reshuffle" else "signed constant init"
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


def variant_order(variant: str, settings: dict[str, Any]) -> tuple[int, float, str]:
    """Sort key: tickets first (θ₀, then later rewind steps), then random reinit, random pruning, fine-tune, others."""
    label = variant.lower()
    if "ticket" in label and "random" not in label:
        rank = 0
    elif "reinit" in label or "reshuffled" in label or "signed constant" in label:
        rank = 1
    elif "random" in label:
        rank = 2
    elif "fine-tune" in label or "no rewind" in label:
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
    records = sorted(data["history"], key=lambda r: r["round"])
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
        variant=str((info or {}).get("variant") or variant_label(settings)),
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        settings=settings,
        records=records,
        info=info,
    )


def collect_runs(dirs: Sequence[Path | str]) -> list[Run]:
    """Load every run under ``dirs``: a run folder, a Hydra multirun sweep, or several of either.

    Runs come back ordered by experiment, then variant (tickets first), then seed.
    """
    runs = [load_run(path) for path in find_histories(Path(d) for d in dirs)]
    return sorted(
        runs,
        key=lambda r: (r.experiment, variant_order(r.variant, r.settings), r.seed if r.seed is not None else -1),
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ReportError(f"Cannot read {path}: {err}") from err


def _natural_key(text: str) -> list[Any]:
    """Sort ``job_10`` after ``job_9``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]
