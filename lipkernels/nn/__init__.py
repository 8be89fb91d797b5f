"""nn.Module layers over the lipkernels ops (DESIGN.md §1: lipkernels/nn/<layer>.py)."""

from .householder import HouseHolder
from .max_min import MaxMin

__all__ = ["MaxMin", "HouseHolder"]
