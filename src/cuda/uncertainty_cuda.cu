// CUDA backend of the uncertainty metrics. Up to kLanesMaxClasses classes, lanes_kernel spreads each
// item's classes over a segment of lanes (class statistics in registers, row reductions by shuffles);
// more classes run one thread per item, the shared body (score_item) on global scratch (score_kernel).
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

// ---------------------------------------------------------------------------------------------------
// Lanes kernel (C <= kLanesMaxClasses): the classes of an item are spread over a segment of W lanes
// (W a power of two; 32 / W items per warp), lane c0 of a segment owning classes c0, c0 + W, ...,
// c0 + (J - 1)·W. The K samples are read one row at a time, each lane loading its own classes, so
// that a row's total, maximum, softmax sum and arg-max are segment reductions (shuffles), and the
// class statistics live in registers. The item's rules are score_item's: the same validation and
// error statuses (classify_failed_item), float64 shifted class sums, per-sample entropies in the
// compute type, the same class terms and finish_metrics; only the summation order differs.
// ---------------------------------------------------------------------------------------------------
constexpr int kLanesMaxClasses = 256;
constexpr int kLanesBlock = 256;
constexpr std::size_t kStageBytes = 24 * 1024;  // per block: a chunk of rows of its items
constexpr unsigned kFullWarp = 0xffffffffu;

template <int W, typename V>
__device__ __forceinline__ V segment_sum(V v) {
#pragma unroll
  for (int o = W / 2; o > 0; o >>= 1) v += __shfl_xor_sync(kFullWarp, v, o, W);
  return v;
}

template <int W, typename V>
__device__ __forceinline__ V segment_max(V v) {
#pragma unroll
  for (int o = W / 2; o > 0; o >>= 1) {
    const V u = __shfl_xor_sync(kFullWarp, v, o, W);
    v = u > v ? u : v;
  }
  return v;
}

/// The segment's largest value and its class, ties to the lower class.
template <int W, typename V>
__device__ __forceinline__ void segment_argmax(V& best, int& arg) {
#pragma unroll
  for (int o = W / 2; o > 0; o >>= 1) {
    const V u = __shfl_xor_sync(kFullWarp, best, o, W);
    const int a = __shfl_xor_sync(kFullWarp, arg, o, W);
    if (u > best || (u == best && a < arg)) {
      best = u;
      arg = a;
    }
  }
}

/// The two largest of the segment's (top1, top2) pairs, as a multiset (a tie gives top2 = top1).
template <int W>
__device__ __forceinline__ void segment_top2(double& t1, double& t2) {
#pragma unroll
  for (int o = W / 2; o > 0; o >>= 1) {
    const double u1 = __shfl_xor_sync(kFullWarp, t1, o, W);
    const double u2 = __shfl_xor_sync(kFullWarp, t2, o, W);
    const double lo = u1 < t1 ? u1 : t1;
    const double hi2 = u2 > t2 ? u2 : t2;
    t1 = u1 > t1 ? u1 : t1;
    t2 = lo > hi2 ? lo : hi2;
  }
}

/// Blocks of kLanesBlock threads per SM the lanes kernel is compiled for (registers per thread at most
/// 65536 / (kLanesBlock · this)): more for fewer classes per lane.
constexpr int lanes_min_blocks(int J) { return J == 1 ? 3 : J <= 4 ? 2 : 1; }

