"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no pyplot, no display needed).

Per experiment: (a) headline metric at early stop vs % weights remaining, (b) early-stop iteration vs % weights
remaining, both on an inverted log axis as in Frankle & Carbin's figures; (c) the learning curve of every round.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

from lightning_lottery.report.aggregate import Experiment, Series, Stat

DPI = 120
BAND = "min–max over seeds"
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")


@dataclass(frozen=True)
class FigureFile:
    """A written figure and the caption the markdown puts under it."""

    path: Path
    title: str
    caption: str


def slug(name: str) -> str:
    """A file-name-safe version of an experiment name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_.") or "experiment"


def format_pct(value: float) -> str:
    """% of weights remaining as Frankle & Carbin print it: 100, 51.3, 7.0, 0.36."""
    if value >= 99.95:
        return "100"
    if value >= 1.0:
        return f"{value:.1f}"
    return f"{value:.2g}"


def remaining_ticks(values: Sequence[float], max_ticks: int = 12) -> list[float]:
    """The rounds' own % remaining as ticks, thinned so labels on the log axis do not collide."""
    points = sorted({v for v in values if v > 0}, reverse=True)
    if len(points) <= 2:
        return points
    # Keep ticks at least 1/max_ticks of the axis apart (in log space); always keep the sparsest round.
    gap = max(math.log10(points[0] / points[-1]) / max_ticks, 0.06)
    kept = [points[0]]
    for value in points[1:]:
        if math.log10(kept[-1] / value) >= gap:
            kept.append(value)
    if kept[-1] != points[-1]:
        if len(kept) > 1 and math.log10(kept[-1] / points[-1]) < gap:
            kept.pop()
        kept.append(points[-1])
    return kept


def write_figures(experiment: Experiment, out: Path) -> list[FigureFile]:
    """Draw the three figures of one experiment into ``out``; return them with captions."""
    name = slug(experiment.name)
    headline = experiment.headline
    files = [
        _plot_vs_sparsity(
            experiment,
            out / f"{name}_{slug(headline.metric)}_vs_weights.png",
            quantity="metric",
            ylabel=f"{headline.label} at early stop",
            title=f"{experiment.name}: {headline.metric} at the early-stop iteration",
        ),
        _plot_vs_sparsity(
            experiment,
            out / f"{name}_early_stop_vs_weights.png",
            quantity="early_stop",
            ylabel="early-stop iteration (optimizer steps in the round)",
            title=f"{experiment.name}: early-stop iteration",
        ),
    ]
    curves = _plot_curves(experiment, out / f"{name}_learning_curves.png")
    if curves is not None:
        files.append(curves)
    return files


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)


def _format_remaining_axis(ax, values: Sequence[float]) -> None:
    """Log x axis, inverted: dense (100%) on the left, sparser to the right; ticks at the rounds' values."""
    ax.set_xscale("log")
    positive = [v for v in values if v > 0]
    high, low = max(positive), min(positive)
    ax.set_xlim(high * 1.15, low / 1.15)  # reversed limits invert the axis
    ax.xaxis.set_major_locator(FixedLocator(remaining_ticks(positive)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: format_pct(v)))
    ax.set_xlabel("weights remaining (%, log scale)")


def _stat_of(series: Series, quantity: str) -> dict[int, Stat]:
    return series.metric if quantity == "metric" else series.early_stop


def _plot_vs_sparsity(experiment: Experiment, path: Path, quantity: str, ylabel: str, title: str) -> FigureFile:
    """Mean over seeds per variant with a min–max band, and the dense value as a dashed reference."""
    scale = experiment.headline.scale if quantity == "metric" else 1.0
    fig = Figure(figsize=(7.5, 5.0), layout="constrained")
    ax = fig.add_subplot()
    handles: list = []
    xs: list[float] = []
    banded = False
    for i, series in enumerate(experiment.series):
        stats = _stat_of(series, quantity)
        rounds = [r for r in series.rounds if stats[r].n]
        if not rounds:
            continue
        x = np.array([series.remaining[r] for r in rounds])
        mean = np.array([stats[r].mean for r in rounds]) * scale
        color = _COLORS[i % len(_COLORS)]
        (line,) = ax.plot(
            x, mean, marker=_MARKERS[i % len(_MARKERS)], color=color, linewidth=1.8, markersize=6, zorder=3
        )
        line.set_label(f"{series.variant} (n={len(series.runs)})")
        handles.append(line)
        if any(stats[r].n > 1 for r in rounds):
            lo = np.array([stats[r].lo for r in rounds]) * scale
            hi = np.array([stats[r].hi for r in rounds]) * scale
            ax.fill_between(x, lo, hi, color=color, alpha=0.18, linewidth=0, zorder=2)
            banded = True
        xs.extend(x)
    dense = experiment.dense(quantity)
    if dense is not None:
        reference = ax.axhline(dense.mean * scale, color="0.3", linestyle="--", linewidth=1.2, zorder=1)
        reference.set_label(f"dense network (100% weights), mean of {dense.n}")
        handles.append(reference)
    if banded:
        handles.append(Patch(facecolor="0.5", alpha=0.3, label=f"shaded: {BAND}"))
    if xs:
        _format_remaining_axis(ax, xs)
    ax.set_ylabel(ylabel)
    if quantity == "early_stop":
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))  # whole steps, round ticks
    if quantity == "metric" and experiment.headline.better:
        ax.set_ylabel(f"{ylabel}\n({experiment.headline.better})")
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3)
    # Below the axes, outside them: the legend never covers data.
    fig.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False, fontsize=9)
    _save(fig, path)
    metric = experiment.headline.metric
    what = f"{metric} at the early-stop iteration" if quantity == "metric" else "Early-stop iteration"
    caption = (
        f"{what} vs. % of weights remaining (log scale, sparser to the right). "
        f"Lines: mean over seeds; shaded: {BAND}; dashed: dense network."
    )
    return FigureFile(path, title, caption)


