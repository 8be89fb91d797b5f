"""Suite bjorck: `lipkernels.bjorck` (20 iterations, order 1, beta 0.5, Frobenius scaling: the
seeds' defaults) on the matrix stacks the Björck layers orthogonalise: BCOP's 2k - 1 = 5 square
C x C matrices of a 3x3 layer (k = 3), and the BjorckLinear weights of LConvNet's Large network."""

from __future__ import annotations

import dataclasses

import torch

from ..core import DTYPE, Op, Suite, grid, seeded_normal, weighted_sum_loss

# (batch, rows, cols): BCOP 3x3 layers of 64 and 512 channels (the targets) and 32, 128
# and 256 with --full; LConvNet Large's linear layers 4096 -> 512 (a wide 512 x 4096 weight) and
# 512 -> 512.
STACKS = ((5, 32, 32), (5, 64, 64), (5, 128, 128), (5, 256, 256), (5, 512, 512), (1, 512, 4096),
          (1, 512, 512))
DEFAULT_STACKS = ((5, 64, 64), (5, 512, 512), (1, 512, 4096))
ITERS = 20
MODES = ("fwd", "fwd+bwd")


@dataclasses.dataclass(frozen=True)
class Stack:
    """A seeded batch of matrices as a Björck layer holds them after some training: orthogonal
    (the seeds' initialisation, orthogonal_ with a gain) plus a perturbation of relative size
    0.3, so singular values about 0.4 to 1.6, which 20 iterations orthogonalise to float32
    rounding; and the fixed random weights of the fwd+bwd loss sum(Q * dQ)."""

    batch: int
    rows: int
    cols: int

    @property
    def label(self) -> str:
        return f"B{self.batch}-M{self.rows}-N{self.cols}"

    def matrices(self) -> torch.Tensor:
        """W (B, m, n), float32 on the CPU."""
        shape = (self.batch, self.rows, self.cols)
        tall = (self.batch, max(self.rows, self.cols), min(self.rows, self.cols))
        orthogonal = torch.linalg.qr(seeded_normal(f"{self.label}/Q", tall))[0]
        if self.rows < self.cols:
            orthogonal = orthogonal.mT
        noise = seeded_normal(self.label, shape) / max(self.rows, self.cols) ** 0.5
        return orthogonal + 0.3 * noise

    def inputs(self):
        """(W (B, m, n), dQ (B, m, n)), float32 on the CPU."""
        return self.matrices(), seeded_normal(f"{self.label}/dQ",
                                              (self.batch, self.rows, self.cols))


def orthogonality_error(Q: torch.Tensor, data: Stack) -> float:
    """max |sigma_i(Q) - 1| over the batch, from float64 singular values."""
    return (torch.linalg.svdvals(Q.double()) - 1).abs().max().item()


BJORCK = Op(
    "bjorck",
    lambda fn, W, dQ, case: fn(W, case.iters),
    orthogonality_error,
    loss=weighted_sum_loss,
    compiled_on=lambda case, full: full or case.data.label == "B5-M64-N64",
    graphs=True)

SUITE = Suite(
    "bjorck",
    (BJORCK,),
    lambda full: grid((BJORCK,), [Stack(*s) for s in (STACKS if full else DEFAULT_STACKS)],
                      (DTYPE,), [{"iters": ITERS, "mode": mode} for mode in MODES]),
    ("- shapes: `B{batch}-M{m}-N{n}-T{iters}`: B5-M{C}-N{C} the 2k - 1 = 5 matrices of a 3x3 BCOP "
     "layer of C channels; B1-M512-N4096 and B1-M512-N512 the BjorckLinear weights of "
     "LConvNet's Large network (4096 -> 512 -> 512); seeded orthogonal matrices plus 0.3 times "
     "N(0, 1 / max(m, n)) noise (a trained layer's); mode fwd+bwd adds the gradient of "
     "sum(Q * dQ) for fixed random dQ",
     "- ortho_err: max |sigma_i(Q) - 1| of the output, singular values in float64"),
    f"the stacks {STACKS} instead of {DEFAULT_STACKS}, and reference-compile on every stack",
    "- reference-compile: `torch.compile(reference, dynamic=True)`, compile time excluded "
    "(untimed first call); on B5-M64-N64 by default, every stack with --full")
