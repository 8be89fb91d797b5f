"""power_iteration: every backend against the reference, the SVD, gradcheck, opcheck, bad input."""

import pytest
import torch

import lipkernels
from lipkernels import reference
from helpers import (ALL_TARGETS, KERNEL_TARGETS, TRITON_DEVICES, assert_compiled_matches_eager,
                     assert_rounded_once, compare_with_reference, custom_ops, dtypes_for,
                     gradcheck, matrix_with_spectrum, require_backend, run)

# (batch, m, n): unbatched, batched, tall, wide, odd and non-power-of-two, degenerate rows/cols,
# and sizes past one kernel tile.
SHAPES = [((), 7, 13), ((), 13, 7), ((3,), 5, 5), ((2, 3), 4, 9), ((), 1, 17), ((), 17, 1),
          ((2,), 70, 33), ((), 130, 260)]


def random_problem(batch, m, n, device):
    weight = torch.randn(*batch, m, n, dtype=torch.float64, device=device)
    u = torch.randn(*batch, n, dtype=torch.float64, device=device)
    return weight, u


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
@pytest.mark.parametrize("batch,m,n", SHAPES)
@pytest.mark.parametrize("iters", [1, 6])
def test_forward_matches_reference(device, backend, batch, m, n, iters):
    require_backend(device, backend)
    weight, u = random_problem(batch, m, n, device)
    for dtype in dtypes_for(device):
        compare_with_reference(
            lambda w, v: run(backend, lipkernels.power_iteration, w, v, iters),
            lambda w, v: reference.power_iteration(w, v, iters),
            (weight, u), dtype, ["sigma", "u", "v"])


def _force_route(monkeypatch, kernel):
    """Every matrix to the Triton kernel `kernel` ("resident", "gram" or "split"), whatever the
    launcher's `route` would pick."""
    from lipkernels.triton import power_iteration as triton_power_iteration

    monkeypatch.setattr(triton_power_iteration, "route", lambda m, n, iters, dtype: kernel)


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("kernel", ["split", "gram"])
@pytest.mark.parametrize("batch,m,n", SHAPES)
@pytest.mark.parametrize("iters", [1, 6])
def test_triton_grid_kernels_match_reference(monkeypatch, device, kernel, batch, m, n, iters):
    """The Triton kernels that split matrices over the grid, the direct one and the one on the
    Gram matrix, on every shape (tall ones included, which the launcher never gives the Gram
    kernel): the test above runs each shape on the kernel the launcher picks."""
    require_backend(device, "triton")
    _force_route(monkeypatch, kernel)
    weight, u = random_problem(batch, m, n, device)
    for dtype in dtypes_for(device):
        compare_with_reference(
            lambda w, v: run("triton", lipkernels.power_iteration, w, v, iters),
            lambda w, v: reference.power_iteration(w, v, iters), (weight, u), dtype,
            ["sigma", "u", "v"])


@pytest.mark.parametrize("m,n,iters,dtype,kernel", [
    (16, 144, 50, torch.float32, "resident"), (128, 128, 50, torch.float32, "resident"),
    (64, 576, 50, torch.float32, "gram"), (64, 576, 2, torch.bfloat16, "gram"),
    (2048, 18432, 50, torch.float32, "gram"),
    (64, 576, 1, torch.float32, "split"),  # a single iteration never uses G
    (2048, 18432, 10, torch.float32, "split"),  # too few iterations to pay for G
    (576, 64, 50, torch.float32, "split"),  # tall: its Gram matrix would be the larger
    (64, 576, 50, torch.float64, "split")])
