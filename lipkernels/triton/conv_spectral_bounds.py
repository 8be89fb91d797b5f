"""Triton "Fantastic Four" bounds on the spectral norm of a convolution, one launch.

Singla & Feizi, "Fantastic Four: Differentiable Bounds on Singular Values of Convolution
Layers", ICLR 2021: for a filter (C_out, C_in, k_h, k_w) the zero- or circular-padded conv has
operator norm <= sqrt(k_h k_w) * sigma_max(M_q) for each of four reshapes M_q of the filter.
"""

import torch
import triton
import triton.language as tl

from ._common import accumulation_dtype, launchable, tile_shape
from .power_iteration import _power_iterate


@triton.jit
def _pick(q, a0, a1, a2, a3):
    """The q-th of four per-reshape values (integers or pointers), q a runtime scalar."""
    return tl.where(q == 0, a0, tl.where(q == 1, a1, tl.where(q == 2, a2, a3)))


@triton.jit
def _conv_spectral_bounds_kernel(w_ptr, u1_ptr, u2_ptr, u3_ptr, u4_ptr, bounds_ptr,
                                 u1_out_ptr, u2_out_ptr, u3_out_ptr, u4_out_ptr,
                                 v1_out_ptr, v2_out_ptr, v3_out_ptr, v4_out_ptr,
                                 scratch_ptr, scratch_stride, iters, C_OUT, C_IN, KH, KW,
                                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The four Fantastic Four power iterations (Singla & Feizi, ICLR 2021), program q on M_q.

    Forward: with weight[o, i, h, w] = M_q[row, col],
      M_1 = weight.transpose(1, 2).reshape(C_out k_h, C_in k_w): row = o k_h + h, col = i k_w + w
      M_2 = weight.transpose(1, 3).reshape(C_out k_w, k_h C_in): row = o k_w + w, col = h C_in + i
      M_3 = weight.reshape(C_out, C_in k_h k_w):                 row = o, col = (i k_h + h) k_w + w
      M_4 = weight.transpose(0, 1).reshape(C_in, C_out k_h k_w): row = i, col = (o k_h + h) k_w + w
    each runs `iters` power-iteration steps (Miyato et al. 2018; see _power_iterate) from u_q,
    and bounds[q] = sqrt(k_h k_w) * sigma_q with sigma_q = v_q^T M_q u_q.
    Backward (conv_spectral_bounds_backward): d bounds[q] / d weight = sqrt(k_h k_w) v_q u_q^T
    mapped back through the same reshape.

    Grid (4,): one program per reshape, each addressing the filter in place through its index
    map, so no reshaped copy is made. scratch holds scratch_stride accumulation-dtype entries per
    program (u_q then v_q).
    """
    q = tl.program_id(0)
    HW = KH * KW
    IHW = C_IN * HW
    # M_q[r, c] sits at (r // row_div) * row_hi + (r % row_div) * row_lo
    #                 + (c // col_div) * col_hi + (c % col_div) * col_lo in the contiguous filter:
    # the two tensor axes merged into each matrix axis, and their strides.
    #                  M_1          M_2          M_3     M_4
    M = _pick(q, C_OUT * KH, C_OUT * KW, C_OUT, C_IN)
    N = _pick(q, C_IN * KW, KH * C_IN, IHW, C_OUT * HW)
    row_div = _pick(q, KH, KW, 1, 1)
    row_hi = _pick(q, IHW, IHW, IHW, HW)
    row_lo = _pick(q, KW, 1, 0, 0)
    col_div = _pick(q, KW, C_IN, 1, HW)
    col_hi = _pick(q, HW, KW, 1, IHW)
    col_lo = _pick(q, 1, HW, 0, 1)

    us_ptr = scratch_ptr + q * scratch_stride
    sigma = _power_iterate(w_ptr,
                           _pick(q, u1_ptr, u2_ptr, u3_ptr, u4_ptr),
                           _pick(q, u1_out_ptr, u2_out_ptr, u3_out_ptr, u4_out_ptr),
                           _pick(q, v1_out_ptr, v2_out_ptr, v3_out_ptr, v4_out_ptr),
                           us_ptr, us_ptr + N, iters, M, N,
                           row_div, row_hi, row_lo, col_div, col_hi, col_lo, BLOCK_M, BLOCK_N)
    # sqrt taken in the accumulation dtype: a float kernel argument would be passed as float32.
    bound = tl.sqrt(tl.cast(HW, sigma.dtype)) * sigma
    tl.store(bounds_ptr + q, bound.to(bounds_ptr.dtype.element_ty))


@triton.jit
def _rank_one_term(grad_bounds_ptr, q: tl.constexpr, v_ptr, row, u_ptr, col, mask, acc_ty):
    """grad_bounds[q] * v_q[row] * u_q[col], in the accumulation dtype."""
    g = tl.load(grad_bounds_ptr + q).to(acc_ty)
    v = tl.load(v_ptr + row, mask=mask, other=0.0).to(acc_ty)
    u = tl.load(u_ptr + col, mask=mask, other=0.0).to(acc_ty)
    return g * v * u


@triton.jit
def _conv_spectral_bounds_backward_kernel(grad_bounds_ptr, u1_ptr, u2_ptr, u3_ptr, u4_ptr,
                                          v1_ptr, v2_ptr, v3_ptr, v4_ptr, grad_w_ptr,
                                          numel, C_IN, KH, KW, BLOCK: tl.constexpr):
    """Gradient of the Fantastic Four bounds (Singla & Feizi, ICLR 2021) w.r.t. the filter,
    singular vectors held constant as in spectral normalisation (Miyato et al. 2018):
        grad_weight[o, i, h, w] = sqrt(k_h k_w) * sum_q grad_bounds[q] * v_q[row_q] * u_q[col_q]
    with (row_q, col_q) the position of weight[o, i, h, w] in M_q (see the forward kernel).

    Grid (cdiv(numel, BLOCK),): elementwise over the flat filter.
    """
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < numel
    # The rule of _common.accumulation_dtype, resolved at compile time.
    acc_ty = tl.float64 if grad_w_ptr.dtype.element_ty == tl.float64 else tl.float32
    HW = KH * KW
    IHW = C_IN * HW
    w = idx % KW
    h = (idx // KW) % KH
    i = (idx // HW) % C_IN
    o = idx // IHW
    g = grad_bounds_ptr
    grad = (_rank_one_term(g, 0, v1_ptr, o * KH + h, u1_ptr, i * KW + w, mask, acc_ty)
            + _rank_one_term(g, 1, v2_ptr, o * KW + w, u2_ptr, h * C_IN + i, mask, acc_ty)
            + _rank_one_term(g, 2, v3_ptr, o, u3_ptr, idx % IHW, mask, acc_ty)
            + _rank_one_term(g, 3, v4_ptr, i, u4_ptr, o * HW + idx % HW, mask, acc_ty))
    grad = tl.sqrt(tl.cast(HW, acc_ty)) * grad
    tl.store(grad_w_ptr + idx, grad.to(grad_w_ptr.dtype.element_ty), mask=mask)


_BACKWARD_BLOCK = 1024


def conv_spectral_bounds(weight: torch.Tensor, vectors, iters: int):
    """(bounds (4,), [u_1..u_4], [v_1..v_4]) for a filter (C_out, C_in, k_h, k_w) and right vectors
    u_q (the sizes in _conv_spectral_bounds_kernel), after `iters` power-iteration steps each.

    Inputs are contiguous, on one device, of one floating dtype (the op checks them first:
    lipkernels.ops.conv_spectral_bounds); outputs are new tensors in weight's dtype.
    """
    c_out, c_in, kh, kw = weight.shape
    acc = accumulation_dtype(weight.dtype)
    # M_q is (numel / len(u_q)) x len(u_q), so the vectors fix every matrix shape.
    cols = [u.numel() for u in vectors]
    rows = [weight.numel() // n for n in cols]
    bounds = weight.new_empty(4)
    u_out = [u.new_empty(u.shape) for u in vectors]
    v_out = [weight.new_empty(m) for m in rows]
    stride = max(m + n for m, n in zip(rows, cols))
    scratch = torch.empty(4 * stride, dtype=acc, device=weight.device)
    block_m, block_n, num_warps = tile_shape(max(rows), max(cols))
    launchable(_conv_spectral_bounds_kernel)[(4,)](
        weight, *vectors, bounds, *u_out, *v_out, scratch, stride, iters, c_out, c_in, kh, kw,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps)
    return bounds, u_out, v_out


def conv_spectral_bounds_backward(grad_bounds: torch.Tensor, vectors, left_vectors, weight_shape):
    """grad_weight (weight_shape) = sqrt(k_h k_w) sum_q grad_bounds[q] unreshape_q(v_q u_q^T)."""
    c_out, c_in, kh, kw = weight_shape
    grad_weight = grad_bounds.new_empty((c_out, c_in, kh, kw))
    numel = grad_weight.numel()
    launchable(_conv_spectral_bounds_backward_kernel)[(triton.cdiv(numel, _BACKWARD_BLOCK),)](
        grad_bounds, *vectors, *left_vectors, grad_weight, numel, c_in, kh, kw,
        BLOCK=_BACKWARD_BLOCK)
    return grad_weight
