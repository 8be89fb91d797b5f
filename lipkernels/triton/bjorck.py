"""Triton Björck orthonormalisation and its backward: every iteration in one launch, a program
per matrix.

Björck & Bowie, "An iterative algorithm for computing the best estimate of an orthogonal
matrix", SIAM J. Numer. Anal. 1971, at order 1 as the Lipschitz networks' code runs it (LNets,
Anil et al., ICML 2019; BCOP, Li et al., NeurIPS 2019). For a tall, scaled W_0 (m x n, m >= n):
    forward    A_t = W_t^T W_t,   E_t = I - A_t,   W_(t+1) = W_t + beta W_t E_t
               (= (1 + beta) W_t - beta W_t A_t, the seeds' update, in correction form: the
               product W_t E_t vanishes as W_t converges, and its rounding with it)
    backward   from G = dL/dW_(t+1), with the W_t and A_t the forward kept:
               S = W_t^T G + G^T W_t,   dL/dW_t = G + beta G E_t - beta W_t S
(lipkernels/reference/bjorck.py derives it; csrc/cpu/bjorck.cpp has every order). The forward
stores W_1 .. W_(iters-1) and A_0 .. A_(iters-1), what the op returns for its backward.

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
def _load(ptr, rows, cols, row_stride, col_stride, R, C):
    """ptr[rows, cols] of an R x C matrix given by its strides, zero outside it."""
    mask = (rows < R)[:, None] & (cols < C)[None, :]
    return tl.load(ptr + rows[:, None] * row_stride + cols[None, :] * col_stride, mask=mask,
                   other=0.0)


@triton.jit
def _store(ptr, rows, cols, row_stride, R, C, value, keep):
    """ptr[rows, cols] = value inside the row-major R x C matrix, where `keep` holds."""
    mask = (rows < R)[:, None] & (cols < C)[None, :] & keep
    tl.store(ptr + rows[:, None] * row_stride + cols[None, :],
             value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _product(acc, a_ptr, a_rs, a_cs, b_ptr, b_rs, b_cs, shift, scale, rows, cols, R, C, K,
             PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc + (A (shift I + scale B))[rows, cols] for A (R x K) and B (K x C) given by strides:
    B's affine map is applied to its tiles as they load (E = I - A and beta E need no pass of
    their own)."""
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        a = _load(a_ptr, rows, ks, a_rs, a_cs, R, K).to(acc.dtype)
        b = _load(b_ptr, ks, cols, b_rs, b_cs, K, C).to(acc.dtype)
        b = scale * b + shift * (ks[:, None] == cols[None, :]).to(acc.dtype)
        acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=acc.dtype)
    return acc


@triton.jit
def _iterate(ptr, base, t, offset, stride):
    """The t-th matrix of a sequence whose first is `base` and whose later ones are the stack at
    `ptr` (iterates[t - 1]), each matrix at `offset` within its stack entry of `stride`."""
    if t == 0:
        matrix = base + offset
    else:
        matrix = ptr + tl.cast(t - 1, tl.int64) * stride + offset
    return matrix


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
            _store(a, rows, cols, n, n, n, acc, True)
            _store(a, cols, rows, n, n, n, tl.trans(acc), bi < bj)


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
            _store(s, rows, cols, n, n, n, acc, True)
            _store(s, cols, rows, n, n, n, tl.trans(acc), bi < bj)


