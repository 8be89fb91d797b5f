"""frequency_power_iteration: the power iteration at every frequency of a circular conv, the op
behind conv_spectral_norm(iters=...). Every backend against the reference (the real-form
responses formed by an FFT, then the reference power_iteration), convergence to the exact
singular values, the closed-form gradient, gradcheck, opcheck, torch.compile, degenerate and
bad input."""

import pytest
import torch

from helpers import (ALL_TARGETS, KERNEL_TARGETS, compare_with_reference, custom_ops,
                     filter_with_spectral_gap, gradcheck, require_kernel,
                     assert_compiled_matches_eager)
from lipkernels import reference
from lipkernels._spectral import frequency_starts
from lipkernels.ops.frequency_power_iteration import KERNELS
from lipkernels.reference.frequency_power_iteration import sigma_gradient

# The op's dtypes on every device (conv_spectral_norm computes half filters in float32).
DTYPES = (torch.float64, torch.float32)
# (C_out, C_in, k_h, k_w, height, width): square and non-square filters and images, odd and
# even widths (the rfft2 half spectrum), 1 x 1 and rectangular taps, one filter as large as its
# image, and sizes past one kernel tile (16 channels, 64 frequencies).
SHAPES = [(3, 3, 3, 3, 3, 5), (2, 4, 3, 3, 4, 3), (5, 3, 3, 2, 5, 8), (3, 2, 1, 1, 2, 3),
          (4, 6, 2, 3, 2, 3), (20, 18, 3, 3, 8, 14), (9, 33, 1, 3, 4, 6)]


def entry(backend):
    return reference.frequency_power_iteration if backend == "reference" else KERNELS[backend]


