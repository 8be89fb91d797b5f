"""Compile Triton kernels for NVIDIA GPUs on a machine without one; print resource usage.

Run as a script in a process where TRITON_INTERPRET is unset (tests/test_triton_compile.py does),
because the interpreter replaces @triton.jit functions by Python ones the compiler cannot lower.
Each case is compiled to a cubin for sm_80 and sm_90 with the launch configuration its launcher
would use; `cuobjdump -res-usage` (shipped with Triton) gives registers and stack (spill) bytes.
This catches lowering errors the interpreter cannot see (types of loop-carried values, layouts
of tl.dot operands, shared-memory overflow) and register spills, before any GPU run.

Output: one JSON object per line, {"case", "capability", "registers", "stack", "shared"}.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import BaseBackend, GPUTarget
from triton.compiler import ASTSource

from lipkernels.benchmarking.suites import soc_exp as soc_suite
from lipkernels.benchmarking.suites import conv_singular_values as norm_suite
from lipkernels.triton import (_common, bcop_filter, bjorck, cayley, cayley_conv2d,
                               conv_spectral_bounds,
                               frequency_power_iteration, householder, max_min, power_iteration,
                               soc_exp)

CAPABILITIES = (80, 90)
def _specialization(kernel, args, constants):
    """(signature, constexprs, attrs) of a launch as the JIT derives them (its own
    native_specialize_impl): an int argument equal to 1 becomes a constexpr, pointers and ints
    that are multiples of 16 get tt.divisibility 16, ints beyond 32 bits are i64. Meta tensors
    stand for device ones (a data pointer of 0 is aligned, as allocations are)."""
    names = [name for name in kernel.arg_names if name not in constants]
    signature, constexprs, attrs = {}, dict(constants), {}
    for name, arg in zip(names, args, strict=True):
        kind, attr = native_specialize_impl(BaseBackend, arg, False, True, True)
        signature[name] = kind
        if kind == "constexpr":
            constexprs[name] = arg
        elif attr:
            attrs[(kernel.arg_names.index(name),)] = BaseBackend.parse_attr(attr)
    signature.update({name: "constexpr" for name in constants})
    return signature, constexprs, attrs


def soc_layers():
    """The soc_exp benchmark grid's layers (channels, image size, kernel): LipConvNet's SOC
    layers and its strided ones (`lipkernels.benchmarking.suites.soc_exp`)."""
    return ([(c, size, 3) for c, size in soc_suite.SOC_ACTIVATIONS]
            + list(soc_suite.SOC_STRIDED_ACTIVATIONS))


def _soc_exp_cases():
    """soc_exp's kernels at every layer of the benchmark grid at batch 128 and at its first
    layer at batch 1 (where the JIT makes the batch size a constexpr), fp32 (TF32, as a GPU run
    with torch's default flags uses) and bf16: the forward's persistent series of 14 steps (15
    terms; keeping z_2 too at the first layer), the backward's Horner step with g added (and as
    its last, grad_x, at the first layer) and without it (the exact backward's powers), and the
    weight gradient. Each case carries its launch's program count and the series its work items
    (tiles times the splits of its reduction) and splits."""
    layers = soc_layers()
    for dtype in (torch.float32, torch.bfloat16):
        dtype_name = str(dtype).removeprefix("torch.")
        counter = torch.empty(0, dtype=torch.int32, device="meta")
        for batch, (channels, size, k) in ((1, layers[0]), *((128, layer) for layer in layers)):
            x = torch.empty(batch, channels, size, size, dtype=dtype, device="meta")
            S = torch.empty(channels, channels, k, k, dtype=dtype, device="meta")
            name = f"{dtype_name}-B{batch}-C{channels}-H{size}-k{k}"
            sizes = (batch * size * size, channels, size, size)
            items, series_config = soc_exp.series_launch_config(x, S)
            series_config["PRECISION"] = "tf32"
            splits = series_config["SPLITS"]
            partial = torch.empty(0, dtype=torch.float32, device="meta")
            series = {"programs": min(items, _common.PROGRAMS_WITHOUT_GPU), "tiles": items,
                      "tile_rows": series_config["BLOCK_M"], "splits": splits}
            first_layer = (batch, channels) == (128, layers[0][0])
            for keep_z2 in (False, True) if first_layer else (False,):
                yield (f"soc_exp_series{'_fast' if keep_z2 else ''}-{name}",
                       soc_exp._horner_series_kernel,
                       (x, S, x, x, partial, counter, 0, 14 * (1 if splits == 1 else 2), 14,
                        *sizes), dict(series_config, KEEP_Z2=keep_z2), series)
            grid, config = soc_exp.forward_launch_config(x, S)
            config["PRECISION"] = "tf32"
            tiles = grid[0] * grid[1]
            launch = {"programs": tiles, "tile_rows": config["BLOCK_M"]}
            for add, step in ((True, "soc_exp_step"), (False, "soc_exp_power")):
                yield (f"{step}-{name}", soc_exp._horner_step_kernel, (x, x, S, x, 5, *sizes),
                       dict(config, ADD=add, LAST=False), launch)
            if first_layer:  # grad_x stored NCHW
                yield (f"soc_exp_step_last-{name}", soc_exp._horner_step_kernel,
                       (x, x, S, x, 1, *sizes), dict(config, ADD=True, LAST=True), launch)
            gradient = soc_exp._WeightGradient(x, S)
            yield (f"soc_exp_weight_gradient-{name}", soc_exp._weight_gradient_kernel,
                   (x, x, gradient.partial, 5, *gradient.sizes),
                   dict(gradient.config, PRECISION="tf32"),
                   {"programs": gradient.programs, "tile_rows": gradient.config["BLOCK_CO"]})


def _cayley_cases():
    """cayley at n = 512 (m = 1024) for the real and complex single-precision kernels and
    complex128; the cayley_frequency_product core at C = 512 / 256 (tall and wide), B = 128, and
    its inverse over the grid at 512@4x4. Complex tensors reach the kernels as their real
    views."""
    for dtype, complex_ in ((torch.float32, False), (torch.float32, True), (torch.float64, True)):
        w = torch.empty(0, dtype=dtype, device="meta")
        name = {torch.float32: "complex64" if complex_ else "float32",
                torch.float64: "complex128"}[dtype]
        constants = dict(COMPLEX=complex_, BLOCK=cayley.BLOCK, num_warps=cayley.NUM_WARPS)
        strides = (1024, 2, 1024, 2) if complex_ else (512, 1, 512, 1)
        yield (f"cayley-{name}-n512", cayley._cayley_kernel, (w, w, w, 1024, 512, *strides),
               constants)
        yield (f"cayley_backward-{name}-n512", cayley._cayley_backward_kernel,
               (w, w, w, w, w, 1024, 512, *strides), constants)
    counter = torch.empty(0, dtype=torch.int32, device="meta")
    for dtype, name in ((torch.float32, "complex64"), (torch.float64, "complex128")):
        w = torch.empty(0, dtype=dtype, device="meta")
        # cayley_conv2d's inverse at 512@4x4: 12 frequencies of 512 x 512, 32 row blocks each.
        blocks = 512 // cayley.BLOCK
        yield (f"cayley_frequency_product_inverse-{name}-C512-F12",
               cayley._split_inverse_kernel,
               (w, w, w, counter, 0, blocks + 2, 12, 512, 512, 1024, 2, 2 * 512 * 512),
               dict(COMPLEX=True, PRECISION=_common.float32_accurate_precision(dtype),
                    BLOCK=cayley.BLOCK, num_warps=cayley.NUM_WARPS),
               {"programs": min(12 * blocks, _common.PROGRAMS_WITHOUT_GPU)})
        for tall, orientation in ((True, "C512x256"), (False, "C256x512")):
            constants = dict(TALL=tall, BLOCK=cayley.BLOCK, num_warps=cayley.NUM_WARPS,
                             PRECISION=_common.float32_accurate_precision(dtype))
            t_strides = (512, 2) if tall else (2, 1024)
            yield (f"cayley_frequency_product-{name}-{orientation}",
                   cayley_conv2d._cayley_frequency_product_kernel,
                   (w,) * 5 + (512, 256, 128, *t_strides), constants)
            yield (f"cayley_frequency_product_backward-{name}-{orientation}",
                   cayley_conv2d._cayley_frequency_product_backward_kernel,
                   (w,) * 9 + (512, 256, 128, *t_strides), constants)
        yield from _cayley_over_grid_cases(w, name)


def _cayley_over_grid_cases(w, name):
    """cayley_conv2d's products over the grid at 512@4x4 (12 frequencies, B = 128): the
    forward's W = X S with its epilogue (2W - S, W kept), the backward's V^H G_bot with
    conjugation, and K's parts from tile pairs; each with its launch's program count."""
    dtype = torch.complex64 if w.dtype == torch.float32 else torch.complex128
    tile = cayley_conv2d.SPLIT_TILES[dtype]
    constants = dict(TILE=tile, DEPTH=cayley_conv2d.SPLIT_DEPTH,
                     num_warps=cayley_conv2d.SPLIT_WARPS, PRECISION=_common.float32_accurate_precision(w.dtype))
    block = (w, 0, 2 * 512 * 128, 256, 2)
    inverse = (w, 0, 2 * 512 * 512, 1024, 2)
    tiles = (512 // tile) * (128 // tile)
    for case, operands, flags in (
            ("solved", (inverse, block, block, block, block), dict(HAS_E=True, HAS_Y=True)),
            ("conjugated", (inverse, block, block, block, block),
             dict(CONJ_A=True, HAS_E=True, HAS_Y=False))):
        flags = {"CONJ_A": False, "CONJ_B": False, **flags}
        yield (f"cayley_frequency_product_split_{case}-{name}-C512-F12",
               cayley_conv2d._product_kernel,
               tuple(arg for operand in operands for arg in operand) + (512, 128, 512, 2.0, -1.0),
               dict(constants, **flags), {"programs": 12 * tiles})
    yield (f"cayley_frequency_product_pairs-{name}-C512-F12",
           cayley_conv2d._skew_and_hermitian_pairs_kernel,
           (w, w, w, 2 * 512 * 512, 1024, w, 512, 128),
           dict(constants, HAS_E=True, TILE=cayley_conv2d.PAIR_TILE),
           {"programs": 12 * (512 // cayley_conv2d.PAIR_TILE) ** 2})


# power_iteration's matrices (count, m, n): those the launcher gives the resident kernel (the
# 544 real forms of 128 x 128 of conv_spectral_norm on 64 channels at 32 x 32, 128 row vectors
# of 1 x 64, where the JIT makes M a constexpr, and the M_3 reshape of a 16-channel 3x3
# filter), and those it splits over the grid (M_3 of 256-, 512- and 2048-channel filters, and
# one 1 x 65536 row).
RESIDENT_MATRICES = ((544, 128, 128), (128, 1, 64), (1, 16, 144))
SPLIT_MATRICES = ((1, 256, 2304), (1, 512, 4608), (1, 2048, 18432), (1, 1, 65536))
# Those it runs on their Gram matrix at 50 iterations (the M_3 reshapes of 64- to 2048-channel
# filters); at 2 iterations, the fewest the Gram route takes, on the smallest.
GRAM_MATRICES = ((1, 64, 576), (1, 256, 2304), (1, 512, 4608), (1, 2048, 18432))


def _spectral_cases():
    """power_iteration at the suites' shapes, each on the kernel its launcher picks
    (RESIDENT_MATRICES, SPLIT_MATRICES), and float64 on the largest resident matrix (64 x 128);
    conv_spectral_bounds on 3x3 filters of 16, 512 and 2048 channels and a 1x1 one
    (k_h = k_w = 1 constexprs); both persistent launches at 50 iterations and at the training
    step's single one (a constexpr too), with their backward, fp32 and bf16. The persistent
    cases carry their launch's program count and their tile count (matrix blocks, slabs)."""
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        acc = torch.empty(0, dtype=torch.float32, device="meta")
        counter = torch.empty(0, dtype=torch.int32, device="meta")
        t = torch.empty(0, dtype=dtype, device="meta")
        for count, m, n in RESIDENT_MATRICES:
            block_m, block_n = power_iteration.resident_blocks(m, n, dtype)
            for iters in (50, 1):
                yield (f"power_iteration_resident-{name}-B{count}-{m}x{n}-T{iters}",
                       power_iteration._resident_power_iteration_kernel,
                       (t,) * 5 + (iters, m, n),
                       dict(BLOCK_M=block_m, BLOCK_N=block_n,
                            num_warps=power_iteration._RESIDENT_WARPS),
                       {"programs": count})
        for count, m, n in SPLIT_MATRICES:
            config = power_iteration.launch_config(count, m, n, torch.device("meta"))
            programs, row_blocks = config.pop("programs"), config.pop("row_blocks")
            column_blocks = config.pop("column_blocks")
            launch = {"programs": programs,
                      "tiles": count * max(row_blocks, column_blocks)}
            constants = dict(config, BLOCK_R=power_iteration._BLOCK_R,
                             num_warps=power_iteration._NUM_WARPS)
            for iters in (50, 1):
                yield (f"power_iteration-{name}-B{count}-{m}x{n}-T{iters}",
                       power_iteration._power_iteration_kernel,
                       (t,) * 5 + (acc,) * 5 + (counter, 0, 2 * iters + 1, iters, count, m, n,
                                                row_blocks, column_blocks), constants, launch)
            block_m, block_n, num_warps = _common.tile_shape(m, n)
            yield (f"power_iteration_backward-{name}-B{count}-{m}x{n}",
                   power_iteration._power_iteration_backward_kernel, (t, t, t, t, m, n),
                   dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps))
        for count, m, n in GRAM_MATRICES:
            config = power_iteration.gram_launch_config(count, m, n, torch.device("meta"))
            programs, gram_blocks = config.pop("programs"), config.pop("gram_blocks")
            row_blocks, column_blocks = config.pop("row_blocks"), config.pop("column_blocks")
            launch = {"programs": programs,
                      "tiles": count * max(gram_blocks ** 2, row_blocks, column_blocks)}
            constants = dict(config, BLOCK_R=power_iteration._BLOCK_R,
                             OPERAND=_common.dot_operand_dtype(t),
                             PRECISION=_common.float32_accurate_precision(dtype),
                             num_warps=power_iteration._NUM_WARPS)
            for iters in ((50, 2) if m == 64 else (50,)):
                assert power_iteration.route(m, n, iters, dtype) == "gram"
                yield (f"power_iteration_gram-{name}-B{count}-{m}x{n}-T{iters}",
                       power_iteration._gram_power_iteration_kernel,
                       (t,) * 5 + (acc,) * 7 + (counter, 0, iters + 2, iters, count, m, n,
                                                gram_blocks, row_blocks, column_blocks),
                       constants, launch)
        if dtype == torch.float32:
            wide = torch.empty(0, dtype=torch.float64, device="meta")
            yield ("power_iteration_resident-float64-B544-64x128-T50",
                   power_iteration._resident_power_iteration_kernel, (wide,) * 5 + (50, 64, 128),
                   dict(BLOCK_M=64, BLOCK_N=128, num_warps=power_iteration._RESIDENT_WARPS),
                   {"programs": 544})
        for channels, k in ((512, 3), (2048, 3), (1024, 1), (16, 3)):
            shape = (channels, channels, k, k)
            config = conv_spectral_bounds.launch_config(shape, _common.PROGRAMS_WITHOUT_GPU)
            programs, slab_tiles = config.pop("programs"), config.pop("slab_tiles")
            reduction_blocks, length = config.pop("reduction_blocks"), config.pop("length")
            partial_rows = config.pop("partial_rows")
            launch = {"programs": programs, "tiles": slab_tiles}
            constants = dict(config, BLOCK_R=conv_spectral_bounds._BLOCK_R,
                             num_warps=conv_spectral_bounds._NUM_WARPS)
            for iters in (50, 1):
                yield (f"conv_spectral_bounds-{name}-C{channels}-k{k}-T{iters}",
                       conv_spectral_bounds._conv_spectral_bounds_kernel,
                       (t,) * 14 + (acc,) * 7 + (counter, 0, 2 * iters + 2, iters, channels,
                                                  channels, k, k, slab_tiles, partial_rows,
                                                  reduction_blocks, length), constants, launch)
            yield (f"conv_spectral_bounds_backward-{name}-C{channels}-k{k}",
                   conv_spectral_bounds._conv_spectral_bounds_backward_kernel,
                   (t,) * 10 + (channels * channels * k * k, channels, k, k),
                   dict(BLOCK=conv_spectral_bounds._BACKWARD_BLOCK))


