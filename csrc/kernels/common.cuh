// Portability macros and small helpers for the framework-free math in csrc/kernels.
//
// Everything under csrc/kernels is plain C++17 with no PyTorch dependency, so that one definition
// serves the CPU kernels (g++), the CUDA kernels (nvcc, host and device passes) and the C++ unit
// tests in tests/cpp (built by CMake without torch).
#pragma once

#if defined(__CUDACC__)
// Callable from host code and from CUDA device code.
#define LIPKERNELS_HOST_DEVICE __host__ __device__
#else
#define LIPKERNELS_HOST_DEVICE
#endif

#include <cstdint>

namespace lipkernels {
namespace kernels {

// The tiles of size b that cover a elements.
LIPKERNELS_HOST_DEVICE constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace kernels
}  // namespace lipkernels
