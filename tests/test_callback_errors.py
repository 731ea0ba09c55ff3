"""Bad input gets a clear error naming the argument and what is allowed, before any training step."""

from __future__ import annotations

import types

import pytest
from lightning.pytorch.strategies import FSDPStrategy
from tiny import TinyBase, TinyNet, loaders, trainer
from torch import nn

from lightning_lottery import LotteryTicketCallback
from lightning_lottery._relaunch import check_trainer


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(amount=0.0), ValueError, r"`amount=0.0` is outside \(0, 1\)"),
        (dict(amount=1.0), ValueError, r"outside \(0, 1\)"),
        (dict(amount=-0.2), ValueError, r"outside \(0, 1\)"),
        (dict(amount=True), TypeError, "amount"),
        (dict(rounds=3, amount=[0.2, 0.5]), ValueError, r"has 2 cumulative sparsity targets but `rounds=3`"),
        (dict(rounds=3, amount=[0.2, 0.5, 0.5]), ValueError, "not strictly increasing"),
        (dict(rounds=2, amount=[0.5, 0.2]), ValueError, "not strictly increasing"),
        (dict(rounds=2, amount=[0.2, 1.2]), ValueError, r"must lie in \(0, 1\)"),
        (dict(rounds=-1), ValueError, r"`rounds=-1` must be an int >= 0"),
        (dict(rounds=1.5), TypeError, r"`rounds=1.5`: expected an int >= 0"),
        (dict(scope="layerwise"), ValueError, r"`scope='layerwise'` is not one of 'global', 'layer'"),
        (dict(rewind="start"), ValueError, r"`rewind='start'` is not one of 'init', a step k >= 0, 'epoch:E'"),
        (dict(rewind="none"), ValueError, r"rewind='finetune'.*rewind='lr_rewind'"),
        (dict(rewind="reinit"), ValueError, r"controls=\['reinit'\]"),
        (dict(rewind=-5), ValueError, "rewind"),
        (dict(rewind=True), ValueError, "rewind"),
        (dict(rewind="epoch:0"), ValueError, r"'epoch:E' \(E >= 1\)"),
        (dict(rewind="epoch:x"), ValueError, "rewind"),
        (dict(pruning="l1"), ValueError, r"`pruning='l1'` is not one of 'magnitude', 'random'"),
        (dict(mode="best"), ValueError, r"`mode='best'` is not one of 'min', 'max'"),
        (dict(layer_amounts={"fc2.weight": 1.0}), ValueError, r"layer_amounts\['fc2.weight'\]=1.0"),
        (dict(seed="7"), TypeError, "seed"),
        (dict(seed=1.5), TypeError, r"`seed=1.5`: expected an int or None"),
        (dict(parameters=[3]), TypeError, "parameters"),
        (dict(parameters=5), TypeError, r"`parameters` must be parameter names or fnmatch patterns"),
        (dict(exclude=[None]), TypeError, "exclude"),
        (dict(amount="0.2"), TypeError, r"`amount='0.2'` is a string"),
        (dict(layer_amounts="fc1.weight"), TypeError, r"`layer_amounts='fc1.weight'` must map names"),
        (dict(dirpath=123), TypeError, r"`dirpath=123`: expected a folder path"),
        (dict(save_tickets="no"), TypeError, r"`save_tickets='no'`: expected True or False"),
        (dict(verbose=1), TypeError, "verbose"),
        (dict(rewind_noise=float("nan")), ValueError, r"`rewind_noise=nan` must be a finite float >= 0"),
        (dict(rewind_noise=-1), ValueError, r"`rewind_noise=-1` must be a finite float >= 0"),
        (dict(rewind_noise=0.1), ValueError, r"scale of the 'noise' control branch: add 'noise' to `controls`"),
        (dict(controls=["noise"]), ValueError, r"needs its scale: set `rewind_noise` > 0"),
        (dict(controls=["reinit", "shuffle"]), ValueError, r"`controls` has unknown entries \['shuffle'\]"),
        (dict(controls=["random", "random"]), ValueError, "names a control twice"),
        (dict(controls=5), TypeError, "controls"),
        (dict(monitor=3), TypeError, r"`monitor=3` must be a metric name or None"),
        (dict(tickets="round_01"), TypeError, "`tickets` must be a TicketSequence"),
    ],
)
def test_constructor_rejects(kwargs, error, message):
    with pytest.raises(error, match=message):
        LotteryTicketCallback(**kwargs)


