"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no pyplot, no display needed).

Per experiment: (a) headline metric at early stop vs % weights remaining and (b) early-stop iteration vs % weights
remaining, with the per-level budget, both on an inverted log axis as in Frankle & Carbin's figures; (c) the
learning curve of every level of every series; (d) the % of each layer's weights remaining at every level.
Each is written in every requested format (``png``, ``pdf``, ``svg``).
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
from lightning_lottery.report.collect import TICKET, variant_order

DPI = 120
FORMATS = ("png", "pdf", "svg")
BAND = "95% CI of the mean over seeds"
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")
_DENSE_STYLES = ("--", (0, (1, 1)), "-.", (0, (5, 1, 1, 1)))
# Series are drawn slightly apart along the log x axis (this fraction of a decade between neighbours), so that
# identical series (e.g. every branch's shared dense level 0) stay visible instead of hiding one another.
DODGE_DECADES = 0.006


@dataclass(frozen=True)
class FigureFile:
    """A written figure (one file per format; ``path`` is the one the markdown embeds) and its caption."""

    path: Path
    title: str
    caption: str
    paths: tuple[Path, ...] = ()


def parse_formats(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"png,pdf"`` -> ``("png", "pdf")``; refuses formats other than png, pdf and svg."""
    items = [text] if isinstance(text, str) else list(text)
    formats = tuple(
        dict.fromkeys(f.strip().lower().lstrip(".") for item in items for f in item.split(",") if f.strip())
    )
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"figure formats {unknown or list(items)} are not among {', '.join(FORMATS)}")
    return formats


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
    """The levels' own % remaining as ticks, thinned so labels on the log axis do not collide."""
    points = sorted({v for v in values if v > 0}, reverse=True)
    if len(points) <= 2:
        return points
    # Keep ticks at least 1/max_ticks of the axis apart (in log space); always keep the sparsest level.
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


def dodge_factors(count: int, span_decades: float = 2.0) -> list[float]:
    """Multiplicative x offsets, centred on 1, that set ``count`` series apart on a log axis spanning
    ``span_decades`` (narrow axes get proportionally smaller offsets)."""
    step = min(DODGE_DECADES, span_decades / 300)
    return [10 ** (step * (i - (count - 1) / 2)) for i in range(count)]


def level_budgets(experiment: Experiment) -> list[tuple[str, dict[float, float]]]:
    """Per distinct budget: (the groups that have it, {% weights: optimizer steps a level's branch could train})."""
    out: list[tuple[str, dict[float, float]]] = []
    for group in experiment.groups:
        points: dict[float, float] = {}
        for series in experiment.series:
            if series.group is group:
                for k, budget in series.budget.items():
                    if budget is not None:
                        x = series.remaining[k]
                        points[x] = max(points.get(x, budget), budget)
        if not points:
            continue
        same = next((i for i, (_, other) in enumerate(out) if other == points), None)
        if same is None:
            out.append((group.describe(), points))
        elif out[same][0] and group.describe():
            out[same] = (f"{out[same][0]}; {group.describe()}", points)
    if len(out) == 1:  # one budget for every group: nothing to tell apart
        out = [("", out[0][1])]
    return out


def write_figures(experiment: Experiment, out: Path, formats: Sequence[str] = ("png",)) -> list[FigureFile]:
    """Draw the figures of one experiment into ``out``, each in every format; return them with captions."""
    name = slug(experiment.name)
    headline = experiment.headline
    weights = f"% of weights {experiment.weights_word}"
    files = []
    figure = draw_vs_sparsity(experiment, "metric")
    title = f"{experiment.name}: {headline.metric} at the early-stop iteration"
    caption = (
        f"{headline.metric} at the early-stop iteration vs. {weights} (log scale, sparser to the right). Lines: mean "
        f"over seeds; shaded: {BAND}; dashed controls; grey: dense network(s). Series are shifted slightly sideways so "
        "that overlapping ones stay visible."
    )
    files.append(_written(figure, out / f"{name}_{slug(headline.metric)}_vs_weights", formats, title, caption))
    figure = draw_vs_sparsity(experiment, "early_stop")
    title = f"{experiment.name}: early-stop iteration"
    caption = (
        f"Early-stop iteration (optimizer steps the branch trained until its best validation) vs. {weights}. "
        f"Lines: mean over seeds; shaded: {BAND}; dotted black: the budget a level could train."
    )
    files.append(_written(figure, out / f"{name}_early_stop_vs_weights", formats, title, caption))
    if any(run.settings.get("early_bird") for run in experiment.runs):
        title = f"{experiment.name}: {headline.metric} vs. the compute of the search"
        caption = (
            f"{headline.metric} at the early-stop iteration of each ticket level vs. the optimizer steps the ticket "
            "line took to reach that level (levels 0..r summed), with and without early-bird levels (You et al. 2020); "
            f"mean over seeds, shaded: {BAND}."
        )
        files.append(_written(draw_vs_compute(experiment), out / f"{name}_vs_compute", formats, title, caption))
    figure = draw_curves(experiment)
    if figure is not None:
        title = f"{experiment.name}: learning curves of every level"
        caption = (
            f"{curve_metric(experiment)} at every validation vs. iteration within the level, one line per level "
            f"coloured by {weights}, one panel per series; mean over seeds."
        )
        files.append(_written(figure, out / f"{name}_learning_curves", formats, title, caption))
    figure = draw_layer_sparsity(experiment)
    if figure is not None:
        title = f"{experiment.name}: weights remaining per layer"
        caption = (
            "% of each pruned tensor's weights remaining (log scale) at every level of the ticket's masks (the "
            "controls use the same per-tensor counts), one line per level; mean over seeds."
        )
        files.append(_written(figure, out / f"{name}_layer_sparsity", formats, title, caption))
    return files


def _written(figure: Figure, stem: Path, formats: Sequence[str], title: str, caption: str) -> FigureFile:
    FigureCanvasAgg(figure)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        figure.savefig(path, dpi=DPI, format=fmt)
        paths.append(path)
    return FigureFile(paths[0], title, caption, tuple(paths))


def _format_remaining_axis(ax, values: Sequence[float], word: str) -> None:
    """Log x axis, inverted: dense (100%) on the left, sparser to the right; ticks at the levels' values."""
    ax.set_xscale("log")
    positive = [v for v in values if v > 0]
    high, low = max(positive), min(positive)
    ax.set_xlim(high * 1.15, low / 1.15)  # reversed limits invert the axis
    ax.xaxis.set_major_locator(FixedLocator(remaining_ticks(positive)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: format_pct(v)))
    ax.set_xlabel(f"weights {word} (%, log scale)")


def _stat_of(series: Series, quantity: str) -> dict[int, Stat]:
    return series.metric if quantity == "metric" else series.early_stop


def draw_vs_sparsity(experiment: Experiment, quantity: str) -> Figure:
    """Mean over seeds per series with its 95% CI band, the dense networks as grey references and, for the early
    stop, the per-level budget."""
    scale = experiment.headline.scale if quantity == "metric" else 1.0
    fig = Figure(figsize=(7.5, 5.2), layout="constrained")
    ax = fig.add_subplot()
    handles: list = []
    xs: list[float] = []
    banded = False
    count = len(experiment.series)
    every_x = [x for s in experiment.series for x in s.remaining.values() if x > 0]
    span = math.log10(max(every_x) / min(every_x)) if every_x else 0.0
    for i, (series, dodge) in enumerate(zip(experiment.series, dodge_factors(count, span))):
        stats = _stat_of(series, quantity)
        rounds = [r for r in series.rounds if stats[r].n]
        if not rounds:
            continue
        levels = np.array([series.remaining[r] for r in rounds])
        x = levels * dodge
        mean = np.array([stats[r].mean for r in rounds]) * scale
        color = _COLORS[i % len(_COLORS)]
        ticket = variant_order(series.label, series.group.runs[0].settings)[0] == 0 and series.branch == TICKET
        (line,) = ax.plot(
            x,
            mean,
            marker=_MARKERS[i % len(_MARKERS)],
            color=color,
            linestyle="-" if ticket else "--",
            markerfacecolor=color if ticket else "white",
            linewidth=1.8,
            markersize=6,
            zorder=3 + count - i,  # the first series (the ticket) on top
        )
        line.set_label(f"{series.label} (n={len(series.runs)})")
        handles.append(line)
        if any(stats[r].n > 1 for r in rounds):
            lo = np.array([stats[r].ci[0] for r in rounds]) * scale
            hi = np.array([stats[r].ci[1] for r in rounds]) * scale
            ax.fill_between(x, lo, hi, color=color, alpha=0.15, linewidth=0, zorder=2)
            banded = True
        xs.extend(levels)  # ticks at the levels' own values, not at the nudged positions
    for j, reference in enumerate(experiment.dense_references):
        stat = reference.metric if quantity == "metric" else reference.early_stop
        if not stat.n:
            continue
        style = _DENSE_STYLES[j % len(_DENSE_STYLES)]
        line = ax.axhline(stat.mean * scale, color="0.45", linestyle=style, linewidth=1.2, zorder=1)
        where = f" [{reference.description}]" if reference.description else ""
        line.set_label(f"dense network (100% weights), mean of {stat.n}{where}")
        handles.append(line)
    if quantity == "early_stop":
        handles.extend(_draw_budgets(ax, experiment))
    if banded:
        handles.append(Patch(facecolor="0.5", alpha=0.3, label=f"shaded: {BAND}"))
    if xs:
        _format_remaining_axis(ax, xs, experiment.weights_word)
    ylabel = (
        f"{experiment.headline.label} at early stop"
        if quantity == "metric"
        else "early-stop iteration (optimizer steps in the level)"
    )
    if quantity == "early_stop":
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))  # whole steps, round ticks
    if quantity == "metric" and experiment.headline.better:
        ylabel = f"{ylabel}\n({experiment.headline.better})"
    ax.set_ylabel(ylabel)
    what = (
        f"{experiment.headline.metric} at the early-stop iteration" if quantity == "metric" else "early-stop iteration"
    )
    ax.set_title(f"{experiment.name}: {what}", fontsize=11)
    ax.grid(True, alpha=0.3)
    # Below the axes, outside them: the legend never covers data.
    longest = max((len(h.get_label()) for h in handles), default=0)
    fig.legend(handles=handles, loc="outside lower center", ncol=1 if longest > 48 else 2, frameon=False, fontsize=8)
    return fig


