"""Shared test machinery: the backend/device grid and the accuracy rule.

Accuracy rule (docs/design.md §4, after flash-attention's): run the reference twice, in float64
(the "exact" answer) and in the kernel's own precision. The kernel's error against the exact
answer must be at most twice the reference's own error in that precision, or within the
precision's relative tolerance, whichever is larger.
"""

from __future__ import annotations

import math

import pytest
import torch

import lipkernels

# Relative tolerance per precision, as a fraction of the largest |exact| entry.
RELATIVE_TOLERANCE = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 5e-3,
    torch.bfloat16: 4e-2,
}

# (device, backend) pairs of the compiled and Triton kernels. CUDA pairs carry the `gpu` mark.
KERNEL_TARGETS = [
    pytest.param("cpu", "cpp", id="cpu-cpp"),
    pytest.param("cpu", "triton", id="cpu-triton"),
    pytest.param("cuda", "cuda", id="cuda-cuda", marks=pytest.mark.gpu),
    pytest.param("cuda", "triton", id="cuda-triton", marks=pytest.mark.gpu),
]

# Every backend, the reference included, for tests of behaviour every backend must share.
# The Triton kernels on both devices, for tests that steer their launchers.
TRITON_DEVICES = [pytest.param("cpu", id="cpu"),
                  pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]

ALL_TARGETS = [pytest.param("cpu", "reference", id="cpu-reference"),
               pytest.param("cuda", "reference", id="cuda-reference", marks=pytest.mark.gpu),
               *KERNEL_TARGETS]

# Precisions exercised per device: IEEE fp32/fp64 everywhere, half types where kernels use them.
CPU_DTYPES = (torch.float64, torch.float32)
GPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def require_backend(device: str, backend: str):
    """Skip (with the reason) when `backend` cannot run on `device` tensors here."""
    if backend not in lipkernels.available_backends(device):
        info = lipkernels.build_info()
        pytest.skip(f"backend {backend} unavailable on {device}: {info['extension_error'] or info}")


def require_kernel(device: str, backend: str, kernels):
    """`require_backend`, and skip when the op (its `KERNELS` dict) has no `backend` kernel."""
    require_backend(device, backend)
    if backend not in kernels:
        pytest.skip(f"no {backend} kernel of this op in this build")


def run(backend: str, fn, *args):
    """fn(*args) with `backend` selected."""
    with lipkernels.use_backend(backend):
        return fn(*args)


def custom_ops(op: str, backend: str):
    """(forward, backward) registered custom ops of `op`'s kernel `backend` (cpp/cuda share the
    C++ op; Triton's carry the suffix _triton)."""
    suffix = "_triton" if backend == "triton" else ""
    return (getattr(torch.ops.lipkernels, f"{op}{suffix}"),
            getattr(torch.ops.lipkernels, f"{op}_backward{suffix}"))


def interpreted(device: str, backend: str) -> bool:
    """Triton on CPU tensors runs through the interpreter, thousands of times slower."""
    return device == "cpu" and backend == "triton"


def gradcheck(fn, inputs, device, backend, **tolerances):
    """torch.autograd.gradcheck; under the Triton interpreter in fast mode (random projections,
    two evaluations instead of two per input element)."""
    return torch.autograd.gradcheck(fn, inputs, fast_mode=interpreted(device, backend), **tolerances)


def assert_compiled_matches_eager(loss, *inputs):
    """torch.compile(fullgraph=True) of `loss` gives the eager value and gradients w.r.t. inputs."""
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    expected = loss(*inputs)
    expected_grads = torch.autograd.grad(expected, inputs)
    actual = compiled(*inputs)
    actual_grads = torch.autograd.grad(actual, inputs)
    torch.testing.assert_close(actual, expected)
    torch.testing.assert_close(actual_grads, expected_grads)


def dtypes_for(device: str):
    return CPU_DTYPES if device == "cpu" else GPU_DTYPES


def max_error(actual: torch.Tensor, exact: torch.Tensor) -> float:
    return (actual.double() - exact.double()).abs().max().item()


