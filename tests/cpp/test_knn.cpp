// kNN graph against a naive float64 brute force (duplicates, cosine, strided float32 input, blocks
// larger than one GEMM block), label spreading / propagation invariants, and every bad input.
#include <catch2/catch.hpp>

#include "test_seed.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <tuple>
#include <utility>
#include <vector>

#include "labelwise/core/parallel.hpp"
#include "labelwise/propagation/knn.hpp"
#include "labelwise/propagation/spreading.hpp"

using namespace labelwise;

namespace {


/// Naive brute force: the point itself excluded, ties by the lower index.
void naive_knn(const std::vector<double>& x, std::int64_t N, std::int64_t D, std::int64_t k, bool cosine,
               std::vector<std::int64_t>& idx, std::vector<double>& dist) {
  idx.assign(N * k, 0);
  dist.assign(N * k, 0.0);
  for (std::int64_t i = 0; i < N; ++i) {
    std::vector<std::pair<double, std::int64_t>> all;
    for (std::int64_t j = 0; j < N; ++j) {
      if (j == i) continue;
      double d = 0.0;
      if (cosine) {
        double dot = 0, ni = 0, nj = 0;
        for (std::int64_t t = 0; t < D; ++t) {
          dot += x[i * D + t] * x[j * D + t];
          ni += x[i * D + t] * x[i * D + t];
          nj += x[j * D + t] * x[j * D + t];
        }
        d = std::min(2.0, std::max(0.0, 1.0 - dot / (std::sqrt(ni) * std::sqrt(nj))));
      } else {
        for (std::int64_t t = 0; t < D; ++t) d += (x[i * D + t] - x[j * D + t]) * (x[i * D + t] - x[j * D + t]);
        d = std::sqrt(d);
      }
      all.push_back({d, j});
    }
    std::sort(all.begin(), all.end());
    for (std::int64_t a = 0; a < k; ++a) {
      idx[i * k + a] = all[a].second;
      dist[i * k + a] = all[a].first;
    }
  }
}

}  // namespace

TEST_CASE("knn_graph equals a float64 brute force (duplicates, cosine, several blocks)", "[propagation][knn]") {
  std::mt19937_64 gen(fresh_seed());
  std::normal_distribution<double> normal;
  for (const auto& [N, D, k, cosine] : std::vector<std::tuple<std::int64_t, std::int64_t, std::int64_t, bool>>{
           {50, 3, 5, false}, {300, 8, 7, false}, {2300, 16, 10, false}, {300, 8, 7, true}, {600, 20, 12, true}}) {
    std::vector<double> x(N * D);
    for (auto& v : x) v = normal(gen) + 3.0;
    // duplicates: rows 1..5 copies of row 0, row N-1 copy of row 2
    for (std::int64_t r = 1; r <= 5; ++r)
      for (std::int64_t t = 0; t < D; ++t) x[r * D + t] = x[t];
    for (std::int64_t t = 0; t < D; ++t) x[(N - 1) * D + t] = x[2 * D + t];
    std::vector<std::int64_t> want_i, got_i(N * k);
    std::vector<double> want_d, got_d(N * k);
    naive_knn(x, N, D, k, cosine, want_i, want_d);
    knn_graph(TensorView::of(x.data(), {N, D}), k, TensorView::of(got_i.data(), {N, k}),
              TensorView::of(got_d.data(), {N, k}), cosine ? DistanceMetric::Cosine : DistanceMetric::Euclidean);
    for (std::int64_t e = 0; e < N * k; ++e) {
      INFO("N=" << N << " D=" << D << " k=" << k << " cosine=" << cosine << " entry " << e);
      REQUIRE(got_i[e] == want_i[e]);
      REQUIRE(got_d[e] == Approx(want_d[e]).epsilon(1e-9).margin(1e-12));
    }
    // float32, transposed storage (strides [1, N])
    std::vector<float> xt(N * D);
    for (std::int64_t i = 0; i < N; ++i)
      for (std::int64_t t = 0; t < D; ++t) xt[t * N + i] = static_cast<float>(x[i * D + t]);
    std::vector<double> x32(N * D);
    for (std::int64_t i = 0; i < N; ++i)
      for (std::int64_t t = 0; t < D; ++t) x32[i * D + t] = xt[t * N + i];
    naive_knn(x32, N, D, k, cosine, want_i, want_d);
    std::vector<float> got_f(N * k);
    knn_graph(TensorView::of(xt.data(), {N, D}, {1, N}), k, TensorView::of(got_i.data(), {N, k}),
              TensorView::of(got_f.data(), {N, k}), cosine ? DistanceMetric::Cosine : DistanceMetric::Euclidean);
    for (std::int64_t e = 0; e < N * k; ++e) {
      REQUIRE(got_i[e] == want_i[e]);
      REQUIRE(got_f[e] == Approx(want_d[e]).epsilon(1e-6).margin(1e-6));
    }
  }
}

