"""Explicit caching of a value derived from a layer's parameters (an orthogonalised filter).

Orthogonal layers spend most of their forward on turning parameters into a weight (a normalised
skew filter, per-frequency Cayley transforms). Reusing that weight between eval calls would be
cheaper, but no implicit cache can know that the parameters are unchanged: writes through
``.data`` (``p.data.add_(...)``, ``p.data.copy_(...)``, ``nn.utils.vector_to_parameters``) bypass
the tensor version counters. So the rule is:

* Outside ``cached()``, every forward recomputes its derived weight from the parameters: an eval
  forward always equals that of a fresh layer loaded with the same ``state_dict``, whatever was
  done to the parameters.
* Inside ``with lipkernels.nn.cached():`` (as ``torch.nn.utils.parametrize.cached()``), a layer in
  eval mode whose call needs no gradient w.r.t. its parameters computes the derived weight once
  and reuses it until the outermost block exits, which frees every cached value. The changes a
  block can see recompute (an optimizer step, ``copy_``, ``load_state_dict``, ``p.data = new``,
  ``.to()``, ``train()``); an in-place write through ``.data`` inside the block cannot be seen,
  so parameters must not be edited that way inside it.

Compiled graphs (``torch.compile``) and inference-mode calls always recompute.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Callable, Hashable

import torch
from torch import nn

# Nesting depth of `cached()` blocks, and the layers holding a cached value inside them.
_depth = 0
_holders: "weakref.WeakSet[EvalCached]" = weakref.WeakSet()


@contextlib.contextmanager
def cached():
    """Reuse eval-mode layers' derived weights inside the block (see the module docstring)."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            for layer in list(_holders):
                layer._eval_cache = None
            _holders.clear()


def caching() -> bool:
    """Whether a `cached()` block is open."""
    return _depth > 0


class EvalCached(nn.Module):
    """Base of the layers that may reuse their derived weight inside `cached()`."""

    def __init__(self):
        super().__init__()
        # (aliases of the key tensors, their versions, extra key, value), or None.
        self._eval_cache = None

    def _uses_cache(self, parameter: torch.Tensor) -> bool:
        """Whether this call may use the cache: inside `cached()`, in eval, and needing no
        gradient w.r.t. `parameter` (a cached value carries no graph). Compiled graphs recompute
        (a Python-side cache would be a guarded side effect), and an inference-mode tensor could
        not be saved for a later backward w.r.t. the input."""
        needs_grad = torch.is_grad_enabled() and parameter.requires_grad
        return (caching() and not self.training
                and not (needs_grad or torch.compiler.is_compiling()
                         or torch.is_inference_mode_enabled()))

    def _derived(self, parameter: torch.Tensor, tensors: tuple[torch.Tensor, ...],
                 extra_key: Hashable, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """compute(), reused inside `cached()` while `tensors` keep their storage and version
        and `extra_key` stays the same (see `_uses_cache`)."""
        if not self._uses_cache(parameter):
            return compute()
        entry = self._eval_cache
        if (entry is None or entry[2] != extra_key
                or any(t.data_ptr() != alias.data_ptr() or t._version != version
                       for t, alias, version in zip(tensors, entry[0], entry[1]))):
            with torch.no_grad():
                value = compute()
            # Aliases (detach shares storage and version counter) keep the old storage alive, so
            # a replaced parameter can never reuse its address and look unchanged.
            self._eval_cache = (tuple(t.detach() for t in tensors),
                                tuple(t._version for t in tensors), extra_key, value)
            _holders.add(self)
        return self._eval_cache[3]

    def train(self, mode: bool = True):
        self._eval_cache = None
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._eval_cache = None
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._eval_cache = None
        super()._load_from_state_dict(*args, **kwargs)
