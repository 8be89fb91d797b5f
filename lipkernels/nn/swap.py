"""`lipkernels.nn.swap`: an existing model's convolutions and linear layers replaced by orthogonal
lipkernels layers, with a report of what was replaced, what was kept and why."""

from __future__ import annotations

import copy
import dataclasses

from torch import nn

from .._conventions import pooling_windows_per_pixel
from .cayley import CayleyConv2d, CayleyLinear
from .soc import SOCConv2d, SOCLinear

# family: (conv layer, linear layer, the padding mode of its convolutions)
FAMILIES = {"soc": (SOCConv2d, SOCLinear, "zeros"),
            "cayley": (CayleyConv2d, CayleyLinear, "circular")}


@dataclasses.dataclass(frozen=True)
class SwapReport:
    """replaced: (module name, what it was, what it is now, note); kept: (module name, what it
    is, why it was kept): convolutions the layers cannot replace, batch normalisation, pooling
    (whether its windows overlap) and other modules with parameters. Parameter-free modules
    other than pooling (activations, Flatten, Dropout) are not listed."""

    replaced: list[tuple[str, str, str, str]]
    kept: list[tuple[str, str, str]]

    def __str__(self) -> str:
        lines = [f"replaced {len(self.replaced)} module(s), kept {len(self.kept)}:"]
        lines += [f"  {name}: {old} -> {new}" + (f" ({note})" if note else "")
                  for name, old, new, note in self.replaced]
        lines += [f"  {name}: {kind} kept: {why}" for name, kind, why in self.kept]
        return "\n".join(lines)


def _conv(module: nn.Conv2d, layer, mode: str):
    """(lipkernels layer, note) for an nn.Conv2d, or raises the layer's error for arguments it
    cannot honour. Weights are not carried over: an orthogonal parametrisation has its own."""
    note = ""
    padding_mode = module.padding_mode
    if padding_mode != mode and mode == "circular":
        note, padding_mode = f"{padding_mode} padding becomes circular", mode
    new = layer(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                module.bias is not None, padding=module.padding, dilation=module.dilation,
                groups=module.groups, padding_mode=padding_mode, device=module.weight.device,
                dtype=module.weight.dtype)
    return new, note


def _linear(module: nn.Linear, layer):
    return layer(module.in_features, module.out_features, module.bias is not None,
                 device=module.weight.device, dtype=module.weight.dtype), ""


def _pooling_reason(module) -> str:
    if pooling_windows_per_pixel(module) == 1:
        return "1-Lipschitz: its windows do not overlap"
    return ("its windows overlap, so its Lipschitz constant can exceed 1 (up to the number of "
            "windows a pixel is in, square-rooted): use stride >= kernel_size")


def _kept_reason(module: nn.Module) -> str | None:
    """Why a module without a lipkernels counterpart is kept, or None where it needs no word."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return ("not 1-Lipschitz: it scales by weight / sqrt(running_var + eps), which no bound "
                "of this model covers; remove it")
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        return _pooling_reason(module)
    if any(True for _ in module.parameters(recurse=False)):
        return ("no lipkernels counterpart: its parameters are unconstrained, so its Lipschitz "
                "constant is not bounded")
    return None


def swap(model: nn.Module, family: str = "soc", *, inplace: bool = False):
    """(model, SwapReport): every nn.Conv2d and nn.Linear of `model` replaced by the `family`'s
    orthogonal layers ("soc": SOCConv2d / SOCLinear, "cayley": CayleyConv2d / CayleyLinear), on
    a deep copy unless `inplace`.

    A convolution is replaced where the lipkernels layer computes a map of the same shape (same
    padding, dilation 1, groups 1, stride 1 or 2, square kernel; SOC needs zero padding, Cayley's
    is circular, so zero-padded convolutions become circular ones there, as the report notes);
    otherwise it is kept, with the layer's reason. The new layers are freshly initialised: an
    orthogonal parametrisation cannot take an unconstrained weight. Kept too, with the reason:
    batch normalisation, pooling with overlapping windows, and any other module with parameters.
    The swap sees modules only: arithmetic in a forward (a residual addition, a scaling) is the
    user's to check, since it changes the model's Lipschitz constant.
    """
    if family not in FAMILIES:
        raise ValueError(f"swap: family must be one of {', '.join(FAMILIES)}; got {family!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"swap: model must be a torch.nn.Module; got {type(model).__name__}")
    conv_layer, linear_layer, mode = FAMILIES[family]
    model = model if inplace else copy.deepcopy(model)
    replaced, kept = [], []
    for name, module in list(model.named_modules()):
        if type(module).__module__.startswith("lipkernels."):
            continue  # already a lipkernels layer
        try:
            if type(module) is nn.Conv2d:
                new, note = _conv(module, conv_layer, mode)
            elif type(module) is nn.Linear:
                new, note = _linear(module, linear_layer)
            else:
                reason = _kept_reason(module) if not list(module.children()) else None
                if reason:
                    kept.append((name, type(module).__name__, reason))
                continue
        except (TypeError, ValueError) as error:
            kept.append((name, type(module).__name__, str(error)))
            continue
        if name:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, new)
        else:  # the model is itself a convolution or a linear layer
            model = new
        replaced.append((name, repr(module), type(new).__name__, note))
    return model, SwapReport(replaced, kept)
