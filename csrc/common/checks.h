// Argument validation of the lipkernels ops, shared by the CPU and CUDA implementations.
//
// torch.ops.lipkernels.* can be called directly, bypassing the Python layer's checks, so each C++
// op validates its own inputs with messages that name the op, the argument and the expectation.
// Both backends include them from here, so a CPU and a CUDA kernel reject the same inputs with
// the same message. Only metadata is inspected: value checks (non-finite weights) would cost a
// device sync and stay out of the hot path (docs/design.md §4).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/accumulate.h>
#include <c10/util/string_view.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/conv_spectral_bounds.cuh"
#include "kernels/max_min.cuh"

namespace lipkernels {

inline void check_float_dtype(const char* op, const char* name, const at::Tensor& t) {
  const auto dtype = t.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                  dtype == at::kBFloat16,
              op, ": ", name, " must be float32, float64, float16 or bfloat16, got ", dtype);
}

// `t` must live on the same device and have the same dtype as the reference argument.
inline void check_matches(const char* op, const std::string& name, const at::Tensor& t,
                          const char* ref_name, const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on the same device as ",
              ref_name, " (", ref.device(), "), got ", t.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have the dtype of ",
              ref_name, " (", ref.scalar_type(), "), got ", t.scalar_type());
}

inline void check_iters(const char* op, int64_t iters) {
  TORCH_CHECK(iters >= 1, op, ": iters must be >= 1, got ", iters);
}

// soc_exp's gradient modes (lipkernels._conventions.GRAD_MODES).
enum class SocGradMode { kExact, kFast };

// soc_exp(x (B, C, H, W), S (C, C, k, k), terms, grad_mode): the checks shared by the forward and
// the backward op (`op` names the one called, `x_name` its (B, C, H, W) argument).
inline SocGradMode check_soc_exp_args(const char* op, const char* x_name, const at::Tensor& x,
                                      const at::Tensor& S, int64_t terms,
                                      c10::string_view grad_mode) {
  TORCH_CHECK(x.dim() == 4, op, ": ", x_name, " must have shape (B, C, H, W), got ", x.sizes());
  check_float_dtype(op, x_name, x);
  check_matches(op, "S", S, x_name, x);
  const int64_t channels = x.size(1);
  TORCH_CHECK(S.dim() == 4 && S.size(0) == channels && S.size(1) == channels &&
                  S.size(2) == S.size(3) && S.size(2) % 2 == 1,
              op, ": S must have shape (C, C, k, k) with C = ", channels,
              " (the channels of ", x_name, ") and k odd, got ", S.sizes());
  TORCH_CHECK(terms >= 1, op, ": terms must be >= 1, got ", terms);
  TORCH_CHECK(grad_mode == "exact" || grad_mode == "fast", op,
              ": grad_mode must be \"exact\" or \"fast\", got \"", grad_mode, "\"");
  return grad_mode == "exact" ? SocGradMode::kExact : SocGradMode::kFast;
}

// soc_exp_backward(grad_y, S, start, powers, terms, grad_mode): grad_y has the shape of x;
// `start`, the tensor the weight gradients begin from (x in exact mode, z_2 in fast mode), too
// unless terms == 1, where the backward needs neither. `powers` holds the `power_count` scaled
// powers S^j x / j!, j = 1..power_count, that the kernel's exact forward kept (none for a kernel
// that recomputes them, and in fast mode), each of grad_y's shape, dtype and device.
inline SocGradMode check_soc_exp_backward_args(const at::Tensor& grad_y, const at::Tensor& S,
                                               const at::Tensor& start, at::TensorList powers,
                                               int64_t terms, c10::string_view grad_mode,
                                               bool keeps_powers) {
  constexpr const char* op = "soc_exp_backward";
  const SocGradMode mode = check_soc_exp_args(op, "grad_y", grad_y, S, terms, grad_mode);
  if (terms > 1) {
    check_matches(op, "start", start, "grad_y", grad_y);
    TORCH_CHECK(start.sizes() == grad_y.sizes(), op,
                ": start must have the shape of grad_y ", grad_y.sizes(), ", got ", start.sizes());
  }
  const int64_t power_count =
      keeps_powers && mode == SocGradMode::kExact ? std::max<int64_t>(terms - 2, 0) : 0;
  TORCH_CHECK(static_cast<int64_t>(powers.size()) == power_count, op, ": powers must hold the ",
              power_count, " powers S^j x / j! (j = 1..terms - 2) the ", grad_mode,
              " forward of this kernel keeps, got ", powers.size());
  for (const at::Tensor& power : powers) {
    check_matches(op, "powers", power, "grad_y", grad_y);
    TORCH_CHECK(power.sizes() == grad_y.sizes(), op, ": powers must have the shape of grad_y ",
                grad_y.sizes(), ", got ", power.sizes());
  }
  return mode;
}

