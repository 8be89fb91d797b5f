"""Registration of cayley_conv2d's frequency-domain core: fake impls, autograd, backends.

Forward: (output, inverse, solved) = cayley_frequency_product(response, spectrum): response
(F, C_out, C_in) and spectrum (F, C_in, B) complex; output_f = cayley(response_f) spectrum_f
(F, C_out, B); inverse (F, n, n), n = min(C_in, C_out), the per-frequency X = (I + A)^{-1}, and
solved (F, n, B), the spectrum solved through it (X S, or X^T (S_top - V^T S_bot) for a wide
response), returned only for the backward (non-differentiable). Backward: (grad_response,
grad_spectrum) = cayley_frequency_product_backward(grad_output, response, spectrum, inverse,
solved), which needs no n x n x n product: grad_Q = G S^H has rank B, so the Cayley backward
factors through solved and one n x B product with X^H (csrc/cpu/cayley_conv2d.cpp). The saved
solved spectrum is one spectrum's size, where the reference's graph keeps Q. The FFTs around the
op are torch.fft calls with their own autograd (`lipkernels._spectral.spectral_conv2d`). Where
a graph of the gradients is needed (double backward) they come from the reference core
recomputed from response and spectrum (`reference.cayley_conv2d.cayley_frequencies`). Kernels: C++
(csrc/cpu/cayley_conv2d.cpp, csrc/cuda/cayley.cu) and Triton (lipkernels/triton/cayley_conv2d.py).
"""

from __future__ import annotations

import sys

import torch

from .._spectral import spectral_conv2d
from ..reference.cayley_conv2d import cayley_frequencies
from ._registration import kernel_ops, recomputed_vjp


def check_inputs(response, spectrum):
    """The arguments of cayley_frequency_product(response, spectrum), as every entry checks them."""
    _check_frequency_args("cayley_frequency_product", response, spectrum)


def check_backward_inputs(grad_output, response, spectrum, inverse, solved):
    """The arguments of cayley_frequency_product_backward, as every entry checks them."""
    op = "cayley_frequency_product_backward"
    _check_frequency_args(op, response, spectrum)
    frequencies, c_out, c_in = response.shape
    n, batch = min(c_in, c_out), spectrum.shape[2]
    for name, tensor, shape, what in (
            ("grad_output", grad_output, (frequencies, c_out, batch),
             "have shape (F, C_out, B) ="),
            ("inverse", inverse, (frequencies, n, n), "be the forward's (I + A)^{-1} of shape"),
            ("solved", solved, (frequencies, n, batch),
             "be the forward's solved spectrum of shape")):
        if (tensor.shape != shape or tensor.dtype != response.dtype
                or tensor.device != response.device):
            raise ValueError(f"{op}: {name} must {what} {shape} and response's dtype and device, "
                             f"got {tuple(tensor.shape)} ({tensor.dtype})")


def _check_frequency_args(op: str, response, spectrum):
    """response (F, C_out, C_in) complex, non-empty, and spectrum (F, C_in, B) like it."""
    if response.dim() != 3 or response.numel() == 0:
        raise ValueError(f"{op}: response must be a non-empty (F, C_out, C_in) tensor, got "
                         f"{tuple(response.shape)}")
    if response.dtype not in (torch.complex64, torch.complex128):
        raise TypeError(f"{op}: response must be complex64 or complex128, got {response.dtype}")
    frequencies, _, in_channels = response.shape
    if spectrum.dim() != 3 or spectrum.shape[:2] != (frequencies, in_channels) \
            or spectrum.shape[2] < 1:
        raise ValueError(f"{op}: spectrum must have shape (F, C_in, B) = ({frequencies}, "
                         f"{in_channels}, B) to match response {tuple(response.shape)}, got "
                         f"{tuple(spectrum.shape)}")
    if spectrum.dtype != response.dtype or spectrum.device != response.device:
        raise ValueError(f"{op}: spectrum must have the dtype and device of response "
                         f"({response.dtype}, {response.device}), got {spectrum.dtype}, "
                         f"{spectrum.device}")


def _forward_fake(response, spectrum):
    frequencies, out_channels, in_channels = response.shape
    n = min(out_channels, in_channels)
    return (spectrum.new_empty((frequencies, out_channels, spectrum.shape[2])),
            response.new_empty((frequencies, n, n)),
            spectrum.new_empty((frequencies, n, spectrum.shape[2])))


def _backward_fake(grad_output, response, spectrum, inverse, solved):
    return response.new_empty(response.shape), spectrum.new_empty(spectrum.shape)


def _setup_context(ctx, inputs, output):
    response, spectrum = inputs
    _, inverse, solved = output
    ctx.save_for_backward(response, spectrum, inverse, solved)
    ctx.mark_non_differentiable(inverse, solved)


def _make_backward(backward_op):
    def backward(ctx, grad_output, grad_inverse, grad_solved):
        return backward_op(grad_output.contiguous(), *ctx.saved_tensors)

    return backward


def _differentiable_backward(ctx, grad_output, grad_inverse, grad_solved):
    response, spectrum = ctx.saved_tensors[:2]
    return recomputed_vjp(cayley_frequencies, (response, spectrum), ctx.needs_input_grad,
                          grad_output)


def _entry(op):
    """The reference's signature and result, cayley_conv2d(x, weight) -> y: the FFTs around the
    op's per-frequency core (output alone, `inverse` and `solved` being for the backward
    only)."""
    def frequency_core(response, spectrum):
        return op(response.contiguous(), spectrum.contiguous())[0]

    def cayley_conv2d(x, weight):
        return spectral_conv2d(x, weight, frequency_core)

    return cayley_conv2d


def _triton_launchers():
    from ..triton import cayley_conv2d as kernels

    return kernels.cayley_frequency_product, kernels.cayley_frequency_product_backward


# {backend: entry with the public op's (and its reference's) signature} for every kernel backend
# built here.
KERNELS = kernel_ops("cayley_frequency_product", sys.modules[__name__])
