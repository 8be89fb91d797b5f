"""The Triton launchers of cayley_conv2d's frequency-domain core, cayley_frequency_product
(lipkernels/triton/cayley_conv2d.py), called directly, against the reference core
(`cayley_frequencies` and its autograd): output, inverse and both gradients for square, tall and
wide responses, several tiles in every dimension, NaN propagation and input errors. The public
op's tests are in tests/test_cayley_conv2d.py."""

from __future__ import annotations

import pytest
import torch

from lipkernels.ops.cayley_conv2d import KERNELS
from lipkernels.reference.cayley_conv2d import cayley_frequencies
from helpers import RELATIVE_TOLERANCE, interpreted, require_kernel

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
DTYPES = (torch.complex128, torch.complex64)


@pytest.fixture
def kernels(device):
    require_kernel(device, "triton", KERNELS)
    from lipkernels.triton import cayley_conv2d

    return cayley_conv2d


def _random(shape, dtype, seed, device, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    real = scale * torch.randn((*shape, 2), generator=generator, dtype=torch.float64)
    return torch.view_as_complex(real).to(device=device, dtype=dtype)


def _problem(frequencies, out_channels, in_channels, batch, dtype, device):
    """(response, spectrum, grad_output), responses scaled to O(1) singular values."""
    scale = 1.0 / max(out_channels, in_channels) ** 0.5
    return (_random((frequencies, out_channels, in_channels), dtype, 0, device, scale),
            _random((frequencies, in_channels, batch), dtype, 1, device),
            _random((frequencies, out_channels, batch), dtype, 2, device))


def _reference(response, spectrum, grad_output):
    """(output, grad_response, grad_spectrum) of the reference core."""
    response, spectrum = response.detach().requires_grad_(), spectrum.detach().requires_grad_()
    output = cayley_frequencies(response, spectrum)
    return (output.detach(), *torch.autograd.grad(output, (response, spectrum), grad_output))


def _kernels(kernels, response, spectrum, grad_output):
    output, inverse, solved = kernels.cayley_frequency_product(response, spectrum)
    grads = kernels.cayley_frequency_product_backward(grad_output, response, spectrum, inverse,
                                                      solved)
    return (output, *grads), inverse


def _tall_a(response):
    """A = U - U^H + V^H V of the tall orientation of every response."""
    tall = response if response.shape[1] >= response.shape[2] else response.mT
    n = tall.shape[-1]
    U, V = tall[:, :n], tall[:, n:]
    return U - U.mH + V.mH @ V


# (F, C_out, C_in, B): square, tall, wide; then more than one 16-wide tile along every axis,
# channel counts not multiples of 16 (partial pivot blocks), both orientations.
SHAPES = [(3, 5, 5, 3), (2, 7, 4, 3), (2, 4, 7, 3), (2, 18, 17, 20), (1, 17, 20, 5)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("device", DEVICES)
def test_launchers_match_reference(kernels, device, shape, dtype):
    """Output and gradients within twice the error of the reference run in the same precision
    (against the complex128 reference), or the precision's tolerance; X (I + A) = I."""
    problem = _problem(*shape, torch.complex128, device)
    exact = _reference(*problem)
    same_precision = _reference(*(t.to(dtype) for t in problem))
    actual, inverse = _kernels(kernels, *(t.to(dtype) for t in problem))
    tolerance = RELATIVE_TOLERANCE[torch.empty((), dtype=dtype).real.dtype]
    for name, a, e, s in zip(("output", "grad_response", "grad_spectrum"), actual, exact,
                             same_precision):
        assert a.dtype == dtype and a.shape == e.shape, name
        error = (a - e).abs().max().item()
        allowed = max(2 * (s - e).abs().max().item(), tolerance * e.abs().max().item())
        assert error <= allowed, f"{name}: error {error:.3e} > allowed {allowed:.3e}"
    A = _tall_a(problem[0].to(dtype))
    eye = torch.eye(A.shape[-1], dtype=dtype, device=device)
    assert inverse.shape == A.shape
    torch.testing.assert_close(inverse @ (eye + A), eye.expand_as(A), rtol=0,
                               atol=100 * tolerance)


@pytest.mark.parametrize("programs", [1, 2, 5])
@pytest.mark.parametrize("device", DEVICES)
def test_inverse_over_the_grid_matches_linalg_inv(kernels, device, programs):
    """invert_over_grid with fewer programs than row blocks (each program loops over several,
    of several matrices; a partial last pivot block), tall and square, against torch's inverse
    of M = I + A in complex128 and within the float32 tolerance in complex64 (tf32x3)."""
    from lipkernels.triton import cayley

    for m, n in ((37, 37), (45, 21)):
        W = _random((3, m, n), torch.complex128, 3, device, scale=1.0 / m ** 0.5)
        A = _tall_a(W)
        eye = torch.eye(n, dtype=W.dtype, device=device)
        expected = torch.linalg.inv(eye + A)
        for dtype, precision in ((torch.complex128, "ieee"), (torch.complex64, "tf32x3")):
            X = cayley.invert_over_grid(W.to(dtype), precision, programs=programs)
            tolerance = RELATIVE_TOLERANCE[torch.empty((), dtype=dtype).real.dtype]
            assert (X - expected).abs().max().item() <= 10 * tolerance, (m, n, dtype)


def _assert_complex64_within_reference_error(kernels, problem):
    """The launchers in complex64 within twice the error of the reference run in complex64
    (against the complex128 reference), or float32's tolerance."""
    exact = _reference(*problem)
    same_precision = _reference(*(t.to(torch.complex64) for t in problem))
    actual, _ = _kernels(kernels, *(t.to(torch.complex64) for t in problem))
    for name, a, e, s in zip(("output", "grad_response", "grad_spectrum"), actual, exact,
                             same_precision):
        allowed = max(2 * (s - e).abs().max().item(),
                      RELATIVE_TOLERANCE[torch.float32] * e.abs().max().item())
        assert (a - e).abs().max().item() <= allowed, name


# (F, C_out, C_in, B) for the route over the grid: tall, wide and square, several of its tiles
# (32 for complex128, 64 for complex64) along every axis, partial tiles and pivot blocks.
OVER_GRID_SHAPES = [(2, 40, 35, 37), (2, 35, 70, 33), (3, 36, 36, 5)]


@pytest.mark.parametrize("shape", OVER_GRID_SHAPES)
@pytest.mark.parametrize("device", DEVICES)
def test_route_over_the_grid_matches_a_program_per_frequency(kernels, device, shape,
                                                             monkeypatch):
    """The route for few frequencies of many channels (the inverse over the grid, a launch of a
    program per output tile for each product, K's parts from tile pairs), taken here on small
    shapes: output, gradients and X as a program per frequency gives them, in complex128."""
    problem = _problem(*shape, torch.complex128, device)
    in_program, in_program_inverse = _kernels(kernels, *problem)
    monkeypatch.setattr(kernels, "over_grid_pays", lambda frequencies, n, batch: True)
    over_grid, over_grid_inverse = _kernels(kernels, *problem)
    for a, e in zip((*over_grid, over_grid_inverse), (*in_program, in_program_inverse)):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 70, 66, 65), (1, 66, 130, 9)])
