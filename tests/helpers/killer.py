"""A callback the console tests add through Hydra (``+callbacks.killer._target_=killer.KillAt``) to SIGKILL a search
at a chosen point: after an optimizer step, or in the middle of writing a checkpoint or a ticket (after the temporary
file is written, before it replaces the target)."""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning.pytorch as pl


class KillAt(pl.Callback):
    """SIGKILL this process at level ``round``, branch ``branch``, once the global step reaches ``step``.

    ``during``: ``"step"`` (right after that optimizer step), ``"checkpoint"`` or ``"ticket"`` (inside the next
    atomic write of a ``.ckpt`` or a ``ticket.safetensors`` file from then on).
    """

    def __init__(self, round: int, branch: str = "ticket", step: int = 0, during: str = "step") -> None:
        self.where, self.step, self.during = (round, branch), step, during
        self.armed = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        lottery = next(cb for cb in trainer.callbacks if type(cb).__name__ == "LotteryTicketCallback")
        if self.armed or (lottery.round, lottery.branch) != self.where or trainer.global_step < self.step:
            return
        if self.during == "step":
            os.kill(os.getpid(), signal.SIGKILL)
        self.armed = True
        suffix = ".ckpt" if self.during == "checkpoint" else "ticket.safetensors"
        replace = os.replace

        def replace_or_die(src: Any, dst: Any) -> None:
            if str(dst).endswith(suffix):
                os.kill(os.getpid(), signal.SIGKILL)  # the temporary file is complete, the target not replaced
            replace(src, dst)

        os.replace = replace_or_die
