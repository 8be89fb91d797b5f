"""The cost model of docs/performance.md, computed: FLOPs, bytes and roofline times at H100
limits of the reference and of the fused GPU design, for the shapes of the benchmark grids.

    python benchmarks/cost_model.py        # prints the tables docs/performance.md shows

tests/test_cost_model.py checks that the page shows exactly these tables, so the page cannot
drift from the model. Every figure is a model, not a measurement: the GPU validation run reports
the measured times beside them.
"""

from __future__ import annotations

import dataclasses
import math

from lipkernels.triton import cayley, cayley_conv2d
from lipkernels.triton.cayley import COMPLEX_MAC_FLOPS
from lipkernels.triton._common import (H100_BF16_FLOPS, H100_GRID_BARRIER_S,
                                       H100_HBM_BYTES_PER_S, H100_L2_BYTES_PER_S, H100_LAUNCH_S,
                                       H100_SIMT_FP32_FLOPS, H100_SMS,
                                       H100_TF32_FLOPS, SPLIT_TF32_PASSES)

# H100 SXM: HBM bandwidth, dense tensor-core throughput, SIMT fp32 throughput, L2 size and its
# bandwidth (roughly), and what an eager launch and a grid-wide barrier of a persistent kernel
# cost (assumptions: 5 us for a dispatch and launch, 2 us for a cooperative grid sync).
HBM_BYTES_PER_S = H100_HBM_BYTES_PER_S
TENSOR_FLOPS = {"fp32/TF32": H100_TF32_FLOPS, "bf16": H100_BF16_FLOPS}
SIMT_FP32_FLOPS = H100_SIMT_FP32_FLOPS
L2_BYTES = 50e6
L2_BYTES_PER_S = H100_L2_BYTES_PER_S
LAUNCH_S = H100_LAUNCH_S
GRID_BARRIER_S = H100_GRID_BARRIER_S
# A block-wide reduction (warp shuffles, a shared-memory exchange and a CTA barrier), taken as
# 0.25 us (a few hundred cycles; an assumption like the two above).
BLOCK_REDUCTION_S = 0.25e-6

ELEMENT_BYTES = {"fp32/TF32": 4, "bf16": 2}

# The SOC LipConvNet layers of the soc_exp grid (channels, image side, kernel), batch 128.
SOC_LAYERS = ((32, 32, 3), (64, 16, 3), (128, 8, 3), (256, 4, 3), (512, 2, 3), (2048, 1, 1))
SOC_BATCH = 128


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.0f}"


def _ratio(value: float) -> str:
    return f"{value:.1f}x"


@dataclasses.dataclass(frozen=True)
class SocLayer:
    channels: int
    side: int
    kernel: int
    dtype: str

    @property
    def label(self) -> str:
        return f"{self.channels}@{self.side}x{self.side} k{self.kernel}"

    @property
    def pixels(self) -> int:
        return SOC_BATCH * self.side * self.side

    @property
    def activation_bytes(self) -> float:
        return self.pixels * self.channels * ELEMENT_BYTES[self.dtype]

    @property
    def filter_bytes(self) -> float:
        return self.channels ** 2 * self.kernel ** 2 * ELEMENT_BYTES[self.dtype]

    @property
    def conv_flops(self) -> float:
        """One same convolution (one term): 2 N C^2 k^2."""
        return 2.0 * self.pixels * self.channels ** 2 * self.kernel ** 2

    @property
    def peak(self) -> float:
        return TENSOR_FLOPS[self.dtype]

    def roofline(self, flops: float, bytes_: float) -> float:
        return max(flops / self.peak, bytes_ / HBM_BYTES_PER_S)

    def reference_forward(self, n: int) -> float:
        """Seconds of the reference's n terms, each a conv, a division by i and an addition
        (6 A + W bytes, 3 launches)."""
        A, W = self.activation_bytes, self.filter_bytes
        return n * self.roofline(self.conv_flops, 6 * A + W) + 3 * n * LAUNCH_S

    def reference_training(self, n: int) -> float:
        """Seconds of the reference's n terms forward and, by autograd, backward (per term 8
        launches; the backward's two convolutions read 9 A + 2 W; see soc_exp_training_table)."""
        A, W, conv = self.activation_bytes, self.filter_bytes, self.conv_flops
        return (n * (self.roofline(conv, 6 * A + W) + self.roofline(2 * conv, 9 * A + 2 * W))
                + 8 * n * LAUNCH_S)


def soc_layers():
    return [SocLayer(c, side, k, dtype) for c, side, k in SOC_LAYERS
            for dtype in ("fp32/TF32", "bf16")]


