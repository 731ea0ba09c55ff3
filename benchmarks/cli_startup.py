"""Start-up of the ``lightning-lottery`` command: ``--help``, ``--cfg job`` and a refused bad setting, before and after.

    python -m benchmarks cli_startup [--before REV] [--repeats N]

Each command runs as a fresh process (what a user and a shell's tab completion wait for), once per repeat and
variant in turn; the median wall time per variant and the median of paired ratios (before / after) are reported.
"before" is the package as of git revision REV (default: the parent of the commit that made imports lazy), exported
to a temporary folder; "after" is this tree. Goal: under 2 s for ``--help`` and ``--cfg job``.
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from benchmarks.common import emit, interleaved, machine, paired_ratios, table

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "--help": ["--help"],
    "--cfg job": ["--cfg", "job"],
    "--cfg job (recipe)": ["--cfg", "job", "recipe=cifar10_resnet20", "preset=fast"],
    "bad setting": ["seed=abc", "hydra.run.dir={tmp}/refused"],
}
GOAL_S = 2.0


def _export(revision: str, folder: Path) -> Path:
    """The package as of ``revision``, extracted under ``folder``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", revision, "lightning_lottery"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def _runner(tree: Path, args: list[str], tmp: Path) -> float:
    code = "import sys; from lightning_lottery.app import main; sys.argv[0] = 'lightning-lottery'; main()"
    command = [sys.executable, "-c", code, *(a.format(tmp=tmp) for a in args)]
    env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin", "HOME": str(tmp)}
    start = time.perf_counter()
    subprocess.run(command, env=env, cwd=tmp, capture_output=True, check=False, timeout=300)
    return time.perf_counter() - start


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks cli_startup", description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="51dd92e", help="git revision of the 'before' package")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        before = _export(args.before, tmp / "before")
        trees = {"before": before, "after": ROOT}
        for name, command in COMMANDS.items():
            variants = {label: (lambda t=tree, c=command: _runner(t, c, tmp)) for label, tree in trees.items()}
            times = interleaved(variants, repeats=args.repeats)
            medians = {label: statistics.median(t) for label, t in times.items()}
            speedup = 1 / paired_ratios(times, baseline="before")["after"]
            record = {
                "benchmark": "cli_startup",
                "command": name,
                "before_s": medians["before"],
                "after_s": medians["after"],
                "speedup": speedup,
                "goal_s": GOAL_S,
                "repeats": args.repeats,
                "before_revision": args.before,
                "machine": machine(),
            }
            emit(record)
            rows.append([name, f"{medians['before']:.2f}", f"{medians['after']:.2f}", f"{speedup:.1f}x"])
    table("lightning-lottery start-up (median wall seconds)", rows, ["command", "before", "after", "speed-up"])


if __name__ == "__main__":
    main(sys.argv[1:])
