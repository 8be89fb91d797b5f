"""Suite conv_spectral_bounds: `lipkernels.conv_spectral_bounds` and `lipkernels.fantastic_four`
on the seed filters."""

from __future__ import annotations

from ..core import Op, Suite, relative_error
from . import _spectral


def _estimate(fn, weight, vectors, case):
    return fn(weight, case.iters, vectors)[0]


CONV_SPECTRAL_BOUNDS = Op(
    "conv_spectral_bounds", _estimate,
    relative_error(lambda data: data.bound_scale * data.exact_sigmas()),
    compiled_on=_spectral.compiled_on("C64-C64-k3"), graphs=True)
FANTASTIC_FOUR = Op(
    "fantastic_four", _estimate,
    relative_error(lambda data: data.bound_scale * data.exact_sigmas().min()),
    compiled_on=_spectral.compiled_on("C64-C64-k3", at_50_iterations=("fwd",)), graphs=True)

_OPS = (CONV_SPECTRAL_BOUNDS, FANTASTIC_FOUR)

SUITE = Suite(
    "conv_spectral_bounds",
    _OPS,
    lambda full: _spectral.cases(_OPS, _spectral.filters(full)),
    _spectral.NOTES,
    f"conv_spectral_bounds on {_spectral.FULL_GRID} (plus fantastic_four C64-C64-k3-T50 fwd)",
    _spectral.COMPILE_NOTE)
