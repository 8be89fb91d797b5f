// Unit tests of kernels/max_min.cuh: the channel-pair layout against explicit channel indexing
// for both pairings, and the MaxMin pair permutation (ties keep the order, NaN stays, the
// backward routing is the forward permutation).
#include <cmath>
#include <cstdint>
#include <limits>

#include "check.h"
#include "kernels/max_min.cuh"

namespace k = lipkernels::kernels;

namespace {

// Offset of element (n, c, s) of a contiguous (B, C, S) tensor.
int64_t offset(int64_t channels, int64_t spatial, int64_t n, int64_t c, int64_t s) {
  return (n * channels + c) * spatial + s;
}

void test_layout(k::Pairing pairing) {
  const int64_t batch = 3, pairs = 4, spatial = 5, channels = 2 * pairs;
  const k::PairLayout layout{batch, pairs, spatial, pairing};
  for (int64_t n = 0; n < batch; ++n) {
    for (int64_t p = 0; p < pairs; ++p) {
      // halves: (p, p + P); pairs: (2p, 2p + 1).
      const int64_t c_a = pairing == k::Pairing::kHalves ? p : 2 * p;
      const int64_t c_b = pairing == k::Pairing::kHalves ? p + pairs : 2 * p + 1;
      for (int64_t s = 0; s < spatial; ++s) {
        CHECK(layout.first(n, p) + s == offset(channels, spatial, n, c_a, s));
        CHECK(layout.first(n, p) + layout.partner() + s == offset(channels, spatial, n, c_b, s));
        CHECK(layout.pair_index(n, p) + s == offset(pairs, spatial, n, p, s));
      }
    }
  }
}

template <typename T>
void test_permutation() {
  const T nan = std::numeric_limits<T>::quiet_NaN();
  CHECK(k::keeps_order(T(2), T(1)));
  CHECK(!k::keeps_order(T(1), T(2)));
  CHECK(k::keeps_order(T(1), T(1)));  // a tie keeps the order: max's gradient goes to a
  CHECK(!k::keeps_order(nan, T(1)) && !k::keeps_order(T(1), nan));

  k::Pair<T> out = k::permute_pair(k::keeps_order(T(-3), T(4)), T(-3), T(4));
  CHECK(out.first == T(4) && out.second == T(-3));
  out = k::permute_pair(k::keeps_order(T(4), T(-3)), T(4), T(-3));
  CHECK(out.first == T(4) && out.second == T(-3));
  // A NaN swaps its pair and stays in the output.
  out = k::permute_pair(k::keeps_order(nan, T(1)), nan, T(1));
  CHECK(out.first == T(1) && std::isnan(out.second));
  // The backward applies the forward's permutation to the output gradient: a swapped pair
  // sends g_first (max's gradient) back to b, where the max came from.
  out = k::permute_pair(/*keep=*/false, T(10), T(20));
  CHECK(out.first == T(20) && out.second == T(10));
}

}  // namespace

int main() {
  test_layout(k::Pairing::kHalves);
  test_layout(k::Pairing::kPairs);
  test_permutation<float>();
  test_permutation<double>();
  return lipkernels_test::report("test_max_min");
}
