// Unit tests of kernels/soc_exp.cuh, the framework-free half of the CUDA soc_exp kernels: the
// image-group index maps against the zero-padded NCHW indexing written out plainly, the series
// coefficients, the inner product of the tiles, and the forward and backward schedules. The
// schedules are run block by block exactly as the kernel runs them, with plain-loop phases built
// on the same index maps, and their results are compared with the series summed term by term
// from its definition (csrc/cpu/soc_exp.cpp): y = sum_i S^i x / i!, grad_x = sum_m (S^T)^m g / m!,
// exact grad_S = sum_{i=1}^{n} 1/i! sum_{j<i} Wg(S^j x, (S^T)^{i-1-j} g), fast grad_S =
// Wg(z_2, g_2). Scratch starts as NaN, so a phase that reads a slot before it is written, or
// after it was overwritten by something else, fails the comparison.
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "check.h"
#include "kernels/soc_exp.cuh"

namespace k = lipkernels::kernels;
using k::Buffer;
using k::Filter;
using k::GroupPixel;
using k::ImageGroup;
using k::Operand;
using k::SocShape;

namespace {

using Tensor = std::vector<double>;

// A deterministic pseudo-random value in [-1, 1).
double value(uint64_t seed) {
  seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
  seed ^= seed >> 29;
  seed *= 0xbf58476d1ce4e5b9ULL;
  return static_cast<double>(seed >> 11) / static_cast<double>(1ULL << 52) - 1.0;
}

Tensor random_tensor(int64_t size, uint64_t seed, double scale = 1.0) {
  Tensor t(size);
  for (int64_t e = 0; e < size; ++e) t[e] = scale * value(seed * 1000003 + e);
  return t;
}

bool close(const Tensor& got, const Tensor& want, double tolerance = 1e-12) {
  if (got.size() != want.size()) return false;
  double scale = 0;
  for (double w : want) scale = std::fmax(scale, std::fabs(w));
  for (size_t e = 0; e < got.size(); ++e) {
    if (!(std::fabs(got[e] - want[e]) <= tolerance * (1 + scale))) return false;
  }
  return true;
}

// ---- The definitions, written plainly ----------------------------------------------------------

// x[b][c][y][x] of an NCHW activation, 0 outside the image (the zero "same" padding).
double padded(const SocShape& s, const Tensor& t, int64_t b, int64_t c, int64_t y, int64_t x) {
  if (y < 0 || y >= s.height || x < 0 || x >= s.width) return 0;
  return t[((b * s.channels + c) * s.height + y) * s.width + x];
}

int64_t filter_index(const SocShape& s, int64_t co, int64_t ci, int64_t ty, int64_t tx) {
  return ((co * s.channels + ci) * s.kernel + ty) * s.kernel + tx;
}

// F.conv2d(in, w, padding=k//2) for w (C, C, k, k).
Tensor conv(const SocShape& s, const Tensor& in, const Tensor& w) {
  Tensor out(s.numel(), 0.0);
  const int64_t p = s.padding();
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t co = 0; co < s.channels; ++co)
      for (int64_t y = 0; y < s.height; ++y)
        for (int64_t x = 0; x < s.width; ++x) {
          double sum = 0;
          for (int64_t ci = 0; ci < s.channels; ++ci)
            for (int64_t ty = 0; ty < s.kernel; ++ty)
              for (int64_t tx = 0; tx < s.kernel; ++tx)
                sum += w[filter_index(s, co, ci, ty, tx)] *
                       padded(s, in, b, ci, y + ty - p, x + tx - p);
          out[((b * s.channels + co) * s.height + y) * s.width + x] = sum;
        }
  return out;
}

