// CUDA backend of core-set (k-center greedy), BADGE (k-means++ seeding on gradient embeddings) and the
// weighted k-means hybrid (its device part: validation and the candidates' rows): the
// passes of src/cpu/diversity_cpu.cpp, one warp per row, with the argmax / the k-means++ draw taken
// on the host from per-block results (the draw is the shared detail::badge_draw, over the same fixed
// blocks as on the CPU). Built with --fmad=false: identical rows give a difference of exactly 0.
// Sums over a row's D values run in warp order (not the CPU's), so distances may differ from the
// CPU's in the last bits; picks agree unless two candidates are that close.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "../diversity_backend.hpp"
#include "cuda_check.hpp"
#include "labelwise/detail/diversity_impl.hpp"

namespace labelwise {
namespace detail {
namespace {

using u64 = unsigned long long;
constexpr u64 kNoFailure = ~0ull;
constexpr int kWarp = 32;
constexpr int kBlock = 256;
constexpr int kWarpsPerBlock = kBlock / kWarp;
constexpr std::int64_t kCentreChunk = 64;

struct DevMatrix {
  const void* data;
  std::int64_t rows, cols, rs, cs;
};

DevMatrix dev_matrix(const Matrix& m) { return {m.data, m.rows, m.cols, m.row_stride, m.col_stride}; }

/// (value, index) with the order of the CPU's ArgMax: larger value, then lower index.
struct Best {
  double v;
  std::int64_t i;
};

__device__ inline void offer(Best& b, double v, std::int64_t i) {
  if (v > b.v || (v == b.v && i < b.i)) {
    b.v = v;
    b.i = i;
  }
}

__device__ inline double warp_sum(double v) {
  // Butterfly: every lane ends with the same bits (each step adds the same two partial sums).
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

/// Reduces the block's lane-0 candidates (one per warp) into out[blockIdx.x].
__device__ inline void block_best(Best mine, Best* out) {
  __shared__ double sv[kWarpsPerBlock];
  __shared__ std::int64_t si[kWarpsPerBlock];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (lane == 0) {
    sv[warp] = mine.v;
    si[warp] = mine.i;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    Best b{-INFINITY, INT64_MAX};
    for (int w = 0; w < kWarpsPerBlock; ++w) offer(b, sv[w], si[w]);
    out[blockIdx.x] = b;
  }
}

__global__ void reduce_best(const Best* parts, int count, Best* out) {
  __shared__ Best s[kBlock];
  Best b{-INFINITY, INT64_MAX};
  for (int j = threadIdx.x; j < count; j += blockDim.x) offer(b, parts[j].v, parts[j].i);
  s[threadIdx.x] = b;
  __syncthreads();
  if (threadIdx.x == 0) {
    Best r{-INFINITY, INT64_MAX};
    for (int j = 0; j < static_cast<int>(blockDim.x); ++j) offer(r, s[j].v, s[j].i);
    *out = r;
  }
}

template <typename T>
__device__ inline const T* row_of(const DevMatrix& m, std::int64_t i) {
  return static_cast<const T*>(m.data) + i * m.rs;
}

/// Σ_k (scale·x_ik − c_k)² by the warp (every lane gets the value).
template <typename T>
__device__ inline double warp_sq_dist(const DevMatrix& m, std::int64_t i, double scale, const double* c, int lane) {
  const T* r = row_of<T>(m, i);
  double s = 0.0;
  for (std::int64_t k = lane; k < m.cols; k += kWarp) {
    const double e = static_cast<double>(r[k * m.cs]) * scale - c[k];
    s += e * e;
  }
  return warp_sum(s);
}

/// Σ_k (scale·x_ik) · c_k by the warp.
template <typename T>
__device__ inline double warp_dot(const DevMatrix& m, std::int64_t i, double scale, const double* c, int lane) {
  const T* r = row_of<T>(m, i);
  double s = 0.0;
  for (std::int64_t k = lane; k < m.cols; k += kWarp) s += static_cast<double>(r[k * m.cs]) * scale * c[k];
  return warp_sum(s);
}

/// ||x_i||² by the warp (every lane gets the value), whether the whole row is finite and whether any
/// entry is nonzero; its largest magnitude is folded into *amax (the bits of a double >= 0, whose
/// order as integers is the order of the values).
template <typename T>
__device__ inline double warp_norm2(const DevMatrix& m, std::int64_t i, int lane, bool& finite, bool& nonzero,
                                    u64* amax) {
  const T* r = row_of<T>(m, i);
  bool ok = true, nz = false;
  double s = 0.0, big = 0.0;
  for (std::int64_t k = lane; k < m.cols; k += kWarp) {
    const double v = static_cast<double>(r[k * m.cs]);
    ok &= isfinite(v);
    nz |= v != 0.0;
    big = fmax(big, fabs(v));
    s += v * v;
  }
  finite = __all_sync(0xffffffffu, ok);
  nonzero = __any_sync(0xffffffffu, nz);
  for (int o = kWarp / 2; o > 0; o >>= 1) big = fmax(big, __shfl_xor_sync(0xffffffffu, big, o));
  // One atomic per row that raises the running maximum (a plain read first: rows of the same scale
  // would otherwise all hit one address).
  if (lane == 0 && big > 0.0) {
    const u64 bits = static_cast<u64>(__double_as_longlong(big));
    if (bits > *reinterpret_cast<volatile u64*>(amax)) atomicMax(amax, bits);
  }
  return warp_sum(s);
}
template <typename T>
__device__ inline double warp_norm2(const DevMatrix& m, std::int64_t i, int lane, bool& finite, u64* amax) {
  bool nonzero = false;
  return warp_norm2<T>(m, i, lane, finite, nonzero, amax);
}

/// The largest magnitude that the validation folded into `amax` (synchronous).
double max_abs_of(const u64* amax, cudaStream_t stream) {
  u64 bits = 0;
  LABELWISE_CUDA_CHECK(cudaMemcpyAsync(&bits, amax, sizeof(u64), cudaMemcpyDeviceToHost, stream));
  LABELWISE_CUDA_CHECK(cudaStreamSynchronize(stream));
  double v = 0.0;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

__device__ inline std::int64_t global_warp() {
  return (blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x) / kWarp;
}
__device__ inline std::int64_t warp_count() { return static_cast<std::int64_t>(gridDim.x) * blockDim.x / kWarp; }

// ---- core-set ---------------------------------------------------------------------------------------

/// NaN / Inf rows and rows that fail row_norm_status -> failure (row << 3 | status, lowest row wins);
/// the inverse norms for cosine; mins = -1 (labelled) or +inf; the largest magnitude into *amax.
template <typename T>
__global__ void coreset_prepare(DevMatrix x, bool cosine, const std::uint8_t* labeled, double* scale, double* mins,
                                u64* failure, u64* amax) {
  const int lane = threadIdx.x % kWarp;
  for (std::int64_t i = global_warp(); i < x.rows; i += warp_count()) {
    bool finite = true, nonzero = false;
    const double ss = warp_norm2<T>(x, i, lane, finite, nonzero, amax);
    if (lane == 0) {
      const int st = finite ? row_norm_status(ss, nonzero, cosine) : kDivNonFinite;
      if (st != kDivOk) atomicMin(failure, (static_cast<u64>(i) << 3) | static_cast<u64>(st));
      if (cosine) scale[i] = st == kDivOk ? 1.0 / sqrt(ss) : 0.0;
      mins[i] = labeled[i] ? -1.0 : INFINITY;
    }
  }
}

/// centres[j·d + k] = scale(row) · x[rows[j], k] for j < count; scale(row) = scale[row], or `unit`
/// when scale is null.
template <typename T>
__global__ void load_centres(DevMatrix x, const std::int64_t* rows, std::int64_t count, const double* scale,
                             double unit, double* centres) {
  const std::int64_t total = count * x.cols;
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t j = e / x.cols, k = e % x.cols;
    const std::int64_t row = rows[j];
    const double s = scale ? scale[row] : unit;
    centres[e] = static_cast<double>(row_of<T>(x, row)[k * x.cs]) * s;
  }
}

/// mins[i] = min(mins[i], min_j dist2(i, centre j)) for items not labelled / chosen (mins >= 0);
/// `taken` (>= 0) is marked as chosen first. With count = 0 nothing is updated and the pass only
/// finds the argmax of dist2(i, centres[0]) (the first pick's "farthest from the mean").
template <typename T>
__global__ void coreset_pass(DevMatrix x, const double* scale, double unit, const double* centres, int count,
                             double* mins, std::int64_t taken, Best* parts) {
  const int lane = threadIdx.x % kWarp;
  Best mine{-INFINITY, INT64_MAX};
  for (std::int64_t i = global_warp(); i < x.rows; i += warp_count()) {
    const double s = scale ? scale[i] : unit;
    if (count == 0) {
      const double dd = warp_sq_dist<T>(x, i, s, centres, lane);
      offer(mine, dd, i);
      continue;
    }
    double m = i == taken ? -1.0 : mins[i];
    if (m >= 0.0) {
      for (int j = 0; j < count; ++j) {
        const double dd = warp_sq_dist<T>(x, i, s, centres + j * x.cols, lane);
        if (dd < m) m = dd;
      }
    }
    if (lane == 0) mins[i] = m;
    offer(mine, m, i);
  }
  block_best(mine, parts);
}

/// Column sums of the (unit) rows over fixed blocks of kBadgeSumBlock rows, in row order: partial[blk·d + k].
template <typename T>
__global__ void column_block_sums(DevMatrix x, const double* scale, double unit, double* partial) {
  const std::int64_t nb = (x.rows + kBadgeSumBlock - 1) / kBadgeSumBlock;
  const std::int64_t total = nb * x.cols;
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t blk = e / x.cols, k = e % x.cols;
    double acc = 0.0;
    const std::int64_t i1 = min(x.rows, (blk + 1) * kBadgeSumBlock);
    for (std::int64_t i = blk * kBadgeSumBlock; i < i1; ++i)
      acc += static_cast<double>(row_of<T>(x, i)[k * x.cs]) * (scale ? scale[i] : unit);
    partial[e] = acc;
  }
}

__global__ void finish_mean(const double* partial, std::int64_t nb, std::int64_t d, std::int64_t n, double* mean) {
  for (std::int64_t k = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; k < d;
       k += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    double m = 0.0;
    for (std::int64_t blk = 0; blk < nb; ++blk) m += partial[blk * d + k];
    mean[k] = m / static_cast<double>(n);
  }
}

template <typename V>
__global__ void scatter(const V* src, std::int64_t count, V* dst, std::int64_t stride) {
  for (std::int64_t j = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; j < count;
       j += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    dst[j * stride] = src[j];
}

int blocks_for(std::int64_t work_items, int per_block, int sms) { return grid_blocks(work_items, per_block, sms, 16); }

// Failures are packed as row << 3 | status: every status must fit in 3 bits.
static_assert(kDivNormRange < 8, "diversity statuses must fit the 3-bit field of the packed failure word");

DiversityFailure decode(u64 packed) {
  DiversityFailure f;
  if (packed != kNoFailure) {
    f.status = static_cast<int>(packed & 7ull);
    f.item = static_cast<std::int64_t>(packed >> 3);
  }
  return f;
}

/// Runs the pass and returns the argmax over all rows (synchronous).
Best argmax_of(Best* parts, int blocks, Best* result, cudaStream_t stream) {
  reduce_best<<<1, kBlock, 0, stream>>>(parts, blocks, result);
  LABELWISE_CUDA_CHECK(cudaGetLastError());
  Best host{};
  LABELWISE_CUDA_CHECK(cudaMemcpyAsync(&host, result, sizeof(Best), cudaMemcpyDeviceToHost, stream));
  LABELWISE_CUDA_CHECK(cudaStreamSynchronize(stream));
  return host;
}

template <typename V>
void write_out(const std::vector<V>& host, V* staging, V* dst, std::int64_t stride, cudaStream_t stream) {
  const std::int64_t count = static_cast<std::int64_t>(host.size());
  if (count == 0) return;
  LABELWISE_CUDA_CHECK(cudaMemcpyAsync(staging, host.data(), count * sizeof(V), cudaMemcpyHostToDevice, stream));
  scatter<V><<<blocks_for(count, kBlock, 1), kBlock, 0, stream>>>(staging, count, dst, stride);
  LABELWISE_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
DiversityFailure coreset_run(const CoresetJob& job, int sms, cudaStream_t stream) {
  const DevMatrix x = dev_matrix(job.x);
  const std::int64_t n = x.rows, d = x.cols, b = job.b;
  const bool cosine = job.metric == 1;
  const std::int64_t nb = (n + kBadgeSumBlock - 1) / kBadgeSumBlock;
  const int row_blocks = blocks_for(n, kWarpsPerBlock, sms);
  std::size_t bytes = 2 * Workspace::align(sizeof(u64)) + Workspace::align(n) + 2 * Workspace::align(n * sizeof(double)) +
                      Workspace::align(kCentreChunk * d * sizeof(double)) +
                      Workspace::align(kCentreChunk * sizeof(std::int64_t)) +
                      Workspace::align((row_blocks + 1) * sizeof(Best)) + Workspace::align(nb * d * sizeof(double)) +
                      Workspace::align(b * sizeof(std::int64_t)) + Workspace::align(b * sizeof(double));
  Workspace ws(bytes, stream);
  u64* failure = ws.take<u64>(1);
  u64* amax = ws.take<u64>(1);
  std::uint8_t* labeled = ws.take<std::uint8_t>(n);
  double* scale = ws.take<double>(n);
  double* mins = ws.take<double>(n);
  double* centres = ws.take<double>(kCentreChunk * d);
  std::int64_t* rows = ws.take<std::int64_t>(kCentreChunk);
  Best* parts = ws.take<Best>(row_blocks + 1);
  Best* result = parts + row_blocks;
  double* partial = ws.take<double>(nb * d);
  std::int64_t* out_idx = ws.take<std::int64_t>(b);
  double* out_rad = ws.take<double>(b);

  LABELWISE_CUDA_CHECK(cudaMemsetAsync(failure, 0xff, sizeof(u64), stream));
  LABELWISE_CUDA_CHECK(cudaMemsetAsync(amax, 0, sizeof(u64), stream));
  LABELWISE_CUDA_CHECK(cudaMemcpyAsync(labeled, job.labeled, n, cudaMemcpyHostToDevice, stream));
  coreset_prepare<T><<<row_blocks, kBlock, 0, stream>>>(x, cosine, labeled, scale, mins, failure, amax);
  LABELWISE_CUDA_CHECK(cudaGetLastError());
  u64 host_failure = kNoFailure;
  LABELWISE_CUDA_CHECK(cudaMemcpyAsync(&host_failure, failure, sizeof(u64), cudaMemcpyDeviceToHost, stream));
  LABELWISE_CUDA_CHECK(cudaStreamSynchronize(stream));
  const DiversityFailure f = decode(host_failure);
  if (f.status != kDivOk || b == 0) return f;
  const double* sc = cosine ? scale : nullptr;
  const int shift = cosine ? 0 : feature_shift(max_abs_of(amax, stream));  // Euclidean: read times 2^shift
  const double unit = std::ldexp(1.0, shift);

  std::int64_t pick = -1;
  if (job.n_labeled > 0) {
    std::vector<std::int64_t> lab;
    lab.reserve(static_cast<std::size_t>(job.n_labeled));
    for (std::int64_t i = 0; i < n; ++i)
      if (job.labeled[i]) lab.push_back(i);
    Best best{};
    for (std::size_t c0 = 0; c0 < lab.size(); c0 += kCentreChunk) {
      const int count = static_cast<int>(std::min<std::size_t>(kCentreChunk, lab.size() - c0));
      LABELWISE_CUDA_CHECK(
          cudaMemcpyAsync(rows, lab.data() + c0, count * sizeof(std::int64_t), cudaMemcpyHostToDevice, stream));
      load_centres<T><<<blocks_for(count * d, kBlock, sms), kBlock, 0, stream>>>(x, rows, count, sc, unit, centres);
      coreset_pass<T><<<row_blocks, kBlock, 0, stream>>>(x, sc, unit, centres, count, mins, -1, parts);
      LABELWISE_CUDA_CHECK(cudaGetLastError());
      if (c0 + count == lab.size()) best = argmax_of(parts, row_blocks, result, stream);
      else LABELWISE_CUDA_CHECK(cudaStreamSynchronize(stream));  // `rows` is reused by the next chunk
    }
    pick = best.i;
  } else {
    column_block_sums<T><<<blocks_for(nb * d, kBlock, sms), kBlock, 0, stream>>>(x, sc, unit, partial);
    finish_mean<<<blocks_for(d, kBlock, sms), kBlock, 0, stream>>>(partial, nb, d, n, centres);
    LABELWISE_CUDA_CHECK(cudaGetLastError());
    std::vector<double> mean(static_cast<std::size_t>(d));
    LABELWISE_CUDA_CHECK(cudaMemcpyAsync(mean.data(), centres, d * sizeof(double), cudaMemcpyDeviceToHost, stream));
    LABELWISE_CUDA_CHECK(cudaStreamSynchronize(stream));
    const bool zero = std::all_of(mean.begin(), mean.end(), [](double v) { return v == 0.0; });
    if (cosine && zero) {
      pick = 0;
    } else {
      coreset_pass<T><<<row_blocks, kBlock, 0, stream>>>(x, sc, unit, centres, 0, mins, -1, parts);
      LABELWISE_CUDA_CHECK(cudaGetLastError());
      pick = argmax_of(parts, row_blocks, result, stream).i;
    }
  }

  std::vector<std::int64_t> picks(static_cast<std::size_t>(b));
  std::vector<double> radii(static_cast<std::size_t>(b));
  for (std::int64_t t = 0; t < b; ++t) {
    picks[t] = pick;
    LABELWISE_CUDA_CHECK(cudaMemcpyAsync(rows, &picks[t], sizeof(std::int64_t), cudaMemcpyHostToDevice, stream));
    load_centres<T><<<blocks_for(d, kBlock, sms), kBlock, 0, stream>>>(x, rows, 1, sc, unit, centres);
    coreset_pass<T><<<row_blocks, kBlock, 0, stream>>>(x, sc, unit, centres, 1, mins, pick, parts);
    LABELWISE_CUDA_CHECK(cudaGetLastError());
    const Best best = argmax_of(parts, row_blocks, result, stream);
    const double r2 = std::max(0.0, best.v);  // -1: every item is covered
    radii[t] = cosine ? 0.5 * r2 : std::ldexp(std::sqrt(r2), -shift);
    pick = best.i;
  }
  write_out(picks, out_idx, job.out_index, job.out_index_stride, stream);
  write_out(radii, out_rad, job.out_radius, job.out_radius_stride, stream);
  LABELWISE_CUDA_CHECK(cudaStreamSynchronize(stream));
  return {};
}

// ---- BADGE ------------------------------------------------------------------------------------------

/// One row of BADGE's preparation (lane 0): the CPU's validation, then a = p − onehot(argmax p) and
/// g2 = ||a||²·||h||². Returns a failure key or kNoFailure.
template <typename TX>
__device__ u64 badge_row(const DevMatrix& x, std::int64_t i, int kind, double tol, bool h_finite, double hh, double* a,
                         double* g2) {
  const TX* xr = row_of<TX>(x, i);
  const std::int64_t c = x.cols;
  bool bad_nan = false, neg = false, all_neg_inf = true;
  double sum = 0.0;
  for (std::int64_t k = 0; k < c; ++k) {
    const double v = static_cast<double>(xr[k * x.cs]);
    if (kind == 0) {
      bad_nan |= !isfinite(v);
      neg |= v < 0.0;
      sum += v;
    } else {
      bad_nan |= isnan(v) || v == INFINITY;
      all_neg_inf &= v == -INFINITY;
      if (kind == 1) sum += exp(v);
    }
  }
  int st = kDivOk;
  if (bad_nan)
    st = kDivNonFinite;
  else if (kind == 0 && neg)
    st = kDivNegative;
  else if (kind == 2 && all_neg_inf)
    st = kDivAllNegInf;
  else if (kind != 2 && !(fabs(sum - 1.0) <= tol))
    st = kDivUnnormalised;
  if (st != kDivOk) return (static_cast<u64>(i) << 4) | static_cast<u64>(st);
  if (!h_finite) return (static_cast<u64>(i) << 4) | 8ull | kDivNonFinite;
  const int hst = row_norm_status(hh, true, false);  // the Euclidean bound, as for the features
  if (hst != kDivOk) return (static_cast<u64>(i) << 4) | 8ull | static_cast<u64>(hst);
  g2[i] = badge_residual(xr, x.cs, c, kind, a + i * c) * hh;
  return kNoFailure;
}

/// Validation, residuals and norms of every row, one warp per row. Failures are keyed
/// (row << 4 | from_embeddings << 3 | status): the lowest row wins, x before embeddings within a row.
template <typename TX, typename TH>
__global__ void badge_prepare(DevMatrix x, DevMatrix h, int kind, double tol, double* a, double* g2,
                              u64* failure, u64* amax) {
  const int lane = threadIdx.x % kWarp;
  for (std::int64_t i = global_warp(); i < x.rows; i += warp_count()) {
    bool finite = true;
    const double hh = warp_norm2<TH>(h, i, lane, finite, amax);
    if (lane == 0) {
      const u64 f = badge_row<TX>(x, i, kind, tol, finite, hh, a, g2);
      if (f != kNoFailure) atomicMin(failure, f);
    }
    __syncwarp();
  }
}

/// g2 = ||a||² · ||unit · h||² for every row (the embeddings read times unit = 2^shift).
template <typename TH>
__global__ void badge_rescale_g2(DevMatrix h, std::int64_t c, const double* a, double unit, double* g2) {
  const int lane = threadIdx.x % kWarp;
  for (std::int64_t i = global_warp(); i < h.rows; i += warp_count()) {
    const TH* r = row_of<TH>(h, i);
    double s = 0.0;
    for (std::int64_t k = lane; k < h.cols; k += kWarp) {
      const double v = static_cast<double>(r[k * h.cs]) * unit;
      s += v * v;
    }
    s = warp_sum(s);
    if (lane == 0) {
      double a2 = 0.0;
      for (std::int64_t k = 0; k < c; ++k) a2 += a[i * c + k] * a[i * c + k];
      g2[i] = a2 * s;
    }
  }
}

/// D² update against centre `pick` (marked chosen first), for the items not chosen; the embeddings
/// are read times `unit`.
template <typename TH>
__global__ void badge_pass(DevMatrix h, double unit, std::int64_t c, const double* a, const double* g2,
                           const double* hc, std::int64_t pick, std::uint8_t* chosen, double* dist) {
  const int lane = threadIdx.x % kWarp;
  const double* ac = a + pick * c;
  const double g2c = g2[pick];
  for (std::int64_t i = global_warp(); i < h.rows; i += warp_count()) {
    if (i == pick) {
      if (lane == 0) {
        chosen[i] = 1;
        dist[i] = 0.0;
      }
      continue;
    }
    if (chosen[i]) continue;
    double aa = 0.0;
    for (std::int64_t k = 0; k < c; ++k) aa += a[i * c + k] * ac[k];  // every lane, the CPU's order
    const double hh = aa == 0.0 ? 0.0 : warp_dot<TH>(h, i, unit, hc, lane);
    if (lane == 0) {
      const double dd = badge_sq_dist(g2[i], g2c, aa, hh);
      if (dd < dist[i]) dist[i] = dd;
    }
  }
}

/// Σ D² over each fixed block's items not chosen, in index order, and its last item with D² > 0.
__global__ void badge_block_sums(const double* dist, const std::uint8_t* chosen, std::int64_t n, double* block_sum,
                                 std::int64_t* block_last) {
  const std::int64_t nb = (n + kBadgeSumBlock - 1) / kBadgeSumBlock;
  for (std::int64_t blk = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; blk < nb;
       blk += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    double s = 0.0;
    std::int64_t last = -1;
    const std::int64_t i1 = min(n, (blk + 1) * kBadgeSumBlock);
    for (std::int64_t i = blk * kBadgeSumBlock; i < i1; ++i) {
      if (chosen[i]) continue;
      s += dist[i];
      if (dist[i] > 0.0) last = i;
    }
    block_sum[blk] = s;
    block_last[blk] = last;
  }
}

__global__ void fill(double* p, std::int64_t n, double v) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    p[i] = v;
}

/// argmax of g2 (ties: lower index).
__global__ void argmax_values(const double* v, std::int64_t n, Best* parts) {
  Best mine{-INFINITY, INT64_MAX};
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    offer(mine, v[i], i);
  __shared__ Best s[kBlock];
  s[threadIdx.x] = mine;
  __syncthreads();
  if (threadIdx.x == 0) {
    Best r{-INFINITY, INT64_MAX};
    for (int j = 0; j < static_cast<int>(blockDim.x); ++j) offer(r, s[j].v, s[j].i);
    parts[blockIdx.x] = r;
  }
}

template <typename TX, typename TH>
DiversityFailure badge_run(const BadgeJob& job, int sms, cudaStream_t stream) {
  const DevMatrix x = dev_matrix(job.x), h = dev_matrix(job.h);
  const std::int64_t n = x.rows, c = x.cols, d = h.cols, b = job.b;
  const std::int64_t nb = (n + kBadgeSumBlock - 1) / kBadgeSumBlock;
  const int row_blocks = blocks_for(n, kWarpsPerBlock, sms);
  const int flat_blocks = blocks_for(n, kBlock, sms);
  const int parts_count = std::max(row_blocks, flat_blocks);
  std::size_t bytes = 2 * Workspace::align(sizeof(u64)) + Workspace::align(n * c * sizeof(double)) +
                      2 * Workspace::align(n * sizeof(double)) + Workspace::align(n) +
                      Workspace::align(d * sizeof(double)) + Workspace::align(sizeof(std::int64_t)) +
                      Workspace::align(nb * sizeof(double)) + Workspace::align(nb * sizeof(std::int64_t)) +
                      Workspace::align((parts_count + 1) * sizeof(Best)) + Workspace::align(b * sizeof(std::int64_t));
  Workspace ws(bytes, stream);
  u64* failure = ws.take<u64>(1);
  u64* amax = ws.take<u64>(1);
  double* a = ws.take<double>(n * c);
  double* g2 = ws.take<double>(n);
  double* dist = ws.take<double>(n);
  std::uint8_t* chosen = ws.take<std::uint8_t>(n);
  double* hc = ws.take<double>(d);
  std::int64_t* row = ws.take<std::int64_t>(1);
  double* block_sum = ws.take<double>(nb);
  std::int64_t* block_last = ws.take<std::int64_t>(nb);
  Best* parts = ws.take<Best>(parts_count + 1);
  Best* result = parts + parts_count;
  std::int64_t* out_idx = ws.take<std::int64_t>(b);

  LABELWISE_CUDA_CHECK(cudaMemsetAsync(failure, 0xff, sizeof(u64), stream));
  LABELWISE_CUDA_CHECK(cudaMemsetAsync(amax, 0, sizeof(u64), stream));
  badge_prepare<TX, TH><<<row_blocks, kBlock, 0, stream>>>(x, h, job.kind, job.tolerance, a, g2, failure, amax);
  LABELWISE_CUDA_CHECK(cudaGetLastError());
  u64 packed = kNoFailure;
  LABELWISE_CUDA_CHECK(cudaMemcpyAsync(&packed, failure, sizeof(u64), cudaMemcpyDeviceToHost, stream));
  LABELWISE_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (packed != kNoFailure) {
    const std::int64_t r = static_cast<std::int64_t>(packed >> 4);
    return {static_cast<int>(packed & 7ull), (packed & 8ull) ? -1 - r : r};
  }
  if (b == 0) return {};
  const int shift = badge_shift(max_abs_of(amax, stream));  // the embeddings are read times 2^shift
  const double unit = std::ldexp(1.0, shift);
  if (shift != 0) {
    badge_rescale_g2<TH><<<row_blocks, kBlock, 0, stream>>>(h, c, a, unit, g2);
    LABELWISE_CUDA_CHECK(cudaGetLastError());
  }

  argmax_values<<<flat_blocks, kBlock, 0, stream>>>(g2, n, parts);
  LABELWISE_CUDA_CHECK(cudaGetLastError());
  std::int64_t pick = argmax_of(parts, flat_blocks, result, stream).i;

  fill<<<flat_blocks, kBlock, 0, stream>>>(dist, n, INFINITY);
  LABELWISE_CUDA_CHECK(cudaMemsetAsync(chosen, 0, n, stream));
  std::vector<std::uint8_t> chosen_host(static_cast<std::size_t>(n), 0);
  std::vector<double> sums(static_cast<std::size_t>(nb));
  std::vector<std::int64_t> lasts(static_cast<std::size_t>(nb));
  std::vector<std::int64_t> picks;
  picks.reserve(static_cast<std::size_t>(b));
  const std::int64_t* one = &pick;
  for (std::int64_t t = 0;; ++t) {
    picks.push_back(pick);
    chosen_host[pick] = 1;
    if (t + 1 == b) break;
    LABELWISE_CUDA_CHECK(cudaMemcpyAsync(row, one, sizeof(std::int64_t), cudaMemcpyHostToDevice, stream));
    load_centres<TH><<<blocks_for(d, kBlock, sms), kBlock, 0, stream>>>(h, row, 1, nullptr, unit, hc);
    badge_pass<TH><<<row_blocks, kBlock, 0, stream>>>(h, unit, c, a, g2, hc, pick, chosen, dist);
    badge_block_sums<<<blocks_for(nb, kBlock, sms), kBlock, 0, stream>>>(dist, chosen, n, block_sum, block_last);
    LABELWISE_CUDA_CHECK(cudaGetLastError());
    LABELWISE_CUDA_CHECK(cudaMemcpyAsync(sums.data(), block_sum, nb * sizeof(double), cudaMemcpyDeviceToHost, stream));
    LABELWISE_CUDA_CHECK(
        cudaMemcpyAsync(lasts.data(), block_last, nb * sizeof(std::int64_t), cudaMemcpyDeviceToHost, stream));
    LABELWISE_CUDA_CHECK(cudaStreamSynchronize(stream));
    pick = badge_draw(sums, lasts, chosen_host, badge_uniform_of(job.seed, static_cast<std::uint64_t>(t + 1)),
                      [&](std::int64_t blk, double* out) {
                        const std::int64_t i0 = blk * kBadgeSumBlock;
                        const std::int64_t cnt = std::min(n, i0 + kBadgeSumBlock) - i0;
                        LABELWISE_CUDA_CHECK(
                            cudaMemcpyAsync(out, dist + i0, cnt * sizeof(double), cudaMemcpyDeviceToHost, stream));
                        LABELWISE_CUDA_CHECK(cudaStreamSynchronize(stream));
                      });
    if (pick < 0)  // Σ D² = 0: every remaining item coincides with a centre
      pick = std::find(chosen_host.begin(), chosen_host.end(), std::uint8_t{0}) - chosen_host.begin();
  }
  write_out(picks, out_idx, job.out_index, job.out_index_stride, stream);
  LABELWISE_CUDA_CHECK(cudaStreamSynchronize(stream));
  return {};
}

// ---- uncertainty-weighted k-means -------------------------------------------------------------------

/// NaN / Inf rows and rows too large for Euclidean distances -> failure (row << 3 | status; the
/// lowest row wins), one warp per row (first_bad_euclidean_row on the CPU); the largest magnitude
/// into *amax.
template <typename T>
__global__ void check_euclidean_rows(DevMatrix x, u64* failure, u64* amax) {
  const int lane = threadIdx.x % kWarp;
  for (std::int64_t i = global_warp(); i < x.rows; i += warp_count()) {
    bool finite = true;
    const double ss = warp_norm2<T>(x, i, lane, finite, amax);
    const int st = finite ? row_norm_status(ss, true, false) : kDivNonFinite;
    if (lane == 0 && st != kDivOk) atomicMin(failure, (static_cast<u64>(i) << 3) | static_cast<u64>(st));
  }
}

/// The features are validated and the candidates' rows gathered (as float64, the values the CPU's
/// load_row gives) on the device; ranking and clustering are the CPU backend's own routines, so the
/// picks are the CPU's.
template <typename T>
DiversityFailure weighted_kmeans_run(const WeightedKmeansJob& job, int sms, cudaStream_t stream) {
  const DevMatrix x = dev_matrix(job.x);
  const std::int64_t n = x.rows, d = x.cols, b = job.b;
  const std::vector<std::int64_t> cand =
      b == 0 ? std::vector<std::int64_t>{} : weighted_kmeans_candidates(job.weights, b, job.prefilter);
  const std::int64_t m = static_cast<std::int64_t>(cand.size());
  const bool gather = m != b;
  Workspace ws(2 * Workspace::align(sizeof(u64)) + Workspace::align((gather ? m : 0) * sizeof(std::int64_t)) +
                   Workspace::align((gather ? m * d : 0) * sizeof(double)) + Workspace::align(b * sizeof(std::int64_t)),
               stream);
  u64* failure = ws.take<u64>(1);
  u64* amax = ws.take<u64>(1);
  std::int64_t* rows = ws.take<std::int64_t>(gather ? m : 0);
  double* gathered = ws.take<double>(gather ? m * d : 0);
  std::int64_t* out_idx = ws.take<std::int64_t>(b);

  LABELWISE_CUDA_CHECK(cudaMemsetAsync(failure, 0xff, sizeof(u64), stream));
  LABELWISE_CUDA_CHECK(cudaMemsetAsync(amax, 0, sizeof(u64), stream));
  check_euclidean_rows<T><<<blocks_for(n, kWarpsPerBlock, sms), kBlock, 0, stream>>>(x, failure, amax);
  LABELWISE_CUDA_CHECK(cudaGetLastError());
  u64 host_failure = kNoFailure;
  LABELWISE_CUDA_CHECK(cudaMemcpyAsync(&host_failure, failure, sizeof(u64), cudaMemcpyDeviceToHost, stream));
  const int shift = feature_shift(max_abs_of(amax, stream));  // the features are read times 2^shift
  std::vector<double> X(static_cast<std::size_t>(gather ? m * d : 0));
  if (gather) {
    LABELWISE_CUDA_CHECK(cudaMemcpyAsync(rows, cand.data(), m * sizeof(std::int64_t), cudaMemcpyHostToDevice, stream));
    load_centres<T><<<blocks_for(m * d, kBlock, sms), kBlock, 0, stream>>>(x, rows, m, nullptr, std::ldexp(1.0, shift),
                                                                          gathered);
    LABELWISE_CUDA_CHECK(cudaGetLastError());
    LABELWISE_CUDA_CHECK(cudaMemcpyAsync(X.data(), gathered, m * d * sizeof(double), cudaMemcpyDeviceToHost, stream));
  }
  LABELWISE_CUDA_CHECK(cudaStreamSynchronize(stream));
  const DiversityFailure f = decode(host_failure);
  if (f.status != kDivOk || b == 0) return f;
  write_out(weighted_kmeans_cluster(X, job.weights, cand, d, b, job.max_iter), out_idx, job.out_index, job.out_index_stride,
            stream);
  LABELWISE_CUDA_CHECK(cudaStreamSynchronize(stream));
  return {};
}

}  // namespace

DiversityFailure weighted_kmeans_cuda(const WeightedKmeansJob& job) {
  CudaDeviceGuard guard(job.device_index);
  const int sms = multiprocessor_count(job.device_index);
  cudaStream_t stream = static_cast<cudaStream_t>(job.stream);
  return job.x.dtype == DType::Float32 ? weighted_kmeans_run<float>(job, sms, stream)
                                       : weighted_kmeans_run<double>(job, sms, stream);
}

DiversityFailure coreset_cuda(const CoresetJob& job) {
  CudaDeviceGuard guard(job.device_index);
  const int sms = multiprocessor_count(job.device_index);
  cudaStream_t stream = static_cast<cudaStream_t>(job.stream);
  return job.x.dtype == DType::Float32 ? coreset_run<float>(job, sms, stream) : coreset_run<double>(job, sms, stream);
}

DiversityFailure badge_cuda(const BadgeJob& job) {
  CudaDeviceGuard guard(job.device_index);
  const int sms = multiprocessor_count(job.device_index);
  cudaStream_t stream = static_cast<cudaStream_t>(job.stream);
  const bool x32 = job.x.dtype == DType::Float32, h32 = job.h.dtype == DType::Float32;
  if (x32) return h32 ? badge_run<float, float>(job, sms, stream) : badge_run<float, double>(job, sms, stream);
  return h32 ? badge_run<double, float>(job, sms, stream) : badge_run<double, double>(job, sms, stream);
}

void copy_to_host(void* dst, const void* src, std::size_t bytes, int device, void* stream) {
  CudaDeviceGuard guard(device);
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  LABELWISE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, st));
  LABELWISE_CUDA_CHECK(cudaStreamSynchronize(st));
}

void copy_to_device(void* dst, const void* src, std::size_t bytes, int device, void* stream) {
  CudaDeviceGuard guard(device);
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  LABELWISE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, st));
  LABELWISE_CUDA_CHECK(cudaStreamSynchronize(st));
}

}  // namespace detail
}  // namespace labelwise
