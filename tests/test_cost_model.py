"""docs/performance.md shows the cost model's tables as benchmarks/cost_model.py computes them."""

import importlib.util
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _cost_model():
    """benchmarks/cost_model.py, a script outside the package, imported once."""
    if "cost_model" not in sys.modules:
        spec = importlib.util.spec_from_file_location("cost_model",
                                                      ROOT / "benchmarks" / "cost_model.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["cost_model"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules["cost_model"]


@pytest.mark.parametrize("title", list(_cost_model().TABLES))
def test_the_page_shows_the_models_table(title):
    table = _cost_model().TABLES[title]()
    assert table in (ROOT / "docs" / "performance.md").read_text(), title


def test_the_forward_model_counts_what_the_page_says():
    """Spot values of the forward model: 15 terms at 32@32x32 in fp32 are 33.8 GFLOP, the
    reference moves 1410 MB, and the fused kernel is compute-bound at 73 us."""
    model = _cost_model()
    layer = model.SocLayer(32, 32, 3, "fp32/TF32")
    assert round(14 * layer.conv_flops / 1e9, 1) == 33.8
    assert round(14 * (6 * layer.activation_bytes + layer.filter_bytes) / 1e6) == 1410
    assert round((14 * layer.conv_flops / layer.peak + model.LAUNCH_S) * 1e6) == 73
