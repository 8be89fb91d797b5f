"""Pure-PyTorch AOL rescaling with SLL's weights: the oracle for the aol_rescaling kernels.

Prach & Lampert, "Almost-Orthogonal Layers for Efficient General-Purpose Lipschitz Networks",
ECCV 2022 (q = 1); Araujo et al., "A Unified Algebraic Perspective on Lipschitz Neural
Networks", ICLR 2023 (the weights q). For a matrix W (C_out, C_in), G = W^T W; for a filter W
(C_out, C_in, k_1, k_2), G is its self-correlation
    G[i, j, delta] = sum_(o, x) W[o, i, x] W[o, j, x + delta]
over the (2 k_1 - 1) x (2 k_2 - 1) offsets at which two taps overlap, the blocks of J^T J for J
the convolution on the whole plane (one convolution of W^T with itself at full padding, as
AOL's code forms it). With A_ij = sum_delta |G[i, j, delta]| and q = exp(log_q) > 0,
    S_i = sum_j A_ij q_j / q_i,    d_i = (S_i + eps)^(-1/2),    eps = 1e-6,
eps inside the root as in AOL's code. The ratio is exp(log_q_j - log_q_i), not a quotient of
exponentials, so it overflows only for log_q differences beyond about 88 (float32).

The guarantee, by the Schur test: M = D J^T J D, D = diag(d) over every pixel, is symmetric
with |M[(i, x), (j, y)]| = d_i |G[i, j, y - x]| d_j, so with the positive weights
w_(j, y) = q_j / d_j,
    ||M|| <= max_(i, x) sum_(j, y) |M[(i, x), (j, y)]| w_(j, y) / w_(i, x)
          <= max_i d_i^2 S_i = max_i S_i / (S_i + eps) < 1.
So ||W diag(d)||_2 < 1 for a matrix, and the convolution with W * d[None, :, None, None] has
norm < 1 with zero padding of any width and any stride on any image (its matrix is a set of
rows of J, or zero rows) and with circular padding (its J^T J sums G over the offsets that
coincide modulo the image, whose absolute sum is at most A_ij).

Deliberate differences: SLL's public code has q cancel by broadcasting (both of its factors
are indexed by the row), which is the q = 1 case; this is the paper's weighted formula. An
infinite S (an infinite weight, or an overflow of G or of a ratio) gives NaN, not the finite 0
that AOL's code returns, so that a non-finite input never yields a finite d. The gradient is
plain autograd's (abs has the subgradient sign(0) = 0). Half precision is computed in float32
and returned rounded down (`rounded_down`), so that the guarantee survives the cast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._conventions import working_dtype

EPS = 1e-6


def self_correlation(weight: torch.Tensor) -> torch.Tensor:
    """G: W^T W (C_in, C_in) for a matrix; for a filter the (C_in, C_in, 2 k_1 - 1, 2 k_2 - 1)
    correlation of its input-channel slices, entry [i, j, p, r] holding G[i, j, delta] at
    delta = (k_1 - 1 - p, k_2 - 1 - r)."""
    if weight.dim() == 2:
        return weight.mT @ weight
    columns = weight.transpose(0, 1)
    return F.conv2d(columns, columns, padding=(weight.shape[2] - 1, weight.shape[3] - 1))


def weight_ratios(log_q: torch.Tensor) -> torch.Tensor:
    """R_ij = q_j / q_i as exp(log_q_j - log_q_i)."""
    return torch.exp(log_q[None, :] - log_q[:, None])


def rounded_down(d: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """d cast to `dtype`, never above d: d (1 - u) rounds to nearest at most
    d (1 - u)(1 + u / 2) < d, u the dtype's epsilon (for every d above 2^-15 in float16: below
    it the spacing of the subnormals exceeds d u)."""
    if dtype == d.dtype:
        return d
    return (d * (1 - torch.finfo(dtype).eps)).to(dtype)


def schur_sums(weight: torch.Tensor, log_q: torch.Tensor | None = None) -> torch.Tensor:
    """S (C_in,), S_i = sum_j A_ij q_j / q_i, in weight's dtype, for a matrix (C_out, C_in) or a
    filter (C_out, C_in, k_1, k_2) and log-weights log_q (C_in,) of its dtype (None: q = 1).
    By the Schur test, sqrt(max_i S_i) bounds the norm of W and of its convolutions."""
    gram = self_correlation(weight)
    absolute_gram = gram.abs() if gram.dim() == 2 else gram.abs().sum((2, 3))
    weighted = absolute_gram if log_q is None else absolute_gram * weight_ratios(log_q)
    return weighted.sum(1)


def aol_rescaling(weight: torch.Tensor, log_q: torch.Tensor | None = None) -> torch.Tensor:
    """d (C_in,) = (S + eps)^(-1/2) for a matrix (C_out, C_in) or a filter
    (C_out, C_in, k_1, k_2) and the optional log-weights log_q (C_in,); None means q = 1."""
    working = working_dtype(weight.dtype)
    sums = schur_sums(weight.to(working), None if log_q is None else log_q.to(working))
    d = torch.where(torch.isinf(sums), torch.nan, torch.rsqrt(sums + EPS))
    return rounded_down(d, weight.dtype)
