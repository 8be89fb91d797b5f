// CPU kernels of soc_exp and soc_exp_backward: the whole SOC series in one op call.
//
// Math (docs/design.md §3.2; lipkernels/reference/soc_exp.py), n = terms - 1, conv the zero-padded
// same conv, S^T the conv with flipT(S) (its adjoint), Wg(a, b) the weight gradient of conv(a, .)
// against the output gradient b:
//   forward, exact mode, by powers: q_0 = x, q_k = conv(q_{k-1}, S) / k = S^k x / k!,
//                     y = sum_{k=0}^{n} q_k           (q_1..q_{n-1} kept for the backward)
//   forward, fast mode, Horner: z = x; for i = n..2: z = x + conv(z, S) / i   (ends at z_2)
//                     y = x + conv(z_2, S)            (z_2 kept for the backward)
//   backward, the adjoint Horner loop on g = grad_y:
//                     u_{n-1} = g;  u_j = g + S^T u_{j+1} / (j + 2)   (u_0 = g_2)
//                     grad_x = g + S^T u_0 = sum_{m=0}^{n} (S^T)^m g / m!
//   exact grad_S = sum_{j=0}^{n-1} Wg(S^j x, u_j) / (j+1)! = sum_j Wg(q_j, u_j) / (j + 1).
//     Differentiating S^i x gives sum_{i=1}^{n} 1/i! sum_{j<i} Wg(S^j x, (S^T)^{i-1-j} g)
//     = sum_j Wg(S^j x, h_j) with h_j = sum_{m=0}^{n-1-j} (S^T)^m g / (m+j+1)!, which obeys
//     h_{n-1} = g / n!, h_j = g / (j+1)! + S^T h_{j+1}; so h_j = u_j / (j+1)!, the Horner
//     iterates rescaled.
//   fast grad_S = Wg(z_2, g_2) (FastSOCExp, NeurIPS 2022), g_2 = u_0.
//
// Memory against time. On the CPU the exact forward keeps the n - 1 powers it computes anyway
// (as much as the reference's autograd graph keeps), so that the backward needs no conv beyond
// the adjoint loop: recomputing them (what the GPU kernels do, whose target caps peak memory)
// costs n - 1 extra convolutions (measurements: benchmarks/results/kernel-notes.md).
// The backward walks the adjoint loop from j = n-1 down to 0 and accumulates one weight
// gradient per j, so only one u_j is alive at a time. One Wg call on the powers and iterates
// stacked along the batch would give the same sum, but needs every u_j alive at once and gains
// no time (kernel-notes.md).
//
// The 1/i of each Horner or power step is folded into the (small) filter, so every step is one
// conv plus at most one in-place add into the conv's fresh output.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "common/checks.h"