def test_route_takes_wide_matrices_to_the_gram_kernel_where_it_pays(m, n, iters, dtype, kernel):
    require_backend("cpu", "triton")
    from lipkernels.triton import power_iteration as triton_power_iteration

    assert triton_power_iteration.route(m, n, iters, dtype) == kernel


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
@pytest.mark.parametrize("batch,m,n", [((), 7, 13), ((2, 3), 4, 9), ((2,), 70, 33)])
def test_backward_matches_reference(device, backend, batch, m, n):
    require_backend(device, backend)
    weight, u = random_problem(batch, m, n, device)
    upstream = torch.randn(batch, dtype=torch.float64, device=device)

    def weight_gradient(fn):
        def grad(w, v):
            w = w.detach().requires_grad_()
            sigma = fn(w, v)[0]
            (sigma * upstream.to(w.dtype)).sum().backward()
            return w.grad
        return grad

    for dtype in dtypes_for(device):
        compare_with_reference(
            weight_gradient(lambda w, v: run(backend, lipkernels.power_iteration, w, v, 3)),
            weight_gradient(lambda w, v: reference.power_iteration(w, v, 3)),
            (weight, u), dtype, ["grad_weight"])


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
def test_converges_to_largest_singular_value(device, backend):
    require_backend(device, backend)
    # A spectral gap of 10 makes 20 iterations converge far below float64 rounding.
    weight = matrix_with_spectrum([4.0, 0.4, 0.2, 0.1], 12, 9, batch=(3,), device=device)
    u = torch.randn(3, 9, dtype=torch.float64, device=device)
    sigma, u, v = run(backend, lipkernels.power_iteration, weight, u, 20)
    torch.testing.assert_close(sigma, torch.full((3,), 4.0, dtype=torch.float64, device=device),
                               rtol=1e-12, atol=0)
    # u and v are the top singular pair: W u = sigma v.
    torch.testing.assert_close(weight @ u.unsqueeze(-1), 4.0 * v.unsqueeze(-1),
                               rtol=0, atol=1e-10)


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
def test_gradcheck_at_convergence(device, backend):
    """At convergence u, v are stationary, so v u^T is the true derivative of sigma_max(W)."""
    require_backend(device, backend)
    weight = matrix_with_spectrum([3.0, 0.3, 0.1], 5, 4, device=device).requires_grad_()
    u = torch.randn(4, dtype=torch.float64, device=device)
    with lipkernels.use_backend(backend):
        assert gradcheck(lambda w: lipkernels.power_iteration(w, u, 20)[0], (weight,),
                         device, backend, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
def test_zero_weight_gives_zero_sigma(device, backend):
    require_backend(device, backend)
    weight = torch.zeros(2, 6, 5, device=device)
    sigma, u, v = run(backend, lipkernels.power_iteration, weight, torch.randn(2, 5, device=device), 3)
    assert torch.equal(sigma, torch.zeros(2, device=device))
    assert torch.isfinite(u).all() and torch.isfinite(v).all()


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weight_gives_nan(device, backend, bad):
    require_backend(device, backend)
    weight = torch.randn(2, 6, 5, device=device)
    weight[1, 2, 3] = bad
    sigma, u, v = run(backend, lipkernels.power_iteration, weight, torch.randn(2, 5, device=device), 2)
    assert torch.isfinite(sigma[0]) and torch.isnan(sigma[1])
    assert torch.isnan(u[1]).all() and torch.isnan(v[1]).all()


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("kernel", ["resident", "split", "gram"])
@pytest.mark.parametrize("iters", [1, 3])
def test_triton_kernels_on_zero_and_non_finite_weights(monkeypatch, device, kernel, iters):
    """Every Triton kernel on degenerate weights: sigma 0 and finite vectors for a zero matrix,
    NaN sigma and vectors for a non-finite one."""
    require_backend(device, "triton")
    _force_route(monkeypatch, kernel)
    weight = torch.randn(3, 5, 6, device=device)
    weight[1] = 0.0
    weight[2, 2, 3] = float("inf")
    sigma, u, v = run("triton", lipkernels.power_iteration, weight,
                      torch.randn(3, 6, device=device), iters)
    assert torch.isfinite(sigma[0]) and sigma[0] > 0 and sigma[1] == 0
    assert torch.isfinite(u[:2]).all() and torch.isfinite(v[:2]).all()
    assert torch.isnan(sigma[2]) and torch.isnan(u[2]).all()
    # After one iteration v = normalize(W u) is NaN where W u is infinite and 0 elsewhere, as
    # the reference's F.normalize gives; from the second on, all of it.
    assert torch.isnan(v[2]).all() if iters > 1 else torch.isnan(v[2, 2]) and v[2].isnan().sum() == 1


def test_value_checks_raise_on_non_finite(monkeypatch):
    monkeypatch.setattr(lipkernels._checks, "VALUE_CHECKS", True)
    weight = torch.randn(4, 3)
    weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="weight has NaN or inf"):
        lipkernels.power_iteration(weight, torch.randn(3), 1)


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
def test_opcheck(device, backend):
    require_backend(device, backend)
    forward, backward = custom_ops("power_iteration", backend)
    weight = torch.randn(2, 5, 4, device=device, requires_grad=True)
    u = torch.randn(2, 4, device=device)
    torch.library.opcheck(forward, (weight, u, 3))
    _, u_out, v_out = forward(weight.detach(), u, 3)
    torch.library.opcheck(backward, (torch.randn(2, device=device), u_out, v_out))


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_torch_compile_fullgraph(backend):
    require_backend("cpu", backend)
    weight = torch.randn(3, 8, 6, requires_grad=True)
    u = torch.randn(3, 6)

    def loss(w):
        with lipkernels.use_backend(backend):
            return lipkernels.power_iteration(w, u, 4)[0].sum()

    assert_compiled_matches_eager(loss, weight)


