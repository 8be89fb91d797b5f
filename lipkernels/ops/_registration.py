"""The one mechanism that turns a kernel pair (forward, backward) into a traceable, differentiable op.

Every op's schema is declared once, in csrc/ops.cpp, and its C++ kernels are implemented per
device key; Triton launchers become ops here under the same schemas (lipkernels::<op>_triton).
Both get the same fake (meta) functions and the same autograd formula, so every backend traces
under torch.compile and is checked by torch.library.opcheck. The registry of entry points, one
per op and backend, is `lipkernels.ops.KERNELS`.

Triton launchers are defined as opaque dispatcher ops, as the C++ ones are, rather than with
``torch.library.triton_op``: under the Triton interpreter, which is how CPU-only CI runs them,
triton_op's functionalisation traces into the launcher and reads fake tensors' data, so neither
opcheck nor torch.compile works; the opaque op behaves the same on a GPU and is testable here.

The autograd kernel is torch.library's (the one ``register_autograd`` installs) behind a check
that no torch.func transform or forward-mode tangent reaches it: torch.library has no
forward-mode hook, so without the check ``torch.func.jvp`` of a raw ``torch.ops.lipkernels`` op
would return a zero tangent, and forward-AD dual inputs would give an output without one.
"""

from __future__ import annotations

from typing import Callable

import torch

from .. import _backend
from .._autograd import needs_graph


def triton_op_name(op: str) -> str:
    return f"lipkernels::{op}_triton"


# Holds the Python registrations of the lipkernels namespace (Triton ops, autograd kernels).
_LIBRARY = torch.library.Library("lipkernels", "FRAGMENT")


def _contiguous(value):
    if isinstance(value, torch.Tensor):
        return value.contiguous()
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        return [t.contiguous() for t in value]
    return value


def define_triton_op(op: str, launcher: Callable, schema: str, check: Callable):
    """Register `launcher` as the op lipkernels::<op>_triton with the given schema, on every
    device (the Triton interpreter runs it on the CPU). The op is public (torch.ops), so it runs
    `check` on its arguments first, the checks of the functional API, and hands the launcher
    contiguous tensors, which is what the launchers index."""
    name = triton_op_name(op).split("::")[1]

    def checked_launcher(*args):
        check(*args)
        return launcher(*map(_contiguous, args))

    _LIBRARY.define(name + schema)
    _LIBRARY.impl(name, checked_launcher, "CompositeExplicitAutograd")


def _register_autograd(forward: str, backward_formula: Callable, setup_context: Callable):
    """torch.library's autograd kernel for `forward`, refusing torch.func transforms and
    forward-mode AD with an error that names them (see the module docstring)."""
    autograd_kernel = torch._library.autograd.make_autograd_impl(
        _op(forward), torch._library.autograd.Info(backward_formula, setup_context))

    def checked_autograd_kernel(keyset, *args, **keyword_only_args):
        transform = _backend.active_transform(args)
        if transform is not None:
            raise RuntimeError(
                f"torch.ops.{forward.replace('::', '.')} does not support {transform}: the "
                f"kernel ops have no batching rule, forward-mode derivative or torch.func "
                f"autograd. Call the lipkernels.functional op, which runs the reference under "
                f"transforms with the 'auto' backend")
        return autograd_kernel(keyset, *args, **keyword_only_args)

    _LIBRARY.impl(forward.split("::")[1], checked_autograd_kernel, "Autograd", with_keyset=True)


def register_differentiable(forward: str, backward: str, *, forward_fake: Callable,
                            backward_fake: Callable, setup_context: Callable,
                            make_backward: Callable, differentiable_backward: Callable):
    """Fake impls for `forward` and `backward` (qualified op names) and autograd for `forward`.

    `make_backward(backward_op)` returns the autograd backward formula calling `backward_op`.
    `differentiable_backward(ctx, *grads)` is the same formula in differentiable torch ops, or a
    clear error: it runs instead of the kernel when the backward must build a graph of its
    result (`needs_graph` of the output gradients and saved tensors: create_graph=True, e.g.
    gradient penalties), since the backward kernel has no derivative of its own. AOTAutograd and
    torch.library.opcheck trace the backward with grad mode off, so they keep the kernel.
    """
    torch.library.register_fake(forward)(forward_fake)
    torch.library.register_fake(backward)(backward_fake)
    kernel_backward = make_backward(_op(backward))

    def backward_formula(ctx, *grads):
        if needs_graph(*grads, *ctx.saved_tensors):
            return differentiable_backward(ctx, *grads)
        return kernel_backward(ctx, *grads)

    _register_autograd(forward, backward_formula, setup_context)


