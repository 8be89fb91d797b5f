"""MaxMin: GroupSort with groups of two, the activation of SOC networks (`lipkernels.max_min`)."""

from __future__ import annotations

import torch
from torch import nn

from .. import functional
from .._conventions import PAIRINGS


class MaxMin(nn.Module):
    """(max(a, b), min(a, b)) for every channel pair (a, b) of x (B, C, *spatial), C even.

    pairing "halves" (default, SOC: a = x[:, :C/2], b = x[:, C/2:]) or "pairs" (GroupSort(2):
    channels 2i and 2i+1). Parameter-free, 1-Lipschitz and norm-preserving; see
    `lipkernels.max_min` for the gradient's tie rule.
    """

    def __init__(self, pairing: str = "halves"):
        super().__init__()
        if pairing not in PAIRINGS:
            raise ValueError(f"MaxMin: pairing must be one of {', '.join(PAIRINGS)}; "
                             f"got {pairing!r}")
        self.pairing = pairing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.max_min(x, self.pairing)

    def extra_repr(self) -> str:
        return f"pairing={self.pairing!r}"
