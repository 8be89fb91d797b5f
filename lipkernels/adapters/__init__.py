"""Backends for other Lipschitz libraries: their layers' expensive parts run on lipkernels ops.

`lipkernels.adapters.orthogonium` and `lipkernels.adapters.torchlip` each give an `adapt(model)`
that switches the peer's own modules inside a model to subclasses whose forward calls lipkernels
(the class of each module changes, nothing else: parameters, buffers and state_dict keys stay,
so a state_dict loads into the adapted model and back). The peers are optional dependencies:
importing an adapter without its peer raises an ImportError that says what to install.
"""

from __future__ import annotations

import dataclasses
import importlib

from torch import nn
from torch.nn.utils import parametrize


@dataclasses.dataclass(frozen=True)
class AdaptReport:
    """adapted: (module name, the peer's class, the lipkernels class now); kept: (module name,
    class, why it still runs the peer's code)."""

    adapted: list[tuple[str, str, str]]
    kept: list[tuple[str, str, str]]

    def __str__(self) -> str:
        lines = [f"adapted {len(self.adapted)} module(s), kept {len(self.kept)}:"]
        lines += [f"  {name}: {old} -> {new}" for name, old, new in self.adapted]
        lines += [f"  {name}: {kind} kept: {why}" for name, kind, why in self.kept]
        return "\n".join(lines)


def require(module: str, package: str):
    """`module` imported, or an ImportError naming the pip package that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"lipkernels.adapters needs {package} for this adapter: pip install "
                          f"{package} (without letting pip replace your torch: --no-deps, "
                          f"then its own dependencies)") from error


def _switch_class(module: nn.Module, adapter: type):
    """module.__class__ = adapter; for a module with parametrised tensors of its own (whose
    class torch.nn.utils.parametrize replaced by a generated subclass holding their properties)
    a generated subclass of `adapter` holding the same ones."""
    if not parametrize.is_parametrized(module):
        module.__class__ = adapter
        return
    generated = {key: value for key, value in vars(type(module)).items()
                 if key not in ("__dict__", "__weakref__")}
    module.__class__ = type(f"Parametrized{adapter.__name__}", (adapter,), generated)


def adapt_classes(model: nn.Module, adapters: dict, kept: dict) -> AdaptReport:
    """Every module of `model` whose class is exactly a key of `adapters` switched to its value
    (a subclass adding no state), in place; modules of a class in `kept` listed with its reason.
    A class is the one before torch's parametrisations (`type_before_parametrizations`)."""
    adapted, not_adapted = [], []
    for name, module in model.named_modules():
        kind = parametrize.type_before_parametrizations(module)
        if kind in kept:
            not_adapted.append((name, kind.__name__, kept[kind]))
        elif kind in adapters:
            adapted.append((name, kind.__name__, adapters[kind].__name__))
            _switch_class(module, adapters[kind])
    return AdaptReport(adapted, not_adapted)
