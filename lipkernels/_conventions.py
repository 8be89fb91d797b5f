"""The conventions every backend, layer and bound shares, declared once: the accepted values of
the ops' string and dtype arguments, the working precision of the spectral computations, the
shapes of the ops' derived tensors, the orientation rule of the Cayley transform and Björck's
iteration, Björck's input scaling and the power iterations' start vectors."""

from __future__ import annotations

import math

import torch


# The channel pairings max_min understands; householder always uses "halves".
PAIRINGS = ("halves", "pairs")


def pair_shape(shape) -> tuple[int, ...]:
    """(B, C/2, *spatial): the shape of a and b for x of shape (B, C, *spatial), and of any
    per-pair tensor (the kernels' max_min mask)."""
    return (shape[0], shape[1] // 2, *shape[2:])


# soc_exp's gradient modes: how the gradient w.r.t. S is computed (the output is the same).
GRAD_MODES = ("exact", "fast")


# Boundary handling of conv_spectral_norm: exact for "circular", an upper bound for "zeros".
PADDINGS = ("circular", "zeros")


def pooling_windows_per_pixel(module) -> int:
    """The most windows of a 2-D pooling module one input pixel falls in: prod ceil(k / s) (1
    where the windows do not overlap)."""
    kernel, stride = input_size_pair(module.kernel_size), input_size_pair(
        module.stride or module.kernel_size)
    return math.prod(-(-k // s) for k, s in zip(kernel, stride))


def input_size_pair(input_size) -> tuple[int, int]:
    """(n1, n2) from an int (square input) or a pair."""
    if isinstance(input_size, int):
        return input_size, input_size
    return tuple(input_size)


def conv_stride_padding(kernel_size, stride, padding) -> tuple[tuple[int, int], tuple[int, int]]:
    """(stride, padding) of a convolution as pairs, from ints or pairs; padding None is k // 2
    per axis, the "same" padding of an odd filter."""
    if padding is None:
        padding = tuple(k // 2 for k in kernel_size)
    return input_size_pair(stride), input_size_pair(padding)


def conv_output_size(image_size, kernel_size, stride, padding) -> tuple[int, int]:
    """(H', W') of F.conv2d on an image_size (H, W) input: floor((n + 2 p - k) / s) + 1 per
    axis (all arguments pairs)."""
    return tuple((n + 2 * p - k) // s + 1
                 for n, k, s, p in zip(image_size, kernel_size, stride, padding))


def adjoint_output_padding(image_size, kernel_size, stride, padding) -> tuple[int, int]:
    """The output_padding that makes conv_transpose2d return image_size, so that it is the
    exact adjoint of F.conv2d on that input: the rows and columns a stride skips at the end,
    (n + 2 p - k) mod s per axis."""
    return tuple((n + 2 * p - k) % s
                 for n, k, s, p in zip(image_size, kernel_size, stride, padding))


def circular_size(weight: torch.Tensor, input_size, padding: str) -> tuple[int, int]:
    """The image size of the circular conv whose norm `conv_spectral_norm` returns: input_size for
    padding="circular", grown by k - 1 per axis for "zeros"."""
    n1, n2 = input_size_pair(input_size)
    if padding == "zeros":
        return n1 + weight.shape[-2] - 1, n2 + weight.shape[-1] - 1
    return n1, n2


# linalg.solve has no float16/bfloat16 kernels on the CPU; the complex types are the ones the
# FFT convolution (cayley_conv2d) feeds in.
CAYLEY_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)


def through_tall(fn, W: torch.Tensor) -> torch.Tensor:
    """fn(W) for m >= n; for a wide W, fn(W^T)^T (plain transpose, as the seed code)."""
    if W.shape[-2] < W.shape[-1]:
        return fn(W.mT).mT
    return fn(W)


# The highest order of Björck's iteration: the degree of the Taylor polynomial of A^(-1/2) about I.
BJORCK_MAX_ORDER = 4


def bjorck_coefficients(beta: float, order: int) -> tuple[float, ...]:
    """c_0..c_order of Björck's polynomial p(A) = sum_k c_k (I - A)^k: c_0 = 1, c_1 = beta, and
    for order >= 2 (beta = 1/2) the Taylor coefficients of A^(-1/2) about I,
    c_k = binom(2k, k) / 4^k = c_(k-1) (2k - 1) / (2k): 3/8, 5/16, 35/128."""
    coefficients = [1.0, float(beta)]
    for k in range(2, order + 1):
        coefficients.append(coefficients[-1] * (2 * k - 1) / (2 * k))
    return tuple(coefficients)


def bjorck_input(W: torch.Tensor, scale) -> torch.Tensor:
    """What Björck's iteration starts from: W in its working dtype (float32 for half precision),
    divided by `scale` per matrix, by its Frobenius norm where `scale` is None (an upper bound of
    the largest singular value, so the scaled singular values lie in (0, 1]; a zero matrix stays
    zero: the norm is taken as at least the smallest normal number). Differentiable."""
    W = W.to(working_dtype(W.dtype))
    if scale is None:
        scale = torch.linalg.matrix_norm(W).clamp_min(torch.finfo(W.dtype).tiny)
    elif isinstance(scale, torch.Tensor):
        scale = scale.to(W.dtype)
    else:
        return W / scale
    return W / scale[..., None, None]


def bound_matrix_shapes(weight_shape) -> list[tuple[int, int]]:
    """(rows, cols) of M_1..M_4 for a filter of shape (C_out, C_in, k_h, k_w)."""
    c_out, c_in, k_h, k_w = weight_shape
    return [(c_out * k_h, c_in * k_w), (c_out * k_w, c_in * k_h),
            (c_out, c_in * k_h * k_w), (c_in, c_out * k_h * k_w)]


def initial_vectors(weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Random unit right vectors for the four reshapes, on the filter's device and dtype."""
    vectors = []
    for _, cols in bound_matrix_shapes(weight.shape):
        u = torch.randn(cols, device=weight.device, dtype=torch.float32)
        vectors.append((u / u.norm()).to(weight.dtype))
    return tuple(vectors)


# The angle step of `fixed_start`: pi (3 - sqrt 5), the golden angle, whose multiples never repeat
# modulo 2 pi, so the vector has no zero entry pattern and no simple symmetry a structured matrix
# could be orthogonal to.
_START_ANGLE = math.pi * (3.0 - math.sqrt(5.0))


def fixed_start(n: int, device, dtype) -> torch.Tensor:
    """The deterministic unit start vector (n,) of power iterations that have no stored vector:
    cos(j * golden angle), j = 1..n, normalised. Built without a random generator, so it also
    works under torch.func.vmap and torch.compile."""
    steps = torch.arange(1, n + 1, device=device, dtype=torch.float64)
    start = torch.cos(steps * _START_ANGLE)
    return (start / start.norm()).to(dtype)


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real dtype for the FFTs, SVDs and Cholesky factorisations of data of `dtype`: float64
    for float64, float32 otherwise (torch.fft and torch.linalg have no half-precision kernels,
    so float16 and bfloat16 are computed in float32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
