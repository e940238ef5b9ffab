// CUDA backend of the fused head sample-and-score: one thread per voxel (grid-stride), the shared
// body of include/labelwise/detail/head_score_impl.hpp, then score_item on the thread's K x C block.
// Compiled with --fmad=false (CMakeLists.txt) on top of the explicit __d*_rn intrinsics of rng.hpp, so
// the float64 logits are the bits of the CPU path.
#include <algorithm>

#include "../head_score_backend.hpp"
#include "cuda_check.hpp"

namespace labelwise {
namespace detail {
namespace {

__global__ void pack_params_kernel(HeadJob job, double* packed, std::int64_t n, unsigned long long* bad) {
  for (std::int64_t j = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; j < n;
       j += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const double v = head_param(job, j);
    packed[j] = v;
    if (!(v - v == 0.0)) atomicMin(bad, static_cast<unsigned long long>(j));
  }
}

/// Scratch per thread: xs (F) and z (Cp) float64 and probs (K·C) float32 interleaved across the
/// launch's threads (element e of thread t at e·threads + t, so that a warp's accesses coalesce); and
/// score_item's class statistics (3·Cp float64), row (Cp float32) and votes (Cp int) per thread.
/// kRegs > 0 (C <= kRegs): each sample's logits are accumulated in registers (head_voxel_probs).
template <typename T, int kRegs>
__global__ void head_kernel(HeadJob job, HeadParams hp, double* head_scratch, float* prob_scratch,
                            double* stats_scratch, float* row_scratch, int* votes_scratch,
                            unsigned long long* failure) {
  if (failure[1] != ~0ULL) return;  // pack_params_kernel (earlier in the stream) found a bad weight: write nothing
  const std::int64_t tid = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  const std::int64_t nthreads = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  const int K = hp.K, C = hp.C, Cp = hp.Cp;
  double* xs = head_scratch + tid;
  double* z = head_scratch + static_cast<std::int64_t>(hp.F) * nthreads + tid;
  float* probs = prob_scratch + tid;
  double* st = stats_scratch + tid * 3 * static_cast<std::int64_t>(Cp);
  ItemScratch<float> s{st,      st + Cp, st + 2 * Cp, row_scratch + tid * static_cast<std::int64_t>(Cp),
                       votes_scratch + tid * static_cast<std::int64_t>(Cp), nullptr, nullptr, nullptr};
  const T* x = static_cast<const T*>(job.x);
  double res[kNumMetrics];
  for (std::int64_t i = tid; i < job.grid.count; i += nthreads) {
    const std::int64_t b = i / job.V, v = i - b * job.V;
    const std::int64_t off = item_offset(job.grid, job.grid.in_stride, i);
    int status = head_voxel_probs<T, kRegs>(x + off, job.x_feature_stride, hp, static_cast<std::uint32_t>(v),
                                           job.item_offset + static_cast<std::uint32_t>(b), xs, z, probs, nthreads);
    if (status == kItemOk && job.samples) {
      const std::int64_t o = item_offset(job.grid, job.samples_stride, i);
      for (int k = 0; k < K; ++k)
        for (int c = 0; c < C; ++c)
          job.samples[o + k * job.samples_k_stride + c * job.samples_c_stride] =
              probs[(static_cast<std::int64_t>(k) * C + c) * nthreads];
    }
    if (status == kItemOk && job.mask) {
      status = score_item<float>(probs, static_cast<std::int64_t>(C) * nthreads, nthreads, K, C, 0, job.mask, job.tol,
                                 s, res);
      if (status != kItemOk) status = kHeadScoreRefused;
      for (int m = 0; status == kItemOk && m < kNumMetrics; ++m) {
        if (!(job.mask & (1u << m))) continue;
        const std::int64_t o = item_offset(job.grid, job.out_stride[m], i);
        if (job.out_dtype[m] == DType::Float32)
          static_cast<float*>(job.out[m])[o] = static_cast<float>(res[m]);
        else
          static_cast<double*>(job.out[m])[o] = res[m];
      }
    }
    if (status == kItemOk && job.mean) {
      const std::int64_t o = item_offset(job.grid, job.mean_stride, i);
      for (int c = 0; c < C; ++c) {
        double acc = 0.0;
        for (int k = 0; k < K; ++k) acc += static_cast<double>(probs[(static_cast<std::int64_t>(k) * C + c) * nthreads]);
        const double mu = acc / K;
        if (job.mean_dtype == DType::Float32)
          static_cast<float*>(job.mean)[o + c * job.mean_class_stride] = static_cast<float>(mu);
        else
          static_cast<double*>(job.mean)[o + c * job.mean_class_stride] = mu;
      }
    }
    if (status != kItemOk)
      atomicMin(failure, (static_cast<unsigned long long>(i) << 3) | static_cast<unsigned long long>(status));
  }
}

}  // namespace

HeadFailure head_cuda(const HeadJob& job) {
  CudaDeviceGuard guard(job.device_index);
  cudaStream_t stream = static_cast<cudaStream_t>(job.stream);
  constexpr int kBlock = 128;
  HeadParams hp = job.hp;
  const std::size_t Cp = static_cast<std::size_t>(hp.Cp);
  // Per thread: F + Cp float64 head values, K · C float32 probabilities, 3 x Cp float64 class
  // statistics, Cp float32 row values and Cp int votes.
  const std::size_t per_thread = (static_cast<std::size_t>(hp.F) + Cp) * sizeof(double) +
                                 static_cast<std::size_t>(hp.K) * hp.C * sizeof(float) +
                                 Cp * (3 * sizeof(double) + sizeof(float) + sizeof(int));
  const ScratchGrid grid =
      scratch_grid(grid_blocks(job.grid.count, kBlock, multiprocessor_count(job.device_index), 8), kBlock, per_thread);
  const std::size_t T = static_cast<std::size_t>(grid.blocks) * grid.threads;

  const std::size_t n_params = static_cast<std::size_t>(hp.M) * hp.F * Cp + static_cast<std::size_t>(hp.M) * hp.C;
  const std::size_t params_bytes = (n_params * sizeof(double) + 255) / 256 * 256;
  const std::size_t head_bytes = T * (static_cast<std::size_t>(hp.F) + Cp) * sizeof(double);
  const std::size_t prob_bytes = (T * static_cast<std::size_t>(hp.K) * hp.C * sizeof(float) + 255) / 256 * 256;
  const std::size_t stats_bytes = T * 3 * Cp * sizeof(double);
  const std::size_t row_bytes = T * Cp * sizeof(float), votes_bytes = T * Cp * sizeof(int);
  const std::size_t total = 256 + params_bytes + head_bytes + prob_bytes + stats_bytes + row_bytes + votes_bytes;
  char* workspace = nullptr;
  LABELWISE_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&workspace), total, stream));
  auto* flags = reinterpret_cast<unsigned long long*>(workspace);  // [0]: voxel failure, [1]: bad parameter
  auto* packed = reinterpret_cast<double*>(workspace + 256);
  auto* head_scratch = reinterpret_cast<double*>(workspace + 256 + params_bytes);
  auto* prob_scratch = reinterpret_cast<float*>(workspace + 256 + params_bytes + head_bytes);
  char* rest = workspace + 256 + params_bytes + head_bytes + prob_bytes;
  auto* stats = reinterpret_cast<double*>(rest);
  auto* rows = reinterpret_cast<float*>(rest + stats_bytes);
  auto* votes = reinterpret_cast<int*>(rest + stats_bytes + row_bytes);
  hp.wt = packed;
  hp.bias = packed + static_cast<std::size_t>(hp.M) * hp.F * Cp;

  cudaError_t err = cudaMemsetAsync(flags, 0xff, 2 * sizeof(unsigned long long), stream);
  if (err == cudaSuccess) err = cudaMemsetAsync(rest, 0, stats_bytes + row_bytes + votes_bytes, stream);
  if (err == cudaSuccess) {
    const int pack_blocks = static_cast<int>(std::min<std::size_t>((n_params + 255) / 256, 1024));
    pack_params_kernel<<<pack_blocks, 256, 0, stream>>>(job, packed, static_cast<std::int64_t>(n_params), flags + 1);
    err = cudaGetLastError();
  }
  if (err == cudaSuccess) {
    // The logits of a sample in registers up to 32 classes; beyond, in the interleaved scratch.
    with_logit_registers(hp.C, [&](auto regs) {
      constexpr int kRegs = decltype(regs)::value;
      if (job.x_dtype == DType::Float32)
        head_kernel<float, kRegs><<<grid.blocks, grid.threads, 0, stream>>>(job, hp, head_scratch, prob_scratch, stats,
                                                                           rows, votes, flags);
      else
        head_kernel<double, kRegs><<<grid.blocks, grid.threads, 0, stream>>>(job, hp, head_scratch, prob_scratch, stats,
                                                                            rows, votes, flags);
    });
    err = cudaGetLastError();
  }
  unsigned long long host_flags[2] = {~0ULL, ~0ULL};
  if (err == cudaSuccess)
    err = cudaMemcpyAsync(host_flags, flags, sizeof(host_flags), cudaMemcpyDeviceToHost, stream);
  const cudaError_t sync = cudaStreamSynchronize(stream);
  cudaFreeAsync(workspace, stream);
  LABELWISE_CUDA_CHECK(err);
  LABELWISE_CUDA_CHECK(sync);
  HeadFailure result;
  if (host_flags[1] != ~0ULL) {
    result.status = -1;
    result.item = static_cast<std::int64_t>(host_flags[1]);
  } else if (host_flags[0] != ~0ULL) {
    result.status = static_cast<int>(host_flags[0] & 7ULL);
    result.item = static_cast<std::int64_t>(host_flags[0] >> 3);
  }
  return result;
}

}  // namespace detail
}  // namespace labelwise
