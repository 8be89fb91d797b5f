"""Pure-PyTorch HouseHolder activation: the oracle for every householder kernel.

Singla, Singla & Feizi, "Improved techniques for deterministic l2 robustness", NeurIPS 2022
(``HouseHolder`` in the SOC code's ``custom_activations.py``). Channels pair up in the SOC "halves"
convention, a = x[:, i], b = x[:, i + C/2], with one learnable angle theta_i per pair. With
n = (sin(theta/2), -cos(theta/2)) the pair is reflected by the Householder matrix
    R = I - 2 n n^T = [[cos theta, sin theta], [sin theta, -cos theta]]
where <(a, b), n> = a sin(theta/2) - b cos(theta/2) > 0, and passes unchanged elsewhere. Both
branches are orthogonal and they agree on the boundary <(a, b), n> = 0 (R fixes it), so the map
is continuous, piecewise orthogonal and norm-preserving. With theta = pi/2 it is MaxMin with the
two halves swapped: R swaps a and b exactly where a > b, giving (min(a, b), max(a, b)).
"""

from __future__ import annotations

import torch

from .max_min import merge_pairs, split_pairs


def householder(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """The HouseHolder activation of x (B, C, *spatial), C even, with angles theta (C/2,).

    Follows the seed code, which takes the pass-through branch where selector <= 0: a NaN
    selector (NaN in x or theta) therefore takes the reflection, whose output is NaN, as the seed's
    mask products give. The arithmetic runs in the promoted dtype of x and theta (float32 for half
    activations with a float32 theta, as under autocast) and the output has x's dtype.
    """
    a, b = split_pairs(x, "halves")
    theta = theta.reshape(1, -1, *([1] * (x.dim() - 2)))
    selector = a * torch.sin(theta / 2) - b * torch.cos(theta / 2)
    cos, sin = torch.cos(theta), torch.sin(theta)
    passes = selector <= 0
    first = torch.where(passes, a, a * cos + b * sin)
    second = torch.where(passes, b, a * sin - b * cos)
    return merge_pairs(first, second, "halves").to(x.dtype)
