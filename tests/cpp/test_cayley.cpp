// Unit tests of kernels/cayley.cuh, the body of the CUDA cayley and cayley_frequency_product
// kernels, run on the CPU exactly as a thread block runs it: one std::thread per CUDA thread
// (kCayleyThreads of them) and a real barrier for __syncthreads(), so the tiling, the index maps,
// the in-place Gauss-Jordan sweeps and the placement of every barrier are exercised (a missing
// barrier shows up as a race that corrupts results). Shared and global scratch start as NaN, so
// reading anything before it is written fails the comparisons. A race does not always corrupt a
// result; built with ThreadSanitizer (g++ -std=c++17 -O1 -fsanitize=thread -Icsrc -Itests/cpp
// tests/cpp/test_cayley.cpp; ~1 min) every missing barrier is reported as a data race, and the
// run is clean.
//
// Oracles, written plainly in double (and complex<double>): X M = I for M = I + A formed from its
// definition, Q against [2X - I ; -2 V X] from a pivoted Gauss-Jordan inverse, Q^H Q = I, the
// backward against its closed form and against central finite differences of
// L = Re sum conj(G) * Q(W), and cayley_frequency_product against Q_f S_f with Q_f from the same
// oracle.
#include <cmath>
#include <complex>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <mutex>
#include <thread>
#include <vector>

#include "check.h"
#include "kernels/cayley.cuh"

namespace k = lipkernels::kernels;
using k::Complex;

namespace {

// ---- A thread block on the CPU -----------------------------------------------------------------

class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}
  void wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const uint64_t generation = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return generation_ != generation; });
    }
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  int count_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
};

struct CpuBlock {
  int id;
  Barrier* barrier;
  int tid() const { return id; }
  int threads() const { return k::kCayleyThreads; }
  void sync() const { barrier->wait(); }
};

// Runs body(block) on kCayleyThreads threads, as one CUDA thread block.
template <typename Body>
void run_block(Body body) {
  Barrier barrier(k::kCayleyThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < k::kCayleyThreads; ++t) {
    threads.emplace_back([&, t] { body(CpuBlock{t, &barrier}); });
  }
  for (std::thread& thread : threads) thread.join();
}

// ---- Scalars and plain matrices -----------------------------------------------------------------

template <typename S>
struct Traits {
  using real = S;
  static S make(double re, double) { return static_cast<S>(re); }
  static std::complex<double> wide(S v) { return {static_cast<double>(v), 0.0}; }
  static S nan() { return std::numeric_limits<S>::quiet_NaN(); }
};
template <typename T>
struct Traits<Complex<T>> {
  using real = T;
  static Complex<T> make(double re, double im) {
    return {static_cast<T>(re), static_cast<T>(im)};
  }
  static std::complex<double> wide(Complex<T> v) { return {v.re, v.im}; }
  static Complex<T> nan() {
    return {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::quiet_NaN()};
  }
};

// A deterministic pseudo-random value in [-1, 1).
double value(uint64_t seed) {
  seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
  seed ^= seed >> 29;
  seed *= 0xbf58476d1ce4e5b9ULL;
  return static_cast<double>(seed >> 11) / static_cast<double>(1ULL << 52) - 1.0;
}

// The oracle's matrices: row-major, complex<double> whatever the kernel's type.
using C = std::complex<double>;
struct Mat {
  int64_t rows, cols;
  std::vector<C> v;
  Mat(int64_t r, int64_t c) : rows(r), cols(c), v(r * c) {}
  C& operator()(int64_t i, int64_t j) { return v[i * cols + j]; }
  C operator()(int64_t i, int64_t j) const { return v[i * cols + j]; }
};

Mat random_mat(int64_t rows, int64_t cols, uint64_t seed, bool complex, double scale) {
  Mat a(rows, cols);
  for (int64_t e = 0; e < rows * cols; ++e) {
    a.v[e] = scale * C(value(seed * 7919 + 2 * e), complex ? value(seed * 7919 + 2 * e + 1) : 0);
  }
  return a;
}

