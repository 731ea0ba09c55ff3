"""Lightning callbacks around a lottery-ticket search: checkpoints named by level and branch, written atomically."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_lottery import io

__all__ = ["AtomicCheckpointIO", "LotteryCheckpoint", "find_lottery"]


def find_lottery(trainer: pl.Trainer) -> Any | None:
    """The trainer's lottery-ticket callback (any callback with ``round`` and ``history``), or ``None``."""
    for callback in trainer.callbacks:
        if type(callback).__name__ == "LotteryTicketCallback" or (
            hasattr(callback, "round") and hasattr(callback, "history")
        ):
            return callback
    return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` checkpoints through :func:`lightning_lottery.io.atomic_write`.

    Lightning's own writer stages a checkpoint in the system temp folder and moves it into place; when that folder
    is on another disk the move is a copy, and a crash or a full disk leaves a truncated checkpoint under the final
    name. Here the temporary file lies next to the target, is fsynced and renamed, and gets the mode the umask
    allows. Local paths and fsspec URLs.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__}.save_checkpoint takes no storage_options (got {storage_options!r}); "
                "pass a custom CheckpointIO plugin to the Trainer to use them."
            )
        io.atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


class LotteryCheckpoint(ModelCheckpoint):
    """A :class:`~lightning.pytorch.callbacks.ModelCheckpoint` whose files name the search's level and branch.

    Files read ``round=03-branch=ticket-step=120.ckpt`` (``round`` and ``branch`` come from the trainer's
    ``LotteryTicketCallback``: its ``round`` and ``branch`` attributes, ``branch`` defaulting to ``"ticket"``);
    the template may use them with any of ModelCheckpoint's keys (``epoch``, ``step``, logged metrics).
    ``last.ckpt`` keeps its name. The default ``save_last=True`` writes it as a real file: a link can dangle
    when a kill falls between deleting the old checkpoint and re-linking.

    With ``atomic=True`` (the default) the checkpoints are written by :class:`AtomicCheckpointIO` when the
    strategy uses Lightning's plain ``TorchCheckpointIO`` (other checkpoint plugins are left alone).

    Args:
        filename: the name template; by default ``round={round:02d}-branch={branch}-step={step}``.
        auto_insert_metric_name: ModelCheckpoint's option; off by default, as the template names its keys.
        save_last: ``True`` (default) keeps ``last.ckpt`` as a real file; ``"link"`` is refused (see above).
        atomic: write checkpoints atomically (see above).
        **kwargs: the other arguments of ``ModelCheckpoint``.

    Example::

        >>> from lightning_lottery.callbacks import LotteryCheckpoint
        >>> ckpt = LotteryCheckpoint(dirpath="checkpoints")
        >>> import os; os.path.basename(ckpt.format_checkpoint_name({"step": 120, "round": 3, "branch": "ticket"}))
        'round=03-branch=ticket-step=120.ckpt'
    """

    DEFAULT_FILENAME = "round={round:02d}-branch={branch}-step={step}"

    def __init__(
        self,
        filename: str | None = DEFAULT_FILENAME,
        auto_insert_metric_name: bool = False,
        save_last: bool | str | None = True,
        atomic: bool = True,
        **kwargs: Any,
    ) -> None:
        if save_last == "link":
            raise ValueError(
                "LotteryCheckpoint(save_last='link') is not supported: a link can be left dangling by a kill between "
                "removing the old checkpoint and re-linking. Use save_last=True (a real last.ckpt) or False."
            )
        if not isinstance(atomic, bool):
            raise TypeError(f"LotteryCheckpoint(atomic=...) must be True or False, got {atomic!r}")
        super().__init__(
            filename=filename, auto_insert_metric_name=auto_insert_metric_name, save_last=save_last, **kwargs
        )
        self.atomic = atomic
        self._lottery: Any | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._lottery = find_lottery(trainer)
        if self.atomic and type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()

    def lottery_position(self) -> dict[str, Any]:
        """The level and branch the search is in now; empty without a lottery callback."""
        lottery = self._lottery
        if lottery is None:
            return {}
        return {"round": int(lottery.round), "branch": str(getattr(lottery, "branch", None) or "ticket")}

    def format_checkpoint_name(
        self,
        metrics: dict[str, Any],
        filename: str | None = None,
        ver: int | None = None,
        prefix: str | None = None,
    ) -> str:
        metrics = {"round": 0, "branch": "ticket", **metrics, **self.lottery_position()}
        return super().format_checkpoint_name(metrics, filename=filename, ver=ver, prefix=prefix)
