// Front door of labelwise/propagation/knn.hpp, and the kNN search shared with label spreading:
// float32 candidates by blocked GEMM (src/cpu/knn_gemm*.cpp), exact float64 refinement, a bound
// that certifies the refinement, and an exact per-row fallback (see the header for the method).
#include <algorithm>
#include <climits>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "knn_backend.hpp"
#include "knn_bound.hpp"
#include "labelwise/core/parallel.hpp"
#include "labelwise/detail/parallel_for.hpp"
#include "labelwise/propagation/knn.hpp"

namespace labelwise {
namespace detail {

#define LABELWISE_KNN_DECLARE                                                                             \
  void knn_block_gemm(const float* A, std::int64_t ra, const float* B, std::int64_t rb, std::int64_t D, float* C,  \
                      std::int64_t ldc);                                                                        \
  void knn_block_scan(const float* G, std::int64_t ldg, std::int64_t nq, std::int64_t nc, std::int64_t q0,      \
                      std::int64_t c0, const float* yq, const float* yc, bool skip_self, std::int64_t m,        \
                      KnnCand* heaps, std::int64_t* hsize);                                             \
  void knn_block_scan_cols(const float* G, std::int64_t ldg, std::int64_t nq, std::int64_t nc, std::int64_t q0, \
                           std::int64_t c0, const float* yq, const float* yc, std::int64_t m, KnnCand* heaps,   \
                           std::int64_t* hsize);
#define LABELWISE_KNN_EXACT_KEYS                                                                      \
  void knn_exact_keys(const double* a, const double* XT, std::int64_t N, std::int64_t D, int kind, double norm_a, \
                      const double* norms, double* keys);
namespace generic {
LABELWISE_KNN_DECLARE
#include "cpu/knn_exact_keys.inc"
}
#if defined(__x86_64__)
namespace avx2 {
LABELWISE_KNN_DECLARE
LABELWISE_KNN_EXACT_KEYS
void knn_fused_block(const KnnFusedArgs& args);
}
#endif
#undef LABELWISE_KNN_DECLARE
#if defined(__x86_64__) && defined(LABELWISE_KNN_AVX512)
namespace avx512 {
LABELWISE_KNN_EXACT_KEYS
void knn_fused_block(const KnnFusedArgs& args);
}
#endif
#undef LABELWISE_KNN_EXACT_KEYS

namespace {
bool use_avx2() {
#if defined(__x86_64__)
  static const bool has_avx2 = [] {
    const char* forced = std::getenv("LABELWISE_CPU_ISA");
    if (forced && std::strcmp(forced, "generic") == 0) return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has_avx2;
#else
  return false;
#endif
}
/// The fused candidate kernel (the filter inside the GEMM's register tiles): AVX-512, with a bfloat16
/// first pass where AVX512_BF16 is present (LABELWISE_KNN_BF16=0 keeps float32); else AVX2 + FMA
/// (float32); else none (fn == nullptr: blocked GEMM, then a scan). LABELWISE_CPU_ISA=avx2 / generic
/// force the lower levels.
struct FusedKernel {
  void (*fn)(const KnnFusedArgs&) = nullptr;
  bool bf16 = false;
};
const FusedKernel& fused_kernel() {
  static const FusedKernel kernel = [] {
    FusedKernel k;
#if defined(__x86_64__)
    const char* forced = std::getenv("LABELWISE_CPU_ISA");
    if (forced && std::strcmp(forced, "generic") == 0) return k;
#if defined(LABELWISE_KNN_AVX512)
    const bool avx512 = !(forced && std::strcmp(forced, "avx2") == 0) && __builtin_cpu_supports("avx512f") &&
                        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma");
    if (avx512) {
      const char* bf = std::getenv("LABELWISE_KNN_BF16");
      k.fn = avx512::knn_fused_block;
      k.bf16 = !(bf && std::strcmp(bf, "0") == 0) && __builtin_cpu_supports("avx512bf16");
      return k;
    }
#endif
    if (use_avx2()) k.fn = avx2::knn_fused_block;
#endif
    return k;
  }();
  return kernel;
}

/// knn_exact_keys of the widest build the processor runs (the same bits on each: no contraction).
using ExactKeysFn = void (*)(const double*, const double*, std::int64_t, std::int64_t, int, double, const double*,
                             double*);
ExactKeysFn exact_keys_kernel() {
  static const ExactKeysFn fn = [] {
#if defined(__x86_64__) && defined(LABELWISE_KNN_AVX512)
    if (fused_kernel().fn == avx512::knn_fused_block) return &avx512::knn_exact_keys;
#endif
#if defined(__x86_64__)
    if (use_avx2()) return &avx2::knn_exact_keys;
#endif
    return &generic::knn_exact_keys;
  }();
  return fn;
}

/// Rounds a float to bfloat16 (to nearest, ties to even; subnormal results flushed to zero, as
/// VDPBF16PS reads them). Finite input well inside the float range.
inline std::uint16_t to_bf16(float f) {
  std::uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  b += 0x7FFFu + ((b >> 16) & 1u);
  std::uint16_t h = static_cast<std::uint16_t>(b >> 16);
  if ((h & 0x7F80u) == 0) h &= 0x8000u;
  return h;
}
inline double from_bf16(std::uint16_t h) {
  const std::uint32_t b = static_cast<std::uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &b, sizeof f);
  return static_cast<double>(f);
}

/// 64-byte aligned array of 32-bit words.
struct AlignedWords {
  std::vector<std::uint32_t> buf;
  std::uint32_t* p = nullptr;
  explicit AlignedWords(std::size_t n) : buf(n + 16, 0u) {
    auto addr = reinterpret_cast<std::uintptr_t>(buf.data());
    p = buf.data() + ((64 - addr % 64) % 64) / 4;
  }
  AlignedWords(AlignedWords&&) = default;  // the buffer moves with its pointer
  AlignedWords(const AlignedWords&) = delete;
  AlignedWords& operator=(const AlignedWords&) = delete;
};

}  // namespace

void knn_block_gemm(const float* A, std::int64_t ra, const float* B, std::int64_t rb, std::int64_t D, float* C,
                    std::int64_t ldc) {
#if defined(__x86_64__)
  if (use_avx2()) return avx2::knn_block_gemm(A, ra, B, rb, D, C, ldc);
#endif
  generic::knn_block_gemm(A, ra, B, rb, D, C, ldc);
}

void knn_block_scan(const float* G, std::int64_t ldg, std::int64_t nq, std::int64_t nc, std::int64_t q0, std::int64_t c0,
                    const float* yq, const float* yc, bool skip_self, std::int64_t m, KnnCand* heaps,
                    std::int64_t* hsize) {
#if defined(__x86_64__)
  if (use_avx2()) return avx2::knn_block_scan(G, ldg, nq, nc, q0, c0, yq, yc, skip_self, m, heaps, hsize);
#endif
  generic::knn_block_scan(G, ldg, nq, nc, q0, c0, yq, yc, skip_self, m, heaps, hsize);
}

void knn_block_scan_cols(const float* G, std::int64_t ldg, std::int64_t nq, std::int64_t nc, std::int64_t q0,
                         std::int64_t c0, const float* yq, const float* yc, std::int64_t m, KnnCand* heaps,
                         std::int64_t* hsize) {
#if defined(__x86_64__)
  if (use_avx2()) return avx2::knn_block_scan_cols(G, ldg, nq, nc, q0, c0, yq, yc, m, heaps, hsize);
#endif
  generic::knn_block_scan_cols(G, ldg, nq, nc, q0, c0, yq, yc, m, heaps, hsize);
}

KnnData knn_load(const TensorView& f, const char* what) {
  check(f.device.is_cpu(), ErrorKind::Type, what, ": is on ", f.device.str(),
        "; this function runs on the CPU only (its CUDA path is not implemented yet): pass CPU arrays, e.g. x.cpu()");
  check(f.dtype == DType::Float32 || f.dtype == DType::Float64, ErrorKind::Type, what,
        ": expected dtype float32 or float64, got ", dtype_name(f.dtype));
  check(f.ndim == 2, ErrorKind::Value, what, ": expected rank 2 ([N, D]), got shape ", f.shape_str());
  check(f.shape[0] > 0 && f.shape[1] > 0, ErrorKind::Value, what, ": is empty (shape ", f.shape_str(), ")");
  check(f.data != nullptr, ErrorKind::Value, what, ": data pointer is null");
  KnnData d;
  d.N = f.shape[0];
  d.D = f.shape[1];
  std::int64_t total = 0;
  check(!__builtin_mul_overflow(d.N, d.D, &total), ErrorKind::Value, what, ": shape ", f.shape_str(),
        " has more elements than fit in int64");
  d.x.resize(static_cast<std::size_t>(total));
  d.row_exp.resize(static_cast<std::size_t>(d.N));
  const std::int64_t s0 = f.strides[0], s1 = f.strides[1];
  // copied in parallel; the first bad row (lowest index) is reported
  const int W = worker_slots(d.N, 2048);
  std::vector<std::int64_t> bad(static_cast<std::size_t>(W), d.N);
  parallel_for(d.N, 2048, W, [&](std::int64_t i0, std::int64_t i1, int w) {
    for (std::int64_t i = i0; i < i1; ++i) {
      double* row = d.x.data() + i * d.D;
      bool ok = true;
      if (f.dtype == DType::Float64) {
        const double* p = static_cast<const double*>(f.data) + i * s0;
        for (std::int64_t j = 0; j < d.D; ++j) row[j] = p[j * s1];
      } else {
        const float* p = static_cast<const float*>(f.data) + i * s0;
        for (std::int64_t j = 0; j < d.D; ++j) row[j] = static_cast<double>(p[j * s1]);
      }
      double mx = 0.0;
      for (std::int64_t j = 0; j < d.D; ++j) {
        ok = ok && std::isfinite(row[j]);
        mx = std::max(mx, std::abs(row[j]));
      }
      if (!ok) {
        bad[w] = std::min(bad[w], i);
        return;
      }
      d.row_exp[i] = mx > 0.0 ? std::ilogb(mx) : INT_MIN;
    }
  });
  const std::int64_t first_bad = *std::min_element(bad.begin(), bad.end());
  check(first_bad == d.N, ErrorKind::Value, what, ": row ", first_bad, " contains NaN or Inf");
  return d;
}

namespace {

inline double dot(const double* a, const double* b, std::int64_t D) {
  double s = 0.0;
  for (std::int64_t t = 0; t < D; ++t) s += a[t] * b[t];
  return s;
}

inline double sqdist(const double* a, const double* b, std::int64_t D) {
  double s = 0.0;
  for (std::int64_t t = 0; t < D; ++t) {
    const double u = a[t] - b[t];
    s += u * u;
  }
  return s;
}

/// scikit-learn's fixed-size max-heap push (sklearn/utils/_heap.pyx), reproduced operation for
/// operation: its tie behaviour decides which of several equidistant points become neighbours.
inline void sk_heap_push(double* values, std::int64_t* indices, std::int64_t size, double val, std::int64_t val_idx) {
  if (val >= values[0]) return;
  values[0] = val;
  indices[0] = val_idx;
  std::int64_t cur = 0;
  while (true) {
    const std::int64_t l = 2 * cur + 1, r = l + 1;
    std::int64_t sw;
    if (l >= size) break;
    if (r >= size) {
      if (values[l] > val) sw = l;
      else break;
    } else if (values[l] >= values[r]) {
      if (val < values[l]) sw = l;
      else break;
    } else {
      if (val < values[r]) sw = r;
      else break;
    }
    values[cur] = values[sw];
    indices[cur] = indices[sw];
    cur = sw;
  }
  values[cur] = val;
  indices[cur] = val_idx;
}

/// The neighbour set scikit-learn's EuclideanArgKmin64 (metrics/_pairwise_distances_reduction)
/// returns for one query row, given its squared distances v[0..N) to every point: heaps fed in the
/// order of its "parallel_on_X" strategy (one heap, candidates in index order) or, for small N, its
/// "parallel_on_Y" strategy (per-thread heaps over statically scheduled chunks of 256 candidates,
/// merged thread by thread).
void sklearn_heap_row(const double* v, std::int64_t N, std::int64_t k, int T, std::int64_t* out) {
  constexpr std::int64_t kChunk = 256;  // sklearn's pairwise_dist_chunk_size default
  std::vector<double> hv(static_cast<std::size_t>(k), DBL_MAX);
  std::vector<std::int64_t> hi(static_cast<std::size_t>(k), 0);
  const bool on_x = 4 * kChunk * static_cast<std::int64_t>(T) < N;  // n_samples_Y == n_samples_X here
  if (on_x) {
    for (std::int64_t j = 0; j < N; ++j) sk_heap_push(hv.data(), hi.data(), k, v[j], j);
  } else {
    const std::int64_t cy = std::min(N, kChunk);
    const std::int64_t nch = (N + cy - 1) / cy;
    const std::int64_t P = std::min<std::int64_t>(nch, T);
    const std::int64_t q = nch / P, rem = nch % P;  // libgomp's schedule(static) without a chunk size
    std::vector<double> tv(static_cast<std::size_t>(k));
    std::vector<std::int64_t> ti(static_cast<std::size_t>(k));
    for (std::int64_t t = 0; t < P; ++t) {
      const std::int64_t count = q + (t < rem ? 1 : 0);
      const std::int64_t first = t * q + std::min(t, rem);
      std::fill(tv.begin(), tv.end(), DBL_MAX);
      std::fill(ti.begin(), ti.end(), -1);
      const std::int64_t j0 = first * cy, j1 = std::min(N, (first + count) * cy);
      for (std::int64_t j = j0; j < j1; ++j) sk_heap_push(tv.data(), ti.data(), k, v[j], j);
      for (std::int64_t a = 0; a < k; ++a) sk_heap_push(hv.data(), hi.data(), k, tv[a], ti[a]);
    }
  }
  // sklearn sorts each row by distance afterwards; only the set matters for a connectivity graph,
  // but keep the nearest-first order (ties: lower index) for the caller.
  std::vector<std::pair<double, std::int64_t>> s(static_cast<std::size_t>(k));
  for (std::int64_t a = 0; a < k; ++a) s[a] = {hv[a], hi[a]};
  std::sort(s.begin(), s.end());
  for (std::int64_t a = 0; a < k; ++a) out[a] = s[a].second;
}

/// The neighbours sklearn's NearestNeighbors finds with the KD-tree that algorithm="auto" picks for
/// at most 15 features and k < N // 2 (LabelSpreading / LabelPropagation with kernel="knn"). With
/// exact ties at the k-th neighbour the tree keeps the tied points its depth-first traversal meets
/// first, so this replays that traversal; the method as scikit-learn 1.x documents and implements it
/// (sklearn/neighbors/_binary_tree.pxi.tp, _kd_tree.pyx.tp, _partition_nodes.pyx), leaf_size 30:
/// - levels = int(log2(max(1, (N - 1) / leaf_size)) + 1), nodes 0 .. 2^levels - 2 (children 2i+1, 2i+2);
///   node i is a leaf when 2i + 1 >= nodes (or it holds < 2 points);
/// - a node's bounds are the min / max of its points per feature; it splits on the feature of largest
///   spread (the first one; 0 if none spreads), at n / 2 points, by std::nth_element over the point
///   indices ordered by (value, index) — the same call, so the same arrangement within the halves;
/// - a query pushes the points of a leaf, in the tree's index order, into sklearn's bounded max-heap
///   (sk_heap_push) by their squared distance Σ (x - y)²; it visits the nearer child first (by the
///   squared distance to its box, <= goes left) and skips a node whose box is farther than the heap's
///   largest.
class SklearnKdTree {
 public:
  SklearnKdTree(const double* X, std::int64_t N, std::int64_t D) : X_(X), D_(D) {
    // sklearn's box distance calls the C library's pow(h, p) with p = 2 known only at run time; read
    // through a volatile so that the compiler cannot fold it into h * h (they differ in ~0.1 % of
    // cases by an ulp, which can change the traversal where neighbours tie).
    volatile double two = 2.0;
    p_ = two;
    constexpr double kLeafSize = 30.0;
    const int levels = static_cast<int>(std::log2(std::max(1.0, static_cast<double>(N - 1) / kLeafSize)) + 1.0);
    nodes_ = (std::int64_t(1) << levels) - 1;
    idx_.resize(static_cast<std::size_t>(N));
    for (std::int64_t i = 0; i < N; ++i) idx_[i] = i;
    lo_.assign(static_cast<std::size_t>(nodes_ * D), 0.0);
    hi_.assign(static_cast<std::size_t>(nodes_ * D), 0.0);
    start_.assign(static_cast<std::size_t>(nodes_), 0);
    end_.assign(static_cast<std::size_t>(nodes_), 0);
    leaf_.assign(static_cast<std::size_t>(nodes_), 0);
    build(0, 0, N);
  }

