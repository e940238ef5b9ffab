// CUDA == CPU for the exact kNN graph (src/cuda/knn_cuda.cu): the same indices, distances within 1e-12
// relative (both are the float64 brute force; the exact keys are summed in the same order), the same
// errors. Random, clustered, duplicated and tied data; both metrics; float32 / float64 features and
// distances; k in {1, 10, 40}; N not a multiple of the query block (8192) or the GEMM chunk (4096); a
// strided view; rows the certificate rejects (duplicates) and data too large for the float32 bound
// (every row by the exact fallback). Tagged [cuda]: CPU-only CI excludes it; bench/gpu_check.sh runs
// it on a GPU machine.
#include <catch2/catch.hpp>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.cuh"
#include "labelwise/propagation/knn.hpp"

using namespace labelwise;
using lw_test::DeviceArray;

namespace {

template <typename T>
std::vector<T> normal(std::mt19937_64& g, std::size_t n, double scale = 1.0, double shift = 0.0) {
  std::normal_distribution<double> nd;
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(shift + scale * nd(g));
  return v;
}

/// Tight clusters far from the origin (the float32 candidates are coarse there; the refinement and
/// the certificate must still give the exact answer).
template <typename T>
std::vector<T> clustered(std::mt19937_64& g, std::int64_t n, std::int64_t d) {
  std::normal_distribution<double> nd;
  const std::int64_t C = 7;
  std::vector<double> centres(static_cast<std::size_t>(C * d));
  for (auto& c : centres) c = 1000.0 + 50.0 * nd(g);
  std::vector<T> v(static_cast<std::size_t>(n * d));
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t c = static_cast<std::int64_t>(g() % C);
    for (std::int64_t t = 0; t < d; ++t) v[i * d + t] = static_cast<T>(centres[c * d + t] + 1e-3 * nd(g));
  }
  return v;
}

/// Small integer coordinates with repeated rows: many equal distances (ties by the lower index).
template <typename T>
std::vector<T> ties(std::mt19937_64& g, std::int64_t n, std::int64_t d) {
  std::vector<T> v(static_cast<std::size_t>(n * d));
  for (auto& x : v) x = static_cast<T>(static_cast<int>(g() % 3) - 1);
  for (std::int64_t i = 1; i < n; i += 5)  // every fifth row a copy of an earlier one
    for (std::int64_t t = 0; t < d; ++t) v[i * d + t] = v[(i / 2) * d + t];
  // no all-zero row (cosine): a row whose first two coordinates are 0 gets 2 in the first (copies stay copies)
  for (std::int64_t i = 0; i < n; ++i)
    if (v[i * d] == T(0) && v[i * d + (d > 1 ? 1 : 0)] == T(0)) v[i * d] = T(2);
  return v;
}

/// knn_graph on the CPU and on cuda:0 (features [n, d] of T, distances of dtype DT); equal results.
template <typename T, typename DT = double>
void cpu_vs_cuda(const std::vector<T>& x, std::int64_t n, std::int64_t d, std::int64_t k, DistanceMetric metric,
                 bool transposed = false) {
  INFO("N = " << n << ", D = " << d << ", k = " << k << ", metric = " << distance_metric_name(metric)
              << ", features " << (sizeof(T) == 8 ? "float64" : "float32") << ", distances "
              << (sizeof(DT) == 8 ? "float64" : "float32") << (transposed ? ", transposed view" : ""));
  // transposed: x holds the [D, N] matrix, viewed as [N, D] with strides (1, N)
  const std::vector<std::int64_t> st = transposed ? std::vector<std::int64_t>{1, n} : std::vector<std::int64_t>{d, 1};
  std::vector<std::int64_t> ci(static_cast<std::size_t>(n * k));
  std::vector<DT> cd(static_cast<std::size_t>(n * k));
  std::vector<T> xc = x;
  knn_graph(TensorView::of(xc.data(), {n, d}, st), k, TensorView::of(ci.data(), {n, k}),
            TensorView::of(cd.data(), {n, k}), metric);
  DeviceArray<T> dx(x);
  DeviceArray<std::int64_t> di(static_cast<std::size_t>(n * k));
  DeviceArray<DT> dd(static_cast<std::size_t>(n * k));
  const TensorView fv(dx.ptr, dtype_of<T>::value, {n, d}, st, Device::cuda(0));
  knn_graph(fv, k, di.view({n, k}), dd.view({n, k}), metric);
  const std::vector<std::int64_t> gi = di.host();
  const std::vector<DT> gd = dd.host();
  std::int64_t bad_i = 0, bad_d = 0;
  for (std::size_t e = 0; e < ci.size(); ++e) {
    if (gi[e] != ci[e]) ++bad_i;
    const double a = static_cast<double>(gd[e]), b = static_cast<double>(cd[e]);
    if (!(std::fabs(a - b) <= 1e-12 * std::fabs(b) + 1e-300)) ++bad_d;
  }
  CHECK(bad_i == 0);
  CHECK(bad_d == 0);
}

}  // namespace

