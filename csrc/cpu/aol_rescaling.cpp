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
#include <torch/library.h>

#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "common/checks.h"

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

std::tuple<at::Tensor, at::Tensor, at::Tensor> aol_rescaling_cpu(
    const at::Tensor& weight, const std::optional<at::Tensor>& log_q) {
  check_aol_rescaling_args("aol_rescaling", weight, log_q);
  const at::Tensor gram = self_correlation(weight);
  const at::Tensor absolute_gram = weight.dim() == 2 ? gram.abs() : gram.abs().sum({2, 3});
  const at::Tensor ratios = weight_ratios(log_q);
  const at::Tensor sums = (ratios.defined() ? absolute_gram * ratios : absolute_gram).sum(1);
  // An infinite S (an infinite weight, an overflow) is NaN rather than rsqrt's finite 0.
  const at::Tensor d = at::where(at::isinf(sums), std::numeric_limits<double>::quiet_NaN(),
                                 at::rsqrt(sums + kEps));
  return {d, absolute_gram, gram.sign().to(at::kChar)};
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
