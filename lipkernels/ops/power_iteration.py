"""Registration of power_iteration: fake impls, autograd and the per-backend entry points.

Forward: (sigma, u, v) = power_iteration(W, u, iters) for W (..., m, n). Backward: only sigma is
differentiable, d sigma / d W = v u^T (u and v constant, as in spectral normalisation), computed
by the backend's power_iteration_backward kernel, or by the same outer product in torch ops
(`reference.power_iteration.sigma_gradient`) where a graph of it is needed (double backward:
linear in grad_sigma, constant in W).
"""

from __future__ import annotations

import torch

from ..reference.power_iteration import sigma_gradient
from ._registration import kernel_ops


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


# {backend: forward op} for every kernel backend built here (the reference is not an op).
KERNELS = kernel_ops(
    "power_iteration",
    _triton_launchers,
    ("(Tensor weight, Tensor u, int iters) -> (Tensor, Tensor, Tensor)",
     "(Tensor grad_sigma, Tensor u, Tensor v) -> Tensor"),
    forward_fake=_forward_fake,
    backward_fake=_backward_fake,
    setup_context=_setup_context,
    make_backward=_make_backward,
    differentiable_backward=_differentiable_backward,
)
