"""aol_rescaling: d against the formula on the explicitly formed G (a loop over the offsets and
the overlapping taps, and the rows of J^T J of the convolution's explicit Jacobian), the
guarantee on exact Jacobians (zero padding of several widths, circular padding) and its
tightness, every kernel backend against the reference (forward, backward, gradcheck, double
backward, opcheck, torch.compile), half precision, zero and non-finite inputs, and bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

import lipkernels
from lipkernels import reference
from lipkernels.ops.aol_rescaling import KERNELS
from lipkernels.reference.aol_rescaling import EPS
from helpers import (ALL_TARGETS, CPU_DTYPES, KERNEL_TARGETS, assert_compiled_matches_eager,
                     compare_with_reference, custom_ops, gradcheck, largest_singular_value,
                     layer_jacobian, require_backend, require_kernel, run)

MATRICES = [(3, 5), (6, 4), (1, 3)]
# Square, rectangular, 1 x 1 and even kernels, C_out above and below C_in.
FILTERS = [(3, 2, 3, 3), (2, 3, 2, 4), (4, 3, 1, 1), (2, 2, 5, 3), (3, 4, 2, 2)]

every_shape = pytest.mark.parametrize("shape", MATRICES + FILTERS)
weightings = pytest.mark.parametrize("weighted", [False, True], ids=["q=1", "log_q"])


def require(device, backend):
    if backend == "reference":
        require_backend(device, backend)
    else:
        require_kernel(device, backend, KERNELS)


def random_problem(shape, weighted, device="cpu", dtype=torch.float64):
    """A random weight of `shape` and, if `weighted`, random log-weights (C_in,)."""
    weight = torch.randn(shape, dtype=torch.float64)
    log_q = torch.randn(shape[1], dtype=torch.float64) if weighted else None
    cast = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    return cast(weight), cast(log_q)


def q_ratios(log_q, channels):
    """q_j / q_i as a quotient of exponentials (the op computes exp(log_q_j - log_q_i))."""
    if log_q is None:
        return torch.ones(channels, channels, dtype=torch.float64)
    q = torch.exp(log_q.cpu())
    return q[None, :] / q[:, None]


def explicit_absolute_gram(weight):
    """A_ij = sum over offsets delta of |sum_(o, x) W[o, i, x] W[o, j, x + delta]|, by a loop
    over every offset and every pair of taps that overlap at it."""
    taps = weight.cpu() if weight.dim() == 4 else weight.cpu()[:, :, None, None]
    k_1, k_2 = taps.shape[2:]
    absolute = torch.zeros(taps.shape[1], taps.shape[1], dtype=torch.float64)
    for a in range(1 - k_1, k_1):
        for b in range(1 - k_2, k_2):
            block = torch.zeros_like(absolute)
            for x_1 in range(max(0, -a), min(k_1, k_1 - a)):
                for x_2 in range(max(0, -b), min(k_2, k_2 - b)):
                    block += taps[:, :, x_1, x_2].T @ taps[:, :, x_1 + a, x_2 + b]
            absolute += block.abs()
    return absolute


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@every_shape
@weightings
def test_d_is_the_formula_on_the_explicit_gram(device, backend, shape, weighted):
    require(device, backend)
    weight, log_q = random_problem(shape, weighted, device)
    d = run(backend, lipkernels.aol_rescaling, weight, log_q)
    sums = (explicit_absolute_gram(weight) * q_ratios(log_q, shape[1])).sum(1)
    assert d.shape == (shape[1],) and d.dtype == torch.float64
    torch.testing.assert_close(d.cpu(), (sums + 1e-6) ** -0.5, rtol=1e-12, atol=0)


@pytest.mark.parametrize("shape", FILTERS)
@weightings
def test_sums_are_the_weighted_rows_of_the_convolution_gram(shape, weighted):
    """S_i is the weighted absolute row sum sum_(j, y) |(J^T J)[(i, c), (j, y)]| q_j / q_i of
    the full-padding convolution's Jacobian J at the centre c of a (2 k_1 - 1) x (2 k_2 - 1)
    image, the pixel that every offset reaches."""
    weight, log_q = random_problem(shape, weighted)
    k_1, k_2 = shape[2:]
    image = (2 * k_1 - 1, 2 * k_2 - 1)
    transposed = layer_jacobian(lambda x: F.conv2d(x, weight, padding=(k_1 - 1, k_2 - 1)),
                                (shape[1], *image))
    gram = (transposed @ transposed.T).reshape(shape[1], *image, shape[1], *image)
    rows = gram[:, k_1 - 1, k_2 - 1].abs().sum((-2, -1))
    sums = (rows * q_ratios(log_q, shape[1])).sum(1)
    torch.testing.assert_close(lipkernels.aol_rescaling(weight, log_q), (sums + EPS) ** -0.5,
                               rtol=1e-12, atol=0)


def same_size(mode):
    """The convolution padded by `mode` ("constant" for zeros, "circular") that keeps the
    image size: k - 1 pixels per axis, the larger half after for even k, as padding="same"."""
    def convolution(x, weight):
        (k_1, k_2), before = weight.shape[2:], [(k - 1) // 2 for k in weight.shape[2:]]
        padding = (before[1], k_2 - 1 - before[1], before[0], k_1 - 1 - before[0])
        return F.conv2d(F.pad(x, padding, mode=mode), weight)
    return convolution


CONVOLUTIONS = {
    "zeros-same": same_size("constant"),
    "zeros-valid": lambda x, w: F.conv2d(x, w),
    "zeros-full": lambda x, w: F.conv2d(x, w, padding=(w.shape[2] - 1, w.shape[3] - 1)),
    "zeros-stride-2": lambda x, w: F.conv2d(x, w, stride=2, padding=1),
    "circular": same_size("circular"),
}

# Float64 rounding of d and of the singular values: far below the margin eps / S of the bound.
ROUNDING = 1e-12


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@pytest.mark.parametrize("shape", [(3, 2, 3, 3), (2, 3, 2, 2), (2, 3, 1, 3), (4, 2, 5, 5),
                                   (3, 3, 3, 3)])
@pytest.mark.parametrize("convolution", list(CONVOLUTIONS))
def test_rescaled_convolution_is_a_contraction(device, backend, shape, convolution):
    """The exact largest singular value of the convolution with W * d, random log_q (spread
    wider than N(0, 1), so the weights matter), on images of several sizes, at most 1."""
    require(device, backend)
    weight, _ = random_problem(shape, False, device)
    log_q = 2 * torch.randn(shape[1], dtype=torch.float64, device=device)
    d = run(backend, lipkernels.aol_rescaling, weight, log_q)
    scaled = (weight * d[None, :, None, None]).cpu()
    for image in [(3, 3), (4, 5), (6, 6)]:
        if convolution == "zeros-valid" and min(image) < max(shape[2:]):
            continue
        transposed = layer_jacobian(lambda x: CONVOLUTIONS[convolution](x, scaled),
                                    (shape[1], *image))
        assert largest_singular_value(transposed) <= 1 + ROUNDING, image


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@pytest.mark.parametrize("shape", MATRICES + [(2, 7), (7, 7)])
@weightings
def test_rescaled_matrix_is_a_contraction(device, backend, shape, weighted):
    require(device, backend)
    weight, log_q = random_problem(shape, weighted, device)
    d = run(backend, lipkernels.aol_rescaling, weight, log_q)
    assert largest_singular_value((weight * d).cpu()) <= 1 + ROUNDING


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
def test_orthogonal_columns_give_an_isometry(device, backend):
    """G is diagonal, S_i = |w_i|^2, and every singular value of W diag(d) is
    sqrt(S_i / (S_i + eps)), within eps / 2 |w_i|^2 <= 1e-6 of 1 for columns of norm >= 1."""
    require(device, backend)
    orthonormal = torch.linalg.qr(torch.randn(7, 4, dtype=torch.float64))[0]
    weight = (orthonormal * torch.tensor([1.0, 2.0, 3.0, 1.5], dtype=torch.float64)).to(device)
    d = run(backend, lipkernels.aol_rescaling, weight)
    values = torch.linalg.svdvals((weight * d).cpu())
    assert (values - 1).abs().max() <= 1e-6
    assert values.max() < 1


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@pytest.mark.parametrize("kernel", [(1, 1), (3, 3), (5, 3)])
def test_a_centre_tap_filter_behaves_like_its_matrix(device, backend, kernel):
    """A filter whose only nonzero tap is the centre has G = W_c^T W_c at offset 0 alone: the
    matrix's d, and a same-padded convolution with the matrix's norm."""
    require(device, backend)
    centre, log_q = random_problem((3, 4), True, device)
    weight = torch.zeros(3, 4, *kernel, dtype=torch.float64, device=device)
    weight[:, :, kernel[0] // 2, kernel[1] // 2] = centre
    d = run(backend, lipkernels.aol_rescaling, weight, log_q)
    torch.testing.assert_close(d, run(backend, lipkernels.aol_rescaling, centre, log_q),
                               rtol=1e-14, atol=0)
    scaled = (weight * d[None, :, None, None]).cpu()
    transposed = layer_jacobian(lambda x: F.conv2d(x, scaled, padding="same"), (4, 4, 4))
    assert largest_singular_value(transposed) == pytest.approx(
        largest_singular_value((centre * d).cpu()), rel=1e-12)


def gradients(fn):
    """(W, log_q, g) -> the gradients of <fn(W, log_q), g> w.r.t. W and, if given, log_q."""
    def grad(weight, log_q, g):
        leaves = [t.detach().requires_grad_() for t in (weight, log_q) if t is not None]
        d = fn(leaves[0], leaves[1] if log_q is not None else None)
        return torch.autograd.grad((d * g).sum(), leaves)
    return grad


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
@every_shape
@weightings
def test_kernel_forward_and_backward_match_reference(device, backend, shape, weighted):
    require(device, backend)

    def kernel(weight, log_q):
        return run(backend, lipkernels.aol_rescaling, weight, log_q)

    weight, log_q = random_problem(shape, weighted, device)
    g = torch.randn(shape[1], dtype=torch.float64, device=device)
    names = ["grad_weight", "grad_log_q"][:2 if weighted else 1]
    for dtype in CPU_DTYPES:
        compare_with_reference(kernel, reference.aol_rescaling, (weight, log_q), dtype, ["d"])
        compare_with_reference(gradients(kernel), gradients(reference.aol_rescaling),
                               (weight, log_q, g), dtype, names)


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2, 3)])
@weightings
def test_gradcheck_and_gradgradcheck(device, backend, shape, weighted):
    """Random inputs keep every G entry away from 0, where |G| has its kink; double backward
    recomputes the reference on the kernel backends."""
    require(device, backend)
    weight, log_q = random_problem(shape, weighted, device)
    inputs = tuple(t.requires_grad_() for t in (weight, log_q) if t is not None)

    def fn(*args):
        return lipkernels.aol_rescaling(*args)

    with lipkernels.use_backend(backend):
        assert gradcheck(fn, inputs, device, backend)
        assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
@pytest.mark.parametrize("shape,weighted", [((4, 3), True), ((3, 2, 3, 3), False),
                                            ((2, 3, 2, 4), True)])
def test_kernel_opcheck(device, backend, shape, weighted):
    require(device, backend)
    forward, backward = custom_ops("aol_rescaling", backend)
    weight, log_q = random_problem(shape, weighted, device, torch.float32)
    torch.library.opcheck(forward, (weight.requires_grad_(),
                                    None if log_q is None else log_q.requires_grad_()))
    d, absolute_gram, signs = forward(weight.detach(), None if log_q is None else log_q.detach())
    channels = shape[1]
    assert absolute_gram.shape == (channels, channels)
    assert signs.dtype == torch.int8
    assert signs.shape == (channels, channels, *(2 * k - 1 for k in shape[2:]))
    torch.library.opcheck(backward, (torch.randn_like(d), weight.detach(),
                                     None if log_q is None else log_q.detach(), d,
                                     absolute_gram, signs))


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
@pytest.mark.parametrize("shape", [(4, 3), (3, 2, 3, 3)])
def test_backward_without_log_q_gives_the_gradient_at_zero(device, backend, shape):
    """What the schema states: with log_q None (q = 1) the backward's grad_log_q is the
    gradient at log_q = 0, which the op returns (autograd drops it)."""
    require(device, backend)
    forward, backward = custom_ops("aol_rescaling", backend)
    weight, _ = random_problem(shape, False, device)
    zeros = torch.zeros(shape[1], dtype=torch.float64, device=device)
    g = torch.randn(shape[1], dtype=torch.float64, device=device)
    without = backward(g, weight, None, *forward(weight, None))
    at_zero = backward(g, weight, zeros, *forward(weight, zeros))
    torch.testing.assert_close(without, at_zero, rtol=1e-14, atol=0)
    (expected,) = gradients(reference.aol_rescaling)(weight, zeros, g)[1:]
    torch.testing.assert_close(without[1], expected)


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@pytest.mark.parametrize("shape", [(4, 3), (3, 2, 3, 2)])
def test_compiled_matches_eager(device, backend, shape):
    require(device, backend)
    weight, log_q = random_problem(shape, True, device, torch.float32)

    def loss(weight, log_q):
        with lipkernels.use_backend(backend):
            return lipkernels.aol_rescaling(weight, log_q).square().sum()

    assert_compiled_matches_eager(loss, weight.requires_grad_(), log_q.requires_grad_())


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_float32_rounded_down(device, backend, dtype):
    """Computed in float32 from the rounded inputs and returned within 1.5 units of the last
    place below it, never above, so that W diag(d) stays a contraction."""
    require(device, backend)
    weight, log_q = random_problem((3, 4, 3, 3), True, device, dtype)
    d = run(backend, lipkernels.aol_rescaling, weight, log_q)
    assert d.dtype == dtype
    exact = reference.aol_rescaling(weight.float(), log_q.float())
    ulp = torch.finfo(dtype).eps
    assert (d.float() <= exact).all()
    assert (d.float() >= exact * (1 - 1.5 * ulp)).all()


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@pytest.mark.parametrize("shape", [(4, 3), (3, 3, 3, 2)])
def test_zero_weight_and_zero_columns(device, backend, shape):
    """A zero weight gives d = eps^(-1/2) everywhere, with zero gradients; a zero column i gets
    d_i = eps^(-1/2) and leaves the other columns' d as without it (A_ji = 0, whatever q_i)."""
    require(device, backend)
    zero = torch.zeros(shape, dtype=torch.float64, device=device, requires_grad=True)
    log_q = torch.randn(shape[1], dtype=torch.float64, device=device, requires_grad=True)
    with lipkernels.use_backend(backend):
        d = lipkernels.aol_rescaling(zero, log_q)
        grads = torch.autograd.grad(d.sum(), (zero, log_q))
    torch.testing.assert_close(d, torch.full_like(d, EPS ** -0.5), rtol=1e-15, atol=0)
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)
    weight, _ = random_problem(shape, False, device)
    weight[:, 1] = 0
    kept = [0, *range(2, shape[1])]
    d = run(backend, lipkernels.aol_rescaling, weight, log_q.detach())
    assert d[1].item() == pytest.approx(EPS ** -0.5, rel=1e-15)
    torch.testing.assert_close(d[kept], run(backend, lipkernels.aol_rescaling, weight[:, kept],
                                            log_q.detach()[kept]), rtol=1e-14, atol=0)


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@pytest.mark.parametrize("shape", [(4, 3), (3, 3, 3, 2)])
@pytest.mark.parametrize("poisoned,value", [("weight", math.nan), ("weight", math.inf),
                                            ("log_q", math.nan), ("log_q", math.inf),
                                            ("log_q", -math.inf)])
