"""Triton frequency-domain core of the Cayley convolution: per frequency, the Cayley transform of
the response and its application to the spectrum, in one launch, one program per frequency.

Trockman & Kolter, "Orthogonalizing Convolutional Layers with the Cayley Transform", ICLR 2021.
For response R_f (C_out x C_in) and spectrum S_f (C_in x B), complex (the schema in csrc/ops.cpp;
the formulas as csrc/cpu/cayley_conv2d.cpp derives them):
    T = R_f (C_out >= C_in) or R_f^T (plain transpose), tall m x n, n = min(C_in, C_out), V = T[n:],
    X = (I + A)^{-1} from T (lipkernels/triton/cayley.py), Q = P or P^T, P = [2X - I ; -2 V X],
    forward    tall  W = X S,                       output = [2W - S ; -2 V W]
               wide  W = X^T (S_top - V^T S_bot),   output = 2W - S_top       (inverse X, solved W)
    backward   tall  p = X^H (G_top - V^H G_bot),   grad_S = 2p - G_top
               wide  p = conj(X) G,                 grad_S = [2p - G ; -2 conj(V) p]
               K = p W^H,  D = 2 (K^H - K),  E = -2 (K + K^H),
               tall  grad_R = [D ; V E - 2 G_bot W^H],   wide  grad_R = [D , E V^T - 2 p S_bot^H].
The backward has no n x n x n product: grad_Q = G S^H has rank B, and the closed-form Cayley
backward of it factors through the n x B matrices p and W.

Q is never formed. Both directions apply one of two forms, with X', V' standing for X, V or
their transposes or conjugates (read through strides) and Y the n x B solved matrix they keep,
    tall form  [2X' - I ; -2 V' X'] S = [2Y - S ; -2 V' Y],   Y = X' S
    wide form  [2X' - I , -2 X' V'] S = 2Y - S_top,           Y = X' (S_top - V' S_bot),
forward tall, forward wide, backward tall, backward wide using tall form (X, V), wide form
(X^T, V^T), wide form (X^H, V^H) and tall form (conj X, conj V). The wide form puts
S_top - V' S_bot in its output until Y has read it.

Two routes, chosen per shape by the time model `route_seconds` (`over_grid_pays`; no GPU
measurement chooses yet). Many frequencies of few channels: a program per frequency forms and
inverts M and applies the forms, one launch a direction. Few frequencies of many channels (12 of
512 x 512 at 512@4x4 would fill 12 of 132 SMs): the inverse over the grid
(`cayley.invert_over_grid`), then every product as its own launch of a program per output tile
and frequency (`_product_kernel`, 64 x 64 tiles for complex64: wgmma's M on sm_90), and K's
skew-Hermitian and Hermitian parts from tile pairs (`_skew_and_hermitian_pairs_kernel`: the
tiles (I, J) and (J, I) of K from p and W directly, K never stored).

Precision: the products with the spectra (the forms, K, the non-square blocks) run on tensor
cores in three TF32 passes for complex64 (tf32x3, float32's accuracy), IEEE for complex128; the
inverse in a frequency's program stays IEEE (lipkernels/triton/cayley.py), over the grid its
eliminations take the products' precision.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (H100_LAUNCH_S, H100_SM_L2_BYTES_PER_S, H100_SMS, H100_TF32_FLOPS,
                      SPLIT_TF32_PASSES, float32_accurate_precision, launchable)
from .cayley import (BLOCK, COMPLEX_MAC_FLOPS, NUM_WARPS, PROGRAMS_PER_SM, as_real, form_m,
                     inverse_seconds, invert_in_place, invert_over_grid, load_tile, matmul_tile,
                     store_product, store_tile)

# Tiles of the products split over the grid: 64 x 64 for complex64 (64 rows are wgmma's M on
# sm_90), 32 x 32 for complex128 (float64 accumulators take twice the registers), 16 deep, one
# warpgroup (register and spill figures: tests/triton_compile_check.py).
SPLIT_TILES = {torch.complex64: 64, torch.complex128: 32}
SPLIT_DEPTH = 16
SPLIT_WARPS = 4
# The tile pairs of K hold two complex accumulators: 32 x 32 (64 x 64 spill in tf32x3).
PAIR_TILE = 32


@triton.jit
def _apply_tall_form(x_ptr, x_rs, x_cs, v_ptr, v_rs, v_cs, CONJ: tl.constexpr, s_ptr, s_rs,
                     s_cs, out_ptr, o_rs, o_cs, y_ptr, m, n, B, BLOCK: tl.constexpr,
                     PRECISION: tl.constexpr):
    """out (m x B) = [2Y - S ; -2 V' Y] and y (n x B, contiguous) = Y = X' S for S (n x B);
    X' (n x n), V' ((m - n) x n) given by strides, both conjugated with CONJ."""
    zero = tl.zeros((BLOCK, BLOCK), out_ptr.dtype.element_ty)
    for i0 in range(0, n, BLOCK):
        rows = i0 + tl.arange(0, BLOCK)
        for j0 in range(0, B, BLOCK):
            cols = j0 + tl.arange(0, BLOCK)
            re, im = matmul_tile(zero, zero, x_ptr, x_rs, x_cs, CONJ, s_ptr, s_rs, s_cs, False,
                                 rows, cols, n, B, n, True, BLOCK, PRECISION)
            store_tile(y_ptr, rows, cols, 2 * B, 2, n, B, re, im, True)
            s_re, s_im = load_tile(s_ptr, rows, cols, s_rs, s_cs, n, B, False, True)
            store_tile(out_ptr, rows, cols, o_rs, o_cs, n, B, 2.0 * re - s_re, 2.0 * im - s_im,
                       True)
    tl.debug_barrier()
    for r0 in range(0, m - n, BLOCK):
        rows = r0 + tl.arange(0, BLOCK)
        for j0 in range(0, B, BLOCK):
            cols = j0 + tl.arange(0, BLOCK)
            re, im = matmul_tile(zero, zero, v_ptr, v_rs, v_cs, CONJ, y_ptr, 2 * B, 2, False,
                                 rows, cols, m - n, B, n, True, BLOCK, PRECISION)
            store_tile(out_ptr + n * o_rs, rows, cols, o_rs, o_cs, m - n, B, -2.0 * re,
                       -2.0 * im, True)


@triton.jit
def _apply_wide_form(x_ptr, x_rs, x_cs, v_ptr, v_rs, v_cs, CONJ: tl.constexpr, s_ptr, s_rs,
                     s_cs, out_ptr, o_rs, o_cs, y_ptr, m, n, B, BLOCK: tl.constexpr,
                     PRECISION: tl.constexpr):
    """out (n x B) = 2Y - S_top and y (n x B, contiguous) = Y = X' (S_top - V' S_bot) for S
    (m x B); X' (n x n), V' (n x (m - n)) given by strides, both conjugated with CONJ."""
    zero = tl.zeros((BLOCK, BLOCK), out_ptr.dtype.element_ty)
    for i0 in range(0, n, BLOCK):
        rows = i0 + tl.arange(0, BLOCK)
        for j0 in range(0, B, BLOCK):
            cols = j0 + tl.arange(0, BLOCK)
            re, im = matmul_tile(zero, zero, v_ptr, v_rs, v_cs, CONJ, s_ptr + n * s_rs, s_rs,
                                 s_cs, False, rows, cols, n, B, m - n, True, BLOCK, PRECISION)
            s_re, s_im = load_tile(s_ptr, rows, cols, s_rs, s_cs, n, B, False, True)
            store_tile(out_ptr, rows, cols, o_rs, o_cs, n, B, s_re - re, s_im - im, True)
    tl.debug_barrier()
    store_product(x_ptr, x_rs, x_cs, CONJ, out_ptr, o_rs, o_cs, False, y_ptr, 2 * B, 2, n, B, n,
                  1.0, True, BLOCK, PRECISION)
    tl.debug_barrier()
    for i0 in range(0, n, BLOCK):
        rows = i0 + tl.arange(0, BLOCK)
        for j0 in range(0, B, BLOCK):
            cols = j0 + tl.arange(0, BLOCK)
            y_re, y_im = load_tile(y_ptr, rows, cols, 2 * B, 2, n, B, False, True)
            s_re, s_im = load_tile(s_ptr, rows, cols, s_rs, s_cs, n, B, False, True)
            store_tile(out_ptr, rows, cols, o_rs, o_cs, n, B, 2.0 * y_re - s_re,
                       2.0 * y_im - s_im, True)


@triton.jit
def _difference_of_products(a_ptr, a_rs, a_cs, CONJ_A: tl.constexpr, b_ptr, b_rs, b_cs,
                            CONJ_B: tl.constexpr, c_ptr, c_rs, c_cs, CONJ_C: tl.constexpr,
                            d_ptr, d_rs, d_cs, CONJ_D: tl.constexpr, out_ptr, o_rs, o_cs, R, C,
                            K1, K2, BLOCK: tl.constexpr, PRECISION: tl.constexpr):
    """out (R x C) = A B - 2 C D for A (R x K1), B (K1 x C), C (R x K2), D (K2 x C) given by
    strides and conjugation flags."""
    zero = tl.zeros((BLOCK, BLOCK), out_ptr.dtype.element_ty)
    for i0 in range(0, R, BLOCK):
        rows = i0 + tl.arange(0, BLOCK)
        for j0 in range(0, C, BLOCK):
            cols = j0 + tl.arange(0, BLOCK)
            re, im = matmul_tile(zero, zero, a_ptr, a_rs, a_cs, CONJ_A, b_ptr, b_rs, b_cs,
                                 CONJ_B, rows, cols, R, C, K1, True, BLOCK, PRECISION)
            c_re, c_im = matmul_tile(zero, zero, c_ptr, c_rs, c_cs, CONJ_C, d_ptr, d_rs, d_cs,
                                     CONJ_D, rows, cols, R, C, K2, True, BLOCK, PRECISION)
            store_tile(out_ptr, rows, cols, o_rs, o_cs, R, C, re - 2.0 * c_re, im - 2.0 * c_im,
                       True)


@triton.jit
def _skew_and_hermitian_parts(k_ptr, k_rs, d_ptr, d_rs, n, BLOCK: tl.constexpr):
    """d (n x n, row stride d_rs) = 2 (K^H - K) and K <- -2 (K + K^H) in place, for the
    contiguous n x n K (row stride k_rs). Tiles go in pairs (I, J), (J, I), both read before
    either is written, with a barrier between."""
    for i0 in range(0, n, BLOCK):
        rows = i0 + tl.arange(0, BLOCK)
        for j0 in range(i0, n, BLOCK):
            cols = j0 + tl.arange(0, BLOCK)
            k_re, k_im = load_tile(k_ptr, rows, cols, k_rs, 2, n, n, False, True)
            # (K^H)[rows, cols] = conj(K[cols, rows]): K read with swapped strides.
            h_re, h_im = load_tile(k_ptr, rows, cols, 2, k_rs, n, n, True, True)
            d_re = 2.0 * (h_re - k_re)
            d_im = 2.0 * (h_im - k_im)
            e_re = -2.0 * (k_re + h_re)
            e_im = -2.0 * (k_im + h_im)
            # Other threads of the program read what these stores overwrite.
            tl.debug_barrier()
            store_tile(d_ptr, rows, cols, d_rs, 2, n, n, d_re, d_im, True)
            store_tile(k_ptr, rows, cols, k_rs, 2, n, n, e_re, e_im, True)
            # The mirrored tile: D[cols, rows] = -conj(D[rows, cols]), E[cols, rows] =
            # conj(E[rows, cols]), stored through swapped strides.
            store_tile(d_ptr, rows, cols, 2, d_rs, n, n, -d_re, d_im, True)
            store_tile(k_ptr, rows, cols, 2, k_rs, n, n, e_re, -e_im, True)


@triton.jit
def _frequency(m, n, B, TALL: tl.constexpr):
    """(f, C_out, C_in, n x n X's row stride, elements of X, of S, of output, of an n x B matrix
    per frequency, in real elements) for this program's frequency f."""
    if TALL:
        c_out = m
        c_in = n
    else:
        c_out = n
        c_in = m
    return tl.program_id(0).to(tl.int64), c_out, c_in, 2 * n, 2 * n * n, 2 * c_in * B, \
        2 * c_out * B, 2 * n * B


