// labelwise — internal contract between the kNN front door (src/knn.cpp), its GEMM blocks
// (src/cpu/knn_gemm*.cpp, Eigen) and label spreading (src/spreading.cpp). Eigen stays in src/cpu/.
#pragma once

#include <cstdint>
#include <vector>

#include "labelwise/core/tensor_view.hpp"
#include "labelwise/propagation/knn.hpp"

namespace labelwise {
namespace detail {

/// C[ra x rb] = A[ra x D] * B[rb x D]^T, all row-major float32 (C with row stride ldc); single-threaded (callers split work).
void knn_block_gemm(const float* A, std::int64_t ra, const float* B, std::int64_t rb, std::int64_t D, float* C,
                    std::int64_t ldc);

/// A kNN candidate: approximate squared distance (candidate space) and index.
struct KnnCand {
  float a;
  std::int64_t j;
};

/// Scans one GEMM block G[nq x nc] = Y[q0:q0+nq] . Y[c0:c0+nc]^T: for each row r the approximate
/// squared distances a = yq[r] + yc[c] - 2 G[r, c] enter the row's bounded max-heap of m candidates
/// (heaps + r * m, hsize[r] entries); the point itself is skipped when skip_self.
void knn_block_scan(const float* G, std::int64_t ldg, std::int64_t nq, std::int64_t nc, std::int64_t q0, std::int64_t c0,
                    const float* yq, const float* yc, bool skip_self, std::int64_t m, KnnCand* heaps,
                    std::int64_t* hsize);

/// The same scan for the columns of G: a = yq[r] + yc[c] - 2 G[r, c] enters the heap of column c
/// (row c0 + c; heaps + c * m, hsize[c]) with index q0 + r. Never used on a diagonal block.
void knn_block_scan_cols(const float* G, std::int64_t ldg, std::int64_t nq, std::int64_t nc, std::int64_t q0,
                         std::int64_t c0, const float* yq, const float* yc, std::int64_t m, KnnCand* heaps,
                         std::int64_t* hsize);

/// Validated features as a contiguous float64 copy.
struct KnnData {
  std::vector<double> x;  // [N, D]
  std::int64_t N = 0, D = 0;
};

/// Validates (rank 2, float dtype, CPU, non-empty, finite) and copies `features`.
KnnData knn_load(const TensorView& features, const char* what);

/// How ties and the point itself are treated.
enum class KnnRule : std::uint8_t {
  Exact,    ///< the point itself excluded; exact float64 distances; ties by the lower index
  Sklearn,  ///< the point itself included; sklearn's ArgKmin squared distances and heap tie rule
};

/// k neighbours of every row: idx [N, k] (nearest first), key [N, k] (squared euclidean distance,
/// or the cosine distance 1 - cos). Sklearn rule: euclidean only; `sklearn_threads` as in
/// SpreadingOptions.
void knn_search(const KnnData& data, std::int64_t k, KnnMetric metric, KnnRule rule, int sklearn_threads,
                std::int64_t* idx, double* key);

}  // namespace detail
}  // namespace labelwise
