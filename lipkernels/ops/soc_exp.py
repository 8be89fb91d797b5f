"""Registration of soc_exp: fake impls, autograd and the per-backend entry points.

Forward: (y, saved) = soc_exp(x, S, terms, grad_mode), the whole series in one op call; `saved`
is the second Horner iterate z_2 in fast mode (terms > 1) and a 0-element tensor otherwise, so
that no per-term activation is kept for the backward. Backward: (grad_x, grad_S) from
soc_exp_backward, which starts the weight gradients from x (exact mode, recomputing its powers)
or from z_2 (fast mode). Kernels: C++ (csrc/cpu, csrc/cuda) and Triton (lipkernels/triton).
"""

from __future__ import annotations

from typing import Callable

import torch

from ._registration import kernel_ops


def _keeps_z2(terms, grad_mode):
    return grad_mode == "fast" and terms > 1


def _forward_fake(x, S, terms, grad_mode):
    # The kernel computes on x.contiguous(): its outputs are contiguous.
    saved = x.new_empty(x.shape) if _keeps_z2(terms, grad_mode) else x.new_empty(0)
    return x.new_empty(x.shape), saved


def _backward_fake(grad_y, S, start, terms, grad_mode):
    return grad_y.new_empty(grad_y.shape), S.new_empty(S.shape)


def _setup_context(ctx, inputs, output):
    x, S, terms, grad_mode = inputs
    _, saved = output
    # The fast backward starts from z_2 alone, so x is kept alive only in exact mode.
    ctx.save_for_backward(S, saved if _keeps_z2(terms, grad_mode) else x)
    ctx.terms, ctx.grad_mode = terms, grad_mode
    ctx.mark_non_differentiable(saved)


def _make_backward(backward_op):
    def backward(ctx, grad_y, grad_saved):
        S, start = ctx.saved_tensors
        grad_x, grad_S = backward_op(grad_y.contiguous(), S, start, ctx.terms, ctx.grad_mode)
        return grad_x, grad_S, None, None

    return backward


def _output_only(op):
    """The functional API's signature: y alone, `saved` being for the backward only."""
    def soc_exp(x, S, terms, grad_mode):
        return op(x, S, terms, grad_mode)[0]

    return soc_exp


def _triton_launchers():
    from ..triton import soc_exp as kernels

    return kernels.soc_exp, kernels.soc_exp_backward


# {backend: forward callable} for every kernel backend built here (the reference is not an op).
KERNELS: dict[str, Callable] = {
    backend: _output_only(op)
    for backend, op in kernel_ops(
        "soc_exp",
        _triton_launchers,
        ("(Tensor x, Tensor S, int terms, str grad_mode) -> (Tensor, Tensor)",
         "(Tensor grad_y, Tensor S, Tensor start, int terms, str grad_mode) -> (Tensor, Tensor)"),
        forward_fake=_forward_fake,
        backward_fake=_backward_fake,
        setup_context=_setup_context,
        make_backward=_make_backward,
    ).items()
}
