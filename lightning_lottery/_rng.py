"""Seeds and global RNG states: derived per purpose, and carried in checkpoints without pickled numpy objects."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for one purpose (a round; pruning, reinit or noise) derived from the user's seed."""
    digest = hashlib.sha256(":".join(str(k) for k in (seed, *keys)).encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def collect_rng_state() -> dict[str, Any]:
    """The global RNG states (torch, CUDA, numpy, Python) in a form ``torch.load(weights_only=True)`` accepts."""
    state = _collect_rng_states(include_cuda=torch.cuda.is_available())
    if "numpy" in state:
        kind, keys, pos, has_gauss, cached = state["numpy"]
        keys = torch.from_numpy(np.asarray(keys, dtype=np.int64))
        state["numpy"] = (kind, keys, int(pos), int(has_gauss), float(cached))
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the global RNGs to a state from :func:`collect_rng_state`."""
    state = dict(state)
    if "numpy" in state:
        kind, keys, pos, has_gauss, cached = state["numpy"]
        state["numpy"] = (kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached)
    if not torch.cuda.is_available():
        state.pop("torch.cuda", None)
    _set_rng_states(state)