def _fit_must_fail(lottery: LotteryTicketCallback, model: nn.Module | None = None, message: str = "", **trainer_kwargs):
    model = model or TinyNet()
    train, val = loaders()
    with pytest.raises(ValueError, match=message):
        trainer(callbacks=[lottery], **trainer_kwargs).fit(model, train, val)
    assert getattr(model, "training_steps", 0) == 0, "the error must come before any training step"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(parameters=["conv*.weight"]), r"`parameters`: \['conv\*.weight'\] match no parameter"),
        (dict(exclude=["fc9.weight"]), r"`exclude`: \['fc9.weight'\] match no parameter"),
        (dict(layer_amounts={"head.weight": 0.1}), r"`layer_amounts`: \['head.weight'\] match no parameter"),
    ],
)
def test_patterns_matching_nothing_fail_before_training(kwargs, message):
    _fit_must_fail(LotteryTicketCallback(**kwargs), message=message)


def test_model_with_nothing_prunable_fails_before_training():
    model = TinyBase()
    model.fc1, model.fc2 = nn.Embedding(3, 3), nn.Identity()
    _fit_must_fail(LotteryTicketCallback(), model, message="Nothing to prune")


@pytest.mark.parametrize(
    ("rewind", "budget", "message"),
    [
        (500, dict(max_epochs=2), r"`rewind=500` is not inside round 0: it trains 8 optimizer steps"),
        (8, dict(max_epochs=2), r"`rewind=8` is not inside round 0.*step k < 8"),
        ("epoch:3", dict(max_epochs=2), r"`rewind='epoch:3'` is not inside round 0: it trains 8 optimizer steps"),
        ("epoch:50", dict(max_epochs=None, max_steps=20), r"`rewind='epoch:50'`.*4 per epoch.*epoch < 5"),
    ],
)
def test_rewind_point_beyond_round_zero_fails_before_training(rewind, budget, message):
    _fit_must_fail(LotteryTicketCallback(rewind=rewind), message=message, **budget)


@pytest.mark.parametrize("budget", [dict(max_steps=0), dict(max_epochs=0)])
def test_a_budget_of_nothing_fails_before_training(budget):
    _fit_must_fail(LotteryTicketCallback(), message="trains nothing", **budget)


