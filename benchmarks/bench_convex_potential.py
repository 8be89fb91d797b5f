"""pytest-benchmark suite of the convex potential and almost-orthogonal layers: the passes of
``lipkernels.nn``'s CPLConv2d, CPLLinear, SLLConv2d and AOLConv2d at the CPL code's default
network and the LipConvNet grid, and the ops ``conv_power_iteration`` and ``aol_rescaling``,
every provider. The grid, providers, timing and rows are the harness's
(``lipkernels.benchmarking``, wired in ``conftest.py``), shared with
``python -m lipkernels.bench``.
"""

SUITE = "convex_potential"


def test_convex_potential(bench_row):
    assert bench_row["median_ms"] > 0
