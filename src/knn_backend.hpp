// labelwise — internal contract between the kNN front door (src/knn.cpp), its GEMM blocks
// (src/cpu/knn_gemm*.cpp, Eigen; src/cpu/knn_fused_avx512.cpp, the fused AVX-512 kernel) and label
// spreading (src/spreading.cpp). Eigen stays in src/cpu/.
#pragma once

#include <climits>
#include <cstdint>
#include <string>
#include <vector>

#include "labelwise/core/config.hpp"
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

/// One call of the fused AVX-512 candidate kernel (src/cpu/knn_fused_avx512.cpp): the query rows A
/// against the candidate columns c0 .. c0 + nc, dot products and candidate filter in registers.
/// Elements are float32 (bf16 = false; one k-step = one feature) or pairs of bfloat16 (bf16 = true;
/// one k-step = two features, the pair packed in one 32-bit word; VDPBF16PS).
struct KnnFusedArgs {
  const std::uint32_t* A = nullptr;   ///< query rows, row r at A + r * lda, ksteps words each
  std::int64_t lda = 0, nq = 0;
  const std::int64_t* qid = nullptr;  ///< global index of query row r, or nullptr: q0 + r
  std::int64_t q0 = 0;
  const std::uint32_t* Bp = nullptr;  ///< 64-byte aligned panels of 32 columns: panel p, k-step s, column t at
                                      ///< Bp[(p * ksteps + s) * 32 + t] (columns past nc: any finite value)
  std::int64_t ksteps = 0, nc = 0, c0 = 0;
  const float* yq = nullptr;  ///< [nq] squared norms of the query rows
  const float* yc = nullptr;  ///< [32 * panels] squared norms of the columns, +inf past nc
  bool bf16 = false;
  bool cols = false;       ///< also offer each pair to the column's heap (off-diagonal symmetric blocks)
  bool skip_self = false;  ///< never offer j == i
  bool select = false;     ///< rows only (cols false): each row's nc values at once, admitted through a
                           ///< threshold from a sample of them (for the first block of empty lists)
  std::int64_t m = 0;
  /// Candidate lists (m <= 16 nv, S = 16 nv): query row r keeps keys qkeys[r S ..] ascending (+inf
  /// where empty) and indices qidx[r S ..] (int32; N < 2^31); qroot[r] its admission threshold (its
  /// m-th key, or a smaller one another worker's list for the same row had; +inf at first).
  float* qkeys = nullptr;
  std::int32_t* qidx = nullptr;
  float* qroot = nullptr;
  float* ckeys = nullptr;  ///< the same for column c (cols only; croot readable to 32 * panels)
  std::int32_t* cidx = nullptr;
  float* croot = nullptr;
};

/// The survivors of one tile row of a fused kernel (bit t of `bits`: column c + t, its approximate
/// key in buf[t]): each is offered to query row q's list and, with kCols (off-diagonal symmetric
/// blocks), to the column's list. push(keys, idx, thr, a, j) is the kernel's list insertion; S the
/// list stride. Shared by src/cpu/knn_fused_avx512.cpp and src/cpu/knn_fused_avx2.cpp.
template <bool kCols, typename Push>
inline void knn_offer_survivors(const KnnFusedArgs& g, const float* buf, std::uint32_t bits, std::int64_t c,
                                std::int64_t q, std::int64_t S, Push&& push) {
  const std::int64_t i = g.qid ? g.qid[q] : g.q0 + q;
  while (bits) {
    const int t = __builtin_ctz(bits);
    bits &= bits - 1;
    const std::int64_t cc = c + t;
    if (cc >= g.nc) break;
    const float a = buf[t];
    const std::int64_t j = g.c0 + cc;
    if (!(g.skip_self && i == j)) push(g.qkeys + q * S, g.qidx + q * S, g.qroot + q, a, static_cast<std::int32_t>(j));
    if (kCols) push(g.ckeys + cc * S, g.cidx + cc * S, g.croot + cc, a, static_cast<std::int32_t>(i));
  }
}

