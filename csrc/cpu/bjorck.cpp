// CPU kernels of bjorck and bjorck_backward: Björck's orthonormalisation (Björck & Bowie, SIAM J.
// Numer. Anal. 1971; the form of the Lipschitz networks' code, Anil et al. ICML 2019, Li et al.
// NeurIPS 2019) of a batch of tall, already scaled matrices W_0 (..., m, n), m >= n:
//   A_t = W_t^T W_t,  W_(t+1) = W_t p(A_t),  p(A) = sum_(k<=order) c_k E^k,  E = I - A,
// evaluated by Horner's rule, R_order = c_order I, R_k = c_k I + E R_(k+1), p = R_0.
//
// Backward, back through the iterations from the kept W_t and A_t: from G = dL/dW_(t+1),
//   P = W_t^T G (the gradient of p), Ebar = sum_k Pbar_k R_(k+1) with Pbar_0 = P,
//   Pbar_(k+1) = E Pbar_k (the reverse of Horner's rule; E and every R_k are symmetric), and
//   dL/dW_t = G R_0 - W_t (Ebar + Ebar^T)       (dA = dW^T W + W^T dW, dE = -dA).
// Order 1 (R_0 = (1 + beta) I - beta A, R_1 = beta I): dL/dW_t = (1 + beta) G - beta G A_t
// - beta W_t (P + P^T): three products an iteration, the forward's two being kept, which is the
// count of autograd through the reference; recomputing A_t would add one, and the memory-free
// tangent form (lipkernels/reference/bjorck.py) three.
//
// Every product is one batched BLAS call on the (batch, m, n) view; order 1 fuses the update's
// scaling and sum into the product (baddbmm), which is all the seed's four tensor ops do.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "common/checks.h"

namespace lipkernels {
namespace cpu {
namespace {

std::vector<double> coefficients(double beta, int64_t order) {
  std::vector<double> c = {1.0, beta};
  for (int64_t k = 2; k <= order; ++k) {
    c.push_back(c.back() * static_cast<double>(2 * k - 1) / static_cast<double>(2 * k));
  }
  return c;
}

// The (batch, rows, cols) view of a (..., rows, cols) tensor.
at::Tensor batched(const at::Tensor& X) {
  return X.contiguous().view({-1, X.size(-2), X.size(-1)});
}

// R_0..R_order of Horner's rule for p(A).
std::vector<at::Tensor> horner(const at::Tensor& A, const std::vector<double>& c) {
  const int64_t order = static_cast<int64_t>(c.size()) - 1;
  const at::Tensor I = at::eye(A.size(-1), A.options()).expand_as(A);
  const at::Tensor E = I - A;
  std::vector<at::Tensor> R(order + 1);
  R[order] = c[order] * I;
  for (int64_t k = order - 1; k >= 0; --k) {
    R[k] = at::baddbmm(I, E, R[k + 1], c[k], 1.0);
  }
  return R;
}

// W p(A).
at::Tensor step(const at::Tensor& W, const at::Tensor& A, const std::vector<double>& c) {
  if (c.size() == 2) {
    return at::baddbmm(W, W, A, 1.0 + c[1], -c[1]);
  }
  return at::bmm(W, horner(A, c)[0]);
}

// dL/dW_t from G = dL/dW_(t+1), W = W_t, A = A_t.
at::Tensor reverse_step(const at::Tensor& G, const at::Tensor& W, const at::Tensor& A,
                        const std::vector<double>& c) {
  const at::Tensor P = at::bmm(W.transpose(1, 2), G);
  if (c.size() == 2) {
    at::Tensor grad = at::baddbmm(G, G, A, 1.0 + c[1], -c[1]);
    return grad.baddbmm_(W, P + P.transpose(1, 2), 1.0, -c[1]);
  }
  const std::vector<at::Tensor> R = horner(A, c);
  const at::Tensor E = at::eye(A.size(-1), A.options()) - A;
  at::Tensor p_bar = P;
  at::Tensor e_bar = at::bmm(p_bar, R[1]);
  for (size_t k = 1; k + 1 < R.size(); ++k) {
    p_bar = at::bmm(E, p_bar);
    e_bar.baddbmm_(p_bar, R[k + 1]);
  }
  return at::bmm(G, R[0]).baddbmm_(W, e_bar + e_bar.transpose(1, 2), 1.0, -1.0);
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> bjorck_cpu(
    const at::Tensor& W, int64_t iters, double beta, int64_t order) {
  check_bjorck_args("bjorck", W, iters, beta, order);
  const std::vector<double> c = coefficients(beta, order);
  std::vector<int64_t> gram_shape = W.sizes().vec();
  gram_shape[gram_shape.size() - 2] = W.size(-1);
  std::vector<at::Tensor> iterates, grams;
  at::Tensor X = batched(W);
  for (int64_t t = 0; t < iters; ++t) {
    if (t > 0) {
      iterates.push_back(X.view(W.sizes()));
    }
    const at::Tensor A = at::bmm(X.transpose(1, 2), X);
    grams.push_back(A.view(gram_shape));
    X = step(X, A, c);
  }
  return {X.view(W.sizes()), iterates, grams};
}

at::Tensor bjorck_backward_cpu(const at::Tensor& grad_Q, const at::Tensor& W,
                               at::TensorList iterates, at::TensorList grams, int64_t iters,
                               double beta, int64_t order) {
  check_bjorck_backward_args(grad_Q, W, iterates, grams, iters, beta, order);
  const std::vector<double> c = coefficients(beta, order);
  at::Tensor G = batched(grad_Q);
  for (int64_t t = iters - 1; t >= 0; --t) {
    G = reverse_step(G, batched(t == 0 ? W : iterates[t - 1]), batched(grams[t]), c);
  }
  return G.view(W.sizes());
}

}  // namespace

TORCH_LIBRARY_IMPL(lipkernels, CPU, m) {
  m.impl("bjorck", &bjorck_cpu);
  m.impl("bjorck_backward", &bjorck_backward_cpu);
}

}  // namespace cpu
}  // namespace lipkernels
