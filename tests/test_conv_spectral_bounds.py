"""conv_spectral_bounds / fantastic_four: backends vs reference, the SVD of each reshape, the
explicit conv operator norm, gradcheck, opcheck and bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

import lipkernels
from lipkernels import reference
from lipkernels._conventions import bound_matrix_shapes
from lipkernels._spectral import bound_matrices
from helpers import (ALL_TARGETS, KERNEL_TARGETS, TRITON_DEVICES,
                     assert_compiled_matches_eager, assert_rounded_once, compare_with_reference,
                     custom_ops, dtypes_for, filter_with_spectral_gap, gradcheck,
                     require_backend, run)

# (C_out, C_in, k_h, k_w): square and rectangular channel counts, k in {1, 2, 3, 5}, non-square
# filters, and one filter whose reshapes are larger than a kernel tile.
FILTERS = [(4, 4, 3, 3), (6, 3, 3, 3), (3, 6, 1, 1), (5, 3, 3, 1), (3, 5, 1, 3), (4, 2, 2, 2),
           (2, 3, 5, 5), (40, 24, 3, 3)]


def random_vectors(shape, device, dtype=torch.float64):
    return [torch.randn(cols, dtype=dtype, device=device) for _, cols in bound_matrix_shapes(shape)]


def kernel_with_left_vectors(backend):
    """The backend's raw op output (bounds, u's, v's), so v's are compared too."""
    forward, _ = custom_ops("conv_spectral_bounds", backend)
    return lambda w, vectors, iters: forward(w, vectors, iters)


def reference_with_left_vectors(weight, vectors, iters):
    results = [reference.power_iteration(m, u, iters) for m, u in zip(bound_matrices(weight), vectors)]
    scale = math.sqrt(weight.shape[2] * weight.shape[3])
    return (scale * torch.stack([r[0] for r in results]), [r[1] for r in results],
            [r[2] for r in results])


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
@pytest.mark.parametrize("shape", FILTERS)
@pytest.mark.parametrize("iters", [1, 3])
def test_forward_matches_reference(device, backend, shape, iters):
    require_backend(device, backend)
    weight = torch.randn(shape, dtype=torch.float64, device=device)
    vectors = random_vectors(shape, device)
    names = ["bounds"] + [f"u{q}" for q in range(1, 5)] + [f"v{q}" for q in range(1, 5)]
    for dtype in dtypes_for(device):
        compare_with_reference(kernel_with_left_vectors(backend), reference_with_left_vectors,
                               (weight, vectors, iters), dtype, names)
        # The public function returns the same bounds and right vectors as the raw op.
        compare_with_reference(
            lambda w, v: run(backend, lipkernels.conv_spectral_bounds, w, iters, v),
            lambda w, v: reference.conv_spectral_bounds(w, iters, v),
            (weight, vectors), dtype, names[:5])


@pytest.mark.parametrize("dtype,shape", [(torch.float64, (300, 200, 3, 3)),
                                         (torch.float64, (1100, 500, 1, 1)),
                                         (torch.float32, (600, 400, 3, 3))])
@pytest.mark.parametrize("iters", [1, 4])
def test_large_filters_take_the_slab_passes_at_every_iteration_count(dtype, shape, iters):
    """The C++ CPU forward runs filters of 4 MiB and more (and one iteration of any filter with
    reshapes to copy) as passes over output-channel slabs, the other calls through the four
    reshapes: filters above the threshold, against the reference."""
    require_backend("cpu", "cpp")
    weight = torch.randn(shape, dtype=torch.float64)
    assert weight.to(dtype).numel() * weight.to(dtype).element_size() >= 2 ** 22
    vectors = random_vectors(shape, "cpu")
    names = ["bounds"] + [f"u{q}" for q in range(1, 5)] + [f"v{q}" for q in range(1, 5)]
    compare_with_reference(kernel_with_left_vectors("cpp"), reference_with_left_vectors,
                           (weight, vectors, iters), dtype, names)



@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("programs", [3, 2])
def test_programs_sum_the_partials_of_several_slabs(device, programs, monkeypatch):
    """A Triton program that owns several output-channel slabs sums their partials into one
    row before the reduction: few programs over 5 slabs of 8 channels, against the
    reference."""
    require_backend(device, "triton")
    monkeypatch.setattr("lipkernels.triton.conv_spectral_bounds.persistent_programs",
                        lambda _: programs)
    shape = (40, 24, 3, 3)
    from lipkernels.triton.conv_spectral_bounds import launch_config
    config = launch_config(shape, programs)
    assert config["programs"] == config["partial_rows"] == programs < config["slab_tiles"]
    weight = torch.randn(shape, dtype=torch.float64, device=device)
    vectors = random_vectors(shape, device)
    names = ["bounds"] + [f"u{q}" for q in range(1, 5)] + [f"v{q}" for q in range(1, 5)]
    for dtype in dtypes_for(device):
        compare_with_reference(kernel_with_left_vectors("triton"), reference_with_left_vectors,
                               (weight, vectors, 3), dtype, names)

@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
@pytest.mark.parametrize("shape", [(6, 3, 3, 3), (5, 3, 3, 1), (2, 3, 5, 5)])
def test_backward_matches_reference(device, backend, shape):
    require_backend(device, backend)
    weight = torch.randn(shape, dtype=torch.float64, device=device)
    vectors = random_vectors(shape, device)
    upstream = torch.randn(4, dtype=torch.float64, device=device)

    def weight_gradient(fn):
        def grad(w, v):
            w = w.detach().requires_grad_()
            (fn(w, v)[0] * upstream.to(w.dtype)).sum().backward()
            return w.grad
        return grad

    for dtype in dtypes_for(device):
        compare_with_reference(
            weight_gradient(lambda w, v: run(backend, lipkernels.conv_spectral_bounds, w, 3, v)),
            weight_gradient(lambda w, v: reference.conv_spectral_bounds(w, 3, v)),
            (weight, vectors), dtype, ["grad_weight"])


def operator_norm_of_zero_padded_conv(weight, size):
    """Largest singular value of the explicit Jacobian of the same-padded conv on size x size."""
    c_out, c_in, k_h, k_w = weight.shape
    basis = torch.eye(c_in * size * size, dtype=weight.dtype).reshape(-1, c_in, size, size)
    columns = F.conv2d(basis, weight, padding=(k_h // 2, k_w // 2))
    return torch.linalg.matrix_norm(columns.reshape(basis.shape[0], -1), ord=2)


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@pytest.mark.parametrize("shape", [(4, 3, 3, 3), (3, 4, 5, 5), (5, 5, 1, 3)])
def test_bounds_converge_to_reshape_norms_and_bound_the_conv(device, backend, shape):
    require_backend(device, backend)
    weight = filter_with_spectral_gap(shape)
    bounds, _ = run(backend, lipkernels.conv_spectral_bounds, weight.to(device), 40,
                    random_vectors(shape, device))
    scale = math.sqrt(shape[2] * shape[3])
    exact = torch.stack([scale * torch.linalg.matrix_norm(m, ord=2) for m in bound_matrices(weight)])
    torch.testing.assert_close(bounds.cpu(), exact, rtol=1e-8, atol=0)
    for size in (4, 7):
        assert bounds.min().item() >= operator_norm_of_zero_padded_conv(weight, size).item() * (1 - 1e-9)


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
def test_fantastic_four_is_the_smallest_bound(device, backend):
    require_backend(device, backend)
    weight = torch.randn(6, 4, 3, 3, device=device)
    vectors = random_vectors(weight.shape, device, torch.float32)
    bounds, expected_vectors = run(backend, lipkernels.conv_spectral_bounds, weight, 4, vectors)
    bound, new_vectors = run(backend, lipkernels.fantastic_four, weight, 4, vectors)
    assert bound.dim() == 0 and torch.equal(bound, bounds.min())
    assert all(torch.equal(a, b) for a, b in zip(new_vectors, expected_vectors))


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
def test_default_vectors_are_random_unit_vectors(device, backend):
    require_backend(device, backend)
    weight = torch.randn(5, 3, 3, 1, device=device)
    _, vectors = run(backend, lipkernels.conv_spectral_bounds, weight, 2)
    assert [tuple(u.shape) for u in vectors] == [(cols,) for _, cols in bound_matrix_shapes(weight.shape)]
    for u in vectors:
        torch.testing.assert_close(u.norm(), torch.tensor(1.0, device=device))


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
def test_gradcheck_at_convergence(device, backend):
    require_backend(device, backend)
    weight = filter_with_spectral_gap((3, 2, 3, 3), device=device).requires_grad_()
    vectors = random_vectors(weight.shape, device)
    with lipkernels.use_backend(backend):
        # Converged power iterations: v_q u_q^T is the true derivative of each sigma_max(M_q).
        assert gradcheck(lambda w: lipkernels.conv_spectral_bounds(w, 40, vectors)[0], (weight,),
                         device, backend, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
def test_zero_filter_gives_zero_bounds(device, backend):
    require_backend(device, backend)
    weight = torch.zeros(4, 3, 3, 3, device=device)
    bounds, vectors = run(backend, lipkernels.conv_spectral_bounds, weight, 2)
    assert torch.equal(bounds, torch.zeros(4, device=device))
    assert all(torch.isfinite(u).all() for u in vectors)


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_filter_gives_nan(device, backend, bad):
    require_backend(device, backend)
    weight = torch.randn(4, 3, 3, 3, device=device)
    weight[1, 2, 0, 1] = bad
    bounds, _ = run(backend, lipkernels.conv_spectral_bounds, weight, 2)
    assert torch.isnan(bounds).all()


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
def test_opcheck(device, backend):
    require_backend(device, backend)
    forward, backward = custom_ops("conv_spectral_bounds", backend)
    weight = torch.randn(5, 3, 3, 1, device=device, requires_grad=True)
    vectors = random_vectors(weight.shape, device, torch.float32)
    torch.library.opcheck(forward, (weight, vectors, 2))
    _, u, v = forward(weight.detach(), vectors, 2)
    torch.library.opcheck(backward, (torch.randn(4, device=device), u, v, list(weight.shape)))


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_torch_compile_fullgraph(backend):
    require_backend("cpu", backend)
    weight = torch.randn(6, 4, 3, 3, requires_grad=True)
    vectors = random_vectors(weight.shape, "cpu", torch.float32)

    def loss(w):
        with lipkernels.use_backend(backend):
            return lipkernels.fantastic_four(w, 3, vectors)[0]

    assert_compiled_matches_eager(loss, weight)


def _vectors(shape, drop=None, dtype=torch.float32, device="cpu", wrong_length=None):
    vectors = random_vectors(shape, device, dtype)
    if wrong_length is not None:
        vectors[wrong_length] = torch.randn(vectors[wrong_length].numel() + 1, dtype=dtype)
    return vectors[:drop] if drop else vectors


@pytest.mark.parametrize(
    "weight,vectors,iters,error,message",
    [
        (torch.randn(4, 3, 3), None, 1, ValueError, "weight must be 4-D"),
        (torch.randn(4, 0, 3, 3), None, 1, ValueError, "weight must not be empty"),
        (torch.randn(4, 3, 3, 3, dtype=torch.float16).to(torch.int32), None, 1, TypeError,
         "weight must have dtype"),
        (torch.randn(4, 3, 3, 3), _vectors((4, 3, 3, 3), drop=3), 1, ValueError, "must hold 4 tensors"),
        (torch.randn(4, 3, 3, 3), _vectors((4, 3, 3, 3), wrong_length=2), 1, ValueError,
         r"vectors\[2\] must have shape \(27,\)"),
        (torch.randn(4, 3, 3, 3), _vectors((4, 3, 3, 3), dtype=torch.float64), 1, TypeError,
         r"vectors\[0\] has dtype"),
        (torch.randn(4, 3, 3, 3), _vectors((4, 3, 3, 3), device="meta"), 1, ValueError, "same device"),
        (torch.randn(4, 3, 3, 3), None, 0, ValueError, "iters must be >= 1"),
    ],
)
def test_bad_input_is_rejected(weight, vectors, iters, error, message):
    with pytest.raises(error, match=message):
        lipkernels.conv_spectral_bounds(weight, iters, vectors)


@pytest.mark.parametrize("shape", [(4, 3, 3, 3), (3, 5, 5, 5), (6, 6, 3, 1), (2, 7, 1, 1), (5, 4, 2, 2)])
def test_every_reshape_bounds_the_zero_padded_conv(shape):
    """The theorem behind the op, on generic filters: sqrt(k_h k_w) ||M_q|| >= ||conv||."""
    weight = torch.randn(shape, dtype=torch.float64)
    scale = math.sqrt(shape[2] * shape[3])
    for size in (3, 6):
        conv_norm = operator_norm_of_zero_padded_conv(weight, size).item()
        for matrix in bound_matrices(weight):
            assert scale * torch.linalg.matrix_norm(matrix, ord=2).item() >= conv_norm * (1 - 1e-12)


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_accumulate_in_float32(device, backend, dtype):
    require_backend(device, backend)
    weight = torch.randn(8, 6, 3, 3, dtype=torch.float64, device=device)
    names = ["bounds"] + [f"u{q}" for q in range(1, 5)] + [f"v{q}" for q in range(1, 5)]
    assert_rounded_once(kernel_with_left_vectors(backend), reference_with_left_vectors,
                        (weight, random_vectors(weight.shape, device), 4), dtype, names)
