"""The report's mask analytics: how much tickets overlap (Jaccard) and how sparsity spreads over layers.

Per experiment, from the ticket files of its runs (``lottery/round_XX/<branch>/ticket.safetensors``):

- consecutive levels of a run (r−1 → r), mean over seeds;
- between seeds of a variant at the same level, mean over every pair of seeds;
- between branches of a level (the ticket vs. each control), mean over seeds;
- between variants: every other variant against the experiment's first (e.g. a transferred ticket against the
  ticket found on the target, one-shot against iterative), matched by % of weights remaining and paired by seed
  where both have the seed;
- per-layer sparsity by level.

Every overlap comes with its chance level: the Jaccard overlap of random masks with the same per-tensor counts.
Runs without ticket files (``save_tickets=False``) are left out.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from lightning_lottery.analysis.masks import (
    MAIN_BRANCH,
    MaskComparison,
    branch_overlaps,
    find_tickets,
    layer_sparsity,
    level_overlaps,
    run_overlaps,
)
from lightning_lottery.report.collect import Run
from lightning_lottery.report.figures import DPI, format_pct, remaining_ticks, slug
from lightning_lottery.report.oneshot import shown_level

FOLDER = "masks"  # under the report folder: the CSVs and figures of this section
OVERLAP_CSV = "mask_overlap.csv"
SPARSITY_CSV = "layer_sparsity.csv"
_SAME_LEVEL = 0.005  # relative difference in % remaining of two seeds' tickets at one level
_MAX_TABLE_TENSORS = 12  # wider per-layer tables go to the CSV only
_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")


@dataclass
class OverlapSeries:
    """One column of the overlap table: a comparison within (or across) variants, per level, over seeds/pairs."""

    variant: str
    comparison: str
    jaccard: dict[int, list[float]] = field(default_factory=dict)
    chance: dict[int, list[float]] = field(default_factory=dict)
    remaining: dict[int, list[float]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.variant}: {self.comparison}"

    def add(self, comparison: MaskComparison, level: int) -> None:
        """Record ``comparison`` in the row of ``level``; two dense tickets (always equal) are left out."""
        overlap = comparison.overlap
        if overlap.kept_a == overlap.kept_b == overlap.total:
            return
        r = level
        self.jaccard.setdefault(r, []).append(comparison.overlap.jaccard)
        self.chance.setdefault(r, []).append(comparison.overlap.chance)
        self.remaining.setdefault(r, []).append(comparison.remaining_pct_b)


def _with_tickets(runs: Sequence[Run]) -> list[Run]:
    kept = []
    for run in runs:
        try:
            find_tickets(run.lottery_dir)
        except FileNotFoundError:
            continue
        kept.append(run)
    return kept


def _by_key(runs: Sequence[Run], key: str) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(str(getattr(run, key)), []).append(run)
    return groups


def _seed_pairs(a: Sequence[Run], b: Sequence[Run]) -> list[tuple[Run, Run]]:
    """Runs of two variants paired by seed where they share seeds, else every pair."""
    seeds_b = {run.seed: run for run in b if run.seed is not None}
    paired = [(run, seeds_b[run.seed]) for run in a if run.seed in seeds_b]
    return paired or [(x, y) for x in a for y in b]


def _distinct_seeds(x: Run, y: Run) -> bool:
    return x.seed is None or y.seed is None or x.seed != y.seed


def experiment_overlaps(runs: Sequence[Run]) -> list[OverlapSeries]:
    """Every overlap series of one experiment's runs (variants in the order given), by the levels the report
    shows (one-shot runs aligned with iterative ones)."""
    variants = _by_key(runs, "label")
    series: list[OverlapSeries] = []
    for variant, members in variants.items():
        levels = OverlapSeries(variant, "consecutive levels")
        branches: dict[str, OverlapSeries] = {}
        for run in members:
            for c in level_overlaps(run.lottery_dir):
                levels.add(c, shown_level(run, c.round))
            for c in branch_overlaps(run.lottery_dir):
                comparison = f"{MAIN_BRANCH} vs {c.b}"
                branches.setdefault(c.b, OverlapSeries(variant, comparison)).add(c, shown_level(run, c.round))
        seeds = OverlapSeries(variant, "between seeds")
        for x, y in combinations(members, 2):
            if _distinct_seeds(x, y):  # at the same % remaining: one-shot runs of other targets do not pair up
                for c in run_overlaps(x.lottery_dir, y.lottery_dir, match="sparsity", tolerance=_SAME_LEVEL):
                    seeds.add(c, shown_level(x, c.round_a))
        # A branch that trains the ticket's own mask (e.g. reinit) overlaps it fully at every level: left out.
        differing = [b for b in branches.values() if any(v != 1.0 for vs in b.jaccard.values() for v in vs)]
        series += [s for s in (levels, seeds, *differing) if s.jaccard]
    names = list(variants)
    for other in names[1:]:
        across = OverlapSeries(other, f"vs {names[0]}")
        for x, y in _seed_pairs(variants[other], variants[names[0]]):
            for c in run_overlaps(y.lottery_dir, x.lottery_dir, match="sparsity"):  # in the rows of x's levels
                across.add(c, shown_level(x, c.round))
        if across.jaccard:
            series.append(across)
    return series


def experiment_layer_sparsity(runs: Sequence[Run]) -> dict[str, dict[int, dict[str, float]]]:
    """Per variant, level and tensor: the % of weights pruned, mean over seeds (main line)."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for variant, members in _by_key(runs, "label").items():
        values: dict[int, dict[str, list[float]]] = {}
        for run in members:
            for r, tensors in layer_sparsity(run.lottery_dir).items():
                for name, sparsity in tensors.items():
                    values.setdefault(shown_level(run, r), {}).setdefault(name, []).append(100.0 * sparsity)
        out[variant] = {r: {n: statistics.fmean(v) for n, v in t.items()} for r, t in sorted(values.items())}
    return out


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def _cell(series: OverlapSeries, r: int) -> str:
    if r not in series.jaccard:
        return "—"
    values = series.jaccard[r]
    spread = f" [{min(values):.3f}–{max(values):.3f}]" if len(values) > 1 else ""
    return f"{_mean(values):.3f}{spread} ({_mean(series.chance[r]):.3f})"


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def overlap_table(series: Sequence[OverlapSeries]) -> list[str]:
    """One variant's comparisons (columns) by its levels (rows)."""
    rounds = sorted({r for s in series for r in s.jaccard})
    header = ["Round", "Weights remaining (%)", *(_escape(s.comparison) for s in series)]
    lines = ["| " + " | ".join(header) + " |", "|" + " ---: |" * len(header)]
    for r in rounds:
        remaining = [v for s in series for v in s.remaining.get(r, [])]
        cells = [_cell(s, r) for s in series]
        lines.append(f"| {r} | {format_pct(_mean(remaining))} | " + " | ".join(cells) + " |")
    return lines


