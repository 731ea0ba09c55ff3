"""A small lottery search run as its own process: killed and resumed, or under DDP, by the tests.

Usage: python lottery_run.py OUT [--kill-round R --kill-epoch E] [--resume] [--devices N] [--shuffle]
Writes OUT/result_rank{r}.json (history) and OUT/ticket_rank{r}.safetensors (final masks and rewind weights).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny import TinyNet, make_data
from torch.utils.data import DataLoader

from lightning_lottery import LotteryTicketCallback, Ticket


def log_ticket_writes(out: Path) -> None:
    """Record every Ticket.save with the writing process's rank (the tests check only rank 0 writes)."""
    original = Ticket.save

    def save(ticket: Ticket, path: str | os.PathLike[str]) -> Path:
        rank = os.environ.get("LOCAL_RANK", "0")
        with open(out / "ticket_writes.log", "a") as f:
            f.write(f"{rank} {'/'.join(Path(path).parts[-3:-1])}\n")
        return original(ticket, path)

    Ticket.save = save  # type: ignore[method-assign]


class KillAt(pl.Callback):
    """SIGKILL this process at the start of epoch ``epoch`` of a branch (after that branch's checkpoints)."""

    def __init__(self, lottery: LotteryTicketCallback, round_index: int, branch: str, epoch: int) -> None:
        self.lottery, self.where, self.epoch = lottery, (round_index, branch), epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (self.lottery.round, self.lottery.branch) == self.where and trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--kill-round", type=int)
    parser.add_argument("--kill-epoch", type=int, default=1)
    parser.add_argument("--kill-branch", default="ticket")
    parser.add_argument("--controls", nargs="*", default=[])
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--shuffle", action="store_true")
    parser.add_argument("--rewind", default="init")
    args = parser.parse_args()

    pl.seed_everything(0, verbose=False)
    args.out.mkdir(parents=True, exist_ok=True)
    log_ticket_writes(args.out)
    rewind = int(args.rewind) if args.rewind.isdigit() else args.rewind
    lottery = LotteryTicketCallback(
        rounds=3, amount=0.3, rewind=rewind, controls=args.controls, monitor="val_loss", seed=1, verbose=False
    )
    checkpoint = ModelCheckpoint(dirpath=args.out / "checkpoints", save_last=True, every_n_epochs=1, save_top_k=-1)
    callbacks: list[pl.Callback] = [lottery, checkpoint]
    if args.kill_round is not None:
        callbacks.append(KillAt(lottery, args.kill_round, args.kill_branch, args.kill_epoch))
    accelerator = os.environ.get("LOTTERY_TEST_ACCELERATOR", "cpu")
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        max_epochs=3,
        default_root_dir=args.out,
        logger=False,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    model = TinyNet(dropout=0.2, optimizer="adam")
    train = DataLoader(make_data(128), batch_size=16, shuffle=args.shuffle)
    val = DataLoader(make_data(32, seed=1), batch_size=32)
    trainer.fit(model, train, val, ckpt_path="last" if args.resume else None)

    rank = trainer.global_rank
    Ticket.save(lottery.ticket(), args.out / "final" / f"ticket_rank{rank}.safetensors")
    sparsity = {n: 1.0 - float(m.sum()) / m.numel() for n, m in lottery.masks.items()}
    result = {"history": lottery.history, "mask_sparsity": sparsity, "world_size": trainer.world_size}
    (args.out / f"result_rank{rank}.json").write_text(json.dumps(result, default=float))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
