"""Launcher-side helpers shared by the Triton kernels of lipkernels.

Kept free of @triton.jit code: the kernels themselves live in their op's module.
"""

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

# Largest tile a program streams at once, in elements, and the warps that load it. One program
# owns a whole matrix, so its bandwidth comes from the bytes in flight, and the register file
# bounds those: the largest tile that compiles without spills for every dtype and both index
# maps (ptxas figures: benchmarks/results/kernel-notes.md).
_TILE_ELEMENTS = 4096
_MAX_WARPS = 8
# Columns are the contiguous axis of a row-major matrix: 128 of them give coalesced loads.
_MAX_BLOCK_N = 128
# tl.arange needs a power of two; 16 keeps tiny blocks away from degenerate layouts.
_MIN_BLOCK = 16


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype, also that of the running vectors: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


_TRITON_DTYPES = {torch.float64: tl.float64, torch.float32: tl.float32,
                  torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def dot_operand_dtype(t: torch.Tensor):
    """The dtype tl.dot multiplies operands taken from tensors like t in: t's own, except
    bfloat16 on the CPU: the Triton interpreter multiplies bfloat16 tl.dot operands wrongly
    (numpy has no bfloat16), so they are widened to float32 there, which gives the same products
    (exact in float32) as a bf16 mma accumulating in float32."""
    if t.dtype == torch.bfloat16 and t.device.type == "cpu":
        return tl.float32
    return _TRITON_DTYPES[t.dtype]


def float32_accurate_precision(dtype: torch.dtype) -> str:
    """tl.dot's input precision for products that keep float32's accuracy on tensor cores:
    float32 in three TF32 passes (tf32x3); float64 exact; half precisions multiply exactly
    into float32 whatever it says."""
    return "tf32x3" if dtype == torch.float32 else "ieee"


def tile_shape(rows: int, cols: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) for streaming a rows x cols matrix.

    Small matrices get small tiles and fewer warps, so a batch of them packs several programs
    per SM.
    """
    block_n = min(max(triton.next_power_of_2(cols), _MIN_BLOCK), _MAX_BLOCK_N)
    block_m = min(max(triton.next_power_of_2(rows), _MIN_BLOCK), _TILE_ELEMENTS // block_n)
    num_warps = max(1, _MAX_WARPS * block_m * block_n // _TILE_ELEMENTS)
    return block_m, block_n, num_warps


# The machine the launchers that weigh tiles by a time model choose them for, and the figures
# docs/performance.md holds every design to (benchmarks/cost_model.py takes them from here): an
# H100 SXM's dense TF32 tensor-core and SIMT float32 rates, its L2 bandwidth (roughly) and SMs.
H100_TF32_FLOPS = 495e12
H100_BF16_FLOPS = 990e12
H100_SIMT_FP32_FLOPS = 67e12
H100_HBM_BYTES_PER_S = 3.35e12
H100_L2_BYTES_PER_S = 5e12
H100_SMS = 132
# What one SM reads from L2 a second when few SMs compete for it: 64 bytes a cycle at 1.98 GHz
# (an assumption the first GPU run checks; H100_L2_BYTES_PER_S bounds many SMs together).
H100_SM_L2_BYTES_PER_S = 64 * 1.98e9
# An eager launch of a small kernel: its dispatch and launch (an assumption; a CUDA-graph replay
# would be about 1 to 2 us).
H100_LAUNCH_S = 5e-6
# A grid-wide barrier of a persistent launch (an assumption: about 2 us for the release
# increment, the spinning acquire reads and the slowest program's arrival).
H100_GRID_BARRIER_S = 2e-6
# Float32-accurate products on TF32 tensor cores take three passes (split precision, the high
# and low halves: tl.dot's input_precision="tf32x3").
SPLIT_TF32_PASSES = 3

# Programs of a persistent launch without a GPU to size it (the interpreter), as on an H100.
PROGRAMS_WITHOUT_GPU = 132


def persistent_programs(device: torch.device) -> int:
    """The most programs of a launch with grid barriers: one per SM, so that every program is
    resident at once."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return PROGRAMS_WITHOUT_GPU


def block_for(total: int, programs: int, low: int, high: int) -> int:
    """The power of two in [low, high] nearest below total / programs: blocks small enough that
    `total` entries give every program a tile, no smaller than `low`."""
    return max(low, min(high, 1 << max(0, (total // programs).bit_length() - 1)))


def phase_spans(phases: int, device: torch.device) -> list[tuple[int, int]]:
    """The (first, last) phase ranges of a persistent kernel's launches: every phase in one
    launch on a GPU, with grid barriers between them; one phase per launch elsewhere (the
    interpreter runs programs one after another, so a barrier would wait forever)."""
    if device.type == "cuda":
        return [(0, phases)]
    return [(phase, phase + 1) for phase in range(phases)]


def launchable(kernel):
    """`kernel` made traceable for torch.library.triton_op (torch.compile sees the launch).

    Under TRITON_INTERPRET=1 the decorator yields an InterpretedFunction, which wrap_triton of
    older torch releases rejects; it is launched directly, as eager wrap_triton would do anyway.
    """
    if isinstance(kernel, JITFunction):
        return torch.library.wrap_triton(kernel)
    return kernel
