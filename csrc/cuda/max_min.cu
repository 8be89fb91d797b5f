// CUDA kernels of max_min and max_min_backward: MaxMin (GroupSort(2)) on channel pairs.
//
// Math (kernels/max_min.cuh; Anil, Lucas & Grosse, ICML 2019; Singla & Feizi, ICML 2021), for
// each channel pair (a, b) of x (B, C, *spatial) paired by halves or adjacent pairs:
//   forward:  keep = a >= b; (y_first, y_second) = keep ? (a, b) : (b, a); mask = keep
//   backward: (grad_a, grad_b) = keep ? (g_first, g_second) : (g_second, g_first)
// One pass each over the PairTileGrid (cuda/max_min.cuh): the forward reads x once and writes y
// and the one-byte mask, the backward reads the gradient and the mask once.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "common/checks.h"
#include "cuda/max_min.cuh"
#include "kernels/max_min.cuh"

namespace lipkernels {
namespace cuda {
namespace {

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    max_min_kernel(const scalar_t* x, scalar_t* y, bool* mask, const PairTileGrid g) {
  using acc_t = at::opmath_type<scalar_t>;
  for_each_sample(g, pair_thread(g), [&](int64_t first, int64_t second, int64_t entry) {
    const scalar_t a = x[first], b = x[second];
    // Compared in acc_t: exact for every dtype, and half types have no native comparison here.
    const bool keep = kernels::keeps_order(static_cast<acc_t>(a), static_cast<acc_t>(b));
    mask[entry] = keep;
    const kernels::Pair<scalar_t> out = kernels::permute_pair(keep, a, b);
    y[first] = out.first;
    y[second] = out.second;
  });
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    max_min_backward_kernel(const scalar_t* grad_y, const bool* mask, scalar_t* grad_x,
                            const PairTileGrid g) {
  for_each_sample(g, pair_thread(g), [&](int64_t first, int64_t second, int64_t entry) {
    const kernels::Pair<scalar_t> grad =
        kernels::permute_pair(mask[entry], grad_y[first], grad_y[second]);
    grad_x[first] = grad.first;
    grad_x[second] = grad.second;
  });
}

std::tuple<at::Tensor, at::Tensor> max_min_cuda(const at::Tensor& input,
                                                c10::string_view pairing) {
  const kernels::PairLayout layout = check_max_min_args(input, pairing);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options());
  at::Tensor mask = at::empty(pair_shape(x), x.options().dtype(at::kBool));
  if (x.numel() == 0) {
    return {y, mask};
  }
  const PairTileGrid grid = pair_tile_grid(layout, x);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_min_cuda", [&] {
    max_min_kernel<scalar_t><<<grid.blocks(), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
        mask.mutable_data_ptr<bool>(), grid);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {y, mask};
}

at::Tensor max_min_backward_cuda(const at::Tensor& grad_output, const at::Tensor& mask_input,
                                 c10::string_view pairing) {
  const kernels::PairLayout layout = check_max_min_backward_args(grad_output, mask_input, pairing);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const at::Tensor grad_y = grad_output.contiguous(), mask = mask_input.contiguous();
  at::Tensor grad_x = at::empty(grad_y.sizes(), grad_y.options());
  if (grad_y.numel() == 0) {
    return grad_x;
  }
  const PairTileGrid grid = pair_tile_grid(layout, grad_y);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(grad_y.get_device());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_y.scalar_type(), "max_min_backward_cuda", [&] {
        max_min_backward_kernel<scalar_t><<<grid.blocks(), kThreads, 0, stream>>>(
            grad_y.const_data_ptr<scalar_t>(), mask.const_data_ptr<bool>(),
            grad_x.mutable_data_ptr<scalar_t>(), grid);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(lipkernels, CUDA, m) {
  m.impl("max_min", &max_min_cuda);
  m.impl("max_min_backward", &max_min_backward_cuda);
}

}  // namespace cuda
}  // namespace lipkernels
