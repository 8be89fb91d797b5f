#include "cuda/launch.cuh"

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <algorithm>

namespace lipkernels {
namespace cuda {

int multiprocessor_count(int device) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

int elementwise_blocks(int64_t total, int threads, const at::Tensor& like) {
  const int64_t wanted = (total + threads - 1) / threads;
  return static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(wanted, 8 * multiprocessor_count(like.get_device()))));
}

}  // namespace cuda
}  // namespace lipkernels
