"""Pure-PyTorch skew-orthogonal convolution (SOC): the oracle for every soc_exp kernel.

Singla & Feizi, "Skew Orthogonal Convolutions", ICML 2021: for a square filter W (C, C, k, k),
k odd, the zero-padded "same" convolution with S = (W - flipT(W)) / 2 has a skew-symmetric
Jacobian A, so exp(A) is orthogonal; it is applied to x by the truncated Taylor series
    y = sum_{i=0}^{terms-1} S^{*i}(x) / i!,
S^{*i} being i successive same convolutions with S.

The exact mode follows the ICML 2021 code: the running term cur = conv(cur, S) / i, z += cur,
differentiated by plain autograd, which keeps every term alive for the backward pass.

The fast mode follows Singla, Singla & Feizi, "Improved techniques for deterministic l2
robustness", NeurIPS 2022 (`SOC_Function`): Horner evaluation, only the second Horner iterate
z_2 and S saved, and an approximate weight gradient; see `FastSOCExp`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._autograd import forward_mode, no_double_backward


# The error of differentiating the fast gradient again (shared by the reference and the kernels).
FAST_DOUBLE_BACKWARD = (
    "lipkernels.soc_exp: grad_mode='fast' does not support double backward (create_graph=True, "
    "gradient penalties, torch.func.grad of a gradient, Hessians): its weight gradient is an "
    "approximation, whose derivative is not the second derivative of the series; use "
    "grad_mode='exact'")


def flip_transpose(weight: torch.Tensor) -> torch.Tensor:
    """flipT(W) = W.transpose(0, 1).flip(2, 3) for a (C_out, C_in, k, k) filter.

    With zero "same" padding and odd k, conv(., flipT(W)) is the adjoint of conv(., W):
    <conv(x, W), y> = <x, conv(y, flipT(W))>.
    """
    return weight.transpose(0, 1).flip(2, 3)


def skew(weight: torch.Tensor) -> torch.Tensor:
    """S = (W - flipT(W)) / 2 for a square (C, C, k, k) filter, k odd.

    The Jacobian of the zero-padded same conv with S is (A - A^T) / 2, A that of W: skew-symmetric.
    """
    return 0.5 * (weight - flip_transpose(weight))


def _conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, weight, padding=weight.shape[-1] // 2)


def soc_exp(x: torch.Tensor, S: torch.Tensor, terms: int, grad_mode: str = "exact") -> torch.Tensor:
    """y = sum_{i=0}^{terms-1} S^{*i}(x) / i! for x (B, C, H, W) and S (C, C, k, k), k odd.

    `terms` counts the identity (terms=6: powers 0..5); terms=1 returns x itself. `grad_mode`
    "exact" differentiates the truncated series; "fast" uses the NeurIPS 2022 gradient
    (`FastSOCExp`), exact for x and approximate for S.
    """
    # terms=1 is the identity: there is no S term whose gradient could be approximated. Under
    # forward-mode AD the exact form runs: FastSOCExp has no jvp (see its docstring).
    if grad_mode == "fast" and terms > 1 and not forward_mode(x, S):
        return FastSOCExp.apply(x, S, terms)
    y = term = x
    for i in range(1, terms):
        term = _conv(term, S) / i
        y = y + term
    return y


def _second_horner_iterate(x: torch.Tensor, S: torch.Tensor, terms: int) -> torch.Tensor:
    """z_2 = sum_{j=0}^{n-1} S^{*j}(x) / (j+1)!, n = terms - 1, by Horner: z = x; for i = n..2:
    z = x + conv(z, S) / i. Then x + conv(z_2, S) is the series of `soc_exp`."""
    z = x
    for i in range(terms - 1, 1, -1):
        z = x + _conv(z, S) / i
    return z


class _FastSOCExpFunction(torch.autograd.Function):
    """The autograd.Function of `FastSOCExp`: forward(x, S, terms) returns (y, z_2), z_2 a
    second, non-differentiable output because torch.func requires the `setup_context` form,
    whose forward has no other way to hand an intermediate to the backward. Its math, its
    backward and its transforms are documented on `FastSOCExp`."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, S, terms):
        z_2 = _second_horner_iterate(x, S, terms)
        return x + _conv(z_2, S), z_2

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, S, terms = inputs
        _, z_2 = output
        ctx.mark_non_differentiable(z_2)
        ctx.save_for_backward(z_2, S)
        ctx.terms = terms

    @staticmethod
    def backward(ctx, grad_y, grad_z_2):
        z_2, S = ctx.saved_tensors
        return (*fast_backward(grad_y, z_2, S, ctx.terms, ctx.needs_input_grad), None)


