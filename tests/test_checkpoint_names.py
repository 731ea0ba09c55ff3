"""LotteryCheckpoint: checkpoint files named by level and branch, last.ckpt a real file, writes atomic."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
from tiny import TinyNet, loaders, trainer

from lightning_lottery import LotteryTicketCallback
from lightning_lottery.callbacks import AtomicCheckpointIO, LotteryCheckpoint


def test_files_name_the_level_and_branch(tmp_path: Path):
    checkpoint = LotteryCheckpoint(dirpath=tmp_path, save_top_k=1, every_n_epochs=1)
    lottery = LotteryTicketCallback(rounds=2, monitor="val_loss")
    train, val = loaders()  # 4 steps per epoch
    fit = trainer(max_epochs=2, enable_checkpointing=True, callbacks=[lottery, checkpoint])
    fit.fit(TinyNet(), train, val)

    names = sorted(p.name for p in tmp_path.iterdir())
    levels = {n for n in names if n.startswith("round=")}
    assert levels == {f"round={r:02d}-branch=ticket-step=8.ckpt" for r in range(3)}, names
    assert "last.ckpt" in names and not (tmp_path / "last.ckpt").is_symlink()
    assert not [n for n in names if n.startswith(".") or "-v" in n]  # no temp files, no -v1 versions
    assert isinstance(fit.strategy.checkpoint_io, AtomicCheckpointIO)
    state = torch.load(tmp_path / "last.ckpt", weights_only=True, map_location="cpu")
    assert state["global_step"] == 8


def test_the_branch_attribute_is_used_when_the_callback_has_one(tmp_path: Path):
    class Lottery:  # stands in for a search in a control branch
        round, branch, history = 4, "random", []

    checkpoint = LotteryCheckpoint(dirpath=tmp_path)
    checkpoint._lottery = Lottery()
    name = os.path.basename(checkpoint.format_checkpoint_name({"step": torch.tensor(12)}))
    assert name == "round=04-branch=random-step=12.ckpt"
    assert os.path.basename(checkpoint.format_checkpoint_name({}, checkpoint.CHECKPOINT_NAME_LAST)) == "last.ckpt"


def test_without_a_lottery_callback_the_name_says_level_zero(tmp_path: Path):
    checkpoint = LotteryCheckpoint(dirpath=tmp_path, save_last=False)
    train, val = loaders()
    trainer(max_epochs=1, enable_checkpointing=True, callbacks=[checkpoint]).fit(TinyNet(), train, val)
    assert [p.name for p in tmp_path.iterdir()] == ["round=00-branch=ticket-step=4.ckpt"]


def test_checkpoints_get_the_mode_the_umask_allows(tmp_path: Path):
    saved = os.umask(0o022)
    try:
        checkpoint = LotteryCheckpoint(dirpath=tmp_path)
        train, val = loaders()
        trainer(max_epochs=1, enable_checkpointing=True, callbacks=[checkpoint]).fit(TinyNet(), train, val)
    finally:
        os.umask(saved)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes and set(modes.values()) == {0o644}, modes


def test_a_link_for_last_is_refused():
    with pytest.raises(ValueError, match=r"save_last='link'\) is not supported"):
        LotteryCheckpoint(save_last="link")
    with pytest.raises(TypeError, match="atomic"):
        LotteryCheckpoint(atomic="yes")


def test_atomic_checkpoint_io_leaves_the_old_file_when_saving_fails(tmp_path: Path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        AtomicCheckpointIO().save_checkpoint({"step": 2, "bad": Unpicklable()}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert torch.load(path, weights_only=True) == {"step": 1}


def test_checkpoints_to_a_memory_url():
    import uuid

    import fsspec

    folder = f"memory://ckpt-{uuid.uuid4().hex}"
    checkpoint = LotteryCheckpoint(dirpath=folder)
    lottery = LotteryTicketCallback(rounds=1, monitor="val_loss")
    train, val = loaders()
    trainer(max_epochs=1, enable_checkpointing=True, callbacks=[lottery, checkpoint]).fit(TinyNet(), train, val)
    fs = fsspec.filesystem("memory")
    inner = folder.removeprefix("memory://")
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(inner, detail=False))
    assert names == ["last.ckpt", "round=00-branch=ticket-step=4.ckpt", "round=01-branch=ticket-step=4.ckpt"]
    with fs.open(f"{inner}/last.ckpt", "rb") as f:
        assert torch.load(f, weights_only=True)["global_step"] == 4
    fs.rm(inner, recursive=True)
