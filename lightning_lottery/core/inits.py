"""Controls on the rewound initialisation (Zhou et al. 2019, "Deconstructing lottery tickets"; Frankle et al.).

Each takes θ₀ of one prunable tensor and the mask of the round and returns the values the survivors start from:
the value distribution or the signs of θ₀ are kept while the exact value-to-position coupling is broken
(reshuffle, signed constant) or perturbed (noise).
"""

from __future__ import annotations

import torch
from torch import Tensor


def reshuffle(theta: Tensor, mask: Tensor, generator: torch.Generator) -> Tensor:
    """The survivors' θ₀ values, randomly permuted among the surviving positions (zeros elsewhere)."""
    out = torch.zeros_like(theta)
    keep = mask.to(torch.bool).flatten()
    values = theta.flatten()[keep]
    out.view(-1)[keep] = values[torch.randperm(values.numel(), generator=generator)]
    return out


def signed_constant(theta: Tensor, mask: Tensor) -> Tensor:
    """sign(θ₀) times the standard deviation of the whole tensor's θ₀, on the surviving positions."""
    return torch.sign(theta) * theta.float().std().to(theta.dtype) * mask.to(theta.dtype)


def add_noise(theta: Tensor, scale: float, generator: torch.Generator) -> Tensor:
    """θ₀ plus Gaussian noise with standard deviation ``scale`` times the tensor's θ₀ standard deviation."""
    noise = torch.randn(theta.shape, generator=generator, dtype=torch.float32).to(theta.dtype)
    return theta + scale * theta.float().std().to(theta.dtype) * noise
