"""Registration of soc_exp: fake impls, autograd and the per-backend entry points.

Forward: (y, saved) = soc_exp(x, S, terms, grad_mode), the whole series in one op call; `saved`
is what the backward needs beyond x and S. Fast mode: [z_2], the second Horner iterate (empty
when terms == 1). Exact mode: the powers S^j x / j!, j = 1..terms - 2, where the kernel keeps
them, nothing where it recomputes them: the C++ CPU kernel keeps them (on the CPU memory is
plentiful, and recomputing cost n - 1 convolutions, up to 20% of fwd+bwd at small images); the
CUDA and Triton kernels recompute (their target is GPU peak memory). Backward: (grad_x, grad_S)
from soc_exp_backward(grad_y, S, start, powers, ...), start = x (exact) or z_2 (fast). Where a
graph of the gradients is needed (double backward), the exact mode differentiates the reference
series recomputed from x and S; the fast mode runs the reference's fast backward from z_2, whose
gradients raise `reference.soc_exp.FAST_DOUBLE_BACKWARD` if differentiated again. Kernels:
C++ (csrc/cpu, csrc/cuda) and Triton (lipkernels/triton).
"""

from __future__ import annotations

import sys

import torch

from .._checks import check_like, check_square_filter, check_tensor, check_terms
from .._conventions import GRAD_MODES
from ..reference.soc_exp import fast_backward
from ..reference.soc_exp import soc_exp as reference_soc_exp
from ._registration import kernel_ops, recomputed_vjp


def _check_series_args(op: str, x_name: str, x, S, terms, grad_mode):
    """x (B, C, H, W) (or its gradient, named `x_name`), S (C, C, k, k) like x, k odd, a term
    count and a gradient mode: what the forward and the backward op share."""
    check_tensor(op, x_name, x, rank=4, batch_dims=1)
    check_square_filter(op, "S", S)
    check_like(op, "S", S, x_name, x, (x.shape[1], x.shape[1], *S.shape[2:]))
    check_terms(op, "terms", terms)
    if grad_mode not in GRAD_MODES:
        raise ValueError(f"{op}: grad_mode must be one of {', '.join(GRAD_MODES)}; "
                         f"got {grad_mode!r}")


def check_inputs(x, S, terms, grad_mode):
    """The arguments of soc_exp(x, S, terms, grad_mode), as every entry checks them."""
    _check_series_args("soc_exp", "x", x, S, terms, grad_mode)


def check_backward_inputs(grad_y, S, start, powers, terms, grad_mode):
    """The arguments of the Triton soc_exp_backward(grad_y, S, start, powers, terms, grad_mode):
    start (x or z_2) shaped like grad_y unless terms == 1, and no powers (the Triton forward keeps
    none; its exact backward recomputes them)."""
    op = "soc_exp_backward"
    _check_series_args(op, "grad_y", grad_y, S, terms, grad_mode)
    if terms > 1:
        check_like(op, "start", start, "grad_y", grad_y, grad_y.shape)
    if len(powers):
        raise ValueError(f"{op}: powers must be empty (the Triton forward keeps no power); got "
                         f"{len(powers)}")

# Images with at least this many pixels are computed channels-last by the C++ CPU kernel, whose
# kept powers come out in that layout: kChannelsLastMinPixels in csrc/cpu/soc_exp.cpp.
CPU_CHANNELS_LAST_MIN_PIXELS = 256


def _kept_powers(x, terms, grad_mode, keeps_powers: bool) -> list:
    """Fakes of the exact forward's kept powers: terms - 2 of them where the kernel keeps them
    (in the C++ CPU kernel's layout), none otherwise."""
    if grad_mode != "exact" or not keeps_powers or x.device.type != "cpu":
        return []
    channels_last = x.shape[2] * x.shape[3] >= CPU_CHANNELS_LAST_MIN_PIXELS
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return [x.new_empty(x.shape).contiguous(memory_format=layout)
            for _ in range(max(terms - 2, 0))]


def _make_forward_fake(keeps_powers: bool):
    """The forward's fake for a kernel that keeps the exact powers on CPU tensors (the C++ op,
    whose CPU kernel does) or never (Triton)."""
    def forward_fake(x, S, terms, grad_mode):
        # The kernels compute on x.contiguous(): y (and z_2) are contiguous.
        if grad_mode == "fast":
            return x.new_empty(x.shape), [x.new_empty(x.shape)] if terms > 1 else []
        return x.new_empty(x.shape), _kept_powers(x, terms, grad_mode, keeps_powers)

    return forward_fake


_forward_fake = _make_forward_fake(keeps_powers=True)
_triton_forward_fake = _make_forward_fake(keeps_powers=False)


def _backward_fake(grad_y, S, start, powers, terms, grad_mode):
    return grad_y.new_empty(grad_y.shape), S.new_empty(S.shape)


def _setup_context(ctx, inputs, output):
    x, S, terms, grad_mode = inputs
    _, saved = output
    fast = grad_mode == "fast"
    # The fast backward starts from z_2 alone, so x is kept alive only in exact mode.
    start = saved[0] if fast and saved else x
    ctx.save_for_backward(S, start, *([] if fast else saved))
    ctx.terms, ctx.grad_mode = terms, grad_mode
    ctx.mark_non_differentiable(*saved)


def _make_backward(backward_op):
    def backward(ctx, grad_y, grad_saved):
        S, start, *powers = ctx.saved_tensors
        grad_x, grad_S = backward_op(grad_y.contiguous(), S, start, powers, ctx.terms,
                                     ctx.grad_mode)
        return grad_x, grad_S, None, None

    return backward


def _differentiable_backward(ctx, grad_y, grad_saved):
    S, start, *_ = ctx.saved_tensors
    if ctx.grad_mode == "fast" and ctx.terms > 1:  # start is z_2
        grads = fast_backward(grad_y, start, S, ctx.terms, ctx.needs_input_grad)
    else:
        grads = recomputed_vjp(lambda x, S: reference_soc_exp(x, S, ctx.terms), (start, S),
                               ctx.needs_input_grad, grad_y)
    return (*grads, None, None)


def _entry(op):
    """The reference's signature and result: y alone, `saved` being for the backward only."""
    def soc_exp(x, S, terms, grad_mode):
        return op(x.contiguous(), S.contiguous(), terms, grad_mode)[0]

    return soc_exp


def _triton_launchers():
    from ..triton import soc_exp as kernels

    return kernels.soc_exp, kernels.soc_exp_backward


# {backend: entry with the reference's signature} for every kernel backend built here.
KERNELS = kernel_ops("soc_exp", sys.modules[__name__])
