// CPU kernels of cayley_frequency_product and cayley_frequency_product_backward: the
// frequency-domain core of the Cayley convolution (Trockman & Kolter, ICLR 2021).
//
// Math, per frequency f (lipkernels/reference/cayley_conv2d.py), with response R_f (C_out x C_in)
// and the input spectrum S_f (C_in x B):
//   tall orientation T_f = R_f if C_out >= C_in, else R_f^T (plain transpose);
//   (P_f, X_f) = cayley(T_f) (cayley.h), Q_f = P_f or P_f^T;   output_f = Q_f S_f.
// Backward, for the output gradient G_f (PyTorch's convention for complex gradients, dL =
// Re tr(G^H dY)): dY = dQ S + Q dS gives
//   grad_S = Q^H G,   grad_Q = G S^H,   grad_P = grad_Q or grad_Q^T,
//   grad_T = cayley_tall_backward(grad_P, X, T),   grad_R = grad_T or grad_T^T.
// Q is rebuilt from X and T (two cheap products) rather than saved: the forward keeps only X.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "common/checks.h"
#include "cpu/cayley.h"

namespace lipkernels {
namespace cpu {
namespace {

bool is_wide(const at::Tensor& response) { return response.size(1) < response.size(2); }

// The tall orientation T (or its inverse map, for the results): a plain transpose when wide.
at::Tensor oriented(const at::Tensor& t, bool wide) {
  return (wide ? t.transpose(1, 2) : t).contiguous();
}

std::tuple<at::Tensor, at::Tensor> cayley_frequency_product_cpu(const at::Tensor& response,
                                                                const at::Tensor& spectrum) {
  check_cayley_frequency_product_args("cayley_frequency_product", response, spectrum);
  const bool wide = is_wide(response);
  const auto [P, X] = cayley_tall(oriented(response, wide));
  const at::Tensor Q = wide ? P.transpose(1, 2) : P;
  return {at::matmul(Q, spectrum).contiguous(), X};
}

std::tuple<at::Tensor, at::Tensor> cayley_frequency_product_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& response, const at::Tensor& spectrum,
    const at::Tensor& inverse) {
  check_cayley_frequency_product_backward_args(grad_output, response, spectrum, inverse);
  const bool wide = is_wide(response);
  const at::Tensor T = oriented(response, wide);
  const at::Tensor P = cayley_from_inverse(inverse, T);
  const at::Tensor Q = wide ? P.transpose(1, 2) : P;
  const at::Tensor grad_spectrum = at::matmul(conj_transpose(Q), grad_output);
  const at::Tensor grad_Q = at::matmul(grad_output, conj_transpose(spectrum));
  const at::Tensor grad_T = cayley_tall_backward(oriented(grad_Q, wide), inverse, T);
  return {oriented(grad_T, wide), grad_spectrum.contiguous()};
}

}  // namespace

TORCH_LIBRARY_IMPL(lipkernels, CPU, m) {
  m.impl("cayley_frequency_product", &cayley_frequency_product_cpu);
  m.impl("cayley_frequency_product_backward", &cayley_frequency_product_backward_cpu);
}

}  // namespace cpu
}  // namespace lipkernels
