"""deel-torchlip on lipkernels: its spectral normalisation by lipkernels' power iteration.

deel-torchlip's spectral layers (SpectralLinear, SpectralConv2d, ...) normalise their weight with
torch's own parametrisation, `torch.nn.utils.parametrizations.spectral_norm`, whose module is
`_SpectralNorm`: in training `n_power_iterations` steps u = normalize(W v), v = normalize(W^T u)
on the weight reshaped to a matrix, then W / (u^T W v). `SpectralNorm` runs those steps as one
`lipkernels.power_iteration` call (the same iteration, eps included, and the same sigma and
gradient), updating the buffers u and v in place as torch does. `adapt(model)` switches every
such module of a model, deel-torchlip's or any other user of torch's spectral_norm.

deel-torchlip's Björck normalisation is left as it is: it stops on a tolerance and detaches all
but its last iterations, which the gradient of `lipkernels.bjorck` does not reproduce.
"""

from __future__ import annotations

import torch
from torch.nn.utils.parametrizations import _SpectralNorm

from .. import functional
from . import AdaptReport, adapt_classes, require

_bjorck_norm = require("deel.torchlip.utils.bjorck_norm", "deel-torchlip")

_BJORCK_KEPT = ("deel-torchlip's Björck normalisation stops on a tolerance and detaches all but "
                "its last iterations: lipkernels.bjorck's gradient would differ")

__all__ = ["SpectralNorm", "adapt"]


class SpectralNorm(_SpectralNorm):
    """torch's `_SpectralNorm` with its training-mode power iteration on lipkernels (the same
    buffers; eval mode unchanged: no iteration, sigma from the stored vectors)."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.ndim == 1 or not self.training:
            return super().forward(weight)
        matrix = self._reshape_weight_to_matrix(weight)
        # lipkernels' right vector is torch's v and its left vector torch's u.
        sigma, v, u = functional.power_iteration(matrix, self._v, self.n_power_iterations)
        with torch.no_grad():
            self._u.copy_(u)
            self._v.copy_(v)
        return weight / sigma


def adapt(model: torch.nn.Module) -> AdaptReport:
    """Every torch spectral_norm parametrisation in `model` (deel-torchlip's spectral layers
    register one each) switched to `SpectralNorm`, in place."""
    return adapt_classes(model, {_SpectralNorm: SpectralNorm},
                         {_bjorck_norm._BjorckNorm: _BJORCK_KEPT})
