// CPU kernel of symbols_factorize: the factorisations that certify lipkernels.bounds'
// skew_conv_norm_bound (the proof and its rounding terms are in that module's docstring).
//
// For each row r of the phases, the symbol X_r = sum_k (re[r, k] + i im[r, k]) S_k (C x C
// complex, S_k the real taps) is formed with `shift` added to its diagonal, and a Cholesky
// factorisation of shift I + X_r^T (row-major X_r read in LAPACK's column-major order) is run;
// the result says, per row, whether it ran to completion. Only the triangle the factorisation
// reads is formed, right before it is factorised and while it is in cache, and no factor is
// kept: the torch composite (a product, a complex interleave, torch.linalg.cholesky_ex and its
// zeroing of the other triangle) spends more passes over memory than arithmetic at the sizes
// SOC layers have.
//
// Each entry is a real dot product of length K per part in the taps' precision and the diagonal
// gets one more rounding, the error terms `lipkernels.bounds._Margin` covers; LAPACK's
// factorisation is the one that margin's Thm 10.3 (Higham) is applied to.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <complex>
#include <vector>

#include "common/checks.h"
#include "cpu/parallel.h"

// LAPACK as torch links it (libtorch_cpu exports the Fortran symbols). Weak, so that a torch
// built without LAPACK still loads this extension and the op reports what is missing.
extern "C" {
void cpotrf_(const char* uplo, const int* n, std::complex<float>* a, const int* lda, int* info)
    __attribute__((weak));
void zpotrf_(const char* uplo, const int* n, std::complex<double>* a, const int* lda, int* info)
    __attribute__((weak));
}

namespace lipkernels {
namespace cpu {
namespace {

constexpr const char* kOp = "symbols_factorize";

void potrf(int n, std::complex<float>* a, int* info) {
  const char lower = 'L';
  cpotrf_(&lower, &n, a, &n, info);
}

void potrf(int n, std::complex<double>* a, int* info) {
  const char lower = 'L';
  zpotrf_(&lower, &n, a, &n, info);
}

// Row b of X from column b on, interleaved complex into `row`: the lower triangle of the
// column-major X^T that potrf('L') reads. The K taps are accumulated one after another into
// the real and imaginary parts (any order of the sums is covered by the error bound).
template <typename real_t>
LIPKERNELS_CPU_CLONES void form_row(const real_t* taps, const real_t* re, const real_t* im,
                                    int64_t count, int64_t channels, int64_t b, real_t* real_part,
                                    real_t* imag_part, std::complex<real_t>* row) {
  const int64_t length = channels - b;
  const real_t* tap = taps + b * channels + b;
  for (int64_t a = 0; a < length; ++a) {
    real_part[a] = re[0] * tap[a];
    imag_part[a] = im[0] * tap[a];
  }
  for (int64_t k = 1; k < count; ++k) {
    tap += channels * channels;
    simd_axpy(re[k], tap, real_part, length);
    simd_axpy(im[k], tap, imag_part, length);
  }
  for (int64_t a = 0; a < length; ++a) {
    row[b + a] = std::complex<real_t>(real_part[a], imag_part[a]);
  }
}

template <typename real_t>
bool factorizes(const real_t* taps, const real_t* re, const real_t* im, int64_t count,
                int64_t channels, double shift, std::vector<std::complex<real_t>>& matrix,
                std::vector<real_t>& parts) {
  for (int64_t b = 0; b < channels; ++b) {
    std::complex<real_t>* row = matrix.data() + b * channels;
    form_row(taps, re, im, count, channels, b, parts.data(), parts.data() + channels, row);
    // One rounding to real_t of the shifted diagonal (the sum is taken in double).
    row[b].real(static_cast<real_t>(static_cast<double>(row[b].real()) + shift));
  }
  int info = 0;
  potrf(static_cast<int>(channels), matrix.data(), &info);
  return info == 0;
}

template <typename real_t>
void symbols_factorize_rows(const at::Tensor& taps, const at::Tensor& phases, double shift,
                            bool* result) {
  const int64_t count = taps.size(0), channels = taps.size(1), rows = phases.size(1);
  const real_t* tap_data = taps.const_data_ptr<real_t>();
  const real_t* re = phases.const_data_ptr<real_t>();
  const real_t* im = re + rows * count;
  auto run = [&](int64_t begin, int64_t end) {
    std::vector<std::complex<real_t>> matrix(channels * channels);
    std::vector<real_t> parts(2 * channels);
    for (int64_t r = begin; r < end; ++r) {
      result[r] = factorizes(tap_data, re + r * count, im + r * count, count, channels, shift,
                             matrix, parts);
    }
  };
  // One matrix per thread where there are enough; otherwise one at a time, each factorisation
  // then free to use LAPACK's own threads.
  if (rows >= at::get_num_threads()) {
    at::parallel_for(0, rows, 1, run);
  } else {
    run(0, rows);
  }
}

at::Tensor symbols_factorize_cpu(const at::Tensor& taps, const at::Tensor& phases,
                                 double shift) {
  check_tensor(kOp, "taps", taps, TensorRule::of_rank(3).of({at::kFloat, at::kDouble}));
  TORCH_CHECK_VALUE(taps.size(1) == taps.size(2), kOp, ": taps must be (K, C, C); got shape ",
                    shape_string(taps.sizes()));
  check_tensor(kOp, "phases", phases,
               TensorRule::of_rank(3, 2).of({at::kFloat, at::kDouble}));
  check_like(kOp, "phases", phases, "taps", taps, {2, phases.size(1), taps.size(0)});
  TORCH_CHECK(cpotrf_ != nullptr && zpotrf_ != nullptr, kOp,
              ": the installed torch exports no LAPACK (cpotrf_, zpotrf_)");
  TORCH_CHECK_VALUE(taps.size(1) <= (int64_t{1} << 15), kOp,
                    ": taps must have at most 32768 channels; got ", taps.size(1));
  at::Tensor result = at::empty({phases.size(1)}, taps.options().dtype(at::kBool));
  const at::Tensor taps_c = taps.contiguous(), phases_c = phases.contiguous();
  AT_DISPATCH_FLOATING_TYPES(taps.scalar_type(), kOp, [&] {
    symbols_factorize_rows<scalar_t>(taps_c, phases_c, shift, result.data_ptr<bool>());
  });
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(lipkernels, CPU, m) { m.impl("symbols_factorize", &symbols_factorize_cpu); }

}  // namespace cpu
}  // namespace lipkernels
