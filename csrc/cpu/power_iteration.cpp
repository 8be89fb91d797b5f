// CPU kernels of power_iteration and power_iteration_backward.
//
// Math (kernels/power_iteration.cuh; Miyato et al., ICLR 2018): for each matrix W (m x n) of the
// batch, repeat `iters` times { v = normalize(W u); t = W^T v; u = normalize(t) }, then
// sigma = t . u. Backward: grad_W[r, c] = grad_sigma * v[r] * u[c].
//
// Organisation: run_power_iteration() (declared in cpu/power_iteration.h, also used by
// conv_spectral_bounds) solves a list of independent problems. Each iteration makes a single
// sweep over W: row r gives v_raw[r] = W[r, :] . u, and while that row is still in cache it is
// added into t_raw += v_raw[r] * W[r, :]. Normalising afterwards (t = t_raw / ||v_raw||) gives
// W^T normalize(W u), so W is streamed from memory once per iteration instead of twice. Both the
// dot products and the row updates walk W contiguously. A problem stored transposed takes the
// same two row primitives as two passes (v_raw = sum of rows, then t = row dot products).
// Threads take whole problems when that balances; otherwise each matrix is split into row
// chunks, each chunk accumulating into its own partial vector, and the partials are summed.
#include "cpu/power_iteration.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "common/checks.h"
#include "cpu/parallel.h"
#include "kernels/power_iteration.cuh"

