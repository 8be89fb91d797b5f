"""Provable upper bounds on the operator norm of convolutions with skew filters (SOC's S_n).

`skew_conv_norm_bound(S, input_size)` bounds the norm of the zero-padded "same" convolution with a
skew filter S (flipT(S) = -S), on every image of at most `input_size`, or on every image at all,
valid in exact arithmetic on S's values: every floating-point rounding of the computation is
covered by a stated error term. Float64 Cholesky factorisations certify the norm at each
frequency, at a cost of C^3 / 3 complex operations per frequency (far less than the SVDs of the
Fantastic Four reshapes, (3C)^3 each), within about 0.5% to 3% of the norm it certifies.
`lipkernels.nn.SOCConv2d.lipschitz_bound` turns it into a bound on the layer.

The symbol. Write p_i = k_i // 2 (odd k) and, for w in [0, 2 pi)^2,
    S^(w) = sum_{a, b} S[:, :, a, b] e^{i (w_1 (a - p_1) + w_2 (b - p_2))}    (C x C),
a trigonometric polynomial of degree p_i in w_i. The convolution on the infinite grid Z^2 is,
after the Fourier series, multiplication by S^(w), so its norm is sigma* = max_w ||S^(w)||.

Three facts the bound rests on:
1. Every size. The zero-padded convolution on an n1 x n2 image is the infinite one restricted to
   images supported in the n1 x n2 window, with only the outputs in that window kept (zero padding
   reads zeros outside it): a compression, so its norm is at most sigma*, at every size.
2. One size. It is also a compression of the circular convolution on an N1 x N2 torus with
   N_i >= n_i + p_i: put the image at [0, n_i) and zeros on [n_i, N_i). An output at i < n_i reads
   i + j for |j| <= p_i; i + j < 0 wraps to N_i + i + j >= N_i - p_i >= n_i, a zero, and
   i + j <= n_i - 1 + p_i < N_i never wraps, so each output reads what zero padding reads. The
   circular norm is max ||S^(w)|| over the grid w = 2 pi (u / N1, v / N2) (Sedghi et al., ICLR
   2019), and it bounds every image of at most n1 x n2 (a smaller image is a compression of a
   larger one in the same way). An axis with k_i = 1 needs N_i = 1 (S^ does not depend on w_i).
3. Grid to supremum. Let w* maximise ||S^(w)|| with unit top singular vectors x, y, and let
   f(w) = Re(x^H S^(w) y): a real trigonometric polynomial with |f| <= sigma* everywhere and a
   global maximum f(w*) = sigma*, so grad f(w*) = 0. For the grid point nearest w*, w* + h with
   |h_i| <= pi / N_i, g(t) = f(w* + t h) is a sum of e^{i t m.h}, |m_i| <= p_i: an entire
   function of exponential type tau = pi (p_1 / N_1 + p_2 / N_2), bounded by sigma* on the real
   line. Bernstein's inequality (Boas, "Entire functions", 1954, Thm 11.1.2), applied to g and
   then to g', gives |g''| <= tau^2 sigma*, and Taylor's theorem with g'(0) = 0 gives
   ||S^(w* + h)|| >= g(1) >= sigma* (1 - tau^2 / 2), so
       sigma* <= max_grid ||S^(w)|| / (1 - tau^2 / 2)          (tau < sqrt 2).
   With N_i = 32 p_i, tau = pi / 16 and the factor is 1.0197 for every kernel size.

Skew structure. flipT(S) = -S means conv(., S) is minus its own adjoint, so S^(w)^H = -S^(w):
H(w) = i S^(w) is Hermitian with ||S^(w)|| = max |eigenvalue of H(w)|. S is real, so
S^(-w) = conj(S^(w)) and H(-w) = -conj(H(w)): on a grid closed under negation,
max_w ||S^(w)|| = max_w lambda_max(H(w)), and lambda_max(H) <= mu holds iff mu I - H is positive
semidefinite, which a Cholesky factorisation decides: one per grid point (mu I - H(w) and
mu I + H(w) at one of each pair w, -w). The candidate mu comes from Lanczos runs at every
frequency (`_lanczos_candidate`); only the factorisations are trusted.

Rounding (float64, u = 2^-53; see `_certificate_margin`). The computed H differs from the exact
one by E with ||E||_F <= sqrt(2) (32 u + gamma_2K (1 + 32 u)) ||sum_k |S_k| ||_F (K = k_1 k_2
taps: phases within 32 u, complex dot products of length K, i.e. real ones of length 2K). A
Cholesky factorisation of a Hermitian n x n matrix B that runs to completion in floating point
gives R^H R = B + dB with |dB| <= gamma |R^H| |R| (Demmel 1989; Higham, "Accuracy and stability
of numerical algorithms", Thm 10.3, which holds for any order of the inner products, so for
blocked LAPACK factorisations built on standard, not Strassen-like, products; gamma =
gamma_{2n+4} for complex arithmetic), hence lambda_min(B) >= -gamma tr(B) / (1 - gamma) (Rump,
BIT 46, 2006, with his underflow term). These terms, below 1e-9 relative for C <= 4096, are
subtracted from mu before the factorisation.
"""

