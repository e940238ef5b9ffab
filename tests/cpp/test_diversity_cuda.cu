// CUDA == CPU for core-set (k-center greedy), BADGE, weighted k-means and cluster-margin on fresh
// random pools: the same picks, radii within 1e-9 relative (row sums run in another order on the
// device), the same errors.
// Tagged [cuda]: CPU-only CI excludes it; bench/gpu_check.sh runs it on a GPU machine.
#include <catch2/catch.hpp>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "labelwise/acquisition/diversity.hpp"
#include "cuda_test_util.cuh"

using namespace labelwise;
using lw_test::DeviceArray;

namespace {



template <typename T>
std::vector<T> normal(std::mt19937_64& g, std::size_t n) {
  std::normal_distribution<double> nd;
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(nd(g));
  return v;
}

template <typename T>
void coreset_cpu_vs_cuda(std::mt19937_64& g, std::int64_t n, std::int64_t d, std::int64_t b, DistanceMetric metric,
                         bool labelled) {
  const std::vector<T> x = normal<T>(g, static_cast<std::size_t>(n * d));
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(n), 0);
  if (labelled)
    for (std::int64_t i = 0; i < n; i += 97) mask[i] = 1;
  std::vector<std::int64_t> ci(b);
  std::vector<double> cr(b);
  const TensorView lab_host = labelled ? TensorView::of(mask.data(), {n}) : TensorView();
  coreset(TensorView::of(x.data(), {n, d}), lab_host, b, TensorView::of(ci.data(), {b}), TensorView::of(cr.data(), {b}),
          {metric});
  DeviceArray<T> dx(x);
  DeviceArray<std::uint8_t> dmask(mask);
  DeviceArray<std::int64_t> di(static_cast<std::size_t>(b));
  DeviceArray<double> dr(static_cast<std::size_t>(b));
  // labelled: once as a device mask, once as a host mask
  for (int where = 0; where < (labelled ? 2 : 1); ++where) {
    const TensorView lab = !labelled ? TensorView() : where == 0 ? dmask.view({n}) : lab_host;
    coreset(dx.view({n, d}), lab, b, di.view({b}), dr.view({b}), {metric});
    CHECK(di.host() == ci);
    const std::vector<double> gr = dr.host();
    for (std::int64_t t = 0; t < b; ++t) CHECK(gr[t] == Approx(cr[t]).epsilon(1e-9).margin(1e-12));
  }
}

}  // namespace

TEST_CASE("coreset on CUDA equals the CPU", "[cuda][diversity][coreset]") {
  std::mt19937_64 g(lw_test::fresh_seed());
  for (auto metric : {DistanceMetric::Euclidean, DistanceMetric::Cosine})
    for (bool labelled : {false, true}) {
      coreset_cpu_vs_cuda<float>(g, 3001, 37, 25, metric, labelled);
      coreset_cpu_vs_cuda<double>(g, 20000, 64, 40, metric, labelled);
    }
}

