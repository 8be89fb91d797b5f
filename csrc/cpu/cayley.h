// The Cayley transform on the CPU, shared by the cayley and cayley_frequency_product kernels.
//
// Math (lipkernels/reference/cayley.py): for a tall W (..., m, n), m >= n, real or complex,
//   U = W[..., :n, :], V = W[..., n:, :], A = U - U^H + V^H V, X = (I + A)^{-1},
//   Q = [ 2X - I ; -2 V X ]   (= [ X (I - A) ; -2 V X ], since I - A = 2I - (I + A)).
// X is all the closed-form backward needs besides W itself,
//   G_A = 2 X^H (V^H G_bot - G_top) X^H,
//   grad_W = [ G_A - G_A^H ; V (G_A + G_A^H) - 2 G_bot X^H ].
// Everything is batched ATen: one batched LU solve and a few batched GEMMs, which ATen already
// spreads over threads, so no hand-written loop would beat it at these sizes.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace lipkernels {
namespace cpu {

// (Q, X) of a tall W; X = (I + A)^{-1} (..., n, n), both contiguous.
std::tuple<at::Tensor, at::Tensor> cayley_tall(const at::Tensor& W);

// X = (I + A)^{-1} of a tall W alone (..., n, n), contiguous: what cayley_frequency_product
// applies without forming Q.
at::Tensor cayley_inverse(const at::Tensor& W);

// grad_W of a tall W for the output gradient grad_Q, from the forward's X.
at::Tensor cayley_tall_backward(const at::Tensor& grad_Q, const at::Tensor& X,
                                const at::Tensor& W);

// The bottom block V = W[..., n:, :] of a tall W (a view).
at::Tensor bottom_block(const at::Tensor& W);

// t^H, materialised (see cayley.cpp for why not a lazy-conjugate view).
at::Tensor conj_transpose(const at::Tensor& t);

}  // namespace cpu
}  // namespace lipkernels
