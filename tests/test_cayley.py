"""cayley (Trockman & Kolter, ICLR 2021): orthogonality, the seed formula, the Cayley-transform
identities, the closed-form backward against autograd, gradcheck, compile and input errors; every
kernel backend against the reference (forward, backward, opcheck, gradcheck, op input errors)."""

from __future__ import annotations

import pytest
import torch

import lipkernels
from lipkernels.ops.cayley import KERNELS
from lipkernels.reference.cayley import cayley_plain
from helpers import (ALL_TARGETS, KERNEL_TARGETS, RELATIVE_TOLERANCE,
                           assert_compiled_matches_eager, custom_ops, gradcheck, interpreted,
                           require_backend, require_kernel, run)

# Square, tall and wide, with and without batch dims.
SHAPES = [(5, 5), (3, 5, 5), (2, 7, 4), (2, 3, 6), (2, 2, 6, 3), (4, 1), (1, 4)]
EXACT_DTYPES = (torch.float64, torch.complex128)


@pytest.fixture(params=["reference", "cpp"])
def backend(request):
    """Runs a test of lipkernels.cayley once per CPU implementation, selected for its duration."""
    require_backend("cpu", request.param)
    with lipkernels.use_backend(request.param):
        yield request.param


def _random(shape, dtype, seed=0, requires_grad=False):
    generator = torch.Generator().manual_seed(seed)
    real_dtype = torch.empty((), dtype=dtype).real.dtype
    W = torch.randn(shape, generator=generator, dtype=real_dtype)
    if dtype.is_complex:
        W = torch.complex(W, torch.randn(shape, generator=generator, dtype=real_dtype))
    return W.requires_grad_(requires_grad)


def _seed_formula(W):
    """The seed code's cayley, transcribed with torch.inverse (the brief's oracle)."""
    wide = W.shape[-2] < W.shape[-1]
    if wide:
        W = W.transpose(-2, -1)
    n = W.shape[-1]
    U, V = W[..., :n, :], W[..., n:, :]
    I = torch.eye(n, dtype=W.dtype)
    A = U - U.conj().transpose(-2, -1) + V.conj().transpose(-2, -1) @ V
    inv = torch.inverse(I + A)
    Q = torch.cat((inv @ (I - A), -2 * V @ inv), dim=-2)
    return Q.transpose(-2, -1) if wide else Q


def _gram_error(Q):
    """max |Q^H Q - I| for tall Q, |Q Q^H - I| for wide Q."""
    gram = Q.mH @ Q if Q.shape[-2] >= Q.shape[-1] else Q @ Q.mH
    return (gram - torch.eye(gram.shape[-1], dtype=Q.dtype)).abs().max().item()