def sparsity_table(by_level: dict[int, dict[str, float]]) -> list[str]:
    names = list(next(iter(by_level.values()), {}))
    header = ["Round", *(f"`{n}`" for n in names)]
    lines = ["| " + " | ".join(header) + " |", "|" + " ---: |" * len(header)]
    for r, tensors in by_level.items():
        lines.append(f"| {r} | " + " | ".join(f"{tensors.get(n, float('nan')):.1f}" for n in names) + " |")
    return lines


def _plot(series: Sequence[OverlapSeries], path: Path, title: str) -> None:
    """Jaccard overlap vs. % of weights remaining (inverted log axis), chance dotted in the same colour."""
    fig = Figure(figsize=(7.5, 5.0), layout="constrained")
    ax = fig.add_subplot()
    xs: list[float] = []
    for i, s in enumerate(series):
        rounds = sorted(s.jaccard)
        x = np.array([_mean(s.remaining[r]) for r in rounds])
        color = _COLORS[i % len(_COLORS)]
        ax.plot(x, [_mean(s.jaccard[r]) for r in rounds], marker="o", color=color, label=s.label)
        ax.plot(x, [_mean(s.chance[r]) for r in rounds], linestyle=":", color=color, linewidth=1.2)
        if any(len(v) > 1 for v in s.jaccard.values()):
            lo = [min(s.jaccard[r]) for r in rounds]
            hi = [max(s.jaccard[r]) for r in rounds]
            ax.fill_between(x, lo, hi, color=color, alpha=0.15, linewidth=0)
        xs += [v for v in x if v > 0]
    if xs:
        ax.set_xscale("log")
        ax.set_xlim(max(xs) * 1.15, min(xs) / 1.15)
        ax.xaxis.set_major_locator(FixedLocator(remaining_ticks(xs)))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: format_pct(v)))
    ax.set_xlabel("weights remaining (%, log scale)")
    ax.set_ylabel("Jaccard overlap of kept weights")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3)
    fig.legend(loc="outside lower center", ncol=2, frameon=False, fontsize=8)
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)


