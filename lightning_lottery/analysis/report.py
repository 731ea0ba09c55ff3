"""Instability results as a table and figures, read from the ``instability.json`` files runs wrote.

One file is one seed; several files of the same recipe are aggregated per starting step (mean and 95% Student-t
confidence interval over seeds). Figures: error along the path per starting point, error barrier vs. the starting
step k, and error barrier vs. sparsity for the tickets of a search.

    python -m lightning_lottery.analysis.report outputs/*/instability.json --out report/
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lightning_lottery.core.connectivity import DEFAULT_THRESHOLD, confidence_interval

DPI = 120
_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")


def load_payloads(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Read ``instability.json`` files (a run folder is also accepted)."""
    payloads = []
    for path in map(Path, paths):
        if path.is_dir():
            path = path / "instability.json"
        if not path.is_file():
            raise FileNotFoundError(f"No instability.json at {path}")
        payloads.append(json.loads(path.read_text()))
    return payloads


def _group(payloads: Sequence[Mapping[str, Any]], kind: str, key: str) -> dict[Any, list[Mapping[str, Any]]]:
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for payload in payloads:
        for entry in payload.get(kind, []):
            groups.setdefault(entry[key], []).append(entry)
    return dict(sorted(groups.items()))


def summary_rows(payloads: Sequence[Mapping[str, Any]], threshold: float | None = None) -> list[dict[str, Any]]:
    """One row per starting step (and per ticket round): n seeds, barrier mean and 95% CI, endpoint error;
    ``stable``: the upper end of the barrier's interval is below ``threshold`` (the runs' own by default);
    ``unstable``: its lower end is at or above it (neither: undecided). One seed: the value itself."""
    if threshold is None:
        threshold = _threshold(payloads)
    rows = []
    for kind, key in (("points", "step"), ("tickets", "round")):
        for value, entries in _group(payloads, kind, key).items():
            barriers = confidence_interval([e["error_barrier"] for e in entries])
            losses = confidence_interval([e["loss_barrier"] for e in entries])
            endpoint = confidence_interval([sum(e["endpoint_errors"]) / 2 for e in entries])
            # barrier = (peak − worse endpoint) + |E_a − E_b| / 2: how much is a bump, how much the ends' gap
            bump = float(np.mean([max(e["errors"]) - max(e["endpoint_errors"]) for e in entries]))
            rows.append(
                {
                    "start": f"k={value}" if kind == "points" else f"ticket round {value}",
                    key: value,
                    "sparsity": float(np.mean([e.get("sparsity", 0.0) for e in entries])),
                    "n": barriers.n,
                    "error_barrier": barriers.mean,
                    "error_barrier_lo": barriers.lo,
                    "error_barrier_hi": barriers.hi,
                    "loss_barrier": losses.mean,
                    "peak_above_worse_end": bump,
                    "endpoint_error": endpoint.mean,
                    "endpoint_error_lo": endpoint.lo,
                    "endpoint_error_hi": endpoint.hi,
                    "stable": barriers.hi < threshold,
                    "unstable": barriers.lo >= threshold,
                }
            )
    return rows


def _threshold(payloads: Sequence[Mapping[str, Any]]) -> float:
    values = {p.get("settings", {}).get("threshold", DEFAULT_THRESHOLD) for p in payloads}
    return float(values.pop()) if len(values) == 1 else DEFAULT_THRESHOLD


def _pct_ci(row: Mapping[str, Any], key: str) -> str:
    if row["n"] == 1:
        return f"{100 * row[key]:.2f} (one seed: no interval)"
    return f"{100 * row[key]:.2f} [{100 * row[key + '_lo']:.2f}, {100 * row[key + '_hi']:.2f}]"


def _verdict(row: Mapping[str, Any]) -> str:
    word = "stable" if row["stable"] else "unstable" if row["unstable"] else "undecided"
    return f"{word} (one seed)" if row["n"] == 1 else word


