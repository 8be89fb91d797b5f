"""Pure-PyTorch convex potential step: the oracle for every convex_potential kernel.

The residual step of the convex potential layers,
    z = x - W^T (scale * relu(W x + b)),
with W a "same" zero-padded convolution (odd k, padding k // 2, stride 1) or a matrix, and W^T
its adjoint (conv_transpose2d with the same padding, or the transposed matrix). It is the
gradient step x - grad f(x) on the convex potential f(x) = sum_c scale_c psi(w_c x + b_c),
psi' = relu, so its Jacobian I - W^T diag(scale * [W x + b > 0]) W has every eigenvalue in
[1 - max(scale) ||W||^2, 1]: the step is 1-Lipschitz whenever 0 <= scale <= 2 / ||W||^2.

- CPL (Meunier, Delattre, Araujo & Allauzen, "A Dynamical System Perspective for Lipschitz
  Neural Networks", ICML 2022; MILES-PSL/Convex-Potential-Layer `layers.py`): one scale
  h = 2 / (sigma^2 + eps) with sigma from a power iteration on the conv operator; the code applies
  h after the transposed convolution (`x - h * conv_transpose2d(relu(conv2d(x) + b))`), which a
  0-dim `scale` here reproduces operation for operation.
- SLL (Araujo, Havens, Delattre, Allauzen & Hu, "A Unified Algebraic Perspective on Lipschitz
  Neural Networks", ICLR 2023): one scale per inner channel, 2 / T_c from the AOL-style bound
  T >= W W^T, applied to the activation before the transposed convolution, as a (C_inner,)
  `scale` here does.

The seed's padding is fixed at 1 (k = 3); here it is k // 2 for every odd k, the same map at k = 3.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def same_padding(weight: torch.Tensor) -> tuple[int, ...]:
    """The "same" zero padding (k1 // 2, k2 // 2) of a conv filter (C_inner, C, k1, k2) with odd
    k: the step maps an image to an image of its own size."""
    return tuple(k // 2 for k in weight.shape[2:])


def convex_potential(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     scale: torch.Tensor) -> torch.Tensor:
    """z = x - W^T (scale * relu(W x + b)) for x (B, C, H, W) and a filter `weight`
    (C_inner, C, k1, k2), or x (..., C) and a matrix `weight` (C_inner, C); `bias` (C_inner,) or
    None; `scale` 0-dim (CPL's h, applied after W^T as the seed does) or (C_inner,) (SLL's per
    channel factors, applied to the activation)."""
    convolution = weight.dim() == 4
    if convolution:
        padding = same_padding(weight)
        activation = F.relu(F.conv2d(x, weight, bias, padding=padding))
    else:
        activation = F.relu(F.linear(x, weight, bias))
    per_channel = scale.dim() == 1
    if per_channel:
        activation = activation * (scale.view(-1, 1, 1) if convolution else scale)
    if convolution:
        residual = F.conv_transpose2d(activation, weight, padding=padding)
    else:
        residual = F.linear(activation, weight.t())
    return x - residual if per_channel else x - scale * residual
