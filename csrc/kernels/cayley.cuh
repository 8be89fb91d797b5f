// The framework-free body of the CUDA cayley and cayley_frequency_product kernels
// (csrc/cuda/cayley.cu): the complex arithmetic, strided matrix views, the block-wide tiled GEMM,
// the blocked Gauss-Jordan inverse without pivoting, and the per-matrix schedules of both ops in
// both directions.
//
// Math (Trockman & Kolter, "Orthogonalizing Convolutional Layers with the Cayley Transform",
// ICLR 2021; lipkernels/reference/cayley.py): for a tall W (m x n, m >= n), real or complex,
//   U = W[:n], V = W[n:],  A = U - U^H + V^H V,  M = I + A,  X = M^{-1},
//   Q = [ 2X - I ; -2 V X ]                       (= [ M^{-1}(I - A) ; -2 V M^{-1} ]).
// Backward (PyTorch's convention for complex gradients, dL = Re tr(G^H dQ)), with G = [G_top ;
// G_bot]:
//   G_A = 2 X^H (V^H G_bot - G_top) X^H,
//   grad_W = [ G_A - G_A^H ; V (G_A + G_A^H) - 2 G_bot X^H ].
// cayley_frequency_product applies this per frequency f to the response R_f (C_out x C_in) in its
// tall orientation T_f = R_f or R_f^T (plain transpose when C_out < C_in), with P_f = cayley(T_f),
// Q_f = P_f or P_f^T, output_f = Q_f S_f, never forming Q: through the solved spectrum W,
//   tall   W = X S,                          output = [2W - S ; -2 V W]
//   wide   W = X^T (S_top - V^T S_bot),      output = 2W - S_top,
// and its backward factors the cayley backward of the rank-B grad_Q = G S^H through W and
//   tall   p = X^H (G_top - V^H G_bot),      grad_S = 2p - G_top
//   wide   p = conj(X) G,                    grad_S = [2p - G ; -2 conj(V) p],
// with K = p W^H, D = 2 (K^H - K), E = -2 (K + K^H):
//   tall   grad_R = [D ; V E - 2 G_bot W^H],   wide   grad_R = [D , E V^T - 2 p S_bot^H]
// (csrc/cpu/cayley_conv2d.cpp derives it): no n x n x n product in the backward.
//
// Why everything here is written SIMT-style against a `Block` (thread id, thread count, barrier):
// the kernel body is exactly these functions, so tests/cpp/test_cayley.cpp runs them on the CPU
// with one std::thread per CUDA thread and a real barrier, and checks the schedules, the index
// maps, the tiling and the placement of every barrier without a GPU. A Block provides
//   int tid() const;  int threads() const;  void sync() const;   (threads() == kCayleyThreads)
//
// Why no pivoting: M's Hermitian part is H = I + V^H V >= I, and every Schur complement of M
// keeps a Hermitian part >= the matching Schur complement of H, itself >= I. So each (block)
// pivot of Gauss-Jordan is invertible with |pivot| >= Re(pivot) >= 1, and elimination needs no
// row exchanges (Golub & Van Loan, section 4.2: LU of a matrix with positive definite Hermitian
// part; the growth is bounded in terms of the skew part U - U^H relative to H).
//
// Why an explicit inverse rather than a solve: the backward needs X = M^{-1} itself (it is the
// op's second output), and Q = [2X - I ; -2 V X] then costs only products.
#pragma once

#include <cstdint>
#include <type_traits>

#include "kernels/common.cuh"

#if defined(__CUDA_ARCH__)
#define LIPKERNELS_UNROLL _Pragma("unroll")
#else
#define LIPKERNELS_UNROLL
#endif

