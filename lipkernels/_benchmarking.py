"""The benchmark harness of DESIGN.md §5, shared by ``python -m lipkernels.bench`` and the
pytest-benchmark suites ``benchmarks/bench_*.py``.

Both front ends take everything from here, so they give the same rows: the grid (``tasks``), the
providers (``select_providers``), the inputs, warm-up and round count (``Measurement``), the clock
(``clock``), the row (``Measurement.row``) and the results files (``write_results``). The only
thing a front end does itself is the loop of timed rounds: the CLI runs ``Measurement.time_rounds``,
pytest-benchmark runs its own loop with ``clock(device)`` as its timer (start = clock(); call;
end = clock(), exactly what ``time_rounds`` does).

Row, as DESIGN.md §5: {"op", "provider", "shape", "dtype", "mode", "median_ms", "peak_mem_mb",
"ortho_err"}. For the spectral-norm ops ``ortho_err`` is the relative error of the returned
sigma / bound against the exact value from ``torch.linalg.svdvals`` (float64, same data); for
``soc_exp`` it is max over the batch of | ||y_b|| / ||x_b|| - 1 |.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import subprocess
import time
import weakref
import zlib
from collections.abc import Callable
from pathlib import Path

import torch

import lipkernels
from lipkernels import reference
from lipkernels._conventions import bound_matrix_shapes
from lipkernels._precision import working_dtype
from lipkernels._spectral import bound_matrices, frequency_conv2d, frequency_response, frequency_responses

# ----------------------------------------------------------------------------------------------
# The grid

# Square filters of the SOC LipConvNet (notes/seed-methods.md §1): 32..512 channels in the stride-1
# layers, 128..2048 after the pixel-unshuffle of the strided ones, plus 16 for small nets.
SEED_CHANNELS = (16, 32, 64, 128, 256, 512, 1024, 2048)
# The default (reduced) grid: one small, one mid, one large filter, so that the default CLI run
# finishes in a few minutes on a 2-core CPU (a 1024-channel 3x3 reference call at 50 iterations
# alone takes seconds there).
DEFAULT_CHANNELS = (16, 64, 256)
KERNEL_SIZES = (1, 3)  # 3x3 stride-1 layers; 1x1 in the last block and for SOCLinear
ITERS = (1, 50)  # one iteration per training step with persistent vectors; 50 at initialisation
MODES = ("fwd", "fwd+bwd")  # fwd+bwd: the bound / sigma, then its gradient w.r.t. the weight
DTYPE = torch.float32

SUITES = {
    "power_iteration": ("power_iteration",),
    "conv_spectral_bounds": ("conv_spectral_bounds", "fantastic_four"),
    "soc_exp": ("soc_exp",),
    "lipconvnet": ("lipconvnet_train_step",),
    "conv_singular_values": ("conv_spectral_norm",),
    "cayley_conv2d": ("cayley_conv2d", "cayley_conv2d_eval", "fft_conv2d"),
}

# soc_exp: the activations (channels, height = width) of the SOC LipConvNet's stride-1 layers, 3x3
# filters; the default grid keeps the first and the third layer at batch 128 (about a minute on a
# 2-core CPU). Terms: 6 in training, 15 at evaluation. Modes: fwd, fwd+bwd with the exact
# gradient, and fwd+bwd with the NeurIPS 2022 fast gradient, whose rows carry the suffix "-fast" in
# their shape (DESIGN.md §5 keeps the mode strings to fwd, bwd, fwd+bwd and eval).
SOC_ACTIVATIONS = ((32, 32), (64, 16), (128, 8), (256, 4), (512, 2))
DEFAULT_SOC_ACTIVATIONS = ((32, 32), (128, 8))
# --full adds the strided layers, which see 4x the channels at half the size after the pixel
# unshuffle: (channels, size, k), 1x1 in the last block.
SOC_STRIDED_ACTIVATIONS = ((128, 16, 3), (256, 8, 3), (512, 4, 3), (1024, 2, 3), (2048, 1, 1))
SOC_BATCHES, DEFAULT_SOC_BATCHES = (128, 256), (128,)
SOC_TERMS = (6, 15)
SOC_MODES = (("fwd", "exact"), ("fwd+bwd", "exact"), ("fwd+bwd", "fast"))  # (mode, grad_mode)
# --full adds bfloat16 rows (the precision SOC networks train in under mixed precision).
SOC_FULL_DTYPES = (torch.float32, torch.bfloat16)

# lipconvnet: one SGD training step (forward, cross-entropy, backward, update) of LipConvNet-10
# (32 initial channels, MaxMin, 6 training terms) on 32x32 images, exact and fast SOC gradients.
# Batch 128 with --full (the seed's training batch); 32 in the default grid, for the CPU's sake.
LIPCONVNET_DEPTH = 10
LIPCONVNET_BATCH, DEFAULT_LIPCONVNET_BATCH = 128, 32
LIPCONVNET_TRAIN_TERMS = 6

# Batches of small matrices beside the F4 reshapes: the per-frequency 16x16 blocks of a 16-channel
# conv on a 16x16 grid (Sedghi / Cayley style), and BCOP's 2k-1 = 5 square 128-channel matrices.
SMALL_BATCHES = ((256, 16, 16), (5, 128, 128))

# conv_singular_values: the norm of the circular conv with a square 3x3 filter on an n x n image,
# exact (the reference row: svdvals of the n^2 frequency responses) against the power-iteration
# estimate of every backend (all frequencies in one fused power_iteration launch). 64..512
# channels on 32x32 (CIFAR) and 56x56 (the first stage of an ImageNet ResNet) images; the default
# grid keeps C64 at 32x32, for a 2-core CPU. Peers: deel-torchlip 1.0.5 has no conv operator norm
# (no FFT; its SpectralConv2d normalises the reshaped kernel by power iteration and a
# kernel-size coefficient), so there is none.
CONV_NORM_CHANNELS, DEFAULT_CONV_NORM_CHANNELS = (64, 128, 256, 512), (64,)
CONV_NORM_SIZES, DEFAULT_CONV_NORM_SIZES = (32, 56), (32,)
CONV_NORM_ITERS = 50

# cayley_conv2d: the activations (channels, height = width) of the Cayley paper's networks, 3x3
# filters, circular padding: KWLarge's 32@32x32 and 64@16x16, ResNet9's 64@32x32, 128@16x16,
# 256@8x8 and 512@4x4; batch 128 and 256 in float32 and bfloat16 with --full, the first two
# layers at batch 128 in float32 by default. Ops: cayley_conv2d (fwd, fwd+bwd), the cached
# inference of a CayleyConv2d (cayley_conv2d_eval, mode eval) and a plain FFT convolution with a
# precomputed filter spectrum (fft_conv2d, mode eval, reference only), the yardstick of cached
# inference.
CAYLEY_ACTIVATIONS = ((32, 32), (64, 16), (64, 32), (128, 16), (256, 8), (512, 4))
DEFAULT_CAYLEY_ACTIVATIONS = ((32, 32), (64, 16))
CAYLEY_BATCHES, DEFAULT_CAYLEY_BATCHES = (128, 256), (128,)
CAYLEY_FULL_DTYPES = (torch.float32, torch.bfloat16)
CAYLEY_MODES = {"cayley_conv2d": ("fwd", "fwd+bwd"), "cayley_conv2d_eval": ("eval",),
                "fft_conv2d": ("eval",)}


def _seeded_normal(key: str, shape) -> torch.Tensor:
    """Random data that depends only on `key`: every provider, mode and run sees the same values."""
    generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


@dataclasses.dataclass(frozen=True)
class Filter:
    """A seeded square conv filter (C, C, k, k): the data of the conv suite."""

    channels: int
    k: int

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.channels, self.channels, self.k, self.k)

    @property
    def label(self) -> str:
        return f"C{self.channels}-C{self.channels}-k{self.k}"

    def weight(self) -> torch.Tensor:
        return _seeded_normal(self.label, self.shape) / math.sqrt(self.channels * self.k ** 2)

    def inputs(self):
        """(weight, the four right vectors), float32 on the CPU."""
        vectors = tuple(_unit_rows(_seeded_normal(f"{self.label}/u{q}", (cols,)))
                        for q, (_, cols) in enumerate(bound_matrix_shapes(self.shape)))
        return self.weight(), vectors

    def exact_sigmas(self) -> torch.Tensor:
        return _exact_filter_sigmas(self)


@functools.cache
def _exact_filter_sigmas(data: Filter) -> torch.Tensor:
    """sigma_max of M_1..M_4, float64, once per filter (shared by both suites)."""
    return torch.stack([torch.linalg.svdvals(m)[0]
                        for m in bound_matrices(data.weight().double())])


@dataclasses.dataclass(frozen=True)
class Matrices:
    """A batch of matrices for power_iteration: the F4 reshapes `reshapes` (0-based indices of
    M_1..M_4, all of one shape) of a seed filter, or seeded random matrices when `source` is
    None."""

    batch: int
    rows: int
    cols: int
    source: Filter | None = None
    reshapes: tuple[int, ...] = ()

    @classmethod
    def f4(cls, source: Filter, reshapes: tuple[int, ...]) -> Matrices:
        shapes = {bound_matrix_shapes(source.shape)[q] for q in reshapes}
        (rows, cols), = shapes  # the batched op needs one matrix shape
        return cls(len(reshapes), rows, cols, source, reshapes)

    @property
    def label(self) -> str:
        return f"B{self.batch}-M{self.rows}-N{self.cols}"

    def _matrices(self, dtype) -> torch.Tensor:
        if self.source is None:
            return (_seeded_normal(self.label, (self.batch, self.rows, self.cols))
                    / math.sqrt(self.cols)).to(dtype)
        reshaped = bound_matrices(self.source.weight().to(dtype))
        return torch.stack([reshaped[q] for q in self.reshapes])

    def inputs(self):
        """(matrices (B, m, n), right vectors (B, n)), float32 on the CPU."""
        u = _unit_rows(_seeded_normal(f"{self.label}/u", (self.batch, self.cols)))
        return self._matrices(torch.float32), u

    def exact_sigmas(self) -> torch.Tensor:
        return _exact_matrix_sigmas(self)


@functools.cache
def _exact_matrix_sigmas(data: Matrices) -> torch.Tensor:
    if data.source is not None:
        return data.source.exact_sigmas()[list(data.reshapes)]
    return torch.linalg.svdvals(data._matrices(torch.float64))[..., 0]


@dataclasses.dataclass(frozen=True)
class Activations:
    """Seeded inputs of soc_exp: activations x (batch, C, size, size), random normal, and the skew
    filter S = skew(W) / (fantastic_four(skew(W), 50) / k) of the seeded k x k filter W of
    `Filter`, so that S's Fantastic Four bound without its sqrt(k k) factor is 1, as SOCConv2d
    scales it."""

    batch: int
    channels: int
    size: int
    k: int = 3

    @property
    def filter(self) -> Filter:
        return Filter(self.channels, self.k)

    @property
    def label(self) -> str:
        return f"B{self.batch}-C{self.channels}-H{self.size}-W{self.size}-k{self.filter.k}"

    def inputs(self):
        """((x, filter), the fixed random weights of the fwd+bwd loss sum(y * weights)),
        float32."""
        shape = (self.batch, self.channels, self.size, self.size)
        return ((_seeded_normal(self.label, shape), self.filter_tensor()),
                _seeded_normal(f"{self.label}/dy", shape))

    def filter_tensor(self) -> torch.Tensor:
        return _soc_filter(self.filter)


@functools.cache
def _soc_filter(data: Filter) -> torch.Tensor:
    weight, vectors = data.inputs()
    skew = reference.skew(weight)
    bound = lipkernels.fantastic_four(skew, 50, vectors)[0]
    return (skew / (bound / _bound_scale(data))).contiguous()


class CayleyActivations(Activations):
    """Seeded inputs of cayley_conv2d: x (batch, C, size, size), random normal, and the seeded
    C x C x k x k filter of `Filter` (a CayleyConv2d's scaled filter at initialisation, where
    alpha = ||W||_F)."""

    def filter_tensor(self) -> torch.Tensor:
        return self.filter.weight()


@dataclasses.dataclass(frozen=True)
class Spectrum:
    """A seeded square filter (`Filter`) on a size x size image with circular padding: the data
    of conv_spectral_norm."""

    channels: int
    size: int
    k: int = 3

    @property
    def filter(self) -> Filter:
        return Filter(self.channels, self.k)

    @property
    def label(self) -> str:
        return f"{self.filter.label}-H{self.size}-W{self.size}"

    def inputs(self):
        """(weight, None), float32 on the CPU; the image size is the case's."""
        return self.filter.weight(), None


