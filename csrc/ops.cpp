// The one place where every lipkernels operator schema is declared.
//
// Kernels register against these schemas per device in csrc/cpu/<op>.cpp (CPU key) and
// csrc/cuda/<op>.cu (CUDA key). Fake (meta) implementations and autograd formulas are registered
// from Python in lipkernels/ops/<op>.py, so every op traces under torch.compile.
//
// The Python module `lipkernels._C` itself only carries non-op utilities (build information);
// operators are reached through torch.ops.lipkernels.*.

#include <torch/extension.h>

#include <string>

TORCH_LIBRARY(lipkernels, m) {
  // Power iteration on a batch of matrices W (..., m, n) with persistent right vectors u (..., n).
  // Repeats `iters` times: v = normalize(W u); u = normalize(W^T v); then sigma = v^T W u.
  // Returns (sigma (...), u (..., n), v (..., m)); all iterations run in one kernel launch.
  m.def("power_iteration(Tensor weight, Tensor u, int iters) -> (Tensor, Tensor, Tensor)");
  // d sigma / d W = v u^T: grad_weight[..., r, c] = grad_sigma[...] * v[..., r] * u[..., c].
  m.def("power_iteration_backward(Tensor grad_sigma, Tensor u, Tensor v) -> Tensor");

  // The Fantastic Four bounds of a conv filter (C_out, C_in, k_h, k_w): power iteration on the four
  // reshapes M_1..M_4 (docs/design.md §3.1) with persistent right vectors, all in one launch.
  // bounds[q] = sqrt(k_h k_w) * v_q^T M_q u_q. Returns (bounds (4,), [u_1..u_4], [v_1..v_4]).
  m.def(
      "conv_spectral_bounds(Tensor weight, Tensor[] vectors, int iters)"
      " -> (Tensor, Tensor[], Tensor[])");
  // grad_weight = sqrt(k_h k_w) * sum_q grad_bounds[q] * unreshape_q(v_q u_q^T).
  m.def(
      "conv_spectral_bounds_backward(Tensor grad_bounds, Tensor[] vectors, Tensor[] left_vectors,"
      " int[] weight_shape) -> Tensor");

  // Power iteration at every rfft2 frequency f of the circular conv with weight (C_out, C_in, k_h,
  // k_w) on a height x width image, on the real forms of the responses H_f (docs/design.md §3.1)
  // from starts u (F, 2 C_in), F = height (width / 2 + 1). Returns (sigma (F,), u (F, 2 C_in),
  // v (F, 2 C_out)), sigma_f = Re(v_f^H H_f u_f); all iterations in one launch.
  m.def(
      "frequency_power_iteration(Tensor weight, Tensor u, int iters, int height, int width)"
      " -> (Tensor, Tensor, Tensor)");
  // grad_weight[o, i, k] = sum_f grad_sigma[f] Re(conj(v_f[o]) u_f[i] e^(i theta_fk)).
  m.def(
      "frequency_power_iteration_backward(Tensor grad_sigma, Tensor u, Tensor v,"
      " int[] weight_shape, int height, int width) -> Tensor");

  // Power iteration on the convolution map A x = conv2d(x, weight, stride, padding) (zero padding)
  // from the persistent input-shaped vector u (1, C_in, H, W), A^T its adjoint (conv_transpose2d
  // giving back u's shape): `iters` times v = normalize(A u); u = normalize(A^T v); then
  // sigma = <v, A u>. Returns (sigma (), u, v (1, C_out, H', W')); v is kept for the backward.
  m.def(
      "conv_power_iteration(Tensor weight, Tensor u, int iters, int[2] stride, int[2] padding)"
      " -> (Tensor, Tensor, Tensor)");
  // grad_weight (C_out, C_in, k_h, k_w) = grad_sigma * the weight gradient of conv2d(u, .) for
  // the output gradient v; C_out and C_in are v's and u's channels.
  m.def(
      "conv_power_iteration_backward(Tensor grad_sigma, Tensor u, Tensor v, int[2] kernel_size,"
      " int[2] stride, int[2] padding) -> Tensor");

  // The SOC series y = sum_{i=0}^{terms-1} S^{*i}(x) / i! (docs/design.md §3.2), all terms in one call,
  // grad_mode "exact" or "fast". Returns (y, saved): what the backward needs beyond x and S, by
  // mode and kernel. Fast mode: [z_2], the second Horner iterate (empty when terms == 1). Exact
  // mode: the scaled powers S^j x / j!, j = 1..terms - 2, where the kernel keeps them (the CPU
  // kernel: memory is plentiful there and recomputing costs n - 1 convolutions), and nothing
  // where it recomputes them in the backward (the GPU kernels: their target is peak memory).
  m.def("soc_exp(Tensor x, Tensor S, int terms, str grad_mode) -> (Tensor, Tensor[])");
  // Returns (grad_x, grad_S) for the output gradient grad_y. `start` is the tensor the weight
  // gradients begin from: x in exact mode, z_2 in fast mode (unused when terms == 1); `powers`
  // the exact forward's kept powers (see soc_exp), empty where the kernel keeps none.
  m.def(
      "soc_exp_backward(Tensor grad_y, Tensor S, Tensor start, Tensor[] powers, int terms,"
      " str grad_mode) -> (Tensor, Tensor)");

  // MaxMin on the channel pairs of x (B, C, *spatial), C even (GroupSort(2)): pairing "halves"
  // (SOC: channel i with i + C/2) or "pairs" (2i with 2i + 1); each pair (a, b) becomes
  // (max, min). Returns (y, mask): mask (B, C/2, *spatial) bool, true where a >= b (the pair kept
  // its order; ties do), all the backward needs.
  m.def("max_min(Tensor x, str pairing) -> (Tensor, Tensor)");
  // grad_x: each output gradient routed back through its pair's permutation,
  // (grad_a, grad_b) = mask ? (g_first, g_second) : (g_second, g_first).
  m.def("max_min_backward(Tensor grad_y, Tensor mask, str pairing) -> Tensor");

  // The HouseHolder activation (Singla, Singla & Feizi, NeurIPS 2022) of x (B, C, *spatial) with
  // one angle theta (C/2,) per "halves" channel pair (a, b): reflected to
  // (a cos + b sin, a sin - b cos)(theta) where a sin(theta/2) - b cos(theta/2) > 0, else kept.
  // theta has x's dtype, or float32 for float16 / bfloat16 x.
  m.def("householder(Tensor x, Tensor theta) -> Tensor");
  // Returns (grad_x, grad_theta): grad_x through each element's branch (the reflection is
  // symmetric); grad_theta summed over batch and positions of reflected elements, in float
  // (double for double).
  m.def("householder_backward(Tensor grad_y, Tensor x, Tensor theta) -> (Tensor, Tensor)");

  // The Cayley transform (Trockman & Kolter, ICLR 2021) of a tall W (..., m, n), m >= n, real or
  // complex: A = U - U^H + V^H V with U = W[..., :n, :], V = W[..., n:, :], X = (I + A)^{-1},
  // Q = [2X - I ; -2 V X]. Returns (Q, X); X (..., n, n) is kept for the backward.
  m.def("cayley(Tensor W) -> (Tensor, Tensor)");
  // grad_W = [G_A - G_A^H ; V (G_A + G_A^H) - 2 G_bot X^H], G_A = 2 X^H (V^H G_bot - G_top) X^H.
  m.def("cayley_backward(Tensor grad_Q, Tensor X, Tensor W) -> Tensor");

  // The frequency-domain core of the public lipkernels.cayley_conv2d (Trockman & Kolter, ICLR
  // 2021), which calls it between rfft2 and irfft2: per frequency f,
  // output_f = Q_f spectrum_f with Q_f = cayley(response_f) (C_out x C_in; a wide response, C_out <
  // C_in, goes through cayley as its plain transpose: Q_f = cayley(response_f^T)^T). response
  // (F, C_out, C_in) and spectrum (F, C_in, B) complex; returns (output (F, C_out, B), inverse
  // (F, n, n), solved (F, n, B)), n = min(C_in, C_out): inverse_f = X_f = (I + A_f)^{-1} of the
  // tall orientation T_f (V_f its bottom rows), and solved_f = X_f spectrum_f (tall) or
  // X_f^T (spectrum_top - V_f^T spectrum_bot) (wide), through which Q_f is applied
  // (output_top = 2 solved - spectrum_top); both kept for the backward.
  m.def("cayley_frequency_product(Tensor response, Tensor spectrum) -> (Tensor, Tensor, Tensor)");
  // (grad_response, grad_spectrum) from the rank-B factors of grad_Q = G spectrum^H: no n x n x n
  // product (csrc/cpu/cayley_conv2d.cpp gives the formulas).
  m.def(
      "cayley_frequency_product_backward(Tensor grad_output, Tensor response, Tensor spectrum,"
      " Tensor inverse, Tensor solved) -> (Tensor, Tensor)");

  // The certificate of lipkernels.bounds.skew_conv_norm_bound (CPU only; no gradient): for each
  // row r of phases (2, R, K), whether a Cholesky factorisation of shift I + X_r^T runs to
  // completion, X_r = sum_k (phases[0, r, k] + i phases[1, r, k]) taps[k] (C x C complex, the
  // real taps (K, C, C) of the filter, X_r row-major). Returns a bool tensor (R,).
  m.def("symbols_factorize(Tensor taps, Tensor phases, float shift) -> Tensor");

  // Björck's orthonormalisation (Björck & Bowie 1971; the Lipschitz networks' form) of a tall,
  // already scaled W (..., m, n), m >= n, float32/float64: `iters` times
  // W <- W p(W^T W), p(A) = sum_{k<=order} c_k (I - A)^k, c_0 = 1, c_1 = beta, c_k (order >= 2,
  // beta = 1/2) the Taylor coefficients of A^(-1/2) (lipkernels._conventions.bjorck_coefficients).
  // Returns (Q, iterates, grams): what the backward reads, the iterates W_1..W_(iters-1)
  // stacked (iters - 1, ..., m, n) and the Gram matrices A_t = W_t^T W_t, t < iters, stacked
  // (iters, ..., n, n).
  m.def("bjorck(Tensor W, int iters, float beta, int order) -> (Tensor, Tensor, Tensor)");
  // grad_W for the output gradient grad_Q, back through the iterations (W_0 = W):
  // dL/dW_t = G p(A_t) - W_t (Ebar + Ebar^T), Ebar the reverse of Horner's rule from W_t^T G.
  m.def(
      "bjorck_backward(Tensor grad_Q, Tensor W, Tensor iterates, Tensor grams, int iters,"
      " float beta, int order) -> Tensor");

  // The BCOP filter (Li et al., NeurIPS 2019; lipkernels/reference/bcop_filter.py) from
  // matrices (2k - 1, C, C), C = max(in_channels, out_channels), float32/float64: the head
  // H = M_0[:in, :out] times the k - 1 convolved block_orth kernels of the projectors
  // P_j = U_j U_j^T (U_j the first C/2 columns of M_(j+1)), as (out, in, k, k). Returns
  // (weight, projectors, iterates): what the backward reads where the kernel keeps it (the CPU
  // kernel), the projectors (2k - 2, C, C) and the tap stacks after each growth step but the
  // last (2k - 3 of them; csrc/cpu/bcop_filter.cpp).
  m.def(
      "bcop_filter(Tensor matrices, int in_channels, int out_channels)"
      " -> (Tensor, Tensor, Tensor[])");
  // grad_matrices for the filter gradient grad_weight, back through the growth steps:
  // dL/dP_j = Y_j^T D and dL/dY_j = G[i + 1] + D P_j^T with D = G[i] - G[i + 1], then
  // dL/dU_j = (dL/dP_j + dL/dP_j^T) U_j and the head's gradient from dL/dY_0.
  m.def(
      "bcop_filter_backward(Tensor grad_weight, Tensor matrices, Tensor projectors,"
      " Tensor[] iterates, int in_channels, int out_channels) -> Tensor");

  // The convex potential step (CPL, Meunier et al., ICML 2022; SLL, Araujo et al., ICLR 2023;
  // lipkernels/reference/convex_potential.py) z = x - W^T (scale * relu(W x + b)), W a "same"
  // zero-padded convolution with a filter (C_inner, C, k1, k2), odd k, on x (B, C, H, W), or a
  // matrix (C_inner, C) on x (B, C); scale () or (C_inner,). Returns (z, activation), the
  // activation r = relu(W x + b) (B, C_inner, ...) being what the backward reads.
  m.def(
      "convex_potential(Tensor x, Tensor weight, Tensor? bias, Tensor scale)"
      " -> (Tensor, Tensor)");
  // With q = W grad_z and m = [r > 0]: grad_scale = -sum r q (per channel, or in all for a 0-dim
  // scale), e = -scale m q, grad_bias = sum e, grad_x = grad_z + W^T e,
  // grad_weight = (e correlated with x) - scale (r correlated with grad_z).
  m.def(
      "convex_potential_backward(Tensor grad_z, Tensor x, Tensor weight, Tensor scale,"
      " Tensor activation) -> (Tensor, Tensor, Tensor, Tensor)");

  // The AOL rescaling (Prach & Lampert, ECCV 2022) with SLL's weights q = exp(log_q) (Araujo et
  // al., ICLR 2023; lipkernels/reference/aol_rescaling.py) of a matrix (C_out, C_in) or a filter
  // (C_out, C_in, k_1, k_2), float32/float64: d_i = (S_i + 1e-6)^(-1/2),
  // S_i = sum_j A_ij q_j / q_i, A_ij = sum_delta |G[i, j, delta]|, G = W^T W or the filter's
  // (C_in, C_in, 2 k_1 - 1, 2 k_2 - 1) self-correlation; log_q None means q = 1. Returns
  // (d (C_in,), A (C_in, C_in), signs): sign(G) as int8, what the backward reads.
  m.def("aol_rescaling(Tensor weight, Tensor? log_q) -> (Tensor, Tensor, Tensor)");
  // Returns (grad_weight, grad_log_q) from dL/dS = -grad_d d^3 / 2: grad_log_q = P^T 1 - P 1
  // with P_ij = dL/dS_i A_ij q_j / q_i (the gradient at log_q = 0 when log_q is None), and
  // grad_weight through G with dL/dG = dL/dS_i q_j / q_i sign(G[i, j, delta]).
  m.def(
      "aol_rescaling_backward(Tensor grad_d, Tensor weight, Tensor? log_q, Tensor d,"
      " Tensor absolute_gram, Tensor signs) -> (Tensor, Tensor)");
}

namespace {

std::string compiled_backends() {
#ifdef LIPKERNELS_WITH_CUDA
  return "cpp,cuda";
#else
  return "cpp";
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "lipkernels compiled extension: operators live in torch.ops.lipkernels";
  module.def("compiled_backends", &compiled_backends,
             "Comma-separated list of the C++ backends compiled into this build.");
}