// The gradient of <b, conv(a, w)> with respect to w.
Tensor weight_gradient(const SocShape& s, const Tensor& a, const Tensor& b) {
  Tensor grad(s.channels * s.channels * s.taps(), 0.0);
  const int64_t p = s.padding();
  for (int64_t co = 0; co < s.channels; ++co)
    for (int64_t ci = 0; ci < s.channels; ++ci)
      for (int64_t ty = 0; ty < s.kernel; ++ty)
        for (int64_t tx = 0; tx < s.kernel; ++tx)
          for (int64_t n = 0; n < s.batch; ++n)
            for (int64_t y = 0; y < s.height; ++y)
              for (int64_t x = 0; x < s.width; ++x)
                grad[filter_index(s, co, ci, ty, tx)] +=
                    padded(s, b, n, co, y, x) * padded(s, a, n, ci, y + ty - p, x + tx - p);
  return grad;
}

// flipT(w)[co][ci][ty][tx] = w[ci][co][k-1-ty][k-1-tx].
Tensor flip_transpose(const SocShape& s, const Tensor& w) {
  Tensor t(w.size());
  const int64_t last = s.kernel - 1;
  for (int64_t co = 0; co < s.channels; ++co)
    for (int64_t ci = 0; ci < s.channels; ++ci)
      for (int64_t ty = 0; ty < s.kernel; ++ty)
        for (int64_t tx = 0; tx < s.kernel; ++tx)
          t[filter_index(s, co, ci, ty, tx)] = w[filter_index(s, ci, co, last - ty, last - tx)];
  return t;
}

void add_scaled(Tensor& sum, const Tensor& t, double scale) {
  for (size_t e = 0; e < sum.size(); ++e) sum[e] += scale * t[e];
}

double factorial(int64_t m) { return m <= 1 ? 1.0 : m * factorial(m - 1); }

// [w^0 v, w^1 v, ..., w^count v].
std::vector<Tensor> powers(const SocShape& s, const Tensor& v, const Tensor& w, int64_t count) {
  std::vector<Tensor> result{v};
  for (int64_t i = 1; i <= count; ++i) result.push_back(conv(s, result.back(), w));
  return result;
}

// sum_{i=0}^{count} p[i] / (i + shift)!
Tensor series(const std::vector<Tensor>& p, int64_t count, int64_t shift) {
  Tensor sum(p[0].size(), 0.0);
  for (int64_t i = 0; i <= count; ++i) add_scaled(sum, p[i], 1.0 / factorial(i + shift));
  return sum;
}

struct Gradients {
  Tensor y, z2, grad_x, grad_S;
};

Gradients by_definition(const SocShape& s, const Tensor& x, const Tensor& S, const Tensor& g,
                        int64_t n, bool exact) {
  const Tensor adjoint = flip_transpose(s, S);
  const std::vector<Tensor> px = powers(s, x, S, n), pg = powers(s, g, adjoint, n);
  Gradients d{series(px, n, 0), series(px, n - 1, 1), series(pg, n, 0), {}};
  if (exact) {
    d.grad_S.assign(S.size(), 0.0);
    for (int64_t i = 1; i <= n; ++i)
      for (int64_t j = 0; j < i; ++j)
        add_scaled(d.grad_S, weight_gradient(s, px[j], pg[i - 1 - j]), 1.0 / factorial(i));
  } else {
    d.grad_S = weight_gradient(s, d.z2, series(pg, n - 1, 1));
  }
  return d;
}

// ---- The schedules, run as the kernel runs them ------------------------------------------------

// (C, C, k, k) -> [tap][ci][co], as the host wrapper lays out the filters the kernels read.
Tensor tap_major(const SocShape& s, const Tensor& w) {
  Tensor t(w.size());
  for (int64_t co = 0; co < s.channels; ++co)
    for (int64_t ci = 0; ci < s.channels; ++ci)
      for (int64_t tap = 0; tap < s.taps(); ++tap)
        t[k::tap_major_offset(s.channels, tap, ci, co)] =
            w[filter_index(s, co, ci, tap / s.kernel, tap % s.kernel)];
  return t;
}

// The tensors of one launch; scratch holds `slots` activations.
struct Launch {
  SocShape shape;
  Tensor input, start, output, saved, filter, adjoint, grad_taps;
  std::vector<Tensor> scratch;

