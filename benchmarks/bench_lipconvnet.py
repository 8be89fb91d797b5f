"""pytest-benchmark suite of a whole LipConvNet-10 training step (forward, cross-entropy,
backward, SGD update) with its SOC layers on each provider's backend, exact and fast SOC
gradients. The grid, providers, timing and rows are the harness's (``lipkernels.benchmarking``,
wired in ``conftest.py``), shared with ``python -m lipkernels.bench``.
"""

SUITE = "lipconvnet"


def test_lipconvnet(bench_row):
    assert bench_row["median_ms"] > 0
