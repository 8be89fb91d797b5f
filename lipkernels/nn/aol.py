"""Almost-orthogonal layers: AOLConv2d and AOLLinear.

Prach & Lampert, "Almost-Orthogonal Layers for Efficient General-Purpose Lipschitz Networks",
ECCV 2022. The weight P is rescaled on its input channels, W = P diag(d), with
d = `lipkernels.aol_rescaling(P)` = (sum_j |P^T P|_ij + eps)^(-1/2) (for a filter, |P^T P| summed
over every offset of its self-correlation): W has norm below 1 (the Schur test), as a matrix and
as a convolution with zero padding at any input size and stride, and W is orthogonal wherever P's
input-channel slices are orthogonal, which the seed's initialisation (an orthogonal matrix at the
centre tap, zeros elsewhere) starts from. In eval the layer is a plain convolution or linear
layer with W, which `lipkernels.nn.cached()` reuses and `vanilla_export` returns.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import functional
from .._checks import check_count, check_layer_input, check_square_size
from .._conventions import working_dtype
from ..reference.aol_rescaling import schur_sums
from ._eval_cache import EvalCached
from ._vanilla import in_eval, plain_module

# Relative margin on the float64 Schur sums of the bound: their rounding is a small multiple of
# (2k - 1)^2 C 2^-53 of the sum, far below this for any layer size.
_FLOAT64_SUM_MARGIN = 1e-12


class _AOL(EvalCached):
    """The rescaled weight of both layers: W = P diag(d), d = aol_rescaling(P)."""

    def _init_weight(self, shape, bias: bool, factory: dict):
        self.weight = nn.Parameter(torch.empty(shape, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(shape[0], **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        """The seed's "orthogonal_center" weight: an orthogonal (C_out, C_in) matrix at the centre
        tap, zeros elsewhere (the matrix itself for AOLLinear); a zero bias."""
        centre = torch.empty(self.weight.shape[:2], device=self.weight.device,
                             dtype=working_dtype(self.weight.dtype))
        nn.init.orthogonal_(centre)
        with torch.no_grad():
            self.weight.zero_()
            if self.weight.dim() == 2:
                self.weight.copy_(centre)
            else:
                self.weight[:, :, self.weight.shape[2] // 2, self.weight.shape[3] // 2] = centre
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _compute_rescaled(self) -> torch.Tensor:
        d = functional.aol_rescaling(self.weight)
        return self.weight * d.view(1, -1, *([1] * (self.weight.dim() - 2)))

    def rescaled_weight(self) -> torch.Tensor:
        """W = P diag(d) as this mode's forward uses it (reused in eval inside
        `lipkernels.nn.cached()`)."""
        return self._derived(self.weight, (self.weight,), None, self._compute_rescaled)

    @torch.no_grad()
    def lipschitz_bound(self) -> float:
        """A provable bound (a Python float) on the layer's Lipschitz constant (l2), at every
        input size: sqrt(max_i sum_j |W^T W|_ij d_i / d_j), Schur's test on the W = P diag(d)
        the forward uses with the weights 1 / d, recomputed in float64 (about sqrt(S / (S +
        eps)) < 1); nan for a non-finite weight. Exact arithmetic on W's values: the forward's
        own rounding is not included."""
        d = functional.aol_rescaling(self.weight).double()
        sums = schur_sums(self._compute_rescaled().double(), -d.log())
        return math.sqrt(float(sums.max()) * (1 + _FLOAT64_SUM_MARGIN))


class AOLConv2d(_AOL):
    """y = conv2d(x, W, bias, stride, padding), W = P diag(d) (module docstring); P
    (out_channels, in_channels, k, k). nn.Conv2d's signature: any stride and zero padding
    (default k // 2, "same" for odd k) or circular padding, the bound holding for each; dilation
    1 and groups 1. Input (B, in_channels, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, bias: bool = True, *, padding=None, dilation=1, groups=1,
                 padding_mode: str = "zeros", device=None, dtype=None):
        super().__init__()
        name = type(self).__name__
        self.in_channels = check_count(name, "in_channels", in_channels)
        self.out_channels = check_count(name, "out_channels", out_channels)
        self.kernel_size = check_square_size(name, "kernel_size", kernel_size)
        self.stride = check_square_size(name, "stride", stride)
        self.padding = self.kernel_size // 2 if padding is None else padding
        if padding == "same":
            self.padding = self.kernel_size // 2
            if self.kernel_size % 2 == 0 or self.stride != 1:
                raise ValueError(f"{name}: padding 'same' needs an odd kernel_size and stride 1; "
                                 f"got kernel_size={kernel_size}, stride={stride}")
        if isinstance(self.padding, (tuple, list)) and len(set(self.padding)) == 1:
            self.padding = self.padding[0]
        if isinstance(self.padding, bool) or not isinstance(self.padding, int) or self.padding < 0:
            raise ValueError(f"{name}: padding must be an int >= 0 (None: kernel_size // 2), or "
                             f"'same'; got {padding!r}")
        dilation, groups = check_square_size(name, "dilation", dilation), check_count(
            name, "groups", groups)
        if dilation != 1 or groups != 1:
            raise ValueError(f"{name}: dilation and groups must be 1 (the rescaling bounds a "
                             f"dense, undilated filter); got dilation={dilation!r}, "
                             f"groups={groups!r}")
        if padding_mode not in ("zeros", "circular"):
            raise ValueError(f"{name}: padding_mode must be 'zeros' or 'circular' (the modes "
                             f"the rescaling bounds); got {padding_mode!r}")
        if not isinstance(bias, bool):
            raise TypeError(f"{name}: bias must be True or False (padding and the rest are "
                            f"keyword arguments here); got {bias!r}")
        self.padding_mode = padding_mode
        self._init_weight((out_channels, in_channels, self.kernel_size, self.kernel_size), bias,
                          {"device": device, "dtype": dtype})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_layer_input(type(self).__name__, x, 4, "(B, C, H, W)", "in_channels",
                          self.in_channels, self.weight)
        weight = self.rescaled_weight()
        if self.padding_mode == "circular":
            return F.conv2d(F.pad(x, [self.padding] * 4, mode="circular"), weight, self.bias,
                            self.stride)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding)

    @torch.no_grad()
    def vanilla_export(self) -> nn.Conv2d:
        """The layer as a plain nn.Conv2d holding W: the same outputs, loading with torch only."""
        weight = in_eval(self, self._compute_rescaled)
        bias = None if self.bias is None else self.bias.detach()
        return plain_module(nn.Conv2d, weight, bias, self.in_channels, self.out_channels,
                            self.kernel_size, stride=self.stride, padding=self.padding,
                            padding_mode=self.padding_mode)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"padding_mode={self.padding_mode}, bias={self.bias is not None}")


class AOLLinear(_AOL):
    """y = W x + bias, W = P diag(d) (module docstring), P (out_features, in_features). Input
    (B, in_features)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, device=None,
                 dtype=None):
        super().__init__()
        name = type(self).__name__
        self.in_features = check_count(name, "in_features", in_features)
        self.out_features = check_count(name, "out_features", out_features)
        self._init_weight((out_features, in_features), bias, {"device": device, "dtype": dtype})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_layer_input(type(self).__name__, x, 2, "(B, in_features)", "in_features",
                          self.in_features, self.weight)
        return F.linear(x, self.rescaled_weight(), self.bias)

    @torch.no_grad()
    def vanilla_export(self) -> nn.Linear:
        """The layer as a plain nn.Linear holding W: the same outputs, loading with torch only."""
        weight = in_eval(self, self._compute_rescaled)
        bias = None if self.bias is None else self.bias.detach()
        return plain_module(nn.Linear, weight, bias, self.in_features, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")