  /// The k neighbours of row i (itself included), nearest first, ties by the lower index; keys are
  /// the squared distances.
  void query(std::int64_t i, std::int64_t k, std::int64_t* out_idx, double* out_key) const {
    std::vector<double> hv(static_cast<std::size_t>(k), INFINITY);
    std::vector<std::int64_t> hi(static_cast<std::size_t>(k), 0);
    const double* pt = X_ + i * D_;
    search(0, pt, box_rdist(0, pt), k, hv.data(), hi.data());
    std::vector<std::pair<double, std::int64_t>> s(static_cast<std::size_t>(k));
    for (std::int64_t a = 0; a < k; ++a) s[a] = {hv[a], hi[a]};
    std::sort(s.begin(), s.end());
    for (std::int64_t a = 0; a < k; ++a) {
      out_idx[a] = s[a].second;
      out_key[a] = s[a].first;
    }
  }

 private:
  void build(std::int64_t node, std::int64_t start, std::int64_t end) {
    double* lo = lo_.data() + node * D_;
    double* hi = hi_.data() + node * D_;
    for (std::int64_t t = 0; t < D_; ++t) {
      lo[t] = INFINITY;
      hi[t] = -INFINITY;
    }
    for (std::int64_t a = start; a < end; ++a)
      for (std::int64_t t = 0; t < D_; ++t) {  // finite values (validated): no std::fmin / fmax calls
        const double v = X_[idx_[a] * D_ + t];
        lo[t] = v < lo[t] ? v : lo[t];
        hi[t] = v > hi[t] ? v : hi[t];
      }
    start_[node] = start;
    end_[node] = end;
    if (2 * node + 1 >= nodes_ || end - start < 2) {
      leaf_[node] = 1;
      return;
    }
    // The split feature: the widest spread of the node's points (first one; 0 if none spreads).
    // sklearn takes the min / max again; for finite points they are the bounds just computed.
    const std::int64_t n = end - start;
    std::int64_t dim = 0;
    double widest = 0.0;
    for (std::int64_t t = 0; t < D_; ++t)
      if (hi[t] - lo[t] > widest) {
        widest = hi[t] - lo[t];
        dim = t;
      }
    const double* X = X_;
    const std::int64_t D = D_;
    std::nth_element(idx_.begin() + start, idx_.begin() + start + n / 2, idx_.begin() + end,
                     [X, D, dim](const std::int64_t& a, const std::int64_t& b) {
                       const double va = X[a * D + dim], vb = X[b * D + dim];
                       return va == vb ? a < b : va < vb;
                     });
    build(2 * node + 1, start, start + n / 2);
    build(2 * node + 2, start + n / 2, end);
  }