@functools.cache
def _exact_conv_norm(data: Spectrum) -> torch.Tensor:
    """The circular conv's norm in float64 from svdvals of its frequency responses: only those
    with column frequency v <= n / 2 (H at -f is conj(H_f), with the same singular values), a few
    rows of frequencies per call, which bounds the SVD's copy and workspace (a 512-channel filter
    at 56x56 has 13 GB of complex128 responses)."""
    half = frequency_response(data.filter.weight().double(), data.size, onesided=True)
    return torch.stack([torch.linalg.svdvals(rows)[..., 0].max() for rows in half.split(8)]).max()


@dataclasses.dataclass(frozen=True)
class Network:
    """A seeded LipConvNet training batch: images (batch, 3, 32, 32), standard normal, and class
    labels; the network itself is built, from a fixed seed, by each measurement."""

    batch: int
    depth: int = LIPCONVNET_DEPTH
    init_channels: int = 32
    classes: int = 10

    @property
    def label(self) -> str:
        return f"B{self.batch}-D{self.depth}-C{self.init_channels}-H32-W32"

    def inputs(self):
        """((images, labels), None)."""
        images = _seeded_normal(self.label, (self.batch, 3, 32, 32))
        generator = torch.Generator().manual_seed(zlib.crc32(f"{self.label}/y".encode()))
        return (images, torch.randint(self.classes, (self.batch,), generator=generator)), None

    def network(self, grad_mode: str) -> torch.nn.Module:
        """LipConvNet-depth in training mode, with the same initial weights on every call."""
        from lipkernels.nn import LipConvNet

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return LipConvNet(self.depth, self.init_channels, self.classes,
                              train_terms=LIPCONVNET_TRAIN_TERMS, grad_mode=grad_mode).train()


