"""conv_power_iteration: the reference against the explicit matrix of the conv map (its operator
norm, its power iteration, the adjoint), every kernel backend against the reference (forward,
backward), the gradient's convention, gradcheck, opcheck, torch.compile, zero and non-finite
inputs, the persistent u, half precision and bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

import lipkernels
from lipkernels import reference
from lipkernels.ops.conv_power_iteration import KERNELS
from lipkernels.reference.conv_power_iteration import transposed_conv
from helpers import (ALL_TARGETS, KERNEL_TARGETS, assert_compiled_matches_eager,
                     assert_rounded_once, compare_with_reference, custom_ops, dtypes_for,
                     gradcheck, layer_jacobian, require_backend, require_kernel, run)

# (C_out, C_in, kernel_size, image_size, stride, padding): strides 1, 2 and mixed; paddings 0,
# 1, 2 and mixed; kernel sizes 1, 2, 3 and 5, odd and even, k_h != k_w; C_out != C_in; square
# and non-square images, with and without a last row or column that the stride skips.
GEOMETRIES = [
    (3, 2, (3, 3), (5, 6), 1, 1),
    (2, 3, (1, 1), (4, 5), 1, 0),
    (3, 2, (2, 2), (5, 4), 1, 0),
    (3, 2, (2, 2), (6, 5), 2, 1),
    (2, 2, (5, 5), (6, 6), 1, 2),
    (4, 2, (3, 2), (5, 7), 2, (1, 0)),
    (2, 3, (3, 3), (7, 7), 2, 1),
    (3, 3, (5, 3), (8, 6), (2, 1), 2),
    (2, 2, (3, 3), (6, 6), 2, 0),
    (1, 2, (3, 5), (4, 6), 1, (1, 2)),
    (2, 1, (2, 3), (5, 5), 2, 2),
    (2, 3, (1, 1), (4, 5), 2, 0),
]
GEOMETRY_IDS = [f"{o}x{i}-k{k[0]}x{k[1]}-{n[0]}x{n[1]}-s{s}-p{p}"
                for o, i, k, n, s, p in GEOMETRIES]
geometries = pytest.mark.parametrize("c_out,c_in,kernel_size,image_size,stride,padding",
                                     GEOMETRIES, ids=GEOMETRY_IDS)


def require(device, backend):
    if backend == "reference":
        require_backend(device, backend)
    else:
        require_kernel(device, backend, KERNELS)


def random_problem(c_out, c_in, kernel_size, image_size, device="cpu"):
    weight = torch.randn(c_out, c_in, *kernel_size, dtype=torch.float64, device=device)
    u = torch.randn(1, c_in, *image_size, dtype=torch.float64, device=device)
    return weight, u


def conv_matrix(weight, image_size, stride, padding):
    """The matrix (C_out H' W') x (C_in H W) of x -> conv2d(x, weight, stride, padding)."""
    return layer_jacobian(lambda x: F.conv2d(x, weight, stride=stride, padding=padding),
                          (weight.shape[1], *image_size)).T


def binomial(size):
    return torch.tensor([math.comb(size - 1, j) for j in range(size)], dtype=torch.float64)


def filter_with_spectral_gap(c_out, c_in, kernel_size):
    """A filter whose conv map's top singular value is well separated from the next distinct one.

    3 (p_1 q_1^T) x b_h x b_w + (p_2 q_2^T) x r_h x r_w, p and q orthonormal columns, b the
    positive binomial filters, r random positive ones: the map is 3 P_1 (x) T + P_2 (x) T' with
    P_1 and P_2 orthogonal in both channel spaces, so its singular values are those of 3 T and
    of T', and T, the product of the 1-D convolutions of the binomial filters, has a gap at its
    top (below 0.9 on every geometry here; a k = 1 axis repeats the top value exactly, which
    does not slow the iteration).
    """
    def orthonormal(n):
        return torch.linalg.qr(torch.randn(n, min(n, 2), dtype=torch.float64))[0]

    p, q = orthonormal(c_out), orthonormal(c_in)
    k_h, k_w = kernel_size
    weight = 3 * torch.einsum("o,i,h,w->oihw", p[:, 0], q[:, 0], binomial(k_h), binomial(k_w))
    if p.shape[1] == q.shape[1] == 2:
        weight += torch.einsum("o,i,h,w->oihw", p[:, 1], q[:, 1],
                               torch.rand(k_h, dtype=torch.float64),
                               torch.rand(k_w, dtype=torch.float64))
    return weight


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@geometries
def test_sigma_converges_to_the_operator_norm_of_the_conv_map(device, backend, c_out, c_in,
                                                              kernel_size, image_size, stride,
                                                              padding):
    require(device, backend)
    weight = filter_with_spectral_gap(c_out, c_in, kernel_size)
    M = conv_matrix(weight, image_size, stride, padding)
    exact = torch.linalg.matrix_norm(M, ord=2)
    u = torch.randn(1, c_in, *image_size, dtype=torch.float64)
    sigma, u = run(backend, lipkernels.conv_power_iteration, weight.to(device), u.to(device), 300,
                   stride, padding)
    torch.testing.assert_close(sigma.cpu(), exact, rtol=1e-10, atol=0)
    # u is a top right singular vector: M^T M u = sigma^2 u.
    u = u.reshape(-1).cpu()
    torch.testing.assert_close(M.T @ (M @ u), exact ** 2 * u, rtol=0, atol=1e-9 * exact ** 2)


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@geometries
@pytest.mark.parametrize("iters", [1, 2, 3])
def test_sigma_is_never_above_the_operator_norm(device, backend, c_out, c_in, kernel_size,
                                                image_size, stride, padding, iters):
    """sigma = <v, A u> with unit u and v: from below, however few the iterations."""
    require(device, backend)
    weight, u = random_problem(c_out, c_in, kernel_size, image_size)
    exact = torch.linalg.matrix_norm(conv_matrix(weight, image_size, stride, padding), ord=2)
    sigma, _ = run(backend, lipkernels.conv_power_iteration, weight.to(device), u.to(device),
                   iters, stride, padding)
    assert 0 < sigma.item() <= exact.item() * (1 + 1e-12)


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@geometries
def test_iterates_are_the_power_iteration_of_the_explicit_matrix(device, backend, c_out, c_in,
                                                                 kernel_size, image_size, stride,
                                                                 padding):
    """On random filters, without convergence: v = normalize(M u), u = normalize(M^T v),
    sigma = v^T M u with M the conv map's matrix."""
    require(device, backend)
    weight, u = random_problem(c_out, c_in, kernel_size, image_size)
    M = conv_matrix(weight, image_size, stride, padding)
    x = u.reshape(-1)
    for _ in range(4):
        v = F.normalize(M @ x, dim=0)
        x = F.normalize(M.T @ v, dim=0)
    sigma, u = run(backend, lipkernels.conv_power_iteration, weight.to(device), u.to(device), 4,
                   stride, padding)
    torch.testing.assert_close(sigma.cpu(), v @ M @ x, rtol=1e-12, atol=0)
    torch.testing.assert_close(u.reshape(-1).cpu(), x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("image_size", [(5, 5), (6, 6), (5, 6), (7, 4)])
@pytest.mark.parametrize("kernel_size", [(3, 3), (2, 2), (3, 2)])
@pytest.mark.parametrize("padding", [(0, 0), (1, 1), (2, 1)])
def test_transposed_conv_is_the_adjoint_at_stride_2(image_size, kernel_size, padding):
    """The output_padding (n + 2 p - k) mod 2 makes conv_transpose2d return the image's shape,
    and its matrix is the conv's transpose: <conv(a), b> = <conv_T(b), a>, odd and even sizes."""
    weight = torch.randn(3, 2, *kernel_size, dtype=torch.float64)
    stride = (2, 2)
    M = conv_matrix(weight, image_size, stride, padding)
    output_shape = F.conv2d(torch.zeros(1, 2, *image_size, dtype=torch.float64), weight,
                            stride=stride, padding=padding).shape[1:]
    adjoint = layer_jacobian(lambda b: transposed_conv(b, weight, image_size, stride, padding),
                             output_shape)
    torch.testing.assert_close(adjoint, M, rtol=0, atol=1e-14)
    a = torch.randn(1, 2, *image_size, dtype=torch.float64)
    b = torch.randn(1, *output_shape, dtype=torch.float64)
    forward = (F.conv2d(a, weight, stride=stride, padding=padding) * b).sum()
    backward = (transposed_conv(b, weight, image_size, stride, padding) * a).sum()
    torch.testing.assert_close(forward, backward, rtol=1e-13, atol=0)


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
@geometries
@pytest.mark.parametrize("iters", [1, 5])
def test_forward_matches_reference(device, backend, c_out, c_in, kernel_size, image_size, stride,
                                   padding, iters):
    require(device, backend)
    weight, u = random_problem(c_out, c_in, kernel_size, image_size, device)
    for dtype in dtypes_for(device):
        compare_with_reference(
            lambda w, x: run(backend, lipkernels.conv_power_iteration, w, x, iters, stride,
                             padding),
            lambda w, x: reference.conv_power_iteration(w, x, iters, stride, padding),
            (weight, u), dtype, ["sigma", "u"])


def _weight_gradient(fn, upstream):
    def grad(weight, u):
        weight = weight.detach().requires_grad_()
        sigma = fn(weight, u)[0]
        (sigma * upstream).backward()
        return weight.grad
    return grad


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
@geometries
def test_backward_matches_reference(device, backend, c_out, c_in, kernel_size, image_size, stride,
                                    padding):
    require(device, backend)
    weight, u = random_problem(c_out, c_in, kernel_size, image_size, device)
    upstream = -1.7
    for dtype in dtypes_for(device):
        compare_with_reference(
            _weight_gradient(lambda w, x: run(backend, lipkernels.conv_power_iteration, w, x, 3,
                                              stride, padding), upstream),
            _weight_gradient(lambda w, x: reference.conv_power_iteration(w, x, 3, stride,
                                                                         padding), upstream),
            (weight, u), dtype, ["grad_weight"])


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@pytest.mark.parametrize("stride,padding", [(1, 1), (2, (0, 1))])
def test_gradient_holds_u_and_v_constant(device, backend, stride, padding):
    """Before convergence (1 iteration), d sigma / d W is the correlation of the returned u
    with v = normalize(conv2d(u_0)): the weight gradient of conv2d(u, W) for the output
    gradient v, nothing through u or v."""
    require(device, backend)
    weight, u0 = random_problem(3, 2, (3, 2), (5, 6), device)
    weight.requires_grad_()
    sigma, u = run(backend, lipkernels.conv_power_iteration, weight, u0, 1, stride, padding)
    (grad,) = torch.autograd.grad(2.5 * sigma, weight)
    image = F.conv2d(u0, weight.detach(), stride=stride, padding=padding)
    v = image / image.norm()
    expected = 2.5 * torch.nn.grad.conv2d_weight(u, weight.shape, v, stride, padding)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@pytest.mark.parametrize("stride,padding", [(1, None), (2, 1)])
def test_gradcheck_at_convergence(device, backend, stride, padding):
    """At convergence u and v are stationary, so the correlation of u with v is the derivative
    of ||A||."""
    require(device, backend)
    weight = filter_with_spectral_gap(3, 2, (3, 2)).to(device).requires_grad_()
    u = torch.randn(1, 2, 5, 4, dtype=torch.float64, device=device)
    with lipkernels.use_backend(backend):
        assert gradcheck(lambda w: lipkernels.conv_power_iteration(w, u, 200, stride, padding)[0],
                         (weight,), device, backend, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
def test_two_calls_of_one_iteration_equal_one_call_of_two(device, backend):
    """The returned u continues the iteration: it is the whole state."""
    require(device, backend)
    weight, u = random_problem(3, 2, (3, 3), (6, 5), device)
    with lipkernels.use_backend(backend):
        _, u_1 = lipkernels.conv_power_iteration(weight, u, 1, 2, 1)
        sigma_1_1, u_1_1 = lipkernels.conv_power_iteration(weight, u_1, 1, 2, 1)
        sigma_2, u_2 = lipkernels.conv_power_iteration(weight, u, 2, 2, 1)
    torch.testing.assert_close(sigma_1_1, sigma_2, rtol=1e-14, atol=0)
    torch.testing.assert_close(u_1_1, u_2, rtol=0, atol=1e-15)
    assert (u_1 - u_2).abs().max() > 1e-3, "one iteration must differ from two"


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
def test_default_padding_is_half_the_kernel(device, backend):
    require(device, backend)
    weight, u = random_problem(2, 3, (5, 2), (6, 7), device)
    default = run(backend, lipkernels.conv_power_iteration, weight, u, 2)
    explicit = reference.conv_power_iteration(weight, u, 2, 1, (2, 1))
    torch.testing.assert_close(default, explicit, rtol=1e-13, atol=1e-15)
    assert default[1].shape == u.shape


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
def test_zero_filter_gives_zero_sigma_and_zero_gradient(device, backend):
    """A = 0: v = normalize(0) = 0 and u = 0, so sigma 0 and the gradient, the correlation of u
    with v, 0; never NaN."""
    require(device, backend)
    weight = torch.zeros(3, 2, 3, 3, device=device, requires_grad=True)
    u = torch.randn(1, 2, 5, 5, device=device)
    sigma, u = run(backend, lipkernels.conv_power_iteration, weight, u, 3)
    (grad,) = torch.autograd.grad(sigma, weight)
    assert sigma.item() == 0 and torch.isfinite(u).all()
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("where", ["weight", "u"])
@pytest.mark.parametrize("iters", [1, 3])
def test_non_finite_input_gives_nan(device, backend, bad, where, iters):
    require(device, backend)
    inputs = {"weight": torch.randn(3, 2, 3, 3, device=device),
              "u": torch.randn(1, 2, 5, 5, device=device)}
    inputs[where].view(-1)[7] = bad
    sigma, u = run(backend, lipkernels.conv_power_iteration, inputs["weight"], inputs["u"],
                   iters)
    assert torch.isnan(sigma) and torch.isnan(u).all()


def test_value_checks_raise_on_non_finite(monkeypatch):
    monkeypatch.setattr(lipkernels._checks, "VALUE_CHECKS", True)
    u = torch.randn(1, 2, 5, 5)
    u[0, 1, 2, 3] = float("inf")
    with pytest.raises(ValueError, match="u has NaN or inf"):
        lipkernels.conv_power_iteration(torch.randn(3, 2, 3, 3), u)


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
@pytest.mark.parametrize("stride,padding", [((1, 1), (1, 1)), ((2, 1), (0, 2))])
def test_opcheck(device, backend, stride, padding):
    require(device, backend)
    forward, backward = custom_ops("conv_power_iteration", backend)
    weight = torch.randn(3, 2, 3, 2, device=device, requires_grad=True)
    u = torch.randn(1, 2, 5, 6, device=device)
    torch.library.opcheck(forward, (weight, u, 2, stride, padding))
    _, u_out, v_out = forward(weight.detach(), u, 2, stride, padding)
    torch.library.opcheck(backward, (torch.randn((), device=device), u_out, v_out, (3, 2),
                                     stride, padding))


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_torch_compile_fullgraph(backend):
    require("cpu", backend)
    weight = torch.randn(3, 2, 3, 3, requires_grad=True)
    u = torch.randn(1, 2, 6, 5)

    def loss(w):
        with lipkernels.use_backend(backend):
            return lipkernels.conv_power_iteration(w, u, 3, 2, 1)[0]

    assert_compiled_matches_eager(loss, weight)


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 0)])
def test_half_precision_inputs_are_iterated_in_float32(device, backend, dtype, stride, padding):
    require(device, backend)
    weight, u = random_problem(4, 3, (3, 3), (7, 6), device)
    assert_rounded_once(
        lambda w, x: run(backend, lipkernels.conv_power_iteration, w, x, 3, stride, padding),
        lambda w, x: reference.conv_power_iteration(w, x, 3, stride, padding),
        (weight, u), dtype, ["sigma", "u"])