def assert_within_reference_error(actual, exact, same_precision, dtype, what: str):
    """|actual - exact| <= max(2 |same_precision - exact|, tol(dtype) * max|exact|), elementwise max."""
    actual, exact, same_precision = (torch.as_tensor(t) for t in (actual, exact, same_precision))
    assert actual.shape == exact.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(exact.shape)}"
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, expected {dtype}"
    scale = max(exact.double().abs().max().item(), 1e-30)
    allowed = max(2 * max_error(same_precision, exact), RELATIVE_TOLERANCE[dtype] * scale)
    error = max_error(actual, exact)
    assert error <= allowed, f"{what}: max error {error:.3e} > allowed {allowed:.3e}"


def compare_with_reference(kernel_fn, reference_fn, inputs, dtype, names):
    """Run `kernel_fn` on `inputs` cast to `dtype`; check every output against `reference_fn`.

    `inputs` are float64 tensors (or lists of them, or ints); outputs are flattened in order and
    compared one by one, named by `names`.
    """
    def cast(value, to):
        if isinstance(value, torch.Tensor):
            return value.to(to)
        if isinstance(value, (list, tuple)):
            return type(value)(cast(v, to) for v in value)
        return value

    actual = flatten(kernel_fn(*cast(inputs, dtype)))
    exact = flatten(reference_fn(*cast(inputs, torch.float64)))
    same_precision = flatten(reference_fn(*cast(inputs, dtype)))
    assert len(actual) == len(exact) == len(names)
    for name, a, e, s in zip(names, actual, exact, same_precision):
        assert_within_reference_error(a, e, s, dtype, name)


def assert_rounded_once(kernel_fn, reference_fn, inputs, dtype, names):
    """Half-precision kernels accumulate in float32: their outputs are within one unit in the
    last place (of the largest entry) of the float64 reference run on the same rounded inputs."""
    rounded = [t.to(dtype) if isinstance(t, torch.Tensor) else
               [v.to(dtype) for v in t] if isinstance(t, list) else t for t in inputs]
    exact_inputs = [t.double() if isinstance(t, torch.Tensor) else
                    [v.double() for v in t] if isinstance(t, list) else t for t in rounded]
    actual = flatten(kernel_fn(*rounded))
    exact = flatten(reference_fn(*exact_inputs))
    ulp = torch.finfo(dtype).eps
    for name, a, e in zip(names, actual, exact):
        assert a.dtype == dtype, f"{name}: dtype {a.dtype}, expected {dtype}"
        error = max_error(a, e)
        assert error <= ulp * e.abs().max().item(), f"{name}: error {error:.3e} over one ulp"


def flatten(outputs):
    flat = []
    for value in outputs if isinstance(outputs, (list, tuple)) else [outputs]:
        flat.extend(flatten(value) if isinstance(value, (list, tuple)) else [value])
    return flat


def filter_with_spectral_gap(shape, dtype=torch.float64, device="cpu"):
    """A conv filter whose four Fantastic Four reshapes all have a large spectral gap.

    Two separable components of norms 3 and 0.3 plus small noise: every reshape has one singular
    value near 3 and the rest below ~0.4, so 40 power iterations converge past float64 rounding.
    """
    def separable():
        parts = [torch.randn(n, dtype=torch.float64) for n in shape]
        parts = [p / p.norm() for p in parts]
        return torch.einsum("o,i,h,w->oihw", *parts)

    weight = 3.0 * separable() + 0.3 * separable() + 0.01 * torch.randn(shape, dtype=torch.float64)
    return weight.to(device=device, dtype=dtype)


def matrix_with_spectrum(singular_values, rows, cols, batch=(), dtype=torch.float64,
                         device="cpu"):
    """Random matrices (*batch, rows, cols) with the given leading singular values (rest 0)."""
    k = len(singular_values)
    left = torch.linalg.qr(torch.randn(*batch, rows, k, dtype=torch.float64))[0]
    right = torch.linalg.qr(torch.randn(*batch, cols, k, dtype=torch.float64))[0]
    s = torch.tensor(singular_values, dtype=torch.float64)
    return ((left * s) @ right.transpose(-2, -1)).to(device=device, dtype=dtype)


def layer_jacobian(layer, input_shape):
    """The matrix of a bias-free layer (a linear map) on inputs of `input_shape`, from one forward
    call on the identity basis (one call: a training forward updates the vectors)."""
    n = math.prod(input_shape)
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *input_shape)
    with torch.no_grad():
        return layer(basis).reshape(n, -1)


def largest_singular_value(matrix):
    return torch.linalg.matrix_norm(matrix, ord=2).item()
