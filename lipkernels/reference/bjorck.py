"""Pure-PyTorch Björck orthonormalisation: the oracle for every bjorck kernel.

Björck & Bowie, "An iterative algorithm for computing the best estimate of an orthogonal
matrix", SIAM J. Numer. Anal. 8, 1971, as the Lipschitz-network code uses it
(`bjorck_orthonormalize` of cemanil/LNets, Anil, Lucas & Grosse, ICML 2019, and of
ColinQiyangLi/LConvNet, BCOP, Li et al., NeurIPS 2019). For a tall W_0 (m >= n) whose singular
values lie in (0, 1] (the input divided by its Frobenius norm, or by a power-iteration estimate of
its largest singular value, `lipkernels._conventions.bjorck_input`):
    A_t = W_t^T W_t,   W_(t+1) = W_t p(A_t),   p(A) = sum_(k=0)^(order) c_k (I - A)^k,
c_0 = 1, c_1 = beta, c_k (order >= 2, beta = 1/2) the Taylor coefficients of A^(-1/2) about I.
Order 1 is the seeds' W_(t+1) = (1 + beta) W_t - beta W_t A_t. Every singular value s follows
s <- s p(s^2), towards 1 from (0, sqrt(3)) for order 1 with beta in (0, 1); zero singular values
stay zero (in floating point their rounding grows by 1 + beta an iteration), so W_t tends to the
polar factor of W_0 (its orthogonal factor; a partial isometry for a rank-deficient W_0). A wide W is transposed, iterated and transposed back, as the seeds do.

Differentiated by plain autograd through every iteration, as the seeds train. The map
W_0 -> W_iters is W_0 h(W_0^T W_0) for a polynomial h, the gradient of the potential
(1/2) tr H(W^T W) with H' = h: its Jacobian is a Hessian, symmetric, so the gradient against G
equals the derivative in the direction G, which the tangent iteration
    E_(t+1) = E_t p(A_t) + W_t Dp(A_t)[W_t^T E_t + E_t^T W_t],   E_0 = G,
computes with no stored iterate (the backward a kernel short of memory can run; the C++ CPU
kernel keeps the iterates instead, for fewer products).
"""

from __future__ import annotations

import torch

from .._conventions import bjorck_coefficients, bjorck_input, through_tall


def _identity(A: torch.Tensor) -> torch.Tensor:
    return torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)


def _polynomial(A: torch.Tensor, coefficients) -> torch.Tensor:
    """p(A) = sum_k c_k (I - A)^k by Horner's rule."""
    I = _identity(A)
    E = I - A
    R = coefficients[-1] * I
    for c in reversed(coefficients[:-1]):
        R = c * I + E @ R
    return R


def _step(W: torch.Tensor, coefficients) -> torch.Tensor:
    """W p(W^T W); order 1 in the seeds' form (1 + beta) W - beta W (W^T W)."""
    A = W.mT @ W
    if len(coefficients) == 2:
        beta = coefficients[1]
        return (1 + beta) * W - beta * (W @ A)
    return W @ _polynomial(A, coefficients)


def iterate(W: torch.Tensor, iters: int, coefficients) -> torch.Tensor:
    """W_iters from a tall W_0 = W, differentiable by plain autograd."""
    for _ in range(iters):
        W = _step(W, coefficients)
    return W


def bjorck(W: torch.Tensor, iters: int = 20, beta: float = 0.5, order: int = 1,
           scale=None) -> torch.Tensor:
    """The Björck orthonormalisation of each matrix of W (..., m, n) (see the module docstring),
    started from `bjorck_input(W, scale)`, returned in W's dtype."""
    coefficients = bjorck_coefficients(beta, order)
    tall = lambda X: iterate(X, iters, coefficients)  # noqa: E731
    return through_tall(tall, bjorck_input(W, scale)).to(W.dtype)
