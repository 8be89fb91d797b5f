"""power_iteration: every backend against the reference, the SVD, gradcheck, opcheck, bad input."""

import pytest
import torch

import lipkernels
from lipkernels import reference
from helpers import (ALL_TARGETS, KERNEL_TARGETS, assert_compiled_matches_eager,
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


class _Unlaunchable:
    def __getitem__(self, grid):
        raise AssertionError("the resident kernel was launched")


def _split_kernel_only(monkeypatch):
    """Every matrix to the split Triton kernel: none fits the resident one, which fails if
    launched."""
    from lipkernels.triton import power_iteration as triton_power_iteration

    monkeypatch.setattr(triton_power_iteration, "_RESIDENT_BYTES", 0)
    monkeypatch.setattr(triton_power_iteration, "_resident_power_iteration_kernel",
                        _Unlaunchable())


@pytest.mark.parametrize("batch,m,n", SHAPES)
def test_triton_split_kernel_matches_reference(monkeypatch, batch, m, n):
    """The Triton kernel splitting matrices over the grid, on every shape (the launcher gives
    matrices that fit one program's registers to the resident kernel, which the test above
    runs on all but the largest shape): resident matrices turned off."""
    require_backend("cpu", "triton")
    from lipkernels.triton import power_iteration as triton_power_iteration

    assert (triton_power_iteration.resident_blocks(m, n, torch.float32) is None) == (m == 130)
    _split_kernel_only(monkeypatch)
    weight, u = random_problem(batch, m, n, "cpu")
    for dtype in dtypes_for("cpu"):
        compare_with_reference(
            lambda w, v: run("triton", lipkernels.power_iteration, w, v, 6),
            lambda w, v: reference.power_iteration(w, v, 6), (weight, u), dtype,
            ["sigma", "u", "v"])


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


@pytest.mark.parametrize("split", [False, True])
def test_triton_kernels_on_zero_and_non_finite_weights(monkeypatch, split):
    """Both Triton kernels (resident, and split over the grid) on degenerate weights: sigma 0
    and finite vectors for a zero matrix, NaN sigma and vectors for a non-finite one."""
    require_backend("cpu", "triton")
    if split:
        _split_kernel_only(monkeypatch)
    weight = torch.randn(3, 6, 5)
    weight[1] = 0.0
    weight[2, 2, 3] = float("inf")
    sigma, u, v = run("triton", lipkernels.power_iteration, weight, torch.randn(3, 5), 3)
    assert torch.isfinite(sigma[0]) and sigma[0] > 0 and sigma[1] == 0
    assert torch.isfinite(u[:2]).all() and torch.isfinite(v[:2]).all()
    assert torch.isnan(sigma[2]) and torch.isnan(u[2]).all() and torch.isnan(v[2]).all()


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
    weight, u = random_problem((2,), 24, 40, device)
    assert_rounded_once(
        lambda w, v: run(backend, lipkernels.power_iteration, w, v, 4),
        lambda w, v: reference.power_iteration(w, v, 4),
        (weight, u), dtype, ["sigma", "u", "v"])
