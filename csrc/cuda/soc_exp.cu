// CUDA kernels of soc_exp and soc_exp_backward: the whole skew-orthogonal convolution series in
// one launch per direction.
//
// Math: csrc/cpu/soc_exp.cpp (its header comment derives both directions). SOC is Singla & Feizi,
// "Skew Orthogonal Convolutions", ICML 2021; the fast gradient is that of Singla, Singla & Feizi,
// "Improved techniques for deterministic l2 robustness", NeurIPS 2022. With n = terms-1:
//   forward   z = x; z = x + S(z) / i for i = n..2 (ends at z_2); y = x + S(z_2)
//   backward  u_{n-1} = g; u_j = g + S^T(u_{j+1}) / (j+2); grad_x = g + S^T(u_0), S^T = flipT(S);
//             grad_S = sum_j Wg(S^j x, u_j) / (j+1)! (exact) or Wg(z_2, u_0) (fast)
// The order of these phases, their coefficients and the scratch slots they use are the schedules
// of kernels/soc_exp.cuh, which the C++ unit tests run on the CPU; this file supplies the tiled
// conv and weight-gradient phases they call, and the host wrappers.
//
// Why whole images per block: every term is a conv of the previous one, so a term needs all of
// its predecessor's neighbouring pixels. A block that owns whole images (a group of G of them,
// all channels, all pixels) needs no halo from other blocks and so no grid-wide sync between terms:
// it runs the entire series with __syncthreads() alone. G = the fewest images with >= 64 pixels
// (one conv pixel tile), at most B; the grid is ceil(B / G) blocks of 256 threads.
//
// Memory: activations are NCHW. Each block keeps its iterates in global scratch slots (the size
// of the activation, in float for float/half/bfloat16 and double for double, so that the series
// does not round per term); a slot holds only the block's own images and stays largely in L2.
// Forward: 2 slots (z ping-pongs; 1 for n = 2, none for n = 1). Backward: fast mode 2 slots for
// u; exact mode n - 1 slots that first receive the powers S^j x and are then reused for u
// (kernels::BackwardSlots). The filters are materialised tap-major in the accumulation type by the
// host ([ty][tx][ci][co]; for the backward also flipT(S)), so that a tile of output channels loads
// contiguously; the weight gradient is summed over blocks by atomicAdd into [ty][tx][co][ci]
// (float, or double for double), which the host permutes back to (C, C, k, k) in S's dtype.
//
// Tiles (256 threads): the conv computes 32 output channels x 64 group pixels at a time (each
// thread 8 channels of one pixel), reducing over taps and chunks of 16 input channels staged in
// shared memory with the zero padding applied; the weight gradient computes 32 x 32 (co, ci)
// entries of one tap at a time (each thread 4 co of one ci), reducing over chunks of 32 group
// pixels. Every phase ends with __syncthreads(), as the next one reads what it wrote at other
// threads' pixels or overwrites a slot it read.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "cuda/launch.cuh"
#include "kernels/soc_exp.cuh"

