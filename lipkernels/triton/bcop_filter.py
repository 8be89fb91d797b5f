"""Triton BCOP filter construction and its backward, each one persistent launch.

Li, Haque, Anil, Lucas, Grosse & Jacobsen, "Preventing Gradient Attenuation in Lipschitz
Constrained Convolutional Networks", NeurIPS 2019, with the conventions of its code
(lipkernels/reference/bcop_filter.py). From matrices M (2k - 1, C, C), the head H_t (r x C, r =
min(in, out)) and the projectors P_j = U_j U_j^T (U_j the first C/2 columns of M_(j+1)), the
taps Y (k x k, each r x C) grow one factor P_j + (I - P_j) z at a time, along the first tap axis
for even j and the second for odd j:
    forward    Y_0 = H_t,   Y_(j+1)[t] = Y_j[t - e] + (Y_j[t] - Y_j[t - e]) P_j
               (taps outside Y_j are zero; e the unit step along the axis), and the filter holds
               Y_(2k-2) where the seed places it (weight[o, c, b, a] from Y[a][b]);
    backward   from G = dL/dY_(j+1): D[t] = G[t] - G[t + e] over Y_j's taps,
               dL/dP_j = sum_t Y_j[t]^T D[t],   dL/dY_j[t] = G[t + e] + D[t] P_j,
               then dL/dU_j = (dL/dP_j + dL/dP_j^T) U_j and dL/dH_t = dL/dY_0.
The forward returns the projectors; its taps between steps are not kept: the backward grows them
again (2k - 3 steps) into its scratch before the reverse steps, so the op keeps one filter's
worth less than the C++ kernel at the cost of those products.

Each phase (the projectors, each growth step, each reverse step, the final products) is a set of
output tiles spread over one launch's programs, the phases separated by grid barriers (one phase
per launch under the interpreter: `_common.phase_spans`): a step's GEMM is (taps x r) x C by
C x C, so at 512 channels its tiles fill the SMs, where a program per filter would use one.
Products are float32-accurate (tf32x3) for float32 and IEEE for float64. Tap stacks live on a
fixed k x k grid of r x C taps; Y_0 is read in place from M_0 through strides; a tap outside a
stack is loaded with R = 0 rows (every entry zero).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import float32_accurate_precision, launchable, persistent_programs, phase_spans
from ._grid_barrier import grid_barrier
from .bjorck import load_tile, store_tile

# Output tiles BLOCK x BLOCK, reductions BLOCK_K at a time, on 4 warps.
_MAX_BLOCK = 32
_MIN_BLOCK = 16
_BLOCK_K = 16
_NUM_WARPS = 4
# Programs without a GPU: the interpreter runs them one after another, and two exercise the
# split of a phase's tiles over programs as well as a program per tile would.
_INTERPRETED_PROGRAMS = 2


@triton.jit
def _dims(t):
    """(taps along the first axis, along the second) after t growth steps."""
    return 1 + (t + 1) // 2, 1 + t // 2


@triton.jit
def _stack(t, m_ptr, scratch_ptr, head_rs, head_cs, R, C, K):
    """(base, row stride, col stride, stride of the first tap axis, of the second) of the taps
    Y_t: M_0 read in place as H_t for t = 0, else entry t of the scratch stacks (k x k taps of
    R x C, row-major)."""
    if t == 0:
        base, rs, cs, ta, tb = m_ptr, head_rs, head_cs, 0, 0
    else:
        base = scratch_ptr + tl.cast(t, tl.int64) * K * K * R * C
        rs, cs, ta, tb = C, 1, K * R * C, R * C
    return base, rs, cs, ta, tb


@triton.jit
def _tile_of(item, R, C, BLOCK: tl.constexpr):
    """(tap index, row indices, col indices) of output tile `item` of R x C taps."""
    row_blocks, col_blocks = tl.cdiv(R, BLOCK), tl.cdiv(C, BLOCK)
    tap = item // (row_blocks * col_blocks)
    within = item % (row_blocks * col_blocks)
    rows = (within // col_blocks) * BLOCK + tl.arange(0, BLOCK)
    cols = (within % col_blocks) * BLOCK + tl.arange(0, BLOCK)
    return tap, rows, cols


@triton.jit
def _projector_phase(m_ptr, p_ptr, C, STEPS, ACC: tl.constexpr, PRECISION: tl.constexpr,
                     BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
    """P_j = U_j U_j^T (C x C) for every step j, U_j = M_(j+1)[:, :C/2]."""
    items = STEPS * tl.cdiv(C, BLOCK) * tl.cdiv(C, BLOCK)
    for item in range(tl.program_id(0), items, tl.num_programs(0)):
        j, rows, cols = _tile_of(item, C, C, BLOCK)
        u = m_ptr + tl.cast(j + 1, tl.int64) * C * C
        acc = tl.zeros([BLOCK, BLOCK], ACC)
        for k0 in range(0, C // 2, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            a = load_tile(u, rows, ks, C, 1, C, C // 2).to(ACC)
            b = load_tile(u, ks, cols, 1, C, C // 2, C).to(ACC)
            acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=ACC)
        store_tile(p_ptr + tl.cast(j, tl.int64) * C * C, rows, cols, C, 1, C, C, acc,
                   True)


@triton.jit
def _growth_phase(t, m_ptr, scratch_ptr, p_ptr, out_ptr, out_rs, out_cs, out_ta, out_tb,
                  head_rs, head_cs, R, C, K, ACC: tl.constexpr, PRECISION: tl.constexpr,
                  BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
    """Y_(t+1)[tap] = Y_t[tap - e] + (Y_t[tap] - Y_t[tap - e]) P_t for every tap of Y_(t+1),
    stored through out's strides."""
    src, s_rs, s_cs, s_ta, s_tb = _stack(t, m_ptr, scratch_ptr, head_rs, head_cs, R, C, K)
    n1, n2 = _dims(t)
    m1, m2 = _dims(t + 1)
    axis = t % 2
    p = p_ptr + tl.cast(t, tl.int64) * C * C
    items = m1 * m2 * tl.cdiv(R, BLOCK) * tl.cdiv(C, BLOCK)
    for item in range(tl.program_id(0), items, tl.num_programs(0)):
        tap, rows, cols = _tile_of(item, R, C, BLOCK)
        a, b = tap // m2, tap % m2
        pa, pb = a - (1 - axis), b - axis
        current_ok = (a < n1) & (b < n2)
        previous_ok = (pa >= 0) & (pb >= 0)
        current = src + a * s_ta + b * s_tb
        previous = src + pa * s_ta + pb * s_tb
        acc = load_tile(previous, rows, cols, s_rs, s_cs, R * previous_ok, C).to(ACC)
        for k0 in range(0, C, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            d = (load_tile(current, rows, ks, s_rs, s_cs, R * current_ok, C).to(ACC)
                 - load_tile(previous, rows, ks, s_rs, s_cs, R * previous_ok, C).to(ACC))
            q = load_tile(p, ks, cols, C, 1, C, C).to(ACC)
            acc = tl.dot(d, q, acc, input_precision=PRECISION, out_dtype=ACC)
        store_tile(out_ptr + a * out_ta + b * out_tb, rows, cols, out_rs, out_cs, R, C, acc,
                   True)


@triton.jit
def _bcop_filter_kernel(m_ptr, p_ptr, scratch_ptr, weight_ptr, counter_ptr, first_phase,
                        last_phase, R, C, K, head_rs, head_cs, w_rs, w_cs,
                        PRECISION: tl.constexpr, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
    """Phase 0 the projectors, phase 1 + t growth step t (t < 2k - 2), into the scratch stacks
    but for the last, which writes the filter: weight[o, c, b, a] = Y[a][b] through (w_rs,
    w_cs) for (row, col) of a tap and (1, K) for (a, b)."""
    acc_ty: tl.constexpr = tl.float64 if m_ptr.dtype.element_ty == tl.float64 else tl.float32
    steps = 2 * K - 2
    for phase in range(first_phase, last_phase):
        if phase > first_phase:
            grid_barrier(counter_ptr, (phase - first_phase) * tl.num_programs(0))
        if phase == 0:
            _projector_phase(m_ptr, p_ptr, C, steps, acc_ty, PRECISION, BLOCK, BLOCK_K)
        else:
            t = phase - 1
            if t == steps - 1:
                out, rs, cs, ta, tb = weight_ptr, w_rs, w_cs, 1, K
            else:
                _, rs, cs, ta, tb = _stack(1, m_ptr, scratch_ptr, head_rs, head_cs, R, C, K)
                out = scratch_ptr + tl.cast(t + 1, tl.int64) * K * K * R * C
            _growth_phase(t, m_ptr, scratch_ptr, p_ptr, out, rs, cs, ta, tb, head_rs, head_cs,
                          R, C, K, acc_ty, PRECISION, BLOCK, BLOCK_K)


@triton.jit
def _reverse_phase(t, m_ptr, scratch_ptr, p_ptr, g_ptr, g_rs, g_cs, g_ta, g_tb, out_ptr,
                   dp_ptr, head_rs, head_cs, R, C, K, ACC: tl.constexpr,
                   PRECISION: tl.constexpr, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
    """From G = dL/dY_(t+1) (through its strides): dL/dY_t[tap] = G[tap + e] + D[tap] P_t into
    out (a k x k stack), and dL/dP_t = sum_tap Y_t[tap]^T D[tap] into dp, D = G[tap] -
    G[tap + e] over Y_t's taps; the two sets of tiles share the phase."""
    y, y_rs, y_cs, y_ta, y_tb = _stack(t, m_ptr, scratch_ptr, head_rs, head_cs, R, C, K)
    n1, n2 = _dims(t)
    ea, eb = 1 - t % 2, t % 2
    p = p_ptr + tl.cast(t, tl.int64) * C * C
    gradient_items = n1 * n2 * tl.cdiv(R, BLOCK) * tl.cdiv(C, BLOCK)
    projector_items = tl.cdiv(C, BLOCK) * tl.cdiv(C, BLOCK)
    for item in range(tl.program_id(0), gradient_items + projector_items, tl.num_programs(0)):
        if item < gradient_items:
            tap, rows, cols = _tile_of(item, R, C, BLOCK)
            a, b = tap // n2, tap % n2
            here = g_ptr + a * g_ta + b * g_tb
            ahead = g_ptr + (a + ea) * g_ta + (b + eb) * g_tb
            acc = load_tile(ahead, rows, cols, g_rs, g_cs, R, C).to(ACC)
            for k0 in range(0, C, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                d = (load_tile(here, rows, ks, g_rs, g_cs, R, C).to(ACC)
                     - load_tile(ahead, rows, ks, g_rs, g_cs, R, C).to(ACC))
                q = load_tile(p, ks, cols, C, 1, C, C).to(ACC)
                acc = tl.dot(d, q, acc, input_precision=PRECISION, out_dtype=ACC)
            store_tile(out_ptr + (a * K + b) * R * C, rows, cols, C, 1, R, C, acc, True)
        else:
            _, rows, cols = _tile_of(item - gradient_items, C, C, BLOCK)
            acc = tl.zeros([BLOCK, BLOCK], ACC)
            for tap in range(n1 * n2):
                a, b = tap // n2, tap % n2
                here = g_ptr + a * g_ta + b * g_tb
                ahead = g_ptr + (a + ea) * g_ta + (b + eb) * g_tb
                for k0 in range(0, R, BLOCK_K):
                    ks = k0 + tl.arange(0, BLOCK_K)
                    yt = load_tile(y + a * y_ta + b * y_tb, rows, ks, y_cs, y_rs, C, R).to(ACC)
                    d = (load_tile(here, ks, cols, g_rs, g_cs, R, C).to(ACC)
                         - load_tile(ahead, ks, cols, g_rs, g_cs, R, C).to(ACC))
                    acc = tl.dot(yt, d, acc, input_precision=PRECISION, out_dtype=ACC)
            store_tile(dp_ptr + tl.cast(t, tl.int64) * C * C, rows, cols, C, 1, C, C, acc,
                       True)


@triton.jit
def _matrices_gradient_phase(m_ptr, dp_ptr, g0_ptr, grad_ptr, R, C, K, head_rs, head_cs,
                             ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK: tl.constexpr,
                             BLOCK_K: tl.constexpr):
    """dL/dM_(j+1)[:, :C/2] = (dP_j + dP_j^T) U_j for every j, and dL/dM_0 = dL/dY_0 placed
    where H_t reads M_0 (grad_ptr zero elsewhere)."""
    steps = 2 * K - 2
    half = C // 2
    head_items = tl.cdiv(R, BLOCK) * tl.cdiv(C, BLOCK)
    items = head_items + steps * tl.cdiv(C, BLOCK) * tl.cdiv(half, BLOCK)
    for item in range(tl.program_id(0), items, tl.num_programs(0)):
        if item < head_items:
            _, rows, cols = _tile_of(item, R, C, BLOCK)
            g = load_tile(g0_ptr, rows, cols, C, 1, R, C)
            store_tile(grad_ptr, rows, cols, head_rs, head_cs, R, C, g, True)
        else:
            j, rows, cols = _tile_of(item - head_items, C, half, BLOCK)
            dp = dp_ptr + tl.cast(j, tl.int64) * C * C
            u = m_ptr + tl.cast(j + 1, tl.int64) * C * C
            acc = tl.zeros([BLOCK, BLOCK], ACC)
            for k0 in range(0, C, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                s = (load_tile(dp, rows, ks, C, 1, C, C).to(ACC)
                     + load_tile(dp, rows, ks, 1, C, C, C).to(ACC))
                acc = tl.dot(s, load_tile(u, ks, cols, C, 1, C, half).to(ACC), acc,
                             input_precision=PRECISION, out_dtype=ACC)
            store_tile(grad_ptr + tl.cast(j + 1, tl.int64) * C * C, rows, cols, C, 1, C, half,
                       acc, True)


@triton.jit
def _bcop_filter_backward_kernel(grad_weight_ptr, m_ptr, p_ptr, scratch_ptr, g_ptr, dp_ptr,
                                 grad_ptr, counter_ptr, first_phase, last_phase, R, C, K,
                                 head_rs, head_cs, w_rs, w_cs, PRECISION: tl.constexpr,
                                 BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
    """Phases 0 .. 2k - 4 grow Y_1 .. Y_(2k-3) again into the scratch stacks; phase 2k - 3 + s
    runs reverse step t = 2k - 3 - s (G of Y_(2k-2) read from grad_weight through its strides,
    later ones from the two g stacks in turn); the last phase forms the matrices' gradient."""
    acc_ty: tl.constexpr = tl.float64 if m_ptr.dtype.element_ty == tl.float64 else tl.float32
    steps = 2 * K - 2
    stack = K * K * R * C
    for phase in range(first_phase, last_phase):
        if phase > first_phase:
            grid_barrier(counter_ptr, (phase - first_phase) * tl.num_programs(0))
        if phase < steps - 1:
            _, rs, cs, ta, tb = _stack(1, m_ptr, scratch_ptr, head_rs, head_cs, R, C, K)
            _growth_phase(phase, m_ptr, scratch_ptr, p_ptr,
                          scratch_ptr + tl.cast(phase + 1, tl.int64) * stack, rs, cs, ta, tb,
                          head_rs, head_cs, R, C, K, acc_ty, PRECISION, BLOCK, BLOCK_K)
        elif phase < 2 * steps - 1:
            s = phase - (steps - 1)
            t = steps - 1 - s
            out = g_ptr + tl.cast(t % 2, tl.int64) * stack
            if s == 0:
                g, rs, cs, ta, tb = grad_weight_ptr, w_rs, w_cs, 1, K
            else:
                _, rs, cs, ta, tb = _stack(1, m_ptr, scratch_ptr, head_rs, head_cs, R, C, K)
                g = g_ptr + tl.cast((t + 1) % 2, tl.int64) * stack
            _reverse_phase(t, m_ptr, scratch_ptr, p_ptr, g, rs, cs, ta, tb, out, dp_ptr,
                           head_rs, head_cs, R, C, K, acc_ty, PRECISION, BLOCK, BLOCK_K)
        else:
            _matrices_gradient_phase(m_ptr, dp_ptr, g_ptr, grad_ptr, R, C, K, head_rs, head_cs,
                                     acc_ty, PRECISION, BLOCK, BLOCK_K)


class _Geometry:
    """Sizes and strides of one filter: k, C, r, the strides through which M_0 is H_t, those
    of a tap's (row, col) in the filter, and the launch's tiles and programs."""

    def __init__(self, matrices: torch.Tensor, in_channels: int, out_channels: int):
        count, channels, _ = matrices.shape
        self.size, self.channels = (count + 1) // 2, channels
        self.rows = min(in_channels, out_channels)
        # H_t[row, col] = M_0[row, col], or M_0[col, row] for in > out.
        self.head = (1, channels) if in_channels > out_channels else (channels, 1)
        # weight[o, c, b, a] = Y[a][b][c, o] (in < out, or in = out from k = 2) or [o, c].
        kk = self.size * self.size
        transposed = in_channels < out_channels or (in_channels == out_channels
                                                    and self.size > 1)
        self.weight = (kk, in_channels * kk) if transposed else (in_channels * kk, kk)
        block = min(_MAX_BLOCK, max(_MIN_BLOCK, triton.next_power_of_2(channels)))
        self.config = dict(PRECISION=float32_accurate_precision(matrices.dtype), BLOCK=block,
                           BLOCK_K=_BLOCK_K, num_warps=_NUM_WARPS)
        tiles = kk * triton.cdiv(self.rows, block) * triton.cdiv(channels, block)
        programs = (_INTERPRETED_PROGRAMS if matrices.device.type == "cpu"
                    else persistent_programs(matrices.device))
        self.programs = min(programs, tiles)

    def arguments(self) -> tuple:
        return (self.rows, self.channels, self.size, *self.head, *self.weight)


def _head_filter(matrices, in_channels, out_channels):
    """k = 1: the filter is the head as the seed returns it (H for in = out, else H^T)."""
    head = matrices[0, :in_channels, :out_channels]
    head = head if in_channels == out_channels else head.mT
    return head.contiguous()[:, :, None, None]


def bcop_filter(matrices: torch.Tensor, in_channels: int, out_channels: int):
    """(weight, projectors (2k - 2, C, C), []) for contiguous float32/float64 matrices (2k - 1,
    C, C) (the op checks them: lipkernels.ops.bcop_filter); the backward grows the taps again,
    so none are kept."""
    geometry = _Geometry(matrices, in_channels, out_channels)
    k, C, R = geometry.size, geometry.channels, geometry.rows
    projectors = matrices.new_empty((2 * k - 2, C, C))
    if k == 1:
        return _head_filter(matrices, in_channels, out_channels), projectors, []
    weight = matrices.new_empty((out_channels, in_channels, k, k))
    scratch = matrices.new_empty((2 * k - 2, k, k, R, C))
    counter = torch.zeros(1, dtype=torch.int32, device=matrices.device)
    for first, last in phase_spans(2 * k - 1, matrices.device):
        launchable(_bcop_filter_kernel)[(geometry.programs,)](
            matrices, projectors, scratch, weight, counter, first, last, *geometry.arguments(),
            **geometry.config)
    return weight, projectors, []


def bcop_filter_backward(grad_weight: torch.Tensor, matrices: torch.Tensor,
                         projectors: torch.Tensor, iterates: list, in_channels: int,
                         out_channels: int) -> torch.Tensor:
    """grad_matrices (2k - 1, C, C) of weight = bcop_filter(matrices) against grad_weight."""
    geometry = _Geometry(matrices, in_channels, out_channels)
    k, C, R = geometry.size, geometry.channels, geometry.rows
    grad = torch.zeros_like(matrices)
    if k == 1:
        grad[0, :in_channels, :out_channels] = (
            grad_weight[:, :, 0, 0] if in_channels == out_channels
            else grad_weight[:, :, 0, 0].mT)
        return grad
    scratch = matrices.new_empty((2 * k - 2, k, k, R, C))
    g = matrices.new_empty((2, k, k, R, C))
    dp = matrices.new_empty((2 * k - 2, C, C))
    counter = torch.zeros(1, dtype=torch.int32, device=matrices.device)
    for first, last in phase_spans(2 * (2 * k - 2), matrices.device):
        launchable(_bcop_filter_backward_kernel)[(geometry.programs,)](
            grad_weight, matrices, projectors, scratch, g, dp, grad, counter, first, last,
            *geometry.arguments(), **geometry.config)
    return grad
