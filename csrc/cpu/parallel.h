// What the CPU kernels share about running well: the task granularity of their at::parallel_for
// splits, and the code generation of their hot loops.
#pragma once

#include <cstdint>

// The build uses no -march flag, so by default only SSE2 code would be generated. On x86-64 GCC,
// the hot loops are compiled for AVX-512 and AVX2+FMA as well and the best one the machine
// supports is picked once at load time (function multiversioning through an ifunc).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LIPKERNELS_CPU_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LIPKERNELS_CPU_CLONES
#endif

namespace lipkernels {
namespace cpu {

// Work (multiply-adds, or filter elements) below which handing a piece of one pass to another
// thread costs more in fork/join than it saves: about 10 microseconds.
constexpr int64_t kMinTaskElements = int64_t{1} << 15;

// x . y and y += a x over n contiguous entries, to be inlined into a multiversioned hot loop
// (`omp simd` lets the compiler reassociate the sum into vector lanes).
template <typename acc_t>
[[gnu::always_inline]] inline acc_t simd_dot(const acc_t* __restrict x, const acc_t* __restrict y,
                                             int64_t n) {
  acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    sum += x[j] * y[j];
  }
  return sum;
}

template <typename acc_t>
[[gnu::always_inline]] inline void simd_axpy(acc_t a, const acc_t* __restrict x,
                                             acc_t* __restrict y, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    y[j] += a * x[j];
  }
}

}  // namespace cpu
}  // namespace lipkernels
