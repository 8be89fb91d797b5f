"""The eval cache can never be stale: every way of changing a parameter, on every cached layer.

Outside `lipkernels.nn.cached()` an eval forward must equal that of a fresh layer loaded with the
same state_dict, whatever was done to the parameters (`.data` writes included, which the tensor
version counters do not see). Inside the block the derived weight is reused, and the changes the
block can see (in-place ops, `p.data = new`, load_state_dict) recompute it.
"""

from __future__ import annotations

import pytest
import torch

import lipkernels
from lipkernels.nn import (AOLConv2d, AOLLinear, BCOPConv2d, BjorckLinear, CayleyConv2d,
                           CayleyLinear, CPLConv2d, CPLLinear, SLLConv2d, SLLLinear, SOCConv2d,
                           SOCLinear, cached)

LAYERS = {
    "SOCConv2d": (lambda: SOCConv2d(4, 4, 3), (2, 4, 6, 6)),
    "SOCConv2d-stride2": (lambda: SOCConv2d(2, 6, 3, stride=2), (2, 2, 6, 6)),
    "SOCLinear": (lambda: SOCLinear(5, 3), (4, 5)),
    "CayleyConv2d": (lambda: CayleyConv2d(3, 4, 3), (2, 3, 6, 6)),
    "CayleyConv2d-stride2": (lambda: CayleyConv2d(2, 4, 3, stride=2), (2, 2, 6, 6)),
    "CayleyLinear": (lambda: CayleyLinear(5, 3), (4, 5)),
    "BjorckLinear": (lambda: BjorckLinear(5, 3), (4, 5)),
    "BCOPConv2d": (lambda: BCOPConv2d(4, 6, 3), (2, 4, 6, 6)),
    "BCOPConv2d-stride2": (lambda: BCOPConv2d(2, 8, 4, stride=2), (2, 2, 6, 6)),
    "CPLConv2d": (lambda: CPLConv2d(4, 3, input_size=6), (2, 4, 6, 6)),
    "CPLLinear": (lambda: CPLLinear(5, 3), (4, 5)),
    "SLLConv2d": (lambda: SLLConv2d(4, 3), (2, 4, 6, 6)),
    "SLLLinear": (lambda: SLLLinear(5, 3), (4, 5)),
    "AOLConv2d": (lambda: AOLConv2d(4, 3), (2, 4, 6, 6)),
    "AOLLinear": (lambda: AOLLinear(5, 3), (4, 5)),
}


def _perturbed(tensor):
    return tensor * 1.3 + 0.2 * torch.randn_like(tensor)


def _add_through_data(layer):
    layer.weight.data.add_(0.3 * torch.randn_like(layer.weight))


def _assign_data(layer):
    layer.weight.data = _perturbed(layer.weight.detach())


def _copy_through_data(layer):
    layer.weight.data.copy_(_perturbed(layer.weight.detach()))


def _vector_to_parameters(layer):
    flat = torch.nn.utils.parameters_to_vector(layer.parameters())
    torch.nn.utils.vector_to_parameters(_perturbed(flat), layer.parameters())


def _in_place_no_grad(layer):
    with torch.no_grad():
        layer.weight.mul_(-1.2)


def _load_state_dict(layer):
    state = {name: _perturbed(value) if value.is_floating_point() else value
             for name, value in layer.state_dict().items()}
    layer.load_state_dict(state)


def _assign_buffer_data(layer):
    """Every SOC buffer (the power-iteration vectors u1..u4) through .data; Cayley has none."""
    for buffer in layer.buffers():
        buffer.data = torch.nn.functional.normalize(torch.randn_like(buffer), dim=0)


MUTATIONS = {
    "data.add_": _add_through_data,
    "data=": _assign_data,
    "data.copy_": _copy_through_data,
    "vector_to_parameters": _vector_to_parameters,
    "no_grad mul_": _in_place_no_grad,
    "load_state_dict": _load_state_dict,
    "buffer data=": _assign_buffer_data,
}

