"""Public functional API: validated inputs, backend dispatch, documented shapes and math.

Every function here has a pure-PyTorch twin of the same signature in ``lipkernels.reference``.
The backend comes from ``lipkernels.use_backend`` / ``LIPKERNELS_BACKEND`` (see
``lipkernels._backend``); all of them compute the same math and differ only in speed.
"""

from __future__ import annotations

import torch

from . import _backend, reference
from ._checks import check_iters, check_like, check_tensor
from .ops.conv_spectral_bounds import KERNELS as _CONV_SPECTRAL_BOUNDS_KERNELS
from .ops.power_iteration import KERNELS as _POWER_ITERATION_KERNELS
from .reference.conv_spectral_bounds import bound_matrix_shapes, initial_vectors


def power_iteration(weight: torch.Tensor, u: torch.Tensor, iters: int = 1):
    """Largest singular value of each matrix in a batch, by power iteration.

    Args:
        weight: (..., m, n) matrices, any number of batch dims; float32/64, float16, bfloat16.
        u: (..., n) persistent right vectors, same batch dims, dtype and device as `weight`.
        iters: number of iterations (>= 1), all run in one kernel launch.

    Repeats `iters` times: v = normalize(W u); u = normalize(W^T v); then sigma = v^T W u.
    normalize(x) = x / max(||x||, 1e-12), so an all-zero matrix gives sigma 0.

    Returns:
        (sigma (...), u (..., n), v (..., m)) in `weight`'s dtype. sigma is differentiable w.r.t.
        `weight` with d sigma / d W = v u^T (u and v held constant, as in spectral normalisation);
        u and v are not differentiable. Store the returned u to continue the iteration next call.
    """
    op = "power_iteration"
    check_tensor(op, "weight", weight, min_rank=2)
    check_like(op, "u", u, "weight", weight, (*weight.shape[:-2], weight.shape[-1]))
    check_iters(op, iters)
    backend = _backend.resolve(op, weight.device.type, _POWER_ITERATION_KERNELS)
    if backend == "reference":
        return reference.power_iteration(weight, u, iters)
    return _POWER_ITERATION_KERNELS[backend](weight.contiguous(), u.contiguous(), iters)


def conv_spectral_bounds(weight: torch.Tensor, iters: int = 1, vectors=None):
    """The four Fantastic Four upper bounds on a convolution's operator norm.

    Singla & Feizi, "Fantastic Four: Differentiable Bounds on Singular Values of Convolution
    Layers", ICLR 2021. For a filter W (C_out, C_in, k_h, k_w),
        bounds[q] = sqrt(k_h k_w) * sigma_max(M_q),  with
        M_1 = W.transpose(1, 2).reshape(C_out k_h, C_in k_w)
        M_2 = W.transpose(1, 3).reshape(C_out k_w, C_in k_h)
        M_3 = W.reshape(C_out, C_in k_h k_w)
        M_4 = W.transpose(0, 1).reshape(C_in, C_out k_h k_w)
    each an upper bound on the norm of the zero-padded conv (stride 1) at any input size, once
    the power iterations have converged. sigma_max(M_q) comes from `power_iteration` with a
    persistent right vector per reshape; all four run in one kernel launch.

    Args:
        weight: (C_out, C_in, k_h, k_w) filter as in nn.Conv2d.
        iters: power iterations per reshape (>= 1).
        vectors: four 1-D right vectors of lengths C_in k_w, C_in k_h, C_in k_h k_w,
            C_out k_h k_w (the ones this function returned last time), or None for random
            unit vectors.

    Returns:
        (bounds (4,), vectors): bounds differentiable w.r.t. `weight` like `power_iteration`'s
        sigma; vectors a tuple of the four updated right vectors.
    """
    op = "conv_spectral_bounds"
    check_tensor(op, "weight", weight, rank=4)
    check_iters(op, iters)
    if vectors is None:
        vectors = initial_vectors(weight)
    if len(vectors) != 4:
        raise ValueError(f"{op}: vectors must hold 4 tensors (one per reshape); got {len(vectors)}")
    for index, (u, (_, cols)) in enumerate(zip(vectors, bound_matrix_shapes(weight.shape))):
        check_like(op, f"vectors[{index}]", u, "weight", weight, (cols,))
    backend = _backend.resolve(op, weight.device.type, _CONV_SPECTRAL_BOUNDS_KERNELS)
    if backend == "reference":
        return reference.conv_spectral_bounds(weight, iters, vectors)
    bounds, new_vectors, _ = _CONV_SPECTRAL_BOUNDS_KERNELS[backend](
        weight.contiguous(), [u.contiguous() for u in vectors], iters)
    return bounds, tuple(new_vectors)


def fantastic_four(weight: torch.Tensor, iters: int = 1, vectors=None):
    """min of `conv_spectral_bounds` (a 0-d tensor) and the updated vectors."""
    bounds, vectors = conv_spectral_bounds(weight, iters, vectors)
    return bounds.min(), vectors


__all__ = ["power_iteration", "conv_spectral_bounds", "fantastic_four"]