@triton.jit
def _cayley_frequency_product_kernel(r_ptr, s_ptr, out_ptr, x_ptr, y_ptr, m, n, B, t_rs, t_cs,
                                     TALL: tl.constexpr, BLOCK: tl.constexpr,
                                     PRECISION: tl.constexpr):
    """output_f = Q_f S_f, X_f and solved_f = W_f (into y) for frequency f = program id, which
    forms and inverts M_f itself. T (the tall orientation of the response) is read through its
    strides t_rs, t_cs; every other operand is contiguous, complex as interleaved (re, im)."""
    f, c_out, c_in, x_rs, x_size, s_size, out_size, y_size = _frequency(m, n, B, TALL)
    r_ptr += f * 2 * m * n
    s_ptr += f * s_size
    out_ptr += f * out_size
    x_ptr += f * x_size
    y_ptr += f * y_size
    form_m(r_ptr, t_rs, t_cs, x_ptr, x_rs, 2, m, n, True, BLOCK)
    invert_in_place(x_ptr, x_rs, 2, n, True, BLOCK)
    v_ptr = r_ptr + n * t_rs
    if TALL:
        _apply_tall_form(x_ptr, x_rs, 2, v_ptr, t_rs, t_cs, False, s_ptr, 2 * B, 2, out_ptr,
                         2 * B, 2, y_ptr, m, n, B, BLOCK, PRECISION)
    else:
        # Q = P^T = [2X^T - I , -2 X^T V^T]: X and V read transposed.
        _apply_wide_form(x_ptr, 2, x_rs, v_ptr, t_cs, t_rs, False, s_ptr, 2 * B, 2, out_ptr,
                         2 * B, 2, y_ptr, m, n, B, BLOCK, PRECISION)