@pytest.mark.parametrize(
    "weight,u,iters,error,message",
    [
        (torch.randn(5), torch.randn(5), 1, ValueError, "weight must have at least 2 dims"),
        (torch.randn(0, 4), torch.randn(4), 1, ValueError, "weight must not be empty"),
        (torch.randn(3, 4), torch.randn(3), 1, ValueError, r"u must have shape \(4,\)"),
        (torch.randn(2, 3, 4), torch.randn(4), 1, ValueError, r"u must have shape \(2, 4\)"),
        (torch.randn(3, 4), torch.randn(4, dtype=torch.float64), 1, TypeError, "u has dtype"),
        (torch.randint(0, 3, (3, 4)), torch.randn(4), 1, TypeError, "weight must have dtype"),
        (torch.randn(3, 4, dtype=torch.complex64), torch.randn(4), 1, TypeError, "weight must have dtype"),
        (torch.randn(3, 4), torch.randn(4, device="meta"), 1, ValueError, "same device"),
        (torch.randn(3, 4), torch.randn(4), 0, ValueError, "iters must be >= 1"),
        (torch.randn(3, 4), torch.randn(4), 2.0, TypeError, "iters must be an int"),
        ([[1.0]], torch.randn(1), 1, TypeError, "weight must be a torch.Tensor"),
    ],
)
def test_bad_input_is_rejected(weight, u, iters, error, message):
    with pytest.raises(error, match=message):
        lipkernels.power_iteration(weight, u, iters)


def test_unavailable_backend_is_an_error():
    with pytest.raises(RuntimeError, match="cuda backend runs on CUDA tensors"):
        with lipkernels.use_backend("cuda"):
            lipkernels.power_iteration(torch.randn(3, 4), torch.randn(4), 1)
    with pytest.raises(ValueError, match="use_backend"):
        lipkernels.use_backend("fast").__enter__()


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_accumulate_in_float32(device, backend, dtype):
    require_backend(device, backend)
    _half_precision_inputs_accumulate_in_float32(device, backend, dtype)


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("kernel", ["split", "gram"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_grid_kernels_on_half_precision_inputs(monkeypatch, device, kernel, dtype):
    require_backend(device, "triton")
    _force_route(monkeypatch, kernel)
    _half_precision_inputs_accumulate_in_float32(device, "triton", dtype)


def _half_precision_inputs_accumulate_in_float32(device, backend, dtype):
    weight, u = random_problem((2,), 24, 40, device)
    assert_rounded_once(
        lambda w, v: run(backend, lipkernels.power_iteration, w, v, 4),
        lambda w, v: reference.power_iteration(w, v, 4),
        (weight, u), dtype, ["sigma", "u", "v"])
