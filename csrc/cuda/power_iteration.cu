// CUDA kernels of power_iteration and power_iteration_backward, and the power-iteration engine
// that conv_spectral_bounds shares (cuda/power_iteration.cuh).
//
// Math (kernels/power_iteration.cuh; Miyato et al., ICLR 2018): for each matrix W (m x n),
// repeat `iters` times { v = normalize(W u); t = W^T v; u = normalize(t) }, then sigma = t . u.
// Backward: grad_W[r, c] = grad_sigma * v[r] * u[c].
//
// All iterations of all problems run in one kernel launch, in one of two forms:
//  - per-block: one thread block owns a problem (grid-stride over problems) and keeps t and v in
//    shared memory; iterations synchronise with __syncthreads only. Used for many problems
//    (a batch that fills the GPU) or small ones.
//  - grid-wide: a persistent cooperative kernel (all blocks co-resident) spreads every iteration
//    of a few large problems over the whole GPU, with two grid.sync() per iteration:
//      phase A, one warp per row: v_raw[r] = W[r, :] . u, with u = t / ||t|| formed on the fly
//        (each warp also sums t^2 as it streams t, so no extra pass or sync is needed for
//        ||t||), and ||v_raw||^2 accumulated per problem with atomics;
//      phase B, one warp per (32 columns, row chunk): t[c] += sum_r W[r, c] v_raw[r] / ||v_raw||,
//        combined across row chunks with atomics (so with more than one chunk the last bits of
//        the result may differ from run to run).
//    t and ||v_raw||^2 are double-buffered by iteration parity, so that each buffer can be zeroed
//    in the phase before it is accumulated into without another sync.
// A final block-per-problem step normalises and writes u, v and sigma in the output dtype.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cooperative_groups.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "cuda/launch.cuh"
#include "cuda/power_iteration.cuh"
#include "kernels/power_iteration.cuh"

namespace lipkernels {
namespace cuda {
namespace {

namespace cg = cooperative_groups;

constexpr int kWarp = 32;
// The grid-wide kernel runs at most this many blocks per SM: enough warps to keep loads in
// flight, while each grid.sync() waits on fewer blocks.
constexpr int kMaxGridBlocksPerSM = 4;
// Per-block form: problems up to this many elements run one block each even when there are few
// of them (an iteration then costs less than the two grid syncs it would need), provided t and v
// fit in the default shared memory (kDefaultSharedBytes).
constexpr int64_t kBlockProblemElements = int64_t{1} << 16;
// Phase B row chunks are at least this tall, which bounds the atomics to n per kMinChunkRows rows.
constexpr int64_t kMinChunkRows = 32;

// The job as the kernels see it: flat index ranges over the groups and the workspace.
template <typename scalar_t, typename acc_t>
struct DeviceJob {
  PowerIterationJob<scalar_t> job;
  // Prefix sums over the groups, ending with the total: rows of all problems (phase A work items
  // and offsets into v_raw), problems (offsets into vss), entries of t, and phase B items.
  int64_t row_begin[kMaxGroups + 1];
  int64_t problem_begin[kMaxGroups + 1];
  int64_t t_begin[kMaxGroups + 1];
  int64_t item_begin[kMaxGroups + 1];
  int64_t row_chunk[kMaxGroups];  // rows per phase B item
  int64_t max_m, max_n;
  // Grid-wide form only: t and ||v_raw||^2 per problem by iteration parity, v_raw per row.
  acc_t* t[2];
  acc_t* vss[2];
  acc_t* v_raw;
};

// The group whose range [begin[g], begin[g + 1]) holds `index`.
__device__ __forceinline__ int locate(const int64_t* begin, int groups, int64_t index) {
  int g = 0;
  while (g + 1 < groups && index >= begin[g + 1]) {
    ++g;
  }
  return g;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T x) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    x += __shfl_xor_sync(0xffffffffu, x, offset);
  }
  return x;
}

// Sum over the block, returned to every thread (all threads must call it). `scratch` holds one
// value per warp. Every thread adds the warp sums in the same order, so all get the same value.
template <typename T>
__device__ T block_sum(T x, T* scratch) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  x = warp_sum(x);
  __syncthreads();  // an earlier call may still be reading scratch
  if (lane == 0) {
    scratch[warp] = x;
  }
  __syncthreads();
  T total = 0;
  for (int w = 0; w < static_cast<int>(blockDim.x) / kWarp; ++w) {
    total += scratch[w];
  }
  return total;
}