TEST_CASE("badge on CUDA equals the CPU", "[cuda][diversity][badge]") {
  std::mt19937_64 g(lw_test::fresh_seed());
  const std::uint64_t seed = lw_test::fresh_seed();
  for (std::int64_t n : {777, 5000}) {
    const std::int64_t c = 7, d = 48, b = 30;
    std::vector<double> logits = normal<double>(g, static_cast<std::size_t>(n * c));
    for (std::int64_t i = 0; i < n; i += 11) logits[i * c] = 60.0;  // some (numerically) one-hot rows
    const std::vector<float> h = normal<float>(g, static_cast<std::size_t>(n * d));
    std::vector<std::int64_t> ci(b);
    badge(TensorView::of(logits.data(), {n, c}), TensorView::of(h.data(), {n, d}), b, TensorView::of(ci.data(), {b}),
          {InputKind::Logits, seed});
    DeviceArray<double> dl(logits);
    DeviceArray<float> dh(h);
    DeviceArray<std::int64_t> di(static_cast<std::size_t>(b));
    badge(dl.view({n, c}), dh.view({n, d}), b, di.view({b}), {InputKind::Logits, seed});
    CHECK(di.host() == ci);
    // probabilities and log-probabilities, stored class-major ([C, N] read through a transposed view),
    // with the embeddings a strided view of a wider matrix
    std::vector<double> probs(static_cast<std::size_t>(n * c)), logp(probs.size());  // [C, N]
    for (std::int64_t i = 0; i < n; ++i) {
      double mx = -INFINITY, z = 0.0;
      for (std::int64_t k = 0; k < c; ++k) mx = std::max(mx, logits[i * c + k]);
      for (std::int64_t k = 0; k < c; ++k) z += std::exp(logits[i * c + k] - mx);
      for (std::int64_t k = 0; k < c; ++k) {
        probs[k * n + i] = std::exp(logits[i * c + k] - mx) / z;
        logp[k * n + i] = logits[i * c + k] - mx - std::log(z);
      }
    }
    std::vector<float> wide(static_cast<std::size_t>(n * 2 * d));  // embeddings in the odd columns
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t t = 0; t < d; ++t) wide[(i * d + t) * 2 + 1] = h[i * d + t];
    DeviceArray<float> dwide(wide);
    for (InputKind kind : {InputKind::Probabilities, InputKind::LogProbabilities}) {
      const std::vector<double>& v = kind == InputKind::Probabilities ? probs : logp;
      const TensorView hx(const_cast<double*>(v.data()), DType::Float64, {n, c}, {1, n});
      const TensorView he(wide.data() + 1, DType::Float32, {n, d}, {2 * d, 2});
      badge(hx, he, b, TensorView::of(ci.data(), {b}), {kind, seed});
      DeviceArray<double> dv(v);
      badge(TensorView(dv.ptr, DType::Float64, {n, c}, {1, n}, Device::cuda(0)),
            TensorView(dwide.ptr + 1, DType::Float32, {n, d}, {2 * d, 2}, Device::cuda(0)), b, di.view({b}),
            {kind, seed});
      INFO("input kind " << static_cast<int>(kind));
      CHECK(di.host() == ci);
    }
  }
}

TEST_CASE("coreset and badge on CUDA report the CPU's errors", "[cuda][diversity][errors]") {
  std::vector<double> x(40 * 3, 0.5);
  x[17 * 3 + 1] = std::numeric_limits<double>::quiet_NaN();
  x[30 * 3] = std::numeric_limits<double>::infinity();
  DeviceArray<double> dx(x);
  DeviceArray<std::int64_t> di(2);
  DeviceArray<double> dr(2);
  CHECK_THROWS_WITH(coreset(dx.view({40, 3}), TensorView(), 2, di.view({2}), dr.view({2})),
                    Catch::Contains("row [17] contains NaN or Inf"));
  std::vector<double> p(40 * 2, 0.5);
  p[5 * 2] = -0.1;
  p[5 * 2 + 1] = 1.1;
  DeviceArray<double> dp(p);
  CHECK_THROWS_WITH(badge(dp.view({40, 2}), dx.view({40, 3}), 2, di.view({2})),
                    Catch::Contains("row [5] has a negative probability"));
  p[5 * 2] = 0.5;
  p[5 * 2 + 1] = 0.5;
  DeviceArray<double> dp2(p);
  CHECK_THROWS_WITH(badge(dp2.view({40, 2}), dx.view({40, 3}), 2, di.view({2})),
                    Catch::Contains("embeddings: row [17] contains NaN or Inf"));
  std::vector<std::int64_t> host_out(2);
  CHECK_THROWS_WITH(badge(dp2.view({40, 2}), dx.view({40, 3}), 2, TensorView::of(host_out.data(), {2})),
                    Catch::Contains("indices: is on cpu"));
  std::vector<double> big(40 * 3, 0.5);
  big[9 * 3 + 2] = 1e200;
  DeviceArray<double> dbig(big);
  CHECK_THROWS_WITH(badge(dp2.view({40, 2}), dbig.view({40, 3}), 2, di.view({2})),
                    Catch::Contains("embeddings: row [9] is too large"));
}

