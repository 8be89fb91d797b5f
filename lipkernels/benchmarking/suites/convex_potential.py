"""Suite convex_potential: the convex potential and almost-orthogonal layers (CPL, SLL, AOL) at
the layers of the CPL code's default network and of the LipConvNet grid, in their training
forward, forward+backward and cached eval passes, and the two ops that scale them,
`conv_power_iteration` (CPL's sigma) and `aol_rescaling` (AOL's and SLL's rescaling); peer
orthogonium's SDPBasedLipschitzResBlock and AOLConv2D."""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
from torch.nn.utils import parametrize

import lipkernels
from lipkernels import reference
from lipkernels.nn import AOLConv2d, CPLConv2d, CPLLinear, SLLConv2d
from lipkernels.nn.convex_potential import EVAL_ITERS

from ..core import (Case, OnFilter, Op, PeerAdapter, Suite, cpu_inputs, relative_error,
                    seeded_normal)
from ._layers import LAYER_MODES, inside_cached, layer_pass

# The CPL code's default network (MILES-PSL/Convex-Potential-Layer, main.py: depth 20,
# num_channels 30, conv_size 5, depth_linear 7, n_features 2048): 20 CPLConv2d(30, 5) at 32x32,
# AvgPool(4) to 30 x 8 x 8 = 1920 features, 7 CPLLinear(1920, 2048).
CPL_CONV_LAYER, CPL_LINEAR_LAYER = (30, 5, 32), (1920, 2048, None)
# The LipConvNet grid (channels, image size), 3x3, inner = channels; --full adds the two
# narrowest images.
GRID, DEFAULT_GRID = ((32, 32), (64, 16), (128, 8), (256, 4)), ((32, 32), (64, 16))
LAYER_BATCHES, DEFAULT_LAYER_BATCHES = (128, 256), (128,)
# x' - x of the ortho_err pairs, relative to x: near enough to probe the layer locally, far
# enough that the float32 rounding of y - y' (5e-8 of the ratio here, against the same layers in
# float64) stays well below the AOL layer's margin max(d) - 1 = -7e-7 at its orthogonal
# initialisation.
PAIR_DISTANCE = 0.1
# conv_power_iteration's filters (C_out, C_in): the CPL default layer's and a 64-channel one, on
# the 32x32 vector u of CPLConv2d; 1 iteration (a training call), EVAL_ITERS (eval).
POWER_FILTERS, POWER_SIZE, POWER_ITERS = ((5, 30), (64, 64)), 32, (1, EVAL_ITERS)
RESCALING_CHANNELS, DEFAULT_RESCALING_CHANNELS = (32, 64, 128, 256, 512), (32, 64, 128)
OP_MODES = ("fwd", "fwd+bwd")
# reference-compile's shapes: one per op, 1 iteration (inductor unrolls the reference's loop);
# aol_rescaling in fwd only: with dynamic=True, inductor (torch 2.13) fails on its backward
# ("cannot determine truth value of Relational").
COMPILED_POWER_FILTER, COMPILED_RESCALING_FILTER = "C64-C64-k3-H32-W32", "C64-C64-k3"


