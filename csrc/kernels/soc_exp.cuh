// The framework-free half of the CUDA soc_exp kernels (csrc/cuda/soc_exp.cu): the index maps of
// an image group, the tap-major filter layout, the series coefficients, the scratch slots, the
// inner product of the conv and weight-gradient tiles, and the schedule of both directions.
//
// The schedules below are the whole control flow of one thread block: the CUDA kernel runs them
// with tiled device implementations of `conv` and `weight_gradient`, and
// tests/cpp/test_soc_exp.cpp runs them with plain loops on the CPU against the series summed
// term by term, so the order of the phases, their coefficients and the reuse of scratch slots are
// checked without a GPU. The math is that of csrc/cpu/soc_exp.cpp (see its header comment), with
// n = terms - 1 >= 1.
#pragma once

#include <cstdint>

#include "kernels/common.cuh"

namespace lipkernels {
namespace kernels {

// An NCHW activation (batch, channels, height, width) and the odd size of the square filter.
struct SocShape {
  int64_t batch, channels, height, width, kernel;

  LIPKERNELS_HOST_DEVICE int64_t padding() const { return kernel / 2; }
  LIPKERNELS_HOST_DEVICE int64_t taps() const { return kernel * kernel; }
  LIPKERNELS_HOST_DEVICE int64_t pixels() const { return height * width; }
  LIPKERNELS_HOST_DEVICE int64_t image_numel() const { return channels * pixels(); }
  LIPKERNELS_HOST_DEVICE int64_t numel() const { return batch * image_numel(); }

  // Whether tap (ty, tx) meets a real pixel for some output pixel. A tap shifted by a whole image
  // side or more only ever meets zero padding (8 of the 9 taps of a 3x3 filter on 1x1 images),
  // so the kernels skip it: its exact contribution is zero (a NaN or inf filter entry there is
  // not multiplied by the padding's zeros, unlike in F.conv2d).
  LIPKERNELS_HOST_DEVICE bool tap_reaches_image(int64_t ty, int64_t tx) const {
    const int64_t dy = ty - padding(), dx = tx - padding();
    return -height < dy && dy < height && -width < dx && dx < width;
  }
};

// Where pixel q of an image group lies: the image inside the group and the position in it.
struct GroupPixel {
  int64_t image, y, x;
};

// The consecutive images [first, first + count) of the batch that one thread block owns. Their
// pixels are numbered q = image * H * W + y * W + x across the group, so that one tile of pixels
// may span several small images; offsets are relative to the group's first element.
struct ImageGroup {
  SocShape shape;
  int64_t first, count;

  LIPKERNELS_HOST_DEVICE static ImageGroup of_block(const SocShape& shape,
                                                    int64_t images_per_group, int64_t block) {
    const int64_t first = block * images_per_group;
    const int64_t left = shape.batch - first;
    return {shape, first, left < images_per_group ? left : images_per_group};
  }

  LIPKERNELS_HOST_DEVICE int64_t base() const { return first * shape.image_numel(); }
  LIPKERNELS_HOST_DEVICE int64_t pixels() const { return count * shape.pixels(); }

  LIPKERNELS_HOST_DEVICE GroupPixel locate(int64_t q) const {
    const int64_t in_image = q % shape.pixels();
    return {q / shape.pixels(), in_image / shape.width, in_image % shape.width};
  }

  LIPKERNELS_HOST_DEVICE int64_t offset(int64_t channel, const GroupPixel& p) const {
    return p.image * shape.image_numel() + channel * shape.pixels() + p.y * shape.width + p.x;
  }

