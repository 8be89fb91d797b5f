"""Pure-PyTorch power iteration at every frequency of a circular convolution: the oracle for the
frequency_power_iteration kernels.

The responses H_f (C_out x C_in) of the circular "same" conv with W (C_out, C_in, k_h, k_w) on an
n1 x n2 image (Sedghi, Gupta & Long, ICLR 2019; lipkernels.reference.conv_singular_values) at the
F = n1 (n2 // 2 + 1) rfft2 frequencies are formed by an FFT of the filter, written as their real
forms R_f = [[Re H, -Im H], [Im H, Re H]], and `power_iteration` runs on all of them at once from
the starts u (F, 2 C_in) = (Re u, Im u). So sigma_f = v^T R_f u = Re(v_c^H H_f u_c) with
u_c = u[:C_in] + i u[C_in:] (v_c likewise), and with H_f = sum_k W[:, :, k] e^(i theta_fk)
(`lipkernels._spectral.tap_phases`)
    d sigma_f / d W[o, i, k] = Re(conj(v_c[o]) u_c[i] e^(i theta_fk))     (u, v constant).
"""

from __future__ import annotations

import torch

from .._spectral import realified_responses, tap_phases
from .power_iteration import power_iteration


def frequency_power_iteration(weight: torch.Tensor, u: torch.Tensor, iters: int, height: int,
                              width: int):
    """(sigma (F,), u (F, 2 C_in), v (F, 2 C_out)) after `iters` power-iteration steps on every
    real-form response of the circular conv with `weight` on a height x width image, from the
    starts `u`; sigma differentiable w.r.t. `weight`."""
    return power_iteration(realified_responses(weight, (height, width)), u, iters)


def sigma_gradient(grad_sigma: torch.Tensor, u: torch.Tensor, v: torch.Tensor, weight_shape,
                   height: int, width: int) -> torch.Tensor:
    """grad_W (weight_shape) = sum_f grad_sigma_f d sigma_f / d W (module docstring): per tap
    one complex product over the frequencies, in differentiable torch ops (linear in
    grad_sigma; u and v are constants)."""
    c_out, c_in, k_h, k_w = weight_shape
    theta = tap_phases((height, width), (k_h, k_w), u.dtype, u.device)
    u_c = torch.complex(u[:, :c_in], u[:, c_in:])
    # conj(v_c) formed, not a lazy conj() view: the conjugate bit of a view is lost when the op
    # runs inside an AOTAutograd graph.
    v_conj = torch.complex(v[:, :c_out], -v[:, c_out:])
    weighted = grad_sigma[:, None] * torch.polar(torch.ones_like(theta), theta)
    grad = torch.einsum("fk,fo,fi->oik", weighted, v_conj, u_c).real
    return grad.contiguous().reshape(c_out, c_in, k_h, k_w)
