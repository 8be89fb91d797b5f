"""conv_singular_values / conv_spectral_norm: the SVD of the explicit circular conv matrix, the
phase of the frequency response, the zero-padding bound, power-iteration convergence, gradcheck,
float32, every backend's power iteration against the reference, and bad input."""

import pytest
import torch
import torch.nn.functional as F

import lipkernels
from lipkernels import reference
from lipkernels._spectral import frequency_response
from helpers import (KERNEL_TARGETS, compare_with_reference, dtypes_for, filter_with_spectral_gap,
                     require_backend, run)

# (C_out, C_in, k_h, k_w, n1, n2): square and non-square images, C_in != C_out both ways,
# k = 1, 3, 5, non-square and even kernels, and a kernel as large as the image.
CASES = [(3, 3, 1, 1, 4, 4), (3, 2, 3, 3, 5, 5), (2, 4, 3, 3, 4, 6), (2, 3, 5, 5, 5, 7),
         (3, 2, 5, 3, 6, 4), (2, 2, 2, 2, 4, 5), (2, 3, 4, 2, 5, 3), (2, 2, 3, 3, 3, 3)]


def explicit_matrix(fn, channels, n1, n2):
    """Transposed Jacobian of the linear map `fn` on (channels, n1, n2) inputs, row r = fn(e_r)."""
    size = channels * n1 * n2
    basis = torch.eye(size, dtype=torch.float64).reshape(size, channels, n1, n2)
    return fn(basis).reshape(size, -1)


def circular_conv(x, weight):
    """The defining operator: nn.Conv2d(padding="same", padding_mode="circular") with `weight`."""
    conv = torch.nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2:], padding="same",
                           padding_mode="circular", bias=False, dtype=weight.dtype)
    conv.weight.data = weight
    return conv(x)


def circular_matrix(weight, n1, n2):
    return explicit_matrix(lambda b: circular_conv(b, weight), weight.shape[1], n1, n2)


def zero_padded_norm(weight, n1, n2):
    matrix = explicit_matrix(lambda b: F.conv2d(b, weight, padding="same"), weight.shape[1], n1, n2)
    return torch.linalg.matrix_norm(matrix, ord=2)


