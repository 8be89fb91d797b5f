"""Pure-PyTorch power iteration on a convolution: the oracle of every conv_power_iteration kernel.

The operator is the convolution itself, A: R^(C_in x H x W) -> R^(C_out x H' x W'),
A x = conv2d(x, W, stride, padding) with zero padding, as the Convex Potential Layer code
(Meunier et al., ICML 2022; MILES-PSL/Convex-Potential-Layer, util.py,
SpectralNormPowerMethod._compute_conv) and LCNN's conv spectral normalisation (Srinivas et al.,
NeurIPS 2022; models/conv_spectral_norm.py, with the layer's stride and padding) estimate ||A||
with persistent vectors; here, as in CPL, the input-shaped u (1, C_in, H, W). Its adjoint
A^T is conv_transpose2d with the same stride and padding and the output_padding
(n + 2 p - k) mod s per axis: conv_transpose2d's output ends with the last window, and that
many last rows (or columns) of the padded input lie in no window, so without it the result
would be short of u's shape. Each of `iters` iterations: v = normalize(A u);
u = normalize(A^T v); then sigma = <v, A u>, normalize as `power_iteration`'s
(x / max(||x||, NORMALIZE_EPS), the norm over the whole tensor).

Deliberate differences from the seed code:
- Padding: the CPL seed pads u explicitly by 1 and crops conv_transpose2d's output by 1, which is
  padding=1 here, the "same" padding of its 3 x 3 filters; here any padding (default k // 2 per
  axis), any stride and any kernel size, odd or even.
- LCNN persists the output-shaped vector instead and runs the half steps in the other order
  (from it, the input-shaped one, then the output-shaped one again), with no output_padding
  (its transposed convolution returns a shorter image where the stride skips rows).
- normalize: the CPL seed divides by ||x|| + 1e-12, here by max(||x||, 1e-12) as F.normalize and
  `power_iteration` do; the two differ only for vectors of norm near 1e-12.
- Gradient: the CPL seed computes v with gradient, so its d sigma has, besides <v, dA u>, the term
  <A u, (I - v v^T) dA u_prev> / ||A u_prev|| through v = normalize(A u_prev). Here, as in
  spectral normalisation (Miyato et al., ICLR 2018) and `power_iteration`, u and v are
  constants: d sigma / d W is the weight gradient of conv2d(u, W) for the output gradient v (the
  correlation of u with v). At the fixed point A u is parallel to v and the seed's extra term
  vanishes: both are the derivative of ||A||.

The iteration runs on detached tensors rather than under torch.no_grad, so that forward-mode AD
sees the same derivative d sigma = <v, dA u> as reverse mode; the gradient is constant in W, so
every second derivative in W is zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._conventions import adjoint_output_padding, conv_stride_padding
from .power_iteration import NORMALIZE_EPS


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / torch.linalg.vector_norm(x).clamp_min(NORMALIZE_EPS)


def transposed_conv(v: torch.Tensor, weight: torch.Tensor, image_size, stride, padding):
    """A^T v: the adjoint of x -> conv2d(x, weight, stride, padding) on image_size (H, W) inputs,
    for v of the conv's output shape (stride and padding pairs)."""
    output_padding = adjoint_output_padding(image_size, weight.shape[2:], stride, padding)
    return F.conv_transpose2d(v, weight, stride=stride, padding=padding,
                              output_padding=output_padding)


def conv_power_iteration(weight: torch.Tensor, u: torch.Tensor, iters: int = 1, stride=1,
                         padding=None):
    """Largest singular value of the conv map x -> conv2d(x, weight, stride, padding) from the
    persistent input-shaped vector `u` (1, C_in, H, W).

    Repeats `iters` times: v = normalize(conv2d(u)); u = normalize(conv_transpose2d(v)). Returns
    (sigma (), u (1, C_in, H, W)) with sigma = <v, conv2d(u)>, differentiable w.r.t. `weight`
    with u and v held constant.
    """
    stride, padding = conv_stride_padding(weight.shape[2:], stride, padding)
    constant, u = weight.detach(), u.detach()
    for _ in range(iters):
        v = _normalize(F.conv2d(u, constant, stride=stride, padding=padding))
        u = _normalize(transposed_conv(v, constant, u.shape[2:], stride, padding))
    sigma = (v * F.conv2d(u, weight, stride=stride, padding=padding)).sum()
    return sigma, u


def sigma_gradient(grad_sigma: torch.Tensor, u: torch.Tensor, v: torch.Tensor, kernel_size,
                   stride, padding) -> torch.Tensor:
    """grad_W (C_out, C_in, k_h, k_w) = grad_sigma * (the weight gradient of conv2d(u, W) for the
    output gradient v): the backward of `conv_power_iteration`'s sigma, in differentiable torch
    ops (linear in grad_sigma; u and v are constants)."""
    weight_shape = (v.shape[1], u.shape[1], *kernel_size)
    return grad_sigma * torch.nn.grad.conv2d_weight(u, weight_shape, v, stride, padding)

