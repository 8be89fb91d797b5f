// The CUDA power-iteration engine, shared by the power_iteration op (one group: the batch of
// matrices) and the conv_spectral_bounds op (four groups: the Fantastic Four reshapes, which the
// kernel first copies out of the filter). Defined in power_iteration.cu.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "kernels/conv_spectral_bounds.cuh"

namespace lipkernels {
namespace cuda {

constexpr int kMaxGroups = kernels::F4Shape::kMatrices;

// `count` independent problems of one shape: row-major m x n matrices stored one after another,
// with their right vectors in, and their outputs. All pointers are on the job's device.
template <typename scalar_t>
struct MatrixGroup {
  const scalar_t* weight;  // count x m x n
  int64_t count, m, n;
  const scalar_t* u_in;  // count x n: the initial right vectors
  scalar_t* u_out;       // count x n
  scalar_t* v_out;       // count x m
  scalar_t* sigma_out;   // count: sigma_scale * sigma
  double sigma_scale;    // 1, or sqrt(k_h k_w) for the F4 bounds
  // F4 groups whose matrix is not laid out like the filter: `weight` points here, and the kernel
  // first writes M_{f4_matrix + 1} of the job's filter into it. nullptr otherwise.
  scalar_t* f4_destination;
  int f4_matrix;
};

template <typename scalar_t>
struct PowerIterationJob {
  int num_groups;
  MatrixGroup<scalar_t> groups[kMaxGroups];
  const scalar_t* f4_filter;  // the contiguous filter the F4 groups come from, if any
  kernels::F4Shape f4_shape;
};

// Runs `iters` power iterations on every problem of `job` in one kernel launch on the current
// CUDA stream of `like`'s device (which also gives the device for the workspace).
template <typename scalar_t>
void launch_power_iteration(const PowerIterationJob<scalar_t>& job, int64_t iters,
                            const at::Tensor& like);

}  // namespace cuda
}  // namespace lipkernels
