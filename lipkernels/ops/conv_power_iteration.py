"""Registration of conv_power_iteration: fake impls, autograd and the per-backend entry points.

Forward: (sigma (), u (1, C_in, H, W), v (1, C_out, H', W')) = conv_power_iteration(W, u, iters,
stride, padding), the power iteration on the conv map itself
(lipkernels.reference.conv_power_iteration); v is kept for the backward. Backward: only sigma is
differentiable, d sigma / d W = the weight gradient of conv2d(u, W) for the output gradient v
(u and v constant), computed by conv_power_iteration_backward(grad_sigma, u, v, kernel_size,
stride, padding), or by the same formula in torch ops
(`reference.conv_power_iteration.sigma_gradient`) where a graph of it is needed (double
backward: linear in grad_sigma, constant in W). The backward takes the kernel size, not the
filter: the channel counts are u's and v's. Kernels: C++ on the CPU
(csrc/cpu/conv_power_iteration.cpp), which checks the backward's arguments itself; no CUDA or
Triton kernel yet, so no Python check of the backward op (the Triton ops' hook).
"""

from __future__ import annotations

import sys

from .._checks import check_int_pair, check_iters, check_like, check_tensor
from .._conventions import conv_output_size, conv_stride_padding
from ..reference.conv_power_iteration import sigma_gradient
from ._registration import kernel_ops


def check_inputs(weight, u, iters, stride, padding):
    """The arguments of conv_power_iteration(weight, u, iters, stride, padding), as the functional
    API checks them (the C++ op in the same words); returns (stride, padding) as pairs (padding
    None: k // 2 per axis)."""
    op = "conv_power_iteration"
    check_tensor(op, "weight", weight, rank=4)
    check_tensor(op, "u", u, rank=4)
    check_like(op, "u", u, "weight", weight, (1, weight.shape[1], *u.shape[2:]))
    check_iters(op, iters)
    check_int_pair(op, "stride", stride, minimum=1)
    if padding is not None:
        check_int_pair(op, "padding", padding, minimum=0)
    kernel_size = tuple(weight.shape[2:])
    stride, padding = conv_stride_padding(kernel_size, stride, padding)
    if any(n + 2 * p < k for n, k, p in zip(u.shape[2:], kernel_size, padding)):
        raise ValueError(f"{op}: u's image padded by {padding} must be at least the filter's "
                         f"size {kernel_size} (H + 2 p_h >= k_h and W + 2 p_w >= k_w), else "
                         f"the convolution output is empty; got u of shape {tuple(u.shape)}")
    return stride, padding


def _forward_fake(weight, u, iters, stride, padding):
    output_size = conv_output_size(u.shape[2:], weight.shape[2:], stride, padding)
    return (weight.new_empty(()), u.new_empty(u.shape),
            weight.new_empty((1, weight.shape[0], *output_size)))


def _backward_fake(grad_sigma, u, v, kernel_size, stride, padding):
    return u.new_empty((v.shape[1], u.shape[1], *kernel_size))


def _setup_context(ctx, inputs, output):
    weight, _, _, stride, padding = inputs
    _, u, v = output
    ctx.save_for_backward(u, v)
    ctx.mark_non_differentiable(u, v)
    ctx.arguments = list(weight.shape[2:]), stride, padding


def _make_backward(backward_op):
    def backward(ctx, grad_sigma, grad_u, grad_v):
        u, v = ctx.saved_tensors
        return backward_op(grad_sigma, u, v, *ctx.arguments), None, None, None, None

    return backward


def _differentiable_backward(ctx, grad_sigma, grad_u, grad_v):
    u, v = ctx.saved_tensors
    return sigma_gradient(grad_sigma, u, v, *ctx.arguments), None, None, None, None


def _entry(op):
    def conv_power_iteration(weight, u, iters, stride, padding):
        sigma, u, _ = op(weight, u, iters, stride, padding)
        return sigma, u

    return conv_power_iteration


# {backend: entry with the reference's signature} for every kernel backend built here.
KERNELS = kernel_ops("conv_power_iteration", sys.modules[__name__])