/// Copies rows [k0, k0 + rows) of the block's first `live` items (at x + offset[g]) into
/// stage[g][row][class] (chunk·C values per item), with the whole block. `flat`: the live items'
/// values are one contiguous range in that order (items of contiguous [K, C] blocks, one after the
/// other, all rows in one chunk): each thread issues all its loads before its stores, coalesced.
/// Otherwise the fastest index runs along the smallest stride: the items (`items_fastest`, e.g. the
/// pixels of a segmentation map), else the samples or the classes of one item.
template <typename T, int G>
__device__ __forceinline__ void stage_rows(const T* __restrict__ x, const std::int64_t* offset, int live, bool flat,
                                           bool items_fastest, int k0, int rows, int chunk, int C, std::int64_t sk,
                                           std::int64_t sc, T* stage) {
  const int n = rows * C;  // values per item
  const int total = live * n;
  const int t = threadIdx.x;
  if (flat) {
    constexpr int kBurst = 8;  // loads in flight per thread
    const T* src = x + offset[0];
    for (int f0 = t; f0 < total; f0 += kBurst * kLanesBlock) {
      T v[kBurst];
#pragma unroll
      for (int b = 0; b < kBurst; ++b)
        if (f0 + b * kLanesBlock < total) v[b] = src[f0 + b * kLanesBlock];
#pragma unroll
      for (int b = 0; b < kBurst; ++b)
        if (f0 + b * kLanesBlock < total) stage[f0 + b * kLanesBlock] = v[b];
    }
    return;
  }
  const bool samples_first = sk < sc;
  for (int f = t; f < total; f += kLanesBlock) {
    int g, rc;
    if (items_fastest) {
      g = f % G;  // G is a power of two
      rc = f / G;
    } else {
      g = f / n;
      rc = f - g * n;
    }
    if (g >= live) continue;  // items_fastest with a partial last group
    int r, c;
    if (samples_first) {
      c = rc / rows;
      r = rc - c * rows;
    } else {
      r = rc / C;
      c = rc - r * C;
    }
    stage[(g * chunk + r) * C + c] = x[offset[g] + (k0 + r) * sk + c * sc];
  }
}

/// BalEntAcq's class term out of line: taken once per class and item, it would otherwise set the
/// register budget of the whole kernel.
__device__ __noinline__ double balentacq_term_call(double mean, double var) { return balentacq_term(mean, var); }

/// Items per block of the lanes kernel with W lanes per item.
template <int W>
constexpr int lanes_group() { return kLanesBlock / W; }

