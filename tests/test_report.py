"""The report: runs found and grouped by settings, every branch a series, headline metric at the early-stop iteration,
95% confidence intervals, dense networks counted once, budgets, kept weights, layer-wise sparsity, file formats."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest
from tiny import TinyNet, loaders, trainer

from lightning_lottery import LotteryTicketCallback
from lightning_lottery.io import atomic_write_csv
from lightning_lottery.report import ReportError, collect_runs, write_report
from lightning_lottery.report.aggregate import build_experiments
from lightning_lottery.report.cli import main
from lightning_lottery.report.collect import variant_label, variant_order
from lightning_lottery.report.figures import (
    dodge_factors,
    draw_vs_sparsity,
    layer_remaining,
    level_budgets,
    parse_formats,
    remaining_ticks,
)
from lightning_lottery.report.markdown import format_stat
from lightning_lottery.report.stats import Stat, t_quantile_975

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BUDGET = 1000
STEPS = range(100, BUDGET + 1, 100)  # validations every 100 optimizer steps
TOTAL = 266200
T_975_DF2 = 4.303  # Student t, 95% two-sided, 2 degrees of freedom (3 seeds)


def settings(rewind: Any = "init", pruning: str = "magnitude", seed: int = 0, **extra: Any) -> dict:
    return {
        "rounds": 3,
        "amount": 0.2,
        "scope": "layer",
        "layer_amounts": {"fc3.weight": 0.1},
        "parameters": None,
        "exclude": [],
        "rewind": rewind,
        "pruning": pruning,
        "monitor": "val_loss",
        "mode": "min",
        "seed": seed,
        **extra,
    }


def value(round_index: int, seed: int, branch: str) -> tuple[float, int, float]:
    """(test accuracy, early-stop iteration, train accuracy) at the early stop: the ticket improves and stops
    earlier as it is pruned; the controls degrade; the ticket's train-test gap shrinks."""
    offset = 0.002 * (seed % 2)
    if branch == "ticket":
        acc, step, gap = 0.90 + 0.01 * round_index, 600 - 100 * round_index, 0.05 - 0.01 * round_index
    elif branch == "reinit":
        acc, step, gap = 0.90 - 0.01 * round_index, 500 + 100 * round_index, 0.05 + 0.01 * round_index
    else:
        acc, step, gap = 0.90 - 0.02 * round_index, 500 + 100 * round_index, 0.05 + 0.02 * round_index
    if round_index == 0:  # level 0 is the ticket's dense network, whatever the branch
        acc, step, gap = 0.90, 600, 0.05
    return acc + offset, step + 100 * (seed % 2), acc + offset + gap