_W, _U = torch.randn(2, 3, 3, 3), torch.randn(1, 3, 5, 5)


@pytest.mark.parametrize("weight,u,arguments,error,message", [
    (torch.randn(2, 3, 3), _U, (), ValueError, "weight must be 4-D"),
    (torch.randn(0, 3, 3, 3), _U, (), ValueError, "weight must not be empty"),
    (torch.ones(2, 3, 3, 3, dtype=torch.int64), _U, (), TypeError, "weight must have dtype"),
    (_W, torch.randn(3, 5, 5), (), ValueError, "u must be 4-D"),
    (_W, torch.randn(2, 3, 5, 5), (), ValueError, r"u must have shape \(1, 3, 5, 5\)"),
    (_W, torch.randn(1, 2, 5, 5), (), ValueError, r"u must have shape \(1, 3, 5, 5\)"),
    (_W, _U.double(), (), TypeError, "u has dtype torch.float64"),
    (_W, torch.randn(1, 3, 5, 5, device="meta"), (), ValueError, "same device"),
    (_W, _U, (0,), ValueError, "iters must be >= 1"),
    (_W, _U, (1.0,), TypeError, "iters must be an int"),
    (_W, _U, (1, 0), ValueError, r"stride must be >= 1; got \(0, 0\)"),
    (_W, _U, (1, (2, 0)), ValueError, r"stride must be >= 1; got \(2, 0\)"),
    (_W, _U, (1, (1, 1, 1)), TypeError, "stride must be an int or a pair of ints"),
    (_W, _U, (1, 1.5), TypeError, "stride must be an int or a pair of ints"),
    (_W, _U, (1, 1, -1), ValueError, r"padding must be >= 0; got \(-1, -1\)"),
    (_W, _U, (1, 1, "same"), TypeError, "padding must be an int or a pair of ints"),
    (_W, torch.randn(1, 3, 1, 4), (1, 1, 0), ValueError,
     r"u's image padded by \(0, 0\) must be at least the filter's size \(3, 3\)"),
    (torch.randn(2, 3, 4, 1), torch.randn(1, 3, 1, 4), (1, 1, 1), ValueError,
     "the convolution output is empty"),
])
def test_bad_input_is_rejected(weight, u, arguments, error, message):
    with pytest.raises(error, match=message):
        lipkernels.conv_power_iteration(weight, u, *arguments)
