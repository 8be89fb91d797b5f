"""`Residual`: the residual block whose Lipschitz bound `lipkernels.lipschitz_bound` knows."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..bounds import rounded_up_product, rounded_up_sum


class Residual(nn.Module):
    """y = scale * (shortcut(x) + branch(x)), shortcut the identity unless given.

    A residual addition changes a network's Lipschitz constant (x + f(x) is up to 1 + L(f)
    Lipschitz), which a forward's arithmetic hides from any tool that sees modules only; written
    as this module, the block's bound is known: `lipschitz_bound()` = scale * (L(shortcut) +
    L(branch)) by the triangle inequality, each part bounded by `lipkernels.lipschitz_bound`
    (an error naming the part it cannot bound), every inexact float operation rounded up.
    scale = 1 is the ResNet block; scale = 1/2 averages the two paths, 1-Lipschitz when both
    are.

    Args:
        branch: the residual branch (any module).
        shortcut: the other path (default nn.Identity()).
        scale: a finite float >= 0 applied to the sum.
    """

    def __init__(self, branch: nn.Module, shortcut: nn.Module | None = None, scale: float = 1.0):
        super().__init__()
        for name, module in (("branch", branch), ("shortcut", shortcut)):
            if module is not None and not isinstance(module, nn.Module):
                raise TypeError(f"Residual: {name} must be a torch.nn.Module; got "
                                f"{type(module).__name__}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) \
                or not math.isfinite(scale) or scale < 0:
            raise ValueError(f"Residual: scale must be a finite number >= 0; got {scale!r}")
        self.branch = branch
        self.shortcut = nn.Identity() if shortcut is None else shortcut
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shortcut(x) + self.branch(x)
        return y if self.scale == 1.0 else self.scale * y

    def lipschitz_bound(self, *, tolerance: float | None = None) -> float:
        """scale * (L(shortcut) + L(branch)), a provable bound in the current mode."""
        from ..model_bound import lipschitz_bound

        options = {} if tolerance is None else {"tolerance": tolerance}
        bounds = []
        for name in ("shortcut", "branch"):
            try:
                bounds.append(lipschitz_bound(getattr(self, name), **options))
            except ValueError as error:
                raise ValueError(f"{error} (the {name} of a Residual)") from error
        return rounded_up_product([self.scale, rounded_up_sum(bounds)])

    def extra_repr(self) -> str:
        return f"scale={self.scale}"
