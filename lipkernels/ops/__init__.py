"""Op registration: fake impls, autograd formulas and backend entry points, one module per op.

`KERNELS` is the one registry the functional API dispatches through: for each public op, its
entry point per kernel backend built here ({backend: entry}), each entry with the signature and
result of the op's reference in lipkernels.reference. Adding an op adds its module and one line
below.
"""

from . import aol_rescaling
from . import bcop_filter, bjorck, cayley, cayley_conv2d, conv_spectral_bounds
from . import convex_potential
from . import conv_power_iteration
from . import frequency_power_iteration
from . import householder, max_min, power_iteration, soc_exp

KERNELS = {
    "power_iteration": power_iteration.KERNELS,
    "conv_spectral_bounds": conv_spectral_bounds.KERNELS,
    "conv_power_iteration": conv_power_iteration.KERNELS,
    "frequency_power_iteration": frequency_power_iteration.KERNELS,
    "soc_exp": soc_exp.KERNELS,
    "max_min": max_min.KERNELS,
    "householder": householder.KERNELS,
    "cayley": cayley.KERNELS,
    "cayley_conv2d": cayley_conv2d.KERNELS,
    "bjorck": bjorck.KERNELS,
    "bcop_filter": bcop_filter.KERNELS,
    "aol_rescaling": aol_rescaling.KERNELS,
    "convex_potential": convex_potential.KERNELS,
}