  Launch(const SocShape& s, const Tensor& in, const Tensor& origin, const Tensor& S, int64_t slots)
      : shape(s),
        input(in),
        start(origin),
        output(s.numel(), std::numeric_limits<double>::quiet_NaN()),
        saved(output),
        filter(tap_major(s, S)),
        adjoint(tap_major(s, flip_transpose(s, S))),
        grad_taps(S.size(), 0.0),
        scratch(slots, output) {}

  // grad_taps [tap][co][ci] -> (co, ci, ky, kx).
  Tensor grad_S() const {
    Tensor g(grad_taps.size());
    for (int64_t co = 0; co < shape.channels; ++co)
      for (int64_t ci = 0; ci < shape.channels; ++ci)
        for (int64_t tap = 0; tap < shape.taps(); ++tap)
          g[filter_index(shape, co, ci, tap / shape.kernel, tap % shape.kernel)] =
              grad_taps[k::tap_major_offset(shape.channels, tap, co, ci)];
    return g;
  }
};

// The schedules' `ops` for one block, on the CPU: the phases of csrc/cuda/soc_exp.cu one output
// element at a time, through the same group index maps and inner product.
struct BlockOps {
  Launch& launch;
  ImageGroup group;

  double* resolve(const Operand& o) {
    switch (o.buffer) {
      case Buffer::kInput: return launch.input.data() + group.base();
      case Buffer::kStart: return launch.start.data() + group.base();
      case Buffer::kOutput: return launch.output.data() + group.base();
      case Buffer::kScratch: break;
    }
    CHECK(o.slot >= 0 && o.slot < static_cast<int64_t>(launch.scratch.size()));
    return launch.scratch.at(o.slot).data() + group.base();
  }

  void conv(Operand src, Operand dst, Filter filter, double coef, bool add_input, bool keep_z2) {
    CHECK(src.buffer != Buffer::kOutput);
    CHECK(dst.buffer == Buffer::kScratch || dst.buffer == Buffer::kOutput);
    CHECK(!(src.buffer == Buffer::kScratch && dst.buffer == Buffer::kScratch &&
            src.slot == dst.slot));
    const SocShape& s = group.shape;
    const double* in = resolve(src);
    double* out = resolve(dst);
    const double* weights = (filter == Filter::kS ? launch.filter : launch.adjoint).data();
    for (int64_t q = 0; q < group.pixels(); ++q) {
      const GroupPixel pixel = group.locate(q);
      for (int64_t co = 0; co < s.channels; ++co) {
        double acc[1] = {0};
        for (int64_t tap = 0; tap < s.taps(); ++tap) {
          const int64_t source = group.tap_source(pixel, tap / s.kernel, tap % s.kernel);
          if (!s.tap_reaches_image(tap / s.kernel, tap % s.kernel) || source < 0) continue;
          k::accumulate_products(acc, weights + k::tap_major_offset(s.channels, tap, 0, co),
                                 s.channels, 0, in + source, s.pixels(),
                                 static_cast<int>(s.channels));
        }
        const int64_t o = group.offset(co, pixel);
        out[o] = coef * acc[0] + (add_input ? launch.input[group.base() + o] : 0.0);
        if (keep_z2) launch.saved[group.base() + o] = out[o];
      }
    }
  }

  void weight_gradient(Operand a, Operand b, double coef) {
    CHECK(a.buffer != Buffer::kOutput && b.buffer != Buffer::kOutput);
    const SocShape& s = group.shape;
    const double* input = resolve(a);
    const double* grad_out = resolve(b);
    for (int64_t tap = 0; tap < s.taps(); ++tap) {
      if (!s.tap_reaches_image(tap / s.kernel, tap % s.kernel)) continue;
      for (int64_t co = 0; co < s.channels; ++co)
        for (int64_t ci = 0; ci < s.channels; ++ci) {
          double sum = 0;
          for (int64_t q = 0; q < group.pixels(); ++q) {
            const GroupPixel pixel = group.locate(q);
            const int64_t source = group.tap_source(pixel, tap / s.kernel, tap % s.kernel);
            if (source < 0) continue;
            sum += grad_out[group.offset(co, pixel)] * input[source + ci * s.pixels()];
          }
          launch.grad_taps[k::tap_major_offset(s.channels, tap, co, ci)] += coef * sum;
        }
    }
  }
};

