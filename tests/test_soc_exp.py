"""skew / flip_transpose / soc_exp: skew-symmetric and orthogonal explicit Jacobians, the adjoint,
the exact and fast gradients, every kernel backend against the reference (forward, backward,
gradcheck, opcheck, torch.compile), dispatch and bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

import lipkernels
from lipkernels import _backend, reference
from lipkernels.ops.soc_exp import KERNELS
from lipkernels.reference import flip_transpose
from lipkernels.reference.soc_exp import FastSOCExp
import helpers
from helpers import (KERNEL_TARGETS, assert_compiled_matches_eager, compare_with_reference,
                     custom_ops, gradcheck, require_backend, run)


def conv(x, weight):
    return F.conv2d(x, weight, padding=weight.shape[-1] // 2)


def explicit_jacobian(fn, channels, size, dtype=torch.float64):
    """Matrix of the linear map `fn` on (channels, size, size) inputs, built from the identity
    basis: row r of the result is fn(e_r) flattened, i.e. the transposed Jacobian."""
    n = channels * size * size
    basis = torch.eye(n, dtype=dtype).reshape(n, channels, size, size)
    return fn(basis).reshape(n, -1)


def skew_filter(channels, k, operator_norm):
    """skew(W) of a random W, scaled so that conv(., S) on a 5x5 input has the given norm."""
    S = lipkernels.skew(torch.randn(channels, channels, k, k, dtype=torch.float64))
    norm = torch.linalg.matrix_norm(explicit_jacobian(lambda b: conv(b, S), channels, 5), ord=2)
    return S * (operator_norm / norm)


def series_gradients(x, S, terms, grad_mode, upstream):
    x, S = x.detach().requires_grad_(), S.detach().requires_grad_()
    (lipkernels.soc_exp(x, S, terms, grad_mode) * upstream).sum().backward()
    return x.grad, S.grad


@pytest.mark.parametrize("k", [1, 3, 5])
def test_skew_filter_gives_skew_symmetric_jacobian(k):
    S = lipkernels.skew(torch.randn(3, 3, k, k, dtype=torch.float64))
    jacobian = explicit_jacobian(lambda b: conv(b, S), 3, 5)
    torch.testing.assert_close(jacobian, -jacobian.T, rtol=0, atol=1e-14)
    assert jacobian.abs().max() > 0.1
    torch.testing.assert_close(flip_transpose(S), -S, rtol=0, atol=0)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_flip_transpose_is_the_adjoint(k):
    weight = torch.randn(5, 3, k, k, dtype=torch.float64)
    x, y = torch.randn(2, 3, 6, 7, dtype=torch.float64), torch.randn(2, 5, 6, 7, dtype=torch.float64)
    torch.testing.assert_close((conv(x, weight) * y).sum(), (x * conv(y, flip_transpose(weight))).sum(),
                               rtol=1e-12, atol=0)


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("grad_mode", ["exact", "fast"])
def test_many_terms_give_an_orthogonal_jacobian(k, grad_mode):
    S = skew_filter(3, k, operator_norm=1.0)
    # Truncation error <= e * 1^20 / 20! ~ 1e-18: the singular values are 1 to rounding.
    jacobian = explicit_jacobian(lambda b: lipkernels.soc_exp(b, S, 20, grad_mode), 3, 5)
    singular_values = torch.linalg.svdvals(jacobian)
    assert (singular_values - 1).abs().max().item() < 1e-10


@pytest.mark.parametrize("grad_mode", ["exact", "fast"])
def test_one_term_is_the_identity_and_two_add_one_conv(grad_mode):
    x, S = torch.randn(2, 4, 6, 6), torch.randn(4, 4, 3, 3)
    assert torch.equal(lipkernels.soc_exp(x, S, 1, grad_mode), x)
    torch.testing.assert_close(lipkernels.soc_exp(x, S, 2, grad_mode), x + conv(x, S))


@pytest.mark.parametrize("terms", [3, 6])
def test_series_matches_explicit_powers(terms):
    x, S = torch.randn(2, 3, 5, 6, dtype=torch.float64), torch.randn(3, 3, 3, 3, dtype=torch.float64)
    expected, power = x.clone(), x
    for i in range(1, terms):
        power = conv(power, S)
        expected = expected + power / math.factorial(i)
    for grad_mode in ("exact", "fast"):
        torch.testing.assert_close(lipkernels.soc_exp(x, S, terms, grad_mode), expected,
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("terms", [2, 6, 15])
def test_fast_forward_equals_exact_forward(dtype, terms):
    x, S = torch.randn(2, 6, 7, 7, dtype=dtype), 0.3 * torch.randn(6, 6, 3, 3, dtype=dtype)
    exact = lipkernels.soc_exp(x, S, terms, "exact")
    torch.testing.assert_close(lipkernels.soc_exp(x, S, terms, "fast"), exact,
                               rtol=100 * torch.finfo(dtype).eps, atol=100 * torch.finfo(dtype).eps)


@pytest.mark.parametrize("grad_mode", ["exact", "fast"])
@pytest.mark.parametrize("skew_part", [True, False])
def test_grad_x_is_the_transposed_series(grad_mode, skew_part):
    """Both modes: grad_x = soc_exp(g, flipT(S), terms), for skew and for general S (the fast
    backward applies flipT(S), not the paper's -S, so it needs no skew-symmetry)."""
    S = torch.randn(4, 4, 3, 3, dtype=torch.float64) * 0.3
    S = lipkernels.skew(S) if skew_part else S
    x, g = torch.randn(2, 4, 6, 5, dtype=torch.float64), torch.randn(2, 4, 6, 5, dtype=torch.float64)
    grad_x, _ = series_gradients(x, S, 6, grad_mode, g)
    torch.testing.assert_close(grad_x, lipkernels.soc_exp(g, flip_transpose(S), 6),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("terms", [1, 2, 4])
def test_exact_gradcheck(k, terms):
    x = torch.randn(1, 2, 4, 3, dtype=torch.float64, requires_grad=True)
    S = (0.5 * torch.randn(2, 2, k, k, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, S: lipkernels.soc_exp(x, S, terms), (x, S))


def test_fast_gradcheck_for_x():
    x = torch.randn(1, 2, 4, 3, dtype=torch.float64, requires_grad=True)
    S = 0.5 * torch.randn(2, 2, 3, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: lipkernels.soc_exp(x, S, 5, "fast"), (x,))


def weight_gradient(u, g, k):
    return torch.nn.grad.conv2d_weight(u, (u.shape[1], u.shape[1], k, k), g, padding=k // 2)


@pytest.mark.parametrize("terms", [3, 4, 6])
def test_fast_grad_S_differs_from_exact_by_the_documented_terms(terms):
    """grad_S(fast) - grad_S(exact) = sum_{a,b<n} c_ab W(S^b x, (S^T)^a g) with
    c_ab = 1/((a+1)!(b+1)!) - [a+b <= n-1]/(a+b+1)!, n = terms - 1 (see FastSOCExp), for any S."""
    n, k = terms - 1, 3
    S = torch.randn(3, 3, k, k, dtype=torch.float64) * 0.4
    x, g = torch.randn(2, 3, 5, 5, dtype=torch.float64), torch.randn(2, 3, 5, 5, dtype=torch.float64)
    _, exact = series_gradients(x, S, terms, "exact", g)
    _, fast = series_gradients(x, S, terms, "fast", g)
    powers_x, powers_g = [x], [g]
    for _ in range(n - 1):
        powers_x.append(conv(powers_x[-1], S))
        powers_g.append(conv(powers_g[-1], flip_transpose(S)))
    predicted = torch.zeros_like(S)
    for a in range(n):
        for b in range(n):
            coupled = 1 / math.factorial(a + b + 1) if a + b <= n - 1 else 0.0
            coefficient = 1 / (math.factorial(a + 1) * math.factorial(b + 1)) - coupled
            predicted += coefficient * weight_gradient(powers_x[b], powers_g[a], k)
    assert predicted.abs().max() > 1e-3
    torch.testing.assert_close(fast - exact, predicted, rtol=1e-10, atol=1e-12)


def test_fast_grad_S_error_is_second_order_in_S():
    """The first differing term is W(S x, S^T g) / 12, so the relative error of grad_S is about
    ||S||^2 / 12 times a shape factor: below ||S||^2 for a conv norm of 0.05, and it drops about
    4x when S halves."""
    x, g = torch.randn(2, 4, 6, 6, dtype=torch.float64), torch.randn(2, 4, 6, 6, dtype=torch.float64)
    S = skew_filter(4, 3, operator_norm=1.0)
    errors = []
    for scale in (0.05, 0.025):
        _, exact = series_gradients(x, scale * S, 6, "exact", g)
        _, fast = series_gradients(x, scale * S, 6, "fast", g)
        errors.append(((fast - exact).norm() / exact.norm()).item())
    assert errors[0] < 0.05 ** 2
    assert 3.5 < errors[0] / errors[1] < 4.5


def require_kernel(device, backend):
    """Skip unless soc_exp has a `backend` kernel usable on `device` tensors here."""
    helpers.require_kernel(device, backend, KERNELS)


# (kernel size, terms): every size at 1, 2 and 6 terms (the training default), 15 (the
# evaluation default) at sizes 1 and 3; 5x5 at 15 terms adds no code path but is the slowest
# case under the Triton interpreter.
KERNEL_SIZES_AND_TERMS = [(k, terms) for k in (1, 3, 5) for terms in (1, 2, 6, 15)
                          if (k, terms) != (5, 15)]


def kernel_cases(test):
    """Every kernel target x (kernel size, term count) x gradient mode."""
    for name, values in (("grad_mode", ["exact", "fast"]), ("k,terms", KERNEL_SIZES_AND_TERMS),
                         ("device,backend", KERNEL_TARGETS)):
        test = pytest.mark.parametrize(name, values)(test)
    return test


def kernel_problem(device, channels=6, size=(5, 7), k=3, batch=2):
    """Random x, upstream gradient and a filter small enough for the series to converge fast."""
    x = torch.randn(batch, channels, *size, dtype=torch.float64, device=device)
    g = torch.randn_like(x)
    S = 0.3 * torch.randn(channels, channels, k, k, dtype=torch.float64, device=device)
    return x, S, g


@kernel_cases
def test_kernel_forward_matches_reference(device, backend, k, terms, grad_mode):
    require_kernel(device, backend)
    x, S, _ = kernel_problem(device, k=k)
    for dtype in (torch.float64, torch.float32):
        compare_with_reference(lambda x, S: run(backend, lipkernels.soc_exp, x, S, terms, grad_mode),
                               lambda x, S: reference.soc_exp(x, S, terms), (x, S), dtype, ["y"])


def gradients(fn, terms, grad_mode):
    """(x, S, g) -> (grad_x, grad_S) of <fn(x, S, terms, grad_mode), g>."""
    def grad(x, S, g):
        x, S = x.detach().requires_grad_(), S.detach().requires_grad_()
        return torch.autograd.grad((fn(x, S, terms, grad_mode) * g).sum(), (x, S), allow_unused=True,
                                   materialize_grads=True)
    return grad


@kernel_cases
def test_kernel_backward_matches_reference(device, backend, k, terms, grad_mode):
    """Exact mode against autograd through the reference series, fast mode against FastSOCExp."""
    require_kernel(device, backend)
    x, S, g = kernel_problem(device, k=k)
    expected = reference.soc_exp if grad_mode == "exact" or terms == 1 else (
        lambda x, S, terms, grad_mode: FastSOCExp.apply(x, S, terms))
    for dtype in (torch.float64, torch.float32):
        compare_with_reference(gradients(lambda *a: run(backend, lipkernels.soc_exp, *a), terms, grad_mode),
                               gradients(expected, terms, grad_mode), (x, S, g), dtype,
                               ["grad_x", "grad_S"])


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
@pytest.mark.parametrize("grad_mode", ["exact", "fast"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_half_precision_matches_reference(device, backend, dtype, grad_mode):
    """Half-precision inputs, float accumulation: forward and gradients within twice the error
    of the reference run in the same precision (which rounds every term)."""
    require_kernel(device, backend)
    x, S, g = kernel_problem(device)
    kernel = lambda *a: run(backend, lipkernels.soc_exp, *a)  # noqa: E731
    compare_with_reference(lambda x, S: kernel(x, S, 6, grad_mode),
                           lambda x, S: reference.soc_exp(x, S, 6, grad_mode), (x, S), dtype, ["y"])
    compare_with_reference(gradients(kernel, 6, grad_mode), gradients(reference.soc_exp, 6, grad_mode),
                           (x, S, g), dtype, ["grad_x", "grad_S"])


@pytest.mark.gpu
@pytest.mark.parametrize("allow_tf32", [False, True])
def test_triton_float32_uses_tf32_exactly_where_convolutions_may(allow_tf32):
    """The float32 policy (docs/design.md §4): the Triton kernel's channel mixing runs on TF32
    tensor cores only where torch lets the reference's convolutions use TF32
    (torch.backends.cudnn.allow_tf32). With the switch off both are IEEE float32, and the
    accuracy rule then holds the kernel to float32's accuracy; with it on, to twice the TF32
    reference's own error."""
    require_kernel("cuda", "triton")
    x, S, g = kernel_problem("cuda", channels=32, size=(8, 8), batch=4)
    kernel = lambda *a: run("triton", lipkernels.soc_exp, *a)  # noqa: E731
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=allow_tf32):
        compare_with_reference(lambda x, S: kernel(x, S, 6), lambda x, S: reference.soc_exp(x, S, 6),
                               (x, S), torch.float32, ["y"])
        compare_with_reference(gradients(kernel, 6, "exact"), gradients(reference.soc_exp, 6, "exact"),
                               (x, S, g), torch.float32, ["grad_x", "grad_S"])


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
@pytest.mark.parametrize("grad_mode", ["exact", "fast"])
def test_kernel_large_images_match_reference(device, backend, grad_mode):
    """Images of 16x16 pixels and more: the cpp op's channels-last path, several pixel tiles
    per image in the GPU kernels."""
    require_kernel(device, backend)
    x, S, g = kernel_problem(device, channels=3, size=(16, 17), batch=2)
    kernel = lambda *a: run(backend, lipkernels.soc_exp, *a)  # noqa: E731
    compare_with_reference(lambda x, S: kernel(x, S, 4, grad_mode),
                           lambda x, S: reference.soc_exp(x, S, 4), (x, S), torch.float32, ["y"])
    compare_with_reference(gradients(kernel, 4, grad_mode), gradients(reference.soc_exp, 4, grad_mode),
                           (x, S, g), torch.float32, ["grad_x", "grad_S"])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("grad_mode", ["exact", "fast"])
def test_triton_tiles_across_images_match_reference(device, grad_mode):
    """Small images: the Horner steps' pixel tiles and the weight gradient's pixel splits span
    several images, and the zero padding must stop at each image's border inside them."""
    require_kernel(device, "triton")
    from lipkernels.triton import soc_exp as triton_soc_exp

    x, S, g = kernel_problem(device, channels=3, size=(2, 3), batch=7)
    assert triton_soc_exp.forward_launch_config(x, S)[1]["BLOCK_M"] > 6
    assert triton_soc_exp._WeightGradient(x, S).partial.shape[0] > 1
    compare_with_reference(gradients(lambda *a: run("triton", lipkernels.soc_exp, *a), 6, grad_mode),
                           gradients(reference.soc_exp, 6, grad_mode), (x, S, g), torch.float64,
                           ["grad_x", "grad_S"])
    compare_with_reference(lambda x, S: run("triton", lipkernels.soc_exp, x, S, 6, grad_mode),
                           lambda x, S: reference.soc_exp(x, S, 6), (x, S), torch.float64, ["y"])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_triton_weight_gradient_is_the_same_on_every_run(device):
    """grad_S from per-program partial sums added in a fixed order, with no atomics: two runs of
    the exact backward agree bit for bit, with the pixels split over several programs."""
    require_kernel(device, "triton")
    from lipkernels.triton import soc_exp as triton_soc_exp

    x, S, g = kernel_problem(device, channels=3, size=(2, 3), batch=7)
    assert triton_soc_exp._WeightGradient(x, S).partial.shape[0] > 1
    first, second = (run("triton", lambda: gradients(lipkernels.soc_exp, 4, "exact")(x, S, g))
                     for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("channels", [32, 72])
def test_triton_tiles_split_channels(channels):
    """The Horner steps over several tiles of output channels and of reduction channels, whole
    (32 = 2 x 16) and with a partial last block (72 = 4 x 16 + 8), and the weight gradient over
    two tiles of channels at 72: the interpreter against the float64 reference, forward and
    exact gradients."""
    require_kernel("cpu", "triton")
    from lipkernels.triton import soc_exp as triton_soc_exp

    x, S, g = kernel_problem("cpu", channels=channels, size=(3, 5), batch=3)
    grid, config = triton_soc_exp.forward_launch_config(x, S)
    assert grid[1] > 1 and config["BLOCK_K"] < channels
    assert config["WHOLE_BLOCKS"] == (channels % config["BLOCK_K"] == 0)
    assert (triton_soc_exp._WeightGradient(x, S).config["BLOCK_CO"] < channels) == (channels > 64)
    kernel = lambda *a: run("triton", lipkernels.soc_exp, *a)  # noqa: E731
    compare_with_reference(lambda x, S: kernel(x, S, 4), lambda x, S: reference.soc_exp(x, S, 4),
                           (x, S), torch.float64, ["y"])
    compare_with_reference(gradients(kernel, 4, "exact"), gradients(reference.soc_exp, 4, "exact"),
                           (x, S, g), torch.float64, ["grad_x", "grad_S"])


def _assert_fast_series_matches_reference(x, S, g, terms):
    """The Triton series against the float64 reference: y, and through the fast gradient the
    z_2 the forward keeps."""
    kernel = lambda *a: run("triton", lipkernels.soc_exp, *a)  # noqa: E731
    compare_with_reference(lambda x, S: kernel(x, S, terms, "fast"),
                           lambda x, S: reference.soc_exp(x, S, terms), (x, S), torch.float64,
                           ["y"])
    compare_with_reference(gradients(kernel, terms, "fast"),
                           gradients(lambda x, S, terms, _: FastSOCExp.apply(x, S, terms),
                                     terms, "fast"), (x, S, g), torch.float64,
                           ["grad_x", "grad_S"])


def test_triton_series_programs_take_several_tiles(monkeypatch):
    """The persistent forward on fewer programs than output tiles: each program takes tiles
    program_id, program_id + programs, ... of every step (3 programs over several tiles of
    pixels and of channels here), against the float64 reference: y, and through the fast
    gradient the z_2 the forward keeps (the backward's launches take no program count)."""
    require_kernel("cpu", "triton")
    from lipkernels.triton import soc_exp as triton_soc_exp

    x, S, g = kernel_problem("cpu", channels=24, size=(4, 5), batch=3)
    items, config = triton_soc_exp.series_launch_config(x, S)
    assert items > 3 and config["BLOCK_N"] < 24
    monkeypatch.setattr(triton_soc_exp, "persistent_programs", lambda device: 3)
    _assert_fast_series_matches_reference(x, S, g, 5)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("channels,splits", [(32, 2), (72, 3)])
def test_triton_series_splits_the_reduction(device, channels, splits, monkeypatch):
    """The persistent forward with its reduction split over ranges of input-channel blocks
    (the launcher's choice on small images with many channels), each step's partial sums
    added in a second phase: whole blocks (32 = 2 x 16) and a partial last block with uneven
    ranges (72 = 4 x 16 + 8 over 3 splits), 3 programs over every work item, against the
    float64 reference: y, and z_2 through the fast gradient."""
    require_kernel(device, "triton")
    from lipkernels.triton import soc_exp as triton_soc_exp

    assert triton_soc_exp.series_tiles(128 * 2 * 2, 512, 3, 2, 4)[3] > 1
    monkeypatch.setattr(triton_soc_exp, "series_tiles",
                        lambda pixels, channels, *_: (16, 16, 16, splits))
    monkeypatch.setattr(triton_soc_exp, "persistent_programs", lambda device: 3)
    x, S, g = kernel_problem(device, channels=channels, size=(3, 4), batch=2)
    assert triton_soc_exp.series_launch_config(x, S)[1]["SPLITS"] == splits
    _assert_fast_series_matches_reference(x, S, g, 4)


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
@pytest.mark.parametrize("terms", [1, 2, 4])
def test_kernel_exact_gradcheck(device, backend, terms):
    require_kernel(device, backend)
    x, S, _ = kernel_problem(device, channels=2, size=(4, 3), batch=1)
    x, S = x.requires_grad_(), S.requires_grad_()
    assert gradcheck(lambda x, S: run(backend, lipkernels.soc_exp, x, S, terms), (x, S), device, backend)


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
@pytest.mark.parametrize("terms,grad_mode", [(1, "exact"), (4, "exact"), (1, "fast"), (2, "fast"),
                                             (4, "fast")])
def test_opcheck(device, backend, terms, grad_mode):
    require_kernel(device, backend)
    x, S, g = (t.float() for t in kernel_problem(device))
    op = torch.ops.lipkernels.soc_exp
    torch.library.opcheck(op, (x.requires_grad_(), S.requires_grad_(), terms, grad_mode))
    saved = op(x.detach(), S.detach(), terms, grad_mode)[1]
    fast = grad_mode == "fast"
    start, powers = (saved[0] if fast and terms > 1 else x.detach()), ([] if fast else saved)
    torch.library.opcheck(torch.ops.lipkernels.soc_exp_backward,
                          (g, S.detach(), start, powers, terms, grad_mode))


@pytest.mark.parametrize("backend", ["cpp", "triton"])
@pytest.mark.parametrize("size", [(4, 5), (16, 16)])  # NCHW and channels-last on the CPU
def test_saved_tensors_per_kernel(size, backend):
    """What each kernel keeps for the backward (ops/soc_exp.py): the CPU kernel the exact mode's
    terms - 2 powers S^j x / j!, the Triton kernels nothing; both z_2 alone in fast mode."""
    require_kernel("cpu", backend)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    S = torch.randn(3, 3, 3, 3, dtype=torch.float64)
    op = custom_ops("soc_exp", backend)[0]
    _, powers = op(x, S, 5, "exact")
    expected, term = [], x
    for j in range(1, 4):
        term = conv(term, S) / j
        expected.append(term)
    if backend == "cpp":
        torch.testing.assert_close(powers, expected, rtol=1e-12, atol=1e-12)
    else:
        assert powers == []
    _, saved = op(x, S, 5, "fast")
    assert len(saved) == 1 and saved[0].shape == x.shape


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
@pytest.mark.parametrize("grad_mode", ["exact", "fast"])
def test_torch_compile_fullgraph(backend, grad_mode):
    require_backend("cpu", backend)
    x = torch.randn(2, 4, 6, 5, requires_grad=True)
    S = (0.3 * torch.randn(4, 4, 3, 3)).requires_grad_()

    def loss(x, S):
        with lipkernels.use_backend(backend):
            return lipkernels.soc_exp(x, S, 6, grad_mode).square().sum()

    assert_compiled_matches_eager(loss, x, S)


def test_explicit_cpp_backend_runs_the_kernel():
    require_kernel("cpu", "cpp")
    x, S = torch.randn(1, 2, 4, 4), torch.randn(2, 2, 3, 3)
    for choice in ("cpp", "auto"):
        with lipkernels.use_backend(choice):
            assert _backend.resolve("soc_exp", "cpu", KERNELS) == "cpp"
            torch.testing.assert_close(lipkernels.soc_exp(x, S, 3), reference.soc_exp(x, S, 3))


def test_explicit_kernel_backend_is_missing():
    """An op without a kernel for the chosen backend raises, naming it; auto takes the reference."""
    with lipkernels.use_backend("cpp"), pytest.raises(RuntimeError, match="soc_exp has no cpp kernel"):
        _backend.resolve("soc_exp", "cpu", {})
    with lipkernels.use_backend("auto"):
        assert _backend.resolve("soc_exp", "cpu", {}) == "reference"


def test_kernel_op_rejects_bad_input():
    """The C++ op checks its own arguments: torch.ops.lipkernels.* bypasses the Python checks."""
    require_kernel("cpu", "cpp")
    x, S = torch.randn(1, 3, 4, 4), torch.randn(3, 3, 3, 3)
    op, backward = torch.ops.lipkernels.soc_exp, torch.ops.lipkernels.soc_exp_backward
    # The same words and exception types as the functional API (tests/test_input_validation.py).
    cases = [
        (op, (x[0], S, 3, "exact"), ValueError, r"soc_exp: x must be 4-D"),
        (op, (x, S[:, :, :2, :2], 3, "exact"), ValueError,
         "soc_exp: S must have a square kernel of odd size k"),
        (op, (x, S[:2], 3, "exact"), ValueError, "soc_exp: S must be square in channels"),
        (op, (x, S.double(), 3, "exact"), TypeError, "soc_exp: S has dtype torch.float64 but x"),
        (op, (x.int(), S.int(), 3, "exact"), TypeError, "soc_exp: x must have dtype float32"),
        (op, (x, S, 0, "exact"), ValueError, "soc_exp: terms must be >= 1"),
        (op, (x, S, 3, "approx"), ValueError, "soc_exp: grad_mode must be one of exact, fast"),
        (backward, (x, S, x[:, :2], [x], 3, "exact"), ValueError,
         r"soc_exp_backward: start must have shape \(1, 3, 4, 4\) to match grad_y"),
        (backward, (x, S, x.double(), [], 3, "fast"), TypeError,
         "soc_exp_backward: start has dtype torch.float64 but grad_y"),
        (backward, (x, S, x, [], 4, "exact"), ValueError,
         "soc_exp_backward: powers must hold the 2 powers"),
        (backward, (x, S, x, [x, x[:, :2]], 4, "exact"), ValueError,
         r"soc_exp_backward: powers\[1\] must have shape \(1, 3, 4, 4\) to match grad_y"),
    ]
    for fn, args, error, message in cases:
        with pytest.raises(error, match=message):
            fn(*args)


def _x(**kwargs):
    return torch.randn(1, 3, 4, 4, **kwargs)


def _S(shape=(3, 3, 3, 3), **kwargs):
    return torch.randn(shape, **kwargs)


ODD_KERNEL = "S must have a square kernel of odd size"


@pytest.mark.parametrize(
    "x,S,terms,grad_mode,error,message",
    [
        (torch.randn(2, 3, 4), _S(), 3, "exact", ValueError, "x must be 4-D"),
        (_x(), _S((3, 3, 4, 4)), 3, "exact", ValueError, ODD_KERNEL),
        (_x(), _S((3, 3, 3, 1)), 3, "exact", ValueError, ODD_KERNEL),
        (_x(), _S((4, 3, 3, 3)), 3, "exact", ValueError, "S must be square in channels"),
        (_x(), _S((4, 4, 3, 3)), 3, "exact", ValueError, r"S must have shape \(3, 3, 3, 3\) to match x"),
        (_x(), _S(), 0, "exact", ValueError, "terms must be >= 1"),
        (_x(), _S(), 2.0, "exact", TypeError, "terms must be an int"),
        (_x(), _S(), 3, "approx", ValueError, "grad_mode must be one of exact, fast"),
        (_x(), _S(dtype=torch.float64), 3, "exact", TypeError, "S has dtype"),
        (_x(), _S(device="meta"), 3, "exact", ValueError, "same device"),
        (_x().int(), _S(), 3, "exact", TypeError, "x must have dtype"),
    ],
)
def test_bad_input_is_rejected(x, S, terms, grad_mode, error, message):
    with pytest.raises(error, match=message):
        lipkernels.soc_exp(x, S, terms, grad_mode)


@pytest.mark.parametrize(
    "weight,message",
    [
        (torch.randn(3, 3, 3), "weight must be 4-D"),
        (torch.randn(3, 4, 3, 3), "weight must be square in channels"),
        (torch.randn(3, 3, 2, 2), "weight must have a square kernel of odd size"),
    ],
)
def test_bad_skew_input_is_rejected(weight, message):
    with pytest.raises(ValueError, match=message):
        lipkernels.skew(weight)
