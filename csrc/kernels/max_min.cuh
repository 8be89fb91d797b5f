// Framework-free math of max_min, shared by the CPU (csrc/cpu/max_min.cpp) and CUDA
// (csrc/cuda/max_min.cu) kernels, and the channel-pair layout that householder shares.
//
// MaxMin (GroupSort with groups of two; Anil, Lucas & Grosse, ICML 2019; SOC's activation,
// Singla & Feizi, ICML 2021) maps every channel pair (a, b) to (max(a, b), min(a, b)):
//   forward:  keep = a >= b;  (first, second) = keep ? (a, b) : (b, a)
//   backward: the same permutation applied to the output gradient (a swap is its own transpose):
//             (grad_a, grad_b) = keep ? (g_first, g_second) : (g_second, g_first)
// so only `keep`, one bit per pair, is saved for the backward. A tie keeps the order: max's
// gradient goes to a and min's to b. NaN compares false, so its pair is swapped and the NaN
// stays in the output.
#pragma once

#include <cstdint>

#include "kernels/common.cuh"

namespace lipkernels {
namespace kernels {

// Which channels pair up: "halves" (SOC: channel i with i + C/2) or "pairs" (GroupSort(2):
// channel 2i with 2i + 1).
enum class Pairing { kHalves, kPairs };

// The channel pairs of a contiguous (B, C, *spatial) tensor, C = 2 * pairs, spatial = the product
// of the spatial sizes. Position s of pair p of sample n has its first channel's element at
// first(n, p) + s and its second channel's at first(n, p) + partner() + s. Per-pair tensors
// (B, C/2, *spatial), such as max_min's mask, hold it at pair_index(n, p) + s.
struct PairLayout {
  int64_t batch, pairs, spatial;
  Pairing pairing;

  LIPKERNELS_HOST_DEVICE int64_t pair_stride() const {
    return pairing == Pairing::kHalves ? spatial : 2 * spatial;
  }
  LIPKERNELS_HOST_DEVICE int64_t partner() const {
    return pairing == Pairing::kHalves ? pairs * spatial : spatial;
  }
  LIPKERNELS_HOST_DEVICE int64_t sample_stride() const { return 2 * pairs * spatial; }
  LIPKERNELS_HOST_DEVICE int64_t first(int64_t n, int64_t p) const {
    return n * sample_stride() + p * pair_stride();
  }
  LIPKERNELS_HOST_DEVICE int64_t pair_index(int64_t n, int64_t p) const {
    return (n * pairs + p) * spatial;
  }
};

// Whether max_min keeps the pair (a, b) in its order: a >= b, compared in any type.
template <typename T>
LIPKERNELS_HOST_DEVICE inline bool keeps_order(T a, T b) {
  return a >= b;
}

// The two values of a channel pair. Returned by value (not written through references) so that
// the CPU loops if-convert the data-dependent choices into vector blends.
template <typename T>
struct Pair {
  T first, second;
};

// The pair permutation of max_min: (u, v) if `keep`, else (v, u). The forward applies it to
// (a, b), the backward to (g_first, g_second).
template <typename T>
LIPKERNELS_HOST_DEVICE inline Pair<T> permute_pair(bool keep, T u, T v) {
  return {keep ? u : v, keep ? v : u};
}

}  // namespace kernels
}  // namespace lipkernels