@triton.jit
def _cayley_frequency_product_backward_kernel(g_ptr, r_ptr, s_ptr, x_ptr, w_ptr, grad_r_ptr,
                                              grad_s_ptr, p_ptr, e_ptr, m, n, B, t_rs, t_cs,
                                              TALL: tl.constexpr, BLOCK: tl.constexpr,
                                     PRECISION: tl.constexpr):
    """(grad_response_f, grad_spectrum_f) for frequency f = program id, from the forward's X
    and solved W (w). p: an n x B scratch for p; e: an n x n scratch for K, then E."""
    f, c_out, c_in, x_rs, x_size, s_size, out_size, y_size = _frequency(m, n, B, TALL)
    r_ptr += f * 2 * m * n
    grad_r_ptr += f * 2 * m * n
    g_ptr += f * out_size
    s_ptr += f * s_size
    grad_s_ptr += f * s_size
    x_ptr += f * x_size
    w_ptr += f * y_size
    p_ptr += f * y_size
    e_ptr += f * x_size
    v_ptr = r_ptr + n * t_rs
    if TALL:
        # grad_S = Q^H G = P^H G = [2X^H - I , -2 X^H V^H] G.
        _apply_wide_form(x_ptr, 2, x_rs, v_ptr, t_cs, t_rs, True, g_ptr, 2 * B, 2, grad_s_ptr,
                         2 * B, 2, p_ptr, m, n, B, BLOCK, PRECISION)
    else:
        # grad_S = Q^H G = conj(P) G = [2 conj(X) - I ; -2 conj(V) conj(X)] G.
        _apply_tall_form(x_ptr, x_rs, 2, v_ptr, t_rs, t_cs, True, g_ptr, 2 * B, 2, grad_s_ptr,
                         2 * B, 2, p_ptr, m, n, B, BLOCK, PRECISION)
    tl.debug_barrier()
    # K = p W^H into e, then D = 2 (K^H - K) into grad_R's n x n block (rows of a tall, columns
    # of a wide response: at its origin with the response's strides either way) and
    # E = -2 (K + K^H) over K in place.
    store_product(p_ptr, 2 * B, 2, False, w_ptr, 2, 2 * B, True, e_ptr, x_rs, 2, n, n, B, 1.0,
                  True, BLOCK, PRECISION)
    tl.debug_barrier()
    _skew_and_hermitian_parts(e_ptr, x_rs, grad_r_ptr, 2 * c_in, n, BLOCK)
    tl.debug_barrier()
    if TALL:
        # grad_R[n:] = V E - 2 G_bot W^H.
        _difference_of_products(v_ptr, t_rs, t_cs, False, e_ptr, x_rs, 2, False,
                                g_ptr + n * 2 * B, 2 * B, 2, False, w_ptr, 2, 2 * B, True,
                                grad_r_ptr + n * 2 * n, 2 * n, 2, m - n, n, n, B, BLOCK, PRECISION)
    else:
        # grad_R[:, n:] = E V^T - 2 p S_bot^H.
        _difference_of_products(e_ptr, x_rs, 2, False, v_ptr, t_cs, t_rs, False, p_ptr, 2 * B, 2,
                                False, s_ptr + n * 2 * B, 2, 2 * B, True, grad_r_ptr + 2 * n,
                                2 * c_in, 2, n, m - n, n, B, BLOCK, PRECISION)


