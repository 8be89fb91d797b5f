"""Triton skew-orthogonal convolution series on tensor cores: Horner steps of implicit GEMMs.

Singla & Feizi, "Skew Orthogonal Convolutions", ICML 2021; the fast gradient from Singla, Singla
& Feizi, "Improved techniques for deterministic l2 robustness", NeurIPS 2022. The math is that of
csrc/cpu/soc_exp.cpp (n = terms - 1, conv the zero-padded "same" conv, S^T = conv with flipT(S),
Wg(a, b) the weight gradient of conv(a, .) against the output gradient b):
    forward    z = x; for i = n..2: z = x + conv(z, S) / i;  y = x + conv(z_2, S)
    backward   u_{n-1} = g;  u_j = g + S^T u_{j+1} / (j + 2);  grad_x = g + S^T u_0
               exact grad_S = sum_{j=0}^{n-1} Wg(S^j x, u_j) / (j+1)!
               fast  grad_S = Wg(z_2, u_0)

Every Horner step of either direction, and every power S^j x the exact backward recomputes,
is an implicit GEMM over the whole batch (`_horner_tile`), rows the M = B H W pixels, columns
the output channels, the reduction the input channels of every tap
(docs/performance.md: a design that keeps the activations of an image group on chip needs the
whole C x C filter in every program each term, 9.4 MB at 512 channels, and has only one program
per image group). Among the tiles whose grid has a program per SM of an H100, the launcher takes
those that read the least from L2 (`horner_tiles`), so the small-image, many-channel layers split
their output channels over programs. The activations are channels-last, so a tile of input
channels is contiguous (16-byte loads), and the reduction over (channel block, tap) is one loop
the compiler pipelines, taps innermost so that the shifted re-reads of a block hit L1; the
epilogue adds x (or g) and divides by the step's integer, so a step costs 3 activation passes.
The forward runs all n steps in one persistent launch (`_horner_series_kernel`: a program per SM
looping over the tiles, a grid barrier between steps, so the steps never return to the host),
on small images with many channels each step's reduction split over ranges of input channels
whose partial sums a second phase adds (`series_tiles` weighs re-reading the filter against
the partials);
the backward, whose steps interleave with the weight gradient's, launches a step at a time
(`_horner_step_kernel`). Activations are stored in the input's dtype between steps and each step
accumulates in float32 (float64 for float64): half-precision inputs are multiplied on tensor
cores in their own precision (bf16/fp16 mma) and each Horner partial sum is rounded once, where
the reference rounds each term's convolution, division and addition.

The weight gradient is `_weight_gradient_kernel`, a GEMM reduced over the pixels, one (output x
input channels) tile of one tap per program, the pixels split over programs only until the grid
fills the GPU; each program owns its partial sum, so grad_S needs no atomics and is the same on
every run. The exact gradient's sum over j is accumulated Horner-like, G <- G / (j + 2) +
Wg(S^j x, u_j) from j = n - 1 down, so its coefficients 1 / (j + 1)! are exact integer divisions.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (H100_BF16_FLOPS, H100_GRID_BARRIER_S, H100_HBM_BYTES_PER_S,
                      H100_L2_BYTES_PER_S, H100_TF32_FLOPS, accumulation_dtype,
                      dot_operand_dtype, launchable, persistent_programs, phase_spans)
from ._grid_barrier import grid_barrier

# tl.dot needs every dimension >= 16.
_MIN_BLOCK = 16


@triton.jit
def _horner_product(z_ptr, taps_ptr, tile_m, tile_n, first_block, last_block, M, C, H, W,
                    KSIZE: tl.constexpr, WHOLE_BLOCKS: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, acc_ty: tl.constexpr,
                    operand_ty: tl.constexpr, PRECISION: tl.constexpr):
    """conv(z, S) on the (tile_m, tile_n) output tile, reduced over the input-channel blocks
    first_block .. last_block - 1 (of BLOCK_K channels, every tap): an implicit GEMM (M pixels
    x C output channels, reduction over input channels x k^2 taps) on a (BLOCK_M x BLOCK_N)
    tile, in acc_ty, with the tile's pixel rows and channel columns. z is channels-last (M, C)
    in the input dtype, taps is S as (k, k, C_out, C_in): both operands contiguous along the
    reduction, the layout float32 wgmma reads from shared memory (only 16-bit types may be
    transposed). WHOLE_BLOCKS: BLOCK_K divides C. operand_ty: the dtype the tensor cores
    multiply in (`forward_launch_config`)."""
    # int64 pixel indices: B C H W may exceed 2^31 elements.
    rows = tl.cast(tile_m, tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    pixel = rows % (H * W)
    row, column = pixel // W, pixel % W
    row_mask, col_mask = rows < M, cols < C
    acc = tl.zeros((BLOCK_M, BLOCK_N), acc_ty)
    # Taps innermost: the k^2 shifted reads of a channel block follow each other, so all but the
    # first hit the L1 cache (".ca"), not L2.
    for step in range(first_block * KSIZE * KSIZE, last_block * KSIZE * KSIZE):
        tap = step % (KSIZE * KSIZE)
        channels = (step // (KSIZE * KSIZE)) * BLOCK_K + tl.arange(0, BLOCK_K)
        dy, dx = tap // KSIZE - KSIZE // 2, tap % KSIZE - KSIZE // 2
        # The shifted pixel is in the same image wherever it is inside the image (zero padding
        # elsewhere), so its row index is rows + dy W + dx.
        inside = row_mask & (row + dy >= 0) & (row + dy < H) & (column + dx >= 0) \
            & (column + dx < W)
        channel_mask = channels < C
        if WHOLE_BLOCKS:  # a mask uniform along the channels lets the loads be 16 bytes wide
            a_mask = inside[:, None]
        else:
            a_mask = inside[:, None] & channel_mask[None, :]
        a = tl.load(z_ptr + (rows + dy * W + dx)[:, None] * C + channels[None, :], mask=a_mask,
                    other=0.0, cache_modifier=".ca")
        b = tl.load(taps_ptr + (tap * C + cols)[None, :] * C + channels[:, None],
                    mask=channel_mask[:, None] & col_mask[None, :], other=0.0)
        acc = tl.dot(a.to(operand_ty), b.to(operand_ty), acc, input_precision=PRECISION,
                     out_dtype=acc_ty)
    return acc, rows, cols, pixel, row_mask[:, None] & col_mask[None, :]


@triton.jit
def _horner_store(acc, rows, cols, pixel, mask, x_ptr, rows_out_ptr, image_out_ptr, divisor,
                  C, H, W, ADD: tl.constexpr, store_rows, store_image, acc_ty: tl.constexpr):
    """The Horner step's epilogue on a tile whose conv(z, S) is acc: out = x + acc / divisor
    (acc / divisor without ADD), stored channels-last to rows_out_ptr where store_rows, and in
    the images' NCHW layout to image_out_ptr where store_image (constexprs or runtime flags)."""
    rows_major = rows[:, None] * C + cols[None, :]
    out = acc / divisor
    if ADD:
        out += tl.load(x_ptr + rows_major, mask=mask, other=0.0).to(acc_ty)
    if store_rows:
        tl.store(rows_out_ptr + rows_major, out.to(rows_out_ptr.dtype.element_ty), mask=mask)
    if store_image:
        image_major = (rows - pixel)[:, None] * C + cols[None, :] * (H * W) + pixel[:, None]
        tl.store(image_out_ptr + image_major, out.to(image_out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _horner_tile(z_ptr, x_ptr, taps_ptr, rows_out_ptr, image_out_ptr, tile_m, tile_n, divisor,
                 M, C, H, W, ADD: tl.constexpr, store_rows, store_image, KSIZE: tl.constexpr,
                 WHOLE_BLOCKS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, acc_ty: tl.constexpr, operand_ty: tl.constexpr,
                 PRECISION: tl.constexpr):
    """The (tile_m, tile_n) output tile of one Horner step over the whole batch,
        out = x + conv(z, S) / divisor   (out = conv(z, S) / divisor without ADD):
    `_horner_product` over every input channel, then `_horner_store`."""
    acc, rows, cols, pixel, mask = _horner_product(
        z_ptr, taps_ptr, tile_m, tile_n, 0, tl.cdiv(C, BLOCK_K), M, C, H, W, KSIZE,
        WHOLE_BLOCKS, BLOCK_M, BLOCK_N, BLOCK_K, acc_ty, operand_ty, PRECISION)
    _horner_store(acc, rows, cols, pixel, mask, x_ptr, rows_out_ptr, image_out_ptr, divisor,
                  C, H, W, ADD, store_rows, store_image, acc_ty)


@triton.jit
def _horner_step_kernel(z_ptr, x_ptr, taps_ptr, out_ptr, divisor, M, C, H, W,
                        ADD: tl.constexpr, LAST: tl.constexpr, KSIZE: tl.constexpr,
                        WHOLE_BLOCKS: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, acc_ty: tl.constexpr,
                        operand_ty: tl.constexpr, PRECISION: tl.constexpr):
    """One Horner step of the backward, out = (x +) conv(z, S) / divisor (`_horner_tile`), a
    tile per program (grid: pixel tiles x channel tiles). out is channels-last like z, or, for
    the last step (LAST), in the images' NCHW layout."""
    _horner_tile(z_ptr, x_ptr, taps_ptr, out_ptr, out_ptr, tl.program_id(0), tl.program_id(1),
                 divisor, M, C, H, W, ADD, not LAST, LAST, KSIZE, WHOLE_BLOCKS, BLOCK_M,
                 BLOCK_N, BLOCK_K, acc_ty, operand_ty, PRECISION)


@triton.jit
def _horner_series_kernel(states_ptr, taps_ptr, y_ptr, z2_ptr, partial_ptr, counter_ptr,
                          first_phase, last_phase, n, M, C, H, W, KEEP_Z2: tl.constexpr,
                          SPLITS: tl.constexpr, KSIZE: tl.constexpr,
                          WHOLE_BLOCKS: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, acc_ty: tl.constexpr,
                          operand_ty: tl.constexpr, PRECISION: tl.constexpr):
    """The forward's n Horner steps in one persistent launch: step s = 0 .. n - 1 computes
        z <- x + conv(z, S) / (n - s)   from z = x, the last one (divisor 1) giving y,
    every program taking the work items program_id, program_id + programs, ... of each phase,
    with a grid barrier between phases. With SPLITS = 1 a step is one phase over the output
    tiles (`_horner_tile`). With SPLITS > 1 (small images with many channels, where every row
    of tiles would re-read the whole filter) a step is two: the tiles' products split over
    SPLITS ranges of input-channel blocks, each stored to its slot of partial (SPLITS, M, C) in
    acc_ty, then the epilogue over the tiles summing the slots in order (the same bits on every
    run). states holds three channels-last (M, C) slots: x in slot 0, step s writing slot
    1 + s % 2 and reading its predecessor's; y (NCHW) is the last step's output, and z_2 (NCHW,
    KEEP_Z2) the step dividing by 2 also stores. Phases first_phase .. last_phase - 1 run in
    this launch: all of them on a GPU (the grid no larger than the SMs, so that every program is
    resident), one per launch under the interpreter."""
    tiles_n = tl.cdiv(C, BLOCK_N)
    tiles = tl.cdiv(M, BLOCK_M) * tiles_n
    channel_blocks = tl.cdiv(C, BLOCK_K)
    slot = tl.cast(M, tl.int64) * C
    first_image_step = n - 1
    if KEEP_Z2:
        first_image_step = n - 2
    for phase in range(first_phase, last_phase):
        if phase > first_phase:
            grid_barrier(counter_ptr, (phase - first_phase) * tl.num_programs(0))
        step = phase
        if SPLITS > 1:
            step = phase // 2
        # Slot 0 (x) for the first step, the previous step's output 1 + (step - 1) % 2 after it.
        source = tl.minimum(step, 1 + (step + 1) % 2)
        z_ptr = states_ptr + source * slot
        out_ptr = states_ptr + (1 + step % 2) * slot
        image_out_ptr = z2_ptr
        if step == n - 1:
            image_out_ptr = y_ptr
        if SPLITS == 1:
            for tile in range(tl.program_id(0), tiles, tl.num_programs(0)):
                _horner_tile(z_ptr, states_ptr, taps_ptr, out_ptr, image_out_ptr,
                             tile // tiles_n, tile % tiles_n, n - step, M, C, H, W, True,
                             step < n - 1, step >= first_image_step, KSIZE, WHOLE_BLOCKS,
                             BLOCK_M, BLOCK_N, BLOCK_K, acc_ty, operand_ty, PRECISION)
        elif phase % 2 == 0:
            for item in range(tl.program_id(0), tiles * SPLITS, tl.num_programs(0)):
                tile, split = item // SPLITS, item % SPLITS
                acc, rows, cols, pixel, mask = _horner_product(
                    z_ptr, taps_ptr, tile // tiles_n, tile % tiles_n,
                    split * channel_blocks // SPLITS, (split + 1) * channel_blocks // SPLITS,
                    M, C, H, W, KSIZE, WHOLE_BLOCKS, BLOCK_M, BLOCK_N, BLOCK_K, acc_ty,
                    operand_ty, PRECISION)
                tl.store(partial_ptr + split * slot + rows[:, None] * C + cols[None, :], acc,
                         mask=mask)
        else:
            for tile in range(tl.program_id(0), tiles, tl.num_programs(0)):
                rows = tl.cast(tile // tiles_n, tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
                cols = (tile % tiles_n) * BLOCK_N + tl.arange(0, BLOCK_N)
                mask = (rows < M)[:, None] & (cols < C)[None, :]
                acc = tl.zeros((BLOCK_M, BLOCK_N), acc_ty)
                for split in range(0, SPLITS):
                    acc += tl.load(partial_ptr + split * slot + rows[:, None] * C
                                   + cols[None, :], mask=mask, other=0.0, cache_modifier=".cg")
                _horner_store(acc, rows, cols, rows % (H * W), mask, states_ptr, out_ptr,
                              image_out_ptr, n - step, C, H, W, True, step < n - 1,
                              step >= first_image_step, acc_ty)


@triton.jit
def _weight_gradient_kernel(u_ptr, p_ptr, partial_ptr, divisor, M, C, H, W, split_pixels,
                            KSIZE: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr,
                            BLOCK_P: tl.constexpr, acc_ty: tl.constexpr,
                            operand_ty: tl.constexpr, PRECISION: tl.constexpr):
    """partial <- partial / divisor + Wg(p, u) on one (output channels x input channels) tile of
    one tap, over one split of the pixels:
        Wg(p, u)[co, ci, tap] = sum_q u[q, co] p[q + shift(tap), ci]   (0 outside the image),
    the weight gradient of conv(p, .) against the output gradient u: a GEMM reduced over the
    pixels (u^T p). u and p are channels-last (M, C); partial is (splits, k, k, C_out, C_in) in
    the accumulation dtype, each program alone on its slot, so the sum over the splits (on the
    host) is in a fixed order and grad_S is the same on every run. Program axes: output channel
    blocks, input channel blocks, taps x splits."""
    out_channels = tl.program_id(0) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    in_channels = tl.program_id(1) * BLOCK_CI + tl.arange(0, BLOCK_CI)
    tap = tl.program_id(2) % (KSIZE * KSIZE)
    split = tl.program_id(2) // (KSIZE * KSIZE)
    dy, dx = tap // KSIZE - KSIZE // 2, tap % KSIZE - KSIZE // 2
    first = split.to(tl.int64) * split_pixels
    last = tl.minimum(first + split_pixels, M)
    acc = tl.zeros((BLOCK_CO, BLOCK_CI), acc_ty)
    for start in range(first, last, BLOCK_P):
        rows = start + tl.arange(0, BLOCK_P)
        pixel = rows % (H * W)
        row, column = pixel // W, pixel % W
        in_split = rows < last
        inside = in_split & (row + dy >= 0) & (row + dy < H) & (column + dx >= 0) \
            & (column + dx < W)
        u = tl.load(u_ptr + rows[:, None] * C + out_channels[None, :],
                    mask=in_split[:, None] & (out_channels < C)[None, :], other=0.0)
        p = tl.load(p_ptr + (rows + dy * W + dx)[:, None] * C + in_channels[None, :],
                    mask=inside[:, None] & (in_channels < C)[None, :], other=0.0)
        acc = tl.dot(tl.trans(u.to(operand_ty)), p.to(operand_ty), acc,
                     input_precision=PRECISION, out_dtype=acc_ty)
    slot = (split * KSIZE * KSIZE + tap).to(tl.int64) * C
    offsets = (slot + out_channels)[:, None] * C + in_channels[None, :]
    mask = (out_channels < C)[:, None] & (in_channels < C)[None, :]
    previous = tl.load(partial_ptr + offsets, mask=mask, other=0.0)
    tl.store(partial_ptr + offsets, previous / divisor + acc, mask=mask)


def _precision(x: torch.Tensor) -> str:
    """tf32 where torch lets convolutions use it (the reference conv then does too), else IEEE."""
    if x.is_cuda and x.dtype != torch.float64 and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


# The forward's tiles. 128 x 64 output tiles are the largest that wgmma serves with a 16-deep
# reduction step (32-deep in half precision) in 3 pipeline stages within 36 KB of shared memory.
# A warp per 512 outputs (16 float32 accumulators a thread): at 4 warps the 128 x 64 tiles spill
# (496 bytes a thread in fp32 on sm_90, compiled as the JIT compiles them), at 8 they use 214
# registers and none; tiles of 16 x 16 at one warp load 16 bytes a thread.
_HORNER_BLOCK_M = (128, 64, 32, 16)
_HORNER_BLOCK_N = (64, 32, 16)
_HORNER_OUTPUTS_PER_WARP = 512
_HORNER_SMS = 132
def horner_programs(tiles: tuple[int, int], pixels: int, channels: int) -> int:
    """Programs of a Horner step with (BLOCK_M, BLOCK_N) tiles over pixels x channels."""
    return triton.cdiv(pixels, tiles[0]) * triton.cdiv(channels, tiles[1])


def horner_operand_reads(tiles: tuple[int, int], pixels: int, channels: int, kernel: int,
                         width: int) -> float:
    """Elements a Horner step's programs read from L2 for their operands: each row of tiles
    reads the whole filter (C^2 k^2), each column of tiles the input once per channel block,
    its k^2 shifts then hitting L1, plus the rows above and below the tile's pixels that the
    shifts reach (k // 2 image rows each way, at most k^2 reads in all)."""
    block_m, block_n = tiles
    filter_reads = triton.cdiv(pixels, block_m) * channels * channels * kernel * kernel
    halo = min(kernel * kernel, 1 + 2 * (kernel // 2) * width / min(block_m, pixels))
    input_reads = triton.cdiv(channels, block_n) * pixels * channels * halo
    return filter_reads + input_reads


def horner_tiles(pixels: int, channels: int, kernel: int, width: int,
                 element_size: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K) of a Horner step over pixels = B H W rows and `channels`:
    among the tiles whose grid has a program per SM of an H100, those that read the least from
    L2 (`horner_operand_reads`: small images with many channels re-read the filter once per row
    of tiles), the taller on a tie (64 rows and more run on wgmma); where none fills the GPU
    (small batches), the smallest tiles with the most programs."""
    widest = max(triton.next_power_of_2(channels), _MIN_BLOCK)
    candidates = [(m, n) for m in _HORNER_BLOCK_M for n in _HORNER_BLOCK_N if n <= widest]
    reads = lambda t: horner_operand_reads(t, pixels, channels, kernel, width)  # noqa: E731
    filling = [t for t in candidates if horner_programs(t, pixels, channels) >= _HORNER_SMS]
    if filling:
        block_m, block_n = min(filling, key=lambda t: (reads(t), -t[0]))
    else:
        block_m, block_n = max(candidates, key=lambda t: (
            horner_programs(t, pixels, channels), -reads(t), -t[0]))
    return block_m, block_n, _reduction_block(channels, element_size)


# The forward's splits of the reduction: powers of two up to this many ranges of input-channel
# blocks.
_MAX_SERIES_SPLITS = 16


def series_step_seconds(tiles: tuple[int, int], splits: int, pixels: int, channels: int,
                        kernel: int, width: int, element_size: int) -> tuple[float, str]:
    """(seconds, what bounds it) of one step of the persistent forward on an H100 with
    (BLOCK_M, BLOCK_N) tiles and the reduction in `splits` ranges: the largest of its
    tensor-core products, its HBM traffic (z and x read, z and the filter once) and its L2
    reads (`horner_operand_reads`, and with splits the partial sums written and read back in
    the accumulation dtype), plus the grid barrier between a split step's two phases."""
    flops = 2.0 * pixels * channels ** 2 * kernel ** 2
    activation = pixels * channels * element_size
    filter_bytes = channels ** 2 * kernel ** 2 * element_size
    partials = 2.0 * splits * pixels * channels * max(element_size, 4) if splits > 1 else 0.0
    reads = horner_operand_reads(tiles, pixels, channels, kernel, width) * element_size
    times = {"compute": flops / (H100_TF32_FLOPS if element_size >= 4 else H100_BF16_FLOPS),
             "HBM": (3 * activation + filter_bytes) / H100_HBM_BYTES_PER_S,
             "L2": (reads + partials) / H100_L2_BYTES_PER_S}
    bound = max(times, key=times.get)
    return times[bound] + (H100_GRID_BARRIER_S if splits > 1 else 0.0), bound


def series_tiles(pixels: int, channels: int, kernel: int, width: int,
                 element_size: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, SPLITS) of the persistent forward: among the tiles and
    reduction splits whose first phase has a work item per SM of an H100, the fastest by
    `series_step_seconds` (then the fewest splits, the fewest L2 reads, the taller tile);
    without one, the Horner step's tiles unsplit (`horner_tiles`)."""
    block_k = _reduction_block(channels, element_size)
    channel_blocks = triton.cdiv(channels, block_k)
    widest = max(triton.next_power_of_2(channels), _MIN_BLOCK)
    splits = [1 << p for p in range(_MAX_SERIES_SPLITS.bit_length())
              if 1 << p <= min(channel_blocks, _MAX_SERIES_SPLITS)]
    shape = (pixels, channels, kernel, width)
    candidates = [((m, n), split) for m in _HORNER_BLOCK_M for n in _HORNER_BLOCK_N
                  for split in splits
                  if n <= widest and horner_programs((m, n), pixels, channels) * split
                  >= _HORNER_SMS]
    if not candidates:
        return (*horner_tiles(*shape, element_size), 1)
    (block_m, block_n), split = min(candidates, key=lambda c: (
        series_step_seconds(*c, *shape, element_size)[0], c[1],
        horner_operand_reads(c[0], *shape), -c[0][0]))
    return block_m, block_n, block_k, split


def _reduction_block(channels: int, element_size: int) -> int:
    """The depth of a tl.dot's reduction step: 64 bytes of each operand row (16 fp32 or 32 bf16
    values; 16 float64, the smallest tl.dot takes), no deeper than the channels need."""
    return max(min(triton.next_power_of_2(channels), 64 // element_size), _MIN_BLOCK)


def _tile_constants(x: torch.Tensor, S: torch.Tensor, block_m: int, block_n: int,
                    block_k: int) -> dict:
    """The compile-time constants and launch options both Horner kernels take for tiles of
    (block_m, block_n) outputs and block_k-deep reduction steps."""
    return dict(KSIZE=S.shape[-1], WHOLE_BLOCKS=x.shape[1] % block_k == 0, BLOCK_M=block_m,
                BLOCK_N=block_n, BLOCK_K=block_k, **_arithmetic(x),
                num_warps=_warps(block_m, block_n), num_stages=3)


def forward_launch_config(x: torch.Tensor, S: torch.Tensor) -> tuple[tuple[int, int], dict]:
    """(grid, compile-time constants and launch options) of a Horner step for images x
    (B, C, H, W) and filter S."""
    batch, channels, height, width = x.shape
    pixels = batch * height * width
    block_m, block_n, block_k = horner_tiles(pixels, channels, S.shape[-1], width,
                                             x.element_size())
    grid = (triton.cdiv(pixels, block_m), triton.cdiv(channels, block_n))
    return grid, _tile_constants(x, S, block_m, block_n, block_k)


def series_launch_config(x: torch.Tensor, S: torch.Tensor) -> tuple[int, dict]:
    """(work items of the first phase of a step, compile-time constants and launch options) of
    the persistent forward for images x (B, C, H, W) and filter S (`series_tiles`)."""
    batch, channels, height, width = x.shape
    pixels = batch * height * width
    block_m, block_n, block_k, splits = series_tiles(pixels, channels, S.shape[-1], width,
                                                     x.element_size())
    items = horner_programs((block_m, block_n), pixels, channels) * splits
    return items, dict(_tile_constants(x, S, block_m, block_n, block_k), SPLITS=splits)


def _arithmetic(x: torch.Tensor) -> dict:
    """The products' dtypes and precision for inputs like x, as both kernels take them:
    acc_ty float64 for float64, else float32; operand_ty `dot_operand_dtype`'s."""
    return dict(acc_ty=tl.float64 if x.dtype == torch.float64 else tl.float32,
                operand_ty=dot_operand_dtype(x), PRECISION=_precision(x))


def _warps(rows: int, cols: int) -> int:
    """Warps of a rows x cols output tile: one per 512 outputs, up to 8, and at least the
    warpgroup of 4 that wgmma needs for tiles of 64 rows and more."""
    fewest = 4 if rows >= 64 else 1
    return min(max(rows * cols // _HORNER_OUTPUTS_PER_WARP, fewest), 8)


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) as a contiguous (B, H, W, C) tensor: the Horner step's row-major (M, C)."""
    return t.permute(0, 2, 3, 1).contiguous()


def _reduction_major(S: torch.Tensor) -> torch.Tensor:
    """A filter (C_out, C_in, k, k) as the Horner steps read it: (k, k, C_out, C_in)."""
    return S.permute(2, 3, 0, 1).contiguous()


class _Series:
    """The Horner step's launch for one shape: out = (x +) conv(z, filter) / divisor over the
    channels-last (M, C) activations, with S or its adjoint flipT(S) as the filter (both
    reduction-major, (k, k, C_out, C_in))."""

    def __init__(self, x: torch.Tensor, S: torch.Tensor):
        grid, self.config = forward_launch_config(x, S)
        self.step = launchable(_horner_step_kernel)[grid]
        self.sizes = (x.shape[0] * x.shape[2] * x.shape[3], *x.shape[1:])
        self.taps = _reduction_major(S)
        self.adjoint_taps = _reduction_major(S.transpose(0, 1).flip(2, 3))

    def __call__(self, z, x, taps, out, divisor, last=False):
        """out = (x +, where x is not None) conv(z, taps) / divisor; `last`: out is NCHW."""
        self.step(z, z if x is None else x, taps, out, divisor, *self.sizes, ADD=x is not None,
                  LAST=last, **self.config)
        return out


def soc_exp(x: torch.Tensor, S: torch.Tensor, terms: int, grad_mode: str):
    """(y, saved) of the series, as the C++ op: saved is [z_2] in fast mode (terms > 1), else
    empty (the exact backward recomputes the powers). Inputs are checked first
    (lipkernels.ops.soc_exp); outputs are contiguous.

    Horner order, every step in one persistent launch (`_horner_series_kernel`): z = x; for
    i = n..2: z = x + conv(z, S) / i; y = x + conv(z, S) = sum_{i=0}^{n} S^{*i} x / i!,
    n = terms - 1."""
    x, S = x.contiguous(), S.contiguous()
    n = terms - 1
    keeps_z2 = grad_mode == "fast" and n > 0
    if n == 0 or x.numel() == 0:  # custom ops must not return their inputs
        return x.clone(), [x.clone()] if keeps_z2 else []
    items, config = series_launch_config(x, S)
    batch, channels, height, width = x.shape
    pixels = batch * height * width
    # Slot 0 is x channels-last, the steps alternate between the other two.
    states = x.new_empty((1 + min(n - 1, 2), batch, height, width, channels))
    states[0].copy_(x.permute(0, 2, 3, 1))
    y = torch.empty_like(x)
    # z_2 is x itself when n == 1; otherwise the step dividing by 2 stores it.
    z2 = (x.clone() if n == 1 else torch.empty_like(x)) if keeps_z2 else None
    splits = config["SPLITS"]
    partial = states if splits == 1 else torch.empty(
        (splits, pixels, channels), dtype=accumulation_dtype(x.dtype), device=x.device)
    programs = min(items, persistent_programs(x.device))
    counter = torch.zeros(1, dtype=torch.int32, device=x.device)
    taps = _reduction_major(S)
    for first, last in phase_spans(n if splits == 1 else 2 * n, x.device):
        launchable(_horner_series_kernel)[(programs,)](
            states, taps, y, y if z2 is None else z2, partial, counter, first, last, n,
            pixels, channels, height, width, KEEP_Z2=keeps_z2 and n > 1, **config)
    return y, [z2] if keeps_z2 else []


def weight_gradient_tiles(pixels: int, channels: int, kernel: int,
                          element_size: int) -> tuple[int, int, int, int]:
    """(channel block, pixel block, pixels per split, splits) of the weight gradient: square
    tiles of up to 64 channels, and the pixels split until the grid (channel tiles x taps x
    splits) has a program per SM of an H100 (many channels need no split)."""
    block = min(max(triton.next_power_of_2(channels), _MIN_BLOCK), _HORNER_BLOCK_N[0])
    block_p = _reduction_block(channels, element_size)
    tiles = triton.cdiv(channels, block) ** 2 * kernel * kernel
    wanted = min(triton.cdiv(_HORNER_SMS, tiles), triton.cdiv(pixels, block_p))
    split = triton.cdiv(triton.cdiv(pixels, wanted), block_p) * block_p
    return block, block_p, split, triton.cdiv(pixels, split)


class _WeightGradient:
    """grad_S accumulated Horner-like by `_weight_gradient_kernel` launches: G <- G / divisor +
    Wg(p, u), in per-split partial sums of the accumulation dtype (`weight_gradient_tiles`)
    summed at the end."""

    def __init__(self, x: torch.Tensor, S: torch.Tensor):
        pixels, channels, kernel = x.shape[0] * x.shape[2] * x.shape[3], x.shape[1], S.shape[-1]
        block, block_p, split, splits = weight_gradient_tiles(pixels, channels, kernel,
                                                              x.element_size())
        self.partial = torch.zeros((splits, kernel, kernel, channels, channels),
                                   dtype=accumulation_dtype(x.dtype), device=x.device)
        tiles = triton.cdiv(channels, block)
        grid = (tiles, tiles, kernel * kernel * splits)
        self.programs = grid[0] * grid[1] * grid[2]
        self.kernel = launchable(_weight_gradient_kernel)[grid]
        self.sizes = (pixels, *x.shape[1:], split)
        self.config = dict(KSIZE=kernel, BLOCK_CO=block, BLOCK_CI=block, BLOCK_P=block_p,
                           **_arithmetic(x), num_warps=_warps(block, block), num_stages=3)

    def add(self, u: torch.Tensor, p: torch.Tensor, divisor: int):
        self.kernel(u, p, self.partial, divisor, *self.sizes, **self.config)

    def result(self, dtype: torch.dtype) -> torch.Tensor:
        """(C_out, C_in, k, k) in `dtype`: the splits summed in order."""
        return self.partial.sum(0).permute(2, 3, 0, 1).to(dtype).contiguous()


def soc_exp_backward(grad_y: torch.Tensor, S: torch.Tensor, start: torch.Tensor,
                     powers: list[torch.Tensor], terms: int, grad_mode: str):
    """(grad_x, grad_S) for the output gradient grad_y; `start` is x (exact) or z_2 (fast).
    These kernels keep no powers (`powers` is empty): the exact backward recomputes them.

    On channels-last activations, with Horner steps of the adjoint filter flipT(S) and the
    weight gradient's GEMM (n = terms - 1, g = grad_y):
        exact: p_j = S^j x for j < n (n - 1 steps without the addition);
        u_{n-1} = g; u_j = g + S^T u_{j+1} / (j + 2); grad_x = g + S^T u_0;
        exact grad_S = sum_j Wg(p_j, u_j) / (j + 1)!, summed Horner-like from j = n - 1:
            G <- G / (j + 2) + Wg(p_j, u_j);
        fast grad_S = Wg(z_2, u_0)."""
    if powers:
        raise ValueError(f"soc_exp_backward: powers must be empty for the Triton kernels, which "
                         f"recompute the powers; got {len(powers)}")
    grad_y, S, start = grad_y.contiguous(), S.contiguous(), start.contiguous()
    n = terms - 1
    if n == 0 or grad_y.numel() == 0:
        return grad_y.clone(), torch.zeros_like(S)
    exact = grad_mode == "exact"
    series, weight_gradient = _Series(grad_y, S), _WeightGradient(grad_y, S)
    g = _channels_last(grad_y)
    powers = [_channels_last(start)]
    while exact and len(powers) < n:
        powers.append(series(powers[-1], None, series.taps, torch.empty_like(g), 1))
    # Each u_j is written into a buffer already spent (a power whose weight gradient is taken,
    # or u_{j+2}), so the backward holds n + 1 activations (the powers and g) at its peak.
    spent, u = [], g
    for j in range(n - 1, -1, -1):
        if j < n - 1:
            previous = u
            u = series(u, g, series.adjoint_taps, spent.pop() if spent else torch.empty_like(g),
                       j + 2)
            if previous is not g:
                spent.append(previous)
        if exact:
            weight_gradient.add(u, powers[j], j + 2)
            spent.append(powers.pop())
    if not exact:
        weight_gradient.add(u, powers.pop(), 1)
    spent.clear()
    grad_x = series(u, g, series.adjoint_taps, torch.empty_like(grad_y), 1, last=True)
    return grad_x, weight_gradient.result(S.dtype)