@dataclasses.dataclass(frozen=True)
class Layer:
    """The activations of a layer (channels in and out, `inner` inside; images of `size` squared,
    or vectors where size is None): x (batch, ...) seeded normal whose second half is the first
    half moved by PAIR_DISTANCE times seeded normal noise (the pairs of `pair_lipschitz_error`),
    and the fixed random weights dy of the fwd+bwd loss sum(y * dy)."""

    batch: int
    channels: int
    inner: int
    size: int | None
    k: int = 3

    @property
    def label(self) -> str:
        if self.size is None:
            return f"B{self.batch}-F{self.channels}-I{self.inner}"
        return (f"B{self.batch}-C{self.channels}-I{self.inner}-H{self.size}-W{self.size}-"
                f"k{self.k}")

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.channels,) if self.size is None else (self.channels, self.size, self.size)

    def inputs(self):
        """((x,), dy), float32 on the CPU."""
        half = (self.batch // 2, *self.sample_shape)
        x = seeded_normal(self.label, half)
        nearby = x + PAIR_DISTANCE * seeded_normal(f"{self.label}/pair", half)
        return ((torch.cat([x, nearby]),),
                seeded_normal(f"{self.label}/dy", (self.batch, *self.sample_shape)))


class AOLLayer(Layer):
    """An AOL convolution's activations: `inner` is its output channel count, so the shape names
    the channels in and out, as the bcop suite's layers."""

    @property
    def label(self) -> str:
        return (f"B{self.batch}-C{self.channels}-C{self.inner}-H{self.size}-W{self.size}-"
                f"k{self.k}")


def pair_lipschitz_error(y, data: Layer) -> float:
    """max over the pairs (x, x') of the batch's two halves of ||f(x) - f(x')|| / ||x - x'|| - 1
    (float64, from the first call's output): <= 0 for a 1-Lipschitz layer."""
    x = cpu_inputs(data)[0][0].double()
    half = data.batch // 2
    ratios = ((y[:half] - y[half:]).flatten(1).norm(dim=1)
              / (x[:half] - x[half:]).flatten(1).norm(dim=1))
    return (ratios - 1).max().item()


def _seeded(constructor, *args, **kwargs) -> torch.nn.Module:
    """The layer drawn from a fixed seed: every provider and mode times the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return constructor(*args, **kwargs)


@torch.no_grad()
def _cpl_layer(data: Layer) -> torch.nn.Module:
    """CPLConv2d (at the image size, where u lives) or CPLLinear, its persistent vector u that of
    a trained layer: EVAL_ITERS reference iterations from the random initial one (the same on
    every provider). From a fresh u a training call's single iteration underestimates ||W|| by
    25-31% on these layers: h would be 1.8-2.1 times 2 / ||W||^2, no longer a 1-Lipschitz
    scale."""
    if data.size is None:
        layer = _seeded(CPLLinear, data.channels, data.inner)
        u = reference.power_iteration(layer.weight, layer.u[0], EVAL_ITERS)[1][None]
    else:
        layer = _seeded(CPLConv2d, data.channels, data.inner, data.k, input_size=data.size)
        u = reference.conv_power_iteration(layer.weight, layer.u, EVAL_ITERS)[1]
    layer.u.copy_(u)
    return layer


def _sll_layer(data: Layer) -> torch.nn.Module:
    return _seeded(SLLConv2d, data.channels, data.inner, data.k)


def _aol_layer(data: Layer) -> torch.nn.Module:
    return _seeded(AOLConv2d, data.channels, data.inner, data.k)


def _orthogonium_sll(data: Layer) -> torch.nn.Module:
    """orthogonium 0.0.4's SDPBasedLipschitzResBlock (its AOL reparametrisation of the kernel,
    t from its reparametrizer's q, x - 2 conv_T(relu(conv(x) + b))), inner_dim_factor
    inner / channels."""
    from orthogonium.layers.conv.SLL.sll_layer import SDPBasedLipschitzResBlock

    block = _seeded(SDPBasedLipschitzResBlock, data.channels, data.inner / data.channels, data.k)
    # The block's own q is used nowhere (its reparametrizer has the q it uses): frozen, so that
    # fwd+bwd differentiates what the forward uses (autograd.grad rejects an unused tensor).
    block.q.requires_grad_(False)
    return block


def _orthogonium_aol(data: Layer) -> torch.nn.Module:
    """orthogonium 0.0.4's AOLConv2D, "same" zero padding k // 2 (its default pads nothing)."""
    from orthogonium.layers.conv.AOL.aol import AOLConv2D

    return _seeded(AOLConv2D, data.channels, data.inner, data.k, padding=data.k // 2)


def _parametrizations_removed(layer: torch.nn.Module) -> torch.nn.Module:
    """The layer with every parametrization removed, its current value kept as a plain tensor
    (leave_parametrized=True): inference with the weight computed once. The bcop suite's
    `_without_parametrizations` removes `weight` only; the SLL block parametrizes `kernel`."""
    for module in list(layer.modules()):
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return layer


def _layer_op(name: str, build, peer=None) -> Op:
    """A layer's passes (`_layers.layer_pass`): the workload computes its own gradients, so the
    op trains; the peer's eval runs with its parametrizations removed."""
    peers = {} if peer is None else {
        "orthogonium": PeerAdapter(layer_pass(peer, _parametrizations_removed))}
    return Op(name, lambda fn, inputs, dy, case: fn(inputs[0], dy, case), pair_lipschitz_error,
              trains=True, workload=layer_pass(build, inside_cached), peers=peers)


CPL_CONV2D = _layer_op("cpl_conv2d", _cpl_layer)
CPL_LINEAR = _layer_op("cpl_linear", _cpl_layer)
SLL_CONV2D = _layer_op("sll_conv2d", _sll_layer, _orthogonium_sll)
AOL_CONV2D = _layer_op("aol_conv2d", _aol_layer, _orthogonium_aol)


@dataclasses.dataclass(frozen=True)
class PowerFilter:
    """conv_power_iteration's data: a seeded filter (C_out, C_in, k, k), N(0, 1 / (C_in k^2)),
    and a seeded random unit vector u (1, C_in, size, size)."""

    out_channels: int
    in_channels: int
    size: int
    k: int = 3

    @property
    def label(self) -> str:
        return (f"C{self.out_channels}-C{self.in_channels}-k{self.k}-H{self.size}-"
                f"W{self.size}")

    def weight(self) -> torch.Tensor:
        shape = (self.out_channels, self.in_channels, self.k, self.k)
        return seeded_normal(self.label, shape) / math.sqrt(self.in_channels * self.k ** 2)

    def inputs(self):
        """(weight, u), float32 on the CPU."""
        u = seeded_normal(f"{self.label}/u", (1, self.in_channels, self.size, self.size))
        return self.weight(), u / u.norm()


@functools.cache
def _norm_bound(data: PowerFilter) -> torch.Tensor:
    """S >= ||A||, A the zero-padded "same" convolution on size x size images: the float64
    circular norm on the (size + k - 1) torus (conv_spectral_norm, padding "zeros"). The
    zero-padded norm itself has no closed form."""
    return lipkernels.conv_spectral_norm(data.weight().double(), data.size, padding="zeros")


@dataclasses.dataclass(frozen=True)
class RescalingFilter(OnFilter):
    """aol_rescaling's data: the seeded square filter of `core.Filter`, q = 1 (AOL's call)."""

    channels: int
    k: int = 3

    @property
    def label(self) -> str:
        return self.filter.label

    def inputs(self):
        """(weight, no state), float32 on the CPU."""
        return self.filter.weight(), None


@functools.cache
def _exact_rescaling(data: RescalingFilter) -> torch.Tensor:
    return reference.aol_rescaling(data.filter.weight().double())


CONV_POWER_ITERATION = Op(
    "conv_power_iteration",
    lambda fn, weight, u, case: fn(weight, u, case.iters)[0],
    relative_error(_norm_bound),
    compiled_on=lambda case, full: (case.iters == 1
                                    and case.data.label == COMPILED_POWER_FILTER))
AOL_RESCALING = Op(
    "aol_rescaling",
    lambda fn, weight, state, case: fn(weight),
    relative_error(_exact_rescaling),
    compiled_on=lambda case, full: (case.mode == "fwd"
                                    and case.data.label == COMPILED_RESCALING_FILTER))


def _cases(full: bool) -> list[Case]:
    grid = GRID if full else DEFAULT_GRID
    cases = []
    for batch in LAYER_BATCHES if full else DEFAULT_LAYER_BATCHES:
        square = [(channels, channels, size) for channels, size in grid]
        layers = [(CPL_CONV2D, Layer(batch, *shape)) for shape in (CPL_CONV_LAYER, *square)]
        layers += [(CPL_LINEAR, Layer(batch, *CPL_LINEAR_LAYER))]
        layers += [(SLL_CONV2D, Layer(batch, *shape)) for shape in square]
        layers += [(AOL_CONV2D, AOLLayer(batch, *shape)) for shape in square]
        cases += [Case(op, data, mode) for op, data in layers for mode in LAYER_MODES]
    cases += [Case(CONV_POWER_ITERATION, PowerFilter(*channels, POWER_SIZE), mode, iters=iters)
              for channels in POWER_FILTERS for iters in POWER_ITERS for mode in OP_MODES]
    cases += [Case(AOL_RESCALING, RescalingFilter(channels), mode)
              for channels in (RESCALING_CHANNELS if full else DEFAULT_RESCALING_CHANNELS)
              for mode in OP_MODES]
    return cases


SUITE = Suite(
    "convex_potential",
    (CPL_CONV2D, CPL_LINEAR, SLL_CONV2D, AOL_CONV2D, CONV_POWER_ITERATION, AOL_RESCALING),
    _cases,
    (
        "- shapes: the layers `B{batch}-C{channels}-I{inner}-H{H}-W{W}-k{k}` (cpl_conv2d, "
        "sll_conv2d), `B{batch}-F{features}-I{inner}` (cpl_linear), "
        "`B{batch}-C{in}-C{out}-H{H}-W{W}-k{k}` (aol_conv2d): lipkernels.nn's CPLConv2d, "
        "CPLLinear, SLLConv2d and AOLConv2d with their defaults (bias, 'same' zero padding), "
        "weights drawn from a fixed seed, float32, batch 128 (--full also 256). The CPL code's "
        "default network (MILES-PSL/Convex-Potential-Layer main.py: depth 20, num_channels 30, "
        "conv_size 5, depth_linear 7, n_features 2048): cpl_conv2d B128-C30-I5-H32-W32-k3 and, "
        "after its AvgPool(4) to 30 x 8 x 8, cpl_linear B128-F1920-I2048; the LipConvNet grid "
        "with inner = channels, 32@32x32 and 64@16x16 (--full also 128@8x8, 256@4x4), for "
        "cpl_conv2d, sll_conv2d and aol_conv2d. A CPL layer's persistent vector u (1, C, H, W) "
        f"is a trained layer's: {EVAL_ITERS} reference power iterations from its random initial "
        "one. fwd: the training forward (CPL: one power iteration, conv_power_iteration or, in "
        "CPLLinear, power_iteration, u updated; SLL, AOL: the rescaling recomputed); fwd+bwd: "
        "also the gradients of sum(y * fixed random dy) w.r.t. x and every trained parameter; "
        f"eval: inference inside lipkernels.nn.cached(), the scale (CPL: {EVAL_ITERS} "
        "iterations) or rescaled weight computed in the untimed first call. "
        "`reference`: the same layer with every op on the reference backend (the seeds' pure "
        "PyTorch). Peers: orthogonium 0.0.4's SDPBasedLipschitzResBlock (inner_dim_factor 1; "
        "its own AOL-reparametrised kernel, which its forward computes twice) on the "
        "sll_conv2d rows and AOLConv2D (padding k // 2, niter 1) on the aol_conv2d rows, their "
        "own seeded weights; their eval rows run with the parametrizations removed, the weight "
        "computed once (leave_parametrized=True); no peer has CPL",
        "- shapes: conv_power_iteration `C{C_out}-C{C_in}-k{k}-H{H}-W{W}-T{iters}`: sigma of the "
        "zero-padded 'same' convolution with a seeded filter (N(0, 1 / (C_in k^2))) from a "
        "seeded random unit u (1, C_in, 32, 32), on the CPL default layer's filter (5, 30, 3, 3) "
        f"and a 64-channel one, 1 iteration (a training call) and {EVAL_ITERS} (eval); "
        "aol_rescaling `C{C}-C{C}-k{k}`: d of the seeded square filter (core.Filter), q = 1, "
        "32, 64, 128 channels (--full also 256, 512); mode fwd+bwd adds the gradient of the "
        "output's sum (sigma; sum(d)) w.r.t. the weight. Their `reference` rows call "
        "lipkernels.reference's function itself (what a user of the seed code runs), the "
        "backends' rows the public op, its input checks and conv_power_iteration's zero-vector "
        "guard included",
        "- ortho_err: the layers: max over the batch / 2 pairs (x, x') of the batch of "
        "||f(x) - f(x')|| / ||x - x'|| - 1, x' - x = 0.1 N(0, 1) per entry (about 0.1 ||x||), "
        "float64 from each provider's own first output: <= 0 for a 1-Lipschitz layer (float32 "
        "rounding moves it by about 5e-8, against the same layers in float64); "
        "conv_power_iteration: |sigma - S| / S, S >= ||A|| the float64 circular norm on the "
        "(32 + k - 1)^2 torus "
        "(lipkernels.conv_spectral_norm, padding 'zeros'; the zero-padded norm has no closed "
        "form), an upper bound on the relative error as sigma <= ||A|| <= S; aol_rescaling: "
        "max |d - d_exact| / d_exact against the reference in float64"),
    "the convex_potential layers also at batch 256 and on the LipConvNet grid's 128@8x8 and "
    "256@4x4, aol_rescaling also on 256 and 512 channels",
    f"- reference-compile: `torch.compile` of the reference op (dynamic=True), compile time "
    f"excluded (untimed first call); on conv_power_iteration {COMPILED_POWER_FILTER}-T1 and "
    f"aol_rescaling {COMPILED_RESCALING_FILTER} fwd only: inductor unrolls the {EVAL_ITERS}-"
    f"iteration loop, fails on aol_rescaling's backward with dynamic shapes (torch 2.13: "
    f"'cannot determine truth value of Relational'), and a layer row has none, since the "
    f"harness compiles one workload per op and a layer workload holds the state of one layer, "
    f"while every shape and mode needs its own")
