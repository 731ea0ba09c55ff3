"""Analyses: of what a search wrote (its ticket files: mask overlaps, per-layer sparsity) and of trained networks
that need training runs of their own (instability: Lightning adapters over ``core``)."""

from lightning_lottery.analysis.instability import (
    InstabilityResult,
    StepCheckpoints,
    instability,
    train_children,
    train_parent,
)
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
    "InstabilityResult",
    "MaskComparison",
    "StepCheckpoints",
    "branch_overlaps",
    "find_tickets",
    "instability",
    "layer_sparsity",
    "level_overlaps",
    "read_masks",
    "run_overlaps",
    "seed_overlaps",
    "train_children",
    "train_parent",
]