TEST_CASE("knn_graph: tight clusters far from the mean, several blocks, k up to 40 (every fallback)",
          "[propagation][knn]") {
  // Cluster spreads from 1e-3 to 0.3 around centres of norm ~ 10: the bfloat16 pass (where the
  // processor has it) certifies some rows, the float32 pass more, the float64 rows the rest.
  std::mt19937_64 gen(fresh_seed());
  std::normal_distribution<double> normal;
  const std::int64_t N = 2600, D = 24;
  for (const double spread : {1e-3, 0.03, 0.3}) {
    std::vector<double> x(N * D), cen(5 * D);
    for (auto& v : cen) v = 2.0 * normal(gen);
    for (std::int64_t i = 0; i < N; ++i)
      for (std::int64_t t = 0; t < D; ++t) x[i * D + t] = cen[(i % 5) * D + t] + spread * normal(gen);
    for (const std::int64_t k : {std::int64_t{10}, std::int64_t{40}}) {
      for (const bool cosine : {false, true}) {
        std::vector<std::int64_t> want_i, got_i(N * k);
        std::vector<double> want_d, got_d(N * k);
        naive_knn(x, N, D, k, cosine, want_i, want_d);
        knn_graph(TensorView::of(x.data(), {N, D}), k, TensorView::of(got_i.data(), {N, k}),
                  TensorView::of(got_d.data(), {N, k}), cosine ? DistanceMetric::Cosine : DistanceMetric::Euclidean);
        for (std::int64_t e = 0; e < N * k; ++e) {
          INFO("spread " << spread << " k=" << k << " cosine=" << cosine << " entry " << e);
          REQUIRE(got_i[e] == want_i[e]);
          REQUIRE(got_d[e] == Approx(want_d[e]).epsilon(1e-9).margin(1e-12));
        }
      }
    }
  }
}

TEST_CASE("knn_graph: many exact duplicates fall back to the exact path", "[propagation][knn]") {
  const std::int64_t N = 400, D = 4, k = 30;
  std::vector<double> x(N * D);
  for (std::int64_t i = 0; i < N; ++i)
    for (std::int64_t t = 0; t < D; ++t) x[i * D + t] = static_cast<double>((i % 7) * (t + 1));  // 7 points, ~57 copies
  std::vector<std::int64_t> want_i, got_i(N * k);
  std::vector<double> want_d, got_d(N * k);
  naive_knn(x, N, D, k, false, want_i, want_d);
  knn_graph(TensorView::of(x.data(), {N, D}), k, TensorView::of(got_i.data(), {N, k}),
            TensorView::of(got_d.data(), {N, k}));
  REQUIRE(got_i == want_i);
  REQUIRE(got_d == want_d);
}

TEST_CASE("knn_graph with CUDA input in a CPU-only build says so", "[propagation][knn]") {
  if (built_with_cuda()) return;  // the CUDA path: tests/cpp/test_knn_cuda.cu
  // never dereferenced: the CPU-only build stops at the stub
  std::vector<double> fake(60), fake_d(60);
  std::vector<std::int64_t> fake_i(60);
  const TensorView f(fake.data(), DType::Float64, {20, 3}, Device::cuda(0));
  const TensorView I(fake_i.data(), DType::Int64, {20, 3}, Device::cuda(0));
  const TensorView Dd(fake_d.data(), DType::Float64, {20, 3}, Device::cuda(0));
  REQUIRE_THROWS_WITH(knn_graph(f, 3, I, Dd), Catch::Contains("features: is a CUDA tensor, but labelwise was built without CUDA"));
}

