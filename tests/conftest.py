"""Test setup: Triton runs through its interpreter on CPU-only machines.

TRITON_INTERPRET must be set before triton (and so lipkernels) is imported; on a machine with a
GPU the real compiler is used and the CUDA parametrisations run (mark `gpu`).
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
