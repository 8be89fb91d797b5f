"""MaxMin (GroupSort with groups of two, the activation of SOC networks: `lipkernels.max_min`) and
GroupSort over groups of any size."""

from __future__ import annotations

import torch
from torch import nn

from .. import functional
from .._checks import check_tensor
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


class GroupSort(nn.Module):
    """Every group of `group_size` consecutive channels of x (B, C, *spatial) sorted in
    descending order (Anil, Lucas & Grosse, "Sorting out Lipschitz function approximation",
    ICML 2019); C must be a multiple of group_size.

    A permutation of each group's entries, so 1-Lipschitz and norm-preserving, with the
    gradient of that permutation (ties keep the channels' order). GroupSort(2) is exactly
    MaxMin("pairs") and runs its kernels; larger groups sort with torch.sort. Descending order
    makes groups of two (max, min) as MaxMin does (deel-torchlip sorts ascending: the same
    function up to a fixed permutation of the channels).
    """

    def __init__(self, group_size: int = 2):
        super().__init__()
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
            raise ValueError(f"GroupSort: group_size must be an int >= 2; got {group_size!r}")
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor("GroupSort", "x", x, min_rank=2, batch_dims=1)
        if x.shape[1] % self.group_size:
            raise ValueError(f"GroupSort: x must have a multiple of group_size="
                             f"{self.group_size} channels (dim 1); got shape {tuple(x.shape)}")
        if self.group_size == 2:
            return functional.max_min(x, "pairs")
        groups = x.unflatten(1, (x.shape[1] // self.group_size, self.group_size))
        return torch.sort(groups, dim=2, descending=True, stable=True).values.flatten(1, 2)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}"
