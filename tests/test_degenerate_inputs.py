"""Degenerate inputs on every op and layer: the right answer or a clear error, never a finite
wrong number.

Empty batches give empty results with zero gradients (as torch's layers do); a zero size outside
the batch dims, an all-zero power-iteration start, counts too large to mean anything, deferred
construction on the meta device and half-precision parameters are each checked on every op,
backend or layer they apply to.
"""

from __future__ import annotations

import math

import pytest
import torch

import lipkernels
from lipkernels import functional
from lipkernels.nn import (AOLConv2d, AOLLinear, BCOPConv2d, BjorckLinear, CayleyConv2d,
                           CayleyLinear, CPLConv2d, CPLLinear, GroupSort, HouseHolder, LipConvNet,
                           MaxMin, SLLConv2d, SLLLinear, SOCConv2d, SOCLinear)
from lipkernels.ops import (bcop_filter, bjorck, cayley, cayley_conv2d, householder, max_min,
                            power_iteration, soc_exp)
from lipkernels.ops import conv_spectral_bounds, convex_potential, frequency_power_iteration
from lipkernels.ops import aol_rescaling
from lipkernels.ops import conv_power_iteration
from lipkernels.nn._unshuffle import unshuffle
from lipkernels.reference.aol_rescaling import EPS as AOL_EPS
from lipkernels._conventions import bound_matrix_shapes
from lipkernels._spectral import bound_matrices
from helpers import (ALL_TARGETS, filter_with_spectral_gap, matrix_with_spectrum, require_backend,
                     require_kernel)


def _skew_filter(channels):
    return lipkernels.skew(torch.randn(channels, channels, 3, 3, dtype=torch.float64)) * 0.2


# name: (kernels of the op, call on an empty batch, expected output shape, differentiable inputs)
def _empty_cases():
    S = _skew_filter(4)
    return {
        "power_iteration": (power_iteration.KERNELS,
                            lambda W: functional.power_iteration(W, torch.ones(0, 2, 4,
                                                                 dtype=W.dtype), 3)[0],
                            (0, 2), [torch.randn(0, 2, 3, 4, dtype=torch.float64)]),
        "soc_exp": (soc_exp.KERNELS, lambda x, S: functional.soc_exp(x, S, 4), (0, 4, 5, 5),
                    [torch.randn(0, 4, 5, 5, dtype=torch.float64), S]),
        "soc_exp-fast": (soc_exp.KERNELS, lambda x, S: functional.soc_exp(x, S, 4, "fast"),
                         (0, 4, 5, 5), [torch.randn(0, 4, 5, 5, dtype=torch.float64), S]),
        "max_min": (max_min.KERNELS, functional.max_min, (0, 4, 3),
                    [torch.randn(0, 4, 3, dtype=torch.float64)]),
        "max_min-pairs": (max_min.KERNELS, lambda x: functional.max_min(x, "pairs"), (0, 4, 3),
                          [torch.randn(0, 4, 3, dtype=torch.float64)]),
        "householder": (householder.KERNELS, functional.householder, (0, 4, 3, 3),
                        [torch.randn(0, 4, 3, 3, dtype=torch.float64),
                         torch.randn(2, dtype=torch.float64)]),
        "cayley": (cayley.KERNELS, functional.cayley, (0, 5, 3),
                   [torch.randn(0, 5, 3, dtype=torch.float64)]),
        "cayley-wide": (cayley.KERNELS, functional.cayley, (2, 0, 3, 5),
                        [torch.randn(2, 0, 3, 5, dtype=torch.float64)]),
        "cayley_conv2d": (cayley_conv2d.KERNELS, functional.cayley_conv2d, (0, 3, 6, 5),
                          [torch.randn(0, 4, 6, 5, dtype=torch.float64),
                           torch.randn(3, 4, 3, 3, dtype=torch.float64)]),
        "bjorck": (bjorck.KERNELS, functional.bjorck, (0, 5, 3),
                   [torch.randn(0, 5, 3, dtype=torch.float64)]),
        "bjorck-wide": (bjorck.KERNELS, functional.bjorck, (2, 0, 3, 5),
                        [torch.randn(2, 0, 3, 5, dtype=torch.float64)]),
        "convex_potential": (convex_potential.KERNELS, functional.convex_potential,
                             (0, 4, 5, 5), [torch.randn(0, 4, 5, 5, dtype=torch.float64),
                                            torch.randn(3, 4, 3, 3, dtype=torch.float64),
                                            torch.randn(3, dtype=torch.float64),
                                            torch.rand(3, dtype=torch.float64)]),
    }


