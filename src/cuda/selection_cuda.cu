// CUDA backend of top-k / stochastic selection and the shard merge.
//
//  1. keys kernel: one thread per item computes its ordered key u (detail/selection_impl.hpp, the same
//     bits as the CPU) into a workspace, and records the first invalid item (atomicMin).
//     SoftRank without given ranks first sorts (u, index) with CUB's stable radix sort.
//  2. radix select of the b-th best 128-bit composite key (u, ~index): one histogram pass per byte,
//     most significant first, over the items that still share the chosen prefix, and a one-thread
//     scan that picks the byte; it stops as soon as a bucket holds exactly the items still needed.
//     Composite keys are unique (but for merge_top_k's repeated (value, id) pairs, see compact_kernel),
//     so exactly b items are >= the threshold prefix. At most 16 passes;
//     for distinct values typically 3-4. No host round trip between passes.
//  3. compaction of the b winners (atomics, any order), then two stable CUB radix sorts of the b:
//     by index ascending, then by u descending, which is (u desc, index asc); outputs written.
// The host synchronises after step 1 (so that invalid input writes nothing) and at the end.
#include <cub/device/device_radix_sort.cuh>
#include <cub/version.cuh>

// The sorts below pass 64-bit item counts; CUB before 1.16 (CUDA < 11.7) takes an int and would
// truncate them silently.
static_assert(CUB_VERSION >= 101600, "labelwise's CUDA selection needs CUB >= 1.16 (CUDA >= 11.7)");

#include <algorithm>
#include <cstdint>

#include "../selection_backend.hpp"
#include "cuda_check.hpp"

namespace labelwise {
namespace detail {
namespace {

using u64 = unsigned long long;
constexpr int kBlock = 256;
constexpr u64 kNoFailure = ~0ull;

/// Everything the device needs to turn item i into (u, global index).
struct DeviceSource {
  int source;  // SelectSource
  const void* values;
  int is_f32;
  FlatGrid grid;
  std::int64_t n;
  const std::int64_t* ids;
  std::int64_t ids_stride;
  int mode;
  double beta;
  std::uint64_t seed;
  const std::int64_t* ranks;
  FlatGrid ranks_grid;
  std::int64_t offset;
  double* out_keys;
  FlatGrid keys_grid;
};

__device__ inline double load_value(const DeviceSource& s, std::int64_t i) {
  const std::int64_t o = flat_offset(s.grid, i);
  return s.is_f32 ? static_cast<double>(static_cast<const float*>(s.values)[o]) : static_cast<const double*>(s.values)[o];
}

__device__ inline void record_failure(u64* failure, std::int64_t item, int status) {
  atomicMin(failure, (static_cast<u64>(item) << 3) | static_cast<u64>(status));
}

/// u of every item, and the validation; with write_keys (a second launch, once the input is known to
/// be valid) the all-keys output of stochastic_keys.
__global__ void keys_kernel(DeviceSource s, u64* __restrict__ U, u64* failure, bool write_keys) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < s.n; i += stride) {
    const double v = load_value(s, i);
    double key = v;
    if (s.source == static_cast<int>(SelectSource::Stochastic)) {
      const double r = s.ranks ? static_cast<double>(s.ranks[flat_offset(s.ranks_grid, i)]) : 0.0;
      double log_w = 0.0;
      const int st = stochastic_log_weight(s.mode, s.beta, v, r, &log_w);
      if (st != kSelectOk) {
        record_failure(failure, i, st);
        continue;
      }
      key = gumbel_key(log_w, s.seed, static_cast<std::uint64_t>(i + s.offset));
      if (write_keys) s.out_keys[flat_offset(s.keys_grid, i)] = key;
    } else {
      if (v != v) {
        record_failure(failure, i, kSelectNaN);
        continue;
      }
      if (s.source == static_cast<int>(SelectSource::Pairs) && s.ids[i * s.ids_stride] < 0) {
        record_failure(failure, i, kSelectNegativeIndex);
        continue;
      }
    }
    if (U) U[i] = ordered_key(key);
  }
}

/// SoftRank, step 1: u of the scores and the identity permutation, for the stable sort.
__global__ void score_order_kernel(DeviceSource s, u64* __restrict__ U, u64* __restrict__ I, u64* failure) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < s.n; i += stride) {
    const double v = load_value(s, i);
    if (v != v) record_failure(failure, i, kSelectNaN);
    U[i] = ordered_key(v);
    I[i] = static_cast<u64>(i);
  }
}