namespace lipkernels {
namespace cpu {
namespace {

// A row chunk must be tall enough that summing its partial vector (one add per column) stays
// small beside its sweep (rows * columns multiply-adds).
constexpr int64_t kMinChunkRows = 16;
// Problems at least this large (elements) pay for a fork/join per pass; below it, splitting a
// matrix over threads is only worth it when there is nothing else to run in parallel.
constexpr int64_t kLargeProblemElements = int64_t{1} << 20;
// Whole problems go to other threads only in tasks of at least this many multiply-adds over all
// iterations (about 50 microseconds): a thread that must first be woken up (or, on a loaded
// machine, wait for a core) easily costs more than a shorter task.
constexpr int64_t kMinProblemTaskWork = int64_t{1} << 18;

// The two row primitives, inlined into the multiversioned entry points below. Rows go four at a
// time, so each load of the shared vector serves four rows. `omp simd reduction` lets the
// compiler reassociate the sums into vector lanes (GCC keeps a float sum sequential otherwise,
// short of -ffast-math).

// out[r] = w[r, :] . x for the rows [row_begin, row_end) of the row-major w (n columns).
template <typename acc_t>
[[gnu::always_inline]] inline void dot_rows_impl(const acc_t* __restrict w, int64_t n,
                                                 const acc_t* __restrict x,
                                                 acc_t* __restrict out, int64_t row_begin,
                                                 int64_t row_end) {
  int64_t r = row_begin;
  for (; r + 4 <= row_end; r += 4) {
    const acc_t* __restrict w0 = w + r * n;
    const acc_t* __restrict w1 = w0 + n;
    const acc_t* __restrict w2 = w1 + n;
    const acc_t* __restrict w3 = w2 + n;
    acc_t d0 = 0, d1 = 0, d2 = 0, d3 = 0;
#pragma omp simd reduction(+ : d0, d1, d2, d3)
    for (int64_t c = 0; c < n; ++c) {
      d0 += w0[c] * x[c];
      d1 += w1[c] * x[c];
      d2 += w2[c] * x[c];
      d3 += w3[c] * x[c];
    }
    out[r] = d0;
    out[r + 1] = d1;
    out[r + 2] = d2;
    out[r + 3] = d3;
  }
  for (; r < row_end; ++r) {
    const acc_t* __restrict w0 = w + r * n;
    acc_t d0 = 0;
#pragma omp simd reduction(+ : d0)
    for (int64_t c = 0; c < n; ++c) {
      d0 += w0[c] * x[c];
    }
    out[r] = d0;
  }
}

// y += sum_r coef[r] * w[r, :] over the rows [row_begin, row_end) of the row-major w.
template <typename acc_t>
[[gnu::always_inline]] inline void axpy_rows_impl(const acc_t* __restrict w, int64_t n,
                                                  const acc_t* __restrict coef,
                                                  acc_t* __restrict y, int64_t row_begin,
                                                  int64_t row_end) {
  int64_t r = row_begin;
  for (; r + 4 <= row_end; r += 4) {
    const acc_t* __restrict w0 = w + r * n;
    const acc_t* __restrict w1 = w0 + n;
    const acc_t* __restrict w2 = w1 + n;
    const acc_t* __restrict w3 = w2 + n;
    const acc_t c0 = coef[r], c1 = coef[r + 1], c2 = coef[r + 2], c3 = coef[r + 3];
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) {
      y[c] += c0 * w0[c] + c1 * w1[c] + c2 * w2[c] + c3 * w3[c];
    }
  }
  for (; r < row_end; ++r) {
    const acc_t* __restrict w0 = w + r * n;
    const acc_t c0 = coef[r];
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) {
      y[c] += c0 * w0[c];
    }
  }
}

template <typename acc_t>
LIPKERNELS_CPU_CLONES void dot_rows(const acc_t* w, int64_t n, const acc_t* x, acc_t* out,
                                    int64_t row_begin, int64_t row_end) {
  dot_rows_impl(w, n, x, out, row_begin, row_end);
}

template <typename acc_t>
LIPKERNELS_CPU_CLONES void axpy_rows(const acc_t* w, int64_t n, const acc_t* coef, acc_t* y,
                                     int64_t row_begin, int64_t row_end) {
  axpy_rows_impl(w, n, coef, y, row_begin, row_end);
}

// The fused sweep: v_raw[r] = w[r, :] . u and t_raw += v_raw[r] * w[r, :] for the rows
// [row_begin, row_end), four rows at a time so that they are re-read from L1.
template <typename acc_t>
LIPKERNELS_CPU_CLONES void sweep_rows(const acc_t* w, int64_t n, const acc_t* u, acc_t* v_raw,
                                      acc_t* t_raw, int64_t row_begin, int64_t row_end) {
  for (int64_t r = row_begin; r < row_end; r += 4) {
    const int64_t r_end = std::min(r + 4, row_end);
    dot_rows_impl(w, n, u, v_raw, r, r_end);
    axpy_rows_impl(w, n, v_raw, t_raw, r, r_end);
  }
}

template <typename acc_t>
LIPKERNELS_CPU_CLONES acc_t dot(const acc_t* x, const acc_t* y, int64_t n) {
  return simd_dot(x, y, n);
}

// Calls fn(c, row_begin, row_end) for the `chunks` equal row chunks of `rows` rows, in parallel
// when there is more than one.
template <typename Fn>
void for_row_chunks(int64_t chunks, int64_t rows, const Fn& fn) {
  if (chunks == 1) {
    fn(0, 0, rows);
    return;
  }
  at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    for (int64_t c = chunk_begin; c < chunk_end; ++c) {
      fn(c, rows * c / chunks, rows * (c + 1) / chunks);
    }
  });
}

// Partial vector c (of length len) of a chunked sweep, zeroed.
template <typename acc_t>
acc_t* partial(acc_t* partials, int64_t c, int64_t len) {
  acc_t* p = partials + c * len;
  std::fill_n(p, len, acc_t(0));
  return p;
}

// Adds partial vectors 1..chunks-1 into partial 0.
template <typename acc_t>
void sum_partials(acc_t* partials, int64_t chunks, int64_t len) {
  for (int64_t c = 1; c < chunks; ++c) {
    const acc_t* p = partials + c * len;
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) {
      partials[j] += p[j];
    }
  }
}

