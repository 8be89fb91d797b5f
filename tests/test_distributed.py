"""Data-parallel training of lipkernels layers: DDP and FSDP2 (fully_shard) on 2 CPU processes.

Two gloo processes on 127.0.0.1 train the same small model on different data for a few steps;
parameters, power-iteration buffers and Lipschitz bounds must then be identical on both ranks,
and the parameters must equal those of one process training on the whole batch (the gradient
all-reduce of 2 ranks averages what one process computes at once). Bounded: 3 steps, and a
timeout on the process group.
"""

from __future__ import annotations

import datetime
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lipkernels.nn import CayleyConv2d, CayleyLinear, MaxMin, SOCConv2d, SOCLinear

WORLD = 2
STEPS = 3
BATCH = 4  # per rank


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.soc = SOCConv2d(3, 4)
        self.act = MaxMin()
        self.cayley = CayleyConv2d(4, 4, stride=2)
        self.cayley_linear = CayleyLinear(64, 16)
        self.head = SOCLinear(16, 10)

    def forward(self, x):
        x = self.cayley(self.act(self.soc(x)))
        return self.head(self.cayley_linear(x.flatten(1)))


def _data(step: int):
    generator = torch.Generator().manual_seed(100 + step)
    x = torch.randn(WORLD * BATCH, 3, 8, 8, generator=generator)
    labels = torch.randint(0, 10, (WORLD * BATCH,), generator=generator)
    return x, labels


def _train(model, rank: int | None):
    """STEPS SGD steps; rank None trains on the whole batch, a rank on its slice."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(STEPS):
        x, labels = _data(step)
        if rank is not None:
            x, labels = x[rank * BATCH:(rank + 1) * BATCH], labels[rank * BATCH:(rank + 1) * BATCH]
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _full(tensor: torch.Tensor) -> torch.Tensor:
    full_tensor = getattr(tensor, "full_tensor", None)
    return (full_tensor() if full_tensor is not None else tensor).detach().clone()


def _lipschitz_layers(model):
    return [m for m in model.modules() if hasattr(m, "lipschitz_bound")]


def _summary(model):
    """State (full parameters and buffers) and the bounds of every layer, train and eval."""
    state = {name: _full(value) for name, value in model.named_parameters()}
    state.update({name: _full(value) for name, value in model.named_buffers()})
    bounds = [layer.lipschitz_bound() for layer in _lipschitz_layers(model)]
    model.eval()
    bounds += [layer.lipschitz_bound() for layer in _lipschitz_layers(model)]
    return state, bounds


def _worker(rank: int, port: int, wrapper: str, out_dir: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=120))
    try:
        torch.manual_seed(0)
        model = _Model()
        if wrapper == "ddp":
            wrapped = torch.nn.parallel.DistributedDataParallel(model)
        else:
            from torch.distributed.fsdp import fully_shard

            for layer in (model.soc, model.cayley, model.cayley_linear, model.head):
                fully_shard(layer)
            wrapped = fully_shard(model)
        _train(wrapped, rank)
        torch.save(_summary(model), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
@pytest.mark.parametrize("wrapper", ["ddp", "fsdp2"])
def test_data_parallel_ranks_agree(wrapper, tmp_path):
    mp.start_processes(_worker, args=(_free_port(), wrapper, str(tmp_path)), nprocs=WORLD,
                       join=True, start_method="spawn")
    (state0, bounds0), (state1, bounds1) = (torch.load(tmp_path / f"rank{r}.pt")
                                            for r in range(WORLD))
    assert state0.keys() == state1.keys() and len(bounds0) == 8
    for name in state0:
        assert torch.equal(state0[name], state1[name]), name
    assert bounds0 == bounds1

    torch.manual_seed(0)
    single = _Model()
    _train(single, None)
    state, bounds = _summary(single)
    for name in state:
        torch.testing.assert_close(state0[name], state[name], rtol=1e-5, atol=1e-6, msg=name)
    assert all(abs(a - b) <= 1e-5 * b for a, b in zip(bounds0, bounds))