TEST_CASE("weighted_kmeans on CUDA equals the CPU", "[cuda][diversity][weighted_kmeans]") {
  std::mt19937_64 g(lw_test::fresh_seed());
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (std::int64_t prefilter : {1, 3, 10}) {
    const std::int64_t n = 4000, d = 24, b = 40;
    const std::vector<float> x = normal<float>(g, static_cast<std::size_t>(n * d));
    std::vector<double> w(static_cast<std::size_t>(n));
    for (auto& v : w) v = u(g);
    for (std::int64_t i = 0; i < n; i += 50) w[i] = 0.5;  // ties between scores
    std::vector<std::int64_t> ci(b);
    weighted_kmeans(TensorView::of(x.data(), {n, d}), TensorView::of(w.data(), {n}), b,
                    TensorView::of(ci.data(), {b}), {prefilter});
    DeviceArray<float> dx(x);
    DeviceArray<double> dw(w);
    DeviceArray<std::int64_t> di(static_cast<std::size_t>(2 * b));
    // Output every other slot (stride 2), features read through strides ([n, d] as rows of 2·d, half used).
    const TensorView out(di.ptr, DType::Int64, {b}, {2}, Device::cuda(0));
    weighted_kmeans(dx.view({n, d}), dw.view({n}), b, out, {prefilter});
    const std::vector<std::int64_t> got = di.host();
    for (std::int64_t t = 0; t < b; ++t) CHECK(got[2 * t] == ci[t]);
    const TensorView half(dx.ptr, DType::Float32, {n / 2, d}, {2 * d, 1}, Device::cuda(0));
    std::vector<std::int64_t> ch(b);
    std::vector<float> xh(static_cast<std::size_t>(n / 2 * d));
    for (std::int64_t i = 0; i < n / 2; ++i) std::copy(&x[2 * i * d], &x[2 * i * d] + d, &xh[i * d]);
    weighted_kmeans(TensorView::of(xh.data(), {n / 2, d}), TensorView::of(w.data(), {n / 2}), b,
                    TensorView::of(ch.data(), {b}), {prefilter});
    weighted_kmeans(half, dw.view({n / 2}), b, di.view({b}), {prefilter});
    const std::vector<std::int64_t> got_half = di.host();
    CHECK(std::vector<std::int64_t>(got_half.begin(), got_half.begin() + b) == ch);
  }
  std::vector<double> bad(30 * 3, 0.25), w(30, 1.0);
  bad[12 * 3 + 2] = std::numeric_limits<double>::quiet_NaN();
  DeviceArray<double> dbad(bad), dw(w);
  DeviceArray<std::int64_t> di(3);
  CHECK_THROWS_WITH(weighted_kmeans(dbad.view({30, 3}), dw.view({30}), 3, di.view({3})),
                    Catch::Contains("features: row [12] contains NaN or Inf"));
  w[4] = -1.0;
  DeviceArray<double> dneg(w);
  CHECK_THROWS_WITH(weighted_kmeans(dbad.view({30, 3}), dneg.view({30}), 3, di.view({3})),
                    Catch::Contains("scores: [4] = -1 is negative"));
}

