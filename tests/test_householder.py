"""householder: the reference against the seed code, every kernel backend against the reference
(forward, backward, gradcheck, opcheck, torch.compile), theta = pi/2 is MaxMin with the halves
swapped, orthogonal Jacobian and norm preservation, NaN, precisions, the HouseHolder module,
dispatch and bad input."""

import math

import pytest
import torch

import lipkernels
from lipkernels import _backend, reference
from lipkernels.ops.householder import KERNELS
from lipkernels.reference.max_min import merge_pairs, split_pairs
from helpers import (ALL_TARGETS, KERNEL_TARGETS, assert_compiled_matches_eager,
                     assert_rounded_once, compare_with_reference, custom_ops, gradcheck,
                     require_backend, run)

# Ranks 2 to 5, odd and non-power-of-two channel and spatial sizes, 1x1 spatial.
SHAPES = [(3, 4), (2, 6, 5), (2, 4, 3, 5), (1, 2, 2, 3, 2), (3, 10, 1, 1)]


def selector(x, theta):
    """a sin(theta/2) - b cos(theta/2) per pair: > 0 where the pair is reflected."""
    a, b = split_pairs(x)
    half = theta.reshape(1, -1, *([1] * (x.dim() - 2))) / 2
    return a * torch.sin(half) - b * torch.cos(half)


