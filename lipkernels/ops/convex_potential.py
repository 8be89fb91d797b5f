"""Registration of convex_potential: fake impls, autograd and the per-backend entry points.

Forward: (z, r) = convex_potential(x, W, b, scale), z = x - W^T (scale * r), r = relu(W x + b)
(B, C_inner, ...): the activation is what the backward keeps beside x, W and scale (the weight
and scale gradients read its values, so the relu mask alone would need W x again); the
reference's autograd also keeps W^T r, a full-width (B, C, ...) tensor, for the gradient of a
0-dim scale. Backward: (grad_x, grad_W, grad_b, grad_scale) = convex_potential_backward(grad_z, x,
W, scale, r); where a graph of the gradients is needed (double backward), the reference's
gradients recomputed from the inputs.
"""

from __future__ import annotations

import sys

import torch

from .._checks import check_like, check_tensor, require_tensor
from ..reference.convex_potential import convex_potential as reference_convex_potential
from ._registration import kernel_ops, recomputed_vjp


def check_step(op: str, x_name: str, x, weight, bias, scale) -> int:
    """weight a filter (C_inner, C, k1, k2) with odd k and `x_name` an image batch (B, C, H, W),
    or weight a matrix (C_inner, C) and x (B, C); bias None or (C_inner,); scale () or
    (C_inner,); all of x's dtype and device. Returns C_inner."""
    check_tensor(op, "weight", weight)
    if weight.dim() not in (2, 4):
        raise ValueError(f"{op}: weight must be a matrix (C_inner, C) or a filter (C_inner, C, "
                         f"k1, k2); got shape {tuple(weight.shape)}")
    if weight.dim() == 4 and (weight.shape[2] % 2 == 0 or weight.shape[3] % 2 == 0):
        raise ValueError(f'{op}: weight must have odd kernel sizes ("same" padding k // 2 maps '
                         f'an image to its own size); got shape {tuple(weight.shape)}')
    check_tensor(op, x_name, x, rank=weight.dim(), batch_dims=1)
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"{op}: {x_name} must have {weight.shape[1]} channels (dim 1) to match "
                         f"weight {tuple(weight.shape)}; got shape {tuple(x.shape)}")
    check_like(op, "weight", weight, x_name, x, weight.shape)
    inner = weight.shape[0]
    if bias is not None:
        require_tensor(op, "bias", bias)
        check_like(op, "bias", bias, x_name, x, (inner,))
    require_tensor(op, "scale", scale)
    if not (scale.dim() == 0 or (scale.dim() == 1 and scale.shape[0] == inner)):
        raise ValueError(f"{op}: scale must have shape () or ({inner},) (one factor per inner "
                         f"channel of weight {tuple(weight.shape)}); got {tuple(scale.shape)}")
    check_like(op, "scale", scale, x_name, x, scale.shape)
    return inner


def activation_shape(x: torch.Tensor, inner: int) -> tuple[int, ...]:
    """The shape of r = relu(W x + b): x's with C_inner channels."""
    return (x.shape[0], inner, *x.shape[2:])


def check_inputs(x, weight, bias, scale):
    """The arguments of convex_potential(x, weight, bias, scale), as every entry checks them."""
    check_step("convex_potential", "x", x, weight, bias, scale)


def check_backward_inputs(grad_z, x, weight, scale, activation):
    """The arguments of convex_potential_backward(grad_z, x, weight, scale, activation): x the
    forward's input, activation its kept relu(W x + b)."""
    op = "convex_potential_backward"
    inner = check_step(op, "grad_z", grad_z, weight, None, scale)
    check_like(op, "x", x, "grad_z", grad_z, grad_z.shape)
    check_like(op, "activation", activation, "grad_z", grad_z, activation_shape(grad_z, inner))


def _forward_fake(x, weight, bias, scale):
    return x.new_empty(x.shape), x.new_empty(activation_shape(x, weight.shape[0]))


def _backward_fake(grad_z, x, weight, scale, activation):
    return (grad_z.new_empty(grad_z.shape), weight.new_empty(weight.shape),
            weight.new_empty(weight.shape[:1]), scale.new_empty(scale.shape))


def _setup_context(ctx, inputs, output):
    x, weight, bias, scale = inputs
    _, activation = output
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, weight, scale, activation, *((bias,) if ctx.has_bias else ()))
    ctx.mark_non_differentiable(activation)


def _make_backward(backward_op):
    def backward(ctx, grad_z, grad_activation):
        x, weight, scale, activation = ctx.saved_tensors[:4]
        grad_x, grad_weight, grad_bias, grad_scale = backward_op(
            grad_z.contiguous(), x, weight, scale, activation)
        return grad_x, grad_weight, grad_bias if ctx.has_bias else None, grad_scale

    return backward


def _differentiable_backward(ctx, grad_z, grad_activation):
    x, weight, scale = ctx.saved_tensors[:3]
    bias = ctx.saved_tensors[4] if ctx.has_bias else None
    return recomputed_vjp(reference_convex_potential, (x, weight, bias, scale),
                          ctx.needs_input_grad, grad_z)


def _entry(op):
    """The reference's signature and result: z alone, the activation being for the backward."""
    def convex_potential(x, weight, bias, scale):
        return op(x.contiguous(), weight.contiguous(), bias, scale)[0]

    return convex_potential


# {backend: entry with the reference's signature} for every kernel backend built here.
KERNELS = kernel_ops("convex_potential", sys.modules[__name__])