// One warp: w_row . x and x . x over n entries, returned to every lane.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void warp_dot_and_norm(const scalar_t* w_row, const acc_t* x,
                                                  int64_t n, acc_t& dot, acc_t& x_squared) {
  acc_t d = 0, s = 0;
  for (int64_t c = threadIdx.x % kWarp; c < n; c += kWarp) {
    const acc_t xc = x[c];
    d += static_cast<acc_t>(w_row[c]) * xc;
    s += xc * xc;
  }
  dot = warp_sum(d);
  x_squared = warp_sum(s);
}

// One thread: sum_{r in [r0, r1)} w[r, c] y[r] for the row-major w with n columns.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t column_dot(const scalar_t* w, int64_t n, int64_t c,
                                            const acc_t* y, int64_t r0, int64_t r1) {
  acc_t sum = 0;
  for (int64_t r = r0; r < r1; ++r) {
    sum += static_cast<acc_t>(w[r * n + c]) * y[r];
  }
  return sum;
}

// Writes the F4 matrix of group g from the job's filter, elements first, first + stride, ...
template <typename scalar_t>
__device__ void materialise_f4(const PowerIterationJob<scalar_t>& job, int g, int64_t first,
                               int64_t stride) {
  const MatrixGroup<scalar_t>& group = job.groups[g];
  const kernels::F4Coord s = job.f4_shape.strides(group.f4_matrix);
  for (int64_t e = first; e < job.f4_shape.numel(); e += stride) {
    const kernels::F4Coord c = job.f4_shape.unravel(e);
    group.f4_destination[c.o * s.o + c.i * s.i + c.h * s.h + c.w * s.w] = job.f4_filter[e];
  }
}

// One block: from t = M^T v_raw / ||v_raw|| (n entries), v_raw (m) and ||v_raw||^2 of problem p,
// writes u = normalize(t), v = normalize(v_raw) and sigma_scale * (t . u) in the output dtype.
template <typename scalar_t, typename acc_t>
__device__ void finish_problem(const MatrixGroup<scalar_t>& group, int64_t p, const acc_t* t,
                               const acc_t* v_raw, acc_t v_squared, acc_t* scratch) {
  const int64_t m = group.m, n = group.n;
  const acc_t v_scale = kernels::normalizing_scale(v_squared);
  for (int64_t r = threadIdx.x; r < m; r += blockDim.x) {
    group.v_out[p * m + r] = static_cast<scalar_t>(v_raw[r] * v_scale);
  }
  acc_t t_squared = 0;
  for (int64_t c = threadIdx.x; c < n; c += blockDim.x) {
    t_squared += t[c] * t[c];
  }
  const acc_t u_scale = kernels::normalizing_scale(block_sum(t_squared, scratch));
  acc_t sigma = 0;
  for (int64_t c = threadIdx.x; c < n; c += blockDim.x) {
    const acc_t u = t[c] * u_scale;
    group.u_out[p * n + c] = static_cast<scalar_t>(u);
    sigma += t[c] * u;
  }
  sigma = block_sum(sigma, scratch);
  if (threadIdx.x == 0) {
    group.sigma_out[p] = static_cast<scalar_t>(static_cast<acc_t>(group.sigma_scale) * sigma);
  }
}

// Per-block form. Shared memory: kWarp scratch values, t (max_n), v_raw (max_m).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    power_iteration_block_kernel(const DeviceJob<scalar_t, acc_t> d, int64_t iters) {
  extern __shared__ __align__(sizeof(double)) unsigned char shared_bytes[];
  acc_t* scratch = reinterpret_cast<acc_t*>(shared_bytes);
  acc_t* t = scratch + kWarp;
  acc_t* v_raw = t + d.max_n;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int warps = blockDim.x / kWarp;
  const int groups = d.job.num_groups;
  for (int64_t problem = blockIdx.x; problem < d.problem_begin[groups]; problem += gridDim.x) {
    const int g = locate(d.problem_begin, groups, problem);
    const MatrixGroup<scalar_t>& group = d.job.groups[g];
    const int64_t p = problem - d.problem_begin[g], m = group.m, n = group.n;
    if (group.f4_destination != nullptr) {
      materialise_f4(d.job, g, threadIdx.x, blockDim.x);
    }
    // t holds the right vector up to scale: the initial u, then M^T v.
    for (int64_t c = threadIdx.x; c < n; c += blockDim.x) {
      t[c] = static_cast<acc_t>(group.u_in[p * n + c]);
    }
    __syncthreads();  // orders the materialised matrix and t before their use
    const scalar_t* w = group.weight + p * m * n;
    acc_t v_squared = 0;
    for (int64_t it = 0; it < iters; ++it) {
      acc_t warp_v_squared = 0;
      for (int64_t r = warp; r < m; r += warps) {
        acc_t dot, t_squared;
        warp_dot_and_norm(w + r * n, t, n, dot, t_squared);
        // The first iteration uses u as given; later ones u = normalize(t).
        const acc_t v_r = dot * (it == 0 ? acc_t(1) : kernels::normalizing_scale(t_squared));
        if (lane == 0) {
          v_raw[r] = v_r;
          warp_v_squared += v_r * v_r;
        }
      }
      // Also the barrier between reading t above and overwriting it below.
      v_squared = block_sum(warp_v_squared, scratch);
      const acc_t v_scale = kernels::normalizing_scale(v_squared);
      for (int64_t c = threadIdx.x; c < n; c += blockDim.x) {
        t[c] = column_dot(w, n, c, v_raw, 0, m) * v_scale;
      }
      __syncthreads();
    }
    finish_problem(group, p, t, v_raw, v_squared, scratch);
    __syncthreads();  // before the next problem reuses shared memory
  }
}

