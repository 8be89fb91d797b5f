// Unit tests of kernels/householder.cuh: the angle constants, the reflection (orthogonal,
// symmetric, an involution, fixing the selector's boundary), the pi/2 case (MaxMin with the
// halves swapped), the grad_theta term against a central difference, and NaN selectors.
#include <cmath>
#include <initializer_list>
#include <limits>

#include "check.h"
#include "kernels/householder.cuh"

namespace k = lipkernels::kernels;

namespace {

constexpr double kPi = 3.14159265358979323846;

template <typename T>
bool near(T x, T y, T tol) {
  return std::fabs(x - y) <= tol;
}

template <typename T>
void test_reflection(T tol) {
  for (const double theta : {0.3, 1.0, 2.5, -4.0, 7.0}) {
    const k::HouseholderAngle<T> t = k::householder_angle<T>(theta);
    CHECK(near(t.cos, static_cast<T>(std::cos(theta)), tol));
    CHECK(near(t.half_sin, static_cast<T>(std::sin(theta / 2)), tol));
    for (const T a : {T(-1.5), T(0.25), T(2)}) {
      for (const T b : {T(-0.75), T(1), T(3)}) {
        const k::Pair<T> y = k::householder_map(true, t, a, b);
        // Orthogonal: the pair's norm is kept; an involution: reflecting twice is the identity.
        CHECK(near(y.first * y.first + y.second * y.second, a * a + b * b, tol * 10));
        const k::Pair<T> z = k::householder_map(true, t, y.first, y.second);
        CHECK(near(z.first, a, tol * 10) && near(z.second, b, tol * 10));
        // A reflected pair lands on the passing side, so the output is never reflected again.
        if (k::reflects(t, a, b)) {
          CHECK(!k::reflects(t, y.first, y.second) ||
                near(a * t.half_sin - b * t.half_cos, T(0), tol));
        }
        // Symmetric: <R u, v> = <u, R v>, which makes the backward the same map.
        const k::Pair<T> r = k::householder_map(true, t, T(0.5), T(-2));
        CHECK(near(y.first * T(0.5) + y.second * T(-2), a * r.first + b * r.second, tol * 10));
        const k::Pair<T> kept = k::householder_map(false, t, a, b);
        CHECK(kept.first == a && kept.second == b);
      }
    }
    // The reflection fixes the boundary direction (cos(theta/2), sin(theta/2)): continuity.
    const k::Pair<T> fixed = k::householder_map(true, t, t.half_cos, t.half_sin);
    CHECK(near(fixed.first, t.half_cos, tol * 10) && near(fixed.second, t.half_sin, tol * 10));
  }
}

template <typename T>
void test_quarter_turn_is_swapped_max_min(T tol) {
  const k::HouseholderAngle<T> t = k::householder_angle<T>(kPi / 2);
  for (const T a : {T(-2), T(0.5), T(3)}) {
    for (const T b : {T(-1), T(1), T(2.5)}) {
      const k::Pair<T> y = k::householder_map(k::reflects(t, a, b), t, a, b);
      CHECK(near(y.first, std::fmin(a, b), tol) && near(y.second, std::fmax(a, b), tol));
    }
  }
}

void test_theta_gradient() {
  const double a = 0.7, b = -1.2, g_1 = 0.4, g_2 = -2.0, h = 1e-6;
  for (const double theta : {0.5, 2.0, 4.0}) {
    const auto t = k::householder_angle<double>(theta);
    if (!k::reflects(t, a, b)) {
      CHECK(k::householder_theta_grad(false, t, a, b, g_1, g_2) == 0.0);
      continue;
    }
    const k::Pair<double> plus =
        k::householder_map(true, k::householder_angle<double>(theta + h), a, b);
    const k::Pair<double> minus =
        k::householder_map(true, k::householder_angle<double>(theta - h), a, b);
    const double numeric =
        (g_1 * (plus.first - minus.first) + g_2 * (plus.second - minus.second)) / (2 * h);
    CHECK(near(k::householder_theta_grad(true, t, a, b, g_1, g_2), numeric, 1e-8));
  }
}

void test_nan_selector_reflects() {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  CHECK(k::reflects(k::householder_angle<double>(1.0), nan, 1.0));
  CHECK(k::reflects(k::householder_angle<double>(nan), 1.0, 1.0));
  const k::Pair<double> y = k::householder_map(true, k::householder_angle<double>(nan), 1.0, 1.0);
  CHECK(std::isnan(y.first) && std::isnan(y.second));
}

}  // namespace

int main() {
  test_reflection<double>(1e-14);
  test_reflection<float>(1e-6f);
  test_quarter_turn_is_swapped_max_min<double>(1e-15);
  test_quarter_turn_is_swapped_max_min<float>(1e-6f);
  test_theta_gradient();
  test_nan_selector_reflects();
  return lipkernels_test::report("test_householder");
}