TEST_CASE("knn_graph and label_spreading reject bad input", "[propagation][knn]") {
  std::vector<double> x(20 * 3, 1.0);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<double>(i % 11);
  std::vector<std::int64_t> I(20 * 3);
  std::vector<double> Dd(20 * 3);
  const auto X = TensorView::of(x.data(), {20, 3});
  auto run = [&](std::int64_t k) {
    knn_graph(X, k, TensorView::of(I.data(), {20, k}), TensorView::of(Dd.data(), {20, k}));
  };
  REQUIRE_NOTHROW(run(3));
  REQUIRE_THROWS_WITH(run(0),
                      Catch::Contains("k: expected 1 <= k < N = 20 (the point itself is not its own neighbour), got 0"));
  REQUIRE_THROWS_WITH(run(20),
                      Catch::Contains("k: expected 1 <= k < N = 20 (the point itself is not its own neighbour), got 20"));
  REQUIRE_THROWS_WITH(knn_graph(X, -1, TensorView::of(I.data(), {20, 1}), TensorView::of(Dd.data(), {20, 1})),
                      Catch::Contains("k: expected 1 <= k < N = 20") && Catch::Contains("got -1"));
  {
    std::vector<std::int64_t> I19(20 * 19);
    std::vector<double> D19(20 * 19);
    REQUIRE_NOTHROW(knn_graph(X, 19, TensorView::of(I19.data(), {20, 19}),  // k = N - 1: every other point
                              TensorView::of(D19.data(), {20, 19})));
  }
  std::vector<double> bad = x;
  bad[7] = std::numeric_limits<double>::quiet_NaN();
  REQUIRE_THROWS_WITH(knn_graph(TensorView::of(bad.data(), {20, 3}), 3, TensorView::of(I.data(), {20, 3}),
                                TensorView::of(Dd.data(), {20, 3})),
                      Catch::Contains("features: row 2 contains NaN or Inf"));
  REQUIRE_THROWS_WITH(knn_graph(TensorView::of(x.data(), {60}), 3, TensorView::of(I.data(), {20, 3}),
                                TensorView::of(Dd.data(), {20, 3})),
                      Catch::Contains("features: expected rank 2 ([N, D]), got shape [60]"));
  REQUIRE_THROWS_WITH(knn_graph(TensorView::of(x.data(), {0, 3}), 3, TensorView::of(I.data(), {20, 3}),
                                TensorView::of(Dd.data(), {20, 3})),
                      Catch::Contains("features: is empty (shape [0, 3])"));
  REQUIRE_THROWS_WITH(knn_graph(TensorView::of(x.data(), {20, 0}), 3, TensorView::of(I.data(), {20, 3}),
                                TensorView::of(Dd.data(), {20, 3})),
                      Catch::Contains("features: is empty (shape [20, 0])"));
  REQUIRE_THROWS_WITH(knn_graph(TensorView::of(x.data(), {1, 3}), 1, TensorView::of(I.data(), {1, 1}),
                                TensorView::of(Dd.data(), {1, 1})),
                      Catch::Contains("features: a kNN graph needs at least 2 rows, got shape [1, 3]"));
  REQUIRE_THROWS_WITH(knn_graph(X, 3, TensorView::of(I.data(), {20, 4}), TensorView::of(Dd.data(), {20, 3})),
                      Catch::Contains("indices: expected shape [20, 3], got [20, 4]"));
  REQUIRE_THROWS_WITH(knn_graph(X, 3, TensorView::of(I.data(), {20, 3}), TensorView::of(Dd.data(), {19, 3})),
                      Catch::Contains("distances: expected shape [20, 3], got [19, 3]"));
  REQUIRE_THROWS_WITH(knn_graph(X, 3, TensorView::of(Dd.data(), {20, 3}), TensorView::of(Dd.data(), {20, 3})),
                      Catch::Contains("indices: expected dtype int64, got float64"));

  std::vector<std::int64_t> y(20, -1), out(20);
  std::vector<double> P(20 * 2);
  y[0] = 0;
  y[5] = 1;
  SpreadingOptions o;
  o.k = 3;
  auto spread = [&](const std::vector<std::int64_t>& lab, std::int64_t C) {
    label_spreading(X, TensorView::of(lab.data(), {20}), TensorView::of(P.data(), {20, C}),
                    TensorView::of(out.data(), {20}), o);
  };
  REQUIRE_NOTHROW(spread(y, 2));
  REQUIRE(spreading_num_classes(TensorView::of(y.data(), {20})) == 2);
  std::vector<std::int64_t> none(20, -1);
  REQUIRE_THROWS_WITH(spread(none, 2), Catch::Contains("no labelled item"));
  std::vector<std::int64_t> gap = y;
  gap[5] = 2;  // class 1 has no item
  REQUIRE_THROWS_WITH(spreading_num_classes(TensorView::of(gap.data(), {20})), Catch::Contains("class 1"));
  std::vector<std::int64_t> low = y;
  low[3] = -2;
  REQUIRE_THROWS_WITH(spread(low, 2), Catch::Contains("entry 3"));
  o.alpha = 1.0;
  REQUIRE_THROWS_WITH(spread(y, 2), Catch::Contains("alpha"));
  o.alpha = 0.2;
  o.k = 20;
  REQUIRE_THROWS_WITH(spread(y, 2), Catch::Contains("k:"));
}

