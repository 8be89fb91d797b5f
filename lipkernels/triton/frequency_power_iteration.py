"""Triton power iteration at every frequency of a circular convolution, from the filter's taps.

Sedghi, Gupta & Long, "The Singular Values of Convolutional Layers", ICLR 2019: the circular
"same" conv with a filter W (C_out, C_in, k_h, k_w) on an n1 x n2 image is block-diagonalised by
the 2-D DFT, with the C_out x C_in response at frequency f = (p, q)
    H_f = sum_k W_k e^(i theta_fk),   theta_fk = 2 pi (p (h - c_h) / n1 + q (w - c_w) / n2),
k = (h, w) the taps, c = ((k_h - 1) // 2, (k_w - 1) // 2) the filter's centre
(`lipkernels._spectral.frequency_response`). The responses are never formed: each half step
applies them all from the real taps, as real products on tensor cores with the phases folded
into the operand tiles (docs/performance.md, the tap design).
"""

import torch
import triton
import triton.language as tl

from .._spectral import tap_phases
from ._common import (H100_L2_BYTES_PER_S, H100_SIMT_FP32_FLOPS, H100_SMS, H100_TF32_FLOPS,
                      SPLIT_TF32_PASSES, accumulation_dtype, float32_accurate_precision,
                      launchable, persistent_programs, phase_spans)
from ._grid_barrier import grid_barrier
from .power_iteration import _inv_norm


@triton.jit
def _row_scales(squares_ptr, f, F, blocks, BLOCK_F: tl.constexpr, BLOCK_S: tl.constexpr):
    """1 / max(|x_f|, eps) for the rows f of a vector whose squares the previous phase left by
    (row, column block) at squares[f, :blocks], summed in a fixed order."""
    b = tl.arange(0, BLOCK_S)
    mask = (f < F)[:, None] & (b < blocks)[None, :]
    squares = tl.load(squares_ptr + f[:, None] * blocks + b[None, :], mask=mask, other=0.0,
                      cache_modifier=".cg")
    return _inv_norm(tl.sum(squares, axis=1))


