"""Backend selection: which implementation of an op runs for a given device.

Every op has up to four implementations (docs/design.md §2):

* ``reference``: pure PyTorch, always available, the oracle the others are tested against;
* ``cpp``: C++ kernels in ``lipkernels._C`` for CPU tensors;
* ``cuda``: C++/CUDA kernels in ``lipkernels._C`` for CUDA tensors (built when torch has CUDA
  and nvcc is found);
* ``triton``: Triton kernels for CUDA tensors, and for CPU tensors when the Triton interpreter is
  on (``TRITON_INTERPRET=1`` set before import, as the tests do).

The choice comes from ``lipkernels.use_backend(name)`` (a context manager) or, outside of one, from
the environment variable ``LIPKERNELS_BACKEND`` read at import; the default is ``auto``.
``auto`` picks, per op and device, the fastest implementation that has passed its tests on that
kind of device: ``cpp`` then ``reference`` on the CPU; on a GPU, ``cuda`` or ``triton`` only once
listed in ``GPU_VALIDATED`` (a kernel that has never passed on a real GPU is not chosen),
otherwise ``reference``. An explicit backend that cannot run raises a ``RuntimeError`` naming what
is missing; nothing falls back silently.

Transforms (docs/design.md §2). The kernel ops have hand-written backward formulas only: no
forward-mode derivative, no batching rule, no torch.func support. So a call whose tensors carry
a torch.func transform (``vmap``, ``grad``/``vjp``/``jacrev``, ``jvp``/``jacfwd``:
functorch-wrapped inputs) or a forward-mode AD tangent (``torch.autograd.forward_ad`` dual
tensors) runs the reference under ``auto``, which is pure PyTorch and composes with every
transform; an explicitly chosen kernel backend raises a ``RuntimeError`` naming the op, the
backend and the transform. Inputs captured from outside a transform (plain tensors) do not
count: the kernels handle them. While torch.compile traces, only whether a transform is active
can be traced (not which, nor which tensors it wraps, nor dual tensors): then any active
transform counts, and plain compiled calls keep their kernels. Double backward is the kernel
ops' own business: their registered backward passes (``lipkernels.ops``) compute
differentiably, or raise, when a graph of the gradient is asked for.

The selection is kept in a plain module attribute (not a thread-local or context variable) so
that ``torch.compile(fullgraph=True)`` traces through it; set it from one thread at a time.
"""

from __future__ import annotations

import contextlib
import importlib
import os

import torch

from ._autograd import has_tangent, transforms

BACKENDS = ("reference", "cpp", "triton", "cuda")
CHOICES = ("auto",) + BACKENDS

# (op, backend) pairs whose GPU kernels have passed the test suite on a real GPU. `auto` picks a
# GPU kernel only from here. Extend it only with a committed GPU results log under
# benchmarks/results/ that shows the op's tests passing.
GPU_VALIDATED: dict[str, tuple[str, ...]] = {}

# On a GPU, prefer the hand-written CUDA kernel, then Triton.
_GPU_PREFERENCE = ("cuda", "triton")


def _check_choice(name: str, source: str) -> str:
    if name not in CHOICES:
        raise ValueError(f"{source} must be one of {', '.join(CHOICES)}; got {name!r}")
    return name


class _Selection:
    backend = _check_choice(os.environ.get("LIPKERNELS_BACKEND", "auto").strip().lower() or "auto",
                            "LIPKERNELS_BACKEND")


_selection = _Selection()


def _load_extension():
    """Import lipkernels._C; return (module or None, reason it is missing or None)."""
    try:
        return importlib.import_module("lipkernels._C"), None
    except ImportError as error:  # not built: the package still works with the reference
        return None, f"lipkernels._C could not be imported ({error})"


def _load_triton():
    try:
        triton = importlib.import_module("triton")
    except ImportError as error:
        return None, f"triton is not installed ({error})"
    return triton.__version__, None


_extension, _extension_error = _load_extension()
_compiled = tuple(_extension.compiled_backends().split(",")) if _extension is not None else ()
_triton_version, _triton_error = _load_triton()
_triton_interpreted = os.environ.get("TRITON_INTERPRET", "0") == "1"


def extension_loaded() -> bool:
    """Whether lipkernels._C (the C++ and, if compiled, CUDA kernels) was imported."""
    return _extension is not None


def triton_importable() -> bool:
    return _triton_version is not None


