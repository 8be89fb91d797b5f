// CPU kernels of convex_potential and convex_potential_backward: the residual step of the convex
// potential layers (CPL, Meunier et al., ICML 2022; SLL, Araujo et al., ICLR 2023).
//
// Math (lipkernels/reference/convex_potential.py), W a "same" zero-padded convolution (odd k) or
// a matrix, s the 0-dim or per-inner-channel scale:
//   forward:  r = relu(W x + b),  z = x - W^T (s r)
//   backward: q = W g (g = grad_z),  m = [r > 0],  e = -s m q,
//             grad_s = -sum r q,  grad_b = sum e,  grad_x = g + W^T e,
//             grad_W = (e correlated with x) - s (r correlated with g)
// For a filter, W^T runs as the forward map of flipT(W) (the filter transposed in channels and
// flipped, the adjoint of a stride-1 "same" convolution with odd k) with s folded into its
// C_inner input channels: a convolution, which oneDNN runs at about twice the speed of
// conv_transpose2d here, and a pass over the small filter instead of over the activation. For a
// matrix, s goes on the activation's rows and each W^T product is one addmm reading W in place.
// The backward's elementwise work (the mask, e, and the two channel sums) is one pass over q
// and r; relu's activation r is all the forward keeps beyond the inputs: the weight and scale
// gradients need its values, which the mask alone cannot give back without a second W x.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "cpu/parallel.h"

namespace lipkernels {
namespace cpu {
namespace {

// The map W (or, given flipT(W), W^T) of the step on `input`: a "same" zero-padded convolution
// with a filter, or a matrix product with a matrix, plus an optional bias.
at::Tensor apply(const at::Tensor& input, const at::Tensor& weight,
                 const std::optional<at::Tensor>& bias) {
  if (weight.dim() == 4) {
    return at::conv2d(input, weight, bias, /*stride=*/1,
                      /*padding=*/{weight.size(2) / 2, weight.size(3) / 2});
  }
  return bias.has_value() ? at::addmm(*bias, input, weight.t()) : at::mm(input, weight.t());
}

// `weight` (a filter or a matrix) with its C_inner rows (dim 0) multiplied by `scale`, 0-dim or
// (C_inner,).
at::Tensor scale_rows(const at::Tensor& weight, const at::Tensor& scale) {
  if (scale.dim() == 0) {
    return weight * scale;
  }
  std::vector<int64_t> shape(weight.dim(), 1);
  shape[0] = -1;
  return weight * scale.view(shape);
}

// base + sign * W^T (s v) for v (B, C_inner, ...): for a filter the convolution with flipT(W)
// with s folded into its C_inner input channels (a pass over the small filter), for a matrix
// one addmm with s on v's rows, which reads W in place (a transposed copy of a 2048 x 1920
// matrix would cost more than the product). An undefined `scale` means 1.
at::Tensor add_adjoint(const at::Tensor& base, const at::Tensor& v, const at::Tensor& weight,
                       const at::Tensor& scale, double sign) {
  if (weight.dim() == 4) {
    const at::Tensor scaled = scale.defined() ? scale_rows(weight, scale) : weight;
    at::Tensor out =
        at::conv2d(v, scaled.transpose(0, 1).flip({2, 3}).contiguous(), std::nullopt,
                   /*stride=*/1, /*padding=*/{weight.size(2) / 2, weight.size(3) / 2});
    return sign > 0 ? out.add_(base) : at::sub_out(out, base, out);
  }
  return at::addmm(base, scale.defined() ? v * scale : v, weight, /*beta=*/1, /*alpha=*/sign);
}

// The weight gradient of the map W on `input` for the output gradient `grad_output`: the
// correlation of the two, summed over the batch (and the image).
at::Tensor weight_gradient(const at::Tensor& grad_output, const at::Tensor& input,
                           const at::Tensor& weight) {
  if (weight.dim() == 4) {
    return std::get<1>(at::convolution_backward(
        grad_output, input, weight, /*bias_sizes=*/std::nullopt, /*stride=*/{1, 1},
        /*padding=*/{weight.size(2) / 2, weight.size(3) / 2}, /*dilation=*/{1, 1},
        /*transposed=*/false, /*output_padding=*/{0, 0}, /*groups=*/1, {false, true, false}));
  }
  return at::mm(grad_output.t(), input);
}

// One pass over the planes (b, c) of q = W g and r (B * C_inner planes of `length` entries):
// q becomes e = -s [r > 0] q (a select, as relu's backward, so a NaN or inf q where r <= 0
// gives 0), and sums[plane] = (sum r q, sum e) in acc_t.
template <typename scalar_t, typename acc_t>
LIPKERNELS_CPU_CLONES void activation_gradient_planes(scalar_t* q, const scalar_t* r,
                                                      const acc_t* scale, bool per_channel,
                                                      int64_t channels, int64_t length,
                                                      int64_t begin, int64_t end, acc_t* sums) {
  for (int64_t plane = begin; plane < end; ++plane) {
    const acc_t s = scale[per_channel ? plane % channels : 0];
    scalar_t* q_plane = q + plane * length;
    const scalar_t* r_plane = r + plane * length;
    acc_t rq = 0, e_sum = 0;
#pragma omp simd reduction(+ : rq, e_sum)
    for (int64_t i = 0; i < length; ++i) {
      const acc_t rv = static_cast<acc_t>(r_plane[i]), qv = static_cast<acc_t>(q_plane[i]);
      rq += rv * qv;
      const acc_t e = rv > acc_t(0) ? -s * qv : acc_t(0);
      e_sum += e;
      q_plane[i] = static_cast<scalar_t>(e);
    }
    sums[2 * plane] = rq;
    sums[2 * plane + 1] = e_sum;
  }
}

// Turns q into e in place and returns the per-channel (sum r q, sum e) (C_inner, 2) in the
// accumulation dtype.
at::Tensor activation_gradient(at::Tensor& q, const at::Tensor& r, const at::Tensor& scale) {
  const int64_t batch = q.size(0), channels = q.size(1);
  const int64_t planes = batch * channels, length = planes ? q.numel() / planes : 0;
  const at::ScalarType acc_type = at::toOpMathType(q.scalar_type());
  at::Tensor sums = at::empty({planes, 2}, q.options().dtype(acc_type));
  const at::Tensor factors = scale.to(acc_type).contiguous();
  const bool per_channel = scale.dim() == 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, q.scalar_type(), "convex_potential_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        scalar_t* q_data = q.data_ptr<scalar_t>();
        const scalar_t* r_data = r.const_data_ptr<scalar_t>();
        const acc_t* s_data = factors.const_data_ptr<acc_t>();
        acc_t* sums_data = sums.data_ptr<acc_t>();
        const int64_t grain = std::max<int64_t>(1, kMinTaskElements / std::max<int64_t>(length, 1));
        at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
          activation_gradient_planes(q_data, r_data, s_data, per_channel, channels, length,
                                     begin, end, sums_data);
        });
      });
  return sums.view({batch, channels, 2}).sum(0);
}

