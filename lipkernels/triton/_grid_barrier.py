"""The grid-wide barrier of the persistent Triton kernels (power_iteration,
conv_spectral_bounds, the soc_exp series): phases of one launch separated on the GPU without
returning to the host. Their launchers run one phase per launch where the programs are not all
resident at once (the interpreter), through `_common.phase_spans`.
"""

import triton
import triton.language as tl


@triton.jit
def grid_barrier(counter_ptr, arrivals):
    """Wait until the launch-wide counter at counter_ptr reaches `arrivals` (the k-th barrier of
    a launch waits for k arrivals of every program), every store a program made before it
    visible to all after it: a CTA barrier (all threads' stores issued), one release increment
    per program, acquire reads of the counter until it is reached, a CTA barrier. Every program
    of the launch must be resident at once (the launcher keeps the grid at the SM count).
    Loads after it may be cached in L1 (`.ca`): PTX's cache operators are performance hints
    that leave the memory model's ordering as it is, so they see every store released before."""
    tl.debug_barrier()
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")
    arrived = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    while arrived < arrivals:
        arrived = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()
