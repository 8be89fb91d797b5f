"""The providers: the implementations a benchmark compares. The reference, torch.compile of the
reference (default and max-autotune), the reference captured in a CUDA graph, the reference fused by hand, each lipkernels
backend, and the peer libraries; what a provider runs for an op beyond the op of
`lipkernels.reference` / `lipkernels` is the op's to declare (`core.Op`), so adding a suite adds
nothing here."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from collections.abc import Callable

import torch

import lipkernels
from lipkernels import reference

from .core import Case, Op


class Provider:
    """One implementation of the ops. `implementation(op)` is None where it has none; where
    `graphs(op)`, each timed call on a GPU replays a CUDA graph of the call
    (`core.cuda_graphed`)."""

    name: str

    def implementation(self, op: Op) -> Callable | None:
        raise NotImplementedError

    def covers(self, case: Case, full: bool) -> bool:
        return self.implementation(case.op) is not None

    def context(self):
        return contextlib.nullcontext()

    def graphs(self, op: Op) -> bool:
        return False


def _reference_of(op: Op) -> Callable:
    """What the reference row of `op` runs: its own reference row, its workload (on the reference
    backend) or the op of `lipkernels.reference`."""
    if op.reference_row:
        return op.reference_row()
    return op.workload() if op.workload else getattr(reference, op.name)


class Reference(Provider):
    name = "reference"

    def implementation(self, op):
        return _reference_of(op)

    def context(self):
        # Model workloads call the public layers, which dispatch: pin them to the reference.
        return lipkernels.use_backend("reference")


class CompiledReference(Reference):
    """torch.compile of the reference, on the cases each op chooses (`Op.compiled_on`: inductor
    unrolls the reference's Python loops, and compiles slowly). dynamic=True, so that one compiled
    graph serves a whole column of shapes (one compile per op, iteration count, mode and kernel
    size) instead of one per shape; its compile time falls in the untimed first call. An op whose
    reference is a workload (a stateless function of the public ops, where `Op.compiled_on` picks
    cases) is compiled and run on the reference backend, as its reference row runs."""

    name = "reference-compile"

    def implementation(self, op):
        return _compiled_reference(op)

    def covers(self, case, full):
        return case.op.compiled_on is not None and case.op.compiled_on(case, full)


@functools.cache
def _compiled_reference(op: Op):
    # One compiled function per op sees every shape, iteration count, kernel size and grad mode;
    # dynamo's default of 8 graphs per function would silently fall back to eager past that.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(_reference_of(op), dynamic=True)


class AutotunedReference(CompiledReference):
    """torch.compile(mode="max-autotune") of the reference (GPU only), on the cases of
    `Op.compiled_on`: inductor times its own kernel choices (its GEMM and convolution templates
    against cuBLAS and cuDNN, Triton launch configurations) for each shape and replays the result
    from CUDA graphs, the strongest baseline a user gets without writing kernels. Static shapes,
    since it tunes each one; its tuning falls in the untimed first call."""

    name = "reference-autotune"

    def implementation(self, op):
        return _autotuned_reference(op)


@functools.cache
def _autotuned_reference(op: Op):
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(_reference_of(op), mode="max-autotune", dynamic=False)


class GraphedReference(Reference):
    """The reference captured once in a CUDA graph and replayed (GPU only), where the op says it
    can be (`Op.graphs`): what a user does against the launch overhead of the reference's loops
    (1612 launches for 50 Fantastic Four iterations)."""

    name = "reference-graph"

    def covers(self, case, full):
        return case.op.graphs

    def graphs(self, op):
        return True


class HandFusedReference(Provider):
    """The reference as a user would fuse it by hand, where the op declares it (`Op.hand_fused`):
    the other baseline beside torch.compile. It is differentiated by autograd, so it runs the
    cases of the exact gradient only. On a GPU it is also captured in a CUDA graph where the op
    can be (`Op.graphs`), as the hand fusion would be."""

    name = "reference-fused"

    def graphs(self, op):
        return op.graphs

    def implementation(self, op):
        return op.hand_fused() if op.hand_fused else None

    def covers(self, case, full):
        return case.op.hand_fused is not None and case.grad_mode == "exact"


class Backend(Provider):
    """A lipkernels backend (cpp, triton, cuda) through the public functional API."""

    def __init__(self, name: str):
        self.name = name

    def implementation(self, op):
        # None where the op has no lipkernels implementation (fft_conv2d, a yardstick).
        return op.workload() if op.workload else getattr(lipkernels, op.name, None)

    def context(self):
        return lipkernels.use_backend(self.name)


class Peer(Provider):
    """Another Lipschitz library, where it is installed (`module` is found): it runs the ops whose
    `Op.peers` name it, through their adapters."""

    def __init__(self, name: str, module: str):
        self.name, self.module = name, module

    def covers(self, case, full):
        adapter = case.op.peers.get(self.name)
        return adapter is not None and case.dtype in (adapter.dtypes or (case.dtype,))

    def installed(self) -> bool:
        try:
            return importlib.util.find_spec(self.module) is not None
        except ModuleNotFoundError:  # the parent package (e.g. `deel`) is missing
            return False

    def implementation(self, op):
        adapter = op.peers.get(self.name)
        return adapter.factory() if adapter else None


PEERS = (
    Peer("orthogonium", "orthogonium.reparametrizers"),
    Peer("deel-torchlip", "deel.torchlip.normalizers"),
)

KERNEL_BACKENDS = ("cpp", "triton", "cuda")
PROVIDER_NAMES = ("reference", "reference-compile", "reference-autotune", "reference-graph",
                  "reference-fused", *KERNEL_BACKENDS, *(p.name for p in PEERS))
# The providers whose first call compiles for minutes: timed last (`lipkernels.bench`).
COMPILING_PROVIDERS = ("reference-compile", "reference-autotune")


def select_providers(device: str, requested: list[str] | None = None):
    """(providers to run, {provider: why it does not run}) for `device`.

    Default: reference, reference-compile, reference-autotune and reference-graph (both on a
    GPU) and reference-fused (on their subsets of cases), every lipkernels backend usable on the device except Triton on the
    CPU (the interpreter is orders of magnitude slow), and the installed peers. A requested
    provider that cannot run is an error naming the reason.
    """
    usable = lipkernels.available_backends(device)
    reasons = {}
    if device != "cuda":
        reasons["reference-autotune"] = (f"max-autotune tunes GPU kernels (device {device}); "
                                         "reference-compile is torch.compile's baseline here")
        reasons["reference-graph"] = f"CUDA graphs need a GPU (device {device})"
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
    known = {p.name: p for p in (Reference(), CompiledReference(), AutotunedReference(),
                                 GraphedReference(), HandFusedReference(), *PEERS)}
    return [known.get(name) or Backend(name) for name in names], reasons
