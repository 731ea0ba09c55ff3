"""Where a search stands, as plain data: the branch being trained, the masks of its level and of the next, what
the branch started from, the optimizer steps trained so far and the history. This is what a checkpoint holds of a
search; the callback moves it forward between fit-loop runs."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from torch import Tensor

from lightning_lottery.core.levels import Branch, SearchPlan
from lightning_lottery.core.snapshot import State

Masks = dict[str, Tensor]


@dataclass
class SearchProgress:
    """The state of a search between and during its branches.

    Attributes:
        plan: every branch, in the order they train.
        position: index of the branch being trained in ``plan``.
        masks: the masks installed now (the branch's own: a ``random`` control's differ from the level's).
        level_masks: the current level's ticket mask.
        next_masks: the next level's ticket mask, pruned from this level's trained ticket (controls never change it).
        level_start / next_start: what the current / next level starts from when levels keep the trained weights
            (finetune, lr_rewind).
        branch_start: what the current branch started from, when not θ₀ or θ_k (controls, finetune, transfer).
        start_counts: weights per tensor unpruned when the search began (a model may arrive pruned).
        branch_start_step: the global step the branch started at (0, or k with late rewinding).
        steps_before: optimizer steps of all finished branches.
        history: one record per finished (level, branch).
        finished / stopped: the search ran every branch / why it ended early (``max_time``, SIGTERM).
    """

    plan: SearchPlan
    position: int = 0
    masks: Masks | None = None
    level_masks: Masks | None = None
    next_masks: Masks | None = None
    level_start: State | None = None
    next_start: State | None = None
    branch_start: State | None = None
    start_counts: dict[str, int] = field(default_factory=dict)
    branch_start_step: int = 0
    steps_before: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False
    stopped: str | None = None

    @property
    def current(self) -> Branch:
        return self.plan[min(self.position, len(self.plan) - 1)]

    @property
    def last(self) -> bool:
        return self.position + 1 >= len(self.plan)

    def record(self, record: dict[str, Any]) -> None:
        """Keep the finished branch's record (replacing one of a resumed run) and count its steps."""
        key = (record["round"], record["branch"])
        self.history = [r for r in self.history if (r["round"], r["branch"]) != key] + [record]
        self.steps_before += record["steps"]

    def advance(self) -> Branch:
        """Move to the next branch; a ticket branch starts a new level with the masks pruned for it."""
        if self.last:
            raise RuntimeError("the search has no branch left")
        self.position += 1
        branch = self.current
        if branch.is_ticket:
            if self.next_masks is None:
                raise RuntimeError(f"{branch} has no masks: the previous level's ticket was not pruned")
            self.level_masks, self.next_masks = self.next_masks, None
            self.level_start, self.next_start = self.next_start, None
        return branch

    def state_dict(self) -> dict[str, Any]:
        """Everything but the plan (it follows from the search's settings)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "plan"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)


def upgrade_search_state(state: dict[str, Any]) -> dict[str, Any]:
    """A callback state of an older layout in today's. Version 2 kept the progress's fields at the top level;
    version 3 nests them under ``progress`` and adds ``auto_rewind``. Other versions are returned unchanged."""
    if state.get("version") != 2:
        return state
    names = [f.name for f in fields(SearchProgress) if f.name != "plan"]
    upgraded = {k: v for k, v in state.items() if k not in names}
    upgraded.update(version=3, progress={name: state[name] for name in names}, auto_rewind=None)
    return upgraded