def _frequency_cases():
    """frequency_power_iteration (conv_spectral_norm with iters) on the conv_singular_values
    suite's filters and images, float32 (tf32x3) at 50 iterations; float64 on the smallest, and
    a 1 x 1 filter (one tap, a constexpr). Each case carries its launch's program count, its
    tile count (the smaller half step's) and its tile rows."""
    counter = torch.empty(0, dtype=torch.int32, device="meta")
    cases = [(torch.float32, channels, size, 3) for channels in norm_suite.CONV_NORM_CHANNELS
             for size in norm_suite.CONV_NORM_SIZES]
    cases += [(torch.float64, cases[0][1], cases[0][2], 3), (torch.float32, 16, 8, 1)]
    for dtype, channels, size, k in cases:
        t = torch.empty(0, dtype=dtype, device="meta")
        frequencies = size * (size // 2 + 1)
        config = frequency_power_iteration.launch_config(
            frequencies, k * k, channels, channels, dtype, _common.PROGRAMS_WITHOUT_GPU)
        programs = config.pop("programs")
        tiles, _ = frequency_power_iteration.tile_counts(
            frequencies, k * k, channels, channels, config["BLOCK_F"], config["BLOCK_C"])
        constants = dict(config, OPERAND=frequency_power_iteration.OPERANDS[dtype],
                         PRECISION=_common.float32_accurate_precision(dtype),
                         num_warps=frequency_power_iteration.NUM_WARPS)
        name = f"{str(dtype).removeprefix('torch.')}-C{channels}-H{size}-k{k}"
        yield (f"frequency_power_iteration-{name}",
               frequency_power_iteration._frequency_power_iteration_kernel,
               (t,) * 8 + (counter, 0, 100, frequencies, k * k, channels, channels), constants,
               {"programs": programs, "tiles": tiles, "tile_rows": config["BLOCK_F"]})


def _pair_cases():
    """max_min (both pairings) and householder, forward and backward, on LipConvNet activations
    (64 channels at 16x16, batch 128), at batch 1 and on 1x1 images (sizes the JIT makes
    constexprs), fp32 and bf16."""
    for dtype in (torch.float32, torch.bfloat16):
        t = torch.empty(0, dtype=dtype, device="meta")
        mask = torch.empty(0, dtype=torch.bool, device="meta")
        partials = torch.empty(0, dtype=torch.float32, device="meta")
        for shape in ((128, 64, 16, 16), (1, 32, 32, 32), (128, 1024, 1, 1)):
            name = f"{str(dtype).removeprefix('torch.')}-B{shape[0]}-C{shape[1]}-H{shape[2]}"
            for pairing in ("halves", "pairs"):
                grid = max_min.PairTileGrid.of(shape, pairing)
                yield (f"max_min-{pairing}-{name}", max_min._max_min_kernel,
                       (t, t, mask, *grid.sizes), grid.constants())
                yield (f"max_min_backward-{pairing}-{name}", max_min._max_min_backward_kernel,
                       (t, mask, t, *grid.sizes), grid.constants())
            grid = max_min.PairTileGrid.of(shape, "halves")
            constants = grid.constants(**householder._WARPS)
            yield (f"householder-{name}", householder._householder_kernel,
                   (t, t, t, *grid.sizes), constants)
            yield (f"householder_backward-{name}", householder._householder_backward_kernel,
                   (t, t, t, t, partials, *grid.sizes), constants)


# bjorck's stacks (count, m, n), tall, one per distinct compilation: BCOP's 2k - 1 matrices of a
# 3x3 layer of 32 channels (32-wide tiles) and of 64 (64-wide tiles, as every larger stack of the
# suite `bjorck` gets), BjorckLinear's 4096 -> 512 weight (a single matrix: a count the JIT
# makes a constexpr), a 512 -> 10 weight (rows not 16-byte aligned) and a single column; in
# float64 the 64-channel stack (32-wide tiles) and the column.
BJORCK_STACKS = {torch.float32: ((5, 32, 32), (5, 64, 64), (1, 4096, 512), (1, 512, 10),
                                 (2, 9, 1)),
                 torch.float64: ((5, 64, 64), (2, 9, 1))}


def _bjorck_cases():
    """bjorck and its backward on BJORCK_STACKS, 20 iterations."""
    for dtype, stacks in BJORCK_STACKS.items():
        t = torch.empty(0, dtype=dtype, device="meta")
        name = str(dtype).removeprefix("torch.")
        for count, m, n in stacks:
            config = bjorck.launch_config(n, dtype)
            launch = {"programs": count}
            yield (f"bjorck-{name}-B{count}-{m}x{n}", bjorck._bjorck_kernel,
                   (t,) * 5 + (20, m, n), dict(config), launch)
            yield (f"bjorck_backward-{name}-B{count}-{m}x{n}", bjorck._bjorck_backward_kernel,
                   (t,) * 8 + (20, count, m, n), dict(config), launch)


# bcop_filter's filters (k, in, out): LConvNet Large's 32 -> 64 k3 layer and its 32 -> 32 k4
# stride-2 layer (a 2x2 filter on 128 inputs), LipConvNet's 512-channel layer, and a single
# output channel (r = 1, a size the JIT makes a constexpr); float32, and float64 at 64.
BCOP_FILTERS = {torch.float32: ((3, 32, 64), (2, 128, 32), (3, 512, 512), (3, 2, 1)),
                torch.float64: ((3, 64, 64),)}


def _bcop_filter_cases():
    """bcop_filter and its backward on BCOP_FILTERS, every phase in the launch."""
    for dtype, filters in BCOP_FILTERS.items():
        t = torch.empty(0, dtype=dtype, device="meta")
        name = str(dtype).removeprefix("torch.")
        for size, in_channels, out_channels in filters:
            matrices = torch.empty(2 * size - 1, max(in_channels, out_channels),
                                   max(in_channels, out_channels), dtype=dtype,
                                   device="meta")
            geometry = bcop_filter._Geometry(matrices, in_channels, out_channels)
            sizes = geometry.arguments()
            phases = 2 * size - 1
            label = f"k{size}-{in_channels}x{out_channels}"
            launch = {"programs": geometry.programs}
            yield (f"bcop_filter-{name}-{label}", bcop_filter._bcop_filter_kernel,
                   (t,) * 5 + (0, phases, *sizes), dict(geometry.config), launch)
            yield (f"bcop_filter_backward-{name}-{label}",
                   bcop_filter._bcop_filter_backward_kernel,
                   (t,) * 8 + (0, 2 * phases - 2, *sizes), dict(geometry.config), launch)


def _resource_usage(cubin: bytes) -> dict:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        report = subprocess.run([tool, "-res-usage", file.name], capture_output=True, text=True,
                                check=True).stdout
    usage = re.search(r"REG:(\d+) STACK:(\d+)", report)
    return {"registers": int(usage.group(1)), "stack": int(usage.group(2))}


# PTX instructions counted per kernel: tensor-core products (Hopper's warpgroup wgmma, and the
# warp-level mma.sync of sm_80 and of tiles too small for wgmma), global loads by width:
# 16 bytes (ld.global.v4 of 32-bit words, or cp.async of 16 bytes into shared memory, which is
# how the pipelined loops load) against narrower ones, and ordered atomics.
_PTX_COUNTS = {
    "wgmma": r"\bwgmma\.mma_async\b",
    "mma": r"\bmma\.sync\b",
    "wide_loads": r"\bld\.global(\.\w+)*\.v4\.(b|f|u|s)32\b|\bcp\.async\.c[ag]\.shared\.global"
                  r"\s*\[[^]]*\],\s*\[[^]]*\],\s*(16|0x10)\b",
    "narrow_loads": r"\bld\.global(?!(\.\w+)*\.v4\.(b|f|u|s)32\b)|\bcp\.async\.c[ag]\.shared"
                    r"\.global\s*\[[^]]*\],\s*\[[^]]*\],\s*(4|8|0x4|0x8)\b",
    # Grid barriers: the release increment and the acquire reads of the launch's counter.
    "release_increments": r"\b(red|atom)(\.\w+)*\.release(\.\w+)*\.add\b",
    "acquire_reads": r"\b(ld|atom)(\.\w+)*\.acquire\b",
}


def ptx_counts(ptx: str) -> dict:
    return {key: len(re.findall(pattern, ptx)) for key, pattern in _PTX_COUNTS.items()}


def compile_case(kernel, args, constants, capability):
    options = {key: constants.pop(key) for key in ("num_warps", "num_stages") if key in constants}
    signature, constexprs, attrs = _specialization(kernel, args, constants)
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)
    return {**_resource_usage(compiled.asm["cubin"]), "shared": compiled.metadata.shared,
            **ptx_counts(compiled.asm["ptx"])}