/// SoftRank, step 2: item order[p] has rank p + 1.
__global__ void softrank_keys_kernel(DeviceSource s, const u64* __restrict__ order, u64* __restrict__ U) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t p = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; p < s.n; p += stride) {
    const std::int64_t i = static_cast<std::int64_t>(order[p]);
    double log_w = 0.0;
    stochastic_log_weight(kModeSoftRank, s.beta, 0.0, static_cast<double>(p + 1), &log_w);
    const double key = gumbel_key(log_w, s.seed, static_cast<std::uint64_t>(i + s.offset));
    if (s.out_keys) s.out_keys[flat_offset(s.keys_grid, i)] = key;
    if (U) U[i] = ordered_key(key);
  }
}

// ---- radix select (helpers in detail/selection_impl.hpp) ----------------------------------------

__device__ inline u64 tie_key(std::int64_t i, const std::int64_t* ids, std::int64_t ids_stride, std::int64_t offset) {
  return radix_tie_key(ids ? ids[i * ids_stride] : i + offset);
}

__global__ void radix_histogram_kernel(const u64* __restrict__ U, std::int64_t n, const std::int64_t* ids,
                                       std::int64_t ids_stride, std::int64_t offset, const RadixState* state,
                                       u64* hist) {
  const RadixState st = *state;
  if (st.done) return;
  __shared__ unsigned int local[256];
  for (int j = threadIdx.x; j < 256; j += blockDim.x) local[j] = 0;
  __syncthreads();
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const u64 u = U[i];
    const u64 t = st.depth >= 8 ? tie_key(i, ids, ids_stride, offset) : 0;
    if (!radix_shares_prefix(u, t, st)) continue;
    atomicAdd(&local[radix_byte(u, t, st.depth)], 1u);
  }
  __syncthreads();
  for (int j = threadIdx.x; j < 256; j += blockDim.x)
    if (local[j]) atomicAdd(&hist[j], static_cast<u64>(local[j]));
}

/// One thread: picks the byte that holds the need-th best, extends the prefix, clears the histogram.
__global__ void radix_scan_kernel(RadixState* state, u64* hist) {
  RadixState st = *state;
  if (st.done) return;
  radix_choose(st, hist);
  for (int g = 0; g < 256; ++g) hist[g] = 0;
  *state = st;
}

/// The b winners into win_u / win_id (any order). Keys are unique except for merge_top_k's repeated
/// (value, id) pairs: after 16 bytes the threshold is then a full key held by more items than still
/// needed, and exactly st.need of those copies (indistinguishable) take the last st.need slots; every
/// item strictly above the threshold takes one of the first b - st.need. count: slots written.
__global__ void compact_kernel(const u64* __restrict__ U, std::int64_t n, std::int64_t b, const std::int64_t* ids,
                               std::int64_t ids_stride, std::int64_t offset, const RadixState* state,
                               u64* __restrict__ win_u, u64* __restrict__ win_id, u64* above, u64* ties, u64* count) {
  const RadixState st = *state;
  const u64 need = static_cast<u64>(st.need);
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const u64 u = U[i];
    const u64 t = tie_key(i, ids, ids_stride, offset);
    if (!radix_at_or_above(u, t, st)) continue;
    u64 pos;
    if (st.depth == 16 && u == st.hi && t == st.lo) {
      const u64 slot = atomicAdd(ties, 1ull);
      if (slot >= need) continue;
      pos = static_cast<u64>(b) - need + slot;
    } else {
      pos = atomicAdd(above, 1ull);
      if (pos >= static_cast<u64>(b)) continue;  // cannot happen (internal error, reported below)
    }
    atomicAdd(count, 1ull);
    win_u[pos] = u;
    win_id[pos] = ~t;
  }
}

/// After the sort by index: the same index twice (merge_top_k) is adjacent.
__global__ void duplicate_kernel(const u64* __restrict__ ids_sorted, std::int64_t b, u64* dup) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t j = 1 + blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; j < b; j += stride)
    if (ids_sorted[j] == ids_sorted[j - 1]) atomicMin(dup, ids_sorted[j]);
}

__global__ void write_kernel(const u64* __restrict__ win_u, const u64* __restrict__ win_id, std::int64_t b,
                             std::int64_t* out_index, std::int64_t index_stride, void* out_value, int value_is_f32,
                             std::int64_t value_stride) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t j = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; j < b; j += stride) {
    out_index[j * index_stride] = static_cast<std::int64_t>(win_id[j]);
    if (out_value) {
      const double v = ordered_value(win_u[j]);
      if (value_is_f32)
        static_cast<float*>(out_value)[j * value_stride] = static_cast<float>(v);
      else
        static_cast<double*>(out_value)[j * value_stride] = v;
    }
  }
}

