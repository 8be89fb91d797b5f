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
from .._checks import check_count, check_even_image, check_layer_input, check_stride
from ..reference.cayley_conv2d import frequency_conv2d, frequency_responses, working_dtype
from ._eval_cache import EvalCached


class _ScaledCayley(EvalCached):
    """The parameters shared by the Cayley layers: `weight`, `alpha` (0-d) and `bias`."""

    def _init_parameters(self, weight_shape, bias_size, factory):
        self.weight = nn.Parameter(torch.empty(weight_shape, **factory))
        self.alpha = nn.Parameter(torch.empty((), **factory))
        if bias_size:
            self.bias = nn.Parameter(torch.empty(bias_size, **factory))
        else:
            self.register_parameter("bias", None)

    def _reset_alpha(self):
        with torch.no_grad():
            self.alpha.copy_(torch.linalg.vector_norm(self.weight))

    def scaled_weight(self) -> torch.Tensor:
        """alpha * W / ||W||_F, differentiable w.r.t. both (an all-zero W gives NaN, never a
        silently wrong map)."""
        return (self.alpha / torch.linalg.vector_norm(self.weight)) * self.weight

    def _derived(self, extra_key, compute):
        """compute() in training or when gradients are needed; cached in eval otherwise."""
        if self.training or not self._cacheable(self.weight):
            return compute()
        return self._cached((self.weight, self.alpha), extra_key, compute)

    def _add_bias(self, y: torch.Tensor, shape) -> torch.Tensor:
        if self.bias is None:
            return y
        return y + self.bias.to(y.dtype).view(shape)


class CayleyConv2d(_ScaledCayley):
    """Cayley orthogonal convolution (circular padding): `lipkernels.cayley_conv2d` of a scaled
    filter, plus a bias.

    Args:
        in_channels, out_channels: channel counts (they may differ: C_out > C_in gives an isometry,
            C_out < C_in orthonormal rows; both 1-Lipschitz).
        kernel_size: filter size k (odd or even; torch's padding="same" offsets for even k).
        stride: 1, or 2 for pixel_unshuffle(x, 2) first (H, W even): the filter then acts on
            4 in_channels channels with size max(1, k // 2), as the seed's StridedConv (a 3x3
            stride-2 layer is a 1x1 conv over the 2x2 blocks).
        bias: add a learnable bias.
        device, dtype: factory arguments.

    Input (B, in_channels, H, W), output (B, out_channels, H / stride, W / stride); the filter
    must fit the image it sees. Initialisation as nn.Conv2d (Kaiming-uniform weight, bias
    U(+-1/sqrt(fan_in))), alpha = ||weight||_F. In eval, when no weight gradient is needed (and
    not under torch.compile), the per-frequency transforms Q_f for the last image size are
    cached and each call is one rfft2, one batched product and one irfft2, until the weight or
    alpha change. Under torch.autocast the FFTs and transforms run in float32 (complex64) and the
    output has the input's dtype.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 bias: bool = True, *, device=None, dtype=None):
        super().__init__()
        name = type(self).__name__
        check_count(name, "in_channels", in_channels)
        check_count(name, "out_channels", out_channels)
        check_count(name, "kernel_size", kernel_size)
        check_stride(name, stride)
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
        name = type(self).__name__
        check_layer_input(name, x, 4, "(B, C, H, W)", "in_channels", self.in_channels,
                          self.weight)
        if self.stride == 2:
            check_even_image(name, x)
            x = F.pixel_unshuffle(x, 2)
        if self.filter_size > min(x.shape[-2:]):
            raise ValueError(f"{name}: the {self.filter_size}x{self.filter_size} filter must fit "
                             f"in the {tuple(x.shape[-2:])} image it sees (after the stride-2 "
                             f"unshuffle, if any)")
        if self.training or not self._cacheable(self.weight):
            y = functional.cayley_conv2d(x, self.scaled_weight())
        else:
            y = frequency_conv2d(x, self._transforms(x))
        return self._add_bias(y, (1, -1, 1, 1))

    def _transforms(self, x: torch.Tensor) -> torch.Tensor:
        """The cached Q_f = cayley(R_f) (F, C_out, C_in) for x's image size and precision."""
        image_size, dtype = tuple(x.shape[-2:]), working_dtype(x.dtype)
        return self._derived((image_size, dtype), lambda: functional.cayley(
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
    cached in eval until W or alpha change (see CayleyConv2d). Input (B, in_features).
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
        """Q (out_features, in_features), from the cache in eval when possible."""
        return self._derived(None, lambda: functional.cayley(self.scaled_weight()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_layer_input(type(self).__name__, x, 2, "(B, in_features)", "in_features",
                          self.in_features, self.weight)
        return F.linear(x, self.orthogonal_weight(), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")
