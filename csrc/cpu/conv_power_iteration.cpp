// CPU kernels of conv_power_iteration and conv_power_iteration_backward: power iteration on the
// convolution map itself (CPL, Meunier et al., ICML 2022; LCNN, Srinivas et al., NeurIPS 2022)
// from a persistent input-shaped vector u, every iteration in one op call.
//
// Math (docs/design.md §3.1; lipkernels/reference/conv_power_iteration.py), A x the zero-padded
// conv2d(x, W, stride, padding), A^T its adjoint, the transposed convolution whose
// output_padding gives back u's shape:
//   forward, `iters` times:  v = normalize(A u);  t = A^T v;  u = normalize(t)
//   then sigma = <v, A u> = <A^T v, u> = t . u, so the last transposed convolution gives sigma
//   and a call costs 2 iters convolutions, one fewer than the reference's.
//   backward, u and v constant:  grad_W = grad_sigma * Wg(u, v), Wg the weight gradient of
//   conv2d(u, .) for the output gradient v.
// normalize(x) = x / max(||x||, 1e-12) over the whole tensor, as F.normalize: a zero filter gives
// zero vectors and sigma 0, and a NaN passes through (clamp_min keeps it).
//
// Half-precision inputs are iterated in float (at::opmath_type), as power_iteration does: the
// norms of an image-sized vector lose most of a half's bits.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <tuple>

#include "common/checks.h"
#include "kernels/power_iteration.cuh"

namespace lipkernels {
namespace cpu {
namespace {

at::Tensor normalize(const at::Tensor& x) {
  return x / at::linalg_vector_norm(x).clamp_min(kernels::norm_eps<double>());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_power_iteration_cpu(
    const at::Tensor& weight, const at::Tensor& u, int64_t iters, c10::IntArrayRef stride,
    c10::IntArrayRef padding) {
  const ConvGeometry geometry =
      check_conv_power_iteration_args(weight, u, iters, stride, padding);
  const auto acc_type = at::toOpMathType(weight.scalar_type());
  const at::Tensor w = weight.to(acc_type);
  at::Tensor u_acc = u.to(acc_type), v, t;
  for (int64_t it = 0; it < iters; ++it) {
    v = normalize(at::convolution(u_acc, w, /*bias=*/{}, stride, padding, /*dilation=*/{1, 1},
                                  /*transposed=*/false, /*output_padding=*/{0, 0},
                                  /*groups=*/1));
    t = at::convolution(v, w, /*bias=*/{}, stride, padding, /*dilation=*/{1, 1},
                        /*transposed=*/true, geometry.output_padding, /*groups=*/1);
    u_acc = normalize(t);
  }
  const at::Tensor sigma = at::dot(t.reshape(-1), u_acc.reshape(-1));
  const auto dtype = weight.scalar_type();
  return {sigma.to(dtype), u_acc.to(dtype).contiguous(), v.to(dtype).contiguous()};
}

at::Tensor conv_power_iteration_backward_cpu(const at::Tensor& grad_sigma, const at::Tensor& u,
                                             const at::Tensor& v, c10::IntArrayRef kernel_size,
                                             c10::IntArrayRef stride, c10::IntArrayRef padding) {
  check_conv_power_iteration_backward_args(grad_sigma, u, v, kernel_size, stride, padding);
  const auto acc_options = u.options().dtype(at::toOpMathType(u.scalar_type()));
  // The weight gradient reads only the filter's shape: a broadcast scalar stands in for the
  // filter, as in torch.nn.grad.conv2d_weight.
  const at::Tensor filter_shape = at::empty({1}, acc_options)
                                      .expand({v.size(1), u.size(1), kernel_size[0],
                                               kernel_size[1]});
  at::Tensor grad_weight = std::get<1>(at::convolution_backward(
      v.to(acc_options.dtype()), u.to(acc_options.dtype()), filter_shape,
      /*bias_sizes=*/c10::nullopt, stride, padding, /*dilation=*/{1, 1}, /*transposed=*/false,
      /*output_padding=*/{0, 0}, /*groups=*/1, /*output_mask=*/{false, true, false}));
  return grad_weight.mul_(grad_sigma).to(u.scalar_type()).contiguous();
}

}  // namespace

TORCH_LIBRARY_IMPL(lipkernels, CPU, m) {
  m.impl("conv_power_iteration", &conv_power_iteration_cpu);
  m.impl("conv_power_iteration_backward", &conv_power_iteration_backward_cpu);
}

}  // namespace cpu
}  // namespace lipkernels