from __future__ import annotations

import math

import torch

from ._checks import check_tensor
from ._conventions import input_size_pair, working_dtype
from .functional import _check_conv_spectrum_input

_UNIT_ROUNDOFF = 2.0 ** -53  # float64
_SMALLEST_SUBNORMAL = 2.0 ** -1074

# Grid points per unit of degree and axis for the size-independent bound: tau = pi / 16, so the
# grid maximum is divided by 1 - (pi / 16)^2 / 2 = 0.98072 (1.97% of slack).
_SYMBOL_GRID_PER_DEGREE = 32

# Lanczos steps for the candidate mu (at most C), and its relative slack above the extrapolated
# top eigenvalue (see `_lanczos_candidate`): on the LipConvNet filters (random, init 16 and 32,
# 24 to 1024 channels) 16 steps extrapolate to between 0.995 and 1.025 times the top eigenvalue.
_LANCZOS_STEPS = 16
_INITIAL_SLACK = 0.006

# Complex entries of H per batch of frequencies (256 MiB of complex128): bounds the memory.
_BATCH_ENTRIES = 2 ** 24


def _gamma(n: int) -> float:
    """gamma_n = n u / (1 - n u), the relative error bound of n floating-point operations."""
    return n * _UNIT_ROUNDOFF / (1 - n * _UNIT_ROUNDOFF)


def _round_up(x: float, ulps: int = 4) -> float:
    for _ in range(ulps):
        x = math.nextafter(x, math.inf)
    return x


