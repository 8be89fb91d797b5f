"""Pure-PyTorch exact singular values of a circular convolution (Sedghi, Gupta & Long, ICLR 2019,
"The singular values of convolutional layers"): the oracle for the conv spectral-norm kernels.

The operator. For a filter W (C_out, C_in, k_h, k_w) and an n1 x n2 input, the circular-padding
"same" cross-correlation, as nn.Conv2d(padding="same", padding_mode="circular") computes it:
    y[o, i, j] = sum_{c, a, b} W[o, c, a, b] x[c, (i + a - l_h) mod n1, (j + b - l_w) mod n2],
with left offset l = (k - 1) // 2 per axis. For odd k that is the usual padding k // 2 on both
sides; an even k is accepted too and, like torch's padding="same", pads one more on the right.

Its spectrum. Substituting s = i + a - l in the 2-D DFT X[c, u, v] = sum_{s,t} x[c, s, t]
e^{-2 pi i (u s / n1 + v t / n2)} gives Y[:, u, v] = H[u, v] X[:, u, v] with the C_out x C_in
frequency response
    H[u, v] = sum_{a, b} W[:, :, a, b] e^{+2 pi i (u (a - l_h) / n1 + v (b - l_w) / n2)}
            = e^{-2 pi i (u l_h / n1 + v l_w / n2)} * conj(fft2(W zero-padded to n1 x n2))[u, v]
(W real). The unitary DFT (fft2 / sqrt(n1 n2), applied per channel) block-diagonalises the conv
matrix into these n1 n2 blocks, so its singular values are the union of those of the H[u, v].
Neither the phase nor the conjugation changes a singular value (H and c * conj(H) with |c| = 1
have the same ones: conj(U S V^H) = conj(U) S conj(V)^H), so they are also the singular values of
fft2(W padded)[u, v] itself, as in the paper's code, and of the true convolution (flipped filter)
with any offset. `frequency_response` keeps the exact phase anyway, so that H maps the spectrum
of x to that of the conv output.
"""

from __future__ import annotations

import math

import torch

from .._conventions import circular_size
from .._spectral import frequency_response, power_iteration_norm
from .frequency_power_iteration import frequency_power_iteration


def conv_singular_values(weight: torch.Tensor, input_size) -> torch.Tensor:
    """Singular values (n1, n2, min(C_in, C_out)) of the circular "same" conv with weight (C_out,
    C_in, k_h, k_w) on an n1 x n2 input (`input_size` an int or (n1, n2)), descending per frequency,
    in `weight`'s dtype (half filters are computed in float32). Differentiable w.r.t. weight.

    A frequency whose response has a NaN or inf entry gets NaN singular values (a non-finite
    weight reaches every frequency through the FFT, so then all are NaN): LAPACK's SVD raises on
    such input, so those responses are replaced by zeros before svdvals and the NaN put back
    after, without reading any value on the host."""
    responses = frequency_response(weight, input_size)
    finite = torch.isfinite(responses).flatten(-2).all(-1)
    values = torch.linalg.svdvals(torch.where(finite[..., None, None], responses, 0))
    return torch.where(finite[..., None], values, math.nan).to(weight.dtype)


def conv_spectral_norm(weight: torch.Tensor, input_size, padding: str = "circular", iters=None):
    """Operator norm (0-d, `weight`'s dtype) of the "same" conv with weight on an n1 x n2 input.

    padding="circular": exact, max of `conv_singular_values`. padding="zeros": the circular norm
    at (n1 + k_h - 1, n2 + k_w - 1), i.e. n + 2p for odd k, p = k // 2, an upper bound on the
    zero-padded conv's norm. Proof: embed x in an (n1 + k_h - 1) x (n2 + k_w - 1) zero image
    (an isometry E); the circular conv C there reads, for the n1 x n2 outputs R keeps, only x and
    the zero margin, never wrapped pixels of x; so zero-padded conv = R C E and ||R C E|| <= ||C||.

    iters=None takes the exact SVD. An int >= 1 runs that many power iterations on the responses
    at the rfft2 frequencies (one of each conjugate pair), all at once (v = normalize(H u);
    u = normalize(H^H v)) from one fixed unit start
    (`fixed_start`, the same at every frequency, so results are deterministic), then returns
    max_f Re(v^H H_f u), with u, v held constant for the gradient as in `power_iteration`. In
    exact arithmetic each term is at most sigma_max(H_f), so the estimate is at most the exact
    norm; computed, it can exceed it by rounding (a few units in the last place: up to 2e-7
    relative in float32 once converged), so it is an estimate, not a certified bound (for one,
    see `lipkernels.bounds.skew_conv_norm_bound`). It converges geometrically, at a rate set by
    sigma_2 / sigma_1 of the frequency holding the maximum.
    Here the iteration is `frequency_power_iteration` (the reference `power_iteration` on the
    real forms); `lipkernels.conv_spectral_norm` runs the same one (`power_iteration_norm`)
    through the selected backend's kernel.
    """
    size = circular_size(weight, input_size, padding)
    if iters is None:
        return conv_singular_values(weight, size)[..., 0].max()
    return power_iteration_norm(weight, size, iters, frequency_power_iteration)


