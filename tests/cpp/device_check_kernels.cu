// Compile check (never run) that the framework-free headers in csrc/kernels build as CUDA device
// code, independent of PyTorch's headers: every shared function is called from a kernel for the
// accumulation types the CUDA backend uses.
#include "kernels/conv_spectral_bounds.cuh"
#include "kernels/power_iteration.cuh"

namespace k = lipkernels::kernels;

template <typename acc_t>
__global__ void use_shared_math(k::F4Shape shape, const acc_t* grad_bounds, const acc_t* const* u,
                                const acc_t* const* v, acc_t* out) {
  const int64_t e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= shape.numel()) {
    return;
  }
  const k::F4Coord c = shape.unravel(e);
  acc_t coef[k::F4Shape::kMatrices];
  k::f4_grad_coefficients(shape, grad_bounds, coef);
  k::F4Index ix[k::F4Shape::kMatrices];
  for (int q = 0; q < k::F4Shape::kMatrices; ++q) {
    ix[q] = shape.index(q, c);
  }
  acc_t x = k::f4_grad(coef, u, v, ix);
  for (int q = 0; q < k::F4Shape::kMatrices; ++q) {
    const k::F4Coord s = shape.strides(q, q % 2 == 1);
    x += static_cast<acc_t>(shape.offset(q, c) + s.o + shape.rows(q) + shape.cols(q) +
                            shape.has_filter_layout(q, false));
  }
  x += k::normalizing_scale(x) + k::clamped_norm(x) + k::sigma_grad(x, x, x) +
       shape.bound_scale<acc_t>();
  out[e] = x;
}

template __global__ void use_shared_math<float>(k::F4Shape, const float*, const float* const*,
                                                const float* const*, float*);
template __global__ void use_shared_math<double>(k::F4Shape, const double*, const double* const*,
                                                 const double* const*, double*);
