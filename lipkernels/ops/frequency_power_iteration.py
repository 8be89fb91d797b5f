"""Registration of frequency_power_iteration: fake impls, autograd and the per-backend entries.

Forward: (sigma (F,), u (F, 2 C_in), v (F, 2 C_out)), the power iteration at every rfft2
frequency of the circular conv with a filter (C_out, C_in, k_h, k_w) on a height x width image
(lipkernels.reference.frequency_power_iteration). Backward: only sigma is differentiable,
d sigma_f / d W[o, i, k] = Re(conj(v_f[o]) u_f[i] e^(i theta_fk)) with u and v constant, one
complex product over the frequencies per tap (`reference.frequency_power_iteration.
sigma_gradient`, torch ops: differentiable, so double backward needs nothing else).

Two designs behind one op (docs/performance.md). The Triton kernel applies the responses from
the filter's taps each half step and never forms them: on a GPU the responses of wide filters
(285 MB at 256 channels on 32 x 32) would stream from HBM every iteration. The cpp and cuda
entries form the real-form responses once by an FFT and run that backend's `power_iteration`
on them: applying formed responses costs k_h k_w / 4 times fewer multiply-adds than the taps,
which wins where bandwidth is not the limit (the CPU).
"""

from __future__ import annotations

import sys

import torch

from .._checks import check_iters, check_like, check_tensor, check_weight_shape
from .._spectral import realified_responses, rfft2_frequencies
from ..reference.frequency_power_iteration import sigma_gradient
from ._registration import kernel_ops
from .power_iteration import KERNELS as POWER_ITERATION_KERNELS

# The dtypes of the op's tensors: conv_spectral_norm computes half-precision filters in float32.
_DTYPES = (torch.float32, torch.float64)


def _check_image(op: str, kernel_size, height, width):
    for name, size, k in (("height", height, kernel_size[0]), ("width", width, kernel_size[1])):
        if isinstance(size, bool) or not isinstance(size, int) or size < k:
            raise ValueError(f"{op}: {name} must be an int of at least the filter's size {k} "
                             f"(the filter must fit the image); got {size!r}")


def check_inputs(weight, u, iters, height, width):
    """The arguments of frequency_power_iteration(weight, u, iters, height, width)."""
    op = "frequency_power_iteration"
    check_tensor(op, "weight", weight, rank=4, dtypes=_DTYPES)
    _check_image(op, weight.shape[2:], height, width)
    check_like(op, "u", u, "weight", weight,
               (rfft2_frequencies((height, width)), 2 * weight.shape[1]))
    check_iters(op, iters)


def check_backward_inputs(grad_sigma, u, v, weight_shape, height, width):
    """The arguments of frequency_power_iteration_backward(grad_sigma (F,), u (F, 2 C_in),
    v (F, 2 C_out), weight_shape, height, width)."""
    op = "frequency_power_iteration_backward"
    check_weight_shape(op, weight_shape)
    _check_image(op, weight_shape[2:], height, width)
    check_tensor(op, "grad_sigma", grad_sigma, rank=1, dtypes=_DTYPES)
    frequencies = rfft2_frequencies((height, width))
    check_like(op, "grad_sigma", grad_sigma, "grad_sigma", grad_sigma, (frequencies,))
    check_like(op, "u", u, "grad_sigma", grad_sigma, (frequencies, 2 * weight_shape[1]))
    check_like(op, "v", v, "grad_sigma", grad_sigma, (frequencies, 2 * weight_shape[0]))


def _forward_fake(weight, u, iters, height, width):
    frequencies = rfft2_frequencies((height, width))
    return (weight.new_empty(frequencies), torch.empty_like(u),
            weight.new_empty((frequencies, 2 * weight.shape[0])))


def _backward_fake(grad_sigma, u, v, weight_shape, height, width):
    return u.new_empty(weight_shape)


def _setup_context(ctx, inputs, output):
    weight, _, _, height, width = inputs
    _, u, v = output
    ctx.save_for_backward(u, v)
    ctx.mark_non_differentiable(u, v)
    ctx.arguments = list(weight.shape), height, width


def _make_backward(backward_op):
    def backward(ctx, grad_sigma, grad_u, grad_v):
        u, v = ctx.saved_tensors
        return backward_op(grad_sigma.contiguous(), u, v, *ctx.arguments), None, None, None, None

    return backward


def _differentiable_backward(ctx, grad_sigma, grad_u, grad_v):
    u, v = ctx.saved_tensors
    return sigma_gradient(grad_sigma, u, v, *ctx.arguments), None, None, None, None


def _triton_launchers():
    from ..triton import frequency_power_iteration as kernels

    return kernels.frequency_power_iteration, sigma_gradient


def _entry(op):
    def frequency_power_iteration(weight, u, iters, height, width):
        return op(weight.contiguous(), u.contiguous(), iters, height, width)

    return frequency_power_iteration


def _on_formed_responses(power_iteration):
    """The entry of a backend that forms the real-form responses and runs its power_iteration
    on them (the reference's arithmetic, that backend's kernel)."""
    def frequency_power_iteration(weight, u, iters, height, width):
        return power_iteration(realified_responses(weight, (height, width)), u, iters)

    return frequency_power_iteration


# {backend: entry with the reference's signature}: the Triton kernel where Triton is built, the
# responses on cpp's and cuda's power_iteration.
KERNELS = {**{backend: _on_formed_responses(entry)
              for backend, entry in POWER_ITERATION_KERNELS.items() if backend != "triton"},
           **kernel_ops("frequency_power_iteration", sys.modules[__name__])}