class FastSOCExp:
    """soc_exp with the NeurIPS 2022 "fast" gradient (Singla, Singla & Feizi 2022, SOC_Function).

    Write n = terms - 1, P(S) = sum_{j=0}^{n-1} S^j / (j+1)!, S^T for the conv with flipT(S) and
    W(u, g) for the weight gradient of conv(u, .) against the output gradient g. Forward:
    z_2 = P(S) x by Horner, y = x + S z_2 (the same series as the exact mode); only z_2 and S are
    saved, one activation instead of n. Backward, from the output gradient g:
        g_2    = P(S^T) g                        (Horner with flipT(S))
        grad_x = g + S^T g_2 = sum_{m=0}^{n} (S^T)^m g / m!
        grad_S = W(z_2, g_2) = sum_{a,b=0}^{n-1} W(S^b x, (S^T)^a g) / ((a+1)! (b+1)!)
    grad_x is exact for any S: it is the transpose series. (The paper's code uses -S for S^T,
    equal only for skew S; flipT(S) makes it exact for every S.) grad_S is the approximation:
    the exact gradient of the truncated series is
        sum_{a+b<=n-1} W(S^b x, (S^T)^a g) / (a+b+1)!,
    so the two agree on every term with a = 0 or b = 0 (hence to first order in S). The first
    term that differs is W(S x, S^T g), weighted 1/4 instead of 1/6 (or 0 when n < 3), and the
    fast form also keeps the a+b > n-1 terms. Untruncated, the exact gradient is
        int_0^1 W(e^{(1-t)S} x, e^{t S^T} g) dt,  and the fast one
        int_0^1 int_0^1 W(e^{t S} x, e^{s S^T} g) dt ds,
    since P(S) = (e^S - I) / S = int_0^1 e^{tS} dt: the input side z_2 and the gradient side g_2
    are averaged independently instead of with s = 1 - t. The usual summary, "z_2 is treated as
    a constant", means the S-derivative through z_2 is dropped: W(z_2, g) alone would give only
    the a = 0 terms; running g back through the adjoint Horner loop to g_2 restores the a >= 1
    terms, with the decoupled weights above. The relative error of grad_S is O(||S||^2).

    `FastSOCExp.apply(x, S, terms)` returns y, like an autograd.Function's apply; the
    autograd.Function proper, `_FastSOCExpFunction`, returns (y, z_2). Transforms: vmap is
    generated from the batched torch ops; a single torch.func.grad / vjp / jacrev gives the fast
    gradient. Double backward
    raises `FAST_DOUBLE_BACKWARD` when attempted: the derivative of the approximate gradient is
    not a second derivative of the series. There is no `jvp` (torch.compile cannot trace an
    autograd.Function that defines one): under forward-mode AD (torch.func.jvp, jacfwd,
    forward_ad dual tensors) `soc_exp` runs the exact series instead, which is this forward, so
    its tangents, and any gradient taken inside that forward-mode pass, are exact.
    """

    @staticmethod
    def apply(x: torch.Tensor, S: torch.Tensor, terms: int) -> torch.Tensor:
        return _FastSOCExpFunction.apply(x, S, terms)[0]


def fast_backward(grad_y: torch.Tensor, z_2: torch.Tensor, S: torch.Tensor, terms: int,
                  needs_input_grad) -> tuple:
    """(grad_x, grad_S) of `FastSOCExp` from the output gradient, the second Horner iterate z_2
    and S (None where `needs_input_grad` is false); differentiating them again raises
    `FAST_DOUBLE_BACKWARD`. Also the kernels' fast backward where a graph of it is asked for."""
    with torch.no_grad():
        adjoint = flip_transpose(S)
        g_2 = _second_horner_iterate(grad_y, adjoint, terms)
        grad_x = grad_y + _conv(g_2, adjoint) if needs_input_grad[0] else None
        grad_S = None
        if needs_input_grad[1]:
            grad_S = torch.nn.grad.conv2d_weight(z_2, S.shape, g_2, padding=S.shape[-1] // 2)
    return no_double_backward(FAST_DOUBLE_BACKWARD, (grad_x, grad_S), (grad_y, z_2, S))
