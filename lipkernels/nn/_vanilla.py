"""Plain torch modules for the layers' `vanilla_export` (deel-torchlip's convention for a
layer's unconstrained equivalent, which its `vanilla_model` calls on every layer that has it)."""

from __future__ import annotations

import torch
from torch import nn

from ._distributed import full_parameters


def plain_module(module_type, weight: torch.Tensor, bias, *args, **kwargs) -> nn.Module:
    """A torch `module_type`(*args, **kwargs) holding copies of `weight` and `bias` (None: no
    bias), on their device and in their dtype."""
    module = module_type(*args, bias=bias is not None, device=weight.device, dtype=weight.dtype,
                         **kwargs)
    with torch.no_grad():
        module.weight.copy_(weight)
        if bias is not None:
            module.bias.copy_(bias)
    return module


def in_eval(layer: nn.Module, compute):
    """compute() with `layer` in eval mode and its full parameters (sharded ones gathered), its
    training flag restored after: the eval weight an export holds."""
    training = layer.training
    try:
        layer.train(False)
        with full_parameters(layer):
            return compute()
    finally:
        layer.train(training)