TEST_CASE("knn_graph on CUDA equals the CPU: random data", "[cuda][propagation][knn]") {
  std::mt19937_64 g(lw_test::fresh_seed());
  for (const DistanceMetric metric : {DistanceMetric::Euclidean, DistanceMetric::Cosine}) {
    for (const std::int64_t k : {1, 10, 40}) {
      // 9001 rows: two query blocks (8192 + 809) and three GEMM chunks (4096 + 4096 + 809)
      const std::int64_t n = 9001, d = 24;
      cpu_vs_cuda(normal<float>(g, static_cast<std::size_t>(n * d)), n, d, k, metric);
      cpu_vs_cuda(normal<double>(g, static_cast<std::size_t>(n * d), 3.0, 5.0), n, d, k, metric);
    }
    // small: m = N - 1 (every row a candidate), D = 1, float32 distances
    cpu_vs_cuda<double, float>(normal<double>(g, 20 * 5), 20, 5, 10, metric);
    cpu_vs_cuda<float, float>(normal<float>(g, 333 * 1), 333, 1, 10, metric);
    cpu_vs_cuda(normal<double>(g, 2 * 3), 2, 3, 1, metric);
    // k above 512: candidate lists longer than 1024, the exact per-row path instead
    cpu_vs_cuda(normal<float>(g, 2500 * 7), 2500, 7, 1200, metric);
  }
}

TEST_CASE("knn_graph on CUDA equals the CPU: clustered data, strided view", "[cuda][propagation][knn]") {
  std::mt19937_64 g(lw_test::fresh_seed());
  for (const DistanceMetric metric : {DistanceMetric::Euclidean, DistanceMetric::Cosine}) {
    for (const std::int64_t k : {1, 10, 40}) {
      cpu_vs_cuda(clustered<double>(g, 5000, 33), 5000, 33, k, metric);
      cpu_vs_cuda<float, float>(clustered<float>(g, 4097, 8), 4097, 8, k, metric);
    }
    cpu_vs_cuda(normal<double>(g, 1500 * 12), 1500, 12, 10, metric, /*transposed=*/true);
  }
}

TEST_CASE("knn_graph on CUDA equals the CPU: duplicates and ties", "[cuda][propagation][knn]") {
  std::mt19937_64 g(lw_test::fresh_seed());
  for (const DistanceMetric metric : {DistanceMetric::Euclidean, DistanceMetric::Cosine}) {
    for (const std::int64_t k : {1, 10, 40}) {
      cpu_vs_cuda(ties<double>(g, 3001, 4), 3001, 4, k, metric);
      cpu_vs_cuda(ties<float>(g, 777, 2), 777, 2, k, metric);
    }
    // every row the same point but a few: no row can be certified, all by the exact fallback
    std::vector<double> same(300 * 3, 1.5);
    for (std::int64_t i = 0; i < 300; i += 37) same[i * 3 + 1] = 2.5;
    cpu_vs_cuda(same, 300, 3, 10, metric);
  }
}

