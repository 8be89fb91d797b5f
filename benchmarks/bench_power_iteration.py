"""pytest-benchmark suite of ``lipkernels.power_iteration``: batches of matrices (the Fantastic
Four reshapes of the seed conv filters, and batches of small matrices), 1 and 50 iterations, fwd
and fwd+bwd, every provider. The grid, providers, timing and rows are the harness's
(``lipkernels.benchmarking``, wired in ``conftest.py``), shared with
``python -m lipkernels.bench``.
"""

SUITE = "power_iteration"


def test_power_iteration(bench_row):
    assert bench_row["median_ms"] > 0
