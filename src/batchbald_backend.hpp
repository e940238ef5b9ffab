// Internal: the job the BatchBALD front door (src/batchbald.cpp) hands to the CPU backend.
#pragma once

#include <cstdint>

namespace labelwise {
namespace detail {

struct BatchBaldJob {
  const double* p = nullptr;   ///< dense probabilities [N][K][C], float64
  const double* ce = nullptr;  ///< [N] conditional (expected) entropies (1/K) Σ_k H[p_k]
  std::int64_t n = 0;
  int k = 0;
  int c = 0;
  std::int64_t b = 0;
  std::int64_t num_samples = 0;
  std::uint64_t seed = 0;
  std::int64_t* out_index = nullptr;
  std::int64_t out_index_stride = 1;
  double* out_score = nullptr;  ///< optional
  std::int64_t out_score_stride = 1;
};

void batchbald_cpu(const BatchBaldJob& job);

}  // namespace detail
}  // namespace labelwise
