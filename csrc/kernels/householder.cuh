// Framework-free math of the HouseHolder activation, shared by the CPU (csrc/cpu/householder.cpp)
// and CUDA (csrc/cuda/householder.cu) kernels.
//
// Singla, Singla & Feizi, "Improved techniques for deterministic l2 robustness", NeurIPS 2022.
// Channel pair (a, b) = (x[:, i], x[:, i + C/2]) (the "halves" PairLayout), angle theta = theta[i],
// n = (sin(theta/2), -cos(theta/2)), R = I - 2 n n^T = [[cos, sin], [sin, -cos]](theta):
//   forward:  reflect = !(a sin(theta/2) - b cos(theta/2) <= 0)
//             (y_1, y_2) = reflect ? (a cos + b sin, a sin - b cos) : (a, b)
//   backward: R is symmetric, so grad_(a, b) = the same branch's map applied to (g_1, g_2);
//             d(y_1, y_2)/d theta = (b cos - a sin, a cos + b sin) on reflected elements, so
//             grad_theta[i] = sum over batch and positions, where reflected (0 elsewhere), of
//                             g_1 (b cos - a sin) + g_2 (a cos + b sin).
// The seed code passes a pair through where the selector is <= 0; the negated test keeps that and
// sends a NaN selector (NaN in x or theta) to the reflection, whose output is then NaN too.
#pragma once

#include <cmath>

#include "kernels/common.cuh"
#include "kernels/max_min.cuh"

namespace lipkernels {
namespace kernels {

// The trigonometric constants of one pair's angle, in the accumulation type.
template <typename acc_t>
struct HouseholderAngle {
  acc_t cos, sin, half_cos, half_sin;
};

// Evaluated in double whatever acc_t is: the CUDA build's --use_fast_math turns sinf and cosf
// into approximate intrinsics that lose accuracy away from [-pi, pi], while the double functions
// stay correctly rounded to within an ulp. They run once per pair, not per element.
template <typename acc_t>
LIPKERNELS_HOST_DEVICE inline HouseholderAngle<acc_t> householder_angle(double theta) {
#if defined(__CUDA_ARCH__)
  const double c = ::cos(theta), s = ::sin(theta);
  const double hc = ::cos(0.5 * theta), hs = ::sin(0.5 * theta);
#else
  const double c = std::cos(theta), s = std::sin(theta);
  const double hc = std::cos(0.5 * theta), hs = std::sin(0.5 * theta);
#endif
  return {static_cast<acc_t>(c), static_cast<acc_t>(s), static_cast<acc_t>(hc),
          static_cast<acc_t>(hs)};
}

// Whether the pair (a, b) is reflected.
template <typename acc_t>
LIPKERNELS_HOST_DEVICE inline bool reflects(const HouseholderAngle<acc_t>& t, acc_t a, acc_t b) {
  return !(a * t.half_sin - b * t.half_cos <= acc_t(0));
}

// The branch's linear map on (u, v): R (u, v) when reflected, else (u, v). The forward applies it
// to (a, b), the backward (R = R^T) to (g_1, g_2).
template <typename acc_t>
LIPKERNELS_HOST_DEVICE inline Pair<acc_t> householder_map(bool reflect,
                                                          const HouseholderAngle<acc_t>& t,
                                                          acc_t u, acc_t v) {
  return {reflect ? u * t.cos + v * t.sin : u, reflect ? u * t.sin - v * t.cos : v};
}

// One element's term of grad_theta: (g_1, g_2) . d(y_1, y_2)/d theta, 0 where not reflected.
template <typename acc_t>
LIPKERNELS_HOST_DEVICE inline acc_t householder_theta_grad(bool reflect,
                                                           const HouseholderAngle<acc_t>& t,
                                                           acc_t a, acc_t b, acc_t g_1,
                                                           acc_t g_2) {
  return reflect ? g_1 * (b * t.cos - a * t.sin) + g_2 * (a * t.cos + b * t.sin) : acc_t(0);
}

}  // namespace kernels
}  // namespace lipkernels
