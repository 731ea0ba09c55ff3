"""``lightning-lottery-report DIR [DIR ...] [--out OUT] [--metric NAME] [--format png,pdf,svg]``: tables and figures
from searches."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from lightning_lottery.report.build import write_report
from lightning_lottery.report.collect import ReportError
from lightning_lottery.report.figures import FORMATS, parse_formats


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lightning-lottery-report",
        description=(
            "Summarise lottery-ticket searches: every history.json found under DIR is one run. Writes "
            "summary.csv, report.md and figures of the headline metric at the early-stop iteration. Runs whose "
            "settings differ in anything but the seed are reported as separate series."
        ),
    )
    p.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="run folder(s) or Hydra multirun sweep folder(s)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <first DIR>/report)")
    p.add_argument(
        "--metric",
        default=None,
        metavar="NAME",
        help="headline metric (default: first of test_acc, val_acc, test_ppl, val_ppl recorded, else the monitor)",
    )
    p.add_argument(
        "--format",
        default="png",
        metavar="FMT[,FMT]",
        help=f"figure formats, comma-separated, among {', '.join(FORMATS)} (default: png; the first is embedded)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lightning-lottery-report``: prints the path of report.md; exits 2 on a report error."""
    p = parser()
    args = p.parse_args(argv)
    try:
        formats = parse_formats(args.format)
    except ValueError as err:
        p.exit(2, f"{p.prog}: error: --format: {err}\n")
    try:
        path = write_report(args.dirs, out=args.out, metric=args.metric, formats=formats)
    except ReportError as err:
        p.exit(2, f"{p.prog}: error: {err}\n")
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