def draw_vs_compute(experiment: Experiment) -> Figure:
    """The headline metric of each ticket level against the optimizer steps the search took to reach it."""
    scale = experiment.headline.scale
    fig = Figure(figsize=(7.5, 5.0), layout="constrained")
    ax = fig.add_subplot()
    for i, series in enumerate(s for s in experiment.series if s.compute):
        rounds = [r for r in series.rounds if series.metric[r].n and series.compute.get(r) and series.compute[r].n]
        if not rounds:
            continue
        x = np.array([series.compute[r].mean for r in rounds])
        mean = np.array([series.metric[r].mean for r in rounds]) * scale
        color = _COLORS[i % len(_COLORS)]
        early_bird = bool(series.group.runs[0].settings.get("early_bird"))
        label = f"{series.label}{' (early-bird)' if early_bird else ''} (n={len(series.runs)})"
        ax.plot(x, mean, marker=_MARKERS[i % len(_MARKERS)], color=color, label=label, linewidth=1.8)
        if any(series.metric[r].n > 1 for r in rounds):
            lo = np.array([series.metric[r].ci[0] for r in rounds]) * scale
            hi = np.array([series.metric[r].ci[1] for r in rounds]) * scale
            ax.fill_between(x, lo, hi, color=color, alpha=0.15, linewidth=0)
    ax.set_xlabel("optimizer steps of the search up to the level (ticket line)")
    ax.set_ylabel(f"{experiment.headline.label} at early stop")
    ax.set_title(f"{experiment.name}: {experiment.headline.metric} vs. compute", fontsize=11)
    ax.grid(True, alpha=0.3)
    fig.legend(loc="outside lower center", ncol=1, frameon=False, fontsize=8)
    return fig


