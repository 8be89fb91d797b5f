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
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "kernels/conv_spectral_bounds.cuh"
#include "kernels/max_min.cuh"

namespace lipkernels {

// Python's spelling of a shape, (2, 3), (4,) or (), so that every entry words an error alike.
inline std::string shape_string(c10::IntArrayRef shape) {
  std::ostringstream out;
  out << '(';
  for (size_t i = 0; i < shape.size(); ++i) {
    out << (i ? ", " : "") << shape[i];
  }
  out << (shape.size() == 1 ? ",)" : ")");
  return out.str();
}

// Python's name of a dtype without its "torch." prefix (float32, bool, complex64).
inline std::string dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kComplexFloat: return "complex64";
    case at::kComplexDouble: return "complex128";
    case at::kBool: return "bool";
    case at::kByte: return "uint8";
    case at::kChar: return "int8";
    case at::kShort: return "int16";
    case at::kInt: return "int32";
    case at::kLong: return "int64";
    default: return c10::toString(dtype);
  }
}

inline std::string dtype_string(at::ScalarType dtype) { return "torch." + dtype_name(dtype); }

// The dtypes an op takes (lipkernels._checks.SUPPORTED_DTYPES by default).
using Dtypes = std::initializer_list<at::ScalarType>;
inline constexpr Dtypes kFloatDtypes = {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16};

// LIPKERNELS_CHECK=1: also refuse non-finite values (a device sync), as lipkernels._checks does.
inline bool value_checks() {
  static const bool enabled = [] {
    const char* flag = std::getenv("LIPKERNELS_CHECK");
    return flag != nullptr && std::string(flag) == "1";
  }();
  return enabled;
}

// What lipkernels._checks.check_tensor checks, in its order and words: one of `dtypes`, rank
// `rank` (or at least `min_rank`), empty only in its first `batch_dims` dims (a negative count:
// all but the last -batch_dims), finite under LIPKERNELS_CHECK=1.
struct TensorRule {
  int64_t rank = -1;
  int64_t min_rank = -1;
  int64_t batch_dims = 0;
  c10::ArrayRef<at::ScalarType> dtypes = kFloatDtypes;

  static TensorRule any(int64_t batch_dims = 0) { return {-1, -1, batch_dims}; }
  static TensorRule of_rank(int64_t rank, int64_t batch_dims = 0) {
    return {rank, -1, batch_dims};
  }
  static TensorRule at_least(int64_t min_rank, int64_t batch_dims) {
    return {-1, min_rank, batch_dims};
  }
  // The rule with other dtypes: `dtypes` must outlive the check (a braced list in the call).
  TensorRule of(c10::ArrayRef<at::ScalarType> other) const {
    TensorRule rule = *this;
    rule.dtypes = other;
    return rule;
  }
};

inline void check_tensor(const char* op, const std::string& name, const at::Tensor& t,
                         const TensorRule& rule) {
  const auto dtype = t.scalar_type();
  if (std::find(rule.dtypes.begin(), rule.dtypes.end(), dtype) == rule.dtypes.end()) {
    std::string supported;
    for (const at::ScalarType allowed : rule.dtypes) {
      supported += (supported.empty() ? "" : ", ") + dtype_name(allowed);
    }
    TORCH_CHECK_TYPE(false, op, ": ", name, " must have dtype ", supported, "; got ",
                     dtype_string(dtype));
  }
  TORCH_CHECK_VALUE(rule.rank < 0 || t.dim() == rule.rank, op, ": ", name, " must be ", rule.rank,
                    "-D; got shape ", shape_string(t.sizes()));
  TORCH_CHECK_VALUE(rule.min_rank < 0 || t.dim() >= rule.min_rank, op, ": ", name,
                    " must have at least ", rule.min_rank, " dims; got shape ",
                    shape_string(t.sizes()));
  const int64_t batch =
      rule.batch_dims >= 0 ? rule.batch_dims : std::max<int64_t>(t.dim() + rule.batch_dims, 0);
  const auto sizes = t.sizes();
  const bool empty = std::any_of(sizes.begin() + std::min<int64_t>(batch, t.dim()), sizes.end(),
                                 [](int64_t size) { return size == 0; });
  TORCH_CHECK_VALUE(!empty, op, ": ", name, " must not be empty",
                    batch == 0 ? std::string() :
                                 " outside its first " + std::to_string(batch) + " (batch) dims",
                    "; got shape ", shape_string(sizes));
  TORCH_CHECK_VALUE(!value_checks() || t.isfinite().all().item<bool>(), op, ": ", name,
                    " has NaN or inf entries (LIPKERNELS_CHECK=1)");
}