def _unavailable_reason(backend: str, device_type: str) -> str | None:
    """Why `backend` cannot run on `device_type` tensors now; None when it can."""
    if backend == "reference":
        return None
    if backend == "cpp":
        if device_type != "cpu":
            return f"the cpp backend runs on CPU tensors, not {device_type} (use cuda or triton)"
        return _extension_error
    if backend == "cuda":
        if device_type != "cuda":
            return f"the cuda backend runs on CUDA tensors, not {device_type} (use cpp)"
        if _extension_error:
            return _extension_error
        if "cuda" not in _compiled:
            return ("lipkernels._C was built without CUDA kernels (reinstall with a CUDA build of "
                    "torch and nvcc, LIPKERNELS_BUILD_CUDA=1)")
        return None
    if backend == "triton":
        if _triton_error:
            return _triton_error
        if _extension_error:
            return f"the Triton ops take their schemas from lipkernels._C: {_extension_error}"
        if device_type == "cpu" and not _triton_interpreted:
            return ("Triton kernels run on CPU tensors only under the Triton interpreter "
                    "(set TRITON_INTERPRET=1 before importing lipkernels)")
        if device_type not in ("cpu", "cuda"):
            return f"Triton kernels do not run on {device_type} tensors"
        return None
    raise ValueError(f"unknown backend {backend!r}")


def available_backends(device: str | torch.device) -> list[str]:
    """The backends that can run ops on tensors of `device` ("cpu" or "cuda") in this process."""
    device_type = torch.device(device).type
    return [name for name in BACKENDS if _unavailable_reason(name, device_type) is None]


def selected_backend() -> str:
    """The current choice: "auto" or a backend name."""
    return _selection.backend


@contextlib.contextmanager
def use_backend(name: str):
    """Run the ops inside the block with backend `name` ("auto", "reference", "cpp", "triton",
    "cuda"). An explicit backend that cannot run for an op's input raises when the op is called."""
    previous = _selection.backend
    _selection.backend = _check_choice(name, "use_backend(name)")
    try:
        yield
    finally:
        _selection.backend = previous


# The torch.func transforms a kernel op cannot follow, by functorch interpreter type, as named in
# errors. Functionalization is absent: the kernel ops mutate nothing, so it passes them through.
_TRANSFORM_NAMES = {
    torch._C._functorch.TransformType.Vmap: "torch.func.vmap",
    torch._C._functorch.TransformType.Grad: "torch.func.grad/vjp/jacrev",
    torch._C._functorch.TransformType.Jvp: "torch.func.jvp/jacfwd",
}


def active_transform(tensors) -> str | None:
    """The transform that the call on `tensors` runs under, named for an error message, or None.

    A torch.func transform counts when one of `tensors` is functorch-wrapped (the innermost
    transform is named), or, while torch.compile traces, whenever one is active; forward-mode AD
    when one of them carries a tangent at the current dual level (not checked while compiling).
    """
    kinds = transforms(tensors)
    if None in kinds:
        return "a torch.func transform under torch.compile"
    names = [_TRANSFORM_NAMES[kind] for kind in kinds if kind in _TRANSFORM_NAMES]
    if names:
        return names[-1]
    if not torch.compiler.is_compiling() and has_tangent(tensors):
        return "forward-mode AD (torch.autograd.forward_ad dual tensors)"
    return None


def resolve(op: str, device_type: str, kernels, *tensors: torch.Tensor) -> str:
    """The backend that runs `op` on `device_type` tensors under the current selection.

    `kernels` names the kernel backends `op` has in this build (its registered ops); the
    reference is always there. `tensors` are the op's tensor inputs: under a torch.func transform
    or forward-mode AD (`active_transform`) `auto` gives the reference and an explicit kernel
    backend is an error.
    """
    wanted = _selection.backend
    transform = active_transform(tensors)
    if wanted != "auto":
        reason = _unavailable_reason(wanted, device_type)
        if reason is None and wanted != "reference" and wanted not in kernels:
            reason = f"{op} has no {wanted} kernel in this build"
        if reason is not None:
            raise RuntimeError(f"lipkernels.{op}: backend {wanted!r} is not available: {reason}")
        if transform is not None and wanted != "reference":
            raise RuntimeError(
                f"lipkernels.{op}: the {wanted} backend does not support {transform} (kernel ops "
                f"have no batching rule, forward-mode derivative or torch.func autograd); run it "
                f"with lipkernels.use_backend('reference'), or 'auto', which picks the reference "
                f"under torch.func transforms and forward-mode AD")
        return wanted
    if transform is not None:
        return "reference"
    if device_type == "cpu":
        usable = "cpp" in kernels and _unavailable_reason("cpp", "cpu") is None
        return "cpp" if usable else "reference"
    for backend in _GPU_PREFERENCE:
        if (backend in GPU_VALIDATED.get(op, ()) and backend in kernels
                and _unavailable_reason(backend, device_type) is None):
            return backend
    return "reference"


def build_info() -> dict:
    """What was compiled, what can run now, and which GPU kernels are validated."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    from . import __version__

    return {
        "version": __version__,
        "torch": torch.__version__,
        "triton": _triton_version,
        "cuda": torch.version.cuda,
        "compiled": list(_compiled),
        "extension_error": _extension_error,
        "triton_interpreter": _triton_interpreted,
        "usable": {device: available_backends(device) for device in devices},
        "validated_on_gpu": {op: list(backends) for op, backends in GPU_VALIDATED.items()},
        "selected": _selection.backend,
    }
