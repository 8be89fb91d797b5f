"""Suite power_iteration: `lipkernels.power_iteration` on batches of matrices, the Fantastic Four
reshapes of the seed filters and batches of small matrices; peers orthogonium and
deel-torchlip."""

from __future__ import annotations

import dataclasses
import functools
import math

import torch

from lipkernels._conventions import bound_matrix_shapes
from lipkernels._spectral import bound_matrices

from ..core import Filter, Op, PeerAdapter, Suite, relative_error, seeded_normal, unit_rows
from . import _spectral

# Batches of small matrices beside the F4 reshapes: the per-frequency 16x16 blocks of a 16-channel
# conv on a 16x16 grid (Sedghi / Cayley style), and BCOP's 2k-1 = 5 square 128-channel matrices.
SMALL_BATCHES = ((256, 16, 16), (5, 128, 128))


@dataclasses.dataclass(frozen=True)
class Matrices:
    """A batch of matrices for power_iteration: the F4 reshapes `reshapes` (0-based indices of
    M_1..M_4, all of one shape) of a seed filter, or seeded random matrices when `source` is
    None."""

    batch: int
    rows: int
    cols: int
    source: Filter | None = None
    reshapes: tuple[int, ...] = ()

    @classmethod
    def f4(cls, source: Filter, reshapes: tuple[int, ...]) -> Matrices:
        shapes = {bound_matrix_shapes(source.shape)[q] for q in reshapes}
        (rows, cols), = shapes  # the batched op needs one matrix shape
        return cls(len(reshapes), rows, cols, source, reshapes)

    @property
    def label(self) -> str:
        return f"B{self.batch}-M{self.rows}-N{self.cols}"

    def _matrices(self, dtype) -> torch.Tensor:
        if self.source is None:
            return (seeded_normal(self.label, (self.batch, self.rows, self.cols))
                    / math.sqrt(self.cols)).to(dtype)
        reshaped = bound_matrices(self.source.weight().to(dtype))
        return torch.stack([reshaped[q] for q in self.reshapes])

    def inputs(self):
        """(matrices (B, m, n), right vectors (B, n)), float32 on the CPU."""
        u = unit_rows(seeded_normal(f"{self.label}/u", (self.batch, self.cols)))
        return self._matrices(torch.float32), u

    def exact_sigmas(self) -> torch.Tensor:
        return _exact_matrix_sigmas(self)


@functools.cache
def _exact_matrix_sigmas(data: Matrices) -> torch.Tensor:
    if data.source is not None:
        return data.source.exact_sigmas()[list(data.reshapes)]
    return torch.linalg.svdvals(data._matrices(torch.float64))[..., 0]


def _matrices(full: bool) -> list[Matrices]:
    """Each seed filter's F4 reshapes, batched by shape (M_1, M_2 and M_3, M_4 of a 3x3 filter;
    all four of a 1x1 one), then the small batches."""
    matrices = []
    for f in _spectral.filters(full):
        groups = ((0, 1), (2, 3)) if f.k > 1 else ((0, 1, 2, 3),)
        matrices += [Matrices.f4(f, group) for group in groups]
    return matrices + [Matrices(*shape) for shape in SMALL_BATCHES]


def _deel_torchlip_power_iteration():
    """deel-torchlip 1.0.5 `spectral_normalization(kernel, u (1, n), eps, maxiter)`, which takes
    one matrix: a loop over the batch. eps=0 so that it runs exactly `iters` iterations (it stops
    early once u moves less than eps)."""
    from deel.torchlip.normalizers import spectral_normalization

    def run(weight, u, iters):
        return torch.stack([spectral_normalization(w, u=u_row[None], eps=0.0, maxiter=iters)[2]
                            for w, u_row in zip(weight, u, strict=True)])

    return run


def _orthogonium_power_iteration():
    """orthogonium 0.0.4 `BatchedPowerIteration(shape)(X, n_iters)`, which returns X / (sigma + eps)
    and keeps its vectors in the module: sigma is read back from the norms. The module is built in
    the untimed first call, from its own random start (seeded here)."""
    from orthogonium.reparametrizers import BatchedPowerIteration

    module = None

    def run(weight, u, iters):
        nonlocal module
        if module is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                module = BatchedPowerIteration(tuple(weight.shape)).to(weight.device, weight.dtype)
        normalized = module(weight, n_iters=iters)
        return weight.flatten(-2).norm(dim=-1) / normalized.flatten(-2).norm(dim=-1) - module.eps

    return run


POWER_ITERATION = Op(
    "power_iteration",
    lambda fn, weight, u, case: fn(weight, u, case.iters)[0],
    relative_error(lambda data: data.exact_sigmas()),
    compiled_on=_spectral.compiled_on("B2-M192-N192"),
    graphs=True,
    peers={"orthogonium": PeerAdapter(_orthogonium_power_iteration),
           "deel-torchlip": PeerAdapter(_deel_torchlip_power_iteration)})

SUITE = Suite(
    "power_iteration",
    (POWER_ITERATION,),
    lambda full: _spectral.cases((POWER_ITERATION,), _matrices(full)),
    _spectral.NOTES,
    "power_iteration on the F4 reshapes of " + _spectral.FULL_GRID,
    _spectral.COMPILE_NOTE)