def test_unwritable_artifact_folder_fails_before_training(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")  # unwritable even for root, unlike a chmod-ed folder
    _fit_must_fail(LotteryTicketCallback(dirpath=tmp_path / "a_file" / "lottery"), message="cannot be written")


def test_an_unwritable_checkpoint_folder_fails_before_training(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    (tmp_path / "a_file").write_text("not a folder")
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "a_file" / "checkpoints")
    model = TinyNet()
    train, val = loaders()
    with pytest.raises(ValueError, match=r"`ModelCheckpoint\(dirpath\)=.*a_file/checkpoints'` cannot be written"):
        trainer(callbacks=[LotteryTicketCallback(), checkpoint], enable_checkpointing=True).fit(model, train, val)
    assert model.training_steps == 0


def test_a_folder_holding_another_search_is_refused(tmp_path):
    train, val = loaders()
    trainer(callbacks=[LotteryTicketCallback(rounds=1, dirpath=tmp_path)], max_epochs=1).fit(TinyNet(), train, val)
    _fit_must_fail(LotteryTicketCallback(rounds=1, dirpath=tmp_path), message="already holds the artifacts")


def test_monitor_never_logged_fails_in_the_sanity_check():
    _fit_must_fail(
        LotteryTicketCallback(monitor="val_accuracy"),
        message=r"`monitor='val_accuracy'` was not logged; logged metrics are \['val_acc', 'val_loss'\]",
        num_sanity_val_steps=1,
    )


def test_two_validation_loaders_pass_the_sanity_check():
    """Lightning shares no sanity-check metrics with two val loaders: that is no reason to fail."""
    train, val = loaders()
    lottery = LotteryTicketCallback(rounds=1, monitor="val_loss")
    trainer(callbacks=[lottery], num_sanity_val_steps=2, max_epochs=1).fit(TinyNet(), train, [val, val])
    assert lottery.history[-1]["best"] is not None


def test_monitor_never_logged_fails_at_first_validation_without_sanity_check():
    model = TinyNet()
    train, val = loaders()
    with pytest.raises(ValueError, match="`monitor='val_f1'` was not logged"):
        trainer(callbacks=[LotteryTicketCallback(monitor="val_f1")], max_epochs=2).fit(model, train, val)
    assert model.training_steps == 4, "stops at the end of the first epoch's validation"


def test_reinit_needs_a_rebuildable_module():
    class NeedsWidth(TinyBase):
        def __init__(self, width: int) -> None:  # no save_hyperparameters(): cannot be rebuilt
            super().__init__(hidden=width)

    _fit_must_fail(LotteryTicketCallback(controls=["reinit"]), NeedsWidth(16), message="save_hyperparameters")


def test_reinit_refuses_a_module_rebuilt_with_other_shapes():
    model = TinyBase(hidden=32)  # rebuilt from (empty) hparams with the default hidden=16
    _fit_must_fail(LotteryTicketCallback(controls=["reinit"]), model, message=r"builds a different network.*fc1.weight")


def test_reinit_refuses_a_module_stored_in_hparams():
    class StoresNet(TinyBase):
        def __init__(self, fc1: nn.Module) -> None:
            super().__init__(fc1)
            self.save_hyperparameters()  # hparams == {"fc1": <the built module>}

    _fit_must_fail(
        LotteryTicketCallback(controls=["reinit"]),
        StoresNet(nn.Linear(8, 16)),
        message="reuses the existing network",
    )


def _fake_trainer(strategy: object) -> types.SimpleNamespace:
    return types.SimpleNamespace(strategy=strategy, callbacks=[], max_steps=-1, max_epochs=2)


def test_sharded_strategies_are_refused():
    with pytest.raises(ValueError, match=r"FSDPStrategy.*shard parameters"):
        check_trainer(_fake_trainer(FSDPStrategy.__new__(FSDPStrategy)))  # type: ignore[arg-type]


def test_spawned_ddp_warns_that_results_stay_in_the_workers():
    from lightning.pytorch.strategies import DDPStrategy

    with pytest.warns(UserWarning, match="worker processes.*Read the artifacts"):
        check_trainer(_fake_trainer(DDPStrategy(start_method="spawn")))  # type: ignore[arg-type]


def test_resuming_with_different_settings_is_refused(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    train, val = loaders()
    first = [LotteryTicketCallback(amount=0.2, rounds=1), ModelCheckpoint(dirpath=tmp_path, save_last=True)]
    trainer(callbacks=first, max_epochs=1, enable_checkpointing=True).fit(TinyNet(), train, val)
    model = TinyNet()
    again = [LotteryTicketCallback(amount=0.3, rounds=1), ModelCheckpoint(dirpath=tmp_path, save_last=True)]
    with pytest.raises(ValueError, match=r"different lottery search.*amount: checkpoint 0.2 vs now 0.3"):
        fit = trainer(callbacks=again, max_epochs=1, enable_checkpointing=True)
        fit.fit(model, train, val, ckpt_path=str(tmp_path / "last.ckpt"))
    assert model.training_steps == 0
