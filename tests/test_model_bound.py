"""lipkernels.lipschitz_bound(model): the product bound of sequential models, the known constants
of parameter-free modules, and a clear error for every module it cannot bound."""

import math

import pytest
import torch
from torch import nn

import lipkernels
from lipkernels.nn import (CayleyConv2d, CayleyLinear, LipConvNet, MaxMin, Residual, SOCConv2d,
                           SOCLinear)


def _quotients(model, shape, pairs=8):
    """Measured ||f(x) - f(y)|| / ||x - y|| over random pairs."""
    x, y = torch.randn(pairs, *shape, dtype=torch.float64), torch.randn(pairs, *shape,
                                                                       dtype=torch.float64)
    with torch.no_grad():
        out = model(torch.cat([x, y]))
    return (out[:pairs] - out[pairs:]).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)


def test_sequential_bound_is_the_product_and_covers_measured_quotients():
    torch.manual_seed(0)
    model = nn.Sequential(SOCConv2d(3, 4, eval_terms=6), MaxMin(), nn.MaxPool2d(2),
                          nn.Sequential(CayleyConv2d(4, 4), nn.LeakyReLU(0.1)),
                          nn.AvgPool2d(2, stride=1), nn.Flatten(), nn.Dropout(0.5),
                          CayleyLinear(4 * 3 * 3, 8), nn.Sigmoid(), SOCLinear(8, 3)).double()
    model.eval()
    expected = (model[0].lipschitz_bound() * 1.0 * 1.0 * model[3][0].lipschitz_bound()
                * math.sqrt(4 / 4) * model[7].lipschitz_bound() * 0.25
                * model[9].lipschitz_bound())
    bound = lipkernels.lipschitz_bound(model)
    assert expected <= bound <= expected * (1 + 2.0 ** -48)
    assert (_quotients(model, (3, 8, 8)) <= bound).all()
    model.train()
    assert lipkernels.lipschitz_bound(model[6]) == 2.0  # dropout's 1 / (1 - p) in training


def test_pooling_constants():
    """Overlapping windows: max pooling sqrt(windows per pixel), average pooling
    sqrt(windows per pixel / window size); non-overlapping max pooling 1, average 1 / k;
    averages over windows clipped at the border lose the window-size factor."""
    assert lipkernels.lipschitz_bound(nn.MaxPool2d(2)) == 1.0
    assert lipkernels.lipschitz_bound(nn.MaxPool2d(3, stride=1)) == 3.0
    assert lipkernels.lipschitz_bound(nn.AvgPool2d(2)) == 0.5
    assert lipkernels.lipschitz_bound(nn.AvgPool2d(3, stride=2)) == math.sqrt(4 / 9)
    assert lipkernels.lipschitz_bound(nn.AvgPool2d(2, ceil_mode=True)) == 1.0
    assert lipkernels.lipschitz_bound(nn.AvgPool2d(3, 2, padding=1, count_include_pad=False)) \
        == 2.0
    for module in (nn.MaxPool2d(3, stride=1, padding=1), nn.AvgPool2d(3, stride=2, padding=1),
                   nn.AvgPool2d(3, 2, padding=1, count_include_pad=False),
                   nn.AvgPool2d(2, ceil_mode=True)):
        bound = lipkernels.lipschitz_bound(module)
        assert (_quotients(module, (2, 7, 7)) <= bound).all()


def test_models_with_their_own_bound_use_it():
    net = LipConvNet(depth=5, init_channels=2).eval()
    assert lipkernels.lipschitz_bound(net) == net.lipschitz_bound()
    # The product rounds up by an ulp at every multiplication.
    assert net.lipschitz_bound() <= lipkernels.lipschitz_bound(nn.Sequential(net)) \
        <= math.nextafter(net.lipschitz_bound(), math.inf)