  // Offset of channel 0 of the pixel that tap (ty, tx) of the filter reads for output pixel p,
  // or -1 where that falls into the zero padding. The bounds are those of p's own image, so
  // the pixels of neighbouring images in the group never mix.
  LIPKERNELS_HOST_DEVICE int64_t tap_source(const GroupPixel& p, int64_t ty, int64_t tx) const {
    const int64_t y = p.y + ty - shape.padding(), x = p.x + tx - shape.padding();
    if (y < 0 || y >= shape.height || x < 0 || x >= shape.width) {
      return -1;
    }
    return offset(0, {p.image, y, x});
  }
};

// Images per thread block: enough for `target_pixels` pixels (a full tile) where the batch has
// them, and at least one. pixels_per_image >= 1.
LIPKERNELS_HOST_DEVICE inline int64_t images_per_group(int64_t batch, int64_t pixels_per_image,
                                                       int64_t target_pixels) {
  const int64_t wanted = (target_pixels + pixels_per_image - 1) / pixels_per_image;
  const int64_t images = wanted < batch ? wanted : batch;
  return images > 1 ? images : 1;
}

// The filters as the kernels read them: for each tap, a channels x channels matrix, row-major.
// The conv reads W[tap][ci][co] (co contiguous: a tile of output channels loads in one
// transaction); the weight gradient is accumulated into G[tap][co][ci] (ci contiguous, the
// direction its threads run in). The host wrapper permutes to and from the (C, C, k, k) filter.
LIPKERNELS_HOST_DEVICE inline int64_t tap_major_offset(int64_t channels, int64_t tap, int64_t row,
                                                       int64_t col) {
  return (tap * channels + row) * channels + col;
}

// The 1/i of Horner step i, formed in double so that --use_fast_math (which approximates float
// division) leaves it correctly rounded.
template <typename acc_t>
LIPKERNELS_HOST_DEVICE inline acc_t horner_coefficient(int64_t i) {
  return static_cast<acc_t>(1.0 / static_cast<double>(i));
}

// 1/m!, by the same recurrence as the CPU kernel (in double, for the reason above).
template <typename acc_t>
LIPKERNELS_HOST_DEVICE inline acc_t inverse_factorial(int64_t m) {
  double value = 1.0;
  for (int64_t i = 2; i <= m; ++i) {
    value /= static_cast<double>(i);
  }
  return static_cast<acc_t>(value);
}

// acc[r] += sum_{k < count} a[k * a_k + r * a_r] * b[k * b_k] for r < R: R outputs of one thread
// that share the operand b, the inner product of both tiled kernels.
template <int R, typename acc_t>
LIPKERNELS_HOST_DEVICE inline void accumulate_products(acc_t (&acc)[R], const acc_t* a,
                                                       int64_t a_k, int64_t a_r, const acc_t* b,
                                                       int64_t b_k, int count) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int k = 0; k < count; ++k) {
    const acc_t b_value = b[k * b_k];
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int r = 0; r < R; ++r) {
      acc[r] += a[k * a_k + r * a_r] * b_value;
    }
  }
}

// ---- Scratch slots ------------------------------------------------------------------------------
// Every intermediate lives in a slot: an activation-sized buffer in the accumulation type.
// A conv never writes the slot it reads (its taps read neighbouring pixels that other threads
// write), and a slot is overwritten only once every phase that reads its value has run.

// Slots for a Horner loop whose iterates alternate between two buffers: iterate i of
// i = n..2 (z_i forward, u_{i-2} backward in fast mode) lives in slot i % 2.
LIPKERNELS_HOST_DEVICE inline int64_t ping_pong_slots(int64_t n) {
  return n < 2 ? 0 : (n == 2 ? 1 : 2);
}

LIPKERNELS_HOST_DEVICE inline int64_t ping_pong_slot(int64_t i) { return i % 2; }

// The backward pass. Fast mode: the adjoint iterates u_j (j = n-2..0) ping-pong. Exact mode:
// the powers S^j x (j = 1..n-1) take slots 0..n-2, and u_j then reuses the slot of S^{j+1} x,
// whose one weight gradient has been taken by the time u_j is formed; so the backward needs
// n - 1 activations in all, not n - 1 plus two.
struct BackwardSlots {
  int64_t n;
  bool exact;

