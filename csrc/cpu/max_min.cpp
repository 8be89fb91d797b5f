// CPU kernels of max_min and max_min_backward: MaxMin (GroupSort(2)) on channel pairs.
//
// Math (kernels/max_min.cuh; Anil, Lucas & Grosse, ICML 2019; Singla & Feizi, ICML 2021), for
// each channel pair (a, b) of x (B, C, *spatial) paired by halves or adjacent pairs:
//   forward:  keep = a >= b; (y_first, y_second) = keep ? (a, b) : (b, a); mask = keep
//   backward: (grad_a, grad_b) = keep ? (g_first, g_second) : (g_second, g_first)
// One pass each: the forward reads x once and writes y and the bool mask (one byte per pair,
// all the backward needs, instead of keeping x alive); the backward reads g and the mask once.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "cpu/max_min.h"
#include "kernels/max_min.cuh"

namespace lipkernels {
namespace cpu {
namespace {

// The row loops live outside the dispatch macros, which cannot hold the pragmas. The mask is
// accessed as bytes: GCC does not vectorise loads of bool.
template <typename scalar_t>
void forward_row(const scalar_t* x, scalar_t* y, uint8_t* mask, const PairRow& row) {
  using acc_t = at::opmath_type<scalar_t>;
#pragma omp simd
  for (int64_t s = 0; s < row.length; ++s) {
    const scalar_t a = x[row.first + s], b = x[row.second + s];
    // Compared in acc_t: exact for every dtype, and half types have no native comparison.
    const bool keep = kernels::keeps_order(static_cast<acc_t>(a), static_cast<acc_t>(b));
    mask[row.pair_entry + s] = keep;
    const kernels::Pair<scalar_t> out = kernels::permute_pair(keep, a, b);
    y[row.first + s] = out.first;
    y[row.second + s] = out.second;
  }
}

template <typename scalar_t>
void backward_row(const scalar_t* grad_y, const uint8_t* mask, scalar_t* grad_x,
                  const PairRow& row) {
#pragma omp simd
  for (int64_t s = 0; s < row.length; ++s) {
    const kernels::Pair<scalar_t> grad =
        kernels::permute_pair(mask[row.pair_entry + s] != 0, grad_y[row.first + s],
                              grad_y[row.second + s]);
    grad_x[row.first + s] = grad.first;
    grad_x[row.second + s] = grad.second;
  }
}

std::tuple<at::Tensor, at::Tensor> max_min_cpu(const at::Tensor& input,
                                               c10::string_view pairing) {
  const kernels::PairLayout layout = check_max_min_args(input, pairing);
  const at::Tensor x = input.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options());
  at::Tensor mask = at::empty(pair_shape(x), x.options().dtype(at::kBool));
  const PairTileGrid grid(layout);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_min_cpu", [&] {
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    scalar_t* y_data = y.data_ptr<scalar_t>();
    auto* mask_data = reinterpret_cast<uint8_t*>(mask.data_ptr<bool>());
    grid.for_each_row(layout, /*merge_pairs=*/true,
                       [&](const PairRow& row) { forward_row(x_data, y_data, mask_data, row); });
  });
  return {y, mask};
}

at::Tensor max_min_backward_cpu(const at::Tensor& grad_output, const at::Tensor& mask_input,
                                c10::string_view pairing) {
  const kernels::PairLayout layout = check_max_min_backward_args(grad_output, mask_input, pairing);
  const at::Tensor grad_y = grad_output.contiguous(), mask = mask_input.contiguous();
  at::Tensor grad_x = at::empty(grad_y.sizes(), grad_y.options());
  const PairTileGrid grid(layout);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_y.scalar_type(), "max_min_backward_cpu", [&] {
        const scalar_t* g_data = grad_y.const_data_ptr<scalar_t>();
        const auto* mask_data = reinterpret_cast<const uint8_t*>(mask.const_data_ptr<bool>());
        scalar_t* grad_data = grad_x.data_ptr<scalar_t>();
        grid.for_each_row(layout, /*merge_pairs=*/true, [&](const PairRow& row) {
          backward_row(g_data, mask_data, grad_data, row);
        });
      });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(lipkernels, CPU, m) {
  m.impl("max_min", &max_min_cpu);
  m.impl("max_min_backward", &max_min_backward_cpu);
}

}  // namespace cpu
}  // namespace lipkernels