// lipkernels._checks.check_like: `t` has `shape` and the device and dtype of `ref`.
inline void check_like(const char* op, const std::string& name, const at::Tensor& t,
                       const char* ref_name, const at::Tensor& ref, c10::IntArrayRef shape) {
  TORCH_CHECK_VALUE(t.sizes() == shape, op, ": ", name, " must have shape ", shape_string(shape),
                    " to match ", ref_name, " ", shape_string(ref.sizes()), "; got ",
                    shape_string(t.sizes()));
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ",
                    ref_name, " is on ", ref.device(), "; both must be on the same device");
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ",
                   dtype_string(t.scalar_type()), " but ", ref_name, " has ",
                   dtype_string(ref.scalar_type()), "; they must match");
}

// The bounds of lipkernels._checks.MAX_ITERS and MAX_TERMS (tests/test_input_validation.py
// checks that the two agree).
inline constexpr int64_t kMaxIters = 1000000;
inline constexpr int64_t kMaxTerms = 128;

// lipkernels._checks.check_count for an int argument: 1 <= value <= maximum.
inline void check_count(const char* op, const char* name, int64_t value, int64_t maximum) {
  TORCH_CHECK_VALUE(value >= 1, op, ": ", name, " must be >= 1; got ", value);
  TORCH_CHECK_VALUE(value <= maximum, op, ": ", name, " must be <= ", maximum, "; got ", value);
}

inline void check_iters(const char* op, int64_t iters) {
  check_count(op, "iters", iters, kMaxIters);
}

// lipkernels._checks.check_square_filter: a (C, C, k, k) filter with k odd.
inline void check_square_filter(const char* op, const char* name, const at::Tensor& weight) {
  check_tensor(op, name, weight, TensorRule::of_rank(4));
  TORCH_CHECK_VALUE(weight.size(0) == weight.size(1), op, ": ", name,
                    " must be square in channels (C, C, k, k); got shape ",
                    shape_string(weight.sizes()));
  TORCH_CHECK_VALUE(weight.size(2) == weight.size(3) && weight.size(2) % 2 == 1, op, ": ", name,
                    " must have a square kernel of odd size k; got shape ",
                    shape_string(weight.sizes()));
}

// A string argument from a fixed set (lipkernels._conventions.GRAD_MODES, PAIRINGS): its
// index in `choices`, or the error "must be one of a, b; got 'c'".
inline size_t check_choice(const char* op, const char* name, c10::string_view value,
                           std::initializer_list<const char*> choices) {
  std::string listed;
  size_t index = 0;
  for (const char* choice : choices) {
    if (value == choice) {
      return index;
    }
    listed += (index++ ? ", " : "") + std::string(choice);
  }
  TORCH_CHECK_VALUE(false, op, ": ", name, " must be one of ", listed, "; got '", value, "'");
  return 0;
}

// soc_exp's gradient modes (lipkernels._conventions.GRAD_MODES).
enum class SocGradMode { kExact, kFast };

// soc_exp(x (B, C, H, W), S (C, C, k, k), terms, grad_mode): the checks shared by the forward and
// the backward op (`op` names the one called, `x_name` its (B, C, H, W) argument).
inline SocGradMode check_soc_exp_args(const char* op, const char* x_name, const at::Tensor& x,
                                      const at::Tensor& S, int64_t terms,
                                      c10::string_view grad_mode) {
  check_tensor(op, x_name, x, TensorRule::of_rank(4, 1));
  check_square_filter(op, "S", S);
  const int64_t channels = x.size(1);
  check_like(op, "S", S, x_name, x, {channels, channels, S.size(2), S.size(3)});
  check_count(op, "terms", terms, kMaxTerms);
  return check_choice(op, "grad_mode", grad_mode, {"exact", "fast"}) == 0 ? SocGradMode::kExact
                                                                           : SocGradMode::kFast;
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
    check_like(op, "start", start, "grad_y", grad_y, grad_y.sizes());
  }
  const int64_t power_count =
      keeps_powers && mode == SocGradMode::kExact ? std::max<int64_t>(terms - 2, 0) : 0;
  TORCH_CHECK_VALUE(static_cast<int64_t>(powers.size()) == power_count, op,
                    ": powers must hold the ", power_count,
                    " powers S^j x / j! (j = 1..terms - 2) the ", grad_mode,
                    " forward of this kernel keeps; got ", powers.size());
  for (size_t j = 0; j < powers.size(); ++j) {
    check_like(op, "powers[" + std::to_string(j) + "]", powers[j], "grad_y", grad_y,
               grad_y.sizes());
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
  check_tensor(op, "weight", weight, TensorRule::at_least(2, -2));
  std::vector<int64_t> batch(weight.sizes().begin(), weight.sizes().end() - 2);
  const int64_t m = weight.size(-2), n = weight.size(-1);
  std::vector<int64_t> u_shape = batch;
  u_shape.push_back(n);
  check_like(op, "u", u, "weight", weight, u_shape);
  check_iters(op, iters);
  const int64_t count = c10::multiply_integers(batch);
  return {std::move(batch), count, m, n};
}

