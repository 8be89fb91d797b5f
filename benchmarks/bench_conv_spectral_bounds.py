"""pytest-benchmark suite of ``lipkernels.conv_spectral_bounds`` and ``lipkernels.fantastic_four``:
square filters (C, C, k, k) of the SOC LipConvNet (16..2048 channels, k = 1 and 3), 1 and 50
iterations, fwd and fwd+bwd, every provider. The grid, providers, timing and rows are the
harness's (``lipkernels.benchmarking``, wired in ``conftest.py``), shared with
``python -m lipkernels.bench``.
"""

SUITE = "conv_spectral_bounds"


def test_conv_spectral_bounds(bench_row):
    assert bench_row["median_ms"] > 0