def markdown_table(rows: Sequence[Mapping[str, Any]], threshold: float = DEFAULT_THRESHOLD) -> str:
    """The summary as a markdown table (percentage points)."""
    lines = [
        f"| start | n | error barrier (pp), mean [95% CI] | endpoint error (%), mean [95% CI] | peak above the worse "
        f"end (pp) | loss barrier | verdict (95% CI below {100 * threshold:g} pp: stable; at or above: unstable) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        label = r["start"] + (f" ({100 * r['sparsity']:.1f}% pruned)" if r.get("sparsity") else "")
        lines.append(
            f"| {label} | {r['n']} | {_pct_ci(r, 'error_barrier')} | {_pct_ci(r, 'endpoint_error')} | "
            f"{100 * r['peak_above_worse_end']:.2f} | {r['loss_barrier']:.4f} | {_verdict(r)} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- figures


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _title(payloads: Sequence[Mapping[str, Any]]) -> str:
    names = sorted({str(p.get("experiment", "")) for p in payloads} - {""})
    seeds = len(payloads)
    return f"{', '.join(names) or 'instability'} ({seeds} seed{'s' if seeds != 1 else ''})"


def plot_paths(payloads: Sequence[Mapping[str, Any]], path: Path, kind: str = "points") -> Path | None:
    """Test error along the linear path, one line per starting point (mean over seeds, band: min–max)."""
    key = "step" if kind == "points" else "round"
    groups = _group(payloads, kind, key)
    if not groups:
        return None
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for i, (value, entries) in enumerate(groups.items()):
        errors = 100 * np.array([e["errors"] for e in entries])
        alphas = entries[0]["alphas"]
        color = _COLORS[i % len(_COLORS)]
        if kind == "points":
            label = f"k = {value}"
        else:
            label = f"round {value} ({100 * (1 - entries[0].get('sparsity', 0.0)):.1f}% left)"
        ax.plot(alphas, errors.mean(0), marker="o", markersize=3, color=color, label=label)
        if len(entries) > 1:
            ax.fill_between(alphas, errors.min(0), errors.max(0), color=color, alpha=0.15)
    ax.set_xlabel("interpolation α (0: first child, 1: second child)")
    ax.set_ylabel("error (%)")
    ax.set_title(f"Error along the linear path — {_title(payloads)}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="children start from" if kind == "points" else "ticket", title_fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _barrier_axes(payloads: Sequence[Mapping[str, Any]], xlabel: str, title: str) -> tuple[Figure, Any]:
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    threshold = 100 * _threshold(payloads)
    ax.axhline(threshold, color="grey", linestyle="--", linewidth=1, label=f"stable below {threshold:g} pp")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("error barrier (percentage points)")
    ax.set_title(f"{title} — {_title(payloads)}", fontsize=9)
    ax.grid(alpha=0.3)
    return fig, ax


def _errorbar(ax: Any, xs: Sequence[float], rows: Sequence[Mapping[str, Any]]) -> None:
    means = np.array([100 * r["error_barrier"] for r in rows])
    lo = means - np.array([100 * r["error_barrier_lo"] for r in rows])
    hi = np.array([100 * r["error_barrier_hi"] for r in rows]) - means
    label = "mean, 95% CI over seeds" if any(r["n"] > 1 for r in rows) else "one seed"
    ax.errorbar(xs, means, yerr=[lo, hi], marker="o", capsize=3, color="tab:blue", label=label)
    ax.set_ylim(bottom=0)  # after plotting: the top still fits the data and the threshold line


def plot_barrier_vs_step(payloads: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Error barrier vs. the step k the children started from (symmetric-log axis: k = 0 included)."""
    rows = [r for r in summary_rows(payloads) if "step" in r]
    if not rows:
        return None
    fig, ax = _barrier_axes(payloads, "children start from step k", "Instability vs. starting step")
    steps = [r["step"] for r in rows]
    _errorbar(ax, steps, rows)
    positive = [s for s in steps if s > 0]
    if positive:
        ax.set_xscale("symlog", linthresh=min(positive))
        ax.set_xlim(-0.3 * min(positive), 1.5 * max(positive))
    ax.set_xticks(steps, [str(s) for s in steps])
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_barrier_vs_sparsity(payloads: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Error barrier of each ticket of a search vs. % of weights remaining (log axis, inverted)."""
    rows = [r for r in summary_rows(payloads) if "round" in r]
    if not rows:
        return None
    fig, ax = _barrier_axes(payloads, "weights remaining (%, log scale)", "Instability of the search's tickets")
    remaining = [max(100 * (1 - r["sparsity"]), 1e-3) for r in rows]
    _errorbar(ax, remaining, rows)
    ax.set_xscale("log")
    ax.set_xlim(max(remaining) * 1.3, min(remaining) / 1.3)
    ax.set_xticks(remaining, [f"{v:.3g}" for v in remaining])
    ax.minorticks_off()
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def write_figures(payloads: Sequence[Mapping[str, Any]], out: Path, prefix: str = "instability") -> list[Path]:
    """Every figure the payloads have data for, into ``out``: ``<prefix>_path.png``, ``<prefix>_vs_step.png``,
    ``<prefix>_ticket_path.png``, ``<prefix>_vs_sparsity.png``."""
    made = [
        plot_paths(payloads, out / f"{prefix}_path.png"),
        plot_barrier_vs_step(payloads, out / f"{prefix}_vs_step.png"),
        plot_paths(payloads, out / f"{prefix}_ticket_path.png", kind="tickets"),
        plot_barrier_vs_sparsity(payloads, out / f"{prefix}_vs_sparsity.png"),
    ]
    return [p for p in made if p is not None]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_lottery.analysis.report",
        description="Aggregate instability.json files (one per seed): a markdown table and figures.",
    )
    parser.add_argument("runs", nargs="+", help="instability.json files or the run folders holding them")
    parser.add_argument("--out", type=Path, default=None, help="folder for the figures (default: none)")
    parser.add_argument("--prefix", default="instability", help="figure file names start with this")
    parser.add_argument("--threshold", type=float, default=None, help="stable below this barrier (default: runs')")
    args = parser.parse_args(argv)
    try:
        payloads = load_payloads(args.runs)
    except (FileNotFoundError, json.JSONDecodeError) as err:
        print(f"instability report: {err}", file=sys.stderr)
        sys.exit(2)
    threshold = args.threshold if args.threshold is not None else _threshold(payloads)
    if not math.isfinite(threshold) or threshold <= 0:
        print(f"instability report: --threshold must be > 0, got {threshold}", file=sys.stderr)
        sys.exit(2)
    print(markdown_table(summary_rows(payloads, threshold), threshold))
    if args.out is not None:
        for path in write_figures(payloads, args.out, args.prefix):
            print(f"figure: {path}")


if __name__ == "__main__":
    main()
