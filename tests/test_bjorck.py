"""bjorck: the reference against the seed code (LNets' and LConvNet's bjorck_orthonormalize),
convergence to the polar factor (orthonormal columns, singular values 1, the SVD's U V^T) and of
the gradient to the polar factor's, the symmetric Jacobian the backward rests on, every kernel
backend against the reference (forward, backward, gradcheck, opcheck, torch.compile, double
backward), scaling, degenerate and bad input."""

import pytest
import torch

import lipkernels
from lipkernels import reference
from lipkernels.ops.bjorck import KERNELS
from lipkernels._conventions import bjorck_coefficients
from lipkernels.reference.bjorck import iterate
from helpers import (ALL_TARGETS, KERNEL_TARGETS, assert_compiled_matches_eager,
                     compare_with_reference, custom_ops, gradcheck, matrix_with_spectrum,
                     require_kernel, run)

# Tall, square, wide, batched, single-column and 1 x 1 matrices.
SHAPES = [(6, 4), (5, 5), (3, 7), (2, 3, 4, 3), (2, 9, 1), (1, 1)]


# Orders the Triton kernel runs (the seeds' order 1; test_triton_refuses_higher_orders).
TRITON_ORDERS = (1,)


def require(device, backend, order=1):
    if backend == "reference":
        return
    require_kernel(device, backend, KERNELS)
    if backend == "triton" and order not in TRITON_ORDERS:
        pytest.skip("the triton kernel runs order 1 only")


def well_conditioned(shape, device="cpu", dtype=torch.float64):
    """Matrices with singular values in [0.5, 2]: 30 iterations converge past float64 rounding
    from the Frobenius scaling."""
    *batch, m, n = shape
    k = min(m, n)
    values = torch.linspace(2.0, 0.5, k).tolist()
    return matrix_with_spectrum(values, m, n, batch=tuple(batch), dtype=dtype, device=device)


def polar(W):
    """U V^T of the thin SVD: the orthogonal polar factor, differentiable."""
    U, _, Vh = torch.linalg.svd(W, full_matrices=False)
    return U @ Vh


def seed_bjorck(w, beta, iters, order):
    """`bjorck_orthonormalize` of cemanil/LNets (as ColinQiyangLi/LConvNet vendors it) on one
    matrix, without its scaling: the update polynomials written out per order."""
    transposed = w.shape[0] < w.shape[1]
    if transposed:
        w = w.t()
    for _ in range(iters):
        wtw = w.t().mm(w)
        if order == 1:
            w = (1 + beta) * w - beta * w.mm(wtw)
        elif order == 2:
            w = (15 / 8) * w - (5 / 4) * w.mm(wtw) + (3 / 8) * w.mm(wtw.mm(wtw))
        elif order == 3:
            wtw2 = wtw.mm(wtw)
            w = ((35 / 16) * w - (35 / 16) * w.mm(wtw) + (21 / 16) * w.mm(wtw2)
                 - (5 / 16) * w.mm(wtw2.mm(wtw)))
        else:
            wtw2 = wtw.mm(wtw)
            w = ((315 / 128) * w - (105 / 32) * w.mm(wtw) + (189 / 64) * w.mm(wtw2)
                 - (45 / 32) * w.mm(wtw2.mm(wtw)) + (35 / 128) * w.mm(wtw2.mm(wtw2)))
    return w.t() if transposed else w


