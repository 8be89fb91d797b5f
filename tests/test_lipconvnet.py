"""LipConvNet: the SOC paper's layer plan, output shapes, a training step, the network's Lipschitz
bound against measured difference quotients, and bad arguments."""

import math

import pytest
import torch
import torch.nn.functional as F

from lipkernels.nn import HouseHolder, LipConvNet, MaxMin, SOCConv2d, SOCLinear

BATCH = 2
INIT = 4  # init_channels in tests: the widest filter is then 256 x 256 (1 x 1)


def images(batch=BATCH, dtype=torch.float32):
    return torch.randn(batch, 3, 32, 32, dtype=dtype)


@pytest.mark.parametrize("depth", [5, 10, 15])
def test_layer_plan_follows_the_paper(depth):
    net = LipConvNet(depth, init_channels=INIT)
    convs = [m for m in net.features if isinstance(m, SOCConv2d)]
    assert len(convs) == depth
    block = depth // 5
    assert [c.stride for c in convs] == ([1] * (block - 1) + [2]) * 5
    assert [c.kernel_size for c in convs] == [3] * (depth - 1) + [1]
    assert convs[0].in_channels == 3
    assert convs[0].out_channels == (INIT if block > 1 else 2 * INIT)
    for previous, conv in zip(convs, convs[1:]):
        assert conv.in_channels == previous.out_channels
    widths = [c.out_channels for c in convs if c.stride == 2]
    assert widths == [2 * INIT * 2 ** b for b in range(5)]
    assert isinstance(net.head, SOCLinear) and net.head.in_features == 32 * INIT
    assert all(isinstance(m, MaxMin) for m in net.features[1::2])


@pytest.mark.parametrize("depth,activation", [(5, "maxmin"), (10, "maxmin"), (5, "householder")])
def test_output_shape(depth, activation):
    net = LipConvNet(depth, init_channels=INIT, num_classes=7, activation=activation)
    for mode in (True, False):
        assert net.train(mode)(images()).shape == (BATCH, 7)


