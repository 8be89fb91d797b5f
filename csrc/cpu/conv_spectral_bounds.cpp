// CPU kernels of conv_spectral_bounds and conv_spectral_bounds_backward: the Fantastic Four bounds
// (Singla & Feizi, ICLR 2021) on the operator norm of a convolution with a filter (O, I, H, W).
//
// Math (kernels/conv_spectral_bounds.cuh): bounds[q] = sqrt(H W) * sigma_q, sigma_q from `iters`
// power iterations on the reshape M_q of the filter with the persistent right vector u_q;
// backward: grad_weight[o,i,h,w] = sqrt(H W) * sum_q grad_bounds[q] v_q[row_q] u_q[col_q].
//
// Forward: passes over the filter's output-channel slabs, which hold every row of M_1..M_3 and
// every column of M_4 that a slab's o indexes, so no reshape is copied and one pass serves all
// four iterations (`SlabPowerIteration`; the schedule of docs/performance.md's Fantastic Four
// model); small filters over several iterations instead sweep the four reshapes
// (`reshape_power_iteration`, the power_iteration op's routine).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "cpu/parallel.h"
#include "cpu/power_iteration.h"
#include "kernels/conv_spectral_bounds.cuh"

namespace lipkernels {
namespace cpu {
namespace {

using kernels::F4Coord;
using kernels::F4Index;
using kernels::F4Shape;

// What one pass over a slab reads and where it adds (see SlabPowerIteration): u_1 and u_3 with
// the input channel innermost (taps x I), u_2 (k_h x I, its own order), v_4 (I), the slab's
// part of u_4 (K), and chunk partials of M_1^T t_1, M_2^T t_2, M_3^T t_3 (in the u orders) and
// of M_4's accumulation (I).
template <typename acc_t>
struct SlabPass {
  int64_t in_channels, kernel_h, kernel_w;
  bool rows, first, update;
  const acc_t *u1, *u2, *u3, *v4;
  acc_t *w1, *w2, *w3, *m4;
};

// One slab, taps x input channels: the row dots t_1 (k_h), t_2 (k_w), t_3 and M_4's column
// dots s (K) it writes, then (where the pass updates) the weighted rows and columns.
template <typename acc_t>
LIPKERNELS_CPU_CLONES void sweep_slab(const SlabPass<acc_t>& p, const acc_t* slab,
                                      const acc_t* u4, acc_t* t1, acc_t* t2, acc_t* t3,
                                      acc_t* s) {
  const int64_t I = p.in_channels, kh = p.kernel_h, kw = p.kernel_w, K = kh * kw;
  acc_t t3_sum = 0;
  for (int64_t k = 0; k < K; ++k) {
    const acc_t* x = slab + k * I;
    const int64_t h = k / kw, w = k % kw;
    if (p.rows) {
      t1[h] += simd_dot(x, p.u1 + w * I, I);
      t2[w] += simd_dot(x, p.u2 + h * I, I);
      t3_sum += simd_dot(x, p.u3 + k * I, I);
    }
    if (p.first) {
      simd_axpy(u4[k], x, p.m4, I);  // M_4 u_0
    } else {
      s[k] = simd_dot(x, p.v4, I);
    }
  }
  *t3 = t3_sum;
  if (!p.rows && !p.update) {
    return;
  }
  for (int64_t k = 0; k < K; ++k) {
    const acc_t* x = slab + k * I;
    const int64_t h = k / kw, w = k % kw;
    if (p.rows) {
      simd_axpy(t1[h], x, p.w1 + w * I, I);
      simd_axpy(t2[w], x, p.w2 + h * I, I);
      simd_axpy(t3_sum, x, p.w3 + k * I, I);
    }
    if (p.update) {
      simd_axpy(s[k], x, p.m4, I);  // M_4 s
    }
  }
}

// The four power iterations in passes over the output-channel slabs S[o], with no copy of a
// reshape: a slab holds the rows of M_1 ((o, h)), M_2 ((o, w)) and M_3 (o) with its o, and the
// columns of M_4 ((o, h, w)). For M_1..M_3 one pass is one iteration, u <- M^T (M u): the slab's
// row dots, then its rows added with those weights, while it is in cache. M_4's rows span every
// slab, so it iterates on its left vector through M_4 M_4^T: the first pass forms M_4 u_0, every
// later one the column dots s = M_4^T v (the next u up to its scale) and M_4 s, and one pass
// more the last dots: `iters` iterations take iters + 1 passes. The filter is laid out once per
// call as (O, k_h, k_w, I), a slab taps x input channels, so that every dot product and update
// runs over contiguous input channels.
template <typename acc_t>
class SlabPowerIteration {
 public:
  SlabPowerIteration(const acc_t* filter, const F4Shape& shape, acc_t* const* u, acc_t* const* v,
                     acc_t* sigma)
      : filter_(filter), s_(shape), u_(u), v_(v), sigma_(sigma) {
    const int64_t work = shape.numel();
    chunks_ = std::max<int64_t>(
        1, std::min<int64_t>({at::get_num_threads(), shape.out_channels,
                              work / (2 * kMinTaskElements)}));
    partial_length_ = s_.cols(0) + s_.cols(1) + s_.cols(2) + s_.rows(3);
    partials_.assign(chunks_ * partial_length_, acc_t(0));
    for (int q = 0; q < 3; ++q) {
      dots_[q].assign(s_.rows(q), acc_t(0));
    }
    column_dots_.assign(s_.cols(3), acc_t(0));
    u1_by_tap_.assign(s_.cols(0), acc_t(0));
    u3_by_tap_.assign(s_.cols(2), acc_t(0));
  }

