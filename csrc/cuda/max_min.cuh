// Launch geometry of the CUDA channel-pair kernels, shared by max_min (cuda/max_min.cu) and
// householder (cuda/householder.cu).
//
// A block of kThreads threads owns a tile of tile_pairs pairs x tile_positions spatial positions
// (tile_positions the power of two covering S, up to kThreads; the remaining factor spreads over
// pairs) and walks up to rows_per_block consecutive samples through it, one element per thread
// and sample. Neighbouring threads take neighbouring positions, so loads coalesce in both
// pairings, also for S = 1 (linear layers), where a tile is kThreads consecutive pairs. Per-pair
// work (householder's angles) is done once per thread, and a pair's threads are consecutive, so
// per-pair sums reduce within the block.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>

#include "cuda/launch.cuh"
#include "kernels/max_min.cuh"

namespace lipkernels {
namespace cuda {

struct PairTileGrid {
  kernels::PairLayout layout;
  int64_t tile_positions, tile_pairs;  // tile_positions * tile_pairs == kThreads
  int64_t position_tiles, tiles;       // spatial tiles; all tiles of one sample
  int64_t rows_per_block, row_chunks;  // samples per block; blocks per tile

  int64_t blocks() const { return row_chunks * tiles; }
  // Rows of per-block partial sums, one per (row chunk, spatial tile), each `pairs` wide.
  int64_t partial_rows() const { return row_chunks * position_tiles; }
};

// The geometry for `layout` (non-empty) on the device of `like`: as many samples per block as
// keeps about elementwise_blocks() blocks in flight.
inline PairTileGrid pair_tile_grid(const kernels::PairLayout& layout, const at::Tensor& like) {
  PairTileGrid g{};
  g.layout = layout;
  g.tile_positions = 1;
  while (g.tile_positions < std::min<int64_t>(layout.spatial, kThreads)) {
    g.tile_positions *= 2;
  }
  g.tile_pairs = kThreads / g.tile_positions;
  g.position_tiles = (layout.spatial + g.tile_positions - 1) / g.tile_positions;
  g.tiles = (layout.pairs + g.tile_pairs - 1) / g.tile_pairs * g.position_tiles;
  const int64_t wanted = elementwise_blocks(layout.batch * g.tiles * kThreads, kThreads, like);
  const int64_t chunks = std::max<int64_t>(1, wanted / g.tiles);
  g.rows_per_block = (layout.batch + chunks - 1) / chunks;
  g.row_chunks = (layout.batch + g.rows_per_block - 1) / g.rows_per_block;
  return g;
}

// What one thread of a PairTileGrid block owns.
struct PairThread {
  bool active;        // a real pair and position
  int64_t p;          // its pair
  int64_t position;   // its index among the tile_positions threads of its pair
  int64_t rows;       // samples to walk
  int64_t first;      // offset of its first-channel element in its first sample
  int64_t pair_entry; // offset of its entry of a per-pair (B, C/2, *spatial) tensor, same sample
  int64_t partial;    // offset of its pair's entry in the per-block partial sums
};

__device__ inline PairThread pair_thread(const PairTileGrid& g) {
  const kernels::PairLayout& l = g.layout;
  const int64_t chunk = blockIdx.x / g.tiles, tile = blockIdx.x % g.tiles;
  const int64_t position_tile = tile % g.position_tiles;
  PairThread t;
  t.position = threadIdx.x % g.tile_positions;
  t.p = tile / g.position_tiles * g.tile_pairs + threadIdx.x / g.tile_positions;
  const int64_t s = position_tile * g.tile_positions + t.position;
  t.active = t.p < l.pairs && s < l.spatial;
  const int64_t n0 = chunk * g.rows_per_block;
  // (No std::min: the extension's nvcc flags do not allow host constexpr functions here.)
  t.rows = g.rows_per_block < l.batch - n0 ? g.rows_per_block : l.batch - n0;
  t.first = l.first(n0, t.p) + s;
  t.pair_entry = l.pair_index(n0, t.p) + s;
  t.partial = (chunk * g.position_tiles + position_tile) * l.pairs + t.p;
  return t;
}

// Calls fn(first, second, entry) for the thread's element in each of its samples (nothing for an
// inactive thread): the offsets of its first- and second-channel elements in the (B, C, *spatial)
// tensors and of its entry of a per-pair (B, C/2, *spatial) tensor.
template <typename Fn>
__device__ inline void for_each_sample(const PairTileGrid& g, const PairThread& t, const Fn& fn) {
  if (!t.active) {
    return;
  }
  const int64_t partner = g.layout.partner(), pair_sample = g.layout.pairs * g.layout.spatial;
  int64_t first = t.first, entry = t.pair_entry;
  for (int64_t r = 0; r < t.rows; ++r) {
    fn(first, first + partner, entry);
    first += g.layout.sample_stride();
    entry += pair_sample;
  }
}

}  // namespace cuda
}  // namespace lipkernels
