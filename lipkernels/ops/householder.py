"""Registration of householder: fake impls, autograd and the per-backend entry points.

Forward: y = householder(x, theta). Backward: (grad_x, grad_theta) = householder_backward(
grad_y, x, theta), which recomputes each element's branch from x: grad_theta needs the input's
values on reflected elements, so x is what the backward keeps. Where a graph of the gradients is
needed (double backward), they come from the reference recomputed from x and theta.
"""

from __future__ import annotations

import sys

import torch

from .._checks import check_channel_pairs, check_like, check_tensor
from ..reference.householder import householder as reference_householder
from ._registration import kernel_ops, recomputed_vjp


def _check_pairs_and_angles(op: str, x_name: str, x, theta):
    """x (B, C, *spatial), C even, and theta (C/2,) on x's device, of x's dtype or float32 for
    half-precision x."""
    check_channel_pairs(op, x_name, x)
    check_tensor(op, "theta", theta)
    pairs = x.shape[1] // 2
    if tuple(theta.shape) != (pairs,):
        raise ValueError(f"{op}: theta must have shape ({pairs},), one angle per channel pair of "
                         f"{x_name} {tuple(x.shape)}; got {tuple(theta.shape)}")
    if theta.device != x.device:
        raise ValueError(f"{op}: theta is on {theta.device} but {x_name} is on {x.device}; both "
                         f"must be on the same device")
    half_x = x.dtype in (torch.float16, torch.bfloat16)
    if theta.dtype != x.dtype and not (half_x and theta.dtype == torch.float32):
        raise TypeError(f"{op}: theta has dtype {theta.dtype} but {x_name} has {x.dtype}; theta "
                        f"must have {x_name}'s dtype{' or torch.float32' if half_x else ''}")


def check_inputs(x, theta):
    """The arguments of householder(x, theta), as every entry checks them."""
    _check_pairs_and_angles("householder", "x", x, theta)


def check_backward_inputs(grad_y, x, theta):
    """The arguments of householder_backward(grad_y, x, theta): x is the forward's input."""
    op = "householder_backward"
    _check_pairs_and_angles(op, "grad_y", grad_y, theta)
    check_like(op, "x", x, "grad_y", grad_y, grad_y.shape)


def _forward_fake(x, theta):
    # The kernels compute on x.contiguous(): their outputs are contiguous.
    return x.new_empty(x.shape)


def _backward_fake(grad_y, x, theta):
    return grad_y.new_empty(grad_y.shape), theta.new_empty(theta.shape)


def _setup_context(ctx, inputs, output):
    x, theta = inputs
    ctx.save_for_backward(x, theta)


def _make_backward(backward_op):
    def backward(ctx, grad_y):
        x, theta = ctx.saved_tensors
        return backward_op(grad_y.contiguous(), x, theta)

    return backward


def _differentiable_backward(ctx, grad_y):
    x, theta = ctx.saved_tensors
    return recomputed_vjp(reference_householder, (x, theta), ctx.needs_input_grad, grad_y)


def _triton_launchers():
    from ..triton import householder as kernels

    return kernels.householder, kernels.householder_backward


def _entry(op):
    def householder(x, theta):
        return op(x.contiguous(), theta.contiguous())

    return householder


# {backend: entry with the reference's signature} for every kernel backend built here.
KERNELS = kernel_ops("householder", sys.modules[__name__])
