"""Triton kernels of lipkernels and their plain launchers, one module per op.

The submodules import triton; this package does not, so `import lipkernels.triton` works
where Triton is missing and the op layer imports the submodules only when the backend is used.
The launchers also run on CPU tensors through the Triton interpreter: set TRITON_INTERPRET=1
before triton is first imported.
"""