// Grid-wide form; launched cooperatively with every block resident.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    power_iteration_grid_kernel(const DeviceJob<scalar_t, acc_t> d, int64_t iters) {
  __shared__ acc_t scratch[kWarp];
  cg::grid_group grid = cg::this_grid();
  const int groups = d.job.num_groups;
  const int lane = threadIdx.x % kWarp;
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t threads = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t warp = thread / kWarp, warps = threads / kWarp;
  const int64_t rows = d.row_begin[groups], problems = d.problem_begin[groups];
  const int64_t t_entries = d.t_begin[groups], items = d.item_begin[groups];

  // Prologue: F4 matrices, t[1] = the initial u (read by iteration 0), vss[0] = 0.
  for (int g = 0; g < groups; ++g) {
    if (d.job.groups[g].f4_destination != nullptr) {
      materialise_f4(d.job, g, thread, threads);
    }
  }
  for (int64_t j = thread; j < t_entries; j += threads) {
    const int g = locate(d.t_begin, groups, j);
    d.t[1][j] = static_cast<acc_t>(d.job.groups[g].u_in[j - d.t_begin[g]]);
  }
  for (int64_t j = thread; j < problems; j += threads) {
    d.vss[0][j] = 0;
  }
  grid.sync();

  for (int64_t it = 0; it < iters; ++it) {
    const int cur = it & 1, prev = cur ^ 1;
    // Phase A. The buffers zeroed here were last read before the previous grid.sync and are
    // next accumulated into after the following one.
    for (int64_t j = thread; j < t_entries; j += threads) {
      d.t[cur][j] = 0;
    }
    for (int64_t j = thread; j < problems; j += threads) {
      d.vss[prev][j] = 0;
    }
    for (int64_t row = warp; row < rows; row += warps) {
      const int g = locate(d.row_begin, groups, row);
      const MatrixGroup<scalar_t>& group = d.job.groups[g];
      const int64_t local = row - d.row_begin[g], p = local / group.m;
      acc_t dot, t_squared;
      warp_dot_and_norm(group.weight + local * group.n,
                        d.t[prev] + d.t_begin[g] + p * group.n, group.n, dot, t_squared);
      const acc_t v_r = dot * (it == 0 ? acc_t(1) : kernels::normalizing_scale(t_squared));
      if (lane == 0) {
        d.v_raw[row] = v_r;
        atomicAdd(d.vss[cur] + d.problem_begin[g] + p, v_r * v_r);
      }
    }
    grid.sync();

    // Phase B: consecutive warps take neighbouring column tiles of one row chunk.
    for (int64_t item = warp; item < items; item += warps) {
      const int g = locate(d.item_begin, groups, item);
      const MatrixGroup<scalar_t>& group = d.job.groups[g];
      const int64_t m = group.m, n = group.n;
      const int64_t tiles = (n + kWarp - 1) / kWarp;
      const int64_t chunks = (m + d.row_chunk[g] - 1) / d.row_chunk[g];
      const int64_t local = item - d.item_begin[g];
      const int64_t p = local / (tiles * chunks), in_problem = local % (tiles * chunks);
      const int64_t c = (in_problem % tiles) * kWarp + lane;
      const int64_t r0 = (in_problem / tiles) * d.row_chunk[g];
      if (c < n) {
        const acc_t v_scale =
            kernels::normalizing_scale(d.vss[cur][d.problem_begin[g] + p]);
        const int64_t r1 = r0 + d.row_chunk[g] < m ? r0 + d.row_chunk[g] : m;
        const acc_t partial =
            column_dot(group.weight + p * m * n, n, c, d.v_raw + d.row_begin[g] + p * m, r0, r1);
        atomicAdd(d.t[cur] + d.t_begin[g] + p * n + c, partial * v_scale);
      }
    }
    grid.sync();
  }

  const int last = (iters - 1) & 1;
  for (int64_t problem = blockIdx.x; problem < problems; problem += gridDim.x) {
    const int g = locate(d.problem_begin, groups, problem);
    const MatrixGroup<scalar_t>& group = d.job.groups[g];
    const int64_t p = problem - d.problem_begin[g];
    finish_problem(group, p, d.t[last] + d.t_begin[g] + p * group.n,
                   d.v_raw + d.row_begin[g] + p * group.m, d.vss[last][problem], scratch);
  }
}