// power_iteration_backward(grad_sigma (...), u (..., n), v (..., m)).
inline MatrixBatch check_power_iteration_backward_args(const at::Tensor& grad_sigma,
                                                       const at::Tensor& u, const at::Tensor& v) {
  constexpr const char* op = "power_iteration_backward";
  check_tensor(op, "u", u, TensorRule::at_least(1, -1));
  check_tensor(op, "v", v, TensorRule::at_least(1, -1));
  const c10::IntArrayRef batch = u.sizes().slice(0, u.dim() - 1);
  std::vector<int64_t> v_shape = batch.vec();
  v_shape.push_back(v.size(-1));
  check_like(op, "v", v, "u", u, v_shape);
  check_like(op, "grad_sigma", grad_sigma, "u", u, batch);
  return {batch.vec(), c10::multiply_integers(batch), v.size(-1), u.size(-1)};
}

// lipkernels._checks.check_int_pair: a convolution's stride, padding or kernel size, a pair of
// ints (an int[2] schema argument takes an int as a pair), each >= minimum.
inline void check_int_pair(const char* op, const char* name, c10::IntArrayRef value,
                           int64_t minimum) {
  TORCH_CHECK_TYPE(value.size() == 2, op, ": ", name, " must be an int or a pair of ints; got ",
                   value);
  TORCH_CHECK_VALUE(std::min(value[0], value[1]) >= minimum, op, ": ", name, " must be >= ",
                    minimum, "; got ", shape_string(value));
}

// The convolution of a (1, C_in, H, W) vector in conv_power_iteration: its output size (H', W')
// and the output_padding (n + 2 p - k) mod s that makes the transposed convolution return
// (H, W), its exact adjoint (lipkernels._conventions.conv_output_size, adjoint_output_padding).
struct ConvGeometry {
  std::vector<int64_t> output_size, output_padding;
};

// u's image, padded, holds the filter, so that the convolution output is not empty.
inline ConvGeometry check_conv_image(const char* op, const at::Tensor& u,
                                     c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                                     c10::IntArrayRef padding) {
  ConvGeometry geometry;
  bool fits = true;
  for (int64_t axis = 0; axis < 2; ++axis) {
    const int64_t span = u.size(2 + axis) + 2 * padding[axis] - kernel_size[axis];
    fits = fits && span >= 0;
    geometry.output_size.push_back(span / stride[axis] + 1);
    geometry.output_padding.push_back(span % stride[axis]);
  }
  TORCH_CHECK_VALUE(fits, op, ": u's image padded by ", shape_string(padding),
                    " must be at least the filter's size ", shape_string(kernel_size),
                    " (H + 2 p_h >= k_h and W + 2 p_w >= k_w), else the convolution output is "
                    "empty; got u of shape ", shape_string(u.sizes()));
  return geometry;
}

// conv_power_iteration(weight (C_out, C_in, k_h, k_w), u (1, C_in, H, W), iters, stride, padding).
inline ConvGeometry check_conv_power_iteration_args(const at::Tensor& weight, const at::Tensor& u,
                                                    int64_t iters, c10::IntArrayRef stride,
                                                    c10::IntArrayRef padding) {
  constexpr const char* op = "conv_power_iteration";
  check_tensor(op, "weight", weight, TensorRule::of_rank(4));
  check_tensor(op, "u", u, TensorRule::of_rank(4));
  check_like(op, "u", u, "weight", weight, {1, weight.size(1), u.size(2), u.size(3)});
  check_iters(op, iters);
  check_int_pair(op, "stride", stride, 1);
  check_int_pair(op, "padding", padding, 0);
  return check_conv_image(op, u, weight.sizes().slice(2), stride, padding);
}

// conv_power_iteration_backward(grad_sigma (), u (1, C_in, H, W), v (1, C_out, H', W'),
// kernel_size, stride, padding).
inline void check_conv_power_iteration_backward_args(const at::Tensor& grad_sigma,
                                                     const at::Tensor& u, const at::Tensor& v,
                                                     c10::IntArrayRef kernel_size,
                                                     c10::IntArrayRef stride,
                                                     c10::IntArrayRef padding) {
  constexpr const char* op = "conv_power_iteration_backward";
  check_tensor(op, "u", u, TensorRule::of_rank(4));
  TORCH_CHECK_VALUE(u.size(0) == 1, op, ": u must have shape (1, C_in, H, W); got ",
                    shape_string(u.sizes()));
  check_int_pair(op, "kernel_size", kernel_size, 1);
  check_int_pair(op, "stride", stride, 1);
  check_int_pair(op, "padding", padding, 0);
  const ConvGeometry geometry = check_conv_image(op, u, kernel_size, stride, padding);
  check_tensor(op, "v", v, TensorRule::of_rank(4));
  check_like(op, "v", v, "u", u,
             {1, v.size(1), geometry.output_size[0], geometry.output_size[1]});
  check_like(op, "grad_sigma", grad_sigma, "u", u, {});
}

