"""Registration of aol_rescaling: fake impls, autograd and the per-backend entry points.

Forward: (d, absolute_gram, signs) = aol_rescaling(weight, log_q) on float32 or float64 (the
entry computes half precision in float32): d, and what the backward reads, the absolute Gram
matrix A (C_in, C_in) and sign(G) as int8 (csrc/cpu/aol_rescaling.cpp says why the signs are
kept rather than the correlation recomputed). Backward: (grad_weight, grad_log_q) =
aol_rescaling_backward(grad_d, weight, log_q, d, absolute_gram, signs). Where a graph of the
gradient is needed (double backward), the reference is recomputed and differentiated. Kernels:
C++ (csrc/cpu) only.
"""

from __future__ import annotations

import sys

import torch

from .._checks import check_like, check_tensor
from .._conventions import working_dtype
from ..reference.aol_rescaling import aol_rescaling as reference_aol_rescaling
from ..reference.aol_rescaling import rounded_down
from ._registration import kernel_ops, recomputed_vjp


def check_inputs(weight, log_q):
    """weight a matrix (C_out, C_in) or a filter (C_out, C_in, k_1, k_2) and log_q None or
    (C_in,) of weight's dtype and device. The C++ ops check the same, in this order and these
    words (csrc/common/checks.h, check_aol_rescaling_args), for float32/float64 weights."""
    op = "aol_rescaling"
    check_tensor(op, "weight", weight)
    if weight.dim() not in (2, 4):
        raise ValueError(f"{op}: weight must be 2-D (C_out, C_in) or 4-D (C_out, C_in, k_1, "
                         f"k_2); got shape {tuple(weight.shape)}")
    if log_q is not None:
        check_tensor(op, "log_q", log_q, rank=1)
        check_like(op, "log_q", log_q, "weight", weight, (weight.shape[1],))


def _correlation_shape(weight_shape) -> tuple[int, ...]:
    """The shape of G: (C_in, C_in) for a matrix, (C_in, C_in, 2 k_1 - 1, 2 k_2 - 1) for a
    filter."""
    channels = weight_shape[1]
    return (channels, channels, *(2 * k - 1 for k in weight_shape[2:]))


def _forward_fake(weight, log_q):
    channels = weight.shape[1]
    return (weight.new_empty(channels), weight.new_empty((channels, channels)),
            weight.new_empty(_correlation_shape(weight.shape), dtype=torch.int8))


def _backward_fake(grad_d, weight, log_q, d, absolute_gram, signs):
    return weight.new_empty(weight.shape), weight.new_empty(weight.shape[1])


def _setup_context(ctx, inputs, output):
    weight, log_q = inputs
    d, absolute_gram, signs = output
    ctx.save_for_backward(weight, log_q, d, absolute_gram, signs)
    ctx.mark_non_differentiable(absolute_gram, signs)


def _make_backward(backward_op):
    def backward(ctx, grad_d, grad_absolute_gram, grad_signs):
        weight, log_q, d, absolute_gram, signs = ctx.saved_tensors
        grad_weight, grad_log_q = backward_op(grad_d.contiguous(), weight, log_q, d,
                                              absolute_gram, signs)
        return grad_weight, None if log_q is None else grad_log_q

    return backward


def _differentiable_backward(ctx, grad_d, grad_absolute_gram, grad_signs):
    weight, log_q = ctx.saved_tensors[:2]
    return recomputed_vjp(reference_aol_rescaling, (weight, log_q), ctx.needs_input_grad,
                          grad_d)


def _entry(op):
    """The reference's signature and result: d alone, in weight's dtype (half precision
    computed in float32 and rounded down, as the reference does)."""
    def aol_rescaling(weight, log_q):
        working = working_dtype(weight.dtype)
        if log_q is not None:
            log_q = log_q.to(working).contiguous()
        d = op(weight.to(working).contiguous(), log_q)[0]
        return rounded_down(d, weight.dtype)

    return aol_rescaling


# {backend: entry with the reference's signature} for every kernel backend built here.
KERNELS = kernel_ops("aol_rescaling", sys.modules[__name__])