template <typename Kernel>
int resident_blocks_per_sm(Kernel kernel, int threads, size_t shared_bytes) {
  int blocks = 0;
  C10_CUDA_CHECK(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, shared_bytes));
  TORCH_CHECK(blocks > 0, "lipkernels: the power iteration kernel cannot run on this device (",
              threads, " threads, ", shared_bytes, " bytes of shared memory per block)");
  return blocks;
}

}  // namespace

template <typename scalar_t>
void launch_power_iteration(const PowerIterationJob<scalar_t>& job, int64_t iters,
                            const at::Tensor& like) {
  using acc_t = at::opmath_type<scalar_t>;
  DeviceJob<scalar_t, acc_t> d{};
  d.job = job;
  int64_t max_elements = 0;
  for (int g = 0; g < job.num_groups; ++g) {
    const MatrixGroup<scalar_t>& group = job.groups[g];
    d.row_begin[g + 1] = d.row_begin[g] + group.count * group.m;
    d.problem_begin[g + 1] = d.problem_begin[g] + group.count;
    d.t_begin[g + 1] = d.t_begin[g] + group.count * group.n;
    d.max_m = std::max(d.max_m, group.m);
    d.max_n = std::max(d.max_n, group.n);
    max_elements = std::max(max_elements, group.m * group.n);
  }
  const int device = like.get_device();
  const int sms = multiprocessor_count(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device);
  const int64_t problems = d.problem_begin[job.num_groups];

  const size_t block_shared_bytes = (kWarp + d.max_m + d.max_n) * sizeof(acc_t);
  if (block_shared_bytes <= kDefaultSharedBytes &&
      (problems >= sms || max_elements <= kBlockProblemElements)) {
    // Per-block form: as many threads as the longer side needs, up to kThreads.
    const int64_t longer = std::max(d.max_m, d.max_n);
    const int threads =
        static_cast<int>(std::min<int64_t>(kThreads, (longer + kWarp - 1) / kWarp * kWarp));
    const auto kernel = power_iteration_block_kernel<scalar_t, acc_t>;
    const int64_t resident =
        static_cast<int64_t>(resident_blocks_per_sm(kernel, threads, block_shared_bytes)) * sms;
    kernel<<<static_cast<int>(std::min(problems, resident)), threads, block_shared_bytes,
             stream>>>(d, iters);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }

  int cooperative = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device));
  TORCH_CHECK(cooperative, "lipkernels: power iteration on large matrices needs a CUDA device "
                           "with cooperative launch support");
  const auto kernel = power_iteration_grid_kernel<scalar_t, acc_t>;
  const int blocks = sms * std::min(kMaxGridBlocksPerSM, resident_blocks_per_sm(kernel, kThreads, 0));
  const int64_t warps = static_cast<int64_t>(blocks) * kThreads / kWarp;
  for (int g = 0; g < job.num_groups; ++g) {
    // Enough row chunks that this group alone gives every warp about two phase B items.
    const MatrixGroup<scalar_t>& group = job.groups[g];
    const int64_t tiles = (group.n + kWarp - 1) / kWarp;
    const int64_t wanted = (2 * warps + group.count * tiles - 1) / (group.count * tiles);
    const int64_t max_chunks = std::max<int64_t>(1, group.m / kMinChunkRows);
    const int64_t chunks = std::min(std::max<int64_t>(1, wanted), max_chunks);
    d.row_chunk[g] = (group.m + chunks - 1) / chunks;
    const int64_t actual_chunks = (group.m + d.row_chunk[g] - 1) / d.row_chunk[g];
    d.item_begin[g + 1] = d.item_begin[g] + group.count * tiles * actual_chunks;
  }
  const int64_t t_entries = d.t_begin[job.num_groups];
  const at::Tensor workspace = at::empty({2 * t_entries + 2 * problems + d.row_begin[job.num_groups]},
                                         like.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  acc_t* base = workspace.mutable_data_ptr<acc_t>();
  d.t[0] = base;
  d.t[1] = base + t_entries;
  d.vss[0] = base + 2 * t_entries;
  d.vss[1] = d.vss[0] + problems;
  d.v_raw = d.vss[1] + problems;
  void* args[] = {&d, &iters};
  C10_CUDA_CHECK(cudaLaunchCooperativeKernel(kernel, blocks, kThreads, args, 0, stream));
}

