// The CPU power-iteration routine, shared by the power_iteration op (one problem per batch matrix)
// and the conv_spectral_bounds op (one problem per Fantastic Four reshape).
#pragma once

#include <cstdint>
#include <vector>

namespace lipkernels {
namespace cpu {

// One power iteration problem: an m x n matrix M in the accumulation type, with in/out vectors.
// The math is in kernels/power_iteration.cuh.
template <typename acc_t>
struct PowerIterationProblem {
  // M stored row-major (m x n); or, when `transposed`, M^T stored row-major (n x m), which lets
  // a caller whose data is laid out that way (a 1x1 filter's M_4) skip the copy.
  const acc_t* weight;
  int64_t m, n;
  acc_t* u;      // n entries: the initial right vector on entry, the final u on return
  acc_t* v;      // m entries: the final left vector v on return
  acc_t* sigma;  // one entry: t . u on return
  bool transposed;
};

// Runs `iters` >= 1 iterations on every problem, spreading the work over at::get_num_threads()
// threads: across problems when there are enough of them, else across the rows of each matrix.
// Instantiated for acc_t = float and double.
template <typename acc_t>
void run_power_iteration(const std::vector<PowerIterationProblem<acc_t>>& problems, int64_t iters);

}  // namespace cpu
}  // namespace lipkernels
