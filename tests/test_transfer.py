"""Ticket transfer: a source search's tickets trained on a target, with the paper's controls."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny import Recorder, TinyNet, loaders, trainer

from lightning_lottery import LotteryTicketCallback, Ticket, TicketError
from lightning_lottery.transfer import TicketSequence


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("source") / "lottery"
    lottery = LotteryTicketCallback(rounds=2, amount=0.5, scope="layer", monitor="val_loss", dirpath=folder)
    train, val = loaders()
    trainer(max_epochs=1, callbacks=[lottery]).fit(TinyNet(), train, val)
    return folder


def _transfer(source: Path, variant: str) -> tuple[LotteryTicketCallback, Recorder, dict[str, torch.Tensor]]:
    torch.manual_seed(5)
    target = TinyNet(classes=5)  # another dataset: five classes, so a new head
    target_init = {k: v.clone() for k, v in target.state_dict().items()}
    recorder = Recorder()
    tickets = TicketSequence(source, variant=variant, reinit=["fc2.*"], seed=3)
    lottery = LotteryTicketCallback(tickets=tickets, monitor="val_loss", save_tickets=False)
    train, val = loaders()
    trainer(max_epochs=1, callbacks=[lottery, recorder]).fit(target, train, val)
    return lottery, recorder, target_init


def test_transferred_tickets_bring_source_masks_and_weights_and_a_fresh_dense_head(source: Path):
    lottery, recorder, target_init = _transfer(source, "transferred")
    tickets = [Ticket.load(source / f"round_{r:02d}" / "ticket" / "ticket.safetensors") for r in range(3)]
    assert [r["round"] for r in lottery.history] == [0, 1, 2]
    for r, (ticket, start) in enumerate(zip(tickets, recorder.starts)):
        mask = ticket.masks["fc1.weight"]
        assert torch.equal(start["fc1.weight"], ticket.weights["fc1.weight"] * mask), r
        assert torch.equal(start["fc1.bias"], ticket.weights["fc1.bias"])
        assert torch.equal(start["fc2.weight"], target_init["fc2.weight"]), "the head starts fresh every round"
        assert lottery.history[r]["tensor_sparsity"] == {
            "fc1.weight": pytest.approx(ticket.tensor_sparsity["fc1.weight"])
        }
    assert set(lottery.masks) == {"fc1.weight"}, "no mask on the head"
    assert lottery.history[2]["sparsity"] == pytest.approx(0.75, abs=0.01)


def test_random_tickets_keep_counts_at_other_positions(source: Path):
    lottery, recorder, _ = _transfer(source, "random")
    ticket = Ticket.load(source / "round_02" / "ticket" / "ticket.safetensors")
    mask = lottery.masks["fc1.weight"]
    assert int(mask.sum()) == int(ticket.masks["fc1.weight"].sum())
    assert not torch.equal(mask, ticket.masks["fc1.weight"])
    kept = recorder.starts[2]["fc1.weight"] != 0
    assert torch.equal(kept, mask), "random masks replace the previous round's (they are not nested)"


def test_reinit_of_transferred_mask_uses_the_targets_own_init(source: Path):
    _lottery, recorder, target_init = _transfer(source, "reinit")
    ticket = Ticket.load(source / "round_02" / "ticket" / "ticket.safetensors")
    mask = ticket.masks["fc1.weight"]
    assert torch.equal(recorder.starts[2]["fc1.weight"], target_init["fc1.weight"] * mask)
    assert torch.equal(recorder.starts[2]["fc1.bias"], target_init["fc1.bias"])


def test_a_ticket_of_another_architecture_is_refused_before_training(source: Path):
    other = TinyNet(hidden=32, classes=5)
    lottery = LotteryTicketCallback(tickets=TicketSequence(source, reinit=["fc2.*"]), monitor="val_loss")
    train, val = loaders()
    with pytest.raises(
        TicketError, match=r"(?s)ticket 0 of the transfer.*fc1.weight: ticket \(16, 8\) vs model \(32, 8\)"
    ):
        trainer(max_epochs=1, callbacks=[lottery]).fit(other, train, val)
    assert other.training_steps == 0


def test_bad_transfer_arguments(tmp_path: Path, source: Path):
    with pytest.raises(FileNotFoundError, match="No tickets under"):
        TicketSequence(tmp_path)
    with pytest.raises(ValueError, match="`variant='best'` is not one of"):
        TicketSequence(source, variant="best")
