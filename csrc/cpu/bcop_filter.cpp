// CPU kernels of bcop_filter and bcop_filter_backward: the filter of a block convolution
// orthogonal parametrisation (BCOP; Li, Haque, Anil, Lucas, Grosse & Jacobsen, "Preventing
// Gradient Attenuation in Lipschitz Constrained Convolutional Networks", NeurIPS 2019) from
// matrices M (2k - 1, C, C), C = max(in, out); the conventions are those of the seed code,
// stated in lipkernels/reference/bcop_filter.py.
//
// Forward. block_orth(P, Q) is, as a polynomial in the two tap axes, (P + (I - P) z_1)
// (Q + (I - Q) z_2), so the k x k taps Y = H_t K of the head times the convolved kernels are
// the product H_t prod_j X_j, X_j = P_j + (I - P_j) z, with z = z_1 for even j and z_2 for odd
// j, j = 0..2k-3 (P_j = U_j U_j^T, U_j the first C/2 columns of M_(j+1)). Multiplying by the
// factors in order, from Y_0 = H_t (1 x 1 taps, r x C, r = min(in, out)), each growth step is
// one product over all taps:
//   Y_(j+1)[i] = (Y_j - Y_j P_j)[i - 1] + (Y_j P_j)[i]       (along the step's axis),
// one GEMM of (taps r) x C by C x C, against the seed's product per pair of taps (and the head
// last, on C x C taps): the forward is a batched product forming the 2k - 2 projectors and
// 2k - 2 GEMMs, r C^2 sum_j |Y_j| multiply-adds, |Y_j| the taps of Y_j (1, 2, 4, 6 for k = 3).
//
// Backward, from G = dL/dY_(j+1) (the filter gradient permuted back to taps), per step:
//   D = G[i] - G[i + 1]          (the taps of Y_j),
//   dL/dP_j = Y_j^T D,   dL/dY_j = G[i + 1] + D P_j^T,
// two GEMMs of the forward's size; then dL/dU_j = (dL/dP_j + dL/dP_j^T) U_j (one batched
// product) and the head's gradient is what reaches Y_0 (transposed back where H_t = H^T).
//
// What is kept: the backward reads the projectors and every Y_j. Y_0 is the head, a slice of
// the matrices; the forward returns the projectors ((2k - 2) C^2) and Y_1..Y_(2k-3) (r C
// sum_(j>=1) |Y_j|: 12 r C for k = 3, 1.3 times the filter; 69 r C for k = 5, 2.8 times).
// Recomputing them instead would repeat the whole forward inside the backward, making it 3/2
// of its products; kept, the backward's step products are twice the forward's. The filter does
// not depend on the batch, so what is kept is a few filters' worth, and the CPU kernels keep
// what saves products (as the bjorck and soc_exp CPU kernels do); autograd through the seed's
// loops keeps more (every tap of every convolution and of the block kernels).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "common/checks.h"

