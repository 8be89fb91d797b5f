"""Triton HouseHolder activation (Singla, Singla & Feizi, NeurIPS 2022), on the channel-pair
tiling of `max_min` ("halves" pairs: a = x[:, i], b = x[:, i + C/2], angle theta[i])."""

import torch
import triton
import triton.language as tl

from ._common import accumulation_dtype
from .max_min import PairTileGrid, pair_tile


# Warps per tile: the sines and cosines need far more registers than max_min's selects, so a warp
# takes 64 elements, up to 8 warps. At max_min's 256 a (512, 1) tile (1024 channels on 1x1
# images) spilled 3 KB a thread on sm_90 (tests/triton_compile_check.py; kernel-notes.md).
_WARPS = dict(elements_per_warp=64, max_warps=8)


@triton.jit
def _pair_angles(theta_ptr, p, pairs, acc_ty: tl.constexpr):
    """(cos, sin, cos(theta/2), sin(theta/2)) of the tile's pairs as [BLOCK_P, 1] columns.

    Evaluated in float64, whatever acc_ty is: fp32 sin/cos may lower to approximate hardware
    instructions, and this runs once per pair and program, not per element.
    """
    theta = tl.load(theta_ptr + p, mask=p < pairs, other=0.0).to(tl.float64)
    half = theta * 0.5
    return (tl.cos(theta).to(acc_ty)[:, None], tl.sin(theta).to(acc_ty)[:, None],
            tl.cos(half).to(acc_ty)[:, None], tl.sin(half).to(acc_ty)[:, None])


@triton.jit
def _householder_kernel(x_ptr, theta_ptr, y_ptr, batch, pairs, spatial, pair_stride, partner,
                        rows_per_program, BLOCK_P: tl.constexpr, BLOCK_S: tl.constexpr):
    """HouseHolder forward (Singla, Singla & Feizi, NeurIPS 2022), one pass over x:
        passes = a sin(theta/2) - b cos(theta/2) <= 0
        (y_1, y_2) = passes ? (a, b) : (a cos + b sin, a sin - b cos)
    R = [[cos, sin], [sin, -cos]] = I - 2 n n^T, n = (sin(theta/2), -cos(theta/2)), reflects the
    pairs on the positive side of n. A NaN selector takes the reflection (NaN out), as in the seed
    code's mask products. Arithmetic in float32 (float64 for float64).
    """
    acc_ty = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    rows, p, first, _, in_tile, _ = pair_tile(batch, pairs, spatial, pair_stride,
                                               rows_per_program, BLOCK_P, BLOCK_S)
    cos, sin, half_cos, half_sin = _pair_angles(theta_ptr, p, pairs, acc_ty)
    for _ in range(rows):
        a = tl.load(x_ptr + first, mask=in_tile).to(acc_ty)
        b = tl.load(x_ptr + first + partner, mask=in_tile).to(acc_ty)
        passes = a * half_sin - b * half_cos <= 0
        y_1 = tl.where(passes, a, a * cos + b * sin)
        y_2 = tl.where(passes, b, a * sin - b * cos)
        tl.store(y_ptr + first, y_1.to(y_ptr.dtype.element_ty), mask=in_tile)
        tl.store(y_ptr + first + partner, y_2.to(y_ptr.dtype.element_ty), mask=in_tile)
        first += 2 * pairs * spatial


@triton.jit
def _householder_backward_kernel(grad_y_ptr, x_ptr, theta_ptr, grad_x_ptr, partials_ptr, batch,
                                 pairs, spatial, pair_stride, partner, rows_per_program,
                                 BLOCK_P: tl.constexpr, BLOCK_S: tl.constexpr):
    """HouseHolder backward, one pass over the output gradient g and x:
        (grad_a, grad_b) = passes ? (g_1, g_2) : R (g_1, g_2)        (R = R^T)
        grad_theta_i = sum over reflected elements of
                       g_1 (b cos - a sin) + g_2 (a cos + b sin)     (= g . dy/d theta)
    Each program sums its tile's terms per pair over its samples and positions and writes one
    partial per pair to partials[row chunk * spatial tiles + spatial tile, pair]; the launcher
    adds the partials (a small deterministic reduction, no atomics).
    """
    acc_ty = partials_ptr.dtype.element_ty
    rows, p, first, _, in_tile, tile_id = pair_tile(batch, pairs, spatial, pair_stride,
                                                     rows_per_program, BLOCK_P, BLOCK_S)
    cos, sin, half_cos, half_sin = _pair_angles(theta_ptr, p, pairs, acc_ty)
    theta_terms = tl.zeros([BLOCK_P, BLOCK_S], acc_ty)
    for _ in range(rows):
        # Masked lanes load zeros: a zero selector passes and adds no grad_theta term.
        a = tl.load(x_ptr + first, mask=in_tile, other=0.0).to(acc_ty)
        b = tl.load(x_ptr + first + partner, mask=in_tile, other=0.0).to(acc_ty)
        g_1 = tl.load(grad_y_ptr + first, mask=in_tile, other=0.0).to(acc_ty)
        g_2 = tl.load(grad_y_ptr + first + partner, mask=in_tile, other=0.0).to(acc_ty)
        passes = a * half_sin - b * half_cos <= 0
        grad_a = tl.where(passes, g_1, g_1 * cos + g_2 * sin)
        grad_b = tl.where(passes, g_2, g_1 * sin - g_2 * cos)
        tl.store(grad_x_ptr + first, grad_a.to(grad_x_ptr.dtype.element_ty), mask=in_tile)
        tl.store(grad_x_ptr + first + partner, grad_b.to(grad_x_ptr.dtype.element_ty),
                 mask=in_tile)
        theta_terms += tl.where(passes, 0.0, g_1 * (b * cos - a * sin) + g_2 * (a * cos + b * sin))
        first += 2 * pairs * spatial
    tl.store(partials_ptr + tile_id.to(tl.int64) * pairs + p, tl.sum(theta_terms, axis=1),
             mask=p < pairs)


def householder(x: torch.Tensor, theta: torch.Tensor):
    """y: HouseHolder of x (B, C, *spatial) with angles theta (C/2,) (see _householder_kernel).
    Inputs are checked first (lipkernels.ops.householder); theta has x's dtype or float32."""
    x, theta = x.contiguous(), theta.contiguous()
    y = torch.empty_like(x)
    PairTileGrid.of(x.shape, "halves").launch(_householder_kernel, x, theta, y, **_WARPS)
    return y


def householder_backward(grad_y: torch.Tensor, x: torch.Tensor, theta: torch.Tensor):
    """(grad_x, grad_theta) of householder; grad_theta is summed in float32 (float64 for float64
    x) and returned in theta's dtype."""
    grad_y, x, theta = grad_y.contiguous(), x.contiguous(), theta.contiguous()
    grid = PairTileGrid.of(x.shape, "halves")
    grad_x = torch.empty_like(grad_y)
    # Every entry is written by exactly one program (its row chunk, spatial tile and pair).
    partials = torch.empty((grid.partial_rows, grid.pairs),
                           dtype=accumulation_dtype(x.dtype), device=x.device)
    grid.launch(_householder_backward_kernel, grad_y, x, theta, grad_x, partials, **_WARPS)
    return grad_x, partials.sum(0).to(theta.dtype)