@triton.jit
def _product_pass(x_ptr, out_ptr, taps_ptr, cos_ptr, sin_ptr, in_squares_ptr, out_squares_ptr,
                  first, SIGN: tl.constexpr, F, TAPS, R, N, in_blocks, OPERAND: tl.constexpr,
                  PRECISION: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_C: tl.constexpr,
                  BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr):
    """out_f = sum_k e^(SIGN i theta_fk) (x_f / |x_f|) B_k for every frequency f, by tiles of
    BLOCK_F frequencies x BLOCK_C columns: x (2, F, R) holds (Re, Im) of the input vectors,
    taps (TAPS, R, N) the real B_k, out (2, F, N); |x_f| comes from in_squares (1 at `first`).
    The phase multiplies the operand tile, a scalar per (frequency, tap), so each input tile is
    read once for all taps. Each tile's squares go to out_squares[f, column block]."""
    acc_ty = out_ptr.dtype.element_ty
    column_blocks = tl.cdiv(N, BLOCK_C)
    for tile in range(tl.program_id(0), tl.cdiv(F, BLOCK_F) * column_blocks,
                      tl.num_programs(0)):
        f = (tile // column_blocks) * BLOCK_F + tl.arange(0, BLOCK_F)
        block = tile % column_blocks
        c = block * BLOCK_C + tl.arange(0, BLOCK_C)
        acc_re = tl.zeros([BLOCK_F, BLOCK_C], acc_ty)
        acc_im = tl.zeros([BLOCK_F, BLOCK_C], acc_ty)
        for r0 in range(0, R, BLOCK_K):
            r = r0 + tl.arange(0, BLOCK_K)
            x_mask = (f < F)[:, None] & (r < R)[None, :]
            x_offsets = tl.cast(f, tl.int64)[:, None] * R + r[None, :]
            x_re = tl.load(x_ptr + x_offsets, mask=x_mask, other=0.0, cache_modifier=".cg")
            x_im = tl.load(x_ptr + F * R + x_offsets, mask=x_mask, other=0.0,
                           cache_modifier=".cg")
            b_mask = (r < R)[:, None] & (c < N)[None, :]
            for k in range(0, TAPS):
                cos = tl.load(cos_ptr + f * TAPS + k, mask=f < F, other=0.0)[:, None]
                sin = SIGN * tl.load(sin_ptr + f * TAPS + k, mask=f < F, other=0.0)[:, None]
                b = tl.load(taps_ptr + (k * R + r[:, None]) * N + c[None, :], mask=b_mask,
                            other=0.0)
                acc_re = tl.dot((cos * x_re - sin * x_im).to(OPERAND), b.to(OPERAND), acc_re,
                                input_precision=PRECISION, out_dtype=acc_ty)
                acc_im = tl.dot((sin * x_re + cos * x_im).to(OPERAND), b.to(OPERAND), acc_im,
                                input_precision=PRECISION, out_dtype=acc_ty)
        if not first:
            scale = _row_scales(in_squares_ptr, f, F, in_blocks, BLOCK_F, BLOCK_S)[:, None]
            acc_re *= scale
            acc_im *= scale
        mask = (f < F)[:, None] & (c < N)[None, :]
        offsets = tl.cast(f, tl.int64)[:, None] * N + c[None, :]
        tl.store(out_ptr + offsets, acc_re, mask=mask)
        tl.store(out_ptr + F * N + offsets, acc_im, mask=mask)
        tl.store(out_squares_ptr + f * column_blocks + block,
                 tl.sum(acc_re * acc_re + acc_im * acc_im, axis=1), mask=f < F)


@triton.jit
def _frequency_power_iteration_kernel(u_ptr, y_ptr, forward_taps_ptr, adjoint_taps_ptr, cos_ptr,
                                      sin_ptr, y_squares_ptr, z_squares_ptr, counter_ptr,
                                      first_phase, last_phase, F, TAPS, C_OUT, C_IN,
                                      OPERAND: tl.constexpr, PRECISION: tl.constexpr,
                                      BLOCK_F: tl.constexpr, BLOCK_C: tl.constexpr,
                                      BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr):
    """Power iteration (Miyato et al. 2018) on every response H_f of a circular conv at once, in
    one persistent launch: phase 2t forms y = H u (u the start at t = 0, else z / |z|), phase
    2t + 1 forms z = H^H v with v = y / |y|, norms clamped at 1e-12 as F.normalize does, so the
    iterates are the reference's on the real forms [[Re H, -Im H], [Im H, Re H]] (exact
    arithmetic). With the taps B_k[i, o] = W[o, i, k] (forward) and B'_k[o, i] (adjoint):
        y_f = sum_k e^(+i theta_fk) u_f B_k,    z_f = sum_k e^(-i theta_fk) v_f B'_k.
    Each half step reads the vectors once per column of tiles and the taps (9.4 MB at 512
    channels, 3 x 3) from L2 once per row of tiles; grid barriers separate the phases. u (2, F,
    C_in) holds the start and then z, y (2, F, C_out) holds y; the launcher normalises the last
    ones (u = z / |z|, v = y / |y|, sigma_f = z . u). Backward (launcher): d sigma_f / d W[o, i,
    k] = Re(conj(v_f[o]) u_f[i] e^(i theta_fk)), u and v held constant.

    Phases first_phase..last_phase - 1 run in this launch: all 2 iters on a GPU (the grid at most
    one program per SM), one per launch under the interpreter.
    """
    for phase in range(first_phase, last_phase):
        if phase > first_phase:
            grid_barrier(counter_ptr, (phase - first_phase) * tl.num_programs(0))
        if phase % 2 == 0:
            _product_pass(u_ptr, y_ptr, forward_taps_ptr, cos_ptr, sin_ptr, z_squares_ptr,
                          y_squares_ptr, phase == 0, 1.0, F, TAPS, C_IN, C_OUT,
                          tl.cdiv(C_IN, BLOCK_C), OPERAND, PRECISION, BLOCK_F, BLOCK_C,
                          BLOCK_K, BLOCK_S)
        else:
            _product_pass(y_ptr, u_ptr, adjoint_taps_ptr, cos_ptr, sin_ptr, y_squares_ptr,
                          z_squares_ptr, False, -1.0, F, TAPS, C_OUT, C_IN,
                          tl.cdiv(C_OUT, BLOCK_C), OPERAND, PRECISION, BLOCK_F, BLOCK_C,
                          BLOCK_K, BLOCK_S)


# Tile sides tried (tl.dot needs 16 or more) and the largest tile: two accumulators of
# BLOCK_F x BLOCK_C over NUM_WARPS warps; 64 x 64 tiles spill on sm_80 (mma.sync in three TF32
# passes, tests/triton_compile_check.py), 64 x 32 do not.
_TILE_SIDES = (64, 32, 16)
_MAX_TILE = 64 * 32
_BLOCK_K = {torch.float32: 32, torch.float64: 16}
NUM_WARPS = 8
# CUDA-core FLOPs per operand element and tap: the phase rotation of the (Re, Im) pair (two
# multiplies and two FMAs) and the split of both into high and low TF32 halves (2 FLOPs each).
OPERAND_FLOPS = 10


def tile_counts(frequencies: int, taps: int, rows: int, columns: int, block_f: int,
                block_c: int) -> tuple[int, int]:
    """(tiles, elements read from L2) of a half step from `rows` to `columns` channels: the
    (Re, Im) input read once per column of tiles, the taps once per row of tiles."""
    row_tiles, column_tiles = triton.cdiv(frequencies, block_f), triton.cdiv(columns, block_c)
    return row_tiles * column_tiles, (column_tiles * 2 * frequencies * rows
                                      + row_tiles * taps * rows * columns)


def half_step_seconds(frequencies: int, taps: int, rows: int, columns: int, block_f: int,
                      block_c: int, programs: int) -> dict:
    """The time model of a float32 half step at H100 rates (`_common.H100_*`), by what bounds
    it: "compute", the tiles in waves over the programs, each its tensor-core products (three
    TF32 passes) and its operand's rotation and split on CUDA cores; "L2", its reads
    (`tile_counts`) at the programs' share of the L2 bandwidth. docs/performance.md tabulates
    it; `launch_config` minimises it."""
    tiles, reads = tile_counts(frequencies, taps, rows, columns, block_f, block_c)
    programs = min(programs, tiles)
    tensor_flops = 2 * 2 * block_f * block_c * taps * rows * SPLIT_TF32_PASSES
    operand_flops = OPERAND_FLOPS * taps * block_f * rows
    per_tile = (tensor_flops / (H100_TF32_FLOPS / H100_SMS)
                + operand_flops / (H100_SIMT_FP32_FLOPS / H100_SMS))
    return {"compute": triton.cdiv(tiles, programs) * per_tile,
            "L2": 4.0 * reads / (H100_L2_BYTES_PER_S * programs / H100_SMS)}


def launch_config(frequencies: int, taps: int, c_out: int, c_in: int, dtype: torch.dtype,
                  programs: int) -> dict:
    """Tiles and grid of `_frequency_power_iteration_kernel`: the tiles whose two half steps
    (C_in -> C_out, then back) take the least time by `half_step_seconds`, the larger tiles on a
    tie. `programs` bounds the grid (at most one per SM)."""
    shapes = [(block_f, block_c) for block_f in _TILE_SIDES for block_c in _TILE_SIDES
              if block_f * block_c <= _MAX_TILE]

    def seconds(shape):
        return sum(max(half_step_seconds(frequencies, taps, rows, columns, *shape,
                                         programs).values())
                   for rows, columns in ((c_in, c_out), (c_out, c_in)))

    block_f, block_c = min(shapes, key=lambda shape: (seconds(shape), -shape[0] * shape[1]))
    most_tiles = triton.cdiv(frequencies, block_f) * triton.cdiv(max(c_out, c_in), block_c)
    return dict(programs=min(programs, most_tiles), BLOCK_F=block_f, BLOCK_C=block_c,
                BLOCK_K=_BLOCK_K[accumulation_dtype(dtype)],
                BLOCK_S=max(2, triton.next_power_of_2(triton.cdiv(max(c_out, c_in), block_c))))


OPERANDS = {torch.float32: tl.float32, torch.float64: tl.float64}


def frequency_power_iteration(weight: torch.Tensor, u: torch.Tensor, iters: int, height: int,
                              width: int):
    """(sigma (F,), u (F, 2 C_in), v (F, 2 C_out)) after `iters` power-iteration steps on the
    real forms of the F = height (width // 2 + 1) responses (see the kernel), from the starts
    u (F, 2 C_in), (Re, Im) halves. Inputs are contiguous, on one device, float32 or float64
    (the op checks them first: lipkernels.ops.frequency_power_iteration)."""
    c_out, c_in, k_h, k_w = weight.shape
    taps = k_h * k_w
    theta = tap_phases((height, width), (k_h, k_w), weight.dtype, weight.device)
    frequencies = theta.shape[0]
    config = launch_config(frequencies, taps, c_out, c_in, weight.dtype,
                           persistent_programs(weight.device))
    programs = config.pop("programs")
    blocks = triton.cdiv(max(c_out, c_in), config["BLOCK_C"])
    # B_k[i, o] = W[o, i, k] and B'_k[o, i] = W[o, i, k], each contiguous along its columns.
    forward_taps = weight.permute(2, 3, 1, 0).reshape(taps, c_in, c_out).contiguous()
    adjoint_taps = weight.permute(2, 3, 0, 1).reshape(taps, c_out, c_in).contiguous()
    z = u.reshape(frequencies, 2, c_in).transpose(0, 1).contiguous()
    y = weight.new_empty(2, frequencies, c_out)
    y_squares, z_squares = (weight.new_empty(frequencies, blocks) for _ in range(2))
    cos, sin = torch.cos(theta), torch.sin(theta)
    counter = torch.zeros(1, dtype=torch.int32, device=weight.device)
    for first, last in phase_spans(2 * iters, weight.device):
        launchable(_frequency_power_iteration_kernel)[(programs,)](
            z, y, forward_taps, adjoint_taps, cos, sin, y_squares,
            z_squares, counter, first, last, frequencies, taps, c_out, c_in,
            OPERAND=OPERANDS[weight.dtype], PRECISION=float32_accurate_precision(weight.dtype),
            num_warps=NUM_WARPS, **config)
    z_norm = torch.linalg.vector_norm(z, dim=(0, 2))
    y_norm = torch.linalg.vector_norm(y, dim=(0, 2))
    sigma = z_norm.square() / _clamped(z_norm)
    u_out = (z / _clamped(z_norm)[:, None]).transpose(0, 1).reshape(frequencies, 2 * c_in)
    v_out = (y / _clamped(y_norm)[:, None]).transpose(0, 1).reshape(frequencies, 2 * c_out)
    return sigma, u_out, v_out


def _clamped(norm: torch.Tensor) -> torch.Tensor:
    """max(norm, 1e-12) with NaN kept NaN (F.normalize's denominator)."""
    return torch.where(norm < 1e-12, torch.full_like(norm, 1e-12), norm)
