"""The Triton kernels compile for sm_80 and sm_90 without a GPU, specialised as the JIT
specialises a launch (batch 1 and sizes of 1 included), within register and shared memory budgets
(tests/triton_compile_check.py, run in a process without the interpreter)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

# Shared memory a program may use so that several fit on one SM of any supported GPU (sm_80 has
# 164 KB), and stack bytes a thread may use: a few words of call frame, not spilled tiles.
MAX_SHARED_BYTES = 48 * 1024
MAX_STACK_BYTES = 64


@pytest.fixture(scope="module")
def compiled():
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("triton_compile_check.py")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                            cwd=script.parent.parent, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_every_case_compiles_for_both_architectures(compiled):
    cases = {row["case"] for row in compiled}
    assert {"soc_exp-float32-B128-C32-H32-k3", "soc_exp_backward-bfloat16-B128-C512-H2-k3",
            "soc_exp-float32-B1-C32-H32-k3", "soc_exp_backward-float32-B128-C1024-H1-k1",
            "cayley_backward-complex64-n512", "cayley_frequency_product-complex128-C256x512",
            "power_iteration-bfloat16-B128-1x64-T1", "conv_spectral_bounds-float32-C1024-k1-T1",
            "conv_spectral_bounds_backward-bfloat16-C512-k3", "max_min-pairs-float32-B1-C32-H32",
            "householder_backward-bfloat16-B128-C1024-H1"} <= cases
    assert len(compiled) == 2 * len(cases)
    assert {row["capability"] for row in compiled} == {80, 90}


def test_resource_usage_stays_within_budget(compiled):
    for row in compiled:
        where = f"{row['case']} on sm_{row['capability']}"
        assert 0 < row["registers"] <= 255, where
        assert row["shared"] <= MAX_SHARED_BYTES, f"{where}: {row['shared']} bytes of shared memory"
        assert row["stack"] <= MAX_STACK_BYTES, f"{where}: {row['stack']} bytes of stack (spills)"