def _cases():
    """Every case: (name, kernel, args, constants), with facts of its launch after them (a dict)
    where the case states them."""
    return [*_soc_exp_cases(), *_cayley_cases(), *_spectral_cases(), *_frequency_cases(),
            *_pair_cases(), *_bjorck_cases(), *_bcop_filter_cases()]


_CASES = []


def _compiled_row(job: tuple[int, int]) -> dict:
    """The output row of case _CASES[index] compiled for `capability` (a worker's job: the
    forked workers inherit _CASES, so only the indices travel)."""
    index, capability = job
    name, kernel, args, constants, *launch = _CASES[index]
    usage = compile_case(kernel, args, dict(constants), capability)
    return {"case": name, "capability": capability, **usage, **(launch[0] if launch else {})}


def main():
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("triton_compile_check: unset TRITON_INTERPRET (the interpreter cannot compile)")
    _CASES.extend(_cases())
    jobs = [(index, capability) for index in range(len(_CASES)) for capability in CAPABILITIES]
    # The cases are independent: compiled on every core, printed in order.
    with concurrent.futures.ProcessPoolExecutor(
            max_workers=os.cpu_count(), mp_context=multiprocessing.get_context("fork")) as pool:
        for row in pool.map(_compiled_row, jobs, chunksize=4):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
