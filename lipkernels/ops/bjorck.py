"""Registration of bjorck: fake impls, autograd and the per-backend entry points.

Forward: (Q, iterates, grams) = bjorck(W, iters, beta, order) on a tall W already scaled
(`lipkernels._conventions.bjorck_input`, which the entry applies, with the transpose of a wide
input); `iterates` (W_1..W_(iters-1), stacked) and `grams` (A_t = W_t^T W_t, stacked) are what
the backward reads: with them it costs three products an iteration, as autograd through the
reference does (the Triton kernels keep neither: empty tensors, their backward runs the tangent
iteration). Backward: grad_W = bjorck_backward(grad_Q, W, iterates, grams, ...). Where a graph
of the gradient is needed (double backward), the reference iteration is recomputed from W and
differentiated. Kernels: C++ (csrc/cpu, the same ATen code on the
CUDA key) and Triton (lipkernels/triton/bjorck.py, order 1).
"""

from __future__ import annotations

import sys

import torch

from .._checks import check_count, check_iters, check_like, check_tensor
from .._conventions import BJORCK_MAX_ORDER, bjorck_coefficients, bjorck_input, through_tall
from ..reference.bjorck import iterate
from ._registration import kernel_ops, recomputed_vjp


def check_options(op: str, iters, beta, order):
    """Björck's iteration count, order from 1 to BJORCK_MAX_ORDER and beta in (0, 1) (0.5 from
    order 2 on, the Taylor coefficients): what every bjorck entry checks."""
    check_iters(op, iters)
    check_count(op, "order", order, maximum=BJORCK_MAX_ORDER)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise TypeError(f"{op}: beta must be a float; got {type(beta).__name__}")
    if not 0 < beta < 1:
        raise ValueError(f"{op}: beta must be in (0, 1); got {beta:g}")
    if order > 1 and beta != 0.5:
        raise ValueError(f"{op}: beta must be 0.5 for order >= 2 (the Taylor coefficients); "
                         f"got {beta:g}")


def _check_tall(op: str, W):
    check_tensor(op, "W", W, min_rank=2, dtypes=(torch.float32, torch.float64), batch_dims=-2)
    if W.shape[-2] < W.shape[-1]:
        raise ValueError(f"{op}: W (..., m, n) must have m >= n (transpose a wide matrix "
                         f"first); got shape {tuple(W.shape)}")


def _iterates_shape(W, iters) -> tuple[int, ...]:
    return (iters - 1, *W.shape)


def _grams_shape(W, iters) -> tuple[int, ...]:
    return (iters, *W.shape[:-2], W.shape[-1], W.shape[-1])


def check_inputs(W, iters, beta, order):
    """The arguments of the op bjorck(W, iters, beta, order): a tall, scaled float32 or float64
    W. The functional API takes any orientation, half precision and the scale."""
    _check_tall("bjorck", W)
    check_options("bjorck", iters, beta, order)


def check_backward_inputs(grad_Q, W, iterates, grams, iters, beta, order):
    """The arguments of the Triton bjorck_backward: those of bjorck, grad_Q like W, and what its
    forward kept: nothing (iterates and grams empty; its backward runs the tangent iteration).
    The C++ op checks its stacked iterates and Gram matrices itself."""
    op = "bjorck_backward"
    _check_tall(op, W)
    check_options(op, iters, beta, order)
    check_like(op, "grad_Q", grad_Q, "W", W, W.shape)
    for name, kept in (("iterates", iterates), ("grams", grams)):
        if kept.numel():
            raise ValueError(f"{op}: {name} must be empty (the Triton forward keeps none); got "
                             f"shape {tuple(kept.shape)}")


def _triton_forward_fake(W, iters, beta, order):
    return W.new_empty(W.shape), W.new_empty(0), W.new_empty(0)


def _forward_fake(W, iters, beta, order):
    return (W.new_empty(W.shape), W.new_empty(_iterates_shape(W, iters)),
            W.new_empty(_grams_shape(W, iters)))


def _backward_fake(grad_Q, W, iterates, grams, iters, beta, order):
    return W.new_empty(W.shape)


def _setup_context(ctx, inputs, output):
    W, ctx.iters, ctx.beta, ctx.order = inputs
    _, iterates, grams = output
    ctx.save_for_backward(W, iterates, grams)
    ctx.mark_non_differentiable(iterates, grams)


def _make_backward(backward_op):
    def backward(ctx, grad_Q, grad_iterates, grad_grams):
        W, iterates, grams = ctx.saved_tensors
        grad_W = backward_op(grad_Q.contiguous(), W, iterates, grams, ctx.iters, ctx.beta,
                             ctx.order)
        return grad_W, None, None, None

    return backward


def _differentiable_backward(ctx, grad_Q, grad_iterates, grad_grams):
    W = ctx.saved_tensors[0]
    coefficients = bjorck_coefficients(ctx.beta, ctx.order)
    (grad_W,) = recomputed_vjp(lambda X: iterate(X, ctx.iters, coefficients), (W,),
                               ctx.needs_input_grad, grad_Q)
    return grad_W, None, None, None


def _triton_launchers():
    from ..triton import bjorck as kernels

    return kernels.bjorck, kernels.bjorck_backward


def _entry(op):
    """The reference's signature and result: Q alone, for W of either orientation, any floating
    dtype and its scale."""
    def bjorck(W, iters, beta, order, scale):
        tall = lambda X: op(X.contiguous(), iters, beta, order)[0]  # noqa: E731
        return through_tall(tall, bjorck_input(W, scale)).to(W.dtype)

    return bjorck


# {backend: entry with the reference's signature} for every kernel backend built here.
KERNELS = kernel_ops("bjorck", sys.modules[__name__])