int64_t blocks(const SocShape& s, int64_t images_per_group) {
  return (s.batch + images_per_group - 1) / images_per_group;
}

void test_schedules(const SocShape& s, int64_t images_per_group, int64_t n, bool exact) {
  const uint64_t seed = static_cast<uint64_t>(s.numel() * 131 + n * 7 + exact);
  const Tensor x = random_tensor(s.numel(), seed), g = random_tensor(s.numel(), seed + 1);
  const Tensor S = random_tensor(s.channels * s.channels * s.taps(), seed + 2, 0.3);
  const Gradients want = by_definition(s, x, S, g, n, exact);

  Launch forward(s, x, Tensor(), S, k::ping_pong_slots(n));
  for (int64_t b = 0; b < blocks(s, images_per_group); ++b) {
    BlockOps ops{forward, ImageGroup::of_block(s, images_per_group, b)};
    k::soc_forward_schedule(n, ops);
  }
  CHECK(close(forward.output, want.y));
  // z_2 is saved only where n >= 2 (n == 1: it is x, which the host copies).
  CHECK(n == 1 ? std::isnan(forward.saved[0]) : close(forward.saved, want.z2));

  const k::BackwardSlots slots{n, exact};
  Launch backward(s, g, exact ? x : want.z2, S, slots.count());
  for (int64_t b = 0; b < blocks(s, images_per_group); ++b) {
    BlockOps ops{backward, ImageGroup::of_block(s, images_per_group, b)};
    k::soc_backward_schedule(n, exact, ops);
  }
  CHECK(close(backward.output, want.grad_x));
  CHECK(close(backward.grad_S(), want.grad_S));
}

// ---- Index maps, coefficients, inner product ---------------------------------------------------

void test_group_index_maps(const SocShape& s, int64_t images_per_group) {
  std::vector<int> owner(s.batch, 0);
  for (int64_t b = 0; b < blocks(s, images_per_group); ++b) {
    const ImageGroup group = ImageGroup::of_block(s, images_per_group, b);
    CHECK(group.count >= 1 && group.count <= images_per_group);
    CHECK(group.base() == group.first * s.channels * s.height * s.width);
    CHECK(group.pixels() == group.count * s.height * s.width);
    for (int64_t i = 0; i < group.count; ++i) ++owner.at(group.first + i);
    for (int64_t q = 0; q < group.pixels(); ++q) {
      const GroupPixel p = group.locate(q);
      CHECK(p.image >= 0 && p.image < group.count);
      CHECK(q == (p.image * s.height + p.y) * s.width + p.x);
      for (int64_t c = 0; c < s.channels; ++c) {
        CHECK(group.base() + group.offset(c, p) ==
              (((group.first + p.image) * s.channels + c) * s.height + p.y) * s.width + p.x);
      }
      for (int64_t ty = 0; ty < s.kernel; ++ty)
        for (int64_t tx = 0; tx < s.kernel; ++tx) {
          const int64_t y = p.y + ty - s.padding(), x = p.x + tx - s.padding();
          const bool inside = y >= 0 && y < s.height && x >= 0 && x < s.width;
          // The source is the same image's pixel (y, x), never a neighbour's.
          CHECK(group.tap_source(p, ty, tx) == (inside ? group.offset(0, {p.image, y, x}) : -1));
        }
    }
  }
  for (int count : owner) CHECK(count == 1);  // the groups partition the batch

  // A tap reaches the image iff some output pixel reads a real pixel through it.
  const ImageGroup first = ImageGroup::of_block(s, images_per_group, 0);
  for (int64_t ty = 0; ty < s.kernel; ++ty)
    for (int64_t tx = 0; tx < s.kernel; ++tx) {
      bool reached = false;
      for (int64_t q = 0; q < s.pixels(); ++q) {
        reached |= first.tap_source(first.locate(q), ty, tx) >= 0;
      }
      CHECK(s.tap_reaches_image(ty, tx) == reached);
    }
}

