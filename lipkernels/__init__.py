"""lipkernels: fused Triton and C++/CUDA kernels for 1-Lipschitz and orthogonal layers.

Ops live in ``lipkernels.functional`` (re-exported here); their pure-PyTorch references in
``lipkernels.reference``. ``use_backend`` / ``LIPKERNELS_BACKEND`` choose the implementation and
``build_info()`` reports what was compiled and what can run.
"""

__version__ = "0.1.0"

from ._backend import available_backends, build_info, use_backend  # noqa: E402
from . import functional  # noqa: E402
from .functional import *  # noqa: E402,F401,F403  (every public op: functional.__all__)
from . import nn  # noqa: E402  (layers; after the ops they wrap)
from .certification import Certification, certify  # noqa: E402
from .deployment import export  # noqa: E402
from .model_bound import lipschitz_bound  # noqa: E402

__all__ = ["available_backends", "build_info", "use_backend", "Certification", "certify",
           "export", "lipschitz_bound", *functional.__all__]
