"""What the layer suites (bcop, convex_potential) share: a layer's passes as one measurement's
workload, and its inference inside a `lipkernels.nn.cached()` block."""

from __future__ import annotations

import contextlib
import weakref

import torch

from lipkernels.nn import cached

from ..core import weighted_sum_loss

# A layer row's modes: the training forward, with its backward, and cached inference.
LAYER_MODES = ("fwd", "fwd+bwd", "eval")


def layer_pass(build, for_inference):
    """The factory of a layer pass for one measurement: the first call builds the case's layer
    (`build(data)`, on x's device; in mode eval `for_inference(layer in eval mode)`, which
    computes the filter once, in that untimed call). fwd: the training forward; fwd+bwd: also
    the gradients of sum(y * dy) w.r.t. x and every trained parameter; eval: the inference,
    no gradient."""
    def factory():
        layer = None

        def run(x, dy, case):
            nonlocal layer
            if layer is None:
                layer = build(case.data).to(x.device)
                if case.mode == "eval":
                    layer = for_inference(layer.eval())
                x.requires_grad_(case.mode == "fwd+bwd")
            if case.mode == "eval":
                with torch.no_grad():
                    return layer(x)
            y = layer(x)
            if case.mode == "fwd+bwd":
                # orthogonium keeps its power-iteration vectors as frozen parameters.
                trained = [p for p in layer.parameters() if p.requires_grad]
                torch.autograd.grad(weighted_sum_loss(y, dy), (x, *trained))
            return y

        return run

    return factory


def inside_cached(layer):
    """The layer called inside a `lipkernels.nn.cached()` block, which stays open while the
    returned function lives (as an inference loop inside one block runs it)."""
    block = contextlib.ExitStack()
    block.enter_context(cached())

    def infer(x):
        return layer(x)

    weakref.finalize(infer, block.close)
    return infer
