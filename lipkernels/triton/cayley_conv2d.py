"""Triton frequency-domain core of the Cayley convolution: per frequency, the Cayley transform of
the response and its application to the spectrum, in one launch, one program per frequency.

Trockman & Kolter, "Orthogonalizing Convolutional Layers with the Cayley Transform", ICLR 2021.
For response R_f (C_out x C_in) and spectrum S_f (C_in x B), complex (the schema in csrc/ops.cpp):
    T = R_f (C_out >= C_in) or R_f^T (plain transpose), tall m x n, n = min(C_in, C_out),
    X = (I + A)^{-1} from T (lipkernels/triton/cayley.py), P = [2X - I ; -2 V X],
    Q = P (tall) or P^T (wide),   output_f = Q S_f,   inverse_f = X.
    backward   grad_S = Q^H G,   grad_Q = G S^H,   grad_P = grad_Q or grad_Q^T,
               grad_T = the closed-form cayley backward of grad_P,   grad_R = grad_T or grad_T^T.

Q is never formed: it is applied through X. With X', V' standing for X, V or their transposes
or conjugates (read through strides), the four products are of two shapes,
    tall form  [2X' - I ; -2 V' X'] S = [2Y - S ; -2 V' Y],  Y = X' S        (n x B)
    wide form  [2X' - I , -2 X' V'] S = 2 X' Z - S_top,      Z = S_top - V' S_bot  (n x B),
and forward tall, forward wide, backward tall, backward wide use tall form (X, V), wide form
(X^T, V^T), wide form (X^H, V^H) and tall form (conj X, conj V). Y is kept in the output's top
rows until the bottom rows have used it; Z needs a scratch buffer (n x B per frequency): each
output tile reads all of it. The backward runs in one launch too: grad_P is written to a
scratch buffer (tall orientation) that the same program then takes through the cayley backward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import launchable
from .cayley import (BLOCK, NUM_WARPS, as_real, cayley_backward_matrix, form_m, invert_in_place,
                     load_tile, matmul_tile, store_tile)


@triton.jit
def _apply_tall_form(x_ptr, x_rs, x_cs, v_ptr, v_rs, v_cs, CONJ: tl.constexpr, s_ptr, s_rs,
                     s_cs, out_ptr, o_rs, o_cs, m, n, B, BLOCK: tl.constexpr):
    """out (m x B) = [2X' - I ; -2 V' X'] S for S (n x B); X' (n x n), V' ((m - n) x n) given
    by strides, both conjugated with CONJ. Y = X' S goes to out's top rows first."""
    zero = tl.zeros((BLOCK, BLOCK), out_ptr.dtype.element_ty)
    for i0 in range(0, n, BLOCK):
        rows = i0 + tl.arange(0, BLOCK)
        for j0 in range(0, B, BLOCK):
            cols = j0 + tl.arange(0, BLOCK)
            re, im = matmul_tile(zero, zero, x_ptr, x_rs, x_cs, CONJ, s_ptr, s_rs, s_cs, False,
                                 rows, cols, n, B, n, True, BLOCK)
            store_tile(out_ptr, rows, cols, o_rs, o_cs, n, B, re, im, True)
    tl.debug_barrier()
    for r0 in range(0, m - n, BLOCK):
        rows = r0 + tl.arange(0, BLOCK)
        for j0 in range(0, B, BLOCK):
            cols = j0 + tl.arange(0, BLOCK)
            re, im = matmul_tile(zero, zero, v_ptr, v_rs, v_cs, CONJ, out_ptr, o_rs, o_cs, False,
                                 rows, cols, m - n, B, n, True, BLOCK)
            store_tile(out_ptr + n * o_rs, rows, cols, o_rs, o_cs, m - n, B, -2.0 * re,
                       -2.0 * im, True)
    tl.debug_barrier()
    for i0 in range(0, n, BLOCK):
        rows = i0 + tl.arange(0, BLOCK)
        for j0 in range(0, B, BLOCK):
            cols = j0 + tl.arange(0, BLOCK)
            y_re, y_im = load_tile(out_ptr, rows, cols, o_rs, o_cs, n, B, False, True)
            s_re, s_im = load_tile(s_ptr, rows, cols, s_rs, s_cs, n, B, False, True)
            store_tile(out_ptr, rows, cols, o_rs, o_cs, n, B, 2.0 * y_re - s_re,
                       2.0 * y_im - s_im, True)


@triton.jit
def _apply_wide_form(x_ptr, x_rs, x_cs, v_ptr, v_rs, v_cs, CONJ: tl.constexpr, s_ptr, s_rs,
                     s_cs, out_ptr, o_rs, o_cs, z_ptr, m, n, B, BLOCK: tl.constexpr):
    """out (n x B) = [2X' - I , -2 X' V'] S for S (m x B); X' (n x n), V' (n x (m - n)) given by
    strides, both conjugated with CONJ. z: contiguous n x B scratch for Z = S_top - V' S_bot."""
    zero = tl.zeros((BLOCK, BLOCK), out_ptr.dtype.element_ty)
    z_rs = 2 * B
    for i0 in range(0, n, BLOCK):
        rows = i0 + tl.arange(0, BLOCK)
        for j0 in range(0, B, BLOCK):
            cols = j0 + tl.arange(0, BLOCK)
            re, im = matmul_tile(zero, zero, v_ptr, v_rs, v_cs, CONJ, s_ptr + n * s_rs, s_rs,
                                 s_cs, False, rows, cols, n, B, m - n, True, BLOCK)
            s_re, s_im = load_tile(s_ptr, rows, cols, s_rs, s_cs, n, B, False, True)
            store_tile(z_ptr, rows, cols, z_rs, 2, n, B, s_re - re, s_im - im, True)
    tl.debug_barrier()
    for i0 in range(0, n, BLOCK):
        rows = i0 + tl.arange(0, BLOCK)
        for j0 in range(0, B, BLOCK):
            cols = j0 + tl.arange(0, BLOCK)
            re, im = matmul_tile(zero, zero, x_ptr, x_rs, x_cs, CONJ, z_ptr, z_rs, 2, False,
                                 rows, cols, n, B, n, True, BLOCK)
            s_re, s_im = load_tile(s_ptr, rows, cols, s_rs, s_cs, n, B, False, True)
            store_tile(out_ptr, rows, cols, o_rs, o_cs, n, B, 2.0 * re - s_re, 2.0 * im - s_im,
                       True)


@triton.jit
def _frequency(m, n, B, TALL: tl.constexpr):
    """(f, C_out, C_in, n x n X's row stride, elements of X, of S, of output, of Z per
    frequency, in real elements) for this program's frequency f."""
    if TALL:
        c_out = m
        c_in = n
    else:
        c_out = n
        c_in = m
    return tl.program_id(0).to(tl.int64), c_out, c_in, 2 * n, 2 * n * n, 2 * c_in * B, \
        2 * c_out * B, 2 * n * B


@triton.jit
def _cayley_frequency_product_kernel(r_ptr, s_ptr, out_ptr, x_ptr, z_ptr, m, n, B, t_rs, t_cs,
                                     TALL: tl.constexpr, BLOCK: tl.constexpr):
    """output_f = Q_f S_f and inverse_f = X_f for frequency f = program id. T (the tall
    orientation of the response) is read through its strides t_rs, t_cs; every other operand
    is contiguous, complex as interleaved (re, im)."""
    f, c_out, c_in, x_rs, x_size, s_size, out_size, z_size = _frequency(m, n, B, TALL)
    r_ptr += f * 2 * m * n
    s_ptr += f * s_size
    out_ptr += f * out_size
    x_ptr += f * x_size
    form_m(r_ptr, t_rs, t_cs, x_ptr, x_rs, 2, m, n, True, BLOCK)
    invert_in_place(x_ptr, x_rs, 2, n, True, BLOCK)
    v_ptr = r_ptr + n * t_rs
    if TALL:
        _apply_tall_form(x_ptr, x_rs, 2, v_ptr, t_rs, t_cs, False, s_ptr, 2 * B, 2, out_ptr,
                         2 * B, 2, m, n, B, BLOCK)
    else:
        # Q = P^T = [2X^T - I , -2 X^T V^T]: X and V read transposed.
        _apply_wide_form(x_ptr, 2, x_rs, v_ptr, t_cs, t_rs, False, s_ptr, 2 * B, 2, out_ptr,
                         2 * B, 2, z_ptr + f * z_size, m, n, B, BLOCK)


@triton.jit
def _cayley_frequency_product_backward_kernel(g_ptr, r_ptr, s_ptr, x_ptr, grad_r_ptr,
                                              grad_s_ptr, gp_ptr, z_ptr, scratch_ptr, m, n, B,
                                              t_rs, t_cs, TALL: tl.constexpr,
                                              BLOCK: tl.constexpr):
    """(grad_response_f, grad_spectrum_f) for frequency f = program id. gp: an m x n scratch
    for grad_P; z: n x B (wide form); scratch: 2 n x n (cayley backward)."""
    f, c_out, c_in, x_rs, x_size, s_size, out_size, z_size = _frequency(m, n, B, TALL)
    r_offset = f * 2 * m * n
    g_ptr += f * out_size
    s_ptr += f * s_size
    grad_s_ptr += f * s_size
    x_ptr += f * x_size
    gp_ptr += r_offset
    # grad_Q = G S^H (C_out x C_in), stored as grad_P in the tall orientation.
    if TALL:
        p_rs = 2 * n
        p_cs = 2
    else:
        p_rs = 2
        p_cs = 2 * n
    zero = tl.zeros((BLOCK, BLOCK), gp_ptr.dtype.element_ty)
    for i0 in range(0, c_out, BLOCK):
        rows = i0 + tl.arange(0, BLOCK)
        for j0 in range(0, c_in, BLOCK):
            cols = j0 + tl.arange(0, BLOCK)
            re, im = matmul_tile(zero, zero, g_ptr, 2 * B, 2, False, s_ptr, 2, 2 * B, True,
                                 rows, cols, c_out, c_in, B, True, BLOCK)
            store_tile(gp_ptr, rows, cols, p_rs, p_cs, c_out, c_in, re, im, True)
    v_ptr = r_ptr + r_offset + n * t_rs
    if TALL:
        # Q^H = P^H = [2X^H - I , -2 X^H V^H].
        _apply_wide_form(x_ptr, 2, x_rs, v_ptr, t_cs, t_rs, True, g_ptr, 2 * B, 2, grad_s_ptr,
                         2 * B, 2, z_ptr + f * z_size, m, n, B, BLOCK)
    else:
        # Q^H = conj(P) = [2 conj(X) - I ; -2 conj(V) conj(X)].
        _apply_tall_form(x_ptr, x_rs, 2, v_ptr, t_rs, t_cs, True, g_ptr, 2 * B, 2, grad_s_ptr,
                         2 * B, 2, m, n, B, BLOCK)
    tl.debug_barrier()
    cayley_backward_matrix(gp_ptr, 2 * n, 2, x_ptr, x_rs, 2, r_ptr + r_offset, t_rs, t_cs,
                           grad_r_ptr + r_offset, t_rs, t_cs, scratch_ptr + 2 * f * x_size, m,
                           n, True, BLOCK)


def _orientation(response: torch.Tensor):
    """(tall, m, n, row stride, column stride) of the tall orientation T of a contiguous
    response (F, C_out, C_in): T = response_f, or its transpose when C_out < C_in."""
    c_out, c_in = response.shape[1:]
    if c_out >= c_in:
        return True, c_out, c_in, 2 * c_in, 2
    return False, c_in, c_out, 2, 2 * c_in


def _launch(kernel, response: torch.Tensor, batch: int, *tensors):
    """One program per frequency of `response`; `tensors` are the kernel's pointer arguments."""
    tall, m, n, t_rs, t_cs = _orientation(response)
    launchable(kernel)[(response.shape[0],)](*(as_real(t) for t in tensors), m, n, batch, t_rs,
                                             t_cs, TALL=tall, BLOCK=BLOCK, num_warps=NUM_WARPS)


def cayley_frequency_product(response: torch.Tensor, spectrum: torch.Tensor):
    """(output (F, C_out, B), inverse (F, n, n)), as the C++ op; contiguous."""
    response, spectrum = response.contiguous(), spectrum.contiguous()
    frequencies, c_out, c_in = response.shape
    batch = spectrum.shape[-1]
    n = min(c_in, c_out)
    output = spectrum.new_empty((frequencies, c_out, batch))
    inverse = spectrum.new_empty((frequencies, n, n))
    # Z, the wide form's scratch: a wide response's forward applies Q = P^T in that form.
    z = spectrum.new_empty((frequencies, n, batch) if c_out < c_in else (0,))
    _launch(_cayley_frequency_product_kernel, response, batch, response, spectrum, output, inverse,
            z)
    return output, inverse


def cayley_frequency_product_backward(grad_output: torch.Tensor, response: torch.Tensor,
                                      spectrum: torch.Tensor, inverse: torch.Tensor):
    """(grad_response, grad_spectrum) for the output gradient grad_output, as the C++ op."""
    frequencies, c_out, c_in = response.shape
    batch = spectrum.shape[-1]
    n, m = sorted((c_in, c_out))
    grad_output, response, spectrum, inverse = (
        t.contiguous() for t in (grad_output, response, spectrum, inverse))
    grad_response = torch.empty_like(response)
    grad_spectrum = torch.empty_like(spectrum)
    grad_p = response.new_empty((frequencies, m, n))
    # A tall response's gradient applies Q^H = P^H in the wide form, which needs Z.
    z = spectrum.new_empty((frequencies, n, batch) if c_out >= c_in else (0,))
    scratch = response.new_empty((frequencies, 2, n, n))
    _launch(_cayley_frequency_product_backward_kernel, response, batch, grad_output, response,
            spectrum, inverse, grad_response, grad_spectrum, grad_p, z, scratch)
    return grad_response, grad_spectrum