template <typename T, int W, int J>
__global__ void __launch_bounds__(kLanesBlock, lanes_min_blocks(J))
    lanes_kernel(const T* __restrict__ x, ItemGrid grid, std::int64_t sk, std::int64_t sc, int K, int C,
                 int input_kind, unsigned mask, double tol, OutSpec outs, unsigned long long* failure) {
  using R = typename compute_type<T>::type;
  constexpr int G = lanes_group<W>();
  __shared__ T stage[kStageBytes / sizeof(T)];
  __shared__ std::int64_t offset[G];
  __shared__ int layout;  // bit 0: flat, bit 1: items fastest
  const int lane = threadIdx.x & 31;
  const int c0 = lane & (W - 1);
  const int g = threadIdx.x / W;  // this lane's item in the block's group
  const bool probs = input_kind == 0;
  const bool need_ent = (mask & (kBitExpectedEntropy | kBitBald)) != 0;
  const bool need_sq = (mask & (kBitMeanStd | kBitBalEntAcq)) != 0;
  const bool need_votes = (mask & kBitVariationRatio) != 0;
  const bool want_bal = (mask & kBitBalEntAcq) != 0;
  const R pad = probs ? R(0) : static_cast<R>(-INFINITY);  // a missing class: no mass, never the arg-max
  const int cap = static_cast<int>(kStageBytes / sizeof(T)) / (G * C);  // >= 1 for C <= kLanesMaxClasses
  const int chunk = cap < K ? cap : K;
  // The innermost item axis's stride, to read a group's items side by side where it is the smallest.
  const std::int64_t item_stride = grid.ndim > 0 ? grid.in_stride[grid.ndim - 1] : 0;
  const bool items_fastest = grid.ndim > 0 && grid.shape[grid.ndim - 1] > 1 && (item_stride < 0 ? -item_stride : item_stride) < (sk < sc ? sk : sc);
  for (std::int64_t base = static_cast<std::int64_t>(blockIdx.x) * G; base < grid.count;
       base += static_cast<std::int64_t>(gridDim.x) * G) {  // uniform over the block
    const std::int64_t i = base + g;
    const int live = static_cast<int>(grid.count - base < G ? grid.count - base : G);
    // Every lane runs every row (the shuffles need the whole warp, the staging the whole block); a
    // slot past the end or an item that failed only stops accumulating. -1: no item in this slot.
    int status = i < grid.count ? kItemOk : -1;
    __syncthreads();  // the previous group's offsets and values have been read
    if (c0 == 0 && status == kItemOk) offset[g] = item_offset(grid, grid.in_stride, i);
    __syncthreads();
    if (threadIdx.x == 0) {
      bool flat = sc == 1 && sk == C && chunk == K;
      for (int h = 1; h < live && flat; ++h) flat = offset[h] == offset[0] + static_cast<std::int64_t>(h) * K * C;
      layout = (flat ? 1 : 0) | (items_fastest ? 2 : 0);
    }
    const T* item = x + (status == kItemOk ? offset[g] : 0);
    double first[J], sum[J], sumsq[J];
    int votes[J];
#pragma unroll
    for (int j = 0; j < J; ++j) {
      first[j] = sum[j] = sumsq[j] = 0.0;
      votes[j] = 0;
    }
    double ent = 0.0;  // this lane's share of Σ_k Σ_c -p ln p
    for (int k0 = 0; k0 < K; k0 += chunk) {
      const int rows = K - k0 < chunk ? K - k0 : chunk;
      __syncthreads();  // `layout` is written; the previous chunk has been read
      stage_rows<T, G>(x, offset, live, (layout & 1) != 0, (layout & 2) != 0, k0, rows, chunk, C, sk, sc, stage);
      __syncthreads();
      for (int q = 0; q < rows; ++q) {  // uniform over the block
        const int k = k0 + q;
        R v[J];
#pragma unroll
        for (int j = 0; j < J; ++j) {
          const int c = c0 + j * W;
          v[j] = status == kItemOk && c < C ? static_cast<R>(stage[(g * chunk + q) * C + c]) : pad;
        }
        R p[J];
        int row_status = kItemOk;
        R shift = R(0);
        double log_z = 0.0;
        if (probs) {
          // NaN / ±Inf / negative / above 2 poison the total, which then fails the check.
          R total = R(0);
#pragma unroll
          for (int j = 0; j < J; ++j) {
            total += v[j] >= R(0) && v[j] <= R(2) ? v[j] : static_cast<R>(NAN);
            p[j] = v[j];
          }
          total = segment_sum<W>(total);
          if (!(fabs(static_cast<double>(total) - 1.0) <= tol)) row_status = kItemUnnormalised;
        } else {
          R mx = static_cast<R>(-INFINITY);
#pragma unroll
          for (int j = 0; j < J; ++j) {
            const R u = (v[j] != v[j] || v[j] == static_cast<R>(INFINITY)) ? static_cast<R>(INFINITY) : v[j];
            mx = u > mx ? u : mx;
          }
          mx = segment_max<W>(mx);
          R z = R(0);
#pragma unroll
          for (int j = 0; j < J; ++j) {
            p[j] = lw_exp_nonpositive(v[j] - mx);
            z += p[j];
          }
          z = segment_sum<W>(z);
          if (mx == static_cast<R>(INFINITY)) {
            row_status = kItemNonFinite;
          } else if (mx == static_cast<R>(-INFINITY)) {
            row_status = kItemAllMasked;
          } else {
            log_z = log(static_cast<double>(z));
            if (input_kind == 1 && !(fabs(static_cast<double>(mx) + log_z) <= tol)) row_status = kItemUnnormalised;
          }
          // Log-probabilities are used as given (like probabilities); logits are normalised.
          const R scale = static_cast<R>(input_kind == 1 ? exp(static_cast<double>(mx)) : 1.0 / static_cast<double>(z));
          shift = input_kind == 1 ? R(0) : mx;
          if (input_kind == 1) log_z = 0.0;
#pragma unroll
          for (int j = 0; j < J; ++j) p[j] *= scale;
        }
        if (status == kItemOk && row_status != kItemOk) {
          // The exact status by the rules of every path; only the segment's first lane reports it.
          status = c0 == 0 ? classify_failed_item(item, sk, sc, K, C, input_kind, k, row_status) : row_status;
        }
        if (need_votes) {
          R best = static_cast<R>(-INFINITY);
          int arg = C;
#pragma unroll
          for (int j = 0; j < J; ++j) {
            const int c = c0 + j * W;
            if (c < C && (v[j] > best || arg == C)) {
              best = v[j];
              arg = c;
            }
          }
          segment_argmax<W>(best, arg);
#pragma unroll
          for (int j = 0; j < J; ++j) votes[j] += (status == kItemOk && arg == c0 + j * W) ? 1 : 0;
        }
        if (status == kItemOk) {
#pragma unroll
          for (int j = 0; j < J; ++j) {
            if (c0 + j * W >= C) continue;
            const double pd = static_cast<double>(p[j]);
            if (k == 0) {
              first[j] = pd;
            } else {
              const double d = pd - first[j];
              sum[j] += d;
              sumsq[j] += d * d;
            }
            if (need_ent) {
              if (probs)
                ent -= static_cast<double>(lw_plogp(p[j]));
              else
                ent -= static_cast<double>(p[j] > R(0) ? p[j] * (v[j] - shift) : R(0)) - log_z * pd;
            }
          }
        }
      }
    }
    // Finalise: the class terms lane by lane, then segment sums.
    const double inv_k = 1.0 / K;
    double h = 0.0, t1 = -1.0, t2 = -1.0, std_sum = 0.0, terms = 0.0;
    int mode = 0;
#pragma unroll
    for (int j = 0; j < J; ++j) {
      if (status != kItemOk || c0 + j * W >= C) continue;
      double mean, var;
      if (need_sq) {
        class_mean_var(first[j], sum[j], sumsq[j], K, inv_k, mean, var);
        std_sum += sqrt(var);
        if (want_bal) terms += balentacq_term_call(mean, var);
      } else {
        mean = first[j] + sum[j] * inv_k;
      }
      h -= mean > 0.0 ? mean * lw_log_d(mean) : 0.0;
      if (mean > t1) {
        t2 = t1;
        t1 = mean;
      } else if (mean > t2) {
        t2 = mean;
      }
      mode = votes[j] > mode ? votes[j] : mode;
    }
    h = segment_sum<W>(h);
    segment_top2<W>(t1, t2);
    if (need_ent) ent = segment_sum<W>(ent);
    if (need_sq) std_sum = segment_sum<W>(std_sum);
    if (want_bal) terms = segment_sum<W>(terms);
    if (need_votes) mode = segment_max<W>(mode);
    if (c0 == 0 && status != -1) {
      double res[kNumMetrics];
      if (status == kItemOk) finish_metrics(ItemSummary{h, ent, t1, t2, mode, std_sum, terms}, K, C, mask, res);
      store_item(status, i, res, grid, mask, outs, failure);
    }
  }
}