# Changes a cached() block can see: they must recompute inside it too.
VISIBLE_INSIDE_BLOCK = ("data=", "no_grad mul_", "load_state_dict", "buffer data=")


# Layers whose eval output does not depend on their buffers: CPLLinear's eval power iteration
# converges from any start vector at this size.
BUFFER_FREE_OUTPUT = ("CPLLinear",)


def _make_layer(layer_name, mutation):
    make, shape = LAYERS[layer_name]
    torch.manual_seed(0)
    layer = make().eval()
    if mutation == "buffer data=" and (not list(layer.buffers())
                                       or layer_name in BUFFER_FREE_OUTPUT):
        pytest.skip(f"{layer_name}'s eval output does not depend on buffers")
    return make, layer, torch.randn(shape)


def _fresh_copy(layer, make):
    """A freshly built layer of the same kind loaded with `layer`'s state_dict, in eval."""
    fresh = make()
    fresh.load_state_dict(layer.state_dict())
    return fresh.eval()


@pytest.mark.parametrize("mutation", MUTATIONS)
@pytest.mark.parametrize("layer_name", LAYERS)
def test_eval_forward_equals_a_fresh_layer_after_any_change(layer_name, mutation):
    make, layer, x = _make_layer(layer_name, mutation)
    with torch.no_grad():
        before = layer(x)
        layer(x)
        MUTATIONS[mutation](layer)
        after = layer(x)
        expected = _fresh_copy(layer, make)(x)
    assert not torch.allclose(before, expected)  # the change matters
    torch.testing.assert_close(after, expected, rtol=0, atol=0)


@pytest.mark.parametrize("mutation", VISIBLE_INSIDE_BLOCK)
@pytest.mark.parametrize("layer_name", LAYERS)
def test_cached_block_recomputes_after_a_visible_change(layer_name, mutation):
    make, layer, x = _make_layer(layer_name, mutation)
    with torch.no_grad(), cached():
        before = layer(x)
        assert layer._eval_cache is not None
        MUTATIONS[mutation](layer)
        after = layer(x)
        expected = _fresh_copy(layer, make)(x)
    assert not torch.allclose(before, expected)
    torch.testing.assert_close(after, expected, rtol=0, atol=0)


# Layers whose cached inference computes the same map in another order than the uncached call:
# CayleyConv2d applies the cached Q_f itself, while cayley_conv2d applies Q_f through the
# solved spectrum (2 X S - S, which its backward needs). Equal up to float32 rounding.
ROUNDED_DIFFERENTLY = {"CayleyConv2d", "CayleyConv2d-stride2"}


@pytest.mark.parametrize("layer_name", LAYERS)
def test_cached_block_reuses_then_frees(layer_name):
    _, layer, x = _make_layer(layer_name, None)
    with torch.no_grad():
        uncached = layer(x)
        assert layer._eval_cache is None  # outside a block nothing is kept
        with cached():
            first = layer(x)
            value = layer._eval_cache[-1]
            with cached():  # nested blocks share the outer block's cache
                torch.testing.assert_close(layer(x), first, rtol=0, atol=0)
            assert layer._eval_cache[-1] is value
        assert layer._eval_cache is None
    exact = layer_name not in ROUNDED_DIFFERENTLY
    torch.testing.assert_close(first, uncached, rtol=0 if exact else None,
                               atol=0 if exact else None)


def test_cached_block_leaves_training_and_gradients_alone():
    torch.manual_seed(0)
    layer = CayleyLinear(4, 4)
    x = torch.randn(3, 4)
    with cached():
        layer(x)
        assert layer._eval_cache is None  # training mode never caches
        layer.eval()
        y = layer(x)  # a weight gradient is needed: computed with its graph
        assert layer._eval_cache is None and y.requires_grad


def test_cached_is_exported():
    assert lipkernels.nn.cached is cached
