"""Triton skew-orthogonal convolution series: every term of a direction in one launch.

Singla & Feizi, "Skew Orthogonal Convolutions", ICML 2021; the fast gradient from Singla, Singla
& Feizi, "Improved techniques for deterministic l2 robustness", NeurIPS 2022. The math is that of
csrc/cpu/soc_exp.cpp (n = terms - 1, conv the zero-padded "same" conv, S^T = conv with flipT(S),
Wg(a, b) the weight gradient of conv(a, .) against the output gradient b):
    forward    z = x; for i = n..2: z = x + conv(z, S) / i;  y = x + conv(z_2, S)
    backward   u_{n-1} = g;  u_j = g + S^T u_{j+1} / (j + 2);  grad_x = g + S^T u_0
               exact grad_S = sum_{j=0}^{n-1} Wg(S^j x, u_j) / (j+1)!
               fast  grad_S = Wg(z_2, u_0)

The forward is one launch per Horner step, each an implicit GEMM over the whole batch: rows are
the M = B H W pixels, columns the output channels, the reduction the input channels of every tap
(docs/performance.md: a design that keeps the activations of an image group on chip needs the
whole C x C filter in every program each term, 9.4 MB at 512 channels, and grows only one program
per image group). Tiles are as large as the grid allows while it still has a program per SM of an
H100 (`term_tiles`), so the small-image, many-channel layers split their output channels over
programs and read only their slice of the filter. The working activations are channels-last, so
a tile of input channels is contiguous (16-byte loads) and the reduction loop over (tap, channel
block) is one loop the compiler pipelines; the step's epilogue adds x and divides by i, so a term
costs one launch and 3 activation passes (read z and x, write the new z). The state z is stored
in the input's dtype between steps and each step accumulates in float32 (float64 for float64):
half-precision inputs are multiplied on tensor cores in their own precision (bf16/fp16 mma) and
each Horner partial sum is rounded once, where the reference rounds each term's convolution,
division and addition.

Why the backward's program owns whole images: term i + 1 of the series needs term i at every
neighbouring pixel and channel, and programs cannot wait for each other. A program that holds all
channels and pixels of its images needs no other program's data, so it runs the whole loop with a
CTA barrier (tl.debug_barrier, which also orders the program's global memory) between terms. Each
LipConvNet activation is at most 32K values an image, so the working set stays in L2. Images
with few pixels are grouped, several per program, so the pixel axis of the matrix products stays
wide; pixels of different images in a group never mix (the padding masks are per image).

A term is a set of (channel block x pixel block) output tiles; a tile accumulates, over input
channel blocks and the k x k taps, tl.dot(filter tap tile, shifted input tile), with the
shifted input masked to zero outside its image (the zero padding). Terms live in a scratch
tensor of the accumulation dtype (float32, float64 for float64) so the series is rounded to the
input dtype once. The weight gradient tile (output channels x input channels, one tap) is
tl.dot(u tile, shifted power tile^T) summed over the program's pixels and added to a float
buffer with tl.atomic_add: programs never wait for each other, and the order of the additions
(hence the last bits of grad_S) varies from run to run.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import accumulation_dtype, launchable

# The pixel axis of a tile: 64 keeps the (channels x pixels) accumulator and the two operand
# tiles within the register file at 4 warps; images are grouped up to this many pixels.
_BLOCK_PIXELS = 64
# tl.dot needs every dimension >= 16.
_MIN_BLOCK = 16
_MAX_BLOCK_CHANNELS = 32
# Programs a launch should have before images are grouped: about the SM count of an H100, so a
# batch of large images fills the GPU one image per program.
_MIN_PROGRAMS = 128


@triton.jit
def _pixel_coordinates(p, HW, W):
    """(image, row, column) of group pixel index p = image * H * W + row * W + column."""
    image = p // HW
    pixel = p % HW
    return image, pixel // W, pixel % W


@triton.jit
def _shifted_tile(src_ptr, channels, image, row, column, pixel_mask, dy, dx, C, H, W, HW,
                  acc_ty: tl.constexpr):
    """src[image, channel, row + dy, column + dx] as a (channels x pixels) tile, 0 outside the
    image (zero "same" padding) and for masked channels or pixels."""
    shifted_row = row + dy
    shifted_column = column + dx
    valid = pixel_mask & (shifted_row >= 0) & (shifted_row < H) & (shifted_column >= 0) \
        & (shifted_column < W)
    offsets = (image * C)[None, :] * HW + channels[:, None] * HW \
        + (shifted_row * W + shifted_column)[None, :]
    mask = (channels < C)[:, None] & valid[None, :]
    return tl.load(src_ptr + offsets, mask=mask, other=0.0).to(acc_ty)


@triton.jit
def _conv_tile(src_ptr, w_ptr, out_channels, p, P, C, H, W, HW,
               KSIZE: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr,
               BLOCK_P: tl.constexpr, acc_ty: tl.constexpr, PRECISION: tl.constexpr):
    """conv(src, w)[out_channels, p] for a tile of output channels and group pixels p:
    sum over input channels ci and taps (ty, tx) of w[co, ci, ty, tx] src[ci, p + (ty - k/2,
    tx - k/2)]."""
    image, row, column = _pixel_coordinates(p, HW, W)
    pixel_mask = p < P
    acc = tl.zeros((BLOCK_CO, BLOCK_P), acc_ty)
    for ci0 in range(0, C, BLOCK_CI):
        in_channels = ci0 + tl.arange(0, BLOCK_CI)
        w_mask = (out_channels < C)[:, None] & (in_channels < C)[None, :]
        w_offsets = (out_channels[:, None] * C + in_channels[None, :]) * (KSIZE * KSIZE)
        for tap in range(KSIZE * KSIZE):
            taps = tl.load(w_ptr + w_offsets + tap, mask=w_mask, other=0.0).to(acc_ty)
            src = _shifted_tile(src_ptr, in_channels, image, row, column, pixel_mask,
                                tap // KSIZE - KSIZE // 2, tap % KSIZE - KSIZE // 2,
                                C, H, W, HW, acc_ty)
            acc += tl.dot(taps, src, input_precision=PRECISION)
    return acc


@triton.jit
def _series_step(src_ptr, dst_ptr, add_ptr, w_ptr, scale, P, C, H, W, HW,
                 ADD: tl.constexpr, KSIZE: tl.constexpr, BLOCK_CO: tl.constexpr,
                 BLOCK_CI: tl.constexpr, BLOCK_P: tl.constexpr, acc_ty: tl.constexpr,
                 PRECISION: tl.constexpr):
    """dst = scale * conv(src, w) (+ add if ADD) over the program's images. Ends with a barrier:
    the next step reads dst at other pixels and channels."""
    for co0 in range(0, C, BLOCK_CO):
        out_channels = co0 + tl.arange(0, BLOCK_CO)
        for p0 in range(0, P, BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            out = scale * _conv_tile(src_ptr, w_ptr, out_channels, p, P, C, H, W, HW,
                                     KSIZE, BLOCK_CO, BLOCK_CI, BLOCK_P, acc_ty, PRECISION)
            image, row, column = _pixel_coordinates(p, HW, W)
            offsets = (image * C)[None, :] * HW + out_channels[:, None] * HW \
                + (row * W + column)[None, :]
            mask = (out_channels < C)[:, None] & (p < P)[None, :]
            if ADD:
                out += tl.load(add_ptr + offsets, mask=mask, other=0.0).to(acc_ty)
            tl.store(dst_ptr + offsets, out.to(dst_ptr.dtype.element_ty), mask=mask)
    tl.debug_barrier()


@triton.jit
def _copy(src_ptr, dst_ptr, count, BLOCK: tl.constexpr):
    """dst[:count] = src[:count] (cast to dst's dtype), then a barrier."""
    for start in range(0, count, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        values = tl.load(src_ptr + offsets, mask=offsets < count)
        tl.store(dst_ptr + offsets, values.to(dst_ptr.dtype.element_ty), mask=offsets < count)
    tl.debug_barrier()


@triton.jit
def _add_weight_gradient(src_ptr, u_ptr, grad_ptr, coefficient, P, C, H, W, HW,
                         KSIZE: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr,
                         BLOCK_P: tl.constexpr, acc_ty: tl.constexpr, PRECISION: tl.constexpr):
    """grad[co, ci, ty, tx] += coefficient * sum_p u[co, p] src[ci, p + (ty - k/2, tx - k/2)]
    over the program's pixels: Wg(src, u), the weight gradient of conv(src, .) against u."""
    for co0 in range(0, C, BLOCK_CO):
        out_channels = co0 + tl.arange(0, BLOCK_CO)
        for ci0 in range(0, C, BLOCK_CI):
            in_channels = ci0 + tl.arange(0, BLOCK_CI)
            grad_mask = (out_channels < C)[:, None] & (in_channels < C)[None, :]
            grad_offsets = (out_channels[:, None] * C + in_channels[None, :]) * (KSIZE * KSIZE)
            for tap in range(KSIZE * KSIZE):
                acc = tl.zeros((BLOCK_CO, BLOCK_CI), acc_ty)
                for p0 in range(0, P, BLOCK_P):
                    p = p0 + tl.arange(0, BLOCK_P)
                    image, row, column = _pixel_coordinates(p, HW, W)
                    pixel_mask = p < P
                    u = _shifted_tile(u_ptr, out_channels, image, row, column, pixel_mask, 0, 0,
                                      C, H, W, HW, acc_ty)
                    src = _shifted_tile(src_ptr, in_channels, image, row, column, pixel_mask,
                                        tap // KSIZE - KSIZE // 2, tap % KSIZE - KSIZE // 2,
                                        C, H, W, HW, acc_ty)
                    acc += tl.dot(u, tl.trans(src), input_precision=PRECISION)
                tl.atomic_add(grad_ptr + grad_offsets + tap, coefficient * acc, mask=grad_mask)
    # The caller overwrites src or u next.
    tl.debug_barrier()


@triton.jit
def _program_images(B, C, H, W, GROUP: tl.constexpr):
    """This program's share of the batch: images GROUP * pid onwards (fewer in the last group).

    Returns (H * W, P = pixels of the group, element offset of its first image, elements of one
    activation-sized scratch slot)."""
    HW = H * W
    first = tl.program_id(0) * GROUP
    P = tl.minimum(GROUP, B - first) * HW
    # tl.cast, not .to: the JIT turns a batch of 1 (or a 1x1 image) into a constexpr, which has
    # no .to.
    return HW, P, first.to(tl.int64) * C * HW, tl.cast(B, tl.int64) * C * HW


@triton.jit
def _horner_step_kernel(z_ptr, x_ptr, taps_ptr, out_ptr, copy_ptr, divisor, M, C, H, W,
                        LAST: tl.constexpr, COPY: tl.constexpr, KSIZE: tl.constexpr,
                        WHOLE_BLOCKS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        acc_ty: tl.constexpr, operand_ty: tl.constexpr, PRECISION: tl.constexpr):
    """One Horner step of the forward series over the whole batch:
        out = x + conv(z, S) / divisor,
    an implicit GEMM (M pixels x C output channels, reduction over C input channels x k^2 taps)
    on a (BLOCK_M x BLOCK_N) output tile per program. z and x are channels-last (M, C) in the
    input dtype, taps is S as (k, k, C_out, C_in): both operands contiguous along the reduction,
    the layout float32 wgmma reads from shared memory (only 16-bit types may be transposed). out is channels-last like z, or, for the last
    step (LAST), y in x's NCHW layout; COPY also stores out there to copy_ptr (z_2, NCHW).
    acc_ty: the accumulation dtype (float64 for float64 inputs, else float32); operand_ty: the
    dtype the tensor cores multiply in (`forward_launch_config`)."""
    # int64 pixel indices: B C H W may exceed 2^31 elements.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    pixel = rows % (H * W)
    row, column = pixel // W, pixel % W
    row_mask, col_mask = rows < M, cols < C
    channel_blocks = tl.cdiv(C, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), acc_ty)
    # Taps innermost: the k^2 shifted reads of a channel block follow each other, so all but the
    # first hit the L1 cache (".ca"), not L2.
    for step in range(0, KSIZE * KSIZE * channel_blocks):
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
    mask = row_mask[:, None] & col_mask[None, :]
    rows_major = rows[:, None] * C + cols[None, :]
    out = tl.load(x_ptr + rows_major, mask=mask, other=0.0).to(acc_ty) + acc / divisor
    image_major = (rows - pixel)[:, None] * C + cols[None, :] * (H * W) + pixel[:, None]
    if LAST:
        tl.store(out_ptr + image_major, out.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(out_ptr + rows_major, out.to(out_ptr.dtype.element_ty), mask=mask)
    if COPY:
        tl.store(copy_ptr + image_major, out.to(copy_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _soc_exp_backward_kernel(g_ptr, w_ptr, wt_ptr, start_ptr, grad_x_ptr, grad_w_ptr,
                             scratch_ptr, n, B, C, H, W,
                             GROUP: tl.constexpr, EXACT: tl.constexpr, KSIZE: tl.constexpr,
                             BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr,
                             BLOCK_P: tl.constexpr, PRECISION: tl.constexpr):
    """Backward of the series (n >= 1) for GROUP images per program, in one launch.

    Exact mode, scratch slots 0..n (each activation-sized, accumulation dtype):
      slot j <- S^j x for j = 0..n-1 (slot 0 a copy of start = x), slot n <- g = u_{n-1};
      for j = n-1..0: u_j = g + S^T u_{j+1} / (j+2) is written to slot j+1, whose power S^{j+1} x
      was used last iteration; then grad_S += Wg(S^j x, u_j) / (j+1)!.
    Fast mode, slots 0..2: slot 0 <- start = z_2, u_j in slot 1 + (j % 2); grad_S = Wg(z_2, u_0).
    Both end with grad_x = g + S^T u_0. wt is flipT(S); grad_w a zeroed accumulation-dtype
    buffer that the programs' partial weight gradients are atomically added to.
    """
    acc_ty = scratch_ptr.dtype.element_ty
    HW, P, base, slot = _program_images(B, C, H, W, GROUP)
    g_ptr += base
    start_ptr += base
    grad_x_ptr += base
    scratch_ptr += base
    _copy(start_ptr, scratch_ptr, P * C, BLOCK_CO * BLOCK_P)
    if EXACT:
        for j in range(1, n):
            _series_step(scratch_ptr + (j - 1) * slot, scratch_ptr + j * slot, g_ptr, w_ptr,
                         1.0, P, C, H, W, HW, False, KSIZE, BLOCK_CO, BLOCK_CI, BLOCK_P, acc_ty,
                         PRECISION)
        u_last = n
    else:
        u_last = 1 + (n - 1) % 2
    _copy(g_ptr, scratch_ptr + u_last * slot, P * C, BLOCK_CO * BLOCK_P)
    # 1 / (j+1)! for j = n-1, updated as j decreases.
    coefficient = tl.full([], 1.0, acc_ty)
    for m in range(2, n + 1):
        coefficient = coefficient / m
    for step in range(0, n):
        j = n - 1 - step
        if EXACT:
            u_slot = j + 1
        else:
            u_slot = 1 + j % 2
        if j < n - 1:
            if EXACT:
                previous = j + 2
            else:
                previous = 1 + (j + 1) % 2
            _series_step(scratch_ptr + previous * slot, scratch_ptr + u_slot * slot, g_ptr,
                         wt_ptr, 1.0 / (j + 2).to(acc_ty), P, C, H, W, HW, True,
                         KSIZE, BLOCK_CO, BLOCK_CI, BLOCK_P, acc_ty, PRECISION)
        if EXACT:
            _add_weight_gradient(scratch_ptr + j * slot, scratch_ptr + u_slot * slot,
                                 grad_w_ptr, coefficient, P, C, H, W, HW,
                                 KSIZE, BLOCK_CO, BLOCK_CI, BLOCK_P, acc_ty, PRECISION)
            coefficient = coefficient * (j + 1)
    if not EXACT:
        _add_weight_gradient(scratch_ptr, scratch_ptr + slot, grad_w_ptr, 1.0, P, C, H, W, HW,
                             KSIZE, BLOCK_CO, BLOCK_CI, BLOCK_P, acc_ty, PRECISION)
    # u_0 is in slot 1 in both modes.
    _series_step(scratch_ptr + slot, grad_x_ptr, g_ptr, wt_ptr, 1.0, P, C, H, W, HW, True,
                 KSIZE, BLOCK_CO, BLOCK_CI, BLOCK_P, acc_ty, PRECISION)


def _precision(x: torch.Tensor) -> str:
    """tf32 where torch lets convolutions use it (the reference conv then does too), else IEEE."""
    if x.is_cuda and x.dtype != torch.float64 and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


def _group_size(batch: int, pixels: int) -> int:
    """Images per program: enough to fill a pixel block, but never fewer than _MIN_PROGRAMS
    programs when the batch allows it (parallelism first; grouping only in large batches)."""
    filling = max(1, _BLOCK_PIXELS // pixels)
    return max(1, min(filling, batch // _MIN_PROGRAMS))


def backward_launch_config(x: torch.Tensor, S: torch.Tensor) -> tuple[tuple[int], dict]:
    """(grid, compile-time constants and launch options) of the backward for images x
    (B, C, H, W) and filter S.

    num_warps=8, num_stages=2: the 32x32x64 fp32 tiles spill in the backward at 4 warps, and at
    8 warps with the default 3 pipeline stages; 8 warps with 2 stages do not. In half precision
    one stage: compiled as the JIT compiles it (tests/triton_compile_check.py), the bf16 backward
    at 32@32x32 spills 184 bytes a thread on sm_90 with 2 stages and none with 1 (the ptxas
    figures are in benchmarks/results/kernel-notes.md). Untuned on a GPU so far.
    """
    batch, channels, height, width = x.shape
    group = _group_size(batch, height * width)
    block_channels = min(max(triton.next_power_of_2(channels), _MIN_BLOCK), _MAX_BLOCK_CHANNELS)
    block_pixels = min(max(triton.next_power_of_2(group * height * width), _MIN_BLOCK),
                       _BLOCK_PIXELS)
    grid = (triton.cdiv(batch, group),)
    return grid, dict(GROUP=group, KSIZE=S.shape[-1], BLOCK_CO=block_channels,
                      BLOCK_CI=block_channels, BLOCK_P=block_pixels, PRECISION=_precision(x),
                      num_warps=8, num_stages=1 if x.element_size() == 2 else 2)


# The forward's tiles. 128 x 64 output tiles are the largest that wgmma serves with a 16-deep
# reduction step (32-deep in half precision) in 3 pipeline stages within 36 KB of shared memory.
# A warp per 512 outputs (16 float32 accumulators a thread): at 4 warps the 128 x 64 tiles spill
# (496 bytes a thread in fp32 on sm_90, compiled as the JIT compiles them), at 8 they use 214
# registers and none; tiles of 16 x 16 at one warp load 16 bytes a thread.
_HORNER_BLOCK_M = (128, 64, 32, 16)
_HORNER_BLOCK_N = (64, 32, 16)
_HORNER_OUTPUTS_PER_WARP = 512
_HORNER_SMS = 132
_TRITON_DTYPES = {torch.float64: tl.float64, torch.float32: tl.float32,
                  torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


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
    block_k = min(max(triton.next_power_of_2(channels), _MIN_BLOCK), 64 // element_size)
    return block_m, block_n, block_k


def forward_launch_config(x: torch.Tensor, S: torch.Tensor) -> tuple[tuple[int, int], dict]:
    """(grid, compile-time constants and launch options) of a Horner step for images x
    (B, C, H, W) and filter S."""
    batch, channels, height, width = x.shape
    pixels = batch * height * width
    block_m, block_n, block_k = horner_tiles(pixels, channels, S.shape[-1], width,
                                             x.element_size())
    grid = (triton.cdiv(pixels, block_m), triton.cdiv(channels, block_n))
    acc_ty = tl.float64 if x.dtype == torch.float64 else tl.float32
    # The input's own dtype, except bfloat16 on the CPU: the Triton interpreter multiplies
    # bfloat16 tl.dot operands wrongly (numpy has no bfloat16), so they are widened to float32
    # there, which gives the same products (exact in float32) as a bf16 mma accumulating in
    # float32.
    widen = x.dtype == torch.bfloat16 and x.device.type == "cpu"
    operand_ty = tl.float32 if widen else _TRITON_DTYPES[x.dtype]
    warps = min(max(block_m * block_n // _HORNER_OUTPUTS_PER_WARP, 1), 8)
    return grid, dict(KSIZE=S.shape[-1], WHOLE_BLOCKS=channels % block_k == 0, BLOCK_M=block_m,
                      BLOCK_N=block_n, BLOCK_K=block_k, acc_ty=acc_ty, operand_ty=operand_ty, PRECISION=_precision(x),
                      num_warps=warps, num_stages=3)


def _scratch(x: torch.Tensor, slots: int) -> torch.Tensor:
    return torch.empty((slots, x.numel()), dtype=accumulation_dtype(x.dtype), device=x.device)


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) as a contiguous (B, H, W, C) tensor: the Horner step's row-major (M, C)."""
    return t.permute(0, 2, 3, 1).contiguous()


def soc_exp(x: torch.Tensor, S: torch.Tensor, terms: int, grad_mode: str):
    """(y, saved) of the series, as the C++ op: saved is [z_2] in fast mode (terms > 1), else
    empty (the exact backward recomputes the powers). Inputs are checked first
    (lipkernels.ops.soc_exp); outputs are contiguous.

    Horner order, one launch a step: z = x; for i = n..2: z = x + conv(z, S) / i;
    y = x + conv(z, S) = sum_{i=0}^{n} S^{*i} x / i!, n = terms - 1."""
    x, S = x.contiguous(), S.contiguous()
    n = terms - 1
    keeps_z2 = grad_mode == "fast"
    if n == 0 or x.numel() == 0:  # custom ops must not return their inputs
        return x.clone(), [x.clone()] if keeps_z2 and n > 0 else []
    y = torch.empty_like(x)
    # z_2 is x itself when n == 1; otherwise the step i = 2 stores it.
    z2 = (x.clone() if n == 1 else torch.empty_like(x)) if keeps_z2 else None
    grid, config = forward_launch_config(x, S)
    rows, taps = _channels_last(x), S.permute(2, 3, 0, 1).contiguous()
    states = [torch.empty_like(rows) for _ in range(min(n - 1, 2))]
    step = launchable(_horner_step_kernel)[grid]
    z = rows
    for i in range(n, 1, -1):
        copy = keeps_z2 and i == 2
        out = states[i % 2]
        step(z, rows, taps, out, z2 if copy else out, i, rows.shape[0] * rows.shape[1] *
             rows.shape[2], *x.shape[1:], LAST=False, COPY=copy, **config)
        z = out
    step(z, rows, taps, y, y, 1, rows.shape[0] * rows.shape[1] * rows.shape[2], *x.shape[1:],
         LAST=True, COPY=False, **config)
    return y, [z2] if keeps_z2 else []


def _launch_backward(x: torch.Tensor, S: torch.Tensor, *args, **constants):
    """Launch the backward on a grid of image groups of x (B, C, H, W) with filter S."""
    grid, config = backward_launch_config(x, S)
    launchable(_soc_exp_backward_kernel)[grid](*args, *x.shape, **config, **constants)


def soc_exp_backward(grad_y: torch.Tensor, S: torch.Tensor, start: torch.Tensor,
                     powers: list[torch.Tensor], terms: int, grad_mode: str):
    """(grad_x, grad_S) for the output gradient grad_y; `start` is x (exact) or z_2 (fast).
    These kernels keep no powers (`powers` is empty): the exact backward recomputes them."""
    if powers:
        raise ValueError(f"soc_exp_backward: powers must be empty for the Triton kernels, which "
                         f"recompute the powers; got {len(powers)}")
    grad_y, S, start = grad_y.contiguous(), S.contiguous(), start.contiguous()
    n = terms - 1
    if n == 0:
        return grad_y.clone(), torch.zeros_like(S)
    exact = grad_mode == "exact"
    grad_x = torch.empty_like(grad_y)
    grad_S = torch.zeros(S.shape, dtype=accumulation_dtype(S.dtype), device=S.device)
    adjoint = S.transpose(0, 1).flip(2, 3).contiguous()
    _launch_backward(grad_y, S, grad_y, S, adjoint, start, grad_x, grad_S,
                     _scratch(grad_y, n + 1 if exact else 3), n, EXACT=exact)
    return grad_x, grad_S.to(S.dtype)