// A batch of `count` row-major m x n matrices.
struct MatrixBatch {
  std::vector<int64_t> batch_shape;
  int64_t count, m, n;
};

// power_iteration(weight (..., m, n), u (..., n), iters).
inline MatrixBatch check_power_iteration_args(const at::Tensor& weight, const at::Tensor& u,
                                              int64_t iters) {
  constexpr const char* op = "power_iteration";
  TORCH_CHECK(weight.dim() >= 2, op, ": weight must have shape (..., m, n), got ", weight.sizes());
  check_float_dtype(op, "weight", weight);
  check_matches(op, "u", u, "weight", weight);
  check_iters(op, iters);
  const int64_t m = weight.size(-2), n = weight.size(-1);
  TORCH_CHECK(m >= 1 && n >= 1, op, ": weight (..., m, n) must have m >= 1 and n >= 1, got ",
              weight.sizes());
  std::vector<int64_t> expected_u(weight.sizes().begin(), weight.sizes().end() - 1);
  expected_u.back() = n;
  TORCH_CHECK(u.sizes() == c10::IntArrayRef(expected_u), op, ": u must have shape ",
              c10::IntArrayRef(expected_u), " (the batch dims of weight ", weight.sizes(),
              " followed by n), got ", u.sizes());
  expected_u.pop_back();
  const int64_t count = c10::multiply_integers(expected_u);
  return {std::move(expected_u), count, m, n};
}

// power_iteration_backward(grad_sigma (...), u (..., n), v (..., m)).
inline MatrixBatch check_power_iteration_backward_args(const at::Tensor& grad_sigma,
                                                       const at::Tensor& u, const at::Tensor& v) {
  constexpr const char* op = "power_iteration_backward";
  check_float_dtype(op, "u", u);
  check_matches(op, "v", v, "u", u);
  check_matches(op, "grad_sigma", grad_sigma, "u", u);
  TORCH_CHECK(u.dim() >= 1 && v.dim() == u.dim(), op,
              ": u (..., n) and v (..., m) must have the same number (>= 1) of dims, got u ",
              u.sizes(), " and v ", v.sizes());
  const int64_t m = v.size(-1), n = u.size(-1);
  TORCH_CHECK(m >= 1 && n >= 1, op, ": u (..., n) and v (..., m) must be non-empty, got u ",
              u.sizes(), " and v ", v.sizes());
  const c10::IntArrayRef batch = u.sizes().slice(0, u.dim() - 1);
  TORCH_CHECK(v.sizes().slice(0, v.dim() - 1) == batch, op,
              ": v must have the batch dims of u ", batch, ", got v ", v.sizes());
  TORCH_CHECK(grad_sigma.sizes() == batch, op, ": grad_sigma must have the batch shape ", batch,
              " of u, got ", grad_sigma.sizes());
  return {batch.vec(), c10::multiply_integers(batch), m, n};
}

