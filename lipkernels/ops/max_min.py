"""Registration of max_min: fake impls, autograd and the per-backend entry points.

Forward: (y, mask) = max_min(x, pairing); mask (B, C/2, *spatial) bool is true where a pair kept
its order (a >= b), one byte per pair, which is all the backward needs: x itself is not kept
alive. Backward: grad_x = max_min_backward(grad_y, mask, pairing), the output gradient routed
back through each pair's permutation; where a graph of it is needed (double backward) the same
permutation in torch ops (`reference.max_min.swap_pairs`), linear in grad_y.
"""

from __future__ import annotations

import sys

import torch

from .._checks import check_channel_pairs, check_tensor
from .._conventions import PAIRINGS, pair_shape
from ..reference.max_min import swap_pairs
from ._registration import kernel_ops


def _check_pairing(op: str, pairing):
    if pairing not in PAIRINGS:
        raise ValueError(f"{op}: pairing must be one of {', '.join(PAIRINGS)}; got {pairing!r}")


def check_inputs(x, pairing):
    """The arguments of max_min(x, pairing), as every entry checks them."""
    check_channel_pairs("max_min", "x", x)
    _check_pairing("max_min", pairing)


def check_backward_inputs(grad_y, mask, pairing):
    """The arguments of max_min_backward(grad_y, mask, pairing): mask is the forward's bool
    (B, C/2, *spatial) output."""
    op = "max_min_backward"
    check_channel_pairs(op, "grad_y", grad_y)
    _check_pairing(op, pairing)
    check_tensor(op, "mask", mask, dtypes=(torch.bool,), batch_dims=1)
    expected = pair_shape(grad_y.shape)
    if tuple(mask.shape) != tuple(expected) or mask.device != grad_y.device:
        raise ValueError(f"{op}: mask must have shape {tuple(expected)} (one entry per channel "
                         f"pair of grad_y {tuple(grad_y.shape)}) on grad_y's device "
                         f"{grad_y.device}; got {tuple(mask.shape)} on {mask.device}")


def _forward_fake(x, pairing):
    # The kernels compute on x.contiguous(): their outputs are contiguous.
    return x.new_empty(x.shape), x.new_empty(pair_shape(x.shape), dtype=torch.bool)


def _backward_fake(grad_y, mask, pairing):
    return grad_y.new_empty(grad_y.shape)


def _setup_context(ctx, inputs, output):
    _, pairing = inputs
    _, mask = output
    ctx.save_for_backward(mask)
    ctx.pairing = pairing
    ctx.mark_non_differentiable(mask)


def _make_backward(backward_op):
    def backward(ctx, grad_y, grad_mask):
        (mask,) = ctx.saved_tensors
        return backward_op(grad_y.contiguous(), mask, ctx.pairing), None

    return backward


def _differentiable_backward(ctx, grad_y, grad_mask):
    (mask,) = ctx.saved_tensors
    return swap_pairs(grad_y, mask, ctx.pairing), None


def _triton_launchers():
    from ..triton import max_min as kernels

    return kernels.max_min, kernels.max_min_backward


def _entry(op):
    """The reference's signature and result: y alone, the mask being for the backward only."""
    def max_min(x, pairing):
        return op(x.contiguous(), pairing)[0]

    return max_min


# {backend: entry with the reference's signature} for every kernel backend built here.
KERNELS = kernel_ops("max_min", sys.modules[__name__])