  void run(int64_t iters) {
    for (int64_t pass = 1; pass <= iters + 1; ++pass) {
      const bool rows = pass <= iters;  // an iteration of M_1..M_3
      const bool first = pass == 1;     // M_4: M_4 u_0 only
      const bool update = !first && pass <= iters;  // M_4: also M_4 s
      sweep(rows, first, update);
      if (rows) {
        for (int q = 0; q < 3; ++q) {
          finish_row_iteration(q, partial(0, q), pass == iters);
        }
      }
      finish_column_pass(first, update, pass == iters + 1);
    }
  }

 private:
  int64_t offset(int q) const {
    int64_t offset = 0;
    for (int j = 0; j < q; ++j) {
      offset += s_.cols(j);
    }
    return offset;
  }

  // Chunk c's partial sums of M_q^T (M_q u) (q < 3) or of M_4's accumulation (q == 3).
  acc_t* partial(int64_t c, int q) { return partials_.data() + c * partial_length_ + offset(q); }

  // Adds every chunk's partials into chunk 0's.
  void reduce_partials() {
    for (int64_t c = 1; c < chunks_; ++c) {
      const acc_t* p = partials_.data() + c * partial_length_;
      for (int64_t j = 0; j < partial_length_; ++j) {
        partials_[j] += p[j];
      }
    }
  }

  void sweep(bool rows, bool first, bool update) {
    std::fill(partials_.begin(), partials_.end(), acc_t(0));
    const int64_t I = s_.in_channels, kh = s_.kernel_h, kw = s_.kernel_w, K = kh * kw;
    if (rows) {  // u_1 and u_3 with i innermost, as the slabs are laid out
      transpose(u_[0], I, kw, u1_by_tap_.data());
      transpose(u_[2], I, K, u3_by_tap_.data());
    }
    const int64_t chunks = chunks_, out = s_.out_channels;
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const SlabPass<acc_t> pass{I, kh, kw, rows, first, update,
                                   u1_by_tap_.data(), u_[1], u3_by_tap_.data(), v_[3],
                                   partial(c, 0), partial(c, 1), partial(c, 2), partial(c, 3)};
        for (int64_t o = out * c / chunks; o < out * (c + 1) / chunks; ++o) {
          acc_t* t1 = dots_[0].data() + o * kh;
          acc_t* t2 = dots_[1].data() + o * kw;
          std::fill_n(t1, kh, acc_t(0));
          std::fill_n(t2, kw, acc_t(0));
          sweep_slab(pass, filter_ + o * K * I, u_[3] + o * K, t1, t2, dots_[2].data() + o,
                     column_dots_.data() + o * K);
        }
      }
    });
    reduce_partials();
    if (rows) {  // back to the reshapes' column order
      transpose(partial(0, 0), kw, I, u1_by_tap_.data());
      std::copy(u1_by_tap_.begin(), u1_by_tap_.end(), partial(0, 0));
      transpose(partial(0, 2), K, I, u3_by_tap_.data());
      std::copy(u3_by_tap_.begin(), u3_by_tap_.end(), partial(0, 2));
    }
  }