def recomputed_vjp(forward: Callable, inputs: tuple, needs_input_grad, grad_output):
    """The vector-Jacobian product of `forward(*inputs)` (the op's reference) with `grad_output`,
    differentiable (create_graph=True): a `differentiable_backward` for ops whose backward saves
    their inputs. Returns one gradient per input, None where `needs_input_grad` is false."""
    wanted = [index for index, need in enumerate(needs_input_grad[:len(inputs)]) if need]
    with torch.enable_grad():
        output = forward(*inputs)
    grads = torch.autograd.grad(output, [inputs[i] for i in wanted], grad_output,
                                create_graph=True, materialize_grads=True)
    result = [None] * len(inputs)
    for index, grad in zip(wanted, grads):
        result[index] = grad
    return tuple(result)


def _op(qualified_name: str):
    namespace, name = qualified_name.split("::")
    return getattr(getattr(torch.ops, namespace), name).default


def _triton_schema(op: str) -> str:
    """The C++ op's schema without its name, "(args) -> returns": the Triton twin of
    lipkernels::<op> takes it from the op csrc/ops.cpp declares, so each schema is written once."""
    schema = str(_op(f"lipkernels::{op}")._schema)
    return schema[len(f"lipkernels::{op}"):]


# The hooks an op's module (lipkernels/ops/<op>.py) defines for `kernel_ops`, by name.
_AUTOGRAD_HOOKS = ("forward_fake", "backward_fake", "setup_context", "make_backward",
                   "differentiable_backward")


def kernel_ops(op: str, module) -> dict[str, Callable]:
    """Register every built kernel backend of `op` from the hooks its module defines; return
    {backend: entry point}.

    Hooks: `_entry(forward_op)`, the backend's entry point: the function with the signature and
    the result of the op's reference in lipkernels.reference (what lipkernels.functional calls
    once the inputs are validated), running `forward_op`; the autograd hooks `_forward_fake`,
    `_backward_fake`, `_setup_context`, `_make_backward`, `_differentiable_backward` (see
    `register_differentiable`); and, for an op with Triton kernels, `_triton_launchers()`, which
    returns the Triton module's (forward, backward) launchers and is called only when Triton is
    importable, `check_inputs(*forward_args)`, the forward's argument checks the functional API
    runs too, and `check_backward_inputs(*backward_args)`, the backward's (the C++ ops check
    their own, with the same words), and optionally `_triton_forward_fake`, where the
    Triton op's outputs differ from the C++ kernels' (soc_exp: which tensors it keeps). The
    launchers become lipkernels::<op>_triton and <op>_backward_triton with the schemas of the
    C++ ops, so the Triton backend needs the extension.
    """
    ops: dict[str, Callable] = {}
    if not _backend.extension_loaded():
        return ops
    autograd = {name: getattr(module, f"_{name}") for name in _AUTOGRAD_HOOKS}
    register_differentiable(f"lipkernels::{op}", f"lipkernels::{op}_backward", **autograd)
    # The C++ op serves as the cpp backend where it has a CPU kernel and as the cuda backend
    # where it has a CUDA kernel (csrc/cpu/<op>.cpp, csrc/cuda/<op>.cu).
    for backend, key in (("cpp", "CPU"), ("cuda", "CUDA")):
        if torch._C._dispatch_has_kernel_for_dispatch_key(f"lipkernels::{op}", key):
            ops[backend] = module._entry(_op(f"lipkernels::{op}"))
    launchers = getattr(module, "_triton_launchers", None)
    if launchers is not None and _backend.triton_importable():
        forward_launcher, backward_launcher = launchers()
        define_triton_op(op, forward_launcher, _triton_schema(op), module.check_inputs)
        define_triton_op(f"{op}_backward", backward_launcher, _triton_schema(f"{op}_backward"),
                         module.check_backward_inputs)
        triton_forward_fake = getattr(module, "_triton_forward_fake", autograd["forward_fake"])
        register_differentiable(triton_op_name(op), triton_op_name(f"{op}_backward"),
                                **{**autograd, "forward_fake": triton_forward_fake})
        ops["triton"] = module._entry(_op(triton_op_name(op)))
    return ops