// conv_spectral_bounds(weight (O, I, H, W), vectors [u_1..u_4], iters).
inline kernels::F4Shape check_conv_spectral_bounds_args(const at::Tensor& weight,
                                                        at::TensorList vectors, int64_t iters) {
  constexpr const char* op = "conv_spectral_bounds";
  check_tensor(op, "weight", weight, TensorRule::of_rank(4));
  check_iters(op, iters);
  const kernels::F4Shape shape{weight.size(0), weight.size(1), weight.size(2), weight.size(3)};
  TORCH_CHECK_VALUE(vectors.size() == kernels::F4Shape::kMatrices, op,
                    ": vectors must hold 4 tensors (one per reshape); got ", vectors.size());
  for (int q = 0; q < kernels::F4Shape::kMatrices; ++q) {
    check_like(op, "vectors[" + std::to_string(q) + "]", vectors[q], "weight", weight,
               {shape.cols(q)});
  }
  return shape;
}

// conv_spectral_bounds_backward(grad_bounds (4,), vectors [u_q], left_vectors [v_q], weight_shape).
inline kernels::F4Shape check_conv_spectral_bounds_backward_args(const at::Tensor& grad_bounds,
                                                                 at::TensorList vectors,
                                                                 at::TensorList left_vectors,
                                                                 c10::IntArrayRef weight_shape) {
  constexpr const char* op = "conv_spectral_bounds_backward";
  TORCH_CHECK_VALUE(weight_shape.size() == 4 &&
                        std::all_of(weight_shape.begin(), weight_shape.end(),
                                    [](int64_t size) { return size >= 1; }),
                    op, ": weight_shape must be [C_out, C_in, k_h, k_w] with every size >= 1; got ",
                    weight_shape);
  check_tensor(op, "grad_bounds", grad_bounds, TensorRule::of_rank(1));
  TORCH_CHECK_VALUE(grad_bounds.size(0) == kernels::F4Shape::kMatrices, op,
                    ": grad_bounds must have shape (4,); got ", shape_string(grad_bounds.sizes()));
  TORCH_CHECK_VALUE(vectors.size() == kernels::F4Shape::kMatrices &&
                        left_vectors.size() == kernels::F4Shape::kMatrices,
                    op, ": vectors and left_vectors must hold 4 tensors each (one per reshape); got ",
                    vectors.size(), " and ", left_vectors.size());
  const kernels::F4Shape shape{weight_shape[0], weight_shape[1], weight_shape[2],
                               weight_shape[3]};
  for (int q = 0; q < kernels::F4Shape::kMatrices; ++q) {
    check_like(op, "vectors[" + std::to_string(q) + "]", vectors[q], "grad_bounds", grad_bounds,
               {shape.cols(q)});
    check_like(op, "left_vectors[" + std::to_string(q) + "]", left_vectors[q], "grad_bounds",
               grad_bounds, {shape.rows(q)});
  }
  return shape;
}

// x (B, C, *spatial) with C even, the input of the channel-pair activations (max_min,
// householder), paired by `pairing`; returns the pair layout of its contiguous form.
inline kernels::PairLayout check_channel_pairs(const char* op, const char* x_name,
                                               const at::Tensor& x, kernels::Pairing pairing) {
  check_tensor(op, x_name, x, TensorRule::at_least(2, 1));
  TORCH_CHECK_VALUE(x.size(1) % 2 == 0, op, ": ", x_name,
                    " must have an even number of channels (dim 1) to form channel pairs; got "
                    "shape ", shape_string(x.sizes()));
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
  return check_choice(op, "pairing", pairing, {"halves", "pairs"}) == 0 ? kernels::Pairing::kHalves
                                                                         : kernels::Pairing::kPairs;
}

// max_min(x (B, C, *spatial), pairing).
inline kernels::PairLayout check_max_min_args(const at::Tensor& x, c10::string_view pairing) {
  constexpr const char* op = "max_min";
  const kernels::PairLayout layout = check_channel_pairs(op, "x", x, kernels::Pairing::kHalves);
  return {layout.batch, layout.pairs, layout.spatial, check_pairing(op, pairing)};
}

// max_min_backward(grad_y (B, C, *spatial), mask, pairing): mask is the forward's bool
// (B, C/2, *spatial) output, true where a pair kept its order.
inline kernels::PairLayout check_max_min_backward_args(const at::Tensor& grad_y,
                                                       const at::Tensor& mask,
                                                       c10::string_view pairing) {
  constexpr const char* op = "max_min_backward";
  const kernels::PairLayout pairs =
      check_channel_pairs(op, "grad_y", grad_y, kernels::Pairing::kHalves);
  const kernels::PairLayout layout{pairs.batch, pairs.pairs, pairs.spatial,
                                   check_pairing(op, pairing)};
  check_tensor(op, "mask", mask, TensorRule::any(1).of({at::kBool}));
  const std::vector<int64_t> expected = pair_shape(grad_y);
  TORCH_CHECK_VALUE(mask.sizes() == c10::IntArrayRef(expected) && mask.device() == grad_y.device(),
                    op, ": mask must have shape ", shape_string(expected),
                    " (one entry per channel pair of grad_y ", shape_string(grad_y.sizes()),
                    ") on grad_y's device ", grad_y.device(), "; got ",
                    shape_string(mask.sizes()), " on ", mask.device());
  return layout;
}

