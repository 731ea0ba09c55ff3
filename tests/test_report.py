"""The report: runs found and grouped, headline metric at the early-stop iteration, tables, CSV and figures."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
from tiny import TinyNet, loaders, trainer

from lightning_lottery import LotteryTicketCallback
from lightning_lottery.report import ReportError, collect_runs, write_report
from lightning_lottery.report.cli import main
from lightning_lottery.report.collect import variant_label, variant_order
from lightning_lottery.report.figures import remaining_ticks
from lightning_lottery.ticket import atomic_write_csv

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STEPS = range(100, 1001, 100)  # validations every 100 optimizer steps


def settings(rewind: Any = "init", pruning: str = "magnitude", seed: int = 0, monitor: str = "val_loss") -> dict:
    return {
        "rounds": 3,
        "amount": 0.2,
        "scope": "global",
        "layer_amounts": {"fc3.weight": 0.1},
        "parameters": None,
        "exclude": [],
        "rewind": rewind,
        "pruning": pruning,
        "monitor": monitor,
        "mode": "min",
        "seed": seed,
    }


def vision_value(round_index: int, seed: int, rewind: Any) -> tuple[float, int]:
    """Test accuracy and early-stop iteration at the early stop: tickets improve and stop earlier, reinit degrades."""
    sign = -1 if rewind == "reinit" else 1
    seed %= 2  # keeps the early stop inside the round's 1000 steps
    acc = 0.90 + 0.01 * round_index * sign + 0.002 * seed
    step = (600 - 100 * round_index if sign > 0 else 500 + 100 * round_index) + 100 * seed
    return acc, step


def fake_run(
    run_dir: Path,
    seed: int,
    rewind: Any = "init",
    pruning: str = "magnitude",
    rounds: int = 4,
    run_info: dict | None = None,
    language: bool = False,
) -> Path:
    """The artifacts of one search as LotteryTicketCallback writes them (ticket files left out: not read)."""
    lottery = run_dir / "lottery"
    history = []
    for k in range(rounds):
        acc, best_step = vision_value(k, seed, rewind)
        curve = []
        for step in STEPS:
            val_loss = 0.3 + 1e-6 * (step - best_step) ** 2  # minimum at the early-stop iteration
            if language:
                row = {"val_loss": val_loss, "val_ppl": math.exp(val_loss), "test_loss": val_loss + 0.1}
                row["test_ppl"] = math.exp(row["test_loss"]) + k + seed
            else:
                # Test accuracy keeps rising after the early stop: the report must not pick that best test value.
                row = {"val_loss": val_loss, "val_acc": acc - 0.01, "test_acc": acc + 0.0001 * (step - best_step)}
            if step > 100:  # absent at the first validation, as train_loss_epoch is in real curves
                row["train_loss"] = 0.25
            curve.append({"round_step": step, "epoch": step // 100 - 1, **row})
        at_best = next(row for row in curve if row["round_step"] == best_step)
        metrics = {key: value for key, value in at_best.items() if key not in ("round_step", "epoch")}
        final = {key: value for key, value in curve[-1].items() if key not in ("round_step", "epoch")}
        remaining = round(266200 * 0.8**k)
        record = {
            "round": k,
            "sparsity": 1 - remaining / 266200,
            "remaining": remaining,
            "total": 266200,
            "remaining_pct": 100 * remaining / 266200,
            "tensor_sparsity": {"fc1.weight": 1 - 0.8**k, "fc3.weight": 1 - 0.9**k},
            "monitor": "val_loss",
            "best": metrics["val_loss"],
            "best_step": 1000 * k + best_step,
            "best_round_step": best_step,
            "best_epoch": best_step // 100 - 1,
            "metrics": metrics,
            "final_metrics": final,
            "steps": 1000,
            "epochs": 10,
        }
        history.append(record)
        folder = lottery / f"round_{k:02d}"
        folder.mkdir(parents=True)
        run_settings = settings(rewind, pruning, seed)
        (folder / "summary.json").write_text(json.dumps({"record": record, "settings": run_settings, "ticket": "t"}))
        atomic_write_csv(folder / "curve.csv", curve)
    (lottery / "history.json").write_text(json.dumps({"settings": settings(rewind, pruning, seed), "history": history}))
    if run_info is not None:
        (run_dir / "run.json").write_text(json.dumps(run_info))
    return run_dir


def fake_sweep(root: Path, experiment: str = "lenet_mnist", language: bool = False) -> Path:
    """A Hydra multirun: numbered job folders, 2 variants x 2 seeds x 4 rounds, each with its run.json."""
    job = 0
    for rewind in ("init", "reinit"):
        for seed in (0, 1):
            info = {"experiment": experiment, "seed": seed, "overrides": [f"seed={seed}"], "config": {}}
            fake_run(root / str(job), seed, rewind, run_info=info, language=language)
            job += 1
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


def test_cli_writes_summary_tables_and_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    sweep = fake_sweep(tmp_path / "multirun")
    assert main([str(sweep), "--out", str(tmp_path / "out")]) == 0
    report_path = Path(capsys.readouterr().out.strip())
    assert report_path == tmp_path / "out" / "report.md"

    rows = read_csv(tmp_path / "out" / "summary.csv")
    assert len(rows) == 2 * 2 * 4
    columns = list(rows[0])
    assert columns[:6] == ["experiment", "variant", "seed", "run", "round", "remaining_pct"]
    assert {"sparsity", "best", "best_round_step", "headline_metric", "headline"} <= set(columns)
    assert {"at_best.test_acc", "at_best.val_loss", "at_best.train_loss", "final.test_acc"} <= set(columns)
    assert [r["variant"] for r in rows[:8]] == ["ticket (rewind to θ₀)"] * 8, "tickets first"
    assert {r["variant"] for r in rows[8:]} == {"random reinit"}
    for row in rows:
        rewind = "reinit" if row["variant"] == "random reinit" else "init"
        acc, step = vision_value(int(row["round"]), int(row["seed"]), rewind)
        assert row["experiment"] == "lenet_mnist" and row["headline_metric"] == "test_acc"
        assert float(row["headline"]) == pytest.approx(acc) == float(row["at_best.test_acc"])
        assert float(row["final.test_acc"]) > float(row["headline"]), "the fake's best test value is the final one"
        assert int(row["best_round_step"]) == step
        assert float(row["remaining_pct"]) == pytest.approx(100 * 0.8 ** int(row["round"]), abs=1e-3)

    report = report_path.read_text()
    metric_rows = table(report, "### test_acc (%) at the early-stop iteration")
    assert metric_rows[0] == ["Round", "Weights remaining (%)", "ticket (rewind to θ₀)", "random reinit"]
    assert [r[1] for r in metric_rows[1:]] == ["100", "80.0", "64.0", "51.2"]
    # Means over seeds 0 and 1 (+0.1 points), sample std 0.2/sqrt(2) points; the better variant in bold.
    assert metric_rows[1][2:] == ["**90.10 ± 0.14 (n=2)**", "**90.10 ± 0.14 (n=2)**"], "tie in the dense round"
    assert metric_rows[2][2:] == ["**91.10 ± 0.14 (n=2)**", "89.10 ± 0.14 (n=2)"]
    assert metric_rows[4][2:] == ["**93.10 ± 0.14 (n=2)**", "87.10 ± 0.14 (n=2)"]
    stop_rows = table(report, "### Early-stop iteration")
    assert [r[2:] for r in stop_rows[1:]] == [
        ["650 ± 71 (n=2)", "550 ± 71 (n=2)"],
        ["550 ± 71 (n=2)", "650 ± 71 (n=2)"],
        ["450 ± 71 (n=2)", "750 ± 71 (n=2)"],
        ["350 ± 71 (n=2)", "850 ± 71 (n=2)"],
    ]
    pngs = sorted((tmp_path / "out").glob("*.png"))
    assert [p.name for p in pngs] == [
        "lenet_mnist_early_stop_vs_weights.png",
        "lenet_mnist_learning_curves.png",
        "lenet_mnist_test_acc_vs_weights.png",
    ]
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 10_000
        assert f"]({png.name})" in report, "embedded with a relative link"
    assert report.count("- ticket (rewind to θ₀), seed") == 2 and "](../multirun/2)" in report


def test_default_output_folder_and_several_dirs(tmp_path: Path):
    a = fake_run(tmp_path / "a", seed=0)
    b = fake_run(tmp_path / "b", seed=0, rewind="reinit")
    path = write_report([a, b])
    assert path == a / "report" / "report.md"
    experiments = {row["experiment"] for row in read_csv(path.parent / "summary.csv")}
    assert experiments == {"a", "b"}, "no run.json: the run's folder names the experiment"
    # Running again finds the same runs (the report folder holds no history.json).
    assert write_report([tmp_path]) == tmp_path / "report" / "report.md"
    assert len(read_csv(tmp_path / "report" / "summary.csv")) == 8


@pytest.mark.parametrize(
    ("rewind", "pruning", "label"),
    [
        ("init", "magnitude", "ticket (rewind to θ₀)"),
        (500, "magnitude", "ticket (rewind to step 500)"),
        ("reinit", "magnitude", "random reinit"),
        ("none", "magnitude", "fine-tune (no rewind)"),
        ("init", "random", "random pruning"),
        ("reinit", "random", "random pruning + random reinit"),
        (500, "random", "random pruning + rewind to step 500"),
    ],
)
def test_variant_labels_from_settings(rewind: Any, pruning: str, label: str):
    assert variant_label(settings(rewind, pruning)) == label


def test_variant_order_and_run_json_labels(tmp_path: Path):
    labels = ["dense", "random reinit of transferred mask", "random ticket", "target ticket", "transferred ticket"]
    for i, label in enumerate(labels):
        fake_run(tmp_path / f"job{i}", seed=3, run_info={"experiment": "transfer", "variant": label, "seed": 7})
    runs = collect_runs([tmp_path])
    assert [r.variant for r in runs] == [
        "target ticket",
        "transferred ticket",
        "random reinit of transferred mask",
        "random ticket",
        "dense",
    ]
    assert {r.seed for r in runs} == {7}, "run.json's seed wins over the callback's"
    names = ["ticket (rewind to step 500)", "fine-tune (no rewind)", "random pruning", "ticket (rewind to θ₀)"]
    rewinds = [500, "none", "init", "init"]
    ordered = sorted(zip(names, rewinds), key=lambda nr: variant_order(nr[0], settings(nr[1])))
    assert [n for n, _ in ordered] == [
        "ticket (rewind to θ₀)",
        "ticket (rewind to step 500)",
        "random pruning",
        "fine-tune (no rewind)",
    ]


def test_experiment_and_seed_without_run_json(tmp_path: Path):
    fake_run(tmp_path / "lenet_search" / "version_0", seed=11)
    fake_run(tmp_path / "lenet_search" / "version_1", seed=12, pruning="random")
    runs = collect_runs([tmp_path])
    assert [(r.experiment, r.variant, r.seed) for r in runs] == [
        ("lenet_search", "ticket (rewind to θ₀)", 11),
        ("lenet_search", "random pruning", 12),
    ], "Lightning's version_N folders are counters, not experiment names"


def test_language_model_headline_is_perplexity_lower_is_better(tmp_path: Path):
    report = write_report([fake_sweep(tmp_path / "sweep", "lstm_ptb", language=True)]).read_text()
    assert "Headline metric: `test_ppl` (lower is better)" in report
    rows = table(report, "### test_ppl at the early-stop iteration")
    # Fake test_ppl grows with the round and the seed; the lower mean is in bold (here: a tie for all rounds).
    assert all(cell.startswith("**") for cell in rows[2][2:])
    summary = read_csv(tmp_path / "sweep" / "report" / "summary.csv")
    assert {r["headline_metric"] for r in summary} == {"test_ppl"}


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
    sweep = fake_sweep(tmp_path / "sweep")
    report = write_report([sweep], metric="val_loss").read_text()
    assert "Headline metric: `val_loss` (lower is better)" in report
    assert (sweep / "report" / "lenet_mnist_val_loss_vs_weights.png").is_file()
    with pytest.raises(ReportError, match=r"'test_ppl' was not recorded.*Available metrics: test_acc, train_loss"):
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


def test_remaining_ticks_thin_crowded_rounds():
    frankle = [100 * 0.8**k for k in range(25)]
    ticks = remaining_ticks(frankle)
    assert ticks[0] == 100 and ticks[-1] == frankle[-1] and len(ticks) <= 10
    assert remaining_ticks([100.0, 51.3, 21.1]) == [100.0, 51.3, 21.1]


def test_report_reads_a_real_tiny_search(tmp_path: Path):
    """Two real searches (rewind to θ₀ and random reinit) as a plain Lightning user lays them out."""
    for version, rewind in enumerate(("init", "reinit")):
        lottery = LotteryTicketCallback(
            rounds=2, amount=0.5, rewind=rewind, seed=5, dirpath=tmp_path / "tiny" / f"version_{version}" / "lottery"
        )
        train, val = loaders()
        trainer(max_epochs=2, callbacks=[lottery]).fit(TinyNet(), train, val)
    path = write_report([tmp_path / "tiny"])
    rows = read_csv(path.parent / "summary.csv")
    assert [(r["experiment"], r["variant"], r["round"]) for r in rows] == [
        ("tiny", variant, str(k)) for variant in ("ticket (rewind to θ₀)", "random reinit") for k in range(3)
    ]
    history = json.loads((tmp_path / "tiny" / "version_0" / "lottery" / "history.json").read_text())["history"]
    assert [float(r["headline"]) for r in rows[:3]] == pytest.approx([h["metrics"]["val_acc"] for h in history])
    assert {r["headline_metric"] for r in rows} == {"val_acc"} and {r["seed"] for r in rows} == {"5"}
    assert [float(r["remaining_pct"]) for r in rows[:3]] == pytest.approx([100, 50, 25], abs=1)
    report = path.read_text()
    assert "| ticket (rewind to θ₀) | random reinit |" in report
    for png in path.parent.glob("*.png"):
        assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert len(list(path.parent.glob("*.png"))) == 3


def test_variant_labels_of_controls_and_transfers():
    from lightning_lottery.report.collect import variant_label

    assert variant_label({"rewind": "reshuffle"}) == "reshuffled θ₀"
    assert variant_label({"rewind": "signed_constant"}) == "signed constant init"
    assert variant_label({"rewind": "init", "rewind_noise": 0.5}) == "ticket (rewind to θ₀ + noise 0.5σ)"
    assert variant_label({"rewind": "epoch:1"}) == "ticket (rewind to epoch 1)"
    assert variant_label({"transfer": {"variant": "random"}}) == "random ticket"
