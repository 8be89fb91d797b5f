"""Registration of power_iteration: fake impls, autograd and the per-backend entry points.

Forward: (sigma, u, v) = power_iteration(W, u, iters) for W (..., m, n). Backward: only sigma is
differentiable, d sigma / d W = v u^T (u and v constant, as in spectral normalisation), computed
by the backend's power_iteration_backward kernel, or by the same outer product in torch ops
(`reference.power_iteration.sigma_gradient`) where a graph of it is needed (double backward:
linear in grad_sigma, constant in W).
"""

from __future__ import annotations

import sys

import torch

from .._checks import check_iters, check_like, check_tensor
from ..reference.power_iteration import sigma_gradient
from ._registration import kernel_ops


def check_inputs(weight, u, iters):
    """The arguments of power_iteration(weight, u, iters), as every entry checks them."""
    op = "power_iteration"
    check_tensor(op, "weight", weight, min_rank=2, batch_dims=-2)
    check_like(op, "u", u, "weight", weight, (*weight.shape[:-2], weight.shape[-1]))
    check_iters(op, iters)


def check_backward_inputs(grad_sigma, u, v):
    """The arguments of power_iteration_backward(grad_sigma (...), u (..., n), v (..., m))."""
    op = "power_iteration_backward"
    check_tensor(op, "u", u, min_rank=1, batch_dims=-1)
    check_tensor(op, "v", v, min_rank=1, batch_dims=-1)
    check_like(op, "v", v, "u", u, (*u.shape[:-1], v.shape[-1]))
    check_like(op, "grad_sigma", grad_sigma, "u", u, u.shape[:-1])


def _forward_fake(weight, u, iters):
    batch, rows = weight.shape[:-2], weight.shape[-2]
    return weight.new_empty(batch), torch.empty_like(u), weight.new_empty((*batch, rows))


def _backward_fake(grad_sigma, u, v):
    return u.new_empty((*v.shape, u.shape[-1]))


def _setup_context(ctx, inputs, output):
    _, u, v = output
    ctx.save_for_backward(u, v)
    ctx.mark_non_differentiable(u, v)


def _make_backward(backward_op):
    def backward(ctx, grad_sigma, grad_u, grad_v):
        u, v = ctx.saved_tensors
        return backward_op(grad_sigma.contiguous(), u, v), None, None

    return backward


def _differentiable_backward(ctx, grad_sigma, grad_u, grad_v):
    u, v = ctx.saved_tensors
    return sigma_gradient(grad_sigma, u, v), None, None


def _triton_launchers():
    from ..triton import power_iteration as kernels

    return kernels.power_iteration, kernels.power_iteration_backward


def _entry(op):
    def power_iteration(weight, u, iters):
        return op(weight.contiguous(), u.contiguous(), iters)

    return power_iteration


# {backend: entry with the reference's signature} for every kernel backend built here.
KERNELS = kernel_ops("power_iteration", sys.modules[__name__])