Mat matmul(const Mat& a, const Mat& b) {
  Mat c(a.rows, b.cols);
  for (int64_t i = 0; i < a.rows; ++i)
    for (int64_t j = 0; j < b.cols; ++j) {
      C sum = 0;
      for (int64_t p = 0; p < a.cols; ++p) sum += a(i, p) * b(p, j);
      c(i, j) = sum;
    }
  return c;
}

Mat herm(const Mat& a) {
  Mat c(a.cols, a.rows);
  for (int64_t i = 0; i < a.rows; ++i)
    for (int64_t j = 0; j < a.cols; ++j) c(j, i) = std::conj(a(i, j));
  return c;
}

Mat transpose(const Mat& a) {
  Mat c(a.cols, a.rows);
  for (int64_t i = 0; i < a.rows; ++i)
    for (int64_t j = 0; j < a.cols; ++j) c(j, i) = a(i, j);
  return c;
}

Mat rows_of(const Mat& a, int64_t first, int64_t count) {
  Mat c(count, a.cols);
  for (int64_t i = 0; i < count; ++i)
    for (int64_t j = 0; j < a.cols; ++j) c(i, j) = a(first + i, j);
  return c;
}

Mat identity(int64_t n) {
  Mat c(n, n);
  for (int64_t i = 0; i < n; ++i) c(i, i) = 1;
  return c;
}

Mat add(const Mat& a, const Mat& b, C beta = 1) {
  Mat c = a;
  for (size_t e = 0; e < c.v.size(); ++e) c.v[e] += beta * b.v[e];
  return c;
}

Mat stack(const Mat& top, const Mat& bottom) {
  Mat c(top.rows + bottom.rows, top.cols);
  for (int64_t e = 0; e < top.rows * top.cols; ++e) c.v[e] = top.v[e];
  for (int64_t e = 0; e < bottom.rows * bottom.cols; ++e) c.v[top.v.size() + e] = bottom.v[e];
  return c;
}

// Gauss-Jordan with partial pivoting: an inverse independent of the kernel's.
Mat inverse(Mat a) {
  const int64_t n = a.rows;
  Mat inv = identity(n);
  for (int64_t c = 0; c < n; ++c) {
    int64_t p = c;
    for (int64_t r = c + 1; r < n; ++r)
      if (std::abs(a(r, c)) > std::abs(a(p, c))) p = r;
    for (int64_t j = 0; j < n; ++j) {
      std::swap(a(c, j), a(p, j));
      std::swap(inv(c, j), inv(p, j));
    }
    const C d = a(c, c);
    for (int64_t j = 0; j < n; ++j) {
      a(c, j) /= d;
      inv(c, j) /= d;
    }
    for (int64_t r = 0; r < n; ++r) {
      if (r == c) continue;
      const C f = a(r, c);
      for (int64_t j = 0; j < n; ++j) {
        a(r, j) -= f * a(c, j);
        inv(r, j) -= f * inv(c, j);
      }
    }
  }
  return inv;
}

// M = I + U - U^H + V^H V of a tall W.
Mat cayley_system(const Mat& W) {
  const int64_t n = W.cols;
  const Mat U = rows_of(W, 0, n), V = rows_of(W, n, W.rows - n);
  return add(add(add(identity(n), U), herm(U), -1), matmul(herm(V), V));
}

// The Cayley transform of a tall W, from its definition.
Mat cayley_oracle(const Mat& W) {
  const int64_t n = W.cols;
  const Mat X = inverse(cayley_system(W));
  const Mat V = rows_of(W, n, W.rows - n);
  Mat bottom = matmul(V, X);
  for (C& e : bottom.v) e *= -2.0;
  return stack(add(add(X, X), identity(n), -1), bottom);
}

// The closed-form backward (reference/cayley.py's CayleyFunction.backward).
Mat cayley_backward_oracle(const Mat& G, const Mat& W) {
  const int64_t n = W.cols, k = W.rows - n;
  const Mat X = inverse(cayley_system(W)), XH = herm(X);
  const Mat V = rows_of(W, n, k), G_top = rows_of(G, 0, n), G_bot = rows_of(G, n, k);
  Mat g_a = matmul(matmul(XH, add(matmul(herm(V), G_bot), G_top, -1)), XH);
  for (C& e : g_a.v) e *= 2.0;
  const Mat g_u = add(g_a, herm(g_a), -1);
  const Mat g_v = add(matmul(V, add(g_a, herm(g_a))), matmul(G_bot, XH), -2);
  return stack(g_u, g_v);
}

