"""Suite bcop: BCOP (Li et al., NeurIPS 2019) at the layers of LConvNet's Large network and of the
LipConvNet grid: the filter's construction from the free matrices (Björck, then `bcop_filter`),
and the passes of `lipkernels.nn.BCOPConv2d` (training forward, forward+backward, cached eval);
peer orthogonium's FastBlockConv2d."""

from __future__ import annotations

import dataclasses

import torch
from torch.nn.utils import parametrize

import lipkernels
from lipkernels import reference
from lipkernels.nn import BCOPConv2d
from lipkernels.nn.bjorck import orthonormalised
from lipkernels.nn.soc import INIT_ITERS

from ..core import (Case, Op, PeerAdapter, Suite, norm_ratio_error, seeded_normal, unit_rows,
                    weighted_sum_loss)
from ._layers import LAYER_MODES, inside_cached, layer_pass
from .bjorck import ITERS, Stack

# LConvNet Large's convolutions (in_channels, out_channels, image size, kernel size, stride):
# 3 -> 32 k3 and 32 -> 32 k4 s2 at 32x32, 32 -> 64 k3 and 64 -> 64 k4 s2 at 16x16. A stride-2
# layer is a pixel unshuffle and a filter of k // 2 taps on 4 C_in channels.
LCONVNET_LAYERS = ((3, 32, 32, 3, 1), (32, 32, 32, 4, 2), (32, 64, 16, 3, 1), (64, 64, 16, 4, 2))
# The LipConvNet grid with BCOP layers (--full): C@HxW, 3x3. 512@2x2 is left out: BCOPConv2d
# rejects a filter larger than the image it sees.
LIPCONVNET_LAYERS = tuple((c, c, size, 3, 1) for c, size in ((32, 32), (64, 16), (128, 8),
                                                              (256, 4)))
LAYER_BATCHES, DEFAULT_LAYER_BATCHES = (128, 256), (128,)
# Square 3x3 filters of the CPU target (64 and 512 channels) beside the LConvNet filters;
# --full adds the other LipConvNet widths.
SQUARE_FILTERS, DEFAULT_SQUARE_FILTERS = (32, 64, 128, 256, 512), (64, 512)
# The image size of the exact singular values of a constructed filter: every filter fits, and
# the filter is orthogonal at every size, so a small one suffices: 16 complex float64 SVDs (those
# of a 512-channel filter take seconds on 2 CPU cores, 8x8 four times as long).
SPECTRUM_SIZE = 4
COMPILED_FILTER = "C64-C64-k3"
CONSTRUCTION_MODES = ("fwd", "fwd+bwd")


@dataclasses.dataclass(frozen=True)
class BCOPFilter:
    """The free matrices of a BCOP filter (out_channels, in_channels, taps, taps): 2 taps - 1
    seeded C x C matrices, C = max(in, out), as the bjorck suite's `Stack` (orthogonal plus 0.3
    relative noise, a trained layer's), their power-iteration vectors after INIT_ITERS iterations
    (BCOPConv2d's persistent `u`), and the fixed random weights dW of the fwd+bwd loss
    sum(filter * dW)."""

    in_channels: int
    out_channels: int
    taps: int

    @property
    def label(self) -> str:
        return f"C{self.in_channels}-C{self.out_channels}-k{self.taps}"

    def inputs(self):
        """(matrices (2 taps - 1, C, C), (dW, u (2 taps - 1, C))), float32 on the CPU."""
        channels = max(self.in_channels, self.out_channels)
        count = 2 * self.taps - 1
        matrices = Stack(count, channels, channels).matrices()
        start = unit_rows(seeded_normal(f"{self.label}/u", (count, channels)))
        vectors = reference.power_iteration(matrices, start, INIT_ITERS)[1]
        dW = seeded_normal(f"{self.label}/dW",
                           (self.out_channels, self.in_channels, self.taps, self.taps))
        return matrices, (dW, vectors)


def bcop_construction(matrices, vectors, in_channels: int, out_channels: int, iters: int):
    """BCOPConv2d's training-mode filter from its free matrices: each divided by
    max(sigma, sqrt(||G||_F / 2)), sigma after one power iteration from its vector (not stored),
    `iters` Björck iterations, then `bcop_filter`; every op on the selected backend."""
    orthogonal = orthonormalised(matrices, vectors, iters, training=True, store_vector=False)
    return lipkernels.bcop_filter(orthogonal, in_channels, out_channels)


def filter_orthogonality_error(weight, data: BCOPFilter) -> float:
    """max |sigma - 1| of the exact singular values of the filter's circular convolution on a
    SPECTRUM_SIZE^2 image (float64)."""
    sigmas = lipkernels.conv_singular_values(weight, (SPECTRUM_SIZE, SPECTRUM_SIZE))
    return (sigmas - 1).abs().max().item()