EMPTY_CASES = list(_empty_cases())


def _require(device, backend, kernels):
    if backend == "reference":
        require_backend(device, backend)
    else:
        require_kernel(device, backend, kernels)


@pytest.mark.parametrize("case", EMPTY_CASES)
@pytest.mark.parametrize("device, backend", ALL_TARGETS)
def test_empty_batch_gives_empty_output_and_zero_gradients(case, device, backend):
    kernels, fn, shape, inputs = _empty_cases()[case]
    _require(device, backend, kernels)
    inputs = [t.to(device).requires_grad_() for t in inputs]
    with lipkernels.use_backend(backend):
        out = fn(*inputs)
        assert tuple(out.shape) == shape and out.dtype == inputs[0].dtype
        grads = torch.autograd.grad(out.sum(), inputs, allow_unused=True)
    for grad, tensor in zip(grads, inputs):
        assert grad is None or (grad.shape == tensor.shape and not grad.any())


@pytest.mark.parametrize("call, message", [
    (lambda: functional.power_iteration(torch.randn(2, 0, 3), torch.randn(2, 3), 1),
     "power_iteration: weight must not be empty outside its first 1 (batch) dims"),
    (lambda: functional.conv_power_iteration(torch.randn(2, 0, 3, 3), torch.randn(1, 0, 4, 4)),
     "conv_power_iteration: weight must not be empty"),
    (lambda: functional.conv_power_iteration(torch.randn(2, 3, 3, 3), torch.randn(1, 3, 0, 4)),
     "conv_power_iteration: u must not be empty"),
    (lambda: functional.soc_exp(torch.randn(2, 4, 0, 3), _skew_filter(4).float(), 3),
     "soc_exp: x must not be empty outside its first 1 (batch) dims"),
    (lambda: functional.max_min(torch.randn(2, 0, 3)),
     "max_min: x must not be empty outside its first 1 (batch) dims"),
    (lambda: functional.cayley(torch.randn(3, 0)), "cayley: W must not be empty"),
    (lambda: functional.conv_spectral_bounds(torch.randn(0, 3, 3, 3)),
     "conv_spectral_bounds: weight must not be empty"),
    (lambda: functional.householder(torch.randn(2, 4, 3), torch.randn(0)),
     "householder: theta must not be empty"),
    (lambda: functional.aol_rescaling(torch.randn(3, 0, 3, 3)),
     "aol_rescaling: weight must not be empty"),
])
def test_zero_size_outside_the_batch_is_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


_PARAMETER_FREE = ("MaxMin", "GroupSort")