@pytest.mark.parametrize("device", DEVICES)
def test_route_over_the_grid_matches_reference_in_complex64(kernels, device, shape, monkeypatch):
    """The route over the grid in complex64 (tf32x3 products on 64 x 64 tiles, partial ones
    included) within twice the error of the reference run in complex64."""
    monkeypatch.setattr(kernels, "over_grid_pays", lambda frequencies, n, batch: True)
    problem = _problem(*shape, torch.complex128, device)
    _assert_complex64_within_reference_error(kernels, problem)


def test_route_model_splits_few_frequencies_of_many_channels():
    """The time model sends the Cayley paper's 512@4x4 and 256@8x8 layers over the grid, and
    its 32@32x32 to 128@16x16 layers to a program per frequency (batch 128)."""
    kernels = pytest.importorskip("lipkernels.triton.cayley_conv2d")
    assert kernels.over_grid_pays(12, 512, 128) and kernels.over_grid_pays(40, 256, 128)
    for frequencies, n in ((544, 32), (144, 64), (544, 64), (144, 128)):
        assert not kernels.over_grid_pays(frequencies, n, 128), (frequencies, n)


@pytest.mark.parametrize("channels", [(256, 256), (512, 256), (128, 512)])
@pytest.mark.parametrize("device", DEVICES)
def test_lipconvnet_sizes_match_reference(kernels, device, channels):
    """Channel counts of LipConvNet layers, many pivot blocks and column tiles (GPU only)."""
    if interpreted(device, "triton"):
        pytest.skip("hundreds of channels take minutes under the Triton interpreter")
    problem = _problem(4, *channels, 128, torch.complex128, device)
    _assert_complex64_within_reference_error(kernels, problem)


@pytest.mark.parametrize("device", DEVICES)
def test_nan_in_gives_nan_out(kernels, device):
    response, spectrum, _ = _problem(2, 5, 3, 4, torch.complex64, device)
    response[1, 4, 2] = float("nan")
    output = kernels.cayley_frequency_product(response, spectrum)[0]
    assert torch.isfinite(output[0]).all() and torch.isnan(output[1]).any()


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input_names_the_argument(kernels, device):
    """The public Triton ops check their arguments (the launchers index what they are given)."""
    forward = torch.ops.lipkernels.cayley_frequency_product_triton
    backward = torch.ops.lipkernels.cayley_frequency_product_backward_triton
    response, spectrum, grad_output = _problem(3, 4, 2, 5, torch.complex64, device)
    with pytest.raises(TypeError, match="cayley_frequency_product: response must be complex64"):
        forward(response.real.contiguous(), spectrum)
    with pytest.raises(ValueError, match="cayley_frequency_product: response must be a non-empty"):
        forward(response[0], spectrum)
    with pytest.raises(ValueError, match=r"cayley_frequency_product: spectrum must have shape \(F, C_in, B\)"):
        forward(response, spectrum.mT)
    with pytest.raises(ValueError, match="cayley_frequency_product: spectrum must have the dtype and device"):
        forward(response, spectrum.to(torch.complex128))
    _, inverse, solved = forward(response, spectrum)
    with pytest.raises(ValueError, match="cayley_frequency_product_backward: inverse must be"):
        backward(grad_output, response, spectrum, inverse[:, :1], solved)
    with pytest.raises(ValueError, match="cayley_frequency_product_backward: grad_output must have shape"):
        backward(grad_output[:, :3], response, spectrum, inverse, solved)
    with pytest.raises(ValueError, match="cayley_frequency_product_backward: solved must be"):
        backward(grad_output, response, spectrum, inverse, solved[..., :1])
