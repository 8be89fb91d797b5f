// CPU kernels of conv_spectral_bounds and conv_spectral_bounds_backward: the Fantastic Four bounds
// (Singla & Feizi, ICLR 2021) on the operator norm of a convolution with a filter (O, I, H, W).
//
// Math (kernels/conv_spectral_bounds.cuh): bounds[q] = sqrt(H W) * sigma_q, sigma_q from `iters`
// power iterations on the reshape M_q of the filter with the persistent right vector u_q;
// backward: grad_weight[o,i,h,w] = sqrt(H W) * sum_q grad_bounds[q] v_q[row_q] u_q[col_q].
//
// Forward: the four matrices are written out contiguously once per call in the accumulation type
// (with the strides of the shared index map; a matrix laid out like the filter itself, or whose
// transpose is, uses the filter without a copy), then the four problems go to the same
// run_power_iteration() as the power_iteration op.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "cpu/parallel.h"
#include "cpu/power_iteration.h"
#include "kernels/conv_spectral_bounds.cuh"

namespace lipkernels {
namespace cpu {
namespace {

using kernels::F4Coord;
using kernels::F4Index;
using kernels::F4Shape;

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> conv_spectral_bounds_cpu(
    const at::Tensor& weight, at::TensorList vectors, int64_t iters) {
  const F4Shape shape = check_conv_spectral_bounds_args(weight, vectors, iters);
  constexpr int kMatrices = F4Shape::kMatrices;
  const int64_t numel = shape.numel();
  at::Tensor bounds;
  std::vector<at::Tensor> u_out(kMatrices), v_out(kMatrices);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, weight.scalar_type(), "conv_spectral_bounds_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        constexpr auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
        const auto acc_options = weight.options().dtype(acc_type);

        // M_q in acc_t. The widened filter serves as every M_q (or M_q^T) laid out like it
        // (always M_3; for 1x1 filters M_1, M_2 and M_4 transposed). The others are copied out
        // by ATen's strided copy into a view of the matrix with the index map's strides, which
        // picks a cache-friendly loop order for each of the permutations.
        const at::Tensor filter = weight.contiguous().to(acc_type);
        std::vector<at::Tensor> matrices(kMatrices);
        bool transposed[kMatrices];
        for (int q = 0; q < kMatrices; ++q) {
          transposed[q] = !shape.has_filter_layout(q, false) && shape.has_filter_layout(q, true);
          if (shape.has_filter_layout(q, false) || transposed[q]) {
            matrices[q] = filter;
            continue;
          }
          const F4Coord s = shape.strides(q);
          matrices[q] = at::empty({numel}, acc_options);
          matrices[q].as_strided(filter.sizes(), {s.o, s.i, s.h, s.w}).copy_(filter);
        }

        at::Tensor sigma = at::empty({kMatrices}, acc_options);
        std::vector<at::Tensor> u_acc(kMatrices), v_acc(kMatrices);
        std::vector<PowerIterationProblem<acc_t>> problems;
        for (int q = 0; q < kMatrices; ++q) {
          u_acc[q] = at::empty({shape.cols(q)}, acc_options).copy_(vectors[q]);
          v_acc[q] = at::empty({shape.rows(q)}, acc_options);
          problems.push_back({matrices[q].const_data_ptr<acc_t>(), shape.rows(q), shape.cols(q),
                              u_acc[q].mutable_data_ptr<acc_t>(),
                              v_acc[q].mutable_data_ptr<acc_t>(),
                              sigma.mutable_data_ptr<acc_t>() + q, transposed[q]});
        }
        run_power_iteration(problems, iters);

        acc_t* sigma_data = sigma.mutable_data_ptr<acc_t>();
        for (int q = 0; q < kMatrices; ++q) {
          sigma_data[q] *= shape.bound_scale<acc_t>();
        }
        bounds = sigma.to(weight.scalar_type());
        for (int q = 0; q < kMatrices; ++q) {
          u_out[q] = u_acc[q].to(weight.scalar_type());
          v_out[q] = v_acc[q].to(weight.scalar_type());
        }
      });
  return {bounds, u_out, v_out};
}

at::Tensor conv_spectral_bounds_backward_cpu(const at::Tensor& grad_bounds,
                                             at::TensorList vectors, at::TensorList left_vectors,
                                             at::IntArrayRef weight_shape) {
  const F4Shape shape = check_conv_spectral_bounds_backward_args(grad_bounds, vectors,
                                                                 left_vectors, weight_shape);
  constexpr int kMatrices = F4Shape::kMatrices;
  at::Tensor grad_weight = at::empty(weight_shape, grad_bounds.options());
  const at::Tensor g = grad_bounds.contiguous();
  std::vector<at::Tensor> us(kMatrices), vs(kMatrices);
  for (int q = 0; q < kMatrices; ++q) {
    us[q] = vectors[q].contiguous();
    vs[q] = left_vectors[q].contiguous();
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_bounds.scalar_type(), "conv_spectral_bounds_backward_cpu",
      [&] {
        using acc_t = at::opmath_type<scalar_t>;
        acc_t grad_bounds_acc[kMatrices], coef[kMatrices];
        const scalar_t* u[kMatrices];
        const scalar_t* v[kMatrices];
        for (int q = 0; q < kMatrices; ++q) {
          grad_bounds_acc[q] = static_cast<acc_t>(g.const_data_ptr<scalar_t>()[q]);
          u[q] = us[q].const_data_ptr<scalar_t>();
          v[q] = vs[q].const_data_ptr<scalar_t>();
        }
        kernels::f4_grad_coefficients(shape, grad_bounds_acc, coef);
        // Output channels split over threads; for each (o, h, w) the input channels i run
        // innermost, the four positions stepping by index(q, unit step along i).
        F4Index i_step[kMatrices];
        for (int q = 0; q < kMatrices; ++q) {
          i_step[q] = shape.index(q, F4Coord{0, 1, 0, 0});
        }
        const int64_t plane = shape.kernel_h * shape.kernel_w;
        const int64_t per_out_channel = shape.in_channels * plane;
        scalar_t* out = grad_weight.mutable_data_ptr<scalar_t>();
        at::parallel_for(
            0, shape.out_channels, std::max<int64_t>(1, kMinTaskElements / per_out_channel),
            [&](int64_t o_begin, int64_t o_end) {
              for (int64_t o = o_begin; o < o_end; ++o) {
                for (int64_t h = 0; h < shape.kernel_h; ++h) {
                  for (int64_t w = 0; w < shape.kernel_w; ++w) {
                    F4Index ix[kMatrices];
                    for (int q = 0; q < kMatrices; ++q) {
                      ix[q] = shape.index(q, F4Coord{o, 0, h, w});
                    }
                    scalar_t* dst = out + o * per_out_channel + h * shape.kernel_w + w;
                    for (int64_t i = 0; i < shape.in_channels; ++i) {
                      dst[i * plane] = static_cast<scalar_t>(kernels::f4_grad(coef, u, v, ix));
                      for (int q = 0; q < kMatrices; ++q) {
                        ix[q].row += i_step[q].row;
                        ix[q].col += i_step[q].col;
                      }
                    }
                  }
                }
              }
            });
      });
  return grad_weight;
}

}  // namespace

TORCH_LIBRARY_IMPL(lipkernels, CPU, m) {
  m.impl("conv_spectral_bounds", &conv_spectral_bounds_cpu);
  m.impl("conv_spectral_bounds_backward", &conv_spectral_bounds_backward_cpu);
}

}  // namespace cpu
}  // namespace lipkernels
