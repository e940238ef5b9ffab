// CUDA backend of the uncertainty metrics: one thread per item, the shared body (score_item). Items
// whose K x C values fit stage them in shared memory (staged_kernel): each warp copies its 32 items
// with coalesced loads, and every thread's class statistics live there too; larger items run on
// global scratch (score_kernel).
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

/// Item i's requested metrics into their outputs, or, for a failed item (status st), its index into
/// the lowest-failure slot: (i << 3) | st, so that atomicMin keeps the first bad item.
__device__ inline void store_item(int st, std::int64_t i, const double* res, const ItemGrid& grid, unsigned mask,
                                  const OutSpec& outs, unsigned long long* failure) {
  if (st != kItemOk) {
    atomicMin(failure, (static_cast<unsigned long long>(i) << 3) | static_cast<unsigned long long>(st));
    return;
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
    store_item(st, i, res, grid, mask, outs, failure);
  }
}

/// Shared-memory pitches of staged_kernel, per thread: `dbl` float64 class statistics (first, sum,
/// sumsq: 3 padded class blocks, plus one so that neighbouring threads start in different banks),
/// `in` staged input values of T (K·C, made odd so that the 32 threads' items start in different
/// banks: 4-byte words for float, 8-byte units for double), `row` values of the compute type and
/// `votes` ints (padded classes, plus one). Pitches are 0 (and the bytes huge) where an item could
/// never be staged, so that no int overflows for absurd K or C.
struct StagedPitch {
  int dbl, in, row, votes;
  std::size_t bytes_per_thread;
};

template <typename T>
StagedPitch staged_pitch(int K, int C) {
  using A = typename compute_type<T>::type;
  StagedPitch p{};
  const std::int64_t kc = static_cast<std::int64_t>(K) * C;
  if (C > (1 << 16) || kc > (1 << 20)) {
    p.bytes_per_thread = ~std::size_t{0} / 64;
    return p;
  }
  const int Cp = padded_classes(C);
  p.dbl = 3 * Cp + 1;
  p.in = static_cast<int>(kc | 1);
  p.row = Cp + 1;
  p.votes = Cp + 1;
  p.bytes_per_thread = static_cast<std::size_t>(p.dbl) * 8 + static_cast<std::size_t>(p.in) * sizeof(T) +
                       static_cast<std::size_t>(p.row) * sizeof(A) + static_cast<std::size_t>(p.votes) * 4;
  return p;
}

