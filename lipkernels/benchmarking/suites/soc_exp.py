"""Suite soc_exp: `lipkernels.soc_exp`, the skew-orthogonal convolution, on the SOC LipConvNet's
activations, with the exact and the fast gradient."""

from __future__ import annotations

import functools

import torch

import lipkernels
from lipkernels import reference

from ..core import (DTYPE, Activations, Filter, Op, Suite, grid, norm_ratio_error,
                    weighted_sum_loss)

# The activations (channels, height = width) of the SOC LipConvNet's stride-1 layers, 3x3
# filters; the default grid keeps the first and the third layer at batch 128 (about a minute on a
# 2-core CPU). Terms: 6 in training, 15 at evaluation. Modes: fwd, fwd+bwd with the exact
# gradient, and fwd+bwd with the NeurIPS 2022 fast gradient, whose rows carry the suffix "-fast" in
# their shape (docs/design.md §5 keeps the mode strings to fwd, bwd, fwd+bwd and eval).
SOC_ACTIVATIONS = ((32, 32), (64, 16), (128, 8), (256, 4), (512, 2))
DEFAULT_SOC_ACTIVATIONS = ((32, 32), (128, 8))
# --full adds the strided layers, which see 4x the channels at half the size after the pixel
# unshuffle: (channels, size, k), 1x1 in the last block.
SOC_STRIDED_ACTIVATIONS = ((128, 16, 3), (256, 8, 3), (512, 4, 3), (1024, 2, 3), (2048, 1, 1))
SOC_BATCHES, DEFAULT_SOC_BATCHES = (128, 256), (128,)
SOC_TERMS = (6, 15)
SOC_MODES = (("fwd", "exact"), ("fwd+bwd", "exact"), ("fwd+bwd", "fast"))  # (mode, grad_mode)
# --full adds bfloat16 rows (the precision SOC networks train in under mixed precision).
SOC_FULL_DTYPES = (torch.float32, torch.bfloat16)
# reference-compile (every term count and mode): with --full, on the first LipConvNet layer at
# batch 128.
COMPILED_LABEL = "B128-C32-H32-W32-k3"


class SkewActivations(Activations):
    """Seeded inputs of soc_exp: `Activations`' x, and the skew filter
    S = skew(W) / (fantastic_four(skew(W), 50) / k) of the seeded k x k filter W of `Filter`, so
    that S's Fantastic Four bound without its sqrt(k k) factor is 1, as SOCConv2d scales it."""

    def filter_tensor(self) -> torch.Tensor:
        return _soc_filter(self.filter)


@functools.cache
def _soc_filter(data: Filter) -> torch.Tensor:
    weight, vectors = data.inputs()
    skew = reference.skew(weight)
    bound = lipkernels.fantastic_four(skew, 50, vectors)[0]
    return (skew / (bound / data.bound_scale)).contiguous()


def _activations(full: bool) -> list[SkewActivations]:
    layers = ([(c, h, 3) for c, h in SOC_ACTIVATIONS] + list(SOC_STRIDED_ACTIVATIONS) if full
              else [(c, h, 3) for c, h in DEFAULT_SOC_ACTIVATIONS])
    return [SkewActivations(batch, *layer)
            for batch in (SOC_BATCHES if full else DEFAULT_SOC_BATCHES) for layer in layers]


def _hand_fused_soc_exp():
    """The reference series as a user would speed it up by hand: each term's filter divided by
    i once (S / i, C^2 k^2 values, instead of a division pass over the activations) and the sum
    accumulated in place, 2 n launches instead of 3 n; autograd gives the exact gradient."""
    def soc_exp(x, S, terms, grad_mode):
        padding = S.shape[-1] // 2
        y, term = x.clone(), x
        for i in range(1, terms):
            term = torch.nn.functional.conv2d(term, S / i, padding=padding)
            y.add_(term)
        return y

    return soc_exp


SOC_EXP = Op(
    "soc_exp",
    lambda fn, x_and_s, dy, case: fn(*x_and_s, case.terms, case.grad_mode),
    norm_ratio_error,
    loss=weighted_sum_loss,
    compiled_on=lambda case, full: full and case.data.label == COMPILED_LABEL,
    hand_fused=_hand_fused_soc_exp,
    graphs=True)

SUITE = Suite(
    "soc_exp",
    (SOC_EXP,),
    lambda full: grid((SOC_EXP,), _activations(full), SOC_FULL_DTYPES if full else (DTYPE,),
                      [{"terms": terms, "mode": mode, "grad_mode": grad_mode}
                       for terms in SOC_TERMS for mode, grad_mode in SOC_MODES]),
    (
        "- shapes: `B{batch}-C{C}-H{H}-W{W}-k{k}-T{terms}` x of that shape (seeded standard "
        "normal) and S = skew(W) / (fantastic_four(skew(W), 50 iterations) / k) for a seeded k x k "
        "filter W, so S's Fantastic Four bound without the sqrt(k k) factor is 1 (as SOCConv2d "
        "scales it); the LipConvNet stride-1 activations 32@32x32, 64@16x16, 128@8x8, 256@4x4, "
        "512@2x2 and, with --full, the strided layers after the pixel unshuffle 128@16x16, "
        "256@8x8, 512@4x4, 1024@2x2 (3x3) and 2048@1x1 (1x1), at batch 128 and 256 in float32 "
        "and bfloat16 (default: 32@32x32 and 128@8x8 at batch 128, float32); 6 (training) "
        "and 15 (evaluation) terms. Mode fwd: y = soc_exp(x, S, terms); fwd+bwd: y and the "
        "gradients w.r.t. x and S of sum(y * fixed seeded random weights), exact gradient "
        "(grad_mode=\"exact\"); shapes ending in `-fast`: the same fwd+bwd with the NeurIPS 2022 "
        "fast gradient (grad_mode=\"fast\"), marked in the shape because docs/design.md §5 fixes the "
        "mode strings (its forward is the exact mode's, so it has no fwd row)",
        "- ortho_err: max over the batch of | ||y_b|| / ||x_b|| - 1 | of the first call's output "
        "(float64 norms): the series' truncation error plus rounding, since exp of a "
        "skew-symmetric operator preserves norms",
        "- reference-fused: the reference series fused as a user would by hand, each term's "
        "filter divided by i once and the sum accumulated in place (2 launches a term instead "
        "of 3), differentiated by autograd: fwd and exact fwd+bwd rows only; on a GPU replayed "
        "from a CUDA graph, as is reference-graph (the reference itself)"),
    "soc_exp on every LipConvNet layer, strided ones included, at batch 128 and 256 in float32 "
    "and bfloat16",
    # reference-compile runs only with --full: the line also says why it is absent.
    "- reference-compile: `torch.compile(reference, dynamic=True)`, compile time excluded "
    "(untimed first call); only with --full and only on B128-C32-H32-W32-k3 (every term "
    "count and mode), because inductor unrolls the term loop and each graph takes long to "
    "compile on a 2-core CPU",
    compile_note_always=True)
