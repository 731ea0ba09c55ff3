"""Bad input gets a clear error naming the argument and what is allowed, before any training step."""

from __future__ import annotations

import types

import pytest
from lightning.pytorch.strategies import FSDPStrategy
from tiny import TinyBase, TinyNet, loaders, trainer
from torch import nn

from lightning_lottery import LotteryTicketCallback
from lightning_lottery._relaunch import check_strategy


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
        (dict(rounds=1.5), ValueError, "rounds"),
        (dict(scope="layerwise"), ValueError, r"`scope='layerwise'` is not one of 'global', 'layer'"),
        (dict(rewind="start"), ValueError, r"`rewind='start'` is not one of 'init', 'none', 'reinit'"),
        (dict(rewind=-5), ValueError, "rewind"),
        (dict(rewind=True), ValueError, "rewind"),
        (dict(rewind="epoch:0"), ValueError, r"'epoch:E' \(E >= 1\)"),
        (dict(rewind="epoch:x"), ValueError, "rewind"),
        (dict(pruning="l1"), ValueError, r"`pruning='l1'` is not one of 'magnitude', 'random'"),
        (dict(mode="best"), ValueError, r"`mode='best'` is not one of 'min', 'max'"),
        (dict(layer_amounts={"fc2.weight": 1.0}), ValueError, r"layer_amounts\['fc2.weight'\]=1.0"),
        (dict(seed="7"), TypeError, "seed"),
        (dict(parameters=[3]), TypeError, "parameters"),
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


def test_rewind_step_beyond_round_zero_fails_before_training():
    _fit_must_fail(
        LotteryTicketCallback(rewind=500),
        message=r"`rewind=500` is beyond round 0's length: it trains 8 optimizer steps",
        max_epochs=2,
    )


def test_rewind_epoch_beyond_round_zero_fails_before_training():
    _fit_must_fail(
        LotteryTicketCallback(rewind="epoch:3"),
        message=r"`rewind='epoch:3'` is beyond round 0's length: it trains max_epochs=2 epochs",
        max_epochs=2,
    )


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

    _fit_must_fail(LotteryTicketCallback(rewind="reinit"), NeedsWidth(16), message="save_hyperparameters")


def test_reinit_refuses_a_module_rebuilt_with_other_shapes():
    model = TinyBase(hidden=32)  # rebuilt from (empty) hparams with the default hidden=16
    _fit_must_fail(LotteryTicketCallback(rewind="reinit"), model, message=r"builds a different network.*fc1.weight")


def test_reinit_refuses_a_module_stored_in_hparams():
    class StoresNet(TinyBase):
        def __init__(self, fc1: nn.Module) -> None:
            super().__init__(fc1)
            self.save_hyperparameters()  # hparams == {"fc1": <the built module>}

    _fit_must_fail(
        LotteryTicketCallback(rewind="reinit"),
        StoresNet(nn.Linear(8, 16)),
        message="reuses the existing network",
    )


def test_sharded_strategies_are_refused():
    fake = types.SimpleNamespace(strategy=FSDPStrategy.__new__(FSDPStrategy))
    with pytest.raises(ValueError, match=r"FSDPStrategy.*shard parameters"):
        check_strategy(fake)  # type: ignore[arg-type]


def test_spawned_ddp_warns_that_results_stay_in_the_workers():
    from lightning.pytorch.strategies import DDPStrategy

    fake = types.SimpleNamespace(strategy=DDPStrategy(start_method="spawn"))
    with pytest.warns(UserWarning, match="worker processes.*Read the artifacts"):
        check_strategy(fake)  # type: ignore[arg-type]


def test_resuming_with_different_settings_is_refused():
    state = LotteryTicketCallback(amount=0.2).state_dict()
    with pytest.raises(ValueError, match=r"different lottery search.*amount: checkpoint 0.2 vs now 0.3"):
        LotteryTicketCallback(amount=0.3).load_state_dict(state)
