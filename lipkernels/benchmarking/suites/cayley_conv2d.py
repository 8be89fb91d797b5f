"""Suite cayley_conv2d: `lipkernels.cayley_conv2d`, the cached inference of
`lipkernels.nn.CayleyConv2d` and a plain FFT convolution as the yardstick of cached inference, at
the layer shapes of the Cayley paper's networks; peer orthogonium."""

from __future__ import annotations

import contextlib
import weakref

import torch

from lipkernels import reference
from lipkernels._conventions import working_dtype
from lipkernels._spectral import frequency_conv2d, frequency_responses

from ..core import (DTYPE, Activations, Case, Op, PeerAdapter, Suite, no_error, norm_ratio_error,
                    weighted_sum_loss)

# The activations (channels, height = width) of the Cayley paper's networks, 3x3 filters,
# circular padding: KWLarge's 32@32x32 and 64@16x16, ResNet9's 64@32x32, 128@16x16, 256@8x8 and
# 512@4x4; batch 128 and 256 in float32 and bfloat16 with --full, the first two layers at batch
# 128 in float32 by default. The data are `Activations`: x and the seeded filter, a
# CayleyConv2d's scaled filter at initialisation (where alpha = ||W||_F).
CAYLEY_ACTIVATIONS = ((32, 32), (64, 16), (64, 32), (128, 16), (256, 8), (512, 4))
DEFAULT_CAYLEY_ACTIVATIONS = ((32, 32), (64, 16))
CAYLEY_BATCHES, DEFAULT_CAYLEY_BATCHES = (128, 256), (128,)
CAYLEY_FULL_DTYPES = (torch.float32, torch.bfloat16)


def _cayley_conv2d_eval():
    """Cached inference of a CayleyConv2d holding the case's filter (no bias, alpha = ||W||_F, so
    its scaled filter is the filter), as an inference loop inside one `lipkernels.nn.cached()`
    block runs it: the untimed first call computes the per-frequency transforms; every later
    call is one rfft2, one batched product and one irfft2. The closure keeps its block open
    while it lives."""
    from lipkernels.nn import CayleyConv2d, cached

    layer, block = None, contextlib.ExitStack()

    def run(x, weight):
        nonlocal layer
        if layer is None:
            out_channels, in_channels, k, _ = weight.shape
            layer = CayleyConv2d(in_channels, out_channels, k, bias=False, device=weight.device,
                                 dtype=weight.dtype).eval()
            with torch.no_grad():
                layer.weight.copy_(weight)
                layer.alpha.copy_(torch.linalg.vector_norm(weight))
            block.enter_context(cached())
            weakref.finalize(run, block.close)
        with torch.no_grad():
            return layer(x)

    return run


def _seed_cayley_eval():
    """The seed code's inference: no cache, the transforms recomputed on every call."""
    def run(x, weight):
        with torch.no_grad():
            return reference.cayley_conv2d(x, weight)

    return run


def _fft_conv2d():
    """A plain circular FFT convolution, its filter spectrum computed in the untimed first call:
    rfft2, one batched product per frequency, irfft2 (what cached Cayley inference should cost)."""
    responses = {}

    def run(x, weight):
        size = tuple(x.shape[-2:])
        with torch.no_grad():
            if size not in responses:
                responses[size] = frequency_responses(weight, size, working_dtype(x.dtype))
            return frequency_conv2d(x, responses[size])

    return run


def _orthogonium_cayley_conv2d():
    """orthogonium 0.0.4 `legacy.cayley_ortho_conv.Cayley` (the seed's CayleyConv), called on the
    case's filter through torch.func.functional_call, with alpha = ||rfft2 of the filter||_F (its
    own normalisation), so that it computes cayley_conv2d(x, weight). Its forward assumes square
    images and builds its phase table at the first call (untimed)."""
    from orthogonium.legacy.cayley_ortho_conv import Cayley

    layer = None

    def run(x, weight):
        nonlocal layer
        out_channels, in_channels, k, _ = weight.shape
        if layer is None:
            layer = Cayley(in_channels, out_channels, k, bias=False).to(x.device)
        size = x.shape[-1]
        alpha = torch.fft.rfft2(weight.detach().float(), (size, size)).norm()
        return torch.func.functional_call(layer, {"weight": weight, "alpha": alpha}, (x,))

    return run


