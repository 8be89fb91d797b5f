// The task granularity of the CPU kernels' at::parallel_for splits, shared by every op.
#pragma once

#include <cstdint>

namespace lipkernels {
namespace cpu {

// Work (multiply-adds, or filter elements) below which handing a piece of one pass to another
// thread costs more in fork/join than it saves: about 10 microseconds.
constexpr int64_t kMinTaskElements = int64_t{1} << 15;

}  // namespace cpu
}  // namespace lipkernels
