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


def _round_one_start(**kwargs) -> tuple[LotteryTicketCallback, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = TinyNet()
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    recorder = Recorder()
    lottery = LotteryTicketCallback(rounds=1, amount=0.5, scope="layer", monitor=None, seed=4, **kwargs)
    train, val = loaders()
    trainer(max_epochs=1, callbacks=[lottery, recorder]).fit(model, train, val)
    return lottery, recorder.starts[1], theta0


@pytest.mark.parametrize("control", ["reshuffle", "signed_constant", "noise"])
def test_controls_differ_from_theta0_exactly_as_specified(control):
    kwargs = {"rewind_noise": 0.3} if control == "noise" else {"rewind": control}
    lottery, start, theta0 = _round_one_start(**kwargs)
    assert torch.equal(start["fc1.bias"], theta0["fc1.bias"]), "only prunable tensors are touched"
    for name, mask in lottery.masks.items():
        got, theta = start[name], theta0[name]
        assert bool((got[~mask] == 0).all())
        if control == "reshuffle":
            assert torch.equal(got[mask].sort().values, theta[mask].sort().values)
        elif control == "signed_constant":
            assert torch.equal(torch.sign(got[mask]), torch.sign(theta[mask]))
            assert torch.allclose(got[mask].abs(), theta.std().expand(int(mask.sum())))
        else:
            assert not torch.allclose(got[mask], theta[mask])
            assert float((got[mask] - theta[mask]).std()) == pytest.approx(0.3 * float(theta.std()), rel=0.35)
        assert torch.equal(lottery.ticket().weights[name], got), "the ticket keeps what the round started from"


def test_noise_is_not_for_rewinds_without_theta0():
    with pytest.raises(ValueError, match="does not apply to rewind='reinit'"):
        LotteryTicketCallback(rewind="reinit", rewind_noise=0.1)
    with pytest.raises(ValueError, match="rewind_noise=-1"):
        LotteryTicketCallback(rewind_noise=-1)
