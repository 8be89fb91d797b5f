"""Pure-PyTorch power iteration: the oracle for every power_iteration kernel.

Follows spectral normalisation (Miyato et al., ICLR 2018) as PyTorch's ``spectral_norm`` and the
Fantastic Four code (Singla & Feizi, ICLR 2021) compute it: the iteration runs without gradient,
one matrix-vector product and one normalisation per half step, and sigma = v^T W u is the only
differentiable quantity, so d sigma / d W = v u^T with u and v held constant.

The iteration runs on detached tensors rather than under torch.no_grad: no_grad stops reverse
mode only, and forward-mode AD (torch.func.jvp, jacfwd, forward_ad dual tensors) would otherwise
push tangents through u and v. Detached, every transform sees the same derivative
d sigma = v^T dW u; the gradient v u^T is constant in W, so the second derivative is zero.
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
    constant, u = weight.detach(), u.detach()
    for _ in range(iters):
        v = F.normalize(torch.matmul(constant, u.unsqueeze(-1)).squeeze(-1), dim=-1,
                        eps=NORMALIZE_EPS)
        u = F.normalize(torch.matmul(constant.transpose(-2, -1), v.unsqueeze(-1)).squeeze(-1),
                        dim=-1, eps=NORMALIZE_EPS)
    sigma = (v * torch.matmul(weight, u.unsqueeze(-1)).squeeze(-1)).sum(-1)
    return sigma, u, v


def sigma_gradient(grad_sigma: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """grad_W (..., m, n) = grad_sigma v u^T: the backward of `power_iteration`'s sigma, in
    differentiable torch ops (linear in grad_sigma; u and v are constants)."""
    return grad_sigma[..., None, None] * v.unsqueeze(-1) * u.unsqueeze(-2)