namespace lipkernels {
namespace kernels {

// ---- Scalars ---------------------------------------------------------------------------------
// The kernels compute in the input's own type (float, double, Complex<float>, Complex<double>):
// every supported dtype is an IEEE type whose precision is the accumulation precision asked for.

// A complex number with the layout of c10::complex<T> and std::complex<T> (the CUDA wrapper
// reinterprets tensor data as this type). An aggregate, so that it may live in __shared__ memory.
template <typename T>
struct alignas(2 * sizeof(T)) Complex {
  T re, im;
};

template <typename S>
struct IsComplex : std::false_type {};
template <typename T>
struct IsComplex<Complex<T>> : std::true_type {};

template <typename T>
LIPKERNELS_HOST_DEVICE inline Complex<T> operator+(Complex<T> a, Complex<T> b) {
  return {a.re + b.re, a.im + b.im};
}
template <typename T>
LIPKERNELS_HOST_DEVICE inline Complex<T> operator-(Complex<T> a, Complex<T> b) {
  return {a.re - b.re, a.im - b.im};
}
template <typename T>
LIPKERNELS_HOST_DEVICE inline Complex<T> operator-(Complex<T> a) {
  return {-a.re, -a.im};
}
template <typename T>
LIPKERNELS_HOST_DEVICE inline Complex<T> operator*(Complex<T> a, Complex<T> b) {
  return {a.re * b.re - a.im * b.im, a.re * b.im + a.im * b.re};
}
template <typename T>
LIPKERNELS_HOST_DEVICE inline Complex<T>& operator+=(Complex<T>& a, Complex<T> b) {
  a = a + b;
  return a;
}
template <typename T>
LIPKERNELS_HOST_DEVICE inline Complex<T>& operator-=(Complex<T>& a, Complex<T> b) {
  a = a - b;
  return a;
}

LIPKERNELS_HOST_DEVICE inline float conj_value(float v) { return v; }
LIPKERNELS_HOST_DEVICE inline double conj_value(double v) { return v; }
template <typename T>
LIPKERNELS_HOST_DEVICE inline Complex<T> conj_value(Complex<T> z) {
  return {z.re, -z.im};
}

// The scalar of real value v.
template <typename S>
LIPKERNELS_HOST_DEVICE inline S from_real(double v) {
  if constexpr (IsComplex<S>::value) {
    return {static_cast<decltype(S{}.re)>(v), 0};
  } else {
    return static_cast<S>(v);
  }
}

// v times the real number r, without the full complex product.
template <typename S>
LIPKERNELS_HOST_DEVICE inline S scaled(S v, double r) {
  if constexpr (IsComplex<S>::value) {
    using T = decltype(S{}.re);
    return {static_cast<T>(r) * v.re, static_cast<T>(r) * v.im};
  } else {
    return static_cast<S>(r) * v;
  }
}

// 1 / v. Pivots have real part >= 1 (see the top of this file), so the plain formula
// conj(z) / |z|^2 neither overflows nor loses accuracy; NaN pivots give NaN.
template <typename S>
LIPKERNELS_HOST_DEVICE inline S reciprocal(S v) {
  if constexpr (IsComplex<S>::value) {
    using T = decltype(S{}.re);
    const T inv = T(1) / (v.re * v.re + v.im * v.im);
    return {v.re * inv, -v.im * inv};
  } else {
    return S(1) / v;
  }
}

// ---- Matrix views ------------------------------------------------------------------------------

// Element (i, j) of a matrix at data[i * rs + j * cs], conjugated on read when `conj`: a
// transpose or conjugate transpose is a view, never a copy.
template <typename S>
struct View {
  const S* data;
  int64_t rs, cs;
  bool conj;

  LIPKERNELS_HOST_DEVICE S operator()(int64_t i, int64_t j) const {
    const S v = data[i * rs + j * cs];
    return conj ? conj_value(v) : v;
  }
  LIPKERNELS_HOST_DEVICE View t() const { return {data, cs, rs, conj}; }
  LIPKERNELS_HOST_DEVICE View h() const { return {data, cs, rs, !conj}; }
  // The submatrix whose (0, 0) is (i, j).
  LIPKERNELS_HOST_DEVICE View at(int64_t i, int64_t j) const {
    return {data + i * rs + j * cs, rs, cs, conj};
  }
};

// A writable strided matrix (a plain transpose is a view here too).
template <typename S>
struct Out {
  S* data;
  int64_t rs, cs;

