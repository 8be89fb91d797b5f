"""BCOPConv2d: orthogonality of the layer map (explicit Jacobian on small inputs, exact FFT
singular values at realistic sizes), the certified bound against the exact norm (converged and
not), the persistent power-iteration vectors, stride 2, the eval cache, export, gradients,
compile, degenerate and bad input; `bcop_conv_norm_bound`."""

import math

import pytest
import torch
import torch.nn.functional as F

import lipkernels
from lipkernels.bounds import bcop_conv_norm_bound
from lipkernels.nn import BCOPConv2d
from helpers import assert_compiled_matches_eager

# (in, out, kernel_size, stride): square, widening, narrowing, even, 1x1, and stride-2 layers
# (LConvNet Large's k4 s2 layers become 2x2 filters on 4 in_channels).
LAYERS = [(4, 4, 3, 1), (4, 6, 3, 1), (6, 4, 3, 1), (4, 4, 2, 1), (2, 4, 4, 2), (6, 6, 1, 1),
          (2, 4, 5, 1)]


def layer_map(layer):
    """The layer as a map of its input without the bias (its Jacobian)."""
    return lambda x: layer(x) - (0 if layer.bias is None else layer.bias[:, None, None])


def trained(layer, steps=3, size=8):
    """The layer after a few SGD steps that move its matrices away from their orthogonal start."""
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    for _ in range(steps):
        optimizer.zero_grad()
        x = torch.randn(4, layer.in_channels, size, size, dtype=layer.weight.dtype)
        layer(x).square().sum().backward()
        optimizer.step()
    return layer


@pytest.mark.parametrize("channels_in,channels_out,kernel_size,stride", LAYERS)
def test_jacobian_singular_values_are_one(channels_in, channels_out, kernel_size, stride):
    """On a 6 x 6 image (float64), in both modes after training steps: an orthogonal map for
    in * stride^2 = out, orthonormal columns for fewer inputs, rows for more; the bound covers the
    largest singular value and is within 1e-9 of 1."""
    torch.manual_seed(0)
    layer = trained(BCOPConv2d(channels_in, channels_out, kernel_size, stride,
                               bjorck_iters=30, dtype=torch.float64), size=6)
    x = torch.randn(1, channels_in, 6, 6, dtype=torch.float64)
    for mode in (True, False):
        layer.train(mode)
        bound = layer.lipschitz_bound()
        with torch.no_grad():
            jacobian = torch.autograd.functional.jacobian(layer_map(layer), x)
        jacobian = jacobian.reshape(-1, x.numel())
        singular = torch.linalg.svdvals(jacobian)
        nonzero = min(jacobian.shape)
        torch.testing.assert_close(singular[:nonzero], torch.ones(nonzero, dtype=torch.float64),
                                   rtol=0, atol=1e-10)
        assert float(singular.max()) <= bound <= 1 + 1e-9


