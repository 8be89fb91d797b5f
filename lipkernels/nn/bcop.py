"""BCOPConv2d: an orthogonal convolution whose filter is built from Björck-orthonormalised
matrices.

Li, Haque, Anil, Lucas, Grosse & Jacobsen, "Preventing Gradient Attenuation in Lipschitz
Constrained Convolutional Networks", NeurIPS 2019 (ColinQiyangLi/LConvNet's `BCOP` inside its
`LipschitzConv2d`): 2k - 1 free C x C matrices are orthonormalised by `bjorck` (each divided
first by max(sigma, sqrt(||G||_F / 2)), sigma from a persistent power-iteration vector, as
BjorckLinear), and `bcop_filter` turns them into a k x k filter whose circular convolution is
orthogonal (C_in = C_out), an isometry (C_in < C_out) or a co-isometry (C_in > C_out).

Decisions where the seed leaves a choice: the circular padding of an even filter is nn.Conv2d's
padding="same" (k // 2 pixels after, (k - 1) // 2 before; the seed puts k // 2 before), a
circular shift of the seed's output by one pixel and equally orthogonal, so that the layer
swaps with, and exports to, nn.Conv2d(padding="same", padding_mode="circular"); stride 2 is a
pixel unshuffle by 2 followed by a filter of max(1, k // 2) taps on 4 C_in channels, as the
seed's LipschitzConv2d (and this project's Cayley and SOC layers) do. The power-iteration
vectors are persistent (50 iterations at construction, one per training call), not a fresh
random draw per call.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import functional
from .._checks import autocast_off, check_conv_arguments, check_count
from .._conventions import working_dtype
from ..bounds import bcop_conv_norm_bound
from ._distributed import full_parameters
from ._eval_cache import EvalCached
from ._unshuffle import filter_input
from ._vanilla import in_eval, plain_module
from .bjorck import orthonormalised
from .soc import INIT_ITERS


class BCOPConv2d(EvalCached):
    """Orthogonal convolution with circular padding: y = conv(x, bcop_filter(bjorck(M))) + bias.

    Args:
        in_channels, out_channels: channel counts; C = max(in_channels * stride^2,
            out_channels) must be even for a filter of 2 taps or more (its projectors have
            rank C / 2).
        kernel_size: filter size k (odd or even), an int or a pair (k, k).
        stride: 1, or 2 for pixel_unshuffle(x, 2) first (H, W even): the filter then has
            max(1, k // 2) taps on 4 in_channels channels.
        bias: add a learnable bias.
        bjorck_iters: Björck iterations per filter (20, the seed's).
        padding, dilation, groups, padding_mode: nn.Conv2d's, keyword-only, so that the layer
            replaces an nn.Conv2d(..., padding="same", padding_mode="circular"); other values
            raise a ValueError that says why.
        device, dtype: factory arguments.

    Parameters: `weight`, the free matrices (2 f - 1, C, C) for a filter of f taps (not the
    filter: `orthogonal_filter()` gives that), orthogonal at initialisation with gain
    1 / sqrt(C) (the seed's), and `bias` U(+-1/sqrt(fan_in)) as nn.Conv2d; the buffer `u` (2 f - 1, C) holds each matrix's power-iteration vector. In eval
    inside `lipkernels.nn.cached()` the filter is computed once (never stale, see
    `lipkernels.nn.cached`); outside it every call rebuilds it. Under torch.autocast the filter
    is built in the parameters' precision and only the convolution runs in half precision.
    Input (B, in_channels, H, W), output (B, out_channels, H / stride, W / stride); the filter
    must fit the image it sees.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, bias: bool = True, bjorck_iters: int = 20, *,
                 padding="same", dilation=1, groups: int = 1, padding_mode: str = "circular",
                 device=None, dtype=None):
        super().__init__()
        name = type(self).__name__
        self.in_channels = check_count(name, "in_channels", in_channels)
        self.out_channels = check_count(name, "out_channels", out_channels)
        self.bjorck_iters = check_count(name, "bjorck_iters", bjorck_iters, 10 ** 6)
        self.kernel_size, self.stride = check_conv_arguments(
            name, kernel_size, stride, padding, dilation, groups, bias, padding_mode,
            ("circular", "the BCOP filter is orthogonal as a circular convolution"))
        self.filter_size = self.kernel_size if self.stride == 1 else max(1, self.kernel_size // 2)
        self.filter_channels = in_channels * self.stride ** 2
        channels = max(self.filter_channels, out_channels)
        if self.filter_size > 1 and channels % 2:
            raise ValueError(f"{name}: max(in_channels * stride^2, out_channels) = {channels} "
                             f"must be even for a filter of {self.filter_size} taps (its "
                             f"projectors have rank C / 2)")
        factory = {"device": device, "dtype": dtype}
        count = 2 * self.filter_size - 1
        self.weight = nn.Parameter(torch.empty(count, channels, channels, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        self.register_buffer("u", torch.empty(count, channels, **factory))
        self.reset_parameters()

    def reset_parameters(self):
        """Orthogonal matrices (gain 1 / sqrt(C)), nn.Conv2d's bias, fresh random vectors after
        INIT_ITERS power iterations."""
        channels = self.weight.shape[-1]
        # Drawn in the working dtype: torch's QR (orthogonal_) takes no half types.
        work = dict(device=self.weight.device, dtype=working_dtype(self.weight.dtype))
        with torch.no_grad():
            for matrix in self.weight:
                matrix.copy_(nn.init.orthogonal_(torch.empty(channels, channels, **work),
                                                 gain=1 / math.sqrt(channels)))
            if self.bias is not None:
                bound = 1 / math.sqrt(self.filter_channels * self.filter_size ** 2)
                nn.init.uniform_(self.bias, -bound, bound)
            u = torch.randn(self.u.shape, device=self.u.device, dtype=torch.float32)
            self.u.copy_(u / torch.linalg.vector_norm(u, dim=-1, keepdim=True))
        self.update_vectors(INIT_ITERS)

    @torch.no_grad()
    def update_vectors(self, iters: int = INIT_ITERS):
        """Run `iters` power iterations on every matrix from its vector and store them."""
        self.u.copy_(functional.power_iteration(self.weight, self.u, iters)[1])

    def _orthogonal_matrices(self, store_vector: bool) -> torch.Tensor:
        """The orthonormalised matrices in the working dtype (float32 for half parameters, so
        that only the filter is rounded to their precision)."""
        work = self.weight.to(working_dtype(self.weight.dtype))
        return orthonormalised(work, self.u, self.bjorck_iters, self.training, store_vector)

    def _filter_of(self, matrices: torch.Tensor) -> torch.Tensor:
        weight = functional.bcop_filter(matrices, self.filter_channels, self.out_channels)
        return weight.to(self.weight.dtype)

    def _filter(self, store_vector: bool) -> torch.Tensor:
        with autocast_off(self.weight.device.type):
            return self._filter_of(self._orthogonal_matrices(store_vector))

    def orthogonal_filter(self) -> torch.Tensor:
        """The filter (out_channels, in_channels * stride^2, f, f) as this mode's forward
        computes it (in training after the call's power iteration, which this stores; reused
        in eval inside `lipkernels.nn.cached()`)."""
        if self.training:
            return self._filter(store_vector=True)
        return self._derived(self.weight, (self.weight, self.u), None,
                             lambda: self._filter(store_vector=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = filter_input(type(self).__name__, x, self.in_channels, self.weight, self.stride,
                         self.filter_size)
        before = (self.filter_size - 1) // 2
        after = self.filter_size - 1 - before
        x = F.pad(x, (before, after, before, after), mode="circular")
        return F.conv2d(x, self.orthogonal_filter(), self.bias)

    @torch.no_grad()
    def lipschitz_bound(self) -> float:
        """A provable upper bound (a Python float) on the layer's Lipschitz constant (l2 norms),
        at every input size: the norm of the circular convolution with the filter the next
        forward call computes in the current mode (in training after the one power iteration
        that call takes; the stored vectors are left unchanged), certified from the
        orthonormalised matrices by `lipkernels.bounds.bcop_conv_norm_bound` (about
        1 + 1e-5 in float32 once Björck has converged); the unshuffle is a permutation and
        the bias does not change differences. nan for non-finite parameters. Exact arithmetic
        on the filter's values: the rounding of the convolution itself is not included."""
        with full_parameters(self), autocast_off(self.weight.device.type):
            matrices = self._orthogonal_matrices(store_vector=False)
            return bcop_conv_norm_bound(matrices, self._filter_of(matrices))

    @torch.no_grad()
    def vanilla_export(self) -> nn.Module:
        """The layer in eval as plain torch modules: (nn.PixelUnshuffle(2) at stride 2, then)
        nn.Conv2d(padding="same", padding_mode="circular") holding the eval filter; the same
        outputs, loading with torch only."""
        weight = in_eval(self, lambda: self._filter(store_vector=False))
        bias = None if self.bias is None else self.bias.detach()
        conv = plain_module(nn.Conv2d, weight, bias, self.filter_channels, self.out_channels,
                            self.filter_size, padding="same", padding_mode="circular")
        return nn.Sequential(nn.PixelUnshuffle(2), conv) if self.stride == 2 else conv

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, "
                f"filter=({self.filter_channels}, {self.filter_size}, {self.filter_size}), "
                f"bias={self.bias is not None}, bjorck_iters={self.bjorck_iters}")