// householder(x (B, C, *spatial), theta (C/2,)): the checks shared by the forward and the
// backward op (`op` names the one called, `x_name` its (B, C, *spatial) argument). theta has
// x's dtype, or float32 for float16 / bfloat16 x (float32 parameters under autocast).
inline kernels::PairLayout check_householder_args(const char* op, const char* x_name,
                                                  const at::Tensor& x, const at::Tensor& theta) {
  const kernels::PairLayout layout =
      check_channel_pairs(op, x_name, x, kernels::Pairing::kHalves);
  check_tensor(op, "theta", theta, TensorRule::any());
  TORCH_CHECK_VALUE(theta.dim() == 1 && theta.size(0) == layout.pairs, op,
                    ": theta must have shape (", layout.pairs,
                    ",), one angle per channel pair of ", x_name, " ", shape_string(x.sizes()),
                    "; got ", shape_string(theta.sizes()));
  TORCH_CHECK_VALUE(theta.device() == x.device(), op, ": theta is on ", theta.device(), " but ",
                    x_name, " is on ", x.device(), "; both must be on the same device");
  const bool half_x = x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16;
  TORCH_CHECK_TYPE(theta.scalar_type() == x.scalar_type() ||
                       (half_x && theta.scalar_type() == at::kFloat),
                   op, ": theta has dtype ", dtype_string(theta.scalar_type()), " but ", x_name,
                   " has ", dtype_string(x.scalar_type()), "; theta must have ", x_name,
                   "'s dtype", half_x ? " or torch.float32" : "");
  return layout;
}

// householder_backward(grad_y, x, theta): x is the forward's input, shaped like grad_y.
inline kernels::PairLayout check_householder_backward_args(const at::Tensor& grad_y,
                                                           const at::Tensor& x,
                                                           const at::Tensor& theta) {
  constexpr const char* op = "householder_backward";
  const kernels::PairLayout layout = check_householder_args(op, "grad_y", grad_y, theta);
  check_like(op, "x", x, "grad_y", grad_y, grad_y.sizes());
  return layout;
}

// W (..., m, n) with m >= n >= 1, float32/float64/complex64/complex128 (the dtypes
// at::linalg_solve supports on the CPU): the tall orientation every cayley kernel works on.
inline void check_cayley_tall(const char* op, const char* name, const at::Tensor& W) {
  check_tensor(op, name, W,
               TensorRule::at_least(2, 0).of(
                   {at::kFloat, at::kDouble, at::kComplexFloat, at::kComplexDouble}));
  TORCH_CHECK_VALUE(W.size(-2) >= W.size(-1), op, ": ", name,
                    " (..., m, n) must have m >= n (transpose a wide matrix first); got shape ",
                    shape_string(W.sizes()));
}

// The arguments of cayley_backward: a tall W, grad_Q of W's shape and X (..., n, n), all of W's
// dtype and device.
inline void check_cayley_backward_args(const at::Tensor& grad_Q, const at::Tensor& X,
                                       const at::Tensor& W) {
  constexpr const char* op = "cayley_backward";
  check_cayley_tall(op, "W", W);
  check_like(op, "grad_Q", grad_Q, "W", W, W.sizes());
  std::vector<int64_t> x_shape = W.sizes().vec();
  x_shape[x_shape.size() - 2] = W.size(-1);
  check_like(op, "X", X, "W", W, x_shape);
}

// The arguments of cayley_frequency_product (op names the op in errors): response (F, C_out, C_in)
// and spectrum (F, C_in, B), complex, of one dtype and device.
inline void check_cayley_frequency_product_args(const char* op, const at::Tensor& response,
                                                const at::Tensor& spectrum) {
  TORCH_CHECK_VALUE(response.dim() == 3 && response.numel() > 0, op,
                    ": response must be a non-empty (F, C_out, C_in) tensor, got ",
                    shape_string(response.sizes()));
  const auto dtype = response.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kComplexFloat || dtype == at::kComplexDouble, op,
                   ": response must be complex64 or complex128, got ", dtype_string(dtype));
  TORCH_CHECK_VALUE(spectrum.dim() == 3 && spectrum.size(0) == response.size(0) &&
                        spectrum.size(1) == response.size(2) && spectrum.size(2) >= 1,
                    op, ": spectrum must have shape (F, C_in, B) = (", response.size(0), ", ",
                    response.size(2), ", B) to match response ", shape_string(response.sizes()),
                    ", got ", shape_string(spectrum.sizes()));
  TORCH_CHECK_VALUE(spectrum.scalar_type() == dtype && spectrum.device() == response.device(), op,
                    ": spectrum must have the dtype and device of response (",
                    dtype_string(dtype), ", ", response.device(), "), got ",
                    dtype_string(spectrum.scalar_type()), ", ", spectrum.device());
}