namespace {

/// Core-set (unlabelled and labelled), BADGE and weighted k-means on `feats` [n, d], CPU against CUDA:
/// the same picks, and radii within `radius_eps` relative (compared in units of 2^-exponent).
template <typename T>
void euclidean_cpu_vs_cuda(const std::vector<T>& feats, std::int64_t n, std::int64_t d, int exponent,
                           double radius_eps, std::mt19937_64& g) {
  const std::int64_t c = 5, b = 20;
  std::vector<double> logits = normal<double>(g, static_cast<std::size_t>(n * c));
  std::vector<double> w(static_cast<std::size_t>(n));
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (auto& v : w) v = u(g);
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(n), 0);
  for (std::int64_t i = 0; i < n; i += 29) mask[i] = 1;  // 69 labelled rows of 2000: two chunks of centres
  const TensorView hx = TensorView::of(feats.data(), {n, d});
  std::vector<std::int64_t> ci(b), bi(b), ki(b);
  std::vector<double> cr(b);
  DeviceArray<T> dx(feats);
  DeviceArray<double> dl(logits), dw(w);
  DeviceArray<std::uint8_t> dmask(mask);
  DeviceArray<std::int64_t> di(static_cast<std::size_t>(b));
  DeviceArray<double> dr(static_cast<std::size_t>(b));
  for (bool labelled : {false, true}) {
    INFO("core-set, labelled " << labelled);
    coreset(hx, labelled ? TensorView::of(mask.data(), {n}) : TensorView(), b, TensorView::of(ci.data(), {b}),
            TensorView::of(cr.data(), {b}));
    coreset(dx.view({n, d}), labelled ? dmask.view({n}) : TensorView(), b, di.view({b}), dr.view({b}));
    CHECK(di.host() == ci);
    const std::vector<double> gr = dr.host();
    for (std::int64_t t = 0; t < b; ++t) {
      REQUIRE(std::isfinite(cr[t]));
      CHECK(std::ldexp(gr[t], -exponent) == Approx(std::ldexp(cr[t], -exponent)).epsilon(radius_eps));
    }
  }
  badge(TensorView::of(logits.data(), {n, c}), hx, b, TensorView::of(bi.data(), {b}), {InputKind::Logits, 7});
  badge(dl.view({n, c}), dx.view({n, d}), b, di.view({b}), {InputKind::Logits, 7});
  CHECK(di.host() == bi);
  weighted_kmeans(hx, TensorView::of(w.data(), {n}), b, TensorView::of(ki.data(), {b}));
  weighted_kmeans(dx.view({n, d}), dw.view({n}), b, di.view({b}));
  CHECK(di.host() == ki);
}

}  // namespace

TEST_CASE("Euclidean picks on CUDA equal the CPU's on tiny features", "[cuda][diversity][scale]") {
  // Features below 2^-64 are read times a power of two on the device as on the CPU (where the Python
  // tests check that the picks are those of the unscaled values): the same picks, the same radii.
  // The pool is not centred (blobs along the first coordinate), so that core-set's first pick, the
  // row farthest from the mean, is not simply the longest row: a mean summed in the wrong unit shows.
  std::mt19937_64 g(lw_test::fresh_seed());
  const std::int64_t n = 2000, d = 16;
  std::vector<double> x = normal<double>(g, static_cast<std::size_t>(n * d));
  for (std::int64_t i = 0; i < n; ++i) {
    x[i * d] += 3.0 * static_cast<double>(i % 4);
    for (std::int64_t k = 0; k < d; ++k) x[i * d + k] += 1.0;
  }
  for (int exponent : {-600, -1060}) {  // 2^-1060: subnormal features
    INFO("float64 features times 2^" << exponent);
    std::vector<double> tiny(x);
    for (auto& v : tiny) v = std::ldexp(v, exponent);
    euclidean_cpu_vs_cuda(tiny, n, d, exponent, exponent < -1000 ? 1e-3 : 1e-9, g);
  }
  {
    // One row 2^430 above the others (2^-65 against ~2^-495; the documented headroom is ~2^447): the
    // shift follows the largest row, which leaves the others' squared differences (~2^-860) normal
    // numbers, so the two backends' sums differ in the last bits only. (A gap that would make a lost
    // maximum overflow, above 2^511, would leave those differences subnormal, a few bits each.) Every
    // row's distance to the far row rounds to the same value: the second pick is a tie, broken by the
    // lower index on both.
    INFO("one float64 row 2^430 above the others");
    std::vector<double> far(x);
    for (auto& v : far) v = std::ldexp(v, -495);
    for (std::int64_t k = 0; k < d; ++k) far[1234 * d + k] = std::ldexp(0.75, -65) * (k % 2 ? 1.0 : -1.0);
    euclidean_cpu_vs_cuda(far, n, d, -495, 1e-9, g);
  }
  {
    INFO("float32 features times 2^-100");  // the float fold feeds the shift too
    std::vector<float> tiny(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) tiny[i] = static_cast<float>(std::ldexp(x[i], -100));
    euclidean_cpu_vs_cuda(tiny, n, d, -100, 1e-9, g);
  }
}