// conv_spectral_bounds(weight (O, I, H, W), vectors [u_1..u_4], iters).
inline kernels::F4Shape check_conv_spectral_bounds_args(const at::Tensor& weight,
                                                        at::TensorList vectors, int64_t iters) {
  constexpr const char* op = "conv_spectral_bounds";
  TORCH_CHECK(weight.dim() == 4, op, ": weight must have shape (C_out, C_in, k_h, k_w), got ",
              weight.sizes());
  TORCH_CHECK(weight.numel() > 0, op, ": weight must be non-empty, got ", weight.sizes());
  check_float_dtype(op, "weight", weight);
  check_iters(op, iters);
  const kernels::F4Shape shape{weight.size(0), weight.size(1), weight.size(2), weight.size(3)};
  TORCH_CHECK(vectors.size() == kernels::F4Shape::kMatrices, op,
              ": vectors must hold 4 right vectors, got ", vectors.size());
  for (int q = 0; q < kernels::F4Shape::kMatrices; ++q) {
    check_matches(op, "vectors[" + std::to_string(q) + "]", vectors[q], "weight", weight);
    TORCH_CHECK(vectors[q].dim() == 1 && vectors[q].size(0) == shape.cols(q), op, ": vectors[", q,
                "] must have shape [", shape.cols(q), "] (the columns of M_", q + 1,
                " for weight ", weight.sizes(), "), got ", vectors[q].sizes());
  }
  return shape;
}

// conv_spectral_bounds_backward(grad_bounds (4,), vectors [u_q], left_vectors [v_q], weight_shape).
inline kernels::F4Shape check_conv_spectral_bounds_backward_args(const at::Tensor& grad_bounds,
                                                                 at::TensorList vectors,
                                                                 at::TensorList left_vectors,
                                                                 c10::IntArrayRef weight_shape) {
  constexpr const char* op = "conv_spectral_bounds_backward";
  TORCH_CHECK(weight_shape.size() == 4 &&
                  std::all_of(weight_shape.begin(), weight_shape.end(),
                              [](int64_t size) { return size >= 1; }),
              op, ": weight_shape must be [C_out, C_in, k_h, k_w] with every size >= 1, got ",
              weight_shape);
  check_float_dtype(op, "grad_bounds", grad_bounds);
  TORCH_CHECK(grad_bounds.sizes() == c10::IntArrayRef{kernels::F4Shape::kMatrices}, op,
              ": grad_bounds must have shape [4], got ", grad_bounds.sizes());
  const kernels::F4Shape shape{weight_shape[0], weight_shape[1], weight_shape[2],
                               weight_shape[3]};
  TORCH_CHECK(vectors.size() == kernels::F4Shape::kMatrices &&
                  left_vectors.size() == kernels::F4Shape::kMatrices,
              op, ": vectors and left_vectors must hold 4 vectors each, got ", vectors.size(),
              " and ", left_vectors.size());
  for (int q = 0; q < kernels::F4Shape::kMatrices; ++q) {
    check_matches(op, "vectors[" + std::to_string(q) + "]", vectors[q], "grad_bounds",
                  grad_bounds);
    check_matches(op, "left_vectors[" + std::to_string(q) + "]", left_vectors[q], "grad_bounds",
                  grad_bounds);
    TORCH_CHECK(vectors[q].dim() == 1 && vectors[q].size(0) == shape.cols(q), op, ": vectors[", q,
                "] must have shape [", shape.cols(q), "] (the columns of M_", q + 1,
                " for weight_shape ", weight_shape, "), got ", vectors[q].sizes());
    TORCH_CHECK(left_vectors[q].dim() == 1 && left_vectors[q].size(0) == shape.rows(q), op,
                ": left_vectors[", q, "] must have shape [", shape.rows(q), "] (the rows of M_",
                q + 1, " for weight_shape ", weight_shape, "), got ", left_vectors[q].sizes());
  }
  return shape;
}