std::tuple<at::Tensor, at::Tensor> convex_potential_cpu(const at::Tensor& x_input,
                                                        const at::Tensor& weight_input,
                                                        const std::optional<at::Tensor>& bias,
                                                        const at::Tensor& scale) {
  check_convex_potential_args("convex_potential", "x", x_input, weight_input, bias, scale);
  const at::Tensor x = x_input.contiguous(), weight = weight_input.contiguous();
  at::Tensor activation = apply(x, weight, bias).clamp_min_(0);
  return {add_adjoint(x, activation, weight, scale, -1.0), activation};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> convex_potential_backward_cpu(
    const at::Tensor& grad_input, const at::Tensor& x_input, const at::Tensor& weight_input,
    const at::Tensor& scale, const at::Tensor& activation_input) {
  check_convex_potential_backward_args(grad_input, x_input, weight_input, scale,
                                       activation_input);
  const at::Tensor grad_z = grad_input.contiguous(), x = x_input.contiguous();
  const at::Tensor weight = weight_input.contiguous(), r = activation_input.contiguous();
  at::Tensor e = apply(grad_z, weight, std::nullopt);
  const at::Tensor sums = activation_gradient(e, r, scale);
  const at::Tensor rq = sums.select(1, 0);
  const at::Tensor grad_scale = (scale.dim() == 0 ? -rq.sum() : -rq).to(scale.scalar_type());
  // A copy, not a view into `sums`: an output with a storage offset would differ from its fake.
  const at::Tensor grad_bias = sums.select(1, 1).to(x.scalar_type(), /*non_blocking=*/false,
                                                    /*copy=*/true);
  at::Tensor grad_x = add_adjoint(grad_z, e, weight, at::Tensor(), 1.0);
  const at::Tensor from_output = weight.dim() == 4
                                     ? scale_rows(weight_gradient(r, grad_z, weight), scale)
                                     : weight_gradient(r * scale, grad_z, weight);
  const at::Tensor grad_weight = weight_gradient(e, x, weight).sub_(from_output);
  return {grad_x, grad_weight, grad_bias, grad_scale};
}

}  // namespace

TORCH_LIBRARY_IMPL(lipkernels, CPU, m) {
  m.impl("convex_potential", &convex_potential_cpu);
  m.impl("convex_potential_backward", &convex_potential_backward_cpu);
}

}  // namespace cpu
}  // namespace lipkernels