def gradients(fn):
    def grad(W, g):
        W = W.detach().requires_grad_()
        return torch.autograd.grad((fn(W) * g).sum(), W)[0]
    return grad


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(6, 4), (3, 5)])
def test_reference_matches_the_seed_code(shape, order):
    W = torch.randn(shape, dtype=torch.float64)
    beta = 0.3 if order == 1 else 0.5
    expected = seed_bjorck(W / torch.linalg.matrix_norm(W), beta, 7, order)
    torch.testing.assert_close(reference.bjorck(W, 7, beta, order), expected, rtol=1e-13,
                               atol=1e-14)
    # The seed's default_scaling, 1 / sqrt(rows cols), as a float scale.
    scale = (shape[0] * shape[1]) ** 0.5
    torch.testing.assert_close(reference.bjorck(W, 7, beta, order, scale),
                               seed_bjorck(W / scale, beta, 7, order), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@pytest.mark.parametrize("order", [1, 2, 4])
@pytest.mark.parametrize("shape", SHAPES)
def test_converges_to_the_polar_factor(device, backend, shape, order):
    require(device, backend, order)
    W = well_conditioned(shape, device)
    Q = run(backend, lipkernels.bjorck, W, 30, 0.5, order)
    torch.testing.assert_close(Q, polar(W), rtol=0, atol=1e-13)
    singular = torch.linalg.svdvals(Q)
    torch.testing.assert_close(singular, torch.ones_like(singular), rtol=0, atol=1e-13)
    Q32 = run(backend, lipkernels.bjorck, W.float(), 30, 0.5, order)
    assert Q32.dtype == torch.float32
    assert (torch.linalg.svdvals(Q32.double()) - 1).abs().max() < 1e-5


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@pytest.mark.parametrize("order", [1, 3])
@pytest.mark.parametrize("shape", [(6, 4), (5, 5), (3, 7), (2, 4, 3)])
def test_converged_gradient_is_the_polar_factors(device, backend, shape, order):
    """Once the iteration has converged the gradient is the SVD polar factor's (through the
    Frobenius scaling too, to which the polar factor is invariant)."""
    require(device, backend, order)
    W, g = well_conditioned(shape, device), torch.randn(shape, dtype=torch.float64, device=device)
    grad = gradients(lambda W: run(backend, lipkernels.bjorck, W, 30, 0.5, order))(W, g)
    torch.testing.assert_close(grad, gradients(polar)(W, g), rtol=0, atol=1e-11)


@pytest.mark.parametrize("beta,order", [(0.3, 1), (0.5, 1), (0.9, 1), (0.5, 2), (0.5, 4)])
@pytest.mark.parametrize("iters", [1, 3, 7])
def test_jacobian_of_the_iteration_is_symmetric(iters, beta, order):
    """W_0 -> W_iters is the gradient of a potential, so its vector-Jacobian product with G is
    its Jacobian-vector product along G, at every iteration count (not only once converged):
    the reason a backward needs no stored iterate."""
    W = torch.randn(6, 4, dtype=torch.float64) / 3
    G = torch.randn(6, 4, dtype=torch.float64)
    coefficients = bjorck_coefficients(beta, order)
    fn = lambda X: iterate(X, iters, coefficients)  # noqa: E731
    _, tangent = torch.func.jvp(fn, (W,), (G,))
    _, pullback = torch.func.vjp(fn, W)
    torch.testing.assert_close(pullback(G)[0], tangent, rtol=1e-13, atol=1e-13)


def check_kernel(backend, W, g, dtype, iters, beta, order):
    def kernel(W):
        return run(backend, lipkernels.bjorck, W, iters, beta, order)

    def oracle(W):
        return reference.bjorck(W, iters, beta, order)

    compare_with_reference(kernel, oracle, (W,), dtype, ["Q"])
    compare_with_reference(gradients(kernel), gradients(oracle), (W, g), dtype, ["grad_W"])


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
@pytest.mark.parametrize("shape", SHAPES[:-1])
def test_kernel_forward_and_backward_match_reference(device, backend, shape):
    """Before convergence (5 iterations from random matrices). (A 1 x 1 matrix has the exact
    gradient 0: the scaling removes every direction.)"""
    require(device, backend)
    W = torch.randn(shape, dtype=torch.float64, device=device)
    g = torch.randn(shape, dtype=torch.float64, device=device)
    for dtype in (torch.float64, torch.float32):
        for beta, order in ((0.5, 1), (0.3, 1), (0.5, 2), (0.5, 3), (0.5, 4)):
            if backend != "triton" or order in TRITON_ORDERS:
                check_kernel(backend, W, g, dtype, 5, beta, order)


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@pytest.mark.parametrize("order", [1, 2])
def test_gradcheck(device, backend, order):
    require(device, backend, order)
    W = torch.randn(2, 4, 3, dtype=torch.float64, device=device).requires_grad_()
    with lipkernels.use_backend(backend):
        assert gradcheck(lambda W: lipkernels.bjorck(W, 4, 0.5, order), (W,), device, backend)


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
@pytest.mark.parametrize("order", [1, 3])
def test_kernel_opcheck(device, backend, order):
    require(device, backend, order)
    forward, backward = custom_ops("bjorck", backend)
    W = (0.3 * torch.randn(2, 5, 3, device=device)).requires_grad_()
    torch.library.opcheck(forward, (W, 3, 0.5, order))
    Q, iterates, grams = forward(W.detach(), 3, 0.5, order)
    torch.library.opcheck(backward, (torch.randn_like(Q), W.detach(), iterates, grams, 3, 0.5,
                                     order))


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
def test_compiled_matches_eager(device, backend):
    require(device, backend)
    W = torch.randn(3, 4, 5, device=device, requires_grad=True)
    scale = torch.full((3,), 4.0, device=device, requires_grad=True)

    def loss(W, scale):
        with lipkernels.use_backend(backend):
            return lipkernels.bjorck(W, 6, 0.5, 1, scale).square().sum()

    assert_compiled_matches_eager(loss, W, scale)


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
def test_scale_tensor_and_float(device, backend):
    """A per-matrix tensor scale divides each matrix; the gradient reaches it (zero once
    converged: the polar factor does not depend on the scale)."""
    require(device, backend)
    W = well_conditioned((3, 4, 3), device)
    sigma = torch.linalg.matrix_norm(W, ord=2)
    with lipkernels.use_backend(backend):
        Q = lipkernels.bjorck(W, 5, 0.5, 1, sigma)
        torch.testing.assert_close(Q[1], lipkernels.bjorck(W[1], 5, 0.5, 1, sigma[1].item()))
        torch.testing.assert_close(Q, reference.bjorck(W / sigma[:, None, None], 5, 0.5, 1, 1.0))
        scale = (2 * sigma).requires_grad_()
        converged = lipkernels.bjorck(W, 40, 0.5, 1, scale)
        (grad_scale,) = torch.autograd.grad((converged * torch.randn_like(W)).sum(), scale)
    assert grad_scale.abs().max() < 1e-12


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
def test_rank_deficient_and_zero_matrices(device, backend):
    """Zero singular values stay zero up to their rounding, which grows by 1 + beta an
    iteration (1.5^30 u = 4e-11 here): a partial isometry; a zero matrix gives 0, not NaN."""
    require(device, backend)
    W = matrix_with_spectrum([1.5, 0.8], 5, 4, device=device)
    with lipkernels.use_backend(backend):
        singular = torch.linalg.svdvals(lipkernels.bjorck(W, 30))
        torch.testing.assert_close(singular, torch.tensor([1.0, 1.0, 0.0, 0.0],
                                                          dtype=torch.float64, device=device),
                                   rtol=0, atol=1.5 ** 30 * 2 ** -52)
        zero = torch.zeros(2, 3, 3, device=device)
        assert torch.equal(lipkernels.bjorck(zero), zero)


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_computes_in_float32(device, backend, dtype):
    require(device, backend)
    W = well_conditioned((4, 3), device).to(dtype)
    with lipkernels.use_backend(backend):
        Q = lipkernels.bjorck(W, 30)
    assert Q.dtype == dtype
    torch.testing.assert_close(Q, reference.bjorck(W.float(), 30).to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
def test_double_backward(device, backend):
    """A gradient penalty: the derivative of the gradient, against the reference's plain
    autograd."""
    require(device, backend)
    W = torch.randn(4, 3, dtype=torch.float64, device=device)
    g = torch.randn(4, 3, dtype=torch.float64, device=device)

    def second_derivative(fn):
        leaf = W.detach().requires_grad_()
        (grad,) = torch.autograd.grad((fn(leaf) * g).sum(), leaf, create_graph=True)
        return torch.autograd.grad(grad.square().sum(), leaf)[0]

    actual = second_derivative(lambda W: run(backend, lipkernels.bjorck, W, 4))
    torch.testing.assert_close(actual, second_derivative(lambda W: reference.bjorck(W, 4)))


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
def test_empty_batch(device, backend):
    require(device, backend)
    W = torch.randn(0, 4, 3, device=device, requires_grad=True)
    with lipkernels.use_backend(backend):
        Q = lipkernels.bjorck(W)
        assert Q.shape == (0, 4, 3)
        (grad,) = torch.autograd.grad(Q.sum(), W)
    assert grad.shape == (0, 4, 3)


def test_bad_input():
    W = torch.randn(4, 3)
    cases = [
        (lambda: lipkernels.bjorck(torch.randn(4)), ValueError, "bjorck: W must have at least 2"),
        (lambda: lipkernels.bjorck(torch.ones(3, 3, dtype=torch.int64)), TypeError,
         "bjorck: W must have dtype"),
        (lambda: lipkernels.bjorck(W, 0), ValueError, "bjorck: iters must be >= 1"),
        (lambda: lipkernels.bjorck(W, 2.0), TypeError, "bjorck: iters must be an int"),
        (lambda: lipkernels.bjorck(W, beta=1.0), ValueError, r"bjorck: beta must be in \(0, 1\)"),
        (lambda: lipkernels.bjorck(W, beta="x"), TypeError, "bjorck: beta must be a float"),
        (lambda: lipkernels.bjorck(W, beta=0.4, order=2), ValueError,
         "bjorck: beta must be 0.5 for order >= 2"),
        (lambda: lipkernels.bjorck(W, order=5), ValueError, "bjorck: order must be <= 4"),
        (lambda: lipkernels.bjorck(W, scale=torch.ones(2)), ValueError,
         r"bjorck: scale must have shape \(\)"),
        (lambda: lipkernels.bjorck(W, scale=-1.0), ValueError,
         "bjorck: scale must be positive and finite"),
        (lambda: lipkernels.bjorck(W, scale="frobenius"), TypeError,
         "bjorck: scale must be None, a tensor or a float"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
def test_kernel_op_takes_tall_working_precision_matrices(device, backend):
    """The op is the tall, scaled core: the functional API transposes and casts for it."""
    require(device, backend)
    forward, _ = custom_ops("bjorck", backend)
    with pytest.raises(ValueError, match=r"bjorck: W \(\.\.\., m, n\) must have m >= n"):
        forward(torch.randn(3, 4, device=device), 2, 0.5, 1)
    with pytest.raises(TypeError, match="bjorck: W must have dtype float32, float64; got "
                                        "torch.float16"):
        forward(torch.randn(4, 3, device=device).half(), 2, 0.5, 1)


@pytest.mark.parametrize("device", [pytest.param("cpu", id="cpu"),
                                    pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)])
def test_triton_refuses_higher_orders(device):
    require_kernel(device, "triton", KERNELS)
    W = torch.randn(5, 3, device=device)
    with pytest.raises(ValueError, match="bjorck: the triton backend runs order 1 .*; got "
                                         "order=2"):
        run("triton", lipkernels.bjorck, W, 3, 0.5, 2)
