// CPU kernels of householder and householder_backward: the HouseHolder activation.
//
// Math (kernels/householder.cuh; Singla, Singla & Feizi, NeurIPS 2022), for each channel pair
// (a, b) = (x[:, i], x[:, i + C/2]) with angle theta_i:
//   forward:  reflect = !(a sin(theta/2) - b cos(theta/2) <= 0)
//             y = reflect ? (a cos + b sin, a sin - b cos) : (a, b)
//   backward: grad_(a, b) = the same branch's (symmetric) map applied to (g_1, g_2);
//             grad_theta_i = sum where reflected of g_1 (b cos - a sin) + g_2 (a cos + b sin).
// Each pass reads its inputs once; the trigonometric constants are computed once per pair.
// grad_theta: every tile of rows (PairTileGrid) sums its elements per pair into its own partial,
// in acc_t, and the partials are then added in a fixed order: no atomics, and the same result
// for every thread count.
//
// The row loops must turn the data-dependent choice (reflect or pass) into vector blends: as a
// branch it would be mispredicted half the time. GCC refuses to speculate the reflection's
// arithmetic, computed for pairs that pass, while it models floating-point traps, which nothing
// in PyTorch enables; so this file is compiled without trapping-math (no value changes, only
// whether an exception flag may be raised). It comes before the includes so that the inline
// math of kernels/householder.cuh is compiled alike and still inlines into the loops.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "common/checks.h"
#include "cpu/max_min.h"
#include "kernels/householder.cuh"

namespace lipkernels {
namespace cpu {
namespace {

template <typename acc_t>
std::vector<kernels::HouseholderAngle<acc_t>> pair_angles(const at::Tensor& theta) {
  const at::Tensor angles = theta.to(at::kDouble).contiguous();
  const double* data = angles.const_data_ptr<double>();
  std::vector<kernels::HouseholderAngle<acc_t>> out(angles.numel());
  for (int64_t p = 0; p < angles.numel(); ++p) {
    out[p] = kernels::householder_angle<acc_t>(data[p]);
  }
  return out;
}

// The row loops live outside the dispatch macros, which cannot hold the pragmas.
template <typename scalar_t, typename acc_t>
void forward_row(const kernels::HouseholderAngle<acc_t> angle, const scalar_t* x, scalar_t* y,
                 const PairRow& row) {
#pragma omp simd
  for (int64_t s = 0; s < row.length; ++s) {
    const acc_t a = static_cast<acc_t>(x[row.first + s]);
    const acc_t b = static_cast<acc_t>(x[row.second + s]);
    const kernels::Pair<acc_t> out =
        kernels::householder_map(kernels::reflects(angle, a, b), angle, a, b);
    y[row.first + s] = static_cast<scalar_t>(out.first);
    y[row.second + s] = static_cast<scalar_t>(out.second);
  }
}

// Writes grad_x of one row and returns the row's sum of grad_theta terms.
template <typename scalar_t, typename acc_t>
acc_t backward_row(const kernels::HouseholderAngle<acc_t> angle, const scalar_t* x,
                   const scalar_t* grad_y, scalar_t* grad_x, const PairRow& row) {
  acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t s = 0; s < row.length; ++s) {
    const acc_t a = static_cast<acc_t>(x[row.first + s]);
    const acc_t b = static_cast<acc_t>(x[row.second + s]);
    const acc_t g_1 = static_cast<acc_t>(grad_y[row.first + s]);
    const acc_t g_2 = static_cast<acc_t>(grad_y[row.second + s]);
    const bool reflect = kernels::reflects(angle, a, b);
    const kernels::Pair<acc_t> grad = kernels::householder_map(reflect, angle, g_1, g_2);
    grad_x[row.first + s] = static_cast<scalar_t>(grad.first);
    grad_x[row.second + s] = static_cast<scalar_t>(grad.second);
    sum += kernels::householder_theta_grad(reflect, angle, a, b, g_1, g_2);
  }
  return sum;
}

at::Tensor householder_cpu(const at::Tensor& input, const at::Tensor& theta) {
  const kernels::PairLayout layout = check_householder_args("householder", "x", input, theta);
  const at::Tensor x = input.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options());
  const PairTileGrid grid(layout);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "householder_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto angles = pair_angles<acc_t>(theta);
        const scalar_t* x_data = x.const_data_ptr<scalar_t>();
        scalar_t* y_data = y.data_ptr<scalar_t>();
        // One angle per row: the rows are single pairs.
        grid.for_each_row(layout, /*merge_pairs=*/false, [&](const PairRow& row) {
          forward_row(angles[row.pair], x_data, y_data, row);
        });
      });
  return y;
}

std::tuple<at::Tensor, at::Tensor> householder_backward_cpu(const at::Tensor& grad_output,
                                                            const at::Tensor& input,
                                                            const at::Tensor& theta) {
  const kernels::PairLayout layout = check_householder_backward_args(grad_output, input, theta);
  const at::Tensor grad_y = grad_output.contiguous(), x = input.contiguous();
  at::Tensor grad_x = at::empty(grad_y.sizes(), grad_y.options());
  at::Tensor grad_theta;
  const PairTileGrid grid(layout);
  const int64_t pairs = layout.pairs;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_y.scalar_type(), "householder_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto angles = pair_angles<acc_t>(theta);
        // partials[row_chunk][p]; each entry belongs to exactly one tile.
        std::vector<acc_t> partials(grid.row_chunks * pairs, acc_t(0));
        const scalar_t* x_data = x.const_data_ptr<scalar_t>();
        const scalar_t* g_data = grad_y.const_data_ptr<scalar_t>();
        scalar_t* grad_data = grad_x.data_ptr<scalar_t>();
        grid.for_each_row(layout, /*merge_pairs=*/false, [&](const PairRow& row) {
          partials[row.row_chunk * pairs + row.pair] +=
              backward_row(angles[row.pair], x_data, g_data, grad_data, row);
        });
        constexpr auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
        at::Tensor total = at::zeros({pairs}, theta.options().dtype(acc_type));
        acc_t* total_data = total.data_ptr<acc_t>();
        for (int64_t row_chunk = 0; row_chunk < grid.row_chunks; ++row_chunk) {
          for (int64_t p = 0; p < pairs; ++p) {
            total_data[p] += partials[row_chunk * pairs + p];
          }
        }
        grad_theta = total.to(theta.scalar_type());
      });
  return {grad_x, grad_theta};
}

}  // namespace

TORCH_LIBRARY_IMPL(lipkernels, CPU, m) {
  m.impl("householder", &householder_cpu);
  m.impl("householder_backward", &householder_backward_cpu);
}

}  // namespace cpu
}  // namespace lipkernels