@pytest.mark.parametrize("channels,size,stride", [(64, 16, 1), (32, 16, 2)])
def test_exact_singular_values_are_one_at_realistic_sizes(channels, size, stride):
    """float32 layers of LipConvNet widths after training steps: every exact singular value of
    the circular convolution (conv_singular_values) is within 2e-5 of 1, and the certified bound
    covers the largest."""
    torch.manual_seed(1)
    layer = trained(BCOPConv2d(channels, channels * stride ** 2 // (2 if stride == 2 else 1),
                               3 + stride - 1, stride), size=size).eval()
    weight = layer.orthogonal_filter().detach()
    singular = lipkernels.conv_singular_values(weight.double(), (size // stride,) * 2)
    assert float((singular - 1).abs().max()) < 2e-5
    assert float(singular.max()) <= layer.lipschitz_bound() < 1 + 1e-4


def test_bound_covers_an_unconverged_filter():
    """Two Björck iterations from matrices with spread spectra leave the filter far from
    orthogonal: the bound still covers the exact norm at several sizes, and is no wild
    overestimate."""
    torch.manual_seed(2)
    layer = BCOPConv2d(4, 4, 3, bjorck_iters=2, dtype=torch.float64)
    with torch.no_grad():
        spread = torch.diag(torch.logspace(-2, 0, 4, dtype=torch.float64))
        layer.weight.copy_(torch.randn(5, 4, 4, dtype=torch.float64) @ spread)
    layer.update_vectors(100)
    layer.eval()
    bound = layer.lipschitz_bound()
    weight = layer.orthogonal_filter().detach()
    for size in (3, 5, 8, 16):
        norm = float(lipkernels.conv_singular_values(weight, (size, size)).max())
        assert norm <= bound
    assert float(lipkernels.conv_singular_values(weight, (8, 8)).min()) < 0.5
    assert bound < 4


def test_certificate_covers_the_rounding_of_a_float32_filter():
    """The filter built in float32 from float32 matrices differs from the float64 one by
    rounding; the certificate covers its exact norm, and a perturbed weight (not the matrices'
    filter) raises the bound by about the perturbation's norm (less the rounding it offsets)."""
    torch.manual_seed(3)
    matrices = torch.linalg.qr(torch.randn(5, 16, 16, dtype=torch.float64))[0].float()
    weight = lipkernels.bcop_filter(matrices, 16, 16)
    bound = bcop_conv_norm_bound(matrices, weight)
    exact = float(lipkernels.conv_singular_values(weight.double(), (16, 16)).max())
    assert exact <= bound < 1 + 2e-5
    perturbed = weight.clone()
    perturbed[0, 0, 1, 1] += 1e-3
    assert bcop_conv_norm_bound(matrices, perturbed) >= bound + 1e-3 - 1e-5


def test_forward_is_the_circular_conv_of_the_filter():
    """padding="same" with circular wrap: nn.Conv2d's split for an even filter."""
    torch.manual_seed(4)
    for kernel_size in (2, 3, 4):
        layer = BCOPConv2d(4, 6, kernel_size).eval()
        conv = torch.nn.Conv2d(4, 6, kernel_size, padding="same", padding_mode="circular")
        with torch.no_grad():
            conv.weight.copy_(layer.orthogonal_filter())
            conv.bias.copy_(layer.bias)
            x = torch.randn(2, 4, 7, 5)
            torch.testing.assert_close(layer(x), conv(x))


def test_training_stores_the_vectors_and_eval_does_not():
    torch.manual_seed(5)
    layer = BCOPConv2d(4, 4, 3)
    with torch.no_grad():
        layer.weight.add_(torch.randn_like(layer.weight) / 4)
    x = torch.randn(2, 4, 6, 6)
    before = layer.u.clone()
    layer.lipschitz_bound()
    assert torch.equal(layer.u, before)
    layer(x)
    assert not torch.equal(layer.u, before)
    torch.testing.assert_close(layer.u.norm(dim=-1), torch.ones(5))
    layer.eval()
    stored = layer.u.clone()
    layer(x)
    assert torch.equal(layer.u, stored)


def test_eval_cache_follows_a_data_edit():
    """Inside cached() the eval filter is reused, and recomputed after an in-place edit."""
    torch.manual_seed(6)
    layer = BCOPConv2d(4, 4, 3).eval()
    x = torch.randn(1, 4, 6, 6)
    with lipkernels.nn.cached():
        first = layer(x)
        torch.testing.assert_close(layer(x), first, rtol=0, atol=0)
        with torch.no_grad():
            layer.weight.data[1] = torch.linalg.qr(torch.randn(4, 4))[0]
        assert not torch.allclose(layer(x), first)


def test_vanilla_export_is_a_plain_circular_conv():
    torch.manual_seed(7)
    for layer in (BCOPConv2d(4, 4, 3), BCOPConv2d(2, 8, 4, stride=2, bias=False)):
        plain = layer.vanilla_export()
        assert all(type(m).__module__.startswith("torch.nn") for m in plain.modules())
        assert layer.training
        layer.eval()
        x = torch.randn(2, layer.in_channels, 8, 6)
        with torch.no_grad():
            torch.testing.assert_close(plain(x), layer(x), rtol=1e-6, atol=1e-6)


def test_zero_and_nan_matrices():
    """Zero matrices give the zero filter (the output is the bias, the bound 0); a NaN gives NaN
    outputs and a nan bound, never a finite number."""
    layer = BCOPConv2d(4, 4, 3)
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        layer.weight.zero_()
    for mode in (True, False):
        layer.train(mode)
        torch.testing.assert_close(layer(x), layer.bias[:, None, None].expand(2, 4, 5, 5))
        assert layer.lipschitz_bound() == 0.0
    with torch.no_grad():
        layer.weight[2, 0, 0] = float("nan")
    for mode in (True, False):
        layer.train(mode)
        assert bool(torch.isnan(layer(x)).all())
        assert math.isnan(layer.lipschitz_bound())


def test_gradcheck_and_compile():
    torch.manual_seed(8)
    layer = BCOPConv2d(2, 2, 3, bjorck_iters=4, dtype=torch.float64).eval()
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)

    def through_matrices(matrices, x):
        return torch.func.functional_call(layer, {"weight": matrices}, (x,))

    assert torch.autograd.gradcheck(through_matrices,
                                    (layer.weight.detach().requires_grad_(), x))
    compiled_layer = BCOPConv2d(4, 4, 3).eval()
    assert_compiled_matches_eager(lambda x: compiled_layer(x).square().sum(),
                                  torch.randn(2, 4, 6, 6, requires_grad=True))


def test_model_bound_uses_the_layer_bound():
    torch.manual_seed(9)
    model = torch.nn.Sequential(BCOPConv2d(4, 8, 3), lipkernels.nn.MaxMin(),
                                BCOPConv2d(8, 8, 4, stride=2)).eval()
    expected = model[0].lipschitz_bound() * model[2].lipschitz_bound()
    assert expected <= lipkernels.lipschitz_bound(model) <= expected * (1 + 1e-15)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_builds_the_filter_in_float32(dtype):
    """Half parameters: orthonormalised and built in float32, the filter rounded once to their
    dtype; the bound covers the exact norm of that rounded filter."""
    torch.manual_seed(10)
    layer = BCOPConv2d(8, 8, 3, dtype=dtype)
    x = torch.randn(2, 8, 6, 6, dtype=dtype)
    y = layer(x)
    y.float().square().sum().backward()
    assert y.dtype == layer.weight.grad.dtype == dtype
    assert bool(torch.isfinite(layer.weight.grad).all())
    weight = layer.orthogonal_filter().detach()
    norm = float(lipkernels.conv_singular_values(weight.double(), (6, 6)).max())
    assert norm <= layer.lipschitz_bound() < 1.05


def test_autocast_builds_the_filter_in_float32():
    torch.manual_seed(11)
    layer = BCOPConv2d(8, 8, 3).eval()
    x = torch.randn(2, 8, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    reference = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"),
                         layer.orthogonal_filter(), layer.bias)
    torch.testing.assert_close(y.float(), reference, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("arguments,keywords,error,message", [
    ((3, 3, 3), {}, ValueError, r"BCOPConv2d: max\(in_channels \* stride\^2, out_channels\) = 3 "
                                "must be even for a filter of 3 taps"),
    ((0, 4, 3), {}, ValueError, "BCOPConv2d: in_channels must be >= 1; got 0"),
    ((4, 4, 3), {"bjorck_iters": 0}, ValueError, "BCOPConv2d: bjorck_iters must be >= 1"),
    ((4, 4, 3), {"padding_mode": "zeros"}, ValueError,
     "BCOPConv2d: padding_mode must be 'circular'"),
    ((4, 4, 3, 3), {}, ValueError, "BCOPConv2d: stride"),
    ((4, 4, 3), {"padding": 0}, ValueError, "BCOPConv2d: padding must be 'same'"),
])
def test_bad_arguments_are_rejected(arguments, keywords, error, message):
    with pytest.raises(error, match=message):
        BCOPConv2d(*arguments, **keywords)


def test_bad_input_is_rejected():
    layer = BCOPConv2d(4, 4, 3)
    with pytest.raises(ValueError, match="BCOPConv2d: input has size 5 at dim 1"):
        layer(torch.randn(1, 5, 6, 6))
    with pytest.raises(ValueError, match="BCOPConv2d: the 3x3 filter must fit"):
        layer(torch.randn(1, 4, 2, 6))
    with pytest.raises(ValueError, match="BCOPConv2d: with stride=2 the input height and width "
                                         "must be even"):
        BCOPConv2d(2, 8, 4, stride=2)(torch.randn(1, 2, 5, 6))
