"""`lipkernels.lipschitz_bound(model)`: a provable l2 Lipschitz bound of a whole sequential model.

The bound of a composition is at most the product of its parts' bounds. A part is bounded by its
own `lipschitz_bound()` where it has one (every lipkernels layer, LipConvNet, or a user module
that follows the convention), by an exact constant for the parameter-free modules whose constant
is known (activations, flattening, pooling, dropout), and a sequence by the product of its
children's. Anything else (an unconstrained nn.Linear or nn.Conv2d, batch normalisation, a module
whose forward is not a plain composition of its children, such as a residual block) is an error
that names it and says why: a certificate from a wrong bound would be a finite wrong number.
"""

from __future__ import annotations

import inspect
import math

from torch import nn

from ._conventions import pooling_windows_per_pixel
from .bounds import rounded_up_product
from .nn.householder import HouseHolder
from .nn.max_min import GroupSort, MaxMin
from .nn.soc import BOUND_TOLERANCE

__all__ = ["lipschitz_bound"]

# Parameter-free elementwise or reshaping maps with l2 Lipschitz constant at most 1 (pixel
# (un)shuffles permute the entries: isometries).
_ONE_LIPSCHITZ = (nn.Identity, nn.Flatten, nn.Unflatten, nn.ReLU, nn.ReLU6, nn.Tanh,
                  nn.Hardtanh, nn.Softsign, MaxMin, GroupSort, HouseHolder,
                  nn.PixelUnshuffle, nn.PixelShuffle)


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _pooling_bound(name: str, module) -> float:
    """Max pooling: sqrt(windows per pixel) (each window's max moves by at most the l2 norm of
    the window's change). Average pooling: sqrt(windows per pixel / window size) (the mean of n
    values is at most their l2 norm / sqrt(n)), without the window size where border windows
    average fewer values."""
    if _pair(getattr(module, "dilation", 1)) != (1, 1):
        raise ValueError(f"lipschitz_bound: cannot bound {name!r} ({type(module).__name__}): "
                         f"dilated pooling is not covered")
    if isinstance(module, nn.MaxPool2d):
        return math.sqrt(pooling_windows_per_pixel(module))
    if module.divisor_override is not None:
        raise ValueError(f"lipschitz_bound: cannot bound {name!r} (AvgPool2d): divisor_override "
                         f"is not covered")
    # A window clipped at the border (ceil_mode, or padding not counted) averages fewer
    # values, at least one: the bound then has no window-size factor.
    clipped = module.ceil_mode or (_pair(module.padding) != (0, 0)
                                   and not module.count_include_pad)
    size = 1 if clipped else math.prod(_pair(module.kernel_size))
    return math.sqrt(pooling_windows_per_pixel(module) / size)


def _own_bound(module, tolerance: float) -> float:
    method = module.lipschitz_bound
    if "tolerance" in inspect.signature(method).parameters:
        return float(method(tolerance=tolerance))
    return float(method())


def _bound(name: str, module: nn.Module, tolerance: float) -> float:
    if callable(getattr(module, "lipschitz_bound", None)):
        return _own_bound(module, tolerance)
    if isinstance(module, nn.Sequential):
        return rounded_up_product(_bound(f"{name}.{child}" if name else child, part, tolerance)
                        for child, part in module.named_children())
    if isinstance(module, _ONE_LIPSCHITZ):
        return 1.0
    if isinstance(module, nn.LeakyReLU):
        return max(1.0, abs(module.negative_slope))
    if isinstance(module, nn.Sigmoid):
        return 0.25
    if isinstance(module, nn.Dropout):
        # In training the kept entries are scaled by 1 / (1 - p); in eval it is the identity.
        return 1.0 / (1.0 - module.p) if module.training else 1.0
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        return _pooling_bound(name, module)
    what = f"{name!r} ({type(module).__name__})" if name else type(module).__name__
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        why = ("its weight is unconstrained; replace it by an orthogonal layer "
               "(lipkernels.nn.swap)")
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        why = "batch normalisation scales by weight / sqrt(var + eps), unbounded; remove it"
    else:
        why = ("no known bound: give it a lipschitz_bound() method (a composition of children "
               "is bounded only as an nn.Sequential, whose forward is known)")
    raise ValueError(f"lipschitz_bound: cannot bound {what}: {why}")


def lipschitz_bound(model: nn.Module, *, tolerance: float = BOUND_TOLERANCE) -> float:
    """A provable upper bound (a Python float) on the l2 Lipschitz constant of `model` in its
    current mode, per sample: its own `lipschitz_bound()` where it has one, else the product of
    its parts' bounds for an nn.Sequential (nested ones too; SOC layers there are bounded at
    every input size, their `lipschitz_bound()`), with the known constants of
    parameter-free modules (1 for ReLU, Tanh, Flatten, MaxMin, GroupSort, HouseHolder and the
    like; max(1, |slope|) for LeakyReLU, 1/4 for Sigmoid, 1 / (1 - p) for Dropout in training;
    sqrt(windows per pixel) for max pooling and sqrt(windows per pixel / window size) for
    average pooling). Modules it cannot bound raise a ValueError naming them and why.
    `tolerance` is passed to the SOC layers' bounds (`SOCConv2d.lipschitz_bound`). nan where a
    layer's bound is nan (a non-finite weight)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"lipschitz_bound: model must be a torch.nn.Module; got "
                        f"{type(model).__name__}")
    return _bound("", model, tolerance)