@pytest.mark.parametrize("dtype", EXACT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_orthonormal_and_matches_seed_formula(shape, dtype, backend):
    W = _random(shape, dtype)
    Q = lipkernels.cayley(W)
    assert Q.shape == W.shape and Q.dtype == dtype
    assert _gram_error(Q) < 1e-12
    torch.testing.assert_close(Q, _seed_formula(W), rtol=0, atol=1e-12)
    torch.testing.assert_close(Q, cayley_plain(W), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", EXACT_DTYPES)
def test_wide_is_plain_transpose_of_tall(dtype, backend):
    W = _random((2, 3, 6), dtype)
    Q = lipkernels.cayley(W)
    torch.testing.assert_close(Q, lipkernels.cayley(W.mT).mT, rtol=0, atol=0)
    # cayley commutes with conjugation (A and Q are polynomials and inverses in W, W^H with
    # real coefficients), so the conjugate-transpose route of a wide W gives the same Q.
    torch.testing.assert_close(lipkernels.cayley(W.conj()), Q.conj(), rtol=0, atol=1e-14)
    torch.testing.assert_close(lipkernels.cayley(W.mH).mH, Q, rtol=0, atol=1e-14)


@pytest.mark.parametrize("dtype", EXACT_DTYPES)
def test_hermitian_input_gives_identity(dtype, backend):
    # U - U^H = 0 and no V: A = 0, so Q = I; with V = 0 below a tall W, Q = [I; 0].
    H = _random((3, 4, 4), dtype)
    U = H + H.mH
    eye = torch.eye(4, dtype=dtype).expand(3, 4, 4)
    torch.testing.assert_close(lipkernels.cayley(U), eye, rtol=0, atol=1e-14)
    tall = torch.cat((U, torch.zeros(3, 2, 4, dtype=dtype)), dim=-2)
    expected = torch.cat((eye, torch.zeros(3, 2, 4, dtype=dtype)), dim=-2)
    torch.testing.assert_close(lipkernels.cayley(tall), expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("dtype", EXACT_DTYPES)
def test_square_is_cayley_transform_of_skew_part(dtype, backend):
    W = _random((3, 5, 5), dtype)
    A = W - W.mH
    I = torch.eye(5, dtype=dtype)
    Q = lipkernels.cayley(W)
    # (I + A) Q = I - A, and the two factors commute: Q = (I - A)(I + A)^{-1}.
    torch.testing.assert_close((I + A) @ Q, I - A, rtol=0, atol=1e-12)
    torch.testing.assert_close(Q @ (I + A), I - A, rtol=0, atol=1e-12)
    # Eigenvalues of a Cayley transform lie on the unit circle and never at -1.
    eigenvalues = torch.linalg.eigvals(Q)
    torch.testing.assert_close(eigenvalues.abs(), torch.ones(3, 5, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    assert ((eigenvalues + 1).abs() > 1e-6).all()


@pytest.mark.parametrize("dtype", EXACT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_closed_form_backward_matches_autograd(shape, dtype, backend):
    W = _random(shape, dtype, requires_grad=True)
    grad_out = _random(shape, dtype, seed=1)
    (custom,) = torch.autograd.grad(lipkernels.cayley(W), W, grad_out)
    (plain,) = torch.autograd.grad(cayley_plain(W), W, grad_out)
    torch.testing.assert_close(custom, plain, rtol=0, atol=1e-12 * plain.abs().max().item())


@pytest.mark.parametrize("dtype", EXACT_DTYPES)
@pytest.mark.parametrize("shape", [(4, 4), (2, 5, 3), (2, 3, 5)])
def test_gradcheck(shape, dtype, backend):
    W = _random(shape, dtype, requires_grad=True)
    assert torch.autograd.gradcheck(lipkernels.cayley, (W,))
    assert torch.autograd.gradgradcheck(cayley_plain, (W,))


def test_backward_saves_only_the_inverse_beyond_the_input(backend):
    W = _random((2, 7, 4), torch.float64, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        lipkernels.cayley(W)
    # X = (I + A)^{-1} (n x n) is the one new tensor kept; the rest (V for the reference, W for
    # the C++ op) are views of the input's own storage, so they cost no memory.
    new = [t for t in saved if t.untyped_storage().data_ptr() != W.untyped_storage().data_ptr()]
    assert [tuple(t.shape) for t in new] == [(2, 4, 4)]
    assert len(saved) == 2


@pytest.mark.parametrize("dtype", (torch.float32, torch.complex64))
@pytest.mark.parametrize("shape", [(3, 8, 8), (2, 9, 5), (2, 5, 9)])
def test_single_precision(shape, dtype, backend):
    W = _random(shape, dtype, requires_grad=True)
    exact_dtype = torch.float64 if dtype == torch.float32 else torch.complex128
    W64 = W.detach().to(exact_dtype).requires_grad_()
    Q, Q64 = lipkernels.cayley(W), lipkernels.cayley(W64)
    assert Q.dtype == dtype and _gram_error(Q) < 1e-5
    tolerance = 10 * RELATIVE_TOLERANCE[torch.float32]
    assert (Q.to(exact_dtype) - Q64).abs().max() <= tolerance * Q64.abs().max()
    grad_out = _random(shape, exact_dtype, seed=1)
    (grad,) = torch.autograd.grad(Q, W, grad_out.to(dtype))
    (grad64,) = torch.autograd.grad(Q64, W64, grad_out)
    assert grad.dtype == dtype
    assert (grad.to(exact_dtype) - grad64).abs().max() <= tolerance * grad64.abs().max()


def _require_target(device, backend):
    """Skip unless `backend` runs cayley on `device` here (the reference always has)."""
    if backend == "reference":
        require_backend(device, backend)
    else:
        require_kernel(device, backend, KERNELS)


@pytest.mark.parametrize("device, backend", ALL_TARGETS)
def test_nan_in_gives_nan_out(device, backend):
    _require_target(device, backend)
    W = _random((5, 3), torch.float64).to(device)
    W[4, 1] = float("nan")
    assert torch.isnan(run(backend, lipkernels.cayley, W)).any()


@pytest.mark.parametrize("dtype", (torch.float64, torch.complex64))
@pytest.mark.parametrize("device, backend", ALL_TARGETS)
def test_torch_compile_matches_eager(device, backend, dtype):
    _require_target(device, backend)
    W = _random((2, 6, 4), dtype).to(device).requires_grad_()
    grad_weights = _random((2, 6, 4), dtype, seed=1).to(device)

    def loss(W):
        return (lipkernels.cayley(W) * grad_weights).real.sum()

    with lipkernels.use_backend(backend):
        assert_compiled_matches_eager(loss, W)


@pytest.mark.parametrize("bad, error, message", [
    (torch.randn(4), ValueError, "at least 2 dims"),
    (torch.ones(3, 3, dtype=torch.int64), TypeError, "dtype"),
    (torch.randn(3, 3, dtype=torch.float16), TypeError, "complex128"),
    (torch.randn(0, 3), ValueError, "must not be empty"),
    ([[1.0, 0.0], [0.0, 1.0]], TypeError, "torch.Tensor"),
])
def test_bad_input(bad, error, message):
    with pytest.raises(error, match=message) as info:
        lipkernels.cayley(bad)
    assert "cayley: W" in str(info.value)


def test_unavailable_backend_is_a_clear_error():
    with lipkernels.use_backend("cuda"), pytest.raises(RuntimeError, match="not available"):
        lipkernels.cayley(torch.randn(3, 3))


# The kernels (csrc/cpu/cayley.cpp, csrc/cuda, lipkernels/triton/cayley.py) against the reference.

# Square, tall, batched, a column, wide (transposed around the op), and n = 17 > 16, the Triton
# tile: two Gauss-Jordan pivot blocks, the second partial.
KERNEL_SHAPES = [(5, 5), (2, 7, 4), (2, 2, 6, 3), (4, 1), (1, 4), (19, 17)]


@pytest.mark.parametrize("dtype", (torch.float64, torch.complex128, torch.float32, torch.complex64))
@pytest.mark.parametrize("shape", KERNEL_SHAPES)
@pytest.mark.parametrize("device, kernel", KERNEL_TARGETS)
def test_kernel_matches_reference(device, kernel, shape, dtype):
    require_kernel(device, kernel, KERNELS)
    W = _random(shape, dtype).to(device).requires_grad_()
    grad_out = _random(shape, dtype, seed=1).to(device)
    Q = run(kernel, lipkernels.cayley, W)
    Q_ref = run("reference", lipkernels.cayley, W)
    (grad,) = torch.autograd.grad(Q, W, grad_out)
    (grad_ref,) = torch.autograd.grad(Q_ref, W, grad_out)
    tolerance = RELATIVE_TOLERANCE[torch.empty((), dtype=dtype).real.dtype]
    torch.testing.assert_close(Q, Q_ref, rtol=0, atol=tolerance)
    torch.testing.assert_close(grad, grad_ref, rtol=0, atol=tolerance * grad_ref.abs().max().item())


@pytest.mark.parametrize("shape", [(2, 300, 257), (1, 512, 512)])
@pytest.mark.parametrize("device, kernel", KERNEL_TARGETS)
def test_kernel_large_matrices_match_reference(device, kernel, shape):
    """complex64 with n up to 512 (many pivot blocks of the Triton kernels): forward and
    gradient within twice the complex64 reference's error against the complex128 one."""
    require_kernel(device, kernel, KERNELS)
    if interpreted(device, kernel):
        pytest.skip("n = 512 takes minutes under the Triton interpreter")
    W = (_random(shape, torch.complex128) / shape[-1] ** 0.5).to(device)
    grad_out = _random(shape, torch.complex128, seed=1).to(device)
    exact = _value_and_grad(lipkernels.reference.cayley, W, grad_out)
    same_precision = _value_and_grad(lipkernels.reference.cayley, W.to(torch.complex64),
                                     grad_out.to(torch.complex64))
    actual = _value_and_grad(lambda W: run(kernel, lipkernels.cayley, W), W.to(torch.complex64),
                             grad_out.to(torch.complex64))
    for name, a, e, s in zip(("Q", "grad_W"), actual, exact, same_precision):
        allowed = max(2 * (s - e).abs().max().item(),
                      RELATIVE_TOLERANCE[torch.float32] * e.abs().max().item())
        assert a.dtype == torch.complex64 and (a - e).abs().max().item() <= allowed, name


def _value_and_grad(fn, W, grad_out):
    W = W.detach().requires_grad_()
    Q = fn(W)
    return Q, torch.autograd.grad(Q, W, grad_out)[0]


@pytest.mark.parametrize("dtype", EXACT_DTYPES)
@pytest.mark.parametrize("device, kernel", KERNEL_TARGETS)
def test_kernel_opcheck_and_gradcheck(device, kernel, dtype):
    require_kernel(device, kernel, KERNELS)
    forward, backward = custom_ops("cayley", kernel)
    W = _random((2, 5, 3), dtype).to(device).requires_grad_()
    torch.library.opcheck(forward, (W,))
    _, X = forward(W.detach())
    torch.library.opcheck(backward, (_random((2, 5, 3), dtype, seed=1).to(device), X, W.detach()))
    assert gradcheck(lambda W: forward(W)[0], (W,), device, kernel)


@pytest.mark.parametrize("device, kernel", KERNEL_TARGETS)
def test_kernel_op_rejects_bad_input(device, kernel):
    require_kernel(device, kernel, KERNELS)
    forward, backward = custom_ops("cayley", kernel)
    # Both kernels raise the functional API's errors (tests/test_input_validation.py).
    with pytest.raises(ValueError, match="cayley: W .* m >= n"):
        forward(torch.randn(3, 5, dtype=torch.float64, device=device))
    with pytest.raises(TypeError, match="cayley: W must have dtype float32, float64, complex64"):
        forward(torch.randn(5, 3, dtype=torch.float16, device=device))
    with pytest.raises(ValueError, match=r"cayley_backward: X must have shape \(3, 3\)"):
        backward(*(torch.randn(shape, device=device) for shape in ((5, 3), (2, 2), (5, 3))))
