"""``write_report``: collect runs, aggregate them, write ``summary.csv``, the figures and ``report.md``."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_lottery.report.aggregate import build_experiments, summary_rows
from lightning_lottery.report.collect import collect_runs
from lightning_lottery.report.figures import FigureFile, parse_formats, slug, write_figures
from lightning_lottery.report.markdown import render
from lightning_lottery.report.oneshot import align_one_shot
from lightning_lottery.report.overlap import write_mask_analytics

# Leading columns of summary.csv; the metric columns (at_best.*, final.*) follow, sorted.
SUMMARY_COLUMNS = (
    "experiment",
    "variant",
    "branch",
    "group",
    "seed",
    "run",
    "round",
    "remaining_pct",
    "weights_pct",
    "sparsity",
    "monitor",
    "best",
    "best_step",
    "best_round_step",
    "best_epoch",
    "start_step",
    "end_step",
    "budget",
    "steps",
    "headline_metric",
    "headline",
    "train_acc",
    "generalisation_gap",
)


def write_summary_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """One row per (run, branch, level); metric columns are the union over runs (empty where a run lacks one)."""
    extra = {key for row in rows for key in row if key not in SUMMARY_COLUMNS}
    columns = [
        *SUMMARY_COLUMNS,
        *sorted(k for k in extra if k.startswith("at_best.")),
        *sorted(k for k in extra if k.startswith("final.")),
    ]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_report(
    dirs: Sequence[Path | str],
    out: Path | str | None = None,
    metric: str | None = None,
    formats: str | Sequence[str] = ("png",),
) -> Path:
    """Report on every lottery search under ``dirs``; return the path of ``report.md``.

    Args:
        dirs: run folders, Hydra multirun sweep folders, or any folders above them; every ``history.json``
            found recursively is one run.
        out: folder for ``report.md``, ``summary.csv`` and the figures; default ``<first dir>/report``.
        metric: the headline metric (a name in the records' ``metrics``); default the first of ``test_acc``,
            ``val_acc``, ``test_ppl``, ``val_ppl`` that every run of an experiment recorded, else its monitor.
        formats: figure formats, ``"png"``, ``"pdf"``, ``"svg"`` (a list or ``"png,pdf"``); the first is embedded.

    Raises:
        ReportError: no ``history.json`` under ``dirs``, an unreadable one, or no such metric.
        ValueError: an unknown figure format.
    """
    formats = parse_formats(formats)
    dirs = [Path(d) for d in dirs]
    if not dirs:
        raise ValueError("write_report needs at least one folder to search")
    runs = align_one_shot(collect_runs(dirs))
    experiments = build_experiments(runs, metric)
    first = dirs[0] if dirs[0].is_dir() else dirs[0].parent
    out = Path(out) if out is not None else first / "report"
    out.mkdir(parents=True, exist_ok=True)
    write_summary_csv(summary_rows(experiments), out / "summary.csv")
    figures: dict[str, list[FigureFile]] = {}
    used: set[str] = set()
    for experiment in experiments:
        # Two names may slug alike ("a b", "a_b"): give each experiment its own figure files.
        folder_name = slug(experiment.name)
        target = out if folder_name not in used else out / f"{folder_name}_{len(used)}"
        used.add(folder_name)
        figures[experiment.name] = write_figures(experiment, target, formats)
    path = out / "report.md"
    masks_section = write_mask_analytics(runs, out)
    path.write_text("\n".join([render(experiments, figures, dirs, out), *masks_section]) + "\n")
    return path
