"""Triton power iteration on batches of matrices, all iterations in one launch.

The iteration body `_power_iterate` addresses the matrix through a two-level index map, so the
same code runs on a plain row-major matrix here and on the four Fantastic Four reshapes of a
conv filter in `conv_spectral_bounds` without materialising them.
"""

import torch
import triton
import triton.language as tl

from ._common import accumulation_dtype, launchable, tile_shape


@triton.jit
def _inv_norm(sum_sq):
    """1 / max(sqrt(sum_sq), 1e-12), the F.normalize denominator.

    Written with tl.where because `NaN < eps` is False, so a NaN norm stays NaN (tl.maximum may
    return eps instead and turn a non-finite weight into finite wrong vectors).
    """
    norm = tl.sqrt(sum_sq)
    # Built in the accumulation dtype so float64 runs use the double nearest 1e-12.
    eps = tl.full([], 1e-12, sum_sq.dtype)
    return 1.0 / tl.where(norm < eps, eps, norm)


@triton.jit
def _split_offsets(index, div, stride_hi, stride_lo):
    """Element offsets of matrix rows (or columns) `index` = hi * div + lo:
    hi * stride_hi + lo * stride_lo.

    A row-major matrix is div=1, stride_hi=row stride, stride_lo=0; a reshape of a transposed
    tensor splits its index into two tensor axes. The split stays in the index's own (32-bit)
    type, cheaper on GPUs; the products are int64 so huge weights do not overflow.
    """
    hi = index // div
    lo = index % div
    return hi.to(tl.int64) * stride_hi + lo.to(tl.int64) * stride_lo


@triton.jit
def _power_iterate(w_ptr, u_ptr, u_out_ptr, v_out_ptr, us_ptr, vs_ptr, iters, M, N,
                   row_div, row_hi, row_lo, col_div, col_hi, col_lo,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """`iters` power-iteration steps on one M x N matrix W by one program; returns sigma.

    W[r, c] lives at w_ptr + _split_offsets(r, row_*) + _split_offsets(c, col_*). Each step is
    v = normalize(W u), t = W^T v, u = normalize(t), and sigma = t . u (= v^T W u) at the end.
    Every step streams W twice in BLOCK_M x BLOCK_N tiles: row strips for W u (row dots summed
    over column tiles), column strips for W^T v (column sums over row tiles).

    The running vectors live in the global scratch `us_ptr` (N entries) and `vs_ptr` (M entries),
    whose dtype is the accumulation dtype. They are stored unnormalized (t and W u), with their
    1 / max(norm, eps) kept in a register and folded into the next matrix-vector product and the
    final stores: normalizing in place would cost an extra pass and barrier per vector.
    Scratch written by some threads is read by others, so passes are separated by
    tl.debug_barrier (a CTA barrier, which also orders global memory inside the program).
    """
    acc_ty = us_ptr.dtype.element_ty
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)

    for c0 in range(0, N, BLOCK_N):
        cols = c0 + offs_n
        u = tl.load(u_ptr + cols, mask=cols < N, other=0.0)
        tl.store(us_ptr + cols, u.to(acc_ty), mask=cols < N)
    # The input u is used as given (v = normalize(W u)), hence the unit scale.
    inv_norm_u = tl.full([], 1.0, acc_ty)
    inv_norm_v = tl.full([], 1.0, acc_ty)
    sum_sq_t = tl.zeros([], acc_ty)

    for _ in range(iters):
        tl.debug_barrier()
        sum_sq_v = tl.zeros([], acc_ty)
        for r0 in range(0, M, BLOCK_M):
            rows = r0 + offs_m
            row_offsets = _split_offsets(rows, row_div, row_hi, row_lo)
            wu = tl.zeros([BLOCK_M], acc_ty)
            for c0 in range(0, N, BLOCK_N):
                cols = c0 + offs_n
                w = tl.load(w_ptr + row_offsets[:, None]
                            + _split_offsets(cols, col_div, col_hi, col_lo)[None, :],
                            mask=(rows < M)[:, None] & (cols < N)[None, :], other=0.0).to(acc_ty)
                u = tl.load(us_ptr + cols, mask=cols < N, other=0.0)
                wu += tl.sum(w * u[None, :], axis=1)
            wu = wu * inv_norm_u
            tl.store(vs_ptr + rows, wu, mask=rows < M)
            sum_sq_v += tl.sum(wu * wu, axis=0)
        inv_norm_v = _inv_norm(sum_sq_v)

        tl.debug_barrier()
        sum_sq_t = tl.zeros([], acc_ty)
        for c0 in range(0, N, BLOCK_N):
            cols = c0 + offs_n
            col_offsets = _split_offsets(cols, col_div, col_hi, col_lo)
            wtv = tl.zeros([BLOCK_N], acc_ty)
            for r0 in range(0, M, BLOCK_M):
                rows = r0 + offs_m
                w = tl.load(w_ptr + _split_offsets(rows, row_div, row_hi, row_lo)[:, None]
                            + col_offsets[None, :],
                            mask=(rows < M)[:, None] & (cols < N)[None, :], other=0.0).to(acc_ty)
                v = tl.load(vs_ptr + rows, mask=rows < M, other=0.0)
                wtv += tl.sum(w * v[:, None], axis=0)
            wtv = wtv * inv_norm_v
            tl.store(us_ptr + cols, wtv, mask=cols < N)
            sum_sq_t += tl.sum(wtv * wtv, axis=0)
        inv_norm_u = _inv_norm(sum_sq_t)

    tl.debug_barrier()
    for c0 in range(0, N, BLOCK_N):
        cols = c0 + offs_n
        t = tl.load(us_ptr + cols, mask=cols < N)
        tl.store(u_out_ptr + cols, (t * inv_norm_u).to(u_out_ptr.dtype.element_ty), mask=cols < N)
    for r0 in range(0, M, BLOCK_M):
        rows = r0 + offs_m
        wu = tl.load(vs_ptr + rows, mask=rows < M)
        tl.store(v_out_ptr + rows, (wu * inv_norm_v).to(v_out_ptr.dtype.element_ty), mask=rows < M)
    # t . normalize(t) = |t|^2 / max(|t|, eps): 0 for an all-zero W, NaN for a non-finite one.
    return sum_sq_t * inv_norm_u


