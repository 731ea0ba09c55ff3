"""``report.md``: per experiment, tables of the headline metric and early-stop iteration by round and variant,
the figures, and the runs included."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from lightning_lottery.report.aggregate import Experiment, Stat
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
    """``mean ± std (n=k)``; just ``mean (n=1)`` for one seed; an em dash when no seed has a value."""
    if stat.n == 0:
        return "—"
    mean = stat.mean * scale
    d = decimals(mean) if digits is None else digits
    if stat.n == 1:
        return f"{mean:.{d}f} (n=1)"
    return f"{mean:.{d}f} ± {stat.std * scale:.{d}f} (n={stat.n})"


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def _remaining_cell(experiment: Experiment, round_index: int) -> str:
    low, high = experiment.remaining_range(round_index)
    # Runs of one experiment normally share a schedule; say so when they do not instead of hiding it.
    return format_pct(low) if high - low < 0.05 else f"{format_pct(low)}–{format_pct(high)}"


def _best_variants(stats: Sequence[Stat], higher_is_better: bool | None) -> set[int]:
    """Indices of the variants with the best mean in a round (none when the direction is unknown)."""
    means = [(i, s.mean) for i, s in enumerate(stats) if s.n]
    if higher_is_better is None or len(means) < 2:
        return set()
    best = (max if higher_is_better else min)(m for _, m in means)
    return {i for i, m in means if math.isclose(m, best, rel_tol=1e-12, abs_tol=1e-12)}


def round_table(experiment: Experiment, quantity: str) -> list[str]:
    """Markdown rows: one per round, one column per variant, ``quantity`` = ``"metric"`` or ``"early_stop"``."""
    headline = experiment.headline
    series = experiment.series
    header = ["Round", "Weights remaining (%)", *(_escape(s.variant) for s in series)]
    lines = ["| " + " | ".join(header) + " |", "|" + " ---: |" * len(header)]
    # One number of decimals per table, from its typical value: 98.12 next to 100.00, not next to 100.0.
    typical = [abs(st.mean) * headline.scale for s in series for st in s.metric.values() if st.n]
    digits = decimals(statistics.median(typical)) if typical else 2
    for round_index in experiment.rounds:
        empty = Stat(())
        if quantity == "metric":
            stats = [s.metric.get(round_index, empty) for s in series]
            cells = [format_stat(st, headline.scale, digits) for st in stats]
            for i in _best_variants(stats, headline.higher_is_better):
                cells[i] = f"**{cells[i]}**"
        else:
            stats = [s.early_stop.get(round_index, empty) for s in series]
            cells = [format_stat(st, digits=0) for st in stats]
        lines.append(f"| {round_index} | {_remaining_cell(experiment, round_index)} | " + " | ".join(cells) + " |")
    return lines


def _link(target: Path, out: Path) -> str:
    return Path(os.path.relpath(target.resolve(), out.resolve())).as_posix()


def _run_lines(experiment: Experiment, out: Path) -> list[str]:
    lines = []
    for series in experiment.series:
        for run in series.runs:
            settings = run.settings
            rounds = len(run.records)
            link = _link(run.run_dir, out)
            lines.append(
                f"- {_escape(series.variant)}, seed {run.seed if run.seed is not None else '?'}: [`{link}`]({link}) "
                f"— {rounds} round{'s' if rounds != 1 else ''} recorded, rewind={settings.get('rewind')!r}, "
                f"pruning={settings.get('pruning')!r}, amount={settings.get('amount')!r}"
            )
    return lines


def experiment_section(experiment: Experiment, figures: Sequence[FigureFile], out: Path) -> list[str]:
    """The markdown of one experiment: tables, figures, runs."""
    headline = experiment.headline
    direction = f" ({headline.better})" if headline.better else ""
    unit = ", shown in %" if headline.unit == "%" else ""
    monitors = " or ".join(f"{'lowest' if mode == 'min' else 'highest'} `{m}`" for m, mode in experiment.monitors)
    variants = ", ".join(
        f"{_escape(s.variant)} ({len(s.runs)} seed{'s' if len(s.runs) != 1 else ''})" for s in experiment.series
    )
    lines = [
        f"## {experiment.name}",
        "",
        f"Headline metric: `{headline.metric}`{direction}{unit}, at the early-stop iteration of each round "
        f"(the validation with the {monitors or 'best monitor: none recorded'}). {len(experiment.runs)} runs; "
        f"variants: {variants}.",
        "",
        f"### {headline.label} at the early-stop iteration",
        "",
        *round_table(experiment, "metric"),
        "",
        "### Early-stop iteration (optimizer steps within the round)",
        "",
        *round_table(experiment, "early_stop"),
        "",
    ]
    if figures:
        lines += ["### Figures", ""]
        for figure in figures:
            link = _link(figure.path, out)
            lines += [f"![{figure.title}]({link})", "", f"*{figure.caption}*", ""]
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
        "Every value is taken **at the early-stop iteration** of its round — the validation with the best monitored "
        "metric — never the best test value over training (the protocol of Frankle & Carbin, 2019). Table cells: "
        "mean ± sample standard deviation over seeds (n = runs with a value); **bold**: best variant in the round. "
        f"Figures: lines are means over seeds, shaded bands {BAND}, the dashed line the dense network.",
        "",
        "[`summary.csv`](summary.csv) has one row per run and round, with every metric at the early-stop iteration "
        "(`at_best.*`) and at the last validation (`final.*`).",
        "",
    ]
    for experiment in experiments:
        lines += experiment_section(experiment, figures.get(experiment.name, ()), out)
    return "\n".join(lines)