def curve_metric(experiment: Experiment) -> str | None:
    """What the learning curves show: the headline metric if the curves have it, else val_loss, else the monitor."""
    columns = {key for run in experiment.runs for r in run.records for row in run.curve(r["round"]) for key in row}
    monitor = next((run.monitor for run in experiment.runs if run.monitor), None)
    return next((m for m in (experiment.headline.metric, "val_loss", monitor) if m and m in columns), None)


def mean_curve(curves: Sequence[Sequence[dict[str, float]]], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds at each ``round_step`` (seeds that stopped early simply drop out of the later steps)."""
    by_step: dict[float, list[float]] = {}
    for rows in curves:
        for row in rows:
            value = row.get(metric, math.nan)
            if math.isfinite(value) and math.isfinite(row.get("round_step", math.nan)):
                by_step.setdefault(row["round_step"], []).append(value)
    steps = sorted(by_step)
    return np.array(steps), np.array([float(np.mean(by_step[s])) for s in steps])


def _round_colors(rounds: Sequence[int]) -> tuple[ListedColormap, BoundaryNorm]:
    # Viridis without its palest yellow, which vanishes on white; one discrete colour per round.
    cmap = ListedColormap(colormaps["viridis"](np.linspace(0.0, 0.85, max(len(rounds), 1))))
    edges = np.arange(len(rounds) + 1) - 0.5
    return cmap, BoundaryNorm(edges, cmap.N)


def _plot_curves(experiment: Experiment, path: Path) -> FigureFile | None:
    """One panel per variant; one line per round, coloured by round, the colourbar giving % remaining."""
    metric = curve_metric(experiment)
    if metric is None:
        return None
    headline = experiment.headline
    scale = headline.scale if metric == headline.metric else 1.0
    label = headline.label if metric == headline.metric else metric
    rounds = experiment.rounds
    cmap, norm = _round_colors(rounds)
    n = len(experiment.series)
    ncols = n if n <= 3 else math.ceil(math.sqrt(n))  # 4 variants: 2x2, not 3+1 with a hole
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.3 * ncols + 1.2, 3.5 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    positive = True
    for ax, series in zip(axes, experiment.series):
        for index, round_index in enumerate(rounds):
            steps, values = mean_curve([run.curve(round_index) for run in series.runs], metric)
            if len(steps):
                ax.plot(steps, values * scale, color=cmap(index), linewidth=1.4, marker="." if len(steps) < 30 else "")
                positive = positive and bool((values > 0).all())
        seeds = len(series.runs)
        note = f"mean of {seeds} seeds" if seeds > 1 else f"seed {series.runs[0].seed}"
        ax.set_title(f"{series.variant}\n({note})", fontsize=10)
        ax.grid(True, alpha=0.3)
    for ax in axes[n:]:
        ax.remove()
    axes[0].xaxis.set_major_locator(
        MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10])
    )  # shared by all panels: whole optimizer steps
    used = axes[:n]
    for i, ax in enumerate(used):
        if i + ncols >= n:  # nothing below this panel: it carries the x axis
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel("iteration in the round (optimizer steps)")
    for ax in used[::ncols]:
        ax.set_ylabel(label)
    if ("ppl" in metric or "perplexity" in metric) and positive:
        _log_if_wide(used[0])
    colorbar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(used), pad=0.02, aspect=30)
    remaining = [experiment.remaining_range(r)[0] for r in rounds]
    shown = _thin(list(range(len(rounds))), 12)
    colorbar.set_ticks(shown)
    colorbar.set_ticklabels([f"{format_pct(remaining[i])}% (round {rounds[i]})" for i in shown])
    colorbar.ax.tick_params(labelsize=8)
    colorbar.set_label("weights remaining")
    title = f"{experiment.name}: learning curves ({metric}) of every round"
    fig.suptitle(title, fontsize=11)
    _save(fig, path)
    caption = (
        f"{metric} at every validation vs. iteration within the round, one line per round coloured by % of "
        "weights remaining; mean over seeds where a variant has several."
    )
    return FigureFile(path, title, caption)


def _log_if_wide(ax) -> None:
    """Perplexities of sparse rounds early in training can dwarf the rest: use a log axis when they span 10x."""
    low, high = ax.get_ylim()
    if low > 0 and high / low > 10:
        ax.set_yscale("log")


def _thin(items: list[int], most: int) -> list[int]:
    """At most ``most`` evenly spaced items, the first and last always kept."""
    if len(items) <= most:
        return items
    step = math.ceil((len(items) - 1) / (most - 1))
    kept = items[::step]
    kept[-1] = items[-1]
    return kept
