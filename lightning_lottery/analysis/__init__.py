"""Analyses of trained networks that need training runs of their own (Lightning adapters over ``core``)."""

from lightning_lottery.analysis.instability import (
    InstabilityResult,
    StepCheckpoints,
    instability,
    train_children,
    train_parent,
)

__all__ = ["InstabilityResult", "StepCheckpoints", "instability", "train_children", "train_parent"]