// x (B, C, *spatial) with C even, the input of the channel-pair activations (max_min,
// householder), paired by `pairing`; returns the pair layout of its contiguous form.
inline kernels::PairLayout check_channel_pairs(const char* op, const char* x_name,
                                               const at::Tensor& x, kernels::Pairing pairing) {
  TORCH_CHECK(x.dim() >= 2, op, ": ", x_name,
              " must have shape (B, C, *spatial) with at least 2 dims, got ", x.sizes());
  check_float_dtype(op, x_name, x);
  TORCH_CHECK(x.size(1) % 2 == 0, op, ": ", x_name,
              " must have an even number of channels (dim 1) to form channel pairs, got ",
              x.sizes());
  return {x.size(0), x.size(1) / 2, c10::multiply_integers(x.sizes().slice(2)), pairing};
}

// (B, C/2, *spatial): the shape of a per-pair tensor (max_min's mask) for x (B, C, *spatial).
inline std::vector<int64_t> pair_shape(const at::Tensor& x) {
  std::vector<int64_t> shape = x.sizes().vec();
  shape[1] /= 2;
  return shape;
}

// max_min's pairing (lipkernels._conventions.PAIRINGS).
inline kernels::Pairing check_pairing(const char* op, c10::string_view pairing) {
  TORCH_CHECK(pairing == "halves" || pairing == "pairs", op,
              ": pairing must be \"halves\" or \"pairs\", got \"", pairing, "\"");
  return pairing == "halves" ? kernels::Pairing::kHalves : kernels::Pairing::kPairs;
}

// max_min(x (B, C, *spatial), pairing).
inline kernels::PairLayout check_max_min_args(const at::Tensor& x, c10::string_view pairing) {
  constexpr const char* op = "max_min";
  return check_channel_pairs(op, "x", x, check_pairing(op, pairing));
}

// max_min_backward(grad_y (B, C, *spatial), mask, pairing): mask is the forward's bool
// (B, C/2, *spatial) output, true where a pair kept its order.
inline kernels::PairLayout check_max_min_backward_args(const at::Tensor& grad_y,
                                                       const at::Tensor& mask,
                                                       c10::string_view pairing) {
  constexpr const char* op = "max_min_backward";
  const kernels::PairLayout layout =
      check_channel_pairs(op, "grad_y", grad_y, check_pairing(op, pairing));
  TORCH_CHECK(mask.scalar_type() == at::kBool, op, ": mask must be a bool tensor, got ",
              mask.scalar_type());
  TORCH_CHECK(mask.device() == grad_y.device(), op,
              ": mask must be on the same device as grad_y (", grad_y.device(), "), got ",
              mask.device());
  const std::vector<int64_t> expected = pair_shape(grad_y);
  TORCH_CHECK(mask.sizes() == c10::IntArrayRef(expected), op, ": mask must have shape ",
              c10::IntArrayRef(expected), " (grad_y ", grad_y.sizes(),
              " with one entry per channel pair), got ", mask.sizes());
  return layout;
}

// householder(x (B, C, *spatial), theta (C/2,)): the checks shared by the forward and the
// backward op (`op` names the one called, `x_name` its (B, C, *spatial) argument). theta has
// x's dtype, or float32 for float16 / bfloat16 x (float32 parameters under autocast).
inline kernels::PairLayout check_householder_args(const char* op, const char* x_name,
                                                  const at::Tensor& x, const at::Tensor& theta) {
  const kernels::PairLayout layout =
      check_channel_pairs(op, x_name, x, kernels::Pairing::kHalves);
  TORCH_CHECK(theta.device() == x.device(), op, ": theta must be on the same device as ",
              x_name, " (", x.device(), "), got ", theta.device());
  const bool half_x = x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16;
  TORCH_CHECK(theta.scalar_type() == x.scalar_type() ||
                  (half_x && theta.scalar_type() == at::kFloat),
              op, ": theta must have the dtype of ", x_name, " (", x.scalar_type(), ")",
              half_x ? " or float32" : "", ", got ", theta.scalar_type());
  TORCH_CHECK(theta.dim() == 1 && theta.size(0) == layout.pairs, op, ": theta must have shape [",
              layout.pairs, "] (one angle per channel pair of ", x_name, " ", x.sizes(),
              "), got ", theta.sizes());
  return layout;
}