def _lipconvnet_train_step():
    """A training-step function for one measurement: the first call builds the seeded network
    (on the images' device) and its optimizer, every call runs one SGD step (the seed's lr 0.1,
    momentum 0.9, weight decay 5e-4) and returns the step's loss. The layers run on whatever
    backend the provider's context selects."""
    state = {}

    def step(images, labels, case):
        if not state:
            model = case.data.network(case.grad_mode).to(images.device)
            state.update(model=model, optimizer=torch.optim.SGD(
                model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4))
        state["optimizer"].zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(state["model"](images), labels)
        loss.backward()
        state["optimizer"].step()
        return loss

    return step


# Ops that are whole-model workloads rather than lipkernels functions: every provider runs the
# same factory's function inside its own backend context.
def _cayley_conv2d_eval():
    """Cached inference of a CayleyConv2d holding the case's filter (no bias, alpha = ||W||_F, so
    its scaled filter is the filter), as an inference loop inside one `lipkernels.nn.cached()`
    block runs it: the untimed first call computes the per-frequency transforms; every later
    call is one rfft2, one batched product and one irfft2. The closure keeps its block open
    while it lives."""
    from lipkernels.nn import CayleyConv2d, cached

    layer, block = None, contextlib.ExitStack()

    def run(x, weight):
        nonlocal layer
        if layer is None:
            out_channels, in_channels, k, _ = weight.shape
            layer = CayleyConv2d(in_channels, out_channels, k, bias=False, device=weight.device,
                                 dtype=weight.dtype).eval()
            with torch.no_grad():
                layer.weight.copy_(weight)
                layer.alpha.copy_(torch.linalg.vector_norm(weight))
            block.enter_context(cached())
            weakref.finalize(run, block.close)
        with torch.no_grad():
            return layer(x)

    return run


MODEL_OPS = {"lipconvnet_train_step": _lipconvnet_train_step,
             "cayley_conv2d_eval": _cayley_conv2d_eval}


@functools.cache
def _exact_initial_loss(data: Network) -> float:
    """The cross-entropy of the seeded network's initial weights on the batch, in float64 on the
    CPU through the reference layers."""
    (images, labels), _ = data.inputs()
    with lipkernels.use_backend("reference"), torch.no_grad():
        model = data.network("exact").double()
        return torch.nn.functional.cross_entropy(model(images.double()), labels).item()


def _loss_error(loss, data: Network) -> float:
    """ortho_err of a training step: |first loss - exact| / exact, the float64 reference loss."""
    exact = _exact_initial_loss(data)
    return abs(loss.item() - exact) / exact


def _bound_scale(data: Filter) -> float:
    return math.sqrt(data.k * data.k)  # sqrt(k_h k_w) of the Fantastic Four bound


def _relative_error(exact: Callable) -> Callable:
    """ortho_err of a spectral-norm op: max |estimate - exact| / exact, exact(data) in float64."""
    def error(estimate, data):
        return ((estimate - exact(data)).abs() / exact(data)).max().item()

    return error


def _norm_ratio_error(y, data) -> float:
    """ortho_err of soc_exp: max over the batch of | ||y_b|| / ||x_b|| - 1 |."""
    x = _cpu_inputs(data)[0][0].double()
    return (y.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1) - 1).abs().max().item()


@dataclasses.dataclass(frozen=True)
class _OpSpec:
    suite: str
    # (implementation, input(s), state, case) -> the differentiable output (sigma, bound(s), y)
    estimate: Callable
    # (first call's output in float64 on the CPU, data) -> the row's ortho_err
    error: Callable
    # (output, state) -> the loss whose gradient w.r.t. the input(s) fwd+bwd computes
    loss: Callable = lambda output, state: output.sum()
    # The estimate runs its own backward (a training step): fwd+bwd adds nothing to it.
    trains: bool = False


OPS = {
    "power_iteration": _OpSpec(
        "power_iteration",
        lambda fn, weight, u, case: fn(weight, u, case.iters)[0],
        _relative_error(lambda data: data.exact_sigmas())),
    "conv_spectral_bounds": _OpSpec(
        "conv_spectral_bounds",
        lambda fn, weight, vectors, case: fn(weight, case.iters, vectors)[0],
        _relative_error(lambda data: _bound_scale(data) * data.exact_sigmas())),
    "fantastic_four": _OpSpec(
        "conv_spectral_bounds",
        lambda fn, weight, vectors, case: fn(weight, case.iters, vectors)[0],
        _relative_error(lambda data: _bound_scale(data) * data.exact_sigmas().min())),
    "soc_exp": _OpSpec(
        "soc_exp",
        lambda fn, x_and_s, dy, case: fn(*x_and_s, case.iters, case.grad_mode),
        _norm_ratio_error,
        lambda y, dy: (y * dy).sum()),
    "lipconvnet_train_step": _OpSpec(
        "lipconvnet",
        lambda fn, batch, _, case: fn(*batch, case),
        _loss_error,
        trains=True),
    "conv_spectral_norm": _OpSpec(
        "conv_singular_values",
        lambda fn, weight, _, case: fn(weight, case.data.size, "circular", case.iters),
        _relative_error(_exact_conv_norm)),
    **{op: _OpSpec("cayley_conv2d", lambda fn, x_and_weight, dy, case: fn(*x_and_weight),
                   _norm_ratio_error, lambda y, dy: (y * dy).sum())
       for op in ("cayley_conv2d", "cayley_conv2d_eval")},
    # Not an orthogonal map: no ortho_err.
    "fft_conv2d": _OpSpec("cayley_conv2d", lambda fn, x_and_weight, dy, case: fn(*x_and_weight),
                          lambda y, data: None),
}