def soc_exp_forward_table(terms: int = 15) -> str:
    """The reference (per term a conv, a division by i and an addition: 6 A + W bytes, 3
    launches) against the fused forward (one launch, 2 A + W bytes)."""
    n = terms - 1
    lines = ["| layer | dtype | GFLOP | reference MB | reference roofline us | reference with "
             "launches us | fused MB | fused roofline us | ratio at the roofline | fused bound "
             "by |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for layer in soc_layers():
        A, W = layer.activation_bytes, layer.filter_bytes
        reference_bytes = n * (6 * A + W)
        with_launches = layer.reference_forward(n)
        reference = with_launches - 3 * n * LAUNCH_S
        flops = n * layer.conv_flops
        fused_bytes = 2 * A + W
        fused = layer.roofline(flops, fused_bytes) + LAUNCH_S
        bound = "compute" if flops / layer.peak >= fused_bytes / HBM_BYTES_PER_S else "memory"
        lines.append(f"| {layer.label} | {layer.dtype} | {flops / 1e9:.1f} | "
                     f"{reference_bytes / 1e6:.0f} | {_us(reference)} | {_us(with_launches)} | "
                     f"{fused_bytes / 1e6:.1f} | {_us(fused)} | {_ratio(with_launches / fused)} | "
                     f"{bound} |")
    return "\n".join(lines)


def _horner_step_design(layer: SocLayer, series: bool = True) -> tuple[float, float, str, int]:
    """(seconds of one Horner step, seconds of the two layout copies, what bounds the step, the
    reduction's splits) of the implemented forward (lipkernels/triton/soc_exp.py): per step an
    implicit GEMM reading z and x and writing z (3 A from HBM, and the filter), its operands
    re-read from L2 by every row and column of tiles (`horner_operand_reads`, the shifted reads
    of a channel block from L1), on the small images split over ranges of input channels whose
    partial sums cross L2 and a second grid barrier (`series_step_seconds` at the tiles and
    splits `series_tiles` picks; without `series`, the backward's step, a launch each, unsplit
    at `horner_tiles`); x and the filter are copied channels-last and reduction-major once (2 A
    + 2 W)."""
    from lipkernels.triton.soc_exp import horner_tiles, series_step_seconds, series_tiles

    size = ELEMENT_BYTES[layer.dtype]
    shape = (layer.pixels, layer.channels, layer.kernel, layer.side)
    if series:
        block_m, block_n, _, splits = series_tiles(*shape, size)
    else:
        (block_m, block_n, _), splits = horner_tiles(*shape, size), 1
    step, bound = series_step_seconds((block_m, block_n), splits, *shape, size)
    copies = 2 * (layer.activation_bytes + layer.filter_bytes) / HBM_BYTES_PER_S
    return step, copies, bound, splits


def _series_synchronisation(n: int, splits: int) -> float:
    """Seconds the implemented forward spends launching and waiting: the layout copies of x and
    the filter, the barrier counter's zeroing and the persistent series (4 launches), a grid
    barrier between each two of its n steps, and one inside each step whose reduction is
    split."""
    return 4 * LAUNCH_S + (n - 1 + (n if splits > 1 else 0)) * GRID_BARRIER_S


def soc_exp_horner_table(terms: int = 15, target: float = 3.0) -> str:
    """The implemented forward, n Horner steps in one persistent launch (and 2 layout copies),
    against the reference with its 3 n launches: predicted time (a step's time with its split's
    barrier), what bounds a step, its splits of the reduction, and the share of the time that
    is launches and grid barriers."""
    n = terms - 1
    lines = ["| layer | dtype | step us | step bound by | splits | design us | launches and "
             f"barriers | ratio | meets {target:.0f}x |",
             "|---|---|---:|---|---:|---:|---:|---:|---|"]
    for layer in soc_layers():
        reference = layer.reference_forward(n)
        step, copies, bound, splits = _horner_step_design(layer)
        synchronisation = _series_synchronisation(n, splits)
        work = step - (GRID_BARRIER_S if splits > 1 else 0.0)
        design = n * work + copies + synchronisation
        lines.append(f"| {layer.label} | {layer.dtype} | {step * 1e6:.1f} | {bound} | {splits} "
                     f"| {_us(design)} | {synchronisation / design:.0%} | "
                     f"{_ratio(reference / design)} | "
                     f"{'yes' if reference / design >= target else 'no'} |")
    return "\n".join(lines)


def _weight_gradient_design(layer: SocLayer) -> float:
    """Seconds of one weight-gradient launch of the implemented backward: a GEMM reduced over
    the pixels (2 N C^2 k^2 FLOPs), reading u and the power (2 A) and the per-split partial sums
    (read and written, float32) from HBM, and from L2 each program's slices of u and of the
    shifted power, for every tap and channel tile (`weight_gradient_tiles`)."""
    from lipkernels.triton.soc_exp import weight_gradient_tiles

    size = ELEMENT_BYTES[layer.dtype]
    taps = layer.kernel ** 2
    block, _, _, splits = weight_gradient_tiles(layer.pixels, layer.channels, layer.kernel, size)
    hbm = 2 * layer.activation_bytes + 2 * splits * layer.channels ** 2 * taps * 4
    l2 = 2 * taps * math.ceil(layer.channels / block) * layer.activation_bytes
    return max(layer.conv_flops / layer.peak, hbm / HBM_BYTES_PER_S, l2 / L2_BYTES_PER_S)


def soc_exp_training_horner_table(terms: int = 6, target: float = 2.0) -> str:
    """The implemented forward and exact backward (lipkernels/triton/soc_exp.py): the forward's
    n Horner steps in one persistent launch; in the backward, a launch each, n - 1 steps for
    the powers, n for u_{n-2} .. u_0 and grad_x, and n weight-gradient launches, plus the
    layout copies of x, grad_y and the two filters (4 A + 4 W); against the reference of the
    table above. Peak memory beyond the
    resident inputs: y, grad_y, the n powers (x's channels-last copy among them) and g's copy,
    every u written into a spent buffer, then grad_x."""
    n = terms - 1
    lines = ["| layer | dtype | reference us | design us | launches | ratio | meets "
             f"{target:.0f}x | peak memory, reference / design |",
             "|---|---|---:|---:|---:|---:|---|---|"]
    for layer in soc_layers():
        reference = layer.reference_training(n)
        forward_step, copies, _, splits = _horner_step_design(layer)
        backward_step = _horner_step_design(layer, series=False)[0]
        launches = _series_synchronisation(n, splits) + ((n - 1) + n + n + 4) * LAUNCH_S
        forward_work = forward_step - (GRID_BARRIER_S if splits > 1 else 0.0)
        design = (n * forward_work + (2 * n - 1) * backward_step
                  + n * _weight_gradient_design(layer) + 2 * copies + launches)
        lines.append(f"| {layer.label} | {layer.dtype} | {_us(reference)} | {_us(design)} | "
                     f"{launches / design:.0%} | {_ratio(reference / design)} | "
                     f"{'yes' if reference / design >= target else 'no'} | {3 + n} A / "
                     f"{n + 3} A |")
    return "\n".join(lines)


def soc_exp_training_table(terms: int = 6, target: float = 2.0) -> str:
    """Forward and exact backward, n = terms - 1. The reference, differentiated by autograd,
    keeps every term's input and runs, per term, the forward's conv, division and addition (3
    launches, 6 A + W bytes) and in the backward the gradient's accumulation, the division's
    backward and the conv's input and weight gradients (5 launches with the filter gradient's
    sum, 9 A + 2 W, two convolutions): 3 n convolutions. Two fused designs keep nothing from the
    forward (one launch, 2 A + W) and run the backward in two launches (3 A + 2 W at least):
    "kept" recomputes the n - 1 powers and keeps them through the backward, then n transposed
    convolutions and n weight-gradient contractions, (4 n - 1) convolutions in all; "lean"
    keeps two working activations only, rebuilding each h_b = sum_(j>b) c_j (S^T)^(j-1-b) g from
    g beside the power S^b x it meets, 3 n + n (n - 1) / 2 convolutions. Peak memory is what
    the benchmark reports: beyond the resident inputs (x, S, the loss weights), so y, the output
    gradient and grad_x, plus the reference's n - 1 kept term inputs and one working
    activation, the kept design's n - 1 powers and one, the lean design's two."""
    n = terms - 1
    lines = ["| layer | dtype | reference us | kept: roofline us | kept: ratio | kept: "
             f"efficiency for {target:.0f}x | lean: roofline us | lean: ratio | peak memory, "
             "reference / kept / lean |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for layer in soc_layers():
        A, W, conv = layer.activation_bytes, layer.filter_bytes, layer.conv_flops
        reference = layer.reference_training(n)
        kept_flops = (4 * n - 1) * conv
        lean_flops = (3 * n + n * (n - 1) / 2) * conv
        kept = layer.roofline(kept_flops, 5 * A + 3 * W) + 2 * LAUNCH_S
        lean = layer.roofline(lean_flops, 5 * A + 3 * W) + 2 * LAUNCH_S
        # The efficiency e at which kept_flops / (e peak) + launches = reference / target.
        budget = reference / target - 2 * LAUNCH_S
        needed = kept_flops / layer.peak / budget if budget > 0 else math.inf
        memory = (3 + n, 3 + n, 5)
        lines.append(f"| {layer.label} | {layer.dtype} | {_us(reference)} | {_us(kept)} | "
                     f"{_ratio(reference / kept)} | {needed:.0%} | {_us(lean)} | "
                     f"{_ratio(reference / lean)} | {' / '.join(f'{m} A' for m in memory)} |")
    return "\n".join(lines)


# The Fantastic Four grid: square seed filters of the SOC LipConvNet.
F4_CHANNELS = (16, 32, 64, 128, 256, 512, 1024, 2048)


def fantastic_four_table(iters: int = 50, target: float = 10.0) -> str:
    """conv_spectral_bounds at `iters` iterations, fp32. The reference: three reshape copies of
    the filter, then per iteration and reshape two matrix-vector products and two normalisations
    (8 launches), each product reading the matrix (from L2 while the four fit in it, else from
    HBM). The implemented design (lipkernels/triton/conv_spectral_bounds.py, its
    `launch_config`): one persistent launch, each program owning output-channel slabs W[o] (the
    rows of M_1, M_2 and M_3 and the columns of M_4 with that o); per iteration one read of the
    filter (from L2 once it fits there) updates all four iterates, the program's slabs read a
    second time for its partial products (one row of t's length per program), which are
    written and read back in L2 by the reduction, two grid barriers. A grid of fewer than 132 programs gets that share of the bandwidth."""
    from lipkernels.triton.conv_spectral_bounds import launch_config
    lines = ["| filter | filter MB | reference launches | reference ms | design ms | design "
             "bound by | ratio |", "|---|---:|---:|---:|---:|---|---:|"]
    for channels in F4_CHANNELS:
        for kernel in (1, 3):
            filter_bytes = 4.0 * channels ** 2 * kernel ** 2
            reshapes = 4
            copies = 0 if kernel == 1 else 3
            launches = reshapes * (8 * iters + 3) + copies
            bandwidth = L2_BYTES_PER_S if reshapes * filter_bytes <= L2_BYTES else HBM_BYTES_PER_S
            reference = (2 * copies * filter_bytes / HBM_BYTES_PER_S
                         + iters * 2 * reshapes * filter_bytes / bandwidth + launches * LAUNCH_S)
            config = launch_config((channels, channels, kernel, kernel), H100_SMS)
            share = config["programs"] / H100_SMS
            partial_bytes = 4.0 * config["partial_rows"] * config["length"]
            design_bandwidth = L2_BYTES_PER_S if filter_bytes <= L2_BYTES else HBM_BYTES_PER_S
            flops = 16.0 * channels ** 2 * kernel ** 2  # 4 dots and 4 updates an element
            # The second sweep finds the program's slabs in L2 only where the whole filter
            # fits: between a program's two sweeps every program reads its own slabs.
            terms = {"filter": 2 * filter_bytes / (design_bandwidth * share),
                     "partials": 2 * partial_bytes / (L2_BYTES_PER_S * share),
                     "compute": flops / (SIMT_FP32_FLOPS * share),
                     "barriers": 2 * GRID_BARRIER_S}
            design = LAUNCH_S + iters * sum(terms.values())
            lines.append(f"| C{channels}-k{kernel} | {filter_bytes / 1e6:.2f} | {launches} | "
                         f"{reference * 1e3:.2f} | {design * 1e3:.2f} | "
                         f"{max(terms, key=terms.get)} | {_ratio(reference / design)} |")
    return "\n".join(lines)


# The power_iteration shapes: the M_3 reshape (C x 9C) of each Fantastic Four filter of 3 x 3
# taps, and conv_spectral_norm's batch of real forms (544 frequencies of 64 channels at 32 x 32,
# 128 x 128 each); (count, m, n).
POWER_ITERATION_MATRICES = (*((1, c, 9 * c) for c in F4_CHANNELS), (544, 128, 128))


def _resident_power_iteration(count: int, m: int, n: int, iters: int) -> tuple[float, str]:
    """(seconds, bound) of `_resident_power_iteration_kernel` on `count` fp32 m x n matrices: a
    program per matrix, one per SM at a time (conservative: ptxas leaves room for two at
    128 x 128), W read once from HBM; per iteration two matrix-vector products on the SM's
    SIMT units (4 m n FLOPs) or four block-wide reductions (the two products' and the two
    norms'), whichever is longer."""
    waves = math.ceil(count / H100_SMS)
    terms = {"reductions": 4 * BLOCK_REDUCTION_S,
             "SIMT": 4.0 * m * n / (SIMT_FP32_FLOPS / H100_SMS)}
    bound = max(terms, key=terms.get)
    w_read = 4.0 * count * m * n / HBM_BYTES_PER_S
    return LAUNCH_S + w_read + waves * iters * terms[bound], bound


def _split_power_iteration(count: int, m: int, n: int, iters: int) -> tuple[float, str]:
    """(seconds, bound) of `_power_iteration_kernel` (its `launch_config`): one persistent launch
    of min(132, tiles) programs; per iteration the row pass reads W (from L2 once it fits
    there) and re-reads each row block from L2 for its partial W^T (W u), writing the partials,
    which the column pass reads back; two grid barriers. A grid of fewer than 132 programs gets
    that share of the bandwidth."""
    import torch

    from lipkernels.triton.power_iteration import launch_config
    config = launch_config(count, m, n, torch.device("meta"))
    share = config["programs"] / H100_SMS
    w_bytes = 4.0 * count * m * n
    partial_bytes = 4.0 * count * config["row_blocks"] * n
    w_bandwidth = L2_BYTES_PER_S if w_bytes <= L2_BYTES else HBM_BYTES_PER_S
    terms = {"W": w_bytes / (w_bandwidth * share),
             "L2": (w_bytes + 2 * partial_bytes) / (L2_BYTES_PER_S * share),
             "barriers": 2 * GRID_BARRIER_S}
    return LAUNCH_S + iters * sum(terms.values()), max(terms, key=terms.get)


def _gram_power_iteration(count: int, m: int, n: int, iters: int) -> tuple[float, str]:
    """(seconds, bound) of `_gram_power_iteration_kernel` (its `gram_launch_config`): forming
    G = W W^T by tiles of its upper triangle, each reading two row blocks of W from L2 and
    multiplying them in three TF32 passes, a program's share of L2 bandwidth and of the tensor
    cores per tile, in waves over the programs, W read once from HBM; then per iteration G read
    (from L2 while it fits) with v by every row block, and one grid barrier; then W read once
    more for t = W^T v, and two barriers."""
    import torch

    from lipkernels.triton.power_iteration import gram_launch_config
    config = gram_launch_config(count, m, n, torch.device("meta"))
    programs, side, blocks = config["programs"], config["BLOCK_G"], config["gram_blocks"]
    share = programs / H100_SMS
    tiles = count * blocks * (blocks + 1) // 2
    tile = max(2.0 * side * side * n * SPLIT_TF32_PASSES / (TENSOR_FLOPS["fp32/TF32"] / H100_SMS),
               2.0 * 4 * side * n / (L2_BYTES_PER_S / H100_SMS))
    w_bytes, gram_bytes = 4.0 * count * m * n, 4.0 * count * m * m
    forming = w_bytes / HBM_BYTES_PER_S + math.ceil(tiles / programs) * tile
    gram_bandwidth = L2_BYTES_PER_S if gram_bytes <= L2_BYTES else HBM_BYTES_PER_S
    w_bandwidth = L2_BYTES_PER_S if w_bytes <= L2_BYTES else HBM_BYTES_PER_S
    vectors = 4.0 * count * config["row_blocks"] * m
    terms = {"forming G": forming,
             "G reads": (iters - 1) * (gram_bytes / gram_bandwidth + vectors / L2_BYTES_PER_S)
             / share,
             "W^T v": w_bytes / (w_bandwidth * share),
             "barriers": (iters + 1) * GRID_BARRIER_S}
    return LAUNCH_S + sum(terms.values()), max(terms, key=terms.get)


_POWER_ITERATION_DESIGNS = {"resident": _resident_power_iteration, "gram": _gram_power_iteration,
                            "split": _split_power_iteration}


def power_iteration_table(iters: int = 50, target: float = 10.0) -> str:
    """power_iteration at `iters` iterations, fp32, on the kernel the launcher picks (`route`):
    matrices that fit one program's registers on the resident kernel, wide ones on their Gram
    matrix, the others split over the grid. The reference: per iteration two matrix-vector
    products and two normalisations (8 launches), 3 more at the end, each product reading W
    (from L2 while it fits, else HBM)."""
    import torch

    from lipkernels.triton.power_iteration import route
    lines = [f"| matrices | W MB | design | reference ms | design ms | design bound by | "
             f"ratio | meets {target:g}x |", "|---|---:|---|---:|---:|---|---:|---|"]
    for count, m, n in POWER_ITERATION_MATRICES:
        kernel = route(m, n, iters, torch.float32)
        design, bound = _POWER_ITERATION_DESIGNS[kernel](count, m, n, iters)
        w_bytes = 4.0 * count * m * n
        w_bandwidth = L2_BYTES_PER_S if w_bytes <= L2_BYTES else HBM_BYTES_PER_S
        reference = (8 * iters + 3) * LAUNCH_S + iters * 2 * w_bytes / w_bandwidth
        ratio = reference / design
        lines.append(f"| {count} x {m} x {n} | {w_bytes / 1e6:.2f} | {kernel} | "
                     f"{reference * 1e3:.2f} | {design * 1e3:.2f} | {bound} | {_ratio(ratio)} | "
                     f"{'yes' if ratio >= target else 'no'} |")
    return "\n".join(lines)


# The cayley_conv2d grid: the Cayley paper's layers (channels, image side), 3x3 filters,
# circular padding, batch 128, fp32.
CAYLEY_LAYERS = ((32, 32), (64, 16), (64, 32), (128, 16), (256, 8), (512, 4))
# Eager launches of the reference's forward and backward (the filter's padding, rfft2 and
# response, the Cayley transform's subtraction, identity, LU, inverse and 2 X - I, the input's
# rfft2 and the permutes around the per-frequency product, and about twice as many backward),
# and of the design (rfft2, the fused transform and product, irfft2, in each direction).
CAYLEY_REFERENCE_LAUNCHES = 42
CAYLEY_DESIGN_LAUNCHES = 10


def _cayley_reference(channels: int, side: int) -> tuple[int, float, float]:
    """(F, A, reference seconds) of a square cayley_conv2d layer's forward and backward at batch
    128 (cayley_conv2d_table says how the reference is taken)."""
    frequencies = side * (side // 2 + 1)
    A = SOC_BATCH * channels * side * side * 4.0
    rate = SIMT_FP32_FLOPS / COMPLEX_MAC_FLOPS
    products = 3.0 * channels ** 2 * SOC_BATCH * frequencies
    reference = (3.0 * channels ** 3 * frequencies / rate
                 + max(products / rate, 6 * A / HBM_BYTES_PER_S)
                 + 16 * A / HBM_BYTES_PER_S + CAYLEY_REFERENCE_LAUNCHES * LAUNCH_S)
    return frequencies, A, reference


def _cayley_design_phases(channels: int, side: int) -> dict[str, float]:
    """The design's phases (seconds) of a square cayley_conv2d layer's forward and backward."""
    frequencies, A, _ = _cayley_reference(channels, side)
    rate = TENSOR_FLOPS["fp32/TF32"] / (COMPLEX_MAC_FLOPS * SPLIT_TF32_PASSES)
    products = 3.0 * channels ** 2 * SOC_BATCH * frequencies
    return {"transforms": channels ** 3 * frequencies / rate,
            "products": max(products / rate, 6 * A / HBM_BYTES_PER_S),
            "FFTs": 8 * A / HBM_BYTES_PER_S, "launches": CAYLEY_DESIGN_LAUNCHES * LAUNCH_S}


def cayley_conv2d_table(target: float = 3.0) -> str:
    """cayley_conv2d forward and backward (square C x C, F = H (W // 2 + 1) frequencies), as a
    sum of phases, each at its roofline. The reference's Cayley transforms: X = M^{-1} per
    frequency (LU and inverse, C^3 complex multiply-adds; Q = 2 X - I) and its backward's two
    products with X^H, 3 C^3 F in all; its per-frequency products Q S forward, Q^H G and G S^H
    backward, 3 C^2 B F. The design's transforms are the forward's inverse alone, C^3 F: its
    backward factors the rank-B gradient through the kept solved spectrum W = X S, so its
    products are W forward, p = X^H G and K = p W^H backward, 3 C^2 B F as well. Both read and
    write 6 spectra (each taken as one activation's bytes A) in the products; the FFTs: the
    reference runs rfft2, a permute to the (F, C, B) layout, a permute back and irfft2 in each
    direction (16 A), the design the FFTs alone (8 A), its products reading the spectra where
    the FFTs leave them. The reference's complex arithmetic (cuBLAS and cuSOLVER in float32,
    torch's default without TF32 matmuls) runs at the SIMT peak, its best case; the design's on
    TF32 tensor cores in three passes, float32-accurate."""
    lines = ["| layer | F | complex GMAC, reference transforms / design transforms / products | "
             f"reference us | design us | design bound by | ratio | meets {target:.0f}x |",
             "|---|---:|---|---:|---:|---|---:|---|"]
    for channels, side in CAYLEY_LAYERS:
        frequencies, _, reference = _cayley_reference(channels, side)
        reference_transforms = 3.0 * channels ** 3 * frequencies
        design_transforms = 1.0 * channels ** 3 * frequencies
        products = 3.0 * channels ** 2 * SOC_BATCH * frequencies
        phases = _cayley_design_phases(channels, side)
        design = sum(phases.values())
        lines.append(f"| {channels}@{side}x{side} | {frequencies} | "
                     f"{reference_transforms / 1e9:.2f} / {design_transforms / 1e9:.2f} / "
                     f"{products / 1e9:.2f} | {_us(reference)} | {_us(design)} | "
                     f"{max(phases, key=phases.get)} | {_ratio(reference / design)} | "
                     f"{'yes' if reference / design >= target else 'no'} |")
    return "\n".join(lines)


def cayley_conv2d_implemented_table() -> str:
    """The implemented Triton design of cayley_conv2d (lipkernels/triton/cayley_conv2d.py) by
    the route its launchers take (`cayley_conv2d.over_grid_pays`): a program per frequency (the
    inverse and the products in it, `cayley.inverse_seconds` and
    `cayley_conv2d.program_products_seconds`), or over the grid for few frequencies of many
    channels (the inverse as one persistent launch, each product a launch of a program per
    output tile, `cayley_conv2d.split_products_seconds`, their launches included). The FFTs
    with the permutes around them as the reference's (16 A); the other launches as the
    design's, the route over the grid trading its two fused launches for the inverse's."""
    lines = ["| layer | F | route | inverse us | products us | design us (the model above) | "
             "implemented us | implemented bound by | ratio to the reference |",
             "|---|---:|---|---:|---:|---:|---:|---|---:|"]
    for channels, side in CAYLEY_LAYERS:
        frequencies, A, reference = _cayley_reference(channels, side)
        n = channels
        over_grid = cayley_conv2d.over_grid_pays(frequencies, n, SOC_BATCH)
        if over_grid:
            products = cayley_conv2d.split_products_seconds(frequencies, n, SOC_BATCH)
            launches = (CAYLEY_DESIGN_LAUNCHES - 1) * LAUNCH_S
        else:
            products = cayley_conv2d.program_products_seconds(frequencies, n, SOC_BATCH)
            launches = CAYLEY_DESIGN_LAUNCHES * LAUNCH_S
        phases = {"inverse": cayley.inverse_seconds(frequencies, n, over_grid),
                  "products": products, "FFTs": 16 * A / HBM_BYTES_PER_S, "launches": launches}
        implemented = sum(phases.values())
        design = sum(_cayley_design_phases(channels, side).values())
        lines.append(f"| {channels}@{side}x{side} | {frequencies} | "
                     f"{'over the grid' if over_grid else 'a program each'} | "
                     f"{_us(phases['inverse'])} | {_us(products)} | {_us(design)} | "
                     f"{_us(implemented)} | {max(phases, key=phases.get)} | "
                     f"{_ratio(reference / implemented)} |")
    return "\n".join(lines)


# The conv_singular_values grid: square 3x3 filters on n x n images, circular padding, the
# power iteration's iteration count. A complex SVD's values cost about 32/3 C^3 real FLOPs
# (Golub and Van Loan's 8/3 n^3 bidiagonalisation, four real products a complex one); a
# cuSOLVER gesvd call on one matrix runs its bidiagonalisation and QR sweeps as tens of kernels
# with host synchronisations: taken as 100 us a call (an assumption the first GPU run measures;
# torch batches only matrices of at most 32 rows through gesvdj).
CONV_NORM_CHANNELS = (64, 128, 256, 512)
CONV_NORM_SIZES = (32, 56)
CONV_NORM_ITERS = 50
SVD_FLOPS_PER_CUBE = 32 / 3
CUSOLVER_CALL_S = 100e-6


def conv_spectral_norm_table(target: float = 20.0) -> str:
    """conv_spectral_norm of a C x C x 3 x 3 filter on an n x n image (F = n (n // 2 + 1)
    frequencies, one of each conjugate pair): the reference's exact norm, svdvals of the F
    complex64 responses, one cuSOLVER call each (at least its FLOPs at the SIMT peak, at least
    the call's cost), against the design's power iteration at every frequency in one launch,
    each iteration two complex matrix-vector products per frequency reading the responses once
    (8 F C^2 bytes, from L2 while they fit in it)."""
    lines = ["| filter | image | F | responses MB | reference ms | design ms | design bound by | "
             f"ratio | meets {target:.0f}x |", "|---|---|---:|---:|---:|---:|---|---:|---|"]
    for channels in CONV_NORM_CHANNELS:
        for size in CONV_NORM_SIZES:
            frequencies = size * (size // 2 + 1)
            responses = 8.0 * frequencies * channels ** 2
            svd = SVD_FLOPS_PER_CUBE * channels ** 3 / SIMT_FP32_FLOPS
            reference = frequencies * max(svd, CUSOLVER_CALL_S) + LAUNCH_S
            bandwidth = L2_BYTES_PER_S if responses <= L2_BYTES else HBM_BYTES_PER_S
            flops = 2 * COMPLEX_MAC_FLOPS * frequencies * channels ** 2
            bound = ("compute" if flops / SIMT_FP32_FLOPS >= responses / bandwidth
                     else "L2" if bandwidth == L2_BYTES_PER_S else "HBM")
            design = _responses_design(channels, frequencies)
            lines.append(f"| C{channels}-k3 | {size}x{size} | {frequencies} | "
                         f"{responses / 1e6:.0f} | {reference * 1e3:.1f} | {design * 1e3:.2f} | "
                         f"{bound} | {_ratio(reference / design)} | "
                         f"{'yes' if reference / design >= target else 'no'} |")
    return "\n".join(lines)


def _responses_design(channels: int, frequencies: int) -> float:
    """Seconds of conv_spectral_norm's response design at CONV_NORM_ITERS iterations (the
    table above)."""
    responses = 8.0 * frequencies * channels ** 2
    bandwidth = L2_BYTES_PER_S if responses <= L2_BYTES else HBM_BYTES_PER_S
    flops = 2 * COMPLEX_MAC_FLOPS * frequencies * channels ** 2
    per_iteration = max(flops / SIMT_FP32_FLOPS, responses / bandwidth)
    return CONV_NORM_ITERS * per_iteration + responses / HBM_BYTES_PER_S + LAUNCH_S


def _tap_design(channels: int, frequencies: int) -> tuple[float, str]:
    """Seconds of the implemented tap design at CONV_NORM_ITERS iterations, fp32, and what
    bounds its half steps: the kernel's own time model (lipkernels/triton/
    frequency_power_iteration.py, `half_step_seconds`, at the tiles its `launch_config` picks
    by it), a grid barrier after each half step."""
    import torch

    from lipkernels.triton.frequency_power_iteration import half_step_seconds, launch_config
    config = launch_config(frequencies, 9, channels, channels, torch.float32, H100_SMS)
    terms = half_step_seconds(frequencies, 9, channels, channels, config["BLOCK_F"],
                              config["BLOCK_C"], config["programs"])
    half_step = max(terms.values()) + GRID_BARRIER_S
    bound = "barriers" if GRID_BARRIER_S > max(terms.values()) else max(terms, key=terms.get)
    return CONV_NORM_ITERS * 2 * half_step + LAUNCH_S, bound


def conv_spectral_norm_taps_table(target: float = 20.0) -> str:
    """The implemented tap design of conv_spectral_norm (`_tap_design`): the responses never
    formed; each half step applies A_f = sum_k e^(i theta_fk) W_k at every frequency from the
    real taps W_k, (F x C) @ (C x C) products per tap in three TF32 passes (tf32x3) with the
    phases rotating the operand tiles as they load (each input tile read once for all taps),
    per-frequency norms from per-tile partial squares, a grid barrier between half steps. The
    Triton backend runs it at every shape; the table keeps the response design beside it."""
    lines = ["| filter | image | responses design ms | tap design ms | tap design bound by | "
             f"tap ratio | meets {target:.0f}x |", "|---|---|---:|---:|---|---:|---|"]
    for channels in CONV_NORM_CHANNELS:
        for size in CONV_NORM_SIZES:
            frequencies = size * (size // 2 + 1)
            svd = SVD_FLOPS_PER_CUBE * channels ** 3 / SIMT_FP32_FLOPS
            reference = frequencies * max(svd, CUSOLVER_CALL_S) + LAUNCH_S
            taps, bound = _tap_design(channels, frequencies)
            lines.append(f"| C{channels}-k3 | {size}x{size} | "
                         f"{_responses_design(channels, frequencies) * 1e3:.2f} | "
                         f"{taps * 1e3:.2f} | {bound} | {_ratio(reference / taps)} | "
                         f"{'yes' if reference / taps >= target else 'no'} |")
    return "\n".join(lines)


# bjorck: the suite's stacks (lipkernels.benchmarking.suites.bjorck), tall, 20 iterations, fp32.
# The reference is the seeds' loop: per iteration two matmuls, a scale and a sum forward, and
# about twice as many launches backward (autograd: two products for each matmul, the scale's and
# the sum's gradients); torch's fp32 matmuls run on CUDA cores (allow_tf32 is off for matmuls).
# The cuda backend is the same ATen code with the scale and sum folded into the products: two
# batched products an iteration forward, three backward.
BJORCK_ITERS = 20
BJORCK_REFERENCE_LAUNCHES = {"fwd": 4, "bwd": 8}
BJORCK_ATEN_LAUNCHES = {"fwd": 2, "bwd": 3}
# FLOPs per iteration in units of m n^2: forward W^T W and W E (2 + 2), backward W^T G, G E
# and W S (2 + 2 + 2) in the cuda backend's ATen code, which reads the iterates it kept; the
# reference's autograd takes four products backward.
BJORCK_PRODUCTS = {"fwd": 4, "bwd": 8}
BJORCK_KERNEL_PRODUCTS = {"fwd": 4, "bwd": 6}
# The Triton kernels' program per matrix: each output tile's reduction starts with an L2 round
# trip after the phase's CTA barrier (taken as 0.5 us, an assumption), then runs at one SM's
# tensor-core rate (tf32x3) or at the L2 bandwidth one SM can draw (64 bytes a cycle at
# 1.755 GHz, its share of the total where every SM draws), whichever is slower.
BJORCK_TILE_LATENCY_S = 0.5e-6
SM_L2_BYTES_PER_S = 64 * 1.755e9


def _bjorck_stacks():
    from lipkernels.benchmarking.suites.bjorck import STACKS
    return [(count, max(m, n), min(m, n)) for count, m, n in STACKS]


def _bjorck_triton(count: int, m: int, n: int, mode: str) -> tuple[float, str]:
    """(seconds, bound) of lipkernels/triton/bjorck.py's kernels for `mode` ("fwd", or "bwd"
    alone): per iteration the Gram phase over tiles i <= j, each reading two m-row panels, then
    the correction phase over the m x n tiles, each reading a row panel and a column panel of n;
    the backward's tangent iteration runs both on W and on the tangent (three products a tile
    in each phase); the matrices in waves of 132 programs."""
    import torch

    from lipkernels.triton.bjorck import launch_config
    block = launch_config(n, torch.float32)["BLOCK"]
    row_tiles, column_tiles = math.ceil(m / block), math.ceil(n / block)
    pairs = column_tiles * (column_tiles + 1) // 2
    # (tiles, reductions of `length` per tile) of each phase.
    phases = {"fwd": ((pairs, 1, m), (row_tiles * column_tiles, 1, n)),
              "bwd": ((pairs, 3, m), (row_tiles * column_tiles, 3, n))}[mode]
    flops_per_s = TENSOR_FLOPS["fp32/TF32"] / H100_SMS / SPLIT_TF32_PASSES
    bytes_per_s = min(SM_L2_BYTES_PER_S, L2_BYTES_PER_S / min(count, H100_SMS))
    iteration, bounds = 0.0, {"compute": 0.0, "L2": 0.0, "latency": 0.0}
    for tiles, products, length in phases:
        compute = products * 2.0 * block * block * length / flops_per_s
        reads = products * 2 * 4.0 * block * length / bytes_per_s
        iteration += tiles * (BJORCK_TILE_LATENCY_S + max(compute, reads))
        bounds["compute"] += tiles * compute
        bounds["L2"] += tiles * reads
        bounds["latency"] += tiles * BJORCK_TILE_LATENCY_S
    waves = math.ceil(count / H100_SMS)
    return LAUNCH_S + waves * BJORCK_ITERS * iteration, max(bounds, key=bounds.get)


def _bjorck_eager(count: int, m: int, n: int, mode: str, launches: dict, products: dict):
    """Seconds of an eager loop of batched products on CUDA cores: its launches and its FLOPs
    at the SIMT rate, per iteration."""
    flops = products[mode] * count * m * n * n
    return BJORCK_ITERS * (launches[mode] * LAUNCH_S + flops / SIMT_FP32_FLOPS)


def bjorck_table() -> str:
    """bjorck forward and forward + backward, fp32, 20 iterations: the reference loop, the
    Triton kernels (a program per matrix) and the cuda backend (ATen's batched products)."""
    lines = ["| stack | mode | reference us | triton us | triton bound by | triton ratio | "
             "cuda us | cuda ratio | faster |", "|---|---|---:|---:|---|---:|---:|---:|---|"]
    for count, m, n in _bjorck_stacks():
        for mode, parts in (("fwd", ("fwd",)), ("fwd+bwd", ("fwd", "bwd"))):
            reference = sum(_bjorck_eager(count, m, n, part, BJORCK_REFERENCE_LAUNCHES,
                                          BJORCK_PRODUCTS) for part in parts)
            triton = [_bjorck_triton(count, m, n, part) for part in parts]
            triton_s = sum(seconds for seconds, _ in triton)
            aten = sum(_bjorck_eager(count, m, n, part, BJORCK_ATEN_LAUNCHES,
                                     BJORCK_KERNEL_PRODUCTS) for part in parts)
            lines.append(f"| B{count} {m}x{n} | {mode} | {_us(reference)} | {_us(triton_s)} | "
                         f"{max(triton)[1]} | {_ratio(reference / triton_s)} | {_us(aten)} | "
                         f"{_ratio(reference / aten)} | "
                         f"{'triton' if triton_s < aten else 'cuda'} |")
    return "\n".join(lines)


# bcop_filter: LConvNet Large's layers (k, in, out after the stride-2 unshuffle) and
# LipConvNet's 3x3 layers, fp32. The reference is the seed's loop: the projectors' product, per
# block_orth an identity, two subtractions and four products, per matrix convolution of an
# a x a kernel with a 2 x 2 one a zero tap and 4 a^2 products each added in, k^2 head products
# and the stacking: its products at the SIMT rate (fp32 matmuls leave TF32 off). The backward
# (autograd) is taken as twice the forward's launches and products.
BCOP_FILTERS = ((3, 3, 32), (2, 128, 32), (3, 32, 64), (2, 256, 64), (3, 64, 64),
                (3, 128, 128), (3, 256, 256), (3, 512, 512))


def _bcop_reference(size: int, channels: int) -> float:
    """Seconds of the seed's forward construction of a k x k filter on C channels."""
    blocks = size - 1
    convolutions = sum(4 * a * a for a in range(2, size))
    launches = 1 + 7 * blocks + sum(1 + 2 * 4 * a * a for a in range(2, size)) + size * size \
        + size + 2
    products = 1 + 4 * blocks + convolutions + size * size
    return launches * LAUNCH_S + products * 2.0 * channels ** 3 / SIMT_FP32_FLOPS


def _bcop_design(size: int, in_channels: int, out_channels: int, backward: bool) -> float:
    """Seconds of lipkernels/triton/bcop_filter.py's launch: per phase a grid barrier and its
    output tiles in waves over the programs, each tile an L2 round trip (BJORCK_TILE_LATENCY_S)
    and its tf32x3 products at one SM's rate. Forward: the projectors, then 2k - 2 growth steps
    over the growing taps; backward: 2k - 3 growth steps again, then 2k - 2 reverse steps (the
    taps' gradient and the projector's, each a product of the forward's size)."""
    import torch

    from lipkernels.triton.bcop_filter import _Geometry
    channels, rows = max(in_channels, out_channels), min(in_channels, out_channels)
    geometry = _Geometry(torch.empty(2 * size - 1, channels, channels, device="meta"),
                         in_channels, out_channels)
    block = geometry.config["BLOCK"]
    rate = TENSOR_FLOPS["fp32/TF32"] / H100_SMS / SPLIT_TF32_PASSES
    tiles = math.ceil(rows / block) * math.ceil(channels / block)

    def phase(items: int, length: int) -> float:
        tile = BJORCK_TILE_LATENCY_S + 2.0 * block * block * length / rate
        return GRID_BARRIER_S + math.ceil(items / geometry.programs) * tile

    def taps(t: int) -> int:
        return (1 + (t + 1) // 2) * (1 + t // 2)

    steps = 2 * size - 2
    if not backward:
        squares = math.ceil(channels / block) ** 2
        return LAUNCH_S + phase(steps * squares, channels // 2) + sum(
            phase(taps(t + 1) * tiles, channels) for t in range(steps))
    regrowth = sum(phase(taps(t + 1) * tiles, channels) for t in range(steps - 1))
    reverse = sum(2 * phase(taps(t) * tiles, channels) for t in range(steps))
    return LAUNCH_S + regrowth + reverse


def bcop_filter_table() -> str:
    """bcop_filter forward and forward + backward, fp32: the seed's loop against the Triton
    kernels' one launch each direction."""
    lines = ["| filter | reference fwd us | design fwd us | fwd ratio | reference fwd+bwd us | "
             "design fwd+bwd us | fwd+bwd ratio |", "|---|---:|---:|---:|---:|---:|---:|"]
    for size, in_channels, out_channels in BCOP_FILTERS:
        channels = max(in_channels, out_channels)
        reference = _bcop_reference(size, channels)
        forward = _bcop_design(size, in_channels, out_channels, backward=False)
        training = forward + _bcop_design(size, in_channels, out_channels, backward=True)
        lines.append(f"| k{size} {in_channels} -> {out_channels} | {_us(reference)} | "
                     f"{_us(forward)} | {_ratio(reference / forward)} | {_us(3 * reference)} | "
                     f"{_us(training)} | {_ratio(3 * reference / training)} |")
    return "\n".join(lines)


# The convex potential step's layers, (channels C, inner channels C_inner, image side), k = 3,
# batch 128: the CPL code's default layer (30 channels, 5 inner) and the LipConvNet widths.
POTENTIAL_LAYERS = ((30, 5, 32), (32, 32, 32), (64, 64, 16), (128, 128, 8), (256, 256, 4))
POTENTIAL_BATCH = 128


def _kernels_time(kernels, dtype: str) -> float:
    """Seconds of a sequence of launches, each (FLOPs on tensor cores, HBM bytes) at its own
    roofline plus a launch."""
    return sum(max(flops / TENSOR_FLOPS[dtype], bytes_ / HBM_BYTES_PER_S) + LAUNCH_S
               for flops, bytes_ in kernels)


def _potential_kernels(channels: int, inner: int, side: int, dtype: str):
    """(reference forward, reference backward, design forward, design backward, plain conv
    forward + backward) launches of the step z = x - W^T (s relu(W x + b)), each (FLOPs, bytes),
    with X and R the bytes of x (C channels) and of the activation (C_inner), F a convolution's
    FLOPs. Reference (eager, cuDNN, autograd): conv with bias, relu, conv_transpose2d, the scale
    and the subtraction forward; backward the subtraction's and the scale's gradients (the
    latter a reduction of g W^T r), conv_transpose2d's data and weight gradients, relu's, the
    conv's data, weight and bias gradients and the accumulation of grad_x. Design: a conv with
    bias and relu in its epilogue (r written once), W^T as a conv with the scaled flipped filter
    and x - y in its epilogue; backward q = W g with e = -s [r > 0] q and the channel sums in its
    epilogue, grad_x = g + W^T e in one, and both weight gradients in one reduction over the
    pixels (of e x and r g)."""
    pixels = POTENTIAL_BATCH * side * side
    size = ELEMENT_BYTES[dtype]
    X, R = pixels * channels * size, pixels * inner * size
    F = 2.0 * pixels * channels * inner * 9
    reference_forward = [(F, X + R), (0, 2 * R), (F, R + X), (0, 2 * X), (0, 3 * X)]
    reference_backward = [(0, 2 * X), (0, 4 * X), (F, X + R), (F, X + R), (0, 3 * R),
                          (F, R + X), (F, X + R), (0, R), (0, 3 * X)]
    design_forward = [(F, X + R), (F, R + 2 * X)]
    design_backward = [(F, X + 2 * R), (F, R + 2 * X), (2 * F, 2 * X + 2 * R)]
    plain = 2.0 * pixels * channels * channels * 9
    plain_conv = [(plain, 2 * X), (plain, 2 * X), (plain, 2 * X)]
    return reference_forward, reference_backward, design_forward, design_backward, plain_conv


def convex_potential_table() -> str:
    """convex_potential forward and forward + backward at its roofline: the eager reference
    against the design of two fused launches forward and three backward, and the design's
    fwd+bwd against a plain C -> C conv layer's (forward, data and weight gradients)."""
    lines = ["| layer | dtype | reference fwd us | design fwd us | fwd ratio | "
             "reference fwd+bwd us | design fwd+bwd us | fwd+bwd ratio | design / plain conv |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for channels, inner, side in POTENTIAL_LAYERS:
        for dtype in ("fp32/TF32", "bf16"):
            ref_f, ref_b, des_f, des_b, plain = (
                _kernels_time(k, dtype) for k in _potential_kernels(channels, inner, side, dtype))
            lines.append(
                f"| {channels}/{inner}@{side}x{side} | {dtype} | {_us(ref_f)} | {_us(des_f)} | "
                f"{_ratio(ref_f / des_f)} | {_us(ref_f + ref_b)} | {_us(des_f + des_b)} | "
                f"{_ratio((ref_f + ref_b) / (des_f + des_b))} | "
                f"{_ratio((des_f + des_b) / plain)} |")
    return "\n".join(lines)


TABLES = {
    "soc_exp forward, 15 terms": soc_exp_forward_table,
    "soc_exp forward, 15 terms, one persistent launch of Horner steps": soc_exp_horner_table,
    "soc_exp forward and backward, 6 terms": soc_exp_training_table,
    "soc_exp forward and backward, 6 terms, Horner steps": soc_exp_training_horner_table,
    "fantastic_four, 50 iterations": fantastic_four_table,
    "power_iteration, 50 iterations, resident or split over the grid": power_iteration_table,
    "cayley_conv2d forward and backward": cayley_conv2d_table,
    "cayley_conv2d forward and backward, by the implemented routes":
        cayley_conv2d_implemented_table,
    "conv_spectral_norm, 50 iterations": conv_spectral_norm_table,
    "conv_spectral_norm, 50 iterations, from the filter's taps (implemented)":
        conv_spectral_norm_taps_table,
    "bjorck, 20 iterations": bjorck_table,
    "bcop_filter": bcop_filter_table,
    "convex_potential forward and backward": convex_potential_table,
}

if __name__ == "__main__":
    for title, table in TABLES.items():
        print(f"{title}\n\n{table()}\n")
