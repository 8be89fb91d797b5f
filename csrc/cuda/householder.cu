// CUDA kernels of householder and householder_backward: the HouseHolder activation.
//
// Math (kernels/householder.cuh; Singla, Singla & Feizi, NeurIPS 2022), for each channel pair
// (a, b) = (x[:, i], x[:, i + C/2]) with angle theta_i:
//   forward:  reflect = !(a sin(theta/2) - b cos(theta/2) <= 0)
//             y = reflect ? (a cos + b sin, a sin - b cos) : (a, b)
//   backward: grad_(a, b) = the same branch's (symmetric) map applied to (g_1, g_2);
//             grad_theta_i = sum where reflected of g_1 (b cos - a sin) + g_2 (a cos + b sin).
// One pass each over the PairTileGrid (cuda/max_min.cuh); each thread evaluates its pair's angles
// once. grad_theta: each thread sums its elements' terms over its samples, the block adds the
// sums of a pair's threads (consecutive, a power of two of them) by a tree in shared memory and
// writes one partial per (block row chunk, spatial tile, pair); the host then sums the partials
// over their rows with at::sum. Deterministic: no atomics.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "common/checks.h"
#include "cuda/max_min.cuh"
#include "kernels/householder.cuh"

namespace lipkernels {
namespace cuda {
namespace {

// The angle constants of the thread's pair (evaluated once per thread; an inactive thread, whose
// pair may not exist, gets those of angle 0 and uses none).
template <typename acc_t>
__device__ inline kernels::HouseholderAngle<acc_t> thread_angle(const PairThread& t,
                                                                const double* theta) {
  return kernels::householder_angle<acc_t>(t.active ? theta[t.p] : 0.0);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    householder_kernel(const scalar_t* x, const double* theta, scalar_t* y,
                       const PairTileGrid g) {
  using acc_t = at::opmath_type<scalar_t>;
  const PairThread t = pair_thread(g);
  const auto angle = thread_angle<acc_t>(t, theta);
  for_each_sample(g, t, [&](int64_t first, int64_t second, int64_t) {
    const acc_t a = static_cast<acc_t>(x[first]), b = static_cast<acc_t>(x[second]);
    const kernels::Pair<acc_t> out =
        kernels::householder_map(kernels::reflects(angle, a, b), angle, a, b);
    y[first] = static_cast<scalar_t>(out.first);
    y[second] = static_cast<scalar_t>(out.second);
  });
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    householder_backward_kernel(const scalar_t* grad_y, const scalar_t* x, const double* theta,
                                scalar_t* grad_x, acc_t* partials, const PairTileGrid g) {
  __shared__ acc_t sums[kThreads];
  const PairThread t = pair_thread(g);
  acc_t sum = 0;
  const auto angle = thread_angle<acc_t>(t, theta);
  // Inactive threads skip the loop but take part in the block reduction below.
  for_each_sample(g, t, [&](int64_t first, int64_t second, int64_t) {
    const acc_t a = static_cast<acc_t>(x[first]), b = static_cast<acc_t>(x[second]);
    const acc_t g_1 = static_cast<acc_t>(grad_y[first]);
    const acc_t g_2 = static_cast<acc_t>(grad_y[second]);
    const bool reflect = kernels::reflects(angle, a, b);
    const kernels::Pair<acc_t> grad = kernels::householder_map(reflect, angle, g_1, g_2);
    grad_x[first] = static_cast<scalar_t>(grad.first);
    grad_x[second] = static_cast<scalar_t>(grad.second);
    sum += kernels::householder_theta_grad(reflect, angle, a, b, g_1, g_2);
  });
  sums[threadIdx.x] = sum;
  __syncthreads();
  for (int64_t stride = g.tile_positions / 2; stride > 0; stride /= 2) {
    if (t.position < stride) {
      sums[threadIdx.x] += sums[threadIdx.x + stride];
    }
    __syncthreads();
  }
  if (t.active && t.position == 0) {
    partials[t.partial] = sums[threadIdx.x];
  }
}

at::Tensor householder_cuda(const at::Tensor& input, const at::Tensor& theta) {
  const kernels::PairLayout layout = check_householder_args("householder", "x", input, theta);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options());
  if (x.numel() == 0) {
    return y;
  }
  // The angles are evaluated in double (kernels/householder.cuh); C/2 entries.
  const at::Tensor angles = theta.to(at::kDouble).contiguous();
  const PairTileGrid grid = pair_tile_grid(layout, x);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "householder_cuda", [&] {
        householder_kernel<scalar_t><<<grid.blocks(), kThreads, 0, stream>>>(
            x.const_data_ptr<scalar_t>(), angles.const_data_ptr<double>(),
            y.mutable_data_ptr<scalar_t>(), grid);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return y;
}

std::tuple<at::Tensor, at::Tensor> householder_backward_cuda(const at::Tensor& grad_output,
                                                             const at::Tensor& input,
                                                             const at::Tensor& theta) {
  const kernels::PairLayout layout = check_householder_backward_args(grad_output, input, theta);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const at::Tensor grad_y = grad_output.contiguous(), x = input.contiguous();
  at::Tensor grad_x = at::empty(grad_y.sizes(), grad_y.options());
  if (grad_y.numel() == 0) {
    return {grad_x, at::zeros(theta.sizes(), theta.options())};
  }
  const at::Tensor angles = theta.to(at::kDouble).contiguous();
  const PairTileGrid grid = pair_tile_grid(layout, grad_y);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(grad_y.get_device());
  at::Tensor grad_theta;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_y.scalar_type(), "householder_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        constexpr auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
        // Every entry is written by exactly one thread (see PairThread::partial).
        at::Tensor partials =
            at::empty({grid.partial_rows(), layout.pairs}, grad_y.options().dtype(acc_type));
        householder_backward_kernel<scalar_t, acc_t><<<grid.blocks(), kThreads, 0, stream>>>(
            grad_y.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
            angles.const_data_ptr<double>(), grad_x.mutable_data_ptr<scalar_t>(),
            partials.mutable_data_ptr<acc_t>(), grid);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        grad_theta = at::sum(partials, {0}).to(theta.scalar_type());
      });
  return {grad_x, grad_theta};
}

}  // namespace

TORCH_LIBRARY_IMPL(lipkernels, CUDA, m) {
  m.impl("householder", &householder_cuda);
  m.impl("householder_backward", &householder_backward_cuda);
}

}  // namespace cuda
}  // namespace lipkernels