// Scratch entries one problem needs: partial sums of what a row sweep accumulates (t_raw, n
// entries per chunk; for the transposed storage v_raw, m entries per chunk), then t (n entries)
// for the transposed storage, where t is not chunk 0's partial.
template <typename acc_t>
int64_t scratch_size(const PowerIterationProblem<acc_t>& p, int64_t chunks) {
  return p.transposed ? chunks * p.m + p.n : chunks * p.n;
}

// One iteration of problem p from its current u (p.u), with the matrix split into `chunks` row
// chunks swept in parallel (chunks == 1 runs serially). Leaves the new u in p.u and t = M^T v in
// the scratch (see t_of), and v in p.v up to the factor it returns (1 for the transposed form).
template <typename acc_t>
acc_t iterate(const PowerIterationProblem<acc_t>& p, int64_t chunks, acc_t* scratch) {
  const int64_t m = p.m, n = p.n;
  acc_t* t = scratch;
  acc_t v_scale = 1;
  if (!p.transposed) {
    for_row_chunks(chunks, m, [&](int64_t c, int64_t r0, int64_t r1) {
      sweep_rows(p.weight, n, p.u, p.v, partial(scratch, c, n), r0, r1);
    });
    sum_partials(scratch, chunks, n);
    // p.v holds v_raw = M u and t holds M^T v_raw, so t * v_scale = M^T normalize(M u).
    v_scale = kernels::normalizing_scale(dot(p.v, p.v, m));
    for (int64_t j = 0; j < n; ++j) {
      t[j] *= v_scale;
    }
  } else {
    // The stored matrix is M^T (n x m): M u sums its rows weighted by u, M^T v is its row dots.
    t = scratch + chunks * m;
    for_row_chunks(chunks, n, [&](int64_t c, int64_t r0, int64_t r1) {
      axpy_rows(p.weight, m, p.u, partial(scratch, c, m), r0, r1);
    });
    sum_partials(scratch, chunks, m);
    const acc_t scale = kernels::normalizing_scale(dot(scratch, scratch, m));
    for (int64_t r = 0; r < m; ++r) {
      p.v[r] = scratch[r] * scale;
    }
    for_row_chunks(chunks, n, [&](int64_t, int64_t r0, int64_t r1) {
      dot_rows(p.weight, m, p.v, t, r0, r1);
    });
  }
  const acc_t u_scale = kernels::normalizing_scale(dot(t, t, n));
  for (int64_t j = 0; j < n; ++j) {
    p.u[j] = t[j] * u_scale;
  }
  return v_scale;
}

// After the last iteration: v normalised, sigma = t . u.
template <typename acc_t>
void finish(const PowerIterationProblem<acc_t>& p, int64_t chunks, const acc_t* scratch,
            acc_t v_scale) {
  for (int64_t r = 0; r < p.m; ++r) {
    p.v[r] *= v_scale;
  }
  const acc_t* t = p.transposed ? scratch + chunks * p.m : scratch;
  *p.sigma = dot(t, p.u, p.n);
}

// Runs all iterations of one problem split into `chunks` row chunks.
template <typename acc_t>
void solve_split(const PowerIterationProblem<acc_t>& p, int64_t iters, int64_t chunks) {
  std::vector<acc_t> scratch(scratch_size(p, chunks));
  acc_t v_scale = 1;
  for (int64_t it = 0; it < iters; ++it) {
    v_scale = iterate(p, chunks, scratch.data());
  }
  finish(p, chunks, scratch.data(), v_scale);
}