// householder_backward(grad_y, x, theta): x is the forward's input, shaped like grad_y.
inline kernels::PairLayout check_householder_backward_args(const at::Tensor& grad_y,
                                                           const at::Tensor& x,
                                                           const at::Tensor& theta) {
  constexpr const char* op = "householder_backward";
  const kernels::PairLayout layout = check_householder_args(op, "grad_y", grad_y, theta);
  check_matches(op, "x", x, "grad_y", grad_y);
  TORCH_CHECK(x.sizes() == grad_y.sizes(), op, ": x must have the shape of grad_y ",
              grad_y.sizes(), ", got ", x.sizes());
  return layout;
}

// W (..., m, n) with m >= n >= 1, float32/float64/complex64/complex128: the tall orientation
// every cayley kernel works on. Errors name `op` and the argument `name`.
inline void check_cayley_tall(const char* op, const char* name, const at::Tensor& W) {
  TORCH_CHECK(W.dim() >= 2, op, ": ", name, " must have shape (..., m, n), got ", W.sizes());
  TORCH_CHECK(W.size(-1) >= 1 && W.size(-2) >= W.size(-1) && W.numel() > 0, op, ": ", name,
              " (..., m, n) must be non-empty with m >= n (transpose a wide matrix first), got ",
              W.sizes());
  // The dtypes at::linalg_solve supports on the CPU: the real and complex IEEE types.
  const auto dtype = W.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kComplexFloat ||
                  dtype == at::kComplexDouble,
              op, ": ", name, " must be float32, float64, complex64 or complex128, got ", dtype);
}

// The arguments of cayley_backward: a tall W, grad_Q of W's shape and X (..., n, n), all of W's
// dtype and device.
inline void check_cayley_backward_args(const at::Tensor& grad_Q, const at::Tensor& X,
                                       const at::Tensor& W) {
  constexpr const char* op = "cayley_backward";
  check_cayley_tall(op, "W", W);
  TORCH_CHECK(grad_Q.sizes() == W.sizes() && grad_Q.scalar_type() == W.scalar_type() &&
                  grad_Q.device() == W.device(),
              op, ": grad_Q must have the shape, dtype and device of W ", W.sizes(), " (",
              W.scalar_type(), ", ", W.device(), "), got ", grad_Q.sizes(), " (",
              grad_Q.scalar_type(), ", ", grad_Q.device(), ")");
  std::vector<int64_t> x_shape = W.sizes().vec();
  x_shape[x_shape.size() - 2] = W.size(-1);
  TORCH_CHECK(X.sizes() == c10::IntArrayRef(x_shape) && X.scalar_type() == W.scalar_type() &&
                  X.device() == W.device(),
              op, ": X must be the forward's (I + A)^{-1} of shape ", c10::IntArrayRef(x_shape),
              " and W's dtype and device, got ", X.sizes(), " (", X.scalar_type(), ", ",
              X.device(), ")");
}

// `t` must be complex64 or complex128.
inline void check_complex(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kComplexFloat || t.scalar_type() == at::kComplexDouble, op,
              ": ", name, " must be complex64 or complex128, got ", t.scalar_type());
}

// The arguments of cayley_frequency_product (op names the op in errors): response (F, C_out, C_in)
// and spectrum (F, C_in, B), complex, of one dtype and device.
inline void check_cayley_frequency_product_args(const char* op, const at::Tensor& response,
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

// The arguments of cayley_frequency_product_backward: those of cayley_frequency_product,
// grad_output (F, C_out, B) and the forward's inverse (F, n, n), n = min(C_in, C_out), all of
// response's dtype and device.
inline void check_cayley_frequency_product_backward_args(const at::Tensor& grad_output,
                                                         const at::Tensor& response,
                                                         const at::Tensor& spectrum,
                                                         const at::Tensor& inverse) {
  constexpr const char* op = "cayley_frequency_product_backward";
  check_cayley_frequency_product_args(op, response, spectrum);
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

}  // namespace lipkernels