// `tensor` has `shape` and response's dtype and device; else the error "<name> must <what>
// <shape> and response's dtype and device, got ...".
inline void check_like_response(const char* op, const char* name, const at::Tensor& tensor,
                                const at::Tensor& response, c10::IntArrayRef shape,
                                const char* what) {
  TORCH_CHECK_VALUE(tensor.sizes() == shape && tensor.scalar_type() == response.scalar_type() &&
                        tensor.device() == response.device(),
                    op, ": ", name, " must ", what, " ", shape_string(shape),
                    " and response's dtype and device, got ", shape_string(tensor.sizes()), " (",
                    dtype_string(tensor.scalar_type()), ")");
}

// The arguments of cayley_frequency_product_backward: those of cayley_frequency_product,
// grad_output (F, C_out, B), the forward's inverse (F, n, n) and solved spectrum (F, n, B),
// n = min(C_in, C_out), all of response's dtype and device.
inline void check_cayley_frequency_product_backward_args(const at::Tensor& grad_output,
                                                         const at::Tensor& response,
                                                         const at::Tensor& spectrum,
                                                         const at::Tensor& inverse,
                                                         const at::Tensor& solved) {
  constexpr const char* op = "cayley_frequency_product_backward";
  check_cayley_frequency_product_args(op, response, spectrum);
  const int64_t frequencies = response.size(0);
  const int64_t n = std::min(response.size(1), response.size(2));
  check_like_response(op, "grad_output", grad_output, response,
                      {frequencies, response.size(1), spectrum.size(2)},
                      "have shape (F, C_out, B) =");
  check_like_response(op, "inverse", inverse, response, {frequencies, n, n},
                      "be the forward's (I + A)^{-1} of shape");
  check_like_response(op, "solved", solved, response, {frequencies, n, spectrum.size(2)},
                      "be the forward's solved spectrum of shape");
}

// Björck's highest order (lipkernels._conventions.BJORCK_MAX_ORDER).
inline constexpr int64_t kBjorckMaxOrder = 4;

// bjorck(W, iters, beta, order) as lipkernels.ops.bjorck.check_inputs checks it (`op` names the
// op called): a tall float32/float64 W (..., m, n), m >= n, empty only in its batch dims;
// 1 <= iters <= kMaxIters; 1 <= order <= kBjorckMaxOrder; 0 < beta < 1, and beta = 0.5 from
// order 2 on.
inline void check_bjorck_args(const char* op, const at::Tensor& W, int64_t iters, double beta,
                              int64_t order) {
  check_tensor(op, "W", W, TensorRule::at_least(2, -2).of({at::kFloat, at::kDouble}));
  TORCH_CHECK_VALUE(W.size(-2) >= W.size(-1), op,
                    ": W (..., m, n) must have m >= n (transpose a wide matrix first); got shape ",
                    shape_string(W.sizes()));
  check_iters(op, iters);
  check_count(op, "order", order, kBjorckMaxOrder);
  TORCH_CHECK_VALUE(beta > 0 && beta < 1, op, ": beta must be in (0, 1); got ", beta);
  TORCH_CHECK_VALUE(order == 1 || beta == 0.5, op,
                    ": beta must be 0.5 for order >= 2 (the Taylor coefficients); got ", beta);
}

// bjorck_backward(grad_Q, W, iterates, grams, ...): bjorck's arguments, grad_Q of W's shape,
// dtype and device, and what the forward kept: the iters - 1 iterates like W stacked
// (iters - 1, ..., m, n) and the iters Gram matrices stacked (iters, ..., n, n).
inline void check_bjorck_backward_args(const at::Tensor& grad_Q, const at::Tensor& W,
                                       const at::Tensor& iterates, const at::Tensor& grams,
                                       int64_t iters, double beta, int64_t order) {
  constexpr const char* op = "bjorck_backward";
  check_bjorck_args(op, W, iters, beta, order);
  check_like(op, "grad_Q", grad_Q, "W", W, W.sizes());
  std::vector<int64_t> iterates_shape = W.sizes().vec();
  iterates_shape.insert(iterates_shape.begin(), iters - 1);
  check_like(op, "iterates", iterates, "W", W, iterates_shape);
  std::vector<int64_t> grams_shape = W.sizes().vec();
  grams_shape[grams_shape.size() - 2] = W.size(-1);
  grams_shape.insert(grams_shape.begin(), iters);
  check_like(op, "grams", grams, "W", W, grams_shape);
}

