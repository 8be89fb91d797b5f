// CPU kernels of cayley and cayley_backward (Trockman & Kolter, ICLR 2021); the math is in
// cayley.h. A wide W is transposed by the Python layer (lipkernels/ops/cayley.py), so these ops
// take tall matrices only.
#include "cpu/cayley.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/checks.h"

namespace lipkernels {
namespace cpu {

// A lazy-conjugate view (Tensor::mH) gives wrong values when these ATen calls run under a Python
// dispatch mode (AOTAutograd's runtime wraps custom ops in one), so the conjugate is taken
// physically; for real dtypes it is a plain transposed view.
at::Tensor conj_transpose(const at::Tensor& t) {
  return (t.is_complex() ? at::conj_physical(t) : t).transpose(-2, -1);
}

namespace {

at::Tensor identity_like(const at::Tensor& W) {
  return at::eye(W.size(-1), W.options());
}

// Q = [2X - I ; -2 V X] from X and W (whose bottom block is V).
at::Tensor cayley_from_inverse(const at::Tensor& X, const at::Tensor& W) {
  return at::cat({2 * X - identity_like(W), -2 * at::matmul(bottom_block(W), X)}, -2);
}

}  // namespace

at::Tensor bottom_block(const at::Tensor& W) {
  const int64_t n = W.size(-1);
  return W.narrow(-2, n, W.size(-2) - n);
}

at::Tensor cayley_inverse(const at::Tensor& W_in) {
  const at::Tensor W = W_in.contiguous();
  const at::Tensor U = W.narrow(-2, 0, W.size(-1));
  const at::Tensor V = bottom_block(W);
  const at::Tensor I = identity_like(W);
  // M = I + A = I + U - U^H + V^H V; its Hermitian part is >= I, so the LU is well posed.
  const at::Tensor M = I + U - conj_transpose(U) + at::matmul(conj_transpose(V), V);
  // linalg_solve hands back a column-major result; X is an op output, so make it row-major
  // contiguous as the fake impl (and any caller) expects.
  return at::linalg_solve(M, I.expand_as(M)).contiguous();
}

std::tuple<at::Tensor, at::Tensor> cayley_tall(const at::Tensor& W) {
  const at::Tensor X = cayley_inverse(W);
  return {cayley_from_inverse(X, W), X};
}

at::Tensor cayley_tall_backward(const at::Tensor& grad_Q, const at::Tensor& X,
                                const at::Tensor& W) {
  const int64_t n = W.size(-1);
  const int64_t rest = W.size(-2) - n;
  const at::Tensor V = bottom_block(W);
  const at::Tensor g_top = grad_Q.narrow(-2, 0, n);
  const at::Tensor g_bot = grad_Q.narrow(-2, n, rest);
  const at::Tensor XH = conj_transpose(X);
  const at::Tensor g_a =
      2 * at::matmul(at::matmul(XH, at::matmul(conj_transpose(V), g_bot) - g_top), XH);
  const at::Tensor g_u = g_a - conj_transpose(g_a);
  const at::Tensor g_v = at::matmul(V, g_a + conj_transpose(g_a)) - 2 * at::matmul(g_bot, XH);
  return at::cat({g_u, g_v}, -2);
}

namespace {

std::tuple<at::Tensor, at::Tensor> cayley_cpu(const at::Tensor& W) {
  check_cayley_tall("cayley", "W", W);
  return cayley_tall(W);
}

at::Tensor cayley_backward_cpu(const at::Tensor& grad_Q, const at::Tensor& X,
                               const at::Tensor& W) {
  check_cayley_backward_args(grad_Q, X, W);
  return cayley_tall_backward(grad_Q, X, W);
}

}  // namespace

TORCH_LIBRARY_IMPL(lipkernels, CPU, m) {
  m.impl("cayley", &cayley_cpu);
  m.impl("cayley_backward", &cayley_backward_cpu);
}

}  // namespace cpu
}  // namespace lipkernels