template void launch_power_iteration<float>(const PowerIterationJob<float>&, int64_t,
                                            const at::Tensor&);
template void launch_power_iteration<double>(const PowerIterationJob<double>&, int64_t,
                                             const at::Tensor&);
template void launch_power_iteration<c10::Half>(const PowerIterationJob<c10::Half>&, int64_t,
                                                const at::Tensor&);
template void launch_power_iteration<c10::BFloat16>(const PowerIterationJob<c10::BFloat16>&,
                                                    int64_t, const at::Tensor&);

namespace {

template <typename scalar_t>
__global__ void power_iteration_backward_kernel(const scalar_t* grad_sigma, const scalar_t* u,
                                                const scalar_t* v, scalar_t* grad_weight,
                                                int64_t m, int64_t n, int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = idx / n, b = row / m;
    grad_weight[idx] = static_cast<scalar_t>(
        kernels::sigma_grad(static_cast<acc_t>(grad_sigma[b]), static_cast<acc_t>(v[row]),
                            static_cast<acc_t>(u[b * n + idx % n])));
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> power_iteration_cuda(const at::Tensor& weight,
                                                                    const at::Tensor& u,
                                                                    int64_t iters) {
  const MatrixBatch batch = check_power_iteration_args(weight, u, iters);
  const c10::cuda::CUDAGuard guard(weight.device());
  const at::Tensor w = weight.contiguous(), u_in = u.contiguous();
  std::vector<int64_t> v_shape = batch.batch_shape;
  v_shape.push_back(batch.m);
  at::Tensor sigma = at::empty(batch.batch_shape, weight.options());
  at::Tensor u_out = at::empty(u.sizes(), weight.options());
  at::Tensor v_out = at::empty(v_shape, weight.options());
  if (batch.count == 0) {
    return {sigma, u_out, v_out};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, weight.scalar_type(), "power_iteration_cuda", [&] {
        PowerIterationJob<scalar_t> job{};
        job.num_groups = 1;
        job.groups[0] = {w.const_data_ptr<scalar_t>(),
                         batch.count,
                         batch.m,
                         batch.n,
                         u_in.const_data_ptr<scalar_t>(),
                         u_out.mutable_data_ptr<scalar_t>(),
                         v_out.mutable_data_ptr<scalar_t>(),
                         sigma.mutable_data_ptr<scalar_t>(),
                         /*sigma_scale=*/1.0,
                         /*f4_destination=*/nullptr,
                         /*f4_matrix=*/-1};
        launch_power_iteration(job, iters, weight);
      });
  return {sigma, u_out, v_out};
}

at::Tensor power_iteration_backward_cuda(const at::Tensor& grad_sigma, const at::Tensor& u,
                                         const at::Tensor& v) {
  const MatrixBatch batch = check_power_iteration_backward_args(grad_sigma, u, v);
  const c10::cuda::CUDAGuard guard(u.device());
  std::vector<int64_t> grad_shape = batch.batch_shape;
  grad_shape.push_back(batch.m);
  grad_shape.push_back(batch.n);
  at::Tensor grad_weight = at::empty(grad_shape, u.options());
  const int64_t total = grad_weight.numel();
  if (total == 0) {
    return grad_weight;
  }
  const at::Tensor g = grad_sigma.contiguous(), uc = u.contiguous(), vc = v.contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(u.get_device());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, u.scalar_type(), "power_iteration_backward_cuda", [&] {
        power_iteration_backward_kernel<scalar_t>
            <<<elementwise_blocks(total, kThreads, u), kThreads, 0, stream>>>(
                g.const_data_ptr<scalar_t>(), uc.const_data_ptr<scalar_t>(),
                vc.const_data_ptr<scalar_t>(), grad_weight.mutable_data_ptr<scalar_t>(),
                batch.m, batch.n, total);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return grad_weight;
}

}  // namespace

TORCH_LIBRARY_IMPL(lipkernels, CUDA, m) {
  m.impl("power_iteration", &power_iteration_cuda);
  m.impl("power_iteration_backward", &power_iteration_backward_cuda);
}

}  // namespace cuda
}  // namespace lipkernels
