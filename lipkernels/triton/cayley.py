"""Triton Cayley transform: forming A, the inverse and Q in one launch, one program per matrix.

Trockman & Kolter, "Orthogonalizing Convolutional Layers with the Cayley Transform", ICLR 2021.
For a tall W (..., m, n), m >= n, real or complex (lipkernels/reference/cayley.py):
    forward    U = W[:n], V = W[n:], A = U - U^H + V^H V, M = I + A, X = M^{-1},
               Q = [2X - I ; -2 V X]                      (= [X (I - A) ; -2 V X])
    backward   G_A = 2 X^H (V^H G_bot - G_top) X^H,
               grad_W = [G_A - G_A^H ; V (G_A + G_A^H) - 2 G_bot X^H]
where G_top, G_bot are the top n and bottom m - n rows of grad_Q (PyTorch's convention for complex
gradients of a real loss). The backward needs no solve: six small GEMMs per matrix.

The inverse. M's Hermitian part is I + V^H V >= I, and so is that of every Schur complement of
M, so Gauss-Jordan elimination without pivoting never meets a pivot block of small singular
values: it is stable here, and has no data-dependent control flow. It runs in place in the
output X (n x n): block step K inverts the BLOCK x BLOCK diagonal block D = M_KK in registers
(scalar Gauss-Jordan on a register tile), then, with c_i = M_iK D,
    M_ij <- M_ij - c_i M_Kj,   M_iK <- -c_i   (i, j != K),   then   M_Kj <- D M_Kj,   M_KK <- D,
rank-BLOCK updates by tl.dot (the pivot rows scaled after the others have read them); after the
last step the buffer holds M^{-1}. Why global memory and
not registers: one program owns a whole matrix (a Gauss-Jordan step couples every entry, and
programs cannot wait for each other), n reaches 512 (2 MB of complex64), and the register file
holds a few BLOCK x BLOCK tiles; each pivot step sweeps the matrix through L2. Small n
(<= BLOCK) needs no special path: it is one diagonal block, inverted in registers. Between
phases, tl.debug_barrier (a CTA barrier, which also orders the program's global memory) makes
one phase's stores visible to the next phase's loads.

`invert_over_grid` runs the same elimination with the row blocks of a stack of matrices spread
over a persistent launch of a program per SM (grid barriers between the steps, each pivot row
scaled by its program one step late, so that no phase writes what another reads), for few
large matrices, where a program per matrix would leave most SMs idle (cayley_conv2d's forward
takes it on its route over the grid, `cayley_conv2d.over_grid_pays`).

Complex tensors travel as torch.view_as_real views (interleaved re/im; Triton has no complex
dtype): every tile is a (re, im) pair and a complex product four real tl.dot. Strides are in
real elements, so transposed or conjugated operands (U^H, V^H, X^H, a wide matrix's transpose)
are the same buffers read with swapped strides. Accumulation is in the input's real dtype
(float32 or float64, the only dtypes of this op) with IEEE products: TF32 would cost the
inverse its accuracy.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (H100_GRID_BARRIER_S, H100_SIMT_FP32_FLOPS, H100_SM_L2_BYTES_PER_S,
                      H100_SMS, H100_TF32_FLOPS, SPLIT_TF32_PASSES, launchable,
                      persistent_programs, phase_spans)
from ._grid_barrier import grid_barrier

# Tile edge and warps. tl.dot needs tiles of 16 or more. 16 x 16 tiles over 4 warps fit the
# register file for every dtype of both ops, where 32 x 32 tiles spill in the complex kernels at
# 4 and at 8 warps (tests/triton_compile_check.py compiles them for sm_80 and sm_90; the ptxas
# figures are in benchmarks/results/kernel-notes.md). Untuned on a GPU so far.
BLOCK = 16
NUM_WARPS = 4


@triton.jit
def load_tile(ptr, rows, cols, row_stride, col_stride, R, C, CONJ: tl.constexpr,
              COMPLEX: tl.constexpr):
    """(re, im) of the tile ptr[rows, cols] of an R x C matrix, zero outside it; conjugated
    with CONJ. For real data im is zero (and never multiplied: see _dot)."""
    mask = (rows < R)[:, None] & (cols < C)[None, :]
    offsets = rows[:, None] * row_stride + cols[None, :] * col_stride
    re = tl.load(ptr + offsets, mask=mask, other=0.0)
    if COMPLEX:
        im = tl.load(ptr + offsets + 1, mask=mask, other=0.0)
        if CONJ:
            im = -im
    else:
        im = tl.zeros_like(re)
    return re, im


@triton.jit
def store_tile(ptr, rows, cols, row_stride, col_stride, R, C, re, im, COMPLEX: tl.constexpr):
    """ptr[rows, cols] = re + i im inside the R x C matrix."""
    mask = (rows < R)[:, None] & (cols < C)[None, :]
    offsets = rows[:, None] * row_stride + cols[None, :] * col_stride
    tl.store(ptr + offsets, re.to(ptr.dtype.element_ty), mask=mask)
    if COMPLEX:
        tl.store(ptr + offsets + 1, im.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dot(a_re, a_im, b_re, b_im, acc_re, acc_im, COMPLEX: tl.constexpr,
         PRECISION: tl.constexpr = "ieee"):
    """acc + a b for complex (re, im) tiles: four real products; one for real data. out_dtype
    is explicit: Triton 3.6 defaults it to float32 even for float64 operands. PRECISION is
    tl.dot's input_precision: IEEE here (the inverse's accuracy), tf32x3 in the products of
    cayley_conv2d's float32 kernels."""
    acc_ty: tl.constexpr = acc_re.dtype
    acc_re = tl.dot(a_re, b_re, acc_re, input_precision=PRECISION, out_dtype=acc_ty)
    if COMPLEX:
        acc_re = tl.dot(-a_im, b_im, acc_re, input_precision=PRECISION, out_dtype=acc_ty)
        acc_im = tl.dot(a_re, b_im, acc_im, input_precision=PRECISION, out_dtype=acc_ty)
        acc_im = tl.dot(a_im, b_re, acc_im, input_precision=PRECISION, out_dtype=acc_ty)
    return acc_re, acc_im