int grid_for(std::int64_t n, int sms) {
  const std::int64_t want = (n + kBlock - 1) / kBlock;
  // Enough blocks to fill the GPU; a block's shared counters (uint32) see at most 2^30 items.
  const std::int64_t floor_blocks = (n >> 30) + 1;
  return static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>(want, std::max<std::int64_t>(sms * 8LL, floor_blocks))));
}

std::size_t sort_temp_bytes(std::int64_t count) {
  std::size_t bytes = 0;
  if (count <= 0) return 0;
  LABELWISE_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const u64*>(nullptr),
                                                       static_cast<u64*>(nullptr), static_cast<const u64*>(nullptr),
                                                       static_cast<u64*>(nullptr), count));
  std::size_t desc = 0;
  LABELWISE_CUDA_CHECK(cub::DeviceRadixSort::SortPairsDescending(nullptr, desc, static_cast<const u64*>(nullptr),
                                                                 static_cast<u64*>(nullptr),
                                                                 static_cast<const u64*>(nullptr),
                                                                 static_cast<u64*>(nullptr), count));
  return std::max(bytes, desc);
}

SelectFailure decode(u64 packed) {
  SelectFailure f;
  if (packed != kNoFailure) {
    f.status = static_cast<int>(packed & 7ull);
    f.item = static_cast<std::int64_t>(packed >> 3);
  }
  return f;
}

}  // namespace