namespace lipkernels {
namespace cuda {
namespace {

using kernels::BackwardSlots;
using kernels::Buffer;
using kernels::ceil_div;
using kernels::Filter;
using kernels::GroupPixel;
using kernels::ImageGroup;
using kernels::Operand;
using kernels::SocShape;

// Conv tile: kConvOutTile output channels x kConvPixels group pixels; thread t takes pixel
// t % kConvPixels and kConvPerThread consecutive channels from (t / kConvPixels) * kConvPerThread.
constexpr int kConvPixels = 64;
constexpr int kConvChannelLanes = kThreads / kConvPixels;
constexpr int kConvPerThread = 8;
constexpr int kConvOutTile = kConvChannelLanes * kConvPerThread;
constexpr int kConvInChunk = 16;
static_assert(kConvPixels * kConvChannelLanes == kThreads, "one conv tile per block");
static_assert(kConvInChunk % kConvChannelLanes == 0, "whole input-tile rows per channel lane");

// Weight-gradient tile: kWgLanes input channels x kWgOutTile output channels of one tap; thread t
// takes ci lane t % kWgLanes (a warp spans the ci of one tile row) and kWgPerThread consecutive
// co from (t / kWgLanes) * kWgPerThread. Pixels are staged kWgLanes at a time.
constexpr int kWgLanes = 32;
constexpr int kWgOutLanes = kThreads / kWgLanes;
constexpr int kWgPerThread = 4;
constexpr int kWgOutTile = kWgOutLanes * kWgPerThread;
// The input-side tile is read down its rows by consecutive lanes: one padding column puts
// consecutive rows in different shared-memory banks.
constexpr int kWgInStride = kWgLanes + 1;
static_assert(kWgOutTile == kWgLanes, "the staging loop fills both weight-gradient tiles");

constexpr int kConvShared = kConvInChunk * (kConvOutTile + kConvPixels);
constexpr int kWgShared = kWgOutTile * kWgLanes + kWgLanes * kWgInStride;
constexpr int kSharedElements = kConvShared > kWgShared ? kConvShared : kWgShared;

// Everything a block needs; `input` is x (forward) or grad_y (backward), `output` y or grad_x.
template <typename scalar_t, typename acc_t>
struct SeriesArgs {
  SocShape shape;
  int64_t images_per_group;
  int64_t n;
  bool exact;
  const scalar_t* input;
  const scalar_t* start;  // backward: x (exact) or z_2 (fast)
  scalar_t* output;
  scalar_t* saved;  // forward, fast mode, n >= 2: receives z_2; nullptr otherwise
  acc_t* scratch;   // slots of shape.numel() each
  const acc_t* filter;   // S, tap-major [tap][ci][co]; nullptr where unused
  const acc_t* adjoint;  // flipT(S), tap-major; backward only
  acc_t* grad_filter;    // backward: [tap][co][ci], zeroed by the host
};

// Stages, for one tap and one chunk of input channels, the filter tile w[ci][co] and the input
// tile x[ci][pixel], the latter read at the tap's source pixel (`source`, -1 in the padding).
template <typename acc_t, typename src_t>
__device__ void stage_conv_tile(const ImageGroup& group, const acc_t* weights, int64_t tap,
                                int64_t co0, int64_t ci0, const src_t* in, int64_t source,
                                acc_t* w_tile, acc_t* x_tile) {
  const int64_t channels = group.shape.channels;
  const int pixel_lane = threadIdx.x % kConvPixels;
  for (int row = threadIdx.x / kConvPixels; row < kConvInChunk; row += kConvChannelLanes) {
    const int64_t ci = ci0 + row;
    x_tile[row * kConvPixels + pixel_lane] =
        source >= 0 && ci < channels ? static_cast<acc_t>(in[source + ci * group.shape.pixels()])
                                     : acc_t(0);
  }
  for (int e = threadIdx.x; e < kConvInChunk * kConvOutTile; e += kThreads) {
    const int64_t ci = ci0 + e / kConvOutTile, co = co0 + e % kConvOutTile;
    w_tile[e] = ci < channels && co < channels
                    ? weights[kernels::tap_major_offset(channels, tap, ci, co)]
                    : acc_t(0);
  }
}

// One thread's conv outputs: channels first_co.. of one pixel, scaled, plus the addend.
template <typename acc_t, typename dst_t, typename scalar_t>
__device__ void store_conv_outputs(const ImageGroup& group, const GroupPixel& pixel,
                                   int64_t first_co, const acc_t (&acc)[kConvPerThread],
                                   acc_t coef, const scalar_t* addend, dst_t* out,
                                   scalar_t* copy) {
  for (int r = 0; r < kConvPerThread && first_co + r < group.shape.channels; ++r) {
    const int64_t o = group.offset(first_co + r, pixel);
    const acc_t value =
        coef * acc[r] + (addend != nullptr ? static_cast<acc_t>(addend[o]) : acc_t(0));
    out[o] = static_cast<dst_t>(value);
    if (copy != nullptr) {
      copy[o] = static_cast<scalar_t>(value);
    }
  }
}

// out = coef * conv(in, weights) (+ addend), and a copy into `copy` where given, over the
// group's images. `addend` and `copy` may be nullptr.
template <typename acc_t, typename src_t, typename dst_t, typename scalar_t>
__device__ void conv_phase(const ImageGroup& group, const acc_t* weights, const src_t* in,
                           acc_t coef, const scalar_t* addend, dst_t* out, scalar_t* copy,
                           acc_t* shared) {
  const SocShape& shape = group.shape;
  acc_t* w_tile = shared;
  acc_t* x_tile = shared + kConvInChunk * kConvOutTile;
  const int pixel_lane = threadIdx.x % kConvPixels;
  const int first_channel = threadIdx.x / kConvPixels * kConvPerThread;
  const int64_t channel_tiles = ceil_div(shape.channels, kConvOutTile);
  const int64_t tiles = ceil_div(group.pixels(), kConvPixels) * channel_tiles;
  for (int64_t tile = 0; tile < tiles; ++tile) {
    const int64_t co0 = tile % channel_tiles * kConvOutTile;
    const int64_t q = tile / channel_tiles * kConvPixels + pixel_lane;
    const bool has_pixel = q < group.pixels();
    const GroupPixel pixel = group.locate(has_pixel ? q : 0);
    acc_t acc[kConvPerThread] = {};
    for (int64_t tap = 0; tap < shape.taps(); ++tap) {
      const int64_t ty = tap / shape.kernel, tx = tap % shape.kernel;
      if (!shape.tap_reaches_image(ty, tx)) {
        continue;
      }
      const int64_t source = has_pixel ? group.tap_source(pixel, ty, tx) : -1;
      for (int64_t ci0 = 0; ci0 < shape.channels; ci0 += kConvInChunk) {
        stage_conv_tile(group, weights, tap, co0, ci0, in, source, w_tile, x_tile);
        __syncthreads();
        kernels::accumulate_products(acc, w_tile + first_channel, kConvOutTile, 1,
                                     x_tile + pixel_lane, kConvPixels, kConvInChunk);
        __syncthreads();  // before the next chunk overwrites the tiles
      }
    }
    if (has_pixel) {
      store_conv_outputs(group, pixel, co0 + first_channel, acc, coef, addend, out, copy);
    }
  }
  __syncthreads();
}

// Stages, for one tap, the output-side tile b[co][pixel] and the input-side tile a[ci][pixel]
// (read at the tap's source pixel) of kWgLanes group pixels from q0.
template <typename acc_t, typename a_t, typename b_t>
__device__ void stage_weight_gradient_tile(const ImageGroup& group, const a_t* input,
                                           const b_t* grad_out, int64_t ty, int64_t tx,
                                           int64_t co0, int64_t ci0, int64_t q0, acc_t* b_tile,
                                           acc_t* a_tile) {
  const int64_t channels = group.shape.channels;
  const int lane = threadIdx.x % kWgLanes;
  const int64_t q = q0 + lane;
  const bool has_pixel = q < group.pixels();
  const GroupPixel pixel = group.locate(has_pixel ? q : 0);
  const int64_t source = has_pixel ? group.tap_source(pixel, ty, tx) : -1;
  for (int row = threadIdx.x / kWgLanes; row < kWgLanes; row += kWgOutLanes) {
    const int64_t co = co0 + row, ci = ci0 + row;
    b_tile[row * kWgLanes + lane] = has_pixel && co < channels
                                        ? static_cast<acc_t>(grad_out[group.offset(co, pixel)])
                                        : acc_t(0);
    a_tile[row * kWgInStride + lane] =
        source >= 0 && ci < channels
            ? static_cast<acc_t>(input[source + ci * group.shape.pixels()])
            : acc_t(0);
  }
}

// grad_filter[tap][co][ci] += coef * sum over the group's pixels p of
// grad_out[co, p] * input[ci, p shifted by the tap]: this block's share of
// coef * Wg(input, grad_out).
template <typename acc_t, typename a_t, typename b_t>
__device__ void weight_gradient_phase(const ImageGroup& group, const a_t* input,
                                      const b_t* grad_out, acc_t coef, acc_t* grad_filter,
                                      acc_t* shared) {
  const SocShape& shape = group.shape;
  acc_t* b_tile = shared;
  acc_t* a_tile = shared + kWgOutTile * kWgLanes;
  const int lane = threadIdx.x % kWgLanes;
  const int first_out = threadIdx.x / kWgLanes * kWgPerThread;
  const int64_t channel_tiles = ceil_div(shape.channels, kWgLanes);
  const int64_t tiles = shape.taps() * channel_tiles * channel_tiles;
  for (int64_t tile = 0; tile < tiles; ++tile) {
    const int64_t tap = tile / (channel_tiles * channel_tiles);
    const int64_t ty = tap / shape.kernel, tx = tap % shape.kernel;
    if (!shape.tap_reaches_image(ty, tx)) {
      continue;  // its gradient is zero, as the host's zeroed buffer already holds
    }
    const int64_t co0 = tile / channel_tiles % channel_tiles * kWgOutTile;
    const int64_t ci0 = tile % channel_tiles * kWgLanes;
    acc_t acc[kWgPerThread] = {};
    for (int64_t q0 = 0; q0 < group.pixels(); q0 += kWgLanes) {
      stage_weight_gradient_tile(group, input, grad_out, ty, tx, co0, ci0, q0, b_tile, a_tile);
      __syncthreads();
      kernels::accumulate_products(acc, b_tile + first_out * kWgLanes, 1, kWgLanes,
                                   a_tile + lane * kWgInStride, 1, kWgLanes);
      __syncthreads();  // before the next chunk overwrites the tiles
    }
    const int64_t ci = ci0 + lane;
    for (int r = 0; r < kWgPerThread && ci < shape.channels; ++r) {
      const int64_t co = co0 + first_out + r;
      if (co < shape.channels) {
        atomicAdd(grad_filter + kernels::tap_major_offset(shape.channels, tap, co, ci),
                  coef * acc[r]);
      }
    }
  }
  __syncthreads();
}

// The `ops` of the schedules in kernels/soc_exp.cuh for one block: resolves operands to the
// block's part of each buffer and runs the tiled phases.
template <typename scalar_t, typename acc_t>
class BlockOps {
 public:
  __device__ BlockOps(const SeriesArgs<scalar_t, acc_t>& args, acc_t* shared)
      : args_(args),
        group_(ImageGroup::of_block(args.shape, args.images_per_group, blockIdx.x)),
        shared_(shared) {}

