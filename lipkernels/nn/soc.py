"""Skew-orthogonal convolution layers: SOCConv2d and SOCLinear.

Singla & Feizi, "Skew Orthogonal Convolutions", ICML 2021, with the defaults of Singla, Singla &
Feizi, "Improved techniques for deterministic l2 robustness", NeurIPS 2022 (6 series terms in
training, 15 in eval, correction 1.0). A layer with C = max(out_channels, in_channels * stride^2)
computes

    x -> pixel_unshuffle(x, 2)               (stride 2 only: C_in -> 4 C_in channels)
      -> zero-pad the channels up to C
      -> soc_exp(., S_n, terms) = sum_{i<terms} S_n^{*i}(.) / i!   (conv with the C x C x k x k S_n)
      -> keep the first out_channels channels, add the bias,

with S_n = correction * skew(W) / sigma, skew(W) = (W - flipT(W)) / 2 and sigma the Fantastic Four
estimate (Singla & Feizi, ICLR 2021) min_q sigma_max(M_q) of the four reshapes M_q of skew(W),
without the sqrt(k k) factor of the bound (as the seed code does). The Jacobian A of conv(., S_n)
is skew-symmetric, so exp(A) is orthogonal and the truncated series is close to it; see
`lipschitz_bound` for the guarantee including the truncation.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from .. import functional
from .._checks import (autocast_enabled, autocast_off, check_conv_arguments, check_count,
                       check_layer_input, check_nonnegative, check_stride, check_terms)
from .._conventions import GRAD_MODES, bound_matrix_shapes, initial_vectors, input_size_pair
from ..bounds import _skew_conv_norm_bound
from ..functional import _check_conv_spectrum_input
from ._distributed import full_parameters
from ._eval_cache import EvalCached
from ._unshuffle import unshuffle
from ._vanilla import plain_module

# Power iterations run on the fresh filter at construction (and by `update_vectors` by default),
# as in the seed code (`init_iters=50`).
INIT_ITERS = 50

# Cells of [0, a] on which `truncated_exp_bound` bounds |T(ix)|^2 (a power of two, at most 2^12,
# so that its margin covers the rounding of the cells' centres).
_SERIES_CELLS = 2 ** 10

# exp(a) overflows float64 above ~709.78; beyond this the bound is reported as inf.
_MAX_SERIES_ARGUMENT = 700.0


def exp_series_tail(a: float, terms: int) -> float:
    """An upper bound on the exponential series tail sum_{i >= terms} a^i / i! for a >= 0.

    Summed upward from i = terms, so there is no cancellation (e^a minus the partial sum would
    lose every digit once the tail is below e^a * 1e-16). Once i > 2a each term is at most half
    the previous one, so the loop stops when a term is negligible against the sum and adds twice
    that term, a geometric bound on everything not summed. Returns inf for a > 700.
    """
    if a > _MAX_SERIES_ARGUMENT or not math.isfinite(a):
        return math.inf
    term = 1.0
    for i in range(1, terms + 1):
        term *= a / i  # a^terms / terms!, without forming a^terms or terms! on their own
    tail, i = 0.0, terms
    while term > 0.0 and (i <= 2 * a or term > tail * 1e-17):
        tail += term
        i += 1
        term *= a / i
    return tail + 2.0 * term


# The default `tolerance` of the SOC layers' lipschitz_bound: about 1e-6.
BOUND_TOLERANCE = 2.0 ** -20


def series_modulus_below(a: float, terms: int) -> float:
    """max |T(i x)| over 257 equally spaced x in [0, a], in float64: an estimate from below of
    `truncated_exp_bound(a, terms)` (its supremum over [0, a]; |T(0)| = 1), for deciding how
    tight a bound needs to be, never as a bound."""
    x = torch.linspace(0.0, a, 257, dtype=torch.float64)
    j = torch.arange(terms, dtype=torch.float64)
    coefficients = 1.0 / torch.exp(torch.lgamma(j + 1))
    powers = x[:, None] ** j  # (i x)^j = i^j x^j
    real = (powers[:, 0::2] * coefficients[0::2] * (-1.0) ** (j[0::2] / 2)).sum(1)
    imag = (powers[:, 1::2] * coefficients[1::2] * (-1.0) ** ((j[1::2] - 1) / 2)).sum(1)
    return torch.sqrt(real * real + imag * imag).max().item()


def bound_accepts(terms: int, tolerance: float):
    """Whether a quick certificate's bound on ||A|| serves a series of `terms` terms:
    accept(bound, lower) when truncated_exp_bound(bound) is at most 1 + tolerance, or at most
    (1 + tolerance) times the series' worst case at `lower` (`series_modulus_below`), an
    estimate from below of the tight certificate's bound: the quick bound is then within
    `tolerance` of the tight one (a 6-term series is flat at 1.00474 for a in [1.6, 3.3])."""
    def accept(bound: float, lower: float) -> bool:
        upper = truncated_exp_bound(bound, terms, tolerance)
        return (upper <= 1 + tolerance
                or upper <= (1 + tolerance) * series_modulus_below(lower, terms))

    return accept


def _squared_modulus_coefficients(terms: int) -> dict[int, Fraction]:
    """|T(ix)|^2 = 1 + sum_s c_s x^s for T(z) = sum_{j<terms} z^j / j! and real x, with
    c_s = i^s sum_{m+n=s; m,n<terms} (-1)^n / (m! n!): zero for s < terms (there the sum is
    (1 - 1)^s / s!) and for odd s (|T(ix)|^2 is even). Returns the nonzero c_s (exact), all with
    terms <= s <= 2 terms - 2."""
    coefficients = {}
    for s in range(terms + terms % 2, 2 * terms - 1, 2):
        total = sum(Fraction((-1) ** n, math.factorial(s - n) * math.factorial(n))
                    for n in range(s - terms + 1, terms))
        if total:
            coefficients[s] = total * (-1) ** (s // 2)
    return coefficients


@functools.lru_cache(maxsize=64)
def truncated_exp_bound(a: float, terms: int, tolerance: float = 0.0) -> float:
    """sup ||T(A)|| over real skew-symmetric A with ||A|| <= a, T(A) = sum_{i<terms} A^i / i!:
    a Python float, rounded up; with `tolerance`, 1 + the tail bound below once that is at most
    1 + tolerance (within `tolerance` of the supremum, which is at least |T(0)| = 1).

    A skew A is normal with eigenvalues i x, |x| <= a, so ||T(A)|| = max |T(i x)| over them, and
    the supremum is max_{0 <= x <= a} |T(i x)| (T has real coefficients, so |T(-ix)| = |T(ix)|;
    a 2 x 2 rotation generator attains it). It is at most 1 + sum_{i>=terms} a^i / i!
    (`exp_series_tail`; |e^{ix}| = 1) and often far below: 1.00474 against 1.0438 at terms = 6,
    a = 1.7, and 1.00474 for every a in [1.6, 3.3], where the 6-term series of a rotation by x
    is no longer than that. When the tail is below float64 resolution it is returned as is.

    Otherwise P(x) = |T(ix)|^2 = 1 + sum_s c_s x^s (`_squared_modulus_coefficients`) is bounded on
    cells [m - h', m + h'] covering [0, a], m = (2j + 1) h, h = a / 2^11 (exact), h' =
    h (1 + 2^-38) (covering the rounding of the computed centres, |error| <= u a (1 + u) <
    h' - h), by the smaller of two bounds, with l = max(m - h', 0) and r = m + h': Taylor's,
    P(m) + |P'(m)| h' + max(M, 0) h'^2 / 2 with M = sum_s s (s-1) c_s (r or l)^(s-2) >= max P''
    on the cell (positive terms at r, negative ones at l; near a maximum M < 0), and the
    monotone one, 1 + sum_{c_s > 0} c_s r^s + sum_{c_s < 0} c_s l^s, exact where P is flat at 1
    (a contraction near x = 0, as for 4 terms). r and l are widened by more than 2 u a against
    their own rounding. Each sum is evaluated in float64 from rounded coefficients and powers
    formed by repeated products, so within gamma_{2 terms + 2} of its sum of absolute terms;
    that error, doubled, is added. nan for a = nan.
    """
    if math.isnan(a):
        return math.nan
    tail = exp_series_tail(a, terms)
    if tail <= max(2.0 ** -53, tolerance):
        return math.nextafter(1.0 + tail * (1 + 2.0 ** -40), math.inf)
    if math.isinf(a):
        return math.inf
    coefficients = _squared_modulus_coefficients(terms)
    if not coefficients:
        return 1.0  # terms = 1: T(A) = I
    half_width = a / (2 * _SERIES_CELLS)
    centres = (2 * torch.arange(_SERIES_CELLS, dtype=torch.float64) + 1) * half_width
    width = half_width * (1 + 2.0 ** -38)
    reach = width * (1 + 2.0 ** -40)

    def powers(x):  # x^0 .. x^(2 terms - 2) by repeated products: x^s has s - 1 roundings
        table = [torch.ones_like(x)]
        for _ in range(2 * terms - 2):
            table.append(table[-1] * x)
        return table

    middle, right = powers(centres), powers(centres + reach)
    left = powers((centres - reach).clamp(min=0))
    zero = torch.zeros_like(centres)
    excess = slope = curvature = monotone = taylor_scale = monotone_scale = zero
    for s, coefficient in coefficients.items():
        c = float(coefficient)
        excess = excess + c * middle[s]
        slope = slope + (s * c) * middle[s - 1]
        # An upper bound on P'' over the cell: its positive terms at r, its negative ones at l.
        curvature = curvature + (s * (s - 1) * c) * (right if c > 0 else left)[s - 2]
        monotone = monotone + c * (right if c > 0 else left)[s]
        taylor_scale = taylor_scale + abs(c) * (middle[s] + s * width * middle[s - 1]
                                                + s * (s - 1) * width * width * right[s - 2])
        monotone_scale = monotone_scale + abs(c) * right[s]
    rounding = 4 * (2 * terms + 4) * 2.0 ** -53
    taylor = (excess + slope.abs() * width + curvature.clamp(min=0) * (width * width / 2)
              + rounding * taylor_scale)
    cells = torch.minimum(taylor, monotone + rounding * monotone_scale)
    # 1 + max(cells): one rounding, then the square root's; 2^-40 covers the rounding of
    # exp_series_tail's products and sum.
    bound = math.sqrt(1.0 + max(float(cells.max()), 0.0) * (1 + rounding)) * (1 + 2.0 ** -52)
    return math.nextafter(min(bound, 1.0 + tail * (1 + 2.0 ** -40)), math.inf)


def _reshape_products_norms(S: torch.Tensor, vectors) -> torch.Tensor:
    """||M_q u_q|| (4,) for the Fantastic Four reshapes M_q of S (C, C, k, k) (`bound_matrices`)
    and vectors u_q, without forming the three reshapes that are copies.

    With S as the (C, C k^2) matrix of rows o and columns (c, a, b): M_3 u_3 is its product
    with u_3; M_1 u_1 [o, a'] = sum_{c,b} S[o, c, a', b] u_1[c, b] and M_2 u_2 [o, b'] =
    sum_{a,c} S[o, c, a, b'] u_2[a, c] are its products with the (C k^2, k) matrices
    u_1[c, b] [a = a'] and u_2[a, c] [b = b'] (one product for the three); M_4 u_4 [c] =
    sum_{o,k} S[o, c, k] u_4[o, k] is the sum of the diagonal over k of S^T u_4 (C k^2, k^2).
    Differentiable like the products themselves.
    """
    channels, k = S.shape[0], S.shape[-1]
    u1, u2, u3, u4 = vectors
    eye = torch.eye(k, dtype=S.dtype, device=S.device)
    first = u1.view(channels, 1, k, 1) * eye.view(1, k, 1, k)  # [c, a, b, a']
    second = u2.view(k, channels).T.view(channels, k, 1, 1) * eye.view(1, 1, k, k)  # [c, a, b, b']
    rows = S.reshape(channels, -1)
    columns = torch.cat([first.reshape(-1, k), second.reshape(-1, k), u3[:, None]], 1)
    products = rows @ columns
    fourth = (rows.T @ u4.view(channels, k * k)).view(channels, k * k, k * k)
    return torch.stack([torch.linalg.vector_norm(products[:, :k]),
                        torch.linalg.vector_norm(products[:, k:2 * k]),
                        torch.linalg.vector_norm(products[:, 2 * k]),
                        torch.linalg.vector_norm(fourth.diagonal(dim1=1, dim2=2).sum(1))])


class _SkewOrthogonal(EvalCached):
    """The machinery shared by SOCConv2d and SOCLinear (SOCLinear is the k = 1, stride 1 case).

    Parameters: `weight` (C, C, k, k), N(0, 1/C) as in the seed code, and `bias` (out_channels,),
    U(-1/sqrt(out), 1/sqrt(out)). Buffers: `u1`..`u4`, the persistent right singular vectors of
    the four Fantastic Four reshapes M_1..M_4 of skew(weight) (lengths C k, C k, C k k, C k k).
    """

    # Argument names used in messages and in extra_repr; SOCLinear says in/out_features.
    _size_names = ("in_channels", "out_channels")

    def __init__(self, in_channels, out_channels, kernel_size, stride, bias, train_terms,
                 eval_terms, correction, grad_mode, device, dtype):
        super().__init__()
        name = type(self).__name__
        in_name, out_name = self._size_names
        check_count(name, in_name, in_channels)
        check_count(name, out_name, out_channels)
        check_count(name, "kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"{name}: kernel_size must be odd (same padding k // 2 keeps the "
                             f"Jacobian skew-symmetric); got {kernel_size}")
        check_stride(name, stride)
        check_terms(name, "train_terms", train_terms)
        check_terms(name, "eval_terms", eval_terms)
        if isinstance(correction, bool) or not isinstance(correction, (int, float)) \
                or not math.isfinite(correction) or correction <= 0:
            raise ValueError(f"{name}: correction must be a finite number > 0; got {correction!r}")
        if grad_mode not in GRAD_MODES:
            raise ValueError(f"{name}: grad_mode must be one of {', '.join(GRAD_MODES)}; "
                             f"got {grad_mode!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = kernel_size, stride
        self.train_terms, self.eval_terms = train_terms, eval_terms
        self.correction, self.grad_mode = float(correction), grad_mode
        self.channels = max(out_channels, in_channels * stride * stride)
        factory = {"device": device, "dtype": dtype}
        shape = (self.channels, self.channels, kernel_size, kernel_size)
        self.weight = nn.Parameter(torch.empty(shape, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        for index, (_, cols) in enumerate(bound_matrix_shapes(shape), start=1):
            self.register_buffer(f"u{index}", torch.empty(cols, **factory))
        self.reset_parameters()

    @property
    def terms(self) -> int:
        """Series terms of the current mode: `train_terms` in training, `eval_terms` in eval."""
        return self.train_terms if self.training else self.eval_terms

    def reset_parameters(self):
        """Fresh weight and bias as in the seed code, fresh vectors after INIT_ITERS iterations."""
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(self.channels))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.out_channels)
            nn.init.uniform_(self.bias, -bound, bound)
        with torch.no_grad():
            self._store_vectors(initial_vectors(self.weight))
        self.update_vectors(INIT_ITERS)

    @torch.no_grad()
    def update_vectors(self, iters: int = INIT_ITERS):
        """Run `iters` power iterations on skew(weight) and store the right vectors.

        Runs at construction; the NeurIPS 2022 recipe also calls this (50 iterations) once per
        epoch to keep sigma close to the Fantastic Four value after large weight updates.
        """
        with autocast_off(self.weight.device.type):
            _, vectors = functional.fantastic_four(functional.skew(self.weight), iters,
                                                   self._vectors())
        self._store_vectors(vectors)

    def _vectors(self):
        return (self.u1, self.u2, self.u3, self.u4)

    def _store_vectors(self, vectors):
        with torch.no_grad():
            for buffer, vector in zip(self._vectors(), vectors):
                buffer.copy_(vector)

    def _normalized_filter(self, store_vectors: bool) -> torch.Tensor:
        """S_n = correction * skew(W) / sigma (0 where sigma = 0), differentiable w.r.t. W through
        skew(W) and sigma.

        Training: one power iteration from the stored vectors (`fantastic_four`, one launch);
        sigma = its minimum bound / k (the bound is k * min_q sigma_q for a k x k filter), with
        d sigma / d W through v_q u_q^T, as in spectral normalisation. The new vectors are stored
        when `store_vectors`. Eval: no iteration; sigma = min_q ||M_q u_q|| with the stored unit
        vectors u_q (the Rayleigh estimate v_q^T M_q u_q with v_q = normalize(M_q u_q)).
        """
        S = functional.skew(self.weight)
        if self.training:
            bound, vectors = functional.fantastic_four(S, 1, self._vectors())
            if store_vectors:
                self._store_vectors(vectors)
            sigma = bound / self.kernel_size
        else:
            sigma = _reshape_products_norms(S, self._vectors()).min()
        # sigma = 0 means S = 0 (skew(W) = 0, a zero or flip-symmetric W): S_n = 0 and the layer
        # is the identity map, exp(0) = I. The inner where keeps c / sigma finite in the branch
        # not taken, so the gradient there is 0, not 0 * inf = NaN. A NaN sigma fails the test
        # too, and 0 * S keeps S's NaN entries: NaN in, NaN out.
        positive = sigma > 0
        safe = torch.where(positive, sigma, torch.ones_like(sigma))
        scale = torch.where(positive, self.correction / safe, torch.zeros_like(sigma))
        return scale * S

    def _forward_filter(self) -> torch.Tensor:
        """S_n for this forward: stores the training iteration; reused in eval inside
        `lipkernels.nn.cached()`."""
        if self.training:
            return self._normalized_filter(store_vectors=True)
        return self._derived(self.weight, (self.weight, *self._vectors()), None,
                             lambda: self._normalized_filter(store_vectors=False))

    def _check_input(self, x, rank: int, layout: str):
        in_name = self._size_names[0]
        check_layer_input(type(self).__name__, x, rank, layout, in_name, self.in_channels,
                          self.weight)

    def _series(self, x: torch.Tensor) -> torch.Tensor:
        """The layer on a validated (B, in_channels, H, W) input."""
        with autocast_off(self.weight.device.type):
            S = self._forward_filter()
        if self.stride == 2:
            x = unshuffle(type(self).__name__, x)
        if x.shape[1] < self.channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.channels - x.shape[1]))
        device_type = x.device.type
        if autocast_enabled(device_type):
            # The series is the costly part: it runs in the autocast dtype, like a conv would.
            dtype = torch.get_autocast_dtype(device_type)
            x, S = x.to(dtype), S.to(dtype)
        y = functional.soc_exp(x, S, self.terms, self.grad_mode)[:, :self.out_channels]
        if self.bias is not None:
            y = y + self.bias.to(y.dtype).view(1, -1, 1, 1)
        return y

    @torch.no_grad()
    def lipschitz_bound(self, input_size=None, *, tolerance: float = BOUND_TOLERANCE) -> float:
        """A provable upper bound (a Python float) on the layer's Lipschitz constant (l2 norms).

        It holds for the map the next forward call computes in the current mode, with
        terms = `train_terms` in training (S_n after the one power-iteration step that call will
        take; the stored vectors are left unchanged) and `eval_terms` in eval.

        The layer is slice o T(A) o pad (o unshuffle) plus a bias: pad and pixel_unshuffle are
        isometries, keeping the first channels has norm <= 1 and the bias does not change
        differences, so the constant is at most ||T(A)||, with A the skew-symmetric Jacobian of
        the zero-padded conv(., S_n) on the image the series sees and T(A) = sum_{i<terms} A^i / i!
        the truncated series. A is normal with eigenvalues i x, |x| <= ||A|| <= a, so

            ||T(A)|| <= max_{0 <= x <= a} |T(i x)|     (`truncated_exp_bound`),

        at most 1 + sum_{i>=terms} a^i / i! and often far less (a 6-term series stays within
        1.0048 of an isometry for a up to 3.3). a is `lipkernels.bounds.skew_conv_norm_bound`
        of S_n: ||A|| certified by Cholesky factorisations of the per-frequency blocks, never a
        power-iteration estimate (those are lower bounds of sigma_max), within about 0.5% to 3%
        of the norm it certifies (the circular norm on the (n + k // 2)-torus for a given size,
        the supremum of the symbol over 1.0197 otherwise; see there). Where the cheaper
        certificate's a (5% to 20% above ||A||, in single precision for float32 weights) moves
        this bound by less than `tolerance` it is taken (`bound_accepts`): where the bound is at
        most 1 + `tolerance` (none is below |T(0)| = 1; 15 terms: a up to about 2.5), or where
        the series is flat (6 terms: a in [1.6, 3.3]). A zero skew(W) gives S_n = 0 and the
        bound 1; a NaN or inf weight gives nan. The bound is for exact arithmetic on the stored
        parameters (S_n as the layer computes it), so rounding inside the forward pass itself
        (notably under autocast) is not included.

        Args:
            input_size: None (default): a bound valid for inputs of every size. An int or
                (H, W) (SOCConv2d only): valid for every input of at most H x W, tighter on small
                images (a zero-padded conv on few pixels has a smaller norm) and cheaper, one
                Cholesky factorisation per frequency of the (H / stride + k // 2) x
                (W / stride + k // 2) torus instead of the 32 (k // 2) x 32 (k // 2) grid
                (which serves where it is the smaller). With stride 2, H and W must be even.
            tolerance: how much, relatively, the cheaper certificate may loosen the bound
                (default 2^-20, about 1e-6; the rule above); 0 asks for the tight certificate
                always.
        """
        tolerance = check_nonnegative(type(self).__name__, "tolerance", tolerance)
        if input_size is not None:
            input_size = self._series_input_size(input_size)
        with autocast_off(self.weight.device.type), full_parameters(self):
            S = self._normalized_filter(store_vectors=False)
        terms = self.terms
        accept = bound_accepts(terms, tolerance) if tolerance > 0 else None
        return truncated_exp_bound(_skew_conv_norm_bound(S, input_size, accept), terms, tolerance)

    @torch.no_grad()
    def _eval_filter(self) -> torch.Tensor:
        """S_n as the eval forward computes it (no iteration, sigma from the stored vectors),
        whatever the current mode."""
        training = self.training
        try:
            with autocast_off(self.weight.device.type), full_parameters(self):
                self.train(False)
                return self._normalized_filter(store_vectors=False)
        finally:
            self.train(training)

    def _horner_kernels(self) -> list[torch.Tensor]:
        """The eval series T(S_n) x = sum_{i < eval_terms} S_n^i x / i! (after the unshuffle)
        as zero-padded convolutions in sequence, Horner's steps z <- x + S_n z / i for
        i = n .. 1 (n = eval_terms - 1) on the state (z, x) of 2 C channels: the first maps x
        to (x + S_n x / n, x), each next (z, x) to (x + S_n z / i, x), the last to
        x + S_n z (its first out_channels); zero input channels pad x, as the layer does."""
        S, C = self._eval_filter(), self.channels
        centre = self.kernel_size // 2
        identity = torch.zeros_like(S)
        identity[range(C), range(C), centre, centre] = 1
        zero, n = torch.zeros_like(S), self.eval_terms - 1
        inputs = self.in_channels * self.stride ** 2
        if n <= 1:  # the identity, or x + S_n x
            return [(n * S + identity)[:self.out_channels, :inputs]]
        steps = [torch.cat([S / n + identity, identity])[:, :inputs]]
        steps += [torch.cat([torch.cat([S / i, identity], 1), torch.cat([zero, identity], 1)])
                  for i in range(n - 1, 0, -1)]
        steps[-1] = steps[-1][:self.out_channels]
        return steps

    def vanilla_export(self) -> nn.Module:
        """The layer in eval as plain torch modules (deel-torchlip's convention, which its
        `vanilla_model` calls): for SOCConv2d an nn.Sequential of (nn.PixelUnshuffle(2) at
        stride 2 and) eval_terms - 1 zero-padded nn.Conv2d that compute the truncated series
        in Horner's form (`_horner_kernels`), the bias on the last; for SOCLinear one nn.Linear,
        the series' matrix. The same outputs as the layer in eval up to float32 rounding, at
        every input size; loading them needs torch only."""
        kernels = self._horner_kernels()
        bias = None if self.bias is None else self.bias.detach()
        if isinstance(self, SOCLinear):
            matrices = [kernel[:, :, 0, 0] for kernel in kernels]
            series = functools.reduce(lambda z, step: step @ z, matrices)
            return plain_module(nn.Linear, series, bias, series.shape[1], series.shape[0])
        modules = [nn.PixelUnshuffle(2)] if self.stride == 2 else []
        for kernel in kernels:
            last = kernel is kernels[-1]
            modules.append(plain_module(nn.Conv2d, kernel, bias if last else None,
                                        kernel.shape[1], kernel.shape[0], self.kernel_size,
                                        padding=self.kernel_size // 2))
        return nn.Sequential(*modules)

    def _series_input_size(self, input_size) -> tuple[int, int]:
        """(H, W) of the series' input for layer inputs of `input_size`: halved by the stride-2
        unshuffle."""
        name = type(self).__name__
        _check_conv_spectrum_input(name, self.weight, input_size, kernel_must_fit=False)
        height, width = input_size_pair(input_size)
        if self.stride == 2 and (height % 2 or width % 2):
            raise ValueError(f"{name}: with stride=2 input_size must be even (pixel_unshuffle "
                             f"by 2); got {input_size!r}")
        return height // self.stride, width // self.stride

    def _geometry_repr(self) -> list[str]:
        return []

    def extra_repr(self) -> str:
        in_name, out_name = self._size_names
        fields = [f"{in_name}={self.in_channels}", f"{out_name}={self.out_channels}",
                  *self._geometry_repr(), f"channels={self.channels}",
                  f"bias={self.bias is not None}", f"train_terms={self.train_terms}",
                  f"eval_terms={self.eval_terms}", f"correction={self.correction}",
                  f"grad_mode={self.grad_mode!r}"]
        return ", ".join(fields)


class SOCConv2d(_SkewOrthogonal):
    """Skew-orthogonal convolution (Singla & Feizi, ICML 2021): an (almost) orthogonal conv layer.

    Args:
        in_channels, out_channels: channel counts of the input and output.
        kernel_size: odd filter size k (zero "same" padding k // 2), an int or a pair (k, k).
        stride: 1, or 2 for the invertible downsampling pixel_unshuffle(x, 2) before the series
            (H and W must then be even, else a ValueError; the output is H/2 x W/2); an int or
            a pair.
        bias: add a learnable bias after slicing.
        train_terms, eval_terms: series terms (counting the identity) in training and in eval.
        correction: the factor on S_n (the seed's `correction`/`multiplier`).
        grad_mode: "exact" or "fast" weight gradient of `lipkernels.soc_exp`.
        padding, dilation, groups, padding_mode: nn.Conv2d's arguments, keyword-only, so that
            the layer replaces an nn.Conv2d of the same shape: padding "same" (or k // 2),
            dilation 1, groups 1, padding_mode "zeros"; other values raise a ValueError that
            says why.
        device, dtype: factory arguments for the parameters and buffers.

    Input (B, in_channels, H, W); output (B, out_channels, H / stride, W / stride). The filter is
    square, C x C x k x k with C = max(out_channels, in_channels * stride^2). In training each
    forward runs one power iteration and updates the vectors `u1`..`u4`; eval runs none and,
    inside `lipkernels.nn.cached()` when no weight gradient is needed, computes S_n once (outside
    it every call recomputes S_n, so it is never stale). Under torch.autocast the series runs in
    the autocast dtype (output in that dtype) and the spectral normalisation stays in the
    parameters' dtype.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 bias: bool = True, train_terms: int = 6, eval_terms: int = 15,
                 correction: float = 1.0, grad_mode: str = "exact", *, padding="same",
                 dilation=1, groups: int = 1, padding_mode: str = "zeros", device=None,
                 dtype=None):
        kernel_size, stride = check_conv_arguments(
            type(self).__name__, kernel_size, stride, padding, dilation, groups, bias,
            padding_mode, ("zeros", "the kernels compute the series of the zero-padded "
                                    "convolution"))
        super().__init__(in_channels, out_channels, kernel_size, stride, bias, train_terms,
                         eval_terms, correction, grad_mode, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x, 4, "(B, C, H, W)")
        return self._series(x)

    def _geometry_repr(self) -> list[str]:
        return [f"kernel_size={self.kernel_size}", f"stride={self.stride}"]


class SOCLinear(_SkewOrthogonal):
    """The orthogonal linear layer of SOC: x -> (exp-series of a skew C x C matrix) applied to x
    zero-padded to C = max(in_features, out_features), first out_features entries, plus bias.

    It is the 1 x 1, stride-1 SOCConv2d on (B, in_features, 1, 1): the truncated series of the
    matrix exponential of S_n = correction * (W - W^T) / (2 sigma), sigma the power-iteration
    estimate of ||(W - W^T) / 2||_2. Arguments as in SOCConv2d. Input (B, in_features), output
    (B, out_features).
    """

    _size_names = ("in_features", "out_features")

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 train_terms: int = 6, eval_terms: int = 15, correction: float = 1.0,
                 grad_mode: str = "exact", *, device=None, dtype=None):
        super().__init__(in_features, out_features, 1, 1, bias, train_terms, eval_terms,
                         correction, grad_mode, device, dtype)

    @property
    def in_features(self) -> int:
        return self.in_channels

    @property
    def out_features(self) -> int:
        return self.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x, 2, "(B, in_features)")
        return self._series(x[:, :, None, None]).flatten(1)

    def lipschitz_bound(self, *, tolerance: float = BOUND_TOLERANCE) -> float:
        """A provable upper bound on the layer's Lipschitz constant: that of SOCConv2d (there for
        the 1 x 1 filter, whose frequency response is S_n itself at every frequency, so it is
        valid for every input and ||A|| is certified by one Cholesky factorisation)."""
        return super().lipschitz_bound(tolerance=tolerance)
