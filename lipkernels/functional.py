"""Public functional API: validated inputs, backend dispatch, documented shapes and math.

Every function here has a pure-PyTorch twin of the same signature in ``lipkernels.reference``.
The backend comes from ``lipkernels.use_backend`` / ``LIPKERNELS_BACKEND`` (see
``lipkernels._backend``); all of them compute the same math and differ only in speed.
"""

from __future__ import annotations

import math

import torch

from . import _backend, reference
from ._checks import check_iters, check_square_filter, check_tensor
from ._conventions import (CAYLEY_DTYPES, PADDINGS, circular_size, fixed_start, initial_vectors,
                           working_dtype)
from ._spectral import power_iteration_norm
from .ops import KERNELS
from .ops import aol_rescaling as aol_rescaling_ops
from .ops import bcop_filter as bcop_filter_ops
from .ops import bjorck as bjorck_ops
from .ops import conv_power_iteration as conv_power_iteration_ops
from .ops import conv_spectral_bounds as conv_spectral_bounds_ops
from .ops import convex_potential as convex_potential_ops
from .ops import householder as householder_ops
from .ops import max_min as max_min_ops
from .ops import power_iteration as power_iteration_ops
from .ops import soc_exp as soc_exp_ops


def _dispatch(op: str, device_type: str, tensors: tuple, *args):
    """`op` on validated `args`, on the backend `_backend.resolve` picks for `tensors` (its tensor
    inputs on `device_type`): the reference, or the op's kernel entry in `lipkernels.ops.KERNELS`,
    which has the reference's signature and result."""
    backend = _backend.resolve(op, device_type, KERNELS[op], *tensors)
    implementation = getattr(reference, op) if backend == "reference" else KERNELS[op][backend]
    return implementation(*args)


def _nonzero_start(u: torch.Tensor) -> torch.Tensor:
    """u, with every all-zero vector (last dim) replaced by `fixed_start`. A zero start would make
    the power iteration return sigma = 0 for any matrix, a finite wrong answer; NaN entries are
    kept (NaN out). Elementwise on the device: no host sync."""
    zero = (u == 0).all(-1, keepdim=True)
    # On CPU tensors outside compile and torch.func, reading the flag costs no device sync, and
    # skipping the start vector's construction when no vector is zero halves the overhead of a
    # one-iteration call on a small matrix or image.
    if (u.device.type == "cpu" and not torch.compiler.is_compiling()
            and not torch._C._functorch.get_interpreter_stack() and not bool(zero.any())):
        return u
    return torch.where(zero, fixed_start(u.shape[-1], u.device, u.dtype), u)