TEST_CASE("badge on CUDA equals the CPU on embeddings near the norm bound", "[cuda][diversity][scale]") {
  // Embedding rows of squared norm ~2^1020 (the bound is 2^1021) are read times 2^-shift (badge_shift):
  // D² summed over the pool no longer reaches +inf, so the draw depends on the seed again. Before the
  // scaling every seed drew the same items; equal CPU and CUDA picks alone would not show that.
  std::mt19937_64 g(lw_test::fresh_seed());
  const std::int64_t n = 1500, c = 4, d = 16, b = 25;
  std::vector<double> h = normal<double>(g, static_cast<std::size_t>(n * d));
  for (std::int64_t i = 0; i < n; ++i) {
    double s = 0.0;
    for (std::int64_t k = 0; k < d; ++k) s += h[i * d + k] * h[i * d + k];
    const double f = std::ldexp(1.0, 510) / std::sqrt(s) * (0.5 + 0.5 * static_cast<double>(i % 3) / 2.0);
    for (std::int64_t k = 0; k < d; ++k) h[i * d + k] *= f;  // norm 2^510 · {0.5, 0.75, 1}
  }
  const std::vector<double> logits = normal<double>(g, static_cast<std::size_t>(n * c));
  DeviceArray<double> dh(h), dl(logits);
  DeviceArray<std::int64_t> di(static_cast<std::size_t>(b));
  std::vector<std::vector<std::int64_t>> per_seed;
  for (std::uint64_t seed : {3ull, 4ull}) {
    INFO("seed " << seed);
    std::vector<std::int64_t> ci(b);
    badge(TensorView::of(logits.data(), {n, c}), TensorView::of(h.data(), {n, d}), b, TensorView::of(ci.data(), {b}),
          {InputKind::Logits, seed});
    badge(dl.view({n, c}), dh.view({n, d}), b, di.view({b}), {InputKind::Logits, seed});
    CHECK(di.host() == ci);
    per_seed.push_back(ci);
  }
  CHECK(per_seed[0] != per_seed[1]);
}

TEST_CASE("cluster_margin on CUDA equals the CPU", "[cuda][diversity][cluster_margin]") {
  std::mt19937_64 g(lw_test::fresh_seed());
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::uniform_int_distribution<std::int64_t> cl(0, 11);
  const std::int64_t n = 3000, b = 50;
  std::vector<float> m(static_cast<std::size_t>(n));
  std::vector<std::int64_t> ids(static_cast<std::size_t>(n)), lab;
  for (std::int64_t i = 0; i < n; ++i) {
    m[i] = u(g);
    ids[i] = cl(g);
    if (i % 13 == 0) lab.push_back(i);
  }
  const std::int64_t nl = static_cast<std::int64_t>(lab.size());
  const std::uint64_t seed = lw_test::fresh_seed();
  std::vector<std::int64_t> ci(b);
  cluster_margin(TensorView::of(m.data(), {n}), TensorView::of(ids.data(), {n}), TensorView::of(lab.data(), {nl}), b,
                 TensorView::of(ci.data(), {b}), {0, seed});
  DeviceArray<float> dm(m);
  DeviceArray<std::int64_t> dids(ids), dlab(lab), di(static_cast<std::size_t>(3 * b));
  // labeled on the device and on the host; the output contiguous and with stride 3
  cluster_margin(dm.view({n}), dids.view({n}), dlab.view({nl}), b, di.view({b}), {0, seed});
  std::vector<std::int64_t> got = di.host();
  CHECK(std::vector<std::int64_t>(got.begin(), got.begin() + b) == ci);
  const TensorView strided(di.ptr, DType::Int64, {b}, {3}, Device::cuda(0));
  cluster_margin(dm.view({n}), dids.view({n}), TensorView::of(lab.data(), {nl}), b, strided, {0, seed});
  got = di.host();
  for (std::int64_t t = 0; t < b; ++t) CHECK(got[3 * t] == ci[t]);
}
