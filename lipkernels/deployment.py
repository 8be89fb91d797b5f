"""`lipkernels.export`: a model holding lipkernels layers as a program of plain torch operators.

The program is a `torch.export.ExportedProgram` traced in eval mode. On the reference backend (the
default) its graph holds only ATen operators (no lipkernels custom op): `torch.export.save` writes
it and `torch.export.load` runs it in a process that never imports lipkernels, and `.module()`
gives a plain `torch.fx.GraphModule`. On a kernel backend the graph calls the lipkernels ops
(`torch.ops.lipkernels.*`), so loading it needs `import lipkernels` first, which registers
them. Each layer's eval forward is traced as it runs, with its normalisation from the stored
parameters and vectors (SOC's sigma from its persistent vectors, Cayley's alpha
and frequency transforms), so the program computes exactly what the model computes in eval.
"""

from __future__ import annotations

import torch

from ._backend import use_backend

__all__ = ["export"]


def export(model: torch.nn.Module, example_inputs: tuple, *, dynamic_batch: bool = True,
           backend: str = "reference", strict: bool = False) -> torch.export.ExportedProgram:
    """The eval-mode `model` as an ExportedProgram of plain torch operators.

    Args:
        model: any module; its training flag is restored afterwards.
        example_inputs: a tuple of the forward's positional inputs (the shapes to trace at).
        dynamic_batch: leave the first dimension of every input tensor free (sizes from 1), so
            that the program runs other batch sizes; False keeps the example's.
        backend: the backend traced ("reference": plain ATen operators, loadable without
            lipkernels; "cpp", "triton", "cuda" or "auto": the graph calls lipkernels' kernel
            ops, and loading it needs lipkernels imported).
        strict: passed to torch.export.export.

    On the reference backend the graph computes the eval forward with plain ATen operators:
    the program needs torch only, on any device torch supports.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"export: model must be a torch.nn.Module; got {type(model).__name__}")
    if not isinstance(example_inputs, tuple):
        raise TypeError(f"export: example_inputs must be a tuple of the forward's inputs; got "
                        f"{type(example_inputs).__name__}")
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1)
        dynamic_shapes = tuple({0: batch} if isinstance(x, torch.Tensor) and x.dim() > 0
                               else None for x in example_inputs)
    training = model.training
    model.eval()
    try:
        with use_backend(backend), torch.no_grad():
            return torch.export.export(model, example_inputs, dynamic_shapes=dynamic_shapes,
                                       strict=strict)
    finally:
        model.train(training)
