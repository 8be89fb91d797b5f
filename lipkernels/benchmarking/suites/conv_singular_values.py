"""Suite conv_singular_values: `lipkernels.conv_spectral_norm`, the norm of a circular conv,
estimated by every backend against the exact norm of the reference."""

from __future__ import annotations

import dataclasses
import functools

import torch

from lipkernels import reference
from lipkernels._spectral import frequency_response

from ..core import DTYPE, OnFilter, Op, Suite, grid, relative_error

# The norm of the circular conv with a square 3x3 filter on an n x n image, exact (the reference
# row: svdvals of the n^2 frequency responses) against the power-iteration estimate of every
# backend (all frequencies in one frequency_power_iteration call: on Triton one launch applying
# the responses from the taps, on cpp and cuda power_iteration on the formed responses). 64..512
# channels on 32x32 (CIFAR)
# and 56x56 (the first stage of an ImageNet ResNet) images; the default grid keeps C64 at 32x32,
# for a 2-core CPU. Peers: deel-torchlip 1.0.5 has no conv operator norm (no FFT; its
# SpectralConv2d normalises the reshaped kernel by power iteration and a kernel-size
# coefficient), so there is none.
CONV_NORM_CHANNELS, DEFAULT_CONV_NORM_CHANNELS = (64, 128, 256, 512), (64,)
CONV_NORM_SIZES, DEFAULT_CONV_NORM_SIZES = (32, 56), (32,)
CONV_NORM_ITERS = 50


@dataclasses.dataclass(frozen=True)
class Spectrum(OnFilter):
    """A seeded square filter (`Filter`) on a size x size image with circular padding: the data
    of conv_spectral_norm."""

    channels: int
    size: int
    k: int = 3

    @property
    def label(self) -> str:
        return f"{self.filter.label}-H{self.size}-W{self.size}"

    def inputs(self):
        """(weight, None), float32 on the CPU; the image size is the case's."""
        return self.filter.weight(), None


@functools.cache
def _exact_conv_norm(data: Spectrum) -> torch.Tensor:
    """The circular conv's norm in float64 from svdvals of its frequency responses: only those
    with column frequency v <= n / 2 (H at -f is conj(H_f), with the same singular values), a few
    rows of frequencies per call, which bounds the SVD's copy and workspace (a 512-channel filter
    at 56x56 has 13 GB of complex128 responses)."""
    half = frequency_response(data.filter.weight().double(), data.size, onesided=True)
    return torch.stack([torch.linalg.svdvals(rows)[..., 0].max() for rows in half.split(8)]).max()


def _spectra(full: bool) -> list[Spectrum]:
    # Smaller filters first, so that a --time-limit cuts the most expensive rows.
    return [Spectrum(c, n) for c in (CONV_NORM_CHANNELS if full else DEFAULT_CONV_NORM_CHANNELS)
            for n in (CONV_NORM_SIZES if full else DEFAULT_CONV_NORM_SIZES)]


CONV_SPECTRAL_NORM = Op(
    "conv_spectral_norm",
    lambda fn, weight, _, case: fn(weight, case.data.size, "circular", case.iters),
    relative_error(_exact_conv_norm),
    # The reference row is the exact norm (iters=None: svdvals of the frequency responses), the
    # baseline that the backends' power-iteration estimates are timed against.
    reference_row=lambda: lambda weight, size, padding, iters: (
        reference.conv_spectral_norm(weight, size, padding)))

SUITE = Suite(
    "conv_singular_values",
    (CONV_SPECTRAL_NORM,),
    lambda full: grid((CONV_SPECTRAL_NORM,), _spectra(full), (DTYPE,),
                      [{"iters": CONV_NORM_ITERS, "mode": "fwd"}]),
    (
        "- shapes: `C{C}-C{C}-k3-H{n}-W{n}-T{iters}`: the seeded 3x3 filter of the conv suites "
        "on an n x n image, circular padding; with --full 64, 128, 256 and 512 channels at 32x32 "
        "and 56x56 (default: C64 at 32x32), T50. Mode fwd only: the norm, no gradient",
        "- providers: `reference` is the exact norm whatever T, "
        "`reference.conv_spectral_norm(weight, n)` (iters=None: FFT of the zero-padded filter, "
        "torch.linalg.svdvals of the n^2 C x C frequency responses); cpp / triton / cuda run "
        "`lipkernels.conv_spectral_norm(weight, n, iters=T)`: T power iterations at each of the "
        "n (n / 2 + 1) rfft2 frequencies at once (cpp, cuda: power_iteration on the formed real "
        "2C x 2C responses in one launch; triton: one launch applying the responses from the "
        "filter's taps, never formed). The speed-up is the "
        "exact SVD's time over the estimate's. No reference-compile (the reference row is the "
        "SVD), and no peer: deel-torchlip 1.0.5 has no conv operator norm",
        "- ortho_err: |norm - exact| / exact, exact from torch.linalg.svdvals in float64 of the "
        "same filter: the float32 rounding of the reference row, the power-iteration error after "
        "T iterations (plus rounding) of the others"),
    "conv_singular_values on 64..512 channels at 32x32 and 56x56")
