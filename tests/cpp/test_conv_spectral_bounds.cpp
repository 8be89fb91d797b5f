// Unit tests of kernels/conv_spectral_bounds.cuh, the Fantastic Four index maps shared by the CPU
// and CUDA kernels. The maps are checked against the reshapes spelled out as PyTorch defines them
// (a transpose, then a row-major reshape), worked out here element by element.
#include <cmath>
#include <cstdint>
#include <vector>

#include "check.h"
#include "kernels/conv_spectral_bounds.cuh"

using lipkernels::kernels::F4Coord;
using lipkernels::kernels::F4Index;
using lipkernels::kernels::F4Shape;

namespace {

// M_q as torch builds it: permute the filter dims by perm (the transposes of docs/design.md
// §3.1: M_1 swaps dims 1 and 2, M_2 dims 1 and 3, M_3 none, M_4 dims 0 and 1), flatten the
// permuted tensor row-major, and cut it into rows of the trailing `col_dims` permuted dims.
F4Index reshape_by_hand(const F4Shape& s, int q, const F4Coord& e) {
  static const int perms[4][4] = {{0, 2, 1, 3}, {0, 3, 2, 1}, {0, 1, 2, 3}, {1, 0, 2, 3}};
  static const int col_dims[4] = {2, 2, 3, 3};
  const int64_t sizes[4] = {s.out_channels, s.in_channels, s.kernel_h, s.kernel_w};
  const int64_t coord[4] = {e.o, e.i, e.h, e.w};
  int64_t flat = 0, cols = 1;
  for (int k = 0; k < 4; ++k) {
    flat = flat * sizes[perms[q][k]] + coord[perms[q][k]];
  }
  for (int k = 4 - col_dims[q]; k < 4; ++k) {
    cols *= sizes[perms[q][k]];
  }
  return {flat / cols, flat % cols};
}

std::vector<F4Coord> all_elements(const F4Shape& s) {
  std::vector<F4Coord> elements;
  for (int64_t o = 0; o < s.out_channels; ++o)
    for (int64_t i = 0; i < s.in_channels; ++i)
      for (int64_t h = 0; h < s.kernel_h; ++h)
        for (int64_t w = 0; w < s.kernel_w; ++w) elements.push_back({o, i, h, w});
  return elements;
}

// A deterministic pseudo-random value in [-1, 1).
double value(uint64_t seed) {
  seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
  return static_cast<double>(seed >> 11) / static_cast<double>(1ULL << 52) - 1.0;
}

void test_shape(const F4Shape& s) {
  const std::vector<F4Coord> elements = all_elements(s);
  CHECK(static_cast<int64_t>(elements.size()) == s.numel());
  // The documented shapes: (O*H, I*W), (O*W, H*I), (O, I*H*W), (I, O*H*W).
  CHECK(s.rows(0) == s.out_channels * s.kernel_h && s.cols(0) == s.in_channels * s.kernel_w);
  CHECK(s.rows(1) == s.out_channels * s.kernel_w && s.cols(1) == s.kernel_h * s.in_channels);
  CHECK(s.rows(2) == s.out_channels && s.cols(2) == s.in_channels * s.kernel_h * s.kernel_w);
  CHECK(s.rows(3) == s.in_channels && s.cols(3) == s.out_channels * s.kernel_h * s.kernel_w);

  for (int q = 0; q < F4Shape::kMatrices; ++q) {
    CHECK(s.rows(q) * s.cols(q) == s.numel());
    std::vector<int> hits(s.numel(), 0);
    bool same_layout = true, same_layout_transposed = true;
    const F4Coord stride = s.strides(q), stride_t = s.strides(q, true);
    for (int64_t e = 0; e < s.numel(); ++e) {
      const F4Coord c = elements[e];
      const F4Index got = s.index(q, c), want = reshape_by_hand(s, q, c);
      CHECK(got.row == want.row && got.col == want.col);
      CHECK(got.row >= 0 && got.row < s.rows(q) && got.col >= 0 && got.col < s.cols(q));
      const int64_t at = s.offset(q, c);
      CHECK(at == got.row * s.cols(q) + got.col);
      CHECK(s.offset(q, c, true) == got.col * s.rows(q) + got.row);
      // strides() is the linear form of offset().
      CHECK(at == c.o * stride.o + c.i * stride.i + c.h * stride.h + c.w * stride.w);
      CHECK(s.offset(q, c, true) ==
            c.o * stride_t.o + c.i * stride_t.i + c.h * stride_t.h + c.w * stride_t.w);
      ++hits[at];
      same_layout = same_layout && at == e;
      same_layout_transposed = same_layout_transposed && s.offset(q, c, true) == e;
      // unravel() inverts the filter's own row-major offset.
      const F4Coord back = s.unravel(e);
      CHECK(back.o == c.o && back.i == c.i && back.h == c.h && back.w == c.w);
    }
    // Every entry of M_q comes from exactly one filter element.
    for (int64_t j = 0; j < s.numel(); ++j) CHECK(hits[j] == 1);
    CHECK(s.has_filter_layout(q, false) == same_layout);
    CHECK(s.has_filter_layout(q, true) == same_layout_transposed);
  }
  CHECK(s.has_filter_layout(2, false));  // M_3 is the filter itself

  // The gradient: sqrt(H W) * sum_q g_q v_q[row_q] u_q[col_q], by hand.
  std::vector<double> u[4], v[4];
  for (int q = 0; q < 4; ++q) {
    for (int64_t j = 0; j < s.cols(q); ++j) u[q].push_back(value(1000 * q + j));
    for (int64_t j = 0; j < s.rows(q); ++j) v[q].push_back(value(7919 + 1000 * q + j));
  }
  const double grad_bounds[4] = {0.5, -1.25, 2.0, 0.75};
  const double* u_ptr[4] = {u[0].data(), u[1].data(), u[2].data(), u[3].data()};
  const double* v_ptr[4] = {v[0].data(), v[1].data(), v[2].data(), v[3].data()};
  for (const F4Coord& c : elements) {
    double want = 0;
    for (int q = 0; q < 4; ++q) {
      const F4Index ix = reshape_by_hand(s, q, c);
      want += grad_bounds[q] * v[q][ix.row] * u[q][ix.col];
    }
    want *= std::sqrt(static_cast<double>(s.kernel_h * s.kernel_w));
    double coef[4];
    lipkernels::kernels::f4_grad_coefficients(s, grad_bounds, coef);
    F4Index ix[4];
    for (int q = 0; q < 4; ++q) ix[q] = s.index(q, c);
    const double got = lipkernels::kernels::f4_grad(coef, u_ptr, v_ptr, ix);
    CHECK(std::fabs(got - want) <= 1e-12 * (1 + std::fabs(want)));
  }
  CHECK(s.bound_scale<double>() == std::sqrt(static_cast<double>(s.kernel_h * s.kernel_w)));
  CHECK(s.bound_scale<float>() == std::sqrt(static_cast<float>(s.kernel_h * s.kernel_w)));
}

}  // namespace

int main() {
  const F4Shape shapes[] = {{5, 3, 3, 1}, {2, 3, 4, 5}, {1, 1, 1, 1}, {4, 1, 3, 3}, {1, 4, 1, 1},
                            {3, 2, 1, 1}, {6, 4, 2, 3}, {3, 5, 1, 4}, {1, 1, 3, 1}, {7, 7, 3, 3}};
  for (const F4Shape& s : shapes) {
    test_shape(s);
  }
  // The layouts that need no copy: M_3 always; for 1x1 filters M_1, M_2 and M_4 transposed.
  const F4Shape one_by_one{8, 6, 1, 1}, three_by_three{8, 6, 3, 3};
  CHECK(one_by_one.has_filter_layout(0, false) && one_by_one.has_filter_layout(1, false));
  CHECK(!one_by_one.has_filter_layout(3, false) && one_by_one.has_filter_layout(3, true));
  for (int q : {0, 1, 3}) {
    CHECK(!three_by_three.has_filter_layout(q, false));
    CHECK(!three_by_three.has_filter_layout(q, true));
  }
  return lipkernels_test::report("test_conv_spectral_bounds");
}