namespace lipkernels {
namespace cpu {
namespace {

// The layout every term is computed in; outputs are converted back to contiguous NCHW once.
// oneDNN convolves channels-last activations natively but reorders NCHW ones on every call, a
// cost that grows with the image; on small images with many channels NCHW wins. Images of 16x16
// pixels or more go channels-last, the crossover measured for 3x3 convs (the timings are in
// benchmarks/results/kernel-notes.md).
constexpr int64_t kChannelsLastMinPixels = 256;

at::Tensor in_conv_layout(const at::Tensor& t) {
  const bool channels_last = t.size(2) * t.size(3) >= kChannelsLastMinPixels;
  return t.contiguous(channels_last ? at::MemoryFormat::ChannelsLast
                                    : at::MemoryFormat::Contiguous);
}

at::Tensor conv(const at::Tensor& input, const at::Tensor& weight) {
  return at::conv2d(input, weight, /*bias=*/{}, /*stride=*/1, /*padding=*/weight.size(-1) / 2);
}

// Wg(input, grad_output): the gradient w.r.t. `weight` of conv(input, weight).
at::Tensor weight_gradient(const at::Tensor& input, const at::Tensor& grad_output,
                           const at::Tensor& weight) {
  const int64_t padding = weight.size(-1) / 2;
  return std::get<1>(at::convolution_backward(
      grad_output, input, weight, /*bias_sizes=*/c10::nullopt, /*stride=*/{1, 1},
      /*padding=*/{padding, padding}, /*dilation=*/{1, 1}, /*transposed=*/false,
      /*output_padding=*/{0, 0}, /*groups=*/1, /*output_mask=*/{false, true, false}));
}

using ForwardResult = std::tuple<at::Tensor, std::vector<at::Tensor>>;  // (y, saved)

// The exact forward: y and the powers q_1..q_{n-1}, in the conv layout (the fake impl mirrors it).
ForwardResult exact_forward(const at::Tensor& x, const at::Tensor& S, int64_t n) {
  std::vector<at::Tensor> powers;
  powers.reserve(n - 1);
  at::Tensor q = conv(x, S);
  at::Tensor y = q + x;
  for (int64_t k = 2; k <= n; ++k) {
    powers.push_back(q);
    q = conv(q, S / static_cast<double>(k));
    y.add_(q);
  }
  return {y.contiguous(), std::move(powers)};
}

// The fast forward: y and z_2, by Horner.
ForwardResult fast_forward(const at::Tensor& x, const at::Tensor& S, int64_t n) {
  at::Tensor z = x;
  for (int64_t i = n; i >= 2; --i) {
    z = conv(z, S / static_cast<double>(i)).add_(x);
  }
  // z_2 is x itself when n == 1; custom ops must not return their inputs.
  at::Tensor z2 = n == 1 ? x.clone() : z;
  return {conv(z, S).add_(x).contiguous(), {z2.contiguous()}};
}

ForwardResult soc_exp_cpu(const at::Tensor& input, const at::Tensor& S, int64_t terms,
                          c10::string_view grad_mode) {
  const SocGradMode mode = check_soc_exp_args("soc_exp", "x", input, S, terms, grad_mode);
  const int64_t n = terms - 1;
  if (n == 0) {
    return {input.contiguous().clone(), {}};  // custom ops must not return their inputs
  }
  const at::Tensor x = in_conv_layout(input);
  return mode == SocGradMode::kExact ? exact_forward(x, S, n) : fast_forward(x, S, n);
}

std::tuple<at::Tensor, at::Tensor> soc_exp_backward_cpu(const at::Tensor& grad_output,
                                                        const at::Tensor& S,
                                                        const at::Tensor& start,
                                                        at::TensorList powers, int64_t terms,
                                                        c10::string_view grad_mode) {
  const SocGradMode mode = check_soc_exp_backward_args(grad_output, S, start, powers, terms,
                                                       grad_mode, /*keeps_powers=*/true);
  const int64_t n = terms - 1;
  if (n == 0) {
    return {grad_output.contiguous().clone(), at::zeros(S.sizes(), S.options())};
  }
  const at::Tensor grad_y = in_conv_layout(grad_output);
  const at::Tensor adjoint = S.transpose(0, 1).flip({2, 3}).contiguous();
  // The weight gradients of all terms are summed in float for half types, whose terms span
  // orders of magnitude (1/(j+1)! down to 1/n!).
  at::Tensor grad_S = at::zeros(S.sizes(), S.options().dtype(at::toOpMathType(S.scalar_type())));
  const at::Tensor first = in_conv_layout(start);  // q_0 = x (exact) or z_2 (fast)
  at::Tensor u = grad_y;
  for (int64_t j = n - 1; j >= 0; --j) {
    if (j < n - 1) {
      u = conv(u, adjoint / static_cast<double>(j + 2)).add_(grad_y);
    }
    if (mode == SocGradMode::kExact) {
      const at::Tensor& power = j == 0 ? first : powers[j - 1];
      grad_S.add_(weight_gradient(power, u, S), 1.0 / static_cast<double>(j + 1));
    }
  }
  if (mode == SocGradMode::kFast) {
    grad_S.add_(weight_gradient(first, u, S));
  }
  return {conv(u, adjoint).add_(grad_y).contiguous(), grad_S.to(S.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(lipkernels, CPU, m) {
  m.impl("soc_exp", &soc_exp_cpu);
  m.impl("soc_exp_backward", &soc_exp_backward_cpu);
}

}  // namespace cpu
}  // namespace lipkernels
