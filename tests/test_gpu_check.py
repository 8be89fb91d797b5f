"""benchmarks/gpu_check.sh's packing for machines that return few files, on its build-info step,
which runs anywhere (it fails without usable CUDA kernels, and the summary says so)."""

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