def problem(c_out, c_in, k_h, k_w, height, width, device):
    weight = torch.randn(c_out, c_in, k_h, k_w, dtype=torch.float64, device=device)
    u = torch.randn(height * (width // 2 + 1), 2 * c_in, dtype=torch.float64, device=device)
    return weight, u


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("iters", [1, 6])
def test_forward_matches_reference(device, backend, shape, iters):
    require_kernel(device, backend, KERNELS)
    weight, u = problem(*shape, device)
    height, width = shape[4:]
    for dtype in DTYPES:
        compare_with_reference(
            lambda w, v: KERNELS[backend](w, v, iters, height, width),
            lambda w, v: reference.frequency_power_iteration(w, v, iters, height, width),
            (weight, u), dtype, ["sigma", "u", "v"])


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
@pytest.mark.parametrize("shape", SHAPES[1:3] + SHAPES[5:6])
def test_backward_matches_reference(device, backend, shape):
    """The closed-form gradient (the Triton op's) against autograd through the reference's FFT
    of the filter, for an upstream gradient at every frequency."""
    require_kernel(device, backend, KERNELS)
    weight, u = problem(*shape, device)
    height, width = shape[4:]
    upstream = torch.randn(u.shape[0], dtype=torch.float64, device=device)

    def weight_gradient(fn):
        def grad(w, v):
            w = w.detach().requires_grad_()
            (fn(w, v, 3, height, width)[0] * upstream.to(w.dtype)).sum().backward()
            return w.grad
        return grad

    for dtype in DTYPES:
        compare_with_reference(weight_gradient(KERNELS[backend]),
                               weight_gradient(reference.frequency_power_iteration),
                               (weight, u), dtype, ["grad_weight"])


def test_sigma_gradient_is_autograd_through_the_formed_responses():
    """sigma_gradient, the formula every backward runs where it needs a graph and the Triton
    backward always, equals autograd of v^T R_f(W) u through the FFT at fixed u and v."""
    weight, u = problem(3, 4, 3, 2, 5, 6, "cpu")
    weight.requires_grad_()
    sigma, u_out, v_out = reference.frequency_power_iteration(weight, u, 4, 5, 6)
    upstream = torch.randn(sigma.shape, dtype=torch.float64)
    expected, = torch.autograd.grad((sigma * upstream).sum(), weight)
    torch.testing.assert_close(sigma_gradient(upstream, u_out, v_out, weight.shape, 5, 6),
                               expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
def test_converges_to_the_exact_singular_values(device, backend):
    """With a spectral gap at every frequency, 60 iterations reach sigma_max(H_f) at each
    frequency to float64 rounding, and u, v are its singular pair: R_f u = sigma_f v."""
    if backend != "reference":
        require_kernel(device, backend, KERNELS)
    weight = filter_with_spectral_gap((4, 3, 3, 3), device=device)
    exact = reference.conv_singular_values(weight, (6, 5))[:, :3, 0].flatten()
    start = frequency_starts(weight, (6, 5))
    with torch.no_grad():
        sigma, u, v = entry(backend)(weight, start, 60, 6, 5)
    torch.testing.assert_close(sigma, exact, rtol=1e-10, atol=0)
    from lipkernels._spectral import realified_responses

    responses = realified_responses(weight, (6, 5))
    torch.testing.assert_close(responses @ u[..., None], (sigma[:, None] * v)[..., None],
                               rtol=0, atol=1e-9)


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
def test_gradcheck_at_convergence(device, backend):
    """At convergence u and v are stationary, so the held-constant gradient is the derivative
    of sigma_max(H_f) at every frequency."""
    require_kernel(device, backend, KERNELS)
    weight = filter_with_spectral_gap((3, 2, 3, 3), device=device).requires_grad_()
    start = frequency_starts(weight, (4, 3))
    assert gradcheck(lambda w: KERNELS[backend](w, start, 60, 4, 3)[0], (weight,), device,
                     backend, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
def test_zero_and_non_finite_filters(device, backend):
    """A zero filter gives sigma 0 and finite vectors; a NaN or inf tap reaches every frequency
    and gives NaN everywhere, never a finite number."""
    if backend != "reference":
        require_kernel(device, backend, KERNELS)
    start = frequency_starts(torch.empty(3, 4, 3, 3), (5, 4)).to(device)
    sigma, u, v = entry(backend)(torch.zeros(3, 4, 3, 3, device=device), start, 3, 5, 4)
    assert torch.equal(sigma, torch.zeros_like(sigma))
    assert torch.isfinite(u).all() and torch.isfinite(v).all()
    for bad in (float("nan"), float("inf")):
        weight = torch.randn(3, 4, 3, 3, device=device)
        weight[1, 2, 0, 1] = bad
        sigma, u, v = entry(backend)(weight, start, 3, 5, 4)
        assert torch.isnan(sigma).all() and torch.isnan(u).all() and torch.isnan(v).all()


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
def test_opcheck(device, backend):
    require_kernel(device, backend, KERNELS)
    if backend != "triton":
        pytest.skip("the cpp and cuda entries run power_iteration's ops on formed responses")
    forward, backward = custom_ops("frequency_power_iteration", backend)
    weight = torch.randn(3, 2, 3, 3, device=device, requires_grad=True)
    start = frequency_starts(weight, (4, 5)).to(device)
    torch.library.opcheck(forward, (weight, start, 2, 4, 5))
    _, u, v = forward(weight.detach(), start, 2, 4, 5)
    torch.library.opcheck(backward, (torch.randn(12, device=device), u, v, [3, 2, 3, 3], 4, 5))


def test_torch_compile_fullgraph():
    require_kernel("cpu", "triton", KERNELS)
    weight = torch.randn(3, 2, 3, 3, requires_grad=True)
    start = frequency_starts(weight, (4, 5))

    def loss(w):
        return KERNELS["triton"](w, start, 3, 4, 5)[0].sum()

    assert_compiled_matches_eager(loss, weight)


def test_double_backward_is_the_closed_form_derivative():
    """The gradient is linear in grad_sigma and constant in W: its derivative w.r.t. the
    upstream gradient is the per-frequency gradient itself, through the Triton op too."""
    require_kernel("cpu", "triton", KERNELS)
    weight = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    start = frequency_starts(weight, (3, 4))
    upstream = torch.randn(9, dtype=torch.float64, requires_grad=True)
    sigma, u, v = KERNELS["triton"](weight, start, 2, 3, 4)
    grad_weight, = torch.autograd.grad((sigma * upstream).sum(), weight, create_graph=True)
    probe = torch.randn_like(grad_weight)
    second, = torch.autograd.grad((grad_weight * probe).sum(), upstream)
    expected = torch.stack([(sigma_gradient(torch.eye(9, dtype=torch.float64)[f], u, v,
                                            weight.shape, 3, 4) * probe).sum() for f in range(9)])
    torch.testing.assert_close(second, expected)


@pytest.mark.parametrize("arguments,error,message", [
    ((torch.randn(2, 2, 3, 3, dtype=torch.float16), torch.randn(6, 4), 1, 3, 3), TypeError,
     "weight must have dtype float32, float64"),
    ((torch.randn(2, 2, 3), torch.randn(6, 4), 1, 3, 3), ValueError, "weight must be 4-D"),
    ((torch.randn(2, 2, 3, 3), torch.randn(6, 4), 1, 2, 3), ValueError,
     "height must be an int of at least the filter's size 3"),
    ((torch.randn(2, 2, 3, 3), torch.randn(6, 4), 1, 3, 0), ValueError,
     "width must be an int of at least the filter's size 3"),
    ((torch.randn(2, 2, 3, 3), torch.randn(6, 3), 1, 3, 3), ValueError,
     r"u must have shape \(6, 4\)"),
    ((torch.randn(2, 2, 3, 3), torch.randn(6, 4, dtype=torch.float64), 1, 3, 3), TypeError,
     "u has dtype torch.float64 but weight has torch.float32"),
    ((torch.randn(2, 2, 3, 3), torch.randn(6, 4), 0, 3, 3), ValueError, "iters must be >= 1"),
])
def test_bad_input_names_the_argument(arguments, error, message):
    require_kernel("cpu", "triton", KERNELS)
    forward, _ = custom_ops("frequency_power_iteration", "triton")
    with pytest.raises(error, match=f"frequency_power_iteration: {message}"):
        forward(*arguments)