// Re sum conj(G) * Y: the loss whose gradient is G at Y.
double pairing(const Mat& G, const Mat& Y) {
  double sum = 0;
  for (size_t e = 0; e < G.v.size(); ++e) sum += std::real(std::conj(G.v[e]) * Y.v[e]);
  return sum;
}

// d/dh L(W + h D) at h = 0 by central differences (exact to O(h^2) for these smooth maps).
template <typename Loss>
double directional(const Loss& loss, const Mat& W, const Mat& D) {
  const double h = 1e-5;
  return (loss(add(W, D, h)) - loss(add(W, D, -h))) / (2 * h);
}

double max_abs_diff(const Mat& a, const Mat& b) {
  double d = 0;
  for (size_t e = 0; e < a.v.size(); ++e) d = std::fmax(d, std::abs(a.v[e] - b.v[e]));
  return d;
}

// Whether got matches want to `tol` relative to want's largest entry (NaN fails).
bool close(const Mat& got, const Mat& want, double tol) {
  if (got.rows != want.rows || got.cols != want.cols) return false;
  double scale = 1;
  for (const C& w : want.v) scale = std::fmax(scale, std::abs(w));
  const double d = max_abs_diff(got, want);
  return d <= tol * scale;
}

// ---- Conversions between the oracle's matrices and the kernel's buffers -----------------------

template <typename S>
std::vector<S> to_buffer(const Mat& a) {
  std::vector<S> b(a.v.size());
  for (size_t e = 0; e < b.size(); ++e) b[e] = Traits<S>::make(a.v[e].real(), a.v[e].imag());
  return b;
}

template <typename S>
Mat from_buffer(const S* b, int64_t rows, int64_t cols) {
  Mat a(rows, cols);
  for (int64_t e = 0; e < rows * cols; ++e) a.v[e] = Traits<S>::wide(b[e]);
  return a;
}

template <typename S>
std::vector<S> nan_buffer(int64_t size) {
  return std::vector<S>(size, Traits<S>::nan());
}

// ---- cayley ------------------------------------------------------------------------------------

// (Q, X) of the kernel for a tall W, with the inverse formed in shared memory or in X.
template <typename S>
std::pair<Mat, Mat> kernel_cayley(const Mat& W, bool in_shared) {
  const int64_t m = W.rows, n = W.cols;
  const std::vector<S> w = to_buffer<S>(W);
  std::vector<S> q = nan_buffer<S>(m * n), x = nan_buffer<S>(n * n);
  std::vector<S> scratch = nan_buffer<S>(k::kCayleyScratch), shared = nan_buffer<S>(n * n);
  run_block([&](const CpuBlock& block) {
    k::cayley_forward_matrix(block, m, n, k::row_major(w.data(), n), x.data(),
                             k::row_major(q.data(), n), in_shared ? shared.data() : x.data(),
                             scratch.data());
  });
  return {from_buffer(q.data(), m, n), from_buffer(x.data(), n, n)};
}

template <typename S>
Mat kernel_cayley_backward(const Mat& G, const Mat& X, const Mat& W) {
  const int64_t m = W.rows, n = W.cols;
  const std::vector<S> g = to_buffer<S>(G), x = to_buffer<S>(X), w = to_buffer<S>(W);
  std::vector<S> grad = nan_buffer<S>(m * n), ws = nan_buffer<S>(2 * n * n);
  std::vector<S> scratch = nan_buffer<S>(k::kCayleyScratch);
  run_block([&](const CpuBlock& block) {
    k::cayley_backward_matrix(block, m, n, k::row_major(g.data(), n), k::row_major(x.data(), n),
                              k::row_major(w.data(), n), k::row_major(grad.data(), n), ws.data(),
                              ws.data() + n * n, scratch.data());
  });
  return from_buffer(grad.data(), m, n);
}

