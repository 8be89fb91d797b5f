"""Triton power iteration on batches of matrices, all iterations in one launch.

Matrices that fit one program's registers (`resident_blocks`) get a program each, which reads
its matrix once and iterates on chip (`_resident_power_iteration_kernel`); larger ones are split
over the whole grid, phase by phase with grid barriers between them (a persistent launch):
wide ones, at enough iterations, on their Gram matrix W W^T (`_gram_power_iteration_kernel`,
one product and one barrier an iteration), the others by `_power_iteration_kernel` (two).
`route` picks. `conv_spectral_bounds` shares their norm helpers.
"""

import torch
import triton
import triton.language as tl

from ._common import (accumulation_dtype, block_for, dot_operand_dtype,
                      float32_accurate_precision, launchable, persistent_programs, phase_spans,
                      tile_shape)
from ._grid_barrier import grid_barrier


@triton.jit
def _inv_norm(sum_sq):
    """1 / max(sqrt(sum_sq), 1e-12), the F.normalize denominator.

    Written with tl.where because `NaN < eps` is False, so a NaN norm stays NaN (tl.maximum may
    return eps instead and turn a non-finite weight into finite wrong vectors).
    """
    norm = tl.sqrt(sum_sq)
    # Built in the accumulation dtype so float64 runs use the double nearest 1e-12.
    eps = tl.full([], 1e-12, sum_sq.dtype)
    return 1.0 / tl.where(norm < eps, eps, norm)


