"""pytest-benchmark suite of ``lipkernels.bjorck``: 20 iterations on BCOP's matrix stacks and
LConvNet's BjorckLinear weights, fwd and fwd+bwd, every provider. The grid, providers, timing and
rows are the harness's (``lipkernels.benchmarking``, wired in ``conftest.py``), shared with
``python -m lipkernels.bench``.
"""

SUITE = "bjorck"


def test_bjorck(bench_row):
    assert bench_row["median_ms"] > 0