  // out (cols x rows) = x^T for a row-major rows x cols x.
  static void transpose(const acc_t* x, int64_t rows, int64_t cols, acc_t* out) {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        out[c * rows + r] = x[r * cols + c];
      }
    }
  }

  static acc_t sum_of_squares(const acc_t* x, int64_t n) {
    acc_t sum = 0;
    for (int64_t j = 0; j < n; ++j) {
      sum += x[j] * x[j];
    }
    return sum;
  }

  // M_q (q < 3) after a pass: v = normalize(M u) from the dots, t = M^T v, u = normalize(t);
  // on the last iteration v and sigma = t . u are stored.
  void finish_row_iteration(int q, acc_t* t, bool last) {
    const int64_t m = s_.rows(q), n = s_.cols(q);
    const acc_t v_scale = kernels::normalizing_scale(sum_of_squares(dots_[q].data(), m));
    for (int64_t j = 0; j < n; ++j) {
      t[j] *= v_scale;
    }
    const acc_t u_scale = kernels::normalizing_scale(sum_of_squares(t, n));
    acc_t sigma = 0;
    for (int64_t j = 0; j < n; ++j) {
      u_[q][j] = t[j] * u_scale;
      sigma += t[j] * u_[q][j];
    }
    if (last) {
      for (int64_t r = 0; r < m; ++r) {
        v_[q][r] = dots_[q][r] * v_scale;
      }
      sigma_[q] = sigma;
    }
  }

  // M_4 after a pass: the first gives v = normalize(M_4 u_0); the later ones u = normalize(s)
  // from the column dots s = M_4^T v, then (updating) v = normalize(M_4 u), or (the last)
  // sigma = s . u.
  void finish_column_pass(bool first, bool update, bool last) {
    const int64_t m = s_.rows(3), n = s_.cols(3);
    acc_t* accumulated = partial(0, 3);
    if (first) {
      normalize_into(accumulated, m, acc_t(1), v_[3]);
      return;
    }
    const acc_t u_scale = kernels::normalizing_scale(sum_of_squares(column_dots_.data(), n));
    acc_t sigma = 0;
    for (int64_t j = 0; j < n; ++j) {
      u_[3][j] = column_dots_[j] * u_scale;
      sigma += column_dots_[j] * u_[3][j];
    }
    if (update) {
      normalize_into(accumulated, m, u_scale, v_[3]);  // M_4 u = u_scale M_4 s
    }
    if (last) {
      sigma_[3] = sigma;
    }
  }

  // out = normalize(scale x), x of length n.
  static void normalize_into(const acc_t* x, int64_t n, acc_t scale, acc_t* out) {
    acc_t sum = 0;
    for (int64_t j = 0; j < n; ++j) {
      out[j] = x[j] * scale;
      sum += out[j] * out[j];
    }
    const acc_t factor = kernels::normalizing_scale(sum);
    for (int64_t j = 0; j < n; ++j) {
      out[j] *= factor;
    }
  }

  const acc_t* filter_;
  F4Shape s_;
  acc_t* const* u_;
  acc_t* const* v_;
  acc_t* sigma_;
  int64_t chunks_ = 1, partial_length_ = 0;
  std::vector<acc_t> partials_, column_dots_, u1_by_tap_, u3_by_tap_;
  std::vector<acc_t> dots_[3];
};

