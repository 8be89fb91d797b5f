// Launch helpers shared by the lipkernels CUDA kernels. Defined in launch.cu.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>

namespace lipkernels {
namespace cuda {

// Threads per block of the lipkernels CUDA kernels (at most, for the per-block power iteration).
// Cayley's block is kernels::kCayleyThreads, which its CPU-tested GEMM tiling is built around.
constexpr int kThreads = 256;

// The shared memory a block may use without the opt-in attribute.
constexpr size_t kDefaultSharedBytes = 48 * 1024;

// The streaming multiprocessors of CUDA device `device`.
int multiprocessor_count(int device);

// Blocks of `threads` for a grid-stride loop over `total` elements on `like`'s device.
int elementwise_blocks(int64_t total, int threads, const at::Tensor& like);

}  // namespace cuda
}  // namespace lipkernels