template <typename S>
void test_cayley(int64_t m, int64_t n, uint64_t seed, double tol) {
  const bool complex = k::IsComplex<S>::value;
  // Entries of size ~1/sqrt(n) keep M's condition number moderate, as a trained layer's are.
  const double scale = 1.0 / std::sqrt(static_cast<double>(n));
  const Mat W = random_mat(m, n, seed, complex, scale);
  // Round W to the kernel's type first, so the oracle sees the same input.
  const Mat W_in = from_buffer(to_buffer<S>(W).data(), m, n);
  const Mat Q_want = cayley_oracle(W_in);
  for (bool in_shared : {true, false}) {
    const auto [Q, X] = kernel_cayley<S>(W_in, in_shared);
    // X M = I, Q = [2X - I ; -2 V X], Q^H Q = I.
    CHECK(close(matmul(X, cayley_system(W_in)), identity(n), tol));
    CHECK(close(Q, Q_want, tol));
    CHECK(close(matmul(herm(Q), Q), identity(n), tol));
    if (!close(Q, Q_want, tol)) {
      std::printf("  cayley m=%lld n=%lld shared=%d: |Q - oracle| = %g\n",
                  static_cast<long long>(m), static_cast<long long>(n), in_shared,
                  max_abs_diff(Q, Q_want));
    }
  }
  // Backward: the closed form, and the directional derivative of L = Re sum conj(G) Q(W).
  const Mat G = from_buffer(to_buffer<S>(random_mat(m, n, seed + 1, complex, 1.0)).data(), m, n);
  const Mat X = kernel_cayley<S>(W_in, false).second;
  const Mat grad = kernel_cayley_backward<S>(G, X, W_in);
  const Mat grad_want = cayley_backward_oracle(G, W_in);
  CHECK(close(grad, grad_want, tol));
  if (!close(grad, grad_want, tol)) {
    std::printf("  cayley_backward m=%lld n=%lld: |grad - oracle| = %g\n",
                static_cast<long long>(m), static_cast<long long>(n),
                max_abs_diff(grad, grad_want));
  }
  const Mat D = random_mat(m, n, seed + 2, complex, 1.0);
  const double fd =
      directional([&](const Mat& w) { return pairing(G, cayley_oracle(w)); }, W_in, D);
  const double analytic = pairing(grad_want, D);
  CHECK(std::fabs(fd - analytic) <= 1e-6 * (1 + std::fabs(fd)));
}

// ---- cayley_frequency_product ---------------------------------------------------------------

// Q_f of the op: cayley of the tall orientation, transposed back for a wide response.
Mat conv_operator(const Mat& R) {
  const bool wide = R.rows < R.cols;
  return wide ? transpose(cayley_oracle(transpose(R))) : cayley_oracle(R);
}