  /// Squared distance from pt to the node's box (x + |x| = 2 max(x, 0), as sklearn writes it).
  double box_rdist(std::int64_t node, const double* pt) const {
    const double* lo = lo_.data() + node * D_;
    const double* hi = hi_.data() + node * D_;
    double r = 0.0;
    for (std::int64_t t = 0; t < D_; ++t) {
      const double dlo = lo[t] - pt[t], dhi = pt[t] - hi[t];
      const double h = 0.5 * ((dlo + std::fabs(dlo)) + (dhi + std::fabs(dhi)));
      r += h == 0.0 ? 0.0 : std::pow(h, p_);  // inside the box along t: pow(0, 2) = 0, no call
    }
    return r;
  }

  void search(std::int64_t node, const double* pt, double bound, std::int64_t k, double* hv, std::int64_t* hi) const {
    if (bound > hv[0]) return;
    if (leaf_[node]) {
      for (std::int64_t a = start_[node]; a < end_[node]; ++a)
        sk_heap_push(hv, hi, k, sqdist(pt, X_ + idx_[a] * D_, D_), idx_[a]);
      return;
    }
    const std::int64_t c1 = 2 * node + 1, c2 = c1 + 1;
    const double b1 = box_rdist(c1, pt), b2 = box_rdist(c2, pt);
    if (b1 <= b2) {
      search(c1, pt, b1, k, hv, hi);
      search(c2, pt, b2, k, hv, hi);
    } else {
      search(c2, pt, b2, k, hv, hi);
      search(c1, pt, b1, k, hv, hi);
    }
  }

