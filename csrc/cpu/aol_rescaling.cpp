// CPU kernels of aol_rescaling and aol_rescaling_backward: the AOL rescaling (Prach & Lampert,
// ECCV 2022) with SLL's weights q = exp(log_q) (Araujo et al., ICLR 2023) of a matrix
// (C_out, C_in) or a filter (C_out, C_in, k_1, k_2); the math and its guarantee are in
// lipkernels/reference/aol_rescaling.py.
//
// Forward: G = W^T W, or the filter's self-correlation, one full-padding at::convolution of W^T
// with itself; A_ij = sum_delta |G[i, j, delta]|; S_i = sum_j A_ij R_ij with
// R_ij = exp(log_q_j - log_q_i); d = (S + eps)^(-1/2).
//
// Backward, from g = dL/dd: dL/dS = -g d^3 / 2, dL/dA_ij = dL/dS_i R_ij, and with
// P_ij = dL/dS_i A_ij R_ij, dL/dlog_q = P^T 1 - P 1 (R_ij grows with log_q_j, falls with
// log_q_i). dL/dG = dL/dA sign(G), torch's subgradient of |.| (0 at 0). G reads W in both of its
// slots: for a matrix dL/dW = W (dL/dG + dL/dG^T); for a filter, since
// conv(X, Y) = flipT(conv(Y, X)), the input slot's gradient is the weight slot's gradient of
// flipT(dL/dG), so dL/dW is one at::convolution_backward (weight gradient only) of
// dL/dG + flipT(dL/dG): the backward costs one convolution, as the forward does.
//
// What is kept: A (C_in^2) and sign(G) as int8, (C_in, C_in, 2 k_1 - 1, 2 k_2 - 1) bytes: a
// quarter of the float32 correlation that autograd through the reference keeps, and less than
// the float32 filter for C_in <= C_out ((2k - 1)^2 / 4k^2 of it, 0.69 at k = 3): 6.6 MB at 512
// channels and k = 3. Recomputing G instead would add a second convolution of
// C_in^2 C_out k_1 k_2 (2 k_1 - 1)(2 k_2 - 1) multiply-adds to the backward, 3e10 at that
// size, more than the layer's own convolution of a batch of 128 images of 4 x 4 (5e9), the
// images such widths see.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "cpu/parallel.h"