void test_images_per_group() {
  const int64_t target = 64;
  for (int64_t batch : {1, 3, 128})
    for (int64_t pixels : {1, 4, 16, 63, 64, 65, 1024}) {
      const int64_t g = k::images_per_group(batch, pixels, target);
      CHECK(g >= 1 && g <= batch);
      // The fewest images that reach the target, unless the batch runs out first.
      CHECK(g == batch || g * pixels >= target);
      CHECK(g == 1 || (g - 1) * pixels < target);
    }
  CHECK(k::images_per_group(128, 4, 64) == 16);
  CHECK(k::images_per_group(128, 1024, 64) == 1);
  CHECK(k::images_per_group(3, 1, 64) == 3);
}

void test_coefficients() {
  for (int64_t i = 1; i <= 20; ++i) {
    CHECK(k::horner_coefficient<double>(i) == 1.0 / static_cast<double>(i));
    CHECK(std::fabs(k::horner_coefficient<float>(i) * static_cast<float>(i) - 1.0f) <= 1e-7f);
  }
  CHECK(k::inverse_factorial<double>(0) == 1.0 && k::inverse_factorial<double>(1) == 1.0);
  CHECK(k::inverse_factorial<double>(3) == 1.0 / 6.0);
  for (int64_t m = 2; m <= 20; ++m) {
    const double want = 1.0 / std::tgamma(static_cast<double>(m + 1));
    CHECK(std::fabs(k::inverse_factorial<double>(m) - want) <= 1e-14 * want);
    CHECK(std::fabs(k::inverse_factorial<float>(m) - want) <= 1e-6 * want);
  }
}

void test_accumulate_products() {
  const Tensor a = random_tensor(64, 11), b = random_tensor(64, 12);
  const int64_t a_k = 7, a_r = 2, b_k = 3;
  const int count = 5;
  double acc[3] = {0.5, -1.0, 2.0};
  double want[3] = {0.5, -1.0, 2.0};
  for (int r = 0; r < 3; ++r)
    for (int i = 0; i < count; ++i) want[r] += a[i * a_k + r * a_r] * b[i * b_k];
  k::accumulate_products(acc, a.data(), a_k, a_r, b.data(), b_k, count);
  for (int r = 0; r < 3; ++r) CHECK(std::fabs(acc[r] - want[r]) <= 1e-14);
}

void test_backward_slots() {
  for (int64_t n = 1; n <= 20; ++n) {
    CHECK(k::ping_pong_slots(n) == (n == 1 ? 0 : n == 2 ? 1 : 2));
    const k::BackwardSlots exact{n, true}, fast{n, false};
    CHECK(exact.count() == n - 1 && fast.count() == k::ping_pong_slots(n));
    for (int64_t j = 0; j + 1 < n; ++j) {
      CHECK(exact.adjoint(j) < exact.count() && fast.adjoint(j) < fast.count());
      // u_j takes the slot of S^{j+1} x, whose weight gradient precedes it.
      CHECK(exact.adjoint(j) == exact.power(j + 1));
    }
  }
}

}  // namespace

int main() {
  test_images_per_group();
  test_coefficients();
  test_accumulate_products();
  test_backward_slots();
  // (batch, channels, height, width, kernel): several images per group and a group cut short by
  // the batch; k > the image side (taps that never reach it); 1x1 images; a 1x1 filter.
  const SocShape shapes[] = {{3, 2, 3, 4, 3}, {2, 3, 1, 1, 3}, {2, 2, 5, 2, 5}, {3, 2, 2, 3, 1}};
  for (const SocShape& s : shapes) {
    for (int64_t images_per_group : {int64_t{1}, int64_t{2}, s.batch}) {
      test_group_index_maps(s, images_per_group);
    }
    for (int64_t n = 1; n <= 6; ++n) {
      for (bool exact : {true, false}) {
        test_schedules(s, 2, n, exact);
      }
    }
  }
  return lipkernels_test::report("test_soc_exp");
}