template <typename T, int W, int J>
void launch_lanes(const ScoreJob& job, const OutSpec& outs, unsigned long long* failure, cudaStream_t stream) {
  int per_sm = 0;
  LABELWISE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, lanes_kernel<T, W, J>, kLanesBlock, 0));
  const int blocks = grid_blocks(job.grid.count, lanes_group<W>(), multiprocessor_count(job.device_index),
                                 std::max(1, per_sm));
  lanes_kernel<T, W, J><<<blocks, kLanesBlock, 0, stream>>>(static_cast<const T*>(job.x), job.grid, job.sample_stride,
                                                            job.class_stride, job.K, job.C, job.input_kind, job.mask,
                                                            job.tol, outs, failure);
}

/// The lanes kernel's segment width and classes per lane for C <= kLanesMaxClasses.
template <typename T>
void launch_lanes_for(const ScoreJob& job, const OutSpec& outs, unsigned long long* failure, cudaStream_t stream) {
  const int C = job.C;
  if (C <= 2) launch_lanes<T, 2, 1>(job, outs, failure, stream);
  else if (C <= 4) launch_lanes<T, 4, 1>(job, outs, failure, stream);
  else if (C <= 8) launch_lanes<T, 8, 1>(job, outs, failure, stream);
  else if (C <= 16) launch_lanes<T, 16, 1>(job, outs, failure, stream);
  else if (C <= 32) launch_lanes<T, 32, 1>(job, outs, failure, stream);
  else if (C <= 64) launch_lanes<T, 32, 2>(job, outs, failure, stream);
  else if (C <= 128) launch_lanes<T, 32, 4>(job, outs, failure, stream);
  else launch_lanes<T, 32, 8>(job, outs, failure, stream);
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

namespace {

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
  // Up to kLanesMaxClasses classes: the lanes kernel; more: one thread per item on global scratch.
  const bool f32 = job.dtype == DType::Float32;
  const bool lanes = job.C <= kLanesMaxClasses;
  constexpr int kBlock = 128;
  const std::size_t acc_size = f32 ? sizeof(float) : sizeof(double);
  const std::size_t Cp = static_cast<std::size_t>(padded_classes(job.C));
  // Global scratch per thread: 3 x Cp float64 class statistics, Cp compute-type row values, Cp int votes.
  ScratchGrid grid;
  std::size_t stats_bytes = 0, row_bytes = 0, scratch_bytes = 0;
  if (!lanes) {
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
  if (lanes) {
    if (f32)
      launch_lanes_for<float>(job, outs, failure, stream);
    else
      launch_lanes_for<double>(job, outs, failure, stream);
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