def _draw_budgets(ax, experiment: Experiment) -> list:
    """The budget of each level as a dotted black line (horizontal when every level has the same)."""
    handles = []
    budgets = level_budgets(experiment)
    for description, points in budgets:
        where = f" [{description}]" if description and len(budgets) > 1 else ""
        values = set(points.values())
        if len(values) == 1:
            (value,) = values
            line = ax.axhline(value, color="black", linestyle=":", linewidth=1.3, zorder=1)
            line.set_label(f"budget: {value:,.0f} steps per level{where}")
        else:
            x = sorted(points, reverse=True)
            (line,) = ax.plot(x, [points[v] for v in x], color="black", linestyle=":", linewidth=1.3, zorder=1)
            line.set_label(f"budget per level ({min(values):,.0f}-{max(values):,.0f} steps){where}")
        handles.append(line)
    if budgets:
        top = max(v for _, points in budgets for v in points.values())
        low, high = ax.get_ylim()
        ax.set_ylim(min(low, 0), max(high, top * 1.05))
    return handles


def curve_metric(experiment: Experiment) -> str | None:
    """What the learning curves show: the headline metric if the curves have it, else val_loss, else the monitor."""
    columns = {
        key
        for series in experiment.series
        for run in series.runs
        for k in series.rounds
        for row in run.curve(k, series.branch)
        for key in row
    }
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


def _round_colors(count: int) -> tuple[ListedColormap, BoundaryNorm]:
    # Viridis without its palest yellow, which vanishes on white; one discrete colour per level.
    cmap = ListedColormap(colormaps["viridis"](np.linspace(0.0, 0.85, max(count, 1))))
    edges = np.arange(count + 1) - 0.5
    return cmap, BoundaryNorm(edges, cmap.N)