@pytest.mark.parametrize("module,message", [
    (nn.Linear(3, 3), r"cannot bound '1' \(Linear\): its weight is unconstrained; replace it by "
                      r"an orthogonal layer \(lipkernels.nn.swap\)"),
    (nn.Conv2d(3, 3, 3), r"cannot bound '1' \(Conv2d\): its weight is unconstrained"),
    (nn.BatchNorm2d(3), r"cannot bound '1' \(BatchNorm2d\): batch normalisation scales"),
    (nn.GELU(), r"cannot bound '1' \(GELU\): no known bound: give it a lipschitz_bound\(\)"),
    (nn.MaxPool2d(2, dilation=2), r"cannot bound '1' \(MaxPool2d\): dilated pooling"),
    (nn.AvgPool2d(2, divisor_override=1), r"cannot bound '1' \(AvgPool2d\): divisor_override"),
])
def test_modules_it_cannot_bound_are_named(module, message):
    with pytest.raises(ValueError, match=f"lipschitz_bound: {message}"):
        lipkernels.lipschitz_bound(nn.Sequential(nn.ReLU(), module))


def test_non_sequential_containers_are_refused():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = SOCConv2d(2, 2)

        def forward(self, x):
            return x + self.conv(x)

    with pytest.raises(ValueError, match=r"cannot bound Residual: no known bound"):
        lipkernels.lipschitz_bound(Residual())
    with pytest.raises(TypeError, match="lipschitz_bound: model must be a torch.nn.Module"):
        lipkernels.lipschitz_bound(3)


def test_nan_layer_bound_gives_nan():
    layer = CayleyLinear(3, 3)
    with torch.no_grad():
        layer.weight[0, 0] = float("nan")
    assert math.isnan(lipkernels.lipschitz_bound(nn.Sequential(layer, nn.ReLU())))


def test_residual_blocks_are_bounded_by_the_triangle_inequality():
    """Residual: scale * (L(shortcut) + L(branch)), exact for identity paths (x + x, the
    average of x and x); above every measured quotient and the Jacobian norm of a small block;
    a part it cannot bound named."""
    torch.manual_seed(0)
    assert lipkernels.lipschitz_bound(Residual(nn.Identity())) == 2.0
    assert lipkernels.lipschitz_bound(Residual(nn.Identity(), scale=0.5)) == 1.0
    block = Residual(nn.Sequential(SOCConv2d(4, 4, eval_terms=6), MaxMin()),
                     shortcut=SOCConv2d(4, 4, eval_terms=6), scale=0.5).double().eval()
    model = nn.Sequential(block, nn.Flatten(), SOCLinear(4 * 5 * 5, 3)).double().eval()
    parts = 0.5 * (block.shortcut.lipschitz_bound() + block.branch[0].lipschitz_bound())
    bound = lipkernels.lipschitz_bound(model)
    assert parts * model[2].lipschitz_bound() <= bound <= parts * 1.0001
    assert (_quotients(model, (4, 5, 5)) <= bound).all()
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(block, x).reshape(100, 100)
    assert torch.linalg.matrix_norm(jacobian, 2).item() <= lipkernels.lipschitz_bound(block)
    with pytest.raises(ValueError, match=r"cannot bound Linear: .* \(the branch of a Residual\)"):
        lipkernels.lipschitz_bound(Residual(nn.Linear(3, 3)))
    with pytest.raises(ValueError, match="Residual: scale must be a finite number >= 0"):
        Residual(nn.Identity(), scale=-1.0)


def test_pixel_shuffles_are_isometries():
    """PixelUnshuffle and PixelShuffle permute the entries: bound 1, and the norm is kept."""
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    for module in (nn.PixelUnshuffle(2), nn.Sequential(nn.PixelUnshuffle(2), nn.PixelShuffle(2))):
        assert lipkernels.lipschitz_bound(module) == 1.0
        torch.testing.assert_close(module(x).flatten(1).norm(dim=1), x.flatten(1).norm(dim=1))
