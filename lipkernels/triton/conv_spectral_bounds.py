"""Triton "Fantastic Four" bounds on the spectral norm of a convolution, one launch.

Singla & Feizi, "Fantastic Four: Differentiable Bounds on Singular Values of Convolution
Layers", ICLR 2021: for a filter (C_out, C_in, k_h, k_w) the zero- or circular-padded conv has
operator norm <= sqrt(k_h k_w) * sigma_max(M_q) for each of four reshapes M_q of the filter.
"""

import torch
import triton
import triton.language as tl

from ._common import (accumulation_dtype, block_for, launchable, persistent_programs,
                      phase_spans)
from ._grid_barrier import grid_barrier
from .power_iteration import _inv_norm, _sum_entries


@triton.jit
def _chunk(w_ptr, tile, i0, C_OUT, C_IN, KH, KW, acc_ty, BLOCK_O: tl.constexpr,
           BLOCK_I: tl.constexpr, KH_P: tl.constexpr, KW_P: tl.constexpr):
    """The filter entries weight[o, i, h, w] of slab tile `tile` (BLOCK_O output channels) and
    input channels i0..i0 + BLOCK_I - 1, as a (BLOCK_O, BLOCK_I, KH_P, KW_P) tile in the
    accumulation dtype (0 outside the filter), with its index tensors (o, i, h, w)."""
    o = tile * BLOCK_O + tl.arange(0, BLOCK_O)[:, None, None, None]
    i = i0 + tl.arange(0, BLOCK_I)[None, :, None, None]
    h = tl.arange(0, KH_P)[None, None, :, None]
    w = tl.arange(0, KW_P)[None, None, None, :]
    offsets = ((tl.cast(o, tl.int64) * C_IN + i) * KH + h) * KW + w
    mask = (o < C_OUT) & (i < C_IN) & (h < KH) & (w < KW)
    return tl.load(w_ptr + offsets, mask=mask, other=0.0).to(acc_ty), o, i, h, w, mask


@triton.jit
def _segments(C_IN, KH, KW):
    """Where t = [t_1 | t_2 | t_3 | wu_4] (and each slab's partial) changes segment: the
    lengths of t_1 (C_in k_w), t_2 (k_h C_in) and t_3 (C_in k_h k_w), summed; wu_4 has C_in."""
    B1 = C_IN * KW
    B2 = B1 + KH * C_IN
    return B1, B2, B2 + C_IN * KH * KW


@triton.jit
def _gather(ptr, index, mask, scale, acc_ty):
    return tl.load(ptr + index, mask=mask, other=0.0, cache_modifier=".cg").to(acc_ty) * scale


@triton.jit
def _slab_indices(tile, C_OUT, KH, KW, BLOCK_O: tl.constexpr, KH_P: tl.constexpr,
                  KW_P: tl.constexpr):
    """Indices and masks of slab tile `tile`'s rows of M_1 (o k_h + h), M_2 (o k_w + w) and M_3
    (o) in the rows buffer, and of its columns (o, h, w) of M_4."""
    o1 = tile * BLOCK_O + tl.arange(0, BLOCK_O)
    o2 = o1[:, None]
    h2 = tl.arange(0, KH_P)[None, :]
    w2 = tl.arange(0, KW_P)[None, :]
    index1, mask1 = o2 * KH + h2, (o2 < C_OUT) & (h2 < KH)
    index2, mask2 = C_OUT * KH + o2 * KW + w2, (o2 < C_OUT) & (w2 < KW)
    index3, mask3 = C_OUT * (KH + KW) + o1, o1 < C_OUT
    o3 = o1[:, None, None]
    h3 = tl.arange(0, KH_P)[None, :, None]
    w3 = tl.arange(0, KW_P)[None, None, :]
    index4, mask4 = (o3 * KH + h3) * KW + w3, (o3 < C_OUT) & (h3 < KH) & (w3 < KW)
    return index1, mask1, index2, mask2, index3, mask3, index4, mask4


