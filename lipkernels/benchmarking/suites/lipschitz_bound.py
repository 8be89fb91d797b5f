"""Suite lipschitz_bound: the provable Lipschitz bound of a whole LipConvNet-10
(`LipConvNet.lipschitz_bound()`), against the exact Fantastic Four bound a user would otherwise
compute."""

from __future__ import annotations

import dataclasses

import torch

from lipkernels._spectral import bound_matrices

from ..core import DTYPE, Op, Suite, grid

# LipConvNet-10 (MaxMin) with 16 initial channels (SOC layers of 16 to 1024 channels) in eval
# (15 terms: the certification call) and in training (6 terms, the default mode of a new
# network); 32 initial channels (up to 2048) with --full.
BOUND_DEPTH = 10
BOUND_CHANNELS, DEFAULT_BOUND_CHANNELS = (16, 32), (16,)
BOUND_MODES = ("eval", "train")


@dataclasses.dataclass(frozen=True)
class BoundNetwork:
    """A seeded LipConvNet-10 whose bound is measured, in `network_mode`. Its one input is a
    placeholder that says the measurement's device; the network is built, from a fixed seed, by
    each measurement."""

    init_channels: int
    network_mode: str
    depth: int = BOUND_DEPTH

    @property
    def label(self) -> str:
        return f"D{self.depth}-C{self.init_channels}-H32-W32-{self.network_mode}"

    def inputs(self):
        """((placeholder,), None)."""
        return (torch.zeros(1),), None

    def network(self) -> torch.nn.Module:
        """The network with the same seeded weights on every call, its vectors refreshed by 50
        power iterations (the NeurIPS 2022 recipe's once-per-epoch refresh)."""
        from lipkernels.nn import LipConvNet

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            network = LipConvNet(self.depth, self.init_channels)
        network.update_vectors(50)
        return network.train(self.network_mode == "train")


def _bound_workload(bound):
    """A factory of measurement functions: the first call builds the case's network on the
    device, every call returns bound(network) as a float64 tensor."""
    def factory():
        state = {}

        def measure(device, case):
            if "network" not in state:
                state["network"] = case.data.network().to(device)
            return torch.tensor(bound(state["network"]), dtype=torch.float64)

        return measure

    return factory


@torch.no_grad()
def fantastic_four_bound(network) -> float:
    """What a user would compute without a certificate of the operator norm: per SOC layer the
    exact Fantastic Four bound a = k min_q sigma_max(M_q(S_n)) (float64 SVDs of the four
    reshapes), then the series tail 1 + sum_{i >= terms} a^i / i!, each enlarged by 1e-10 for
    rounding; the product over the layers."""
    from lipkernels.nn.soc import exp_series_tail

    total = 1.0
    for layer in network.soc_layers():
        S = layer._normalized_filter(store_vectors=False).double()
        a = layer.kernel_size * min(torch.linalg.matrix_norm(m, ord=2).item()
                                    for m in bound_matrices(S))
        total *= 1 + exp_series_tail(a * (1 + 1e-10), layer.terms) * (1 + 1e-10)
    return total


def _excess(bound, data) -> float:
    """bound - 1: how far the certified constant is above that of an isometry."""
    return bound.item() - 1.0


LIPSCHITZ_BOUND = Op(
    "lipconvnet_lipschitz_bound",
    lambda fn, inputs, _state, case: fn(inputs[0].device, case),
    _excess,
    error_field="bound_excess",
    workload=_bound_workload(lambda network: network.lipschitz_bound()),
    reference_row=_bound_workload(fantastic_four_bound))


def _networks(full: bool) -> list[BoundNetwork]:
    return [BoundNetwork(c, mode) for c in (BOUND_CHANNELS if full else DEFAULT_BOUND_CHANNELS)
            for mode in BOUND_MODES]


SUITE = Suite(
    "lipschitz_bound",
    (LIPSCHITZ_BOUND,),
    lambda full: grid((LIPSCHITZ_BOUND,), _networks(full), (DTYPE,), [{"mode": "fwd"}]),
    (
        "- shapes: `D10-C{init}-H32-W32-{eval|train}`: a seeded LipConvNet-10 "
        "(lipkernels.nn.LipConvNet, MaxMin, 16 initial channels: SOC layers of 16 to 1024 "
        "channels; 32 with --full: up to 2048), vectors refreshed by 50 power iterations, in "
        "eval (15 terms) or training (6 terms) mode. Mode fwd: the bound, no gradient",
        "- providers: `reference` is the exact Fantastic Four bound of each SOC layer "
        "(float64 SVDs of the four reshapes of S_n) with the series tail, multiplied: what a "
        "user would compute without a certificate of the operator norm; cpp runs "
        "`LipConvNet.lipschitz_bound()` (Cholesky certificates of the frequency blocks, "
        "default tolerance 2^-20). The layers' ops run on the provider's backend",
        "- bound_excess: the bound minus 1 (smaller is tighter; the network's true constant "
        "is about 1)"),
    "lipschitz_bound of LipConvNet-10 with 16 and 32 initial channels")