TEST_CASE("knn_graph on CUDA equals the CPU: values too large for the float32 bound", "[cuda][propagation][knn]") {
  std::mt19937_64 g(lw_test::fresh_seed());
  // ||y||^2 ~ 4e34 >= 1e30 (still finite in float32): every row by the exact float64 fallback
  cpu_vs_cuda(normal<double>(g, 600 * 4, 1e17), 600, 4, 10, DistanceMetric::Euclidean);
  cpu_vs_cuda(normal<float>(g, 600 * 4, 1e17), 600, 4, 1, DistanceMetric::Euclidean);
  // cosine rows are unit length in candidate space: the normal path, whatever the scale
  cpu_vs_cuda(normal<double>(g, 600 * 4, 1e20), 600, 4, 10, DistanceMetric::Cosine);
}

TEST_CASE("knn_graph on CUDA equals the CPU: features scaled by powers of two", "[cuda][propagation][knn]") {
  std::mt19937_64 g(lw_test::fresh_seed());
  // Beyond ~1e154 the squares overflow float64, below ~1e-154 the squared differences underflow: both
  // devices search the features scaled by the same power of two (knn_scaling) and scale the distances back.
  for (const double scale : {1e200, 1e-200, 1e25, 1e-25}) {
    INFO("scale " << scale);
    cpu_vs_cuda(normal<double>(g, 700 * 6, scale), 700, 6, 10, DistanceMetric::Euclidean);
    std::vector<double> cl = clustered<double>(g, 700, 6);
    for (double& v : cl) v *= scale;
    cpu_vs_cuda(cl, 700, 6, 5, DistanceMetric::Euclidean);
  }
  // cosine: each row by its own factor, rows of very different magnitudes
  std::vector<double> mixed = normal<double>(g, 900 * 5);
  for (std::int64_t i = 0; i < 900; ++i)
    for (std::int64_t t = 0; t < 5; ++t) mixed[i * 5 + t] *= (i % 3 == 0 ? 1e250 : (i % 3 == 1 ? 1e-250 : 1.0));
  cpu_vs_cuda(mixed, 900, 5, 10, DistanceMetric::Cosine);
  // euclidean: one tiny row among large ones is searched (it sits near the origin)
  std::vector<double> one_tiny = normal<double>(g, 400 * 3, 1e200);
  for (std::int64_t t = 0; t < 3; ++t) one_tiny[17 * 3 + t] *= 1e-300;
  cpu_vs_cuda(one_tiny, 400, 3, 4, DistanceMetric::Euclidean);
}

