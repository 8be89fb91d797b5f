"""The core of the benchmark harness: what a suite declares (``Op``, ``Case``, ``Suite``), the
seeded data several suites share, the error measures, and the timing of one task
(``Measurement``) with its clock and budget."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import statistics
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import torch

from lipkernels._conventions import bound_matrix_shapes
from lipkernels._spectral import bound_matrices

DTYPE = torch.float32  # the dtype of every case that does not name another


def seeded_normal(key: str, shape) -> torch.Tensor:
    """Random data that depends only on `key`: every provider, mode and run sees the same values."""
    generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


# ----------------------------------------------------------------------------------------------
# Data shared by several suites

@dataclasses.dataclass(frozen=True)
class Filter:
    """A seeded square conv filter (C, C, k, k): the data of the conv suites."""

    channels: int
    k: int

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.channels, self.channels, self.k, self.k)

    @property
    def label(self) -> str:
        return f"C{self.channels}-C{self.channels}-k{self.k}"

    @property
    def bound_scale(self) -> float:
        return math.sqrt(self.k * self.k)  # sqrt(k_h k_w) of the Fantastic Four bound

    def weight(self) -> torch.Tensor:
        return seeded_normal(self.label, self.shape) / math.sqrt(self.channels * self.k ** 2)

    def inputs(self):
        """(weight, the four right vectors), float32 on the CPU."""
        vectors = tuple(unit_rows(seeded_normal(f"{self.label}/u{q}", (cols,)))
                        for q, (_, cols) in enumerate(bound_matrix_shapes(self.shape)))
        return self.weight(), vectors

    def exact_sigmas(self) -> torch.Tensor:
        return _exact_filter_sigmas(self)


@functools.cache
def _exact_filter_sigmas(data: Filter) -> torch.Tensor:
    """sigma_max of M_1..M_4, float64, once per filter (shared by the spectral-norm suites)."""
    return torch.stack([torch.linalg.svdvals(m)[0]
                        for m in bound_matrices(data.weight().double())])


class OnFilter:
    """The data of a suite built on the seeded square filter (`Filter`) of its `channels` and
    `k`."""

    channels: int
    k: int

    @property
    def filter(self) -> Filter:
        return Filter(self.channels, self.k)


@dataclasses.dataclass(frozen=True)
class Activations(OnFilter):
    """Seeded inputs of a convolution layer: activations x (batch, C, size, size), random normal,
    and the seeded C x C x k x k filter of `Filter` (subclasses transform it, `filter_tensor`)."""

    batch: int
    channels: int
    size: int
    k: int = 3

    @property
    def label(self) -> str:
        return f"B{self.batch}-C{self.channels}-H{self.size}-W{self.size}-k{self.filter.k}"

    def inputs(self):
        """((x, filter), the fixed random weights of the fwd+bwd loss sum(y * weights)),
        float32."""
        shape = (self.batch, self.channels, self.size, self.size)
        return ((seeded_normal(self.label, shape), self.filter_tensor()),
                seeded_normal(f"{self.label}/dy", shape))

    def filter_tensor(self) -> torch.Tensor:
        return self.filter.weight()


# ----------------------------------------------------------------------------------------------
# Error measures: (first call's output in float64 on the CPU, data) -> the row's error

def relative_error(exact: Callable) -> Callable:
    """The error of a spectral-norm op: max |estimate - exact| / exact, exact(data) in float64."""
    def error(estimate, data):
        return ((estimate - exact(data)).abs() / exact(data)).max().item()

    return error


def norm_ratio_error(y, data: Activations) -> float:
    """The error of an orthogonal layer: max over the batch of | ||y_b|| / ||x_b|| - 1 |."""
    x = cpu_inputs(data)[0][0].double()
    return (y.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1) - 1).abs().max().item()


def no_error(y, data) -> None:
    """For an op that is not an orthogonal map nor a norm estimate: no error column value."""
    return None


# ----------------------------------------------------------------------------------------------
# What a suite declares

@dataclasses.dataclass(frozen=True)
class PeerAdapter:
    """A peer library's implementation of an op: `factory()` is called once per measurement, so
    that a stateful peer starts fresh in each; it runs on `dtypes` only (None: every dtype)."""

    factory: Callable[[], Callable]
    dtypes: tuple[torch.dtype, ...] | None = None


def _sum_loss(output, state):
    return output.sum()


def weighted_sum_loss(y, dy):
    """The fwd+bwd loss of a layer's output y: sum(y * dy), dy fixed seeded random weights (the
    state of `Activations`)."""
    return (y * dy).sum()


# eq=False: an op is one object, compared and hashed by identity (its fields hold dicts).
@dataclasses.dataclass(frozen=True, eq=False)
class Op:
    """One op of a suite: how a provider's implementation is called on a case's inputs, how the
    row's error is measured, and which implementations other than the op of
    `lipkernels.reference` / `lipkernels` each provider runs."""

    name: str
    # (implementation, input(s), state, case) -> the differentiable output (sigma, bound(s), y)
    estimate: Callable
    # (first call's output in float64 on the CPU, data) -> the row's `error_field`
    error: Callable
    error_field: str = "ortho_err"
    # (output, state) -> the loss whose gradient w.r.t. the input(s) fwd+bwd computes
    loss: Callable = _sum_loss
    # The estimate runs its own backward (a training step): fwd+bwd adds nothing to it.
    trains: bool = False
    # A whole-model workload rather than a lipkernels function: every provider runs the function
    # this factory returns (once per measurement) inside its own backend context.
    workload: Callable[[], Callable] | None = None
    # When the reference row is not the reference op itself (an exact baseline, the seed's
    # uncached inference, a yardstick): the factory of what it runs.
    reference_row: Callable[[], Callable] | None = None
    # (case, full) -> whether reference-compile runs the case; None: never.
    compiled_on: Callable[[Case, bool], bool] | None = None
    # The factory of the reference with the fusion a user would write by hand (reference-fused;
    # differentiated by autograd, so on the exact gradient's cases); None: no such baseline.
    hand_fused: Callable[[], Callable] | None = None
    # Whether the reference (and its hand fusion) can be captured in a CUDA graph: no host
    # synchronisation and no data-dependent control flow in a call (reference-graph).
    graphs: bool = False
    peers: Mapping[str, PeerAdapter] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Case:
    op: Op
    data: Any  # the suite's seeded data: `label` and `inputs()` -> (input(s), state)
    mode: str
    iters: int | None = None  # power iterations of the spectral-norm ops
    terms: int | None = None  # terms of the SOC exponential series (soc_exp, LipConvNet)
    grad_mode: str = "exact"  # the SOC layers' "fast" gradient: shape suffix "-fast"
    dtype: torch.dtype = DTYPE

    @property
    def shape(self) -> str:
        count = self.iters if self.terms is None else self.terms  # both are "-T" in the shape
        suffix = "" if count is None else f"-T{count}"
        return f"{self.data.label}{suffix}" + ("-fast" if self.grad_mode == "fast" else "")

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def grid(ops, data, dtypes, variants: list[dict]) -> list[Case]:
    """Every case of `ops` x `data` x `dtypes` x `variants` (keyword arguments of `Case`), in
    that nesting."""
    return [Case(op, d, dtype=dtype, **variant) for op in ops for d in data for dtype in dtypes
            for variant in variants]


@dataclasses.dataclass(frozen=True)
class Suite:
    """A benchmark suite: its ops, its grid and what its results files' header says about them."""

    name: str
    ops: tuple[Op, ...]
    cases: Callable[[bool], list[Case]]  # full -> the cases, in run order
    # The Markdown header's lines on the shapes, the providers and the error column.
    notes: tuple[str, ...]
    full_grid: str  # what --full runs, for the CLI's --help
    # The header's line on reference-compile, written when it runs, or also when it does not
    # where the line says why (`compile_note_always`).
    compile_note: str = ""
    compile_note_always: bool = False