def _level_colorbar(fig: Figure, axes: list, experiment: Experiment, rounds: list[int]) -> None:
    cmap, norm = _round_colors(len(rounds))
    colorbar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, pad=0.02, aspect=30)
    remaining = [experiment.remaining_range(r)[0] for r in rounds]
    shown = _thin(list(range(len(rounds))), 12)
    colorbar.set_ticks(shown)
    colorbar.set_ticklabels([f"{format_pct(remaining[i])}% (level {rounds[i]})" for i in shown])
    colorbar.ax.tick_params(labelsize=8)
    colorbar.set_label(f"weights {experiment.weights_word}")


def draw_curves(experiment: Experiment) -> Figure | None:
    """One panel per series; one line per level, coloured by level, the colourbar giving % remaining."""
    metric = curve_metric(experiment)
    if metric is None:
        return None
    headline = experiment.headline
    scale = headline.scale if metric == headline.metric else 1.0
    label = headline.label if metric == headline.metric else metric
    rounds = experiment.rounds
    cmap, _ = _round_colors(len(rounds))
    n = len(experiment.series)
    ncols = n if n <= 3 else math.ceil(math.sqrt(n))  # 4 series: 2x2, not 3+1 with a hole
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.3 * ncols + 1.2, 3.5 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    positive = True
    for ax, series in zip(axes, experiment.series):
        for index, round_index in enumerate(rounds):
            curves = [run.curve(round_index, series.branch) for run in series.runs]
            steps, values = mean_curve(curves, metric)
            if len(steps):
                ax.plot(steps, values * scale, color=cmap(index), linewidth=1.4, marker="." if len(steps) < 30 else "")
                positive = positive and bool((values > 0).all())
        seeds = len(series.runs)
        note = f"mean of {seeds} seeds" if seeds > 1 else f"seed {series.runs[0].seed}, n=1"
        ax.set_title(f"{series.label}\n({note})", fontsize=9)
        ax.grid(True, alpha=0.3)
    for ax in axes[n:]:
        ax.remove()
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))  # whole optimizer steps
    used = list(axes[:n])
    for i, ax in enumerate(used):
        if i + ncols >= n:  # nothing below this panel: it carries the x axis
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel("iteration in the level (optimizer steps)")
    for ax in used[::ncols]:
        ax.set_ylabel(label)
    if ("ppl" in metric or "perplexity" in metric) and positive:
        _log_if_wide(used[0])
    _level_colorbar(fig, used, experiment, rounds)
    fig.suptitle(f"{experiment.name}: learning curves ({metric}) of every level", fontsize=11)
    return fig


def layer_remaining(experiment: Experiment) -> list[tuple[str, list[str], dict[int, list[float]]]]:
    """Per group with a ticket series: (description, tensor names, {level: % of each tensor remaining}), the mean
    over the group's runs of the records' ``tensor_sparsity``."""
    out = []
    for series in experiment.series:
        if series.branch != TICKET:
            continue
        by_level: dict[int, dict[str, list[float]]] = {}
        for run in series.runs:
            for record in run.branch_records(TICKET):
                for name, sparsity in (record.get("tensor_sparsity") or {}).items():
                    by_level.setdefault(record["round"], {}).setdefault(name, []).append(100 * (1 - sparsity))
        names = list(dict.fromkeys(n for level in by_level.values() for n in level))
        if names:
            table = {
                k: [float(np.mean(level[n])) if n in level else math.nan for n in names]
                for k, level in sorted(by_level.items())
            }
            out.append((series.label, names, table))
    return out


def draw_layer_sparsity(experiment: Experiment) -> Figure | None:
    """% of each tensor's weights remaining, one line per level, one panel per ticket series."""
    panels = layer_remaining(experiment)
    if not panels:
        return None
    rounds = experiment.rounds
    cmap, _ = _round_colors(len(rounds))
    width = max(len(names) for _, names, _ in panels)
    fig = Figure(figsize=(max(6.0, 0.45 * width + 3), 3.6 * len(panels) + 1.0), layout="constrained")
    axes = list(fig.subplots(len(panels), 1, squeeze=False).ravel())
    for ax, (label, names, table) in zip(axes, panels):
        positions = np.arange(len(names))
        for k, values in table.items():
            color = cmap(rounds.index(k)) if k in rounds else "0.5"
            ax.plot(positions, values, color=color, marker="o", markersize=3, linewidth=1.2)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_pct(v)))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: format_pct(v)))
        ax.set_xticks(positions)
        ax.set_xticklabels([_short(n) for n in names], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("weights remaining (%)")
        ax.set_title(label, fontsize=9)
        ax.grid(True, alpha=0.3)
    _level_colorbar(fig, axes, experiment, rounds)
    fig.suptitle(f"{experiment.name}: weights remaining per layer at every level", fontsize=11)
    return fig


def _short(name: str) -> str:
    return name.removeprefix("model.").removesuffix(".weight")


def _log_if_wide(ax) -> None:
    """Perplexities of sparse levels early in training can dwarf the rest: use a log axis when they span 10x."""
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
