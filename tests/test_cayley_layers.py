"""CayleyConv2d and CayleyLinear (lipkernels/nn/cayley.py): exact singular values of the layers,
the scaled parametrisation, the eval cache and its invalidation, state_dict, torch.compile,
autocast and input errors."""

from __future__ import annotations

import pytest
import torch

import lipkernels
from lipkernels.nn import CayleyConv2d, CayleyLinear
from helpers import require_backend


@pytest.fixture(params=["reference", "cpp"])
def backend(request):
    """Runs a layer test once per CPU implementation of the ops it calls."""
    require_backend("cpu", request.param)
    with lipkernels.use_backend(request.param):
        yield request.param


def _jacobian_singular_values(layer, x):
    def without_bias(image):
        y = layer(image)
        return y if layer.bias is None else y - layer.bias.view(1, -1, *([1] * (y.dim() - 2)))

    jacobian = torch.autograd.functional.jacobian(without_bias, x)
    return torch.linalg.svdvals(jacobian.reshape(-1, x.numel()).double())


@pytest.mark.parametrize("in_channels, out_channels, kernel_size, stride, image", [
    (4, 4, 3, 1, (6, 6)),
    (3, 5, 3, 1, (5, 7)),
    (5, 3, 1, 1, (4, 4)),
    (2, 8, 3, 2, (6, 8)),
    (3, 4, 4, 2, (8, 8)),
])
def test_conv_is_orthogonal(in_channels, out_channels, kernel_size, stride, image, backend):
    torch.manual_seed(0)
    layer = CayleyConv2d(in_channels, out_channels, kernel_size, stride, dtype=torch.float64)
    x = torch.randn(1, in_channels, *image, dtype=torch.float64)
    singular_values = _jacobian_singular_values(layer, x)
    torch.testing.assert_close(singular_values, torch.ones_like(singular_values), rtol=0,
                               atol=1e-12)
    assert layer(x).shape == (1, out_channels, image[0] // stride, image[1] // stride)


def test_conv_float32_orthogonality_target(backend):
    # max |sigma - 1| <= 1e-5 in float32, the layer's orthogonality target.
    torch.manual_seed(0)
    layer = CayleyConv2d(8, 8, 3)
    singular_values = _jacobian_singular_values(layer, torch.randn(1, 8, 8, 8))
    assert (singular_values - 1).abs().max().item() <= 1e-5


def test_scaled_weight_and_alpha():
    torch.manual_seed(0)
    layer = CayleyConv2d(3, 3, 3, dtype=torch.float64)
    # alpha starts at ||W||_F, so the scaled filter is the filter itself.
    torch.testing.assert_close(layer.alpha, torch.linalg.vector_norm(layer.weight).reshape(1))
    torch.testing.assert_close(layer.scaled_weight(), layer.weight)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(layer(x), lipkernels.cayley_conv2d(x, layer.weight)
                               + layer.bias.view(1, -1, 1, 1))
    layer(x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


@pytest.mark.parametrize("make_layer, shape", [
    (lambda: CayleyConv2d(3, 4, 3, dtype=torch.float64), (2, 3, 6, 6)),
    (lambda: CayleyConv2d(3, 4, 3, stride=2, dtype=torch.float64), (2, 3, 6, 6)),
    (lambda: CayleyLinear(5, 3, dtype=torch.float64), (4, 5)),
])
def test_eval_cache_matches_and_follows_changes(make_layer, shape, backend):
    torch.manual_seed(0)
    layer = make_layer()
    x = torch.randn(shape, dtype=torch.float64)
    expected = layer(x)
    layer.eval()
    with torch.no_grad(), lipkernels.nn.cached():
        first = layer(x)
        assert layer._eval_cache is not None
        cached = layer._eval_cache[-1]
        torch.testing.assert_close(first, expected, rtol=0, atol=1e-13)
        assert layer(x) is not first and layer._eval_cache[-1] is cached  # reused
        for parameter in (layer.weight, layer.alpha):
            parameter.mul_(1.5 if parameter is layer.alpha else -1.0)
            changed = layer(x)
            assert layer._eval_cache[-1] is not cached
            cached = layer._eval_cache[-1]
            layer.train()
            torch.testing.assert_close(changed, layer(x), rtol=0, atol=1e-13)
            layer.eval()
        # Gradients w.r.t. the weight bypass the cache.
        with torch.enable_grad():
            assert layer(x).requires_grad
    assert layer._eval_cache is None  # the block's exit frees it


def test_conv_cache_is_per_image_size(backend):
    torch.manual_seed(0)
    layer = CayleyConv2d(2, 2, 3, dtype=torch.float64).eval()
    with torch.no_grad(), lipkernels.nn.cached():
        for size in ((4, 4), (6, 5), (4, 4)):
            x = torch.randn(1, 2, *size, dtype=torch.float64)
            torch.testing.assert_close(layer(x), lipkernels.cayley_conv2d(x, layer.weight)
                                       + layer.bias.view(1, -1, 1, 1), rtol=0, atol=1e-13)


@pytest.mark.parametrize("make_layer, shape", [
    (lambda: CayleyConv2d(3, 5, 3, stride=2), (2, 3, 8, 8)),
    (lambda: CayleyLinear(6, 4, bias=False), (3, 6)),
])
def test_state_dict_round_trip(make_layer, shape):
    torch.manual_seed(0)
    source, target = make_layer(), make_layer()
    assert set(source.state_dict()) <= {"weight", "alpha", "bias"}
    x = torch.randn(shape)
    target.eval()
    with torch.no_grad(), lipkernels.nn.cached():
        target(x)  # fill the cache, which loading must drop
        target.load_state_dict(source.state_dict())
        source.eval()
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


def test_state_dict_with_a_scalar_alpha_loads():
    """alpha is (1,) for FSDP2; a 0-d alpha of an older state_dict still loads."""
    source, target = CayleyLinear(4, 4), CayleyLinear(4, 4)
    state = source.state_dict()
    state["alpha"] = state["alpha"].reshape(())
    target.load_state_dict(state)
    assert target.alpha.shape == (1,) and torch.equal(target.alpha, source.alpha)


@pytest.mark.parametrize("make_layer, shape", [
    (lambda: CayleyConv2d(3, 4, 3), (2, 3, 6, 6)),
    (lambda: CayleyLinear(5, 7), (4, 5)),
])
def test_torch_compile_matches_eager(make_layer, shape, backend):
    torch.manual_seed(0)
    layer = make_layer()
    x = torch.randn(shape, requires_grad=True)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    for training in (True, False):
        layer.train(training)
        expected = layer(x)
        expected_grads = torch.autograd.grad(expected.sum(), (x, layer.weight))
        actual = compiled(x)
        actual_grads = torch.autograd.grad(actual.sum(), (x, layer.weight))
        torch.testing.assert_close(actual, expected)
        torch.testing.assert_close(actual_grads, expected_grads)


def test_conv_autocast_keeps_input_dtype(backend):
    torch.manual_seed(0)
    layer = CayleyConv2d(4, 4, 3)
    x = torch.randn(2, 4, 8, 8)
    expected = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x.bfloat16())
    assert y.dtype == torch.bfloat16
    assert (y.float() - expected).abs().max() <= 4e-2 * expected.abs().max()


def test_linear_is_orthogonal(backend):
    torch.manual_seed(0)
    for in_features, out_features in ((5, 3), (3, 5), (4, 4)):
        layer = CayleyLinear(in_features, out_features, dtype=torch.float64)
        Q = layer.orthogonal_weight()
        gram = Q @ Q.T if out_features < in_features else Q.T @ Q
        torch.testing.assert_close(gram, torch.eye(min(in_features, out_features),
                                                   dtype=torch.float64), rtol=0, atol=1e-13)
        x = torch.randn(2, in_features, dtype=torch.float64)
        torch.testing.assert_close(layer(x), x @ Q.T + layer.bias)


@pytest.mark.parametrize("build, x, error, message", [
    (lambda: CayleyConv2d(3, 3, 3, stride=3), None, ValueError, "stride must be 1 or 2"),
    (lambda: CayleyConv2d(0, 3), None, ValueError, "in_channels"),
    (lambda: CayleyLinear(3, 0), None, ValueError, "out_features"),
    (lambda: CayleyConv2d(3, 3, 3), torch.randn(1, 4, 6, 6), ValueError, "in_channels=3"),
    (lambda: CayleyConv2d(3, 3, 3), torch.randn(3, 6, 6), ValueError, "4-D"),
    (lambda: CayleyConv2d(3, 3, 5), torch.randn(1, 3, 4, 4), ValueError, "must fit"),
    (lambda: CayleyConv2d(3, 3, 3, stride=2), torch.randn(1, 3, 5, 6), ValueError, "even"),
    (lambda: CayleyConv2d(3, 3, 3), torch.randn(1, 3, 6, 6, dtype=torch.float64), TypeError,
     "dtype"),
    (lambda: CayleyLinear(3, 2), torch.randn(2, 4), ValueError, "in_features=3"),
])
def test_bad_arguments(build, x, error, message):
    with pytest.raises(error, match=message):
        layer = build()
        layer(x)
