"""Bad command-line input: one line on stderr naming the setting, exit code 2, and not a single training step.

Each row runs the command's entry point, ``lightning_lottery.app.main()``, in this process with ``sys.argv`` set
(a subprocess would spend seconds starting per row; ``test_app_cli.py`` checks the real console command). To add a
case, add a ``Bad(...)`` row: the overrides, and a regular expression for the line after ``lightning-lottery: ``.
A row can prepare the run folder first (``prepare``), e.g. to plant a broken checkpoint.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from lightning_lottery.app import main

# A tiny search, so that a row the app wrongly accepted would finish in seconds (and fail its row).
BASE = [
    "preset=fast",
    "data=synthetic",
    "data.num_train=120",
    "fast.max_steps=2",
    "fast.rounds=1",
    "trainer.enable_progress_bar=false",
    "report=false",
]


def _checkpoints(run_dir: Path) -> Path:
    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True)
    return folder


def _dangling_last(run_dir: Path) -> None:
    os.symlink("epoch=0-step=10.ckpt", _checkpoints(run_dir) / "last.ckpt")


def _truncated_last(run_dir: Path) -> None:
    (_checkpoints(run_dir) / "last.ckpt").write_bytes(b"PK\x03\x04 truncated by a full disk")


def _no_last(run_dir: Path) -> None:
    (_checkpoints(run_dir) / "epoch=0-step=10.ckpt").write_bytes(b"")


@dataclass(frozen=True)
class Bad:
    args: tuple[str, ...]
    message: str  # regular expression, matched from the start of the line after "lightning-lottery: "
    prepare: Callable[[Path], None] | None = None


CASES = {
    # config groups and keys that do not exist
    "unknown recipe": Bad(("recipe=nope",), r"recipe=nope: no such option of `recipe`; allowed: .*mnist_lenet300"),
    "unknown data": Bad(("data=nope",), r"data=nope: no such option of `data`; allowed: .*synthetic"),
    "unknown optimizer": Bad(("optim=nope",), r"optim=nope: no such option of `optim`; allowed: .*adamw"),
    "unknown logger": Bad(("logger=nope",), r"logger=nope: no such option of `logger`; allowed: csv, none"),
    "unknown trainer": Bad(("trainer=nope",), r"trainer=nope: no such option of `trainer`; allowed: cpu, ddp"),
    "unknown cluster": Bad(("cluster=nope",), r"cluster=nope: no such option of `cluster`; allowed: slurm_imagenet"),
    "unknown top-level key": Bad(("sed=1",), r"sed: no such setting"),
    "unknown trainer key": Bad(("trainer.max_step=5",), r"trainer\.max_step: no such setting"),
    "added key the Trainer lacks": Bad(("+trainer.max_step=5",), r"trainer\.max_step: .*Trainer has no argument"),
    "added key the optimizer lacks": Bad(("+optim.momentum=0.9",), r"optim\.momentum: .*Adam has no argument"),
    "override without value": Bad(("lottery.rounds",), r"cannot parse the command line: .*key=value"),
    "unbalanced bracket": Bad(("lottery.exclude=[",), r"cannot parse the command line"),
    # wrong types and values of the app's own settings
    "seed not a number": Bad(("seed=abc",), r"seed: got 'abc'; allowed: an integer"),
    "seed a fraction": Bad(("seed=1.5",), r"seed: got 1.5; allowed: an integer"),
    "report not a boolean": Bad(("report=maybe",), r"report: got 'maybe'; allowed: true or false"),
    "objective not a name": Bad(("objective=5",), r"objective: got 5; allowed: null or a string"),
    "missing checkpoint file": Bad(("ckpt_path=/no/such.ckpt",), r"ckpt_path: got '/no/such\.ckpt', which is no file"),
    # trainer
    "zero steps": Bad(("trainer.max_steps=0",), r"trainer\.max_steps: got 0; allowed: -1 .* or a positive integer"),
    "steps not a number": Bad(("trainer.max_steps=abc",), r"trainer\.max_steps: got 'abc'; allowed: an integer"),
    "zero epochs": Bad(("trainer.max_epochs=0",), r"trainer\.max_epochs: got 0; allowed: null, -1 or a positive"),
    "unknown precision": Bad(("trainer.precision=15",), r"trainer\.precision: got 15; allowed: one of 64, 32, 16"),
    "devices of the wrong type": Bad(("trainer.devices=[a]",), r"trainer\.devices: got \['a'\]; allowed: a list"),
    # data
    "batch size not a number": Bad(("data.batch_size=abc",), r"data\.batch_size: got 'abc'; allowed: an integer"),
    "image shape not a list": Bad(("data.image_shape=28",), r"data\.image_shape: got 28; allowed: a list"),
    "negative validation split": Bad(("data.val_size=-5",), r"data\.val_size: val_size must be >= 0"),
    # optimizer and model
    "learning rate not a number": Bad(("optim.lr=fast",), r"optim\.lr: got 'fast'; allowed: a number"),
    "negative learning rate": Bad(("optim.lr=-1",), r"optim\.lr: got -1; allowed: a positive number"),
    "optimizer that is no optimizer": Bad(("optim._target_=torch.nn.Linear",), r"optim\._target_: got 'torch\.nn"),
    "optimizer that does not exist": Bad(("optim._target_=torch.optim.Nope",), r"optim\._target_: cannot import"),
    "unknown architecture": Bad(("model.arch=alexnet",), r"model\.arch: Unknown model 'alexnet'; valid names"),
    "unknown init": Bad(("model.init=xavier",), r"model\.init: Unknown init scheme 'xavier'; valid: glorot_normal"),
    # logger and callbacks
    "logger folder not a path": Bad(("logger.save_dir=5",), r"logger\.save_dir: got 5; allowed: a string"),
    "logger class that does not exist": Bad(("logger._target_=no.such.Logger",), r"logger\._target_: cannot import"),
    "checkpoint top-k not a number": Bad(
        ("callbacks.checkpoint.save_top_k=abc",), r"callbacks\.checkpoint\.save_top_k: got 'abc'; allowed: an integer"
    ),
    # the lottery callback's arguments, as far as their types go (the callback judges their values)
    "unknown scope": Bad(("lottery.scope=everywhere",), r"lottery\.scope: got 'everywhere'; allowed: one of"),
    "amount outside (0, 1)": Bad(("lottery.amount=1.5",), r"lottery\.amount: `amount=1\.5` is outside \(0, 1\)"),
    "negative rounds": Bad(("lottery.rounds=-1",), r"lottery\.rounds: `rounds=-1` must be an int >= 0"),
    "an old rewind word": Bad(("lottery.rewind=none",), r"lottery\.rewind: rewind='none' is now rewind='finetune'"),
    "reinit as a rewind": Bad(("lottery.rewind=reinit",), r"lottery\.rewind: .*controls=\['reinit'\]"),
    "unknown control": Bad(("lottery.controls=[shuffle]",), r"lottery\.controls: `controls` has unknown entries"),
    "noise without a scale": Bad(("lottery.controls=[noise]",), r"lottery\.controls: .*set `rewind_noise` > 0"),
    "NaN noise": Bad(("lottery.rewind_noise=nan",), r"lottery\.rewind_noise: `rewind_noise=nan` must be a finite"),
    "amount as a string": Bad(("lottery.amount='0.2'",), r"lottery\.amount: got '0\.2'; allowed: a number or a list"),
    "layer amounts as a name": Bad(("lottery.layer_amounts=fc1.weight",), r"lottery\.layer_amounts: got 'fc1\.weight'"),
    "unknown pruning": Bad(("lottery.pruning=l1",), r"lottery\.pruning: `pruning='l1'` is not one of"),
    "pruning at init with late rewinding": Bad(
        ("lottery.pruning=snip", "lottery.rewind=1"), r"lottery\.pruning: `pruning='snip'` .* needs rewind='init'"
    ),
    "bad N:M structure": Bad(("lottery.structure='5:4'",), r"lottery\.structure: .*5:4"),
    "early-bird without every": Bad(("lottery.early_bird={patience:5}",), r"lottery\.early_bird: .*'every'"),
    "rewind beyond the budget": Bad(("lottery.rewind='epoch:50'",), r"lottery\.rewind: `rewind='epoch:50'` is not"),
    # transfer
    "unknown transfer variant": Bad(("transfer.variant=bogus",), r"transfer\.variant: got 'bogus'; allowed: one of"),
    "missing transfer source": Bad(("transfer.ticket=/no/such/run",), r"transfer\.ticket: got '/no/such/run', which"),
    # resuming with nothing to resume from
    "resume in a new folder": Bad(("ckpt_path=last",), r"ckpt_path=last: nothing to resume in .*there is no .*last"),
    "resume without last.ckpt": Bad(("ckpt_path=last",), r"ckpt_path=last: nothing to resume .*no .*last", _no_last),
    "resume from a dangling link": Bad(("ckpt_path=last",), r"ckpt_path=last: .*dangling link", _dangling_last),
    "resume from a truncated file": Bad(("ckpt_path=auto",), r"ckpt_path=auto: .*truncated", _truncated_last),
}


def _files(folder: Path) -> dict[str, bytes]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_input_is_one_line_exit_2_and_trains_nothing(
    case: Bad, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    if case.prepare is not None:
        case.prepare(run_dir)
    before = _files(run_dir)
    monkeypatch.setattr(sys, "argv", ["lightning-lottery", *BASE, f"hydra.run.dir={run_dir}", *case.args])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capfd.readouterr().err
    assert exit_info.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("lightning-lottery: "), lines[0]
    assert __import__("re").match(case.message, lines[0].removeprefix("lightning-lottery: ")), lines[0]
    # Nothing trained and nothing changed: a folder the command created is gone, a prepared one is as it was.
    assert _files(run_dir) == before
    assert not (run_dir / "lottery").exists()


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 30
