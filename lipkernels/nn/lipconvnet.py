"""LipConvNet: the all-orthogonal convolutional network of the SOC paper.

Singla & Feizi, "Skew Orthogonal Convolutions", ICML 2021 (LipConvNet-n, n = depth), with the
SOC defaults of Singla, Singla & Feizi, NeurIPS 2022 (6 training / 15 eval series terms).
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_count, check_nonnegative
from ..bounds import rounded_up_product
from .householder import HouseHolder
from .max_min import MaxMin
from .soc import BOUND_TOLERANCE, INIT_ITERS, SOCConv2d, SOCLinear

ACTIVATIONS = ("maxmin", "householder")

# Five stride-2 layers, each halving the image (pixel unshuffle needs even sizes): an input side
# must be a multiple of 2^5 = 32, which ends as side / 32.
BLOCKS = 5
INPUT_SIZE = 32


def _input_size(input_size) -> tuple[int, int]:
    """(H, W) from an int or a pair, each a multiple of INPUT_SIZE (= 2^BLOCKS)."""
    pair = (input_size, input_size) if isinstance(input_size, int) else input_size
    if not isinstance(pair, (tuple, list)) or len(pair) != 2 or any(
            isinstance(side, bool) or not isinstance(side, int) or side < INPUT_SIZE
            or side % INPUT_SIZE for side in pair):
        raise ValueError(f"LipConvNet: input_size must be an int or an (H, W) pair of multiples "
                         f"of {INPUT_SIZE} (each of the {BLOCKS} stride-2 layers halves an even "
                         f"size; resize or pad other images first); got {input_size!r}")
    return tuple(pair)


def _activation(name: str, channels: int) -> nn.Module:
    return MaxMin() if name == "maxmin" else HouseHolder(channels)


class LipConvNet(nn.Module):
    """LipConvNet-`depth` for (B, in_channels, H, W) inputs (32 x 32 by default); output
    (B, num_classes) logits.

    Five blocks of depth / 5 SOC layers each. Block b (width c = init_channels * 2^b) has
    depth / 5 - 1 stride-1 3 x 3 SOCConv2d layers to c channels (the very first maps
    in_channels -> init_channels), then one stride-2 SOCConv2d to 2c channels (3 x 3, or 1 x 1 in
    the last block); every conv is followed by the activation. An H x W input ends as
    H/32 x W/32 with 32 * init_channels channels (1 x 1 for 32 x 32), flattened into an
    SOCLinear(32 * init_channels * H/32 * W/32, num_classes) head (flattening is an isometry).
    As in the seed code (`lip_convnets.py`), a stride-2 layer maps whatever it receives to 2c:
    with depth 5 the first layer maps in_channels -> 2 * init_channels.

    Args:
        depth: number of SOCConv2d layers, a multiple of 5 from 5 to 40.
        init_channels: width of the first block.
        num_classes: logits.
        in_channels: image channels.
        activation: "maxmin" (`MaxMin`, channel halves) or "householder" (`HouseHolder`, one
            learnable angle per channel pair).
        train_terms, eval_terms, grad_mode: passed to every SOC layer.
        input_size: the input's (H, W), or one int for square inputs: multiples of 32 (each of
            the five stride-2 layers halves an even size; resize or pad other images first).
    """

    def __init__(self, depth: int = 10, init_channels: int = 32, num_classes: int = 10,
                 in_channels: int = 3, activation: str = "maxmin", train_terms: int = 6,
                 eval_terms: int = 15, grad_mode: str = "exact", input_size=INPUT_SIZE):
        super().__init__()
        check_count("LipConvNet", "depth", depth)
        if depth % BLOCKS or not BLOCKS <= depth <= 8 * BLOCKS:
            raise ValueError(f"LipConvNet: depth must be a multiple of {BLOCKS} from {BLOCKS} to "
                             f"{8 * BLOCKS} (5 blocks of depth / 5 layers); got {depth}")
        for name, value in (("init_channels", init_channels), ("num_classes", num_classes),
                            ("in_channels", in_channels)):
            check_count("LipConvNet", name, value)
        if activation not in ACTIVATIONS:
            raise ValueError(f"LipConvNet: activation must be one of {', '.join(ACTIVATIONS)}; "
                             f"got {activation!r}")
        self.input_size = _input_size(input_size)
        self.depth, self.in_channels, self.activation = depth, in_channels, activation
        series = {"train_terms": train_terms, "eval_terms": eval_terms, "grad_mode": grad_mode}
        layers, channels = [], in_channels
        for block in range(BLOCKS):
            width = init_channels * 2 ** block
            last_kernel = 1 if block == BLOCKS - 1 else 3
            plan = [(1, 3)] * (depth // BLOCKS - 1) + [(2, last_kernel)]
            for stride, kernel_size in plan:
                out = width * stride
                layers += [SOCConv2d(channels, out, kernel_size, stride, **series),
                           _activation(activation, out)]
                channels = out
        self.features = nn.Sequential(*layers)
        cells = (self.input_size[0] // INPUT_SIZE) * (self.input_size[1] // INPUT_SIZE)
        self.head = SOCLinear(channels * cells, num_classes, **series)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self.in_channels, *self.input_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            shape = ", ".join(map(str, expected))
            raise ValueError(f"LipConvNet: input must have shape (B, {shape}); "
                             f"got {tuple(x.shape)}")
        return self.head(self.features(x).flatten(1))

    def soc_layers(self) -> list[nn.Module]:
        """The SOCConv2d layers in order, then the SOCLinear head."""
        return [m for m in self.modules() if isinstance(m, (SOCConv2d, SOCLinear))]

    @torch.no_grad()
    def update_vectors(self, iters: int = INIT_ITERS):
        """`iters` power iterations in every SOC layer (the NeurIPS 2022 once-per-epoch refresh)."""
        for layer in self.soc_layers():
            layer.update_vectors(iters)

    def lipschitz_bound(self, *, tolerance: float = BOUND_TOLERANCE) -> float:
        """A provable upper bound (a Python float) on the network's l2 Lipschitz constant.

        The product of the SOC layers' `lipschitz_bound` (each including its series truncation,
        for the current mode; the product rounded up, `bounds.rounded_up_product`): the
        activations are 1-Lipschitz (MaxMin sorts pairs of channels; HouseHolder is a
        continuous, piecewise orthogonal map) and flattening is an isometry, so the
        composition's constant is at most the product of the layers'. `forward` accepts only
        `input_size` inputs, so each SOCConv2d is bounded at the one size it sees (input_size
        halved by every stride-2 layer before it), the tight and fast form of its bound: on the
        2 x 2 images of a 32 x 32 input's widest 3 x 3 layers it needs nine frequencies, and it
        is typically below
        the size-independent `lipschitz_bound()` of the layer. `tolerance` is each layer's (see
        `SOCConv2d.lipschitz_bound`): the product is within (1 + tolerance)^L of the tight one, L
        the number of SOC layers.
        """
        tolerance = check_nonnegative("LipConvNet", "tolerance", tolerance)
        bounds, (height, width) = [], self.input_size
        for layer in self.features:
            if isinstance(layer, SOCConv2d):
                bounds.append(layer.lipschitz_bound((height, width), tolerance=tolerance))
                height, width = height // layer.stride, width // layer.stride
        return rounded_up_product([*bounds, self.head.lipschitz_bound(tolerance=tolerance)])