@pytest.mark.parametrize("c_out,c_in,k_h,k_w,n1,n2", CASES)
def test_singular_values_are_those_of_the_explicit_circular_conv(c_out, c_in, k_h, k_w, n1, n2):
    weight = torch.randn(c_out, c_in, k_h, k_w, dtype=torch.float64)
    values = lipkernels.conv_singular_values(weight, (n1, n2))
    assert values.shape == (n1, n2, min(c_in, c_out)) and values.dtype == torch.float64
    assert (values[..., 1:] <= values[..., :-1]).all(), "not descending per frequency"
    explicit = torch.linalg.svdvals(circular_matrix(weight, n1, n2))
    assert explicit.numel() == values.numel()
    torch.testing.assert_close(values.flatten().sort(descending=True).values, explicit,
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(lipkernels.conv_spectral_norm(weight, (n1, n2)), explicit[0],
                               rtol=1e-13, atol=0)


@pytest.mark.parametrize("c_out,c_in,k_h,k_w,n1,n2", CASES[1:6])
def test_frequency_response_maps_the_input_spectrum(c_out, c_in, k_h, k_w, n1, n2):
    """The documented phase: fft2(conv(x)) = H fft2(x) at every frequency."""
    weight = torch.randn(c_out, c_in, k_h, k_w, dtype=torch.float64)
    x = torch.randn(c_in, n1, n2, dtype=torch.float64)
    spectrum = torch.einsum("uvoc,cuv->ouv", frequency_response(weight, (n1, n2)), torch.fft.fft2(x))
    torch.testing.assert_close(spectrum, torch.fft.fft2(circular_conv(x[None], weight)[0]),
                               rtol=0, atol=1e-12)


def test_square_input_as_int_and_convolution_give_the_same_values():
    """An int input_size is the square image; the flipped filter (true convolution) and
    the adjoint (flipT) have the same singular values, as the phase argument says."""
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    values = lipkernels.conv_singular_values(weight, 6)
    torch.testing.assert_close(values, lipkernels.conv_singular_values(weight, (6, 6)), rtol=0, atol=0)
    for other in (weight.flip(2, 3), weight.transpose(0, 1).flip(2, 3)):
        torch.testing.assert_close(lipkernels.conv_singular_values(other, 6).sort(-1).values,
                                   values.sort(-1).values, rtol=0, atol=1e-12)


@pytest.mark.parametrize("c_out,c_in,k,n1,n2", [(3, 2, 3, 4, 5), (2, 3, 5, 5, 5), (2, 2, 3, 2, 2),
                                                 (3, 3, 1, 3, 4)])
def test_zero_padding_norm_is_the_circular_norm_at_the_padded_size_and_a_bound(c_out, c_in, k, n1, n2):
    weight = torch.randn(c_out, c_in, k, k, dtype=torch.float64)
    bound = lipkernels.conv_spectral_norm(weight, (n1, n2), padding="zeros")
    p = k // 2
    padded = torch.linalg.matrix_norm(circular_matrix(weight, n1 + 2 * p, n2 + 2 * p), ord=2)
    torch.testing.assert_close(bound, padded, rtol=1e-13, atol=0)
    assert bound >= zero_padded_norm(weight, n1, n2) * (1 - 1e-12)


def test_power_iteration_converges_from_below():
    weight = filter_with_spectral_gap((4, 3, 3, 3))
    for padding in ("circular", "zeros"):
        exact = lipkernels.conv_spectral_norm(weight, (6, 5), padding).item()
        estimates = [lipkernels.conv_spectral_norm(weight, (6, 5), padding, iters).item()
                     for iters in (1, 2, 5, 50)]
        assert all(e <= exact * (1 + 1e-14) for e in estimates), (estimates, exact)
        assert abs(estimates[-1] - exact) <= 1e-6 * exact, (estimates, exact)
        # A fixed start: the same estimate on every call.
        assert lipkernels.conv_spectral_norm(weight, (6, 5), padding, 2).item() == estimates[1]


def test_power_iteration_gradient_converges_to_the_exact_gradient():
    weight = filter_with_spectral_gap((3, 4, 3, 3)).requires_grad_()
    exact, = torch.autograd.grad(lipkernels.conv_spectral_norm(weight, 5), weight)
    estimate, = torch.autograd.grad(lipkernels.conv_spectral_norm(weight, 5, iters=60), weight)
    torch.testing.assert_close(estimate, exact, rtol=0, atol=1e-8)


def norm_and_gradient(fn):
    """w -> (fn(w), d fn(w) / d w)."""
    def value_and_grad(w):
        w = w.detach().requires_grad_()
        norm = fn(w)
        return norm.detach(), torch.autograd.grad(norm, w)[0]

    return value_and_grad


@pytest.mark.parametrize("device,backend", KERNEL_TARGETS)
# Small non-square images: the Triton interpreter runs one program per frequency, slowly.
@pytest.mark.parametrize("c_out,c_in,k,size,padding", [
    (3, 3, 3, (3, 5), "circular"), (2, 4, 3, (4, 3), "circular"), (4, 3, 3, (2, 3), "zeros"),
    (3, 2, 1, (2, 3), "circular")])
@pytest.mark.parametrize("iters", [1, 30])
def test_power_iteration_backends_match_reference(device, backend, c_out, c_in, k, size, padding,
                                                  iters):
    """The backend's frequency_power_iteration (Triton: from the filter's taps; cpp, cuda: its
    power_iteration on the real-form responses; complex for k = 3, real at every frequency for
    k = 1) gives the reference's estimate and gradient. The
    filter has a spectral gap, so that at 30 iterations the top frequency f and its mirror -f
    (H_{-f} = conj(H_f): an exact tie at convergence) carry the same gradient, whichever of the
    two rounding makes the max."""
    require_backend(device, backend)
    weight = filter_with_spectral_gap((c_out, c_in, k, k), device=device)
    for dtype in dtypes_for(device):
        compare_with_reference(
            norm_and_gradient(lambda w: run(backend, lipkernels.conv_spectral_norm, w, size,
                                            padding, iters)),
            norm_and_gradient(lambda w: reference.conv_spectral_norm(w, size, padding, iters)),
            (weight,), dtype, ["norm", "grad_weight"])


@pytest.mark.parametrize("padding", ["circular", "zeros"])
def test_gradcheck(padding):
    """Where the top singular value is simple the norm is differentiable. Frequencies f and -f
    always tie (W is real: H_{-f} = conj(H_f)), which is harmless: the two branches are one
    smooth function; any other tie, or a double value within H_f, would not be."""
    weight = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    size = (4, 5) if padding == "circular" else (6, 7)
    values = lipkernels.conv_singular_values(weight.detach(), size).flatten(0, 1)
    top = values[:, 0].max()
    assert top - values[:, 0][values[:, 0] < top - 1e-9].max() > 1e-3
    assert (values[:, 0] - values[:, 1])[values[:, 0].argmax()] > 1e-3
    assert torch.autograd.gradcheck(lambda w: lipkernels.conv_spectral_norm(w, (4, 5), padding),
                                    (weight,))


def test_gradcheck_singular_values():
    weight = torch.randn(3, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    # Frequencies f and -f carry equal values (W is real) and may swap order, so the checked
    # function weighs every frequency alike; ranks get different weights.
    rank_weights = torch.tensor([1.0, 0.3], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda w: (lipkernels.conv_singular_values(w, (3, 4)) * rank_weights).sum(), (weight,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_low_precision_inputs(dtype):
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    exact = lipkernels.conv_singular_values(weight, (5, 6))
    values = lipkernels.conv_singular_values(weight.to(dtype), (5, 6))
    assert values.dtype == dtype
    # Half filters are computed in float32 from the rounded weight, then rounded once.
    tolerance = 1e-5 if dtype == torch.float32 else 2e-3
    assert (values.double() - exact).abs().max() <= tolerance * exact.max()
    for iters in (None, 30):
        norm = lipkernels.conv_spectral_norm(weight.to(dtype), (5, 6), "zeros", iters)
        assert norm.dtype == dtype and norm.dim() == 0


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_non_finite_weight_gives_nan_not_an_exception(value, dtype):
    """LAPACK's SVD raises on NaN or inf; those frequencies (here all: the FFT spreads one
    non-finite tap everywhere) get NaN singular values instead, and so the norms are NaN."""
    weight = torch.randn(3, 2, 3, 3, dtype=dtype)
    weight[1, 0, 2, 1] = value
    assert torch.isnan(lipkernels.conv_singular_values(weight, (4, 5))).all()
    for padding in ("circular", "zeros"):
        assert torch.isnan(lipkernels.conv_spectral_norm(weight, (4, 5), padding))


W = torch.randn(2, 3, 3, 3)


@pytest.mark.parametrize(
    "fn,args,error,message",
    [
        (lipkernels.conv_singular_values, (torch.randn(2, 3, 3), 4), ValueError, "weight must be 4-D"),
        (lipkernels.conv_singular_values, (W.int(), 4), TypeError, "weight must have dtype"),
        (lipkernels.conv_singular_values, (W, 2), ValueError, "kernel of weight .* must fit"),
        (lipkernels.conv_singular_values, (W, (5, 2)), ValueError, "must fit in the input_size"),
        (lipkernels.conv_singular_values, (W, 0), ValueError, "input_size must be >= 1"),
        (lipkernels.conv_singular_values, (W, (4, -1)), ValueError, "input_size must be >= 1"),
        (lipkernels.conv_singular_values, (W, 4.0), TypeError, "input_size must be an int or a pair"),
        (lipkernels.conv_singular_values, (W, (4, 4, 4)), TypeError, "input_size must be an int"),
        (lipkernels.conv_singular_values, (W, True), TypeError, "input_size must be an int"),
        (lipkernels.conv_spectral_norm, (W, 4, "reflect"), ValueError,
         "padding must be one of circular, zeros"),
        (lipkernels.conv_spectral_norm, (W, 2, "circular"), ValueError, "must fit"),
        (lipkernels.conv_spectral_norm, (W, 4, "zeros", 0), ValueError, "iters must be >= 1"),
        (lipkernels.conv_spectral_norm, (W, 4, "zeros", 2.5), TypeError, "iters must be an int"),
    ],
)
def test_bad_input_is_rejected(fn, args, error, message):
    with pytest.raises(error, match=message):
        fn(*args)


def test_zero_padding_accepts_an_image_smaller_than_the_kernel():
    """LipConvNet's last 3x3 convs run on 2x2 images: zero padding needs no fit."""
    bound = lipkernels.conv_spectral_norm(W.double(), 1, padding="zeros")
    assert bound >= zero_padded_norm(W.double(), 1, 1) * (1 - 1e-12)


def test_power_iteration_on_an_unavailable_backend_names_the_op():
    """iters runs on the selected backend's kernel: one that cannot take these tensors raises."""
    with lipkernels.use_backend("cuda"), pytest.raises(
            RuntimeError, match="conv_spectral_norm: backend 'cuda' is not available"):
        lipkernels.conv_spectral_norm(W, 4, iters=2)