def fake_run(
    run_dir: Path,
    seed: int,
    branches: tuple[str, ...] = ("ticket",),
    rounds: int = 4,
    run_info: dict | None = None,
    language: bool = False,
    flat: bool = False,
    amount: float = 0.2,
    start_step: int = 0,
    values: Any = value,
    **setting: Any,
) -> Path:
    """The artifacts of one search as LotteryTicketCallback writes them (ticket files left out: not read).

    ``flat``: the older layout (records without ``branch``, ``round_XX/curve.csv``).
    """
    lottery = run_dir / "lottery"
    run_settings = settings(seed=seed, controls=[b for b in branches if b != "ticket"], **setting)
    run_settings["amount"] = amount
    history = []
    for k in range(rounds):
        for branch in branches if k else ("ticket",):
            acc, best_step, train_acc = values(k, seed, branch)
            start = start_step if k else 0
            curve = []
            for step in range(start + 100, BUDGET + 1, 100):
                round_step = step - start
                val_loss = 0.3 + 1e-6 * (round_step - best_step) ** 2  # minimum at the early-stop iteration
                if language:
                    row = {"val_loss": val_loss, "val_ppl": math.exp(val_loss), "test_loss": val_loss + 0.1}
                    row["test_ppl"] = math.exp(row["test_loss"]) + k + seed
                else:
                    # Test accuracy keeps rising after the early stop: the report must not pick that best value.
                    test = acc + 0.0001 * (round_step - best_step)
                    row = {"val_loss": val_loss, "val_acc": acc - 0.01, "test_acc": test, "train_acc": train_acc}
                curve.append({"round_step": round_step, "epoch": step // 100 - 1, **row})
            at_best = next(row for row in curve if row["round_step"] == best_step)
            metrics = {key: v for key, v in at_best.items() if key not in ("round_step", "epoch")}
            remaining = round(TOTAL * (1 - amount) ** k)
            record = {
                "round": k,
                "sparsity": 1 - remaining / TOTAL,
                "remaining": remaining,
                "total": TOTAL,
                "remaining_pct": 100 * remaining / TOTAL,
                "tensor_sparsity": {"fc1.weight": 1 - 0.8**k, "fc3.weight": 1 - 0.9**k},
                "monitor": "val_loss",
                "best": metrics["val_loss"],
                "best_step": start + best_step,
                "best_round_step": best_step,
                "best_epoch": best_step // 100 - 1,
                "metrics": metrics,
                "final_metrics": {key: v for key, v in curve[-1].items() if key not in ("round_step", "epoch")},
                "steps": BUDGET - start,
                "epochs": 10,
            }
            folder = lottery / f"round_{k:02d}"
            if not flat:
                record.update(branch=branch, start_step=start, end_step=BUDGET)
                folder = folder / branch
            history.append(record)
            folder.mkdir(parents=True)
            (folder / "summary.json").write_text(json.dumps({"record": record, "settings": run_settings}))
            atomic_write_csv(folder / "curve.csv", curve)
    (lottery / "history.json").write_text(json.dumps({"settings": run_settings, "history": history}))
    if run_info is not None:
        (run_dir / "run.json").write_text(json.dumps(run_info))
    return run_dir


def info(seed: int, experiment: str = "lenet_mnist", **config: Any) -> dict:
    return {"experiment": experiment, "seed": seed, "overrides": [], "config": {"seed": seed, **config}}


def fake_sweep(root: Path, seeds: tuple[int, ...] = (0, 1, 2), experiment: str = "lenet_mnist", **kw: Any) -> Path:
    """A Hydra multirun of the new protocol: one job per seed, each with the ticket and two controls."""
    for job, seed in enumerate(seeds):
        fake_run(root / str(job), seed, ("ticket", "reinit", "random"), run_info=info(seed, experiment), **kw)
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def table(report: str, heading: str) -> list[list[str]]:
    """The rows (cells) of the first markdown table after ``heading``, header row first."""
    lines = report.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    rows = [line for line in lines[start:end] if "---" not in line]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def ci_cell(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    """What a table cell must say for three seeds, computed here without the report's code."""
    mean = statistics.fmean(values) * scale
    half = T_975_DF2 * statistics.stdev(values) / math.sqrt(len(values)) * scale
    return f"{mean:.{digits}f} ± {half:.{digits}f} (n={len(values)})"


def test_every_branch_is_a_series_with_a_confidence_interval(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    sweep = fake_sweep(tmp_path / "multirun")
    assert main([str(sweep), "--out", str(tmp_path / "out")]) == 0
    report_path = Path(capsys.readouterr().out.strip())
    report = report_path.read_text()

    rows = read_csv(tmp_path / "out" / "summary.csv")
    assert len(rows) == 3 * (4 + 3 + 3), "per seed: 4 ticket levels, 3 levels per control (level 0 once)"
    assert [r["branch"] for r in rows if r["round"] == "0"] == ["ticket"] * 3
    columns = list(rows[0])
    assert columns[:7] == ["experiment", "variant", "branch", "group", "seed", "run", "round"]
    assert {"train_acc", "generalisation_gap", "budget", "at_best.test_acc", "final.test_acc"} <= set(columns)
    for row in rows:
        acc, step, train = value(int(row["round"]), int(row["seed"]), row["branch"])
        assert float(row["headline"]) == pytest.approx(acc) == float(row["at_best.test_acc"])
        assert float(row["final.test_acc"]) > float(row["headline"]), "the fake's best test value is the final one"
        assert int(row["best_round_step"]) == step and float(row["budget"]) == BUDGET
        assert float(row["generalisation_gap"]) == pytest.approx(train - acc)
    assert len({r["group"] for r in rows}) == 1, "one group: the runs differ only in the seed"

    metric_rows = table(report, "### test_acc (%) at the early-stop iteration")
    assert metric_rows[0] == [
        "Level",
        "Weights remaining (%)",
        "ticket (rewind to θ₀)",
        "random reinit",
        "random pruning",
    ]
    assert [r[1] for r in metric_rows[1:]] == ["100", "80.0", "64.0", "51.2"]
    for k, row in enumerate(metric_rows[1:]):
        for cell, branch in zip(row[2:], ("ticket", "reinit", "random")):
            assert cell.strip("*") == ci_cell([value(k, seed, branch)[0] for seed in (0, 1, 2)])
    assert metric_rows[3][2].startswith("**"), "the best series of a level in bold"
    stop_rows = table(report, "### Early-stop iteration")
    assert stop_rows[0][-1] == "Budget (steps)" and [r[-1] for r in stop_rows[1:]] == ["1,000"] * 4
    assert stop_rows[2][2] == ci_cell([500, 600, 500], scale=1, digits=0)
    gap_rows = table(report, "### Generalisation gap")
    assert gap_rows[2][2] == ci_cell([0.04] * 3), "train - test accuracy at the early stop, in points"
    assert "### Train accuracy at the early-stop iteration (%)" in report
    assert "n=3 runs (seeds 0, 1, 2)" in report and "95% confidence interval" in report


def test_confidence_intervals_are_student_t_and_a_single_run_says_so():
    assert [t_quantile_975(df) for df in (1, 2, 4, 30)] == [12.706, 4.303, 2.776, 2.042]
    assert t_quantile_975(100) == pytest.approx(1.98397, abs=2e-4)
    assert t_quantile_975(10_000) == pytest.approx(1.96, abs=1e-3)
    stat = Stat.of([97.8, 98.0, None, math.nan, 98.3])
    assert stat.n == 3 and stat.half_width == pytest.approx(4.303 * statistics.stdev([97.8, 98.0, 98.3]) / 3**0.5)
    assert format_stat(Stat.of([0.9812])) == "0.9812 (n=1, no CI)"
    assert format_stat(Stat.of([98.0, 98.2]), digits=2) == "98.10 ± 1.27 (n=2)", "n=2: t=12.706, a wide interval"
    assert format_stat(Stat.of([])) == "—"
    with pytest.raises(ValueError, match="at least 1 degree"):
        t_quantile_975(0)


def test_runs_with_other_settings_are_never_averaged(tmp_path: Path):
    """80%- and 50%-per-level searches in one folder: two series, each at its own % remaining."""
    for seed in (0, 1):
        for amount in (0.2, 0.5):
            run_info = info(seed, trainer={"max_steps": BUDGET}, lottery={"amount": amount, "seed": seed})
            fake_run(tmp_path / f"amount{amount}_seed{seed}", seed, run_info=run_info, amount=amount)
    (experiment,) = build_experiments(collect_runs([tmp_path]))
    assert experiment.differing_settings == ["lottery.amount"]
    assert len(experiment.series) == 2 and all(len(s.runs) == 2 for s in experiment.series)
    by_label = {s.label: s for s in experiment.series}
    assert sorted(by_label) == [
        "ticket (rewind to θ₀) [lottery.amount=0.2]",
        "ticket (rewind to θ₀) [lottery.amount=0.5]",
    ]
    assert [round(x, 1) for x in by_label["ticket (rewind to θ₀) [lottery.amount=0.5]"].remaining.values()] == [
        100,
        50,
        25,
        12.5,
    ]
    report = write_report([tmp_path]).read_text()
    assert "Groups differ in: `lottery.amount`" in report
    assert "| 1 | 50.0–80.0 |" in report, "a level whose series sit at other % remaining says so"


def test_the_seed_and_output_paths_do_not_split_a_group(tmp_path: Path):
    for seed in (3, 4):
        config = {"paths": {"output_dir": f"/runs/{seed}"}, "lottery": {"seed": seed, "dirpath": f"/runs/{seed}/l"}}
        fake_run(tmp_path / str(seed), seed, run_info=info(seed, **config))
    (experiment,) = build_experiments(collect_runs([tmp_path]))
    assert len(experiment.groups) == 1 and experiment.differing_settings == []


def test_dense_networks_are_counted_once(tmp_path: Path):
    # New layout: three seeds, each with two controls sharing the run's level 0.
    (experiment,) = build_experiments(collect_runs([fake_sweep(tmp_path / "new")]))
    (reference,) = experiment.dense_references
    assert reference.metric.n == 3 and reference.early_stop.n == 3
    legend = [text.get_text() for text in draw_vs_sparsity(experiment, "metric").legends[0].get_texts()]
    assert "dense network (100% weights), mean of 3" in legend
    assert "random reinit (n=3)" in legend
    # The older layout: the reinit control was a separate search whose level 0 repeated the ticket's dense network.
    for seed in (0, 1):
        for rewind in ("init", "reinit"):
            fake_run(tmp_path / "old" / f"{rewind}{seed}", seed, flat=True, rewind=rewind, run_info=info(seed, "old"))
    (old,) = build_experiments(collect_runs([tmp_path / "old"]))
    assert [s.label for s in old.series] == ["ticket (rewind to θ₀)", "random reinit"]
    assert old.dense_references[0].metric.n == 2, "2 seeds: 2 dense networks, not 4"


def test_the_budget_is_drawn_on_the_early_stop_figure(tmp_path: Path):
    (experiment,) = build_experiments(collect_runs([fake_sweep(tmp_path / "sweep", seeds=(0,))]))
    ((description, points),) = level_budgets(experiment)
    assert description == "" and list(points.values()) == [BUDGET] * 4
    assert list(points) == pytest.approx([100, 80, 64, 51.2], abs=1e-3)
    figure = draw_vs_sparsity(experiment, "early_stop")
    (budget,) = [line for line in figure.axes[0].lines if line.get_label().startswith("budget")]
    assert list(budget.get_ydata()) == [BUDGET, BUDGET] and budget.get_label() == "budget: 1,000 steps per level"
    assert figure.axes[0].get_ylim()[1] >= BUDGET
    # Late rewinding to step 200: every later level trains 800 steps, level 0 the whole 1,000.
    late = fake_run(tmp_path / "late", 0, ("ticket",), start_step=200, rewind=200)
    (experiment,) = build_experiments(collect_runs([late]))
    assert sorted(level_budgets(experiment)[0][1].values()) == [800, 800, 800, BUDGET]
    lines = draw_vs_sparsity(experiment, "early_stop").axes[0].lines
    (budget,) = [line for line in lines if line.get_label().startswith("budget")]
    assert list(budget.get_ydata()) == [BUDGET, 800, 800, 800]


def test_overlapping_series_stay_visible(tmp_path: Path):
    def same(round_index: int, seed: int, branch: str) -> tuple[float, int, float]:
        return value(round_index, seed, "ticket")  # every control exactly on the ticket

    (experiment,) = build_experiments(collect_runs([fake_sweep(tmp_path / "s", seeds=(0, 1), values=same)]))
    figure = draw_vs_sparsity(experiment, "metric")
    lines = [line for line in figure.axes[0].lines if "(n=" in line.get_label()]
    assert len(lines) == 3
    assert len({tuple(line.get_xdata()) for line in lines}) == 3, "set apart along the x axis"
    assert len({line.get_marker() for line in lines}) == 3 and len({line.get_zorder() for line in lines}) == 3
    assert [line.get_linestyle() for line in lines] == ["-", "--", "--"], "controls dashed"
    factors = dodge_factors(3)
    assert factors[1] == 1.0 and max(factors) / min(factors) < 1.05, "a nudge, not a move to another level"


def test_edge_popup_reports_the_weights_its_supermask_keeps(tmp_path: Path):
    config = {"model": {"supermask": {"keep": 0.5, "init": "signed_constant"}}}
    fake_run(tmp_path / "ep", 0, rounds=1, run_info=info(0, "edgepopup", **config))
    report = write_report([tmp_path]).read_text()
    rows = table(report, "### test_acc (%) at the early-stop iteration")
    assert rows[0][1] == "Weights kept (%)" and rows[1][1] == "50.0"
    assert float(read_csv(tmp_path / "report" / "summary.csv")[0]["weights_pct"]) == 50.0
    (experiment,) = build_experiments(collect_runs([tmp_path]))
    assert draw_vs_sparsity(experiment, "metric").axes[0].get_xlabel() == "weights kept (%, log scale)"


def test_layer_wise_sparsity_figure_per_level(tmp_path: Path):
    sweep = fake_sweep(tmp_path / "sweep", seeds=(0, 1))
    (experiment,) = build_experiments(collect_runs([sweep]))
    ((label, names, table_), *_) = layer_remaining(experiment)
    assert label == "ticket (rewind to θ₀)" and names == ["fc1.weight", "fc3.weight"]
    assert table_[2] == pytest.approx([64.0, 81.0]) and sorted(table_) == [0, 1, 2, 3]
    path = write_report([sweep])
    assert (path.parent / "lenet_mnist_layer_sparsity.png").read_bytes()[:8] == PNG_SIGNATURE
    assert "](lenet_mnist_layer_sparsity.png)" in path.read_text()


def test_figures_in_every_requested_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    sweep = fake_sweep(tmp_path / "sweep", seeds=(0,))
    assert main([str(sweep), "--out", str(tmp_path / "out"), "--format", "png,pdf,svg"]) == 0
    out = tmp_path / "out"
    for stem in ("test_acc_vs_weights", "early_stop_vs_weights", "learning_curves", "layer_sparsity"):
        assert (out / f"lenet_mnist_{stem}.png").read_bytes()[:8] == PNG_SIGNATURE
        assert (out / f"lenet_mnist_{stem}.pdf").read_bytes()[:5] == b"%PDF-"
        assert "<svg" in (out / f"lenet_mnist_{stem}.svg").read_text()
    report = (out / "report.md").read_text()
    assert "![" in report and "[pdf](lenet_mnist_test_acc_vs_weights.pdf)" in report
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(sweep), "--format", "png,gif"])
    assert exit_info.value.code == 2 and "gif" in capsys.readouterr().err
    assert parse_formats(["svg", "png"]) == ("svg", "png")


def test_the_older_flat_layout_is_still_read(tmp_path: Path):
    fake_run(tmp_path / "lenet" / "version_0", seed=11, flat=True)
    fake_run(tmp_path / "lenet" / "version_1", seed=12, flat=True, pruning="random")
    runs = collect_runs([tmp_path])
    assert [(r.experiment, r.label, r.seed, r.branches) for r in runs] == [
        ("lenet", "ticket (rewind to θ₀)", 11, ["ticket"]),
        ("lenet", "random pruning", 12, ["ticket"]),
    ], "Lightning's version_N folders are counters, not experiment names"
    assert runs[0].curve(2)[0]["round_step"] == 100, "round_XX/curve.csv"
    path = write_report([tmp_path])
    assert (path.parent / "lenet_learning_curves.png").is_file()


def test_default_output_folder_and_several_dirs(tmp_path: Path):
    a = fake_run(tmp_path / "a", seed=0)
    b = fake_run(tmp_path / "b", seed=0, branches=("ticket", "reinit"))
    path = write_report([a, b])
    assert path == a / "report" / "report.md"
    experiments = {row["experiment"] for row in read_csv(path.parent / "summary.csv")}
    assert experiments == {"a", "b"}, "no run.json: the run's folder names the experiment"
    # Running again finds the same runs (the report folder holds no history.json).
    assert write_report([tmp_path]) == tmp_path / "report" / "report.md"
    assert len(read_csv(tmp_path / "report" / "summary.csv")) == 4 + 4 + 3


@pytest.mark.parametrize(
    ("rewind", "pruning", "label"),
    [
        ("init", "magnitude", "ticket (rewind to θ₀)"),
        (500, "magnitude", "ticket (rewind to step 500)"),
        ("finetune", "magnitude", "fine-tune (no rewind)"),
        ("lr_rewind", "magnitude", "LR rewinding (no weight rewind)"),
        ("init", "random", "random pruning"),
        (500, "random", "random pruning + rewind to step 500"),
        ("reinit", "magnitude", "random reinit"),  # histories written before controls were branches
        ("none", "magnitude", "fine-tune (no rewind)"),
    ],
)
def test_variant_labels_from_settings(rewind: Any, pruning: str, label: str):
    assert variant_label(settings(rewind, pruning)) == label


def test_variant_order_and_run_json_labels(tmp_path: Path):
    labels = ["dense", "random reinit of transferred mask", "random ticket", "target ticket", "transferred ticket"]
    for i, label in enumerate(labels):
        fake_run(tmp_path / f"job{i}", seed=3, run_info={"experiment": "transfer", "variant": label, "seed": 7})
    runs = collect_runs([tmp_path])
    assert [r.label for r in runs] == [
        "target ticket",
        "transferred ticket",
        "random reinit of transferred mask",
        "random ticket",
        "dense",
    ]
    assert {r.seed for r in runs} == {7}, "run.json's seed wins over the callback's"
    names = ["ticket (rewind to step 500)", "fine-tune (no rewind)", "random pruning", "ticket (rewind to θ₀)"]
    rewinds = [500, "finetune", "init", "init"]
    ordered = sorted(zip(names, rewinds), key=lambda nr: variant_order(nr[0], settings(nr[1])))
    assert [n for n, _ in ordered] == [
        "ticket (rewind to θ₀)",
        "ticket (rewind to step 500)",
        "random pruning",
        "fine-tune (no rewind)",
    ]


def test_controls_of_two_searches_name_their_ticket(tmp_path: Path):
    for rewind in ("init", 500):
        fake_run(tmp_path / f"r{rewind}", 0, ("ticket", "reinit"), rewind=rewind, run_info=info(0, "two"))
    (experiment,) = build_experiments(collect_runs([tmp_path]))
    assert [s.label for s in experiment.series] == [
        "ticket (rewind to θ₀)",
        "ticket (rewind to step 500)",
        "random reinit (control of ticket (rewind to θ₀))",
        "random reinit (control of ticket (rewind to step 500))",
    ]


def test_language_model_headline_is_perplexity_lower_is_better(tmp_path: Path):
    report = write_report([fake_sweep(tmp_path / "sweep", (0, 1), "lstm_ptb", language=True)]).read_text()
    assert "Headline metric: `test_ppl` (lower is better)" in report
    rows = table(report, "### test_ppl at the early-stop iteration")
    # Fake test_ppl grows with the level and the seed, the same for every branch: a three-way tie in bold.
    assert all(cell.startswith("**") for cell in rows[2][2:])
    summary = read_csv(tmp_path / "sweep" / "report" / "summary.csv")
    assert {r["headline_metric"] for r in summary} == {"test_ppl"}
    assert "Generalisation gap" not in report, "no train accuracy logged: no gap table"


def test_headline_prefers_test_acc_then_val_acc_then_monitor(tmp_path: Path):
    run = fake_run(tmp_path / "run", seed=0)
    history_path = run / "lottery" / "history.json"
    data = json.loads(history_path.read_text())
    for record in data["history"]:
        del record["metrics"]["test_acc"]
    history_path.write_text(json.dumps(data))
    assert "Headline metric: `val_acc` (higher is better)" in write_report([run]).read_text()
    for record in data["history"]:
        del record["metrics"]["val_acc"]
    history_path.write_text(json.dumps(data))
    report = write_report([run]).read_text()
    assert "Headline metric: `val_loss` (lower is better)" in report, "the monitor, in its mode"


def test_metric_override_and_missing_metric(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    sweep = fake_sweep(tmp_path / "sweep", seeds=(0,))
    report = write_report([sweep], metric="val_loss").read_text()
    assert "Headline metric: `val_loss` (lower is better)" in report
    assert (sweep / "report" / "lenet_mnist_val_loss_vs_weights.png").is_file()
    with pytest.raises(ReportError, match=r"'test_ppl' was not recorded.*Available metrics: test_acc, train_acc"):
        write_report([sweep], metric="test_ppl")
    with pytest.raises(SystemExit) as exit_info:
        main([str(sweep), "--metric", "val_ppl"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "'val_ppl' was not recorded" in error and "val_acc, val_loss" in error


def test_no_history_found_is_a_clear_error(tmp_path: Path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ReportError, match=r"No lottery runs found under .*empty.*history\.json"):
        write_report([tmp_path / "empty"])
    with pytest.raises(ReportError, match="No such directory"):
        write_report([tmp_path / "nowhere"])


def test_remaining_ticks_thin_crowded_levels():
    frankle = [100 * 0.8**k for k in range(25)]
    ticks = remaining_ticks(frankle)
    assert ticks[0] == 100 and ticks[-1] == frankle[-1] and len(ticks) <= 10
    assert remaining_ticks([100.0, 51.3, 21.1]) == [100.0, 51.3, 21.1]


def test_report_reads_a_real_tiny_search(tmp_path: Path):
    """Two real searches (rewind to θ₀, and iterative random pruning) as a plain Lightning user lays them out."""
    for version, pruning in enumerate(("magnitude", "random")):
        lottery = LotteryTicketCallback(
            rounds=2, amount=0.5, pruning=pruning, seed=5, dirpath=tmp_path / "tiny" / f"version_{version}" / "lottery"
        )
        train, val = loaders()
        trainer(max_epochs=2, callbacks=[lottery]).fit(TinyNet(), train, val)
    path = write_report([tmp_path / "tiny"])
    rows = read_csv(path.parent / "summary.csv")
    assert [(r["experiment"], r["variant"], r["round"]) for r in rows] == [
        ("tiny", variant, str(k)) for variant in ("ticket (rewind to θ₀)", "random pruning") for k in range(3)
    ]
    history = json.loads((tmp_path / "tiny" / "version_0" / "lottery" / "history.json").read_text())["history"]
    assert [float(r["headline"]) for r in rows[:3]] == pytest.approx([h["metrics"]["val_acc"] for h in history])
    assert {r["headline_metric"] for r in rows} == {"val_acc"} and {r["seed"] for r in rows} == {"5"}
    assert [float(r["remaining_pct"]) for r in rows[:3]] == pytest.approx([100, 50, 25], abs=1)
    report = path.read_text()
    assert "| ticket (rewind to θ₀) | random pruning |" in report
    assert "dense network: val_acc" in report and "(n=1, no CI)" in report, "one dense network: same seed, level 0"
    for png in path.parent.glob("*.png"):
        assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert len(list(path.parent.glob("*.png"))) == 4


def test_early_bird_runs_get_an_accuracy_vs_compute_figure(tmp_path: Path):
    """Each ticket level at the optimizer steps of levels 0..r summed; early-bird runs beside full ones."""
    for seed in (0, 1):
        fake_run(tmp_path / "full" / str(seed), seed, run_info=info(seed))
        fake_run(tmp_path / "early_bird" / str(seed), seed, run_info=info(seed), early_bird={"every": 100})
    for path in (tmp_path / "early_bird").rglob("history.json"):  # early-bird levels stopped after 400 steps
        data = json.loads(path.read_text())
        for record in data["history"][:-1]:
            record["steps"] = 400
        path.write_text(json.dumps(data))
    runs = collect_runs([tmp_path])
    (experiment,) = build_experiments(runs)
    compute = {s.group.runs[0].settings.get("early_bird") is not None: s.compute for s in experiment.series}
    assert [compute[False][r].mean for r in range(4)] == [BUDGET, 2 * BUDGET, 3 * BUDGET, 4 * BUDGET]
    assert [compute[True][r].mean for r in range(4)] == [400, 800, 1200, 1200 + BUDGET]
    report = write_report([tmp_path], tmp_path / "report")
    assert (report.parent / "lenet_mnist_vs_compute.png").is_file()
    assert "vs. the compute of the search" in report.read_text()


def test_a_run_older_than_a_setting_is_grouped_with_runs_at_its_default(tmp_path: Path):
    fake_run(tmp_path / "old", 0, run_info=info(0))  # recorded before `pruning_batches` existed
    fake_run(tmp_path / "new", 1, run_info=info(1), pruning_batches=1)  # the default: what the old run did
    fake_run(tmp_path / "other", 2, run_info=info(2), pruning_batches=4)  # another experiment
    (experiment,) = build_experiments(collect_runs([tmp_path]))
    assert sorted(len(group.runs) for group in experiment.groups) == [1, 2]
    assert experiment.differing_settings == ["lottery.pruning_batches"]
