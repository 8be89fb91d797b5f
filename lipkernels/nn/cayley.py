"""Cayley orthogonal layers: CayleyConv2d and CayleyLinear.

Trockman & Kolter, "Orthogonalizing Convolutional Layers with the Cayley Transform", ICLR 2021
(`CayleyConv`, `CayleyLinear`, `StridedConv` of locuslab/orthogonal-convolutions). Both layers
orthogonalise a scaled weight W_s = alpha * W / ||W||_F with the Cayley transform: alpha is a
learnable scalar initialised to ||W||_F (so W_s = W at initialisation), which lets training set
the scale of A = W_s - W_s^H freely while W itself only sets directions.

Scaling choice. The seed code divides the filter's FFT by its Frobenius norm over the rfft2
frequencies and initialises alpha lazily at the first forward; here the pixel-domain filter is
divided by its own Frobenius norm and alpha is initialised at construction. The FFT is linear, so
both give the same map at initialisation and the same family of maps; only alpha's scale (and
so its learning rate) differs, by a constant factor.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import functional
from .._checks import check_conv_arguments, check_count, check_layer_input
from .._conventions import working_dtype
from .._spectral import frequency_conv2d, frequency_responses
from ._distributed import full_parameters
from ._eval_cache import EvalCached
from ._unshuffle import filter_input
from ._vanilla import plain_module


class _ScaledCayley(EvalCached):
    """The parameters shared by the Cayley layers: `weight`, `alpha` (shape (1,)) and `bias`.

    alpha has one element but one dim, not zero: FSDP2's fully_shard refuses scalar parameters.
    A 0-d alpha of an older state_dict is accepted by load_state_dict.
    """

    def _init_parameters(self, weight_shape, bias_size, factory):
        self.weight = nn.Parameter(torch.empty(weight_shape, **factory))
        self.alpha = nn.Parameter(torch.empty(1, **factory))
        if bias_size:
            self.bias = nn.Parameter(torch.empty(bias_size, **factory))
        else:
            self.register_parameter("bias", None)

    def _reset_alpha(self):
        with torch.no_grad():
            self.alpha.copy_(torch.linalg.vector_norm(self.weight))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        alpha = state_dict.get(prefix + "alpha")
        if alpha is not None and alpha.dim() == 0:
            state_dict[prefix + "alpha"] = alpha.reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def scaled_weight(self) -> torch.Tensor:
        """alpha * W / ||W||_F, differentiable w.r.t. both.

        An all-zero W has no direction: it gives the zero filter (A = 0, so Q is the identity, or
        its first columns or rows), the limit along every ray t W as alpha t -> 0 and what SOC's
        zero skew filter gives; its gradient w.r.t. W is then alpha times the output gradient.
        NaN or inf in W or alpha gives NaN.
        """
        norm = torch.linalg.vector_norm(self.weight)
        scale = self.alpha / torch.where(norm == 0, torch.ones_like(norm), norm)
        return scale * self.weight

    def _derived_weight(self, extra_key, compute):
        """compute(), reused in eval inside `lipkernels.nn.cached()` while weight and alpha stay
        the same."""
        return self._derived(self.weight, (self.weight, self.alpha), extra_key, compute)

    def _add_bias(self, y: torch.Tensor, shape) -> torch.Tensor:
        if self.bias is None:
            return y
        return y + self.bias.to(y.dtype).view(shape)

    @torch.no_grad()
    def lipschitz_bound(self) -> float:
        """A provable upper bound (a Python float) on the layer's Lipschitz constant (l2 norms):
        1.0, or nan when the scaled weight has a NaN or inf entry.

        The Cayley transform of any finite matrix has orthonormal columns (or rows, for a wide
        one): I + A has Hermitian part V^H V + I >= I, so it is invertible and
        Q^H Q = I (docs/design.md §3.3). CayleyConv2d applies such a Q_f at every frequency of the
        unitary DFT (and pixel_unshuffle is a permutation), so every layer here has norm 1 at
        every input size, whatever the weight and alpha (a zero weight gives the identity), and
        the bias does not change differences. Like SOC's bound it is exact arithmetic on the
        stored parameters: the computed map is orthogonal up to rounding, measured as the
        largest singular value of the explicit Jacobian of random layers (up to 512 features,
        alpha from 0.1 to 3 times its initial value) at most 1 + 1.1e-6 in float32 and
        1 + 3e-15 in float64.
        """
        with full_parameters(self):
            return 1.0 if bool(torch.isfinite(self.scaled_weight()).all()) else math.nan


class CayleyConv2d(_ScaledCayley):
    """Cayley orthogonal convolution (circular padding): `lipkernels.cayley_conv2d` of a scaled
    filter, plus a bias.

    Args:
        in_channels, out_channels: channel counts (they may differ: C_out > C_in gives an isometry,
            C_out < C_in orthonormal rows; both 1-Lipschitz).
        kernel_size: filter size k (odd or even; torch's padding="same" offsets for even k), an
            int or a pair (k, k).
        stride: 1, or 2 for pixel_unshuffle(x, 2) first (H, W even, else a ValueError): the
            filter then acts on 4 in_channels channels with size max(1, k // 2), as the seed's
            StridedConv (a 3x3 stride-2 layer is a 1x1 conv over the 2x2 blocks); an int or a
            pair.
        bias: add a learnable bias.
        padding, dilation, groups, padding_mode: nn.Conv2d's arguments, keyword-only, so that
            the layer replaces an nn.Conv2d(..., padding_mode="circular") of the same shape:
            padding "same" (or k // 2 for an odd k), dilation 1, groups 1, padding_mode
            "circular"; other values raise a ValueError that says why.
        device, dtype: factory arguments.

    Input (B, in_channels, H, W), output (B, out_channels, H / stride, W / stride); the filter
    must fit the image it sees. Initialisation as nn.Conv2d (Kaiming-uniform weight, bias
    U(+-1/sqrt(fan_in))), alpha = ||weight||_F. In eval inside `lipkernels.nn.cached()`, when no
    weight gradient is needed, the per-frequency transforms Q_f for the last image size are
    computed once and each call is one rfft2, one batched product and one irfft2; outside it
    every call recomputes them (never stale, see `lipkernels.nn.cached`). Under torch.autocast
    the FFTs and transforms run in float32 (complex64) and the output has the input's dtype.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 bias: bool = True, *, padding="same", dilation=1, groups: int = 1,
                 padding_mode: str = "circular", device=None, dtype=None):
        super().__init__()
        name = type(self).__name__
        check_count(name, "in_channels", in_channels)
        check_count(name, "out_channels", out_channels)
        kernel_size, stride = check_conv_arguments(
            name, kernel_size, stride, padding, dilation, groups, bias, padding_mode,
            ("circular", "the Cayley transform is taken at each frequency of a circular "
                         "convolution"))
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = kernel_size, stride
        self.filter_size = kernel_size if stride == 1 else max(1, kernel_size // 2)
        self.filter_channels = in_channels * stride * stride
        shape = (out_channels, self.filter_channels, self.filter_size, self.filter_size)
        self._init_parameters(shape, out_channels if bias else 0,
                              {"device": device, "dtype": dtype})
        self.reset_parameters()

    def reset_parameters(self):
        """nn.Conv2d's initialisation of weight and bias; alpha = ||weight||_F."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.filter_channels * self.filter_size ** 2)
            nn.init.uniform_(self.bias, -bound, bound)
        self._reset_alpha()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = filter_input(type(self).__name__, x, self.in_channels, self.weight, self.stride,
                         self.filter_size)
        if self._uses_cache(self.weight):
            y = frequency_conv2d(x, self._transforms(x))
        else:
            y = functional.cayley_conv2d(x, self.scaled_weight())
        return self._add_bias(y, (1, -1, 1, 1))

    def _transforms(self, x: torch.Tensor) -> torch.Tensor:
        """The cached Q_f = cayley(R_f) (F, C_out, C_in) for x's image size and precision."""
        image_size, dtype = tuple(x.shape[-2:]), working_dtype(x.dtype)
        return self._derived_weight((image_size, dtype), lambda: functional.cayley(
            frequency_responses(self.scaled_weight(), image_size, dtype)))

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, "
                f"filter=({self.filter_channels}, {self.filter_size}, {self.filter_size}), "
                f"bias={self.bias is not None}")


class CayleyLinear(_ScaledCayley):
    """Cayley orthogonal linear layer: y = Q x + bias with Q = cayley(alpha W / ||W||_F)
    (out_features x in_features: orthonormal columns when out >= in, rows otherwise).

    Initialisation as the seed code: W and bias U(+-1/sqrt(in_features)), alpha = ||W||_F. Q is
    reused in eval inside `lipkernels.nn.cached()` (see CayleyConv2d). Input (B, in_features).
    float16/bfloat16 parameters are transformed in float32 and Q is returned in their dtype
    (`cayley` takes float32/float64 only), as torch's layers keep half parameters.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, device=None,
                 dtype=None):
        super().__init__()
        name = type(self).__name__
        check_count(name, "in_features", in_features)
        check_count(name, "out_features", out_features)
        self.in_features, self.out_features = in_features, out_features
        self._init_parameters((out_features, in_features), out_features if bias else 0,
                              {"device": device, "dtype": dtype})
        self.reset_parameters()

    def reset_parameters(self):
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)
        self._reset_alpha()

    def orthogonal_weight(self) -> torch.Tensor:
        """Q (out_features, in_features) in the parameters' dtype; reused inside
        `lipkernels.nn.cached()`."""
        def compute():
            weight = self.scaled_weight()
            return functional.cayley(weight.to(working_dtype(weight.dtype))).to(weight.dtype)

        return self._derived_weight(None, compute)

    @torch.no_grad()
    def vanilla_export(self) -> nn.Linear:
        """The layer as a plain nn.Linear holding Q (deel-torchlip's convention, which its
        `vanilla_model` calls): the same outputs, loading with torch only."""
        with full_parameters(self):
            weight = self.orthogonal_weight()
        bias = None if self.bias is None else self.bias.detach()
        return plain_module(nn.Linear, weight, bias, self.in_features, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_layer_input(type(self).__name__, x, 2, "(B, in_features)", "in_features",
                          self.in_features, self.weight)
        return F.linear(x, self.orthogonal_weight(), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")
