// CUDA kernels of cayley / cayley_backward and cayley_frequency_product /
// cayley_frequency_product_backward (Trockman & Kolter, "Orthogonalizing Convolutional Layers with
// the Cayley Transform", ICLR 2021): each direction of each op is one launch with one thread block
// per matrix (per frequency for cayley_frequency_product).
//
// Math (kernels/cayley.cuh, whose functions are the whole kernel body; reference/cayley.py):
// for a tall W (m x n), U = W[:n], V = W[n:], A = U - U^H + V^H V, X = (I + A)^{-1},
//   forward   Q = [ 2X - I ; -2 V X ]                           (returns Q and X)
//   backward  G_A = 2 X^H (V^H G_bot - G_top) X^H,
//             grad_W = [ G_A - G_A^H ; V (G_A + G_A^H) - 2 G_bot X^H ]   (closed form, no solve)
// cayley_frequency_product, per frequency f: T_f = R_f or R_f^T (plain transpose when
//   C_out < C_in), P_f = cayley(T_f), Q_f = P_f or P_f^T, output_f = Q_f S_f applied through the
//   solved spectrum W_f (kept with inverse_f = X_f); the backward factors the cayley backward of
//   the rank-B grad_Q = G S^H through W_f, with no n x n x n product (kernels/cayley.cuh).
//
// One block of 256 threads owns a matrix (grid-stride over the batch) and runs, separated by
// __syncthreads(): a tiled GEMM forming M = I + A, the blocked Gauss-Jordan inverse of M without
// pivoting (M's Hermitian part is >= I, so no pivoting is needed; see kernels/cayley.cuh), and
// tiled GEMMs for Q (cayley_frequency_product: for W and Q S). The backward is a chain of five
// GEMMs and two elementwise passes in the same block (cayley_frequency_product: six GEMMs of
// n x B or n x n results, at most two of them with an n x n x n shape, for a non-square
// response). No cuBLAS/cuSOLVER call and no host sync. Why one block per matrix: the solve
// is a sequence of dependent sweeps, and a block can run them with __syncthreads() alone; the batch
// (F = 544 frequencies for 32x32 images) fills the GPU. A batch of fewer matrices than SMs (a
// single large CayleyLinear weight) leaves most of the GPU idle: there the CUDA op is not
// expected to beat ATen's batched solve, to be measured before `auto` prefers it.
//
// Memory: the matrix being inverted lives in dynamic shared memory when n^2 elements fit in what
// is left of the default 48 KiB beside the static GEMM tiles (n <= 105 for float32, 71 for
// float64 / complex64, 44 for complex128), and is copied to X at the end; a larger one is
// inverted in place in X itself (global memory, so no extra workspace; each of the n/16 panel
// sweeps then streams the matrix once through L2). Likewise the backward's two n x n
// intermediates live in shared memory when they fit (n <= 74, 50, 31), else in a global
// workspace; cayley_frequency_product's backward has one (E: n <= 71 in complex64, 44 in
// complex128) and keeps p_f
// (n x B) in a global workspace.
// Global workspaces are per resident block, not per matrix (the grid is then capped at the blocks
// that fit on the GPU at once and grid-strides), so they scale with the GPU, not the batch. The
// 48 KiB cap (no opt-in to larger dynamic shared memory) keeps several blocks resident per SM;
// whether a larger in-shared limit pays off for n ~ 100..200 is to be measured on a GPU.
//
// Precision: every supported dtype is an IEEE float32/float64 or complex thereof, and the kernels
// compute in that type (float32 accumulation for float32/complex64, float64 for the rest).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/complex.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "cuda/launch.cuh"
#include "kernels/cayley.cuh"

