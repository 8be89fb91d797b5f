// Scalar math of the power iteration, shared by the CPU (csrc/cpu/power_iteration.cpp) and CUDA
// (csrc/cuda/power_iteration.cu) kernels so that both backends normalise and differentiate alike.
//
// Power iteration for the largest singular value of W (m x n), as in spectral normalization
// (Miyato et al., "Spectral Normalization for Generative Adversarial Networks", ICLR 2018):
//
//   forward, repeated `iters` times from the persistent right vector u:
//     v = normalize(W u)          normalize(x) = x / max(||x||_2, 1e-12)   (torch F.normalize)
//     t = W^T v
//     u = normalize(t)
//   then sigma = v^T W u = t . u  (no extra matrix-vector product).
//   backward, u and v held constant:  d sigma / d W[r, c] = v[r] u[c].
//
// Both backends accumulate in acc_t (float for float/half/bfloat16, double for double).
#pragma once

#include <cmath>

#include "kernels/common.cuh"

namespace lipkernels {
namespace kernels {

// Lower clamp of the norm in normalize(); the value torch.nn.functional.normalize uses.
template <typename acc_t>
LIPKERNELS_HOST_DEVICE constexpr acc_t norm_eps() {
  return static_cast<acc_t>(1e-12);
}

// Correctly rounded sqrt and reciprocal. The CUDA build uses --use_fast_math, which would turn
// plain sqrtf and 1.0f / x into approximations; the _rn intrinsics keep these per-vector scalars
// IEEE-exact so that the CPU and CUDA backends agree to rounding.
LIPKERNELS_HOST_DEVICE inline float sqrt_rn(float x) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(x);
#else
  return std::sqrt(x);
#endif
}

LIPKERNELS_HOST_DEVICE inline double sqrt_rn(double x) {
#if defined(__CUDA_ARCH__)
  return __dsqrt_rn(x);
#else
  return std::sqrt(x);
#endif
}

LIPKERNELS_HOST_DEVICE inline float reciprocal_rn(float x) {
#if defined(__CUDA_ARCH__)
  return __frcp_rn(x);
#else
  return 1.0f / x;
#endif
}

LIPKERNELS_HOST_DEVICE inline double reciprocal_rn(double x) {
#if defined(__CUDA_ARCH__)
  return __drcp_rn(x);
#else
  return 1.0 / x;
#endif
}

// max(||x||_2, eps) given sum_i x_i^2. Written as a comparison, not fmax: fmax(NaN, eps) is eps,
// which would turn a NaN weight into a finite wrong answer; here NaN < eps is false, so NaN
// passes through (and inf stays inf).
template <typename acc_t>
LIPKERNELS_HOST_DEVICE inline acc_t clamped_norm(acc_t sum_of_squares) {
  const acc_t norm = sqrt_rn(sum_of_squares);
  return norm < norm_eps<acc_t>() ? norm_eps<acc_t>() : norm;
}

// The factor s with normalize(x) = s * x, given sum_i x_i^2. A zero vector gets s = 1/eps and so
// stays zero; an all-zero weight therefore yields sigma 0 and zero vectors, never NaN.
template <typename acc_t>
LIPKERNELS_HOST_DEVICE inline acc_t normalizing_scale(acc_t sum_of_squares) {
  return reciprocal_rn(clamped_norm(sum_of_squares));
}

// One entry of d sigma / d W scaled by the incoming gradient: grad_sigma * v[r] * u[c].
template <typename acc_t>
LIPKERNELS_HOST_DEVICE inline acc_t sigma_grad(acc_t grad_sigma, acc_t v_r, acc_t u_c) {
  return grad_sigma * v_r * u_c;
}

}  // namespace kernels
}  // namespace lipkernels
