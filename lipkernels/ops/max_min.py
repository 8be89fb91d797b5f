"""Registration of max_min: fake impls, autograd and the per-backend entry points.

Forward: (y, mask) = max_min(x, pairing); mask (B, C/2, *spatial) bool is true where a pair kept
its order (a >= b), one byte per pair, which is all the backward needs: x itself is not kept
alive. Backward: grad_x = max_min_backward(grad_y, mask, pairing), the output gradient routed
back through each pair's permutation; where a graph of it is needed (double backward) the same
permutation in torch ops (`reference.max_min.swap_pairs`), linear in grad_y.
"""

from __future__ import annotations

import torch

from ..reference.max_min import pair_shape, swap_pairs
from ._registration import kernel_ops


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


# {backend: forward op returning (y, mask)} for every kernel backend built here (the reference is
# not an op).
KERNELS = kernel_ops(
    "max_min",
    _triton_launchers,
    ("(Tensor x, str pairing) -> (Tensor, Tensor)",
     "(Tensor grad_y, Tensor mask, str pairing) -> Tensor"),
    forward_fake=_forward_fake,
    backward_fake=_backward_fake,
    setup_context=_setup_context,
    make_backward=_make_backward,
    differentiable_backward=_differentiable_backward,
)
