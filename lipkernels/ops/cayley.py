"""Registration of cayley: fake impls, autograd and the per-backend entry points.

Forward: (Q, X) = cayley(W) for a tall W (..., m, n), m >= n; X = (I + A)^{-1} (..., n, n) is
returned only for the backward (non-differentiable). Backward: grad_W = cayley_backward(grad_Q,
X, W), the closed form of `lipkernels.reference.cayley.CayleyFunction`; W itself is saved (an
input, so no extra memory) for its bottom block V. Wide matrices are transposed around the op
(`through_tall`), so autograd of the transposes handles them. Where a graph of grad_W is needed
(double backward) the reference closed form runs instead, with X recomputed from W so that it is
differentiable (`reference.cayley.cayley_backward`). Kernels: C++ (csrc/cpu/cayley.cpp,
csrc/cuda/cayley.cu) and Triton (lipkernels/triton/cayley.py).
"""

from __future__ import annotations

import sys

from .._checks import check_like, check_tensor
from .._conventions import CAYLEY_DTYPES, through_tall
from ..reference.cayley import cayley_backward
from ._registration import kernel_ops


def _check_tall(op: str, name: str, W):
    """W (..., m, n) with m >= n, of a dtype torch.linalg.solve takes: the tall orientation every
    cayley kernel works on."""
    check_tensor(op, name, W, min_rank=2, dtypes=CAYLEY_DTYPES)
    if W.shape[-2] < W.shape[-1]:
        raise ValueError(f"{op}: {name} (..., m, n) must have m >= n (transpose a wide matrix "
                         f"first); got shape {tuple(W.shape)}")


def check_inputs(W):
    """The arguments of the op cayley(W): a tall W. The functional API takes wide matrices too
    and transposes them."""
    _check_tall("cayley", "W", W)


def check_backward_inputs(grad_Q, X, W):
    """The arguments of cayley_backward(grad_Q, X, W): grad_Q like W, X (..., n, n) the forward's
    (I + A)^-1."""
    op = "cayley_backward"
    _check_tall(op, "W", W)
    check_like(op, "grad_Q", grad_Q, "W", W, W.shape)
    n = W.shape[-1]
    check_like(op, "X", X, "W", W, (*W.shape[:-2], n, n))


def _forward_fake(W):
    n = W.shape[-1]
    return W.new_empty(W.shape), W.new_empty((*W.shape[:-2], n, n))


def _backward_fake(grad_Q, X, W):
    return W.new_empty(W.shape)


def _setup_context(ctx, inputs, output):
    (W,) = inputs
    _, X = output
    ctx.save_for_backward(X, W)
    ctx.mark_non_differentiable(X)


def _make_backward(backward_op):
    def backward(ctx, grad_Q, grad_X):
        X, W = ctx.saved_tensors
        return backward_op(grad_Q.contiguous(), X, W)

    return backward


def _differentiable_backward(ctx, grad_Q, grad_X):
    _, W = ctx.saved_tensors
    return cayley_backward(grad_Q, W)


def _entry(op):
    """The reference's signature and result: Q alone for W of either orientation."""
    def cayley(W):
        return through_tall(lambda tall: op(tall.contiguous())[0], W)

    return cayley


def _triton_launchers():
    from ..triton import cayley as kernels

    return kernels.cayley, kernels.cayley_backward


# {backend: entry with the reference's signature} for every kernel backend built here.
KERNELS = kernel_ops("cayley", sys.modules[__name__])
