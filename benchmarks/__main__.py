"""``python -m benchmarks NAME [options]``: run one benchmark (``--help`` on each for its options)."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = (
    "mask_overhead",
    "mask_overhead_in_process",
    "optimizer_step",
    "prune_round",
    "end_to_end",
    "openlth_protocol",
    "paper_figure",
    "semi_structured",
    "cli_startup",
)

if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
    print(f"usage: python -m benchmarks {{{','.join(BENCHMARKS)}}} [options]", file=sys.stderr)
    sys.exit(2)
importlib.import_module(f"benchmarks.{sys.argv[1]}").main(sys.argv[2:])