// The geometry of a BCOP filter (lipkernels/reference/bcop_filter.py): kernel size k, C =
// max(in, out) channels, r = min(in, out) rows of the head, whether the head is transposed
// (in > out) and whether the filter holds the taps transposed (weight[o, c] = Y[c, o]: in < out,
// and in = out for k >= 2; the seed's 1 x 1 filter of in = out channels is its head untouched).
struct BcopGeometry {
  int64_t size, channels, rows;
  bool head_transposed, taps_transposed;

  // The tap stack after growth step t: (t / 2 + 2, (t + 1) / 2 + 1, r, C).
  std::vector<int64_t> iterate_shape(int64_t t) const {
    return {t / 2 + 2, (t + 1) / 2 + 1, rows, channels};
  }
};

// bcop_filter(matrices (2k - 1, C, C), in_channels, out_channels) as
// lipkernels.ops.bcop_filter.check_arguments checks it (`op` names the op called), for the
// float32/float64 matrices the kernels take.
inline BcopGeometry check_bcop_filter_args(const char* op, const at::Tensor& matrices,
                                           int64_t in_channels, int64_t out_channels) {
  check_tensor(op, "matrices", matrices, TensorRule::of_rank(3).of({at::kFloat, at::kDouble}));
  constexpr int64_t unbounded = std::numeric_limits<int64_t>::max();
  check_count(op, "in_channels", in_channels, unbounded);
  check_count(op, "out_channels", out_channels, unbounded);
  const int64_t count = matrices.size(0), channels = std::max(in_channels, out_channels);
  const std::string shape = shape_string(matrices.sizes());
  TORCH_CHECK_VALUE(count % 2 == 1, op,
                    ": matrices must hold an odd number 2k - 1 of matrices (k the kernel size); "
                    "got shape ", shape);
  TORCH_CHECK_VALUE(matrices.size(1) == matrices.size(2), op,
                    ": matrices must be square, (2k - 1, C, C); got shape ", shape);
  TORCH_CHECK_VALUE(matrices.size(1) == channels, op,
                    ": matrices must have C = max(in_channels, out_channels) = ", channels,
                    "; got shape ", shape);
  TORCH_CHECK_VALUE(count == 1 || channels % 2 == 0, op,
                    ": matrices must have an even C for a kernel size k >= 2 (the projectors "
                    "take C / 2 columns); got shape ", shape);
  const int64_t size = (count + 1) / 2;
  return {size, channels, std::min(in_channels, out_channels), in_channels > out_channels,
          in_channels < out_channels || (in_channels == out_channels && size > 1)};
}

// bcop_filter_backward(grad_weight, matrices, projectors, iterates, in_channels, out_channels):
// bcop_filter's arguments, grad_weight (out, in, k, k) and what the forward kept, the 2k - 2
// projectors (C, C) and the 2k - 3 tap stacks after each growth step but the last, all of the
// matrices' dtype and device.
inline BcopGeometry check_bcop_filter_backward_args(const at::Tensor& grad_weight,
                                                    const at::Tensor& matrices,
                                                    const at::Tensor& projectors,
                                                    at::TensorList iterates, int64_t in_channels,
                                                    int64_t out_channels) {
  constexpr const char* op = "bcop_filter_backward";
  const BcopGeometry geometry = check_bcop_filter_args(op, matrices, in_channels, out_channels);
  const int64_t k = geometry.size, C = geometry.channels, kept = std::max<int64_t>(2 * k - 3, 0);
  check_like(op, "grad_weight", grad_weight, "matrices", matrices,
             {out_channels, in_channels, k, k});
  check_like(op, "projectors", projectors, "matrices", matrices, {2 * k - 2, C, C});
  TORCH_CHECK_VALUE(static_cast<int64_t>(iterates.size()) == kept, op,
                    ": iterates must hold the forward's 2k - 3 = ", kept, " tap stacks; got ",
                    iterates.size());
  for (size_t t = 0; t < iterates.size(); ++t) {
    check_like(op, "iterates[" + std::to_string(t) + "]", iterates[t], "matrices", matrices,
               geometry.iterate_shape(static_cast<int64_t>(t)));
  }
  return geometry;
}

