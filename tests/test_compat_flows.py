"""Lightning flows around a search: each works as a Lightning user expects, or is refused before training."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, StochasticWeightAveraging, Timer
from tiny import TinyNet, loaders, make_data, trainer
from torch.nn.utils import prune
from torch.utils.data import DataLoader

from lightning_lottery import LotteryTicketCallback
from lightning_lottery.core import dense_state


def test_test_and_validate_with_a_checkpoint_path_evaluate_the_pruned_model_it_names(tmp_path: Path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=1, save_last=True)
    lottery = LotteryTicketCallback(rounds=2, amount=0.5, monitor="val_loss", save_tickets=False)
    model = TinyNet()
    train, val = loaders()
    fit = trainer(max_epochs=2, enable_checkpointing=True, callbacks=[lottery, checkpoint])
    fit.fit(model, train, val)
    last = fit.validate(model, val, ckpt_path="last")[0]
    assert torch.equal(model.fc1.weight_mask.bool(), lottery.masks["fc1.weight"]), "last: level 2's masks"
    assert last["val_loss"] == pytest.approx(lottery.history[-1]["final_metrics"]["val_loss"], rel=1e-5)
    best = fit.validate(model, val, ckpt_path="best")[0]
    saved = torch.load(checkpoint.best_model_path, weights_only=True)["state_dict"]
    assert torch.equal(model.fc1.weight.detach(), saved["fc1.weight"]), "the model holds the named checkpoint"
    assert best["val_loss"] > 0


def test_a_searched_models_dense_state_loads_into_a_fresh_module_and_back():
    model = TinyNet()
    lottery = LotteryTicketCallback(rounds=1, amount=0.5, monitor=None, save_tickets=False)
    train, val = loaders()
    trainer(max_epochs=1, callbacks=[lottery]).fit(model, train, val)
    fresh = TinyNet()
    fresh.load_state_dict(dense_state(model))  # the supported way out (README: Tickets, resume)
    mask = lottery.masks["fc1.weight"]
    assert torch.equal(fresh.fc1.weight, model.fc1.weight_orig * model.fc1.weight_mask)
    assert bool((fresh.fc1.weight[~mask] == 0).all())
    model.load_state_dict(fresh.state_dict())  # and a dense state dict loads into the pruned module
    assert prune.is_pruned(model) and torch.equal(model.fc1.weight_mask.bool(), mask)


def test_stochastic_weight_averaging_is_refused_before_training():
    model = TinyNet()
    train, val = loaders()
    with pytest.raises(ValueError, match="StochasticWeightAveraging cannot run inside a lottery search"):
        trainer(callbacks=[LotteryTicketCallback(), StochasticWeightAveraging(swa_lrs=0.01)]).fit(model, train, val)
    assert model.training_steps == 0


def test_max_time_ends_the_whole_search_with_a_warning_and_a_record(tmp_path: Path):
    class Slow(pl.Callback):
        def on_train_batch_end(self, *args):
            import time

            time.sleep(0.3)

    lottery = LotteryTicketCallback(rounds=5, monitor=None, dirpath=tmp_path)
    train, val = loaders()
    with pytest.warns(UserWarning, match="stopped at max_time after round 0"):
        trainer(max_epochs=4, callbacks=[lottery, Slow(), Timer(duration={"seconds": 2})]).fit(TinyNet(), train, val)
    assert len(lottery.history) == 1 and lottery.stopped == "max_time after round 0 (ticket)"
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["finished"] is False and history["stopped"].startswith("max_time")


@pytest.mark.parametrize("rewind", ["init", 4])
def test_persistent_workers(rewind):
    """A fresh worker pool per level keeps round 0's data order; late rewinding cannot restore worker state."""
    first: list[torch.Tensor] = []

    class FirstBatch(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, i):
            if i == 0 and trainer.current_epoch == 0:
                first.append(batch[1].clone())

    train = DataLoader(make_data(64), batch_size=16, shuffle=True, num_workers=1, persistent_workers=True)
    val = loaders()[1]
    lottery = LotteryTicketCallback(rounds=1, rewind=rewind, monitor=None, save_tickets=False)
    fit = trainer(max_epochs=2, callbacks=[lottery, FirstBatch()])
    if rewind == "init":
        torch.manual_seed(0)
        fit.fit(TinyNet(), train, val)
        assert len(first) == 2 and torch.equal(first[0], first[1])
    else:
        model = TinyNet()
        with pytest.raises(ValueError, match=r"persistent_workers=True.*Use persistent_workers=False"):
            fit.fit(model, train, val)
        assert model.training_steps == 0


def test_a_model_that_arrives_pruned_is_pruned_further():
    model = TinyNet()
    for layer in (model.fc1, model.fc2):
        prune.random_unstructured(layer, "weight", amount=0.5)  # the user's own pruning
    users_mask = model.fc1.weight_mask.bool().clone()
    lottery = LotteryTicketCallback(rounds=2, amount=0.3, scope="layer", monitor=None, save_tickets=False)
    train, val = loaders()
    trainer(max_epochs=1, callbacks=[lottery]).fit(model, train, val)
    assert [round(r["sparsity"], 3) for r in lottery.history] == [0.5, 0.648, 0.756]  # 1 - 0.5 * 0.7^r, exact counts
    assert not bool((lottery.masks["fc1.weight"] & ~users_mask).any()), "the user's pruned weights stay pruned"
