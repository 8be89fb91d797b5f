"""benchmarks/gpu_check.sh: its packing for machines that return few files, on its build-info step,
which runs anywhere (it fails without usable CUDA kernels, and the summary says so), and its dry
run, the whole script on a machine without a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def test_every_step_leaves_one_archive_and_the_summary(tmp_path):
    pack, out = tmp_path / "pack", tmp_path / "out"
    env = {**os.environ, "GPU_CHECK_STEPS": "build-info", "GPU_CHECK_PACK": str(pack),
           "OUT": str(out), "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode in (0, 1), result.stdout[-2000:]
    assert sorted(p.name for p in pack.iterdir()) == ["gpu_check-summary.txt", "gpu_check.tar.gz"]
    with tarfile.open(pack / "gpu_check.tar.gz") as archive:
        names = {Path(name).name for name in archive.getnames()}
    assert {"gpu_check-build-info.log", "gpu_check-build_info.json",
            "gpu_check-summary.txt"} <= names
    status = "ok" if result.returncode == 0 else "FAILED"
    assert f"build-info    {status}" in (pack / "gpu_check-summary.txt").read_text()


def test_dry_run_runs_every_step_on_the_cpu(tmp_path):
    """GPU_CHECK_DRY_RUN=1: the whole script on this GPU-less machine, every step ok, and the
    one archive holds each step's log, the test reports and the benchmark's results files."""
    pack, out = tmp_path / "pack", tmp_path / "out"
    env = {**os.environ, "GPU_CHECK_DRY_RUN": "1", "GPU_CHECK_PACK": str(pack), "OUT": str(out),
           "PYTHON": sys.executable, "GPU_CHECK_BUDGET_S": "400"}
    env.pop("TRITON_INTERPRET", None)  # the script sets it itself
    result = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True,
                            timeout=600)
    summary = (pack / "gpu_check-summary.txt").read_text()
    assert result.returncode == 0, summary + result.stdout[-3000:]
    steps = ("env", "build", "build-info", "tests-gpu", "bench-pytest", "bench", "tests-rest")
    for step in steps:
        assert f"{step:<13} ok" in summary, summary
    with tarfile.open(pack / "gpu_check.tar.gz") as archive:
        names = {Path(name).name for name in archive.getnames()}
    assert {f"gpu_check-{step}.log" for step in steps} <= names
    assert {"gpu_check-tests-gpu.xml", "gpu_check-tests-rest.xml",
            "gpu_check-bench-pytest.json"} <= names
    results = [name for name in names if name.startswith("cpu-") and name.endswith(".json")]
    assert any(name.endswith("-soc_exp.json") for name in results), names