def _csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def write_mask_analytics(runs: Sequence[Run], out: Path) -> list[str]:
    """Write ``mask_overlap.csv``, ``layer_sparsity.csv`` and one overlap figure per experiment into ``out/masks``;
    return the markdown section for ``report.md`` (empty when no run saved tickets)."""
    runs = _with_tickets(runs)
    if not runs:
        return []
    folder = out / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Mask analytics",
        "",
        "Jaccard overlap |A ∩ B| / |A ∪ B| of the weights two tickets keep, pooled over the pruned tensors. Cells: "
        "mean [min–max over seeds or seed pairs] (chance: the overlap of random masks with the same per-tensor "
        "counts). *Consecutive levels* compares each level with the one before (nested masks give the fraction "
        "kept), *between seeds* every pair of seeds at a level, *ticket vs X* the branches of a level (branches "
        "that train the ticket's own mask, such as reinit, are left out), *vs V* another variant at the closest % "
        "of weights remaining. "
        f"[`{FOLDER}/{OVERLAP_CSV}`]({FOLDER}/{OVERLAP_CSV}) and [`{FOLDER}/{SPARSITY_CSV}`]({FOLDER}/{SPARSITY_CSV}) "
        "have every value.",
        "",
    ]
    overlap_rows: list[dict[str, Any]] = []
    sparsity_rows: list[dict[str, Any]] = []
    for experiment, members in _by_key(runs, "experiment").items():
        series = experiment_overlaps(members)
        lines += [f"## {experiment}: mask overlap", ""]
        if series:
            figure = folder / f"{slug(experiment)}_mask_overlap.png"
            _plot(series, figure, f"{experiment}: mask overlap (dotted: chance)")
            for variant in dict.fromkeys(s.variant for s in series):
                table = overlap_table([s for s in series if s.variant == variant])
                lines += [f"**{_escape(variant)}**", "", *table, ""]
            lines += [f"![{experiment}: mask overlap]({FOLDER}/{figure.name})", ""]
        else:
            lines += ["(one ticket per run: nothing to compare)", ""]
        for s in series:
            for r in sorted(s.jaccard):
                overlap_rows.append(
                    {
                        "experiment": experiment,
                        "variant": s.variant,
                        "comparison": s.comparison,
                        "round": r,
                        "remaining_pct": _mean(s.remaining[r]),
                        "jaccard": _mean(s.jaccard[r]),
                        "jaccard_min": min(s.jaccard[r]),
                        "jaccard_max": max(s.jaccard[r]),
                        "chance": _mean(s.chance[r]),
                        "n": len(s.jaccard[r]),
                    }
                )
        lines += _sparsity_section(experiment, experiment_layer_sparsity(members), sparsity_rows)
    _csv(folder / OVERLAP_CSV, list(overlap_rows[0]) if overlap_rows else ["experiment"], overlap_rows)
    _csv(folder / SPARSITY_CSV, ["experiment", "variant", "round", "tensor", "sparsity_pct"], sparsity_rows)
    return lines


def _sparsity_section(
    experiment: str, by_variant: dict[str, dict[int, dict[str, float]]], rows: list[dict[str, Any]]
) -> list[str]:
    lines = [f"## {experiment}: per-layer sparsity (% of weights pruned, mean over seeds)", ""]
    shown: list[tuple[str, dict[int, dict[str, float]]]] = []
    for variant, by_level in by_variant.items():
        for r, tensors in by_level.items():
            rows += [
                {"experiment": experiment, "variant": variant, "round": r, "tensor": n, "sparsity_pct": v}
                for n, v in tensors.items()
            ]
        same = next((name for name, table in shown if table == by_level), None)
        if same is not None:
            lines += [f"{_escape(variant)}: as {_escape(same)}.", ""]
            continue
        shown.append((variant, by_level))
        width = len(next(iter(by_level.values()), {}))
        lines += [f"**{_escape(variant)}**", ""]
        lines += sparsity_table(by_level) if width <= _MAX_TABLE_TENSORS else [f"({width} tensors: see the CSV.)"]
        lines.append("")
    return lines
