"""lipkernels: fused Triton and C++/CUDA kernels for 1-Lipschitz and orthogonal layers.

Ops live in ``lipkernels.functional`` (re-exported here); their pure-PyTorch references in
``lipkernels.reference``. ``use_backend`` / ``LIPKERNELS_BACKEND`` choose the implementation and
``build_info()`` reports what was compiled and what can run.
"""

__version__ = "0.1.0"

from ._backend import available_backends, build_info, use_backend  # noqa: E402
from .functional import (  # noqa: E402
    cayley,
    cayley_conv2d,
    conv_singular_values,
    conv_spectral_bounds,
    conv_spectral_norm,
    fantastic_four,
    householder,
    max_min,
    power_iteration,
    skew,
    soc_exp,
)
from . import nn  # noqa: E402  (layers; after the ops they wrap)

__all__ = [
    "available_backends",
    "build_info",
    "use_backend",
    "power_iteration",
    "conv_spectral_bounds",
    "fantastic_four",
    "conv_singular_values",
    "conv_spectral_norm",
    "skew",
    "soc_exp",
    "max_min",
    "householder",
    "cayley",
    "cayley_conv2d",
]
