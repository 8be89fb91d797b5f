"""Registration of conv_spectral_bounds: fake impls, autograd and the per-backend entry points.

Forward: (bounds (4,), [u_q], [v_q]) for a filter (C_out, C_in, k_h, k_w), bounds[q] =
sqrt(k_h k_w) v_q^T M_q u_q with M_q the q-th Fantastic Four reshape. Backward:
d bounds[q] / d W = sqrt(k_h k_w) * unreshape_q(v_q u_q^T), computed by the backend's
conv_spectral_bounds_backward kernel, or in torch ops (`reference.conv_spectral_bounds.
bound_gradient`) where a graph of it is needed (double backward: linear in grad_bounds,
constant in W).
"""

from __future__ import annotations

import sys

from .._checks import check_iters, check_like, check_tensor, check_weight_shape
from .._conventions import bound_matrix_shapes
from ..reference.conv_spectral_bounds import bound_gradient
from ._registration import kernel_ops


def check_inputs(weight, vectors, iters):
    """The arguments of conv_spectral_bounds(weight, vectors, iters), as every entry checks them."""
    op = "conv_spectral_bounds"
    check_tensor(op, "weight", weight, rank=4)
    check_iters(op, iters)
    if len(vectors) != 4:
        raise ValueError(f"{op}: vectors must hold 4 tensors (one per reshape); got {len(vectors)}")
    for index, (u, (_, cols)) in enumerate(zip(vectors, bound_matrix_shapes(weight.shape))):
        check_like(op, f"vectors[{index}]", u, "weight", weight, (cols,))


def check_backward_inputs(grad_bounds, vectors, left_vectors, weight_shape):
    """The arguments of conv_spectral_bounds_backward(grad_bounds (4,), vectors, left_vectors,
    weight_shape): the right and left vectors of the four reshapes of a weight_shape filter."""
    op = "conv_spectral_bounds_backward"
    check_weight_shape(op, weight_shape)
    check_tensor(op, "grad_bounds", grad_bounds, rank=1)
    if tuple(grad_bounds.shape) != (4,):
        raise ValueError(f"{op}: grad_bounds must have shape (4,); got {tuple(grad_bounds.shape)}")
    if len(vectors) != 4 or len(left_vectors) != 4:
        raise ValueError(f"{op}: vectors and left_vectors must hold 4 tensors each (one per "
                         f"reshape); got {len(vectors)} and {len(left_vectors)}")
    shapes = bound_matrix_shapes(tuple(weight_shape))
    for index, (u, v, (rows, cols)) in enumerate(zip(vectors, left_vectors, shapes)):
        check_like(op, f"vectors[{index}]", u, "grad_bounds", grad_bounds, (cols,))
        check_like(op, f"left_vectors[{index}]", v, "grad_bounds", grad_bounds, (rows,))


def _forward_fake(weight, vectors, iters):
    shapes = bound_matrix_shapes(weight.shape)
    return (weight.new_empty(4), [weight.new_empty(cols) for _, cols in shapes],
            [weight.new_empty(rows) for rows, _ in shapes])


def _backward_fake(grad_bounds, vectors, left_vectors, weight_shape):
    return grad_bounds.new_empty(weight_shape)


def _setup_context(ctx, inputs, output):
    weight = inputs[0]
    _, vectors, left_vectors = output
    ctx.save_for_backward(*vectors, *left_vectors)
    ctx.mark_non_differentiable(*vectors, *left_vectors)
    ctx.weight_shape = list(weight.shape)


def _make_backward(backward_op):
    def backward(ctx, grad_bounds, grad_vectors, grad_left_vectors):
        saved = ctx.saved_tensors
        grad_weight = backward_op(grad_bounds.contiguous(), list(saved[:4]), list(saved[4:]),
                                  ctx.weight_shape)
        # One None per input leaf: the vectors list gets a list of Nones (they are constants).
        return grad_weight, [None] * len(grad_vectors), None

    return backward


def _differentiable_backward(ctx, grad_bounds, grad_vectors, grad_left_vectors):
    saved = ctx.saved_tensors
    grad_weight = bound_gradient(grad_bounds, saved[:4], saved[4:], ctx.weight_shape)
    return grad_weight, [None] * len(grad_vectors), None


def _triton_launchers():
    from ..triton import conv_spectral_bounds as kernels

    return kernels.conv_spectral_bounds, kernels.conv_spectral_bounds_backward


def _entry(op):
    """The reference's signature and result: (bounds, the four right vectors), the left ones
    being for the backward only."""
    def conv_spectral_bounds(weight, iters, vectors):
        bounds, right, _ = op(weight.contiguous(), [u.contiguous() for u in vectors], iters)
        return bounds, tuple(right)

    return conv_spectral_bounds


# {backend: entry with the reference's signature} for every kernel backend built here.
KERNELS = kernel_ops("conv_spectral_bounds", sys.modules[__name__])
