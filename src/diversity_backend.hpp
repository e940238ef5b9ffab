// Internal: the job descriptions that the diversity front door (src/diversity.cpp) hands to the CPU
// backend (src/cpu/diversity_cpu.cpp). Validated shapes, raw pointers and strides in elements.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "labelwise/core/tensor_view.hpp"

namespace labelwise {
namespace detail {

/// The largest squared row norm of the Euclidean metrics, 2^1021 (2.2e307): squared distances between
/// such rows (at most 2(||a||² + ||b||²) <= 2^1023) and sums of two of them stay finite in float64,
/// with a factor 2 to spare for the rounding of sums taken in another order (at DBL_MAX / 4, a row
/// the check accepted gave a distance of +inf). BADGE's embeddings are held to it too
/// (||g||² = ||a||²·||h||² <= 2·||h||²).
constexpr double kMaxEmbeddingNorm2 = 0x1p1021;

enum DiversityStatus : int {
  kDivOk = 0,
  kDivNonFinite = 1,     // NaN / Inf in a row (item = row)
  kDivZeroRow = 2,       // all-zero row with the cosine metric
  kDivNegative = 3,      // negative probability
  kDivUnnormalised = 4,  // probabilities / log-probabilities not summing to 1
  kDivAllNegInf = 5,     // logits row of -inf only
  kDivNormOverflow = 6,  // a row whose squared norm exceeds kMaxEmbeddingNorm2 (BADGE embeddings;
                         // Euclidean core-set, weighted k-means and linkage features)
  kDivNormRange = 7,     // cosine: a nonzero row whose squared norm is outside the normal float64 range
};

/// The check of one finite row from its squared norm ss (summed in float64, so that it may overflow
/// to +inf or underflow) and whether any entry is nonzero. Euclidean metrics: ss <= kMaxEmbeddingNorm2;
/// cosine: the row is scaled by 1/sqrt(ss), which needs ss a normal, finite double (else the norm is
/// wrong: a row of 1e-190s is not zero, a row of 1e200s not the origin).
LABELWISE_HD inline int row_norm_status(double ss, bool nonzero, bool cosine) {
  if (!cosine) return ss <= kMaxEmbeddingNorm2 ? kDivOk : kDivNormOverflow;
  if (!nonzero) return kDivZeroRow;
  return ss >= 2.2250738585072014e-308 && ss <= 1.7976931348623157e308 ? kDivOk : kDivNormRange;
}

struct DiversityFailure {
  int status = kDivOk;
  std::int64_t item = 0;
};

/// The power of two 2^shift that brings a largest magnitude `max_abs` > 0 to [1/2, 1), capped at
/// 2^1023 (subnormal values reach [2^-51, 1)); 0 for max_abs = 0.
inline int normalising_shift(double max_abs) {
  if (!(max_abs > 0.0)) return 0;
  int e = 0;
  std::frexp(max_abs, &e);  // max_abs = m · 2^e, m in [1/2, 1)
  return -e < 1023 ? -e : 1023;
}

/// Euclidean metrics read the features times 2^shift, shift = feature_shift(largest |value|): the
/// normalising shift when the largest magnitude is below 2^-64, else none (ordinary features keep the
/// unscaled loops, which are up to 15 % faster). Squared distances of tiny features would otherwise
/// underflow (1e-162 squared is below the smallest double); either way every row down to 2^-511, so
/// at least 2^447 below the largest, keeps its squared differences in the normal range. Multiplying
/// by a power of two is exact, so the picks are those of the original values, and core-set's radii and
/// linkage's threshold are scaled by 2^-shift / 2^shift on the way out / in. BADGE also normalises
/// embeddings above 2^400 (badge_shift): its draw sums D² over the whole pool, which overflowed for
/// rows near the norm bound (2^510).
constexpr double kTinyFeatures = 0x1p-64, kHugeEmbeddings = 0x1p400;
inline int feature_shift(double max_abs) { return max_abs < kTinyFeatures ? normalising_shift(max_abs) : 0; }
inline int badge_shift(double max_abs) {
  return max_abs < kTinyFeatures || max_abs > kHugeEmbeddings ? normalising_shift(max_abs) : 0;
}

/// A [N, D] matrix view on the CPU.
struct Matrix {
  const void* data = nullptr;
  DType dtype = DType::Float32;
  std::int64_t rows = 0, cols = 0;
  std::int64_t row_stride = 0, col_stride = 1;
};

struct CoresetJob {
  Matrix x;
  int metric = 0;                          // DistanceMetric
  bool prune = true;                       // skip rows by the triangle inequality (exact)
  const std::uint8_t* labeled = nullptr;   // [N], 1 = labelled
  std::int64_t n_labeled = 0;
  std::int64_t b = 0;
  std::int64_t* out_index = nullptr;
  std::int64_t out_index_stride = 1;
  double* out_radius = nullptr;
  std::int64_t out_radius_stride = 1;
  int device_index = -1;   // >= 0: x and the outputs live on this CUDA device (labeled stays on the host)
  void* stream = nullptr;  // cudaStream_t
};

struct BadgeJob {
  Matrix x;        // [N, C] probabilities / log-probabilities / logits
  int kind = 0;    // 0 probs, 1 log-probs, 2 logits
  double tolerance = 0.0;
  Matrix h;        // [N, D] embeddings
  std::uint64_t seed = 0;
  std::int64_t b = 0;
  std::int64_t* out_index = nullptr;
  std::int64_t out_index_stride = 1;
  int device_index = -1;   // >= 0: every array lives on this CUDA device
  void* stream = nullptr;  // cudaStream_t
};

struct WeightedKmeansJob {
  Matrix x;             // [N, D] features
  std::vector<double> weights;  // [N] the scores, on the host, validated finite and >= 0 by the front door
  std::int64_t b = 0;
  std::int64_t prefilter = 10;
  std::int64_t max_iter = 100;
  std::int64_t* out_index = nullptr;
  std::int64_t out_index_stride = 1;
  int device_index = -1;   // >= 0: x and out_index live on this CUDA device (scores are on the host)
  void* stream = nullptr;  // cudaStream_t
};

/// Σ_t (x[t] − y[t])² over two contiguous float64 rows of d values, in the widest instruction set
/// the processor has (the core-set / BADGE distance loop; its reduction order depends only on that
/// set). Defined in src/cpu/diversity_cpu.cpp.
double contiguous_sq_dist(const double* x, const double* y, std::int64_t d);

struct LinkageJob {
  Matrix x;                     // [N, D] features, validated finite
  double distance = 0.0;        // > 0: cut at this cophenetic distance
  std::int64_t num_clusters = 0;  // > 0: cut into at most this many clusters
  std::int64_t* out = nullptr;  // [N] cluster ids
  std::int64_t out_stride = 1;
  int shift = 0;                // the rows are read times 2^shift (feature_shift)
};

/// The first row (lowest index) with NaN / Inf (kDivNonFinite) or a squared norm that Euclidean
/// distances cannot hold (kDivNormOverflow); kDivOk when none. `shift` (when all rows are good): the
/// feature_shift of the largest magnitude.
DiversityFailure first_bad_euclidean_row(const Matrix& x, int& shift);

/// Average-linkage clustering, cut into flat clusters (src/cpu/linkage_cpu.cpp).
void average_linkage_cpu(const LinkageJob& job);

/// BADGE's k-means++ draw (docs/acquisition.md), shared by the CPU and CUDA backends. The pool is cut
/// into fixed blocks of kBadgeSumBlock items: block_sum[blk] = Σ D² over the block's items not yet
/// chosen (summed in index order), block_last[blk] = its last such item with D² > 0 (-1: none).
/// read_block(blk, out) copies the block's D² values into out. The pick is the first item (index
/// order) whose running sum of D² exceeds u · Σ D²; if rounding leaves the running sum below that, the
/// last item with D² > 0. Returns -1 when Σ D² = 0.
constexpr std::int64_t kBadgeSumBlock = 1024;

template <typename ReadBlock>
std::int64_t badge_draw(const std::vector<double>& block_sum, const std::vector<std::int64_t>& block_last,
                        const std::vector<std::uint8_t>& chosen, double u, ReadBlock&& read_block) {
  const std::int64_t nb = static_cast<std::int64_t>(block_sum.size());
  const std::int64_t n = static_cast<std::int64_t>(chosen.size());
  double total = 0.0;
  for (std::int64_t blk = 0; blk < nb; ++blk) total += block_sum[blk];
  if (!(total > 0.0)) return -1;
  const double target = u * total;
  double acc = 0.0;
  std::int64_t last_positive = -1;
  std::vector<double> dist(static_cast<std::size_t>(kBadgeSumBlock));
  for (std::int64_t blk = 0; blk < nb; ++blk) {
    if (block_last[blk] >= 0) last_positive = block_last[blk];
    if (!(acc + block_sum[blk] > target)) {
      acc += block_sum[blk];
      continue;
    }
    read_block(blk, dist.data());
    double run = acc;
    const std::int64_t i0 = blk * kBadgeSumBlock, i1 = std::min(n, i0 + kBadgeSumBlock);
    for (std::int64_t i = i0; i < i1; ++i) {
      if (chosen[i] || !(dist[i - i0] > 0.0)) continue;
      run += dist[i - i0];
      if (run > target) return i;
    }
    return last_positive;
  }
  return last_positive;
}

DiversityFailure coreset_cpu(const CoresetJob& job);
DiversityFailure coreset_cuda(const CoresetJob& job);  // src/cuda/diversity_cuda.cu, or the stub's error
DiversityFailure badge_cuda(const BadgeJob& job);
/// Device-to-host copy on `stream` (cudaStream_t; after the work queued there), finished on return.
/// CPU-only builds: the "built without CUDA" error.
void copy_to_host(void* dst, const void* src, std::size_t bytes, int device, void* stream);
/// Host-to-device copy on `stream`, finished on return (CPU-only builds: "built without CUDA").
void copy_to_device(void* dst, const void* src, std::size_t bytes, int device, void* stream);
DiversityFailure weighted_kmeans_cpu(const WeightedKmeansJob& job);
/// The CUDA backend: features validated and the candidates' rows gathered on the device, the rest
/// (weighted_kmeans_cluster) on the host: the same picks as weighted_kmeans_cpu.
DiversityFailure weighted_kmeans_cuda(const WeightedKmeansJob& job);
/// weighted k-means' candidates: the min(N, prefilter · b) items of largest weight w (N = w.size(),
/// b >= 1), in rank order (weight descending, then lower index). Shared by the CPU and CUDA backends.
std::vector<std::int64_t> weighted_kmeans_candidates(const std::vector<double>& w, std::int64_t b,
                                                     std::int64_t prefilter);
/// weighted k-means' seeding, Lloyd iterations and picks (docs/acquisition.md, "Hybrid") over the
/// candidates `cand` (rank order, from weighted_kmeans_candidates), whose rows X are [cand.size(), d]
/// float64 (unused when cand.size() == b); w: the weights of all N items. Returns the b picks.
std::vector<std::int64_t> weighted_kmeans_cluster(const std::vector<double>& X, const std::vector<double>& w,
                                                  const std::vector<std::int64_t>& cand, std::int64_t d,
                                                  std::int64_t b, std::int64_t max_iter);
DiversityFailure badge_cpu(const BadgeJob& job);

}  // namespace detail
}  // namespace labelwise