def test_non_finite_input_gives_nan(device, backend, shape, poisoned, value):
    """A non-finite weight entry, or a NaN or +inf log-weight, reaches every S (through G, or
    through the ratios of every row to it): all of d is NaN. A log-weight of -inf is q_0 = 0,
    a limit the other rows' S have (R_j0 = 0), but not S_0 (R_00 = exp(-inf + inf)): d_0 is
    NaN."""
    require(device, backend)
    weight, log_q = random_problem(shape, True, device)
    {"weight": weight, "log_q": log_q}[poisoned].view(-1)[0] = value
    d = run(backend, lipkernels.aol_rescaling, weight, log_q)
    if value == -math.inf:
        assert torch.isnan(d[0]) and torch.isfinite(d[1:]).all()
    else:
        assert torch.isnan(d).all()


def test_bad_input():
    W = torch.randn(3, 4)
    cases = [
        (lambda: lipkernels.aol_rescaling(W[0]), ValueError,
         r"aol_rescaling: weight must be 2-D \(C_out, C_in\) or 4-D \(C_out, C_in, k_1, k_2\); "
         r"got shape \(4,\)"),
        (lambda: lipkernels.aol_rescaling(W[None]), ValueError, "got shape \\(1, 3, 4\\)"),
        (lambda: lipkernels.aol_rescaling(W.to(torch.int64)), TypeError,
         "aol_rescaling: weight must have dtype float32, float64, float16, bfloat16; got "
         "torch.int64"),
        (lambda: lipkernels.aol_rescaling(W.tolist()), TypeError,
         "aol_rescaling: weight must be a torch.Tensor"),
        (lambda: lipkernels.aol_rescaling(W[:, :0]), ValueError,
         "aol_rescaling: weight must not be empty"),
        (lambda: lipkernels.aol_rescaling(W, torch.randn(3)), ValueError,
         r"aol_rescaling: log_q must have shape \(4,\) to match weight \(3, 4\); got \(3,\)"),
        (lambda: lipkernels.aol_rescaling(W, torch.randn(4, 1)), ValueError,
         r"aol_rescaling: log_q must be 1-D; got shape \(4, 1\)"),
        (lambda: lipkernels.aol_rescaling(W, torch.randn(4, dtype=torch.float64)), TypeError,
         "aol_rescaling: log_q has dtype torch.float64 but weight has torch.float32"),
        (lambda: lipkernels.aol_rescaling(W, torch.zeros(4, dtype=torch.int64)), TypeError,
         "aol_rescaling: log_q must have dtype"),
        (lambda: lipkernels.aol_rescaling(W, torch.randn(4, device="meta")), ValueError,
         "aol_rescaling: log_q is on meta but weight is on cpu"),
        (lambda: lipkernels.aol_rescaling(W, [0.0] * 4), TypeError,
         "aol_rescaling: log_q must be a torch.Tensor"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
def test_kernel_ops_take_working_precision_and_their_kept_tensors(device, backend):
    """The ops are the float32/float64 core (the functional API casts half precision for
    them), and the backward refuses signs that are not the forward's int8 correlation."""
    require(device, backend)
    forward, backward = custom_ops("aol_rescaling", backend)
    weight = torch.randn(3, 2, 3, 3, device=device)
    with pytest.raises(TypeError, match="aol_rescaling: weight must have dtype float32, "
                                        "float64; got torch.float16"):
        forward(weight.half(), None)
    d, absolute_gram, signs = forward(weight, None)
    g = torch.randn_like(d)
    with pytest.raises(TypeError, match="aol_rescaling_backward: signs must have dtype int8"):
        backward(g, weight, None, d, absolute_gram, signs.float())
    with pytest.raises(ValueError, match=r"aol_rescaling_backward: signs must have shape "
                                         r"\(2, 2, 5, 5\)"):
        backward(g, weight, None, d, absolute_gram, signs[:, :, :3])
