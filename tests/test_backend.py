"""Backend selection rules (docs/design.md §2): auto picks only validated kernels, explicit choices
that cannot run are errors naming what is missing, and build_info tells the truth."""

import pytest
import torch

import lipkernels
from lipkernels import _backend


def test_auto_uses_cpp_on_cpu_only_for_ops_that_have_it():
    with lipkernels.use_backend("auto"):
        expected = "cpp" if "cpp" in lipkernels.available_backends("cpu") else "reference"
        assert _backend.resolve("power_iteration", "cpu", {"cpp": None}) == expected
        assert _backend.resolve("future_op", "cpu", {}) == "reference"


def test_auto_never_picks_an_unvalidated_gpu_kernel(monkeypatch):
    monkeypatch.setattr(_backend, "GPU_VALIDATED", {})
    with lipkernels.use_backend("auto"):
        assert _backend.resolve("power_iteration", "cuda", {"cuda": None, "triton": None}) == "reference"


def test_explicit_backend_missing_for_an_op_is_an_error():
    with lipkernels.use_backend("reference"):
        assert _backend.resolve("future_op", "cpu", {}) == "reference"
    if "cpp" not in lipkernels.available_backends("cpu"):
        pytest.skip("cpp backend not built")
    with lipkernels.use_backend("cpp"):
        with pytest.raises(RuntimeError, match="future_op has no cpp kernel in this build"):
            _backend.resolve("future_op", "cpu", {})


def test_use_backend_restores_the_previous_choice():
    before = _backend.selected_backend()
    with pytest.raises(KeyError):
        with lipkernels.use_backend("reference"):
            assert _backend.selected_backend() == "reference"
            raise KeyError
    assert _backend.selected_backend() == before


def test_build_info_reports_compiled_and_usable_backends():
    info = lipkernels.build_info()
    assert info["version"] == lipkernels.__version__
    assert info["torch"] == torch.__version__
    assert "reference" in info["usable"]["cpu"]
    assert ("cuda" in info["usable"]) == torch.cuda.is_available()
    if info["extension_error"] is None:
        assert "cpp" in info["compiled"] and "cpp" in info["usable"]["cpu"]