  __device__ void conv(Operand src, Operand dst, Filter filter, double coef, bool add_input,
                       bool keep_z2) const {
    const acc_t* weights = filter == Filter::kS ? args_.filter : args_.adjoint;
    const scalar_t* addend = add_input ? args_.input + group_.base() : nullptr;
    scalar_t* copy = keep_z2 && args_.saved != nullptr ? args_.saved + group_.base() : nullptr;
    read(src, [&](const auto* in) {
      write(dst, [&](auto* out) {
        conv_phase(group_, weights, in, static_cast<acc_t>(coef), addend, out, copy, shared_);
      });
    });
  }

  __device__ void weight_gradient(Operand a, Operand b, double coef) const {
    read(a, [&](const auto* input) {
      read(b, [&](const auto* grad_out) {
        weight_gradient_phase(group_, input, grad_out, static_cast<acc_t>(coef),
                              args_.grad_filter, shared_);
      });
    });
  }

 private:
  __device__ acc_t* slot(int64_t index) const {
    return args_.scratch + index * args_.shape.numel() + group_.base();
  }

  // Calls f with the block's part of a source operand: scalar_t for the tensors passed in,
  // acc_t for scratch. The schedules never read the output (tests/cpp/test_soc_exp.cpp checks).
  template <typename F>
  __device__ void read(const Operand& o, F&& f) const {
    if (o.buffer == Buffer::kScratch) {
      f(static_cast<const acc_t*>(slot(o.slot)));
    } else {
      f((o.buffer == Buffer::kStart ? args_.start : args_.input) + group_.base());
    }
  }

