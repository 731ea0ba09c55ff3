"""Analyses of what a search wrote (its ticket files), independent of Lightning and of the report."""

from lightning_lottery.analysis.masks import (
    MaskComparison,
    branch_overlaps,
    find_tickets,
    layer_sparsity,
    level_overlaps,
    read_masks,
    run_overlaps,
    seed_overlaps,
)

__all__ = [
    "MaskComparison",
    "branch_overlaps",
    "find_tickets",
    "layer_sparsity",
    "level_overlaps",
    "read_masks",
    "run_overlaps",
    "seed_overlaps",
]
