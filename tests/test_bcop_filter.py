"""bcop_filter: the reference against the seed's conventions (the 2 x 2 block_orth taps written
out, and the taps of every k as the product of the block_orth factors, evaluated on the unit
torus), the filter's orthogonality as a circular convolution (exact singular values, the explicit
Jacobian under the seed's padding), every kernel backend against the reference (forward,
backward, gradcheck, opcheck, torch.compile, double backward), half precision and bad input."""

import itertools

import pytest
import torch
import torch.nn.functional as F

import lipkernels
from lipkernels import reference
from lipkernels.ops.bcop_filter import KERNELS
from helpers import (ALL_TARGETS, KERNEL_TARGETS, assert_compiled_matches_eager,
                     compare_with_reference, custom_ops, gradcheck, require_kernel, run)

# (in_channels, out_channels): square, more outputs, more inputs (C = 4 and C = 6).
CHANNELS = [(4, 4), (2, 4), (4, 2), (3, 6), (6, 3)]
SIZES = [1, 2, 3, 4, 5]


# The Triton kernels under the interpreter (every program of every phase run one after
# another) on the (k, in, out) that cover each growth axis, every orientation and k up to 4;
# on a GPU on every case.
INTERPRETED_CASES = {(2, 4, 4), (3, 2, 4), (3, 4, 2), (3, 3, 6), (4, 6, 3), (2, 2, 2), (3, 2, 1)}


def require(device, backend, case=None):
    if backend != "reference":
        require_kernel(device, backend, KERNELS)
    if backend == "triton" and device == "cpu" and case and case not in INTERPRETED_CASES:
        pytest.skip("the interpreter runs the Triton kernels on INTERPRETED_CASES")


def orthogonal_matrices(size, in_channels, out_channels, device="cpu", dtype=torch.float64):
    """2 size - 1 random orthogonal C x C matrices, C = max(in, out): what the layer's Björck
    iteration gives the op."""
    channels = max(in_channels, out_channels)
    random = torch.randn(2 * size - 1, channels, channels, dtype=torch.float64)
    return torch.linalg.qr(random)[0].to(device=device, dtype=dtype)


