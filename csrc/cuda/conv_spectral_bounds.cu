// CUDA kernels of conv_spectral_bounds and conv_spectral_bounds_backward: the Fantastic Four bounds
// (Singla & Feizi, ICLR 2021) on the operator norm of a convolution with a filter (O, I, H, W).
//
// Math (kernels/conv_spectral_bounds.cuh): bounds[q] = sqrt(H W) * sigma_q, sigma_q from `iters`
// power iterations on the reshape M_q of the filter with the persistent right vector u_q;
// backward: grad_weight[o,i,h,w] = sqrt(H W) * sum_q grad_bounds[q] v_q[row_q] u_q[col_q].
//
// Forward: the four reshapes are four groups of one problem each for the shared engine of
// cuda/power_iteration.cu, which runs all of them in one launch. Reshapes laid out like the
// filter (always M_3) read the filter directly; the kernel itself first copies the others out
// into scratch through the shared index map. Backward: one thread per filter element evaluates
// the shared gradient formula.
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
#include "cuda/launch.cuh"
#include "cuda/power_iteration.cuh"
#include "kernels/conv_spectral_bounds.cuh"

namespace lipkernels {
namespace cuda {
namespace {

using kernels::F4Shape;
constexpr int kMatrices = F4Shape::kMatrices;

template <typename scalar_t>
struct F4GradArgs {
  const scalar_t* grad_bounds;  // 4
  const scalar_t* u[kMatrices];
  const scalar_t* v[kMatrices];
  scalar_t* grad_weight;  // the contiguous filter gradient
  F4Shape shape;
};

template <typename scalar_t>
__global__ void conv_spectral_bounds_backward_kernel(const F4GradArgs<scalar_t> a) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t grad_bounds[kMatrices], coef[kMatrices];
  for (int q = 0; q < kMatrices; ++q) {
    grad_bounds[q] = static_cast<acc_t>(a.grad_bounds[q]);
  }
  kernels::f4_grad_coefficients(a.shape, grad_bounds, coef);
  const int64_t numel = a.shape.numel();
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < numel;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const kernels::F4Coord c = a.shape.unravel(e);
    kernels::F4Index ix[kMatrices];
    for (int q = 0; q < kMatrices; ++q) {
      ix[q] = a.shape.index(q, c);
    }
    a.grad_weight[e] = static_cast<scalar_t>(kernels::f4_grad(coef, a.u, a.v, ix));
  }
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>
conv_spectral_bounds_cuda(const at::Tensor& weight, at::TensorList vectors, int64_t iters) {
  const F4Shape shape = check_conv_spectral_bounds_args(weight, vectors, iters);
  const c10::cuda::CUDAGuard guard(weight.device());
  const at::Tensor filter = weight.contiguous();
  at::Tensor bounds = at::empty({kMatrices}, weight.options());
  std::vector<at::Tensor> u_in(kMatrices), u_out(kMatrices), v_out(kMatrices);
  int copies = 0;
  for (int q = 0; q < kMatrices; ++q) {
    u_in[q] = vectors[q].contiguous();
    u_out[q] = at::empty({shape.cols(q)}, weight.options());
    v_out[q] = at::empty({shape.rows(q)}, weight.options());
    copies += !shape.has_filter_layout(q, /*transposed=*/false);
  }
  at::Tensor scratch = at::empty({copies, shape.numel()}, weight.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, weight.scalar_type(), "conv_spectral_bounds_cuda", [&] {
        PowerIterationJob<scalar_t> job{};
        job.num_groups = kMatrices;
        job.f4_filter = filter.const_data_ptr<scalar_t>();
        job.f4_shape = shape;
        for (int q = 0, slot = 0; q < kMatrices; ++q) {
          scalar_t* destination =
              shape.has_filter_layout(q, /*transposed=*/false)
                  ? nullptr
                  : scratch.mutable_data_ptr<scalar_t>() + slot++ * shape.numel();
          job.groups[q] = {destination != nullptr ? destination : job.f4_filter,
                           /*count=*/1,
                           shape.rows(q),
                           shape.cols(q),
                           u_in[q].const_data_ptr<scalar_t>(),
                           u_out[q].mutable_data_ptr<scalar_t>(),
                           v_out[q].mutable_data_ptr<scalar_t>(),
                           bounds.mutable_data_ptr<scalar_t>() + q,
                           shape.bound_scale<double>(),
                           destination,
                           q};
        }
        launch_power_iteration(job, iters, weight);
      });
  return {bounds, u_out, v_out};
}

at::Tensor conv_spectral_bounds_backward_cuda(const at::Tensor& grad_bounds,
                                              at::TensorList vectors, at::TensorList left_vectors,
                                              at::IntArrayRef weight_shape) {
  const F4Shape shape = check_conv_spectral_bounds_backward_args(grad_bounds, vectors,
                                                                 left_vectors, weight_shape);
  const c10::cuda::CUDAGuard guard(grad_bounds.device());
  at::Tensor grad_weight = at::empty(weight_shape, grad_bounds.options());
  const at::Tensor g = grad_bounds.contiguous();
  std::vector<at::Tensor> us(kMatrices), vs(kMatrices);
  for (int q = 0; q < kMatrices; ++q) {
    us[q] = vectors[q].contiguous();
    vs[q] = left_vectors[q].contiguous();
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(grad_bounds.get_device());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_bounds.scalar_type(), "conv_spectral_bounds_backward_cuda",
      [&] {
        F4GradArgs<scalar_t> args{};
        args.grad_bounds = g.const_data_ptr<scalar_t>();
        for (int q = 0; q < kMatrices; ++q) {
          args.u[q] = us[q].const_data_ptr<scalar_t>();
          args.v[q] = vs[q].const_data_ptr<scalar_t>();
        }
        args.grad_weight = grad_weight.mutable_data_ptr<scalar_t>();
        args.shape = shape;
        conv_spectral_bounds_backward_kernel<scalar_t>
            <<<elementwise_blocks(shape.numel(), kThreads, grad_bounds), kThreads, 0, stream>>>(
                args);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return grad_weight;
}

}  // namespace

TORCH_LIBRARY_IMPL(lipkernels, CUDA, m) {
  m.impl("conv_spectral_bounds", &conv_spectral_bounds_cuda);
  m.impl("conv_spectral_bounds_backward", &conv_spectral_bounds_backward_cuda);
}

}  // namespace cuda
}  // namespace lipkernels