// The four power iterations as PowerIterationProblems of run_power_iteration (the power_iteration
// op's routine) on M_q in acc_t: the widened filter serves as every M_q (or M_q^T) laid out like
// it (always M_3; for 1x1 filters M_1, M_2 and M_4 transposed), the others are copied out by
// ATen's strided copy, which picks a cache-friendly loop order for each permutation.
template <typename acc_t>
void reshape_power_iteration(const at::Tensor& weight, const F4Shape& shape, acc_t* const* u,
                             acc_t* const* v, acc_t* sigma, int64_t iters) {
  constexpr int kMatrices = F4Shape::kMatrices;
  constexpr auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
  const at::Tensor filter = weight.contiguous().to(acc_type);
  std::vector<at::Tensor> matrices(kMatrices);
  std::vector<PowerIterationProblem<acc_t>> problems;
  for (int q = 0; q < kMatrices; ++q) {
    const bool transposed =
        !shape.has_filter_layout(q, false) && shape.has_filter_layout(q, true);
    matrices[q] = filter;
    if (!shape.has_filter_layout(q, false) && !transposed) {
      const F4Coord s = shape.strides(q);
      matrices[q] = at::empty({shape.numel()}, filter.options());
      matrices[q].as_strided(filter.sizes(), {s.o, s.i, s.h, s.w}).copy_(filter);
    }
    problems.push_back({matrices[q].const_data_ptr<acc_t>(), shape.rows(q), shape.cols(q), u[q],
                        v[q], sigma + q, transposed});
  }
  run_power_iteration(problems, iters);
}

// Which forward a call takes. The slab passes read the filter once an iteration; the reshape
// sweeps read it four times, after copying three reshapes out when the kernel is larger than
// 1 x 1, but run faster per element (long rows, four at a time), which wins while the filter
// stays in the cores' L2 over many iterations. So: slabs for filters of at least
// kSlabMinFilterBytes (in acc_t; the L2 of a 2-core machine), and for one iteration of a filter
// with copies to save (benchmarks/results/kernel-notes.md has the measurements).
constexpr int64_t kSlabMinFilterBytes = int64_t{1} << 22;

bool takes_slabs(const F4Shape& shape, int64_t iters, int64_t element_bytes) {
  const bool copies = shape.kernel_h * shape.kernel_w > 1;
  return shape.numel() * element_bytes >= kSlabMinFilterBytes || (iters == 1 && copies);
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> conv_spectral_bounds_cpu(
    const at::Tensor& weight, at::TensorList vectors, int64_t iters) {
  const F4Shape shape = check_conv_spectral_bounds_args(weight, vectors, iters);
  constexpr int kMatrices = F4Shape::kMatrices;
  at::Tensor bounds;
  std::vector<at::Tensor> u_out(kMatrices), v_out(kMatrices);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, weight.scalar_type(), "conv_spectral_bounds_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        constexpr auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
        const auto acc_options = weight.options().dtype(acc_type);
        at::Tensor sigma = at::empty({kMatrices}, acc_options);
        std::vector<at::Tensor> u_acc(kMatrices), v_acc(kMatrices);
        acc_t* u[kMatrices];
        acc_t* v[kMatrices];
        for (int q = 0; q < kMatrices; ++q) {
          u_acc[q] = at::empty({shape.cols(q)}, acc_options).copy_(vectors[q]);
          v_acc[q] = at::empty({shape.rows(q)}, acc_options);
          u[q] = u_acc[q].mutable_data_ptr<acc_t>();
          v[q] = v_acc[q].mutable_data_ptr<acc_t>();
        }
        acc_t* sigma_data = sigma.mutable_data_ptr<acc_t>();
        if (takes_slabs(shape, iters, sizeof(acc_t))) {
          // The slabs taps x input channels: (O, k_h, k_w, I), a copy unless k_h = k_w = 1.
          const at::Tensor filter = weight.to(acc_type).permute({0, 2, 3, 1}).contiguous();
          SlabPowerIteration<acc_t>(filter.const_data_ptr<acc_t>(), shape, u, v, sigma_data)
              .run(iters);
        } else {
          reshape_power_iteration(weight, shape, u, v, sigma_data, iters);
        }
        for (int q = 0; q < kMatrices; ++q) {
          sigma_data[q] *= shape.bound_scale<acc_t>();
        }
        bounds = sigma.to(weight.scalar_type());
        for (int q = 0; q < kMatrices; ++q) {
          u_out[q] = u_acc[q].to(weight.scalar_type());
          v_out[q] = v_acc[q].to(weight.scalar_type());
        }
      });
  return {bounds, u_out, v_out};
}