template <typename S>
void test_cayley_frequency_product(int64_t c_out, int64_t c_in, int64_t batch, uint64_t seed, double tol) {
  const int64_t frequencies = 2;
  const k::FrequencyShape shape{c_out, c_in, batch};
  const int64_t n = shape.n();
  const double scale = 1.0 / std::sqrt(static_cast<double>(n));
  std::vector<Mat> R, Sp, G;
  std::vector<S> response, spectrum, grad_output;
  for (int64_t f = 0; f < frequencies; ++f) {
    R.push_back(from_buffer(
        to_buffer<S>(random_mat(c_out, c_in, seed + 10 * f, true, scale)).data(), c_out, c_in));
    Sp.push_back(from_buffer(
        to_buffer<S>(random_mat(c_in, batch, seed + 10 * f + 1, true, 1.0)).data(), c_in, batch));
    G.push_back(from_buffer(
        to_buffer<S>(random_mat(c_out, batch, seed + 10 * f + 2, true, 1.0)).data(), c_out,
        batch));
    for (const C& v : R.back().v) response.push_back(Traits<S>::make(v.real(), v.imag()));
    for (const C& v : Sp.back().v) spectrum.push_back(Traits<S>::make(v.real(), v.imag()));
    for (const C& v : G.back().v) grad_output.push_back(Traits<S>::make(v.real(), v.imag()));
  }
  std::vector<S> output = nan_buffer<S>(frequencies * shape.output_numel());
  std::vector<S> x = nan_buffer<S>(frequencies * n * n);
  std::vector<S> solved = nan_buffer<S>(frequencies * shape.solved_numel());
  std::vector<S> p_work = nan_buffer<S>(frequencies * shape.solved_numel());
  std::vector<S> grad_response = nan_buffer<S>(frequencies * shape.response_numel());
  std::vector<S> grad_spectrum = nan_buffer<S>(frequencies * shape.spectrum_numel());
  std::vector<S> ws = nan_buffer<S>(frequencies * shape.backward_matrices());
  for (int64_t f = 0; f < frequencies; ++f) {
    // Frequency 0 inverts in shared memory, frequency 1 in X (global memory); likewise the
    // backward's n x n matrix E (shared: its own buffer; global: a slice per frequency).
    std::vector<S> scratch = nan_buffer<S>(k::kCayleyScratch);
    std::vector<S> shared = nan_buffer<S>(shape.backward_matrices());
    S* xf = x.data() + f * n * n;
    run_block([&](const CpuBlock& block) {
      k::cayley_frequency_product_forward_frequency(
          block, shape, response.data() + f * shape.response_numel(),
          spectrum.data() + f * shape.spectrum_numel(), output.data() + f * shape.output_numel(),
          xf, solved.data() + f * shape.solved_numel(), f == 0 ? shared.data() : xf,
          scratch.data());
    });
    run_block([&](const CpuBlock& block) {
      k::cayley_frequency_product_backward_frequency(
          block, shape, grad_output.data() + f * shape.output_numel(),
          response.data() + f * shape.response_numel(),
          spectrum.data() + f * shape.spectrum_numel(), x.data() + f * n * n,
          solved.data() + f * shape.solved_numel(),
          grad_response.data() + f * shape.response_numel(),
          grad_spectrum.data() + f * shape.spectrum_numel(),
          p_work.data() + f * shape.solved_numel(),
          f == 0 ? shared.data() : ws.data() + f * shape.backward_matrices(), scratch.data());
    });
  }
  for (int64_t f = 0; f < frequencies; ++f) {
    const Mat Q = conv_operator(R[f]);
    const bool wide = shape.wide();
    const Mat T = wide ? transpose(R[f]) : R[f];
    const Mat out = from_buffer(output.data() + f * shape.output_numel(), c_out, batch);
    CHECK(close(out, matmul(Q, Sp[f]), tol));
    const Mat X = from_buffer(x.data() + f * n * n, n, n);
    CHECK(close(matmul(X, cayley_system(T)), identity(n), tol));
    // The solved spectrum: 2W - S_top is the output's top block (tall: W = X S; wide: W = X^T
    // (S_top - V^T S_bot)), and W alone is checked against X itself.
    const Mat W = from_buffer(solved.data() + f * shape.solved_numel(), n, batch);
    const int64_t k = shape.m() - n;
    const Mat rhs = wide ? add(rows_of(Sp[f], 0, n),
                               matmul(transpose(rows_of(T, n, k)), rows_of(Sp[f], n, k)), -1.0)
                         : Sp[f];
    CHECK(close(W, matmul(wide ? transpose(X) : X, rhs), tol));
    // grad_spectrum = Q^H G; grad_response by the chain rule through the tall orientation.
    const Mat gs = from_buffer(grad_spectrum.data() + f * shape.spectrum_numel(), c_in, batch);
    CHECK(close(gs, matmul(herm(Q), G[f]), tol));
    const Mat gq = matmul(G[f], herm(Sp[f]));
    const Mat gt = cayley_backward_oracle(wide ? transpose(gq) : gq, T);
    const Mat gr_want = wide ? transpose(gt) : gt;
    const Mat gr = from_buffer(grad_response.data() + f * shape.response_numel(), c_out, c_in);
    CHECK(close(gr, gr_want, tol));
    if (!close(gr, gr_want, tol) || !close(out, matmul(Q, Sp[f]), tol)) {
      std::printf("  cayley_frequency_product %lldx%lldx%lld f=%lld: |out| err %g, |grad_R| err "
                  "%g\n",
                  static_cast<long long>(c_out), static_cast<long long>(c_in),
                  static_cast<long long>(batch), static_cast<long long>(f),
                  max_abs_diff(out, matmul(Q, Sp[f])), max_abs_diff(gr, gr_want));
    }
    // The oracle's chain rule itself, by finite differences of L = Re sum conj(G) Q(R) S.
    const Mat D = random_mat(c_out, c_in, seed + 99, true, 1.0);
    const double fd = directional(
        [&](const Mat& r) { return pairing(G[f], matmul(conv_operator(r), Sp[f])); }, R[f], D);
    CHECK(std::fabs(fd - pairing(gr_want, D)) <= 1e-6 * (1 + std::fabs(fd)));
  }
}