@triton.jit
def _slab_pass(w_ptr, u1_ptr, u2_ptr, u3_ptr, u4_ptr, t_ptr, rows_ptr, partial_ptr,
               row_squares_ptr, t4_ptr, t4_squares_ptr, column_squares_ptr,
               first, only_t4, C_OUT, C_IN, KH, KW, slab_tiles, reduction_blocks, L,
               BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr, KH_P: tl.constexpr,
               KW_P: tl.constexpr, BLOCK_R: tl.constexpr):
    """One read of the filter by slabs (BLOCK_O output channels, every input channel and tap)
    for all four reshapes. Sweep 1, slab by slab: wu_q = M_q u_q for its rows of M_1 (o k_h +
    h), M_2 (o k_w + w) and M_3 (o), with u_q the inputs (`first`) or t_q / |t_q| of the last
    reduction; and t_4 = M_4^T v_4 for its columns of M_4 (o, h, w), v_4 = wu_4 / |wu_4| of the
    last reduction (not at `first`: there u_4 is the input); both stored. Sweep 2 (the
    program's slabs again, from L2), by chunks of input channels: the program's partial M_q^T
    wu_q (q = 1..3) and M_4 t_4 (M_4 u_4 at `first`) summed over all its slabs, at
    partial[program] laid out as t's segments, so that the reduction reads one partial per
    program rather than one per slab. `only_t4` (after the last iteration): t_4 alone."""
    acc_ty = t_ptr.dtype.element_ty
    B1, B2, B3 = _segments(C_IN, KH, KW)
    one = tl.full([], 1.0, acc_ty)
    scale1, scale2, scale3, scale_v4 = one, one, one, one
    if not first:
        scale1 = _inv_norm(_sum_entries(column_squares_ptr, reduction_blocks, BLOCK_R))
        scale2 = _inv_norm(_sum_entries(column_squares_ptr + reduction_blocks,
                                        reduction_blocks, BLOCK_R))
        scale3 = _inv_norm(_sum_entries(column_squares_ptr + 2 * reduction_blocks,
                                        reduction_blocks, BLOCK_R))
        scale_v4 = _inv_norm(_sum_entries(column_squares_ptr + 3 * reduction_blocks,
                                          reduction_blocks, BLOCK_R))
    for tile in range(tl.program_id(0), slab_tiles, tl.num_programs(0)):
        wu1 = tl.zeros([BLOCK_O, KH_P], acc_ty)
        wu2 = tl.zeros([BLOCK_O, KW_P], acc_ty)
        wu3 = tl.zeros([BLOCK_O], acc_ty)
        t4 = tl.zeros([BLOCK_O, KH_P, KW_P], acc_ty)
        for i0 in range(0, C_IN, BLOCK_I):
            x, o, i, h, w, mask = _chunk(w_ptr, tile, i0, C_OUT, C_IN, KH, KW, acc_ty,
                                         BLOCK_O, BLOCK_I, KH_P, KW_P)
            if not first:
                v4 = _gather(t_ptr + B3, i, i < C_IN, scale_v4, acc_ty)
                t4 += tl.sum(x * v4, axis=1)
            if not only_t4:
                if first:
                    u1 = _gather(u1_ptr, i * KW + w, (i < C_IN) & (w < KW), one, acc_ty)
                    u2 = _gather(u2_ptr, h * C_IN + i, (i < C_IN) & (h < KH), one, acc_ty)
                    u3 = _gather(u3_ptr, (i * KH + h) * KW + w, mask, one, acc_ty)
                else:
                    u1 = _gather(t_ptr, i * KW + w, (i < C_IN) & (w < KW), scale1, acc_ty)
                    u2 = _gather(t_ptr + B1, h * C_IN + i, (i < C_IN) & (h < KH), scale2,
                                 acc_ty)
                    u3 = _gather(t_ptr + B2, (i * KH + h) * KW + w, mask, scale3, acc_ty)
                wu1 += tl.sum(tl.sum(x * u1, axis=3), axis=1)
                wu2 += tl.sum(tl.sum(x * u2, axis=2), axis=1)
                wu3 += tl.sum(tl.sum(tl.sum(x * u3, axis=3), axis=2), axis=1)
        index1, mask1, index2, mask2, index3, mask3, index4, mask4 = _slab_indices(
            tile, C_OUT, KH, KW, BLOCK_O, KH_P, KW_P)
        if first:
            t4 = tl.load(u4_ptr + index4, mask=mask4, other=0.0).to(acc_ty)
        tl.store(t4_ptr + index4, t4, mask=mask4)
        tl.store(t4_squares_ptr + tile, tl.sum(tl.sum(tl.sum(t4 * t4, axis=2), axis=1), axis=0))
        if not only_t4:
            tl.store(rows_ptr + index1, wu1, mask=mask1)
            tl.store(rows_ptr + index2, wu2, mask=mask2)
            tl.store(rows_ptr + index3, wu3, mask=mask3)
            tl.store(row_squares_ptr + tile, tl.sum(tl.sum(wu1 * wu1, axis=1), axis=0))
            tl.store(row_squares_ptr + slab_tiles + tile,
                     tl.sum(tl.sum(wu2 * wu2, axis=1), axis=0))
            tl.store(row_squares_ptr + 2 * slab_tiles + tile, tl.sum(wu3 * wu3, axis=0))
    if (not only_t4) and tl.program_id(0) < slab_tiles:
        # The program's own stores of sweep 1, read back by its other threads.
        tl.debug_barrier()
        partial = partial_ptr + tl.cast(tl.program_id(0), tl.int64) * L
        for i0 in range(0, C_IN, BLOCK_I):
            part1 = tl.zeros([BLOCK_I, KW_P], acc_ty)
            part2 = tl.zeros([BLOCK_I, KH_P], acc_ty)
            part3 = tl.zeros([BLOCK_I, KH_P, KW_P], acc_ty)
            part4 = tl.zeros([BLOCK_I], acc_ty)
            for tile in range(tl.program_id(0), slab_tiles, tl.num_programs(0)):
                index1, mask1, index2, mask2, index3, mask3, index4, mask4 = _slab_indices(
                    tile, C_OUT, KH, KW, BLOCK_O, KH_P, KW_P)
                wu1 = _gather(rows_ptr, index1, mask1, one, acc_ty)
                wu2 = _gather(rows_ptr, index2, mask2, one, acc_ty)
                wu3 = _gather(rows_ptr, index3, mask3, one, acc_ty)
                t4 = _gather(t4_ptr, index4, mask4, one, acc_ty)
                x, o, i, h, w, mask = _chunk(w_ptr, tile, i0, C_OUT, C_IN, KH, KW, acc_ty,
                                             BLOCK_O, BLOCK_I, KH_P, KW_P)
                part1 += tl.sum(tl.sum(x * wu1[:, None, :, None], axis=2), axis=0)  # (I, W)
                part2 += tl.sum(tl.sum(x * wu2[:, None, None, :], axis=3), axis=0)  # (I, H)
                part3 += tl.sum(x * wu3[:, None, None, None], axis=0)  # (I, H, W)
                part4 += tl.sum(tl.sum(tl.sum(x * t4[:, None, :, :], axis=3), axis=2), axis=0)
            i1 = i0 + tl.arange(0, BLOCK_I)
            tl.store(partial + i1[:, None] * KW + tl.arange(0, KW_P)[None, :], part1,
                     mask=(i1 < C_IN)[:, None] & (tl.arange(0, KW_P) < KW)[None, :])
            tl.store(partial + B1 + tl.arange(0, KH_P)[None, :] * C_IN + i1[:, None],
                     part2, mask=(i1 < C_IN)[:, None] & (tl.arange(0, KH_P) < KH)[None, :])
            index3 = (i1[:, None, None] * KH + tl.arange(0, KH_P)[None, :, None]) * KW \
                + tl.arange(0, KW_P)[None, None, :]
            mask3 = (i1 < C_IN)[:, None, None] & (tl.arange(0, KH_P) < KH)[None, :, None] \
                & (tl.arange(0, KW_P) < KW)[None, None, :]
            tl.store(partial + B2 + index3, part3, mask=mask3)
            tl.store(partial + B3 + i1, part4, mask=i1 < C_IN)


