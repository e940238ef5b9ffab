// CUDA backend of greedy BatchBALD (labelwise/acquisition/batchbald.hpp; docs/acquisition.md).
//   1. x is validated by the metrics (labelwise::score, through job.validate), then turned into dense
//      float64 probabilities p [N][K][C] on the device (softmax in float64 for logits), with
//      s[n, k] = Σ_c p[n, k, c] and the conditional entropies CE_n = (1/K) Σ_{k,c} −p ln p, each
//      summed in the CPU front door's order.
//   2. The table of the chosen items' joint configurations is built on the host by the CPU's code
//      (detail::JointTableBuilder: exact, then sampled with Philox(seed)), so it is the same table as
//      on the CPU; it is uploaded at every step (its weights transposed to [K][rows]).
//   3. Every candidate's score Σ_k s[n, k] L_k − Σ_chosen CE − CE_n + T(n),
//      T(n) = −Σ_y Σ_c Q[y, c] ln(Q[y, c] / Ω_y), Q = A · p_n, by one kernel: a block takes kGroup
//      candidates (their p in shared memory) and a slice of the rows, a thread one row at a time with
//      kGroup × kClassChunk accumulators; partial sums per slice are added in slice order. No pruning:
//      the device evaluates every candidate at every step (the CPU prunes with a cascade of coarser
//      tables; the winner is the same).
//   4. The host takes the argmax (ties by the lower index, chosen items skipped), writes the pick and its
//      score, and extends the table with the pick's probabilities.
// Built with --fmad=false; the row sums run in another order than on the CPU (whose AVX2 kernel uses
// FMAs and its own logarithm), so the scores agree to about 1e-12 relative and the picks agree unless
// two candidates are that close. Memory: 8 N K C + 8 N K + 24 N bytes, plus the table (8 · rows · (K + 1)) and the slice sums.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../batchbald_backend.hpp"
#include "../batchbald_table.hpp"
#include "cuda_check.hpp"