  LIPKERNELS_HOST_DEVICE S& operator()(int64_t i, int64_t j) const {
    return data[i * rs + j * cs];
  }
  LIPKERNELS_HOST_DEVICE Out t() const { return {data, cs, rs}; }
  LIPKERNELS_HOST_DEVICE Out at(int64_t i, int64_t j) const {
    return {data + i * rs + j * cs, rs, cs};
  }
  LIPKERNELS_HOST_DEVICE View<S> view() const { return {data, rs, cs, false}; }
};

// A row-major rows x cols matrix.
template <typename S>
LIPKERNELS_HOST_DEVICE inline Out<S> row_major(S* data, int64_t cols) {
  return {data, cols, 1};
}
template <typename S>
LIPKERNELS_HOST_DEVICE inline View<S> row_major(const S* data, int64_t cols) {
  return {data, cols, 1, false};
}

// ---- Block geometry ----------------------------------------------------------------------------

// Threads per block: the GEMM tile maps exactly onto them.
constexpr int kCayleyThreads = 256;
// GEMM tile: kGemmTile x kGemmTile outputs; thread t owns column t % kGemmTile and the
// kGemmRowsPerThread rows from (t / kGemmTile) * kGemmRowsPerThread. K is staged kGemmK at a time.
constexpr int kGemmTile = 32;
constexpr int kGemmK = 16;
constexpr int kGemmRowsPerThread = 4;
static_assert(kGemmTile * kGemmTile == kCayleyThreads * kGemmRowsPerThread,
              "one GEMM tile per block");
// Gauss-Jordan pivot panel width: the matrix is swept kPanel columns at a time, so that each
// sweep of the n x n trailing matrix (one read and one write of global or shared memory) carries
// kPanel rank-1 updates instead of one.
constexpr int kPanel = 16;
static_assert(kPanel <= kGemmK, "the trailing update of a panel is one GEMM K chunk");
// Shared scratch (elements) the block needs besides an optional in-shared matrix: the GEMM's two
// tiles, or the two pivot-block buffers of the inverse (never live at the same time).
// Tile rows are padded by one element so that staging a transposed operand (which walks a tile
// column) does not hit one shared-memory bank with every thread.
constexpr int kGemmAStride = kGemmK + 1;     // a_tile[row][k]
constexpr int kGemmBStride = kGemmTile + 1;  // b_tile[k][col]
constexpr int kGemmShared = kGemmTile * kGemmAStride + kGemmK * kGemmBStride;
constexpr int kPanelShared = 2 * kPanel * kPanel;
constexpr int kCayleyScratch = kGemmShared > kPanelShared ? kGemmShared : kPanelShared;

// (row, column) of element e of a row-major matrix with `cols` columns. In 32 bits: the host
// keeps every per-block matrix below 2^31 elements, and a 64-bit division costs several times as
// much on the GPU, where this runs once per element of every sweep.
struct RowCol {
  int64_t i, j;
};
LIPKERNELS_HOST_DEVICE inline RowCol split_index(int64_t e, int64_t cols) {
  const uint32_t ue = static_cast<uint32_t>(e), uc = static_cast<uint32_t>(cols);
  return {static_cast<int64_t>(ue / uc), static_cast<int64_t>(ue % uc)};
}

// ---- Block-wide GEMM -------------------------------------------------------------------------

// For each (i, j) of the rows x cols product A B (A rows x inner, B inner x cols), calls
// epilogue(i, j, sum_k A(i, k) B(k, j)) from exactly one thread; the epilogue writes the result
// wherever it belongs. The thread that gets (i, j) depends only on (i, j, rows, cols), so two
// GEMMs of one shape hand each element to the same thread. `scratch` holds kGemmShared elements.
// Ends without a barrier: the caller syncs before anything reads what the epilogue wrote. The
// outputs must not alias A or B (a later tile would read overwritten inputs).
template <typename S, typename Block, typename Epilogue>
LIPKERNELS_HOST_DEVICE void block_gemm(const Block& block, int64_t rows, int64_t cols,
                                       int64_t inner, View<S> A, View<S> B, Epilogue&& epilogue,
                                       S* scratch) {
  S* a_tile = scratch;                               // [kGemmTile][kGemmAStride]
  S* b_tile = scratch + kGemmTile * kGemmAStride;    // [kGemmK][kGemmBStride]
  const int tid = block.tid();
  const int lane = tid % kGemmTile;
  const int first_row = tid / kGemmTile * kGemmRowsPerThread;
  // Staging walks each operand along its unit stride, so that consecutive threads read
  // consecutive addresses (coalesced) for row-major operands and for transposed views alike.
  const bool a_by_row = A.rs == 1 && A.cs != 1;  // A^T is row-major: walk down A's columns
  const bool b_by_k = B.rs == 1 && B.cs != 1;    // B^T is row-major: walk down B's columns
  const int64_t col_tiles = ceil_div(cols, kGemmTile);
  const int64_t tiles = ceil_div(rows, kGemmTile) * col_tiles;
  for (int64_t tile = 0; tile < tiles; ++tile) {
    const int64_t i0 = tile / col_tiles * kGemmTile, j0 = tile % col_tiles * kGemmTile;
    S acc[kGemmRowsPerThread] = {};
    for (int64_t k0 = 0; k0 < inner; k0 += kGemmK) {
      // Both tiles have kGemmTile * kGemmK elements.
      for (int e = tid; e < kGemmTile * kGemmK; e += block.threads()) {
        const int ar = a_by_row ? e % kGemmTile : e / kGemmK;
        const int ak = a_by_row ? e / kGemmTile : e % kGemmK;
        a_tile[ar * kGemmAStride + ak] =
            i0 + ar < rows && k0 + ak < inner ? A(i0 + ar, k0 + ak) : S{};
        const int bk = b_by_k ? e % kGemmK : e / kGemmTile;
        const int bc = b_by_k ? e / kGemmK : e % kGemmTile;
        b_tile[bk * kGemmBStride + bc] =
            k0 + bk < inner && j0 + bc < cols ? B(k0 + bk, j0 + bc) : S{};
      }
      block.sync();
      LIPKERNELS_UNROLL
      for (int k = 0; k < kGemmK; ++k) {
        const S b = b_tile[k * kGemmBStride + lane];
        LIPKERNELS_UNROLL
        for (int r = 0; r < kGemmRowsPerThread; ++r) {
          acc[r] += a_tile[(first_row + r) * kGemmAStride + k] * b;  // a warp-wide broadcast
        }
      }
      block.sync();  // before the next chunk overwrites the tiles
    }
    const int64_t j = j0 + lane;
    for (int r = 0; r < kGemmRowsPerThread; ++r) {
      const int64_t i = i0 + first_row + r;
      if (i < rows && j < cols) {
        epilogue(i, j, acc[r]);
      }
    }
  }
}

// Calls f(e) for e < count, spread over the block. Ends without a barrier.
template <typename Block, typename F>
LIPKERNELS_HOST_DEVICE void block_for_each(const Block& block, int64_t count, F&& f) {
  for (int64_t e = block.tid(); e < count; e += block.threads()) {
    f(e);
  }
}

// ---- Gauss-Jordan inverse without pivoting -------------------------------------------------

// Inverts the n x n matrix a (row-major, leading dimension n, in shared or global memory) in
// place by blocked Gauss-Jordan sweeps. Sweeping the pivot block K (rows and columns
// [k0, k0 + kb)) maps
//   [ a_KK  a_KJ ]      [  P         P a_KJ              ]
//   [ a_IK  a_IJ ]  to  [ -a_IK P    a_IJ - a_IK P a_KJ ],    P = a_KK^{-1},
// and sweeping every block in turn leaves a^{-1} (the scalar case is the textbook in-place
// Gauss-Jordan inverse). Four barrier-separated phases per block:
//   1. P = a_KK^{-1} by scalar sweeps in shared memory (double-buffered, one barrier a step);
//   2. a_KJ <- P a_KJ and a_KK <- P, one thread per column;
//   3. a_IJ <- a_IJ - a_IK a_KJ (a_KJ already holds P a_KJ; a_IK is not yet changed), a tiled
//      block GEMM with inner dimension kb;
//   4. a_IK <- -a_IK P, one thread per row (P read back from a_KK).
// Each phase writes only elements that no other thread reads in that phase, so in-place is
// race-free. `scratch` holds kCayleyScratch elements. Ends with a barrier.
template <typename S, typename Block>
LIPKERNELS_HOST_DEVICE void invert_no_pivot(const Block& block, S* a, int64_t n, S* scratch) {
  S* piv[2] = {scratch, scratch + kPanel * kPanel};  // [kPanel][kPanel], leading dim kPanel
  for (int64_t k0 = 0; k0 < n; k0 += kPanel) {
    const int kb = static_cast<int>(n - k0 < kPanel ? n - k0 : kPanel);
    // Phase 1: the pivot block's inverse.
    block_for_each(block, kb * kb, [&](int64_t e) {
      const int64_t r = e / kb, c = e % kb;
      piv[0][r * kPanel + c] = a[(k0 + r) * n + k0 + c];
    });
    block.sync();
    for (int t = 0; t < kb; ++t) {
      const S* old = piv[t % 2];
      S* now = piv[(t + 1) % 2];
      block_for_each(block, kb * kb, [&](int64_t e) {
        const int r = static_cast<int>(e / kb), c = static_cast<int>(e % kb);
        const S p = reciprocal(old[t * kPanel + t]);
        S v;
        if (r == t) {
          v = c == t ? p : old[t * kPanel + c] * p;
        } else if (c == t) {
          v = -(old[r * kPanel + t] * p);
        } else {
          v = old[r * kPanel + c] - old[r * kPanel + t] * p * old[t * kPanel + c];
        }
        now[r * kPanel + c] = v;
      });
      block.sync();
    }
    const S* inv = piv[kb % 2];
    // Phase 2: the pivot rows, and the pivot block itself.
    block_for_each(block, n, [&](int64_t j) {
      if (j >= k0 && j < k0 + kb) {
        for (int r = 0; r < kb; ++r) {
          a[(k0 + r) * n + j] = inv[r * kPanel + (j - k0)];
        }
        return;
      }
      // Not unrolled: these O(n kb^2) phases are cheap, and unrolling them raised the
      // register count of the whole kernel (column[] then lives in L1-cached local memory).
      S column[kPanel];
      for (int s = 0; s < kb; ++s) {
        column[s] = a[(k0 + s) * n + j];
      }
      for (int r = 0; r < kb; ++r) {
        S sum{};
        for (int s = 0; s < kb; ++s) {
          sum += inv[r * kPanel + s] * column[s];
        }
        a[(k0 + r) * n + j] = sum;
      }
    });
    block.sync();
    // Phase 3: the rank-kb update of everything outside the pivot rows and columns, as a tiled
    // GEMM of the n x kb pivot columns by the kb x n pivot rows (one K chunk, as kb <= kGemmK):
    // each staged pivot element then serves a whole tile instead of being reloaded per element.
    // The inputs are never written here (the epilogue skips the pivot rows and columns), so the
    // in-place update does not alias them. The tiles overwrite the pivot-block buffers, which is
    // why phase 4 reads P from a_KK.
    block_gemm(block, n, n, kb, View<S>{a + k0, n, 1, false}, View<S>{a + k0 * n, n, 1, false},
               [&](int64_t i, int64_t j, S update) {
                 if ((i < k0 || i >= k0 + kb) && (j < k0 || j >= k0 + kb)) {
                   a[i * n + j] -= update;
                 }
               },
               scratch);
    block.sync();
    // Phase 4: the pivot columns.
    block_for_each(block, n, [&](int64_t i) {
      if (i >= k0 && i < k0 + kb) {
        return;
      }
      S row[kPanel];
      for (int s = 0; s < kb; ++s) {
        row[s] = a[i * n + k0 + s];
      }
      for (int c = 0; c < kb; ++c) {
        S sum{};
        for (int s = 0; s < kb; ++s) {
          sum += row[s] * a[(k0 + s) * n + k0 + c];
        }
        a[i * n + k0 + c] = -sum;
      }
    });
    block.sync();
  }
}

// ---- Per-matrix schedules --------------------------------------------------------------------

// Where the matrix being inverted lives: in shared memory when n^2 elements fit in the dynamic
// shared memory the kernel is launched with (then copied to X at the end), else in X itself
// (global memory; its sweeps then go through L2). Decided per launch by the host.
LIPKERNELS_HOST_DEVICE inline bool inverse_fits_shared(int64_t n, int64_t element_bytes,
                                                       int64_t shared_budget_bytes) {
  return n * n * element_bytes <= shared_budget_bytes;
}

// X = (I + A)^{-1} of one tall matrix W (m x n), formed in `work`: `x` itself or n * n elements
// of shared memory (then left there; the caller copies it to X). Ends with a barrier.
template <typename S, typename Block>
LIPKERNELS_HOST_DEVICE void cayley_inverse_matrix(const Block& block, int64_t m, int64_t n,
                                                  View<S> W, S* work, S* scratch) {
  const int64_t k = m - n;
  const View<S> V = W.at(n, 0);
  // M = I + U - U^H + V^H V, into work.
  block_gemm(block, n, n, k, V.h(), V,
             [&](int64_t i, int64_t j, S vv) {
               S v = vv + W(i, j) - conj_value(W(j, i));
               if (i == j) v += from_real<S>(1.0);
               work[i * n + j] = v;
             },
             scratch);
  block.sync();
  invert_no_pivot(block, work, n, scratch);
}

// Forward of one tall matrix W (m x n): writes X = (I + A)^{-1} (row-major n x n at `x`) and
// P = [2X - I ; -2 V X] through `q`. `work` as in cayley_inverse_matrix. Ends with a barrier.
template <typename S, typename Block>
LIPKERNELS_HOST_DEVICE void cayley_forward_matrix(const Block& block, int64_t m, int64_t n,
                                                  View<S> W, S* x, Out<S> q, S* work,
                                                  S* scratch) {
  const int64_t k = m - n;
  const View<S> V = W.at(n, 0);
  cayley_inverse_matrix(block, m, n, W, work, scratch);
  // Q_top = 2X - I (and X itself, when the inverse was formed in shared memory).
  block_for_each(block, n * n, [&](int64_t e) {
    const auto [i, j] = split_index(e, n);
    const S v = work[e];
    if (work != x) x[e] = v;
    q(i, j) = scaled(v, 2.0) - (i == j ? from_real<S>(1.0) : S{});
  });
  // Q_bot = -2 V X.
  block_gemm(block, k, n, n, V, row_major(static_cast<const S*>(work), n),
             [&](int64_t i, int64_t j, S vx) { q(n + i, j) = scaled(vx, -2.0); }, scratch);
  block.sync();
}

// Backward of one tall matrix: grad_W (through `grad`) from the output gradient G (m x n), the
// forward's X (n x n) and W. ws1 and ws2 are n * n elements each (global or shared), and must not
// alias anything else. Ends with a barrier.
template <typename S, typename Block>
LIPKERNELS_HOST_DEVICE void cayley_backward_matrix(const Block& block, int64_t m, int64_t n,
                                                   View<S> G, View<S> X, View<S> W, Out<S> grad,
                                                   S* ws1, S* ws2, S* scratch) {
  const int64_t k = m - n;
  const View<S> V = W.at(n, 0), G_bot = G.at(n, 0);
  const View<S> R1 = row_major(static_cast<const S*>(ws1), n);
  const View<S> R2 = row_major(static_cast<const S*>(ws2), n);
  // ws1 = V^H G_bot - G_top.
  block_gemm(block, n, n, k, V.h(), G_bot,
             [&](int64_t i, int64_t j, S v) { ws1[i * n + j] = v - G(i, j); }, scratch);
  block.sync();
  // ws2 = ws1 X^H.
  block_gemm(block, n, n, n, R1, X.h(), [&](int64_t i, int64_t j, S v) { ws2[i * n + j] = v; },
             scratch);
  block.sync();
  // ws1 = G_A = 2 X^H ws2.
  block_gemm(block, n, n, n, X.h(), R2,
             [&](int64_t i, int64_t j, S v) { ws1[i * n + j] = scaled(v, 2.0); }, scratch);
  block.sync();
  // grad_U = G_A - G_A^H; ws2 = G_A + G_A^H.
  block_for_each(block, n * n, [&](int64_t e) {
    const auto [i, j] = split_index(e, n);
    const S a = ws1[e], b = conj_value(ws1[j * n + i]);
    grad(i, j) = a - b;
    ws2[e] = a + b;
  });
  block.sync();
  // grad_V = V ws2 - 2 G_bot X^H, as two GEMMs of one shape (so the second one's thread for
  // (i, j) is the one that wrote it in the first).
  block_gemm(block, k, n, n, V, R2, [&](int64_t i, int64_t j, S v) { grad(n + i, j) = v; },
             scratch);
  block.sync();
  block_gemm(block, k, n, n, G_bot, X.h(),
             [&](int64_t i, int64_t j, S v) { grad(n + i, j) += scaled(v, -2.0); }, scratch);
  block.sync();
}

// ---- cayley_frequency_product, per frequency ----------------------------------------------

// The shapes of one frequency: response R (c_out x c_in), spectrum S (c_in x batch), and the
// tall orientation T (m x n) of R.
struct FrequencyShape {
  int64_t c_out, c_in, batch;

