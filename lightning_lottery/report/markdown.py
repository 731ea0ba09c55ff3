"""``report.md``: per experiment, the series and what sets them apart, tables by level (headline metric, early-stop
iteration, train accuracy and train-test gap when logged), the figures, and the runs included."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from lightning_lottery.report.aggregate import Experiment, Series, Stat
from lightning_lottery.report.figures import BAND, FigureFile, format_pct


def decimals(value: float) -> int:
    """Digits after the point for a value of this size: 0.9812, 98.12, 112.3, 1234."""
    size = abs(value)
    if not math.isfinite(size) or size >= 1000:
        return 0
    if size >= 100:
        return 1
    if size >= 1:
        return 2
    return 4


def format_stat(stat: Stat, scale: float = 1.0, digits: int | None = None) -> str:
    """``mean ± h (n=k)`` with h the half-width of the 95% CI; ``mean (n=1, no CI)`` for one seed; an em dash
    when no seed has a value."""
    if stat.n == 0:
        return "—"
    mean = stat.mean * scale
    d = decimals(mean) if digits is None else digits
    if stat.n == 1:
        return f"{mean:.{d}f} (n=1, no CI)"
    return f"{mean:.{d}f} ± {stat.half_width * scale:.{d}f} (n={stat.n})"


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def _remaining_cell(experiment: Experiment, round_index: int) -> str:
    low, high = experiment.remaining_range(round_index)
    # Series of one experiment may follow other schedules; say so instead of hiding it.
    return format_pct(low) if high - low < 0.05 else f"{format_pct(low)}–{format_pct(high)}"


def _best_series(stats: Sequence[Stat], higher_is_better: bool | None) -> set[int]:
    """Indices of the series with the best mean in a level (none when the direction is unknown)."""
    means = [(i, s.mean) for i, s in enumerate(stats) if s.n]
    if higher_is_better is None or len(means) < 2:
        return set()
    best = (max if higher_is_better else min)(m for _, m in means)
    return {i for i, m in means if math.isclose(m, best, rel_tol=1e-12, abs_tol=1e-12)}


def _stats(series: Series, quantity: str) -> dict[int, Stat]:
    return {"metric": series.metric, "early_stop": series.early_stop, "train_acc": series.train_acc}.get(
        quantity, series.gap
    )


def round_table(experiment: Experiment, quantity: str) -> list[str]:
    """Markdown rows: one per level, one column per series; ``quantity``: ``"metric"``, ``"early_stop"``,
    ``"train_acc"`` or ``"gap"`` (the last two in percentage points when the headline is an accuracy)."""
    headline = experiment.headline
    series = experiment.series
    weights = f"Weights {experiment.weights_word} (%)"
    header = ["Level", weights, *(_escape(s.label) for s in series)]
    if quantity == "early_stop":
        header.append("Budget (steps)")
    lines = ["| " + " | ".join(header) + " |", "|" + " ---: |" * len(header)]
    scale = headline.scale if quantity == "metric" else (100.0 if quantity in ("train_acc", "gap") else 1.0)
    # One number of decimals per table, from its typical value: 98.12 next to 100.00, not next to 100.0.
    typical = [abs(st.mean) * scale for s in series for st in _stats(s, quantity).values() if st.n]
    digits = 0 if quantity == "early_stop" else (decimals(statistics.median(typical)) if typical else 2)
    empty = Stat(())
    for round_index in experiment.rounds:
        stats = [_stats(s, quantity).get(round_index, empty) for s in series]
        cells = [format_stat(st, scale, digits) for st in stats]
        if quantity == "metric":
            for i in _best_series(stats, headline.higher_is_better):
                cells[i] = f"**{cells[i]}**"
        if quantity == "early_stop":
            budgets = {b for s in series if (b := s.budget.get(round_index)) is not None}
            cells.append(" / ".join(f"{b:,.0f}" for b in sorted(budgets)) or "—")
        lines.append(f"| {round_index} | {_remaining_cell(experiment, round_index)} | " + " | ".join(cells) + " |")
    return lines


def _link(target: Path, out: Path) -> str:
    return Path(os.path.relpath(target.resolve(), out.resolve())).as_posix()


def _series_lines(experiment: Experiment) -> list[str]:
    """Each series with its seeds and the settings that set its group apart."""
    lines = []
    for series in experiment.series:
        seeds = sorted(s for s in series.seeds if s is not None)
        n = len(series.runs)
        what = f"n={n} run{'s' if n != 1 else ''} (seeds {', '.join(map(str, seeds)) or '?'})"
        if n == 1:
            what += ", a single run: no confidence interval"
        settings = series.group.describe()
        lines.append(
            f"- **{_escape(series.label)}**: branch `{series.branch}` of group `{series.group.key}`, {what}"
            + (f"; {settings}" if settings else "")
        )
    return lines


def _run_lines(experiment: Experiment, out: Path) -> list[str]:
    lines = []
    for group in experiment.groups:
        for run in group.runs:
            settings = run.settings
            levels = len({r["round"] for r in run.records})
            link = _link(run.run_dir, out)
            lines.append(
                f"- group `{group.key}`, seed {run.seed if run.seed is not None else '?'}: [`{link}`]({link}) — "
                f"{levels} level{'s' if levels != 1 else ''}, branches {', '.join(run.branches)}, "
                f"rewind={settings.get('rewind')!r}, pruning={settings.get('pruning')!r}, "
                f"amount={settings.get('amount')!r}"
            )
    return lines


def _dense_lines(experiment: Experiment) -> list[str]:
    headline = experiment.headline
    lines = []
    for reference in experiment.dense_references:
        where = f" ({reference.description})" if reference.description else ""
        lines.append(
            f"- dense network{where}: {headline.metric} {format_stat(reference.metric, headline.scale)}, early stop "
            f"{format_stat(reference.early_stop, digits=0)} — each unique dense network once (n = seeds)"
        )
    return lines


def experiment_section(experiment: Experiment, figures: Sequence[FigureFile], out: Path) -> list[str]:
    """The markdown of one experiment: series, tables, figures, runs."""
    headline = experiment.headline
    direction = f" ({headline.better})" if headline.better else ""
    unit = ", shown in %" if headline.unit == "%" else ""
    monitors = " or ".join(f"{'lowest' if mode == 'min' else 'highest'} `{m}`" for m, mode in experiment.monitors)
    lines = [
        f"## {experiment.name}",
        "",
        f"Headline metric: `{headline.metric}`{direction}{unit}, at the early-stop iteration of each level "
        f"(the validation with the {monitors or 'best monitor: none recorded'}). {len(experiment.runs)} runs in "
        f"{len(experiment.groups)} group{'s' if len(experiment.groups) != 1 else ''} of identical settings.",
        "",
    ]
    if experiment.supermask:
        lines += [
            "Weights are counted as the supermask keeps them (`model.supermask.keep` of every layer), not as the "
            "lottery's masks (which prune nothing here).",
            "",
        ]
    differing = experiment.differing_settings
    if differing:
        lines += [
            f"Groups differ in: {', '.join(f'`{k}`' for k in differing)}. Series of different groups are never "
            "averaged together.",
            "",
        ]
    lines += ["### Series", "", *_series_lines(experiment), "", *_dense_lines(experiment), ""]
    lines += [f"### {headline.label} at the early-stop iteration", "", *round_table(experiment, "metric"), ""]
    lines += [
        "### Early-stop iteration (optimizer steps within the level)",
        "",
        *round_table(experiment, "early_stop"),
        "",
    ]
    if experiment.has_train_acc:
        lines += ["### Train accuracy at the early-stop iteration (%)", "", *round_table(experiment, "train_acc"), ""]
        lines += [
            "### Generalisation gap: train − test accuracy at the early-stop iteration (points)",
            "",
            *round_table(experiment, "gap"),
            "",
        ]
    if figures:
        lines += ["### Figures", ""]
        for figure in figures:
            link = _link(figure.path, out)
            others = [p for p in figure.paths if p != figure.path]
            also = " (also " + ", ".join(f"[{p.suffix[1:]}]({_link(p, out)})" for p in others) + ")" if others else ""
            lines += [f"![{figure.title}]({link})", "", f"*{figure.caption}*{also}", ""]
    lines += ["### Runs", "", *_run_lines(experiment, out), ""]
    return lines


def render(
    experiments: Sequence[Experiment], figures: Mapping[str, Sequence[FigureFile]], dirs: Sequence[Path], out: Path
) -> str:
    """The whole ``report.md``; ``figures`` by experiment name; links are relative to ``out``."""
    runs = sum(len(e.runs) for e in experiments)
    searched = ", ".join(f"`{d}`" for d in dirs)
    lines = [
        "# Lottery-ticket report",
        "",
        f"{runs} run{'s' if runs != 1 else ''} in {len(experiments)} experiment{'s' if len(experiments) != 1 else ''}"
        f", found under {searched}.",
        "",
        "Every value is taken **at the early-stop iteration** of its level — the validation with the best monitored "
        "metric — never the best test value over training (the protocol of Frankle & Carbin, 2019). A series is one "
        "branch (the ticket, or a control trained on the ticket's masks) of one group of runs whose settings differ "
        "only in the seed. Table cells: mean ± half-width of the 95% confidence interval of the mean over seeds "
        "(Student t, n − 1 degrees of freedom), n = runs with a value; n=1 has no interval. **Bold**: best series in "
        f"the level. Figures: lines are means over seeds, shaded bands the {BAND}, grey lines the dense networks.",
        "",
        "[`summary.csv`](summary.csv) has one row per run, branch and level (a run's dense level 0 once), with every "
        "metric at the early-stop iteration (`at_best.*`) and at the last validation (`final.*`).",
        "",
    ]
    for experiment in experiments:
        lines += experiment_section(experiment, figures.get(experiment.name, ()), out)
    return "\n".join(lines)