@triton.jit
def _sum_entries(ptr, count, BLOCK: tl.constexpr):
    """The sum of `count` accumulation-dtype entries at ptr written by other programs (loaded
    from L2, `.cg`, not a stale L1 line), in a fixed order."""
    total = tl.zeros([BLOCK], ptr.dtype.element_ty)
    for start in range(0, count, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        total += tl.load(ptr + offsets, mask=offsets < count, other=0.0, cache_modifier=".cg")
    return tl.sum(total, axis=0)


@triton.jit
def _block_of(tile, blocks, BLOCK: tl.constexpr):
    """(matrix b, b as int64, the BLOCK indices of the block) of `tile`, each matrix's `blocks`
    blocks numbered consecutively."""
    b = tile // blocks
    # tl.cast also takes the int the interpreter (or a constexpr 1) gives.
    return b, tl.cast(b, tl.int64), (tile % blocks) * BLOCK + tl.arange(0, BLOCK)


@triton.jit
def _row_pass(w_ptr, u_ptr, wu_ptr, t_ptr, t_partial_ptr, row_squares_ptr, column_squares_ptr,
              first, count, M, N, row_blocks, column_blocks,
              BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr):
    """Per (matrix b, block of BLOCK_M rows) tile of this program: wu = W_rows u with u the
    input (`first`) or t / max(|t|, eps) of the previous column pass, stored with |wu|^2 of the
    block; then the block's share of W^T wu, t_partial[b, block] (N entries), from a second
    sweep of the same rows (read from L2)."""
    acc_ty = t_ptr.dtype.element_ty
    offs_k = tl.arange(0, BLOCK_K)
    for tile in range(tl.program_id(0), count * row_blocks, tl.num_programs(0)):
        b, wide_b, rows = _block_of(tile, row_blocks, BLOCK_M)
        row_mask = rows < M
        matrix = w_ptr + wide_b * M * N + rows.to(tl.int64)[:, None] * N
        # The input u is used as given (v = normalize(W u)), hence the unit scale.
        inv_norm_u = tl.full([], 1.0, acc_ty)
        if not first:
            inv_norm_u = _inv_norm(_sum_entries(column_squares_ptr + b * column_blocks,
                                                column_blocks, BLOCK_R))
        wu = tl.zeros([BLOCK_M], acc_ty)
        for k0 in range(0, N, BLOCK_K):
            cols = k0 + offs_k
            w = tl.load(matrix + cols[None, :], mask=row_mask[:, None] & (cols < N)[None, :],
                        other=0.0).to(acc_ty)
            if first:
                u = tl.load(u_ptr + wide_b * N + cols, mask=cols < N, other=0.0).to(acc_ty)
            else:
                u = tl.load(t_ptr + wide_b * N + cols, mask=cols < N, other=0.0,
                            cache_modifier=".cg")
            wu += tl.sum(w * u[None, :], axis=1)
        wu = wu * inv_norm_u
        tl.store(wu_ptr + wide_b * M + rows, wu, mask=row_mask)
        tl.store(row_squares_ptr + tile, tl.sum(wu * wu, axis=0))
        partial = t_partial_ptr + tl.cast(tile, tl.int64) * N
        for k0 in range(0, N, BLOCK_K):
            cols = k0 + offs_k
            w = tl.load(matrix + cols[None, :], mask=row_mask[:, None] & (cols < N)[None, :],
                        other=0.0).to(acc_ty)
            tl.store(partial + cols, tl.sum(w * wu[:, None], axis=0), mask=cols < N)


@triton.jit
def _column_pass(t_ptr, t_partial_ptr, row_squares_ptr, column_squares_ptr, count, N,
                 row_blocks, column_blocks, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
    """Per (matrix b, block of BLOCK_N columns) tile: t = W^T v = (sum over row blocks of
    t_partial) / max(|wu|, eps), stored with |t|^2 of the block."""
    for tile in range(tl.program_id(0), count * column_blocks, tl.num_programs(0)):
        b, wide_b, cols = _block_of(tile, column_blocks, BLOCK_N)
        inv_norm_v = _inv_norm(_sum_entries(row_squares_ptr + b * row_blocks, row_blocks,
                                            BLOCK_R))
        t = tl.zeros([BLOCK_N], t_ptr.dtype.element_ty)
        for r in range(0, row_blocks):
            partial = t_partial_ptr + (wide_b * row_blocks + r) * N
            t += tl.load(partial + cols, mask=cols < N, other=0.0, cache_modifier=".cg")
        t = t * inv_norm_v
        tl.store(t_ptr + wide_b * N + cols, t, mask=cols < N)
        tl.store(column_squares_ptr + tile, tl.sum(t * t, axis=0))


@triton.jit
def _store_results(sigma_ptr, u_out_ptr, v_out_ptr, t_ptr, v_source_ptr, inv_norm_v, sum_sq_t,
                   b, j, M, N, row_blocks, column_blocks,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Tile j of matrix b of the last phase: u's column block j = t / max(|t|, eps), v's row
    block j = v_source inv_norm_v (where they exist) and, at j = 0, sigma = t . u =
    |t|^2 / max(|t|, eps) (0 for an all-zero W, NaN for a non-finite one)."""
    wide_b = tl.cast(b, tl.int64)
    inv_norm_u = _inv_norm(sum_sq_t)
    if j < column_blocks:
        cols = j * BLOCK_N + tl.arange(0, BLOCK_N)
        t = tl.load(t_ptr + wide_b * N + cols, mask=cols < N, cache_modifier=".cg")
        tl.store(u_out_ptr + wide_b * N + cols,
                 (t * inv_norm_u).to(u_out_ptr.dtype.element_ty), mask=cols < N)
    if j < row_blocks:
        rows = j * BLOCK_M + tl.arange(0, BLOCK_M)
        source = tl.load(v_source_ptr + wide_b * M + rows, mask=rows < M, cache_modifier=".cg")
        tl.store(v_out_ptr + wide_b * M + rows,
                 (source * inv_norm_v).to(v_out_ptr.dtype.element_ty), mask=rows < M)
    if j == 0:
        tl.store(sigma_ptr + b, (sum_sq_t * inv_norm_u).to(sigma_ptr.dtype.element_ty))


@triton.jit
def _finish(sigma_ptr, u_out_ptr, v_out_ptr, wu_ptr, t_ptr, row_squares_ptr, column_squares_ptr,
            count, M, N, row_blocks, column_blocks,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
    """u = t / max(|t|, eps), v = wu / max(|wu|, eps) and sigma = |t|^2 / max(|t|, eps), by
    tiles of the longer of u and v (`_store_results`)."""
    blocks = tl.maximum(row_blocks, column_blocks)
    for tile in range(tl.program_id(0), count * blocks, tl.num_programs(0)):
        b = tile // blocks
        sum_sq_t = _sum_entries(column_squares_ptr + b * column_blocks, column_blocks, BLOCK_R)
        inv_norm_v = _inv_norm(_sum_entries(row_squares_ptr + b * row_blocks, row_blocks,
                                            BLOCK_R))
        _store_results(sigma_ptr, u_out_ptr, v_out_ptr, t_ptr, wu_ptr, inv_norm_v, sum_sq_t, b,
                       tile % blocks, M, N, row_blocks, column_blocks, BLOCK_M, BLOCK_N)


@triton.jit
def _power_iteration_kernel(w_ptr, u_ptr, sigma_ptr, u_out_ptr, v_out_ptr, wu_ptr, t_ptr,
                            t_partial_ptr, row_squares_ptr, column_squares_ptr, counter_ptr,
                            first_phase, last_phase, iters, count, M, N, row_blocks,
                            column_blocks, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
    """Power iteration (Miyato et al., ICLR 2018, "Spectral Normalization for GANs") on a batch
    of `count` row-major M x N matrices, every matrix split over many programs.

    Forward, per matrix W with right vector u: repeat `iters` times
        v = W u / max(|W u|, 1e-12);  t = W^T v;  u = t / max(|t|, 1e-12)
    then sigma = t . u (= v^T W u), the estimate of the largest singular value.
    Backward (power_iteration_backward): d sigma / d W = v u^T, u and v held constant.

    The work is 2 iters + 1 phases, each spread over the grid: phase 2i (`_row_pass`) reads W
    once by row blocks, giving W u and each row block's partial W^T (W u); phase 2i + 1
    (`_column_pass`) sums the partials by column blocks into t; the last phase (`_finish`)
    stores u, v and sigma. Norms are summed from per-block partials, so every sum is in a fixed
    order (the same bits on every run). Phases first_phase..last_phase - 1 run in this launch,
    separated by grid barriers: on a GPU all of them (one launch, the grid no larger than the
    SMs so that every program is resident); under the interpreter, which runs programs one
    after another, one phase per launch.
    """
    for phase in range(first_phase, last_phase):
        if phase > first_phase:
            grid_barrier(counter_ptr, (phase - first_phase) * tl.num_programs(0))
        if phase == 2 * iters:
            _finish(sigma_ptr, u_out_ptr, v_out_ptr, wu_ptr, t_ptr, row_squares_ptr,
                    column_squares_ptr, count, M, N, row_blocks, column_blocks,
                    BLOCK_M, BLOCK_N, BLOCK_R)
        elif phase % 2 == 0:
            _row_pass(w_ptr, u_ptr, wu_ptr, t_ptr, t_partial_ptr, row_squares_ptr,
                      column_squares_ptr, phase == 0, count, M, N, row_blocks, column_blocks,
                      BLOCK_M, BLOCK_K, BLOCK_R)
        else:
            _column_pass(t_ptr, t_partial_ptr, row_squares_ptr, column_squares_ptr, count, N,
                         row_blocks, column_blocks, BLOCK_N, BLOCK_R)


@triton.jit
def _gram_scale(first_squares_ptr, dots_ptr, squares_ptr, k, b, count, row_blocks, gram_blocks,
                BLOCK_R: tl.constexpr):
    """c_k with v_(k+1) = g_k c_k, from the block partials of phase k (fixed-order sums).

    k = 0, g_0 = W u (u used as given): c_0 = 1 / max(|g_0|, eps). k >= 1, g_k = G v_k: the
    split kernel's t = W^T v_k has |t|^2 = v_k . g_k, so s = 1 / max(sqrt(v_k . g_k), eps) is
    its normalisation and W u = g_k s, giving c_k = s / max(s |g_k|, eps): the reference's
    formulas, eps included. v_k . g_k >= 0 in exact arithmetic; a rounded negative is taken as 0.
    """
    scale = _inv_norm(_sum_entries(first_squares_ptr + b * gram_blocks, gram_blocks, BLOCK_R))
    if k > 0:
        partials = (k % 2) * count * row_blocks + b * row_blocks
        dot = _sum_entries(dots_ptr + partials, row_blocks, BLOCK_R)
        s = _inv_norm(tl.where(dot < 0, 0.0, dot))
        scale = s * _inv_norm(s * s * _sum_entries(squares_ptr + partials, row_blocks, BLOCK_R))
    return scale


@triton.jit
def _gram_formation(w_ptr, u_ptr, gram_ptr, g_ptr, first_squares_ptr, form_gram, count, M, N,
                    gram_blocks, BLOCK_G: tl.constexpr, BLOCK_K: tl.constexpr,
                    OPERAND: tl.constexpr, PRECISION: tl.constexpr):
    """Phase 0, per (matrix b, tile (i, j) of G's upper triangle): G_ij = W_i W_j^T on tensor
    cores, BLOCK_K columns at a time, stored with its mirror G_ji; a diagonal tile also stores
    g_0 = W_i u and |g_0|^2 of its rows. At a single iteration (`form_gram` false) G is not
    needed and only the diagonal tiles work, on g_0."""
    acc_ty = g_ptr.dtype.element_ty
    offs_g, offs_k = tl.arange(0, BLOCK_G), tl.arange(0, BLOCK_K)
    for tile in range(tl.program_id(0), count * gram_blocks * gram_blocks, tl.num_programs(0)):
        b = tile // (gram_blocks * gram_blocks)
        wide_b = tl.cast(b, tl.int64)
        i = (tile // gram_blocks) % gram_blocks
        j = tile % gram_blocks
        if j >= i and (form_gram or i == j):
            rows_i, rows_j = i * BLOCK_G + offs_g, j * BLOCK_G + offs_g
            matrix = w_ptr + wide_b * M * N
            gram = tl.zeros([BLOCK_G, BLOCK_G], acc_ty)
            g = tl.zeros([BLOCK_G], acc_ty)
            for k0 in range(0, N, BLOCK_K):
                cols = k0 + offs_k
                a = tl.load(matrix + rows_i.to(tl.int64)[:, None] * N + cols[None, :],
                            mask=(rows_i < M)[:, None] & (cols < N)[None, :], other=0.0)
                if i == j:
                    u = tl.load(u_ptr + wide_b * N + cols, mask=cols < N, other=0.0).to(acc_ty)
                    g += tl.sum(a.to(acc_ty) * u[None, :], axis=1)
                if form_gram:
                    other = tl.load(matrix + rows_j.to(tl.int64)[:, None] * N + cols[None, :],
                                    mask=(rows_j < M)[:, None] & (cols < N)[None, :], other=0.0)
                    gram = tl.dot(a.to(OPERAND), tl.trans(other.to(OPERAND)), gram,
                                  input_precision=PRECISION, out_dtype=acc_ty)
            if form_gram:
                block = gram_ptr + wide_b * M * M
                mask = (rows_i < M)[:, None] & (rows_j < M)[None, :]
                tl.store(block + rows_i[:, None] * M + rows_j[None, :], gram, mask=mask)
                if j > i:  # the diagonal tile is stored once: its two halves may round apart
                    tl.store(block + rows_j[None, :] * M + rows_i[:, None], gram, mask=mask)
            if i == j:
                tl.store(g_ptr + wide_b * M + rows_i, g, mask=rows_i < M)
                tl.store(first_squares_ptr + b * gram_blocks + i, tl.sum(g * g, axis=0))


@triton.jit
def _gram_pass(gram_ptr, g_ptr, first_squares_ptr, dots_ptr, squares_ptr, phase, count, M,
               row_blocks, gram_blocks, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
               BLOCK_R: tl.constexpr):
    """Phase k >= 1, per (matrix b, block of BLOCK_M rows): v_k = g_(k-1) c_(k-1)
    (`_gram_scale`) and the block's rows of g_k = G v_k, with its partials v_k . g_k and
    |g_k|^2. g alternates between two buffers, so a phase reads one while writing the other."""
    acc_ty = g_ptr.dtype.element_ty
    source = g_ptr + ((phase - 1) % 2) * count * M
    target = g_ptr + (phase % 2) * count * M
    partials = (phase % 2) * count * row_blocks
    offs_c = tl.arange(0, BLOCK_C)
    for tile in range(tl.program_id(0), count * row_blocks, tl.num_programs(0)):
        b, wide_b, rows = _block_of(tile, row_blocks, BLOCK_M)
        row_mask = rows < M
        scale = _gram_scale(first_squares_ptr, dots_ptr, squares_ptr, phase - 1, b, count,
                            row_blocks, gram_blocks, BLOCK_R)
        block = gram_ptr + wide_b * M * M + rows.to(tl.int64)[:, None] * M
        g = tl.zeros([BLOCK_M], acc_ty)
        for c0 in range(0, M, BLOCK_C):
            cols = c0 + offs_c
            gram = tl.load(block + cols[None, :], mask=row_mask[:, None] & (cols < M)[None, :],
                           other=0.0, cache_modifier=".cg")
            v = tl.load(source + wide_b * M + cols, mask=cols < M, other=0.0,
                        cache_modifier=".cg")
            g += tl.sum(gram * (v * scale)[None, :], axis=1)
        v_rows = tl.load(source + wide_b * M + rows, mask=row_mask, other=0.0,
                         cache_modifier=".cg") * scale
        tl.store(target + wide_b * M + rows, g, mask=row_mask)
        tl.store(dots_ptr + partials + tile, tl.sum(v_rows * g, axis=0))
        tl.store(squares_ptr + partials + tile, tl.sum(g * g, axis=0))


@triton.jit
def _gram_column_pass(w_ptr, g_ptr, first_squares_ptr, dots_ptr, squares_ptr, t_ptr,
                      column_squares_ptr, last, count, M, N, row_blocks, gram_blocks,
                      column_blocks, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                      BLOCK_R: tl.constexpr):
    """Per (matrix b, block of BLOCK_N columns): t = W^T v with v = g_last c_last, from W's
    columns (a single read of W), stored with |t|^2 of the block."""
    acc_ty = t_ptr.dtype.element_ty
    source = g_ptr + (last % 2) * count * M
    offs_v = tl.arange(0, BLOCK_V)
    for tile in range(tl.program_id(0), count * column_blocks, tl.num_programs(0)):
        b, wide_b, cols = _block_of(tile, column_blocks, BLOCK_N)
        col_mask = cols < N
        scale = _gram_scale(first_squares_ptr, dots_ptr, squares_ptr, last, b, count,
                            row_blocks, gram_blocks, BLOCK_R)
        t = tl.zeros([BLOCK_N], acc_ty)
        for r0 in range(0, M, BLOCK_V):
            rows = r0 + offs_v
            w = tl.load(w_ptr + wide_b * M * N + rows.to(tl.int64)[:, None] * N + cols[None, :],
                        mask=(rows < M)[:, None] & col_mask[None, :], other=0.0).to(acc_ty)
            v = tl.load(source + wide_b * M + rows, mask=rows < M, other=0.0,
                        cache_modifier=".cg")
            t += tl.sum(w * (v * scale)[:, None], axis=0)
        tl.store(t_ptr + wide_b * N + cols, t, mask=col_mask)
        tl.store(column_squares_ptr + tile, tl.sum(t * t, axis=0))


@triton.jit
def _gram_finish(sigma_ptr, u_out_ptr, v_out_ptr, g_ptr, t_ptr, first_squares_ptr, dots_ptr,
                 squares_ptr, column_squares_ptr, last, count, M, N, row_blocks, gram_blocks,
                 column_blocks, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_R: tl.constexpr):
    """u = t / max(|t|, eps), v = g_last c_last and sigma = |t|^2 / max(|t|, eps)
    (`_store_results`)."""
    blocks = tl.maximum(row_blocks, column_blocks)
    source = g_ptr + (last % 2) * count * M
    for tile in range(tl.program_id(0), count * blocks, tl.num_programs(0)):
        b = tile // blocks
        sum_sq_t = _sum_entries(column_squares_ptr + b * column_blocks, column_blocks, BLOCK_R)
        scale = _gram_scale(first_squares_ptr, dots_ptr, squares_ptr, last, b, count,
                            row_blocks, gram_blocks, BLOCK_R)
        _store_results(sigma_ptr, u_out_ptr, v_out_ptr, t_ptr, source, scale, sum_sq_t, b,
                       tile % blocks, M, N, row_blocks, column_blocks, BLOCK_M, BLOCK_N)


@triton.jit
def _gram_power_iteration_kernel(w_ptr, u_ptr, sigma_ptr, u_out_ptr, v_out_ptr, gram_ptr, g_ptr,
                                 t_ptr, first_squares_ptr, dots_ptr, squares_ptr,
                                 column_squares_ptr, counter_ptr, first_phase, last_phase, iters,
                                 count, M, N, gram_blocks, row_blocks, column_blocks,
                                 BLOCK_G: tl.constexpr, BLOCK_K: tl.constexpr,
                                 BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
                                 BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                                 BLOCK_R: tl.constexpr, OPERAND: tl.constexpr,
                                 PRECISION: tl.constexpr):
    """The power iteration of `_power_iteration_kernel` on wide matrices (M < N), run on the
    Gram matrix G = W W^T (M x M) so that an iteration is one product and one grid barrier.

    The split kernel's iterates satisfy v_(k+1) = normalize(W normalize(W^T v_k)), and
    W (W^T v_k) = G v_k, |W^T v_k|^2 = v_k . G v_k: with g_k = G v_k the same sequence, eps
    clamps included, is v_(k+1) = g_k c_k (`_gram_scale`). Phases, grid barriers between them:
    0 forms G on tensor cores (float32 in three TF32 passes, `tf32x3`, for float32 accuracy)
    and g_0 = W u; 1 .. iters - 1 each form g_k; `iters` reads W once more for t = W^T v;
    the last stores u = t / max(|t|, eps), v and sigma = |t|^2 / max(|t|, eps). G (M^2
    entries) replaces W (M N) in the iterations' reads, and the barriers fall from 2 iters to
    iters + 1. Backward as the split kernel's: d sigma / d W = v u^T.
    """
    for phase in range(first_phase, last_phase):
        if phase > first_phase:
            grid_barrier(counter_ptr, (phase - first_phase) * tl.num_programs(0))
        if phase == 0:
            _gram_formation(w_ptr, u_ptr, gram_ptr, g_ptr, first_squares_ptr, iters > 1, count,
                            M, N, gram_blocks, BLOCK_G, BLOCK_K, OPERAND, PRECISION)
        elif phase < iters:
            _gram_pass(gram_ptr, g_ptr, first_squares_ptr, dots_ptr, squares_ptr, phase, count,
                       M, row_blocks, gram_blocks, BLOCK_M, BLOCK_C, BLOCK_R)
        elif phase == iters:
            _gram_column_pass(w_ptr, g_ptr, first_squares_ptr, dots_ptr, squares_ptr, t_ptr,
                              column_squares_ptr, iters - 1, count, M, N, row_blocks,
                              gram_blocks, column_blocks, BLOCK_N, BLOCK_V, BLOCK_R)
        else:
            _gram_finish(sigma_ptr, u_out_ptr, v_out_ptr, g_ptr, t_ptr, first_squares_ptr,
                         dots_ptr, squares_ptr, column_squares_ptr, iters - 1, count, M, N,
                         row_blocks, gram_blocks, column_blocks, BLOCK_M, BLOCK_N, BLOCK_R)


@triton.jit
def _resident_power_iteration_kernel(w_ptr, u_ptr, sigma_ptr, u_out_ptr, v_out_ptr, iters, M, N,
                                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The power iteration of `_power_iteration_kernel` for matrices small enough to stay in one
    program's registers: a program per matrix reads W once and runs every iteration on chip,
    with block-wide reductions in place of grid barriers:
        wu = W u * s;  v = wu / max(|wu|, eps);  t = W^T v;  s = 1 / max(|t|, eps)
    (s = 1 at the first iteration: u is used as given), then u = t s, v and sigma = |t|^2 s,
    the same formulas as the split kernel's phases."""
    b = tl.cast(tl.program_id(0), tl.int64)
    acc_ty = tl.float64 if w_ptr.dtype.element_ty == tl.float64 else tl.float32
    rows, cols = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_N)
    row_mask, col_mask = rows < M, cols < N
    w = tl.load(w_ptr + b * M * N + rows[:, None] * N + cols[None, :],
                mask=row_mask[:, None] & col_mask[None, :], other=0.0).to(acc_ty)
    t = tl.load(u_ptr + b * N + cols, mask=col_mask, other=0.0).to(acc_ty)
    inv_norm_u = tl.full([], 1.0, acc_ty)
    wu = tl.zeros([BLOCK_M], acc_ty)
    inv_norm_v = tl.full([], 1.0, acc_ty)
    sum_sq_t = tl.zeros([], acc_ty)
    for _ in range(iters):
        wu = tl.sum(w * t[None, :], axis=1) * inv_norm_u
        inv_norm_v = _inv_norm(tl.sum(wu * wu, axis=0))
        t = tl.sum(w * wu[:, None], axis=0) * inv_norm_v
        sum_sq_t = tl.sum(t * t, axis=0)
        inv_norm_u = _inv_norm(sum_sq_t)
    tl.store(u_out_ptr + b * N + cols, (t * inv_norm_u).to(u_out_ptr.dtype.element_ty),
             mask=col_mask)
    tl.store(v_out_ptr + b * M + rows, (wu * inv_norm_v).to(v_out_ptr.dtype.element_ty),
             mask=row_mask)
    tl.store(sigma_ptr + b, (sum_sq_t * inv_norm_u).to(sigma_ptr.dtype.element_ty))


@triton.jit
def _power_iteration_backward_kernel(grad_sigma_ptr, u_ptr, v_ptr, grad_w_ptr, M, N,
                                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Gradient of power-iteration sigma w.r.t. W (Miyato et al. 2018: u, v held constant):
    grad_W[b, r, c] = grad_sigma[b] * v[b, r] * u[b, c].

    Grid (batch * row tiles * column tiles,), flattened so large batches fit in axis 0; each
    program writes one BLOCK_M x BLOCK_N outer-product tile, no per-element index arithmetic.
    """
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    b = (pid // (tiles_m * tiles_n)).to(tl.int64)
    tile = pid % (tiles_m * tiles_n)
    rows = (tile // tiles_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = (tile % tiles_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    # The rule of _common.accumulation_dtype, resolved at compile time.
    acc_ty = tl.float64 if grad_w_ptr.dtype.element_ty == tl.float64 else tl.float32
    g = tl.load(grad_sigma_ptr + b).to(acc_ty)
    v = tl.load(v_ptr + b * M + rows, mask=rows < M, other=0.0).to(acc_ty)
    u = tl.load(u_ptr + b * N + cols, mask=cols < N, other=0.0).to(acc_ty)
    grad = (g * v)[:, None] * u[None, :]
    mask = (rows < M)[:, None] & (cols < N)[None, :]
    tl.store(grad_w_ptr + b * M * N + rows.to(tl.int64)[:, None] * N + cols[None, :],
             grad.to(grad_w_ptr.dtype.element_ty), mask=mask)


# Row and column blocks: a tile of BLOCK_M rows streams BLOCK_K columns at once (the row pass),
# a column tile sums BLOCK_N entries of every row block's partial (the column pass).
_STREAM_ELEMENTS = 4096
_MIN_ROWS, _MAX_ROWS = 4, 64
_MIN_COLUMNS, _MAX_COLUMNS = 16, 1024
_NUM_WARPS = 4
# Entries of the per-block norm partials summed at once.
_BLOCK_R = 64


def launch_config(count: int, m: int, n: int, device: torch.device) -> dict:
    """Blocks, grid and phases of `_power_iteration_kernel` for `count` m x n matrices."""
    programs = persistent_programs(device)
    block_m = block_for(count * m, programs, _MIN_ROWS, _MAX_ROWS)
    block_n = block_for(count * n, programs, _MIN_COLUMNS, _MAX_COLUMNS)
    block_k = max(_MIN_COLUMNS, min(triton.next_power_of_2(n), _STREAM_ELEMENTS // block_m))
    row_blocks, column_blocks = triton.cdiv(m, block_m), triton.cdiv(n, block_n)
    tiles = count * max(row_blocks, column_blocks)
    return dict(programs=min(programs, tiles), row_blocks=row_blocks,
                column_blocks=column_blocks, BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_N=block_n)


# The largest matrix one program holds in registers across the iterations, in bytes of the
# accumulation dtype once padded to powers of two (16384 float32 entries: 64 a thread at 8 warps),
# and the warps that hold it.
_RESIDENT_BYTES = 64 * 1024
_RESIDENT_WARPS = 8


def resident_blocks(m: int, n: int, dtype: torch.dtype) -> tuple[int, int] | None:
    """(BLOCK_M, BLOCK_N) of `_resident_power_iteration_kernel` for m x n matrices of `dtype`,
    or None where they do not fit one program (the split kernel runs them)."""
    block_m, block_n = triton.next_power_of_2(m), max(triton.next_power_of_2(n), _MIN_COLUMNS)
    fits = block_m * block_n * torch.finfo(accumulation_dtype(dtype)).bits // 8 <= _RESIDENT_BYTES
    return (block_m, block_n) if fits else None


# Columns of W a Gram tile multiplies at once, and the tile sides tried, largest first (tl.dot
# needs 16 or more).
_GRAM_BLOCK_K = 32
_GRAM_BLOCKS = (64, 32, 16)
# Forming G reads about m^2 n / 64 entries (64-row tiles from L2); each iteration then saves
# about 3 m n entries (the split kernel's two sweeps of W and its partials) and a grid barrier,
# so the Gram route pays for itself once m <= 192 (iters - 1).
_GRAM_PAYBACK_ROWS = 192


def gram_launch_config(count: int, m: int, n: int, device: torch.device) -> dict:
    """Blocks, grid and phases of `_gram_power_iteration_kernel` for `count` m x n matrices:
    the largest Gram tile whose upper triangle gives every program a tile (else the smallest),
    and row and column blocks as the split kernel's."""
    programs = persistent_programs(device)
    sides = [side for side in _GRAM_BLOCKS if side <= max(_MIN_COLUMNS, triton.next_power_of_2(m))]
    block_g = next((side for side in sides
                    if count * (blocks := triton.cdiv(m, side)) * (blocks + 1) // 2 >= programs),
                   sides[-1])
    gram_blocks = triton.cdiv(m, block_g)
    block_m = block_for(count * m, programs, _MIN_ROWS, _MAX_ROWS)
    block_n = block_for(count * n, programs, _MIN_COLUMNS, _MAX_COLUMNS)
    padded_m = max(_MIN_COLUMNS, triton.next_power_of_2(m))
    row_blocks, column_blocks = triton.cdiv(m, block_m), triton.cdiv(n, block_n)
    tiles = count * max(gram_blocks * gram_blocks, row_blocks, column_blocks)
    return dict(programs=min(programs, tiles), gram_blocks=gram_blocks, row_blocks=row_blocks,
                column_blocks=column_blocks, BLOCK_G=block_g, BLOCK_K=_GRAM_BLOCK_K,
                BLOCK_M=block_m, BLOCK_C=min(padded_m, _STREAM_ELEMENTS // block_m),
                BLOCK_N=block_n, BLOCK_V=min(padded_m, _STREAM_ELEMENTS // block_n))


def route(m: int, n: int, iters: int, dtype: torch.dtype) -> str:
    """The kernel `power_iteration` runs m x n matrices of `dtype` on: "resident" where a matrix
    fits one program, "gram" for wide matrices once forming W W^T pays for itself (float64
    excepted: its products would leave the tensor cores), "split" otherwise."""
    if resident_blocks(m, n, dtype):
        return "resident"
    if dtype != torch.float64 and m < n and m <= _GRAM_PAYBACK_ROWS * (iters - 1):
        return "gram"
    return "split"


def power_iteration(weight: torch.Tensor, u: torch.Tensor, iters: int):
    """(sigma (...), u (..., n), v (..., m)) after `iters` power-iteration steps on W (..., m, n).

    See _power_iteration_kernel for the math. Inputs are contiguous, on one device, of one
    floating dtype (the op checks them first: lipkernels.ops.power_iteration); outputs are new
    tensors in weight's dtype.
    """
    *batch, m, n = weight.shape
    count = weight.numel() // (m * n)
    outputs = (weight.new_empty(batch), weight.new_empty((*batch, n)),
               weight.new_empty((*batch, m)))
    if count == 0:
        return outputs
    kernel = route(m, n, iters, weight.dtype)
    if kernel == "resident":
        block_m, block_n = resident_blocks(m, n, weight.dtype)
        launchable(_resident_power_iteration_kernel)[(count,)](
            weight, u, *outputs, iters, m, n, BLOCK_M=block_m, BLOCK_N=block_n,
            num_warps=_RESIDENT_WARPS)
    elif kernel == "gram":
        _launch_gram(weight, u, outputs, iters, count, m, n)
    else:
        _launch_split(weight, u, outputs, iters, count, m, n)
    return outputs


def _launch_split(weight, u, outputs, iters, count, m, n):
    config = launch_config(count, m, n, weight.device)
    programs, row_blocks = config.pop("programs"), config.pop("row_blocks")
    column_blocks = config.pop("column_blocks")
    scratch = dict(dtype=accumulation_dtype(weight.dtype), device=weight.device)
    wu, t = torch.empty(count, m, **scratch), torch.empty(count, n, **scratch)
    t_partial = torch.empty(count * row_blocks, n, **scratch)
    row_squares = torch.empty(count * row_blocks, **scratch)
    column_squares = torch.empty(count * column_blocks, **scratch)
    counter = torch.zeros(1, dtype=torch.int32, device=weight.device)
    for first, last in phase_spans(2 * iters + 1, weight.device):
        launchable(_power_iteration_kernel)[(programs,)](
            weight, u, *outputs, wu, t, t_partial, row_squares, column_squares, counter, first,
            last, iters, count, m, n, row_blocks, column_blocks, BLOCK_R=_BLOCK_R,
            num_warps=_NUM_WARPS, **config)


def _launch_gram(weight, u, outputs, iters, count, m, n):
    config = gram_launch_config(count, m, n, weight.device)
    programs, gram_blocks = config.pop("programs"), config.pop("gram_blocks")
    row_blocks, column_blocks = config.pop("row_blocks"), config.pop("column_blocks")
    scratch = dict(dtype=accumulation_dtype(weight.dtype), device=weight.device)
    gram = torch.empty(count, m, m, **scratch) if iters > 1 else torch.empty(0, **scratch)
    g, t = torch.empty(2, count, m, **scratch), torch.empty(count, n, **scratch)
    first_squares = torch.empty(count * gram_blocks, **scratch)
    dots, squares = (torch.empty(2, count * row_blocks, **scratch) for _ in range(2))
    column_squares = torch.empty(count * column_blocks, **scratch)
    counter = torch.zeros(1, dtype=torch.int32, device=weight.device)
    for first, last in phase_spans(iters + 2, weight.device):
        launchable(_gram_power_iteration_kernel)[(programs,)](
            weight, u, *outputs, gram, g, t, first_squares, dots, squares, column_squares,
            counter, first, last, iters, count, m, n, gram_blocks, row_blocks, column_blocks,
            BLOCK_R=_BLOCK_R, OPERAND=dot_operand_dtype(weight),
            PRECISION=float32_accurate_precision(weight.dtype), num_warps=_NUM_WARPS, **config)


def power_iteration_backward(grad_sigma: torch.Tensor, u: torch.Tensor, v: torch.Tensor):
    """grad_weight (..., m, n) = grad_sigma[..., None, None] * v[..., :, None] * u[..., None, :]."""
    *batch, n = u.shape
    m = v.shape[-1]
    count = u.numel() // n
    grad_weight = u.new_empty((*batch, m, n))
    block_m, block_n, num_warps = tile_shape(m, n)
    grid = (count * triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
    launchable(_power_iteration_backward_kernel)[grid](
        grad_sigma, u, v, grad_weight, m, n, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps)
    return grad_weight