/// Validated features as a contiguous float64 copy.
struct KnnData {
  std::vector<double> x;  // [N, D]
  std::int64_t N = 0, D = 0;
  std::vector<int> row_exp;  // per row, ilogb of its largest |x| (INT_MIN for an all-zero row): the scale
};

/// Validates (rank 2, float dtype, CPU, non-empty, finite) and copies `features`, recording each row's scale.
KnnData knn_load(const TensorView& features, const char* what);

/// How ties and the point itself are treated.
enum class KnnRule : std::uint8_t {
  Exact,    ///< the point itself excluded; exact float64 distances; ties by the lower index
  Sklearn,  ///< the point itself included; sklearn's choice: its KD-tree's traversal order for D <= 15
            ///< and k < N / 2, else its brute-force ArgKmin squared distances and heap tie rule
};

/// k neighbours of every row: idx [N, k] (nearest first), key [N, k] (squared euclidean distance,
/// or the cosine distance 1 - cos). Sklearn rule: euclidean only; `sklearn_threads` as in
/// SpreadingOptions. Data whose magnitudes would overflow or underflow the float64 sums or the float32
/// candidate space are searched scaled by powers of two (exact, the same neighbours): the return value
/// `shift` says that the euclidean keys are those of the data times 2^-shift, i.e. 2^(-2 shift) times
/// the true squared distances (distance = sqrt(key) * 2^shift); 0 for data in [2^-30, 2^31) and for cosine,
/// whose rows are scaled one by one (the cosine distance does not change).
int knn_search(const KnnData& data, std::int64_t k, DistanceMetric metric, KnnRule rule, int sklearn_threads,
                std::int64_t* idx, double* key);

/// The power-of-two scaling (exact) that keeps the kNN sums in range, from each row's ilogb of its
/// largest |x| (INT_MIN: an all-zero row), shared by the CPU and CUDA searches. Euclidean: the whole
/// matrix times 2^-shift when the largest exponent leaves [-30, 30] (else shift 0); a Value error
/// naming a large and a small row when at least two rows lie more than 2^480 below the largest (their
/// scaled squared differences underflow). Cosine: shift 0, and each row whose exponent leaves
/// [-30, 30] is scaled by its own 2^-exponent (row_outside says which).
struct KnnScaling {
  int shift = 0;
  bool any_row_scaled = false;  // cosine
  LABELWISE_HD static bool row_outside(int e) { return e != INT_MIN && (e < -30 || e > 30); }
};
KnnScaling knn_scaling(const std::vector<int>& row_exp, bool cosine);

/// A validated kNN graph on one CUDA device (src/cuda/knn_cuda.cu): every pointer on that device,
/// strides in elements.
struct KnnCudaJob {
  const void* x = nullptr;  ///< features [N, D]
  DType dtype = DType::Float32;
  std::int64_t N = 0, D = 0, rs = 0, cs = 1;
  std::int64_t k = 0;
  DistanceMetric metric = DistanceMetric::Euclidean;
  std::int64_t* out_index = nullptr;  ///< [N, k]
  std::int64_t is0 = 0, is1 = 1;
  void* out_dist = nullptr;  ///< [N, k], float32 / float64
  DType dist_dtype = DType::Float64;
  std::int64_t ds0 = 0, ds1 = 1;
  int device_index = 0;
  void* stream = nullptr;  ///< cudaStream_t; nullptr: the default stream
};

enum KnnCudaStatus : int {
  kKnnOk = 0,
  kKnnNonFinite = 1,  ///< NaN / Inf in row `row` (the lowest such row)
  kKnnZeroRow = 2,    ///< all-zero row `row` with the cosine metric (the lowest such row)
};
struct KnnCudaFailure {
  int status = kKnnOk;
  std::int64_t row = 0;
};

/// The CUDA kNN graph (the stub in CPU-only builds throws "built without CUDA").
KnnCudaFailure knn_cuda(const KnnCudaJob& job);

/// CUDA builds load cuBLAS on first use (dlopen): "" once it resolved, else why not (no device
/// needed; the stub in CPU-only builds says "built without CUDA").
std::string cublas_load_error();

}  // namespace detail
}  // namespace labelwise
