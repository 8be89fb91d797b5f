"""Pure-PyTorch Cayley orthogonal convolution (Trockman & Kolter, ICLR 2021): the oracle of the
cayley_conv2d kernels, and the pixel <-> frequency plumbing every backend shares.

The operator. For x (B, C_in, H, W) and a filter w (C_out, C_in, k_h, k_w), let R_f be the
C_out x C_in frequency response at frequency f = (u, v) of the circular "same" cross-correlation
with w on an H x W grid (`conv_singular_values.frequency_response`, phase included, so that
fft2(conv(x)) = R fft2(x) per frequency). The Cayley convolution replaces R_f by
Q_f = cayley(R_f) (`lipkernels.reference.cayley`: semi-orthogonal; a wide R_f, C_out < C_in, goes
through its plain transpose):
    y = ifft2(Q_f fft2(x)_f).
Real x and w give R_{-f} = conj(R_f), and cayley commutes with conjugation, so y is real and the
half spectrum of rfft2 (F = H (W // 2 + 1) frequencies) determines it: y = irfft2(Q_f rfft2(x)_f).
For C_in = C_out this is, in the pixel domain, (I + A)^{-1} (I - A) x with A = M - M^T and M the
circular conv matrix of w (the DFT is unitary and diagonalises M blockwise), an orthogonal map;
for C_out > C_in it has orthonormal columns (an isometry), for C_out < C_in orthonormal rows.

Layout. The per-frequency products want (F, C, B) operands: the frequency axis is the batch of
small C_out x C_in matrices, the images are the columns they multiply. `to_spectrum` and
`from_spectrum` convert, `frequency_responses` gives the (F, C_out, C_in) responses in the same
frequency order (row-major over (u, v), v in 0..W // 2). Half-precision inputs are computed in
float32 (complex64): torch.fft has no half kernels on the CPU and only power-of-two ones on GPUs.
"""

from __future__ import annotations

import torch

from .._spectral import spectral_conv2d
from .cayley import cayley


def cayley_frequencies(response: torch.Tensor, spectrum: torch.Tensor) -> torch.Tensor:
    """output (F, C_out, B) = cayley(response_f) @ spectrum_f for every frequency f."""
    return cayley(response) @ spectrum


def cayley_conv2d(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The Cayley convolution of x (B, C_in, H, W) with weight (C_out, C_in, k_h, k_w), circular
    padding, any H x W with k_h <= H, k_w <= W: (B, C_out, H, W) in x's dtype."""
    return spectral_conv2d(x, weight, cayley_frequencies)
