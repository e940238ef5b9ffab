// Front door of labelwise/propagation/knn.hpp, and the kNN search shared with label spreading:
// float32 candidates by blocked GEMM (src/cpu/knn_gemm*.cpp), exact float64 refinement, a bound
// that certifies the refinement, and an exact per-row fallback (see the header for the method).
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "knn_backend.hpp"
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
namespace generic {
LABELWISE_KNN_DECLARE
}
#if defined(__x86_64__)
namespace avx2 {
LABELWISE_KNN_DECLARE
}
#endif
#undef LABELWISE_KNN_DECLARE

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
  const std::int64_t s0 = f.strides[0], s1 = f.strides[1];
  for (std::int64_t i = 0; i < d.N; ++i) {
    double* row = d.x.data() + i * d.D;
    bool ok = true;
    if (f.dtype == DType::Float64) {
      const double* p = static_cast<const double*>(f.data) + i * s0;
      for (std::int64_t j = 0; j < d.D; ++j) row[j] = p[j * s1];
    } else {
      const float* p = static_cast<const float*>(f.data) + i * s0;
      for (std::int64_t j = 0; j < d.D; ++j) row[j] = static_cast<double>(p[j * s1]);
    }
    for (std::int64_t j = 0; j < d.D; ++j) ok = ok && std::isfinite(row[j]);
    check(ok, ErrorKind::Value, what, ": row ", i, " contains NaN or Inf");
  }
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


}  // namespace