@triton.jit
def _correction_phase(x, a, w, s, out, beta, m, n, BACKWARD: tl.constexpr, ACC: tl.constexpr,
                      PRECISION: tl.constexpr, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
    """out = X + beta X (I - A), less beta W S for the backward (X = G there, W_t forward)."""
    for br in range(tl.cdiv(m, BLOCK)):
        for bj in range(tl.cdiv(n, BLOCK)):
            rows = br * BLOCK + tl.arange(0, BLOCK)
            cols = bj * BLOCK + tl.arange(0, BLOCK)
            acc = _load(x, rows, cols, n, 1, m, n).to(ACC)
            acc = _product(acc, x, n, 1, a, n, 1, beta, -beta, rows, cols, m, n, n, PRECISION,
                           BLOCK_K)
            if BACKWARD:
                acc = _product(acc, w, n, 1, s, n, 1, 0.0, -beta, rows, cols, m, n, n,
                               PRECISION, BLOCK_K)
            _store(out, rows, cols, n, m, n, acc, True)


@triton.jit
def _bjorck_kernel(w_ptr, q_ptr, iterates_ptr, grams_ptr, beta_ptr, iters, count, m, n,
                   PRECISION: tl.constexpr, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
    """Björck's iteration (the module docstring) on matrix program_id(0) of `count`: per
    iteration the Gram phase, then the correction phase, a CTA barrier after each. beta is read
    from beta_ptr, in the accumulation dtype (a float argument would be rounded to float32)."""
    acc_ty: tl.constexpr = tl.float64 if w_ptr.dtype.element_ty == tl.float64 else tl.float32
    beta = tl.load(beta_ptr)
    b = tl.cast(tl.program_id(0), tl.int64)
    matrix, gram = b * m * n, b * n * n
    stride = tl.cast(count, tl.int64) * m * n
    for t in range(iters):
        w = _iterate(iterates_ptr, w_ptr, t, matrix, stride)
        a = grams_ptr + tl.cast(t, tl.int64) * count * n * n + gram
        _gram_phase(w, a, m, n, acc_ty, PRECISION, BLOCK, BLOCK_K)
        tl.debug_barrier()
        if t == iters - 1:
            out = q_ptr + matrix
        else:
            out = iterates_ptr + tl.cast(t, tl.int64) * stride + matrix
        _correction_phase(w, a, w, a, out, beta, m, n, False, acc_ty, PRECISION, BLOCK,
                          BLOCK_K)
        tl.debug_barrier()


@triton.jit
def _bjorck_backward_kernel(grad_q_ptr, w_ptr, iterates_ptr, grams_ptr, grad_w_ptr, g_ptr,
                            s_ptr, beta_ptr, iters, count, m, n, PRECISION: tl.constexpr,
                            BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
    """The backward of _bjorck_kernel (the module docstring) on matrix program_id(0): from
    t = iters - 1 down to 0 the symmetrised phase, then the correction phase, a CTA barrier
    after each. The gradient alternates between grad_w (even t, so t = 0 ends there) and the
    scratch g; s holds S."""
    acc_ty: tl.constexpr = tl.float64 if w_ptr.dtype.element_ty == tl.float64 else tl.float32
    beta = tl.load(beta_ptr)
    b = tl.cast(tl.program_id(0), tl.int64)
    matrix = b * m * n
    stride = tl.cast(count, tl.int64) * m * n
    s = s_ptr + b * n * n
    g = grad_q_ptr + matrix
    for step in range(iters):
        t = iters - 1 - step
        w = _iterate(iterates_ptr, w_ptr, t, matrix, stride)
        a = grams_ptr + tl.cast(t, tl.int64) * count * n * n + b * n * n
        _symmetrised_phase(w, g, s, m, n, acc_ty, PRECISION, BLOCK, BLOCK_K)
        tl.debug_barrier()
        if t % 2 == 0:
            out = grad_w_ptr + matrix
        else:
            out = g_ptr + matrix
        _correction_phase(g, a, w, s, out, beta, m, n, True, acc_ty, PRECISION, BLOCK, BLOCK_K)
        tl.debug_barrier()
        g = out


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
    """(Q, the iterates W_1..W_(iters-1) stacked, the grams A_0..A_(iters-1) stacked) for a
    tall, scaled, contiguous W (..., m, n) of float32 or float64 (the op checks it:
    lipkernels.ops.bjorck)."""
    _check_order(order)
    *batch, m, n = W.shape
    count = W.numel() // (m * n)
    Q = torch.empty_like(W)
    iterates = W.new_empty((iters - 1, *W.shape))
    grams = W.new_empty((iters, *batch, n, n))
    if count:
        launchable(_bjorck_kernel)[(count,)](W, Q, iterates, grams, _beta(beta, W), iters,
                                             count, m, n, **launch_config(n, W.dtype))
    return Q, iterates, grams


def bjorck_backward(grad_Q: torch.Tensor, W: torch.Tensor, iterates: torch.Tensor,
                    grams: torch.Tensor, iters: int, beta: float, order: int):
    """grad_W (..., m, n) of Q = bjorck(W) against grad_Q, from what the forward kept."""
    _check_order(order)
    *batch, m, n = W.shape
    count = W.numel() // (m * n)
    grad_W = torch.empty_like(W)
    if count:
        g = torch.empty_like(W) if iters > 1 else W.new_empty(0)
        s = torch.empty((count, n, n), dtype=W.dtype, device=W.device)
        launchable(_bjorck_backward_kernel)[(count,)](
            grad_Q, W, iterates, grams, grad_W, g, s, _beta(beta, W), iters, count, m, n,
            **launch_config(n, W.dtype))
    return grad_W