def power_iteration(weight: torch.Tensor, u: torch.Tensor, iters: int = 1):
    """Largest singular value of each matrix in a batch, by power iteration.

    Args:
        weight: (..., m, n) matrices, any number of batch dims; float32/64, float16, bfloat16.
        u: (..., n) persistent right vectors, same batch dims, dtype and device as `weight`.
        iters: number of iterations (>= 1), all run in one kernel launch.

    Repeats `iters` times: v = normalize(W u); u = normalize(W^T v); then sigma = v^T W u.
    normalize(x) = x / max(||x||, 1e-12), so an all-zero matrix gives sigma 0. An all-zero u (which
    would give sigma 0 for any matrix) is replaced by a fixed unit vector (`_nonzero_start`); like
    every power iteration, a start orthogonal to the top right singular vectors (a u in the
    null space of W, say) converges to a smaller singular value.

    Returns:
        (sigma (...), u (..., n), v (..., m)) in `weight`'s dtype. sigma is differentiable w.r.t.
        `weight` with d sigma / d W = v u^T (u and v held constant, as in spectral normalisation);
        u and v are not differentiable. Store the returned u to continue the iteration next call.
    """
    power_iteration_ops.check_inputs(weight, u, iters)
    u = _nonzero_start(u)
    return _dispatch("power_iteration", weight.device.type, (weight, u), weight, u, iters)


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
            unit vectors; an all-zero vector is replaced as in `power_iteration`.

    Returns:
        (bounds (4,), vectors): bounds differentiable w.r.t. `weight` like `power_iteration`'s
        sigma; vectors a tuple of the four updated right vectors.
    """
    if vectors is None:
        check_tensor("conv_spectral_bounds", "weight", weight, rank=4)
        vectors = initial_vectors(weight)
    conv_spectral_bounds_ops.check_inputs(weight, vectors, iters)
    vectors = [_nonzero_start(u) for u in vectors]
    return _dispatch("conv_spectral_bounds", weight.device.type, (weight, *vectors), weight,
                     iters, vectors)


def fantastic_four(weight: torch.Tensor, iters: int = 1, vectors=None):
    """min of `conv_spectral_bounds` (a 0-d tensor) and the updated vectors."""
    bounds, vectors = conv_spectral_bounds(weight, iters, vectors)
    return bounds.min(), vectors


def conv_power_iteration(weight: torch.Tensor, u: torch.Tensor, iters: int = 1, stride=1,
                         padding=None):
    """Operator norm of a zero-padded convolution, by power iteration on the convolution itself.

    Meunier, Delattre, Araujo & Allauzen, "A Dynamical System Perspective for Lipschitz Neural
    Networks", ICML 2022 (CPL: h = 2 / sigma^2 from this iteration) and Srinivas, Matoba,
    Lakkaraju & Fleuret, "Efficient Training of Low-Curvature Neural Networks", NeurIPS 2022
    (LCNN: conv spectral normalisation). The map is A: R^(C_in x H x W) -> R^(C_out x H' x W'),
    A x = conv2d(x, weight, stride=stride, padding=padding), H' = (H + 2 p_h - k_h) // s_h + 1
    (W' alike); A^T is conv_transpose2d with the same stride and padding and output_padding
    (n + 2 p - k) mod s per axis, so that it returns u's shape: the exact adjoint. Repeats
    `iters` times
        v = normalize(A u);  u = normalize(A^T v);
    then sigma = <v, A u>, normalize(x) = x / max(||x||, 1e-12) over the whole tensor, so a zero
    filter gives sigma 0. sigma never exceeds ||A|| (but for rounding) and converges to it with
    a spectral gap; it is the norm on H x W images only (the norm grows with the image). An
    all-zero u (which would give sigma 0 for any filter) is replaced by a fixed unit vector, as
    in `power_iteration`.

    Args:
        weight: (C_out, C_in, k_h, k_w) filter, any kernel size (odd or even, k_h != k_w) and
            channel counts; float32/64, float16, bfloat16 (the cpp kernel iterates half
            precision in float32).
        u: (1, C_in, H, W) persistent input-shaped vector, the dtype and device of `weight`;
            H + 2 p_h >= k_h and W + 2 p_w >= k_w (a non-empty conv output).
        iters: number of iterations (>= 1), all in one kernel call.
        stride: int or pair, >= 1.
        padding: int or pair, >= 0 (zero padding); None (default) is (k_h // 2, k_w // 2), the
            "same" padding of an odd filter.

    Returns:
        (sigma (), u (1, C_in, H, W)) in `weight`'s dtype. sigma is differentiable w.r.t.
        `weight` with u and v held constant (spectral normalisation): d sigma / d W is the
        weight gradient of conv2d(u, W) for the output gradient v, the correlation of u with v
        (the CPL code also differentiates its last v; at the fixed point both agree). u is not
        differentiable; store it to continue the iteration next call (two calls of one
        iteration give one call of two). NaN or inf in `weight` or `u` gives NaN.
    """
    stride, padding = conv_power_iteration_ops.check_inputs(weight, u, iters, stride, padding)
    u = _nonzero_start(u.reshape(1, -1)).reshape(u.shape)
    return _dispatch("conv_power_iteration", weight.device.type, (weight, u), weight, u, iters,
                     stride, padding)


def _check_conv_spectrum_input(op: str, weight, input_size, kernel_must_fit: bool):
    """weight is a 4-D filter and input_size an int or pair of ints >= 1 (the image the filter
    fits in when `kernel_must_fit`)."""
    check_tensor(op, "weight", weight, rank=4)
    sizes = (input_size, input_size) if isinstance(input_size, int) else input_size
    if (not isinstance(sizes, (tuple, list)) or len(sizes) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in sizes)):
        raise TypeError(f"{op}: input_size must be an int or a pair of ints (n1, n2); "
                        f"got {input_size!r}")
    n1, n2 = sizes
    if min(n1, n2) < 1:
        raise ValueError(f"{op}: input_size must be >= 1; got {input_size!r}")
    if kernel_must_fit and (weight.shape[2] > n1 or weight.shape[3] > n2):
        raise ValueError(f"{op}: the kernel of weight {tuple(weight.shape)} must fit in the "
                         f"input_size {(n1, n2)} image (k_h <= n1, k_w <= n2)")


def conv_singular_values(weight: torch.Tensor, input_size) -> torch.Tensor:
    """Exact singular values of a circular-padding convolution, per frequency.

    Sedghi, Gupta & Long, "The singular values of convolutional layers", ICLR 2019. The map is
    x -> nn.Conv2d(C_in, C_out, (k_h, k_w), padding="same", padding_mode="circular")(x) with
    `weight` (F.conv2d's cross-correlation; offset (k - 1) // 2, i.e. k // 2 for odd k) on an
    n1 x n2 image. The 2-D DFT block-diagonalises it: at frequency (u, v) it is the C_out x C_in
    matrix H[u, v] = e^{-2 pi i (u l_h / n1 + v l_w / n2)} conj(fft2(W padded to n1 x n2))[u, v],
    l = (k - 1) // 2, so its singular values are those of the n1 n2 matrices H[u, v] together
    (min(C_in, C_out) each; the other |C_in - C_out| n1 n2 of the wide side are 0). The phase
    and the conjugation change no singular value, so the result is the same for true
    convolution and any padding offset (`lipkernels.reference.conv_singular_values` derives H).

    Args:
        weight: (C_out, C_in, k_h, k_w) filter; float32/64 (float16/bfloat16 computed in float32).
        input_size: n (square image) or (n1, n2), with k_h <= n1 and k_w <= n2.

    Returns:
        (n1, n2, min(C_in, C_out)) in `weight`'s dtype, descending at each frequency (u, v);
        differentiable w.r.t. `weight` (through torch.linalg.svdvals). NaN at every frequency
        whose response is not finite (all of them for a NaN or inf in `weight`), never an
        exception.
    """
    _check_conv_spectrum_input("conv_singular_values", weight, input_size, kernel_must_fit=True)
    return reference.conv_singular_values(weight, input_size)


def conv_spectral_norm(weight: torch.Tensor, input_size, padding: str = "circular", iters=None):
    """Operator norm of a stride-1 "same" convolution on an n1 x n2 image, from its spectrum.

    Sedghi, Gupta & Long, ICLR 2019 (see `conv_singular_values`).
        padding="circular": exact, the largest of `conv_singular_values(weight, (n1, n2))`.
        padding="zeros": zero "same" padding ((k - 1) // 2 before, k // 2 after; k // 2 each
            side for odd k). Returns the circular norm at (n1 + k_h - 1, n2 + k_w - 1), which is
            n + 2p for odd k, p = k // 2: an upper bound, since embedding x in that zero image
            (an isometry E) and keeping the n1 x n2 outputs (a restriction R) of the circular conv
            C there reads no wrapped pixel, so the zero-padded conv is R C E, ||R C E|| <= ||C||.

    Args:
        weight: (C_out, C_in, k_h, k_w) filter; float32/64 (float16/bfloat16 computed in float32).
        input_size: n or (n1, n2), each >= 1; the kernel must fit for padding="circular".
        padding: "circular" or "zeros".
        iters: None for the exact SVD (torch.linalg.svdvals, whatever the backend). An int >= 1
            runs that many power iterations on the C_out x C_in responses at the rfft2
            frequencies (one of each conjugate pair) at once, each as its real 2 C_out x 2 C_in
            form [[Re H, -Im H], [Im H, Re H]] (same singular values), through the selected
            backend's `frequency_power_iteration` (Triton: one launch applying the responses
            from the filter's taps; cpp, cuda: the responses formed, then `power_iteration`),
            from one fixed start (`fixed_start` of `lipkernels._conventions`, deterministic),
            and returns the
            largest estimate Re(v^H H u): in exact arithmetic never above the exact value
            (computed, it can exceed it by rounding, up to about 2e-7 relative in float32), so
            an estimate rather than a certified bound; it converges with a spectral gap.

    Returns:
        A 0-d tensor in `weight`'s dtype, differentiable w.r.t. `weight` (exact: autograd through
        svdvals, valid where the top singular value is simple; iters: u, v held constant, as in
        `power_iteration`); NaN if `weight` has a NaN or inf entry.
    """
    op = "conv_spectral_norm"
    if padding not in PADDINGS:
        raise ValueError(f"{op}: padding must be one of {', '.join(PADDINGS)}; "
                         f"got {padding!r}")
    _check_conv_spectrum_input(op, weight, input_size, kernel_must_fit=padding == "circular")
    if iters is None:
        return reference.conv_spectral_norm(weight, input_size, padding)
    check_iters(op, iters)
    kernels = KERNELS["frequency_power_iteration"]
    backend = _backend.resolve(op, weight.device.type, kernels, weight)
    if backend == "reference":
        return reference.conv_spectral_norm(weight, input_size, padding, iters)
    return power_iteration_norm(weight, circular_size(weight, input_size, padding), iters,
                                kernels[backend])


def skew(weight: torch.Tensor) -> torch.Tensor:
    """The skew-symmetric part of a square filter, as SOC parametrises it.

    Singla & Feizi, "Skew Orthogonal Convolutions", ICML 2021. For W (C, C, k, k), k odd,
        skew(W) = (W - flipT(W)) / 2,   flipT(W) = W.transpose(0, 1).flip(2, 3).
    conv(., flipT(W)) with zero "same" padding k // 2 is the adjoint of conv(., W), so the
    Jacobian of conv(., skew(W)) is skew-symmetric and its exponential (`soc_exp`) orthogonal.
    Differentiable by autograd (it is linear in W).
    """
    check_square_filter("skew", "weight", weight)
    return reference.skew(weight)


def soc_exp(x: torch.Tensor, S: torch.Tensor, terms: int, grad_mode: str = "exact") -> torch.Tensor:
    """Truncated exponential of a convolution: the skew-orthogonal convolution of SOC.

    Singla & Feizi, "Skew Orthogonal Convolutions", ICML 2021; fast gradient from Singla, Singla
    & Feizi, "Improved techniques for deterministic l2 robustness", NeurIPS 2022.
        y = sum_{i=0}^{terms-1} S^{*i}(x) / i!
    where S^{*i} is i successive zero-padded "same" convs (padding k // 2) with S. For skew S
    (`skew`) the series converges to exp(A) x with A the skew-symmetric Jacobian of
    conv(., S), an orthogonal map; the truncation error is at most
    e^{||A||} ||A||^terms / terms! * ||x||.

    Args:
        x: (B, C, H, W) input.
        S: (C, C, k, k) filter, k odd, same dtype and device as `x` (usually skew(W) / sigma).
        terms: number of series terms including the identity (>= 1): terms=6 means powers 0..5.
        grad_mode: "exact" differentiates the truncated series: grad_x = the same series with
            flipT(S) applied to the output gradient, grad_S exact. "fast" (NeurIPS 2022) saves
            one activation instead of terms - 1: the same output and the same exact grad_x, and
            an approximate grad_S, the weight gradient of the second Horner iterates
            z_2 = P(S) x, g_2 = P(flipT(S)) g, P(S) = sum_{j=0}^{terms-2} S^j / (j+1)!, whose
            relative error is O(||S||^2) (see `lipkernels.reference.soc_exp.FastSOCExp`).
            Memory of the exact mode: the GPU kernels keep no term and recompute the powers in
            the backward; the CPU kernel keeps its terms - 2 powers (like the reference), faster
            on the CPU, where memory is rarely the limit.

    Returns:
        y (B, C, H, W) in `x`'s dtype; terms=1 returns x itself.
    """
    soc_exp_ops.check_inputs(x, S, terms, grad_mode)
    return _dispatch("soc_exp", x.device.type, (x, S), x, S, terms, grad_mode)


def max_min(x: torch.Tensor, pairing: str = "halves") -> torch.Tensor:
    """MaxMin: GroupSort with groups of two, the activation of SOC networks.

    Anil, Lucas & Grosse, "Sorting out Lipschitz function approximation", ICML 2019; the "halves"
    form is the one of Singla & Feizi, "Skew Orthogonal Convolutions", ICML 2021. Every channel
    pair (a, b) becomes (max(a, b), min(a, b)):
        "halves" (default): a = x[:, :C/2], b = x[:, C/2:], out = cat(max, min) along dim 1;
        "pairs": channels (2i, 2i+1) -> (max, min) at (2i, 2i+1) (GroupSort(2)'s default layout).
    The two differ by a fixed channel permutation. Each pair is permuted, so the map is
    1-Lipschitz and preserves the norm of every sample.

    Args:
        x: (B, C, *spatial), any rank >= 2, channels on dim 1, C even; float32/64, float16,
            bfloat16.
        pairing: "halves" or "pairs".

    Returns:
        (B, C, *spatial) in x's dtype. Backward: each output gradient goes to the input it came
        from. Ties (a == b) keep the pair in order, so max's gradient goes to a and min's to b
        (torch.maximum would split a tie's gradient 0.5 / 0.5). A NaN compares false and swaps its
        pair: it stays in the output. The kernels keep one byte per pair for the backward, not x.
    """
    max_min_ops.check_inputs(x, pairing)
    return _dispatch("max_min", x.device.type, (x,), x, pairing)


def householder(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """The HouseHolder activation: a learnable reflection per channel pair.

    Singla, Singla & Feizi, "Improved techniques for deterministic l2 robustness", NeurIPS 2022.
    Pairs follow the "halves" convention, (a, b) = (x[:, i], x[:, i + C/2]), with angle theta[i]:
        where a sin(theta/2) - b cos(theta/2) > 0:  (a, b) -> (a cos + b sin, a sin - b cos)
        elsewhere:                                  (a, b) -> (a, b)
    The reflection is R = I - 2 n n^T with n = (sin(theta/2), -cos(theta/2)), applied to the
    pairs on the positive side of n; it fixes the boundary, so the map is continuous, piecewise
    orthogonal and norm-preserving. theta = pi/2 gives MaxMin with the two halves swapped:
    cat(min(a, b), max(a, b)).

    Args:
        x: (B, C, *spatial), any rank >= 2, channels on dim 1, C even; float32/64, float16,
            bfloat16.
        theta: (C/2,) angles on x's device, of x's dtype, or float32 for float16/bfloat16 x
            (float32 parameters with half activations, as under autocast).

    Returns:
        (B, C, *spatial) in x's dtype. Differentiable w.r.t. x (through each element's branch)
        and theta: d/d theta of the reflected pair is (b cos - a sin, a cos + b sin), summed over
        batch and positions in float32 (float64 for float64) and returned in theta's dtype.
        Kernels compute in float32 (float64 for float64). A NaN selector (NaN in x or theta)
        takes the reflection and gives NaN out, as the seed code's mask products do.
    """
    householder_ops.check_inputs(x, theta)
    return _dispatch("householder", x.device.type, (x, theta), x, theta)


def cayley(W: torch.Tensor) -> torch.Tensor:
    """The Cayley transform of a batch of matrices: matrices with orthonormal columns.

    Trockman & Kolter, "Orthogonalizing Convolutional Layers with the Cayley Transform",
    ICLR 2021. For W (..., m, n) with m >= n,
        U = W[..., :n, :],  V = W[..., n:, :],  A = U - U^H + V^H V,  M = I + A,
        Q = [ M^{-1} (I - A) ; -2 V M^{-1} ],   Q^H Q = I.
    M's Hermitian part is I + V^H V >= I, so M is always invertible. A wide W (m < n) is
    transposed (plain transpose, not conjugate, as in the seed code), transformed and transposed
    back, so then Q Q^H = I. For square W, Q = (I + A)^{-1} (I - A) is the classical Cayley
    transform of the skew-Hermitian A = W - W^H.

    Args:
        W: (..., m, n) matrices, any number of batch dims; float32/64 or complex64/128
            (the complex case is the per-frequency matrix of `cayley_conv2d`).

    Returns:
        Q (..., m, n) in W's dtype. Backward in closed form (no solve): with X = M^{-1},
        G_top / G_bot the top n and bottom m - n rows of the output gradient,
            G_A = 2 X^H (V^H G_bot - G_top) X^H,
            grad_U = G_A - G_A^H,  grad_V = V (G_A + G_A^H) - 2 G_bot X^H,
        only X and V saved; complex gradients follow PyTorch's convention for real losses
        (see `lipkernels.reference.cayley.CayleyFunction`).
    """
    op = "cayley"
    check_tensor(op, "W", W, min_rank=2, dtypes=CAYLEY_DTYPES, batch_dims=-2)
    if W.numel() == 0:  # an empty batch of matrices: the kernels take none, the reference works
        return reference.cayley(W)
    return _dispatch(op, W.device.type, (W,), W)


def cayley_conv2d(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The Cayley orthogonal convolution of x with a filter, circular padding.

    Trockman & Kolter, "Orthogonalizing Convolutional Layers with the Cayley Transform",
    ICLR 2021. Per frequency f of the H x W grid, with R_f the C_out x C_in frequency response of
    the circular "same" cross-correlation with `weight` (as `conv_singular_values` defines it,
    phase included),
        y = irfft2( cayley(R_f) rfft2(x)_f ),
    `cayley` as in `lipkernels.cayley` (a wide R_f, C_out < C_in, through its plain transpose).
    For C_in = C_out this is the pixel-domain (I + A)^{-1} (I - A) x with A = M - M^T, M the
    circular conv matrix of `weight`: an orthogonal map; C_out > C_in gives orthonormal columns,
    C_out < C_in orthonormal rows. The per-frequency transform and its application run in one
    kernel call (`lipkernels.ops.cayley_conv2d`) between torch.fft's rfft2 and irfft2; the
    backward is in closed form (no solve), keeping the per-frequency X = (I + A)^{-1} and the
    spectrum solved through it, and needs no C^3 product per frequency (docs/performance.md).

    Args:
        x: (B, C_in, H, W), any H x W (non-square too); float32/64, or float16/bfloat16
            computed in float32 (complex64) and returned in x's dtype.
        weight: (C_out, C_in, k_h, k_w), k_h <= H and k_w <= W, on x's device; any floating
            dtype (cast to the working precision). Scale it before the call as a layer needs:
            `CayleyConv2d` divides by its Frobenius norm and multiplies by a learnable alpha.

    Returns:
        (B, C_out, H, W) in x's dtype, differentiable w.r.t. x and weight.
    """
    op = "cayley_conv2d"
    check_tensor(op, "x", x, rank=4, batch_dims=1)
    check_tensor(op, "weight", weight, rank=4)
    if weight.device != x.device:
        raise ValueError(f"{op}: weight is on {weight.device} but x is on {x.device}; both must "
                         f"be on the same device")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"{op}: weight {tuple(weight.shape)} must have C_in = {x.shape[1]} input "
                         f"channels to match x {tuple(x.shape)}")
    if weight.shape[2] > x.shape[2] or weight.shape[3] > x.shape[3]:
        raise ValueError(f"{op}: the kernel of weight {tuple(weight.shape)} must fit in the "
                         f"{tuple(x.shape[2:])} image of x (k_h <= H, k_w <= W)")
    if x.shape[0] == 0:
        # torch.fft rejects an empty batch: the empty output, whose graph still reaches x and
        # weight (zero gradients, as torch's layers give).
        graph = (0 * (x.sum() + weight.sum())).to(x.dtype)
        return x.new_zeros((0, weight.shape[0], *x.shape[2:])) + graph
    return _dispatch(op, x.device.type, (x, weight), x, weight)


def bjorck(W: torch.Tensor, iters: int = 20, beta: float = 0.5, order: int = 1,
           scale=None) -> torch.Tensor:
    """Björck's orthonormalisation of a batch of matrices: their orthogonal (polar) factors.

    Björck & Bowie, "An iterative algorithm for computing the best estimate of an orthogonal
    matrix", SIAM J. Numer. Anal. 1971, in the form of the Lipschitz networks' code (LNets,
    Anil et al., ICML 2019; BCOP, Li et al., NeurIPS 2019). From W_0 = W / scale (tall: a wide W
    (m < n) is transposed, iterated and transposed back), `iters` times
        A = W^T W,  W <- W p(A),  p(A) = sum_(k=0)^(order) c_k (I - A)^k,
    c_0 = 1, c_1 = beta (order 1: W <- (1 + beta) W - beta W A, the seeds' update), and for
    order >= 2 (beta = 0.5) the Taylor coefficients of A^(-1/2): 3/8, 5/16, 35/128. Each singular
    value s of W_0 moves as s <- s p(s^2), to 1 from (0, sqrt(3)) for order 1 (from (0, 1] for
    every order): W tends to the polar factor of W, with orthonormal columns (rows, if wide). A
    zero singular value stays zero but for its rounding, which grows by 1 + beta an iteration
    (about 2e-4 after 20 iterations in float32, 4e-13 in float64), so a rank-deficient W gives a
    partial isometry to that accuracy (W = 0 gives 0). Small singular values grow by about
    1 + beta an iteration, so a W_0 with singular values below about 1.5^-(iters - 6) has not
    converged after `iters`.

    Args:
        W: (..., m, n) matrices, any number of batch dims (an empty batch gives an empty
            result); float32/64, or float16/bfloat16 computed in float32 and returned in W's
            dtype.
        iters: iterations (1 to 1e6), all in one kernel call.
        beta: in (0, 1); 0.5 (quadratic convergence) is the seeds' value and the one order >= 2
            requires.
        order: 1 to 4, the degree of p.
        scale: what W is divided by first. None (default): each matrix's Frobenius norm (at least
            its largest singular value, so W_0's singular values are in (0, 1]); a tensor of
            shape W.shape[:-2] (for instance sigma from `power_iteration` with a persistent
            vector, as the layers use), or a positive float. Differentiable. A scale below
            sigma_max / sqrt(3) makes order 1 diverge. A tensor's entries are not checked
            (that would need a device sync): the result is the polar factor of W / scale, so
            a negative entry negates its matrix's Q, and a NaN gives NaN.

    Returns:
        Q (..., m, n) in W's dtype, differentiable w.r.t. W (and a tensor `scale`): the exact
        derivative of the computed iterate, through every iteration, as autograd through the
        seeds' code gives it (`lipkernels.reference.bjorck` says why the backward needs no
        stored iterate; the C++ kernel keeps them, for fewer products).
    """
    op = "bjorck"
    check_tensor(op, "W", W, min_rank=2, batch_dims=-2)
    bjorck_ops.check_options(op, iters, beta, order)
    tensors = (W,)
    if isinstance(scale, torch.Tensor):
        check_tensor(op, "scale", scale, dtypes=(W.dtype, working_dtype(W.dtype)),
                     batch_dims=scale.dim())
        if tuple(scale.shape) != tuple(W.shape[:-2]) or scale.device != W.device:
            raise ValueError(f"{op}: scale must have shape {tuple(W.shape[:-2])} (one per matrix "
                             f"of W {tuple(W.shape)}) and W's device {W.device}; got shape "
                             f"{tuple(scale.shape)} on {scale.device}")
        tensors = (W, scale)
    elif scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise TypeError(f"{op}: scale must be None, a tensor or a float; got "
                            f"{type(scale).__name__}")
        if not 0 < scale < math.inf:
            raise ValueError(f"{op}: scale must be positive and finite; got {scale!r}")
    return _dispatch(op, W.device.type, tensors, W, iters, beta, order, scale)


def bcop_filter(matrices: torch.Tensor, in_channels: int, out_channels: int) -> torch.Tensor:
    """The filter of a block convolution orthogonal parametrisation (BCOP), from its matrices.

    Li, Haque, Anil, Lucas, Grosse & Jacobsen, "Preventing Gradient Attenuation in Lipschitz
    Constrained Convolutional Networks", NeurIPS 2019, with the conventions of its code
    (ColinQiyangLi/LConvNet). From matrices M_0..M_(2k-2), C x C with C = max(in, out):
        H = M_0[:in, :out],  H_t = H (in <= out) or H^T (in > out),
        P_j = U_j U_j^T,  U_j = M_(j+1)[:, :C/2]   (rank-C/2 symmetric projectors),
        block_orth(P, Q) = [[P Q, P (I - Q)], [(I - P) Q, (I - P)(I - Q)]],
        K = block_orth(P_0, P_1) * block_orth(P_2, P_3) * ... * block_orth(P_(2k-4), P_(2k-3)),
    * the full 2-D convolution of matrix-valued kernels ((A * B)[i][j] = sum A[a][b]
    B[i - a][j - b], no flip), and the filter's tap at row j, column i is (H_t K[i][j])^T for
    in <= out, H_t K[i][j] for in > out. k = 1 gives the head alone: H for in = out (as the seed
    returns it), H^T otherwise. As a polynomial, K(z) = prod (P_(2t) + (I - P_(2t)) z_1)
    (P_(2t+1) + (I - P_(2t+1)) z_2), unitary on the unit torus: for orthogonal matrices (the
    layer passes `bjorck`'s output; this op does not orthogonalise) the convolution with
    circular padding of k - 1 pixels per axis, however split (the seed's k // 2 before and
    k - 1 - k // 2 after, asymmetric for even k), is orthogonal (in = out) or has orthonormal
    columns (in < out) or rows (in > out): every `conv_singular_values` is 1. Zero padding is
    not orthogonal. `lipkernels.reference.bcop_filter` is the seed's construction, a Python
    loop of block_orth and matrix convolutions; the kernels multiply the head by one factor of
    K(z) at a time, one product over all taps per factor.

    Args:
        matrices: (2k - 1, C, C), an odd count of square matrices, C = max(in_channels,
            out_channels), C even for k >= 2 (the projectors take C / 2 columns); float32/64,
            or float16/bfloat16 computed in float32 and returned in that dtype.
        in_channels, out_channels: ints >= 1.

    Returns:
        The filter (out_channels, in_channels, k, k) in matrices' dtype, differentiable w.r.t.
        matrices (the columns C/2.. of M_1.. get zero gradient: the projectors do not read
        them); the backward runs the growth steps in reverse, two products each.
    """
    bcop_filter_ops.check_arguments("bcop_filter", matrices, in_channels, out_channels)
    return _dispatch("bcop_filter", matrices.device.type, (matrices,), matrices, in_channels,
                     out_channels)


def convex_potential(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     scale: torch.Tensor) -> torch.Tensor:
    """The residual step of the convex potential layers: z = x - W^T (scale * relu(W x + b)).

    CPL: Meunier, Delattre, Araujo & Allauzen, "A Dynamical System Perspective for Lipschitz
    Neural Networks", ICML 2022 (one scale h = 2 / (||W||^2 + eps)); SLL: Araujo, Havens,
    Delattre, Allauzen & Hu, "A Unified Algebraic Perspective on Lipschitz Neural Networks",
    ICLR 2023 (a scale per inner channel). W is the "same" zero-padded convolution (stride 1,
    padding k // 2) with the filter `weight`, or the matrix `weight`; W^T its adjoint. z is the
    gradient step x - grad f(x) on f(x) = sum_c scale_c psi(w_c x + b_c) with psi' = relu, whose
    Jacobian I - W^T diag(scale [W x + b > 0]) W has its eigenvalues in
    [1 - max(scale) ||W||^2, 1]: 1-Lipschitz whenever 0 <= scale <= 2 / ||W||^2 (the layers'
    `lipschitz_bound` states what their scale gives).

    Args:
        x: (B, C, H, W) with a filter, (B, C) with a matrix; float32/64, float16, bfloat16.
        weight: a filter (C_inner, C, k1, k2), k1 and k2 odd, or a matrix (C_inner, C).
        bias: (C_inner,) or None.
        scale: () (CPL: applied after W^T, as the CPL code does) or (C_inner,) (SLL: applied to
            the activation). weight, bias and scale have x's dtype and device.

    Returns:
        z, x's shape and dtype. Differentiable w.r.t. x, weight, bias and scale; the kernels
        keep the activation relu(W x + b) (C_inner channels) for the backward, which computes
        W grad_z once and reuses it for the input, weight, bias and scale gradients. NaN or inf
        in gives NaN out.
    """
    convex_potential_ops.check_inputs(x, weight, bias, scale)
    tensors = (x, weight, scale) if bias is None else (x, weight, bias, scale)
    return _dispatch("convex_potential", x.device.type, tensors, x, weight, bias, scale)


def aol_rescaling(weight: torch.Tensor, log_q: torch.Tensor | None = None) -> torch.Tensor:
    """The AOL rescaling d of a matrix or a conv filter, with SLL's weights: W diag(d) is
    1-Lipschitz.

    Prach & Lampert, "Almost-Orthogonal Layers for Efficient General-Purpose Lipschitz
    Networks", ECCV 2022 (q = 1); Araujo et al., "A Unified Algebraic Perspective on Lipschitz
    Neural Networks", ICLR 2023 (T = diag(S) >= W^T W with weights q; its layer divides by
    T + eps, which is d^2). With G = W^T W for a matrix and, for a filter, its self-correlation
    G[i, j, delta] = sum_(o, x) W[o, i, x] W[o, j, x + delta] at the (2 k_1 - 1) x (2 k_2 - 1)
    offsets at which two taps overlap (F.conv2d(W^T, W^T, padding=(k_1 - 1, k_2 - 1)), W^T =
    W.transpose(0, 1)), and q = exp(log_q):
        A_ij = sum_delta |G[i, j, delta]|,   S_i = sum_j A_ij exp(log_q_j - log_q_i),
        d_i = (S_i + 1e-6)^(-1/2).
    Guarantee (the Schur test with weights q, d_i^2 S_i < 1): ||W diag(d)||_2 < 1 for a
    matrix, and the convolution with the filter W * d[None, :, None, None] has operator norm
    < 1 with zero padding of any width and any stride, on any image size, and with circular
    padding. A column of zeros gets d_i = 1000 (eps^(-1/2)), a zero weight d = 1000 everywhere;
    NaN or inf in weight or log_q, or an S that overflows, gives NaN (so does a log_q
    difference beyond about 88 in float32, whose ratio overflows).

    Args:
        weight: (C_out, C_in) matrix or (C_out, C_in, k_1, k_2) filter, any sizes (k_1 != k_2
            and even k allowed); float32/64, or float16/bfloat16 computed in float32.
        log_q: None (q = 1, AOL) or (C_in,) real log-weights of weight's dtype and device; any
            values are valid (q > 0 always).

    Returns:
        d (C_in,) in weight's dtype (half precision rounded down from float32, so the guarantee
        survives the cast), differentiable w.r.t. weight and log_q (torch's subgradient of
        |G|, zero where G = 0) by a closed-form backward that keeps sign(G) as int8 and A;
        double backward recomputes the reference.
    """
    aol_rescaling_ops.check_inputs(weight, log_q)
    tensors = (weight,) if log_q is None else (weight, log_q)
    return _dispatch("aol_rescaling", weight.device.type, tensors, weight, log_q)


__all__ = ["power_iteration", "conv_spectral_bounds", "fantastic_four", "conv_power_iteration",
           "conv_singular_values", "conv_spectral_norm", "skew", "soc_exp",
           "max_min", "householder", "cayley", "cayley_conv2d", "bjorck", "bcop_filter",
           "aol_rescaling", "convex_potential"]
