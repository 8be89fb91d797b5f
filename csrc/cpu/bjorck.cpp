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
// Every product is one batched BLAS call on the (batch, m, n) view, written into its slot of
// the stacks the forward returns; order 1 fuses the update's scaling and sum into the product
// (baddbmm), which is all the seed's four tensor ops do.
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

// out = W p(A).
void step(at::Tensor& out, const at::Tensor& W, const at::Tensor& A,
          const std::vector<double>& c) {
  if (c.size() == 2) {
    at::baddbmm_out(out, W, W, A, 1.0 + c[1], -c[1]);
  } else {
    at::bmm_out(out, W, horner(A, c)[0]);
  }
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

// The forward writes every iterate and Gram matrix into its slot of the stacks it returns:
// (batch, rows, cols) views of stack entry t.
at::Tensor entry(const at::Tensor& stack, int64_t t) {
  return stack.select(0, t).view({-1, stack.size(-2), stack.size(-1)});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bjorck_cpu(const at::Tensor& W, int64_t iters,
                                                          double beta, int64_t order) {
  check_bjorck_args("bjorck", W, iters, beta, order);
  const std::vector<double> c = coefficients(beta, order);
  std::vector<int64_t> iterates_shape = W.sizes().vec();
  iterates_shape.insert(iterates_shape.begin(), iters - 1);
  std::vector<int64_t> grams_shape = W.sizes().vec();
  grams_shape[grams_shape.size() - 2] = W.size(-1);
  grams_shape.insert(grams_shape.begin(), iters);
  at::Tensor iterates = at::empty(iterates_shape, W.options());
  at::Tensor grams = at::empty(grams_shape, W.options());
  at::Tensor Q = at::empty_like(W, at::MemoryFormat::Contiguous);
  at::Tensor X = batched(W);
  for (int64_t t = 0; t < iters; ++t) {
    at::Tensor A = entry(grams, t);
    at::bmm_out(A, X.transpose(1, 2), X);
    at::Tensor next = t + 1 < iters ? entry(iterates, t) : Q.view(X.sizes());
    step(next, X, A, c);
    X = next;
  }
  return {Q, iterates, grams};
}

at::Tensor bjorck_backward_cpu(const at::Tensor& grad_Q, const at::Tensor& W,
                               const at::Tensor& iterates, const at::Tensor& grams,
                               int64_t iters, double beta, int64_t order) {
  check_bjorck_backward_args(grad_Q, W, iterates, grams, iters, beta, order);
  const std::vector<double> c = coefficients(beta, order);
  const at::Tensor kept_iterates = iterates.contiguous(), kept_grams = grams.contiguous();
  at::Tensor G = batched(grad_Q);
  for (int64_t t = iters - 1; t >= 0; --t) {
    G = reverse_step(G, t == 0 ? batched(W) : entry(kept_iterates, t - 1),
                     entry(kept_grams, t), c);
  }
  return G.view(W.sizes());
}

}  // namespace

TORCH_LIBRARY_IMPL(lipkernels, CPU, m) {
  m.impl("bjorck", &bjorck_cpu);
  m.impl("bjorck_backward", &bjorck_backward_cpu);
}

#ifdef LIPKERNELS_WITH_CUDA
// The same ATen code on CUDA tensors, the design for stacks of large matrices
// (docs/performance.md): two batched cuBLAS products an iteration, where the Triton kernel's
// program per matrix would leave most SMs idle.
TORCH_LIBRARY_IMPL(lipkernels, CUDA, m) {
  m.impl("bjorck", &bjorck_cpu);
  m.impl("bjorck_backward", &bjorck_backward_cpu);
}
#endif

}  // namespace cpu
}  // namespace lipkernels
