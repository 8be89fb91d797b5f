// CPU kernels of cayley_frequency_product and cayley_frequency_product_backward: the
// frequency-domain core of the Cayley convolution (Trockman & Kolter, ICLR 2021).
//
// Math, per frequency f (lipkernels/reference/cayley_conv2d.py), with response R_f (C_out x C_in)
// and the input spectrum S_f (C_in x B): the tall orientation T = R_f if C_out >= C_in, else R_f^T
// (plain transpose), m x n, V = T[n:], X = (I + A)^{-1} (cayley.h), P = [2X - I ; -2 V X] and
// Q = P or P^T. Q is never formed; the forward applies it through the solved spectrum W:
//   tall   W = X S,                          output = [2W - S ; -2 V W]
//   wide   W = X^T (S_top - V^T S_bot),      output = 2W - S_top
// and keeps W (n x B) beside X. The backward, for the output gradient G (PyTorch's convention
// for complex gradients): grad_Q = G S^H has rank B, so the closed-form cayley backward of it
// (cayley.h) factors through the two n x B matrices p and W and needs no n x n x n product:
//   tall   p = X^H (G_top - V^H G_bot),      grad_S = 2p - G_top
//   wide   p = conj(X) G,                    grad_S = [2p - G ; -2 conj(V) p]
//   K = p W^H,  D = 2 (K^H - K),  E = -2 (K + K^H),
//   tall   grad_R = [D ; V E - 2 G_bot W^H]
//   wide   grad_R = [D , E V^T - 2 p S_bot^H]
// (in both the n x n block is the skew-Hermitian D; a square response has no other block).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "common/checks.h"
#include "cpu/cayley.h"

namespace lipkernels {
namespace cpu {
namespace {

bool is_wide(const at::Tensor& response) { return response.size(1) < response.size(2); }

// The tall orientation T of the responses: a plain transpose when wide.
at::Tensor tall_orientation(const at::Tensor& response, bool wide) {
  return (wide ? response.transpose(1, 2) : response).contiguous();
}

// 2 a - b, contiguous, in two passes over one new tensor.
at::Tensor twice_minus(const at::Tensor& a, const at::Tensor& b) { return (2 * a).sub_(b); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> cayley_frequency_product_cpu(
    const at::Tensor& response, const at::Tensor& spectrum) {
  check_cayley_frequency_product_args("cayley_frequency_product", response, spectrum);
  const bool wide = is_wide(response);
  const at::Tensor T = tall_orientation(response, wide);
  const int64_t n = T.size(2);
  const at::Tensor X = cayley_inverse(T);
  const at::Tensor V = bottom_block(T);
  const at::Tensor S_top = spectrum.narrow(1, 0, n);
  if (!wide) {
    const at::Tensor solved = at::matmul(X, spectrum);
    at::Tensor top = twice_minus(solved, spectrum);
    if (V.size(1) == 0) return {top, X, solved};  // square: no bottom block
    return {at::cat({top, -2 * at::matmul(V, solved)}, 1), X, solved};
  }
  const at::Tensor S_bot = spectrum.narrow(1, n, spectrum.size(1) - n);
  const at::Tensor solved = at::matmul(X.transpose(1, 2), S_top - at::matmul(V.transpose(1, 2),
                                                                             S_bot));
  return {twice_minus(solved, S_top), X, solved};
}

std::tuple<at::Tensor, at::Tensor> cayley_frequency_product_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& response, const at::Tensor& spectrum,
    const at::Tensor& inverse, const at::Tensor& solved) {
  check_cayley_frequency_product_backward_args(grad_output, response, spectrum, inverse, solved);
  const bool wide = is_wide(response);
  const at::Tensor T = tall_orientation(response, wide);
  const int64_t n = T.size(2), rest = T.size(1) - n;
  const at::Tensor V = bottom_block(T);
  at::Tensor p, grad_spectrum;
  if (!wide) {
    const at::Tensor G_top = grad_output.narrow(1, 0, n);
    const at::Tensor rhs =
        rest == 0 ? G_top
                  : G_top - at::matmul(conj_transpose(V), grad_output.narrow(1, n, rest));
    p = at::matmul(conj_transpose(inverse), rhs);
    grad_spectrum = twice_minus(p, G_top);
  } else {
    p = at::matmul(at::conj_physical(inverse), grad_output);
    grad_spectrum =
        at::cat({twice_minus(p, grad_output), -2 * at::matmul(at::conj_physical(V), p)}, 1);
  }
  const at::Tensor K = at::matmul(p, conj_transpose(solved));
  const at::Tensor D = 2 * (conj_transpose(K) - K);
  if (rest == 0) return {D.contiguous(), grad_spectrum.contiguous()};
  const at::Tensor E = -2 * (K + conj_transpose(K));
  if (!wide) {
    const at::Tensor G_bot = grad_output.narrow(1, n, rest);
    return {at::cat({D, at::matmul(V, E) - 2 * at::matmul(G_bot, conj_transpose(solved))}, 1),
            grad_spectrum.contiguous()};
  }
  const at::Tensor S_bot = spectrum.narrow(1, n, rest);
  return {at::cat({D, at::matmul(E, V.transpose(1, 2)) - 2 * at::matmul(p, conj_transpose(S_bot))},
                  2),
          grad_spectrum.contiguous()};
}

}  // namespace

TORCH_LIBRARY_IMPL(lipkernels, CPU, m) {
  m.impl("cayley_frequency_product", &cayley_frequency_product_cpu);
  m.impl("cayley_frequency_product_backward", &cayley_frequency_product_backward_cpu);
}

}  // namespace cpu
}  // namespace lipkernels
