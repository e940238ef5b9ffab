// Internal: the job descriptions that the diversity front door (src/diversity.cpp) hands to the CPU
// backend (src/cpu/diversity_cpu.cpp). Validated shapes, raw pointers and strides in elements.
#pragma once

#include <cstdint>

#include "labelwise/core/tensor_view.hpp"

namespace labelwise {
namespace detail {

enum DiversityStatus : int {
  kDivOk = 0,
  kDivNonFinite = 1,     // NaN / Inf in a row (item = row)
  kDivZeroRow = 2,       // all-zero row with the cosine metric
  kDivNegative = 3,      // negative probability
  kDivUnnormalised = 4,  // probabilities / log-probabilities not summing to 1
  kDivAllNegInf = 5,     // logits row of -inf only
};

struct DiversityFailure {
  int status = kDivOk;
  std::int64_t item = 0;
};

/// A [N, D] matrix view on the CPU.
struct Matrix {
  const void* data = nullptr;
  DType dtype = DType::Float32;
  std::int64_t rows = 0, cols = 0;
  std::int64_t row_stride = 0, col_stride = 1;
};

struct CoresetJob {
  Matrix x;
  int metric = 0;                          // CoresetMetric
  bool prune = true;                       // skip rows by the triangle inequality (exact)
  const std::uint8_t* labeled = nullptr;   // [N], 1 = labelled
  std::int64_t n_labeled = 0;
  std::int64_t b = 0;
  std::int64_t* out_index = nullptr;
  std::int64_t out_index_stride = 1;
  double* out_radius = nullptr;
  std::int64_t out_radius_stride = 1;
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
};

struct WeightedKmeansJob {
  Matrix x;             // [N, D] features
  const void* scores = nullptr;  // [N], validated finite and >= 0 by the front door
  DType score_dtype = DType::Float32;
  std::int64_t score_stride = 1;
  std::int64_t b = 0;
  std::int64_t prefilter = 10;
  std::int64_t max_iter = 100;
  std::int64_t* out_index = nullptr;
  std::int64_t out_index_stride = 1;
};

DiversityFailure coreset_cpu(const CoresetJob& job);
DiversityFailure weighted_kmeans_cpu(const WeightedKmeansJob& job);
DiversityFailure badge_cpu(const BadgeJob& job);

}  // namespace detail
}  // namespace labelwise