  LIPKERNELS_HOST_DEVICE int64_t count() const { return exact ? n - 1 : ping_pong_slots(n); }
  LIPKERNELS_HOST_DEVICE int64_t power(int64_t j) const { return j - 1; }
  LIPKERNELS_HOST_DEVICE int64_t adjoint(int64_t j) const {
    return exact ? j : ping_pong_slot(j + 2);
  }
};

// ---- Schedules ----------------------------------------------------------------------------------
// The operands of a phase. kInput is x (forward) or grad_y (backward), the tensor each Horner
// step adds back; kStart is the backward's `start` (x in exact mode, z_2 in fast mode); kOutput
// is y or grad_x.
enum class Buffer { kInput, kStart, kOutput, kScratch };

struct Operand {
  Buffer buffer;
  int64_t slot;  // kScratch only
};

// The conv's filter: S itself, or flipT(S), the adjoint.
enum class Filter { kS, kAdjoint };

LIPKERNELS_HOST_DEVICE inline Operand scratch(int64_t slot) { return {Buffer::kScratch, slot}; }

// One thread block's phases go through `ops`, which provides
//   conv(src, dst, filter, coef, add_input, keep_z2):
//       dst = coef * conv(src, filter) (+ the input where add_input), also copied to the saved
//       z_2 where keep_z2;
//   weight_gradient(a, b, coef):  grad_S += coef * Wg(a, b);
// and must order each phase after the previous one (every phase reads what earlier ones wrote).
// n = terms - 1 >= 1; terms == 1 never reaches a kernel.

// y = x + S(z_2), z_2 from the Horner loop z = x; z = x + S(z) / i, i = n..2.
template <typename Ops>
LIPKERNELS_HOST_DEVICE void soc_forward_schedule(int64_t n, Ops& ops) {
  Operand z{Buffer::kInput, 0};
  for (int64_t i = n; i >= 1; --i) {
    const Operand next = i == 1 ? Operand{Buffer::kOutput, 0} : scratch(ping_pong_slot(i));
    ops.conv(z, next, Filter::kS, horner_coefficient<double>(i), /*add_input=*/true,
             /*keep_z2=*/i == 2);
    z = next;
  }
}

// grad_x = g + S^T(u_0) from the adjoint Horner loop u_{n-1} = g; u_j = g + S^T(u_{j+1}) / (j+2);
// grad_S = sum_j Wg(S^j x, u_j) / (j+1)! (exact) or Wg(z_2, u_0) (fast).
template <typename Ops>
LIPKERNELS_HOST_DEVICE void soc_backward_schedule(int64_t n, bool exact, Ops& ops) {
  const BackwardSlots slots{n, exact};
  if (exact) {
    for (int64_t j = 1; j < n; ++j) {
      const Operand previous = j == 1 ? Operand{Buffer::kStart, 0} : scratch(slots.power(j - 1));
      ops.conv(previous, scratch(slots.power(j)), Filter::kS, 1.0, /*add_input=*/false,
               /*keep_z2=*/false);
    }
  }
  Operand u{Buffer::kInput, 0};
  for (int64_t j = n - 1; j >= 0; --j) {
    if (j < n - 1) {
      const Operand next = scratch(slots.adjoint(j));
      ops.conv(u, next, Filter::kAdjoint, horner_coefficient<double>(j + 2), /*add_input=*/true,
               /*keep_z2=*/false);
      u = next;
    }
    if (exact) {
      const Operand power = j == 0 ? Operand{Buffer::kStart, 0} : scratch(slots.power(j));
      ops.weight_gradient(power, u, inverse_factorial<double>(j + 1));
    }
  }
  if (!exact) {
    ops.weight_gradient(Operand{Buffer::kStart, 0}, u, 1.0);
  }
  ops.conv(u, Operand{Buffer::kOutput, 0}, Filter::kAdjoint, 1.0, /*add_input=*/true,
           /*keep_z2=*/false);
}

}  // namespace kernels
}  // namespace lipkernels
