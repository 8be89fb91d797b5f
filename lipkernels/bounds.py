"""Provable upper bounds on operator norms: of convolutions with skew filters (SOC's S_n, most
of this module), of nearly orthonormal matrices (`near_isometry_norm_bound`) and of circular
convolutions with BCOP filters (`bcop_conv_norm_bound`, from the structure of their symbol).

`skew_conv_norm_bound(S, input_size)` bounds the norm of the zero-padded "same" convolution with a
skew filter S (flipT(S) = -S), on every image of at most `input_size`, or on every image at all,
valid in exact arithmetic on S's values: every floating-point rounding of the computation is
covered by a stated error term. Cholesky factorisations certify the norm at each frequency, at a
cost of C^3 / 3 complex operations per frequency (far less than the SVDs of the Fantastic Four
reshapes, (3C)^3 each): in float64 within about 0.5% to 3% of the norm it certifies (the tight
certificate), or, where the caller accepts a looser bound, after a shorter Lanczos run and in
single precision for float32 filters (the quick certificate, 5% to 20% above).
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
frequency (`_Lanczos`); only the factorisations are trusted.

Rounding (u = 2^-53 in float64, 2^-24 in single precision; see `_Margin`). The computed H differs
from the exact one by E with ||E||_F <= sqrt(2) (32 u + gamma_2K (1 + 32 u)) ||sum_k |S_k| ||_F
(K = k_1 k_2 taps: phases within 32 u, real dot products of length K, counted as 2K). A
Cholesky factorisation of a Hermitian n x n matrix B that runs to completion in floating point
gives R^H R = B + dB with |dB| <= gamma |R^H| |R| (Demmel 1989; Higham, "Accuracy and stability
of numerical algorithms", Thm 10.3, which holds for any order of the inner products, so for
blocked factorisations built on standard, not Strassen-like, products, as LAPACK's; gamma =
gamma_{2n+4} for complex arithmetic), hence lambda_min(B) >= -gamma tr(B) / (1 - gamma) (Rump,
BIT 46, 2006, with his underflow term, taken at the smallest normal number so that it also holds
where subnormals are flushed to zero). These terms, below 1e-9 relative for C <= 4096 in float64
(about 4 n^2 u, 6% at n = 512, in single precision), are subtracted from mu before the
factorisation.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from fractions import Fraction
from collections.abc import Callable

import torch

from . import _backend
from ._checks import check_nonnegative, check_tensor
from ._conventions import input_size_pair, working_dtype
from .functional import _check_conv_spectrum_input
from .reference.bcop_filter import filter_from_taps, head as bcop_head

# Grid points per unit of degree and axis for the size-independent bound: tau = pi / 16, so the
# grid maximum is divided by 1 - (pi / 16)^2 / 2 = 0.98072 (1.97% of slack).
_SYMBOL_GRID_PER_DEGREE = 32

# The tight certificate's Lanczos steps (at most C) and the relative slack of its candidate
# above the extrapolated top eigenvalue (see `_Lanczos`): on the LipConvNet filters
# (random, init 16 and 32, 16 to 2048 channels) 16 steps extrapolate to between 0.995 and 1.025
# times the top eigenvalue.
_LANCZOS_STEPS = 16
_INITIAL_SLACK = 0.006

# The quick certificate's (see `_quick_certificate`): on the same filters 6 steps extrapolate to
# between 1.02 and 1.11 times the top eigenvalue (4 steps: 1.07 to 1.26), and the slack covers
# the rest. Its Ritz value, the lower estimate the caller's test reads, is 0.90 to 0.96 of the
# top after 6 steps and 0.95 to 0.99 after 8, so 8 steps are asked next (before the tight
# certificate's 16): a training-mode SOC layer near a = 1.7 is then taken there.
_QUICK_LANCZOS_STEPS = (6, 8)
_QUICK_SLACK = 0.03

# Bytes of symbols per batch of frequencies: bounds the memory, and keeps each batch's buffers
# below the size the C allocator serves from fresh pages (page faults cost more than the
# arithmetic at C = 1024), so the batches reuse them.
_BATCH_BYTES = 2 ** 25


@dataclasses.dataclass(frozen=True)
class _Precision:
    """The arithmetic of a certificate: its real dtype, its unit roundoff u and its smallest
    normal number (the underflow threshold of Rump's term; it also covers a CPU that flushes
    subnormals to zero)."""

    dtype: torch.dtype
    unit_roundoff: float
    tiny: float

    def gamma(self, n: int) -> float:
        """gamma_n = n u / (1 - n u), the relative error bound of n floating-point operations."""
        return n * self.unit_roundoff / (1 - n * self.unit_roundoff)


_DOUBLE = _Precision(torch.float64, 2.0 ** -53, 2.0 ** -1022)
_SINGLE = _Precision(torch.float32, 2.0 ** -24, 2.0 ** -126)


def _precisions(dtype: torch.dtype) -> tuple[_Precision, ...]:
    """The precisions a filter of `dtype` can be certified in, cheapest first: single precision
    only for float32 values (formed into symbols without a rounding of their own)."""
    return (_SINGLE, _DOUBLE) if dtype == torch.float32 else (_DOUBLE,)


def _round_up(x: float, ulps: int = 4) -> float:
    for _ in range(ulps):
        x = math.nextafter(x, math.inf)
    return x


def _rounded_up_fold(bounds, start: float, combine) -> float:
    """`combine` (float multiplication or addition) folded over non-negative bounds from
    `start`, each inexact positive result rounded up by an ulp (checked exactly on Fractions),
    so that the result bounds the exact one; nan and inf stay as they are."""
    total = start
    for bound in bounds:
        result = combine(total, bound)
        if 0.0 < result < math.inf and Fraction(result) != combine(Fraction(total),
                                                                   Fraction(bound)):
            result = math.nextafter(result, math.inf)
        total = result
    return total


def rounded_up_product(bounds) -> float:
    """The product of Lipschitz bounds, rounded up where inexact: the bound of a composition (an
    exact one, such as a product of ones, stays as it is)."""
    return _rounded_up_fold(bounds, 1.0, operator.mul)


def rounded_up_sum(bounds) -> float:
    """The sum of Lipschitz bounds, rounded up where inexact: the bound of a sum of maps (the
    triangle inequality)."""
    return _rounded_up_fold(bounds, 0.0, operator.add)


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


def _signed_phases(cos: torch.Tensor, sin: torch.Tensor, signs: torch.Tensor,
                   dtype: torch.dtype) -> torch.Tensor:
    """(2, F, K) in `dtype`: the weights of the taps in the real parts of the symbols,
    sign sin_k, then in their imaginary parts, cos_k (see `_signed_symbols`)."""
    return torch.stack([signs[:, None] * sin, cos]).to(dtype)


def _signed_symbols(taps: torch.Tensor, phases: torch.Tensor) -> torch.Tensor:
    """sum_k (sign sin_k + i cos_k) S_k (F, C, C), complex of the real taps' (K, C, C)
    precision, per frequency row of `_signed_phases`: -conj(H(w)) where the sign is 1 and H(w)
    where it is -1 (H(w) = i S^(w) = sum_k (-sin_k + i cos_k) S_k, `sin_k` = sin(w.k)).

    One real product (2F, K) @ (K, C^2) of the phases with the taps (the real parts' rows, then
    the imaginary parts'), each entry a dot product of length K, then the complex interleave:
    no complex copy of the taps.
    """
    count, channels = phases.shape[1], taps.shape[-1]
    parts = (phases.view(2 * count, -1) @ taps.view(taps.shape[0], -1))
    parts = parts.view(2, count, channels, channels)
    return torch.complex(parts[0], parts[1])


def _factorizes(X: torch.Tensor, shift: float) -> torch.Tensor:
    """Whether a Cholesky factorisation of shift I + X^T runs to completion, for each matrix of
    the batch X (F, n, n) (row-major, overwritten; X^T Hermitian): a bool tensor.

    The row-major shift I + X read in LAPACK's column-major order is shift I + X^T, so it is
    factorised in place, with no copy of its own. Where X = -conj(G) or X = -G for a Hermitian G,
    success means shift I - G (or its conjugate, with the same eigenvalues) is factorisable.
    """
    X.diagonal(dim1=-2, dim2=-1).real.add_(shift)
    B = X.mT
    info = torch.empty(X.shape[0], dtype=torch.int32, device=X.device)
    torch.linalg.cholesky_ex(B, out=(B, info))
    return info == 0


if _backend.extension_loaded():
    @torch.library.register_fake("lipkernels::symbols_factorize")
    def _symbols_factorize_fake(taps, phases, shift):
        return phases.new_empty(phases.shape[1], dtype=torch.bool)


def _symbols_factorize(taps: torch.Tensor, phases: torch.Tensor, shift: float) -> torch.Tensor:
    """`_factorizes` of the `_signed_symbols` of each row of `phases`, as a bool tensor. On the
    CPU the compiled kernel (`torch.ops.lipkernels.symbols_factorize`) forms each symbol's
    triangle right before factorising it, a matrix per thread, and keeps no factor: 1.2 to 2.6
    times faster than the composite on the SOC layers' sizes, same arithmetic (dot products of
    length K, one rounding of the shifted diagonal, LAPACK's factorisation)."""
    if taps.device.type == "cpu" and _backend.extension_loaded():
        return torch.ops.lipkernels.symbols_factorize(taps, phases, shift)
    return _factorizes(_signed_symbols(taps, phases), shift)


class _Lanczos:
    """Lanczos runs on H(w) at every frequency of the phases at once, from one fixed
    pseudo-random start, in the taps' precision; `estimate(steps)` is meant to be at or a little
    above max_w max |eigenvalue of H(w)|. One run serves several estimates: it continues where
    the last one stopped.

    H(w) q = i sum_k e^{i w.k} S_k q. The F vectors are kept as (F, 2, C) (real and imaginary
    parts), so a step at all F frequencies is one real product (2F, C) @ (C, K C) with the taps
    (one read of the filter, however many frequencies), giving S_k q for every tap, part and
    frequency, then one batched product per frequency with the (2, 2K) rotation by i e^{i w.k}.
    Never trusted as a bound: there is no reorthogonalisation, and a breakdown (an invariant
    subspace) gives zero vectors from then on, keeping the Ritz values found.
    """

    def __init__(self, taps: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        count, channels = cos.shape[0], taps.shape[-1]
        cos, sin = cos.to(taps.dtype), sin.to(taps.dtype)  # (F, K)
        # i e^{i theta} (x + i y) = (-sin x - cos y) + i (cos x - sin y): rows (real, imaginary
        # part of z), columns (x of every tap, then y of every tap).
        self.rotation = torch.stack([torch.cat([-sin, -cos], 1), torch.cat([cos, -sin], 1)], 1)
        self.columns = taps.reshape(-1, channels).T  # (C, K C): column (k, o) is S_k[o, :]
        generator = torch.Generator().manual_seed(0)
        start = torch.randn(2, channels, generator=generator, dtype=torch.float64)
        self.q = (start / torch.linalg.vector_norm(start)).to(taps).expand(count, 2, channels)
        self.previous = torch.zeros_like(self.q)
        self.beta = torch.zeros(count, 1, 1, dtype=taps.dtype, device=taps.device)
        self.alphas, self.betas = [], []
        self.theta = 0.0  # theta of the last `estimate`

    @property
    def channels(self) -> int:
        return self.q.shape[-1]

    def _step(self):
        count, channels = self.q.shape[0], self.channels
        products = (self.q.reshape(2 * count, channels) @ self.columns).view(count, -1, channels)
        z = torch.bmm(self.rotation, products) - self.beta * self.previous
        alpha = torch.bmm(self.q.reshape(count, 1, -1), z.view(count, -1, 1))
        z -= alpha * self.q
        self.beta = torch.linalg.vector_norm(z, dim=(1, 2), keepdim=True)
        self.alphas.append(alpha.view(count))
        self.betas.append(self.beta.view(count))
        self.previous = self.q
        self.q = z / torch.where(self.beta > 0, self.beta, torch.ones_like(self.beta))

    def _ritz(self, *steps: int) -> list[float]:
        """The largest extreme Ritz value |theta| over the frequencies after each number of
        `steps`, from one batched eigvalsh: each tridiagonal is zero-padded to the largest, which
        adds zero eigenvalues only and so leaves max |theta| as it is."""
        size = max(steps)
        alphas = torch.stack(self.alphas[:size], -1)
        off_diagonals = torch.stack(self.betas[:size - 1], -1) if size > 1 else None
        batch = []
        for count in steps:
            keep = torch.arange(size, device=alphas.device) < count
            tridiagonal = torch.diag_embed(alphas * keep)
            if off_diagonals is not None:
                off = off_diagonals * keep[1:]
                tridiagonal += torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
            batch.append(tridiagonal)
        ritz = torch.linalg.eigvalsh(torch.stack(batch))
        return torch.maximum(ritz[..., -1], -ritz[..., 0]).amax(-1).tolist()

    def estimate(self, steps: int) -> float:
        """theta after min(steps, C) steps, raised by its recent growth: on a semicircle-like
        spectrum edge (the filters SOC builds) theta_j falls short of the top by about c / j^2
        and grows by about 2 c / j^3 a step, so theta + (j / 2) (growth per step) tracks the top.
        With C steps the Krylov space is everything: theta is the top, nothing to extrapolate."""
        steps = min(steps, self.channels)
        while len(self.alphas) < steps:
            self._step()
        if steps < 3 or steps == self.channels:
            self.theta = self._ritz(steps)[0]
            return self.theta
        self.theta, earlier = self._ritz(steps, steps - 2)
        return self.theta + steps / 4 * max(0.0, self.theta - earlier)


@dataclasses.dataclass(frozen=True)
class _Margin:
    """How far below mu to factorise mu' I - G (G = +-H) in `precision` so that success proves
    lambda_max(G_exact) <= mu: `of(mu)`.

    With B the Hermitian matrix the factorisation reads (mu' - G_ii rounded on the diagonal, one
    triangle of the computed G), success gives lambda_min(B) >= -gamma tr(B) / (1 - gamma) - the
    underflow term (Rump's, doubled for complex arithmetic), gamma = gamma_{2n+4},
    tr(B) <= n (mu + max |G_ii|); the diagonal rounding moves eigenvalues by at most
    u (mu + max |G_ii|), and the computed G's Hermitian completion is within sqrt(2) ||E||_F of
    the exact one (`symbol_error` bounds ||E||_F). The sum is doubled to cover its own rounding.
    It is affine in mu.
    """

    precision: _Precision
    channels: int
    diagonal: float  # >= max |G_ii| of the computed G
    symbol_error: float

    def of(self, mu: float) -> float:
        n, p = self.channels, self.precision
        gamma = p.gamma(2 * n + 4)
        scale = mu + self.diagonal
        margin = (gamma / (1 - gamma) * n * scale + p.unit_roundoff * scale
                  + math.sqrt(2) * self.symbol_error + 8 * n * (2 * (n + 1) + scale) * p.tiny)
        return 2 * margin

    def level(self, shift: float) -> float:
        """The mu whose certificate factorises at `shift` (mu - of(mu) = shift), rounded up; inf
        where the margin grows as fast as mu (a precision too coarse for n)."""
        intercept = self.of(0.0)
        slope = self.of(1.0) - intercept
        if not slope < 0.5:
            return math.inf
        return _round_up((shift + intercept) / (1 - slope))


def _symbol_error(precision: _Precision, count: int, cap: float) -> float:
    """A bound on ||E||_F, E the rounding of the computed symbols: sqrt(2) (32 u + gamma_2K
    (1 + 32 u)) ||sum_k |S_k| ||_F <= ... * cap (phases within 32 u: 21 float64 ulps, then one
    rounding to float32 in single precision; real dot products of length K, counted as 2K)."""
    u = precision.unit_roundoff
    return math.sqrt(2) * cap * (32 * u + precision.gamma(2 * count) * (1 + 32 * u))


def _diagonal_sum(taps: torch.Tensor) -> float:
    """max_i sum_k |S_k[i, i]|, summed in float64: the exact |H_ii| is at most that."""
    return taps.diagonal(dim1=1, dim2=2).abs().sum(0, dtype=torch.float64).max().item()


def _diagonal_bound(total: float, count: int, precision: _Precision) -> float:
    """An upper bound on max_i |G_ii| of every computed symbol from `_diagonal_sum` over
    `count` taps: enlarged by the symbols' rounding (32 u + gamma_2K) and the float64 sum's
    own."""
    u = precision.unit_roundoff
    return _round_up(total * (1 + 64 * u + 2 * precision.gamma(2 * count)))


class _Certificate:
    """The frequencies of one certificate and the symbols' data: the phases at one of each pair
    {w, -w} of the grid, and the factorisation rows, mu' I - G for G = H at every representative
    and for G = -H where w != -w."""

    def __init__(self, taps: torch.Tensor, kernel: tuple[int, int], grid: tuple[int, int],
                 cap: float):
        self.taps, self.cap = taps, cap
        index, self_negative = _representatives(grid, taps.device)
        self.cos, self.sin = _phases(kernel, grid, index)
        # lambda_max(H(-w)) = lambda_max(-H(w)): sign 1 (X = -conj(H): shift I + X^T =
        # shift I - H) at every representative, sign -1 (X = H: shift I + X^T = conj(shift I + H))
        # where w != -w.
        rows = torch.cat([torch.arange(index.numel()), torch.nonzero(~self_negative.cpu())[:, 0]])
        signs = torch.ones(rows.numel(), dtype=torch.float64)
        signs[index.numel():] = -1
        self.rows, self.signs = rows.to(self.cos.device), signs.to(self.cos.device)
        self._lanczos = None
        self._diagonal_sum, self._margins = None, {}

    def margin(self, precision: _Precision) -> _Margin:
        """The certificate's margin in `precision`, computed once (one read of the diagonals
        for every precision)."""
        if precision not in self._margins:
            if self._diagonal_sum is None:
                self._diagonal_sum = _diagonal_sum(self.taps)
            count, channels = self.taps.shape[:2]
            self._margins[precision] = _Margin(
                precision, channels, _diagonal_bound(self._diagonal_sum, count, precision),
                _symbol_error(precision, count, self.cap))
        return self._margins[precision]

    def batches(self, precision: _Precision):
        """Row indices in batches of at most _BATCH_BYTES of complex symbols."""
        channels, itemsize = self.taps.shape[-1], 2 * precision.dtype.itemsize
        size = max(1, _BATCH_BYTES // (itemsize * channels * channels))
        return torch.arange(self.rows.numel(), device=self.cos.device).split(size)

    def factorize(self, pending: torch.Tensor, taps: torch.Tensor, shift: float) -> torch.Tensor:
        """Whether shift I - G factorises at each of the rows `pending` (`_symbols_factorize`),
        from the taps in the certificate's precision."""
        rows = self.rows[pending]
        phases = _signed_phases(self.cos[rows], self.sin[rows], self.signs[pending], taps.dtype)
        return _symbols_factorize(taps, phases, shift)

    def estimate(self, steps: int) -> float:
        """The Lanczos estimate after `steps` steps at every frequency (`_Lanczos`): the quick
        and the tight certificate share one run."""
        if self._lanczos is None:
            self._lanczos = _Lanczos(self.taps, self.cos, self.sin)
        return self._lanczos.estimate(steps)

    def ritz_value(self) -> float:
        """theta of the last `estimate` (not extrapolated): the largest extreme Ritz value."""
        return self._lanczos.theta

    def estimate_at(self, pending: torch.Tensor, steps: int) -> float:
        """The Lanczos estimate after `steps` steps at the frequencies of the rows `pending`."""
        rows = self.rows[pending]
        return _Lanczos(self.taps, self.cos[rows], self.sin[rows]).estimate(steps)


def _quick_certificate(certificate: _Certificate, factor: float,
                       accept: Callable[[float, float], bool]) -> float | None:
    """A bound on the norm (max ||S^(w)|| over the grid, times `factor`) found cheaply, or None
    (the tight certificate's turn) where the caller does not accept it or a factorisation fails.

    mu is what a 6-step Lanczos estimate plus 3% needs as the factorisation shift, in the
    cheapest precision whose bound accept(bound, lower) takes: single precision for a float32
    filter first (its margin is about 4 n^2 u, 6% at n = 512), then double. `lower` is the
    largest Ritz value times `factor`, which the tight certificate's bound is not below (in
    exact arithmetic: Ritz values of H(w) lie within its spectrum). Where neither is taken the
    run goes on to 8 steps and then to the tight certificate's 16 (which it shares), for a closer
    estimate and a larger `lower`, and asks again. One factorisation per grid point.
    """
    for steps in (*_QUICK_LANCZOS_STEPS, _LANCZOS_STEPS):
        estimate = certificate.estimate(steps)
        if not estimate > 0:
            return None
        lower = certificate.ritz_value() * factor
        for precision in _precisions(certificate.taps.dtype):
            margin = certificate.margin(precision)
            mu = margin.level(estimate * (1 + _QUICK_SLACK))
            if math.isfinite(mu) and accept(_round_up(mu * factor), lower):
                return _certify(certificate, precision, mu, factor)
    return None


def _certify(certificate: _Certificate, precision: _Precision, mu: float,
             factor: float) -> float | None:
    """mu times `factor`, rounded up, where every factorisation in `precision` proves mu over
    the grid; None where one fails."""
    taps, shift = certificate.taps.to(precision.dtype), mu - certificate.margin(precision).of(mu)
    for pending in certificate.batches(precision):
        if not bool(certificate.factorize(pending, taps, shift).all()):
            return None
    return _round_up(mu * factor)


def _tight_certificate(certificate: _Certificate) -> float:
    """An upper bound on max ||S^(w)|| over the grid, close to it, proved by float64
    factorisations of mu' I -+ H(w), or the cap if mu would reach it.

    mu starts at the 16-step Lanczos estimate plus 0.6%. Where a factorisation fails the
    candidate was low there: mu becomes the larger of mu (1 + _INITIAL_SLACK) and a candidate
    from three times the Lanczos steps at those frequencies, then, should that fail too, grows
    by 1 + 4^j _INITIAL_SLACK.
    """
    cap = certificate.cap
    mu = certificate.estimate(_LANCZOS_STEPS) * (1 + _INITIAL_SLACK)
    if not mu > 0:  # a start vector orthogonal to everything: nothing to scale mu from
        return cap
    margin, taps, failures = certificate.margin(_DOUBLE), certificate.taps.double(), 0
    for pending in certificate.batches(_DOUBLE):
        while pending.numel():
            if not mu < cap:
                return cap
            pending = pending[~certificate.factorize(pending, taps, mu - margin.of(mu))]
            if pending.numel():
                mu *= 1 + 4 ** failures * _INITIAL_SLACK
                if not failures:
                    retry = certificate.estimate_at(pending, 3 * _LANCZOS_STEPS)
                    mu = max(mu, retry * (1 + _INITIAL_SLACK))
                failures += 1
    return mu


def _frobenius_sum_bound(taps: torch.Tensor) -> float:
    """An upper bound on sum_k ||S_k||_F >= max_w ||S^(w)|| (the triangle inequality): a bound of
    its own that caps mu, and the test of finiteness (nan or inf) and of S = 0 (exactly 0 then).

    The norms of float32 taps are taken in float32, within gamma_{n+2} (n = C^2 squares, their
    sum and the root; the bound holds for any order of the sum, and for a float64 accumulator)
    plus sqrt(2 n) times the underflow threshold's root, each doubled against the rounding of the
    bound itself. Where that cannot serve (a non-finite sum, an underflow term above 2^-30 of
    it, or (n + 2) u >= 1/2) and for float64 taps they are accumulated in float64 instead,
    within gamma_{n + K} of the exact sum (a copy of the taps in float64: costly at C >= 1024).
    """
    count, size = taps.shape[0], taps[0].numel()
    if taps.dtype == torch.float32 and (size + 2) * _SINGLE.unit_roundoff < 0.5:
        norms = torch.linalg.vector_norm(taps.view(count, size), dim=1).double()
        total = norms.sum().item()
        underflow = 2 * count * math.sqrt(2 * size * _SINGLE.tiny)
        if math.isfinite(total) and underflow <= total * 2.0 ** -30:
            error = 2 * _SINGLE.gamma(size + 2)
            return _round_up((total * (1 + error) + underflow) * (1 + 2 * _DOUBLE.gamma(count)))
    total = torch.linalg.vector_norm(taps, dim=(1, 2), dtype=torch.float64).sum().item()
    if not math.isfinite(total) or total == 0:
        return total
    return _round_up(total * (1 + 2 * _DOUBLE.gamma(size + count)))


def skew_conv_norm_bound(S: torch.Tensor, input_size=None, *, sufficient: float = 0.0) -> float:
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
        sufficient: a bound the caller needs no tighter than (0: none). Where the norm can be
            certified at or below it by the quick certificate (a 6- or 8-step Lanczos estimate
            plus 3%, single-precision factorisations for a float32 filter where their margin
            fits), that bound is returned, typically 5% to 20% above the norm; otherwise the
            tight one.

    Returns the certified bound, typically 0.5% to 3% above the norm it certifies (the Lanczos
    candidate's slack), plus rounding terms below 1e-9 relative; nan if S has a NaN or inf
    entry; 0.0 for S = 0. Cost: a 16-step Lanczos run (16 reads of the filter) and one float64
    Cholesky factorisation of a C x C complex matrix per grid point (the quick certificate: 6 or
    8 reads and one factorisation per grid point, in single precision where it applies).
    """
    op = "skew_conv_norm_bound"
    check_tensor(op, "S", S, rank=4)
    if input_size is not None:
        _check_conv_spectrum_input(op, S, input_size, kernel_must_fit=False)
    channels, other, k1, k2 = S.shape
    if channels != other or k1 % 2 == 0 or k2 % 2 == 0:
        raise ValueError(f"{op}: S must be (C, C, k_1, k_2) with odd k_i; got shape "
                         f"{tuple(S.shape)}")
    sufficient = check_nonnegative(op, "sufficient", sufficient)
    accept = (lambda bound, lower: bound <= sufficient) if sufficient > 0 else None
    if not bool(torch.isfinite(S).all()):
        return math.nan
    if not torch.equal(S, -S.transpose(0, 1).flip(2, 3)):
        raise ValueError(f"{op}: S must be skew, S = -S.transpose(0, 1).flip(2, 3)")
    return _skew_conv_norm_bound(S, input_size, accept)


def _skew_conv_norm_bound(S: torch.Tensor, input_size,
                          accept: Callable[[float, float], bool] | None = None) -> float:
    """`skew_conv_norm_bound` without its argument checks, for callers whose S is skew by
    construction (SOC's S_n: fl(a - b) = -fl(b - a), so skew(W) and its multiples are exactly
    skew) and whose input_size is checked.

    accept(bound, lower): whether the quick certificate's bound serves the caller, `lower` an
    estimate from below of the tight certificate's (`_quick_certificate`); None: the tight one
    always.
    """
    channels, _, k1, k2 = S.shape
    # Tap k = (a, b) row-major: S_k = S[:, :, a, b].
    taps = S.detach().permute(2, 3, 0, 1).contiguous().view(k1 * k2, channels, channels)
    taps = taps.to(working_dtype(taps.dtype))
    cap = _frobenius_sum_bound(taps)
    if not math.isfinite(cap):
        return math.inf if bool(torch.isfinite(taps).all()) else math.nan
    if cap == 0:
        return 0.0
    grid, factor = _frequency_grid((k1, k2), input_size)
    certificate = _Certificate(taps, (k1, k2), grid, cap)
    if accept is not None:
        quick = _quick_certificate(certificate, factor, accept)
        if quick is not None:
            return quick
    return _round_up(_tight_certificate(certificate) * factor)


def near_isometry_norm_bound(Q: torch.Tensor) -> float:
    """A provable upper bound on ||Q||_2 for a matrix Q that is nearly orthonormal (columns, or
    rows for a wide Q), in exact arithmetic on Q's values: with G the smaller Gram matrix
    (Q^T Q for a tall Q, Q Q^T for a wide one), ||Q||_2^2 = ||G||_2 <= min(1 + ||G - I||_F,
    ||G||_F) (the second for a Q far below an isometry, 0 for Q = 0).

    G is formed in float64 from Q's values (exact in float64 for float32 and half inputs, whose
    products have at most 48 significant bits); its rounding is at most gamma_k |Q|^T |Q| entry
    by entry (k the length of the sums, gamma_k = k u / (1 - k u), u = 2^-53: Higham, "Accuracy
    and Stability of Numerical Algorithms", 2002, §3.5), so at most gamma_k ||Q||_F^2 in the
    Frobenius norm; the subtraction of I and the norms round by a relative gamma of their own
    entry counts, and the sum and square root are rounded up. Tight where Q has converged (the
    bound is about 1 + ||G - I||_F / 2), loose but valid where it has not; nan for a non-finite
    Q."""
    Q = Q.detach().to(torch.float64)
    rows, cols = Q.shape
    gram = Q.T @ Q if rows >= cols else Q @ Q.T
    sums, size = max(rows, cols), min(rows, cols)
    distance = float(torch.linalg.matrix_norm(gram - torch.eye(size, dtype=torch.float64,
                                                               device=Q.device)))
    gram_norm = float(torch.linalg.matrix_norm(gram))
    frobenius_squared = float(torch.linalg.matrix_norm(Q)) ** 2
    if not all(math.isfinite(v) for v in (distance, gram_norm, frobenius_squared)):
        return math.nan
    unit = 2.0 ** -53
    gamma = lambda k: k * unit / (1 - k * unit)  # noqa: E731
    slack = 1 + gamma(size * size + 2)
    rounding = gamma(sums) * frobenius_squared * slack * slack
    near = rounded_up_sum([1.0, distance * slack, rounding])
    far = rounded_up_sum([gram_norm * slack, rounding])
    root = math.sqrt(min(near, far))
    return root if root == 0 else _round_up(root)  # the square root of 0 is exact


def _frobenius(x: torch.Tensor, slack: float) -> float:
    """||x||_F of a float64 tensor, rounded up by `slack` (a relative bound of its rounding);
    exactly 0 for a zero tensor."""
    if not bool(x.any()):
        return 0.0
    return _round_up(float(torch.linalg.vector_norm(x)) * slack)


def _grown_bcop_taps(Q: torch.Tensor, in_channels: int, out_channels: int,
                     norms: list[float]) -> tuple[torch.Tensor, float]:
    """(taps, error): the taps H_t K[i][j] (k, k, r, C) of the BCOP filter of the float64
    matrices Q (2k - 1, C, C), grown one factor P_j + (I - P_j) z at a time (along the first tap
    axis for even j, the second for odd j), and a bound on the Frobenius norm of their distance
    to the exact taps of Q's values.

    A step maps Y to Y' = shift(Y (I - P)) + Y P, a map of norm at most ||I - P|| + ||P|| <=
    max(1, b^2) + b^2 (b >= ||Q_(j+1)||, the eigenvalues of P = U U^T in [0, b^2]). The computed
    step differs from the exact one by the propagated error, by 2 ||Y||_F ||P^ - P||_F from the
    computed projector (||fl(U U^T) - U U^T||_F <= gamma_(C/2) ||U||_F^2: Higham, "Accuracy and
    Stability of Numerical Algorithms", 2002, §3.5) and by the step's own rounding, at most
    (gamma_C + 4 u)(1 + gamma_C)(1 + ||P^||_F) ||Y||_F (the product, a subtraction and an
    addition)."""
    unit = 2.0 ** -53
    gamma = lambda k: k * unit / (1 - k * unit)  # noqa: E731
    channels = Q.shape[-1]
    slack = 1 + gamma(Q[0].numel() * (Q.shape[0] + 1) ** 2 + 2)
    taps = bcop_head(Q, in_channels, out_channels)[None, None]
    error = 0.0
    for j in range(Q.shape[0] - 1):
        U = Q[j + 1, :, :channels // 2]
        P = U @ U.mT
        size = _frobenius(taps, slack)
        projector_error = rounded_up_product([gamma(channels // 2), _frobenius(U, slack),
                                              _frobenius(U, slack)])
        step_rounding = rounded_up_product([gamma(channels) + 4 * unit, 1 + gamma(channels),
                                            1 + _frobenius(P, slack), size])
        step_norm = _round_up(max(1.0, norms[j + 1] ** 2) + norms[j + 1] ** 2)
        error = rounded_up_sum([rounded_up_product([step_norm, error]),
                                rounded_up_product([2.0, size, projector_error]),
                                step_rounding])
        product = taps @ P
        axis = j % 2
        grown = list(taps.shape)
        grown[axis] += 1
        next_taps = taps.new_zeros(grown)
        next_taps.narrow(axis, 0, taps.shape[axis]).copy_(product)
        next_taps.narrow(axis, 1, taps.shape[axis]).add_(taps - product)
        taps = next_taps
    return taps, error


def bcop_conv_norm_bound(matrices: torch.Tensor, weight: torch.Tensor) -> float:
    """A provable upper bound on the norm of the circular convolution with `weight` (out, in,
    k, k), at every input size, where weight is the BCOP filter of `matrices` (2k - 1, C, C)
    (`lipkernels.bcop_filter(matrices, in, out)`, computed on any backend and in any dtype:
    the bound covers its rounding), in exact arithmetic on the values of both.

    As a polynomial on the unit torus the filter of exact arithmetic on the matrices' values is
    H_t prod_j (P_j + (I - P_j) z_(j mod 2)) (lipkernels/reference/bcop_filter.py), and the
    circular convolution's norm at any size is at most the largest norm of that symbol. Each
    factor is normal, with eigenvalues lambda + (1 - lambda) z for the eigenvalues lambda of
    P_j = U_j U_j^T, which lie in [0, ||U_j||^2]; so its norm is at most max(1, 2 ||U_j||^2 - 1),
    and ||H_t|| <= ||M_0||, ||U_j|| <= ||M_(j+1)||, each bounded by `near_isometry_norm_bound`:
        ||conv|| <= b_0 prod_(j>=1) max(1, 2 b_j^2 - 1) + sum_taps ||weight_t - exact_t||_2,
    the last term (the rounding of the weight's construction, triangle inequality on the
    symbol) bounded by its distance to float64 taps grown here plus their own distance to the
    exact ones (`_grown_bcop_taps`). About 1 + ||M^T M - I||_F-sized terms once Björck has
    converged; nan for non-finite values."""
    out_channels, in_channels, size, _ = weight.shape
    Q = matrices.detach().to(torch.float64)
    norms = [near_isometry_norm_bound(q) for q in Q]
    if not all(math.isfinite(b) for b in norms) or not torch.isfinite(weight).all():
        return math.nan
    factors = [max(1.0, _round_up(2 * b * b) - 1) for b in norms[1:]]
    symbol = rounded_up_product([norms[0], *factors])
    taps, error = _grown_bcop_taps(Q, in_channels, out_channels, norms)
    exact = filter_from_taps(taps, in_channels, out_channels)
    difference = (weight.detach().to(torch.float64) - exact).permute(2, 3, 0, 1)
    unit = 2.0 ** -53
    slack = (1 + unit) * (1 + (in_channels * out_channels + 2) * unit / (1 - unit))
    deviation = rounded_up_sum(_frobenius(tap, slack)
                               for tap in difference.reshape(-1, out_channels, in_channels))
    return rounded_up_sum([symbol, deviation, rounded_up_product([float(size), error])])