TEST_CASE("label spreading / propagation: labels reach their clusters; symmetric marks unreached items",
          "[propagation][knn]") {
  // two well separated clusters of 30 points on a line each, one label per cluster
  const std::int64_t N = 60, D = 2;
  std::vector<double> x(N * D);
  for (std::int64_t i = 0; i < N; ++i) {
    x[i * D] = (i < 30 ? 0.0 : 1000.0) + static_cast<double>(i % 30);
    x[i * D + 1] = 0.5 * static_cast<double>(i % 3);
  }
  std::vector<std::int64_t> y(N, -1), out(N);
  y[3] = 1;
  y[40] = 0;
  std::vector<double> P(N * 2);
  for (const SpreadingVariant v : {SpreadingVariant::Symmetric, SpreadingVariant::Sklearn}) {
    for (int prop = 0; prop < 2; ++prop) {
      SpreadingOptions o;
      o.k = 5;
      o.variant = v;
      o.max_iter = prop ? 1000 : 200;
      o.alpha = 0.9;  // reach the far end of each cluster (alpha = 0.2 stops after a few hops)
      o.tol = 0.0;
      const auto r = prop ? label_propagation(TensorView::of(x.data(), {N, D}), TensorView::of(y.data(), {N}),
                                              TensorView::of(P.data(), {N, 2}), TensorView::of(out.data(), {N}), o)
                          : label_spreading(TensorView::of(x.data(), {N, D}), TensorView::of(y.data(), {N}),
                                            TensorView::of(P.data(), {N, 2}), TensorView::of(out.data(), {N}), o);
      REQUIRE(r.n_classes == 2);
      for (std::int64_t i = 0; i < N; ++i) {
        INFO("variant " << spreading_variant_name(v) << " prop " << prop << " item " << i);
        REQUIRE(out[i] == (i < 30 ? 1 : 0));
        REQUIRE(P[i * 2] + P[i * 2 + 1] == Approx(1.0));
      }
    }
  }
  // a third cluster without any label: symmetric gives -1 and zeros, sklearn label 0
  std::vector<double> x3(90 * D);
  std::copy(x.begin(), x.end(), x3.begin());
  for (std::int64_t i = 60; i < 90; ++i) {
    x3[i * D] = 5000.0 + static_cast<double>(i % 30);
    x3[i * D + 1] = 0.0;
  }
  std::vector<std::int64_t> y3(90, -1), out3(90);
  y3[3] = 1;
  y3[40] = 0;
  std::vector<double> P3(90 * 2);
  SpreadingOptions o;
  o.k = 5;
  label_spreading(TensorView::of(x3.data(), {90, D}), TensorView::of(y3.data(), {90}), TensorView::of(P3.data(), {90, 2}),
                  TensorView::of(out3.data(), {90}), o);
  for (std::int64_t i = 60; i < 90; ++i) {
    REQUIRE(out3[i] == -1);
    REQUIRE(P3[i * 2] == 0.0);
    REQUIRE(P3[i * 2 + 1] == 0.0);
  }
}