def _layers():
    """(layer factory, input shape, output shape) for every layer, batch 0."""
    return {
        "SOCConv2d": (lambda: SOCConv2d(3, 4), (0, 3, 6, 6), (0, 4, 6, 6)),
        "SOCConv2d-stride2": (lambda: SOCConv2d(2, 6, stride=2), (0, 2, 6, 6), (0, 6, 3, 3)),
        "SOCLinear": (lambda: SOCLinear(5, 3), (0, 5), (0, 3)),
        "CayleyConv2d": (lambda: CayleyConv2d(3, 4), (0, 3, 6, 6), (0, 4, 6, 6)),
        "CayleyConv2d-stride2": (lambda: CayleyConv2d(2, 4, stride=2), (0, 2, 6, 6),
                                 (0, 4, 3, 3)),
        "CayleyLinear": (lambda: CayleyLinear(5, 3), (0, 5), (0, 3)),
        "BjorckLinear": (lambda: BjorckLinear(5, 3), (0, 5), (0, 3)),
        "BCOPConv2d": (lambda: BCOPConv2d(4, 6, 3), (0, 4, 6, 6), (0, 6, 6, 6)),
        "BCOPConv2d-stride2": (lambda: BCOPConv2d(2, 8, 4, stride=2), (0, 2, 6, 6),
                               (0, 8, 3, 3)),
        "MaxMin": (MaxMin, (0, 4, 3, 3), (0, 4, 3, 3)),
        "GroupSort": (lambda: GroupSort(3), (0, 6, 3, 3), (0, 6, 3, 3)),
        "HouseHolder": (lambda: HouseHolder(4), (0, 4, 3, 3), (0, 4, 3, 3)),
        "LipConvNet": (lambda: LipConvNet(5, init_channels=4), (0, 3, 32, 32), (0, 10)),
        "CPLConv2d": (lambda: CPLConv2d(4, 3, input_size=6), (0, 4, 6, 6), (0, 4, 6, 6)),
        "CPLLinear": (lambda: CPLLinear(5, 3), (0, 5), (0, 5)),
        "SLLConv2d": (lambda: SLLConv2d(4, 3), (0, 4, 6, 6), (0, 4, 6, 6)),
        "SLLLinear": (lambda: SLLLinear(5, 3), (0, 5), (0, 5)),
        "AOLConv2d": (lambda: AOLConv2d(4, 3, stride=2), (0, 4, 6, 6), (0, 3, 3, 3)),
        "AOLLinear": (lambda: AOLLinear(5, 3), (0, 5), (0, 3)),
    }


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", list(_layers()))
def test_layers_on_an_empty_batch(name, mode):
    make, in_shape, out_shape = _layers()[name]
    layer = make().train(mode == "train")
    y = layer(torch.randn(in_shape))
    assert tuple(y.shape) == out_shape
    if y.requires_grad:  # MaxMin has no parameters
        y.sum().backward()
    for parameter in layer.parameters():
        assert parameter.grad is None or not parameter.grad.any()


@pytest.mark.parametrize("device, backend", ALL_TARGETS)
def test_zero_start_vector_is_replaced(device, backend):
    """An all-zero u would give sigma = 0 for any matrix; the fixed start converges instead."""
    _require(device, backend, power_iteration.KERNELS)
    weight = matrix_with_spectrum([3.0, 1.0, 0.5], 6, 5, batch=(2,), device=device)
    u = torch.zeros(2, 5, dtype=torch.float64, device=device)
    u[1] = torch.randn(5, dtype=torch.float64)  # a non-zero vector is kept as it is
    with lipkernels.use_backend(backend):
        sigma, _, _ = functional.power_iteration(weight, u, 40)
        _, kept, _ = functional.power_iteration(weight, u, 1)
    torch.testing.assert_close(sigma, torch.linalg.matrix_norm(weight, 2), rtol=1e-9, atol=0)
    _, expected, _ = lipkernels.reference.power_iteration(weight[1], u[1], 1)
    torch.testing.assert_close(kept[1], expected)


@pytest.mark.parametrize("device, backend", ALL_TARGETS)
def test_zero_fantastic_four_vectors_are_replaced(device, backend):
    _require(device, backend, conv_spectral_bounds.KERNELS)
    weight = filter_with_spectral_gap((3, 2, 3, 3), device=device)
    zeros = [torch.zeros(cols, dtype=torch.float64, device=device)
             for _, cols in bound_matrix_shapes(weight.shape)]
    with lipkernels.use_backend(backend):
        bounds, vectors = functional.conv_spectral_bounds(weight, 40, zeros)
    exact = torch.stack([3 * torch.linalg.matrix_norm(m, 2) for m in bound_matrices(weight)])
    torch.testing.assert_close(bounds, exact, rtol=1e-9, atol=0)
    assert all(torch.linalg.vector_norm(u) > 0.5 for u in vectors)