/// One warp per block, 32 items per round: the warp copies the 32 items' K x C values into shared
/// memory (along each item's own strides: coalesced where the classes or samples are contiguous), then
/// each thread scores its item from there with the shared body, its class statistics in shared memory.
template <typename T>
__global__ void staged_kernel(const T* __restrict__ x, ItemGrid grid, std::int64_t sk, std::int64_t sc, int K, int C,
                              int input_kind, unsigned mask, double tol, OutSpec outs, StagedPitch pitch,
                              unsigned long long* failure) {
  using A = typename compute_type<T>::type;
  extern __shared__ double smem[];
  const int lane = threadIdx.x;
  double* dbl = smem + static_cast<std::int64_t>(lane) * pitch.dbl;
  T* in_all = reinterpret_cast<T*>(smem + 32 * static_cast<std::int64_t>(pitch.dbl));
  A* row = reinterpret_cast<A*>(in_all + 32 * static_cast<std::int64_t>(pitch.in)) + static_cast<std::int64_t>(lane) * pitch.row;
  int* votes = reinterpret_cast<int*>(reinterpret_cast<A*>(in_all + 32 * static_cast<std::int64_t>(pitch.in)) +
                                      32 * static_cast<std::int64_t>(pitch.row)) +
               static_cast<std::int64_t>(lane) * pitch.votes;
  const int Cp = padded_classes(C);
  for (int j = 0; j < pitch.dbl; ++j) dbl[j] = 0.0;  // the class padding must read as zero
  for (int j = 0; j < pitch.row; ++j) row[j] = A(0);
  for (int j = 0; j < pitch.votes; ++j) votes[j] = 0;
  ItemScratch<A> s{dbl, dbl + Cp, dbl + 2 * Cp, row, votes, nullptr, nullptr, nullptr};
  const std::int64_t kc = static_cast<std::int64_t>(K) * C;
  const bool dense = sc == 1 && sk == C;
  const std::int64_t groups = (grid.count + 31) / 32;
  double res[kNumMetrics];
  for (std::int64_t g = blockIdx.x; g < groups; g += gridDim.x) {
    const std::int64_t base = g * 32;
    const int n = static_cast<int>(grid.count - base < 32 ? grid.count - base : 32);
    for (int j = 0; j < n; ++j) {
      const T* src = x + item_offset(grid, grid.in_stride, base + j);
      T* dst = in_all + static_cast<std::int64_t>(j) * pitch.in;
      if (dense) {
        for (std::int64_t e = lane; e < kc; e += 32) dst[e] = src[e];
      } else {
        for (std::int64_t e = lane; e < kc; e += 32) {
          const std::int64_t k = e / C, c = e - k * C;
          dst[e] = src[k * sk + c * sc];
        }
      }
    }
    __syncwarp();
    if (lane < n) {
      const std::int64_t i = base + lane;
      const int st = score_item<T, true>(in_all + static_cast<std::int64_t>(lane) * pitch.in, C, 1, K, C, input_kind,
                                         mask, tol, s, res);
      store_item(st, i, res, grid, mask, outs, failure);
    }
    __syncwarp();  // the next round overwrites the staged values
  }
}

/// Shared memory a staged_kernel block may take: at most this, so that several blocks share an SM,
/// and at most what the device allows one block (64 KiB on sm_75, 227 KiB on sm_90).
constexpr std::size_t kStagedMaxBytes = 96 * 1024;

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

namespace {

template <typename T>
std::size_t staged_block_bytes(const ScoreJob& job) {
  return 32 * staged_pitch<T>(job.K, job.C).bytes_per_thread;
}

/// The shared memory a staged_kernel block may take on `device`: min(kStagedMaxBytes, the device's
/// opt-in maximum per block).
std::size_t staged_limit(int device) {
  int optin = 0;
  LABELWISE_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return std::min<std::size_t>(kStagedMaxBytes, static_cast<std::size_t>(optin));
}

template <typename T>
void launch_staged(const ScoreJob& job, const OutSpec& outs, std::size_t limit, unsigned long long* failure,
                   cudaStream_t stream) {
  const StagedPitch pitch = staged_pitch<T>(job.K, job.C);
  const std::size_t bytes = 32 * pitch.bytes_per_thread;
  // Always the same value (the device's limit), never this call's size: concurrent calls from other
  // host threads cannot lower it under a launch that needs more.
  LABELWISE_CUDA_CHECK(cudaFuncSetAttribute(staged_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(limit)));
  int per_sm = 0;
  LABELWISE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, staged_kernel<T>, 32, bytes));
  const int blocks = grid_blocks((job.grid.count + 31) / 32, 1, multiprocessor_count(job.device_index),
                                 std::max(1, per_sm));
  staged_kernel<T><<<blocks, 32, bytes, stream>>>(static_cast<const T*>(job.x), job.grid, job.sample_stride,
                                                  job.class_stride, job.K, job.C, job.input_kind, job.mask, job.tol,
                                                  outs, pitch, failure);
}

}  // namespace

