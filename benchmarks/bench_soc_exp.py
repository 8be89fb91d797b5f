"""pytest-benchmark suite of ``lipkernels.soc_exp``: the skew-orthogonal convolution on the SOC
LipConvNet's activations (32@32x32 .. 512@2x2, batch 128 and 256), 6 and 15 terms, fwd, fwd+bwd
with the exact gradient and fwd+bwd with the fast gradient (shape suffix ``-fast``), every
provider. The grid, providers, timing and rows are the harness's (``lipkernels.benchmarking``,
wired in ``conftest.py``), shared with ``python -m lipkernels.bench``.
"""

SUITE = "soc_exp"


def test_soc_exp(bench_row):
    assert bench_row["median_ms"] > 0
