"""Higher-order autograd rules shared by the references' autograd.Functions and the kernel ops.

A backward pass runs with grad mode on when the caller asked for a graph of the gradient
(``create_graph=True``: gradient penalties, Hessian-vector products) and always under
``torch.func.grad``/``jacrev``/``vjp``, which differentiate with ``create_graph=True`` at every
level; and it is itself differentiated in forward mode when the tensors it reads carry
forward-AD tangents (forward-over-reverse Hessian-vector products). A backward formula that
reads saved tensors computed without a graph or tangent (a forward's intermediates, a kernel's
outputs) is then wrong to differentiate: autograd would see those tensors as constants. Every
backward of this package therefore asks `needs_graph` first and, when it is true, either
recomputes what it reads differentiably or returns its gradients through `no_double_backward`,
which raises a clear error if, and only when, they are differentiated again.
"""

from __future__ import annotations

import torch
from torch.autograd import forward_ad


def has_tangent(tensors) -> bool:
    """Whether one of `tensors` is a dual tensor of torch.autograd.forward_ad (at the current
    dual level)."""
    return any(isinstance(t, torch.Tensor) and forward_ad.unpack_dual(t).tangent is not None
               for t in tensors)


_LIFTING_TRANSFORMS = frozenset({torch._C._functorch.TransformType.Grad,
                                  torch._C._functorch.TransformType.Jvp})


def transforms(tensors) -> list:
    """The torch.func transforms (functorch interpreter types, outermost first) that the call on
    `tensors` runs under: all active ones when one of the tensors is functorch-wrapped or a grad
    or jvp transform is active, none otherwise (under vmap alone, inputs captured from outside
    it are plain tensors). While torch.compile
    traces, neither the interpreter stack nor a tensor's wrapping can be traced, only whether
    any transform is active: then [None] stands for "some transform"."""
    if torch.compiler.is_compiling():
        return [None] if torch._C._are_functorch_transforms_active() else []
    stack = torch._C._functorch.get_interpreter_stack()
    if not stack:
        return []
    kinds = [interpreter.key() for interpreter in stack]
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    # A grad or jvp level lifts every tensor an op receives, captured ones included, so under
    # one no call escapes the transform; vmap batches only the tensors it wrapped.
    if (_LIFTING_TRANSFORMS.intersection(kinds)
            or any(isinstance(t, torch.Tensor) and wrapped(t) for t in tensors)):
        return kinds
    return []


def forward_mode(*tensors) -> bool:
    """Whether the call on `tensors` is differentiated in forward mode (torch.func.jvp, jacfwd,
    or forward_ad dual tensors). The references' autograd.Functions have no `jvp` (Dynamo cannot
    trace an autograd.Function that defines one), so there the references run their
    plain-autograd form instead. False while torch.compile traces: Dynamo traces through an
    autograd.Function's forward under a forward-mode transform, so the Function serves."""
    if torch.compiler.is_compiling():
        return False
    return torch._C._functorch.TransformType.Jvp in transforms(tensors) or has_tangent(tensors)


def needs_graph(*tensors) -> bool:
    """Whether a backward pass reading `tensors` (its output gradients and saved tensors) must
    give a differentiable result: grad mode on and one of them requiring grad, or one of them
    carrying a forward-mode tangent."""
    return ((torch.is_grad_enabled()
             and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors))
            or has_tangent(tensors))


class _Undifferentiable(torch.autograd.Function):
    """Copies of `grads` that depend, for autograd, on `anchors`, and whose derivative (reverse
    or forward mode) raises RuntimeError(message)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(message, count, *tensors):
        # Copies, not views: a gradient may be accumulated in place later (p.grad).
        return tuple(t.clone() for t in tensors[:count])

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.message = inputs[0]

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(ctx.message)

    @staticmethod
    def jvp(ctx, *tangents):
        raise RuntimeError(ctx.message)


def no_double_backward(message: str, grads, anchors):
    """`grads` (a sequence of tensors or None) as a backward pass returns them, computed without
    a graph from `anchors` (the tensors the backward read). When `needs_graph(*anchors)`, the
    returned tensors are linked to the anchors so that differentiating them again raises
    RuntimeError(message) (reverse or forward mode) instead of giving a silently wrong zero;
    otherwise they are returned unchanged."""
    if not needs_graph(*anchors):
        return tuple(grads)
    present = [g for g in grads if g is not None]
    linked = iter(_Undifferentiable.apply(message, len(present), *present,
                                          *(a for a in anchors if isinstance(a, torch.Tensor))))
    return tuple(None if g is None else next(linked) for g in grads)
