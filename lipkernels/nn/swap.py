"""`lipkernels.nn.swap`: an existing model's convolutions and linear layers replaced by orthogonal
lipkernels layers, with a report of what was replaced, what was kept and why."""

from __future__ import annotations

import copy
import dataclasses

from torch import nn
from torch.nn.utils import parametrize

from .._conventions import pooling_windows_per_pixel
from .aol import AOLConv2d, AOLLinear
from .bcop import BCOPConv2d
from .bjorck import BjorckLinear
from .cayley import CayleyConv2d, CayleyLinear
from .soc import SOCConv2d, SOCLinear

# family: (conv layer, linear layer, the padding mode of its convolutions)
FAMILIES = {"soc": (SOCConv2d, SOCLinear, "zeros"),
            "cayley": (CayleyConv2d, CayleyLinear, "circular"),
            "bcop": (BCOPConv2d, BjorckLinear, "circular"),
            "aol": (AOLConv2d, AOLLinear, "zeros")}


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


# The peers' layers swap maps: deel-torchlip's spectral layers (nn.Conv2d / nn.Linear with
# their own normalisation) to fresh family layers like the torch ones, orthogonium's legacy SOC
# to lipkernels' SOCConv2d with its parameters and vectors (`to_soc_conv2d`).
_PEER_CONVS = {"deel.torchlip.modules.conv.SpectralConv2d",
               "deel.torchlip.modules.conv.FrobeniusConv2d"}
_PEER_LINEARS = {"deel.torchlip.modules.linear.SpectralLinear",
                 "deel.torchlip.modules.linear.FrobeniusLinear"}
_PEER_SOC = "orthogonium.legacy.skew_ortho_conv.SOC"
# The peers' top-level packages: (the name users know, the lipkernels adapter of its layers).
_PEERS = {"orthogonium": ("orthogonium", "orthogonium"), "deel": ("deel-torchlip", "torchlip")}


def _class_path(module: nn.Module) -> str:
    kind = parametrize.type_before_parametrizations(module)
    return f"{kind.__module__}.{kind.__qualname__}"


def _peer(module: nn.Module):
    """(package name, adapter name) of the peer library a module belongs to, or None."""
    return _PEERS.get(_class_path(module).split(".")[0])


def _class_name(module: nn.Module) -> str:
    """The module's class name before torch's parametrisations."""
    return parametrize.type_before_parametrizations(module).__name__


def _described(module: nn.Module) -> str:
    """The module's class and its arguments, on one line."""
    return f"{_class_name(module)}({module.extra_repr()})"


def _peer_soc(module):
    from ..adapters.orthogonium import to_soc_conv2d

    return to_soc_conv2d(module), "orthogonium's legacy SOC: its weight, bias and vectors carried"


def _replacement(module: nn.Module, conv_layer, linear_layer, mode: str):
    """(lipkernels layer, note) for a module swap replaces, or None."""
    path = _class_path(module)
    if type(module) is nn.Conv2d or path in _PEER_CONVS:
        new, note = _conv(module, conv_layer, mode)
    elif type(module) is nn.Linear or path in _PEER_LINEARS:
        new, note = _linear(module, linear_layer)
    elif path == _PEER_SOC:
        return _peer_soc(module)
    else:
        return None
    peer = _peer(module)
    if peer:
        note = "; ".join(filter(None, [f"{peer[0]}'s layer: its weight is not carried", note]))
    return new, note


def _pooling_reason(module) -> str:
    if pooling_windows_per_pixel(module) == 1:
        return "1-Lipschitz: its windows do not overlap"
    return ("its windows overlap, so its Lipschitz constant can exceed 1 (up to the number of "
            "windows a pixel is in, square-rooted): use stride >= kernel_size")


def _kept_reason(module: nn.Module) -> str | None:
    """Why a module without a lipkernels counterpart is kept, or None where it needs no word."""
    peer = _peer(module)
    if peer:
        return (f"a layer of {peer[0]} swap has no mapping for: it keeps its own constraint "
                f"(lipkernels.adapters.{peer[1]}.adapt runs its normalisation on lipkernels "
                f"ops)")
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
    orthogonal layers ("soc": SOCConv2d / SOCLinear, "cayley": CayleyConv2d / CayleyLinear,
    "bcop": BCOPConv2d / BjorckLinear), on a deep copy unless `inplace`.

    A convolution is replaced where the lipkernels layer computes a map of the same shape (same
    padding, dilation 1, groups 1, stride 1 or 2, square kernel; SOC needs zero padding, Cayley's
    and BCOP's are circular, so zero-padded convolutions become circular ones there, as the
    report notes; BCOP needs an even channel count for filters of 2 taps or more);
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
    replaced, kept, done = [], [], []
    for name, module in list(model.named_modules()):
        if any(name.startswith(f"{prefix}.") for prefix in done):
            continue  # inside a module replaced or kept whole (its parametrisations)
        if type(module).__module__.startswith("lipkernels."):
            continue  # already a lipkernels layer
        try:
            replacement = _replacement(module, conv_layer, linear_layer, mode)
            if replacement is None:
                whole = _peer(module) or not list(module.children())
                reason = _kept_reason(module) if whole else None
                if reason:
                    kept.append((name, _class_name(module), reason))
                    done.append(name)
                continue
            new, note = replacement
        except (TypeError, ValueError) as error:
            kept.append((name, _class_name(module), str(error)))
            done.append(name)
            continue
        done.append(name)
        if name:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, new)
        else:  # the model is itself a convolution or a linear layer
            model = new
        replaced.append((name, _described(module), type(new).__name__, note))
    return model, SwapReport(replaced, kept)