def problem(shape, device="cpu", margin=0.05):
    """float64 (x, theta, g): theta spread over [0, 2 pi), and x moved along each pair's normal n
    so that every selector is at least `margin` from the branch boundary: branch choices then
    survive float32 rounding and gradcheck's perturbations."""
    x = torch.randn(shape, dtype=torch.float64)
    theta = torch.rand(shape[1] // 2, dtype=torch.float64) * 2 * math.pi
    s = selector(x, theta)
    shift = torch.where(s.abs() < margin, torch.where(s >= 0, margin, -margin) - s, 0.0)
    half = theta.reshape(1, -1, *([1] * (x.dim() - 2))) / 2
    a, b = split_pairs(x)
    x = merge_pairs(a + shift * torch.sin(half), b - shift * torch.cos(half))
    g = torch.randn(shape, dtype=torch.float64)
    return x.to(device), theta.to(device), g.to(device)


def gradients(fn):
    """(x, theta, g) -> (grad_x, grad_theta) of <fn(x, theta), g>."""
    def grad(x, theta, g):
        x, theta = x.detach().requires_grad_(), theta.detach().requires_grad_()
        return torch.autograd.grad((fn(x, theta) * g).sum(), (x, theta))
    return grad


def check_kernel(check, backend, x, theta, g, dtype):
    """`check` (compare_with_reference or assert_rounded_once) of the backend's output and
    gradients against the reference's."""
    kernel = lambda *a: run(backend, lipkernels.householder, *a)  # noqa: E731
    check(kernel, reference.householder, (x, theta), dtype, ["y"])
    check(gradients(kernel), gradients(reference.householder), (x, theta, g), dtype,
          ["grad_x", "grad_theta"])


def seed_householder(z, theta):
    """`HouseHolder.forward` of the SOC code (NeurIPS 2022), theta of shape (1, C/2, 1, 1)."""
    x, y = z.split(z.shape[1] // 2, 1)
    selector = (x * torch.sin(0.5 * theta)) - (y * torch.cos(0.5 * theta))
    a_2 = x * torch.cos(theta) + y * torch.sin(theta)
    b_2 = x * torch.sin(theta) - y * torch.cos(theta)
    a = (x * (selector <= 0) + a_2 * (selector > 0))
    b = (y * (selector <= 0) + b_2 * (selector > 0))
    return torch.cat([a, b], dim=1)


def test_reference_matches_the_seed_code():
    x, theta, g = problem((3, 8, 5, 4))
    s = selector(x, theta)
    assert (s > 0).any() and (s < 0).any()
    torch.testing.assert_close(reference.householder(x, theta),
                               seed_householder(x, theta.reshape(1, -1, 1, 1)), rtol=0, atol=0)
    expected = gradients(lambda x, t: seed_householder(x, t.reshape(1, -1, 1, 1)))(x, theta, g)
    torch.testing.assert_close(gradients(reference.householder)(x, theta, g), expected,
                               rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_forward_and_backward_match_reference(device, backend, shape):
    require_backend(device, backend)
    x, theta, g = problem(shape, device)
    for dtype in (torch.float64, torch.float32):
        check_kernel(compare_with_reference, backend, x, theta, g, dtype)


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
def test_kernel_work_split_over_tiles_and_samples(device, backend, monkeypatch):
    """Shapes whose work splits over several tiles and several samples per tile, partial last
    chunks included: householder against the reference, grad_theta (a sum of per-tile partials)
    the same on a second run (no atomics), and max_min (whose CPU kernel merges the pairs of a
    tile into one run) exact in both pairings."""
    require_backend(device, backend)
    shapes = [(11, 6, 2, 3), (5, 4, 3)]
    if backend == "triton":  # a few samples per program even at these sizes
        monkeypatch.setattr("lipkernels.triton.max_min._MIN_PROGRAMS", 1)
    elif device == "cpu":  # several tiles of the C++ kernel's 32768 elements
        shapes = [(3, 4, 100, 100), (2, 200, 20, 20), (40000, 4)]
    grad = gradients(lambda *a: run(backend, lipkernels.householder, *a))
    for shape in shapes:
        x, theta, g = problem(shape, device)
        check_kernel(compare_with_reference, backend, x, theta, g, torch.float32)
        first, second = (grad(x.float(), theta.float(), g.float()) for _ in range(2))
        assert all(torch.equal(u, v) for u, v in zip(first, second))
        for pairing in ("halves", "pairs"):
            assert torch.equal(run(backend, lipkernels.max_min, x, pairing),
                               reference.max_min(x, pairing))


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
def test_gradcheck(device, backend):
    require_backend(device, backend)
    x, theta, _ = problem((2, 6, 3), device)
    x, theta = x.requires_grad_(), theta.requires_grad_()
    with lipkernels.use_backend(backend):
        assert gradcheck(lipkernels.householder, (x, theta), device, backend)


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
def test_quarter_turn_is_max_min_with_the_halves_swapped(device, backend):
    """theta = pi/2: sin(theta/2) = cos(theta/2) = 1/sqrt(2), so the selector (a - b)/sqrt(2) is
    positive exactly where a > b, and R = [[cos, sin], [sin, -cos]] = [[0, 1], [1, 0]] swaps the
    pair there: the output is (min(a, b), max(a, b)), MaxMin's (max, min) halves swapped. (cos(pi/2)
    rounds to ~6e-17 in float64, hence a tolerance.) Off ties, gradients agree too."""
    require_backend(device, backend)
    x, _, g = problem((2, 8, 3, 3), device)
    theta = torch.full((4,), math.pi / 2, dtype=torch.float64, device=device)
    swap = lambda t: torch.cat(t.chunk(2, dim=1)[::-1], dim=1)  # noqa: E731
    expected = swap(reference.max_min(x))
    torch.testing.assert_close(run(backend, lipkernels.householder, x, theta), expected,
                               rtol=0, atol=1e-15)
    grad_x, _ = gradients(lambda *a: run(backend, lipkernels.householder, *a))(x, theta, g)
    x = x.requires_grad_()
    expected_grad = torch.autograd.grad((swap(reference.max_min(x)) * g).sum(), x)[0]
    torch.testing.assert_close(grad_x, expected_grad, rtol=0, atol=1e-15)


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
def test_jacobian_is_orthogonal_and_norms_are_kept(device, backend):
    require_backend(device, backend)
    x, theta, _ = problem((3, 6, 2), device)
    jacobian = torch.autograd.functional.jacobian(
        lambda v: run(backend, lipkernels.householder, v.reshape(1, 6, 2), theta).flatten(),
        x[0].flatten())
    torch.testing.assert_close(jacobian @ jacobian.T,
                               torch.eye(12, dtype=torch.float64, device=device),
                               rtol=0, atol=1e-14)
    y = run(backend, lipkernels.householder, x, theta)
    torch.testing.assert_close(y.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), rtol=1e-14,
                               atol=0)
    assert not torch.allclose(y, x)  # some pairs were reflected


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
def test_nan_gives_nan(device, backend):
    """A NaN selector takes the reflection, as in the seed code: NaN x or theta gives NaN out."""
    require_backend(device, backend)
    x, theta, _ = (t.float() for t in problem((2, 6, 4), device))
    x[1, 0, 2] = float("nan")
    theta[2] = float("nan")
    y = run(backend, lipkernels.householder, x, theta)
    first, second = split_pairs(y)
    assert torch.isnan(first[1, 0, 2]) and torch.isnan(second[1, 0, 2])
    assert torch.isnan(first[:, 2]).all() and torch.isnan(second[:, 2]).all()
    assert torch.isnan(y).sum() == 2 + 2 * 2 * 4


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_computes_in_float32(device, backend, dtype):
    """Outputs and gradients are within one ulp of the float64 reference on the rounded inputs."""
    require_backend(device, backend)
    x, theta, g = problem((2, 6, 3, 4), device)
    check_kernel(assert_rounded_once, backend, x, theta, g, dtype)


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_float32_theta_with_half_x(device, backend, dtype):
    """float32 angles with half activations (autocast): y in x's dtype, grad_theta in float32."""
    require_backend(device, backend)
    x, theta, g = problem((2, 6, 3), device)
    x, g, theta = x.to(dtype), g.to(dtype), theta.float()
    grad = gradients(lambda *a: run(backend, lipkernels.householder, *a))
    y = run(backend, lipkernels.householder, x, theta)
    (grad_x, grad_theta), (exact_x, exact_theta) = grad(x, theta, g), gradients(
        reference.householder)(x.double(), theta.double(), g.double())
    assert y.dtype == grad_x.dtype == dtype and grad_theta.dtype == torch.float32
    exact_y = reference.householder(x.double(), theta.double())
    ulp = torch.finfo(dtype).eps
    assert (y.double() - exact_y).abs().max() <= ulp * exact_y.abs().max()
    assert (grad_x.double() - exact_x).abs().max() <= ulp * exact_x.abs().max()
    torch.testing.assert_close(grad_theta.double(), exact_theta, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
def test_non_contiguous_input(device, backend):
    require_backend(device, backend)
    x = torch.randn(2, 5, 3, 4, device=device).permute(0, 3, 2, 1)  # (2, 4, 3, 5), strided
    theta = torch.rand(2, 3, device=device)[:, 0] * 2 * math.pi  # strided
    torch.testing.assert_close(run(backend, lipkernels.householder, x, theta),
                               reference.householder(x, theta))


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
def test_opcheck(device, backend):
    require_backend(device, backend)
    forward, backward = custom_ops("householder", backend)
    x, theta, g = (t.float() for t in problem((2, 4, 3), device))
    torch.library.opcheck(forward, (x.requires_grad_(), theta.requires_grad_()))
    torch.library.opcheck(backward, (g, x.detach(), theta.detach()))
    torch.library.opcheck(forward, (x.detach().half(), theta.detach()))  # float32 theta, half x


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_torch_compile_fullgraph(backend):
    require_backend("cpu", backend)
    x, theta, _ = (t.float() for t in problem((2, 6, 3)))
    module = lipkernels.nn.HouseHolder(6)
    with torch.no_grad():
        module.theta.copy_(theta)

    def loss(x, theta):
        with lipkernels.use_backend(backend):
            return lipkernels.householder(x, theta).square().sum() + \
                (module(x) * torch.arange(6.0)[:, None]).sum()

    assert_compiled_matches_eager(loss, x.requires_grad_(), theta.requires_grad_())


def test_auto_and_explicit_cpp_run_the_kernel():
    require_backend("cpu", "cpp")
    x, theta, _ = problem((2, 4, 3))
    for choice in ("cpp", "auto"):
        with lipkernels.use_backend(choice):
            assert _backend.resolve("householder", "cpu", KERNELS) == "cpp"
            torch.testing.assert_close(lipkernels.householder(x, theta),
                                       reference.householder(x, theta))


def test_module_init_state_dict_and_gradient():
    module = lipkernels.nn.HouseHolder(8)
    assert repr(module) == "HouseHolder(channels=8)"
    assert module.theta.shape == (4,) and module.theta.requires_grad
    assert torch.equal(module.theta.detach(), torch.full((4,), math.pi / 2))
    assert [name for name, _ in module.named_parameters()] == ["theta"]
    double = lipkernels.nn.HouseHolder(8, dtype=torch.float64)
    assert double.theta.dtype == torch.float64

    x = torch.randn(3, 8, 5)
    with torch.no_grad():
        module.theta.uniform_(0, 2 * math.pi)
    restored = lipkernels.nn.HouseHolder(8)
    restored.load_state_dict(module.state_dict())
    assert torch.equal(restored.theta, module.theta)
    assert torch.equal(restored(x), module(x))
    assert torch.equal(module(x), lipkernels.householder(x, module.theta))
    module(x).sum().backward()
    assert module.theta.grad is not None and module.theta.grad.shape == (4,)


@pytest.mark.parametrize(
    "channels,error,message",
    [(5, ValueError, "HouseHolder: channels must be even"),
     (0, ValueError, "HouseHolder: channels must be >= 1"),
     (4.0, TypeError, "HouseHolder: channels must be an int")],
)
def test_module_rejects_bad_channels(channels, error, message):
    with pytest.raises(error, match=message):
        lipkernels.nn.HouseHolder(channels)


def _x(*shape, **kwargs):
    return torch.randn(*shape, **kwargs)


@pytest.mark.parametrize(
    "x,theta,error,message",
    [
        (_x(4), _x(2), ValueError, "householder: x must have at least 2 dims"),
        (_x(2, 3, 4), _x(1), ValueError, "householder: x must have an even number of channels"),
        (_x(2, 4, 3), _x(3), ValueError,
         r"householder: theta must have shape \(2,\), one angle per channel pair of x \(2, 4, 3\)"),
        (_x(2, 4, 3), _x(1, 2, 1, 1), ValueError, r"theta must have shape \(2,\)"),
        (_x(2, 4), _x(2, dtype=torch.float64), TypeError,
         "householder: theta has dtype torch.float64 but x has torch.float32; theta must have "
         "x's dtype$"),
        (_x(2, 4, dtype=torch.bfloat16), _x(2, dtype=torch.float16), TypeError,
         "theta must have x's dtype or torch.float32"),
        (_x(2, 4), _x(2, device="meta"), ValueError,
         "householder: theta is on meta but x is on cpu"),
        (_x(2, 4), _x(2).int(), TypeError, "householder: theta must have dtype"),
        (_x(2, 4), [1.0, 2.0], TypeError, "householder: theta must be a torch.Tensor"),
        (_x(2, 4).int(), _x(2), TypeError, "householder: x must have dtype"),
    ],
)
def test_bad_input_is_rejected(x, theta, error, message):
    with pytest.raises(error, match=message):
        lipkernels.householder(x, theta)


def test_kernel_op_rejects_bad_input():
    """The C++ op checks its own arguments: torch.ops.lipkernels.* bypasses the Python checks."""
    require_backend("cpu", "cpp")
    x, theta = torch.randn(2, 4, 3), torch.randn(2)
    forward, backward = torch.ops.lipkernels.householder, torch.ops.lipkernels.householder_backward
    # The same words and exception types as the functional API (tests/test_input_validation.py).
    cases = [
        (forward, (x[0, 0], theta), ValueError, "householder: x must have at least 2 dims"),
        (forward, (x[:, :3], theta), ValueError,
         "householder: x must have an even number of channels"),
        (forward, (x, theta[:1]), ValueError, r"householder: theta must have shape \(2,\)"),
        (forward, (x, theta.double()), TypeError,
         r"householder: theta has dtype torch.float64 but x has torch.float32"),
        (forward, (x.bfloat16(), theta.half()), TypeError,
         r"theta must have x's dtype or torch.float32"),
        (forward, (x.int(), theta), TypeError, "householder: x must have dtype float32"),
        (backward, (x, x[:, :2], theta), ValueError,
         r"householder_backward: x must have shape \(2, 4, 3\) to match grad_y"),
        (backward, (x, x.double(), theta), TypeError,
         "householder_backward: x has dtype torch.float64 but grad_y"),
        (backward, (x[:, :2], x, theta), ValueError, r"householder_backward: theta must have shape \(1,\)"),
    ]
    for fn, args, error, message in cases:
        with pytest.raises(error, match=message):
            fn(*args)
