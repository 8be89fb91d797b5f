// The CPU work split of the channel-pair activations, shared by max_min and householder.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "cpu/parallel.h"
#include "kernels/max_min.cuh"

namespace lipkernels {
namespace cpu {

// A run of `length` pair elements of one sample, starting at pair `pair`: element s of the run
// has its first channel at `first + s` of the (B, C, *spatial) tensors, its second channel at
// `second + s`, and its entry of a per-pair (B, C/2, *spatial) tensor at `pair_entry + s`.
struct PairRow {
  int64_t row_chunk, pair, first, second, pair_entry, length;
};

// The (sample, pair) rows of a PairLayout cut into tiles of about kMinTaskElements elements:
// a block of pairs of a block of samples. Each row is `spatial` contiguous elements per channel.
// The tiles depend on the shape only, never on the thread count, so that per-tile partial sums
// (householder's grad_theta, one per row chunk and pair) and hence results do not either.
struct PairTileGrid {
  int64_t pairs_per_tile, rows_per_chunk, pair_tiles, row_chunks;

  explicit PairTileGrid(const kernels::PairLayout& layout) {
    const int64_t spatial = std::max<int64_t>(layout.spatial, 1);
    pairs_per_tile = std::clamp<int64_t>(kMinTaskElements / spatial, 1,
                                         std::max<int64_t>(layout.pairs, 1));
    rows_per_chunk = std::clamp<int64_t>(kMinTaskElements / (pairs_per_tile * spatial), 1,
                                         std::max<int64_t>(layout.batch, 1));
    pair_tiles = (layout.pairs + pairs_per_tile - 1) / pairs_per_tile;
    row_chunks = (layout.batch + rows_per_chunk - 1) / rows_per_chunk;
  }

  // Calls fn(row) for every (sample, pair) row of `spatial` elements, the tiles in parallel. The
  // rows of a tile run sample by sample, pairs inner, which walks the "halves" layout
  // contiguously. With `merge_pairs`, the rows of one sample and tile that are contiguous (all of
  // them in the "halves" layout) come as one longer run, for kernels without per-pair constants:
  // with a few positions per pair (2x2 feature maps, linear layers) the loops stay long.
  template <typename Fn>
  void for_each_row(const kernels::PairLayout& layout, bool merge_pairs, const Fn& fn) const {
    const bool merge = merge_pairs && layout.pairing == kernels::Pairing::kHalves;
    // Each tile is about one task's worth of work, so the grain is one tile.
    at::parallel_for(0, pair_tiles * row_chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t tile = begin; tile < end; ++tile) {
        const int64_t row_chunk = tile / pair_tiles, pair_tile = tile % pair_tiles;
        const int64_t n_end = std::min(layout.batch, (row_chunk + 1) * rows_per_chunk);
        const int64_t p_end = std::min(layout.pairs, (pair_tile + 1) * pairs_per_tile);
        for (int64_t n = row_chunk * rows_per_chunk; n < n_end; ++n) {
          const int64_t p_step = merge ? p_end - pair_tile * pairs_per_tile : 1;
          for (int64_t p = pair_tile * pairs_per_tile; p < p_end; p += p_step) {
            const int64_t first = layout.first(n, p);
            fn(PairRow{row_chunk, p, first, first + layout.partner(), layout.pair_index(n, p),
                       p_step * layout.spatial});
          }
        }
      }
    });
  }
};

}  // namespace cpu
}  // namespace lipkernels