@dataclasses.dataclass(frozen=True)
class BCOPLayer:
    """A BCOP layer's activations: x (batch, in_channels, size, size), seeded normal, and the
    fixed random weights dy of the fwd+bwd loss sum(y * dy); each measurement builds its layer,
    no bias (so that ||y|| / ||x|| measures the convolution), from a fixed seed."""

    batch: int
    in_channels: int
    out_channels: int
    size: int
    kernel_size: int
    stride: int

    @property
    def label(self) -> str:
        stride = "-s2" if self.stride == 2 else ""
        return (f"B{self.batch}-C{self.in_channels}-C{self.out_channels}-H{self.size}-"
                f"W{self.size}-k{self.kernel_size}{stride}")

    @property
    def filter(self) -> BCOPFilter:
        """The filter the layer convolves with (after the unshuffle at stride 2)."""
        taps = self.kernel_size if self.stride == 1 else max(1, self.kernel_size // 2)
        return BCOPFilter(self.in_channels * self.stride ** 2, self.out_channels, taps)

    @property
    def isometric(self) -> bool:
        """Whether the layer preserves norms (C_in s^2 <= C_out); otherwise a co-isometry."""
        return self.filter.in_channels <= self.filter.out_channels

    def inputs(self):
        """((x,), dy), float32 on the CPU."""
        out_size = self.size // self.stride
        return ((seeded_normal(self.label, (self.batch, self.in_channels, self.size, self.size)),),
                seeded_normal(f"{self.label}/dy",
                              (self.batch, self.out_channels, out_size, out_size)))

    def lipkernels_layer(self) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return BCOPConv2d(self.in_channels, self.out_channels, self.kernel_size,
                              self.stride, bias=False, bjorck_iters=ITERS)


def _without_parametrizations(layer):
    """The layer with orthogonium's parametrizations removed, their current filter kept as a
    plain weight (`leave_parametrized=True`): a user's inference with the filter computed once.
    torch's `parametrize.cached()` would do the same inside a block, but its cache is global
    and keyed by module id, so a block left open for a measurement leaks into the next."""
    for module in layer.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return layer


def _orthogonium_layer(data: BCOPLayer) -> torch.nn.Module:
    """orthogonium 0.0.4's FastBlockConv2d (its BCOP: 2 taps C x C/2 free matrices, 3 power
    iterations, Björck set to ITERS iterations as ours, its own filter construction), seeded,
    circular "same" padding, no bias; at stride 2 after nn.PixelUnshuffle(2), as BCOPConv2d."""
    from orthogonium.layers.conv.AOC.fast_block_ortho_conv import FastBlockConv2d
    from orthogonium.model_factory.classparam import ClassParam
    from orthogonium.reparametrizers import BatchedBjorckOrthogonalization, OrthoParams

    params = OrthoParams(orthogonalizer=ClassParam(BatchedBjorckOrthogonalization, beta=0.5,
                                                   niters=ITERS))
    shape = data.filter
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        conv = FastBlockConv2d(shape.in_channels, shape.out_channels, shape.taps,
                               padding="same", padding_mode="circular", bias=False,
                               ortho_params=params)
    return torch.nn.Sequential(torch.nn.PixelUnshuffle(2), conv) if data.stride == 2 else conv


def _layer_error(y, data: BCOPLayer) -> float | None:
    """norm_ratio_error where the layer is an isometry; none for a co-isometry (its ||y|| is
    below ||x||: the singular values of its filter are the bcop_construction rows')."""
    return norm_ratio_error(y, data) if data.isometric else None


BCOP_CONSTRUCTION = Op(
    "bcop_construction",
    lambda fn, matrices, state, case: fn(matrices, state[1], case.data.in_channels,
                                         case.data.out_channels, case.iters),
    filter_orthogonality_error,
    loss=lambda weight, state: weighted_sum_loss(weight, state[0]),
    workload=lambda: bcop_construction,
    compiled_on=lambda case, full: case.data.label == COMPILED_FILTER)
# The workload computes its own gradients (w.r.t. x and the layer's parameters): trains.
BCOP_CONV2D = Op(
    "bcop_conv2d",
    lambda fn, inputs, dy, case: fn(inputs[0], dy, case),
    _layer_error,
    trains=True,
    workload=layer_pass(BCOPLayer.lipkernels_layer, inside_cached),
    peers={"orthogonium": PeerAdapter(
        layer_pass(_orthogonium_layer, _without_parametrizations))})


def _layers(full: bool) -> list[tuple[int, ...]]:
    return list(LCONVNET_LAYERS + LIPCONVNET_LAYERS) if full else list(LCONVNET_LAYERS)


def _cases(full: bool) -> list[Case]:
    filters = [BCOPLayer(1, *layer).filter for layer in _layers(full)]
    filters += [BCOPFilter(c, c, 3) for c in (SQUARE_FILTERS if full else DEFAULT_SQUARE_FILTERS)
                if BCOPFilter(c, c, 3) not in filters]
    construction = [Case(BCOP_CONSTRUCTION, f, mode, iters=ITERS) for f in filters
                    for mode in CONSTRUCTION_MODES]
    layers = [Case(BCOP_CONV2D, BCOPLayer(batch, *layer), mode, iters=ITERS)
              for batch in (LAYER_BATCHES if full else DEFAULT_LAYER_BATCHES)
              for layer in _layers(full) for mode in LAYER_MODES]
    return construction + layers


SUITE = Suite(
    "bcop",
    (BCOP_CONSTRUCTION, BCOP_CONV2D),
    _cases,
    (
        "- shapes: bcop_construction `C{in}-C{out}-k{taps}-T{iters}`: the filter (out, in, taps, "
        "taps) of a BCOPConv2d from its 2 taps - 1 free C x C matrices (C = max(in, out); seeded "
        "orthogonal plus 0.3 times N(0, 1 / C) noise, power-iteration vectors after 50 "
        "iterations): per matrix one power iteration and the scale max(sigma, sqrt(||G||_F / 2)) "
        "(BCOPConv2d's training path), 20 Björck iterations, `bcop_filter`; on the filters of "
        "LConvNet Large's convolutions (C3-C32-k3, C128-C32-k2 and C256-C64-k2 after the "
        "stride-2 unshuffle, C32-C64-k3) and square 3x3 filters of 64 and 512 channels (--full: "
        "also 32, 128, 256); mode fwd+bwd adds the gradient of sum(filter * fixed random dW) "
        "w.r.t. the matrices. Providers: `reference` runs it on the reference ops "
        "(lipkernels.reference's power_iteration, bjorck and bcop_filter, the seed's Python "
        "loops), cpp / triton / cuda on that backend",
        "- shapes: bcop_conv2d `B{batch}-C{in}-C{out}-H{H}-W{W}-k{k}[-s2]-T{iters}`: "
        "lipkernels.nn.BCOPConv2d without bias (a fixed seed) on seeded normal x, circular "
        "padding, at LConvNet Large's convolutions (3 -> 32 k3 and 32 -> 32 k4 s2 at 32x32, "
        "32 -> 64 k3 and 64 -> 64 k4 s2 at 16x16; --full also the LipConvNet grid's 32@32x32, "
        "64@16x16, 128@8x8, 256@4x4 with 3x3 filters, not 512@2x2, a filter larger than the "
        "image), batch 128 (--full also 256), float32. fwd: the training forward (the filter "
        "rebuilt, one power iteration); fwd+bwd: also the gradients of sum(y * fixed random dy) "
        "w.r.t. x and the layer's parameters; eval: inference inside lipkernels.nn.cached(), "
        "the filter built in the untimed first call. `reference`: the same layer with every op "
        "on the reference backend. Peer: orthogonium 0.0.4's FastBlockConv2d (its own BCOP "
        "parametrisation: 2k C x C/2 free matrices, 3 power iterations, Björck set to 20 "
        "iterations, its filter construction by convolutions; at stride 2 after "
        "nn.PixelUnshuffle(2)), its own seeded weights; its eval rows run it with the "
        "parametrizations removed, the filter computed once (leave_parametrized=True)",
        "- ortho_err: bcop_construction: max |sigma - 1| of the exact singular values of the "
        f"filter's circular convolution on a {SPECTRUM_SIZE}x{SPECTRUM_SIZE} image "
        "(lipkernels.conv_singular_values, float64); bcop_conv2d: max over the batch of "
        "| ||y_b|| / ||x_b|| - 1 | where the layer is an isometry, none for the stride-2 "
        "layers (co-isometries, 4 C_in > C_out: their "
        "filters' singular values are the bcop_construction rows C128-C32-k2, C256-C64-k2)"),
    "bcop_construction also on the square 3x3 filters of 32, 128 and 256 channels, bcop_conv2d "
    "also on the LipConvNet grid's BCOP layers, at batch 128 and 256",
    f"- reference-compile: `torch.compile` of the reference construction (dynamic=True, the "
    f"reference backend), compile time excluded (untimed first call); on {COMPILED_FILTER} "
    f"only (inductor unrolls the 20 Björck iterations and the filter's Python loops)")
