"""Compile Triton kernels for NVIDIA GPUs on a machine without one; print resource usage.

Run as a script in a process where TRITON_INTERPRET is unset (tests/test_triton_compile.py does),
because the interpreter replaces @triton.jit functions by Python ones the compiler cannot lower.
Each case is compiled to a cubin for sm_80 and sm_90 with the launch configuration its launcher
would use; `cuobjdump -res-usage` (shipped with Triton) gives registers and stack (spill) bytes.
This catches lowering errors the interpreter cannot see (types of loop-carried values, layouts
of tl.dot operands, shared-memory overflow) and register spills, before any GPU run.

Output: one JSON object per line, {"case", "capability", "registers", "stack", "shared"}.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from lipkernels.triton import soc_exp

CAPABILITIES = (80, 90)
_POINTER_TYPES = {torch.float32: "*fp32", torch.float64: "*fp64", torch.float16: "*fp16",
                  torch.bfloat16: "*bf16"}


def _signature(kernel, args, constants):
    names = [name for name in kernel.arg_names if name not in constants]
    types = [_POINTER_TYPES[a.dtype] if isinstance(a, torch.Tensor) else "i32" for a in args]
    return {**dict(zip(names, types)), **{name: "constexpr" for name in constants}}


def _soc_exp_cases():
    """Forward and backward at LipConvNet's first and last 3x3 layer widths, fp32 and bf16."""
    for dtype in (torch.float32, torch.bfloat16):
        for channels, size in ((32, 32), (512, 2)):
            x = torch.empty(128, channels, size, size, dtype=dtype, device="meta")
            S = torch.empty(channels, channels, 3, 3, dtype=dtype, device="meta")
            scratch = torch.empty(0, dtype=torch.float32, device="meta")
            _, config = soc_exp.launch_config(x, S)
            config["PRECISION"] = "tf32"  # what a GPU run with torch's default flags uses
            name = f"{str(dtype).removeprefix('torch.')}-C{channels}-H{size}"
            yield (f"soc_exp-{name}", soc_exp._soc_exp_kernel,
                   (x, S, x, x, scratch, 5, *x.shape), dict(config, SAVE_Z2=True))
            yield (f"soc_exp_backward-{name}", soc_exp._soc_exp_backward_kernel,
                   (x, S, S, x, x, scratch, scratch, 5, *x.shape), dict(config, EXACT=True))


def _resource_usage(cubin: bytes) -> dict:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        report = subprocess.run([tool, "-res-usage", file.name], capture_output=True, text=True,
                                check=True).stdout
    usage = re.search(r"REG:(\d+) STACK:(\d+)", report)
    return {"registers": int(usage.group(1)), "stack": int(usage.group(2))}


def compile_case(kernel, args, constants, capability):
    options = {key: constants.pop(key) for key in ("num_warps", "num_stages") if key in constants}
    source = ASTSource(fn=kernel, signature=_signature(kernel, args, constants),
                       constexprs=constants)
    compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)
    return {**_resource_usage(compiled.asm["cubin"]), "shared": compiled.metadata.shared}


def main():
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("triton_compile_check: unset TRITON_INTERPRET (the interpreter cannot compile)")
    for name, kernel, args, constants in _soc_exp_cases():
        for capability in CAPABILITIES:
            usage = compile_case(kernel, args, dict(constants), capability)
            print(json.dumps({"case": name, "capability": capability, **usage}), flush=True)


if __name__ == "__main__":
    main()
