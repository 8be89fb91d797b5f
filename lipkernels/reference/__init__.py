"""Pure-PyTorch references of every op, faithful to the seed papers' code: the test oracle.

Each function has the signature of its namesake in ``lipkernels.functional``.
"""

from .aol_rescaling import aol_rescaling
from .bcop_filter import bcop_filter
from .bjorck import bjorck
from .cayley import cayley
from .cayley_conv2d import cayley_conv2d
from .conv_power_iteration import conv_power_iteration
from .conv_singular_values import conv_singular_values, conv_spectral_norm
from .conv_spectral_bounds import conv_spectral_bounds, fantastic_four
from .convex_potential import convex_potential
from .frequency_power_iteration import frequency_power_iteration
from .householder import householder
from .max_min import max_min
from .power_iteration import power_iteration
from .soc_exp import flip_transpose, skew, soc_exp

__all__ = ["power_iteration", "conv_power_iteration", "conv_spectral_bounds", "fantastic_four",
           "frequency_power_iteration", "conv_singular_values", "conv_spectral_norm", "flip_transpose", "skew",
           "soc_exp", "max_min", "householder", "cayley", "cayley_conv2d", "bjorck",
           "bcop_filter", "aol_rescaling", "convex_potential"]
