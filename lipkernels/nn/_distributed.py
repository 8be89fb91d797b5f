"""Whole parameters for computations outside forward on sharded layers (FSDP2's DTensors)."""

from __future__ import annotations

import contextlib

from torch import nn


@contextlib.contextmanager
def full_parameters(module: nn.Module):
    """Inside the block, `module`'s own parameters that are sharded DTensors (FSDP2 keeps them so
    between forward calls) are replaced by their gathered full values, without gradient; they are
    put back on exit. Gathering is a collective: every rank must enter the block. Plain
    parameters are left as they are."""
    sharded = {name: parameter for name, parameter in module._parameters.items()
               if hasattr(parameter, "full_tensor")}
    try:
        for name, parameter in sharded.items():
            module._parameters[name] = parameter.detach().full_tensor()
        yield
    finally:
        module._parameters.update(sharded)
