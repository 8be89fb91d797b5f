"""Pure-PyTorch Cayley transform of a batch of matrices: the oracle for every cayley kernel.

Trockman & Kolter, "Orthogonalizing Convolutional Layers with the Cayley Transform", ICLR 2021
(`layers.py: cayley` of locuslab/orthogonal-convolutions). For W (..., m, n), real or complex,
m >= n (a wide W, m < n, is transposed with a plain transpose, processed and transposed back,
as the seed code does):
    U = W[..., :n, :]  (n x n),   V = W[..., n:, :]  ((m - n) x n),
    A = U - U^H + V^H V,          M = I + A,
    Q = [ M^{-1} (I - A) ; -2 V M^{-1} ]            (m x n, Q^H Q = I).
M's Hermitian part is I + V^H V >= I, so M is invertible with ||M^{-1}|| <= 1 and its LU needs no
pivoting for stability.

Two implementations of the same math live here:
* `cayley_plain`: a direct transcription differentiated by plain autograd (the oracle of the
  closed-form backward below).
* `CayleyFunction`: the same forward with the closed-form backward (`cayley_backward`), saving
  only X = M^{-1} beyond the input W, with a generated vmap rule and an exact double backward.
  `cayley` (the public reference) uses it, except under forward-mode AD (torch.func.jvp,
  jacfwd, forward_ad dual tensors), where it runs `cayley_plain`: an autograd.Function with a
  custom `jvp` cannot be traced by torch.compile, and plain autograd gives the exact tangent.
"""

from __future__ import annotations

import torch

from .._autograd import forward_mode, needs_graph
from .._conventions import through_tall


def _split(W: torch.Tensor):
    """(U, V, A) of a tall W: U the top n x n block, V the rest, A = U - U^H + V^H V."""
    n = W.shape[-1]
    U, V = W[..., :n, :], W[..., n:, :]
    return U, V, U - U.mH + V.mH @ V


def _identity_like(A: torch.Tensor) -> torch.Tensor:
    return torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)


def _cayley_plain_tall(W: torch.Tensor) -> torch.Tensor:
    _, V, A = _split(W)
    I = _identity_like(A)
    M = I + A
    # Two solves instead of the seed's torch.inverse: solving M Y = I - A and Y M = V is the
    # backward-stable way to apply M^{-1}, and keeps this oracle independent of CayleyFunction,
    # which forms X = M^{-1} explicitly (it needs X for its backward anyway).
    top = torch.linalg.solve(M, I - A)
    bottom = -2.0 * torch.linalg.solve(M, V, left=False)
    return torch.cat((top, bottom), dim=-2)


def cayley_plain(W: torch.Tensor) -> torch.Tensor:
    """The Cayley transform of `cayley`, differentiated by plain autograd through the solves."""
    return through_tall(_cayley_plain_tall, W)


def _inverse(W: torch.Tensor) -> torch.Tensor:
    """X = M^{-1} = (I + A)^{-1} of a tall W (one LU per matrix)."""
    _, _, A = _split(W)
    I = _identity_like(A)
    return torch.linalg.solve(I + A, I.expand_as(A))


def cayley_backward(grad: torch.Tensor, W: torch.Tensor, X: torch.Tensor | None = None):
    """grad_W of the Cayley transform of a tall W from the output gradient `grad`, in closed form
    (see `CayleyFunction`), from X = M^{-1} (the forward's), or, with X None, from X recomputed
    from W: then the result is differentiable w.r.t. W as well as `grad` (double backward)."""
    if X is None:
        X = _inverse(W)
    n = X.shape[-1]
    V = W[..., n:, :]
    g_top, g_bot = grad[..., :n, :], grad[..., n:, :]
    XH = X.mH
    g_a = 2.0 * (XH @ (V.mH @ g_bot - g_top) @ XH)
    g_u = g_a - g_a.mH
    g_v = V @ (g_a + g_a.mH) - 2.0 * (g_bot @ XH)
    return torch.cat((g_u, g_v), dim=-2)


class CayleyFunction(torch.autograd.Function):
    """Cayley transform of a tall W (..., m, n), m >= n, with a closed-form backward.

    Forward, with X = M^{-1} (one LU of M per matrix):
        Q_top = X (I - A) = X (2I - M) = 2X - I,     Q_bot = -2 V X.
    It returns (Q, X): X is a second, non-differentiable output because torch.func requires the
    `setup_context` form, whose forward has no other way to hand an intermediate to the backward.
    Saved: X and W (V is a view of W: no memory beyond X).

    Backward. Gradients follow PyTorch's convention for a real loss L of complex tensors: G is
    the gradient of Z when dL = Re tr(G^H dZ) (for real tensors, ^H is ^T and Re is a no-op),
    so the same formulas serve both. With G_top, G_bot the blocks of the output gradient and
    dX = -X dM X = -X dA X:
        dQ_top = -2 X dA X,      dQ_bot = -2 dV X + 2 V X dA X,
        dL = Re tr(G_A^H dA) + Re tr(G_V0^H dV), where
        G_A  = 2 X^H (V^H G_bot - G_top) X^H,     G_V0 = -2 G_bot X^H.
    Through A = U - U^H + V^H V, dA = dU - dU^H + dV^H V + V^H dV, so
        G_U = G_A - G_A^H,       G_V = G_V0 + V (G_A + G_A^H),
    and grad_W = [G_U ; G_V]. Cost: three n x n products and three (m-n) x n products per matrix,
    no solve.

    Double backward: the saved X carries no graph, so when the backward must build one
    (`needs_graph`: create_graph=True, torch.func.grad) it recomputes X from W (one more solve)
    and the same closed form is differentiated through it: exact second derivatives. vmap:
    generated from these batched torch ops. No forward mode (see the module docstring).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(W: torch.Tensor):
        X = _inverse(W)
        n = W.shape[-1]
        # X is returned rather than rebuilt from Q_top = 2X - I, which would lose the low bits
        # of X's small entries.
        Q = torch.cat((2.0 * X - _identity_like(X), -2.0 * (W[..., n:, :] @ X)), dim=-2)
        return Q, X

    @staticmethod
    def setup_context(ctx, inputs, output):
        (W,) = inputs
        _, X = output
        ctx.mark_non_differentiable(X)
        ctx.save_for_backward(X, W)

    @staticmethod
    def backward(ctx, grad, grad_X):
        X, W = ctx.saved_tensors
        return cayley_backward(grad, W, None if needs_graph(grad, W) else X)


def _cayley_tall(W: torch.Tensor) -> torch.Tensor:
    return CayleyFunction.apply(W)[0]


def cayley(W: torch.Tensor) -> torch.Tensor:
    """Q (..., m, n) with orthonormal columns (rows, for a wide W): the Cayley transform of W.

    W (..., m, n) real or complex; see the module docstring for the math and `CayleyFunction`
    for the closed-form backward it uses.
    """
    return through_tall(_cayley_plain_tall if forward_mode(W) else _cayley_tall, W)