@dataclasses.dataclass(frozen=True)
class Case:
    op: str
    data: Filter | Matrices | Activations | Network | Spectrum
    iters: int | None  # iterations, or soc_exp's terms; None for ops that have neither
    mode: str
    grad_mode: str = "exact"  # soc_exp's "fast" gradient: shape suffix "-fast"
    dtype: torch.dtype = DTYPE

    @property
    def shape(self) -> str:
        terms = "" if self.iters is None else f"-T{self.iters}"
        return f"{self.data.label}{terms}" + ("-fast" if self.grad_mode == "fast" else "")

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def _suite_data(suite: str, full: bool) -> list[Filter | Matrices | Activations | Network
                                                 | Spectrum]:
    if suite == "soc_exp":
        layers = ([(c, h, 3) for c, h in SOC_ACTIVATIONS] + list(SOC_STRIDED_ACTIVATIONS) if full
                  else [(c, h, 3) for c, h in DEFAULT_SOC_ACTIVATIONS])
        return [Activations(batch, *layer)
                for batch in (SOC_BATCHES if full else DEFAULT_SOC_BATCHES) for layer in layers]
    if suite == "lipconvnet":
        return [Network(LIPCONVNET_BATCH if full else DEFAULT_LIPCONVNET_BATCH)]
    if suite == "cayley_conv2d":
        layers = CAYLEY_ACTIVATIONS if full else DEFAULT_CAYLEY_ACTIVATIONS
        return [CayleyActivations(batch, *layer)
                for batch in (CAYLEY_BATCHES if full else DEFAULT_CAYLEY_BATCHES)
                for layer in layers]
    if suite == "conv_singular_values":
        # Smaller filters first, so that a --time-limit cuts the most expensive rows.
        return [Spectrum(c, n) for c in (CONV_NORM_CHANNELS if full else DEFAULT_CONV_NORM_CHANNELS)
                for n in (CONV_NORM_SIZES if full else DEFAULT_CONV_NORM_SIZES)]
    filters = [Filter(c, k) for c in (SEED_CHANNELS if full else DEFAULT_CHANNELS)
               for k in KERNEL_SIZES]
    if suite == "conv_spectral_bounds":
        return filters
    # power_iteration: each seed filter's F4 reshapes, batched by shape (M_1, M_2 and M_3, M_4 of
    # a 3x3 filter; all four of a 1x1 one), then the small batches.
    matrices = []
    for f in filters:
        groups = ((0, 1), (2, 3)) if f.k > 1 else ((0, 1, 2, 3),)
        matrices += [Matrices.f4(f, group) for group in groups]
    return matrices + [Matrices(*shape) for shape in SMALL_BATCHES]


def cases(suite: str, full: bool) -> list[Case]:
    dtypes = (DTYPE,)
    if suite == "soc_exp":
        variants = [(terms, mode, grad_mode) for terms in SOC_TERMS
                    for mode, grad_mode in SOC_MODES]
        dtypes = SOC_FULL_DTYPES if full else dtypes
    elif suite == "lipconvnet":
        variants = [(LIPCONVNET_TRAIN_TERMS, "fwd+bwd", grad_mode) for grad_mode in ("exact", "fast")]
    elif suite == "conv_singular_values":
        variants = [(CONV_NORM_ITERS, "fwd", "exact")]
    elif suite == "cayley_conv2d":
        dtypes = CAYLEY_FULL_DTYPES if full else dtypes
        return [Case(op, data, None, mode, dtype=dtype) for data in _suite_data(suite, full)
                for dtype in dtypes for op in SUITES[suite] for mode in CAYLEY_MODES[op]]
    else:
        variants = [(iters, mode, "exact") for iters in ITERS for mode in MODES]
    return [Case(op, data, *variant, dtype=dtype) for op in SUITES[suite]
            for data in _suite_data(suite, full) for dtype in dtypes for variant in variants]


# ----------------------------------------------------------------------------------------------
# Providers

class Provider:
    """One implementation of the ops. `implementation(op)` is None where it has none."""

    name: str

    def implementation(self, op: str) -> Callable | None:
        raise NotImplementedError

    def covers(self, case: Case, full: bool) -> bool:
        return self.implementation(case.op) is not None

    def context(self):
        return contextlib.nullcontext()


def _seed_cayley_eval():
    """The seed code's inference: no cache, the transforms recomputed on every call."""
    def run(x, weight):
        with torch.no_grad():
            return reference.cayley_conv2d(x, weight)

    return run


def _fft_conv2d():
    """A plain circular FFT convolution, its filter spectrum computed in the untimed first call:
    rfft2, one batched product per frequency, irfft2 (what cached Cayley inference should cost)."""
    responses = {}

    def run(x, weight):
        size = tuple(x.shape[-2:])
        with torch.no_grad():
            if size not in responses:
                responses[size] = frequency_responses(weight, size, working_dtype(x.dtype))
            return frequency_conv2d(x, responses[size])

    return run


# Ops whose reference row is not the reference op itself, as factories called once per
# measurement: conv_spectral_norm's is the exact norm (iters=None, svdvals of the frequency
# responses), the baseline that the backends' power-iteration estimates are timed against;
# cayley_conv2d_eval's is the seed's uncached inference; fft_conv2d has a reference row only.
REFERENCE_ROWS = {
    "conv_spectral_norm": lambda: lambda weight, size, padding, iters: (
        reference.conv_spectral_norm(weight, size, padding)),
    "cayley_conv2d_eval": _seed_cayley_eval,
    "fft_conv2d": _fft_conv2d,
}


class Reference(Provider):
    name = "reference"

    def implementation(self, op):
        if op in REFERENCE_ROWS:
            return REFERENCE_ROWS[op]()
        return MODEL_OPS[op]() if op in MODEL_OPS else getattr(reference, op)

    def context(self):
        # Model workloads call the public layers, which dispatch: pin them to the reference.
        return lipkernels.use_backend("reference")


# Which cases reference-compile runs on. Inductor unrolls the reference's Python loop: compiling
# fantastic_four on a 64-channel 3x3 filter took ~10 s at 1 iteration and ~1 min at 50 on a busy
# 2-core CPU, per graph (shape family, iteration count and grad mode). So: 1 iteration on a
# representative shape per op by default, on every shape with --full, plus the CPU target case at
# 50 iterations (forward) with --full.
_COMPILE_DEFAULT = {("power_iteration", "B2-M192-N192"), ("conv_spectral_bounds", "C64-C64-k3"),
                    ("fantastic_four", "C64-C64-k3")}
_COMPILE_FULL_T50 = {("fantastic_four", "C64-C64-k3", "fwd")}
# soc_exp (6 and 15 terms, every mode): with --full, on the first LipConvNet layer at batch 128.
_COMPILE_FULL_ALL_ITERS = {("soc_exp", "B128-C32-H32-W32-k3")}


class CompiledReference(Provider):
    """torch.compile of the reference. dynamic=True, so that one compiled graph serves a whole
    column of shapes (one compile per op, iteration count, mode and kernel size) instead of one per
    shape; its compile time falls in the untimed first call."""

    name = "reference-compile"

    def implementation(self, op):
        return None if op in MODEL_OPS or op in REFERENCE_ROWS else _compiled_reference(op)

    def covers(self, case, full):
        key = (case.op, case.data.label)
        if case.op in MODEL_OPS or case.op in REFERENCE_ROWS:
            return False
        if case.op == "soc_exp":
            return full and key in _COMPILE_FULL_ALL_ITERS
        if case.iters == 1:
            return full or key in _COMPILE_DEFAULT
        return full and (*key, case.mode) in _COMPILE_FULL_T50


@functools.cache
def _compiled_reference(op: str):
    # One compiled function per op sees every shape, iteration count, kernel size and grad mode;
    # dynamo's default of 8 graphs per function would silently fall back to eager past that.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(getattr(reference, op), dynamic=True)


