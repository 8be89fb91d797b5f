// Unit tests of kernels/power_iteration.cuh, the scalar math that the CPU and CUDA power
// iterations share: the NaN-propagating clamped norm, the normalising scale, the gradient entry,
// and a host power iteration built from them on matrices with known singular values.
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "check.h"
#include "kernels/power_iteration.cuh"

namespace k = lipkernels::kernels;

namespace {

template <typename T>
void test_norm_math() {
  const T eps = k::norm_eps<T>();
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const T inf = std::numeric_limits<T>::infinity();
  CHECK(eps == static_cast<T>(1e-12));
  CHECK(k::clamped_norm(T(4)) == T(2));
  CHECK(k::clamped_norm(T(0)) == eps);
  CHECK(k::clamped_norm(T(1e-30)) == eps);
  // fmax(NaN, eps) would give eps; the clamp must keep NaN so that NaN weights give NaN out.
  CHECK(std::isnan(k::clamped_norm(nan)));
  CHECK(k::clamped_norm(inf) == inf);
  CHECK(k::normalizing_scale(T(4)) == T(0.5));
  CHECK(k::normalizing_scale(T(0)) == T(1) / eps);  // a zero vector stays zero, never NaN
  CHECK(std::isnan(k::normalizing_scale(nan)));
  CHECK(k::normalizing_scale(inf) == T(0));
  CHECK(k::sqrt_rn(T(2)) == std::sqrt(T(2)));
  CHECK(k::reciprocal_rn(T(3)) == T(1) / T(3));
  CHECK(k::sigma_grad(T(2), T(3), T(-4)) == T(-24));
}

struct Result {
  double sigma;
  std::vector<double> u, v;
};

// The power iteration of kernels/power_iteration.cuh written plainly: v = normalize(W u),
// t = W^T v, u = normalize(t), sigma = t . u, with T the accumulation type.
template <typename T>
Result power_iteration(const std::vector<T>& w, int64_t m, int64_t n, std::vector<T> u,
                       int iters) {
  std::vector<T> v(m), t(n);
  for (int it = 0; it < iters; ++it) {
    T vv = 0;
    for (int64_t r = 0; r < m; ++r) {
      v[r] = 0;
      for (int64_t c = 0; c < n; ++c) v[r] += w[r * n + c] * u[c];
      vv += v[r] * v[r];
    }
    const T v_scale = k::normalizing_scale(vv);
    for (T& x : v) x *= v_scale;
    T tt = 0;
    for (int64_t c = 0; c < n; ++c) {
      t[c] = 0;
      for (int64_t r = 0; r < m; ++r) t[c] += w[r * n + c] * v[r];
      tt += t[c] * t[c];
    }
    const T u_scale = k::normalizing_scale(tt);
    for (int64_t c = 0; c < n; ++c) u[c] = t[c] * u_scale;
  }
  T sigma = 0;
  for (int64_t c = 0; c < n; ++c) sigma += t[c] * u[c];
  return {static_cast<double>(sigma), std::vector<double>(u.begin(), u.end()),
          std::vector<double>(v.begin(), v.end())};
}

// W = P diag(s) Q^T (4 x 3) with P and Q Householder reflections: singular values s exactly.
template <typename T>
std::vector<T> matrix_with_singular_values(const double (&s)[3]) {
  const double p[4] = {1, -2, 0.5, 1}, q[3] = {0.3, 1, -1};
  const double pp = 1 + 4 + 0.25 + 1, qq = 0.09 + 1 + 1;
  std::vector<T> w(12);
  for (int r = 0; r < 4; ++r) {
    for (int c = 0; c < 3; ++c) {
      double sum = 0;
      for (int j = 0; j < 3; ++j) {
        const double pr = (r == j) - 2 * p[r] * p[j] / pp;  // P[r, j]
        const double qc = (c == j) - 2 * q[c] * q[j] / qq;  // Q[c, j]
        sum += pr * s[j] * qc;
      }
      w[r * 3 + c] = static_cast<T>(sum);
    }
  }
  return w;
}

template <typename T>
void test_known_singular_values(double tolerance) {
  const double s[3] = {0.5, 3.0, 2.0};
  const std::vector<T> w = matrix_with_singular_values<T>(s);
  const Result res = power_iteration<T>(w, 4, 3, {T(1), T(0.5), T(-0.25)}, 200);
  CHECK(std::fabs(res.sigma - 3.0) <= tolerance);
  double uu = 0, vv = 0;
  for (double x : res.u) uu += x * x;
  for (double x : res.v) vv += x * x;
  CHECK(std::fabs(uu - 1) <= tolerance && std::fabs(vv - 1) <= tolerance);
}

void test_degenerate_inputs() {
  // All-zero weight: sigma 0 and zero vectors, no NaN.
  const Result zero = power_iteration<float>(std::vector<float>(12, 0.f), 4, 3, {1, 2, 3}, 5);
  CHECK(zero.sigma == 0);
  for (double x : zero.u) CHECK(x == 0);
  for (double x : zero.v) CHECK(x == 0);
  // One NaN or inf entry: NaN out, never a finite wrong number.
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    std::vector<float> w(12, 1.f);
    w[5] = bad;
    const Result res = power_iteration<float>(w, 4, 3, {1, 2, 3}, 3);
    CHECK(std::isnan(res.sigma));
    for (double x : res.u) CHECK(std::isnan(x));
  }
}

}  // namespace

int main() {
  test_norm_math<float>();
  test_norm_math<double>();
  test_known_singular_values<double>(1e-12);
  test_known_singular_values<float>(1e-5);
  test_degenerate_inputs();
  return lipkernels_test::report("test_power_iteration");
}