// NaN in gives NaN out (docs/design.md §4): one NaN entry of W poisons all of Q and X, by
// either path (the NaN spreads through M's row and column and then through every sweep).
template <typename S>
void test_nan_propagates(int64_t m, int64_t n, int64_t row, int64_t col) {
  Mat W = random_mat(m, n, 77, k::IsComplex<S>::value, 0.5);
  W(row, col) = std::numeric_limits<double>::quiet_NaN();
  for (bool in_shared : {true, false}) {
    const auto [Q, X] = kernel_cayley<S>(W, in_shared);
    bool all_nan = true;
    for (const C& v : Q.v) all_nan = all_nan && std::isnan(v.real());
    for (const C& v : X.v) all_nan = all_nan && std::isnan(v.real());
    CHECK(all_nan);
  }
}

void test_complex_arithmetic() {
  using Z = Complex<double>;
  const Z a{1.5, -2.0}, b{-0.5, 3.0};
  const Z p = a * b;
  CHECK(p.re == 1.5 * -0.5 - (-2.0 * 3.0) && p.im == 1.5 * 3.0 + (-2.0 * -0.5));
  const Z r = k::reciprocal(a) * a;
  CHECK(std::fabs(r.re - 1) < 1e-15 && std::fabs(r.im) < 1e-15);
  CHECK(k::conj_value(a).im == 2.0 && k::scaled(a, 2.0).re == 3.0);
  CHECK(k::from_real<Z>(2.0).re == 2.0 && k::from_real<Z>(2.0).im == 0.0);
  static_assert(sizeof(Z) == 2 * sizeof(double) && alignof(Z) == 2 * sizeof(double),
                "the layout of c10::complex<double>");
  const k::RowCol rc = k::split_index(41, 8);
  CHECK(rc.i == 5 && rc.j == 1);
  CHECK(k::inverse_fits_shared(64, 8, 32768) && !k::inverse_fits_shared(65, 8, 32768));
}

}  // namespace

int main() {
  test_complex_arithmetic();
  // (m, n): a 1x1, a single column, square, tall, one pivot panel exactly, several panels with a
  // partial last one (of one column for n = 33), tall with n > kGemmTile so that the GEMMs tile
  // in every direction.
  const int64_t shapes[][2] = {{1, 1},   {2, 1},   {3, 3},   {7, 4}, {16, 16},
                               {21, 21}, {34, 33}, {45, 37}, {80, 34}};
  uint64_t seed = 1;
  for (const auto& s : shapes) {
    test_cayley<double>(s[0], s[1], seed++, 1e-10);
    test_cayley<Complex<double>>(s[0], s[1], seed++, 1e-10);
  }
  test_cayley<float>(40, 24, seed++, 2e-5);
  test_cayley<Complex<float>>(40, 24, seed++, 2e-5);
  test_nan_propagates<double>(30, 20, 25, 3);            // in V
  test_nan_propagates<Complex<float>>(30, 20, 17, 19);  // in U, the last pivot panel
  // (C_out, C_in, B): tall, wide, square, and wide with several GEMM tiles and pivot panels.
  const int64_t conv_shapes[][3] = {{5, 3, 4}, {3, 5, 2}, {20, 20, 7}, {19, 40, 35}};
  for (const auto& s : conv_shapes) {
    test_cayley_frequency_product<Complex<double>>(s[0], s[1], s[2], seed++, 1e-10);
  }
  test_cayley_frequency_product<Complex<float>>(24, 17, 9, seed++, 2e-5);
  return lipkernels_test::report("test_cayley");
}