at::Tensor conv_spectral_bounds_backward_cpu(const at::Tensor& grad_bounds,
                                             at::TensorList vectors, at::TensorList left_vectors,
                                             at::IntArrayRef weight_shape) {
  const F4Shape shape = check_conv_spectral_bounds_backward_args(grad_bounds, vectors,
                                                                 left_vectors, weight_shape);
  constexpr int kMatrices = F4Shape::kMatrices;
  at::Tensor grad_weight = at::empty(weight_shape, grad_bounds.options());
  const at::Tensor g = grad_bounds.contiguous();
  std::vector<at::Tensor> us(kMatrices), vs(kMatrices);
  for (int q = 0; q < kMatrices; ++q) {
    us[q] = vectors[q].contiguous();
    vs[q] = left_vectors[q].contiguous();
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_bounds.scalar_type(), "conv_spectral_bounds_backward_cpu",
      [&] {
        using acc_t = at::opmath_type<scalar_t>;
        acc_t grad_bounds_acc[kMatrices], coef[kMatrices];
        const scalar_t* u[kMatrices];
        const scalar_t* v[kMatrices];
        for (int q = 0; q < kMatrices; ++q) {
          grad_bounds_acc[q] = static_cast<acc_t>(g.const_data_ptr<scalar_t>()[q]);
          u[q] = us[q].const_data_ptr<scalar_t>();
          v[q] = vs[q].const_data_ptr<scalar_t>();
        }
        kernels::f4_grad_coefficients(shape, grad_bounds_acc, coef);
        // Output channels split over threads; for each (o, h, w) the input channels i run
        // innermost, the four positions stepping by index(q, unit step along i).
        F4Index i_step[kMatrices];
        for (int q = 0; q < kMatrices; ++q) {
          i_step[q] = shape.index(q, F4Coord{0, 1, 0, 0});
        }
        const int64_t plane = shape.kernel_h * shape.kernel_w;
        const int64_t per_out_channel = shape.in_channels * plane;
        scalar_t* out = grad_weight.mutable_data_ptr<scalar_t>();
        at::parallel_for(
            0, shape.out_channels, std::max<int64_t>(1, kMinTaskElements / per_out_channel),
            [&](int64_t o_begin, int64_t o_end) {
              for (int64_t o = o_begin; o < o_end; ++o) {
                for (int64_t h = 0; h < shape.kernel_h; ++h) {
                  for (int64_t w = 0; w < shape.kernel_w; ++w) {
                    F4Index ix[kMatrices];
                    for (int q = 0; q < kMatrices; ++q) {
                      ix[q] = shape.index(q, F4Coord{o, 0, h, w});
                    }
                    scalar_t* dst = out + o * per_out_channel + h * shape.kernel_w + w;
                    for (int64_t i = 0; i < shape.in_channels; ++i) {
                      dst[i * plane] = static_cast<scalar_t>(kernels::f4_grad(coef, u, v, ix));
                      for (int q = 0; q < kMatrices; ++q) {
                        ix[q].row += i_step[q].row;
                        ix[q].col += i_step[q].col;
                      }
                    }
                  }
                }
              }
            });
      });
  return grad_weight;
}

}  // namespace

TORCH_LIBRARY_IMPL(lipkernels, CPU, m) {
  m.impl("conv_spectral_bounds", &conv_spectral_bounds_cpu);
  m.impl("conv_spectral_bounds_backward", &conv_spectral_bounds_backward_cpu);
}

}  // namespace cpu
}  // namespace lipkernels