@triton.jit
def matmul_tile(acc_re, acc_im, a_ptr, a_rs, a_cs, CONJ_A: tl.constexpr, b_ptr, b_rs, b_cs,
                CONJ_B: tl.constexpr, rows, cols, R, C, K, COMPLEX: tl.constexpr,
                BLOCK: tl.constexpr, PRECISION: tl.constexpr = "ieee"):
    """acc + (A B)[rows, cols] for A (R x K) and B (K x C) given by strides (and conjugation)."""
    for k0 in range(0, K, BLOCK):
        ks = k0 + tl.arange(0, BLOCK)
        a_re, a_im = load_tile(a_ptr, rows, ks, a_rs, a_cs, R, K, CONJ_A, COMPLEX)
        b_re, b_im = load_tile(b_ptr, ks, cols, b_rs, b_cs, K, C, CONJ_B, COMPLEX)
        acc_re, acc_im = _dot(a_re, a_im, b_re, b_im, acc_re, acc_im, COMPLEX, PRECISION)
    return acc_re, acc_im


@triton.jit
def store_product(a_ptr, a_rs, a_cs, CONJ_A: tl.constexpr, b_ptr, b_rs, b_cs,
                  CONJ_B: tl.constexpr, out_ptr, o_rs, o_cs, R, C, K, scale,
                  COMPLEX: tl.constexpr, BLOCK: tl.constexpr, PRECISION: tl.constexpr = "ieee"):
    """out (R x C) = scale A B for A (R x K) and B (K x C), every operand given by strides (and
    conjugation); out must not alias A or B."""
    zero = tl.zeros((BLOCK, BLOCK), out_ptr.dtype.element_ty)
    for i0 in range(0, R, BLOCK):
        rows = i0 + tl.arange(0, BLOCK)
        for j0 in range(0, C, BLOCK):
            cols = j0 + tl.arange(0, BLOCK)
            re, im = matmul_tile(zero, zero, a_ptr, a_rs, a_cs, CONJ_A, b_ptr, b_rs, b_cs, CONJ_B,
                                 rows, cols, R, C, K, COMPLEX, BLOCK, PRECISION)
            store_tile(out_ptr, rows, cols, o_rs, o_cs, R, C, scale * re, scale * im, COMPLEX)


@triton.jit
def identity_tile(rows, cols):
    return (rows[:, None] == cols[None, :]).to(tl.float32)


