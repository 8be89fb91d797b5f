"""HouseHolder: a learnable reflection per channel pair (`lipkernels.householder`)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import functional
from .._checks import check_count


class HouseHolder(nn.Module):
    """The HouseHolder activation of Singla, Singla & Feizi (NeurIPS 2022) on x (B, C, *spatial).

    One angle per "halves" channel pair (x[:, i], x[:, i + C/2]), the parameter `theta` of shape
    (channels // 2,), initialised to pi/2 as in the seed code, where the layer starts out as MaxMin
    with the two halves swapped. Piecewise orthogonal: 1-Lipschitz and norm-preserving for every
    theta.
    """

    def __init__(self, channels: int, device=None, dtype=None):
        super().__init__()
        check_count("HouseHolder", "channels", channels)
        if channels % 2:
            raise ValueError(f"HouseHolder: channels must be even (the layer acts on channel "
                             f"pairs); got {channels}")
        self.channels = channels
        self.theta = nn.Parameter(torch.empty(channels // 2, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self):
        """theta = pi/2 (also after deferred construction on the meta device and to_empty)."""
        nn.init.constant_(self.theta, math.pi / 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.householder(x, self.theta)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
