"""Registration of bcop_filter: fake impls, autograd and the per-backend entry points.

Forward: (weight, projectors, iterates) = bcop_filter(matrices, in_channels, out_channels) on
float32 or float64 matrices (the entry computes half precision in float32): the filter, and what
the backward reads, kept by the C++ CPU kernel (csrc/cpu/bcop_filter.cpp says why): the 2k - 2
projectors P_j and the tap stacks Y_1..Y_(2k-3) between the growth steps. Backward:
grad_matrices = bcop_filter_backward(grad_weight, matrices, projectors, iterates, in_channels,
out_channels). Where a graph of the gradient is needed (double backward), the reference is
recomputed from the matrices and differentiated. Kernels: C++ (csrc/cpu) and Triton
(lipkernels/triton/bcop_filter.py), whose forward keeps no iterates (an empty list: its backward
grows the taps again).
"""

from __future__ import annotations

import sys

import torch

from .._checks import SUPPORTED_DTYPES, check_count, check_like, check_tensor
from .._conventions import working_dtype
from ..reference.bcop_filter import bcop_filter as reference_bcop_filter
from ._registration import kernel_ops, recomputed_vjp


def check_arguments(op: str, matrices, in_channels, out_channels, dtypes=SUPPORTED_DTYPES):
    """matrices (2k - 1, C, C) of one of `dtypes`, an odd count of square matrices with
    C = max(in_channels, out_channels), C even for k >= 2 (the projectors take C / 2 columns);
    in_channels and out_channels ints >= 1. The C++ ops check the same, in this order and
    these words (csrc/common/checks.h, check_bcop_filter_args)."""
    check_tensor(op, "matrices", matrices, rank=3, dtypes=dtypes)
    check_count(op, "in_channels", in_channels)
    check_count(op, "out_channels", out_channels)
    count, rows, cols = matrices.shape
    shape = tuple(matrices.shape)
    if count % 2 == 0:
        raise ValueError(f"{op}: matrices must hold an odd number 2k - 1 of matrices (k the "
                         f"kernel size); got shape {shape}")
    if rows != cols:
        raise ValueError(f"{op}: matrices must be square, (2k - 1, C, C); got shape {shape}")
    channels = max(in_channels, out_channels)
    if rows != channels:
        raise ValueError(f"{op}: matrices must have C = max(in_channels, out_channels) = "
                         f"{channels}; got shape {shape}")
    if count > 1 and rows % 2:
        raise ValueError(f"{op}: matrices must have an even C for a kernel size k >= 2 (the "
                         f"projectors take C / 2 columns); got shape {shape}")


def check_inputs(matrices, in_channels, out_channels):
    """The arguments of the op bcop_filter (float32 or float64 matrices; the functional API
    takes half precision too)."""
    check_arguments("bcop_filter", matrices, in_channels, out_channels,
                    dtypes=(torch.float32, torch.float64))


def check_backward_inputs(grad_weight, matrices, projectors, iterates, in_channels,
                          out_channels):
    """The arguments of the Triton bcop_filter_backward: those of bcop_filter, grad_weight of
    the filter's shape and the projectors (2k - 2, C, C), like the matrices, and no iterates
    (the Triton forward keeps none)."""
    op = "bcop_filter_backward"
    check_arguments(op, matrices, in_channels, out_channels, dtypes=(torch.float32,
                                                                     torch.float64))
    size, channels = (matrices.shape[0] + 1) // 2, matrices.shape[-1]
    check_like(op, "grad_weight", grad_weight, "matrices", matrices,
               (out_channels, in_channels, size, size))
    check_like(op, "projectors", projectors, "matrices", matrices,
               (matrices.shape[0] - 1, channels, channels))
    if len(iterates):
        raise ValueError(f"{op}: the Triton kernels keep no iterates; got {len(iterates)}")


def _triton_launchers():
    from ..triton import bcop_filter as kernels

    return kernels.bcop_filter, kernels.bcop_filter_backward


def _triton_forward_fake(matrices, in_channels, out_channels):
    weight, projectors, _ = _forward_fake(matrices, in_channels, out_channels)
    return weight, projectors, []


def _iterate_shapes(matrices, in_channels, out_channels) -> list[tuple[int, ...]]:
    """The shapes of the tap stacks Y_1..Y_(2k-3) the forward keeps: the growth steps add a
    tap along the first axis (even t) and the second (odd t) in turn, so after step t the taps
    are (t // 2 + 2) x ((t + 1) // 2 + 1), each min(in, out) x C."""
    rows, channels = min(in_channels, out_channels), matrices.shape[-1]
    return [(t // 2 + 2, (t + 1) // 2 + 1, rows, channels)
            for t in range(matrices.shape[0] - 2)]


def _forward_fake(matrices, in_channels, out_channels):
    size = (matrices.shape[0] + 1) // 2
    channels = matrices.shape[-1]
    return (matrices.new_empty((out_channels, in_channels, size, size)),
            matrices.new_empty((matrices.shape[0] - 1, channels, channels)),
            [matrices.new_empty(shape)
             for shape in _iterate_shapes(matrices, in_channels, out_channels)])


def _backward_fake(grad_weight, matrices, projectors, iterates, in_channels, out_channels):
    return matrices.new_empty(matrices.shape)


def _setup_context(ctx, inputs, output):
    matrices, ctx.in_channels, ctx.out_channels = inputs
    _, projectors, iterates = output
    ctx.save_for_backward(matrices, projectors, *iterates)
    ctx.mark_non_differentiable(projectors, *iterates)


def _make_backward(backward_op):
    def backward(ctx, grad_weight, grad_projectors, grad_iterates):
        matrices, projectors, *iterates = ctx.saved_tensors
        grad_matrices = backward_op(grad_weight.contiguous(), matrices, projectors, iterates,
                                    ctx.in_channels, ctx.out_channels)
        return grad_matrices, None, None

    return backward


def _differentiable_backward(ctx, grad_weight, grad_projectors, grad_iterates):
    matrices = ctx.saved_tensors[0]
    construct = lambda M: reference_bcop_filter(M, ctx.in_channels, ctx.out_channels)  # noqa: E731
    (grad_matrices,) = recomputed_vjp(construct, (matrices,), ctx.needs_input_grad, grad_weight)
    return grad_matrices, None, None


def _entry(op):
    """The reference's signature and result: the filter alone, in the matrices' dtype (half
    precision computed in float32)."""
    def bcop_filter(matrices, in_channels, out_channels):
        working = matrices.to(working_dtype(matrices.dtype)).contiguous()
        return op(working, in_channels, out_channels)[0].to(matrices.dtype)

    return bcop_filter


# {backend: entry with the reference's signature} for every kernel backend built here.
KERNELS = kernel_ops("bcop_filter", sys.modules[__name__])