@triton.jit
def form_m_rows(w_ptr, w_rs, w_cs, x_ptr, x_rs, x_cs, i0, m, n, COMPLEX: tl.constexpr,
                BLOCK: tl.constexpr):
    """Rows i0 .. i0 + BLOCK of X <- M = I + U - U^H + V^H V for the tall W (m x n) given by its
    strides."""
    v_ptr = w_ptr + n * w_rs
    rows = i0 + tl.arange(0, BLOCK)
    for j0 in range(0, n, BLOCK):
        cols = j0 + tl.arange(0, BLOCK)
        re, im = load_tile(w_ptr, rows, cols, w_rs, w_cs, n, n, False, COMPLEX)
        # U^H[r, c] = conj(U[c, r]): U read with swapped strides.
        h_re, h_im = load_tile(w_ptr, rows, cols, w_cs, w_rs, n, n, True, COMPLEX)
        re = re - h_re + identity_tile(rows, cols)
        im = im - h_im
        re, im = matmul_tile(re, im, v_ptr, w_cs, w_rs, True, v_ptr, w_rs, w_cs, False,
                             rows, cols, n, n, m - n, COMPLEX, BLOCK)
        store_tile(x_ptr, rows, cols, x_rs, x_cs, n, n, re, im, COMPLEX)


@triton.jit
def form_m(w_ptr, w_rs, w_cs, x_ptr, x_rs, x_cs, m, n, COMPLEX: tl.constexpr,
           BLOCK: tl.constexpr):
    """X <- M = I + U - U^H + V^H V for the tall W (m x n) given by its strides."""
    for i0 in range(0, n, BLOCK):
        form_m_rows(w_ptr, w_rs, w_cs, x_ptr, x_rs, x_cs, i0, m, n, COMPLEX, BLOCK)


@triton.jit
def _invert_block(re, im, COMPLEX: tl.constexpr, BLOCK: tl.constexpr):
    """The inverse of a BLOCK x BLOCK register tile by scalar Gauss-Jordan without pivoting.

    Step k, with p = 1 / T_kk and s = p * (row k with T_kk replaced by 1):
        T_kj <- s_j,   T_ij <- [j != k] T_ij - T_ik s_j   (i != k),
    which turns column k into the inverse's and leaves T^{-1} after the last step. Registers
    cannot be indexed, so row k, column k and T_kk are broadcast to whole tiles by products
    with the one-hot matrix E_k (E_k[i, j] = [j == k]): E_k T repeats row k, T E_k^T column k.
    The products are exact (one nonzero term each) and, unlike tl.sum (a jit function), cost
    the Triton interpreter no nested call, its main overhead.
    """
    index = tl.arange(0, BLOCK)
    # Full tiles (not broadcast rows/columns): the one-hot matrices are tl.dot operands.
    rows = tl.broadcast_to(index[:, None], (BLOCK, BLOCK))
    cols = tl.broadcast_to(index[None, :], (BLOCK, BLOCK))
    for k in range(BLOCK):
        in_row = rows == k
        in_col = cols == k
        pick_row = in_col.to(re.dtype)
        pick_col = in_row.to(re.dtype)
        row_re = tl.dot(pick_row, re, input_precision="ieee", out_dtype=re.dtype)
        col_re = tl.dot(re, pick_col, input_precision="ieee", out_dtype=re.dtype)
        pivot_re = tl.dot(pick_row, col_re, input_precision="ieee", out_dtype=re.dtype)
        row_re = tl.where(in_col, 1.0, row_re)
        if COMPLEX:
            row_im = tl.dot(pick_row, im, input_precision="ieee", out_dtype=re.dtype)
            col_im = tl.dot(im, pick_col, input_precision="ieee", out_dtype=re.dtype)
            pivot_im = tl.dot(pick_row, col_im, input_precision="ieee", out_dtype=re.dtype)
            row_im = tl.where(in_col, 0.0, row_im)
            scale = 1.0 / (pivot_re * pivot_re + pivot_im * pivot_im)
            p_re = pivot_re * scale
            p_im = -pivot_im * scale
            s_re = p_re * row_re - p_im * row_im
            s_im = p_re * row_im + p_im * row_re
            new_im = tl.where(in_col, 0.0, im) - (col_re * s_im + col_im * s_re)
            im = tl.where(in_row, s_im, new_im)
            new_re = tl.where(in_col, 0.0, re) - (col_re * s_re - col_im * s_im)
        else:
            s_re = row_re / pivot_re
            new_re = tl.where(in_col, 0.0, re) - col_re * s_re
        re = tl.where(in_row, s_re, new_re)
    return re, im