class Backend(Provider):
    """A lipkernels backend (cpp, triton, cuda) through the public functional API."""

    def __init__(self, name: str):
        self.name = name

    def implementation(self, op):
        # None where the op has no lipkernels implementation (fft_conv2d, a yardstick).
        return MODEL_OPS[op]() if op in MODEL_OPS else getattr(lipkernels, op, None)

    def context(self):
        return lipkernels.use_backend(self.name)


class Peer(Provider):
    """Another Lipschitz library's implementation, where it has one and where it is installed.
    `adapters` maps an op to a factory called once per measurement, so that a stateful peer starts
    fresh in each."""

    def __init__(self, name: str, module: str, adapters: dict[str, Callable[[], Callable]],
                 dtypes: dict[str, tuple[torch.dtype, ...]] | None = None):
        self.name, self.module, self._adapters = name, module, adapters
        self._dtypes = dtypes or {}  # per op, the dtypes the peer supports (default: all)

    def covers(self, case, full):
        return (case.dtype in self._dtypes.get(case.op, (case.dtype,))
                and super().covers(case, full))

    def installed(self) -> bool:
        try:
            return importlib.util.find_spec(self.module) is not None
        except ModuleNotFoundError:  # the parent package (e.g. `deel`) is missing
            return False

    def implementation(self, op):
        factory = self._adapters.get(op)
        return factory() if factory else None


def _deel_torchlip_power_iteration():
    """deel-torchlip 1.0.5 `spectral_normalization(kernel, u (1, n), eps, maxiter)`, which takes
    one matrix: a loop over the batch. eps=0 so that it runs exactly `iters` iterations (it stops
    early once u moves less than eps)."""
    from deel.torchlip.normalizers import spectral_normalization

    def run(weight, u, iters):
        return torch.stack([spectral_normalization(w, u=u_row[None], eps=0.0, maxiter=iters)[2]
                            for w, u_row in zip(weight, u, strict=True)])

    return run


def _orthogonium_power_iteration():
    """orthogonium 0.0.4 `BatchedPowerIteration(shape)(X, n_iters)`, which returns X / (sigma + eps)
    and keeps its vectors in the module: sigma is read back from the norms. The module is built in
    the untimed first call, from its own random start (seeded here)."""
    from orthogonium.reparametrizers import BatchedPowerIteration

    module = None

    def run(weight, u, iters):
        nonlocal module
        if module is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                module = BatchedPowerIteration(tuple(weight.shape)).to(weight.device, weight.dtype)
        normalized = module(weight, n_iters=iters)
        return weight.flatten(-2).norm(dim=-1) / normalized.flatten(-2).norm(dim=-1) - module.eps

    return run


def _orthogonium_cayley_conv2d():
    """orthogonium 0.0.4 `legacy.cayley_ortho_conv.Cayley` (the seed's CayleyConv), called on the
    case's filter through torch.func.functional_call, with alpha = ||rfft2 of the filter||_F (its
    own normalisation), so that it computes cayley_conv2d(x, weight). Its forward assumes square
    images and builds its phase table at the first call (untimed)."""
    from orthogonium.legacy.cayley_ortho_conv import Cayley

    layer = None

    def run(x, weight):
        nonlocal layer
        out_channels, in_channels, k, _ = weight.shape
        if layer is None:
            layer = Cayley(in_channels, out_channels, k, bias=False).to(x.device)
        size = x.shape[-1]
        alpha = torch.fft.rfft2(weight.detach().float(), (size, size)).norm()
        return torch.func.functional_call(layer, {"weight": weight, "alpha": alpha}, (x,))

    return run


PEERS = (
    Peer("orthogonium", "orthogonium.reparametrizers",
         {"power_iteration": _orthogonium_power_iteration,
          "cayley_conv2d": _orthogonium_cayley_conv2d},
         # Its Cayley layer runs torch.fft on the input's dtype, which has no bfloat16 kernels.
         {"cayley_conv2d": (torch.float32,)}),
    Peer("deel-torchlip", "deel.torchlip.normalizers",
         {"power_iteration": _deel_torchlip_power_iteration}),
)

KERNEL_BACKENDS = ("cpp", "triton", "cuda")
PROVIDER_NAMES = ("reference", "reference-compile", *KERNEL_BACKENDS, *(p.name for p in PEERS))


def select_providers(device: str, requested: list[str] | None = None):
    """(providers to run, {provider: why it does not run}) for `device`.

    Default: reference, reference-compile (on its subset of cases), every lipkernels backend
    usable on the device except Triton on the CPU (the interpreter is orders of magnitude slow), and
    the installed peers. A requested provider that cannot run is an error naming the reason.
    """
    usable = lipkernels.available_backends(device)
    reasons = {}
    for name in KERNEL_BACKENDS:
        if name not in usable:
            reasons[name] = (f"not usable on {device} (lipkernels.available_backends({device!r}) = "
                             f"{usable}; see lipkernels.build_info())")
        elif name == "triton" and device == "cpu":
            reasons[name] = ("runs on CPU tensors only through the Triton interpreter, far too "
                             "slow to time; ask for it with --providers triton")
    for peer in PEERS:
        if not peer.installed():
            reasons[peer.name] = "not installed"
    if requested:
        unknown = [name for name in requested if name not in PROVIDER_NAMES]
        if unknown:
            raise ValueError(f"unknown provider(s) {unknown}; choose from {list(PROVIDER_NAMES)}")
        # Asked for by name, Triton on the CPU runs wherever the interpreter makes it usable.
        blocked = {name: reasons[name] for name in requested
                   if name in reasons and not (name == "triton" and "triton" in usable)}
        if blocked:
            raise ValueError("cannot run " + "; ".join(f"{n}: {r}" for n, r in blocked.items()))
        names = [name for name in PROVIDER_NAMES if name in requested]
        reasons = {name: reasons.get(name, "not requested") for name in PROVIDER_NAMES
                   if name not in names}
    else:
        names = [name for name in PROVIDER_NAMES if name not in reasons]
    known = {p.name: p for p in (Reference(), CompiledReference(), *PEERS)}
    return [known.get(name) or Backend(name) for name in names], reasons


# ----------------------------------------------------------------------------------------------
# Tasks: (case, provider) pairs in run order

@dataclasses.dataclass(frozen=True)
class Task:
    case: Case
    provider: Provider

    @property
    def suite(self) -> str:
        return OPS[self.case.op].suite

    @property
    def id(self) -> str:
        case = self.case
        dtype = "" if case.dtype == DTYPE else f"-{case.dtype_name}"
        return f"{case.op}-{case.shape}{dtype}-{case.mode}-{self.provider.name}"

    @property
    def group(self) -> str:
        """The rows a speed-up compares: one op, shape, dtype and mode."""
        case = self.case
        return f"{case.op}-{case.shape}-{case.dtype_name}-{case.mode}"


def tasks(suite: str, providers: list[Provider], full: bool) -> list[Task]:
    return [Task(case, provider) for case in cases(suite, full) for provider in providers
            if provider.covers(case, full)]