ScoreFailure score_cuda(const ScoreJob& job) {
  CudaDeviceGuard guard(job.device_index);
  cudaStream_t stream = static_cast<cudaStream_t>(job.stream);
  OutSpec outs{};
  for (int m = 0; m < kNumMetrics; ++m) {
    outs.out[m] = job.out[m];
    outs.is_f32[m] = job.out_dtype[m] == DType::Float32;
    for (int d = 0; d < kMaxDims; ++d) outs.stride[m][d] = job.out_stride[m][d];
  }
  // Items of up to a few hundred values are staged in shared memory; larger ones use global scratch.
  const bool f32 = job.dtype == DType::Float32;
  const std::size_t limit = staged_limit(job.device_index);
  const bool staged = (f32 ? staged_block_bytes<float>(job) : staged_block_bytes<double>(job)) <= limit;
  constexpr int kBlock = 128;
  const std::size_t acc_size = f32 ? sizeof(float) : sizeof(double);
  const std::size_t Cp = static_cast<std::size_t>(padded_classes(job.C));
  // Global scratch per thread: 3 x Cp float64 class statistics, Cp compute-type row values, Cp int votes.
  ScratchGrid grid;
  std::size_t stats_bytes = 0, row_bytes = 0, scratch_bytes = 0;
  if (!staged) {
    grid = scratch_grid(grid_blocks(job.grid.count, kBlock, multiprocessor_count(job.device_index), 16), kBlock,
                        Cp * (3 * sizeof(double) + acc_size + sizeof(int)));
    const std::size_t T = static_cast<std::size_t>(grid.blocks) * static_cast<std::size_t>(grid.threads);
    stats_bytes = T * 3 * Cp * sizeof(double);
    row_bytes = T * Cp * acc_size;
    scratch_bytes = stats_bytes + row_bytes + T * Cp * sizeof(int);
  }
  // Freed (stream-ordered) on every exit, the throwing ones included.
  Workspace ws(Workspace::align(sizeof(unsigned long long)) + Workspace::align(scratch_bytes), stream);
  auto* failure = ws.take<unsigned long long>(1);
  LABELWISE_CUDA_CHECK(cudaMemsetAsync(failure, 0xff, sizeof(unsigned long long), stream));
  if (staged) {
    if (f32)
      launch_staged<float>(job, outs, limit, failure, stream);
    else
      launch_staged<double>(job, outs, limit, failure, stream);
  } else {
    char* scratch = ws.take<char>(scratch_bytes);
    auto* stats = reinterpret_cast<double*>(scratch);
    char* rows = scratch + stats_bytes;
    auto* votes = reinterpret_cast<int*>(rows + row_bytes);
    LABELWISE_CUDA_CHECK(cudaMemsetAsync(scratch, 0, scratch_bytes, stream));
    if (f32)
      score_kernel<float><<<grid.blocks, grid.threads, 0, stream>>>(
          static_cast<const float*>(job.x), job.grid, job.sample_stride, job.class_stride, job.K, job.C,
          job.input_kind, job.mask, job.tol, outs, stats, reinterpret_cast<float*>(rows), votes, failure);
    else
      score_kernel<double><<<grid.blocks, grid.threads, 0, stream>>>(
          static_cast<const double*>(job.x), job.grid, job.sample_stride, job.class_stride, job.K, job.C,
          job.input_kind, job.mask, job.tol, outs, stats, reinterpret_cast<double*>(rows), votes, failure);
  }
  const cudaError_t launch = cudaGetLastError();
  unsigned long long host_failure = ~0ULL;
  const cudaError_t copy = cudaMemcpyAsync(&host_failure, failure, sizeof(host_failure), cudaMemcpyDeviceToHost, stream);
  const cudaError_t sync = cudaStreamSynchronize(stream);
  LABELWISE_CUDA_CHECK(launch);
  LABELWISE_CUDA_CHECK(copy);
  LABELWISE_CUDA_CHECK(sync);
  ScoreFailure result;
  if (host_failure != ~0ULL) {
    result.status = static_cast<int>(host_failure & 7ULL);
    result.item = static_cast<std::int64_t>(host_failure >> 3);
  }
  return result;
}

}  // namespace detail
}  // namespace labelwise
