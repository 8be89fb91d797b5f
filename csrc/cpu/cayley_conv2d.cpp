// CPU kernels of cayley_conv2d and cayley_conv2d_backward: the frequency-domain core of the
// Cayley convolution (Trockman & Kolter, ICLR 2021).
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

#include "cpu/cayley.h"

namespace lipkernels {
namespace cpu {
namespace {

void check_complex(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kComplexFloat || t.scalar_type() == at::kComplexDouble, op,
              ": ", name, " must be complex64 or complex128, got ", t.scalar_type());
}

}  // namespace

void check_cayley_conv2d_args(const char* op, const at::Tensor& response,
                              const at::Tensor& spectrum) {
  TORCH_CHECK(response.dim() == 3 && response.numel() > 0, op,
              ": response must be a non-empty (F, C_out, C_in) tensor, got ", response.sizes());
  check_complex(op, "response", response);
  TORCH_CHECK(spectrum.dim() == 3 && spectrum.size(0) == response.size(0) &&
                  spectrum.size(1) == response.size(2) && spectrum.size(2) >= 1,
              op, ": spectrum must have shape (F, C_in, B) = (", response.size(0), ", ",
              response.size(2), ", B) to match response ", response.sizes(), ", got ",
              spectrum.sizes());
  TORCH_CHECK(spectrum.scalar_type() == response.scalar_type() &&
                  spectrum.device() == response.device(),
              op, ": spectrum must have the dtype and device of response (",
              response.scalar_type(), ", ", response.device(), "), got ", spectrum.scalar_type(),
              ", ", spectrum.device());
}

void check_cayley_conv2d_backward_args(const at::Tensor& grad_output, const at::Tensor& response,
                                       const at::Tensor& spectrum, const at::Tensor& inverse) {
  constexpr const char* op = "cayley_conv2d_backward";
  check_cayley_conv2d_args(op, response, spectrum);
  const int64_t frequencies = response.size(0);
  const int64_t n = std::min(response.size(1), response.size(2));
  TORCH_CHECK(grad_output.sizes() ==
                      c10::IntArrayRef({frequencies, response.size(1), spectrum.size(2)}) &&
                  grad_output.scalar_type() == response.scalar_type() &&
                  grad_output.device() == response.device(),
              op, ": grad_output must have shape (F, C_out, B) = (", frequencies, ", ",
              response.size(1), ", ", spectrum.size(2), ") and response's dtype and device, got ",
              grad_output.sizes(), " (", grad_output.scalar_type(), ", ", grad_output.device(),
              ")");
  TORCH_CHECK(inverse.sizes() == c10::IntArrayRef({frequencies, n, n}) &&
                  inverse.scalar_type() == response.scalar_type() &&
                  inverse.device() == response.device(),
              op, ": inverse must be the forward's (I + A)^{-1} of shape (", frequencies, ", ", n,
              ", ", n, ") and response's dtype and device, got ", inverse.sizes(), " (",
              inverse.scalar_type(), ", ", inverse.device(), ")");
}

namespace {

bool is_wide(const at::Tensor& response) { return response.size(1) < response.size(2); }

// The tall orientation T (or its inverse map, for the results): a plain transpose when wide.
at::Tensor oriented(const at::Tensor& t, bool wide) {
  return (wide ? t.transpose(1, 2) : t).contiguous();
}

std::tuple<at::Tensor, at::Tensor> cayley_conv2d_cpu(const at::Tensor& response,
                                                     const at::Tensor& spectrum) {
  check_cayley_conv2d_args("cayley_conv2d", response, spectrum);
  const bool wide = is_wide(response);
  const auto [P, X] = cayley_tall(oriented(response, wide));
  const at::Tensor Q = wide ? P.transpose(1, 2) : P;
  return {at::matmul(Q, spectrum).contiguous(), X};
}

std::tuple<at::Tensor, at::Tensor> cayley_conv2d_backward_cpu(const at::Tensor& grad_output,
                                                              const at::Tensor& response,
                                                              const at::Tensor& spectrum,
                                                              const at::Tensor& inverse) {
  check_cayley_conv2d_backward_args(grad_output, response, spectrum, inverse);
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
  m.impl("cayley_conv2d", &cayley_conv2d_cpu);
  m.impl("cayley_conv2d_backward", &cayley_conv2d_backward_cpu);
}

}  // namespace cpu
}  // namespace lipkernels
