"""Registration of soc_exp: the per-backend entry points.

No C++, CUDA or Triton kernel exists for soc_exp in this build, so the table is empty and every
call runs the reference (an explicit kernel backend raises "soc_exp has no ... kernel"). The
kernel slice fills it with `kernel_ops("soc_exp", ...)` as power_iteration.py does.
"""

from __future__ import annotations

from typing import Callable

# {backend: forward op} for every kernel backend built here (the reference is not an op).
KERNELS: dict[str, Callable] = {}