namespace lipkernels {
namespace cpu {
namespace {

// lipkernels.reference.aol_rescaling.EPS.
constexpr double kEps = 1e-6;

// Every offset at which two taps of the filter overlap.
std::vector<int64_t> full_padding(const at::Tensor& weight) {
  return {weight.size(2) - 1, weight.size(3) - 1};
}

at::Tensor self_correlation(const at::Tensor& weight) {
  if (weight.dim() == 2) {
    return at::mm(weight.t(), weight);
  }
  const at::Tensor columns = weight.transpose(0, 1);
  return at::convolution(columns, columns, std::nullopt, {1, 1}, full_padding(weight), {1, 1},
                         false, {0, 0}, 1);
}

// R_ij = q_j / q_i as exp(log_q_j - log_q_i); undefined for q = 1 (no log_q).
at::Tensor weight_ratios(const std::optional<at::Tensor>& log_q) {
  return log_q.has_value() ? at::exp(log_q->unsqueeze(0) - log_q->unsqueeze(1)) : at::Tensor();
}

// Row i of G (C_in rows of C_in x `offsets` entries) folded in one pass: A_ij = sum |G_ij.|,
// the signs of G as int8 (0 for 0 and NaN, as torch's sign then cast), and
// d_i = (sum_j A_ij R_ij + eps)^(-1/2), NaN for an infinite sum (rsqrt would give a finite 0).
template <typename scalar_t>
LIPKERNELS_CPU_CLONES void fold_gram_rows(const scalar_t* gram, const scalar_t* ratios, int64_t n, int64_t offsets,
                    int64_t begin, int64_t end, scalar_t* absolute, int8_t* signs, scalar_t* d) {
  for (int64_t i = begin; i < end; ++i) {
    scalar_t row_sum = 0;
    for (int64_t j = 0; j < n; ++j) {
      const scalar_t* values = gram + (i * n + j) * offsets;
      int8_t* value_signs = signs + (i * n + j) * offsets;
      scalar_t total = 0;
#pragma omp simd reduction(+ : total)
      for (int64_t k = 0; k < offsets; ++k) {
        total += std::abs(values[k]);
      }
#pragma omp simd
      for (int64_t k = 0; k < offsets; ++k) {
        value_signs[k] = static_cast<int8_t>((values[k] > 0) - (values[k] < 0));
      }
      absolute[i * n + j] = total;
      row_sum += ratios ? total * ratios[i * n + j] : total;
    }
    d[i] = std::isinf(row_sum) ? std::numeric_limits<scalar_t>::quiet_NaN()
                               : scalar_t(1) / std::sqrt(row_sum + scalar_t(kEps));
  }
}

// The forward's elementwise work after the correlation is one pass (fold_gram_rows) instead of
// the reference's abs, sums, rsqrt and the sign and its cast: at 32 to 128 channels those
// passes' dispatch costs more than the correlation.
std::tuple<at::Tensor, at::Tensor, at::Tensor> aol_rescaling_cpu(
    const at::Tensor& weight_input, const std::optional<at::Tensor>& log_q) {
  check_aol_rescaling_args("aol_rescaling", weight_input, log_q);
  const at::Tensor weight = weight_input.contiguous();
  const at::Tensor gram = self_correlation(weight).contiguous();
  const int64_t n = gram.size(0), offsets = gram.numel() / std::max<int64_t>(n * n, 1);
  // exp of a broadcast difference: a fresh contiguous (n, n) tensor, or undefined.
  const at::Tensor ratios = weight_ratios(log_q);
  at::Tensor absolute_gram = at::empty({n, n}, weight.options());
  at::Tensor signs = at::empty(gram.sizes(), weight.options().dtype(at::kChar));
  at::Tensor d = at::empty({n}, weight.options());
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "aol_rescaling_cpu", [&] {
    const scalar_t* ratio_data = ratios.defined() ? ratios.const_data_ptr<scalar_t>() : nullptr;
    const int64_t row = std::max<int64_t>(n * offsets, 1);
    const int64_t grain = std::max<int64_t>(1, kMinTaskElements / row);
    at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
      fold_gram_rows(gram.const_data_ptr<scalar_t>(), ratio_data, n, offsets, begin, end,
                     absolute_gram.data_ptr<scalar_t>(), signs.data_ptr<int8_t>(),
                     d.data_ptr<scalar_t>());
    });
  });
  return {d, absolute_gram, signs};
}

std::tuple<at::Tensor, at::Tensor> aol_rescaling_backward_cpu(
    const at::Tensor& grad_d, const at::Tensor& weight, const std::optional<at::Tensor>& log_q,
    const at::Tensor& d, const at::Tensor& absolute_gram, const at::Tensor& signs) {
  check_aol_rescaling_backward_args(grad_d, weight, log_q, d, absolute_gram, signs);
  const at::Tensor grad_sums = grad_d * d.pow(3) * -0.5;
  const at::Tensor ratios = weight_ratios(log_q);
  const at::Tensor grad_absolute = ratios.defined()
                                       ? grad_sums.unsqueeze(1) * ratios
                                       : grad_sums.unsqueeze(1).expand_as(absolute_gram);
  const at::Tensor coupling = grad_absolute * absolute_gram;
  const at::Tensor grad_log_q = coupling.sum(0) - coupling.sum(1);
  if (weight.dim() == 2) {
    const at::Tensor grad_gram = grad_absolute * signs;
    return {at::mm(weight, grad_gram + grad_gram.t()), grad_log_q};
  }
  const at::Tensor grad_gram = grad_absolute.unsqueeze(2).unsqueeze(3) * signs;
  const at::Tensor both_slots = grad_gram + grad_gram.transpose(0, 1).flip({2, 3});
  const at::Tensor columns = weight.transpose(0, 1);
  const at::Tensor grad_columns = std::get<1>(
      at::convolution_backward(both_slots, columns, columns, std::nullopt, {1, 1},
                               full_padding(weight), {1, 1}, false, {0, 0}, 1,
                               {false, true, false}));
  return {grad_columns.transpose(0, 1).contiguous(), grad_log_q};
}

}  // namespace

TORCH_LIBRARY_IMPL(lipkernels, CPU, m) {
  m.impl("aol_rescaling", &aol_rescaling_cpu);
  m.impl("aol_rescaling_backward", &aol_rescaling_backward_cpu);
}

}  // namespace cpu
}  // namespace lipkernels
