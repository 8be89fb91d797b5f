"""BjorckLinear: orthonormality, the certified bound against the exact norm, the persistent
power-iteration vector, gradients, compile and bad input; `near_isometry_norm_bound`."""

import math

import pytest
import torch

import lipkernels
from lipkernels.bounds import near_isometry_norm_bound
from lipkernels.nn import BjorckLinear
from helpers import assert_compiled_matches_eager


@pytest.mark.parametrize("shape", [(16, 40), (40, 16), (24, 24)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_weight_is_orthonormal_and_the_bound_is_its_norm(shape, dtype):
    """After training steps that move the weight, Q has orthonormal columns (rows if wide) to
    the precision's accuracy, and the bound covers its exact norm and is within the same
    accuracy of 1."""
    torch.manual_seed(0)
    layer = BjorckLinear(shape[1], shape[0], dtype=dtype)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.05)
    for _ in range(3):
        optimizer.zero_grad()
        layer(torch.randn(8, shape[1], dtype=dtype)).square().sum().backward()
        optimizer.step()
    tolerance = 1e-10 if dtype == torch.float64 else 1e-5
    for mode in (True, False):
        layer.train(mode)
        singular_values = torch.linalg.svdvals(layer.orthogonal_weight().detach().double())
        torch.testing.assert_close(singular_values, torch.ones_like(singular_values),
                                   rtol=0, atol=tolerance)
        bound = layer.lipschitz_bound()
        assert float(singular_values.max()) <= bound <= 1 + 10 * tolerance


def test_bound_covers_an_unconverged_weight():
    """Two Björck steps from a spread spectrum leave Q far from orthonormal (its smallest
    singular values far below 1): the bound still covers the exact norm of the layer's
    Jacobian (Q itself)."""
    torch.manual_seed(1)
    layer = BjorckLinear(12, 12, bjorck_iters=2, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(12, 12, dtype=torch.float64)
                           @ torch.diag(torch.logspace(-3, 0, 12, dtype=torch.float64)))
    layer.update_vector(100)
    layer.eval()
    x = torch.randn(12, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(lambda v: layer(v[None])[0], x)
    singular_values = torch.linalg.svdvals(jacobian)
    assert float(singular_values.min()) < 0.1
    assert float(singular_values.max()) <= layer.lipschitz_bound() < 3


def test_near_isometry_bound_is_tight_and_never_below_the_norm():
    torch.manual_seed(2)
    Q = torch.linalg.qr(torch.randn(50, 20, dtype=torch.float64))[0]
    for scale in (1.0, 1 + 1e-9, 1.01, 0.5):
        bound = near_isometry_norm_bound(scale * Q)
        assert scale <= bound <= max(scale, 1) * (1 + 1e-12) + abs(scale ** 2 - 1) * 5
        assert near_isometry_norm_bound(scale * Q.T) == bound
    single = Q.float()
    assert near_isometry_norm_bound(single) >= float(torch.linalg.matrix_norm(single.double(), 2))
    assert math.isnan(near_isometry_norm_bound(torch.full((3, 2), float("nan"))))


def test_training_stores_the_vector_and_eval_does_not():
    torch.manual_seed(3)
    layer = BjorckLinear(6, 4)
    with torch.no_grad():
        layer.weight.add_(torch.randn_like(layer.weight))
    x = torch.randn(2, 6)
    before = layer.u.clone()
    layer.lipschitz_bound()
    assert torch.equal(layer.u, before)
    layer(x)
    assert not torch.equal(layer.u, before)
    torch.testing.assert_close(layer.u.norm(), torch.tensor(1.0))
    layer.eval()
    stored = layer.u.clone()
    layer(x)
    assert torch.equal(layer.u, stored)


def test_zero_weight_is_the_zero_map():
    layer = BjorckLinear(5, 3)
    with torch.no_grad():
        layer.weight.zero_()
    x = torch.randn(4, 5)
    for mode in (True, False):
        layer.train(mode)
        torch.testing.assert_close(layer(x), layer.bias.expand(4, 3))
        assert layer.lipschitz_bound() == 0.0


def test_gradcheck_and_compile():
    torch.manual_seed(4)
    layer = BjorckLinear(4, 3, bjorck_iters=6, dtype=torch.float64).eval()
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    weight = layer.weight

    def through_weight(w, x):
        return torch.func.functional_call(layer, {"weight": w}, (x,))

    assert torch.autograd.gradcheck(through_weight, (weight.detach().requires_grad_(), x))
    compiled_layer = BjorckLinear(4, 3).eval()
    assert_compiled_matches_eager(lambda x: compiled_layer(x).square().sum(),
                                  torch.randn(2, 4, requires_grad=True))


def test_model_bound_uses_the_layer_bound():
    torch.manual_seed(5)
    model = torch.nn.Sequential(BjorckLinear(8, 6), lipkernels.nn.GroupSort(3),
                                BjorckLinear(6, 4)).eval()
    expected = model[0].lipschitz_bound() * model[2].lipschitz_bound()
    bound = lipkernels.lipschitz_bound(model)
    assert expected <= bound <= expected * (1 + 1e-15)


@pytest.mark.parametrize("arguments,error,message", [
    ((0, 3), ValueError, "BjorckLinear: in_features must be >= 1; got 0"),
    ((3, 2.0), TypeError, "BjorckLinear: out_features must be an int; got float"),
    ((3, 2, True, 0), ValueError, "BjorckLinear: bjorck_iters must be >= 1; got 0"),
])
def test_bad_arguments_are_rejected(arguments, error, message):
    with pytest.raises(error, match=message):
        BjorckLinear(*arguments)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="BjorckLinear"):
        BjorckLinear(4, 3)(torch.randn(2, 5))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_layers_train_and_bound_their_rounded_weight(dtype):
    """Half parameters: drawn and orthonormalised in float32, Q returned in their dtype; the
    bound covers the norm of that rounded Q."""
    torch.manual_seed(6)
    layer = BjorckLinear(16, 8, dtype=dtype)
    x = torch.randn(3, 16, dtype=dtype)
    y = layer(x)
    y.float().square().sum().backward()
    assert y.dtype == layer.weight.grad.dtype == dtype
    assert bool(torch.isfinite(layer.weight.grad).all())
    norm = float(torch.linalg.matrix_norm(layer.orthogonal_weight().detach().double(), 2))
    assert norm <= layer.lipschitz_bound() < 1.01