@triton.jit
def _product_kernel(a_ptr, a_off, a_fs, a_rs, a_cs, b_ptr, b_off, b_fs, b_rs, b_cs, e_ptr, e_off,
                    e_fs, e_rs, e_cs, out_ptr, o_off, o_fs, o_rs, o_cs, y_ptr, y_off, y_fs, y_rs,
                    y_cs, R, C, K, alpha, beta, CONJ_A: tl.constexpr, CONJ_B: tl.constexpr,
                    HAS_E: tl.constexpr, HAS_Y: tl.constexpr, TILE: tl.constexpr,
                    DEPTH: tl.constexpr, PRECISION: tl.constexpr):
    """One output tile (program 0) of one frequency (program 1): out = alpha A B + beta E and,
    with HAS_Y, y = A B, for A (R x K), B (K x C) conjugated with their flags; every operand
    given by its offset and frequency, row and column strides, in real elements. E may be out
    itself (each program reads only its own tile of it)."""
    f = tl.program_id(1).to(tl.int64)
    across = tl.cdiv(C, TILE)
    rows = (tl.program_id(0) // across) * TILE + tl.arange(0, TILE)
    cols = (tl.program_id(0) % across) * TILE + tl.arange(0, TILE)
    zero = tl.zeros((TILE, TILE), out_ptr.dtype.element_ty)
    re, im = matmul_tile(zero, zero, a_ptr + a_off + f * a_fs, a_rs, a_cs, CONJ_A,
                         b_ptr + b_off + f * b_fs, b_rs, b_cs, CONJ_B, rows, cols, R, C, K, True,
                         DEPTH, PRECISION)
    if HAS_Y:
        store_tile(y_ptr + y_off + f * y_fs, rows, cols, y_rs, y_cs, R, C, re, im, True)
    re *= alpha
    im *= alpha
    if HAS_E:
        e_re, e_im = load_tile(e_ptr + e_off + f * e_fs, rows, cols, e_rs, e_cs, R, C, False,
                               True)
        re += beta * e_re
        im += beta * e_im
    store_tile(out_ptr + o_off + f * o_fs, rows, cols, o_rs, o_cs, R, C, re, im, True)


@triton.jit
def _skew_and_hermitian_pairs_kernel(p_ptr, w_ptr, d_ptr, d_fs, d_rs, e_ptr, n, B,
                                     HAS_E: tl.constexpr, TILE: tl.constexpr,
                                     DEPTH: tl.constexpr, PRECISION: tl.constexpr):
    """For K = p W^H (n x n; p, W contiguous n x B) of frequency program 1 and the tile pair
    (I, J), I <= J, of program 0 (I tiles + J; programs with I > J have nothing to do):
    D = 2 (K^H - K) into d (strides d_fs, d_rs, 2) and, with HAS_E,
    E = -2 (K + K^H) into e (contiguous n x n), at (I, J) and mirrored at (J, I). The tile
    (I, J) of K^H is W_I p_J^H, so both come from the operands and K is never stored."""
    f = tl.program_id(1).to(tl.int64)
    tiles = tl.cdiv(n, TILE)
    i0 = (tl.program_id(0) // tiles) * TILE
    j0 = (tl.program_id(0) % tiles) * TILE
    if i0 <= j0:
        rows = i0 + tl.arange(0, TILE)
        cols = j0 + tl.arange(0, TILE)
        p_ptr += f * 2 * n * B
        w_ptr += f * 2 * n * B
        d_ptr += f * d_fs
        zero = tl.zeros((TILE, TILE), d_ptr.dtype.element_ty)
        k_re, k_im = matmul_tile(zero, zero, p_ptr, 2 * B, 2, False, w_ptr, 2, 2 * B, True, rows,
                                 cols, n, n, B, True, DEPTH, PRECISION)
        h_re, h_im = matmul_tile(zero, zero, w_ptr, 2 * B, 2, False, p_ptr, 2, 2 * B, True, rows,
                                 cols, n, n, B, True, DEPTH, PRECISION)
        k_re = -2.0 * k_re
        k_im = -2.0 * k_im
        d_re = k_re + 2.0 * h_re
        d_im = k_im + 2.0 * h_im
        e_re = k_re - 2.0 * h_re
        e_im = k_im - 2.0 * h_im
        store_tile(d_ptr, rows, cols, d_rs, 2, n, n, d_re, d_im, True)
        e_ptr += f * 2 * n * n
        if HAS_E:
            store_tile(e_ptr, rows, cols, 2 * n, 2, n, n, e_re, e_im, True)
        # D[cols, rows] = -conj(D[rows, cols]), E[cols, rows] = conj(E[rows, cols]), stored
        # through swapped strides; a diagonal tile has no mirror.
        if i0 != j0:
            store_tile(d_ptr, rows, cols, 2, d_rs, n, n, -d_re, d_im, True)
            if HAS_E:
                store_tile(e_ptr, rows, cols, 2, 2 * n, n, n, e_re, -e_im, True)


def _orientation(response: torch.Tensor):
    """(tall, m, n, row stride, column stride) of the tall orientation T of a contiguous
    response (F, C_out, C_in): T = response_f, or its transpose when C_out < C_in."""
    c_out, c_in = response.shape[1:]
    if c_out >= c_in:
        return True, c_out, c_in, 2 * c_in, 2
    return False, c_in, c_out, 2, 2 * c_in


def _split_product_seconds(frequencies: int, rows: int, cols: int, depth: int,
                           tile: int) -> float:
    """Modelled H100 time of a complex64 product (rows x depth)(depth x cols) at every frequency
    over tile x tile output tiles: in waves over the SMs, each tile bound by its SM's tensor
    cores (tf32x3) or by reading its two operand panels from L2 at one SM's rate, plus the
    launch."""
    tensor_per_sm = H100_TF32_FLOPS / (SPLIT_TF32_PASSES * H100_SMS)
    seconds = max(COMPLEX_MAC_FLOPS * tile * tile * depth / tensor_per_sm,
                  8 * 2 * tile * depth / H100_SM_L2_BYTES_PER_S)
    tiles = frequencies * triton.cdiv(rows, tile) * triton.cdiv(cols, tile)
    return triton.cdiv(tiles, H100_SMS) * seconds + H100_LAUNCH_S


def program_products_seconds(frequencies: int, n: int, batch: int) -> float:
    """Modelled H100 time of the three n x n x B products (W forward, p and K backward) of the
    program-per-frequency kernels: in waves of PROGRAMS_PER_SM x 132 programs, each product on
    the SM's tensor cores (tf32x3) or bound by its 16 x 16 tiles reading their operand panels
    from L2 at one SM's rate (n^2 B bytes)."""
    tensor_per_sm = H100_TF32_FLOPS / (SPLIT_TF32_PASSES * H100_SMS)
    product = max(COMPLEX_MAC_FLOPS * n * n * batch / tensor_per_sm,
                  n * n * batch / H100_SM_L2_BYTES_PER_S)
    return triton.cdiv(frequencies, PROGRAMS_PER_SM * H100_SMS) * 3 * product


def split_products_seconds(frequencies: int, n: int, batch: int) -> float:
    """Modelled H100 time of the same three products split over the grid, one launch each: W
    and p by `_product_kernel`, K by the tile pairs (`PAIR_TILE`)."""
    return (2 * _split_product_seconds(frequencies, n, batch, n, SPLIT_TILES[torch.complex64])
            + _split_product_seconds(frequencies, n, n, batch, PAIR_TILE))


def route_seconds(frequencies: int, n: int, batch: int, over_grid: bool) -> float:
    """Modelled H100 time of the forward and backward's square (n x n) work by one route: the
    inverse (`cayley.inverse_seconds`) and the three products, over the grid or a program per
    frequency; the non-square blocks are not counted. docs/performance.md tabulates it."""
    if over_grid:
        return inverse_seconds(frequencies, n, True) + split_products_seconds(frequencies, n, batch)
    return (inverse_seconds(frequencies, n, False)
            + program_products_seconds(frequencies, n, batch))


def over_grid_pays(frequencies: int, n: int, batch: int) -> bool:
    """Whether the route over the grid beats a program per frequency by `route_seconds`."""
    return (route_seconds(frequencies, n, batch, True)
            < route_seconds(frequencies, n, batch, False))


def _block(t: torch.Tensor, row: int = 0, col: int = 0, transposed: bool = False) -> tuple:
    """The kernel arguments of the block at [row, col] of every matrix of a contiguous complex
    stack t (F, R, C), read as its transpose with `transposed`: t's real view, the block's
    offset, the frequency, row and column strides, in real elements. Kernels get whole
    tensors and offsets rather than views: a view mutated by a traced kernel is not safe."""
    frequency_stride, row_stride, col_stride = (2 * stride for stride in t.stride())
    offset = row * row_stride + col * col_stride
    if transposed:
        row_stride, col_stride = col_stride, row_stride
    return as_real(t), offset, frequency_stride, row_stride, col_stride


def _product(a: tuple, b: tuple, out: tuple, shape: tuple, alpha: float = 1.0, *,
             conj_a: bool = False, conj_b: bool = False, e: tuple | None = None,
             beta: float = 0.0, y: tuple | None = None):
    """out = alpha op(A) op(B) + beta E and y = op(A) op(B) at every frequency, for the blocks
    a, b, e, out, y (`_block`), op conjugating with conj_a, conj_b; shape = (F, rows, cols,
    depth). A program per output tile and frequency."""
    frequencies, rows, cols, depth = shape
    tile = SPLIT_TILES[a[0].dtype.to_complex()]
    grid = (triton.cdiv(rows, tile) * triton.cdiv(cols, tile), frequencies)
    launchable(_product_kernel)[grid](
        *a, *b, *(out if e is None else e), *out, *(out if y is None else y), rows, cols, depth,
        alpha, beta, CONJ_A=conj_a, CONJ_B=conj_b, HAS_E=e is not None, HAS_Y=y is not None,
        TILE=tile, DEPTH=SPLIT_DEPTH, PRECISION=float32_accurate_precision(a[0].dtype),
        num_warps=SPLIT_WARPS)


def _forward_over_grid(response, spectrum, output, inverse, solved):
    """The forward's products over the grid, given the inverse X (module docstring's forms)."""
    tall, m, n, _, _ = _orientation(response)
    frequencies, batch = response.shape[0], spectrum.shape[-1]
    if tall:
        # W = X S, output_top = 2W - S; output_bot = -2 V W.
        _product(_block(inverse), _block(spectrum), _block(output), (frequencies, n, batch, n),
                 2.0, e=_block(spectrum), beta=-1.0, y=_block(solved))
        if m > n:
            _product(_block(response, n), _block(solved), _block(output, n),
                     (frequencies, m - n, batch, n), -2.0)
        return
    # t = S_top - V^T S_bot (V^T = response[:, :, n:]); W = X^T t, output = 2W - S_top.
    top = spectrum.new_empty((frequencies, n, batch))
    _product(_block(response, 0, n), _block(spectrum, n), _block(top),
             (frequencies, n, batch, m - n), -1.0, e=_block(spectrum), beta=1.0)
    _product(_block(inverse, transposed=True), _block(top), _block(output),
             (frequencies, n, batch, n), 2.0, e=_block(spectrum), beta=-1.0, y=_block(solved))


def _backward_over_grid(grad_output, response, spectrum, inverse, solved, grad_response,
                        grad_spectrum):
    """The backward's products over the grid (module docstring's formulas)."""
    tall, m, n, _, _ = _orientation(response)
    frequencies, batch = response.shape[0], spectrum.shape[-1]
    p = solved.new_empty((frequencies, n, batch))
    if tall:
        # t = G_top - V^H G_bot (the square case: t = G); p = X^H t, grad_S = 2p - G_top.
        top = grad_output
        if m > n:
            top = grad_output.new_empty((frequencies, n, batch))
            _product(_block(response, n, transposed=True), _block(grad_output, n), _block(top),
                     (frequencies, n, batch, m - n), -1.0, conj_a=True, e=_block(grad_output),
                     beta=1.0)
        _product(_block(inverse, transposed=True), _block(top), _block(grad_spectrum),
                 (frequencies, n, batch, n), 2.0, conj_a=True, e=_block(grad_output), beta=-1.0,
                 y=_block(p))
    else:
        # p = conj(X) G, grad_S_top = 2p - G; grad_S_bot = -2 conj(V) p (V = response^T[n:]).
        _product(_block(inverse), _block(grad_output), _block(grad_spectrum),
                 (frequencies, n, batch, n), 2.0, conj_a=True, e=_block(grad_output), beta=-1.0,
                 y=_block(p))
        _product(_block(response, 0, n, transposed=True), _block(p), _block(grad_spectrum, n),
                 (frequencies, m - n, batch, n), -2.0, conj_a=True)
    # D = 2 (K^H - K) into grad_R's n x n block, E = -2 (K + K^H) for the non-square blocks.
    e = inverse.new_empty((frequencies, n, n)) if m > n else inverse
    launchable(_skew_and_hermitian_pairs_kernel)[(triton.cdiv(n, PAIR_TILE) ** 2, frequencies)](
        as_real(p), as_real(solved), as_real(grad_response), 2 * m * n,
        2 * response.shape[2], as_real(e), n, batch, HAS_E=m > n, TILE=PAIR_TILE,
        DEPTH=SPLIT_DEPTH, PRECISION=float32_accurate_precision(inverse.real.dtype),
        num_warps=SPLIT_WARPS)
    if m == n:
        return
    if tall:
        # grad_R[n:] = V E - 2 G_bot W^H.
        bottom = _block(grad_response, n)
        _product(_block(grad_output, n), _block(solved, transposed=True), bottom,
                 (frequencies, m - n, n, batch), -2.0, conj_b=True)
        _product(_block(response, n), _block(e), bottom, (frequencies, m - n, n, n), e=bottom,
                 beta=1.0)
    else:
        # grad_R[:, n:] = E V^T - 2 p S_bot^H (V^T = response[:, :, n:]).
        right = _block(grad_response, 0, n)
        _product(_block(p), _block(spectrum, n, transposed=True), right,
                 (frequencies, n, m - n, batch), -2.0, conj_b=True)
        _product(_block(e), _block(response, 0, n), right, (frequencies, n, m - n, n), e=right,
                 beta=1.0)


def _launch(kernel, response: torch.Tensor, batch: int, *tensors, **constants):
    """One program per frequency of `response`; `tensors` are the kernel's pointer arguments,
    `constants` its constexprs beyond the orientation, tile and precision."""
    tall, m, n, t_rs, t_cs = _orientation(response)
    launchable(kernel)[(response.shape[0],)](
        *(as_real(t) for t in tensors), m, n, batch, t_rs, t_cs, TALL=tall, BLOCK=BLOCK,
        PRECISION=float32_accurate_precision(response.real.dtype), num_warps=NUM_WARPS,
        **constants)


def cayley_frequency_product(response: torch.Tensor, spectrum: torch.Tensor):
    """(output (F, C_out, B), inverse (F, n, n), solved (F, n, B)), as the C++ op; contiguous."""
    response, spectrum = response.contiguous(), spectrum.contiguous()
    frequencies, c_out, c_in = response.shape
    batch = spectrum.shape[-1]
    n = min(c_in, c_out)
    output = spectrum.new_empty((frequencies, c_out, batch))
    solved = spectrum.new_empty((frequencies, n, batch))
    if over_grid_pays(frequencies, n, batch):
        inverse = invert_over_grid(response if c_out >= c_in else response.mT.contiguous(),
                                   float32_accurate_precision(response.real.dtype))
        _forward_over_grid(response, spectrum, output, inverse, solved)
    else:
        inverse = spectrum.new_empty((frequencies, n, n))
        _launch(_cayley_frequency_product_kernel, response, batch, response, spectrum, output,
                inverse, solved)
    return output, inverse, solved


def cayley_frequency_product_backward(grad_output: torch.Tensor, response: torch.Tensor,
                                      spectrum: torch.Tensor, inverse: torch.Tensor,
                                      solved: torch.Tensor):
    """(grad_response, grad_spectrum) for the output gradient grad_output, as the C++ op."""
    frequencies, c_out, c_in = response.shape
    batch = spectrum.shape[-1]
    n = min(c_in, c_out)
    grad_output, response, spectrum, inverse, solved = (
        t.contiguous() for t in (grad_output, response, spectrum, inverse, solved))
    grad_response = torch.empty_like(response)
    grad_spectrum = torch.empty_like(spectrum)
    if over_grid_pays(frequencies, n, batch):
        _backward_over_grid(grad_output, response, spectrum, inverse, solved, grad_response,
                            grad_spectrum)
        return grad_response, grad_spectrum
    p = solved.new_empty((frequencies, n, batch))
    e = inverse.new_empty((frequencies, n, n))
    _launch(_cayley_frequency_product_backward_kernel, response, batch, grad_output, response,
            spectrum, inverse, solved, grad_response, grad_spectrum, p, e)
    return grad_response, grad_spectrum
