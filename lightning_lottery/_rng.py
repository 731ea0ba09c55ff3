"""Seeds and global RNG states: derived per purpose, and carried in checkpoints without pickled numpy objects."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np
import torch


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for one purpose (a round; pruning, reinit or noise) derived from the user's seed."""
    digest = hashlib.sha256(":".join(str(k) for k in (seed, *keys)).encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def collect_rng_state() -> dict[str, Any]:
    """The global RNG states (torch, CUDA, numpy, Python) in a form ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, python_state, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)),
        "python": (version, list(python_state), gauss),
    }
    if torch.cuda.is_available():
        state["torch.cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the global RNGs to a state from :func:`collect_rng_state`."""
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state.get("torch.cuda"):
        torch.cuda.set_rng_state_all(state["torch.cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, python_state, gauss = state["python"]
    random.setstate((version, tuple(python_state), gauss))
