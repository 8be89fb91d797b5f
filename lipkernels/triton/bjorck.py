"""Triton Björck orthonormalisation and its backward: every iteration in one launch, a program
per matrix.

Björck & Bowie, "An iterative algorithm for computing the best estimate of an orthogonal
matrix", SIAM J. Numer. Anal. 1971, at order 1 as the Lipschitz networks' code runs it (LNets,
Anil et al., ICML 2019; BCOP, Li et al., NeurIPS 2019). For a tall, scaled W_0 (m x n, m >= n):
    forward    A_t = W_t^T W_t,   E_t = I - A_t,   W_(t+1) = W_t + beta W_t E_t
               (= (1 + beta) W_t - beta W_t A_t, the seeds' update, in correction form: the
               product W_t E_t vanishes as W_t converges, and its rounding with it)
    backward   the tangent iteration alongside W_t, from T_0 = G = dL/dQ:
               S_t = W_t^T T_t + T_t^T W_t,   T_(t+1) = T_t + beta T_t E_t - beta W_t S_t,
               and dL/dW_0 = T_iters
(lipkernels/reference/bjorck.py: W_0 -> W_iters is the gradient of a potential, so its Jacobian
is symmetric and the vector-Jacobian product with G is the derivative along G). So nothing is
kept between the directions: the backward recomputes W_t as it goes, five products an
iteration where the C++ kernel's three read the iterates and Gram matrices it stores
(csrc/cpu/bjorck.cpp has every order).

Why one program per matrix: an iteration is two dependent products over the whole matrix, and a
program can order them with CTA barriers alone (tl.debug_barrier, which also orders the
program's global stores before its later loads), where programs would need grid barriers. The
stacks this serves are many small matrices (BCOP's 2k - 1 matrices of 16 to 128 channels, a
batch of BjorckLinear weights), launch-bound in the reference; the phases sweep their operands
through L2 tile by tile, so any size runs, but a few large matrices leave most SMs idle and are
the cuda backend's (two batched cuBLAS products an iteration; docs/performance.md weighs both).
Gram matrices are symmetric: their tiles i <= j are computed, each stored with its transpose.
Products are float32-accurate (tf32x3: three TF32 passes) for float32 and IEEE for float64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import accumulation_dtype, float32_accurate_precision, launchable

# Output tiles are BLOCK x BLOCK (BLOCK up to 64 for float32, 32 for float64) and the
# reduction streams BLOCK_K entries at once, two stages deep: the largest tiles that compile
# for sm_80 and sm_90 without spilling (tests/triton_compile_check.py; three stages, or 64-wide
# float64 tiles, spill), on 8 warps (4 for the 16-wide tiles of matrices of 16 columns or fewer).
_MAX_BLOCK = {torch.float32: 64, torch.float64: 32}
_MIN_BLOCK = 16
_BLOCK_K = {torch.float32: 32, torch.float64: 16}
_NUM_STAGES = 2


@triton.jit
def load_tile(ptr, rows, cols, row_stride, col_stride, R, C):
    """ptr[rows, cols] of an R x C matrix given by its strides, zero outside it."""
    mask = (rows < R)[:, None] & (cols < C)[None, :]
    return tl.load(ptr + rows[:, None] * row_stride + cols[None, :] * col_stride, mask=mask,
                   other=0.0)


@triton.jit
def store_tile(ptr, rows, cols, row_stride, col_stride, R, C, value, keep):
    """ptr[rows, cols] = value inside the R x C matrix given by its strides, where `keep`
    holds."""
    mask = (rows < R)[:, None] & (cols < C)[None, :] & keep
    tl.store(ptr + rows[:, None] * row_stride + cols[None, :] * col_stride,
             value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _product(acc, a_ptr, a_rs, a_cs, b_ptr, b_rs, b_cs, shift, scale, rows, cols, R, C, K,
             PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc + (A (shift I + scale B))[rows, cols] for A (R x K) and B (K x C) given by strides:
    B's affine map is applied to its tiles as they load (E = I - A and beta E need no pass of
    their own)."""
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        a = load_tile(a_ptr, rows, ks, a_rs, a_cs, R, K).to(acc.dtype)
        b = load_tile(b_ptr, ks, cols, b_rs, b_cs, K, C).to(acc.dtype)
        b = scale * b + shift * (ks[:, None] == cols[None, :]).to(acc.dtype)
        acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=acc.dtype)
    return acc


@triton.jit
def _alternate(t, iters, final_ptr, scratch_ptr, offset):
    """Where step t of `iters` writes: the final buffer for t = iters - 1, t - 2, ..., the
    scratch for the others, so that consecutive steps never share a buffer and the last ends in
    the final one."""
    if (iters - 1 - t) % 2 == 0:
        out = final_ptr + offset
    else:
        out = scratch_ptr + offset
    return out


