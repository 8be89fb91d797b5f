"""What the two spectral-norm suites, power_iteration and conv_spectral_bounds, share: the seed
filters, the iteration counts and modes, reference-compile's cases and the header's notes."""

from __future__ import annotations

from ..core import DTYPE, Case, Filter, grid

# Square filters of the SOC LipConvNet (docs/design.md §5): 32..512 channels in the stride-1
# layers, 128..2048 after the pixel-unshuffle of the strided ones, plus 16 for small nets.
SEED_CHANNELS = (16, 32, 64, 128, 256, 512, 1024, 2048)
# The default (reduced) grid: one small, one mid, one large filter, so that the default CLI run
# finishes in a few minutes on a 2-core CPU (a 1024-channel 3x3 reference call at 50 iterations
# alone takes seconds there).
DEFAULT_CHANNELS = (16, 64, 256)
KERNEL_SIZES = (1, 3)  # 3x3 stride-1 layers; 1x1 in the last block and for SOCLinear
ITERS = (1, 50)  # one iteration per training step with persistent vectors; 50 at initialisation
MODES = ("fwd", "fwd+bwd")  # fwd+bwd: the bound / sigma, then its gradient w.r.t. the weight


def filters(full: bool) -> list[Filter]:
    return [Filter(c, k) for c in (SEED_CHANNELS if full else DEFAULT_CHANNELS)
            for k in KERNEL_SIZES]


def cases(ops, data) -> list[Case]:
    """Every op on every datum at each iteration count and mode, float32."""
    return grid(ops, data, (DTYPE,), [{"iters": iters, "mode": mode} for iters in ITERS
                                      for mode in MODES])


def compiled_on(representative: str, at_50_iterations: tuple[str, ...] = ()):
    """reference-compile's cases of a spectral-norm op. Inductor unrolls the reference's Python
    loop: compiling fantastic_four on a 64-channel 3x3 filter took ~10 s at 1 iteration and ~1 min
    at 50 on a busy 2-core CPU, per graph (shape family, iteration count and grad mode). So: 1
    iteration on the `representative` shape by default, on every shape with --full, plus with
    --full the representative at 50 iterations in the modes `at_50_iterations`."""
    def covers(case: Case, full: bool) -> bool:
        if case.iters == 1:
            return full or case.data.label == representative
        return full and case.data.label == representative and case.mode in at_50_iterations

    return covers


FULL_GRID = (f"filters with {SEED_CHANNELS} channels instead of {DEFAULT_CHANNELS}, and "
             "reference-compile on every 1-iteration shape")

NOTES = (
    "- ortho_err: for these spectral-norm ops, the relative error |estimate - exact| / exact "
    "of the returned sigma (power_iteration, max over the batch) or bound(s) "
    "(conv_spectral_bounds: max over the four; fantastic_four: the min bound) against the "
    "exact value "
    "sqrt(k_h k_w) sigma_max from torch.linalg.svdvals in float64 of the same data. Every "
    "provider starts from the same seeded random vectors (but orthogonium, whose module draws "
    "its own), so 1-iteration rows show the error of one iteration, equal across providers up "
    "to rounding",
    "- shapes: `C{C_out}-C{C_in}-k{k}-T{iters}` a conv filter; `B{batch}-M{m}-N{n}-T{iters}` "
    "a batch of m x n matrices: for power_iteration the F4 reshapes of the same seeded filters "
    "(B2-M{3C}-N{3C}: M_1, M_2 and B2-M{C}-N{9C}: M_3, M_4 of a 3x3 filter; B4-M{C}-N{C}: all "
    "four of a 1x1 filter), B256-M16-N16 and B5-M128-N128 seeded random; mode fwd+bwd adds the "
    "gradient of the estimate's sum w.r.t. the weight")
COMPILE_NOTE = (
    "- reference-compile: `torch.compile(reference, dynamic=True)`, compile time excluded "
    "(untimed first call); only on 1-iteration cases (a representative shape per op in the "
    "default grid, all shapes with --full) plus fantastic_four C64-C64-k3-T50 fwd with "
    "--full, because inductor unrolls the 50-iteration loop and takes about a minute per "
    "graph to compile it on a 2-core CPU")