  LIPKERNELS_HOST_DEVICE bool wide() const { return c_out < c_in; }
  LIPKERNELS_HOST_DEVICE int64_t m() const { return wide() ? c_in : c_out; }
  LIPKERNELS_HOST_DEVICE int64_t n() const { return wide() ? c_out : c_in; }
  LIPKERNELS_HOST_DEVICE int64_t response_numel() const { return c_out * c_in; }
  LIPKERNELS_HOST_DEVICE int64_t spectrum_numel() const { return c_in * batch; }
  LIPKERNELS_HOST_DEVICE int64_t output_numel() const { return c_out * batch; }
  // The solved spectrum W, and the backward's p (a global workspace per block): n x batch.
  LIPKERNELS_HOST_DEVICE int64_t solved_numel() const { return n() * batch; }
  // The backward's E (n x n; global, or shared memory when it fits).
  LIPKERNELS_HOST_DEVICE int64_t backward_matrices() const { return n() * n(); }
  // A row-major c_out x c_in matrix (R, or its gradient) seen in the tall orientation: itself or
  // its plain transpose.
  template <typename M>
  LIPKERNELS_HOST_DEVICE M tall(M response_like) const {
    return wide() ? response_like.t() : response_like;
  }
};

// The two forms in which the per-frequency kernels apply Q or Q^H to an operand S without
// forming it, with X' (n x n) and V' standing for X, V or their transposes or conjugates (views):
//   tall form  out (m x batch) = [2Y - S ; -2 V' Y],   Y = X' S           (S n x batch)
//   wide form  out (n x batch) = 2Y - S_top,           Y = X' (S_top - V' S_bot)   (S m x batch)
// Y (n x batch, row-major) goes to `y`; the wide form keeps S_top - V' S_bot in `out` until Y
// has read it. Both end with a barrier.
template <typename S, typename Block>
LIPKERNELS_HOST_DEVICE void apply_tall_form(const Block& block, int64_t n, int64_t k,
                                            int64_t batch, View<S> X, View<S> V, View<S> Sp,
                                            S* out, S* y, S* scratch) {
  block_gemm(block, n, batch, n, X, Sp,
             [&](int64_t i, int64_t j, S v) {
               y[i * batch + j] = v;
               out[i * batch + j] = scaled(v, 2.0) - Sp(i, j);
             },
             scratch);
  block.sync();
  block_gemm(block, k, batch, n, V, row_major(static_cast<const S*>(y), batch),
             [&](int64_t i, int64_t j, S v) { out[(n + i) * batch + j] = scaled(v, -2.0); },
             scratch);
  block.sync();
}

template <typename S, typename Block>
LIPKERNELS_HOST_DEVICE void apply_wide_form(const Block& block, int64_t n, int64_t k,
                                            int64_t batch, View<S> X, View<S> V, View<S> Sp,
                                            S* out, S* y, S* scratch) {
  block_gemm(block, n, batch, k, V, Sp.at(n, 0),
             [&](int64_t i, int64_t j, S v) { out[i * batch + j] = Sp(i, j) - v; }, scratch);
  block.sync();
  block_gemm(block, n, batch, n, X, row_major(static_cast<const S*>(out), batch),
             [&](int64_t i, int64_t j, S v) { y[i * batch + j] = v; }, scratch);
  block.sync();
  block_for_each(block, n * batch, [&](int64_t e) {
    const auto [i, j] = split_index(e, batch);
    out[e] = scaled(y[e], 2.0) - Sp(i, j);
  });
  block.sync();
}

// A view read conjugated.
template <typename S>
LIPKERNELS_HOST_DEVICE View<S> conjugated(View<S> v) {
  v.conj = !v.conj;
  return v;
}

// Forward of one frequency: output (c_out x batch, row-major) = Q S, X (n x n) into `x` and the
// solved spectrum W (n x batch) into `solved`: the tall form with (X, V), or for a wide
// response (Q = P^T) the wide form with (X^T, V^T). `work` as in cayley_inverse_matrix. Ends
// with a barrier.
template <typename S, typename Block>
LIPKERNELS_HOST_DEVICE void cayley_frequency_product_forward_frequency(
    const Block& block, const FrequencyShape& shape, const S* response, const S* spectrum,
    S* output, S* x, S* solved, S* work, S* scratch) {
  const int64_t m = shape.m(), n = shape.n(), k = m - n, batch = shape.batch;
  const View<S> T = shape.tall(row_major(response, shape.c_in));
  const View<S> V = T.at(n, 0), Sp = row_major(spectrum, batch);
  cayley_inverse_matrix(block, m, n, T, work, scratch);
  if (work != x) {
    block_for_each(block, n * n, [&](int64_t e) { x[e] = work[e]; });
  }
  const View<S> X = row_major(static_cast<const S*>(work), n);
  if (shape.wide()) {
    apply_wide_form(block, n, k, batch, X.t(), V.t(), Sp, output, solved, scratch);
  } else {
    apply_tall_form(block, n, k, batch, X, V, Sp, output, solved, scratch);
  }
}

// Backward of one frequency: grad_response (c_out x c_in) and grad_spectrum (c_in x batch),
// row-major, from grad_output G (c_out x batch) and the forward's X and W. grad_S = Q^H G is the
// wide form with (X^H, V^H) for a tall response, the tall form with (conj X, conj V) for a wide
// one, their Y being p. `p_work` holds shape.solved_numel() elements, `e_work`
// shape.backward_matrices() (global or shared). Ends with a barrier.
template <typename S, typename Block>
LIPKERNELS_HOST_DEVICE void cayley_frequency_product_backward_frequency(
    const Block& block, const FrequencyShape& shape, const S* grad_output, const S* response,
    const S* spectrum, const S* x, const S* solved, S* grad_response, S* grad_spectrum,
    S* p_work, S* e_work, S* scratch) {
  const int64_t m = shape.m(), n = shape.n(), k = m - n, batch = shape.batch;
  const View<S> T = shape.tall(row_major(response, shape.c_in));
  const View<S> V = T.at(n, 0), X = row_major(x, n), G = row_major(grad_output, batch);
  const View<S> W = row_major(solved, batch), P = row_major(static_cast<const S*>(p_work), batch);
  const View<S> E = row_major(static_cast<const S*>(e_work), n);
  const Out<S> grad_R = row_major(grad_response, shape.c_in);
  if (shape.wide()) {
    apply_tall_form(block, n, k, batch, conjugated(X), conjugated(V), G, grad_spectrum, p_work,
                    scratch);
  } else {
    apply_wide_form(block, n, k, batch, X.h(), V.h(), G, grad_spectrum, p_work, scratch);
  }
  // K = p W^H into e_work; then D = 2 (K^H - K) into grad_R's n x n block and
  // E = -2 (K + K^H) over K in place, a thread per pair (i, j), (j, i) (it reads both before
  // writing either, so no other thread touches them).
  block_gemm(block, n, n, batch, P, W.h(),
             [&](int64_t i, int64_t j, S v) { e_work[i * n + j] = v; }, scratch);
  block.sync();
  block_for_each(block, n * n, [&](int64_t e) {
    const auto [i, j] = split_index(e, n);
    if (i > j) return;
    const S k_ij = e_work[i * n + j], k_ji = e_work[j * n + i];
    const S d = scaled(conj_value(k_ji) - k_ij, 2.0);
    const S h = scaled(k_ij + conj_value(k_ji), -2.0);
    grad_R(i, j) = d;
    grad_R(j, i) = -conj_value(d);
    e_work[i * n + j] = h;
    e_work[j * n + i] = conj_value(h);
  });
  block.sync();
  if (!shape.wide()) {
    // grad_R[n:] = V E - 2 G_bot W^H.
    block_gemm(block, k, n, n, V, E, [&](int64_t i, int64_t j, S v) { grad_R(n + i, j) = v; },
               scratch);
    block_gemm(block, k, n, batch, G.at(n, 0), W.h(),
               [&](int64_t i, int64_t j, S v) { grad_R(n + i, j) -= scaled(v, 2.0); }, scratch);
  } else {
    // grad_R[:, n:] = E V^T - 2 p S_bot^H.
    const View<S> S_bot = row_major(spectrum, batch).at(n, 0);
    block_gemm(block, n, k, n, E, V.t(), [&](int64_t i, int64_t j, S v) { grad_R(i, n + j) = v; },
               scratch);
    block_gemm(block, n, k, batch, P, S_bot.h(),
               [&](int64_t i, int64_t j, S v) { grad_R(i, n + j) -= scaled(v, 2.0); }, scratch);
  }
  block.sync();
}

}  // namespace kernels
}  // namespace lipkernels