# ----------------------------------------------------------------------------------------------
# Timing

@dataclasses.dataclass(frozen=True)
class Budget:
    """How long one measurement's timed rounds may take, and the bounds on their number."""

    seconds: float
    min_rounds: int
    max_rounds: int


# The GPU budget keeps the full grid (~800 measurements) within the few minutes that
# benchmarks/gpu_check.sh has for it; slow cases still get min_rounds rounds.
BUDGETS = {"cpu": Budget(0.25, 3, 200), "cuda": Budget(0.05, 10, 1000)}
# Timed warm-up after the untimed first call, as a fraction of the budget: it also estimates the
# time of one call, from which the number of rounds follows.
WARMUP_FRACTION = 0.2
WARMUP_MIN_CALLS = 1


class _CudaEventClock:
    """A clock on the GPU's timeline: each reading records a CUDA event on the current stream and
    waits for it, and the difference of two consecutive readings is the event-measured time
    between them (accumulated in float64, so it stays exact however long the run). This makes
    CUDA-event timing usable as pytest-benchmark's `timer`. Two events alternate, so no event is
    created between the call and its end mark."""

    __name__ = "cuda_event_clock"  # how pytest-benchmark names its timer

    def __init__(self):
        self._events = None
        self._latest = 0
        self._seconds = 0.0

    def __call__(self) -> float:
        if self._events is None:
            self._events = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
            self._events[0].record()
        previous = self._events[self._latest]
        self._latest ^= 1
        current = self._events[self._latest]
        current.record()
        current.synchronize()
        self._seconds += previous.elapsed_time(current) / 1e3
        return self._seconds


@functools.cache
def clock(device: str) -> Callable[[], float]:
    """Seconds, for timing one call as clock() - clock(): wall clock on the CPU, CUDA events on a
    GPU. One instance per device, so that pytest-benchmark calibrates it once."""
    return _CudaEventClock() if device == "cuda" else time.perf_counter


# Consecutive tasks share their data (one case, every provider and mode); generating a 2048-channel
# 3x3 filter takes a noticeable part of a second.
@functools.lru_cache(maxsize=2)
def _cpu_inputs(data: Filter | Matrices | Activations | Spectrum):
    return data.inputs()


def _to(tensors, device: str, dtype: torch.dtype):
    """A tensor or tuple of tensors (or None) on `device`, floating ones in `dtype` (labels keep
    theirs); copy=True, so that the cached CPU tensors do not pick up a task's requires_grad."""
    if tensors is None:
        return None
    if isinstance(tensors, torch.Tensor):
        return tensors.to(device, dtype if tensors.is_floating_point() else tensors.dtype,
                          copy=True)
    return tuple(_to(t, device, dtype) for t in tensors)


class Measurement:
    """One task on one device, as a context manager: seeded inputs on the device, the provider's
    context (its backend selection) held for the whole measurement, an untimed first call (JIT,
    autotuning and torch.compile happen there), then a timed warm-up that sets `rounds`.

    `target()` is one timed call: the op, plus in fwd+bwd mode the gradient of the op's loss
    (`_OpSpec.loss`: the estimate's sum; soc_exp: sum(y * fixed weights)) w.r.t. its input(s) (the
    weight; soc_exp: x and S); it returns the op's output (sigma, bound(s), y).
    """

    def __init__(self, task: Task, device: str, budget: Budget | None = None):
        self.task, self.device = task, device
        self.budget = budget or BUDGETS[device]
        self.clock = clock(device)
        self._stack = contextlib.ExitStack()

    def __enter__(self):
        case, spec = self.task.case, OPS[self.task.case.op]
        weight, state = (_to(t, self.device, case.dtype) for t in _cpu_inputs(case.data))
        backward = case.mode == "fwd+bwd" and not spec.trains
        for tensor in (weight,) if isinstance(weight, torch.Tensor) else weight:
            tensor.requires_grad_(backward and tensor.is_floating_point())
        implementation = self.task.provider.implementation(case.op)

        def target():
            estimate = spec.estimate(implementation, weight, state, case)
            if backward:
                torch.autograd.grad(spec.loss(estimate, state), weight)
            return estimate

        self.target = target
        self._stack.enter_context(self.task.provider.context())
        try:
            self._first_estimate = target().detach()
            warmup = self._time(lambda spent, calls: spent < WARMUP_FRACTION * self.budget.seconds
                                or calls < WARMUP_MIN_CALLS)
            per_call = statistics.median(warmup)
            self.rounds = max(self.budget.min_rounds,
                              min(self.budget.max_rounds, int(self.budget.seconds / per_call)))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc_info):
        return self._stack.__exit__(*exc_info)

    def _time(self, more: Callable[[float, int], bool]) -> list[float]:
        """Seconds of timed calls, for as long as more(seconds spent, calls made) holds."""
        times, spent = [], 0.0
        while more(spent, len(times)):
            start = self.clock()
            self.target()
            times.append(self.clock() - start)
            spent += times[-1]
        return times

    def time_rounds(self) -> list[float]:
        """Milliseconds of each of `rounds` timed calls (the CLI's loop; pytest-benchmark runs the
        same loop with the same clock)."""
        return [1e3 * t for t in self._time(lambda spent, calls: calls < self.rounds)]

    def _peak_memory_mb(self) -> float | None:
        """CUDA memory allocated at the peak of one call beyond what was resident before it (the
        inputs), in MB. None on the CPU: its allocator keeps no peak statistics, and the process's
        RSS high-water mark is neither per call nor reset-able."""
        if self.device != "cuda":
            return None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        self.target()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20

    def _ortho_err(self) -> float:
        """The op's error measure (`_OpSpec.error`) of the first call's output."""
        case = self.task.case
        return OPS[case.op].error(self._first_estimate.double().cpu(), case.data)

    def row(self, median_ms: float) -> dict:
        case = self.task.case
        return {"op": case.op, "provider": self.task.provider.name, "shape": case.shape,
                "dtype": case.dtype_name, "mode": case.mode, "median_ms": median_ms,
                "peak_mem_mb": self._peak_memory_mb(), "ortho_err": self._ortho_err()}


# ----------------------------------------------------------------------------------------------
# Results files

TIMING_NOTE = {
    "cpu": ("wall clock (time.perf_counter) around each call; median of the timed rounds (at least "
            "{b.min_rounds}, at most {b.max_rounds}, about {b.seconds} s of them) after an untimed "
            "first call and a timed warm-up"),
    "cuda": ("CUDA events around each call (recorded on the current stream, synchronised after the "
             "call); median of the timed rounds (at least {b.min_rounds}, at most {b.max_rounds}, "
             "about {b.seconds} s of them) after an untimed first call and a timed warm-up"),
}