def _frequency_grid(kernel: tuple[int, int], input_size) -> tuple[tuple[int, int], float]:
    """The torus (N1, N2) whose circular norm is certified, and the factor that turns it into
    the bound: 1 for a given input size (fact 2), 1 / (1 - tau^2 / 2) otherwise (fact 3)."""
    degrees = (kernel[0] // 2, kernel[1] // 2)
    symbol_grid = tuple(max(1, _SYMBOL_GRID_PER_DEGREE * d) for d in degrees)
    if input_size is not None:
        sizes = input_size_pair(input_size)
        grid = tuple(n + d if d else 1 for n, d in zip(sizes, degrees))
        # Past the symbol grid's size the size-independent bound is cheaper (and valid here).
        if grid[0] * grid[1] <= symbol_grid[0] * symbol_grid[1]:
            return grid, 1.0
    tau = math.pi * sum(d / n for d, n in zip(degrees, symbol_grid))
    return symbol_grid, _round_up(1.0 / (1.0 - tau * tau / 2))


def _representatives(grid: tuple[int, int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """One of each pair {w, -w} of the grid (row-major indices) and whether it is its own
    negative: H(-w) = -conj(H(w)), so lambda_max over the grid is the largest of lambda_max(H(w))
    and -lambda_min(H(w)) over these, and at a self-negative w the two are equal."""
    n1, n2 = grid
    index = torch.arange(n1 * n2, device=device)
    negative = (-(index // n2) % n1) * n2 + (-index) % n2
    keep = index <= negative
    return index[keep], (index == negative)[keep]


def _phases(kernel: tuple[int, int], grid: tuple[int, int], index: torch.Tensor):
    """cos and sin (F, K) float64 of the angles w.(a - p_1, b - p_2) of the K = k_1 k_2 taps
    (row-major) at the grid frequencies with row-major `index`.

    The angle at w = 2 pi (u / N1, v / N2) is 2 pi m / (N1 N2) with the integer
    m = (u (a - p_1) N2 + v (b - p_2) N1) mod N1 N2, so it is within 3 u of 2 pi (one rounding
    of pi, of the division, of the product) and its cosine and sine are within 21 u of the
    exact ones (32 u is used).
    """
    n1, n2 = grid
    k1, k2 = kernel
    u, v = index // n2, index % n2
    a = torch.arange(k1, device=index.device) - k1 // 2
    b = torch.arange(k2, device=index.device) - k2 // 2
    m = (u[:, None, None] * a[:, None] * n2 + v[:, None, None] * b * n1) % (n1 * n2)
    angle = m.flatten(1).to(torch.float64) * (2 * math.pi / (n1 * n2))
    return torch.cos(angle), torch.sin(angle)


def _signed_symbols(taps: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                    signs: torch.Tensor) -> torch.Tensor:
    """sum_k (sign sin_k + i cos_k) S_k (F, C, C) complex128 per frequency row: -conj(H(w)) where
    the sign is 1 and H(w) where it is -1 (H(w) = i S^(w) = sum_k (-sin_k + i cos_k) S_k,
    `sin_k` = sin(w.k)), from the taps (K, C, C) complex128 with imaginary part 0.

    One complex product (F, K) @ (K, C^2): each real or imaginary part of an entry is a real dot
    product of length 2K (K of its products are exact zeros).
    """
    channels = taps.shape[-1]
    product = torch.complex(signs[:, None] * sin, cos) @ taps.view(taps.shape[0], -1)
    return product.view(-1, channels, channels)


def _factorizes(X: torch.Tensor, shift: float) -> torch.Tensor:
    """Whether LAPACK's Cholesky factorisation of shift I + X^T runs to completion, for each
    matrix of the batch X (F, n, n) (row-major, overwritten; X^T Hermitian): a bool tensor.

    The row-major shift I + X read in LAPACK's column-major order is shift I + X^T, so it is
    factorised in place, with no copy of its own. Where X = -conj(G) or X = -G for a Hermitian G,
    success means shift I - G (or its conjugate, with the same eigenvalues) is factorisable.
    """
    X.diagonal(dim1=-2, dim2=-1).real.add_(shift)
    B = X.mT
    info = torch.empty(X.shape[0], dtype=torch.int32, device=X.device)
    torch.linalg.cholesky_ex(B, out=(B, info))
    return info == 0


def _lanczos_candidate(taps: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                       steps: int) -> float:
    """A candidate for max_w max |eigenvalue of H(w)| over the frequencies of the phases, meant
    to be a little above it: the largest extreme Ritz value theta after `steps` Lanczos steps at
    every frequency, from one fixed pseudo-random start, in the taps' precision, raised by its
    recent growth and by _INITIAL_SLACK.

    H(w) q = i sum_k e^{i w.k} S_k q, so a step at all F frequencies at once is one real product
    (K C, C) @ (C, 2F) of the taps with the real and imaginary parts of the F vectors (one read
    of the filter, however many frequencies), then a 2 x 2 rotation per tap and frequency. On a
    semicircle-like spectrum edge (the filters SOC builds) theta_j falls short of the top by
    about c / j^2 and grows by about 2 c / j^3 a step, so theta + (j / 2) (growth per step)
    tracks the top. Never trusted as a bound: there is no reorthogonalisation, and a breakdown
    (an invariant subspace) gives zero vectors from then on, keeping the Ritz values found.
    """
    count, channels = cos.shape[0], taps.shape[-1]
    cos, sin = cos.to(taps.dtype).T, sin.to(taps.dtype).T  # (K, F)
    # z = i e^{i theta} (x + i y) = (-sin x - cos y) + i (cos x - sin y), as [x, y] @ rotation.
    rotation = torch.stack([torch.stack([-sin, cos], -1), torch.stack([-cos, -sin], -1)], -2)
    rows = taps.reshape(-1, channels)  # (K C, C): row (k, o) is S_k[o, :]
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(channels, 1, 2, generator=generator, dtype=torch.float64)
    q = (start / torch.linalg.vector_norm(start)).to(taps).expand(channels, count, 2)
    previous = torch.zeros_like(q)
    beta = torch.zeros(count, dtype=taps.dtype, device=taps.device)
    alphas, betas, thetas = [], [], []
    for step in range(steps):
        products = (rows @ q.reshape(channels, 2 * count)).view(-1, channels, count, 2)
        z = torch.einsum("kcfr,kfrs->cfs", products, rotation) - beta[:, None] * previous
        alpha = (q * z).sum((0, 2))
        z = z - alpha[:, None] * q
        beta = torch.linalg.vector_norm(z, dim=(0, 2))
        alphas.append(alpha)
        betas.append(beta)
        previous, q = q, z / torch.where(beta > 0, beta, torch.ones_like(beta))[:, None]
        if step in (steps - 3, steps - 1):
            tridiagonal = torch.diag_embed(torch.stack(alphas, -1))
            if step:
                off_diagonal = torch.stack(betas[:-1], -1)
                tridiagonal += (torch.diag_embed(off_diagonal, 1)
                                + torch.diag_embed(off_diagonal, -1))
            ritz = torch.linalg.eigvalsh(tridiagonal)
            thetas.append(torch.maximum(ritz[:, -1], -ritz[:, 0]).max().item())
    # With steps = n the Krylov space is everything: theta is the top, nothing to extrapolate.
    growth = max(0.0, thetas[-1] - thetas[0]) / 2 if steps < channels else 0.0
    return (thetas[-1] + steps / 2 * growth) * (1 + _INITIAL_SLACK)


def _certificate_margin(mu: float, channels: int, diagonal: float, symbol_error: float) -> float:
    """How far below mu to factorise mu' I - G (G = +-H) so that success proves
    lambda_max(G_exact) <= mu.

    With B the Hermitian matrix the factorisation reads (mu' - G_ii rounded on the diagonal, one
    triangle of the computed G), success gives lambda_min(B) >= -gamma tr(B) / (1 - gamma) - the
    underflow term (Rump's, doubled for complex arithmetic), gamma = gamma_{2n+4},
    tr(B) <= n (mu + max |G_ii|); the diagonal rounding moves eigenvalues by at most
    u (mu + max |G_ii|), and the computed G's Hermitian completion is within sqrt(2) ||E||_F of
    the exact one. The sum is doubled to cover its own rounding.
    """
    gamma = _gamma(2 * channels + 4)
    scale = mu + diagonal
    margin = (gamma / (1 - gamma) * channels * scale + _UNIT_ROUNDOFF * scale
              + math.sqrt(2) * symbol_error
              + 8 * channels * (2 * (channels + 1) + scale) * _SMALLEST_SUBNORMAL)
    return 2 * margin


def _certified_norm(taps: torch.Tensor, kernel: tuple[int, int], grid: tuple[int, int],
                    cap: float) -> float:
    """An upper bound on max ||S^(w)|| over the grid, proved by Cholesky factorisations of
    mu' I -+ H(w) (see `_certificate_margin`), or `cap` if mu would reach it. `taps` (K, C, C)
    are in the filter's precision (float32 or float64).

    mu starts at the Lanczos candidate (`_lanczos_candidate`). Where a factorisation fails the
    candidate was low there: mu becomes the larger of mu (1 + _INITIAL_SLACK) and a candidate
    from three times the Lanczos steps at those frequencies, then, should that fail too, grows
    by 1 + 4^j _INITIAL_SLACK.
    """
    count, channels = taps.shape[:2]
    index, self_negative = _representatives(grid, taps.device)
    cos, sin = _phases(kernel, grid, index)
    steps = min(channels, _LANCZOS_STEPS)
    candidate = _lanczos_candidate(taps, cos, sin, steps)
    if not candidate > 0:  # a start vector orthogonal to everything: nothing to scale mu from
        return cap
    # ||E||_F <= sqrt(2) (32 u + gamma_2K (1 + 32 u)) ||sum_k |S_k| ||_F <= ... * cap.
    symbol_error = (math.sqrt(2) * cap
                    * (32 * _UNIT_ROUNDOFF + _gamma(2 * count) * (1 + 32 * _UNIT_ROUNDOFF)))
    complex_taps = taps.to(torch.complex128)
    # lambda_max(H(-w)) = lambda_max(-H(w)): mu' I - G for G = H at every representative
    # (sign 1, X = -conj(H): shift I + X^T = shift I - H) and for G = -H where w != -w (sign -1,
    # X = H: shift I + X^T = conj(shift I + H)).
    rows = torch.cat([torch.arange(index.numel()), torch.nonzero(~self_negative.cpu())[:, 0]])
    signs = torch.ones(rows.numel(), dtype=torch.float64)
    signs[index.numel():] = -1
    rows, signs = rows.to(cos.device), signs.to(cos.device)
    size = max(1, _BATCH_ENTRIES // (channels * channels))
    mu, failures = candidate, 0
    for start in range(0, rows.numel(), size):
        pending = torch.arange(start, min(start + size, rows.numel()), device=cos.device)
        X = _signed_symbols(complex_taps, cos[rows[pending]], sin[rows[pending]], signs[pending])
        # |Re X_ii| = |H_ii|, the exact H_ii being real.
        diagonal = X.diagonal(dim1=-2, dim2=-1).real.abs().max().item()
        while pending.numel():
            if not mu < cap:
                return cap
            shift = mu - _certificate_margin(mu, channels, diagonal, symbol_error)
            pending = pending[~_factorizes(X, shift)]
            if pending.numel():
                mu *= 1 + 4 ** failures * _INITIAL_SLACK
                if not failures:
                    failed = rows[pending]
                    mu = max(mu, _lanczos_candidate(taps, cos[failed], sin[failed],
                                                    min(channels, 3 * steps)))
                failures += 1
                X = _signed_symbols(complex_taps, cos[rows[pending]], sin[rows[pending]],
                                    signs[pending])
    return mu


def skew_conv_norm_bound(S: torch.Tensor, input_size=None) -> float:
    """A provable upper bound (a float) on the norm of the zero-padded "same" convolution with a
    skew filter, on every image of at most `input_size`, or of any size.

    Args:
        S: (C, C, k_1, k_2) real filter, k_i odd, with S = -flipT(S) exactly (flipT(S) =
            S.transpose(0, 1).flip(2, 3)), as `lipkernels.skew` returns it and SOC scales it;
            any float dtype (half precision is read as float32), bounded as its exact values.
        input_size: None: a bound for every image size, max over the 32 p_i-point grid of
            ||S^(w)|| divided by 0.98072 (fact 3 of the module docstring; at most 2% above
            sup_w ||S^(w)||, the norm at large sizes). n or (n1, n2): a bound for every image of
            at most n1 x n2, the circular norm on the (n1 + p_1) x (n2 + p_2) torus (fact 2), or
            the size-independent bound where that has fewer frequencies.

    Returns the certified bound, typically 0.5% to 3% above the norm it certifies (the Lanczos
    candidate's slack), plus rounding terms below 1e-9 relative; nan if S has a NaN or inf
    entry; 0.0 for S = 0. Cost: a 16-step Lanczos run (16 reads of the filter) and one float64
    Cholesky factorisation of a C x C complex matrix per grid point.
    """
    op = "skew_conv_norm_bound"
    check_tensor(op, "S", S, rank=4)
    if input_size is not None:
        _check_conv_spectrum_input(op, S, input_size, kernel_must_fit=False)
    channels, other, k1, k2 = S.shape
    if channels != other or k1 % 2 == 0 or k2 % 2 == 0:
        raise ValueError(f"{op}: S must be (C, C, k_1, k_2) with odd k_i; got shape "
                         f"{tuple(S.shape)}")
    if not bool(torch.isfinite(S).all()):
        return math.nan
    if not torch.equal(S, -S.transpose(0, 1).flip(2, 3)):
        raise ValueError(f"{op}: S must be skew, S = -S.transpose(0, 1).flip(2, 3)")
    return _skew_conv_norm_bound(S, input_size)


def _skew_conv_norm_bound(S: torch.Tensor, input_size) -> float:
    """`skew_conv_norm_bound` without its argument checks, for callers whose S is skew by
    construction (SOC's S_n: fl(a - b) = -fl(b - a), so skew(W) and its multiples are exactly
    skew) and whose input_size is checked."""
    channels, _, k1, k2 = S.shape
    # Tap k = (a, b) row-major: S_k = S[:, :, a, b].
    taps = S.detach().permute(2, 3, 0, 1).contiguous().view(k1 * k2, channels, channels)
    taps = taps.to(working_dtype(taps.dtype))
    # sum_k ||S_k||_F >= max_w ||S^(w)|| (the triangle inequality): a bound of its own that caps
    # mu, and the test of finiteness (nan or inf) and of S = 0. Accumulated in float64: within
    # gamma_{C^2 + K} of the exact sum.
    cap = torch.linalg.vector_norm(taps, dim=(1, 2), dtype=torch.float64).sum().item()
    if not math.isfinite(cap):
        return math.inf if bool(torch.isfinite(taps).all()) else math.nan
    if cap == 0:
        return 0.0
    cap = _round_up(cap * (1 + 2 * _gamma(channels * channels + k1 * k2)))
    grid, factor = _frequency_grid((k1, k2), input_size)
    return _round_up(_certified_norm(taps, (k1, k2), grid, cap) * factor)
