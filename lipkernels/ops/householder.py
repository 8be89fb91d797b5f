"""Registration of householder: fake impls, autograd and the per-backend entry points.

Forward: y = householder(x, theta). Backward: (grad_x, grad_theta) = householder_backward(
grad_y, x, theta), which recomputes each element's branch from x: grad_theta needs the input's
values on reflected elements, so x is what the backward keeps. Where a graph of the gradients is
needed (double backward), they come from the reference recomputed from x and theta.
"""

from __future__ import annotations

from ..reference.householder import householder as reference_householder
from ._registration import kernel_ops, recomputed_vjp


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


# {backend: forward op} for every kernel backend built here (the reference is not an op).
KERNELS = kernel_ops(
    "householder",
    _triton_launchers,
    ("(Tensor x, Tensor theta) -> Tensor",
     "(Tensor grad_y, Tensor x, Tensor theta) -> (Tensor, Tensor)"),
    forward_fake=_forward_fake,
    backward_fake=_backward_fake,
    setup_context=_setup_context,
    make_backward=_make_backward,
    differentiable_backward=_differentiable_backward,
)
