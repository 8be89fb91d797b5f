// Compile check (never run) that the framework-free headers in csrc/kernels build as CUDA device
// code, independent of PyTorch's headers: every shared function is called from a kernel for the
// accumulation types the CUDA backend uses.
#include "kernels/conv_spectral_bounds.cuh"
#include "kernels/power_iteration.cuh"
#include "kernels/soc_exp.cuh"

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

// The soc_exp schedules with phases that only record their coefficients, and the index maps and
// inner product that the real phases use.
template <typename acc_t>
struct RecordingOps {
  acc_t* out;
  __device__ void conv(k::Operand src, k::Operand dst, k::Filter filter, double coef,
                       bool add_input, bool keep_z2) {
    out[threadIdx.x] += static_cast<acc_t>(coef) + static_cast<acc_t>(src.slot + dst.slot) +
                        static_cast<acc_t>(filter == k::Filter::kS) + add_input + keep_z2;
  }
  __device__ void weight_gradient(k::Operand a, k::Operand b, double coef) {
    out[threadIdx.x] += static_cast<acc_t>(coef) + static_cast<acc_t>(a.slot + b.slot);
  }
};

template <typename acc_t>
__global__ void use_soc_exp_math(k::SocShape shape, int64_t n, const acc_t* a, acc_t* out) {
  const k::ImageGroup group = k::ImageGroup::of_block(
      shape, k::images_per_group(shape.batch, shape.pixels(), 64), blockIdx.x);
  const k::GroupPixel pixel = group.locate(threadIdx.x);
  acc_t acc[2] = {};
  k::accumulate_products(acc, a, 2, 1, a + group.tap_source(pixel, 0, 1), 3, 4);
  acc[0] += static_cast<acc_t>(group.offset(1, pixel) + group.base() + group.pixels() +
                               k::tap_major_offset(shape.channels, 1, 2, 3) +
                               shape.tap_reaches_image(0, 1) + k::ping_pong_slots(n) +
                               k::BackwardSlots{n, true}.count()) +
            k::horner_coefficient<acc_t>(n) + k::inverse_factorial<acc_t>(n);
  RecordingOps<acc_t> ops{out};
  k::soc_forward_schedule(n, ops);
  k::soc_backward_schedule(n, n % 2 == 0, ops);
  out[threadIdx.x] += acc[0] + acc[1];
}

template __global__ void use_soc_exp_math<float>(k::SocShape, int64_t, const float*, float*);
template __global__ void use_soc_exp_math<double>(k::SocShape, int64_t, const double*, double*);