@pytest.mark.parametrize("input_size,cells", [(64, 4), ((32, 96), 3)])
def test_other_input_sizes(input_size, cells):
    """Multiples of 32, square or not: the last block ends at H/32 x W/32, flattened into the
    head; the network's bound is the product of its layers' at the sizes they see, and covers
    measured difference quotients."""
    net = LipConvNet(5, init_channels=2, num_classes=3, input_size=input_size).double().eval()
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    assert net.input_size == (height, width) and net.head.in_features == 64 * cells
    x, other = (torch.randn(2, 3, height, width, dtype=torch.float64) for _ in range(2))
    with torch.no_grad():
        out = net(torch.cat([x, other]))
    assert out.shape == (4, 3)
    convs = [layer for layer in net.soc_layers() if isinstance(layer, SOCConv2d)]
    bounds, size = [], (height, width)
    for conv in convs:
        bounds.append(conv.lipschitz_bound(size))
        size = (size[0] // conv.stride, size[1] // conv.stride)
    bound = net.lipschitz_bound()
    assert bound == pytest.approx(math.prod(bounds) * net.head.lipschitz_bound(), rel=1e-12)
    ratios = (out[:2] - out[2:]).norm(dim=1) / (x - other).flatten(1).norm(dim=1)
    assert (ratios <= bound).all(), (ratios, bound)
    with pytest.raises(ValueError, match=rf"input must have shape \(B, 3, {height}, {width}\)"):
        net(torch.randn(1, 3, 32, 32, dtype=torch.float64))


def test_householder_activation_width_matches_its_conv():
    net = LipConvNet(5, init_channels=INIT, activation="householder")
    for conv, activation in zip(net.features[0::2], net.features[1::2]):
        assert isinstance(activation, HouseHolder)
        assert activation.theta.shape == (conv.out_channels // 2,)


@pytest.mark.parametrize("activation", ["maxmin", "householder"])
def test_training_step_changes_the_weights(activation):
    net = LipConvNet(5, init_channels=INIT, activation=activation)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x, labels = images(), torch.tensor([1, 4])
    before = [p.detach().clone() for p in net.parameters()]
    losses = []
    for _ in range(2):
        optimizer.zero_grad()
        loss = F.cross_entropy(net(x), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(value) for value in losses)
    changed = [not torch.equal(b, p) for b, p in zip(before, net.parameters())]
    assert all(changed), f"unchanged parameters: {changed}"
    assert torch.isfinite(net(x)).all()


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("activation", ["maxmin", "householder"])
def test_lipschitz_bound_covers_measured_difference_quotients(activation, mode):
    net = LipConvNet(5, init_channels=INIT, activation=activation).double()
    net.train(mode == "train")
    if activation == "householder":
        with torch.no_grad():  # angles away from the initial pi / 2, where HH is MaxMin
            for module in net.features[1::2]:
                module.theta.uniform_(0, 2 * math.pi)
    bound = net.lipschitz_bound()  # before the forward: in training it updates the vectors
    assert bound == pytest.approx(math.prod(m.lipschitz_bound() for m in net.soc_layers()))
    x = images(4, torch.float64)
    # Far pairs and close pairs (where the map is locally linear); one forward for all of them,
    # so that a training forward's power iteration applies to both ends of each pair.
    other = torch.cat([images(2, torch.float64), x[2:] + 1e-3 * images(2, torch.float64)])
    with torch.no_grad():
        out = net(torch.cat([x, other]))
    ratios = (out[:4] - out[4:]).norm(dim=1) / (x - other).flatten(1).norm(dim=1)
    assert (ratios > 0.01).all()
    assert (ratios <= bound).all(), (ratios, bound)


def test_lipschitz_bound_includes_each_layer_tail():
    """The product of every layer's bound at the image size it sees (32 x 32, halved by each
    stride-2 layer before it), the SOCLinear head's at every size."""
    net = LipConvNet(5, init_channels=INIT, eval_terms=4).eval()
    convs = [layer for layer in net.soc_layers() if isinstance(layer, SOCConv2d)]
    sizes = [32 // 2 ** sum(c.stride == 2 for c in convs[:index]) for index in range(len(convs))]
    bounds = [layer.lipschitz_bound(size) for layer, size in zip(convs, sizes)]
    bounds.append(net.head.lipschitz_bound())
    assert len(bounds) == 6 and all(b > 1 for b in bounds)
    assert net.lipschitz_bound() == pytest.approx(math.prod(bounds), rel=1e-12)


def test_update_vectors_touches_every_layer():
    net = LipConvNet(5, init_channels=INIT)
    with torch.no_grad():
        for layer in net.soc_layers():
            layer.weight.mul_(2).add_(torch.randn_like(layer.weight))
    before = [layer.u3.clone() for layer in net.soc_layers()]
    net.update_vectors(5)
    assert all(not torch.equal(b, layer.u3) for b, layer in zip(before, net.soc_layers()))


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"depth": 7}, ValueError, "LipConvNet: depth must be a multiple of 5 from 5 to 40"),
        ({"depth": 45}, ValueError, "LipConvNet: depth must be a multiple of 5 from 5 to 40"),
        ({"depth": 0}, ValueError, "LipConvNet: depth must be >= 1"),
        ({"depth": 10.0}, TypeError, "LipConvNet: depth must be an int"),
        ({"activation": "relu"}, ValueError, "LipConvNet: activation must be one of maxmin, "),
        ({"init_channels": 0}, ValueError, "LipConvNet: init_channels must be >= 1"),
        ({"num_classes": 0}, ValueError, "LipConvNet: num_classes must be >= 1"),
        ({"input_size": 48}, ValueError, r"LipConvNet: input_size must be an int or an \(H, W\) "
                                         r"pair of multiples of 32 .*got 48"),
        ({"input_size": (32, 16)}, ValueError, r"input_size must be .*got \(32, 16\)"),
        ({"input_size": (32.0, 32)}, ValueError, "input_size must be"),
        ({"input_size": (32, 32, 32)}, ValueError, "input_size must be"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        LipConvNet(**kwargs)


def test_bad_input_shape():
    net = LipConvNet(5, init_channels=INIT)
    with pytest.raises(ValueError, match=r"LipConvNet: input must have shape \(B, 3, 32, 32\)"):
        net(torch.randn(BATCH, 3, 28, 28))