SelectFailure select_cuda(const SelectJob& job) {
  CudaDeviceGuard guard(job.device_index);
  cudaStream_t stream = static_cast<cudaStream_t>(job.stream);
  const int sms = multiprocessor_count(job.device_index);
  const std::int64_t n = job.n;
  const std::int64_t b = job.b;
  const bool select = b > 0;
  const bool softrank_sort =
      job.source == SelectSource::Stochastic && job.mode == kModeSoftRank && job.ranks == nullptr;
  const bool need_u = select || softrank_sort;

  DeviceSource src{};
  src.source = static_cast<int>(job.source);
  src.values = job.values;
  src.is_f32 = job.dtype == DType::Float32;
  src.grid = job.grid;
  src.n = n;
  src.ids = job.ids;
  src.ids_stride = job.ids_stride;
  src.mode = job.mode;
  src.beta = job.beta;
  src.seed = job.seed;
  src.ranks = job.ranks;
  src.ranks_grid = job.ranks_grid;
  src.offset = job.index_offset;
  src.out_keys = job.out_keys;
  src.keys_grid = job.keys_grid;

  // Workspace: failure words, radix state + histogram, u of every item, the softrank sort buffers,
  // the winners (double-buffered for the sorts) and CUB's temporary storage.
  const std::size_t sort_bytes =
      std::max(sort_temp_bytes(softrank_sort ? n : 0), sort_temp_bytes(select ? b : 0));
  std::size_t bytes = Workspace::align(4 * sizeof(u64)) + Workspace::align(sizeof(RadixState)) +
                      Workspace::align(256 * sizeof(u64)) + Workspace::align(sort_bytes);
  if (need_u) bytes += Workspace::align(n * sizeof(u64));
  if (softrank_sort) bytes += 3 * Workspace::align(n * sizeof(u64));
  if (select) bytes += 4 * Workspace::align(b * sizeof(u64));
  Workspace ws(bytes, stream);
  u64* words = ws.take<u64>(4);  // [0] failure, [1] duplicate, [2] winners written, [3] above the threshold
  RadixState* state = ws.take<RadixState>(1);
  u64* hist = ws.take<u64>(256);
  u64* ties = hist;  // compact_kernel's tie counter: the histogram's first word, free by then
  void* sort_temp = ws.take<char>(sort_bytes);
  u64* U = need_u ? ws.take<u64>(n) : nullptr;

  const int blocks = grid_for(n, sms);
  LABELWISE_CUDA_CHECK(cudaMemsetAsync(words, 0xff, 2 * sizeof(u64), stream));
  LABELWISE_CUDA_CHECK(cudaMemsetAsync(words + 2, 0, 2 * sizeof(u64), stream));

  if (softrank_sort) {
    u64* U0 = ws.take<u64>(n);
    u64* I0 = ws.take<u64>(n);
    u64* I1 = ws.take<u64>(n);
    score_order_kernel<<<blocks, kBlock, 0, stream>>>(src, U0, I0, words);
    LABELWISE_CUDA_CHECK(cudaGetLastError());
    u64 failure = kNoFailure;  // NaN scores: no key is written
    LABELWISE_CUDA_CHECK(cudaMemcpyAsync(&failure, words, sizeof(u64), cudaMemcpyDeviceToHost, stream));
    LABELWISE_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (failure != kNoFailure) return decode(failure);
    std::size_t tb = sort_bytes;
    // Stable: equal scores keep the lower index first.
    LABELWISE_CUDA_CHECK(cub::DeviceRadixSort::SortPairsDescending(sort_temp, tb, U0, U, I0, I1, n, 0, 64, stream));
    softrank_keys_kernel<<<blocks, kBlock, 0, stream>>>(src, I1, select ? U : nullptr);
    LABELWISE_CUDA_CHECK(cudaGetLastError());
  } else {
    keys_kernel<<<blocks, kBlock, 0, stream>>>(src, select ? U : nullptr, words, false);
    LABELWISE_CUDA_CHECK(cudaGetLastError());
  }
  u64 failure = kNoFailure;
  LABELWISE_CUDA_CHECK(cudaMemcpyAsync(&failure, words, sizeof(u64), cudaMemcpyDeviceToHost, stream));
  LABELWISE_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (failure != kNoFailure) return decode(failure);
  if (job.out_keys && !softrank_sort) {  // valid input: now the keys (computed again: Philox is cheap)
    keys_kernel<<<blocks, kBlock, 0, stream>>>(src, nullptr, words, true);
    LABELWISE_CUDA_CHECK(cudaGetLastError());
  }
  if (!select) {
    LABELWISE_CUDA_CHECK(cudaStreamSynchronize(stream));
    return {};
  }

  // Radix select.
  const std::int64_t* ids = job.source == SelectSource::Pairs ? job.ids : nullptr;
  const std::int64_t offset = job.source == SelectSource::Pairs ? 0 : job.index_offset;
  RadixState init;
  init.need = static_cast<long long>(b);
  init.done = b == n ? 1 : 0;
  LABELWISE_CUDA_CHECK(cudaMemcpyAsync(state, &init, sizeof init, cudaMemcpyHostToDevice, stream));
  LABELWISE_CUDA_CHECK(cudaMemsetAsync(hist, 0, 256 * sizeof(u64), stream));
  for (int pass = 0; pass < 16; ++pass) {
    radix_histogram_kernel<<<blocks, kBlock, 0, stream>>>(U, n, ids, job.ids_stride, offset, state, hist);
    radix_scan_kernel<<<1, 1, 0, stream>>>(state, hist);
  }
  LABELWISE_CUDA_CHECK(cudaGetLastError());
  u64* win_u = ws.take<u64>(b);
  u64* win_id = ws.take<u64>(b);
  u64* tmp_u = ws.take<u64>(b);
  u64* tmp_id = ws.take<u64>(b);
  LABELWISE_CUDA_CHECK(cudaMemsetAsync(ties, 0, sizeof(u64), stream));
  compact_kernel<<<blocks, kBlock, 0, stream>>>(U, n, b, ids, job.ids_stride, offset, state, win_u, win_id, words + 3,
                                                ties, words + 2);
  LABELWISE_CUDA_CHECK(cudaGetLastError());
  // (u desc, index asc) = stable sort by index, then stable sort by u descending.
  std::size_t tb = sort_bytes;
  LABELWISE_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_temp, tb, win_id, tmp_id, win_u, tmp_u, b, 0, 64, stream));
  if (ids) {
    const int wblocks = grid_for(b, sms);
    duplicate_kernel<<<wblocks, kBlock, 0, stream>>>(tmp_id, b, words + 1);
    LABELWISE_CUDA_CHECK(cudaGetLastError());
    u64 dup = kNoFailure;
    LABELWISE_CUDA_CHECK(cudaMemcpyAsync(&dup, words + 1, sizeof(u64), cudaMemcpyDeviceToHost, stream));
    LABELWISE_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (dup != kNoFailure) return {kSelectDuplicate, static_cast<std::int64_t>(dup)};
  }
  tb = sort_bytes;
  LABELWISE_CUDA_CHECK(
      cub::DeviceRadixSort::SortPairsDescending(sort_temp, tb, tmp_u, win_u, tmp_id, win_id, b, 0, 64, stream));
  write_kernel<<<grid_for(b, sms), kBlock, 0, stream>>>(win_u, win_id, b, job.out_index, job.out_index_stride,
                                                          job.out_value, job.out_value_dtype == DType::Float32,
                                                          job.out_value_stride);
  LABELWISE_CUDA_CHECK(cudaGetLastError());
  u64 count = 0;
  LABELWISE_CUDA_CHECK(cudaMemcpyAsync(&count, words + 2, sizeof(u64), cudaMemcpyDeviceToHost, stream));
  LABELWISE_CUDA_CHECK(cudaStreamSynchronize(stream));
  check(static_cast<std::int64_t>(count) == b, ErrorKind::Runtime, "selection (CUDA): internal error, selected ",
        count, " items instead of ", b);
  return {};
}

}  // namespace detail
}  // namespace labelwise
