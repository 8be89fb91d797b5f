"""Pure-PyTorch MaxMin: the oracle for every max_min kernel, and the channel-pair split that the
HouseHolder activation (`lipkernels.reference.householder`) shares.

MaxMin is GroupSort with groups of two (Anil, Lucas & Grosse, "Sorting out Lipschitz function
approximation", ICML 2019): every pair of channels (a, b) becomes (max(a, b), min(a, b)). It is a
permutation of each pair, hence 1-Lipschitz and norm-preserving. Two pairings are in use, and they
differ by a channel permutation (cemanil/LNets issue #8):

* "halves", the SOC convention (Singla & Feizi, ICML 2021, ``custom_activations.py``): a is the
  first half of the channels, b the second, out = cat(max(a, b), min(a, b));
* "pairs", GroupSort(2) in its default implementation: channels (2i, 2i+1) -> (max, min).
"""

from __future__ import annotations

import torch


def split_pairs(x: torch.Tensor, pairing: str = "halves"):
    """(a, b), each (B, C/2, *spatial): the first and the second channel of every pair of
    x (B, C, *spatial), C even. Both are views of x."""
    if pairing == "halves":
        return x.chunk(2, dim=1)
    pairs = x.unflatten(1, (-1, 2))
    return pairs.select(2, 0), pairs.select(2, 1)


def merge_pairs(first: torch.Tensor, second: torch.Tensor, pairing: str = "halves") -> torch.Tensor:
    """The inverse of `split_pairs`: (B, C, *spatial) with `first` and `second` as the pairs."""
    if pairing == "halves":
        return torch.cat((first, second), dim=1)
    return torch.stack((first, second), dim=2).flatten(1, 2)


def max_min(x: torch.Tensor, pairing: str = "halves") -> torch.Tensor:
    """(max(a, b), min(a, b)) for every channel pair (a, b) of x (B, C, *spatial), C even.

    Written with torch.where(a >= b, ...) rather than torch.maximum / torch.minimum so that its
    gradient has the kernels' tie rule: where a == b the pair keeps its order, max's gradient goes
    to a and min's to b (torch.maximum would split a tie's gradient 0.5 / 0.5). The output is a
    permutation of each pair, so a NaN in stays a NaN out (a NaN compares false and swaps its
    pair).
    """
    a, b = split_pairs(x, pairing)
    return swap_pairs(x, a >= b, pairing)


def swap_pairs(x: torch.Tensor, keep: torch.Tensor, pairing: str = "halves") -> torch.Tensor:
    """Every channel pair (a, b) of x as (a, b) where `keep` (B, C/2, *spatial) is true and as
    (b, a) elsewhere. A swap is its own inverse and its own transpose, so with max_min's mask
    keep = (a >= b) this is both max_min and its backward (the gradient routed back through each
    pair's permutation), in differentiable torch ops."""
    a, b = split_pairs(x, pairing)
    return merge_pairs(torch.where(keep, a, b), torch.where(keep, b, a), pairing)