@pytest.mark.parametrize("device, backend", ALL_TARGETS)
def test_zero_conv_power_iteration_start_is_replaced(device, backend):
    """conv_power_iteration's all-zero u likewise: the fixed start converges to the norm."""
    _require(device, backend, conv_power_iteration.KERNELS)
    # A 1 x 1 filter: the conv map is the channel matrix at every pixel, and has its norm.
    channels = matrix_with_spectrum([3.0, 1.0, 0.5], 4, 3, device=device)
    u = torch.zeros(1, 3, 4, 5, dtype=torch.float64, device=device)
    with lipkernels.use_backend(backend):
        sigma, u = functional.conv_power_iteration(channels[:, :, None, None], u, 40)
    torch.testing.assert_close(sigma, torch.linalg.matrix_norm(channels, 2), rtol=1e-9, atol=0)
    assert torch.linalg.vector_norm(u) > 0.5


def test_zero_start_keeps_nan():
    weight = torch.randn(4, 3, dtype=torch.float64)
    u = torch.tensor([0.0, float("nan"), 0.0], dtype=torch.float64)
    assert torch.isnan(functional.power_iteration(weight, u, 2)[0])


@pytest.mark.parametrize("call, name", [
    (lambda: functional.soc_exp(torch.randn(1, 2, 3, 3), _skew_filter(2).float(), 2 ** 32 + 2),
     "terms"),
    (lambda: functional.power_iteration(torch.randn(3, 2), torch.randn(2), 2 ** 63), "iters"),
    (lambda: functional.conv_power_iteration(torch.randn(2, 2, 3, 3), torch.randn(1, 2, 4, 4),
                                             2 ** 63), "iters"),
    (lambda: functional.conv_spectral_bounds(torch.randn(2, 2, 3, 3), 2 ** 40), "iters"),
    (lambda: functional.conv_spectral_norm(torch.randn(2, 2, 3, 3), 8, iters=10 ** 7), "iters"),
    (lambda: SOCConv2d(2, 2, train_terms=10 ** 4), "train_terms"),
    (lambda: SOCLinear(2, 2, eval_terms=129), "eval_terms"),
    (lambda: SOCLinear(2, 2).update_vectors(2 ** 63), "iters"),
])
def test_counts_beyond_their_bound_are_clear_errors(call, name):
    with pytest.raises(ValueError, match=f"{name} must be <= "):
        call()


def _parametrised_layers():
    return {name: spec for name, spec in _layers().items() if name not in _PARAMETER_FREE}


