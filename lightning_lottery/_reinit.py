"""The reinit control's weights: a fresh draw from the LightningModule's own initialiser."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from lightning_lottery.core.snapshot import State, dense_state, state_mismatches


def fresh_initialisation(pl_module: pl.LightningModule, seed: int) -> State:
    """Weights of a new copy of the module built from its ``hparams`` under ``seed``; the global RNG is untouched.

    Raises:
        ValueError: the module cannot be rebuilt from its hparams, the rebuilt module shares the trained network
            (an ``nn.Module`` stored in hparams), or it has other tensors or shapes.
    """
    cls = type(pl_module)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = cls(**dict(pl_module.hparams))
    except Exception as err:
        raise ValueError(
            f"controls=['reinit'] draws a fresh initialisation by constructing {cls.__name__}(**self.hparams), "
            f"which failed ({type(err).__name__}: {err}). Call self.save_hyperparameters() in __init__ with "
            "every argument needed to build the network (not a built nn.Module)."
        ) from err
    current = dict(pl_module.named_parameters())
    if any(p is current.get(n) for n, p in fresh.named_parameters()):
        raise ValueError(
            f"controls=['reinit']: {cls.__name__}(**self.hparams) reuses the existing network (an nn.Module "
            "stored in hparams), so it cannot draw new weights. Store how to build the network instead."
        )
    state = dense_state(fresh)
    if problems := state_mismatches(pl_module, state):
        raise ValueError(
            f"controls=['reinit']: {cls.__name__}(**self.hparams) builds a different network than the one being "
            f"trained ({'; '.join(problems)}). Save every argument that shapes the network in hparams."
        )
    return state