void knn_search(const KnnData& data, std::int64_t k, KnnMetric metric, KnnRule rule, int sklearn_threads,
                std::int64_t* out_idx, double* out_key) {
  const std::int64_t N = data.N, D = data.D;
  const bool cosine = metric == KnnMetric::Cosine;
  const bool sk = rule == KnnRule::Sklearn;
  const int T = sklearn_threads > 0 ? sklearn_threads : num_threads();
  const double* X = data.x.data();

  // ---- per-row quantities in float64
  std::vector<double> rawsq(N);  // ||x_i||^2 (sklearn's X_norm_squared), or ||x_i|| for cosine
  for (std::int64_t i = 0; i < N; ++i) rawsq[i] = dot(X + i * D, X + i * D, D);
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
  {
    std::vector<double> mean(D, 0.0);
    if (!cosine) {
      for (std::int64_t i = 0; i < N; ++i)
        for (std::int64_t t = 0; t < D; ++t) mean[t] += X[i * D + t];
      for (std::int64_t t = 0; t < D; ++t) mean[t] /= static_cast<double>(N);
    }
    for (std::int64_t i = 0; i < N; ++i) {
      double s = 0.0;
      for (std::int64_t t = 0; t < D; ++t) {
        const double u = cosine ? X[i * D + t] / rawsq[i] : X[i * D + t] - mean[t];
        const float f = static_cast<float>(u);
        Y[i * D + t] = f;
        s += static_cast<double>(f) * static_cast<double>(f);
      }
      yn[i] = s;
    }
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

  auto exact_key = [&](std::int64_t i, std::int64_t j) -> double {
    const double* a = X + i * D;
    const double* b = X + j * D;
    if (sk) return std::max(0.0, rawsq[i] + (-2.0 * dot(a, b, D)) + rawsq[j]);
    if (cosine) return std::min(2.0, std::max(0.0, 1.0 - dot(a, b, D) / (rawsq[i] * rawsq[j])));
    return sqdist(a, b, D);
  };
  // One row done exactly over every candidate (the fallback).
  auto full_row = [&](std::int64_t i) {
    std::int64_t* oi = out_idx + i * k;
    double* ok = out_key + i * k;
    if (sk) {
      std::vector<double> v(N);
      for (std::int64_t j = 0; j < N; ++j) v[j] = exact_key(i, j);
      sklearn_heap_row(v.data(), N, k, T, oi);
      for (std::int64_t a = 0; a < k; ++a) ok[a] = v[oi[a]];
      return;
    }
    std::vector<std::pair<double, std::int64_t>> all;
    all.reserve(N);
    for (std::int64_t j = 0; j < N; ++j)
      if (j != i) all.push_back({exact_key(i, j), j});
    std::partial_sort(all.begin(), all.begin() + k, all.end());
    for (std::int64_t a = 0; a < k; ++a) {
      oi[a] = all[a].second;
      ok[a] = all[a].first;
    }
  };

  // ---- candidates: square blocks (I, J), J >= I; one GEMM serves the rows of I against J (scanned
  // by rows) and the rows of J against I (scanned by columns). Each worker keeps its own bounded
  // heaps for every row.
  const std::int64_t B = kKnnBlock;
  const std::int64_t nb = (N + B - 1) / B;
  std::vector<std::pair<std::int64_t, std::int64_t>> pairs;
  for (std::int64_t I = 0; I < nb; ++I)
    for (std::int64_t J = I; J < nb; ++J) pairs.push_back({I, J});
  const int max_workers = std::max(1, num_threads());
  std::vector<std::vector<KnnCand>> wheaps(max_workers);
  std::vector<std::vector<std::int64_t>> wsize(max_workers);
  parallel_for(static_cast<std::int64_t>(pairs.size()), 1, [&](std::int64_t p0, std::int64_t p1, int w) {
    std::vector<KnnCand>& heaps = wheaps[w];
    std::vector<std::int64_t>& hsize = wsize[w];
    heaps.resize(static_cast<std::size_t>(N * m));
    hsize.assign(N, 0);
    const std::int64_t bs = std::min(B, N);
    const std::int64_t ld = bs + 16;  // padded rows: no cache-set aliasing
    std::vector<float> G(static_cast<std::size_t>(bs * ld));
    for (std::int64_t p = p0; p < p1; ++p) {
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
  while (used < max_workers && !wheaps[used].empty()) ++used;

  // ---- merge the workers' heaps, refine each row exactly and certify it
  parallel_for(N, 256, [&](std::int64_t i0, std::int64_t i1, int) {
    std::vector<KnnCand> h;
    std::vector<std::pair<double, std::int64_t>> ref(static_cast<std::size_t>(m));
    for (std::int64_t i = i0; i < i1; ++i) {
      h.clear();
      for (int w = 0; w < used; ++w)
        h.insert(h.end(), wheaps[w].begin() + i * m, wheaps[w].begin() + i * m + wsize[w][i]);
      if (static_cast<std::int64_t>(h.size()) > m)
        std::nth_element(h.begin(), h.begin() + (m - 1), h.end(),
                         [](const KnnCand& x, const KnnCand& y) { return x.a < y.a; });
      h.resize(static_cast<std::size_t>(m));
      float amax_f = -std::numeric_limits<float>::infinity();
      for (std::int64_t a = 0; a < m; ++a) {
        ref[a] = {exact_key(i, h[a].j), h[a].j};
        amax_f = std::max(amax_f, h[a].a);
      }
      std::sort(ref.begin(), ref.end());
      bool certain = true;
      if (m < n_cand) {
        // every non-candidate j has approximate a_j >= amax (the largest kept), hence an exact key
        // >= (amax - eps) / unit; it cannot reach the k-th key when that is larger.
        const double amax = static_cast<double>(amax_f);
        // float32 arithmetic of a itself: a few ulps of (yn_i + yn_max)
        double eps = c32 * (yn[i] + yn_max) + 8.0 * std::ldexp(1.0, -24) * (yn[i] + yn_max);
        if (sk) eps += c64 * (rawsq[i] + raw_max);
        certain = (amax - eps) / unit > ref[k - 1].first * (1.0 + 1e-12) + 1e-300;
      }
      if (certain && sk && k < static_cast<std::int64_t>(ref.size()) && ref[k].first == ref[k - 1].first)
        certain = false;  // a tie at the k-th neighbour: sklearn's heap decides which ones stay
      if (!certain) {
        full_row(i);
        continue;
      }
      for (std::int64_t a = 0; a < k; ++a) {
        out_idx[i * k + a] = ref[a].second;
        out_key[i * k + a] = ref[a].first;
      }
    }
  });
}

}  // namespace detail

const char* knn_metric_name(KnnMetric m) { return m == KnnMetric::Cosine ? "cosine" : "euclidean"; }

KnnMetric knn_metric_from_name(const std::string& name) {
  if (name == "euclidean") return KnnMetric::Euclidean;
  if (name == "cosine") return KnnMetric::Cosine;
  throw Error(ErrorKind::Value, "metric: expected 'euclidean' or 'cosine', got '" + name + "'");
}

void knn_graph(const TensorView& features, std::int64_t k, const TensorView& indices, const TensorView& distances,
               KnnMetric metric) {
  const detail::KnnData data = detail::knn_load(features, "features");
  const std::int64_t N = data.N;
  check(N >= 2, ErrorKind::Value, "features: a kNN graph needs at least 2 rows, got shape ", features.shape_str());
  check(k >= 1 && k < N, ErrorKind::Value, "k: expected 1 <= k < N = ", N,
        " (the point itself is not its own neighbour), got ", k);
  auto check_out = [&](const TensorView& v, const char* what) {
    check(v.device.is_cpu(), ErrorKind::Type, what, ": is on ", v.device.str(), "; expected a CPU array");
    check(v.ndim == 2 && v.shape[0] == N && v.shape[1] == k, ErrorKind::Value, what, ": expected shape [", N, ", ",
          k, "], got ", v.shape_str());
    check(v.data != nullptr, ErrorKind::Value, what, ": data pointer is null");
  };
  check_out(indices, "indices");
  check(indices.dtype == DType::Int64, ErrorKind::Type, "indices: expected dtype int64, got ",
        dtype_name(indices.dtype));
  check_out(distances, "distances");
  check(distances.dtype == DType::Float32 || distances.dtype == DType::Float64, ErrorKind::Type,
        "distances: expected dtype float32 or float64, got ", dtype_name(distances.dtype));
  std::vector<std::int64_t> idx(static_cast<std::size_t>(N * k));
  std::vector<double> key(static_cast<std::size_t>(N * k));
  detail::knn_search(data, k, metric, detail::KnnRule::Exact, 0, idx.data(), key.data());
  auto* I = static_cast<std::int64_t*>(indices.data);
  for (std::int64_t i = 0; i < N; ++i)
    for (std::int64_t a = 0; a < k; ++a) {
      const double kv = key[i * k + a];
      const double d = metric == KnnMetric::Euclidean ? std::sqrt(kv) : kv;
      I[i * indices.strides[0] + a * indices.strides[1]] = idx[i * k + a];
      const std::int64_t off = i * distances.strides[0] + a * distances.strides[1];
      if (distances.dtype == DType::Float64) static_cast<double*>(distances.data)[off] = d;
      else static_cast<float*>(distances.data)[off] = static_cast<float>(d);
    }
}

}  // namespace labelwise
