"""pytest-benchmark suite of the Cayley convolution: ``lipkernels.cayley_conv2d`` forward and
forward+backward, cached inference of ``lipkernels.nn.CayleyConv2d`` (mode eval; the reference
row recomputes the transforms as the seed code does) and a plain FFT convolution as the
yardstick of cached inference, at the layer shapes of the Cayley paper's networks. Peer: the
Cayley layer of orthogonium 0.0.4 where installed. The grid, providers, timing and rows are the
harness's (``lipkernels.benchmarking``, wired in ``conftest.py``), shared with
``python -m lipkernels.bench``.
"""

SUITE = "cayley_conv2d"


def test_cayley_conv2d(bench_row):
    assert bench_row["median_ms"] > 0
