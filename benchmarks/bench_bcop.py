"""pytest-benchmark suite of BCOP: the filter's construction (Björck, then ``bcop_filter``) and
the passes of ``lipkernels.nn.BCOPConv2d`` at LConvNet Large's layers, every provider. The grid,
providers, timing and rows are the harness's (``lipkernels.benchmarking``, wired in
``conftest.py``), shared with ``python -m lipkernels.bench``.
"""

SUITE = "bcop"


def test_bcop(bench_row):
    assert bench_row["median_ms"] > 0
