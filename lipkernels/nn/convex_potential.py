"""The convex potential residual layers: CPLConv2d, CPLLinear, SLLConv2d and SLLLinear.

Each computes one gradient step on a convex potential (`lipkernels.convex_potential`),

    z = x - W^T (scale * relu(W x + b)),

whose Jacobian I - W^T diag(scale [W x + b > 0]) W has its eigenvalues in [1 - max(scale)
||W||^2, 1], so the layer is 1-Lipschitz as soon as scale <= 2 / ||W||^2 (W: a "same"
zero-padded convolution, stride 1, or a matrix; C channels in and out, C_inner inside).

- CPL (Meunier, Delattre, Araujo & Allauzen, "A Dynamical System Perspective for Lipschitz
  Neural Networks", ICML 2022): scale h = 2 / (sigma^2 + eps), sigma the power-iteration
  estimate of ||W|| on the operator itself from a persistent input-shaped vector
  (`lipkernels.conv_power_iteration`): one iteration per training call, the new vector stored;
  in eval `EVAL_ITERS` iterations from the stored vector (which eval leaves unchanged, so an eval
  forward is a function of the state dict), reused inside `lipkernels.nn.cached()` as the seed
  caches its eval sigma, never stale. The eps guard: sigma >= 0 by construction (sigma =
  ||W^T v||), so the denominator is at least eps > 0 and h is finite, at most 2 / eps; and sigma's
  gradient is v u^T with unit vectors held constant, where the seed differentiates through
  v = normalize(W u), whose backward divides by ||W u|| and gives NaN for a zero W (a zero
  weight decays or is initialised there) and explodes for a nearly zero one. eps = 1e-4 as the
  seed.
- SLL (Araujo, Havens, Delattre, Allauzen & Hu, "A Unified Algebraic Perspective on Lipschitz
  Neural Networks", ICLR 2023): scale 2 / (T_c + eps) per inner channel, T the AOL-style bound
  T_c = sum_j |W W^T|_cj q_j / q_c >= the Gram matrix W W^T (`lipkernels.aol_rescaling` of W^T,
  learnable q = exp(log_q), initialised to 1): 1-Lipschitz for any weight, no power iteration.

`lipschitz_bound()` certifies each layer's eval map from the values it uses.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import functional
from .._checks import autocast_off, check_count, check_layer_input, check_nonnegative
from .._conventions import input_size_pair
from ..bounds import rounded_up_sum
from ..reference.aol_rescaling import schur_sums
from ._eval_cache import EvalCached
from ._vanilla import in_eval

# Power iterations of the CPL scale in eval (the seed's EVAL_MAX_ITER) and per training call
# (MAX_ITER).
EVAL_ITERS = 100
TRAIN_ITERS = 1

# The seed's eps of h = 2 / (sigma^2 + eps).
CPL_EPS = 1e-4

# Inputs of at most this many entries (C n1 n2) get the exact norm of the explicit operator, a
# float64 SVD of at most 2048 columns (well under a second).
_EXPLICIT_OPERATOR_SIZE = 2048

# Relative margin on a float64 SVD's largest singular value: its backward error is a small
# multiple of n 2^-53 ||W||, far below this for any layer size.
_FLOAT64_SVD_MARGIN = 1e-10


def _step_bound(largest_scale: float, squared_norm: float) -> float:
    """A bound on ||I - W^T diag(s m) W|| over masks m in [0, 1]: its eigenvalues lie in
    [1 - max(s) ||W||^2, 1], so max(1, max(s) ||W||^2 - 1), rounded up; nan for NaN."""
    if math.isnan(largest_scale) or math.isnan(squared_norm):
        return math.nan
    return max(1.0, rounded_up_sum([largest_scale * squared_norm, -1.0]))


def _explicit_operator(weight: torch.Tensor, input_size) -> torch.Tensor:
    """The matrix (C_inner n1 n2, C n1 n2) of the zero-padded "same" convolution on n1 x n2
    images: its float64 SVD is the exact norm at that size (and, a compression, every smaller
    one), where the torus's circular norm overshoots most, on small images."""
    image = (weight.shape[1], *input_size_pair(input_size))
    basis = torch.eye(math.prod(image), dtype=weight.dtype, device=weight.device).view(-1, *image)
    padding = tuple(k // 2 for k in weight.shape[2:])
    return torch.nn.functional.conv2d(basis, weight, padding=padding).flatten(1).T


def _certified_torus(weight: torch.Tensor, input_size) -> tuple[int, int]:
    """The torus (n_i + p_i, p_i = k_i // 2) whose circular convolution with `weight` the
    zero-padded "same" convolution on images of at most `input_size` is a compression of
    (`lipkernels.bounds`, fact 2): its circular norm bounds theirs. At least k_i, so that the
    filter fits (a larger torus holds the smaller images too)."""
    return tuple(max(n + k // 2, k) for n, k in zip(input_size_pair(input_size), weight.shape[2:]))


class _ConvexPotentialLayer(EvalCached):
    """The parameters and the forward of the four layers: weight (C_inner, C[, k, k]) and bias
    (C_inner,), initialised as the seeds do (`_reset_weight`); subclasses give the scale."""

    def __init__(self, features: int, inner: int, kernel_size, bias: bool, factory: dict):
        super().__init__()
        name = type(self).__name__
        self._features = check_count(name, self._feature_name, features)
        self._inner = check_count(name, self._inner_name, inner)
        shape = (inner, features) if kernel_size is None else (
            inner, features, kernel_size, kernel_size)
        self.weight = nn.Parameter(torch.empty(shape, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(inner, **factory))
        else:
            self.register_parameter("bias", None)

    def _reset_bias(self):
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def _check_input(self, x):
        if self.weight.dim() == 4:
            check_layer_input(type(self).__name__, x, 4, "(B, C, H, W)", self._feature_name,
                              self._features, self.weight)
        else:
            check_layer_input(type(self).__name__, x, 2, "(B, features)", self._feature_name,
                              self._features, self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        with autocast_off(x.device.type):
            scale = self.scale()
        # Under autocast the step runs in the input's precision, as autocast's own convolutions.
        cast = (lambda t: t) if x.dtype == self.weight.dtype else (lambda t: t.to(x.dtype))
        bias = None if self.bias is None else cast(self.bias)
        return functional.convex_potential(x, cast(self.weight), bias, cast(scale))


class _CPL(_ConvexPotentialLayer):
    """CPL's scale h = 2 / (sigma^2 + eps) from the persistent vector `u` (the module
    docstring)."""

    def __init__(self, features, inner, kernel_size, bias, eps, vector_shape, factory):
        super().__init__(features, inner, kernel_size, bias, factory)
        self.eps = check_nonnegative(type(self).__name__, "eps", eps)
        if not self.eps > 0:
            raise ValueError(f"{type(self).__name__}: eps must be > 0 (it keeps h = 2 / (sigma^2"
                             f" + eps) finite for a zero weight); got {eps}")
        self.register_buffer("u", torch.empty(vector_shape, **factory))
        self.reset_parameters()

    def reset_parameters(self):
        """The seed's weight (kaiming_uniform, a = sqrt 5, as nn.Conv2d) and bias, a fresh unit
        u."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self._reset_bias()
        with torch.no_grad():
            u = torch.randn(self.u.shape, device=self.u.device, dtype=torch.float32)
            self.u.copy_(u / u.norm())

    def _sigma(self, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.weight.dim() == 4:
            return functional.conv_power_iteration(self.weight, self.u, iters)
        sigma, u, _ = functional.power_iteration(self.weight, self.u[0], iters)
        return sigma, u[None]

    def scale(self) -> torch.Tensor:
        """h (0-dim, the weight's dtype) as this mode's forward uses it: in training after one
        power iteration, whose vector this stores; in eval after EVAL_ITERS from the stored one
        (reused inside `lipkernels.nn.cached()`)."""
        if self.training:
            sigma, u = self._sigma(TRAIN_ITERS)
            with torch.no_grad():
                self.u.copy_(u)
        else:
            sigma = self._derived(self.weight, (self.weight, self.u), None,
                                  lambda: self._sigma(EVAL_ITERS)[0])
        return 2 / (sigma * sigma + self.eps)

    def _certified_squared_norm(self, input_size) -> float:
        weight = self.weight.detach().double()
        if not bool(torch.isfinite(weight).all()):  # svd refuses them
            return math.nan
        if weight.dim() == 2:
            norm = torch.linalg.matrix_norm(weight, ord=2)
        elif weight.shape[1] * math.prod(input_size_pair(input_size)) <= _EXPLICIT_OPERATOR_SIZE:
            norm = torch.linalg.matrix_norm(_explicit_operator(weight, input_size), ord=2)
        else:
            norm = functional.conv_spectral_norm(weight, _certified_torus(weight, input_size),
                                                 padding="circular")
        return (float(norm) * (1 + _FLOAT64_SVD_MARGIN)) ** 2

    @torch.no_grad()
    def _bound(self, input_size) -> float:
        h = in_eval(self, lambda: float(self.scale()))
        return _step_bound(h, self._certified_squared_norm(input_size))


class CPLConv2d(_CPL):
    """Convex potential layer on images: z = x - h conv_T(relu(conv(x, W) + b), W), W
    (inner_channels, channels, k, k), "same" zero padding (any odd k; the seed's code fixes
    padding 1, k = 3), h = 2 / (sigma^2 + eps) (module docstring), the persistent vector `u`
    of shape (1, channels, *input_size): the image size sigma is estimated at (the seed's 32 x 32
    CIFAR inputs by default). Input and output (B, channels, H, W)."""

    _feature_name, _inner_name = "channels", "inner_channels"

    def __init__(self, channels: int, inner_channels: int, kernel_size: int = 3,
                 bias: bool = True, eps: float = CPL_EPS, input_size=32, *, device=None,
                 dtype=None):
        kernel_size = check_count(type(self).__name__, "kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"{type(self).__name__}: kernel_size must be odd (the step maps an "
                             f"image to its own size with padding k // 2); got {kernel_size}")
        self.input_size = input_size_pair(input_size)
        super().__init__(channels, inner_channels, kernel_size, bias, eps,
                         (1, channels, *self.input_size), {"device": device, "dtype": dtype})
        self.channels, self.inner_channels, self.kernel_size = channels, inner_channels, kernel_size

    @torch.no_grad()
    def lipschitz_bound(self, input_size=None) -> float:
        """A provable upper bound (a Python float) on the eval layer's Lipschitz constant (l2) on
        images of at most `input_size` (default: the layer's input_size, where u lives):
        max(1, h S^2 - 1) for the h the eval forward uses and S >= ||W|| certified at that size:
        the float64 SVD of the explicit operator for inputs of at most 2048 entries (exact),
        else the float64 circular norm on the n + k // 2 torus (`lipkernels.conv_spectral_norm`).
        At the vector's size a converged sigma is the zero-padded norm itself and the layer is
        1-Lipschitz, but the torus's norm can exceed it by a fraction of a percent (boundary
        effects), so the certified bound is that much above 1 on larger images;
        nan for a non-finite weight. Exact arithmetic on the values used, as the other layers'
        bounds: the forward's own rounding is not included."""
        return self._bound(self.input_size if input_size is None else input_size)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, inner_channels={self.inner_channels}, "
                f"kernel_size={self.kernel_size}, bias={self.bias is not None}, eps={self.eps}, "
                f"input_size={self.input_size}")


class CPLLinear(_CPL):
    """Convex potential layer on vectors: z = x - h W^T relu(W x + b), W (inner_features,
    features), h = 2 / (sigma^2 + eps) from the persistent vector `u` (1, features). Input and
    output (B, features)."""

    _feature_name, _inner_name = "features", "inner_features"

    def __init__(self, features: int, inner_features: int, bias: bool = True,
                 eps: float = CPL_EPS, *, device=None, dtype=None):
        super().__init__(features, inner_features, None, bias, eps, (1, features),
                         {"device": device, "dtype": dtype})
        self.features, self.inner_features = features, inner_features

    @torch.no_grad()
    def lipschitz_bound(self) -> float:
        """max(1, h S^2 - 1) for the eval h and S >= ||W||_2 (float64 SVD with a margin): a
        provable bound (Python float) on the eval layer's Lipschitz constant; nan for a
        non-finite weight."""
        return self._bound(None)

    def extra_repr(self) -> str:
        return (f"features={self.features}, inner_features={self.inner_features}, "
                f"bias={self.bias is not None}, eps={self.eps}")


class _SLL(_ConvexPotentialLayer):
    """SLL's per-channel scale 2 / (T + eps) from `lipkernels.aol_rescaling` (module
    docstring)."""

    def __init__(self, features, inner, kernel_size, bias, factory):
        super().__init__(features, inner, kernel_size, bias, factory)
        self.log_q = nn.Parameter(torch.zeros(inner, **factory))
        self.reset_parameters()

    def reset_parameters(self):
        """The seed's weight (xavier_normal) and bias; q = 1."""
        nn.init.xavier_normal_(self.weight)
        self._reset_bias()
        nn.init.zeros_(self.log_q)

    def _compute_scale(self) -> torch.Tensor:
        rescaling = functional.aol_rescaling(self.weight.transpose(0, 1), self.log_q)
        return 2 * rescaling * rescaling

    def scale(self) -> torch.Tensor:
        """2 d^2 (inner,), d = aol_rescaling(W^T, log_q): 2 / (T + eps) (reused in eval inside
        `lipkernels.nn.cached()`)."""
        return self._derived(self.weight, (self.weight, self.log_q), None, self._compute_scale)

    @torch.no_grad()
    def lipschitz_bound(self) -> float:
        """max(1, 2 s - 1), s >= ||diag(t)^(1/2) W||^2 the Schur bound of V = diag(t)^(1/2) W
        with the weights q / t^(1/2), recomputed in float64 from the scale t = d^2 the layer uses
        (max_c t_c T_c for the exact T): 1 whenever s <= 1, which T + eps > T gives up to the
        rounding of d (a Python float; nan for a non-finite weight). Valid for every input
        size."""
        root = (self.scale() / 2).double().sqrt()
        rows = self.weight.detach().double() * root.view(-1, *([1] * (self.weight.dim() - 1)))
        sums = schur_sums(rows.transpose(0, 1), self.log_q.detach().double() - root.log())
        return _step_bound(2.0, float(sums.max()))


class SLLConv2d(_SLL):
    """SDP-based Lipschitz layer on images: z = x - 2 conv_T(t * relu(conv(x, W) + b), W), W
    (inner_channels, channels, k, k) (odd k, "same" zero padding), t = 1 / (T + eps) (module
    docstring). Input and output (B, channels, H, W)."""

    _feature_name, _inner_name = "channels", "inner_channels"

    def __init__(self, channels: int, inner_channels: int, kernel_size: int = 3,
                 bias: bool = True, *, device=None, dtype=None):
        kernel_size = check_count(type(self).__name__, "kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"{type(self).__name__}: kernel_size must be odd (the step maps an "
                             f"image to its own size with padding k // 2); got {kernel_size}")
        super().__init__(channels, inner_channels, kernel_size, bias,
                         {"device": device, "dtype": dtype})
        self.channels, self.inner_channels, self.kernel_size = channels, inner_channels, kernel_size

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, inner_channels={self.inner_channels}, "
                f"kernel_size={self.kernel_size}, bias={self.bias is not None}")


class SLLLinear(_SLL):
    """SDP-based Lipschitz layer on vectors: z = x - 2 W^T (t * relu(W x + b)), W
    (inner_features, features), t = 1 / (T + eps). Input and output (B, features)."""

    _feature_name, _inner_name = "features", "inner_features"

    def __init__(self, features: int, inner_features: int, bias: bool = True, *, device=None,
                 dtype=None):
        super().__init__(features, inner_features, None, bias, {"device": device, "dtype": dtype})
        self.features, self.inner_features = features, inner_features

    def extra_repr(self) -> str:
        return (f"features={self.features}, inner_features={self.inner_features}, "
                f"bias={self.bias is not None}")