namespace labelwise {
namespace detail {
namespace {

using i64 = std::int64_t;
constexpr int kBlock = 256;
constexpr int kWarp = 32;
constexpr int kGroup = 4;       // candidates per block
constexpr int kClassChunk = 4;  // classes held in registers at once

/// Dense float64 probabilities, s and CE; one thread per item (each item's sums in the CPU's order).
template <typename T>
__global__ void densify(const T* x, int input, i64 N, int K, int C, i64 sn, i64 sk, i64 sc, double* p, double* s,
                        double* ce) {
  for (i64 n = blockIdx.x * static_cast<i64>(blockDim.x) + threadIdx.x; n < N;
       n += static_cast<i64>(gridDim.x) * blockDim.x) {
    double h = 0.0;
    for (int k = 0; k < K; ++k) {
      const T* row = x + n * sn + k * sk;
      double* out = p + (n * K + k) * C;
      if (input == 0) {
        for (int c = 0; c < C; ++c) out[c] = static_cast<double>(row[c * sc]);
      } else if (input == 1) {
        for (int c = 0; c < C; ++c) out[c] = exp(static_cast<double>(row[c * sc]));
      } else {
        double mx = -INFINITY;
        for (int c = 0; c < C; ++c) mx = fmax(mx, static_cast<double>(row[c * sc]));
        double z = 0.0;
        for (int c = 0; c < C; ++c) z += out[c] = exp(static_cast<double>(row[c * sc]) - mx);
        for (int c = 0; c < C; ++c) out[c] /= z;
      }
      double t = 0.0;
      for (int c = 0; c < C; ++c) {
        t += out[c];
        if (out[c] > 0.0) h -= out[c] * log(out[c]);
      }
      s[n * K + k] = t;
    }
    ce[n] = h / static_cast<double>(K);
  }
}

/// part[slice][n] = T(n) over the slice's rows, for the block's kGroup candidates n0 .. n0 + kGroup − 1.
/// at: the table's weights [K][R]; lo: ln Ω [R]. Rows of the slice: [slice · rows_per_slice, ...).
__global__ void joint_t(const double* __restrict__ at, const double* __restrict__ lo, i64 R, i64 rows_per_slice,
                        const double* __restrict__ p, i64 N, int K, int C, double* part) {
  extern __shared__ double sp[];  // kGroup × K × C
  const i64 n0 = static_cast<i64>(blockIdx.x) * kGroup;
  const i64 KC = static_cast<i64>(K) * C;
  for (i64 e = threadIdx.x; e < kGroup * KC; e += blockDim.x) {
    const i64 g = e / KC;
    const i64 n = n0 + g < N ? n0 + g : n0;  // past the end: a copy of the first (never written back)
    sp[e] = p[n * KC + (e - g * KC)];
  }
  __syncthreads();
  const i64 r0 = static_cast<i64>(blockIdx.y) * rows_per_slice;
  const i64 r1 = r0 + rows_per_slice < R ? r0 + rows_per_slice : R;
  double t[kGroup];
#pragma unroll
  for (int g = 0; g < kGroup; ++g) t[g] = 0.0;
  for (i64 y = r0 + threadIdx.x; y < r1; y += blockDim.x) {
    const double ly = lo[y];
    for (int c0 = 0; c0 < C; c0 += kClassChunk) {
      const int cn = C - c0 < kClassChunk ? C - c0 : kClassChunk;
      double q[kGroup][kClassChunk];
#pragma unroll
      for (int g = 0; g < kGroup; ++g)
#pragma unroll
        for (int j = 0; j < kClassChunk; ++j) q[g][j] = 0.0;
      for (int k = 0; k < K; ++k) {
        const double a = at[static_cast<i64>(k) * R + y];
#pragma unroll
        for (int g = 0; g < kGroup; ++g) {
          const double* pk = sp + g * KC + static_cast<i64>(k) * C + c0;
#pragma unroll
          for (int j = 0; j < kClassChunk; ++j)
            if (j < cn) q[g][j] += a * pk[j];
        }
      }
#pragma unroll
      for (int g = 0; g < kGroup; ++g)
#pragma unroll
        for (int j = 0; j < kClassChunk; ++j)
          if (j < cn && q[g][j] > 0.0) t[g] -= q[g][j] * (log(q[g][j]) - ly);
    }
  }
  // Block sums in a fixed order: warp butterflies, then the warps' sums in warp order.
  __shared__ double ws[kBlock / kWarp][kGroup];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
#pragma unroll
  for (int g = 0; g < kGroup; ++g) {
    double v = t[g];
    for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) ws[warp][g] = v;
  }
  __syncthreads();
  if (threadIdx.x < kGroup && n0 + threadIdx.x < N) {
    double v = 0.0;
    for (int w = 0; w < kBlock / kWarp; ++w) v += ws[w][threadIdx.x];
    part[static_cast<i64>(blockIdx.y) * N + n0 + threadIdx.x] = v;
  }
}

/// val[n] = (Σ_k s[n, k] L_k − ce_batch − CE_n) + Σ_slices part[slice][n] (the CPU's order for the base).
__global__ void finish_scores(const double* s, const double* L, const double* ce, double ce_batch, const double* part,
                              int slices, i64 N, int K, double* val) {
  for (i64 n = blockIdx.x * static_cast<i64>(blockDim.x) + threadIdx.x; n < N;
       n += static_cast<i64>(gridDim.x) * blockDim.x) {
    double d = 0.0;
    for (int k = 0; k < K; ++k) d += s[n * K + k] * L[k];
    double t = 0.0;
    for (int sl = 0; sl < slices; ++sl) t += part[static_cast<i64>(sl) * N + n];
    val[n] = (d - ce_batch - ce[n]) + t;
  }
}

void launch_check() { LABELWISE_CUDA_CHECK(cudaGetLastError()); }

}  // namespace

void batchbald_cuda(const BatchBaldCudaJob& job) {
  CudaDeviceGuard guard(job.device_index);
  cudaStream_t stream = static_cast<cudaStream_t>(job.stream);
  const i64 N = job.n;
  const int K = job.k, C = job.c;
  const i64 KC = static_cast<i64>(K) * C;
  const int sms = multiprocessor_count(job.device_index);

  Workspace ws(Workspace::align(sizeof(double) * N * KC) + Workspace::align(sizeof(double) * N * K) +
                   3 * Workspace::align(sizeof(double) * N),
               stream);
  double* p = ws.take<double>(N * KC);
  double* s = ws.take<double>(N * K);
  double* ce = ws.take<double>(N);
  double* val = ws.take<double>(N);
  double* ee = ws.take<double>(N);
  job.validate(TensorView(ee, DType::Float64, {N}, Device::cuda(job.device_index)));
  if (job.req.b == 0) return;

  const int item_blocks = grid_blocks(N, kBlock, sms, 8);
  if (job.dtype == DType::Float32)
    densify<float><<<item_blocks, kBlock, 0, stream>>>(static_cast<const float*>(job.x), job.input, N, K, C,
                                                       job.item_stride, job.sample_stride, job.class_stride, p, s, ce);
  else
    densify<double><<<item_blocks, kBlock, 0, stream>>>(static_cast<const double*>(job.x), job.input, N, K, C,
                                                        job.item_stride, job.sample_stride, job.class_stride, p, s,
                                                        ce);
  launch_check();
  std::vector<double> host_ce(N);
  LABELWISE_CUDA_CHECK(cudaMemcpyAsync(host_ce.data(), ce, sizeof(double) * N, cudaMemcpyDeviceToHost, stream));

  // The candidates' p in shared memory: kGroup × K × C doubles (opt in above 48 KiB where the device allows).
  const std::size_t smem = sizeof(double) * kGroup * KC;
  int smem_max = 0;
  LABELWISE_CUDA_CHECK(cudaDeviceGetAttribute(&smem_max, cudaDevAttrMaxSharedMemoryPerBlockOptin, job.device_index));
  cudaFuncAttributes joint_attr{};
  LABELWISE_CUDA_CHECK(cudaFuncGetAttributes(&joint_attr, joint_t));
  const std::size_t smem_static = joint_attr.sharedSizeBytes;  // the kernel's reduction buffer, as compiled
  check(smem + smem_static <= static_cast<std::size_t>(smem_max), ErrorKind::Value,
        "batchbald: K · C = ", KC, " is too large for the CUDA backend on this device (", kGroup, " · K · C doubles of ",
        smem_max, " bytes of shared memory per block); pass a CPU array");
  // Allow the device's whole opt-in amount (less the kernel's static shared memory) once, the same
  // value on every call: a per-call size would race between host threads with other K · C, and a
  // threshold on the dynamic size alone would miss dynamic + static just above 48 KiB.
  LABELWISE_CUDA_CHECK(cudaFuncSetAttribute(joint_t, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            smem_max - static_cast<int>(smem_static)));

  JointTableBuilder tables(K, C, job.req.num_samples, job.req.seed);
  std::vector<char> chosen(N, 0);
  std::vector<double> host_val(N), pick_p(KC), at;
  std::vector<std::int64_t> picks;
  std::vector<double> scores;
  double ce_batch = 0.0;
  const i64 groups = (N + kGroup - 1) / kGroup;
  LABELWISE_CUDA_CHECK(cudaStreamSynchronize(stream));  // host_ce

  for (i64 step = 0; step < job.req.b; ++step) {
    const JointTable& tb = tables.table();
    const i64 R = tb.rows;
    // Slices of the rows: enough blocks to fill the device, at least a block's worth of rows each.
    const i64 want = std::max<i64>(1, (4 * static_cast<i64>(sms) + groups - 1) / groups);
    const i64 slices = std::min<i64>(want, std::max<i64>(1, (R + kBlock - 1) / kBlock));
    const i64 rows_per_slice = (R + slices - 1) / slices;
    at.assign(static_cast<std::size_t>(K) * R, 0.0);
    for (i64 r = 0; r < R; ++r)
      for (int k = 0; k < K; ++k) at[static_cast<std::size_t>(k) * R + r] = tb.a[r * K + k];
    Workspace step_ws(Workspace::align(sizeof(double) * K * R) + Workspace::align(sizeof(double) * R) +
                          Workspace::align(sizeof(double) * K) + Workspace::align(sizeof(double) * slices * N),
                      stream);
    double* d_at = step_ws.take<double>(static_cast<std::size_t>(K) * R);
    double* d_lo = step_ws.take<double>(R);
    double* d_L = step_ws.take<double>(K);
    double* d_part = step_ws.take<double>(slices * N);
    LABELWISE_CUDA_CHECK(cudaMemcpyAsync(d_at, at.data(), sizeof(double) * K * R, cudaMemcpyHostToDevice, stream));
    LABELWISE_CUDA_CHECK(
        cudaMemcpyAsync(d_lo, tb.log_omega.data(), sizeof(double) * R, cudaMemcpyHostToDevice, stream));
    LABELWISE_CUDA_CHECK(cudaMemcpyAsync(d_L, tb.L.data(), sizeof(double) * K, cudaMemcpyHostToDevice, stream));
    check(groups <= std::numeric_limits<int>::max() && slices <= 65535, ErrorKind::Value,
          "batchbald: the pool (", N, " items) is too large for one CUDA grid");
    joint_t<<<dim3(static_cast<unsigned>(groups), static_cast<unsigned>(slices)), kBlock, smem, stream>>>(
        d_at, d_lo, R, rows_per_slice, p, N, K, C, d_part);
    launch_check();
    finish_scores<<<item_blocks, kBlock, 0, stream>>>(s, d_L, ce, ce_batch, d_part, static_cast<int>(slices), N, K,
                                                      val);
    launch_check();
    LABELWISE_CUDA_CHECK(cudaMemcpyAsync(host_val.data(), val, sizeof(double) * N, cudaMemcpyDeviceToHost, stream));
    LABELWISE_CUDA_CHECK(cudaStreamSynchronize(stream));  // the table buffers are freed after this step

    i64 win = -1;
    for (i64 n = 0; n < N; ++n)
      if (!chosen[n] && (win < 0 || host_val[n] > host_val[win])) win = n;  // ties: the lower index
    picks.push_back(win);
    scores.push_back(host_val[win]);
    chosen[win] = 1;
    ce_batch += host_ce[win];
    if (step + 1 == job.req.b) break;
    LABELWISE_CUDA_CHECK(
        cudaMemcpyAsync(pick_p.data(), p + win * KC, sizeof(double) * KC, cudaMemcpyDeviceToHost, stream));
    LABELWISE_CUDA_CHECK(cudaStreamSynchronize(stream));
    tables.add(pick_p.data());
  }

  for (i64 i = 0; i < job.req.b; ++i) {
    LABELWISE_CUDA_CHECK(cudaMemcpyAsync(job.req.out_index + i * job.req.out_index_stride, &picks[i], sizeof(std::int64_t),
                                         cudaMemcpyHostToDevice, stream));
    if (job.req.out_score)
      LABELWISE_CUDA_CHECK(cudaMemcpyAsync(job.req.out_score + i * job.req.out_score_stride, &scores[i], sizeof(double),
                                           cudaMemcpyHostToDevice, stream));
  }
  LABELWISE_CUDA_CHECK(cudaStreamSynchronize(stream));
}

}  // namespace detail
}  // namespace labelwise