namespace lipkernels {
namespace cpu {
namespace {

// The tap axis growth step j runs along: the first for even j, the second for odd j.
int64_t step_axis(int64_t j) { return j % 2; }

// The head used as Y_0 (1, 1, r, C): H = M_0[:in, :out], transposed for in > out. A copy: for
// k = 1 it is the filter, which must not share the input's memory.
at::Tensor head_taps(const at::Tensor& matrices, const BcopGeometry& geometry, int64_t in,
                     int64_t out) {
  at::Tensor head = matrices[0].narrow(0, 0, in).narrow(1, 0, out);
  head = geometry.head_transposed ? head.t() : head;
  return head.clone(at::MemoryFormat::Contiguous).view({1, 1, geometry.rows, geometry.channels});
}

// The first C/2 columns of M_1..M_(2k-2): the factors U_j of the projectors.
at::Tensor projector_halves(const at::Tensor& matrices, const BcopGeometry& geometry) {
  return matrices.narrow(0, 1, 2 * geometry.size - 2).narrow(2, 0, geometry.channels / 2);
}

// Y_(j+1) from Y = Y_j (n_1, n_2, r, C) and P = P_j.
at::Tensor grow(const at::Tensor& Y, const at::Tensor& P, int64_t axis) {
  const int64_t C = Y.size(-1), n = Y.size(axis);
  const at::Tensor YP = at::mm(Y.view({-1, C}), P).view(Y.sizes());
  std::vector<int64_t> grown = Y.sizes().vec();
  grown[axis] += 1;
  at::Tensor next = at::zeros(grown, Y.options());
  next.narrow(axis, 0, n).copy_(YP);
  next.narrow(axis, 1, n).add_(Y).sub_(YP);
  return next;
}

// The taps (k, k, r, C), [i][j], as the filter (out, in, k, k): weight[o, c, j, i] =
// Y[i][j][c, o] where the filter holds the taps transposed, Y[i][j][o, c] otherwise.
at::Tensor taps_to_weight(const at::Tensor& Y, const BcopGeometry& geometry) {
  return (geometry.taps_transposed ? Y.permute({3, 2, 1, 0}) : Y.permute({2, 3, 1, 0}))
      .contiguous();
}

// The inverse permutation: the filter's gradient as taps (k, k, r, C).
at::Tensor weight_to_taps(const at::Tensor& weight, const BcopGeometry& geometry) {
  return (geometry.taps_transposed ? weight.permute({3, 2, 1, 0}) : weight.permute({3, 2, 0, 1}))
      .contiguous();
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> bcop_filter_cpu(
    const at::Tensor& matrices_in, int64_t in_channels, int64_t out_channels) {
  const BcopGeometry geometry =
      check_bcop_filter_args("bcop_filter", matrices_in, in_channels, out_channels);
  const at::Tensor matrices = matrices_in.contiguous();
  const at::Tensor halves = projector_halves(matrices, geometry);
  const at::Tensor projectors = at::bmm(halves, halves.transpose(1, 2));
  at::Tensor Y = head_taps(matrices, geometry, in_channels, out_channels);
  std::vector<at::Tensor> iterates;
  for (int64_t j = 0; j < projectors.size(0); ++j) {
    if (j > 0) {
      iterates.push_back(Y);
    }
    Y = grow(Y, projectors[j], step_axis(j));
  }
  return {taps_to_weight(Y, geometry), projectors, iterates};
}

at::Tensor bcop_filter_backward_cpu(const at::Tensor& grad_weight, const at::Tensor& matrices_in,
                                    const at::Tensor& projectors, at::TensorList iterates,
                                    int64_t in_channels, int64_t out_channels) {
  const BcopGeometry geometry = check_bcop_filter_backward_args(
      grad_weight, matrices_in, projectors, iterates, in_channels, out_channels);
  const at::Tensor matrices = matrices_in.contiguous();
  const int64_t C = geometry.channels, steps = projectors.size(0);
  at::Tensor G = weight_to_taps(grad_weight, geometry);
  at::Tensor grad_projectors = at::empty_like(projectors);
  for (int64_t j = steps - 1; j >= 0; --j) {
    const int64_t axis = step_axis(j), n = G.size(axis) - 1;
    const at::Tensor Y =
        j == 0 ? head_taps(matrices, geometry, in_channels, out_channels) : iterates[j - 1];
    const at::Tensor later = G.narrow(axis, 1, n);
    const at::Tensor D = (G.narrow(axis, 0, n) - later).view({-1, C});
    at::Tensor grad_projector = grad_projectors[j];
    at::mm_out(grad_projector, Y.reshape({-1, C}).t(), D);
    G = at::addmm(later.reshape({-1, C}), D, projectors[j].t()).view(Y.sizes());
  }
  at::Tensor grad_matrices = at::zeros_like(matrices);
  const at::Tensor halves = projector_halves(matrices, geometry);
  projector_halves(grad_matrices, geometry)
      .copy_(at::bmm(grad_projectors + grad_projectors.transpose(1, 2), halves));
  const at::Tensor grad_head = G.view({geometry.rows, C});
  grad_matrices[0]
      .narrow(0, 0, in_channels)
      .narrow(1, 0, out_channels)
      .copy_(geometry.head_transposed ? grad_head.t() : grad_head);
  return grad_matrices;
}

}  // namespace

TORCH_LIBRARY_IMPL(lipkernels, CPU, m) {
  m.impl("bcop_filter", &bcop_filter_cpu);
  m.impl("bcop_filter_backward", &bcop_filter_backward_cpu);
}

}  // namespace cpu
}  // namespace lipkernels