@triton.jit
def _power_iteration_kernel(w_ptr, u_ptr, sigma_ptr, u_out_ptr, v_out_ptr, scratch_ptr, iters, M, N,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Power iteration (Miyato et al., ICLR 2018, "Spectral Normalization for GANs") on a batch
    of row-major M x N matrices, one program per matrix, all `iters` steps in this launch.

    Forward, per matrix W with right vector u: repeat `iters` times
        v = W u / max(|W u|, 1e-12);  t = W^T v;  u = t / max(|t|, 1e-12)
    then sigma = t . u (= v^T W u), the estimate of the largest singular value.
    Backward (power_iteration_backward): d sigma / d W = v u^T, u and v held constant.

    Grid (batch,). A program cannot wait for other programs, so one matrix is one program: a huge
    single matrix runs on one SM, and throughput comes from batches. scratch holds M + N
    accumulation-dtype entries per matrix (u then v).
    """
    b = tl.program_id(0).to(tl.int64)
    us_ptr = scratch_ptr + b * (M + N)
    sigma = _power_iterate(w_ptr + b * M * N, u_ptr + b * N, u_out_ptr + b * N, v_out_ptr + b * M,
                           us_ptr, us_ptr + N, iters, M, N,
                           1, N, 0, 1, 1, 0, BLOCK_M, BLOCK_N)
    tl.store(sigma_ptr + b, sigma.to(sigma_ptr.dtype.element_ty))


@triton.jit
def _power_iteration_backward_kernel(grad_sigma_ptr, u_ptr, v_ptr, grad_w_ptr, M, N,
                                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Gradient of power-iteration sigma w.r.t. W (Miyato et al. 2018: u, v held constant):
    grad_W[b, r, c] = grad_sigma[b] * v[b, r] * u[b, c].

    Grid (batch * row tiles * column tiles,), flattened so large batches fit in axis 0; each
    program writes one BLOCK_M x BLOCK_N outer-product tile, no per-element index arithmetic.
    """
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    b = (pid // (tiles_m * tiles_n)).to(tl.int64)
    tile = pid % (tiles_m * tiles_n)
    rows = (tile // tiles_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = (tile % tiles_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    # The rule of _common.accumulation_dtype, resolved at compile time.
    acc_ty = tl.float64 if grad_w_ptr.dtype.element_ty == tl.float64 else tl.float32
    g = tl.load(grad_sigma_ptr + b).to(acc_ty)
    v = tl.load(v_ptr + b * M + rows, mask=rows < M, other=0.0).to(acc_ty)
    u = tl.load(u_ptr + b * N + cols, mask=cols < N, other=0.0).to(acc_ty)
    grad = (g * v)[:, None] * u[None, :]
    mask = (rows < M)[:, None] & (cols < N)[None, :]
    tl.store(grad_w_ptr + b * M * N + rows.to(tl.int64)[:, None] * N + cols[None, :],
             grad.to(grad_w_ptr.dtype.element_ty), mask=mask)


def power_iteration(weight: torch.Tensor, u: torch.Tensor, iters: int):
    """(sigma (...), u (..., n), v (..., m)) after `iters` power-iteration steps on W (..., m, n).

    See _power_iteration_kernel for the math. Inputs are contiguous, on one device, of one
    floating dtype (the op checks them first: lipkernels.ops.power_iteration); outputs are new
    tensors in weight's dtype.
    """
    *batch, m, n = weight.shape
    count = weight.numel() // (m * n)
    acc = accumulation_dtype(weight.dtype)
    sigma = weight.new_empty(batch)
    u_out = weight.new_empty((*batch, n))
    v_out = weight.new_empty((*batch, m))
    scratch = torch.empty((count, m + n), dtype=acc, device=weight.device)
    block_m, block_n, num_warps = tile_shape(m, n)
    launchable(_power_iteration_kernel)[(count,)](
        weight, u, sigma, u_out, v_out, scratch, iters, m, n,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps)
    return sigma, u_out, v_out


def power_iteration_backward(grad_sigma: torch.Tensor, u: torch.Tensor, v: torch.Tensor):
    """grad_weight (..., m, n) = grad_sigma[..., None, None] * v[..., :, None] * u[..., None, :]."""
    *batch, n = u.shape
    m = v.shape[-1]
    count = u.numel() // n
    grad_weight = u.new_empty((*batch, m, n))
    block_m, block_n, num_warps = tile_shape(m, n)
    grid = (count * triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
    launchable(_power_iteration_backward_kernel)[grid](
        grad_sigma, u, v, grad_weight, m, n, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps)
    return grad_weight
