"""Initialisation controls: noise on θ₀, reshuffled θ₀ values, signed constants."""

from __future__ import annotations

import pytest
import torch
from tiny import Recorder, TinyNet, loaders, trainer

from lightning_lottery import LotteryTicketCallback
from lightning_lottery.core.inits import add_noise, reshuffle, signed_constant


def test_reshuffle_permutes_survivor_values_only():
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(20, 30, generator=g)
    mask = torch.rand(20, 30, generator=g) > 0.6
    out = reshuffle(theta, mask, torch.Generator().manual_seed(1))
    assert bool((out[~mask] == 0).all())
    assert torch.equal(out[mask].sort().values, theta[mask].sort().values), "same values"
    assert not torch.equal(out[mask], theta[mask]), "other positions"


def test_signed_constant_keeps_signs_with_the_tensor_std():
    theta = torch.randn(50, 40, generator=torch.Generator().manual_seed(0))
    mask = theta.abs() > 0.3
    out = signed_constant(theta, mask)
    assert torch.allclose(out[mask].abs(), torch.full((int(mask.sum()),), float(theta.std())))
    assert torch.equal(torch.sign(out[mask]), torch.sign(theta[mask]))
    assert bool((out[~mask] == 0).all())


def test_noise_has_the_requested_scale():
    theta = 0.1 * torch.randn(200, 200, generator=torch.Generator().manual_seed(0))
    out = add_noise(theta, 0.5, torch.Generator().manual_seed(1))
    assert float((out - theta).std()) == pytest.approx(0.5 * float(theta.std()), rel=0.02)


def _level_one(control: str, **kwargs) -> tuple[LotteryTicketCallback, dict, dict, dict]:
    """Level 1's ticket and ``control`` branches: the control's start, the ticket's start, θ₀."""
    torch.manual_seed(0)
    model = TinyNet()
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    recorder = Recorder()
    lottery = LotteryTicketCallback(
        rounds=1, amount=0.5, scope="layer", monitor=None, seed=4, controls=[control], **kwargs
    )
    train, val = loaders()
    trainer(max_epochs=1, callbacks=[lottery, recorder]).fit(model, train, val)
    assert [(r["round"], r["branch"]) for r in lottery.history] == [(0, "ticket"), (1, "ticket"), (1, control)]
    return lottery, recorder.starts[2], recorder.starts[1], theta0


@pytest.mark.parametrize("control", ["reshuffle", "signed_constant", "noise"])
def test_controls_differ_from_theta0_exactly_as_specified(control):
    kwargs = {"rewind_noise": 0.3} if control == "noise" else {}
    lottery, start, ticket_start, theta0 = _level_one(control, **kwargs)
    assert torch.equal(start["fc1.bias"], theta0["fc1.bias"]), "only prunable tensors are touched"
    for name, mask in lottery.masks.items():
        got, theta = start[name], theta0[name]
        assert torch.equal(mask, ticket_start[name] != 0), "the ticket's mask"
        assert bool((got[~mask] == 0).all())
        if control == "reshuffle":
            assert torch.equal(got[mask].sort().values, theta[mask].sort().values)
        elif control == "signed_constant":
            assert torch.equal(torch.sign(got[mask]), torch.sign(theta[mask]))
            assert torch.allclose(got[mask].abs(), theta.std().expand(int(mask.sum())))
        else:
            assert not torch.allclose(got[mask], theta[mask])
            assert float((got[mask] - theta[mask]).std()) == pytest.approx(0.3 * float(theta.std()), rel=0.35)
        assert torch.equal(lottery.ticket().weights[name] * mask, got), "the ticket keeps what the branch started from"


def test_reinit_draws_are_seeded_and_new_per_level():
    def starts(seed: int) -> dict:
        recorder = Recorder()
        train, val = loaders()
        torch.manual_seed(0)
        lottery = LotteryTicketCallback(
            rounds=2, amount=0.4, controls=["reinit"], seed=seed, monitor=None, save_tickets=False
        )
        trainer(max_epochs=1, callbacks=[lottery, recorder]).fit(TinyNet(), train, val)
        return {(r["round"], r["branch"]): s for r, s in zip(lottery.history, recorder.starts)}

    a, b, c = starts(3), starts(3), starts(4)
    reinit = (1, "reinit")
    assert not torch.allclose(a[reinit]["fc1.bias"], a[(0, "ticket")]["fc1.bias"])
    assert torch.equal(a[reinit]["fc1.bias"], b[reinit]["fc1.bias"]), "same seed, same draw"
    assert not torch.equal(a[reinit]["fc1.bias"], c[reinit]["fc1.bias"]), "another seed, another draw"
    assert not torch.equal(a[reinit]["fc1.bias"], a[(2, "reinit")]["fc1.bias"]), "a new draw per level"


def test_control_curves_are_logged_under_their_branch(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(tmp_path, name="run")
    lottery = LotteryTicketCallback(rounds=1, controls=["random"], monitor="val_loss")
    train, val = loaders()
    trainer(max_epochs=1, logger=logger, callbacks=[lottery]).fit(TinyNet(), train, val)
    header = (tmp_path / "run" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"round_00/val_loss", "round_01/val_loss", "round_01/random/val_loss"} <= set(header)
    folder = lottery.dirpath
    assert (folder / "round_01" / "random" / "ticket.safetensors").is_file()
    assert (folder / "round_01" / "ticket" / "curve.csv").is_file()