  const double* X_;
  std::int64_t D_, nodes_ = 0;
  double p_ = 2.0;
  std::vector<std::int64_t> idx_, start_, end_;
  std::vector<double> lo_, hi_;
  std::vector<char> leaf_;
};

}  // namespace

KnnScaling knn_scaling(const std::vector<int>& row_exp, bool cosine) {
  constexpr int kMaxEuclideanSpan = 480;  // binary orders of magnitude between the largest rows and the smallest
  KnnScaling sc;
  if (row_exp.empty()) return sc;
  if (cosine) {
    sc.any_row_scaled = std::any_of(row_exp.begin(), row_exp.end(), KnnScaling::row_outside);
    return sc;
  }
  const auto top_it = std::max_element(row_exp.begin(), row_exp.end());  // the largest magnitude's exponent
  const int top = *top_it;
  // Scaled down so that the largest rows fit, rows more than ~2^511 below them have squared
  // differences below the float64 range: two such rows come out at distance 0 (wrong neighbours).
  // Refused, naming a large and a small row, when at least two rows lie beyond a span of 2^480
  // (one tiny row among large ones is just near the origin, as an all-zero row would be).
  std::int64_t low_row = -1, n_low = 0;
  if (top > 30)
    for (std::size_t i = 0; i < row_exp.size(); ++i)
      if (row_exp[i] != INT_MIN && top - row_exp[i] > kMaxEuclideanSpan) {
        ++n_low;
        if (low_row < 0 || row_exp[i] < row_exp[static_cast<std::size_t>(low_row)]) low_row = static_cast<std::int64_t>(i);
      }
  if (n_low >= 2)
    throw Error(ErrorKind::Value,
                "features: row " + std::to_string(top_it - row_exp.begin()) + " (largest |x| ~2^" +
                    std::to_string(top) + ") and row " + std::to_string(low_row) + " (largest |x| ~2^" +
                    std::to_string(row_exp[static_cast<std::size_t>(low_row)]) + ") differ in magnitude by more than 2^" +
                    std::to_string(kMaxEuclideanSpan) + " (" + std::to_string(n_low) +
                    " rows that small): float64 squared distances cannot hold both (scaled so that the large "
                    "rows fit, the small rows' differences underflow); rescale or clip the outlying rows");
  if (KnnScaling::row_outside(top)) sc.shift = top;
  return sc;
}

int knn_search(const KnnData& data, std::int64_t k, DistanceMetric metric, KnnRule rule, int sklearn_threads,
               std::int64_t* out_idx, double* out_key) {
  const std::int64_t N = data.N, D = data.D;
  const bool cosine = metric == DistanceMetric::Cosine;
  const bool sk = rule == KnnRule::Sklearn;
  const int T = sklearn_threads > 0 ? sklearn_threads : num_threads();
  const double* X = data.x.data();
  // ---- scale by powers of two (exact: the same sums, scaled) where the magnitudes leave [2^-30, 2^31):
  // beyond, ||x||^2 or the float32 candidate keys overflow (1e19 and up), or squared differences underflow
  // (1e-170 and below). Euclidean: the whole matrix by one factor 2^-shift; cosine: each row by its own.
  std::vector<double> scaled;
  const KnnScaling scaling = knn_scaling(data.row_exp, cosine);
  const int shift = scaling.shift;
  if (scaling.any_row_scaled) {
    const std::vector<int>& row_exp = data.row_exp;
    scaled.assign(data.x.begin(), data.x.end());
    parallel_for(N, 2048, [&](std::int64_t i0, std::int64_t i1, int) {
      for (std::int64_t i = i0; i < i1; ++i)
        if (KnnScaling::row_outside(row_exp[i]))
          for (std::int64_t t = 0; t < D; ++t) scaled[i * D + t] = std::ldexp(scaled[i * D + t], -row_exp[i]);
    });
  } else if (shift != 0) {
    scaled.resize(data.x.size());
    parallel_for(N, 2048, [&](std::int64_t i0, std::int64_t i1, int) {
      for (std::int64_t q = i0 * D; q < i1 * D; ++q) scaled[q] = std::ldexp(data.x[q], -shift);
    });
  }
  if (!scaled.empty()) X = scaled.data();
  if (sk && D <= 15 && k < N / 2) {
    // sklearn searches with a KD-tree here (algorithm="auto"): replay its traversal (its tie order)
    const SklearnKdTree tree(X, N, D);
    parallel_for(N, 64, [&](std::int64_t i0, std::int64_t i1, int) {
      for (std::int64_t i = i0; i < i1; ++i) tree.query(i, k, out_idx + i * k, out_key + i * k);
    });
    return shift;
  }

  // ---- per-row quantities in float64
  std::vector<double> rawsq(N);  // ||x_i||^2 (sklearn's X_norm_squared), or ||x_i|| for cosine
  parallel_for(N, 2048, [&](std::int64_t i0, std::int64_t i1, int) {
    for (std::int64_t i = i0; i < i1; ++i) rawsq[i] = dot(X + i * D, X + i * D, D);
  });
  if (cosine) {
    for (std::int64_t i = 0; i < N; ++i) {
      check(rawsq[i] > 0.0, ErrorKind::Value, "features: row ", i,
            " is all zeros; the cosine distance is undefined for it (metric=\"cosine\")");
      rawsq[i] = std::sqrt(rawsq[i]);
    }
  }
  // Candidate space: centred rows (euclidean: distances unchanged, GEMM error smaller) or unit rows.
  std::vector<float> Y(static_cast<std::size_t>(N * D));
  std::vector<double> yn(N);  // ||y_i||^2 in float64 of the float32 rows
  std::vector<double> mean(D, 0.0);
  {
    if (!cosine) {
      for (std::int64_t i = 0; i < N; ++i)
        for (std::int64_t t = 0; t < D; ++t) mean[t] += X[i * D + t];
      for (std::int64_t t = 0; t < D; ++t) mean[t] /= static_cast<double>(N);
    }
    parallel_for(N, 2048, [&](std::int64_t i0, std::int64_t i1, int) {
      for (std::int64_t i = i0; i < i1; ++i) {
        double s = 0.0;
        for (std::int64_t t = 0; t < D; ++t) {
          const double u = cosine ? X[i * D + t] / rawsq[i] : X[i * D + t] - mean[t];
          const float f = static_cast<float>(u);
          Y[i * D + t] = f;
          s += static_cast<double>(f) * static_cast<double>(f);
        }
        yn[i] = s;
      }
    });
  }
  const double yn_max = *std::max_element(yn.begin(), yn.end());
  std::vector<float> ynf(yn.begin(), yn.end());
  double raw_max = 0.0;
  if (sk) raw_max = *std::max_element(rawsq.begin(), rawsq.end());
  // |approximate - exact| <= eps_i in candidate units: float32 rounding of the rows, the float32
  // GEMM (|error of y_i.y_j| <= (D + 2) u ||y_i|| ||y_j||, u = 2^-24) and the float64 keys.
  const double c32 = static_cast<double>(D + 8) * std::ldexp(1.0, -22);
  const double c64 = static_cast<double>(D + 8) * std::ldexp(1.0, -50);
  const double unit = cosine ? 2.0 : 1.0;  // candidate units per key unit (||u - v||^2 = 2 (1 - cos))

  const std::int64_t n_cand = sk ? N : N - 1;
  const std::int64_t m = std::min(n_cand, k + std::max<std::int64_t>(k, 16));

  const int key_kind = sk ? 1 : (cosine ? 2 : 0);  // generic::knn_key_from_sum's kind
  auto exact_key = [&](std::int64_t i, std::int64_t j) -> double {
    const double* a = X + i * D;
    const double* b = X + j * D;
    return generic::knn_key_from_sum(key_kind, key_kind == 0 ? sqdist(a, b, D) : dot(a, b, D), rawsq[i], rawsq[j]);
  };
  // exact_key for four candidates at once: four independent sums, each in the same order as
  // exact_key's (the same bits), interleaved for instruction-level parallelism.
  auto exact_keys4 = [&](std::int64_t i, const KnnCand* c, std::pair<double, std::int64_t>* out) {
    const double* a = X + i * D;
    const double* b0 = X + c[0].j * D;
    const double* b1 = X + c[1].j * D;
    const double* b2 = X + c[2].j * D;
    const double* b3 = X + c[3].j * D;
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    if (sk || cosine) {
      for (std::int64_t t = 0; t < D; ++t) {
        s0 += a[t] * b0[t];
        s1 += a[t] * b1[t];
        s2 += a[t] * b2[t];
        s3 += a[t] * b3[t];
      }
    } else {
      for (std::int64_t t = 0; t < D; ++t) {
        const double u0 = a[t] - b0[t], u1 = a[t] - b1[t], u2 = a[t] - b2[t], u3 = a[t] - b3[t];
        s0 += u0 * u0;
        s1 += u1 * u1;
        s2 += u2 * u2;
        s3 += u3 * u3;
      }
    }
    const double s[4] = {s0, s1, s2, s3};
    for (int q = 0; q < 4; ++q) {
      const std::int64_t j = c[q].j;
      out[q] = {generic::knn_key_from_sum(key_kind, s[q], rawsq[i], rawsq[j]), j};
    }
  };
  // The rows no candidate set certified (many exact ties at the k-th neighbour: duplicated rows,
  // integer or binary features), each done exactly over every column. With a transposed copy of X
  // (column j's features contiguous per feature) the N keys of a row are sums that vectorise across
  // columns, each in exact_key's order (the same bits); then the k smallest in one scan (ties: lower
  // index, as a sort of (key, index) pairs gives) or sklearn's heap order. Without the copy (it would
  // exceed kTransposedBytes, or fewer than 4 rows) the keys come one column at a time.
  constexpr std::int64_t kTransposedBytes = std::int64_t(1) << 29;
  auto full_rows = [&](const std::vector<std::int64_t>& rows) {
    if (rows.empty()) return;
    std::vector<double> XT;  // worth its N·D pass from a few rows on
    if (rows.size() >= 4 && N * D * static_cast<std::int64_t>(sizeof(double)) <= kTransposedBytes) {
      XT.resize(static_cast<std::size_t>(N * D));
      parallel_for(N, 4096, [&](std::int64_t j0, std::int64_t j1, int) {
        for (std::int64_t j = j0; j < j1; ++j)
          for (std::int64_t t = 0; t < D; ++t) XT[static_cast<std::size_t>(t * N + j)] = X[j * D + t];
      });
    }
    const ExactKeysFn exact_keys = exact_keys_kernel();
    parallel_for(static_cast<std::int64_t>(rows.size()), 1, [&](std::int64_t b, std::int64_t e, int) {
      std::vector<double> v(N);
      std::vector<double> bk(static_cast<std::size_t>(k));
      std::vector<std::int64_t> bj(static_cast<std::size_t>(k));
      for (std::int64_t f = b; f < e; ++f) {
        const std::int64_t i = rows[f];
        const double* a = X + i * D;
        double* vk = v.data();
        if (XT.empty()) {
          for (std::int64_t j = 0; j < N; ++j) vk[j] = exact_key(i, j);
        } else {
          exact_keys(a, XT.data(), N, D, key_kind, rawsq[i], rawsq.data(), vk);
        }
        std::int64_t* oi = out_idx + i * k;
        double* ok = out_key + i * k;
        if (sk) {
          sklearn_heap_row(vk, N, k, T, oi);
          for (std::int64_t a2 = 0; a2 < k; ++a2) ok[a2] = vk[oi[a2]];
          continue;
        }
        // The k smallest (key, j) by insertion into a sorted list: columns come in increasing j, so a
        // key equal to the k-th kept one never displaces it.
        std::int64_t have = 0;
        constexpr std::int64_t kScan = 256;
        for (std::int64_t j0 = 0; j0 < N; j0 += kScan) {
          const std::int64_t j1 = std::min(N, j0 + kScan);
          if (have == k) {  // once k are kept, most blocks hold nothing below the k-th: one vector test
            const double kth = bk[k - 1];
            int below = 0;
            for (std::int64_t j = j0; j < j1; ++j) below |= vk[j] < kth ? 1 : 0;
            if (!below) continue;
          }
          for (std::int64_t j = j0; j < j1; ++j) {
            const double key = vk[j];
            if ((have == k && !(key < bk[k - 1])) || j == i) continue;
            std::int64_t p = have < k ? have++ : k - 1;
            for (; p > 0 && key < bk[p - 1]; --p) {
              bk[p] = bk[p - 1];
              bj[p] = bj[p - 1];
            }
            bk[p] = key;
            bj[p] = j;
          }
        }
        for (std::int64_t a2 = 0; a2 < k; ++a2) {
          oi[a2] = bj[a2];
          ok[a2] = bk[a2];
        }
      }
    });
  };

  const std::int64_t B = kKnnBlock;
  const std::int64_t nb = (N + B - 1) / B;
  std::vector<std::pair<std::int64_t, std::int64_t>> pairs;
  for (std::int64_t I = 0; I < nb; ++I)
    for (std::int64_t J = I; J < nb; ++J) pairs.push_back({I, J});
  const int max_workers = worker_slots();
  // the candidate passes hand out block pairs: no more workers (threads, per-worker heaps) than pairs
  const int pair_workers = worker_slots(static_cast<std::int64_t>(pairs.size()), 1);

  // Lower bound on the exact key of any non-candidate of row i whose float32 approximation is >= amax.
  auto lower32 = [&](std::int64_t i, float amax_f) -> double {
    // the formula shared with the CUDA backend (src/knn_bound.hpp)
    return knn_lower_bound32(amax_f, yn[i], yn_max, D, unit, sk ? c64 * (rawsq[i] + raw_max) : 0.0);
  };
  // Merges the candidates h of row i (at least m), refines them exactly in ascending order of their
  // approximate key and certifies the result; false: row i must be redone. Refinement stops as soon as
  // the next candidate's lower bound exceeds the k-th exact key found: that candidate, every later
  // one and every non-candidate (a_j >= the largest kept) are then farther than the k-th.
  auto refine_row = [&](std::int64_t i, std::vector<KnnCand>& h, std::vector<std::pair<double, std::int64_t>>& ref,
                        const auto& lower) -> bool {
    const auto by_a = [](const KnnCand& x, const KnnCand& y) { return x.a < y.a; };
    // Fewer than m candidates (only when approximate keys were not finite): nothing to certify with.
    if (static_cast<std::int64_t>(h.size()) < m) return false;
    if (static_cast<std::int64_t>(h.size()) > m) std::nth_element(h.begin(), h.begin() + (m - 1), h.end(), by_a);
    h.resize(static_cast<std::size_t>(m));
    std::sort(h.begin(), h.end(), by_a);
    // the candidates' float64 rows are scattered: ask for the likely ones at once
    for (std::int64_t a = 0; a < std::min(m, k + 8); ++a) {
      const char* row = reinterpret_cast<const char*>(X + h[a].j * D);
      for (std::int64_t off = 0; off < D * static_cast<std::int64_t>(sizeof(double)); off += 64)
        __builtin_prefetch(row + off);
    }
    ref.resize(static_cast<std::size_t>(m));
    std::int64_t r = 0;
    bool certain = false;
    while (true) {
      if (r + 4 <= m) {
        exact_keys4(i, &h[r], &ref[r]);
        r += 4;
      } else {
        for (; r < m; ++r) ref[r] = {exact_key(i, h[r].j), h[r].j};
      }
      if (r < k + 1 && r < m) continue;
      std::sort(ref.begin(), ref.begin() + r);
      const double kth = knn_kth_slack(ref[k - 1].first);
      if (r == m) {
        certain = m == n_cand || lower(i, h[m - 1].a) > kth;
        break;
      }
      if (lower(i, h[r].a) > kth) {
        certain = true;
        break;
      }
    }
    if (!certain) return false;
    if (sk && k < r && ref[k].first == ref[k - 1].first)
      return false;  // a tie at the k-th neighbour: sklearn's heap decides which ones stay
    for (std::int64_t a = 0; a < k; ++a) {
      out_idx[i * k + a] = ref[a].second;
      out_key[i * k + a] = ref[a].first;
    }
    return true;
  };

  // ---- fused path: candidate filter inside the GEMM's register tiles (src/cpu/knn_fused_avx512.cpp, or
  // src/cpu/knn_fused_avx2.cpp without AVX-512); with AVX512_BF16 a first pass in bfloat16 (twice the rate), certified with its own error bound,
  // and a float32 pass for the rows it cannot certify.
#if defined(__x86_64__)
  if (fused_kernel().fn && yn_max < 1e30 && N < (std::int64_t{1} << 31) - 64) {
    const bool bf_first = fused_kernel().bf16;
    bool row_pass = true;  // float32 row-only pass for the rows the bfloat16 pass leaves
    const std::int64_t Npad = (N + 31) / 32 * 32, P = Npad / 32;
    const float finf = std::numeric_limits<float>::infinity();
    // Locality order: rows grouped by their nearest of 2 * nb pivot rows, so that a block holds
    // near points; the diagonal block pairs first, then the others by the distance of their
    // centroids. Each row's admission threshold is tight early and most tiles pass no candidate.
    std::vector<std::int64_t> perm(N);  // position -> row
    for (std::int64_t i = 0; i < N; ++i) perm[i] = i;
    if (nb > 1) {
      const std::int64_t npiv = std::min<std::int64_t>(N, 2 * nb);
      std::vector<float> piv(static_cast<std::size_t>(npiv * D)), pn(npiv);
      for (std::int64_t t = 0; t < npiv; ++t) {
        const std::int64_t r = t * N / npiv;
        std::copy(Y.begin() + r * D, Y.begin() + r * D + D, piv.begin() + t * D);
        pn[t] = ynf[r];
      }
      std::vector<std::int32_t> grp(N);
      parallel_for(nb, 1, [&](std::int64_t b0, std::int64_t b1, int) {
        std::vector<float> G(static_cast<std::size_t>(B * npiv));
        for (std::int64_t b = b0; b < b1; ++b) {
          const std::int64_t r0 = b * B, nr = std::min(N, r0 + B) - r0;
          knn_block_gemm(Y.data() + r0 * D, nr, piv.data(), npiv, D, G.data(), npiv);
          for (std::int64_t r = 0; r < nr; ++r) {
            std::int32_t best = 0;
            float bv = std::numeric_limits<float>::infinity();
            for (std::int64_t t = 0; t < npiv; ++t) {
              const float v = pn[t] - 2.0f * G[r * npiv + t];
              if (v < bv) {
                bv = v;
                best = static_cast<std::int32_t>(t);
              }
            }
            grp[r0 + r] = best;
          }
        }
      });
      std::vector<std::int64_t> start(npiv + 1, 0);
      for (std::int64_t i = 0; i < N; ++i) ++start[grp[i] + 1];
      for (std::int64_t t = 0; t < npiv; ++t) start[t + 1] += start[t];
      for (std::int64_t i = 0; i < N; ++i) perm[start[grp[i]]++] = i;
      // pair order: diagonal first, then by centroid distance (ties: the original order)
      std::vector<double> cen(static_cast<std::size_t>(nb * D), 0.0);
      for (std::int64_t p = 0; p < N; ++p)
        for (std::int64_t t = 0; t < D; ++t) cen[(p / B) * D + t] += Y[perm[p] * D + t];
      for (std::int64_t b = 0; b < nb; ++b) {
        const double cnt = static_cast<double>(std::min(N, (b + 1) * B) - b * B);
        for (std::int64_t t = 0; t < D; ++t) cen[b * D + t] /= cnt;
      }
      std::vector<double> pd(pairs.size());
      for (std::size_t q = 0; q < pairs.size(); ++q)
        pd[q] = pairs[q].first == pairs[q].second
                    ? -1.0
                    : sqdist(cen.data() + pairs[q].first * D, cen.data() + pairs[q].second * D, D);
      std::vector<std::size_t> order(pairs.size());
      for (std::size_t q = 0; q < order.size(); ++q) order[q] = q;
      std::stable_sort(order.begin(), order.end(), [&](std::size_t x, std::size_t y) { return pd[x] < pd[y]; });
      std::vector<std::pair<std::int64_t, std::int64_t>> sorted(pairs.size());
      for (std::size_t q = 0; q < order.size(); ++q) sorted[q] = pairs[order[q]];
      pairs.swap(sorted);
    }
    // float32 rows and their squared norms in that order (+inf past N: never admitted)
    std::vector<float> Yp(static_cast<std::size_t>(N * D));
    std::vector<float> ycp32(static_cast<std::size_t>(Npad), finf);
    for (std::int64_t p = 0; p < N; ++p) {
      std::copy(Y.begin() + perm[p] * D, Y.begin() + perm[p] * D + D, Yp.begin() + p * D);
      ycp32[p] = ynf[perm[p]];
    }
    auto make_panels = [&](const std::uint32_t* rows, std::int64_t ks) {  // rows: [N, ks] words
      AlignedWords w(static_cast<std::size_t>(Npad * ks));
      parallel_for(P, 16, [&](std::int64_t p0, std::int64_t p1, int) {
        for (std::int64_t p = p0; p < p1; ++p) {
          const std::int64_t nt = std::min<std::int64_t>(32, N - p * 32);
          for (std::int64_t st = 0; st < ks; ++st)
            for (std::int64_t t = 0; t < nt; ++t) w.p[(p * ks + st) * 32 + t] = rows[(p * 32 + t) * ks + st];
        }
      });
      return w;
    };
    const std::int64_t S = (m + 15) / 16 * 16;  // candidate list stride (KnnFusedArgs)
    struct WorkerHeaps {
      std::vector<float> key;  // [N, S] ascending, +inf where empty
      std::vector<std::int32_t> idx;
      std::vector<float> root;
    };
    // the symmetric pass over the block pairs (I, J >= I), pairs handed out dynamically
    auto symmetric_pass = [&](bool bf, const std::uint32_t* rows, std::int64_t ks, const std::uint32_t* panels,
                              const float* ycp, std::vector<WorkerHeaps>& wh) {
      wh.assign(pair_workers, WorkerHeaps{});
      std::atomic<std::int64_t> next{0};
      // thresholds shared between the workers: the smallest full-heap root any of them had for a row
      // (relaxed; a stale value only admits more)
      std::vector<float> shared(static_cast<std::size_t>(Npad), finf);
      auto exchange = [&](std::vector<float>& own, std::int64_t r0, std::int64_t n, bool publish) {
        for (std::int64_t r = r0; r < r0 + n; ++r) {
          float sv;
          __atomic_load(&shared[r], &sv, __ATOMIC_RELAXED);
          if (sv < own[r]) own[r] = sv;
          else if (publish && own[r] < sv) __atomic_store(&shared[r], &own[r], __ATOMIC_RELAXED);
        }
      };
      const std::int64_t npairs = static_cast<std::int64_t>(pairs.size());
      parallel_for(pair_workers, 1, [&](std::int64_t w0, std::int64_t w1, int w) {
        if (w1 <= w0) return;
        WorkerHeaps& H = wh[w];
        H.key.assign(static_cast<std::size_t>(N * S), finf);
        H.idx.assign(static_cast<std::size_t>(N * S), -1);
        H.root.assign(Npad, finf);
        while (true) {
          poll_interrupt();
          const std::int64_t p = next.fetch_add(1);
          if (p >= npairs) break;
          const std::int64_t q0 = pairs[p].first * B, nq = std::min(N, q0 + B) - q0;
          const std::int64_t c0 = pairs[p].second * B, nc = std::min(N, c0 + B) - c0;
          exchange(H.root, q0, nq, false);
          if (c0 != q0) exchange(H.root, c0, nc, false);
          KnnFusedArgs a;
          a.A = rows + q0 * ks;
          a.lda = ks;
          a.nq = nq;
          a.q0 = q0;
          a.Bp = panels + (c0 / 32) * ks * 32;
          a.ksteps = ks;
          a.nc = nc;
          a.c0 = c0;
          a.yq = ycp + q0;
          a.yc = ycp + c0;
          a.bf16 = bf;
          a.cols = c0 != q0;
          a.select = c0 == q0;
          a.skip_self = !sk;
          a.m = m;
          a.qkeys = H.key.data() + q0 * S;
          a.qidx = H.idx.data() + q0 * S;
          a.qroot = H.root.data() + q0;
          a.ckeys = H.key.data() + c0 * S;
          a.cidx = H.idx.data() + c0 * S;
          a.croot = H.root.data() + c0;
          fused_kernel().fn(a);
          exchange(H.root, q0, nq, true);
          if (c0 != q0) exchange(H.root, c0, nc, true);
        }
      });
    };
    // merge the workers' heaps and refine every row; the rows not certified go to `failed`
    auto refine_all = [&](const std::vector<WorkerHeaps>& wh, const auto& lower, std::vector<std::int64_t>& failed) {
      std::vector<std::vector<std::int64_t>> wfail(max_workers);
      parallel_for(N, 256, max_workers, [&](std::int64_t i0, std::int64_t i1, int w) {
        std::vector<KnnCand> h;
        std::vector<std::pair<double, std::int64_t>> ref;
        for (std::int64_t p = i0; p < i1; ++p) {
          poll_interrupt();
          h.clear();
          for (const WorkerHeaps& H : wh)
            if (!H.key.empty())
              for (std::int64_t a = 0; a < m && H.idx[p * S + a] >= 0; ++a)
                h.push_back({H.key[p * S + a], perm[H.idx[p * S + a]]});
          const std::int64_t i = perm[p];
          if (!refine_row(i, h, ref, lower)) wfail[w].push_back(i);
        }
      });
      for (const auto& f : wfail) failed.insert(failed.end(), f.begin(), f.end());
      std::sort(failed.begin(), failed.end());
    };
    const auto* Yw = reinterpret_cast<const std::uint32_t*>(Y.data());
    const auto* Ypw = reinterpret_cast<const std::uint32_t*>(Yp.data());
    std::vector<std::int64_t> failed;
    {
      std::vector<WorkerHeaps> wh;
      if (bf_first) {
        // bfloat16 rows yb (pairs of features in one word), ||yb_i||^2, and dn_i >= ||u_i - yb_i||
        // (u_i the float64 candidate-space row; centring rounding included)
        const std::int64_t ks = (D + 1) / 2;
        std::vector<std::uint32_t> Yb(static_cast<std::size_t>(N * ks), 0u);
        std::vector<double> bn(N), dn(N);  // by row
        std::vector<float> bq(N), ycp(static_cast<std::size_t>(Npad), finf);  // by row, by position
        parallel_for(N, 512, [&](std::int64_t p0, std::int64_t p1, int) {
          for (std::int64_t p = p0; p < p1; ++p) {
            const std::int64_t i = perm[p];
            double b2 = 0.0, d2 = 0.0, x2 = 0.0;
            for (std::int64_t t = 0; t < D; ++t) {
              const double x = X[i * D + t];
              const double u = cosine ? x / rawsq[i] : x - mean[t];
              const std::uint16_t hb = to_bf16(Y[i * D + t]);
              const double v = from_bf16(hb);
              b2 += v * v;
              d2 += (u - v) * (u - v);
              x2 += x * x;
              Yb[p * ks + t / 2] |= static_cast<std::uint32_t>(hb) << (16 * (t & 1));
            }
            bn[i] = std::sqrt(b2) * (1.0 + 1e-12);
            dn[i] = std::sqrt(d2) * (1.0 + 1e-9) + std::ldexp(1.0, -48) * (cosine ? 1.0 : std::sqrt(x2));
            bq[i] = ycp[p] = static_cast<float>(b2);
          }
        });
        const double bn_max = *std::max_element(bn.begin(), bn.end());
        const double dn_max = *std::max_element(dn.begin(), dn.end());
        const double bq_max = static_cast<double>(*std::max_element(bq.begin(), bq.end()));
        AlignedWords panels = make_panels(Yb.data(), ks);
        symmetric_pass(true, Yb.data(), ks, panels.p, ycp.data(), wh);
        // a_ij approximates ||yb_i - yb_j||^2 within e_i (float32 accumulation, norms, products
        // flushed to zero); ||u_i - u_j|| >= ||yb_i - yb_j|| - dn_i - dn_j.
        auto lower_bf = [&](std::int64_t i, float amax_f) -> double {
          const double bq_i = static_cast<double>(bq[i]);
          const double e = 2.0 * c32 * bn[i] * bn_max + 8.0 * std::ldexp(1.0, -24) * (bq_i + bq_max) +
                           static_cast<double>(D) * std::ldexp(1.0, -120);
          const double t = static_cast<double>(amax_f) - e;
          const double s = (t > 0.0 ? std::sqrt(t) : 0.0) - (dn[i] + dn_max);
          double lb = s > 0.0 ? s * s * (1.0 - 1e-9) : 0.0;
          if (sk) lb -= c64 * (rawsq[i] + raw_max);
          if (cosine) lb -= c64;
          return lb / unit;
        };
        refine_all(wh, lower_bf, failed);
        // too coarse for most rows (clusters tight compared with their distance from the mean): the
        // symmetric float32 pass for all costs less than one row-only pass per failed row
        if (2 * static_cast<std::int64_t>(failed.size()) > N) {
          failed.clear();
          row_pass = false;
        }
      }
      if (!bf_first || !row_pass) {
        AlignedWords panels = make_panels(Ypw, D);
        symmetric_pass(false, Ypw, D, panels.p, ycp32.data(), wh);
        refine_all(wh, lower32, failed);
      }
    }
    if (!failed.empty() && bf_first && row_pass) {
      // float32 pass for the rows the bfloat16 pass could not certify: each against every column
      const std::int64_t nF = static_cast<std::int64_t>(failed.size());
      AlignedWords panels = make_panels(Yw, D);
      std::vector<float> ycp0(static_cast<std::size_t>(Npad), finf);
      std::copy(ynf.begin(), ynf.end(), ycp0.begin());
      std::vector<std::uint32_t> Af(static_cast<std::size_t>(nF * D));
      std::vector<float> yqF(nF);
      for (std::int64_t f = 0; f < nF; ++f) {
        std::copy(Yw + failed[f] * D, Yw + failed[f] * D + D, Af.begin() + f * D);
        yqF[f] = ynf[failed[f]];
      }
      std::vector<float> kF(static_cast<std::size_t>(nF * S), finf);
      std::vector<std::int32_t> iF(static_cast<std::size_t>(nF * S), -1);
      std::vector<float> rF(nF, finf);
      parallel_for(nF, 12, [&](std::int64_t b, std::int64_t e, int) {
        KnnFusedArgs a;
        a.A = Af.data() + b * D;
        a.lda = D;
        a.nq = e - b;
        a.qid = failed.data() + b;
        a.Bp = panels.p;
        a.ksteps = D;
        a.nc = N;
        a.c0 = 0;
        a.yq = yqF.data() + b;
        a.yc = ycp0.data();
        a.bf16 = false;
        a.cols = false;
        a.skip_self = !sk;
        a.m = m;
        a.qkeys = kF.data() + b * S;
        a.qidx = iF.data() + b * S;
        a.qroot = rF.data() + b;
        fused_kernel().fn(a);
      });
      std::vector<std::int64_t> still;
      std::vector<KnnCand> h;
      std::vector<std::pair<double, std::int64_t>> ref;
      for (std::int64_t f = 0; f < nF; ++f) {
        h.clear();
        for (std::int64_t a = 0; a < m && iF[f * S + a] >= 0; ++a) h.push_back({kF[f * S + a], iF[f * S + a]});
        if (!refine_row(failed[f], h, ref, lower32)) still.push_back(failed[f]);
      }
      failed.swap(still);
    }
    full_rows(failed);
    return shift;
  }
#endif

  // ---- candidates: square blocks (I, J), J >= I; one GEMM serves the rows of I against J (scanned
  // by rows) and the rows of J against I (scanned by columns). Each worker keeps its own bounded
  // heaps for every row.
  std::vector<std::vector<KnnCand>> wheaps(pair_workers);
  std::vector<std::vector<std::int64_t>> wsize(pair_workers);
  parallel_for(static_cast<std::int64_t>(pairs.size()), 1, pair_workers, [&](std::int64_t p0, std::int64_t p1, int w) {
    std::vector<KnnCand>& heaps = wheaps[w];
    std::vector<std::int64_t>& hsize = wsize[w];
    heaps.resize(static_cast<std::size_t>(N * m));
    hsize.assign(N, 0);
    const std::int64_t bs = std::min(B, N);
    const std::int64_t ld = bs + 16;  // padded rows: no cache-set aliasing
    std::vector<float> G(static_cast<std::size_t>(bs * ld));
    for (std::int64_t p = p0; p < p1; ++p) {
      poll_interrupt();
      const std::int64_t q0 = pairs[p].first * B, q1 = std::min(N, q0 + B), nq = q1 - q0;
      const std::int64_t c0 = pairs[p].second * B, c1 = std::min(N, c0 + B), nc = c1 - c0;
      knn_block_gemm(Y.data() + q0 * D, nq, Y.data() + c0 * D, nc, D, G.data(), ld);
      knn_block_scan(G.data(), ld, nq, nc, q0, c0, ynf.data() + q0, ynf.data() + c0, !sk, m, heaps.data() + q0 * m,
                     hsize.data() + q0);
      if (c0 == q0) continue;
      // rows of J against I: the columns of the same block
      knn_block_scan_cols(G.data(), ld, nq, nc, q0, c0, ynf.data() + q0, ynf.data() + c0, m, heaps.data() + c0 * m,
                          hsize.data() + c0);
    }
  });
  int used = 0;
  while (used < pair_workers && !wheaps[used].empty()) ++used;

  // ---- merge the workers' heaps, refine each row exactly and certify it
  std::vector<std::vector<std::int64_t>> wfail(max_workers);
  parallel_for(N, 256, max_workers, [&](std::int64_t i0, std::int64_t i1, int w) {
    std::vector<KnnCand> h;
    std::vector<std::pair<double, std::int64_t>> ref;
    for (std::int64_t i = i0; i < i1; ++i) {
      poll_interrupt();
      h.clear();
      for (int u = 0; u < used; ++u)
        h.insert(h.end(), wheaps[u].begin() + i * m, wheaps[u].begin() + i * m + wsize[u][i]);
      if (!refine_row(i, h, ref, lower32)) wfail[w].push_back(i);
    }
  });
  std::vector<std::int64_t> failed;
  for (const auto& f : wfail) failed.insert(failed.end(), f.begin(), f.end());
  full_rows(failed);
  return shift;
}

}  // namespace detail

namespace {
/// knn_graph on CUDA: the static checks of knn_load and knn_graph in the same order and words, then
/// the device run, which reports the lowest NaN / Inf row, then the lowest all-zero row (cosine).
/// The checks both devices share: N >= 2, 1 <= k < N, and the outputs (int64 indices and float
/// distances, [N, k], on features' device).
void check_knn_request(const TensorView& f, std::int64_t N, std::int64_t k, const TensorView& indices,
                       const TensorView& distances) {
  check(N >= 2, ErrorKind::Value, "features: a kNN graph needs at least 2 rows, got shape ", f.shape_str());
  check(k >= 1 && k < N, ErrorKind::Value, "k: expected 1 <= k < N = ", N,
        " (the point itself is not its own neighbour), got ", k);
  auto check_out = [&](const TensorView& v, const char* name) {
    check(v.device == f.device, ErrorKind::Value, name, ": is on ", v.device.str(), " but features is on ",
          f.device.str());
    check(v.ndim == 2 && v.shape[0] == N && v.shape[1] == k, ErrorKind::Value, name, ": expected shape [", N, ", ",
          k, "], got ", v.shape_str());
  };
  check_out(indices, "indices");
  check(indices.dtype == DType::Int64, ErrorKind::Type, "indices: expected dtype int64, got ",
        dtype_name(indices.dtype));
  check_out(distances, "distances");
  check(distances.dtype == DType::Float32 || distances.dtype == DType::Float64, ErrorKind::Type,
        "distances: expected dtype float32 or float64, got ", dtype_name(distances.dtype));
  check_outputs({{indices, "indices"}, {distances, "distances"}}, {{f, "features"}});
}

void knn_graph_cuda(const TensorView& f, std::int64_t k, const TensorView& indices, const TensorView& distances,
                    DistanceMetric metric, void* stream) {
  const char* what = "features";
  check(f.dtype == DType::Float32 || f.dtype == DType::Float64, ErrorKind::Type, what,
        ": expected dtype float32 or float64, got ", dtype_name(f.dtype));
  check(f.ndim == 2, ErrorKind::Value, what, ": expected rank 2 ([N, D]), got shape ", f.shape_str());
  check(f.shape[0] > 0 && f.shape[1] > 0, ErrorKind::Value, what, ": is empty (shape ", f.shape_str(), ")");
  check(f.data != nullptr, ErrorKind::Value, what, ": data pointer is null");
  const std::int64_t N = f.shape[0], D = f.shape[1];
  std::int64_t total = 0;
  check(!__builtin_mul_overflow(N, D, &total), ErrorKind::Value, what, ": shape ", f.shape_str(),
        " has more elements than fit in int64");
  check(N < (std::int64_t{1} << 31) - 1 && D < (std::int64_t{1} << 31) - 1, ErrorKind::Value, what, ": shape ",
        f.shape_str(), " is too large for the CUDA kNN graph (N and D below 2^31 - 1)");
  check_knn_request(f, N, k, indices, distances);
  detail::KnnCudaJob job;
  job.x = f.data;
  job.dtype = f.dtype;
  job.N = N;
  job.D = D;
  job.rs = f.strides[0];
  job.cs = f.strides[1];
  job.k = k;
  job.metric = metric;
  job.out_index = static_cast<std::int64_t*>(indices.data);
  job.is0 = indices.strides[0];
  job.is1 = indices.strides[1];
  job.out_dist = distances.data;
  job.dist_dtype = distances.dtype;
  job.ds0 = distances.strides[0];
  job.ds1 = distances.strides[1];
  job.device_index = f.device.index;
  job.stream = stream;
  const detail::KnnCudaFailure r = detail::knn_cuda(job);
  check(r.status != detail::kKnnNonFinite, ErrorKind::Value, what, ": row ", r.row, " contains NaN or Inf");
  check(r.status != detail::kKnnZeroRow, ErrorKind::Value, "features: row ", r.row,
        " is all zeros; the cosine distance is undefined for it (metric=\"cosine\")");
}
}  // namespace

void knn_graph(const TensorView& features, std::int64_t k, const TensorView& indices, const TensorView& distances,
               DistanceMetric metric, void* stream) {
  distance_metric_name(metric);  // Error(Value) for an id outside the enum
  if (features.device.is_cuda()) return knn_graph_cuda(features, k, indices, distances, metric, stream);
  const detail::KnnData data = detail::knn_load(features, "features");
  const std::int64_t N = data.N;
  check_knn_request(features, N, k, indices, distances);
  std::vector<std::int64_t> idx(static_cast<std::size_t>(N * k));
  std::vector<double> key(static_cast<std::size_t>(N * k));
  const int shift = detail::knn_search(data, k, metric, detail::KnnRule::Exact, 0, idx.data(), key.data());
  auto* I = static_cast<std::int64_t*>(indices.data);
  for (std::int64_t i = 0; i < N; ++i)
    for (std::int64_t a = 0; a < k; ++a) {
      const double kv = key[i * k + a];
      // keys of the data scaled by 2^-shift: sqrt and the power of two are both exact in this order
      const double d = metric == DistanceMetric::Euclidean ? std::ldexp(std::sqrt(kv), shift) : kv;
      I[i * indices.strides[0] + a * indices.strides[1]] = idx[i * k + a];
      const std::int64_t off = i * distances.strides[0] + a * distances.strides[1];
      if (distances.dtype == DType::Float64) static_cast<double*>(distances.data)[off] = d;
      else static_cast<float*>(distances.data)[off] = static_cast<float>(d);
    }
}

}  // namespace labelwise
