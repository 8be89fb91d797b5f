"""cayley_conv2d (Trockman & Kolter, ICLR 2021): the pixel-domain definition, orthogonality from
the exact singular values of the Jacobian, every kernel backend against the reference (forward
and backward), gradcheck, opcheck, torch.compile, half-precision inputs, NaN and input errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lipkernels
from lipkernels.ops.cayley_conv2d import KERNELS
from lipkernels.reference.cayley_conv2d import cayley_frequencies
from helpers import (
    KERNEL_TARGETS,
    RELATIVE_TOLERANCE,
    compare_with_reference,
    custom_ops,
    interpreted,
    require_backend,
    require_kernel,
    run,
)

# (C_out, C_in, H, W, k): square, tall and wide channel counts; odd, even and non-square images;
# 1x1, 3x3 and an even kernel.
SHAPES = [(4, 4, 6, 6, 3), (6, 3, 5, 7, 3), (3, 5, 6, 4, 3), (4, 4, 4, 5, 1), (2, 2, 5, 6, 2)]


def _random(shape, dtype=torch.float64, seed=0, scale=1.0, requires_grad=False):
    generator = torch.Generator().manual_seed(seed)
    real_dtype = torch.empty((), dtype=dtype).real.dtype
    t = scale * torch.randn(shape, generator=generator, dtype=real_dtype)
    if dtype.is_complex:
        t = torch.complex(t, scale * torch.randn(shape, generator=generator, dtype=real_dtype))
    return t.requires_grad_(requires_grad)


def _inputs(shape, batch=2, dtype=torch.float64, requires_grad=False):
    out_channels, in_channels, height, width, k = shape
    x = _random((batch, in_channels, height, width), dtype, seed=1, requires_grad=requires_grad)
    weight = _random((out_channels, in_channels, k, k), dtype, seed=2, scale=0.5,
                     requires_grad=requires_grad)
    return x, weight


def _circular_conv_matrix(weight, height, width):
    """M (C_out H W, C_in H W): the circular "same" cross-correlation with weight, explicitly
    (torch's padding="same" offsets: (k - 1) // 2 before, k // 2 after)."""
    out_channels, in_channels, k_h, k_w = weight.shape
    n = in_channels * height * width
    basis = torch.eye(n, dtype=weight.dtype).reshape(n, in_channels, height, width)
    padded = F.pad(basis, ((k_w - 1) // 2, k_w // 2, (k_h - 1) // 2, k_h // 2), mode="circular")
    return F.conv2d(padded, weight).reshape(n, -1).T


@pytest.fixture(params=["reference", "cpp"])
def backend(request):
    """Runs a test of lipkernels.cayley_conv2d once per CPU implementation."""
    require_backend("cpu", request.param)
    with lipkernels.use_backend(request.param):
        yield request.param


@pytest.mark.parametrize("shape", [s for s in SHAPES if s[0] == s[1]])
def test_square_matches_pixel_domain_definition(shape, backend):
    # (I + A)^{-1} (I - A) x with A = M - M^T, M the circular conv matrix: the brief's oracle.
    x, weight = _inputs(shape)
    M = _circular_conv_matrix(weight, *shape[2:4])
    A = M - M.T
    eye = torch.eye(A.shape[0], dtype=A.dtype)
    expected = torch.linalg.solve(eye + A, (eye - A) @ x.reshape(x.shape[0], -1).T).T
    y = lipkernels.cayley_conv2d(x, weight)
    torch.testing.assert_close(y, expected.reshape(y.shape), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_exact_singular_values_are_one(shape, backend):
    x, weight = _inputs(shape, batch=1)
    jacobian = torch.autograd.functional.jacobian(
        lambda image: lipkernels.cayley_conv2d(image, weight), x)
    jacobian = jacobian.reshape(x[0].numel() // shape[1] * shape[0], x[0].numel())
    singular_values = torch.linalg.svdvals(jacobian)
    expected = torch.ones(min(jacobian.shape), dtype=torch.float64)
    torch.testing.assert_close(singular_values, expected, rtol=0, atol=1e-12)


def test_identity_filter_gives_identity(backend):
    # A symmetric, real response (a centred identity kernel) has A = 0, so Q = I.
    weight = torch.zeros(3, 3, 3, 3, dtype=torch.float64)
    weight[:, :, 1, 1] = torch.eye(3, dtype=torch.float64)
    x = _random((2, 3, 5, 6))
    torch.testing.assert_close(lipkernels.cayley_conv2d(x, weight), x, rtol=0, atol=1e-14)


@pytest.mark.parametrize("device, kernel", KERNEL_TARGETS)
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_matches_reference(shape, device, kernel):
    require_kernel(device, kernel, KERNELS)
    x, weight = _inputs(shape)
    grad_y = _random((x.shape[0], shape[0], *shape[2:4]), seed=3)

    def with_grads(backend):
        def fn(x, weight):
            x, weight = x.to(device).requires_grad_(), weight.to(device).requires_grad_()
            y = run(backend, lipkernels.cayley_conv2d, x, weight)
            grads = torch.autograd.grad(y, (x, weight), grad_y.to(device=device, dtype=y.dtype))
            return (y, *grads)
        return fn

    dtypes = (torch.float64,) if interpreted(device, kernel) else (torch.float64, torch.float32)
    for dtype in dtypes:
        compare_with_reference(with_grads(kernel), with_grads("reference"), (x, weight), dtype,
                               ("y", "grad_x", "grad_weight"))


@pytest.mark.parametrize("device, kernel", KERNEL_TARGETS)
@pytest.mark.parametrize("channels", [(5, 3), (3, 5), (4, 4)])
def test_op_gradcheck_and_opcheck(channels, device, kernel):
    require_kernel(device, kernel, KERNELS)
    forward, backward = custom_ops("cayley_frequency_product", kernel)
    out_channels, in_channels = channels
    response = _random((3, out_channels, in_channels), torch.complex128, scale=0.5).to(device)
    spectrum = _random((3, in_channels, 2), torch.complex128, seed=1).to(device)
    response.requires_grad_()
    spectrum.requires_grad_()
    assert torch.autograd.gradcheck(lambda r, s: forward(r, s)[0], (response, spectrum),
                                    fast_mode=interpreted(device, kernel))
    # The core against the reference core, inverse included.
    output, inverse, solved = forward(response.detach(), spectrum.detach())
    torch.testing.assert_close(output, cayley_frequencies(response.detach(), spectrum.detach()),
                               rtol=0, atol=1e-12)
    n = min(channels)
    tall = response.detach() if out_channels >= in_channels else response.detach().mT
    A = tall[:, :n] - tall[:, :n].mH + tall[:, n:].mH @ tall[:, n:]
    eye = torch.eye(n, dtype=A.dtype, device=device)
    torch.testing.assert_close(inverse @ (eye + A), eye.expand_as(A), rtol=0, atol=1e-12)
    # The solved spectrum through which Q is applied (csrc/ops.cpp).
    top, bottom = spectrum.detach()[:, :n], spectrum.detach()[:, n:]
    expected = (inverse @ top if out_channels >= in_channels
                else inverse.mT @ (top - tall[:, n:].mT @ bottom))
    torch.testing.assert_close(solved, expected, rtol=0, atol=1e-12)
    torch.library.opcheck(forward, (response, spectrum))
    grad_output = _random(output.shape, torch.complex128, seed=2).to(device)
    torch.library.opcheck(backward, (grad_output, response.detach(), spectrum.detach(), inverse,
                                     solved))


def test_torch_compile_matches_eager(backend):
    x, weight = _inputs((4, 3, 6, 5, 3), dtype=torch.float32, requires_grad=True)
    grad_weights = _random((2, 4, 6, 5), torch.float32, seed=4)

    def loss(x, weight):
        return (lipkernels.cayley_conv2d(x, weight) * grad_weights).sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    eager_value = loss(x, weight)
    eager_grads = torch.autograd.grad(eager_value, (x, weight))
    compiled_value = compiled(x, weight)
    compiled_grads = torch.autograd.grad(compiled_value, (x, weight))
    torch.testing.assert_close(compiled_value, eager_value)
    torch.testing.assert_close(compiled_grads, eager_grads)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_half_inputs_are_computed_in_float32(dtype, backend):
    x, weight = _inputs((4, 4, 6, 6, 3), dtype=torch.float32)
    x = x.to(dtype).requires_grad_()
    y = lipkernels.cayley_conv2d(x, weight)
    assert y.dtype == dtype
    # The float32 computation on the same rounded input, rounded once to the half type.
    expected = lipkernels.cayley_conv2d(x.detach().float(), weight)
    torch.testing.assert_close(y.float(), expected, rtol=0,
                               atol=RELATIVE_TOLERANCE[dtype] * expected.abs().max().item())
    (grad,) = torch.autograd.grad(y.float().sum(), x)
    assert grad.dtype == dtype and torch.isfinite(grad).all()


def test_single_precision_is_orthogonal(backend):
    # The brief's fp32 target: max |sigma - 1| <= 1e-5 for the layer's exact singular values.
    x, weight = _inputs((4, 4, 6, 6, 3), batch=1, dtype=torch.float32)
    jacobian = torch.autograd.functional.jacobian(
        lambda image: lipkernels.cayley_conv2d(image, weight), x).reshape(x.numel(), x.numel())
    deviation = (torch.linalg.svdvals(jacobian.double()) - 1).abs().max().item()
    assert deviation <= 1e-5


def test_nan_in_gives_nan_out(backend):
    x, weight = _inputs((3, 3, 5, 5, 3))
    x[0, 1, 2, 3] = float("nan")
    assert torch.isnan(lipkernels.cayley_conv2d(x, weight)[0]).all()
    x, weight = _inputs((3, 3, 5, 5, 3))
    weight[0, 0, 0, 0] = float("inf")
    assert torch.isnan(lipkernels.cayley_conv2d(x, weight)).any()


@pytest.mark.parametrize("x_shape, w_shape, error, message", [
    ((2, 3, 4, 4), (3, 3, 5, 3), ValueError, "must fit in the"),
    ((3, 4, 4), (3, 3, 3, 3), ValueError, "x must be 4-D"),
    ((2, 3, 4, 4), (3, 3, 3), ValueError, "weight must be 4-D"),
    ((2, 3, 4, 4), (3, 2, 3, 3), ValueError, "C_in = 3"),
])
def test_bad_input(x_shape, w_shape, error, message):
    with pytest.raises(error, match=message) as info:
        lipkernels.cayley_conv2d(torch.randn(x_shape), torch.randn(w_shape))
    assert "cayley_conv2d:" in str(info.value)


def test_bad_dtype_and_device():
    with pytest.raises(TypeError, match="cayley_conv2d: x must have dtype"):
        lipkernels.cayley_conv2d(torch.randn(1, 2, 4, 4, dtype=torch.complex64),
                                 torch.randn(2, 2, 3, 3))
    with pytest.raises(ValueError, match="cayley_conv2d: weight is on meta"):
        lipkernels.cayley_conv2d(torch.randn(1, 2, 4, 4), torch.randn(2, 2, 3, 3, device="meta"))


def test_op_rejects_bad_input():
    require_backend("cpu", "cpp")
    op = torch.ops.lipkernels.cayley_frequency_product
    response = torch.randn(3, 4, 2, dtype=torch.complex64)
    # The functional API's exception types and words (tests/test_input_validation.py).
    with pytest.raises(TypeError, match="cayley_frequency_product: response must be complex64"):
        op(response.real.contiguous(), torch.randn(3, 2, 5, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"cayley_frequency_product: spectrum must have shape \(F, C_in"):
        op(response, torch.randn(3, 4, 5, dtype=torch.complex64))
    with pytest.raises(ValueError, match="cayley_frequency_product: spectrum must have the dtype"):
        op(response, torch.randn(3, 2, 5, dtype=torch.complex128))
    spectrum = torch.randn(3, 2, 5, dtype=torch.complex64)
    output, inverse, solved = op(response, spectrum)
    backward = torch.ops.lipkernels.cayley_frequency_product_backward
    with pytest.raises(ValueError, match="cayley_frequency_product_backward: inverse must be"):
        backward(output, response, spectrum, inverse[:, :1], solved)
    with pytest.raises(ValueError, match="cayley_frequency_product_backward: solved must be"):
        backward(output, response, spectrum, inverse, solved.mT)

