"""Pure-PyTorch power iteration: the oracle for every power_iteration kernel.

Follows spectral normalisation (Miyato et al., ICLR 2018) as PyTorch's ``spectral_norm`` and the
Fantastic Four code (Singla & Feizi, ICLR 2021) compute it: the iteration runs without gradient,
one matrix-vector product and one normalisation per half step, and sigma = v^T W u is the only
differentiable quantity, so d sigma / d W = v u^T with u and v held constant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Added to the norm before dividing, as F.normalize does: an all-zero matrix gives zero vectors
# and sigma 0 instead of NaN.
NORMALIZE_EPS = 1e-12


def power_iteration(weight: torch.Tensor, u: torch.Tensor, iters: int = 1):
    """Top singular triple of each matrix in `weight` (..., m, n) from right vectors `u` (..., n).

    Repeats `iters` times: v = normalize(W u); u = normalize(W^T v). Returns
    (sigma (...), u (..., n), v (..., m)) with sigma = v^T W u, differentiable w.r.t. `weight`.
    """
    with torch.no_grad():
        for _ in range(iters):
            v = F.normalize(torch.matmul(weight, u.unsqueeze(-1)).squeeze(-1), dim=-1,
                            eps=NORMALIZE_EPS)
            u = F.normalize(torch.matmul(weight.transpose(-2, -1), v.unsqueeze(-1)).squeeze(-1),
                            dim=-1, eps=NORMALIZE_EPS)
    sigma = (v * torch.matmul(weight, u.unsqueeze(-1)).squeeze(-1)).sum(-1)
    return sigma, u, v
