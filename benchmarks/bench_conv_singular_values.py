"""pytest-benchmark suite of ``lipkernels.conv_spectral_norm``: the norm of the circular conv with
a square 3x3 filter (64..512 channels) on 32x32 and 56x56 images, forward only. Provider
``reference`` computes it exactly (torch.linalg.svdvals of the frequency responses); every
backend estimates it with 50 power iterations on all frequencies in one fused launch. No peer:
deel-torchlip 1.0.5 has no conv operator norm. The grid, providers, timing and rows are the
harness's (``lipkernels.benchmarking``, wired in ``conftest.py``), shared with
``python -m lipkernels.bench``.
"""

SUITE = "conv_singular_values"


def test_conv_spectral_norm(bench_row):
    assert bench_row["median_ms"] > 0