def _slug(text: str) -> str:
    text = re.sub(r"\((r|tm)\)|\bcpu\b", " ", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {torch.get_num_threads()} threads"


def device_slug(device: str) -> str:
    name = device_name(device).split(",")[0]
    return _slug(name) if device == "cuda" else "cpu-" + _slug(name)


REPO_ROOT = Path(lipkernels.__file__).resolve().parents[1]


def default_results_dir() -> Path:
    """benchmarks/results/ of the source checkout lipkernels runs from, else of the working
    directory."""
    checkout = REPO_ROOT / "benchmarks"
    return (checkout if checkout.is_dir() else Path("benchmarks")) / "results"


def _commit() -> str | None:
    """HEAD of the checkout, with "+dirty" when the working tree differs from it."""
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True,
                              text=True, timeout=30)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def environment(device: str) -> dict:
    """The header of a results file (DESIGN.md §5)."""
    info = lipkernels.build_info()
    return {"device": device_name(device), "torch": torch.__version__, "triton": info["triton"],
            "cuda": torch.version.cuda,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": _commit()}


def write_results(out_dir, suite: str, device: str, full: bool, rows: list[dict],
                  not_run: dict[str, str], failures: list[dict] = (), skipped_for_time: int = 0,
                  budget: Budget | None = None) -> tuple[Path, Path]:
    """Write <device-slug>-<YYYYMMDD>-<suite>.json and the Markdown table beside it."""
    env = environment(device)
    report = {**env, "rows": rows, "suite": suite, "device_type": device,
              "grid": "full" if full else "default",
              "timing": TIMING_NOTE[device].format(b=budget or BUDGETS[device]),
              "not_run": not_run, "failures": list(failures), "skipped_for_time": skipped_for_time,
              "build_info": lipkernels.build_info(),
              # Timings on a CPU shared with other work are slower and noisier; this says how busy.
              "load_average": ([round(x, 2) for x in os.getloadavg()]
                               if device == "cpu" and hasattr(os, "getloadavg") else None),
              "cpu_count": os.cpu_count()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{device_slug(device)}-{env['date'][:10].replace('-', '')}-{suite}"
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path


def speedups(rows: list[dict]) -> list[float | None]:
    """reference median / row median for each row, from the reference row of the same op, shape,
    dtype and mode in the same list (one run): None where there is none."""
    def key(row):
        return row["op"], row["shape"], row["dtype"], row["mode"]

    ref = {key(r): r["median_ms"] for r in rows if r["provider"] == "reference"}
    return [ref[key(r)] / r["median_ms"] if key(r) in ref else None for r in rows]


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table, with the speed-up over the reference of the same run."""
    lines = ["| op | shape | dtype | mode | provider | median ms | speed-up vs reference | "
             "peak MB | ortho_err |", "|---|---|---|---|---|---:|---:|---:|---:|"]
    for r, speedup in zip(rows, speedups(rows), strict=True):
        lines.append(f"| {r['op']} | {r['shape']} | {r['dtype']} | {r['mode']} | {r['provider']} | "
                     f"{r['median_ms']:.4g} | {_fmt(speedup, '.2f')} | "
                     f"{_fmt(r['peak_mem_mb'], '.3g')} | {_fmt(r['ortho_err'], '.2e')} |")
    return "\n".join(lines) + "\n"


def summary(rows: list[dict]) -> str:
    """Per provider, op, iteration count (soc_exp: terms, with "-fast" for the fast gradient; "-"
    for ops without one) and mode: the smallest, geometric-mean and largest speed-up."""
    groups: dict[tuple, list] = {}
    for r, speedup in zip(rows, speedups(rows), strict=True):
        if speedup is not None and r["provider"] != "reference":
            iters = r["shape"].rsplit("-T", 1)[1] if "-T" in r["shape"] else "-"
            groups.setdefault((r["provider"], r["op"], iters, r["mode"]), []).append((speedup, r))
    lines = ["| provider | op | iters | mode | rows | min speed-up (at) | geomean | max speed-up |",
             "|---|---|---:|---|---:|---|---:|---:|"]
    for (provider, op, iters, mode), items in groups.items():
        low, at = min(items, key=lambda item: item[0])
        geomean = math.exp(statistics.fmean(math.log(s) for s, _ in items))
        lines.append(f"| {provider} | {op} | {iters} | {mode} | {len(items)} | {low:.2f} "
                     f"({at['shape']}) | {geomean:.2f} | "
                     f"{max(s for s, _ in items):.2f} |")
    return "\n".join(lines) + "\n"


# Per suite, the Markdown header's lines on its shapes and ortho_err, and on reference-compile.
_SPECTRAL_NOTES = ((
    "- ortho_err: for these spectral-norm ops, the relative error |estimate - exact| / exact "
    "of the returned sigma (power_iteration, max over the batch) or bound(s) "
    "(conv_spectral_bounds: max over the four; fantastic_four: the min bound) against the "
    "exact value "
    "sqrt(k_h k_w) sigma_max from torch.linalg.svdvals in float64 of the same data. Every "
    "provider starts from the same seeded random vectors (but orthogonium, whose module draws "
    "its own), so 1-iteration rows show the error of one iteration, equal across providers up "
    "to rounding",
    "- shapes: `C{C_out}-C{C_in}-k{k}-T{iters}` a conv filter; `B{batch}-M{m}-N{n}-T{iters}` "
    "a batch of m x n matrices: for power_iteration the F4 reshapes of the same seeded filters "
    "(B2-M{3C}-N{3C}: M_1, M_2 and B2-M{C}-N{9C}: M_3, M_4 of a 3x3 filter; B4-M{C}-N{C}: all "
    "four of a 1x1 filter), B256-M16-N16 and B5-M128-N128 seeded random; mode fwd+bwd adds the "
    "gradient of the estimate's sum w.r.t. the weight"),
    "- reference-compile: `torch.compile(reference, dynamic=True)`, compile time excluded "
    "(untimed first call); only on 1-iteration cases (a representative shape per op in the "
    "default grid, all shapes with --full) plus fantastic_four C64-C64-k3-T50 fwd with "
    "--full, because inductor unrolls the 50-iteration loop and takes about a minute per "
    "graph to compile it on a 2-core CPU",
)
SUITE_NOTES = {
    "power_iteration": _SPECTRAL_NOTES,
    "conv_spectral_bounds": _SPECTRAL_NOTES,
    "soc_exp": ((
        "- shapes: `B{batch}-C{C}-H{H}-W{W}-k{k}-T{terms}` x of that shape (seeded standard "
        "normal) and S = skew(W) / (fantastic_four(skew(W), 50 iterations) / k) for a seeded k x k "
        "filter W, so S's Fantastic Four bound without the sqrt(k k) factor is 1 (as SOCConv2d "
        "scales it); the LipConvNet stride-1 activations 32@32x32, 64@16x16, 128@8x8, 256@4x4, "
        "512@2x2 and, with --full, the strided layers after the pixel unshuffle 128@16x16, "
        "256@8x8, 512@4x4, 1024@2x2 (3x3) and 2048@1x1 (1x1), at batch 128 and 256 in float32 "
        "and bfloat16 (default: 32@32x32 and 128@8x8 at batch 128, float32); 6 (training) "
        "and 15 (evaluation) terms. Mode fwd: y = soc_exp(x, S, terms); fwd+bwd: y and the "
        "gradients w.r.t. x and S of sum(y * fixed seeded random weights), exact gradient "
        "(grad_mode=\"exact\"); shapes ending in `-fast`: the same fwd+bwd with the NeurIPS 2022 "
        "fast gradient (grad_mode=\"fast\"), marked in the shape because DESIGN.md §5 fixes the "
        "mode strings (its forward is the exact mode's, so it has no fwd row)",
        "- ortho_err: max over the batch of | ||y_b|| / ||x_b|| - 1 | of the first call's output "
        "(float64 norms): the series' truncation error plus rounding, since exp of a "
        "skew-symmetric operator preserves norms"),
        "- reference-compile: `torch.compile(reference, dynamic=True)`, compile time excluded "
        "(untimed first call); only with --full and only on B128-C32-H32-W32-k3 (every term "
        "count and mode), because inductor unrolls the term loop and each graph takes long to "
        "compile on a 2-core CPU",
    ),
    "lipconvnet": ((
        "- shapes: `B{batch}-D10-C32-H32-W32-T6`: one training step of LipConvNet-10 "
        "(lipkernels.nn.LipConvNet: 5 blocks of SOCConv2d, 32 initial channels, MaxMin, "
        "SOCLinear head, 6 training terms), the same seeded initial weights for every provider, "
        "on seeded normal images and labels: forward, cross-entropy, backward, SGD update "
        "(lr 0.1, momentum 0.9, weight decay 5e-4). Batch 128 with --full, 32 by default. "
        "`-fast`: the SOC layers use the NeurIPS 2022 fast gradient. Provider reference: the "
        "same network with every op on the reference backend; cpp / triton / cuda: on that "
        "backend",
        "- ortho_err: |first step's loss - exact| / exact, exact the float64 loss of the same "
        "initial network and batch through the reference ops (agreement of the whole forward "
        "pass, not an orthogonality measure)"),
        "",
    ),
    "conv_singular_values": ((
        "- shapes: `C{C}-C{C}-k3-H{n}-W{n}-T{iters}`: the seeded 3x3 filter of the conv suites "
        "on an n x n image, circular padding; with --full 64, 128, 256 and 512 channels at 32x32 "
        "and 56x56 (default: C64 at 32x32), T50. Mode fwd only: the norm, no gradient",
        "- providers: `reference` is the exact norm whatever T, "
        "`reference.conv_spectral_norm(weight, n)` (iters=None: FFT of the zero-padded filter, "
        "torch.linalg.svdvals of the n^2 C x C frequency responses); cpp / triton / cuda run "
        "`lipkernels.conv_spectral_norm(weight, n, iters=T)`: T power iterations on every "
        "frequency's real 2C x 2C form in one fused power_iteration launch. The speed-up is the "
        "exact SVD's time over the estimate's. No reference-compile (the reference row is the "
        "SVD), and no peer: deel-torchlip 1.0.5 has no conv operator norm",
        "- ortho_err: |norm - exact| / exact, exact from torch.linalg.svdvals in float64 of the "
        "same filter: the float32 rounding of the reference row, the power-iteration error after "
        "T iterations (plus rounding) of the others"),
        "",
    ),
    "cayley_conv2d": ((
        "- shapes: `B{batch}-C{C}-H{H}-W{W}-k3`: x of that shape (seeded standard normal) and the "
        "seeded C x C x 3 x 3 filter of the conv suites, circular padding; the Cayley paper's "
        "layers 32@32x32, 64@16x16 (KWLarge) and 64@32x32, 128@16x16, 256@8x8, 512@4x4 "
        "(ResNet9), at batch 128 and 256 in float32 and bfloat16 with --full (default: the first "
        "two at batch 128, float32). cayley_conv2d fwd: y = cayley_conv2d(x, weight); fwd+bwd: y "
        "and the gradients w.r.t. x and the filter of sum(y * fixed seeded random weights). "
        "cayley_conv2d_eval (mode eval): inference of a CayleyConv2d holding the filter, no "
        "gradient; the reference row recomputes the transforms on every call as the seed code "
        "does, the backends' rows use the layer's cache. fft_conv2d (mode eval, reference only): "
        "a plain circular FFT convolution with the filter's spectrum precomputed, the yardstick "
        "of cached inference. Peer: orthogonium 0.0.4's legacy Cayley layer (the seed's "
        "CayleyConv) on the same filter, float32 only",
        "- ortho_err: max over the batch of | ||y_b|| / ||x_b|| - 1 | (float64 norms; the map "
        "is orthogonal, so this is rounding); none for fft_conv2d"),
        "- reference-compile: not run (the reference's batched solve and FFTs are library "
        "calls that inductor does not fuse)",
    ),
}


def markdown(report: dict) -> str:
    rows = report["rows"]
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    gpu = report["device_type"] == "cuda"
    lines = [
        f"# lipkernels benchmarks: {report['suite']} on {report['device']}",
        "",
        f"- date {report['date']}, commit `{report['commit']}`, torch {report['torch']}, "
        f"triton {report['triton']}, CUDA {report['cuda']}",
        f"- grid: {report['grid']} ({'all seed shapes' if report['grid'] == 'full' else 'reduced'}"
        "; `python -m lipkernels.bench --full` runs the whole grid)",
        f"- providers: {', '.join(providers)}",
        "- not run: " + ("; ".join(f"{name}: {why}" for name, why in report["not_run"].items())
                         or "none"),
        f"- median_ms: {report['timing']}",
        "- speed-up vs reference: the reference row's median over this row's median, same op, "
        "shape, dtype and mode, this run only",
        "- peak MB: " + ("CUDA memory allocated at the peak of one call beyond the tensors already "
                         "resident (the inputs), from torch.cuda.max_memory_allocated" if gpu else
                         "not measured on the CPU (null): torch's CPU allocator keeps no peak "
                         "statistics and the process RSS high-water mark is not per call"),
        *SUITE_NOTES[report["suite"]][0],
    ]
    if SUITE_NOTES[report["suite"]][1] and ("reference-compile" in providers
                                            or report["suite"] == "soc_exp"):
        # soc_exp runs reference-compile only with --full: the line says why it is absent.
        lines.append(SUITE_NOTES[report["suite"]][1])
    if report["load_average"] is not None:
        lines.append(f"- CPU load average (1, 5, 15 min) when written: {report['load_average']} "
                     f"on {report['cpu_count']} cores (above the core count, other processes "
                     "competed for the cores: timings slower and noisier)")
    if report["skipped_for_time"]:
        lines.append(f"- **truncated**: {report['skipped_for_time']} measurements not run "
                     "(--time-limit reached)")
    if report["failures"]:
        lines += ["", "## Failures", ""]
        lines += [f"- {f['op']} {f['shape']} {f['mode']} {f['provider']}: {f['error']}"
                  for f in report["failures"]]
    lines += ["", "## Speed-up summary", "", summary(rows), "## Rows", "", table(rows)]
    return "\n".join(lines)