def head_and_projectors(M, in_channels, out_channels):
    """H_t (H = M_0[:in, :out], transposed for in > out) and the projectors P_j."""
    head = M[0, :in_channels, :out_channels]
    halves = M[1:, :, :M.shape[-1] // 2]
    return (head.mT if in_channels > out_channels else head), halves @ halves.mT


def filter_taps(weight, in_channels, out_channels):
    """The taps Y[i][j] (r x C) of a filter of kernel size >= 2: weight[o, c, j, i] is
    Y[i][j][c, o] for in <= out, Y[i][j][o, c] for in > out."""
    if in_channels > out_channels:
        return weight.permute(3, 2, 0, 1)
    return weight.permute(3, 2, 1, 0)


@pytest.mark.parametrize("in_channels,out_channels", CHANNELS)
def test_reference_size_two_is_the_block_orth_kernel(in_channels, out_channels):
    """k = 2: the taps are H_t times the seed's 2 x 2 kernel [[P Q, P (I - Q)], [(I - P) Q,
    (I - P)(I - Q)]], tap [i][j] at row j, column i."""
    M = orthogonal_matrices(2, in_channels, out_channels)
    head, (P, Q) = head_and_projectors(M, in_channels, out_channels)
    identity = torch.eye(M.shape[-1], dtype=M.dtype)
    block = [[P @ Q, P @ (identity - Q)], [(identity - P) @ Q, (identity - P) @ (identity - Q)]]
    weight = reference.bcop_filter(M, in_channels, out_channels)
    assert weight.shape == (out_channels, in_channels, 2, 2)
    for i, j in itertools.product(range(2), repeat=2):
        tap = head @ block[i][j]
        expected = tap if in_channels > out_channels else tap.mT
        torch.testing.assert_close(weight[:, :, j, i], expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@pytest.mark.parametrize("in_channels,out_channels", CHANNELS)
@pytest.mark.parametrize("size", SIZES[1:])
def test_taps_are_the_product_of_the_block_factors(device, backend, size, in_channels,
                                                   out_channels):
    """sum_(i, j) Y[i][j] z_1^i z_2^j = H_t prod_t (P_2t + (I - P_2t) z_1)(P_2t+1 + (I - P_2t+1)
    z_2) at random points of the unit torus: the seed's order of the convolutions (first kernel
    on the left), of the two tap axes and of the projectors, independently of its loops."""
    require(device, backend)
    M = orthogonal_matrices(size, in_channels, out_channels, device)
    weight = run(backend, lipkernels.bcop_filter, M, in_channels, out_channels)
    taps = filter_taps(weight, in_channels, out_channels).to(torch.complex128)
    head, projectors = head_and_projectors(M.cpu(), in_channels, out_channels)
    identity = torch.eye(M.shape[-1], dtype=torch.complex128)
    for z_1, z_2 in torch.exp(2j * torch.pi * torch.rand(3, 2, dtype=torch.float64)):
        powers_1 = z_1 ** torch.arange(size, dtype=torch.float64)
        powers_2 = z_2 ** torch.arange(size, dtype=torch.float64)
        response = torch.einsum("i,j,ijrc->rc", powers_1, powers_2, taps.cpu())
        product = head.to(torch.complex128)
        for index, P in enumerate(projectors.to(torch.complex128)):
            z = z_1 if index % 2 == 0 else z_2
            product = product @ (P + (identity - P) * z)
        torch.testing.assert_close(response, product, rtol=0, atol=1e-13)


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@pytest.mark.parametrize("in_channels,out_channels", CHANNELS)
def test_size_one_is_the_head(device, backend, in_channels, out_channels):
    """The seed returns its head matrix as the 1 x 1 filter (H, or H^T for in > out); for
    in < out, where that is not a filter of the shape, its transpose."""
    require(device, backend)
    M = orthogonal_matrices(1, in_channels, out_channels, device)
    weight = run(backend, lipkernels.bcop_filter, M, in_channels, out_channels)
    head = M[0, :in_channels, :out_channels]
    expected = head if in_channels == out_channels else head.mT
    assert torch.equal(weight, expected[:, :, None, None])


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@pytest.mark.parametrize("in_channels,out_channels", CHANNELS)
@pytest.mark.parametrize("size", SIZES)
def test_circular_convolution_is_orthogonal(device, backend, size, in_channels, out_channels):
    """Every exact singular value of the circular convolution is 1, min(in, out) of them per
    frequency, on square and non-square images."""
    require(device, backend)
    M = orthogonal_matrices(size, in_channels, out_channels, device)
    weight = run(backend, lipkernels.bcop_filter, M, in_channels, out_channels)
    for image in (5, 7):
        values = lipkernels.conv_singular_values(weight, (image, image + 1))
        assert values.shape == (image, image + 1, min(in_channels, out_channels))
        torch.testing.assert_close(values, torch.ones_like(values), rtol=0, atol=1e-13)
    values32 = lipkernels.conv_singular_values(
        run(backend, lipkernels.bcop_filter, M.float(), in_channels, out_channels), 6)
    assert (values32.double() - 1).abs().max() < 1e-5


def seed_padded_conv(x, weight):
    """The seed's conv2d_cyclic_pad: circular padding of k // 2 before and k - 1 - k // 2 after
    (asymmetric for even k), then a valid convolution."""
    before = weight.shape[-1] // 2
    after = weight.shape[-1] - 1 - before
    return F.conv2d(F.pad(x, (before, after, before, after), mode="circular"), weight)


def jacobian(conv, weight, in_channels, image):
    x = torch.zeros(1, in_channels, image, image, dtype=weight.dtype)
    matrix = torch.autograd.functional.jacobian(lambda x: conv(x, weight), x)
    return matrix.reshape(-1, x.numel())


@pytest.mark.parametrize("in_channels,out_channels", CHANNELS[:3])
@pytest.mark.parametrize("size", SIZES)
def test_jacobian_under_the_seed_padding_is_an_isometry(size, in_channels, out_channels):
    """The explicit matrix of the seed's circularly padded convolution on a 5 x 5 image: its
    min(in, out) * 25 singular values are 1 (orthogonal for in = out)."""
    M = orthogonal_matrices(size, in_channels, out_channels)
    matrix = jacobian(seed_padded_conv, lipkernels.bcop_filter(M, in_channels, out_channels),
                      in_channels, 5)
    values = torch.linalg.svdvals(matrix)
    assert values.shape == (min(in_channels, out_channels) * 25,)
    torch.testing.assert_close(values, torch.ones_like(values), rtol=0, atol=1e-13)


def test_zero_padding_is_not_orthogonal():
    """What the docstrings say: only circular padding keeps the filter orthogonal."""
    weight = lipkernels.bcop_filter(orthogonal_matrices(3, 4, 4), 4, 4)
    matrix = jacobian(lambda x, w: F.conv2d(x, w, padding=1), weight, 4, 5)
    assert torch.linalg.svdvals(matrix).min() < 0.99


def gradients(fn, in_channels, out_channels):
    def grad(M, g):
        M = M.detach().requires_grad_()
        return torch.autograd.grad((fn(M, in_channels, out_channels) * g).sum(), M)[0]
    return grad


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
@pytest.mark.parametrize("in_channels,out_channels", CHANNELS)
@pytest.mark.parametrize("size", SIZES)
def test_kernel_forward_and_backward_match_reference(device, backend, size, in_channels,
                                                     out_channels):
    """On orthogonal matrices (the layer's input) and on plain random ones (the op's math holds
    for any matrices; gradcheck's perturbations are such)."""
    require(device, backend, (size, in_channels, out_channels))

    def kernel(M, in_channels, out_channels):
        return run(backend, lipkernels.bcop_filter, M, in_channels, out_channels)

    for M in (orthogonal_matrices(size, in_channels, out_channels, device),
              torch.randn_like(orthogonal_matrices(size, in_channels, out_channels, device))):
        g = torch.randn(out_channels, in_channels, size, size, dtype=M.dtype, device=device)
        for dtype in (torch.float64, torch.float32):
            compare_with_reference(kernel, reference.bcop_filter,
                                   (M, in_channels, out_channels), dtype, ["weight"])
            compare_with_reference(gradients(kernel, in_channels, out_channels),
                                   gradients(reference.bcop_filter, in_channels, out_channels),
                                   (M, g), dtype, ["grad_matrices"])


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
def test_gradient_reaches_only_the_columns_the_projectors_read(device, backend):
    """H reads M_0[:in, :out] and P_j the first C/2 columns of M_(j+1): the rest of the
    matrices gets exactly zero gradient, the read entries a non-zero one."""
    require(device, backend)
    M = orthogonal_matrices(3, 2, 4, device).requires_grad_()
    weight = run(backend, lipkernels.bcop_filter, M, 2, 4)
    (grad,) = torch.autograd.grad((weight * torch.randn_like(weight)).sum(), M)
    read = torch.zeros_like(M, dtype=torch.bool)
    read[0, :2, :4] = True
    read[1:, :, :2] = True
    assert torch.equal(grad[~read], torch.zeros_like(grad[~read]))
    assert grad[read].abs().min() > 0


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@pytest.mark.parametrize("size,in_channels,out_channels", [(1, 3, 2), (2, 2, 4), (3, 4, 2)])
def test_gradcheck(device, backend, size, in_channels, out_channels):
    require(device, backend)
    M = orthogonal_matrices(size, in_channels, out_channels, device).requires_grad_()
    with lipkernels.use_backend(backend):
        assert gradcheck(lambda M: lipkernels.bcop_filter(M, in_channels, out_channels), (M,),
                         device, backend)


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@pytest.mark.parametrize("size,in_channels,out_channels", [(2, 2, 2), (3, 2, 1)])
def test_gradgradcheck(device, backend, size, in_channels, out_channels):
    """Double backward (gradient penalties): the kernel backward recomputes the reference."""
    require(device, backend, (size, in_channels, out_channels))
    M = orthogonal_matrices(size, in_channels, out_channels, device).requires_grad_()
    with lipkernels.use_backend(backend):
        assert torch.autograd.gradgradcheck(
            lambda M: lipkernels.bcop_filter(M, in_channels, out_channels), (M,))


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
@pytest.mark.parametrize("size,in_channels,out_channels", [(1, 4, 4), (2, 2, 4), (3, 4, 2)])
def test_kernel_opcheck(device, backend, size, in_channels, out_channels):
    require(device, backend)
    forward, backward = custom_ops("bcop_filter", backend)
    M = orthogonal_matrices(size, in_channels, out_channels, device, torch.float32)
    torch.library.opcheck(forward, (M.requires_grad_(), in_channels, out_channels))
    weight, projectors, iterates = forward(M.detach(), in_channels, out_channels)
    assert projectors.shape == (2 * size - 2, M.shape[-1], M.shape[-1])
    assert len(iterates) == (0 if backend == "triton" else max(2 * size - 3, 0))
    torch.library.opcheck(backward, (torch.randn_like(weight), M.detach(), projectors, iterates,
                                     in_channels, out_channels))


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
def test_compiled_matches_eager(device, backend):
    require(device, backend)
    M = orthogonal_matrices(3, 4, 2, device, torch.float32).requires_grad_()

    def loss(M):
        with lipkernels.use_backend(backend):
            return lipkernels.bcop_filter(M, 4, 2).square().sum()

    assert_compiled_matches_eager(loss, M)


@pytest.mark.parametrize("device,backend", ALL_TARGETS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_computes_in_float32(device, backend, dtype):
    require(device, backend)
    M = orthogonal_matrices(3, 4, 4, device).to(dtype)
    weight = run(backend, lipkernels.bcop_filter, M, 4, 4)
    assert weight.dtype == dtype
    expected = reference.bcop_filter(M.float(), 4, 4).to(dtype)
    torch.testing.assert_close(weight, expected, rtol=0, atol=torch.finfo(dtype).eps)


def test_bad_input():
    M = orthogonal_matrices(2, 4, 4)
    cases = [
        (lambda: lipkernels.bcop_filter(M[0], 4, 4), ValueError, "bcop_filter: matrices must be "
         "3-D"),
        (lambda: lipkernels.bcop_filter(M.to(torch.int64), 4, 4), TypeError,
         "bcop_filter: matrices must have dtype"),
        (lambda: lipkernels.bcop_filter(M[:2], 4, 4), ValueError,
         r"bcop_filter: matrices must hold an odd number 2k - 1 of matrices .* \(2, 4, 4\)"),
        (lambda: lipkernels.bcop_filter(M[:, :, :3], 4, 3), ValueError,
         r"bcop_filter: matrices must be square, \(2k - 1, C, C\); got shape \(3, 4, 3\)"),
        (lambda: lipkernels.bcop_filter(M, 4, 6), ValueError,
         r"bcop_filter: matrices must have C = max\(in_channels, out_channels\) = 6"),
        (lambda: lipkernels.bcop_filter(M[:, :3, :3], 3, 2), ValueError,
         "bcop_filter: matrices must have an even C for a kernel size k >= 2"),
        (lambda: lipkernels.bcop_filter(M, 0, 4), ValueError,
         "bcop_filter: in_channels must be >= 1"),
        (lambda: lipkernels.bcop_filter(M, 4, -1), ValueError,
         "bcop_filter: out_channels must be >= 1"),
        (lambda: lipkernels.bcop_filter(M, 4.0, 4), TypeError,
         "bcop_filter: in_channels must be an int"),
        (lambda: lipkernels.bcop_filter(M[:, :, :0], 4, 4), ValueError,
         "bcop_filter: matrices must not be empty"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
    # An odd C is fine for k = 1: no projector is formed.
    assert lipkernels.bcop_filter(M[:1, :3, :3], 3, 2).shape == (2, 3, 1, 1)


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
def test_kernel_op_takes_working_precision_matrices(device, backend):
    """The op is the float32/float64 core: the functional API casts half precision for it."""
    require(device, backend)
    forward, _ = custom_ops("bcop_filter", backend)
    with pytest.raises(TypeError, match="bcop_filter: matrices must have dtype float32, float64; "
                                        "got torch.float16"):
        forward(orthogonal_matrices(2, 4, 4, device).half(), 4, 4)
