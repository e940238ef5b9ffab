// CUDA backend of the uncertainty metrics: one thread per item, the shared body.
#include <algorithm>

#include "../uncertainty_backend.hpp"
#include "cuda_check.hpp"
#include "labelwise/core/parallel.hpp"
#include "labelwise/detail/half.hpp"

namespace labelwise {
bool built_with_cuda() { return true; }

namespace detail {
namespace {

struct OutSpec {
  void* out[kNumMetrics];
  int is_f32[kNumMetrics];
  std::int64_t stride[kNumMetrics][kMaxDims];
};

template <typename T>
__global__ void score_kernel(const T* __restrict__ x, ItemGrid grid, std::int64_t sk, std::int64_t sc, int K, int C,
                             int input_kind, unsigned mask, double tol, OutSpec outs, double* stats_scratch,
                             typename compute_type<T>::type* row_scratch, int* votes_scratch,
                             unsigned long long* failure) {
  using A = typename compute_type<T>::type;
  const std::int64_t tid = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  const std::int64_t nthreads = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  const int Cp = padded_classes(C);  // class loops read whole blocks; the padding stays zero
  double* st = stats_scratch + tid * 3 * static_cast<std::int64_t>(Cp);
  ItemScratch<A> s{st, st + Cp, st + 2 * Cp, row_scratch + tid * static_cast<std::int64_t>(Cp),
                   votes_scratch + tid * static_cast<std::int64_t>(Cp), nullptr, nullptr, nullptr};
  double res[kNumMetrics];
  for (std::int64_t i = tid; i < grid.count; i += nthreads) {
    const std::int64_t off = item_offset(grid, grid.in_stride, i);
    const int st = score_item<T>(x + off, sk, sc, K, C, input_kind, mask, tol, s, res);
    if (st != kItemOk) {
      atomicMin(failure, (static_cast<unsigned long long>(i) << 3) | static_cast<unsigned long long>(st));
      continue;
    }
#pragma unroll
    for (int m = 0; m < kNumMetrics; ++m) {
      if (!(mask & (1u << m))) continue;
      const std::int64_t o = item_offset(grid, outs.stride[m], i);
      if (outs.is_f32[m])
        static_cast<float*>(outs.out[m])[o] = static_cast<float>(res[m]);
      else
        static_cast<double*>(outs.out[m])[o] = res[m];
    }
  }
}

struct WidenShape {
  int ndim;
  std::int64_t shape[kMaxDims];
  std::int64_t strides[kMaxDims];
};

/// out[e] = x at row-major index e, widened to float32 (grid-stride over the elements).
__global__ void widen_kernel(const std::uint16_t* __restrict__ x, WidenShape ws, std::int64_t total, int bf16,
                             float* __restrict__ out) {
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    std::int64_t off = 0, rem = e;
    for (int d = ws.ndim - 1; d >= 0; --d) {
      off += (rem % ws.shape[d]) * ws.strides[d];
      rem /= ws.shape[d];
    }
    out[e] = bf16 ? bfloat16_to_float(x[off]) : half_to_float(x[off]);
  }
}

}  // namespace

void widen_to_float32_cuda(const TensorView& x, float* out, void* stream_ptr) {
  CudaDeviceGuard guard(x.device.index);
  WidenShape ws{};
  ws.ndim = x.ndim;
  for (int d = 0; d < x.ndim; ++d) {
    ws.shape[d] = x.shape[d];
    ws.strides[d] = x.strides[d];
  }
  const std::int64_t total = x.numel();
  constexpr int kBlock = 256;
  const int blocks = grid_blocks(total, kBlock, multiprocessor_count(x.device.index), 16);
  widen_kernel<<<blocks, kBlock, 0, static_cast<cudaStream_t>(stream_ptr)>>>(
      static_cast<const std::uint16_t*>(x.data), ws, total, x.dtype == DType::BFloat16 ? 1 : 0, out);
  LABELWISE_CUDA_CHECK(cudaGetLastError());
}

float* cuda_alloc_floats(std::int64_t count, int device, void* stream) {
  CudaDeviceGuard guard(device);
  void* p = nullptr;
  LABELWISE_CUDA_CHECK(cudaMallocAsync(&p, static_cast<std::size_t>(count) * sizeof(float), static_cast<cudaStream_t>(stream)));
  return static_cast<float*>(p);
}

void cuda_free_floats(float* p, int device, void* stream) noexcept {
  // Called from a deleter, possibly while an exception unwinds: no CudaDeviceGuard (its constructor can
  // throw after a sticky error); errors are ignored.
  int previous = 0;
  const bool other = cudaGetDevice(&previous) == cudaSuccess && previous != device;
  const bool restore = other && restoring_is_free(previous);
  const bool switched = other && cudaSetDevice(device) == cudaSuccess;
  cudaFreeAsync(p, static_cast<cudaStream_t>(stream));
  if (switched && restore) cudaSetDevice(previous);
}

ScoreFailure score_cuda(const ScoreJob& job) {
  CudaDeviceGuard guard(job.device_index);
  cudaStream_t stream = static_cast<cudaStream_t>(job.stream);
  constexpr int kBlock = 128;
  const std::size_t acc_size = job.dtype == DType::Float32 ? sizeof(float) : sizeof(double);
  const std::size_t Cp = static_cast<std::size_t>(padded_classes(job.C));
  // Per thread: 3 x Cp float64 class statistics, Cp compute-type row values, Cp int votes.
  const ScratchGrid grid = scratch_grid(grid_blocks(job.grid.count, kBlock, multiprocessor_count(job.device_index), 16),
                                        kBlock, Cp * (3 * sizeof(double) + acc_size + sizeof(int)));
  const std::int64_t threads = static_cast<std::int64_t>(grid.blocks) * grid.threads;

  OutSpec outs{};
  for (int m = 0; m < kNumMetrics; ++m) {
    outs.out[m] = job.out[m];
    outs.is_f32[m] = job.out_dtype[m] == DType::Float32;
    for (int d = 0; d < kMaxDims; ++d) outs.stride[m][d] = job.out_stride[m][d];
  }
  const std::size_t T = static_cast<std::size_t>(threads);
  const std::size_t stats_bytes = T * 3 * Cp * sizeof(double), row_bytes = T * Cp * acc_size;
  const std::size_t scratch_bytes = stats_bytes + row_bytes + T * Cp * sizeof(int);
  // Freed (stream-ordered) on every exit, the throwing ones included.
  Workspace ws(Workspace::align(sizeof(unsigned long long)) + Workspace::align(scratch_bytes), stream);
  auto* failure = ws.take<unsigned long long>(1);
  char* scratch = ws.take<char>(scratch_bytes);
  auto* stats = reinterpret_cast<double*>(scratch);
  char* rows = scratch + stats_bytes;
  auto* votes = reinterpret_cast<int*>(rows + row_bytes);
  ScoreFailure result;
  cudaError_t launch = cudaSuccess;
  LABELWISE_CUDA_CHECK(cudaMemsetAsync(failure, 0xff, sizeof(unsigned long long), stream));
  LABELWISE_CUDA_CHECK(cudaMemsetAsync(scratch, 0, scratch_bytes, stream));
  if (job.dtype == DType::Float32)
    score_kernel<float><<<grid.blocks, grid.threads, 0, stream>>>(static_cast<const float*>(job.x), job.grid, job.sample_stride,
                                                       job.class_stride, job.K, job.C, job.input_kind, job.mask,
                                                       job.tol, outs, stats, reinterpret_cast<float*>(rows), votes,
                                                       failure);
  else
    score_kernel<double><<<grid.blocks, grid.threads, 0, stream>>>(static_cast<const double*>(job.x), job.grid, job.sample_stride,
                                                        job.class_stride, job.K, job.C, job.input_kind, job.mask,
                                                        job.tol, outs, stats, reinterpret_cast<double*>(rows), votes,
                                                        failure);
  launch = cudaGetLastError();
  unsigned long long host_failure = ~0ULL;
  const cudaError_t copy = cudaMemcpyAsync(&host_failure, failure, sizeof(host_failure), cudaMemcpyDeviceToHost, stream);
  const cudaError_t sync = cudaStreamSynchronize(stream);
  LABELWISE_CUDA_CHECK(launch);
  LABELWISE_CUDA_CHECK(copy);
  LABELWISE_CUDA_CHECK(sync);
  if (host_failure != ~0ULL) {
    result.status = static_cast<int>(host_failure & 7ULL);
    result.item = static_cast<std::int64_t>(host_failure >> 3);
  }
  return result;
}

}  // namespace detail
}  // namespace labelwise
