// The "Fantastic Four" reshapes of a conv filter, shared by the CPU (csrc/cpu/conv_spectral_bounds.cpp)
// and CUDA (csrc/cuda/conv_spectral_bounds.cu) forward and backward kernels.
//
// Singla & Feizi, "Fantastic Four: Differentiable Bounds on Singular Values of Convolution Layers",
// ICLR 2021, Theorem 1: for a filter weight (O, I, H, W) = (C_out, C_in, k_h, k_w), the operator norm
// of the zero-padded convolution at any input size is at most sqrt(H W) * sigma_max(M_q) for each of
//   M_1 = weight.transpose(1,2).reshape(O*H, I*W):  weight[o,i,h,w] at row o*H + h, col i*W + w
//   M_2 = weight.transpose(1,3).reshape(O*W, H*I):  row o*W + w, col h*I + i
//   M_3 = weight.reshape(O, I*H*W):                 row o,       col (i*H + h)*W + w
//   M_4 = weight.transpose(0,1).reshape(I, O*H*W):  row i,       col (o*H + h)*W + w
// (q = 0..3 below index M_1..M_4). sigma_max(M_q) comes from the power iteration of
// kernels/power_iteration.cuh with a persistent right vector u_q, and
//   forward:  bounds[q] = sqrt(H W) * v_q^T M_q u_q
//   backward: d bounds[q] / d weight[o,i,h,w] = sqrt(H W) * v_q[row_q] * u_q[col_q]
// with (row_q, col_q) the position of weight[o,i,h,w] in M_q, u_q and v_q held constant.
#pragma once

#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/power_iteration.cuh"

namespace lipkernels {
namespace kernels {

// Position of one filter element: weight[o, i, h, w].
struct F4Coord {
  int64_t o, i, h, w;
};

// Position of a filter element inside one of the four matrices.
struct F4Index {
  int64_t row, col;
};

// Shape of a filter (O, I, H, W) and the index maps of its four reshapes.
struct F4Shape {
  static constexpr int kMatrices = 4;

  int64_t out_channels, in_channels, kernel_h, kernel_w;

  LIPKERNELS_HOST_DEVICE int64_t numel() const {
    return out_channels * in_channels * kernel_h * kernel_w;
  }

  LIPKERNELS_HOST_DEVICE int64_t rows(int q) const {
    switch (q) {
      case 0: return out_channels * kernel_h;
      case 1: return out_channels * kernel_w;
      case 2: return out_channels;
      default: return in_channels;
    }
  }

  LIPKERNELS_HOST_DEVICE int64_t cols(int q) const {
    switch (q) {
      case 0: return in_channels * kernel_w;
      case 1: return kernel_h * in_channels;
      case 2: return in_channels * kernel_h * kernel_w;
      default: return out_channels * kernel_h * kernel_w;
    }
  }

  // The (row, col) of weight[e.o, e.i, e.h, e.w] in M_q.
  LIPKERNELS_HOST_DEVICE F4Index index(int q, const F4Coord& e) const {
    switch (q) {
      case 0: return {e.o * kernel_h + e.h, e.i * kernel_w + e.w};
      case 1: return {e.o * kernel_w + e.w, e.h * in_channels + e.i};
      case 2: return {e.o, (e.i * kernel_h + e.h) * kernel_w + e.w};
      default: return {e.i, (e.o * kernel_h + e.h) * kernel_w + e.w};
    }
  }

  // Offset of weight[e] in M_q stored row-major (transposed: in M_q^T stored row-major), which
  // is where materialising that matrix writes it.
  LIPKERNELS_HOST_DEVICE int64_t offset(int q, const F4Coord& e, bool transposed = false) const {
    const F4Index ix = index(q, e);
    return transposed ? ix.col * rows(q) + ix.row : ix.row * cols(q) + ix.col;
  }

  // offset() is linear in (o, i, h, w); these are its increments along each dim, so that loops
  // can step through a matrix without re-evaluating the map per element.
  LIPKERNELS_HOST_DEVICE F4Coord strides(int q, bool transposed = false) const {
    return {offset(q, {1, 0, 0, 0}, transposed), offset(q, {0, 1, 0, 0}, transposed),
            offset(q, {0, 0, 1, 0}, transposed), offset(q, {0, 0, 0, 1}, transposed)};
  }

  // Whether M_q (or, when transposed, M_q^T) stored row-major is laid out exactly like the
  // contiguous filter, so that the filter can serve as that matrix without a copy: always M_3
  // (which is the filter's own layout); for a 1x1 filter also M_1, M_2 and M_4 transposed. Two
  // linear layouts agree when their strides agree along every dim of size > 1.
  LIPKERNELS_HOST_DEVICE bool has_filter_layout(int q, bool transposed) const {
    const F4Coord s = strides(q, transposed), filter = strides(2);
    return (out_channels == 1 || s.o == filter.o) && (in_channels == 1 || s.i == filter.i) &&
           (kernel_h == 1 || s.h == filter.h) && (kernel_w == 1 || s.w == filter.w);
  }

  // The coordinates of the element at offset `e` of the contiguous filter.
  LIPKERNELS_HOST_DEVICE F4Coord unravel(int64_t e) const {
    F4Coord c;
    c.w = e % kernel_w;
    e /= kernel_w;
    c.h = e % kernel_h;
    e /= kernel_h;
    c.i = e % in_channels;
    c.o = e / in_channels;
    return c;
  }

  // sqrt(H W): the factor between sigma_max(M_q) and the bound on the conv operator norm.
  template <typename acc_t>
  LIPKERNELS_HOST_DEVICE acc_t bound_scale() const {
    return sqrt_rn(static_cast<acc_t>(kernel_h * kernel_w));
  }
};

// The backward of the four bounds: d(sum_q grad_bounds[q] * bounds[q]) / d weight[e]
//   = sum_q coef[q] * v_q[row_q] * u_q[col_q],  coef[q] = sqrt(H W) * grad_bounds[q],
// with (row_q, col_q) = index(q, e). f4_grad_coefficients() forms coef once per call (one sqrt);
// f4_grad() evaluates one element given its four positions, which a caller may compute per
// element or step incrementally (index() is linear in e).
template <typename acc_t>
LIPKERNELS_HOST_DEVICE inline void f4_grad_coefficients(const F4Shape& shape,
                                                        const acc_t* grad_bounds, acc_t* coef) {
  const acc_t scale = shape.bound_scale<acc_t>();
  for (int q = 0; q < F4Shape::kMatrices; ++q) {
    coef[q] = scale * grad_bounds[q];
  }
}

// u[q] and v[q] point at u_q and v_q (any type convertible to acc_t, e.g. c10::Half); ix[q] is
// the element's position in M_q.
template <typename acc_t, typename vec_t>
LIPKERNELS_HOST_DEVICE inline acc_t f4_grad(const acc_t* coef, const vec_t* const* u,
                                            const vec_t* const* v, const F4Index* ix) {
  acc_t sum = 0;
  for (int q = 0; q < F4Shape::kMatrices; ++q) {
    sum += sigma_grad(coef[q], static_cast<acc_t>(v[q][ix[q].row]),
                      static_cast<acc_t>(u[q][ix[q].col]));
  }
  return sum;
}

}  // namespace kernels
}  // namespace lipkernels