namespace lipkernels {
namespace cuda {
namespace {

namespace k = kernels;
using k::FrequencyShape;
using k::kCayleyScratch;
using k::kCayleyThreads;

// The kernels' scalar for a tensor's: c10::complex<T> becomes kernels::Complex<T>, the same
// layout (checked below), so tensor data is reinterpreted, never copied.
template <typename scalar_t>
struct KernelScalar {
  using type = scalar_t;
};
template <typename T>
struct KernelScalar<c10::complex<T>> {
  using type = k::Complex<T>;
  static_assert(sizeof(k::Complex<T>) == sizeof(c10::complex<T>) &&
                    alignof(k::Complex<T>) == alignof(c10::complex<T>),
                "kernels::Complex must have the layout of c10::complex");
};

template <typename scalar_t>
using kernel_t = typename KernelScalar<scalar_t>::type;

template <typename scalar_t>
const kernel_t<scalar_t>* data_of(const at::Tensor& t) {
  return reinterpret_cast<const kernel_t<scalar_t>*>(t.const_data_ptr<scalar_t>());
}
template <typename scalar_t>
kernel_t<scalar_t>* mutable_data_of(at::Tensor& t) {
  return reinterpret_cast<kernel_t<scalar_t>*>(t.mutable_data_ptr<scalar_t>());
}

// Resident blocks per SM the register allocation must allow (at most 128 registers a thread).
// Left free, the unrolled GEMM and panel loops take so many registers for complex<double> that
// only one block of 256 threads fits per SM: too few warps to hide the global-memory latency of
// the Gauss-Jordan sweeps. The few spills this costs stay in L1 (ptxas figures:
// benchmarks/results/kernel-notes.md).
constexpr int kMinBlocksPerSM = 2;

// The block as kernels/cayley.cuh sees it.
struct DeviceBlock {
  __device__ int tid() const { return static_cast<int>(threadIdx.x); }
  __device__ int threads() const { return kCayleyThreads; }
  __device__ void sync() const { __syncthreads(); }
};

// The dynamic shared memory gets whatever the static GEMM tiles leave of the default per-block
// shared memory, so no opt-in attribute is needed.
template <typename S>
constexpr int64_t dynamic_shared_budget() {
  return static_cast<int64_t>(kDefaultSharedBytes) -
         static_cast<int64_t>(kCayleyScratch * sizeof(S));
}

// ---- Kernels --------------------------------------------------------------------------------

template <typename S>
struct CayleyArgs {
  int64_t count, m, n;
  const S* W;            // (count, m, n)
  const S* grad_Q;       // backward: (count, m, n)
  S* Q;                  // forward: (count, m, n); backward: grad_W
  S* X;                  // forward: (count, n, n)
  const S* saved_X;      // backward: the forward's X
  S* workspace;          // backward, matrices not in shared memory: (gridDim.x, 2, n, n)
  bool in_shared;        // the inverse (forward) or the two n x n matrices (backward)
};

// The block's dynamic shared memory: the matrix or matrices a kernel keeps there when they fit,
// aligned for the widest scalar, complex<double>.
template <typename S>
__device__ inline S* dynamic_shared_matrices() {
  extern __shared__ __align__(16) unsigned char cayley_dynamic_shared[];
  return reinterpret_cast<S*>(cayley_dynamic_shared);
}

template <typename S>
__global__ void __launch_bounds__(kCayleyThreads, kMinBlocksPerSM)
    cayley_forward_kernel(CayleyArgs<S> args) {
  __shared__ S scratch[kCayleyScratch];
  S* const shared_matrix = dynamic_shared_matrices<S>();
  const DeviceBlock block;
  const int64_t m = args.m, n = args.n;
  for (int64_t b = blockIdx.x; b < args.count; b += gridDim.x) {
    S* const x = args.X + b * n * n;
    k::cayley_forward_matrix(block, m, n, k::row_major(args.W + b * m * n, n), x,
                             k::row_major(args.Q + b * m * n, n),
                             args.in_shared ? shared_matrix : x, scratch);
  }
}

template <typename S>
__global__ void __launch_bounds__(kCayleyThreads, kMinBlocksPerSM)
    cayley_backward_kernel(CayleyArgs<S> args) {
  __shared__ S scratch[kCayleyScratch];
  S* const shared_matrices = dynamic_shared_matrices<S>();
  const DeviceBlock block;
  const int64_t m = args.m, n = args.n;
  for (int64_t b = blockIdx.x; b < args.count; b += gridDim.x) {
    S* const ws = args.in_shared ? shared_matrices : args.workspace + blockIdx.x * 2 * n * n;
    k::cayley_backward_matrix(block, m, n, k::row_major(args.grad_Q + b * m * n, n),
                              k::row_major(args.saved_X + b * n * n, n),
                              k::row_major(args.W + b * m * n, n),
                              k::row_major(args.Q + b * m * n, n), ws, ws + n * n, scratch);
  }
}

template <typename S>
struct FrequencyArgs {
  FrequencyShape shape;
  int64_t frequencies;
  const S* response;     // (F, C_out, C_in)
  const S* spectrum;     // (F, C_in, B)
  const S* grad_output;  // backward: (F, C_out, B)
  S* output;             // forward: (F, C_out, B)
  S* X;                  // forward: (F, n, n)
  S* solved;             // forward: (F, n, B)
  const S* saved_X;      // backward: the forward's X
  const S* saved_solved; // backward: the forward's solved spectrum
  S* grad_response;      // backward: (F, C_out, C_in)
  S* grad_spectrum;      // backward: (F, C_in, B)
  S* p_work;             // backward: (gridDim.x, n, B)
  S* workspace;          // backward, E not in shared memory: (gridDim.x, n, n)
  bool in_shared;
};

template <typename S>
__global__ void __launch_bounds__(kCayleyThreads, kMinBlocksPerSM)
    cayley_frequency_product_forward_kernel(FrequencyArgs<S> args) {
  __shared__ S scratch[kCayleyScratch];
  S* const shared_matrix = dynamic_shared_matrices<S>();
  const DeviceBlock block;
  const FrequencyShape& shape = args.shape;
  const int64_t n = shape.n();
  for (int64_t f = blockIdx.x; f < args.frequencies; f += gridDim.x) {
    S* const x = args.X + f * n * n;
    k::cayley_frequency_product_forward_frequency(
        block, shape, args.response + f * shape.response_numel(),
        args.spectrum + f * shape.spectrum_numel(), args.output + f * shape.output_numel(), x,
        args.solved + f * shape.solved_numel(), args.in_shared ? shared_matrix : x, scratch);
  }
}

template <typename S>
__global__ void __launch_bounds__(kCayleyThreads, kMinBlocksPerSM)
    cayley_frequency_product_backward_kernel(FrequencyArgs<S> args) {
  __shared__ S scratch[kCayleyScratch];
  S* const shared_matrices = dynamic_shared_matrices<S>();
  const DeviceBlock block;
  const FrequencyShape& shape = args.shape;
  const int64_t n = shape.n();
  for (int64_t f = blockIdx.x; f < args.frequencies; f += gridDim.x) {
    k::cayley_frequency_product_backward_frequency(
        block, shape, args.grad_output + f * shape.output_numel(),
        args.response + f * shape.response_numel(), args.spectrum + f * shape.spectrum_numel(),
        args.saved_X + f * n * n, args.saved_solved + f * shape.solved_numel(),
        args.grad_response + f * shape.response_numel(),
        args.grad_spectrum + f * shape.spectrum_numel(),
        args.p_work + blockIdx.x * shape.solved_numel(),
        args.in_shared ? shared_matrices : args.workspace + blockIdx.x * shape.backward_matrices(),
        scratch);
  }
}

// ---- Host side ------------------------------------------------------------------------------

// One block per problem, as many as one launch may have (the kernels grid-stride past that).
int64_t grid_for(int64_t problems) {
  return std::min<int64_t>(problems, std::numeric_limits<int>::max());
}

// The grid of a kernel whose blocks each own a slice of a global workspace: no more blocks than
// can be resident at once (the kernels grid-stride over the rest, which changes nothing for a
// batch that needs several waves anyway), so that the workspace scales with the GPU rather than
// with the batch (544 frequencies of 512 x 512 complex64 matrices would need 3.4 GB of
// per-frequency backward workspace; 264 resident blocks on an H100 need 1.7 GB).
template <typename Kernel>
int64_t resident_grid(Kernel kernel, int64_t problems, int64_t shared_bytes, const char* op) {
  int device = 0, per_sm = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &per_sm, kernel, kCayleyThreads, static_cast<size_t>(shared_bytes)));
  TORCH_CHECK(per_sm > 0, op, ": the CUDA kernel cannot run on this device (", kCayleyThreads,
              " threads, ", shared_bytes, " bytes of dynamic shared memory per block)");
  return std::min<int64_t>(problems,
                           static_cast<int64_t>(per_sm) * multiprocessor_count(device));
}

template <typename Kernel, typename Args>
void launch(Kernel kernel, const Args& args, int64_t blocks, int64_t shared_bytes) {
  kernel<<<static_cast<unsigned int>(blocks), kCayleyThreads, static_cast<size_t>(shared_bytes),
           c10::cuda::getCurrentCUDAStream()>>>(args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The in-block index maps split the element indices of n x n matrices in 32 bits
// (kernels::split_index): the matrix holding them must have fewer than 2^31 elements.
void check_matrix_size(const char* op, const char* what, int64_t rows, int64_t cols) {
  TORCH_CHECK(rows * cols < (int64_t{1} << 31), op, ": ", what, " of ", rows, " x ", cols,
              " elements is too large for the CUDA kernel (at most 2^31 - 1 elements)");
}

int64_t batch_count(const at::Tensor& W) {
  return W.numel() / (W.size(-2) * W.size(-1));
}

std::tuple<at::Tensor, at::Tensor> cayley_cuda(const at::Tensor& W_in) {
  constexpr const char* op = "cayley";
  check_cayley_tall(op, "W", W_in);
  const c10::cuda::CUDAGuard guard(W_in.device());
  const at::Tensor W = W_in.contiguous();
  const int64_t m = W.size(-2), n = W.size(-1);
  check_matrix_size(op, "W", m, n);
  std::vector<int64_t> x_shape = W.sizes().vec();
  x_shape[x_shape.size() - 2] = n;
  at::Tensor Q = at::empty(W.sizes(), W.options());
  at::Tensor X = at::empty(x_shape, W.options());
  AT_DISPATCH_FLOATING_AND_COMPLEX_TYPES(W.scalar_type(), "cayley_cuda", [&] {
    using S = kernel_t<scalar_t>;
    CayleyArgs<S> args{};
    args.count = batch_count(W);
    args.m = m;
    args.n = n;
    args.W = data_of<scalar_t>(W);
    args.Q = mutable_data_of<scalar_t>(Q);
    args.X = mutable_data_of<scalar_t>(X);
    args.in_shared = k::inverse_fits_shared(n, sizeof(S), dynamic_shared_budget<S>());
    launch(cayley_forward_kernel<S>, args, grid_for(args.count),
           args.in_shared ? n * n * static_cast<int64_t>(sizeof(S)) : 0);
  });
  return {Q, X};
}

at::Tensor cayley_backward_cuda(const at::Tensor& grad_Q_in, const at::Tensor& X_in,
                                const at::Tensor& W_in) {
  constexpr const char* op = "cayley_backward";
  check_cayley_backward_args(grad_Q_in, X_in, W_in);
  const int64_t m = W_in.size(-2), n = W_in.size(-1);
  check_matrix_size(op, "W", m, n);
  const c10::cuda::CUDAGuard guard(W_in.device());
  const at::Tensor W = W_in.contiguous(), X = X_in.contiguous(), grad_Q = grad_Q_in.contiguous();
  at::Tensor grad_W = at::empty(W.sizes(), W.options());
  AT_DISPATCH_FLOATING_AND_COMPLEX_TYPES(W.scalar_type(), "cayley_backward_cuda", [&] {
    using S = kernel_t<scalar_t>;
    CayleyArgs<S> args{};
    args.count = batch_count(W);
    args.m = m;
    args.n = n;
    args.W = data_of<scalar_t>(W);
    args.grad_Q = data_of<scalar_t>(grad_Q);
    args.Q = mutable_data_of<scalar_t>(grad_W);
    args.saved_X = data_of<scalar_t>(X);
    const int64_t matrices_bytes = 2 * n * n * static_cast<int64_t>(sizeof(S));
    args.in_shared = matrices_bytes <= dynamic_shared_budget<S>();
    at::Tensor workspace;
    int64_t blocks = grid_for(args.count);
    if (!args.in_shared) {
      blocks = resident_grid(cayley_backward_kernel<S>, args.count, 0, op);
      workspace = at::empty({blocks, 2, n, n}, W.options());
      args.workspace = mutable_data_of<scalar_t>(workspace);
    }
    launch(cayley_backward_kernel<S>, args, blocks, args.in_shared ? matrices_bytes : 0);
  });
  return grad_W;
}

// The checks shared with the CPU kernel (common/checks.h), then the size limit of these kernels.
FrequencyShape check_frequency_args(const char* op, const at::Tensor& response,
                                    const at::Tensor& spectrum) {
  check_cayley_frequency_product_args(op, response, spectrum);
  const FrequencyShape shape{response.size(1), response.size(2), spectrum.size(2)};
  check_matrix_size(op, "response", shape.c_out, shape.c_in);
  return shape;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cayley_frequency_product_cuda(
    const at::Tensor& response_in, const at::Tensor& spectrum_in) {
  constexpr const char* op = "cayley_frequency_product";
  const FrequencyShape shape = check_frequency_args(op, response_in, spectrum_in);
  const c10::cuda::CUDAGuard guard(response_in.device());
  const at::Tensor response = response_in.contiguous(), spectrum = spectrum_in.contiguous();
  const int64_t frequencies = response.size(0), n = shape.n();
  at::Tensor output = at::empty({frequencies, shape.c_out, shape.batch}, response.options());
  at::Tensor inverse = at::empty({frequencies, n, n}, response.options());
  at::Tensor solved = at::empty({frequencies, n, shape.batch}, response.options());
  AT_DISPATCH_COMPLEX_TYPES(response.scalar_type(), "cayley_frequency_product_cuda", [&] {
    using S = kernel_t<scalar_t>;
    FrequencyArgs<S> args{};
    args.shape = shape;
    args.frequencies = frequencies;
    args.response = data_of<scalar_t>(response);
    args.spectrum = data_of<scalar_t>(spectrum);
    args.output = mutable_data_of<scalar_t>(output);
    args.X = mutable_data_of<scalar_t>(inverse);
    args.solved = mutable_data_of<scalar_t>(solved);
    args.in_shared = k::inverse_fits_shared(n, sizeof(S), dynamic_shared_budget<S>());
    const int64_t shared_bytes = args.in_shared ? n * n * static_cast<int64_t>(sizeof(S)) : 0;
    const int64_t blocks =
        resident_grid(cayley_frequency_product_forward_kernel<S>, frequencies, shared_bytes, op);
    launch(cayley_frequency_product_forward_kernel<S>, args, blocks, shared_bytes);
  });
  return {output, inverse, solved};
}

std::tuple<at::Tensor, at::Tensor> cayley_frequency_product_backward_cuda(
    const at::Tensor& grad_output_in, const at::Tensor& response_in, const at::Tensor& spectrum_in,
    const at::Tensor& inverse_in, const at::Tensor& solved_in) {
  constexpr const char* op = "cayley_frequency_product_backward";
  const FrequencyShape shape = check_frequency_args(op, response_in, spectrum_in);
  const int64_t frequencies = response_in.size(0), n = shape.n();
  check_cayley_frequency_product_backward_args(grad_output_in, response_in, spectrum_in,
                                               inverse_in, solved_in);
  const c10::cuda::CUDAGuard guard(response_in.device());
  const at::Tensor grad_output = grad_output_in.contiguous(), response = response_in.contiguous(),
                   spectrum = spectrum_in.contiguous(), inverse = inverse_in.contiguous(),
                   solved = solved_in.contiguous();
  at::Tensor grad_response = at::empty(response.sizes(), response.options());
  at::Tensor grad_spectrum = at::empty(spectrum.sizes(), spectrum.options());
  AT_DISPATCH_COMPLEX_TYPES(response.scalar_type(), "cayley_frequency_product_backward_cuda", [&] {
    using S = kernel_t<scalar_t>;
    FrequencyArgs<S> args{};
    args.shape = shape;
    args.frequencies = frequencies;
    args.response = data_of<scalar_t>(response);
    args.spectrum = data_of<scalar_t>(spectrum);
    args.grad_output = data_of<scalar_t>(grad_output);
    args.saved_X = data_of<scalar_t>(inverse);
    args.saved_solved = data_of<scalar_t>(solved);
    args.grad_response = mutable_data_of<scalar_t>(grad_response);
    args.grad_spectrum = mutable_data_of<scalar_t>(grad_spectrum);
    const int64_t matrices_bytes = shape.backward_matrices() * static_cast<int64_t>(sizeof(S));
    args.in_shared = matrices_bytes <= dynamic_shared_budget<S>();
    const int64_t shared_bytes = args.in_shared ? matrices_bytes : 0;
    const int64_t blocks =
        resident_grid(cayley_frequency_product_backward_kernel<S>, frequencies, shared_bytes, op);
    // One slice per block: p, and E unless in shared memory.
    at::Tensor p_work = at::empty({blocks, n, shape.batch}, response.options());
    args.p_work = mutable_data_of<scalar_t>(p_work);
    at::Tensor workspace;
    if (!args.in_shared) {
      workspace = at::empty({blocks, n, n}, response.options());
      args.workspace = mutable_data_of<scalar_t>(workspace);
    }
    launch(cayley_frequency_product_backward_kernel<S>, args, blocks, shared_bytes);
  });
  return {grad_response, grad_spectrum};
}

}  // namespace

TORCH_LIBRARY_IMPL(lipkernels, CUDA, m) {
  m.impl("cayley", &cayley_cuda);
  m.impl("cayley_backward", &cayley_backward_cuda);
  m.impl("cayley_frequency_product", &cayley_frequency_product_cuda);
  m.impl("cayley_frequency_product_backward", &cayley_frequency_product_backward_cuda);
}

}  // namespace cuda
}  // namespace lipkernels