// convex_potential(x, weight, bias, scale) and its backward (`op` names the one called, `x_name`
// its image or batch argument): weight is a filter (C_inner, C, k1, k2) with odd k and x an image
// batch (B, C, H, W), or weight a matrix (C_inner, C) and x (B, C); bias None or (C_inner,);
// scale () or (C_inner,); all of x's dtype and device. Returns C_inner.
inline int64_t check_convex_potential_args(const char* op, const char* x_name,
                                           const at::Tensor& x, const at::Tensor& weight,
                                           const std::optional<at::Tensor>& bias,
                                           const at::Tensor& scale) {
  check_tensor(op, "weight", weight, TensorRule::any());
  TORCH_CHECK_VALUE(weight.dim() == 2 || weight.dim() == 4, op,
                    ": weight must be a matrix (C_inner, C) or a filter (C_inner, C, k1, k2); "
                    "got shape ", shape_string(weight.sizes()));
  const bool filter = weight.dim() == 4;
  TORCH_CHECK_VALUE(!filter || (weight.size(2) % 2 == 1 && weight.size(3) % 2 == 1), op,
                    ": weight must have odd kernel sizes (\"same\" padding k // 2 maps an image "
                    "to its own size); got shape ", shape_string(weight.sizes()));
  check_tensor(op, x_name, x, TensorRule::of_rank(weight.dim(), 1));
  TORCH_CHECK_VALUE(x.size(1) == weight.size(1), op, ": ", x_name, " must have ",
                    weight.size(1), " channels (dim 1) to match weight ",
                    shape_string(weight.sizes()), "; got shape ", shape_string(x.sizes()));
  check_like(op, "weight", weight, x_name, x, weight.sizes());
  const int64_t inner = weight.size(0);
  if (bias.has_value()) {
    check_like(op, "bias", *bias, x_name, x, {inner});
  }
  TORCH_CHECK_VALUE(scale.dim() == 0 || (scale.dim() == 1 && scale.size(0) == inner), op,
                    ": scale must have shape () or (", inner, ",) (one factor per inner channel "
                    "of weight ", shape_string(weight.sizes()), "); got ",
                    shape_string(scale.sizes()));
  check_like(op, "scale", scale, x_name, x, scale.sizes());
  return inner;
}

// convex_potential_backward(grad_z, x, weight, scale, activation): x the forward's input shaped
// like grad_z, activation the kept relu(W x + b) (B, C_inner, *spatial).
inline void check_convex_potential_backward_args(const at::Tensor& grad_z, const at::Tensor& x,
                                                 const at::Tensor& weight,
                                                 const at::Tensor& scale,
                                                 const at::Tensor& activation) {
  constexpr const char* op = "convex_potential_backward";
  const int64_t inner =
      check_convex_potential_args(op, "grad_z", grad_z, weight, std::nullopt, scale);
  check_like(op, "x", x, "grad_z", grad_z, grad_z.sizes());
  std::vector<int64_t> shape = grad_z.sizes().vec();
  shape[1] = inner;
  check_like(op, "activation", activation, "grad_z", grad_z, shape);
}

// aol_rescaling(weight, log_q) as lipkernels.ops.aol_rescaling.check_inputs checks it (`op`
// names the op called), for the float32/float64 weights the kernels take: a matrix
// (C_out, C_in) or a filter (C_out, C_in, k_1, k_2), and log_q None or (C_in,) like weight.
inline void check_aol_rescaling_args(const char* op, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& log_q) {
  check_tensor(op, "weight", weight, TensorRule::any().of({at::kFloat, at::kDouble}));
  TORCH_CHECK_VALUE(weight.dim() == 2 || weight.dim() == 4, op,
                    ": weight must be 2-D (C_out, C_in) or 4-D (C_out, C_in, k_1, k_2); got "
                    "shape ", shape_string(weight.sizes()));
  if (log_q.has_value()) {
    check_tensor(op, "log_q", *log_q, TensorRule::of_rank(1).of({at::kFloat, at::kDouble}));
    check_like(op, "log_q", *log_q, "weight", weight, {weight.size(1)});
  }
}

// aol_rescaling_backward(grad_d, weight, log_q, d, absolute_gram, signs): aol_rescaling's
// arguments, grad_d and d (C_in,) and absolute_gram (C_in, C_in) like weight, and signs the
// forward's int8 sign(G) of the self-correlation's shape, (C_in, C_in) for a matrix and
// (C_in, C_in, 2 k_1 - 1, 2 k_2 - 1) for a filter, on weight's device.
inline void check_aol_rescaling_backward_args(const at::Tensor& grad_d, const at::Tensor& weight,
                                              const std::optional<at::Tensor>& log_q,
                                              const at::Tensor& d,
                                              const at::Tensor& absolute_gram,
                                              const at::Tensor& signs) {
  constexpr const char* op = "aol_rescaling_backward";
  check_aol_rescaling_args(op, weight, log_q);
  const int64_t channels = weight.size(1);
  check_like(op, "grad_d", grad_d, "weight", weight, {channels});
  check_like(op, "d", d, "weight", weight, {channels});
  check_like(op, "absolute_gram", absolute_gram, "weight", weight, {channels, channels});
  check_tensor(op, "signs", signs, TensorRule::any().of({at::kChar}));
  std::vector<int64_t> shape = {channels, channels};
  if (weight.dim() == 4) {
    shape.push_back(2 * weight.size(2) - 1);
    shape.push_back(2 * weight.size(3) - 1);
  }
  TORCH_CHECK_VALUE(signs.sizes() == c10::IntArrayRef(shape) && signs.device() == weight.device(),
                    op, ": signs must have shape ", shape_string(shape),
                    " (the self-correlation of weight ", shape_string(weight.sizes()),
                    ") on weight's device ", weight.device(), "; got ",
                    shape_string(signs.sizes()), " on ", signs.device());
}

}  // namespace lipkernels