def _layer(fn, x_and_weight, dy, case):
    return fn(*x_and_weight)


CAYLEY_CONV2D = Op(
    "cayley_conv2d", _layer, norm_ratio_error, loss=weighted_sum_loss,
    # Its Cayley layer runs torch.fft on the input's dtype, which has no bfloat16 kernels.
    peers={"orthogonium": PeerAdapter(_orthogonium_cayley_conv2d, (torch.float32,))})
# The reference row recomputes the transforms on every call (the seed's uncached inference).
CAYLEY_CONV2D_EVAL = Op(
    "cayley_conv2d_eval", _layer, norm_ratio_error, loss=weighted_sum_loss,
    workload=_cayley_conv2d_eval, reference_row=_seed_cayley_eval)
# Not an orthogonal map: no ortho_err. A reference row only (lipkernels has no such op).
FFT_CONV2D = Op("fft_conv2d", _layer, no_error, reference_row=_fft_conv2d)

# Per op, its modes.
MODES = ((CAYLEY_CONV2D, ("fwd", "fwd+bwd")), (CAYLEY_CONV2D_EVAL, ("eval",)),
         (FFT_CONV2D, ("eval",)))


def _cases(full: bool) -> list[Case]:
    layers = CAYLEY_ACTIVATIONS if full else DEFAULT_CAYLEY_ACTIVATIONS
    data = [Activations(batch, *layer)
            for batch in (CAYLEY_BATCHES if full else DEFAULT_CAYLEY_BATCHES) for layer in layers]
    # Each layer's ops side by side (unlike the other suites' op-major order).
    return [Case(op, d, mode, dtype=dtype) for d in data
            for dtype in (CAYLEY_FULL_DTYPES if full else (DTYPE,))
            for op, modes in MODES for mode in modes]


SUITE = Suite(
    "cayley_conv2d",
    tuple(op for op, _ in MODES),
    _cases,
    (
        "- shapes: `B{batch}-C{C}-H{H}-W{W}-k3`: x of that shape (seeded standard normal) and the "
        "seeded C x C x 3 x 3 filter of the conv suites, circular padding; the Cayley paper's "
        "layers 32@32x32, 64@16x16 (KWLarge) and 64@32x32, 128@16x16, 256@8x8, 512@4x4 "
        "(ResNet9), at batch 128 and 256 in float32 and bfloat16 with --full (default: the first "
        "two at batch 128, float32). cayley_conv2d fwd: y = cayley_conv2d(x, weight); fwd+bwd: y "
        "and the gradients w.r.t. x and the filter of sum(y * fixed seeded random weights). "
        "cayley_conv2d_eval (mode eval): inference of a CayleyConv2d holding the filter, no "
        "gradient; the reference row recomputes the transforms on every call as the seed code "
        "does, the backends' rows use the layer's cache. fft_conv2d (mode eval, reference only): "
        "a plain circular FFT convolution with the filter's spectrum precomputed, the yardstick "
        "of cached inference. Peer: orthogonium 0.0.4's legacy Cayley layer (the seed's "
        "CayleyConv) on the same filter, float32 only",
        "- ortho_err: max over the batch of | ||y_b|| / ||x_b|| - 1 | (float64 norms; the map "
        "is orthogonal, so this is rounding); none for fft_conv2d"),
    "cayley_conv2d on the Cayley paper's six layers at batch 128 and 256 in float32 and "
    "bfloat16",
    "- reference-compile: not run (the reference's batched solve and FFTs are library "
    "calls that inductor does not fuse)")