@triton.jit
def _gram_phase(w, a, m, n, ACC: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
    """A = W^T W (n x n) from the row-major m x n W: tiles i <= j, each stored with its
    transpose."""
    blocks = tl.cdiv(n, BLOCK)
    for bi in range(blocks):
        for bj in range(bi, blocks):
            rows = bi * BLOCK + tl.arange(0, BLOCK)
            cols = bj * BLOCK + tl.arange(0, BLOCK)
            acc = tl.zeros([BLOCK, BLOCK], ACC)
            acc = _product(acc, w, 1, n, w, n, 1, 0.0, 1.0, rows, cols, n, n, m, PRECISION,
                           BLOCK_K)
            store_tile(a, rows, cols, n, 1, n, n, acc, True)
            store_tile(a, cols, rows, n, 1, n, n, tl.trans(acc), bi < bj)


@triton.jit
def _symmetrised_phase(w, g, s, m, n, ACC: tl.constexpr, PRECISION: tl.constexpr,
                       BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
    """S = W^T G + G^T W (n x n): per tile pair i <= j, P_ij + P_ji^T with P = W^T G, stored
    with its transpose."""
    blocks = tl.cdiv(n, BLOCK)
    for bi in range(blocks):
        for bj in range(bi, blocks):
            rows = bi * BLOCK + tl.arange(0, BLOCK)
            cols = bj * BLOCK + tl.arange(0, BLOCK)
            p = _product(tl.zeros([BLOCK, BLOCK], ACC), w, 1, n, g, n, 1, 0.0, 1.0, rows, cols,
                         n, n, m, PRECISION, BLOCK_K)
            if bi == bj:
                q = p
            else:
                q = _product(tl.zeros([BLOCK, BLOCK], ACC), w, 1, n, g, n, 1, 0.0, 1.0, cols,
                             rows, n, n, m, PRECISION, BLOCK_K)
            acc = p + tl.trans(q)
            store_tile(s, rows, cols, n, 1, n, n, acc, True)
            store_tile(s, cols, rows, n, 1, n, n, tl.trans(acc), bi < bj)


@triton.jit
def _correction_phase(x, a, w, s, out, beta, m, n, BACKWARD: tl.constexpr, ACC: tl.constexpr,
                      PRECISION: tl.constexpr, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
    """out = X + beta X (I - A), less beta W S for the backward (X = G there, W_t forward)."""
    for br in range(tl.cdiv(m, BLOCK)):
        for bj in range(tl.cdiv(n, BLOCK)):
            rows = br * BLOCK + tl.arange(0, BLOCK)
            cols = bj * BLOCK + tl.arange(0, BLOCK)
            acc = load_tile(x, rows, cols, n, 1, m, n).to(ACC)
            acc = _product(acc, x, n, 1, a, n, 1, beta, -beta, rows, cols, m, n, n, PRECISION,
                           BLOCK_K)
            if BACKWARD:
                acc = _product(acc, w, n, 1, s, n, 1, 0.0, -beta, rows, cols, m, n, n,
                               PRECISION, BLOCK_K)
            store_tile(out, rows, cols, n, 1, m, n, acc, True)


@triton.jit
def _bjorck_kernel(w_ptr, q_ptr, scratch_ptr, gram_ptr, beta_ptr, iters, m, n,
                   PRECISION: tl.constexpr, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
    """Björck's iteration (the module docstring) on matrix program_id(0): per iteration the
    Gram phase, then the correction phase, a CTA barrier after each; the iterates alternate
    between q and the scratch. beta is read from beta_ptr, in the accumulation dtype (a float
    argument would be rounded to float32)."""
    acc_ty: tl.constexpr = tl.float64 if w_ptr.dtype.element_ty == tl.float64 else tl.float32
    beta = tl.load(beta_ptr)
    b = tl.cast(tl.program_id(0), tl.int64)
    matrix = b * m * n
    a = gram_ptr + b * n * n
    w = w_ptr + matrix
    for t in range(iters):
        _gram_phase(w, a, m, n, acc_ty, PRECISION, BLOCK, BLOCK_K)
        tl.debug_barrier()
        out = _alternate(t, iters, q_ptr, scratch_ptr, matrix)
        _correction_phase(w, a, w, a, out, beta, m, n, False, acc_ty, PRECISION, BLOCK,
                          BLOCK_K)
        tl.debug_barrier()
        w = out


@triton.jit
def _bjorck_backward_kernel(grad_q_ptr, w_ptr, w_scratch_ptr, tangent_scratch_ptr, grad_w_ptr,
                            gram_ptr, s_ptr, beta_ptr, iters, count, m, n,
                            PRECISION: tl.constexpr, BLOCK: tl.constexpr,
                            BLOCK_K: tl.constexpr):
    """The backward of _bjorck_kernel in tangent form (the module docstring) on matrix
    program_id(0): per iteration A_t and S_t, then W_(t+1) (but at the last) and E_(t+1), a CTA
    barrier after each; W alternates between the two halves of w_scratch, E between grad_w and
    tangent_scratch so that E_iters ends in grad_w."""
    acc_ty: tl.constexpr = tl.float64 if w_ptr.dtype.element_ty == tl.float64 else tl.float32
    beta = tl.load(beta_ptr)
    b = tl.cast(tl.program_id(0), tl.int64)
    matrix = b * m * n
    a, s = gram_ptr + b * n * n, s_ptr + b * n * n
    w, tangent = w_ptr + matrix, grad_q_ptr + matrix
    for t in range(iters):
        _gram_phase(w, a, m, n, acc_ty, PRECISION, BLOCK, BLOCK_K)
        _symmetrised_phase(w, tangent, s, m, n, acc_ty, PRECISION, BLOCK, BLOCK_K)
        tl.debug_barrier()
        w_next = w_scratch_ptr + tl.cast(t % 2, tl.int64) * count * m * n + matrix
        if t < iters - 1:
            _correction_phase(w, a, w, a, w_next, beta, m, n, False, acc_ty, PRECISION, BLOCK,
                              BLOCK_K)
        tangent_next = _alternate(t, iters, grad_w_ptr, tangent_scratch_ptr, matrix)
        _correction_phase(tangent, a, w, s, tangent_next, beta, m, n, True, acc_ty, PRECISION,
                          BLOCK, BLOCK_K)
        tl.debug_barrier()
        w, tangent = w_next, tangent_next


def launch_config(n: int, dtype: torch.dtype) -> dict:
    """Tiles, warps and stages of both kernels for matrices of n columns of `dtype`."""
    block = min(_MAX_BLOCK[dtype], max(_MIN_BLOCK, triton.next_power_of_2(n)))
    return dict(PRECISION=float32_accurate_precision(dtype), BLOCK=block,
                BLOCK_K=_BLOCK_K[dtype], num_warps=8 if block >= 32 else 4,
                num_stages=_NUM_STAGES)


def _check_order(order: int):
    if order != 1:
        raise ValueError(f"bjorck: the triton backend runs order 1 (the seeds' iteration); got "
                         f"order={order}: the cpp and cuda backends and the reference run "
                         f"orders 1 to 4")


def _beta(beta: float, W: torch.Tensor) -> torch.Tensor:
    return torch.full((1,), beta, dtype=accumulation_dtype(W.dtype), device=W.device)


def bjorck(W: torch.Tensor, iters: int, beta: float, order: int):
    """(Q, empty, empty) for a tall, scaled, contiguous W (..., m, n) of float32 or float64 (the
    op checks it: lipkernels.ops.bjorck): the backward runs the tangent iteration from W, so no
    iterate or Gram matrix is kept."""
    _check_order(order)
    m, n = W.shape[-2:]
    count = W.numel() // (m * n)
    Q = torch.empty_like(W)
    if count:
        scratch = torch.empty_like(W) if iters > 1 else W.new_empty(0)
        gram = W.new_empty((count, n, n))
        launchable(_bjorck_kernel)[(count,)](W, Q, scratch, gram, _beta(beta, W), iters, m, n,
                                             **launch_config(n, W.dtype))
    return Q, W.new_empty(0), W.new_empty(0)


def bjorck_backward(grad_Q: torch.Tensor, W: torch.Tensor, iterates: torch.Tensor,
                    grams: torch.Tensor, iters: int, beta: float, order: int):
    """grad_W (..., m, n) of Q = bjorck(W) against grad_Q, by the tangent iteration from W
    (iterates and grams are the forward's empty tensors)."""
    _check_order(order)
    m, n = W.shape[-2:]
    count = W.numel() // (m * n)
    grad_W = torch.empty_like(W)
    if count:
        w_scratch = W.new_empty((2, *W.shape)) if iters > 1 else W.new_empty(0)
        tangent_scratch = torch.empty_like(W) if iters > 1 else W.new_empty(0)
        gram, s = W.new_empty((count, n, n)), W.new_empty((count, n, n))
        launchable(_bjorck_backward_kernel)[(count,)](
            grad_Q, W, w_scratch, tangent_scratch, grad_W, gram, s, _beta(beta, W), iters, count, m,
            n, **launch_config(n, W.dtype))
    return grad_W
