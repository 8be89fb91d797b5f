"""Training-step time of the peers' layers on their own code and adapted to lipkernels
(`lipkernels.adapters`), on this machine's CPU: forward and backward of a mean-square loss, median
of 15 after 3 warm-up steps, random data. Needs orthogonium, deel-torchlip and einops.

    python benchmarks/adapters.py      # prints a Markdown table
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from unittest import mock

import torch
from deel.torchlip import SpectralConv2d, SpectralLinear
from orthogonium.layers.conv.AOC import AdaptiveOrthoConv2d
from orthogonium.layers.linear.ortho_linear import OrthoLinear
from orthogonium.legacy import skew_ortho_conv

from lipkernels.adapters import orthogonium, torchlip


@contextlib.contextmanager
def _cuda_on_the_cpu():
    """orthogonium's legacy SOC builds its tensors on CUDA (`.cuda()`, `device="cuda"`); here on
    the CPU."""
    randn = torch.randn
    with mock.patch.object(torch.Tensor, "cuda", lambda self, *args, **kwargs: self), \
            mock.patch.object(torch, "randn",
                              lambda *args, device=None, **kwargs: randn(*args, **kwargs)):
        yield


def cases():
    with _cuda_on_the_cpu():
        soc = skew_ortho_conv.SOC(64, 64, 3)
    images = torch.randn(64, 64, 16, 16)
    return [("orthogonium OrthoLinear 512 -> 512, batch 256", OrthoLinear(512, 512),
             torch.randn(256, 512), orthogonium),
            ("orthogonium AdaptiveOrthoConv2d 64 ch 3x3, 16x16, batch 64",
             AdaptiveOrthoConv2d(64, 64, 3), images, orthogonium),
            ("orthogonium legacy SOC 64 ch 3x3, 16x16, batch 64", soc, images, orthogonium),
            ("deel-torchlip SpectralLinear 512 -> 512, batch 256", SpectralLinear(512, 512),
             torch.randn(256, 512), torchlip),
            ("deel-torchlip SpectralConv2d 64 ch 3x3, 16x16, batch 64",
             SpectralConv2d(64, 64, 3, padding=1), images, torchlip)]


def step_ms(model, x, warmup=3, runs=15) -> float:
    def step():
        model.zero_grad()
        model(x).square().mean().backward()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main():
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| layer, training step | peer ms | adapted ms | speed-up |\n|---|---:|---:|---:|")
    for name, layer, x, adapter in cases():
        adapted = copy.deepcopy(layer)
        adapter.adapt(adapted)
        peer, ours = step_ms(layer.train(), x), step_ms(adapted.train(), x)
        print(f"| {name} | {peer:.2f} | {ours:.2f} | {peer / ours:.2f}x |")


if __name__ == "__main__":
    main()
