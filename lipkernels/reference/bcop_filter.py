"""Pure-PyTorch BCOP filter construction: the oracle for every bcop_filter kernel.

Li, Haque, Anil, Lucas, Grosse & Jacobsen, "Preventing Gradient Attenuation in Lipschitz
Constrained Convolutional Networks", NeurIPS 2019 (ColinQiyangLi/LConvNet, layer `BCOP`), whose
block convolutions follow Xiao et al., "Dynamical Isometry and a Mean Field Theory of CNNs",
ICML 2018. From 2k - 1 matrices M_0..M_(2k-2), each C x C with C = max(c_in, c_out), as the
layer's Björck iteration leaves them (orthogonal; this function does not orthogonalise):

- head: H = M_0[:c_in, :c_out], used as H_t = H for c_in <= c_out and H_t = H^T for
  c_in > c_out, r x C with r = min(c_in, c_out);
- projectors: P_j = U_j U_j^T with U_j = M_(j+1)[:, :C/2] (the seed's fixed mask of the first
  C/2 columns), rank C/2, j = 0..2k-3;
- block_orth(P, Q), the 2 x 2 kernel B[a][b] = F_a(P) F_b(Q) with F_0(P) = P, F_1(P) = I - P:
  [[P Q, P (I - Q)], [(I - P) Q, (I - P)(I - Q)]];
- K = block_orth(P_0, P_1) * block_orth(P_2, P_3) * ... (k - 1 kernels, k x k taps), * the full
  2-D matrix convolution (A * B)[i][j] = sum_(a, b) A[a][b] B[i - a][j - b], A's taps on the
  left, no flip;
- taps Y[i][j] = H_t K[i][j] (r x C), placed at row j, column i of the filter (the seed stacks
  the taps [i][j] and permutes (i, j) to (column, row)): weight[o, c, j, i] = Y[i][j][c, o] for
  c_in <= c_out, Y[i][j][o, c] for c_in > c_out;
- k = 1: the seed returns the head matrix itself as the 1 x 1 filter, H for c_in = c_out and
  H^T for c_in > c_out; for c_in < c_out its (c_in, c_out, 1, 1) is not a filter of that shape
  (F.conv2d rejects it), and H^T, the one that is, is taken.

Why the filter is orthogonal: as a polynomial in (z_1, z_2), block_orth(P, Q) is
(P + (I - P) z_1)(Q + (I - Q) z_2), each factor unitary on the unit circle when P is a symmetric
projector, so K(z) is unitary at every frequency and the filter's frequency responses are
K(z)^T H_t^T (c_in <= c_out: orthonormal columns) or H_t K(z) (c_in > c_out: orthonormal
rows). So the convolution with circular padding, k - 1 pixels in all along each axis however
they are split (the seed's `conv2d_cyclic_pad` puts k // 2 before and k - 1 - k // 2 after,
asymmetric for even k; another split is a circular shift of the output), is orthogonal for
c_in = c_out and an isometry (c_in < c_out) or co-isometry (c_in > c_out) otherwise: every
exact singular value (`conv_singular_values`) is 1. Zero padding does not keep it orthogonal.

The Python loops of the seed (block_orth, matrix_conv, one product per tap pair) are kept, with
the seed's order of summation, and differentiated by plain autograd, as the seed trains.
Half-precision matrices are computed in float32 and the filter returned in their dtype.
"""

from __future__ import annotations

import torch

from .._conventions import working_dtype


def _block_orth(P: torch.Tensor, Q: torch.Tensor) -> list[list[torch.Tensor]]:
    """The 2 x 2 matrix-valued kernel [[P Q, P (I - Q)], [(I - P) Q, (I - P)(I - Q)]]."""
    identity = torch.eye(P.shape[-1], dtype=P.dtype, device=P.device)
    return [[P @ Q, P @ (identity - Q)],
            [(identity - P) @ Q, (identity - P) @ (identity - Q)]]


def _matrix_conv(A: list, B: list) -> list[list[torch.Tensor]]:
    """The full 2-D convolution of the square matrix-valued kernels A (a x a taps) and B (b x b):
    (a + b - 1) x (a + b - 1) taps, tap [i][j] the sum of A[p][q] B[i - p][j - q] over A's taps
    in row-major order (the seed's order)."""
    size = len(A) + len(B) - 1
    zero = torch.zeros_like(A[0][0])
    result = [[zero for _ in range(size)] for _ in range(size)]
    for p, row in enumerate(A):
        for q, tap in enumerate(row):
            for s, other_row in enumerate(B):
                for t, other in enumerate(other_row):
                    result[p + s][q + t] = result[p + s][q + t] + tap @ other
    return result


def head(matrices: torch.Tensor, in_channels: int, out_channels: int) -> torch.Tensor:
    """H_t (r x C): H = M_0[:c_in, :c_out], transposed for c_in > c_out."""
    H = matrices[0, :in_channels, :out_channels]
    return H.mT if in_channels > out_channels else H


def filter_from_taps(taps: torch.Tensor, in_channels: int, out_channels: int) -> torch.Tensor:
    """The filter (out_channels, in_channels, k, k) holding the taps Y[i][j] = H_t K[i][j]
    (k, k, r, C) where the seed places them: weight[o, c, j, i] = Y[i][j][c, o] for c_in < c_out
    (and c_in = c_out from k = 2 on), Y[i][j][o, c] otherwise (see the module docstring; a
    permutation of the entries)."""
    transposed = in_channels < out_channels or (in_channels == out_channels
                                                and taps.shape[0] > 1)
    return taps.permute((3, 2, 1, 0) if transposed else (2, 3, 1, 0)).contiguous()


def bcop_filter(matrices: torch.Tensor, in_channels: int, out_channels: int) -> torch.Tensor:
    """The BCOP conv filter (out_channels, in_channels, k, k) from matrices (2k - 1, C, C),
    C = max(in_channels, out_channels) (see the module docstring), in matrices' dtype."""
    M = matrices.to(working_dtype(matrices.dtype))
    size = (M.shape[0] + 1) // 2
    H_t = head(M, in_channels, out_channels)
    if size == 1:
        return filter_from_taps(H_t[None, None], in_channels, out_channels).to(matrices.dtype)
    halves = M[1:, :, :M.shape[-1] // 2]
    projectors = halves @ halves.mT
    kernel = _block_orth(projectors[0], projectors[1])
    for step in range(1, size - 1):
        kernel = _matrix_conv(kernel, _block_orth(projectors[2 * step],
                                                  projectors[2 * step + 1]))
    taps = torch.stack([torch.stack([H_t @ tap for tap in row]) for row in kernel])
    return filter_from_taps(taps, in_channels, out_channels).to(matrices.dtype)
