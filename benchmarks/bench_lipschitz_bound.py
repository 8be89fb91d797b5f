"""pytest-benchmark suite of the provable Lipschitz bound of a whole LipConvNet-10
(`LipConvNet.lipschitz_bound()`) in eval and training mode, against the exact Fantastic Four
bound. The grid, providers, timing and rows are the harness's (``lipkernels.benchmarking``, wired
in ``conftest.py``), shared with ``python -m lipkernels.bench``.
"""

SUITE = "lipschitz_bound"


def test_lipschitz_bound(bench_row):
    assert bench_row["median_ms"] > 0