TEST_CASE("knn_graph on CUDA reports the CPU's errors", "[cuda][propagation][knn]") {
  const std::int64_t n = 50, d = 3, k = 4;
  std::vector<double> x(static_cast<std::size_t>(n * d));
  for (std::size_t e = 0; e < x.size(); ++e) x[e] = static_cast<double>(e % 11) - 5.0;
  std::vector<std::int64_t> hi(static_cast<std::size_t>(n * k));
  std::vector<double> hd(static_cast<std::size_t>(n * k));
  DeviceArray<std::int64_t> di(static_cast<std::size_t>(n * k));
  DeviceArray<double> dd(static_cast<std::size_t>(n * k));
  auto both = [&](const std::vector<double>& v, std::int64_t kk, DistanceMetric metric) {
    std::string cpu_msg = "(none)", cuda_msg = "(none)";
    std::vector<std::int64_t> hi2(static_cast<std::size_t>(n * std::max<std::int64_t>(kk, 1)));
    std::vector<double> hd2(hi2.size());
    std::vector<double> vc = v;
    try {
      knn_graph(TensorView::of(vc.data(), {n, d}), kk, TensorView::of(hi2.data(), {n, kk}),
                TensorView::of(hd2.data(), {n, kk}), metric);
    } catch (const Error& e) {
      cpu_msg = e.what();
    }
    DeviceArray<double> dv(v);
    DeviceArray<std::int64_t> di2(hi2.size());
    DeviceArray<double> dd2(hi2.size());
    try {
      knn_graph(dv.view({n, d}), kk, di2.view({n, kk}), dd2.view({n, kk}), metric);
    } catch (const Error& e) {
      cuda_msg = e.what();
    }
    CHECK(cuda_msg == cpu_msg);
    return cuda_msg;
  };
  std::vector<double> bad = x;
  bad[5 * d + 1] = std::numeric_limits<double>::quiet_NaN();
  bad[9 * d] = std::numeric_limits<double>::infinity();
  bad[30 * d + 2] = -std::numeric_limits<double>::infinity();
  CHECK_THAT(both(bad, k, DistanceMetric::Euclidean), Catch::Contains("row 5 contains NaN or Inf"));
  std::vector<double> zero = x;
  for (std::int64_t t = 0; t < d; ++t) zero[7 * d + t] = zero[12 * d + t] = 0.0;
  CHECK_THAT(both(zero, k, DistanceMetric::Cosine), Catch::Contains("row 7 is all zeros"));
  CHECK(both(zero, k, DistanceMetric::Euclidean) == "(none)");
  // two rows more than 2^480 below the largest: refused with the same message on both devices
  std::vector<double> span = x;
  for (std::int64_t t = 0; t < d; ++t) span[3 * d + t] = 1e200;
  for (std::int64_t t = 0; t < d; ++t) span[20 * d + t] *= 1e-200;
  for (std::int64_t t = 0; t < d; ++t) span[40 * d + t] *= 1e-210;
  CHECK_THAT(both(span, k, DistanceMetric::Euclidean), Catch::Contains("differ in magnitude by more than 2^480"));
  CHECK_THAT(both(x, 0, DistanceMetric::Euclidean),
             Catch::Contains("k: expected 1 <= k < N = 50 (the point itself is not its own neighbour), got 0"));
  CHECK_THAT(both(x, n, DistanceMetric::Euclidean),
             Catch::Contains("k: expected 1 <= k < N = 50 (the point itself is not its own neighbour), got 50"));

  DeviceArray<double> dx(x);
  // outputs on another device than the features
  REQUIRE_THROWS_WITH(knn_graph(dx.view({n, d}), k, TensorView::of(hi.data(), {n, k}), dd.view({n, k})),
                      Catch::Contains("indices: is on cpu"));
  REQUIRE_THROWS_WITH(knn_graph(dx.view({n, d}), k, di.view({n, k}), TensorView::of(hd.data(), {n, k})),
                      Catch::Contains("distances: is on cpu"));
  // shapes and dtypes
  REQUIRE_THROWS_WITH(knn_graph(dx.view({n * d}), k, di.view({n, k}), dd.view({n, k})),
                      Catch::Contains("features: expected rank 2 ([N, D]), got shape [150]"));
  REQUIRE_THROWS_WITH(knn_graph(dx.view({n, d}), k, di.view({n, k + 1}), dd.view({n, k})),
                      Catch::Contains("indices: expected shape [50, 4], got [50, 5]"));
  REQUIRE_THROWS_WITH(knn_graph(dx.view({n, d}), k, di.view({n, k}), dd.view({n - 1, k})),
                      Catch::Contains("distances: expected shape [50, 4], got [49, 4]"));
  REQUIRE_THROWS_WITH(knn_graph(dx.view({1, d}), 1, di.view({1, 1}), dd.view({1, 1})),
                      Catch::Contains("features: a kNN graph needs at least 2 rows, got shape [1, 3]"));
  REQUIRE_THROWS_WITH(knn_graph(dx.view({0, d}), 1, di.view({1, 1}), dd.view({1, 1})),
                      Catch::Contains("features: is empty (shape [0, 3])"));
  DeviceArray<std::int64_t> xi(static_cast<std::size_t>(n * d));
  REQUIRE_THROWS_WITH(knn_graph(xi.view({n, d}), k, di.view({n, k}), dd.view({n, k})),
                      Catch::Contains("expected dtype float32 or float64"));
}