@triton.jit
def _pivot_inverse(x_ptr, x_rs, x_cs, k0, n, COMPLEX: tl.constexpr, BLOCK: tl.constexpr):
    """(re, im) of the inverse of the diagonal block at (k0, k0) of the n x n X. A partial last
    block is completed by the identity: its inverse is then the inverse of the in-range part,
    padded by the identity, and the padding is never stored."""
    pivot = k0 + tl.arange(0, BLOCK)
    d_re, d_im = load_tile(x_ptr, pivot, pivot, x_rs, x_cs, n, n, False, COMPLEX)
    padding = (pivot[:, None] == pivot[None, :]) & (pivot[:, None] >= n)
    return _invert_block(tl.where(padding, 1.0, d_re), d_im, COMPLEX, BLOCK)


@triton.jit
def _scale_pivot_rows(x_ptr, x_rs, x_cs, k0, n, d_re, d_im, COMPLEX: tl.constexpr,
                      BLOCK: tl.constexpr, PRECISION: tl.constexpr = "ieee"):
    """The pivot rows of Gauss-Jordan step K, after every other row's elimination:
    M_Kj <- D M_Kj (j != K) and M_KK <- D, for D = M_KK^{-1} (re, im)."""
    pivot = k0 + tl.arange(0, BLOCK)
    for j0 in range(0, n, BLOCK):
        if j0 != k0:
            cols = j0 + tl.arange(0, BLOCK)
            r_re, r_im = load_tile(x_ptr, pivot, cols, x_rs, x_cs, n, n, False, COMPLEX)
            r_re, r_im = _dot(d_re, d_im, r_re, r_im, tl.zeros_like(r_re), tl.zeros_like(r_im),
                              COMPLEX, PRECISION)
            store_tile(x_ptr, pivot, cols, x_rs, x_cs, n, n, r_re, r_im, COMPLEX)
    store_tile(x_ptr, pivot, pivot, x_rs, x_cs, n, n, d_re, d_im, COMPLEX)


@triton.jit
def _eliminate_rows(x_ptr, x_rs, x_cs, i0, k0, n, d_re, d_im, COMPLEX: tl.constexpr,
                    BLOCK: tl.constexpr, PRECISION: tl.constexpr = "ieee"):
    """Rows I (i0 .. i0 + BLOCK) of Gauss-Jordan step K from the pivot rows before their
    scaling: c = M_IK D, M_Ij <- M_Ij - c M_Kj (j != K), M_IK <- -c, for D = M_KK^{-1}."""
    rows = i0 + tl.arange(0, BLOCK)
    pivot = k0 + tl.arange(0, BLOCK)
    a_re, a_im = load_tile(x_ptr, rows, pivot, x_rs, x_cs, n, n, False, COMPLEX)
    c_re, c_im = _dot(a_re, a_im, d_re, d_im, tl.zeros_like(a_re), tl.zeros_like(a_im), COMPLEX,
                      PRECISION)
    for j0 in range(0, n, BLOCK):
        if j0 != k0:
            cols = j0 + tl.arange(0, BLOCK)
            t_re, t_im = load_tile(x_ptr, rows, cols, x_rs, x_cs, n, n, False, COMPLEX)
            r_re, r_im = load_tile(x_ptr, pivot, cols, x_rs, x_cs, n, n, False, COMPLEX)
            t_re, t_im = _dot(-c_re, -c_im, r_re, r_im, t_re, t_im, COMPLEX, PRECISION)
            store_tile(x_ptr, rows, cols, x_rs, x_cs, n, n, t_re, t_im, COMPLEX)
    store_tile(x_ptr, rows, pivot, x_rs, x_cs, n, n, -c_re, -c_im, COMPLEX)


@triton.jit
def _pivot_slot(pivots_ptr, matrix, k, blocks, COMPLEX: tl.constexpr, BLOCK: tl.constexpr):
    """The slot of pivot inverse D_k of `matrix` in the (matrices, blocks, BLOCK, BLOCK) buffer."""
    return pivots_ptr + (matrix * blocks + k) * (2 if COMPLEX else 1) * BLOCK * BLOCK


