"""nn.Module layers over the lipkernels ops (docs/design.md §1: lipkernels/nn/<layer>.py)."""

from ._eval_cache import cached
from .aol import AOLConv2d, AOLLinear
from .bcop import BCOPConv2d
from .bjorck import BjorckLinear
from .cayley import CayleyConv2d, CayleyLinear
from .convex_potential import CPLConv2d, CPLLinear, SLLConv2d, SLLLinear
from .householder import HouseHolder
from .lipconvnet import LipConvNet
from .max_min import GroupSort, MaxMin
from .residual import Residual
from .soc import SOCConv2d, SOCLinear
from .swap import SwapReport, swap

__all__ = ["SOCConv2d", "SOCLinear", "CayleyConv2d", "CayleyLinear", "MaxMin", "GroupSort",
           "HouseHolder", "BjorckLinear", "BCOPConv2d", "LipConvNet", "Residual", "cached", "swap",
           "SwapReport", "CPLConv2d", "CPLLinear", "SLLConv2d", "SLLLinear", "AOLConv2d",
           "AOLLinear"]
