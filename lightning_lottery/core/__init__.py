"""The pure-torch core of lightning_lottery: masks, pruning criteria, schedules and snapshots.

Nothing here imports Lightning; the callback is a thin adapter from Lightning hooks onto these pieces.
"""

from lightning_lottery.core.pruning import Masks, counts, magnitude_masks, random_masks
from lightning_lottery.core.reparam import (
    LotteryMask,
    MaskEnforcer,
    current_masks,
    install_masks,
    remove_masks,
)
from lightning_lottery.core.schedule import PruneGroup, SparsitySchedule, cumulative_sparsity, pruned_count
from lightning_lottery.core.selection import PrunableTensor, select_prunable
from lightning_lottery.core.snapshot import State, dense_state, load_dense_state
from lightning_lottery.core.structure import (
    NMStructure,
    check_structure,
    nm_masks,
    random_nm_masks,
    structured_next_masks,
)

__all__ = [
    "LotteryMask",
    "MaskEnforcer",
    "Masks",
    "NMStructure",
    "PrunableTensor",
    "PruneGroup",
    "SparsitySchedule",
    "State",
    "check_structure",
    "counts",
    "cumulative_sparsity",
    "current_masks",
    "dense_state",
    "install_masks",
    "load_dense_state",
    "magnitude_masks",
    "nm_masks",
    "pruned_count",
    "random_masks",
    "random_nm_masks",
    "remove_masks",
    "select_prunable",
    "structured_next_masks",
]