// Runs all iterations of the problems [begin, end) serially, a few at a time in lockstep: the
// iterations of one small problem form a chain of dependent reductions, square roots and
// divisions, and interleaving independent problems lets the processor overlap those latencies.
// Problems are only grouped while their matrices together stay in L1, so that a matrix does not
// have to come back from further away on every iteration.
template <typename acc_t>
void solve_serial(const std::vector<PowerIterationProblem<acc_t>>& problems, int64_t begin,
                  int64_t end, int64_t iters) {
  constexpr int64_t kMaxLockstep = 16;
  constexpr int64_t kLockstepBytes = 32 * 1024;
  std::vector<acc_t> scratch;
  std::vector<int64_t> offset(kMaxLockstep + 1);
  acc_t v_scale[kMaxLockstep];
  for (int64_t b0 = begin; b0 < end;) {
    int64_t b1 = b0 + 1, bytes = problems[b0].m * problems[b0].n * sizeof(acc_t);
    while (b1 < end && b1 - b0 < kMaxLockstep) {
      bytes += problems[b1].m * problems[b1].n * sizeof(acc_t);
      if (bytes > kLockstepBytes) {
        break;
      }
      ++b1;
    }
    for (int64_t b = b0; b < b1; ++b) {
      offset[b - b0 + 1] = offset[b - b0] + scratch_size(problems[b], 1);
    }
    scratch.resize(offset[b1 - b0]);
    for (int64_t it = 0; it < iters; ++it) {
      for (int64_t b = b0; b < b1; ++b) {
        v_scale[b - b0] = iterate(problems[b], 1, scratch.data() + offset[b - b0]);
      }
    }
    for (int64_t b = b0; b < b1; ++b) {
      finish(problems[b], 1, scratch.data() + offset[b - b0], v_scale[b - b0]);
    }
    b0 = b1;
  }
}

// Relative cost of one iteration: elements streamed from memory.
template <typename acc_t>
int64_t iteration_cost(const PowerIterationProblem<acc_t>& p) {
  return p.m * p.n * (p.transposed ? 2 : 1);
}

}  // namespace

template <typename acc_t>
void run_power_iteration(const std::vector<PowerIterationProblem<acc_t>>& problems,
                         int64_t iters) {
  const int64_t count = static_cast<int64_t>(problems.size());
  const int64_t threads = at::get_num_threads();
  if (count == 0) {
    return;
  }
  // Whole problems per thread need no synchronisation inside the iteration loop, but
  // at::parallel_for deals them out in contiguous runs, which balances badly when there are few
  // of them of unequal cost (the four F4 matrices, of which M_4 may take two passes).
  const int64_t per_thread = (count + threads - 1) / threads;
  int64_t total_cost = 0, max_cost = 0, max_run_cost = 0;
  for (int64_t b = 0; b < count; b += per_thread) {
    int64_t run_cost = 0;
    for (int64_t j = b; j < std::min(count, b + per_thread); ++j) {
      run_cost += iteration_cost(problems[j]);
      max_cost = std::max(max_cost, iteration_cost(problems[j]));
    }
    total_cost += run_cost;
    max_run_cost = std::max(max_run_cost, run_cost);
  }
  const bool split_rows =
      count < threads ? max_cost >= 2 * kMinTaskElements  // nothing else to run in parallel
                      : max_cost >= kLargeProblemElements &&
                            4 * max_run_cost > 5 * (total_cost / threads);
  if (!split_rows) {
    // Small problems are grouped so that each task has at least kMinProblemTaskWork.
    const int64_t grain = std::max<int64_t>(1, kMinProblemTaskWork / (max_cost * iters));
    at::parallel_for(0, count, grain, [&](int64_t begin, int64_t end) {
      solve_serial(problems, begin, end, iters);
    });
    return;
  }
  for (const auto& p : problems) {
    const int64_t rows = p.transposed ? p.n : p.m;
    const int64_t chunks = std::max<int64_t>(
        1, std::min({threads, rows / kMinChunkRows, p.m * p.n / kMinTaskElements}));
    solve_split(p, iters, chunks);
  }
}

template void run_power_iteration<float>(const std::vector<PowerIterationProblem<float>>&,
                                         int64_t);