  // Calls f with the block's part of a destination: scratch or the output.
  template <typename F>
  __device__ void write(const Operand& o, F&& f) const {
    if (o.buffer == Buffer::kScratch) {
      f(slot(o.slot));
    } else {
      f(args_.output + group_.base());
    }
  }

  const SeriesArgs<scalar_t, acc_t> args_;
  const ImageGroup group_;
  acc_t* const shared_;
};

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    soc_exp_forward_kernel(const SeriesArgs<scalar_t, acc_t> args) {
  __shared__ acc_t shared[kSharedElements];
  const BlockOps<scalar_t, acc_t> ops(args, shared);
  kernels::soc_forward_schedule(args.n, ops);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    soc_exp_backward_kernel(const SeriesArgs<scalar_t, acc_t> args) {
  __shared__ acc_t shared[kSharedElements];
  const BlockOps<scalar_t, acc_t> ops(args, shared);
  kernels::soc_backward_schedule(args.n, args.exact, ops);
}

SocShape soc_shape(const at::Tensor& x, const at::Tensor& S) {
  return {x.size(0), x.size(1), x.size(2), x.size(3), S.size(2)};
}

// A (k, k, C, C) view of the filter, copied contiguous in the accumulation type.
at::Tensor tap_major(const at::Tensor& view, at::ScalarType acc_type) {
  return at::empty(view.sizes(), view.options().dtype(acc_type)).copy_(view);
}

// Fills the launch fields of `args` and launches one block per image group on the current stream.
template <typename scalar_t, typename acc_t, typename Kernel>
void launch(Kernel kernel, SeriesArgs<scalar_t, acc_t>& args, const SocShape& shape,
            int64_t n, const char* op) {
  args.shape = shape;
  args.n = n;
  args.images_per_group = kernels::images_per_group(shape.batch, shape.pixels(), kConvPixels);
  const int64_t blocks = ceil_div(shape.batch, args.images_per_group);
  TORCH_CHECK(blocks <= std::numeric_limits<int>::max(), op, ": the batch of ", shape.batch,
              " images needs ", blocks, " thread blocks, more than one launch can have");
  kernel<<<static_cast<unsigned int>(blocks), kThreads, 0,
           c10::cuda::getCurrentCUDAStream()>>>(args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, std::vector<at::Tensor>> soc_exp_cuda(const at::Tensor& input,
                                                             const at::Tensor& S, int64_t terms,
                                                             c10::string_view grad_mode) {
  const SocGradMode mode = check_soc_exp_args("soc_exp", "x", input, S, terms, grad_mode);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous();
  const int64_t n = terms - 1;
  if (n == 0) {
    return {x.clone(), {}};  // custom ops must not return their inputs
  }
  // Exact mode keeps nothing (the backward recomputes the powers); fast mode keeps z_2, which is
  // x itself when n == 1.
  const bool keep_z2 = mode == SocGradMode::kFast;
  at::Tensor y = at::empty(x.sizes(), x.options());
  std::vector<at::Tensor> saved;
  if (keep_z2) {
    saved.push_back(n == 1 ? x.clone() : at::empty(x.sizes(), x.options()));
  }
  if (x.numel() == 0) {
    return {y, saved};
  }
  const SocShape shape = soc_shape(x, S);
  const at::ScalarType acc_type = at::toOpMathType(x.scalar_type());
  const at::Tensor filter = tap_major(S.permute({2, 3, 1, 0}), acc_type);
  at::Tensor scratch =
      at::empty({kernels::ping_pong_slots(n), shape.numel()}, x.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "soc_exp_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    SeriesArgs<scalar_t, acc_t> args{};
    args.input = x.const_data_ptr<scalar_t>();
    args.output = y.mutable_data_ptr<scalar_t>();
    args.saved = keep_z2 && n >= 2 ? saved.front().mutable_data_ptr<scalar_t>() : nullptr;
    args.scratch = scratch.mutable_data_ptr<acc_t>();
    args.filter = filter.const_data_ptr<acc_t>();
    launch(soc_exp_forward_kernel<scalar_t, acc_t>, args, shape, n, "soc_exp");
  });
  return {y, saved};
}

std::tuple<at::Tensor, at::Tensor> soc_exp_backward_cuda(const at::Tensor& grad_output,
                                                         const at::Tensor& S,
                                                         const at::Tensor& start,
                                                         at::TensorList powers, int64_t terms,
                                                         c10::string_view grad_mode) {
  const SocGradMode mode = check_soc_exp_backward_args(grad_output, S, start, powers, terms,
                                                       grad_mode, /*keeps_powers=*/false);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const at::Tensor grad_y = grad_output.contiguous();
  const int64_t n = terms - 1;
  if (n == 0) {
    return {grad_y.clone(), at::zeros(S.sizes(), S.options())};
  }
  const bool exact = mode == SocGradMode::kExact;
  const at::ScalarType acc_type = at::toOpMathType(S.scalar_type());
  at::Tensor grad_x = at::empty(grad_y.sizes(), grad_y.options());
  const int64_t k = S.size(2), channels = S.size(0);
  at::Tensor grad_taps = at::zeros({k, k, channels, channels}, S.options().dtype(acc_type));
  if (grad_y.numel() > 0) {
    const SocShape shape = soc_shape(grad_y, S);
    const at::Tensor origin = start.contiguous();
    // The powers S^j x need S itself (exact mode only); the adjoint loop needs flipT(S), whose
    // [ty][tx][ci][co] entry is S[ci][co][k-1-ty][k-1-tx].
    const at::Tensor filter = exact ? tap_major(S.permute({2, 3, 1, 0}), acc_type) : at::Tensor();
    const at::Tensor adjoint = tap_major(S.flip({2, 3}).permute({2, 3, 0, 1}), acc_type);
    at::Tensor scratch = at::empty({BackwardSlots{n, exact}.count(), shape.numel()},
                                   grad_y.options().dtype(acc_type));
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, grad_y.scalar_type(), "soc_exp_backward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          SeriesArgs<scalar_t, acc_t> args{};
          args.exact = exact;
          args.input = grad_y.const_data_ptr<scalar_t>();
          args.start = origin.const_data_ptr<scalar_t>();
          args.output = grad_x.mutable_data_ptr<scalar_t>();
          args.scratch = scratch.mutable_data_ptr<acc_t>();
          args.filter = exact ? filter.const_data_ptr<acc_t>() : nullptr;
          args.adjoint = adjoint.const_data_ptr<acc_t>();
          args.grad_filter = grad_taps.mutable_data_ptr<acc_t>();
          launch(soc_exp_backward_kernel<scalar_t, acc_t>, args, shape, n, "soc_exp_backward");
        });
  }
  // [ty][tx][co][ci] -> (co, ci, ty, tx), contiguous, in S's dtype.
  at::Tensor grad_S = at::empty(S.sizes(), S.options());
  grad_S.copy_(grad_taps.permute({2, 3, 0, 1}));
  return {grad_x, grad_S};
}

}  // namespace

TORCH_LIBRARY_IMPL(lipkernels, CUDA, m) {
  m.impl("soc_exp", &soc_exp_cuda);
  m.impl("soc_exp_backward", &soc_exp_backward_cuda);
}

}  // namespace cuda
}  // namespace lipkernels