@pytest.mark.parametrize("name", list(_parametrised_layers()))
def test_deferred_construction_on_the_meta_device(name):
    """Built on meta (no memory, as FSDP and large-model init do), then materialised with
    to_empty + reset_parameters: the layer works and matches one built on the CPU directly."""
    make, in_shape, out_shape = _parametrised_layers()[name]
    with torch.device("meta"):
        layer = make()
    assert all(p.device.type == "meta" for p in layer.parameters())
    batch = (2, *in_shape[1:])
    assert layer(torch.empty(batch, device="meta")).shape == (2, *out_shape[1:])
    layer.to_empty(device="cpu")
    torch.manual_seed(0)
    for module in layer.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    torch.manual_seed(0)
    direct = make()
    x = torch.randn(batch)
    torch.testing.assert_close(layer(x), direct(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(_layers()))
def test_half_precision_parameters(name, dtype):
    """`.to(dtype)` works on every layer: output in the parameters' dtype, close to float32."""
    make, in_shape, _ = _layers()[name]
    torch.manual_seed(0)
    layer = make().eval()
    x = torch.randn(2, *in_shape[1:])
    expected = layer(x)
    half = layer.to(dtype)
    y = half(x.to(dtype))
    assert y.dtype == dtype
    tolerance = 0.05 if dtype == torch.bfloat16 else 0.01
    torch.testing.assert_close(y.float(), expected, rtol=tolerance, atol=tolerance)


def _orthogonal_matrices(count, channels):
    """`count` orthogonal channels x channels matrices, row-major (NaN is written in place)."""
    random = torch.randn(count, channels, channels, dtype=torch.float64)
    return torch.linalg.qr(random)[0].contiguous()


# NaN in gives NaN out, never an exception or a finite number (LIPKERNELS_CHECK=1 raises instead).
# name: (kernels or None for ops without a kernel of their own, call on float64 inputs, inputs)
def _nan_cases():
    S = _skew_filter(4)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    filter_ = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    return {
        "power_iteration": (power_iteration.KERNELS,
                            lambda W: functional.power_iteration(W, torch.ones(4, dtype=W.dtype),
                                                                 3)[0],
                            [torch.randn(3, 4, dtype=torch.float64)]),
        "conv_power_iteration": (conv_power_iteration.KERNELS,
                                 lambda W, u: functional.conv_power_iteration(W, u, 2, 2)[0],
                                 [filter_, torch.randn(1, 4, 5, 5, dtype=torch.float64)]),
        "conv_spectral_bounds": (conv_spectral_bounds.KERNELS,
                                 lambda W: functional.conv_spectral_bounds(W, 2)[0], [filter_]),
        "conv_singular_values": (None, lambda W: functional.conv_singular_values(W, 6),
                                 [filter_]),
        "conv_spectral_norm": (None, lambda W: functional.conv_spectral_norm(W, 6), [filter_]),
        "conv_spectral_norm-zeros": (None, lambda W: functional.conv_spectral_norm(W, 6, "zeros"),
                                     [filter_]),
        "conv_spectral_norm-iters": (frequency_power_iteration.KERNELS,
                                     lambda W: functional.conv_spectral_norm(W, 6, iters=3),
                                     [filter_]),
        "soc_exp": (soc_exp.KERNELS, lambda x, S: functional.soc_exp(x, S, 4), [x, S]),
        "soc_exp-fast": (soc_exp.KERNELS, lambda x, S: functional.soc_exp(x, S, 4, "fast"),
                         [x, S]),
        "max_min": (max_min.KERNELS, functional.max_min, [x]),
        "householder": (householder.KERNELS, functional.householder,
                        [x, torch.randn(2, dtype=torch.float64)]),
        "cayley": (cayley.KERNELS, functional.cayley, [torch.randn(5, 3, dtype=torch.float64)]),
        "cayley_conv2d": (cayley_conv2d.KERNELS, functional.cayley_conv2d, [x, filter_[:, :4]]),
        "bjorck": (bjorck.KERNELS, functional.bjorck, [torch.randn(5, 3, dtype=torch.float64)]),
        "bjorck-scale": (bjorck.KERNELS, lambda W, scale: functional.bjorck(W, scale=scale),
                         [torch.randn(2, 5, 3, dtype=torch.float64),
                          torch.full((2,), 4.0, dtype=torch.float64)]),
        "bcop_filter": (bcop_filter.KERNELS, lambda M: functional.bcop_filter(M, 4, 2),
                        [_orthogonal_matrices(5, 4)]),
        "bcop_filter-head": (bcop_filter.KERNELS, lambda M: functional.bcop_filter(M, 4, 4),
                             [_orthogonal_matrices(1, 4)]),
        "aol_rescaling": (aol_rescaling.KERNELS, functional.aol_rescaling,
                          [torch.randn(5, 4, dtype=torch.float64)]),
        "aol_rescaling-log_q": (aol_rescaling.KERNELS, functional.aol_rescaling,
                                [filter_, torch.randn(4, dtype=torch.float64)]),
        "convex_potential": (convex_potential.KERNELS, functional.convex_potential,
                             [x, filter_[:, :4], torch.randn(3, dtype=torch.float64),
                              torch.rand((), dtype=torch.float64)]),
        "convex_potential-linear": (convex_potential.KERNELS, functional.convex_potential,
                                    [x[:, :, 0, 0], filter_[:, :4, 0, 0],
                                     torch.randn(3, dtype=torch.float64),
                                     torch.rand(3, dtype=torch.float64)]),
    }


@pytest.mark.parametrize("case", list(_nan_cases()))
@pytest.mark.parametrize("device, backend", ALL_TARGETS)
def test_nan_in_any_input_gives_nan_out(case, device, backend):
    kernels, fn, inputs = _nan_cases()[case]
    _require(device, backend, kernels if kernels is not None else {backend: None})
    for index in range(len(inputs)):
        poisoned = [t.clone().to(device) for t in inputs]
        poisoned[index].view(-1)[0] = float("nan")
        with lipkernels.use_backend(backend):
            out = fn(*poisoned)
        assert torch.isnan(out).any(), f"input {index}: no NaN in the output"


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", [n for n in _layers() if n not in _PARAMETER_FREE])
def test_nan_parameter_gives_nan_output_and_bound(name, mode):
    make, in_shape, _ = _layers()[name]
    x = torch.randn(2, *in_shape[1:])
    for parameter_name, _ in make().named_parameters():
        torch.manual_seed(0)
        layer = make().train(mode == "train")
        with torch.no_grad():
            layer.get_parameter(parameter_name).view(-1)[0] = float("nan")
        assert torch.isnan(layer(x)).any(), parameter_name
        if hasattr(layer, "lipschitz_bound") and not parameter_name.endswith("bias"):
            assert math.isnan(layer.lipschitz_bound()), parameter_name


# All-zero weights: the mathematically right answer (sigma 0, the identity map, ...), not NaN.
def _zero_weight_cases():
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    eye = torch.eye(5, 3, dtype=torch.float64)
    return {
        "power_iteration": (power_iteration.KERNELS,
                            lambda: functional.power_iteration(
                                torch.zeros(3, 4, dtype=torch.float64),
                                torch.ones(4, dtype=torch.float64), 3)[0],
                            torch.zeros((), dtype=torch.float64)),
        "conv_power_iteration": (conv_power_iteration.KERNELS,
                                 lambda: functional.conv_power_iteration(
                                     torch.zeros(3, 4, 3, 3, dtype=torch.float64), x[:1], 3)[0],
                                 torch.zeros((), dtype=torch.float64)),
        "conv_spectral_bounds": (conv_spectral_bounds.KERNELS,
                                 lambda: functional.conv_spectral_bounds(
                                     torch.zeros(3, 4, 3, 3, dtype=torch.float64), 2)[0],
                                 torch.zeros(4, dtype=torch.float64)),
        "conv_singular_values": (None, lambda: functional.conv_singular_values(
            torch.zeros(3, 4, 3, 3, dtype=torch.float64), 6), torch.zeros(6, 6, 3,
                                                                          dtype=torch.float64)),
        "conv_spectral_norm-iters": (frequency_power_iteration.KERNELS,
                                     lambda: functional.conv_spectral_norm(
                                         torch.zeros(3, 4, 3, 3, dtype=torch.float64), 6, iters=3),
                                     torch.zeros((), dtype=torch.float64)),
        "soc_exp": (soc_exp.KERNELS, lambda: functional.soc_exp(
            x, torch.zeros(4, 4, 3, 3, dtype=torch.float64), 5), x),
        "cayley": (cayley.KERNELS,
                   lambda: functional.cayley(torch.zeros(5, 3, dtype=torch.float64)), eye),
        "cayley-wide": (cayley.KERNELS,
                        lambda: functional.cayley(torch.zeros(3, 5, dtype=torch.float64)), eye.T),
        "cayley_conv2d": (cayley_conv2d.KERNELS, lambda: functional.cayley_conv2d(
            x, torch.zeros(6, 4, 3, 3, dtype=torch.float64)), torch.cat([x, 0 * x[:, :2]], 1)),
        "cayley_conv2d-wide": (cayley_conv2d.KERNELS, lambda: functional.cayley_conv2d(
            x, torch.zeros(3, 4, 3, 3, dtype=torch.float64)), x[:, :3]),
        # Björck keeps zero singular values at zero: the zero matrix stays zero (not NaN).
        "bjorck": (bjorck.KERNELS,
                   lambda: functional.bjorck(torch.zeros(5, 3, dtype=torch.float64)),
                   torch.zeros(5, 3, dtype=torch.float64)),
        # A zero head makes every tap zero, whatever the projectors (I - 0 = I for zero ones).
        "bcop_filter-head": (bcop_filter.KERNELS, lambda: functional.bcop_filter(
            torch.zeros(1, 4, 4, dtype=torch.float64), 4, 3), torch.zeros(3, 4, 1, 1,
                                                                          dtype=torch.float64)),
        "bcop_filter": (bcop_filter.KERNELS, lambda: functional.bcop_filter(
            torch.zeros(5, 4, 4, dtype=torch.float64), 2, 4), torch.zeros(4, 2, 3, 3,
                                                                          dtype=torch.float64)),
        # G = 0: d = eps^(-1/2), whatever the weights q.
        "aol_rescaling": (aol_rescaling.KERNELS, lambda: functional.aol_rescaling(
            torch.zeros(3, 4, 3, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)),
            torch.full((4,), AOL_EPS ** -0.5, dtype=torch.float64)),
        # W = 0: the potential is constant in x, the step the identity (whatever bias, scale).
        "convex_potential": (convex_potential.KERNELS, lambda: functional.convex_potential(
            x, torch.zeros(3, 4, 3, 3, dtype=torch.float64), torch.ones(3, dtype=torch.float64),
            torch.ones((), dtype=torch.float64)), x),
    }


@pytest.mark.parametrize("case", list(_zero_weight_cases()))
@pytest.mark.parametrize("device, backend", [t for t in ALL_TARGETS if "cuda" not in t.id])
def test_zero_weights_give_the_exact_answer(case, device, backend):
    kernels, fn, expected = _zero_weight_cases()[case]
    _require(device, backend, kernels if kernels is not None else {backend: None})
    with lipkernels.use_backend(backend):
        torch.testing.assert_close(fn(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", ["SOCConv2d", "SOCConv2d-stride2", "SOCLinear", "CayleyConv2d",
                                  "CayleyConv2d-stride2", "CayleyLinear"])
def test_zero_weight_layers_are_the_identity_embedding(name, mode):
    """A zero weight means A = 0: the layer keeps the first out channels of its (unshuffled,
    zero-padded) input, plus the bias, and its bound is 1."""
    make, in_shape, out_shape = _layers()[name]
    layer = make().double().train(mode == "train")
    with torch.no_grad():
        layer.weight.zero_()
    x = torch.randn(2, *in_shape[1:], dtype=torch.float64)
    seen = unshuffle(name, x) if "stride2" in name else x
    channels = out_shape[1]
    kept = seen[:, :channels]
    if kept.shape[1] < channels:
        kept = torch.cat([kept, kept.new_zeros(2, channels - kept.shape[1], *kept.shape[2:])], 1)
    bias = layer.bias.view(1, -1, *([1] * (x.dim() - 2)))
    torch.testing.assert_close(layer(x), kept + bias, rtol=0, atol=1e-12)
    assert layer.lipschitz_bound() == pytest.approx(1.0, abs=1e-9)
