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

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import functional
from .._checks import check_count, check_even_image, check_layer_input, check_stride
from ..reference.conv_spectral_bounds import bound_matrices, bound_matrix_shapes, initial_vectors
from ..reference.soc_exp import GRAD_MODES
from ._eval_cache import EvalCached

# Power iterations run on the fresh filter at construction (and by `update_vectors` by default),
# as in the seed code (`init_iters=50`).
INIT_ITERS = 50

# Relative slack on the float64 spectral norms and tail sum in `lipschitz_bound`: a backward-stable
# SVD of an n x m matrix is exact for a perturbation of relative size ~ max(n, m) * 1e-16, well
# below this even for the 2048-channel LipConvNet filters.
_ROUNDING_MARGIN = 1e-10

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


def _autocast_off(device_type: str):
    """Disable autocast for the spectral normalisation: its power iteration and division stay in
    the parameters' precision (float32) even when the series runs in bfloat16 or float16."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


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
        check_count(name, "train_terms", train_terms)
        check_count(name, "eval_terms", eval_terms)
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
        with _autocast_off(self.weight.device.type):
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
        """S_n = correction * skew(W) / sigma, differentiable w.r.t. W through skew(W) and sigma.

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
            sigma = torch.stack([torch.linalg.vector_norm(matrix @ u) for matrix, u
                                 in zip(bound_matrices(S), self._vectors())]).min()
        return (self.correction / sigma) * S

    def _forward_filter(self) -> torch.Tensor:
        """S_n for this forward: stores the training iteration; cached in eval when possible."""
        if self.training:
            return self._normalized_filter(store_vectors=True)
        if not self._cacheable(self.weight):
            return self._normalized_filter(store_vectors=False)
        return self._cached((self.weight, *self._vectors()), None,
                            lambda: self._normalized_filter(store_vectors=False))

    def _check_input(self, x, rank: int, layout: str):
        in_name = self._size_names[0]
        check_layer_input(type(self).__name__, x, rank, layout, in_name, self.in_channels,
                          self.weight)

    def _series(self, x: torch.Tensor) -> torch.Tensor:
        """The layer on a validated (B, in_channels, H, W) input."""
        with _autocast_off(self.weight.device.type):
            S = self._forward_filter()
        if self.stride == 2:
            x = F.pixel_unshuffle(x, 2)
        if x.shape[1] < self.channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.channels - x.shape[1]))
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            # The series is the costly part: it runs in the autocast dtype, like a conv would.
            dtype = torch.get_autocast_dtype(device_type)
            x, S = x.to(dtype), S.to(dtype)
        y = functional.soc_exp(x, S, self.terms, self.grad_mode)[:, :self.out_channels]
        if self.bias is not None:
            y = y + self.bias.to(y.dtype).view(1, -1, 1, 1)
        return y

    @torch.no_grad()
    def lipschitz_bound(self) -> float:
        """A provable upper bound (a Python float) on the layer's Lipschitz constant (l2 norms).

        It holds for the map the next forward call computes in the current mode, with
        terms = `train_terms` in training (S_n after the one power-iteration step that call will
        take; the stored vectors are left unchanged) and `eval_terms` in eval.

        The layer is slice o T(A) o pad (o unshuffle) plus a bias: pad and pixel_unshuffle are
        isometries, keeping the first channels has norm <= 1 and the bias does not change
        differences, so the constant is at most ||T(A)||, with A the skew-symmetric Jacobian of
        conv(., S_n) and T(A) = sum_{i<terms} A^i / i! the truncated series. exp(A) is orthogonal
        and T(A) = exp(A) - sum_{i>=terms} A^i / i!, hence

            ||T(A)|| <= 1 + sum_{i>=terms} a^i / i!     for any a >= ||A||.

        a = min_q k * sigma_max(M_q(S_n)): the Fantastic Four bound, valid at every input size,
        with the four spectral norms computed exactly (SVD, float64), never from the power
        iteration, whose estimates are lower bounds of sigma_max. The tail is summed upward
        (`exp_series_tail`). a and the tail are enlarged by a relative 1e-10 and the result
        rounded up, to cover float64 rounding; the bound is for exact arithmetic on the stored
        parameters, so rounding inside the forward pass itself (notably under autocast) is not
        included.
        """
        with _autocast_off(self.weight.device.type):
            S = self._normalized_filter(store_vectors=False).double()
        a = self.kernel_size * min(torch.linalg.matrix_norm(m, ord=2).item()
                                   for m in bound_matrices(S))
        tail = exp_series_tail(a * (1 + _ROUNDING_MARGIN), self.terms) * (1 + _ROUNDING_MARGIN)
        return math.nextafter(1.0 + tail, math.inf)

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
        kernel_size: odd filter size k (zero "same" padding k // 2).
        stride: 1, or 2 for the invertible downsampling pixel_unshuffle(x, 2) before the series
            (H and W must then be even; the output is H/2 x W/2).
        bias: add a learnable bias after slicing.
        train_terms, eval_terms: series terms (counting the identity) in training and in eval.
        correction: the factor on S_n (the seed's `correction`/`multiplier`).
        grad_mode: "exact" or "fast" weight gradient of `lipkernels.soc_exp`.
        device, dtype: factory arguments for the parameters and buffers.

    Input (B, in_channels, H, W); output (B, out_channels, H / stride, W / stride). The filter is
    square, C x C x k x k with C = max(out_channels, in_channels * stride^2). In training each
    forward runs one power iteration and updates the vectors `u1`..`u4`; eval runs none and, when
    no weight gradient is needed (and not under torch.compile), reuses S_n until the weight or
    the vectors change. Under torch.autocast the series runs in the autocast dtype (output in
    that dtype) and the spectral normalisation stays in the parameters' dtype.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 bias: bool = True, train_terms: int = 6, eval_terms: int = 15,
                 correction: float = 1.0, grad_mode: str = "exact", *, device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, bias, train_terms,
                         eval_terms, correction, grad_mode, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x, 4, "(B, C, H, W)")
        if self.stride == 2:
            check_even_image("SOCConv2d", x)
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
