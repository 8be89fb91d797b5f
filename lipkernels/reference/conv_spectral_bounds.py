"""Pure-PyTorch Fantastic Four bounds (Singla & Feizi, ICLR 2021): the oracle for the kernels.

For a conv filter W (C_out, C_in, k_h, k_w) the operator norm of the zero-padded convolution, at
any input size, is at most sqrt(k_h k_w) times the spectral norm of each of four reshapes of W:
    M_1 = W.transpose(1, 2).reshape(C_out k_h, C_in k_w)
    M_2 = W.transpose(1, 3).reshape(C_out k_w, C_in k_h)
    M_3 = W.reshape(C_out, C_in k_h k_w)
    M_4 = W.transpose(0, 1).reshape(C_in, C_out k_h k_w)
Each spectral norm comes from power iteration with a persistent right vector, as in the paper's
code; the gradient w.r.t. W flows through sigma_q = v_q^T M_q u_q only.
"""

from __future__ import annotations

import math

import torch

from .._conventions import initial_vectors
from .._spectral import bound_matrices
from .power_iteration import power_iteration, sigma_gradient


def bound_gradient(grad_bounds: torch.Tensor, vectors, left_vectors, weight_shape) -> torch.Tensor:
    """The filter gradient sum_q grad_bounds[q] d bounds[q] / d W = sqrt(k_h k_w) sum_q
    grad_bounds[q] unreshape_q(v_q u_q^T), from the right and left vectors u_q, v_q, in
    differentiable torch ops (the kernels' backward where a graph of it is needed).
    unreshape_q undoes the q-th reshape of `bound_matrices` (each is a permutation of entries,
    so its adjoint is its inverse)."""
    c_out, c_in, k_h, k_w = weight_shape
    g_1, g_2, g_3, g_4 = (sigma_gradient(g, u, v)
                          for g, u, v in zip(grad_bounds.unbind(), vectors, left_vectors))
    grad = (g_1.reshape(c_out, k_h, c_in, k_w).transpose(1, 2)
            + g_2.reshape(c_out, k_w, k_h, c_in).transpose(1, 3)
            + g_3.reshape(c_out, c_in, k_h, k_w)
            + g_4.reshape(c_in, c_out, k_h, k_w).transpose(0, 1))
    return math.sqrt(k_h * k_w) * grad


def conv_spectral_bounds(weight: torch.Tensor, iters: int = 1, vectors=None):
    """The four Fantastic Four bounds of `weight` and the updated right vectors.

    `vectors` holds one right vector per reshape (lengths C_in k_w, C_in k_h, C_in k_h k_w,
    C_out k_h k_w); None starts from random unit vectors. Returns (bounds (4,), vectors tuple).
    """
    if vectors is None:
        vectors = initial_vectors(weight)
    scale = math.sqrt(weight.shape[2] * weight.shape[3])
    sigmas, new_vectors = [], []
    for matrix, u in zip(bound_matrices(weight), vectors):
        sigma, u, _ = power_iteration(matrix, u, iters)
        sigmas.append(sigma)
        new_vectors.append(u)
    return scale * torch.stack(sigmas), tuple(new_vectors)


def fantastic_four(weight: torch.Tensor, iters: int = 1, vectors=None):
    """The tightest of the four bounds (a 0-d tensor) and the updated vectors."""
    bounds, vectors = conv_spectral_bounds(weight, iters, vectors)
    return bounds.min(), vectors


