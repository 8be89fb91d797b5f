"""Registration of conv_spectral_bounds: fake impls, autograd and the per-backend entry points.

Forward: (bounds (4,), [u_q], [v_q]) for a filter (C_out, C_in, k_h, k_w), bounds[q] =
sqrt(k_h k_w) v_q^T M_q u_q with M_q the q-th Fantastic Four reshape. Backward:
d bounds[q] / d W = sqrt(k_h k_w) * unreshape_q(v_q u_q^T), computed by the backend's
conv_spectral_bounds_backward kernel, or in torch ops (`reference.conv_spectral_bounds.
bound_gradient`) where a graph of it is needed (double backward: linear in grad_bounds,
constant in W).
"""

from __future__ import annotations

from ..reference.conv_spectral_bounds import bound_gradient, bound_matrix_shapes
from ._registration import kernel_ops


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


# {backend: forward op} for every kernel backend built here (the reference is not an op).
KERNELS = kernel_ops(
    "conv_spectral_bounds",
    _triton_launchers,
    ("(Tensor weight, Tensor[] vectors, int iters) -> (Tensor, Tensor[], Tensor[])",
     "(Tensor grad_bounds, Tensor[] vectors, Tensor[] left_vectors, int[] weight_shape) -> Tensor"),
    forward_fake=_forward_fake,
    backward_fake=_backward_fake,
    setup_context=_setup_context,
    make_backward=_make_backward,
    differentiable_backward=_differentiable_backward,
)