template void run_power_iteration<double>(const std::vector<PowerIterationProblem<double>>&,
                                          int64_t);

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> power_iteration_cpu(const at::Tensor& weight,
                                                                   const at::Tensor& u,
                                                                   int64_t iters) {
  const MatrixBatch batch = check_power_iteration_args(weight, u, iters);
  std::vector<int64_t> v_shape = batch.batch_shape;
  v_shape.push_back(batch.m);
  at::Tensor sigma, u_out, v_out;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, weight.scalar_type(), "power_iteration_cpu", [&] {
        // The iteration runs in acc_t; float and double weights are used in place, half and
        // bfloat16 ones are widened once (the iterations then reuse the float copy).
        using acc_t = at::opmath_type<scalar_t>;
        constexpr auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
        const auto acc_options = weight.options().dtype(acc_type);
        const at::Tensor w = weight.contiguous().to(acc_type);
        at::Tensor u_acc = at::empty(u.sizes(), acc_options).copy_(u);
        at::Tensor v_acc = at::empty(v_shape, acc_options);
        at::Tensor sigma_acc = at::empty(batch.batch_shape, acc_options);

        const acc_t* w_data = w.const_data_ptr<acc_t>();
        acc_t* u_data = u_acc.data_ptr<acc_t>();
        acc_t* v_data = v_acc.data_ptr<acc_t>();
        acc_t* sigma_data = sigma_acc.data_ptr<acc_t>();
        std::vector<PowerIterationProblem<acc_t>> problems(batch.count);
        for (int64_t b = 0; b < batch.count; ++b) {
          problems[b] = {w_data + b * batch.m * batch.n, batch.m, batch.n, u_data + b * batch.n,
                         v_data + b * batch.m, sigma_data + b, /*transposed=*/false};
        }
        run_power_iteration(problems, iters);

        sigma = sigma_acc.to(weight.scalar_type());
        u_out = u_acc.to(weight.scalar_type());
        v_out = v_acc.to(weight.scalar_type());
      });
  return {sigma, u_out, v_out};
}

at::Tensor power_iteration_backward_cpu(const at::Tensor& grad_sigma, const at::Tensor& u,
                                        const at::Tensor& v) {
  const MatrixBatch batch = check_power_iteration_backward_args(grad_sigma, u, v);
  std::vector<int64_t> grad_shape = batch.batch_shape;
  grad_shape.push_back(batch.m);
  grad_shape.push_back(batch.n);
  at::Tensor grad_weight = at::empty(grad_shape, u.options());
  const at::Tensor g = grad_sigma.contiguous(), uc = u.contiguous(), vc = v.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, u.scalar_type(), "power_iteration_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* g_data = g.const_data_ptr<scalar_t>();
        const scalar_t* u_data = uc.const_data_ptr<scalar_t>();
        const scalar_t* v_data = vc.const_data_ptr<scalar_t>();
        scalar_t* out = grad_weight.data_ptr<scalar_t>();
        const int64_t m = batch.m, n = batch.n;
        // One task per group of rows of the flattened (count * m, n) gradient.
        at::parallel_for(0, batch.count * m, std::max<int64_t>(1, kMinTaskElements / n),
                         [&](int64_t row_begin, int64_t row_end) {
                           for (int64_t row = row_begin; row < row_end; ++row) {
                             const int64_t b = row / m;
                             const acc_t g_b = static_cast<acc_t>(g_data[b]);
                             const acc_t v_r = static_cast<acc_t>(v_data[row]);
                             const scalar_t* u_b = u_data + b * n;
                             scalar_t* out_row = out + row * n;
                             for (int64_t c = 0; c < n; ++c) {
                               out_row[c] = static_cast<scalar_t>(
                                   kernels::sigma_grad(g_b, v_r, static_cast<acc_t>(u_b[c])));
                             }
                           }
                         });
      });
  return grad_weight;
}

}  // namespace

TORCH_LIBRARY_IMPL(lipkernels, CPU, m) {
  m.impl("power_iteration", &power_iteration_cpu);
  m.impl("power_iteration_backward", &power_iteration_backward_cpu);
}

}  // namespace cpu
}  // namespace lipkernels
