"""Suite lipconvnet: one SGD training step of a whole LipConvNet-10, its SOC layers on each
provider's backend, with the exact and the fast SOC gradient."""

from __future__ import annotations

import dataclasses
import functools
import zlib

import torch

import lipkernels

from ..core import DTYPE, Op, Suite, grid, seeded_normal

# One SGD training step (forward, cross-entropy, backward, update) of LipConvNet-10 (32 initial
# channels, MaxMin, 6 training terms) on 32x32 images, exact and fast SOC gradients. Batch 128
# with --full (the seed's training batch); 32 in the default grid, for the CPU's sake.
LIPCONVNET_DEPTH = 10
LIPCONVNET_BATCH, DEFAULT_LIPCONVNET_BATCH = 128, 32
LIPCONVNET_TRAIN_TERMS = 6


@dataclasses.dataclass(frozen=True)
class Network:
    """A seeded LipConvNet training batch: images (batch, 3, 32, 32), standard normal, and class
    labels; the network itself is built, from a fixed seed, by each measurement."""

    batch: int
    depth: int = LIPCONVNET_DEPTH
    init_channels: int = 32
    classes: int = 10

    @property
    def label(self) -> str:
        return f"B{self.batch}-D{self.depth}-C{self.init_channels}-H32-W32"

    def inputs(self):
        """((images, labels), None)."""
        images = seeded_normal(self.label, (self.batch, 3, 32, 32))
        generator = torch.Generator().manual_seed(zlib.crc32(f"{self.label}/y".encode()))
        return (images, torch.randint(self.classes, (self.batch,), generator=generator)), None

    def network(self, grad_mode: str) -> torch.nn.Module:
        """LipConvNet-depth in training mode, with the same initial weights on every call."""
        from lipkernels.nn import LipConvNet

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return LipConvNet(self.depth, self.init_channels, self.classes,
                              train_terms=LIPCONVNET_TRAIN_TERMS, grad_mode=grad_mode).train()


def _train_step():
    """A training-step function for one measurement: the first call builds the seeded network
    (on the images' device) and its optimizer, every call runs one SGD step (the seed's lr 0.1,
    momentum 0.9, weight decay 5e-4) and returns the step's loss. The layers run on whatever
    backend the provider's context selects."""
    state = {}

    def step(images, labels, case):
        if not state:
            model = case.data.network(case.grad_mode).to(images.device)
            state.update(model=model, optimizer=torch.optim.SGD(
                model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4))
        state["optimizer"].zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(state["model"](images), labels)
        loss.backward()
        state["optimizer"].step()
        return loss

    return step


@functools.cache
def _exact_initial_loss(data: Network) -> float:
    """The cross-entropy of the seeded network's initial weights on the batch, in float64 on the
    CPU through the reference layers."""
    (images, labels), _ = data.inputs()
    with lipkernels.use_backend("reference"), torch.no_grad():
        model = data.network("exact").double()
        return torch.nn.functional.cross_entropy(model(images.double()), labels).item()


def _loss_error(loss, data: Network) -> float:
    """loss_err of a training step: |first loss - exact| / exact, the float64 reference loss."""
    exact = _exact_initial_loss(data)
    return abs(loss.item() - exact) / exact


TRAIN_STEP = Op(
    "lipconvnet_train_step",
    lambda fn, batch, _, case: fn(*batch, case),
    _loss_error,
    # Not an orthogonality measure: the agreement of the first step's loss.
    error_field="loss_err",
    trains=True,
    workload=_train_step)

SUITE = Suite(
    "lipconvnet",
    (TRAIN_STEP,),
    lambda full: grid((TRAIN_STEP,),
                      [Network(LIPCONVNET_BATCH if full else DEFAULT_LIPCONVNET_BATCH)], (DTYPE,),
                      [{"terms": LIPCONVNET_TRAIN_TERMS, "mode": "fwd+bwd", "grad_mode": grad_mode}
                       for grad_mode in ("exact", "fast")]),
    (
        "- shapes: `B{batch}-D10-C32-H32-W32-T6`: one training step of LipConvNet-10 "
        "(lipkernels.nn.LipConvNet: 5 blocks of SOCConv2d, 32 initial channels, MaxMin, "
        "SOCLinear head, 6 training terms), the same seeded initial weights for every provider, "
        "on seeded normal images and labels: forward, cross-entropy, backward, SGD update "
        "(lr 0.1, momentum 0.9, weight decay 5e-4). Batch 128 with --full, 32 by default. "
        "`-fast`: the SOC layers use the NeurIPS 2022 fast gradient. Provider reference: the "
        "same network with every op on the reference backend; cpp / triton / cuda: on that "
        "backend",
        "- loss_err: |first step's loss - exact| / exact, exact the float64 loss of the same "
        "initial network and batch through the reference ops (agreement of the whole forward "
        "pass, not an orthogonality measure)"),
    "lipconvnet at batch 128")