@triton.jit
def _split_inverse_kernel(w_ptr, x_ptr, pivots_ptr, counter_ptr, first_phase, last_phase,
                          matrices, m, n, w_rs, w_cs, w_size, COMPLEX: tl.constexpr,
                          PRECISION: tl.constexpr, BLOCK: tl.constexpr):
    """X <- M^{-1} for a stack of tall W (w_size real elements apart, strides w_rs, w_cs), X
    contiguous (matrices, n, n), its row blocks over the grid (`invert_over_grid`). Phase 0
    forms M; phase 1 + k runs Gauss-Jordan step k on every row block but the pivot's and scales
    the previous step's pivot rows; the last phase scales the last pivot rows. Each pivot block
    is inverted once, by the program of its row block as soon as it is final (after forming M
    for D_0, after step k - 1 for D_k), into the pivots buffer the next phases read: every
    program inverting D_k itself would cost each a 16 x 16 inverse on CUDA cores per row block
    and phase."""
    blocks = tl.cdiv(n, BLOCK)
    x_rs = (2 if COMPLEX else 1) * n
    x_cs = 2 if COMPLEX else 1
    index = tl.arange(0, BLOCK)
    for phase in range(first_phase, last_phase):
        if phase > first_phase:
            grid_barrier(counter_ptr, (phase - first_phase) * tl.num_programs(0))
        step = phase - 1
        for item in range(tl.program_id(0), matrices * blocks, tl.num_programs(0)):
            matrix = (item // blocks).to(tl.int64)
            i0 = (item % blocks) * BLOCK
            x = x_ptr + matrix * n * x_rs
            if phase == 0:
                form_m_rows(w_ptr + matrix * w_size, w_rs, w_cs, x, x_rs, x_cs, i0, m, n,
                            COMPLEX, BLOCK)
            else:
                if i0 == (step - 1) * BLOCK:
                    d_re, d_im = load_tile(_pivot_slot(pivots_ptr, matrix, step - 1, blocks,
                                                       COMPLEX, BLOCK), index, index,
                                           BLOCK * x_cs, x_cs, BLOCK, BLOCK, False, COMPLEX)
                    _scale_pivot_rows(x, x_rs, x_cs, i0, n, d_re, d_im, COMPLEX, BLOCK,
                                      PRECISION)
                if step < blocks:
                    if i0 != step * BLOCK:
                        d_re, d_im = load_tile(_pivot_slot(pivots_ptr, matrix, step, blocks,
                                                           COMPLEX, BLOCK), index, index,
                                               BLOCK * x_cs, x_cs, BLOCK, BLOCK, False, COMPLEX)
                        _eliminate_rows(x, x_rs, x_cs, i0, step * BLOCK, n, d_re, d_im, COMPLEX,
                                        BLOCK, PRECISION)
            if i0 == (step + 1) * BLOCK:
                # Other threads of the program stored the diagonal block it now inverts.
                tl.debug_barrier()
                d_re, d_im = _pivot_inverse(x, x_rs, x_cs, i0, n, COMPLEX, BLOCK)
                store_tile(_pivot_slot(pivots_ptr, matrix, step + 1, blocks, COMPLEX, BLOCK),
                           index, index, BLOCK * x_cs, x_cs, BLOCK, BLOCK, d_re, d_im, COMPLEX)


@triton.jit
def invert_in_place(x_ptr, x_rs, x_cs, n, COMPLEX: tl.constexpr, BLOCK: tl.constexpr):
    """X <- X^{-1} for the n x n matrix X by blocked Gauss-Jordan without pivoting (module
    docstring). Starts and ends with a barrier: the caller's stores and loads around it touch
    the whole matrix."""
    tl.debug_barrier()
    for k0 in range(0, n, BLOCK):
        d_re, d_im = _pivot_inverse(x_ptr, x_rs, x_cs, k0, n, COMPLEX, BLOCK)
        for i0 in range(0, n, BLOCK):
            if i0 != k0:
                _eliminate_rows(x_ptr, x_rs, x_cs, i0, k0, n, d_re, d_im, COMPLEX, BLOCK)
        tl.debug_barrier()
        _scale_pivot_rows(x_ptr, x_rs, x_cs, k0, n, d_re, d_im, COMPLEX, BLOCK)
        tl.debug_barrier()


@triton.jit
def _assemble_q(w_ptr, w_rs, w_cs, x_ptr, x_rs, x_cs, q_ptr, m, n, COMPLEX: tl.constexpr,
                BLOCK: tl.constexpr):
    """Q = [2X - I ; -2 V X] (Q has W's strides)."""
    zero = tl.zeros((BLOCK, BLOCK), q_ptr.dtype.element_ty)
    for i0 in range(0, n, BLOCK):
        rows = i0 + tl.arange(0, BLOCK)
        for j0 in range(0, n, BLOCK):
            cols = j0 + tl.arange(0, BLOCK)
            re, im = load_tile(x_ptr, rows, cols, x_rs, x_cs, n, n, False, COMPLEX)
            store_tile(q_ptr, rows, cols, w_rs, w_cs, n, n, 2.0 * re - identity_tile(rows, cols),
                       2.0 * im, COMPLEX)
    for r0 in range(0, m - n, BLOCK):
        rows = r0 + tl.arange(0, BLOCK)
        for j0 in range(0, n, BLOCK):
            cols = j0 + tl.arange(0, BLOCK)
            re, im = matmul_tile(zero, zero, w_ptr + n * w_rs, w_rs, w_cs, False, x_ptr, x_rs, x_cs,
                                 False, rows, cols, m - n, n, n, COMPLEX, BLOCK)
            store_tile(q_ptr + n * w_rs, rows, cols, w_rs, w_cs, m - n, n, -2.0 * re, -2.0 * im,
                       COMPLEX)


@triton.jit
def _cayley_kernel(w_ptr, q_ptr, x_ptr, m, n, w_rs, w_cs, x_rs, x_cs,
                   COMPLEX: tl.constexpr, BLOCK: tl.constexpr):
    """One matrix per program: M = I + A into X, X <- M^{-1}, then Q. W and Q are contiguous
    (m x n), X (n x n); strides in real elements."""
    matrix = tl.program_id(0).to(tl.int64)
    w_ptr += matrix * m * w_rs
    q_ptr += matrix * m * w_rs
    x_ptr += matrix * n * x_rs
    form_m(w_ptr, w_rs, w_cs, x_ptr, x_rs, x_cs, m, n, COMPLEX, BLOCK)
    invert_in_place(x_ptr, x_rs, x_cs, n, COMPLEX, BLOCK)
    _assemble_q(w_ptr, w_rs, w_cs, x_ptr, x_rs, x_cs, q_ptr, m, n, COMPLEX, BLOCK)


@triton.jit
def cayley_backward_matrix(g_ptr, g_rs, g_cs, x_ptr, x_rs, x_cs, w_ptr, w_rs, w_cs, out_ptr,
                           o_rs, o_cs, scratch_ptr, m, n, COMPLEX: tl.constexpr,
                           BLOCK: tl.constexpr):
    """grad_W of one matrix into out, every operand given by strides (a wide caller passes
    transposed strides). scratch: two contiguous n x n matrices (strides x_rs, x_cs).

        T   = V^H G_bot - G_top       -> scratch 0
        S   = X^H T                   -> scratch 1
        G_A = 2 S X^H                 -> scratch 0
        out = [G_A - G_A^H ; V G_A + V G_A^H - 2 G_bot X^H]
    """
    zero = tl.zeros((BLOCK, BLOCK), scratch_ptr.dtype.element_ty)
    first = scratch_ptr
    second = scratch_ptr + n * x_rs
    v_ptr = w_ptr + n * w_rs
    g_bot = g_ptr + n * g_rs
    for i0 in range(0, n, BLOCK):
        rows = i0 + tl.arange(0, BLOCK)
        for j0 in range(0, n, BLOCK):
            cols = j0 + tl.arange(0, BLOCK)
            re, im = load_tile(g_ptr, rows, cols, g_rs, g_cs, n, n, False, COMPLEX)
            re, im = matmul_tile(-re, -im, v_ptr, w_cs, w_rs, True, g_bot, g_rs, g_cs, False,
                                 rows, cols, n, n, m - n, COMPLEX, BLOCK)
            store_tile(first, rows, cols, x_rs, x_cs, n, n, re, im, COMPLEX)
    tl.debug_barrier()
    store_product(x_ptr, x_cs, x_rs, True, first, x_rs, x_cs, False, second, x_rs, x_cs, n, n, n,
                  1.0, COMPLEX, BLOCK)
    tl.debug_barrier()
    store_product(second, x_rs, x_cs, False, x_ptr, x_cs, x_rs, True, first, x_rs, x_cs, n, n, n,
                  2.0, COMPLEX, BLOCK)
    tl.debug_barrier()
    for i0 in range(0, n, BLOCK):
        rows = i0 + tl.arange(0, BLOCK)
        for j0 in range(0, n, BLOCK):
            cols = j0 + tl.arange(0, BLOCK)
            re, im = load_tile(first, rows, cols, x_rs, x_cs, n, n, False, COMPLEX)
            h_re, h_im = load_tile(first, rows, cols, x_cs, x_rs, n, n, True, COMPLEX)
            store_tile(out_ptr, rows, cols, o_rs, o_cs, n, n, re - h_re, im - h_im, COMPLEX)
    for r0 in range(0, m - n, BLOCK):
        rows = r0 + tl.arange(0, BLOCK)
        for j0 in range(0, n, BLOCK):
            cols = j0 + tl.arange(0, BLOCK)
            re, im = matmul_tile(zero, zero, v_ptr, w_rs, w_cs, False, first, x_rs, x_cs, False,
                                 rows, cols, m - n, n, n, COMPLEX, BLOCK)
            re, im = matmul_tile(re, im, v_ptr, w_rs, w_cs, False, first, x_cs, x_rs, True,
                                 rows, cols, m - n, n, n, COMPLEX, BLOCK)
            c_re, c_im = matmul_tile(zero, zero, g_bot, g_rs, g_cs, False, x_ptr, x_cs, x_rs, True,
                                     rows, cols, m - n, n, n, COMPLEX, BLOCK)
            store_tile(out_ptr + n * o_rs, rows, cols, o_rs, o_cs, m - n, n, re - 2.0 * c_re,
                       im - 2.0 * c_im, COMPLEX)


@triton.jit
def _cayley_backward_kernel(g_ptr, x_ptr, w_ptr, out_ptr, scratch_ptr, m, n, w_rs, w_cs,
                            x_rs, x_cs, COMPLEX: tl.constexpr, BLOCK: tl.constexpr):
    """One matrix per program; grad_Q, W and grad_W contiguous (m x n), X (n x n), scratch
    (2, n, n) per matrix."""
    matrix = tl.program_id(0).to(tl.int64)
    offset = matrix * m * w_rs
    cayley_backward_matrix(g_ptr + offset, w_rs, w_cs, x_ptr + matrix * n * x_rs, x_rs, x_cs,
                           w_ptr + offset, w_rs, w_cs, out_ptr + offset, w_rs, w_cs,
                           scratch_ptr + 2 * matrix * n * x_rs, m, n, COMPLEX, BLOCK)


def as_real(t: torch.Tensor) -> torch.Tensor:
    """The tensor the kernels address: interleaved (re, im) for complex, t itself for real."""
    return torch.view_as_real(t) if t.is_complex() else t


def matrix_strides(t: torch.Tensor) -> tuple[int, int]:
    """(row, column) strides of the last two dims of a contiguous t, in real elements."""
    width = 2 if t.is_complex() else 1
    return t.shape[-1] * width, width


# Programs of the per-matrix Cayley kernels resident on one SM: 128 threads of at most 207
# registers (tests/triton_compile_check.py) fit twice in its 65536 registers.
PROGRAMS_PER_SM = 2
# Real FLOPs of a complex multiply-add.
COMPLEX_MAC_FLOPS = 8


def pivot_inverse_seconds() -> float:
    """Modelled H100 time of one BLOCK x BLOCK complex pivot inverse (`_invert_block`): BLOCK
    steps of six real BLOCK^3 one-hot products, IEEE, on one SM's CUDA cores."""
    return BLOCK * 6 * 2 * BLOCK ** 3 / (H100_SIMT_FP32_FLOPS / H100_SMS)


def inverse_seconds(matrices: int, n: int, over_grid: bool) -> float:
    """Modelled H100 time of inverting `matrices` complex64 n x n M by blocked Gauss-Jordan:
    over_grid, by `invert_over_grid` (n / BLOCK + 2 phases and their grid barriers, each row
    block's tile products in tf32x3 on its SM's tensor cores or bound by reading two tiles and
    writing one per product, from L2 at one SM's rate, and in each phase the pivot inverse one
    program computes for the next); else a program per matrix (`invert_in_place`, in waves of
    PROGRAMS_PER_SM x 132, n^3 IEEE multiply-adds on one SM's CUDA cores or its pivot steps'
    L2 traffic, and its n / BLOCK pivot inverses). docs/performance.md ("cayley_conv2d")
    tabulates it."""
    blocks = triton.cdiv(n, BLOCK)
    sweep_bytes = 3 * 8 * BLOCK ** 2  # two tiles read, one written, complex64
    if over_grid:
        tensor_per_sm = H100_TF32_FLOPS / (SPLIT_TF32_PASSES * H100_SMS)
        tile = max(COMPLEX_MAC_FLOPS * BLOCK ** 3 / tensor_per_sm,
                   sweep_bytes / H100_SM_L2_BYTES_PER_S)
        row_blocks = triton.cdiv(matrices * blocks, H100_SMS)
        return (blocks + 2) * (row_blocks * blocks * tile + pivot_inverse_seconds()
                               + H100_GRID_BARRIER_S)
    waves = triton.cdiv(matrices, PROGRAMS_PER_SM * H100_SMS)
    return waves * (max(COMPLEX_MAC_FLOPS * n ** 3 / (H100_SIMT_FP32_FLOPS / H100_SMS),
                        blocks * blocks ** 2 * sweep_bytes / H100_SM_L2_BYTES_PER_S)
                    + blocks * pivot_inverse_seconds())


def invert_over_grid(W: torch.Tensor, precision: str, programs: int | None = None) -> torch.Tensor:
    """X = (I + A)^{-1} (..., n, n) of a contiguous stack of tall W (..., m, n), complex: M
    formed and inverted by the row blocks of every matrix spread over one persistent launch of
    a program per SM, a grid barrier after each of the n / BLOCK + 1 Gauss-Jordan phases (the
    blocked Gauss-Jordan of `invert_in_place`, its pivot rows scaled one step late so that a
    phase never writes what another program reads in it; each pivot block inverted once, into
    a buffer of pivot inverses). `precision` is tl.dot's for the eliminations; `programs` caps
    the grid (tests steer it below the work items)."""
    m, n = W.shape[-2:]
    matrices = W.numel() // (m * n)
    X = W.new_empty((*W.shape[:-2], n, n))
    blocks = triton.cdiv(n, BLOCK)
    pivots = W.new_empty((matrices, blocks, BLOCK, BLOCK))
    programs = min(programs or persistent_programs(W.device), matrices * blocks)
    counter = torch.zeros(1, dtype=torch.int32, device=W.device)
    for first, last in phase_spans(blocks + 2, W.device):
        launchable(_split_inverse_kernel)[(programs,)](
            as_real(W), as_real(X), as_real(pivots), counter, first, last, matrices, m, n,
            *matrix_strides(W), 2 * m * n, COMPLEX=True, PRECISION=precision, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return X


def cayley(W: torch.Tensor):
    """(Q, X) for a tall W (..., m, n), as the C++ op; both contiguous, in W's dtype."""
    W = W.contiguous()
    m, n = W.shape[-2:]
    Q = torch.empty_like(W)
    X = W.new_empty((*W.shape[:-2], n, n))
    launchable(_cayley_kernel)[(W.numel() // (m * n),)](
        as_real(W), as_real(Q), as_real(X), m, n, *matrix_strides(W), *matrix_strides(X),
        COMPLEX=W.is_complex(), BLOCK=BLOCK, num_warps=NUM_WARPS)
    return Q, X


def cayley_backward(grad_Q: torch.Tensor, X: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """grad_W for the output gradient grad_Q, from the forward's X and W."""
    grad_Q, X, W = grad_Q.contiguous(), X.contiguous(), W.contiguous()
    m, n = W.shape[-2:]
    grad_W = torch.empty_like(W)
    scratch = W.new_empty((*W.shape[:-2], 2, n, n))
    launchable(_cayley_backward_kernel)[(W.numel() // (m * n),)](
        as_real(grad_Q), as_real(X), as_real(W), as_real(grad_W), as_real(scratch), m, n,
        *matrix_strides(W), *matrix_strides(X), COMPLEX=W.is_complex(), BLOCK=BLOCK,
        num_warps=NUM_WARPS)
    return grad_W
