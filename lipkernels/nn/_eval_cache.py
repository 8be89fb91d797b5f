"""Eval-mode caching of a value derived from a layer's parameters (an orthogonalised filter).

Orthogonal layers spend most of their forward on turning parameters into a weight (a normalised
skew filter, per-frequency Cayley transforms). In eval the parameters do not change between
calls, so the derived value is computed once and reused until a parameter or buffer it depends
on changes in place (optimizer steps and load_state_dict's copy_ bump the tensor versions that
key the cache).
"""

from __future__ import annotations

from typing import Callable, Hashable

import torch
from torch import nn


class EvalCached(nn.Module):
    """Base of the layers that cache their derived weight in eval (see the module docstring)."""

    def __init__(self):
        super().__init__()
        # (key, value) of the last cached computation, or None.
        self._eval_cache = None

    def _cacheable(self, parameter: torch.Tensor) -> bool:
        """Whether this call may use the cache. A cached value carries no graph, so it serves
        only calls that need no gradient w.r.t. `parameter`; compiled graphs recompute it (a
        Python-side cache would be a guarded side effect), and an inference-mode tensor could
        not be saved for a later backward w.r.t. the input."""
        needs_grad = torch.is_grad_enabled() and parameter.requires_grad
        return not (needs_grad or torch.compiler.is_compiling()
                    or torch.is_inference_mode_enabled())

    def _cached(self, tensors: tuple[torch.Tensor, ...], extra_key: Hashable,
                compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """compute(), reused while the versions of `tensors` and `extra_key` stay the same.

        Call only in eval and after `_cacheable` said yes; computed without a graph.
        """
        key = (tuple(t._version for t in tensors), extra_key)
        if self._eval_cache is None or self._eval_cache[0] != key:
            with torch.no_grad():
                self._eval_cache = (key, compute())
        return self._eval_cache[1]

    def train(self, mode: bool = True):
        self._eval_cache = None
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        # .to()/.double()/.cuda() may give the parameters new storage with fresh version counters.
        self._eval_cache = None
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._eval_cache = None
        super()._load_from_state_dict(*args, **kwargs)