@triton.jit
def _reduction_pass(t_ptr, partial_ptr, row_squares_ptr, t4_squares_ptr, column_squares_ptr,
                    first, C_IN, KH, KW, slab_tiles, partial_rows, reduction_blocks, L,
                    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
    """t = the sum of the programs' partials (`partial_rows` of them) by blocks of BLOCK_N
    entries, each segment scaled:
    t_q = M_q^T v_q = (sum) / |wu_q| for q = 1..3 and wu_4 = M_4 u_4 = (sum) / |t_4| (1 at
    `first`: u_4 is the input); the squares of each segment per block at column_squares[q]."""
    acc_ty = t_ptr.dtype.element_ty
    B1, B2, B3 = _segments(C_IN, KH, KW)
    inv1 = _inv_norm(_sum_entries(row_squares_ptr, slab_tiles, BLOCK_R))
    inv2 = _inv_norm(_sum_entries(row_squares_ptr + slab_tiles, slab_tiles, BLOCK_R))
    inv3 = _inv_norm(_sum_entries(row_squares_ptr + 2 * slab_tiles, slab_tiles, BLOCK_R))
    inv4 = tl.full([], 1.0, acc_ty)
    if not first:
        inv4 = _inv_norm(_sum_entries(t4_squares_ptr, slab_tiles, BLOCK_R))
    for block in range(tl.program_id(0), reduction_blocks, tl.num_programs(0)):
        e = block * BLOCK_N + tl.arange(0, BLOCK_N)
        total = tl.zeros([BLOCK_N], acc_ty)
        for row in range(0, partial_rows):
            total += tl.load(partial_ptr + tl.cast(row, tl.int64) * L + e, mask=e < L,
                             other=0.0, cache_modifier=".cg")
        segment = (e >= B1).to(tl.int32) + (e >= B2).to(tl.int32) + (e >= B3).to(tl.int32)
        t = total * tl.where(segment == 0, inv1,
                             tl.where(segment == 1, inv2, tl.where(segment == 2, inv3, inv4)))
        tl.store(t_ptr + e, t, mask=e < L)
        for q in range(0, 4):
            tl.store(column_squares_ptr + q * reduction_blocks + block,
                     tl.sum(tl.where((segment == q) & (e < L), t * t, 0.0), axis=0))


@triton.jit
def _store_scaled(out_ptr, source_ptr, e, start, count, scale):
    inside = (e >= start) & (e < start + count)
    value = tl.load(source_ptr + e - start, mask=inside, other=0.0, cache_modifier=".cg")
    tl.store(out_ptr + e - start, (value * scale).to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _finish(bounds_ptr, u1_out_ptr, u2_out_ptr, u3_out_ptr, u4_out_ptr, v1_out_ptr, v2_out_ptr,
            v3_out_ptr, v4_out_ptr, t_ptr, rows_ptr, t4_ptr, row_squares_ptr, t4_squares_ptr,
            column_squares_ptr, C_OUT, C_IN, KH, KW, slab_tiles, reduction_blocks,
            BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
    """u_q = t_q / |t_q|, v_q = wu_q / |wu_q| and bounds[q] = sqrt(k_h k_w) |t_q|^2 / |t_q|
    (t_q . u_q; 0 for an all-zero filter, NaN for a non-finite one), by blocks of the
    concatenated outputs [t | t_4 | rows]."""
    HW = KH * KW
    B1, B2, B3 = _segments(C_IN, KH, KW)
    L = B3 + C_IN
    N4 = C_OUT * HW
    R = C_OUT * (KH + KW + 1)
    sq1 = _sum_entries(column_squares_ptr, reduction_blocks, BLOCK_R)
    sq2 = _sum_entries(column_squares_ptr + reduction_blocks, reduction_blocks, BLOCK_R)
    sq3 = _sum_entries(column_squares_ptr + 2 * reduction_blocks, reduction_blocks, BLOCK_R)
    sq_v4 = _sum_entries(column_squares_ptr + 3 * reduction_blocks, reduction_blocks, BLOCK_R)
    sq4 = _sum_entries(t4_squares_ptr, slab_tiles, BLOCK_R)
    inv_v1 = _inv_norm(_sum_entries(row_squares_ptr, slab_tiles, BLOCK_R))
    inv_v2 = _inv_norm(_sum_entries(row_squares_ptr + slab_tiles, slab_tiles, BLOCK_R))
    inv_v3 = _inv_norm(_sum_entries(row_squares_ptr + 2 * slab_tiles, slab_tiles, BLOCK_R))
    for block in range(tl.program_id(0), tl.cdiv(L + N4 + R, BLOCK_N), tl.num_programs(0)):
        e = block * BLOCK_N + tl.arange(0, BLOCK_N)
        _store_scaled(u1_out_ptr, t_ptr, e, 0, B1, _inv_norm(sq1))
        _store_scaled(u2_out_ptr, t_ptr + B1, e, B1, B2 - B1, _inv_norm(sq2))
        _store_scaled(u3_out_ptr, t_ptr + B2, e, B2, B3 - B2, _inv_norm(sq3))
        _store_scaled(v4_out_ptr, t_ptr + B3, e, B3, C_IN, _inv_norm(sq_v4))
        _store_scaled(u4_out_ptr, t4_ptr, e, L, N4, _inv_norm(sq4))
        start = L + N4
        _store_scaled(v1_out_ptr, rows_ptr, e, start, C_OUT * KH, inv_v1)
        start += C_OUT * KH
        _store_scaled(v2_out_ptr, rows_ptr + C_OUT * KH, e, start, C_OUT * KW, inv_v2)
        start += C_OUT * KW
        _store_scaled(v3_out_ptr, rows_ptr + C_OUT * (KH + KW), e, start, C_OUT, inv_v3)
    if tl.program_id(0) == 0:
        # sqrt taken in the accumulation dtype: a float kernel argument would be passed as
        # float32.
        root = tl.sqrt(tl.cast(HW, sq1.dtype))
        for q in range(0, 4):
            sq = tl.where(q == 0, sq1, tl.where(q == 1, sq2, tl.where(q == 2, sq3, sq4)))
            tl.store(bounds_ptr + q, (root * sq * _inv_norm(sq)).to(bounds_ptr.dtype.element_ty))


@triton.jit
def _conv_spectral_bounds_kernel(w_ptr, u1_ptr, u2_ptr, u3_ptr, u4_ptr, bounds_ptr,
                                 u1_out_ptr, u2_out_ptr, u3_out_ptr, u4_out_ptr,
                                 v1_out_ptr, v2_out_ptr, v3_out_ptr, v4_out_ptr,
                                 t_ptr, rows_ptr, partial_ptr, t4_ptr, row_squares_ptr,
                                 t4_squares_ptr, column_squares_ptr, counter_ptr,
                                 first_phase, last_phase, iters, C_OUT, C_IN, KH, KW,
                                 slab_tiles, partial_rows, reduction_blocks, L,
                                 BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr,
                                 KH_P: tl.constexpr, KW_P: tl.constexpr,
                                 BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
    """The four Fantastic Four power iterations (Singla & Feizi, ICLR 2021) in one persistent
    launch, the filter read once an iteration for all four.

    Forward: with weight[o, i, h, w] = M_q[row, col],
      M_1 = weight.transpose(1, 2).reshape(C_out k_h, C_in k_w): row = o k_h + h, col = i k_w + w
      M_2 = weight.transpose(1, 3).reshape(C_out k_w, k_h C_in): row = o k_w + w, col = h C_in + i
      M_3 = weight.reshape(C_out, C_in k_h k_w):                 row = o, col = (i k_h + h) k_w + w
      M_4 = weight.transpose(0, 1).reshape(C_in, C_out k_h k_w): row = i, col = (o k_h + h) k_w + w
    each runs `iters` power-iteration steps (Miyato et al. 2018: v = normalize(M u), t = M^T v,
    u = normalize(t)) from u_q, and bounds[q] = sqrt(k_h k_w) * sigma_q with sigma_q = t_q . u_q
    (= v_q^T M_q u_q). Backward (conv_spectral_bounds_backward): d bounds[q] / d weight =
    sqrt(k_h k_w) v_q u_q^T mapped back through the same reshape.

    Schedule (docs/performance.md): the output-channel slab weight[o] holds the rows of M_1, M_2
    and M_3 and the columns of M_4 with that o. Phase 2j (`_slab_pass`) reads the filter by
    slabs, phase 2j + 1 (`_reduction_pass`) sums the programs' partials into t = [t_1 | t_2 | t_3 |
    wu_4]; M_4's t_4 = M_4^T v_4 is formed from its columns in the next slab pass (phase 2 iters
    forms the last one alone) and the last phase (`_finish`) stores the vectors and bounds: 2
    iters + 2 phases, grid barriers between them, every sum in a fixed order. Phases
    first_phase..last_phase - 1 run in this launch: all of them on a GPU (the grid at most one
    program per SM), one per launch under the interpreter.
    """
    for phase in range(first_phase, last_phase):
        if phase > first_phase:
            grid_barrier(counter_ptr, (phase - first_phase) * tl.num_programs(0))
        if phase == 2 * iters + 1:
            _finish(bounds_ptr, u1_out_ptr, u2_out_ptr, u3_out_ptr, u4_out_ptr, v1_out_ptr,
                    v2_out_ptr, v3_out_ptr, v4_out_ptr, t_ptr, rows_ptr, t4_ptr,
                    row_squares_ptr, t4_squares_ptr, column_squares_ptr, C_OUT, C_IN, KH, KW,
                    slab_tiles, reduction_blocks, BLOCK_N, BLOCK_R)
        elif phase % 2 == 0:
            _slab_pass(w_ptr, u1_ptr, u2_ptr, u3_ptr, u4_ptr, t_ptr, rows_ptr, partial_ptr,
                       row_squares_ptr, t4_ptr, t4_squares_ptr, column_squares_ptr,
                       phase == 0, phase == 2 * iters, C_OUT, C_IN, KH, KW, slab_tiles,
                       reduction_blocks, L, BLOCK_O, BLOCK_I, KH_P, KW_P, BLOCK_R)
        else:
            _reduction_pass(t_ptr, partial_ptr, row_squares_ptr, t4_squares_ptr,
                            column_squares_ptr, phase == 1, C_IN, KH, KW, slab_tiles,
                            partial_rows, reduction_blocks, L, BLOCK_N, BLOCK_R)


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


# A slab chunk (BLOCK_O x BLOCK_I x KH_P x KW_P entries) of at most this many elements over 8
# warps: the largest that compiles without spills (ptxas figures in
# benchmarks/results/kernel-notes.md; over 4 warps it spills).
_CHUNK_ELEMENTS = 4096
_MAX_SLAB_CHANNELS = 16
_MIN_BLOCK_N, _MAX_BLOCK_N = 16, 1024
_NUM_WARPS = 8
_BLOCK_R = 64


def launch_config(shape, programs: int) -> dict:
    """Blocks, sizes and grid of `_conv_spectral_bounds_kernel` for a filter `shape` and at most
    `programs` programs (`_common.persistent_programs`): slabs of BLOCK_O output channels,
    enough for every program where the channels allow, one partial of t per program that owns
    slabs (`partial_rows`), and reduction blocks of BLOCK_N entries of t (`length` of them)."""
    c_out, c_in, kh, kw = shape
    kh_p, kw_p = triton.next_power_of_2(kh), triton.next_power_of_2(kw)
    block_o = block_for(c_out, programs, 1, _MAX_SLAB_CHANNELS)
    block_i = max(1, min(triton.next_power_of_2(c_in), _CHUNK_ELEMENTS // (block_o * kh_p * kw_p)))
    length = c_in * (kw + kh + kh * kw + 1)
    block_n = block_for(length, programs, _MIN_BLOCK_N, _MAX_BLOCK_N)
    slab_tiles, reduction_blocks = triton.cdiv(c_out, block_o), triton.cdiv(length, block_n)
    outputs = length + c_out * kh * kw + c_out * (kh + kw + 1)
    programs = min(programs, max(slab_tiles, reduction_blocks, triton.cdiv(outputs, block_n)))
    return dict(programs=programs, slab_tiles=slab_tiles,
                partial_rows=min(programs, slab_tiles),
                reduction_blocks=reduction_blocks, length=length, BLOCK_O=block_o,
                BLOCK_I=block_i, KH_P=kh_p, KW_P=kw_p, BLOCK_N=block_n)


def conv_spectral_bounds(weight: torch.Tensor, vectors, iters: int):
    """(bounds (4,), [u_1..u_4], [v_1..v_4]) for a filter (C_out, C_in, k_h, k_w) and right vectors
    u_q (the sizes in _conv_spectral_bounds_kernel), after `iters` power-iteration steps each.

    Inputs are contiguous, on one device, of one floating dtype (the op checks them first:
    lipkernels.ops.conv_spectral_bounds); outputs are new tensors in weight's dtype.
    """
    c_out, c_in, kh, kw = weight.shape
    # M_q is (numel / len(u_q)) x len(u_q), so the vectors fix every matrix shape.
    rows = [weight.numel() // u.numel() for u in vectors]
    bounds = weight.new_empty(4)
    u_out = [u.new_empty(u.shape) for u in vectors]
    v_out = [weight.new_empty(m) for m in rows]
    config = launch_config(weight.shape, persistent_programs(weight.device))
    programs, slab_tiles = config.pop("programs"), config.pop("slab_tiles")
    reduction_blocks, length = config.pop("reduction_blocks"), config.pop("length")
    scratch = dict(dtype=accumulation_dtype(weight.dtype), device=weight.device)
    t = torch.empty(length, **scratch)
    rows_buffer = torch.empty(c_out * (kh + kw + 1), **scratch)
    partial_rows = config.pop("partial_rows")
    partial = torch.empty(partial_rows, length, **scratch)
    t4 = torch.empty(c_out * kh * kw, **scratch)
    row_squares = torch.empty(3 * slab_tiles, **scratch)
    t4_squares = torch.empty(slab_tiles, **scratch)
    column_squares = torch.empty(4 * reduction_blocks, **scratch)
    counter = torch.zeros(1, dtype=torch.int32, device=weight.device)
    for first, last in phase_spans(2 * iters + 2, weight.device):
        launchable(_conv_spectral_bounds_kernel)[(programs,)](
            weight, *vectors, bounds, *u_out, *v_out, t, rows_buffer, partial, t4, row_squares,
            t4_squares, column_squares, counter, first, last, iters, c_out, c_in, kh, kw,
            slab_tiles, partial_rows, reduction_blocks, length, BLOCK_R=_BLOCK_R,
            num_warps=_NUM_WARPS, **config)
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