TEST_CASE("symmetric spreading: every item a label reaches gets mass, unless it underflows on the way",
          "[propagation][knn]") {
  // A chain labelled at both ends. Mass h hops out is about (alpha x edge weight)^h: the change per step
  // falls below tol after a few hops, but the loop keeps going until every reachable item has mass
  // (300 points); on a 3000-point chain with k = 2 the mass underflows float64 ~160 hops out, and the
  // loop stops once no new item is reached for 3 steps instead of running max_iter = 100000 steps.
  for (const std::int64_t N : {std::int64_t(300), std::int64_t(3000)}) {
    std::vector<double> x(static_cast<std::size_t>(N));
    for (std::int64_t i = 0; i < N; ++i) x[i] = static_cast<double>(i);
    std::vector<std::int64_t> y(static_cast<std::size_t>(N), -1), out(static_cast<std::size_t>(N));
    y[0] = 0;
    y[N - 1] = 1;
    std::vector<double> P(static_cast<std::size_t>(N * 2));
    SpreadingOptions o;
    o.k = N == 300 ? 7 : 2;
    o.max_iter = 100000;
    const auto r = label_spreading(TensorView::of(x.data(), {N, 1}), TensorView::of(y.data(), {N}),
                                   TensorView::of(P.data(), {N, 2}), TensorView::of(out.data(), {N}), o);
    INFO("N " << N << " n_iter " << r.n_iter << " unreached " << r.unreached);
    std::int64_t minus = 0;
    for (const std::int64_t v : out) minus += v == -1;
    CHECK(minus == r.unreached);
    if (N == 300) {
      CHECK(r.converged);
      CHECK(r.unreached == 0);
    } else {
      CHECK(!r.converged);
      CHECK(r.unreached > 1000);
      CHECK(r.n_iter < 2000);
      CHECK(out[10] == 0);
      CHECK(out[N - 11] == 1);
    }
  }
}

TEST_CASE("max_iter = 0 is each function's own default: 30 for spreading, 1000 for propagation (sklearn's)",
          "[propagation][knn]") {
  std::mt19937_64 g(fresh_seed());
  std::normal_distribution<double> nd;
  const std::int64_t N = 60, D = 3;
  std::vector<double> x(N * D);
  for (double& v : x) v = nd(g);
  std::vector<std::int64_t> y(N, -1), out(N);
  y[0] = 0;
  y[1] = 1;
  std::vector<double> P(N * 2);
  for (const SpreadingVariant v : {SpreadingVariant::Symmetric, SpreadingVariant::Sklearn}) {
    SpreadingOptions o;  // max_iter = 0
    o.k = 4;
    o.variant = v;
    o.tol = 0.0;  // never converged: the loop runs max_iter steps
    const auto views = [&] {
      return std::make_tuple(TensorView::of(x.data(), {N, D}), TensorView::of(y.data(), {N}),
                             TensorView::of(P.data(), {N, 2}), TensorView::of(out.data(), {N}));
    };
    auto [f, l, d, o2] = views();
    INFO("variant " << spreading_variant_name(v));
    CHECK(label_spreading(f, l, d, o2, o).n_iter == 30);
    CHECK(label_propagation(f, l, d, o2, o).n_iter == 1000);
    o.max_iter = 7;
    CHECK(label_propagation(f, l, d, o2, o).n_iter == 7);
    o.max_iter = -1;
    REQUIRE_THROWS_WITH(label_spreading(f, l, d, o2, o), Catch::Contains("max_iter: expected >= 1 (or 0: the default), got -1"));
  }
}
