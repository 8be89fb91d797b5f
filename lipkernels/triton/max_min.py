"""Triton MaxMin on channel pairs, and the channel-pair tiling that householder shares.

MaxMin is GroupSort with groups of two (Anil, Lucas & Grosse, ICML 2019), SOC's activation
(Singla & Feizi, ICML 2021). For x (B, C, *spatial), C = 2P and S = prod(spatial), pair p of
sample n is (a, b) = (x[n, p], x[n, p + P]) ("halves") or (x[n, 2p], x[n, 2p + 1]) ("pairs").
In the contiguous x both are "element s of a at n*2PS + p*pair_stride + s, b `partner` further"
with (pair_stride, partner) = (S, PS) for halves and (2S, S) for pairs, so one addressing scheme
serves both pairings and both ops.

Tiling: a program owns a [BLOCK_P pairs, BLOCK_S positions] tile and walks up to
`rows_per_program` consecutive samples through it, so per-pair work (householder's angles and
grad_theta partial sums) is done once per program. The grid is flattened on axis 0 (program =
row chunk * tiles + tile), which has no 65535 limit.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .._conventions import pair_shape
from ._common import launchable

# Pairs in one program's tile (per sample) and the warps that process it: 8 pairs, 16 loads, per
# thread at 4 warps.
_TILE_PAIRS = 1024
_MAX_WARPS = 4
# Samples a program walks through its tile: up to _MAX_ROWS, while at least _MIN_PROGRAMS
# programs remain to spread over the GPU's SMs.
_MAX_ROWS = 8
_MIN_PROGRAMS = 1024


@triton.jit
def pair_tile(batch, pairs, spatial, pair_stride, rows_per_program, BLOCK_P: tl.constexpr,
               BLOCK_S: tl.constexpr):
    """This program's tile and samples: (rows, p, offsets, pair_offsets, in_tile, tile_id).

    rows: how many samples it walks; p: its pair indices [BLOCK_P]; offsets: the first-channel
    elements of its tile in its first sample [BLOCK_P, BLOCK_S] (int64; add 2*pairs*spatial per
    sample); pair_offsets: the same entries of a per-pair (B, P, *spatial) tensor (add
    pairs*spatial per sample); in_tile: the mask of real pairs and positions; tile_id: row chunk
    * spatial tiles + spatial tile, the row of this program's per-pair partial sums.
    """
    position_tiles = tl.cdiv(spatial, BLOCK_S)
    tiles = tl.cdiv(pairs, BLOCK_P) * position_tiles
    pid = tl.program_id(0)
    chunk = pid // tiles
    position_tile = pid % tiles % position_tiles
    p = (pid % tiles // position_tiles) * BLOCK_P + tl.arange(0, BLOCK_P)
    s = position_tile * BLOCK_S + tl.arange(0, BLOCK_S)
    in_tile = (p < pairs)[:, None] & (s < spatial)[None, :]
    # The loop runs over a count, with offsets advanced per sample, rather than over sample
    # indices: the interpreter's loop variable is a plain int, and int64 offsets start here.
    n0 = chunk * rows_per_program
    rows = tl.minimum(rows_per_program, batch - n0)
    p64 = p.to(tl.int64)[:, None]
    offsets = n0.to(tl.int64) * 2 * pairs * spatial + p64 * pair_stride + s[None, :]
    pair_offsets = n0.to(tl.int64) * pairs * spatial + p64 * spatial + s[None, :]
    return rows, p, offsets, pair_offsets, in_tile, chunk * position_tiles + position_tile


@triton.jit
def _max_min_kernel(x_ptr, y_ptr, mask_ptr, batch, pairs, spatial, pair_stride, partner,
                    rows_per_program, BLOCK_P: tl.constexpr, BLOCK_S: tl.constexpr):
    """MaxMin forward (Anil et al. 2019; SOC, Singla & Feizi 2021), one pass over x:
        keep = a >= b;  (y_first, y_second) = keep ? (a, b) : (b, a);  mask = keep.
    Backward (_max_min_backward_kernel): the same permutation of the output gradient. A tie
    keeps the order (max's gradient to a); a NaN compares false and its pair swaps, so it stays in
    the output. No arithmetic: outputs are the inputs' own values.
    """
    # Compared in float32 (float64 for float64), exact for every dtype, as the C++ kernels do:
    # the Triton interpreter compares bfloat16 wrongly.
    acc_ty = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    rows, _, first, pair_offsets, in_tile, _ = pair_tile(batch, pairs, spatial, pair_stride,
                                                          rows_per_program, BLOCK_P, BLOCK_S)
    for _ in range(rows):
        a = tl.load(x_ptr + first, mask=in_tile)
        b = tl.load(x_ptr + first + partner, mask=in_tile)
        keep = a.to(acc_ty) >= b.to(acc_ty)
        tl.store(y_ptr + first, tl.where(keep, a, b), mask=in_tile)
        tl.store(y_ptr + first + partner, tl.where(keep, b, a), mask=in_tile)
        tl.store(mask_ptr + pair_offsets, keep, mask=in_tile)
        first += 2 * pairs * spatial
        pair_offsets += pairs * spatial


@triton.jit
def _max_min_backward_kernel(grad_y_ptr, mask_ptr, grad_x_ptr, batch, pairs, spatial,
                             pair_stride, partner, rows_per_program, BLOCK_P: tl.constexpr,
                             BLOCK_S: tl.constexpr):
    """MaxMin backward: each output gradient goes to the input it came from,
        (grad_a, grad_b) = keep ? (g_first, g_second) : (g_second, g_first),
    one pass reading the output gradient and the forward's bool mask."""
    rows, _, first, pair_offsets, in_tile, _ = pair_tile(batch, pairs, spatial, pair_stride,
                                                          rows_per_program, BLOCK_P, BLOCK_S)
    for _ in range(rows):
        g_first = tl.load(grad_y_ptr + first, mask=in_tile)
        g_second = tl.load(grad_y_ptr + first + partner, mask=in_tile)
        keep = tl.load(mask_ptr + pair_offsets, mask=in_tile, other=0)
        tl.store(grad_x_ptr + first, tl.where(keep, g_first, g_second), mask=in_tile)
        tl.store(grad_x_ptr + first + partner, tl.where(keep, g_second, g_first), mask=in_tile)
        first += 2 * pairs * spatial
        pair_offsets += pairs * spatial


class PairTileGrid(NamedTuple):
    """Launch geometry of a channel-pair kernel over a contiguous (B, C, *spatial) tensor."""
    batch: int
    pairs: int
    spatial: int
    pair_stride: int
    partner: int
    block_p: int
    block_s: int
    rows_per_program: int
    row_chunks: int
    position_tiles: int
    tiles: int

    @classmethod
    def of(cls, shape, pairing: str) -> "PairTileGrid":
        batch, pairs, spatial = shape[0], shape[1] // 2, math.prod(shape[2:])
        pair_stride, partner = (spatial, pairs * spatial) if pairing == "halves" else (2 * spatial,
                                                                                       spatial)
        block_s = min(triton.next_power_of_2(spatial), _TILE_PAIRS)
        block_p = min(triton.next_power_of_2(pairs), _TILE_PAIRS // block_s)
        position_tiles = triton.cdiv(spatial, block_s)
        tiles = triton.cdiv(pairs, block_p) * position_tiles
        rows = max(1, min(_MAX_ROWS, batch * tiles // _MIN_PROGRAMS))
        return cls(batch, pairs, spatial, pair_stride, partner, block_p, block_s, rows,
                   triton.cdiv(batch, rows), position_tiles, tiles)

    @property
    def partial_rows(self) -> int:
        """Rows of per-program partial sums, one per (row chunk, spatial tile)."""
        return self.row_chunks * self.position_tiles

    @property
    def sizes(self) -> tuple[int, ...]:
        """The kernels' size arguments after their tensors."""
        return (self.batch, self.pairs, self.spatial, self.pair_stride, self.partner,
                self.rows_per_program)

    def constants(self, elements_per_warp: int = 256, max_warps: int = _MAX_WARPS) -> dict:
        """The kernels' compile-time constants and launch options: a warp per
        `elements_per_warp` elements of the tile, at most `max_warps`."""
        warps = self.block_p * self.block_s // elements_per_warp
        return dict(BLOCK_P=self.block_p, BLOCK_S=self.block_s,
                    num_warps=max(1, min(max_warps, warps)))

    def launch(self, kernel, *tensors, **warps):
        """kernel[grid](*tensors, batch, pairs, spatial, pair_stride, partner, rows_per_program),
        warps as `constants` takes them."""
        if self.batch * self.pairs * self.spatial == 0:
            return
        launchable(kernel)[(self.row_chunks * self.tiles,)](*tensors, *self.sizes,
                                                            **self.constants(**warps))


def max_min(x: torch.Tensor, pairing: str):
    """(y, mask): MaxMin of x (B, C, *spatial) and the bool (B, C/2, *spatial) mask of pairs
    that kept their order (see _max_min_kernel). Inputs are checked first
    (lipkernels.ops.max_min)."""
    x = x.contiguous()
    y = torch.empty_like(x)
    mask = torch.empty(pair_shape(x.shape), dtype=torch.bool, device=x.device)
    PairTileGrid.of(x.shape, pairing).launch(_max_min_kernel, x, y, mask)
    return y, mask


def max_min_backward(grad_y: torch.Tensor, mask: torch.Tensor, pairing: str):
    """grad_x of max_min from the output gradient and the forward's mask."""
    grad_y, mask = grad_y.contiguous(), mask.contiguous()
    grad_x = torch.empty_like(grad_y)
    PairTileGrid.of(grad_y.shape, pairing).launch(_max_min_backward_kernel, grad_y, mask, grad_x)
    return grad_x