@dataclasses.dataclass(frozen=True)
class Task:
    """One measurement: a case of a suite on one provider."""

    suite: str
    case: Case
    provider: Any  # providers.Provider

    @property
    def id(self) -> str:
        case = self.case
        dtype = "" if case.dtype == DTYPE else f"-{case.dtype_name}"
        return f"{case.op.name}-{case.shape}{dtype}-{case.mode}-{self.provider.name}"

    @property
    def group(self) -> str:
        """The rows a speed-up compares: one op, shape, dtype and mode."""
        case = self.case
        return f"{case.op.name}-{case.shape}-{case.dtype_name}-{case.mode}"


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


GRAPH_WARMUP_CALLS = 3


def cuda_graphed(target: Callable[[], Any]) -> Callable[[], Any]:
    """`target` captured once in a CUDA graph, as a user removes launch overhead from a loop of
    small kernels: a call replays the graph (the same kernels on the same tensors) and returns
    the output tensors of the capture, which the replay overwrites. Warm-up calls on a side
    stream first, as capture requires (autograd and cuBLAS allocate their workspaces there)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(GRAPH_WARMUP_CALLS):
            target()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = target()

    def replay():
        graph.replay()
        return output

    return replay


@functools.cache
def clock(device: str) -> Callable[[], float]:
    """Seconds, for timing one call as clock() - clock(): wall clock on the CPU, CUDA events on a
    GPU. One instance per device, so that pytest-benchmark calibrates it once."""
    return _CudaEventClock() if device == "cuda" else time.perf_counter


# Consecutive tasks share their data (one case, every provider and mode); generating a 2048-channel
# 3x3 filter takes a noticeable part of a second.
@functools.lru_cache(maxsize=2)
def cpu_inputs(data):
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
    (`Op.loss`: the estimate's sum; soc_exp: sum(y * fixed weights)) w.r.t. its input(s) (the
    weight; soc_exp: x and S); it returns the op's output (sigma, bound(s), y).
    """

    def __init__(self, task: Task, device: str, budget: Budget | None = None):
        self.task, self.device = task, device
        self.budget = budget or BUDGETS[device]
        self.clock = clock(device)
        self._stack = contextlib.ExitStack()

    def __enter__(self):
        case = self.task.case
        op = case.op
        weight, state = (_to(t, self.device, case.dtype) for t in cpu_inputs(case.data))
        backward = case.mode == "fwd+bwd" and not op.trains
        for tensor in (weight,) if isinstance(weight, torch.Tensor) else weight:
            tensor.requires_grad_(backward and tensor.is_floating_point())
        implementation = self.task.provider.implementation(op)

        def target():
            estimate = op.estimate(implementation, weight, state, case)
            if backward:
                torch.autograd.grad(op.loss(estimate, state), weight)
            return estimate

        self.target = self._eager_target = target
        self._stack.enter_context(self.task.provider.context())
        try:
            self._first_estimate = target().detach()
            if self.device == "cuda" and self.task.provider.graphs(op):
                self.target = cuda_graphed(target)
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
        # A graph's replay allocates nothing (its memory was taken at capture): the eager call's
        # peak is the memory the computation needs.
        self._eager_target()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20

    def _error(self) -> float | None:
        """The op's error measure (`Op.error`) of the first call's output."""
        case = self.task.case
        return case.op.error(self._first_estimate.double().cpu(), case.data)

    def row(self, median_ms: float) -> dict:
        """The row of docs/design.md §5; its last field is the op's `error_field`."""
        case = self.task.case
        return {"op": case.op.name, "provider": self.task.provider.name, "shape": case.shape,
                "dtype": case.dtype_name, "mode": case.mode, "median_ms": median_ms,
                "peak_mem_mb": self._peak_memory_mb(), case.op.error_field: self._error()}
