// Certified auto-labelling, the exact binomial tools and confident-learning label issues, against
// naive float64 references written from the definitions, on fresh random inputs.
#include <catch2/catch.hpp>

#include "reference.hpp"
#include "test_seed.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "labelwise/core/parallel.hpp"
#include "labelwise/propagation/binomial.hpp"
#include "labelwise/propagation/certified.hpp"
#include "labelwise/propagation/label_issues.hpp"
#include "labelwise/propagation/knn.hpp"
#include "labelwise/propagation/slices.hpp"
#include "labelwise/propagation/spreading.hpp"
#include "labelwise/uncertainty/metrics.hpp"
#include "../../src/propagation_backend.hpp"  // PoolGrid (not a public header)

using namespace labelwise;

namespace {


/// Naive reference of the scan: the candidate thresholds are the pool's distinct confidences,
/// descending; skip those with fewer than t = max(j0, min(2 j0, n / 2)) calibration units at or above
/// them; at the others,
/// Clopper–Pearson by bisection on the naive CDF; stop at the first bound above alpha.
struct RefScan {
  bool certified = false;
  double threshold = NAN;
  std::int64_t j = 0, k = 0;
};
RefScan ref_scan(const std::vector<std::pair<double, int>>& u, std::vector<double> pool, double alpha, double delta) {
  RefScan r;
  std::int64_t j0 = 1;
  while (std::pow(1.0 - alpha, static_cast<double>(j0)) > delta) ++j0;
  const std::int64_t n = static_cast<std::int64_t>(u.size());
  if (n < j0) return r;
  const std::int64_t t = std::max(j0, std::min(2 * j0, n / 2));  // the first test sees >= t units
  std::sort(pool.begin(), pool.end(), std::greater<double>());
  pool.erase(std::unique(pool.begin(), pool.end()), pool.end());
  for (const double lambda : pool) {
    std::int64_t J = 0, K = 0;
    for (const auto& [s, e] : u)
      if (s >= lambda) ++J, K += e;
    if (J < t) continue;
    // Clopper–Pearson upper bound by bisection: largest theta with P(Bin(J, theta) <= K) >= delta.
    double lo = 0.0, hi = 1.0;
    if (K == J) lo = 1.0;
    for (int it = 0; it < 200 && K < J; ++it) {
      const double mid = 0.5 * (lo + hi);
      (ref::binomial_cdf(static_cast<int>(K), static_cast<int>(J), mid) >= delta ? lo : hi) = mid;
    }
    if (lo > alpha) break;
    r.certified = true;
    r.threshold = lambda;
    r.j = J;
    r.k = K;
  }
  return r;
}

/// certified_auto_label on [N, C] pool / [M, C] calibration vectors, outputs into acc / lab ([N]).
template <typename T>
AutoLabelResult auto_label_items(std::vector<T>& pp, std::vector<T>& cp, std::vector<std::int64_t>& cy, std::int64_t M,
                                 std::int64_t C, std::vector<std::uint8_t>& acc, std::vector<std::int64_t>& lab,
                                 const CertifyOptions& o) {
  const std::int64_t N = static_cast<std::int64_t>(acc.size());
  return certified_auto_label(TensorView::of(pp.data(), {N, C}), TensorView::of(cp.data(), {M, C}),
                              TensorView::of(cy.data(), {M}), TensorView::of(acc.data(), {N}),
                              TensorView::of(lab.data(), {N}), o);
}

}  // namespace

TEST_CASE("regularized incomplete beta: closed forms, symmetry and the binomial CDF", "[propagation]") {
  for (double x : {0.0, 1e-12, 0.001, 0.2, 0.5, 0.77, 0.999, 1.0}) {
    CHECK(regularized_incomplete_beta(x, 1, 1) == Approx(x).margin(1e-15));
    CHECK(regularized_incomplete_beta(x, 3.5, 1) == Approx(std::pow(x, 3.5)).epsilon(1e-13).margin(1e-300));
    CHECK(regularized_incomplete_beta(x, 1, 7.25) == Approx(-std::expm1(7.25 * std::log1p(-x))).epsilon(1e-13));
  }
  std::mt19937_64 rng(fresh_seed());
  std::uniform_real_distribution<double> U(0.0, 1.0);
  for (int t = 0; t < 200; ++t) {
    const double a = std::exp(U(rng) * 12 - 4), b = std::exp(U(rng) * 12 - 4), x = U(rng);
    INFO("a " << a << " b " << b << " x " << x);
    const double I = regularized_incomplete_beta(x, a, b), J = regularized_incomplete_beta(1 - x, b, a);
    CHECK(I + J == Approx(1.0).margin(1e-12));
    CHECK(I >= 0.0);
    CHECK(I <= 1.0);
    if (I > 1e-6 && I < 1 - 1e-6) CHECK(beta_quantile(I, a, b) == Approx(x).epsilon(1e-9).margin(1e-12));
  }
  for (int n : {1, 2, 7, 30, 100, 400})
    for (int k = 0; k <= n; k += std::max(1, n / 9))
      for (double p : {0.001, 0.05, 0.3, 0.5, 0.93}) {
        INFO("k " << k << " n " << n << " p " << p);
        CHECK(binomial_cdf(k, n, p) == Approx(ref::binomial_cdf(k, n, p)).epsilon(1e-11).margin(1e-14));
      }
  CHECK(binomial_cdf(-1, 5, 0.5) == 0.0);
  CHECK(binomial_cdf(5, 5, 0.5) == 1.0);
  // Up to a + b = 2^50 the float64 evaluation holds (the mean of Binomial(n, 1/2) is its median up to
  // 1/(2 sqrt(2 pi n))); beyond it there is no correct digit, and an error instead.
  const std::int64_t big = std::int64_t(1) << 50;
  CHECK(binomial_cdf(big / 2, big, 0.5) == Approx(0.5).margin(1e-6));
  CHECK(clopper_pearson_upper(big / 10, big, 0.05) == Approx(0.1).epsilon(1e-6));
  CHECK_THROWS_WITH(binomial_cdf(big / 2, big + 1, 0.5), Catch::Contains("n: expected at most 2^50"));
  CHECK_THROWS_WITH(clopper_pearson_upper(1, big + 1, 0.5), Catch::Contains("n: expected at most 2^50"));
  CHECK_THROWS_WITH(regularized_incomplete_beta(0.5, 0.6 * big, 0.5 * big), Catch::Contains("a + b: expected at most 2^50"));
  CHECK_THROWS_WITH(beta_quantile(0.5, 1.0, 1.0 * big), Catch::Contains("a + b: expected at most 2^50"));
}

TEST_CASE("Clopper-Pearson upper bound and the smallest certifiable calibration size", "[propagation]") {
  for (std::int64_t n : {1, 10, 45, 1000, 1000000}) {
    CHECK(clopper_pearson_upper(0, n, 0.1) == Approx(1.0 - std::pow(0.1, 1.0 / n)).epsilon(1e-12));
    CHECK(clopper_pearson_upper(n, n, 0.1) == 1.0);
    for (std::int64_t k : {std::int64_t(1), n / 3, n / 2, n - 1}) {
      if (k <= 0 || k >= n) continue;
      const double u = clopper_pearson_upper(k, n, 0.1);
      INFO("k " << k << " n " << n << " bound " << u);
      CHECK(u > static_cast<double>(k) / n);
      CHECK(binomial_cdf(k, n, u) == Approx(0.1).epsilon(1e-9));
    }
  }
  // ln(0.1) / ln(0.95) = 44.9: 45 right answers certify 5 % at delta = 0.1, 44 do not.
  CHECK(min_certifiable_count(0.05, 0.1) == 45);
  CHECK(clopper_pearson_upper(0, 45, 0.1) <= 0.05);
  CHECK(clopper_pearson_upper(0, 44, 0.1) > 0.05);
  CHECK(min_certifiable_count(0.01, 0.05) == 299);
  CHECK_THROWS_WITH(clopper_pearson_upper(3, 2, 0.1), Catch::Contains("errors: expected 0 <= errors <= n"));
  CHECK_THROWS_WITH(min_certifiable_count(0.0, 0.1), Catch::Contains("target_error: expected a value in (0, 1)"));
  CHECK_THROWS_WITH(min_certifiable_count(0.1, 1.0), Catch::Contains("delta: expected a value in (0, 1)"));
  // an answer beyond the binomial tools' domain (2^50) is an error, not an n they would refuse
  CHECK_THROWS_WITH(min_certifiable_count(1e-17, 0.5), Catch::Contains("needs more than 2^50 calibration units"));
}

TEST_CASE("certify_threshold equals a naive scan on random calibration sets", "[propagation]") {
  const std::uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> U(0.0, 1.0);
  int certified = 0;
  for (int t = 0; t < 60; ++t) {
    const int n = 20 + static_cast<int>(U(rng) * 400), N = 1 + static_cast<int>(U(rng) * 300);
    const bool discrete = t % 3 == 0;  // ties
    auto score = [&] { return discrete ? std::floor(U(rng) * 8) / 8 : U(rng); };
    std::vector<double> s(n), pool(N);
    std::vector<std::uint8_t> e(n);
    std::vector<std::pair<double, int>> ref;
    for (int i = 0; i < n; ++i) {
      s[i] = score();
      e[i] = U(rng) < 0.3 * (1 - s[i]) * (1 - s[i]);
      ref.push_back({s[i], e[i]});
    }
    for (auto& v : pool) v = score();
    const double alpha = 0.03 + 0.1 * U(rng), delta = 0.02 + 0.2 * U(rng);
    const ThresholdCertificate c = certify_threshold(TensorView::of(s.data(), {n}), TensorView::of(e.data(), {n}),
                                                     TensorView::of(pool.data(), {N}), alpha, delta);
    const RefScan r = ref_scan(ref, pool, alpha, delta);
    INFO("n " << n << " alpha " << alpha << " delta " << delta << " reason " << c.reason);
    REQUIRE(c.certified == r.certified);
    CHECK(c.n_calibration == n);
    if (r.certified) {
      ++certified;
      CHECK(c.threshold == r.threshold);
      CHECK(c.n_calibration_accepted == r.j);
      CHECK(c.calibration_errors == r.k);
      CHECK(c.bound <= alpha);
      CHECK(c.reason.empty());
    } else {
      CHECK(std::isnan(c.threshold));
      CHECK(!c.reason.empty());
    }
  }
  CHECK(certified > 10);
}

TEST_CASE("the pool grid's interval equals std::partition_point over descending cuts with ties", "[propagation]") {
  // PoolGrid::interval counts the calibration cuts >= a pool score with a branch-free search; every
  // cut count from 0 to 70 (and 1000), cuts with repeated values, scores on, between and beyond them.
  std::mt19937_64 g(fresh_seed());
  std::uniform_int_distribution<int> level(0, 12);
  for (int n : [] {
         std::vector<int> v;
         for (int i = 0; i <= 70; ++i) v.push_back(i);
         v.push_back(1000);
         return v;
       }()) {
    labelwise::detail::PoolGrid grid;
    for (int i = 0; i < n; ++i) grid.cut.push_back(level(g) / 12.0);  // ties: 13 levels
    std::sort(grid.cut.begin(), grid.cut.end(), std::greater<double>());
    std::vector<double> probes{-1.0, 2.0, 0.0, 1.0, -0.0};
    for (int j = 0; j <= 24; ++j) probes.push_back(j / 24.0);  // on every level and between them
    std::uniform_real_distribution<double> u(-0.1, 1.1);
    for (int j = 0; j < 20; ++j) probes.push_back(u(g));
    for (double s : probes) {
      const std::int64_t want =
          std::partition_point(grid.cut.begin(), grid.cut.end(), [s](double c) { return c >= s; }) - grid.cut.begin();
      INFO("cuts " << n << ", score " << s);
      CHECK(grid.interval(s) == want);
    }
  }
}

TEST_CASE("certified_auto_label on classification: decisions follow the threshold", "[propagation]") {
  const std::uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> U(0.0, 1.0);
  const std::int64_t C = 3, M = 2000, N = 500;
  auto make = [&](std::int64_t n, std::vector<float>& p, std::vector<std::int64_t>& y) {
    p.resize(n * C);
    y.resize(n);
    for (std::int64_t i = 0; i < n; ++i) {
      const int cls = static_cast<int>(U(rng) * C);
      const double u = U(rng);
      const double conf = 1.0 - (1 - 1.0 / C) * u * u * u;  // mostly confident, like a trained network
      for (int c = 0; c < C; ++c) p[i * C + c] = static_cast<float>(c == cls ? conf : (1 - conf) / (C - 1));
      // calibrated model: the predicted class is right with probability conf
      y[i] = U(rng) < conf ? cls : (cls + 1 + static_cast<int>(U(rng) * (C - 1))) % C;
    }
  };
  std::vector<float> cp, pp;
  std::vector<std::int64_t> cy, py;
  make(M, cp, cy);
  make(N, pp, py);
  std::vector<std::uint8_t> acc(N, 7);
  std::vector<std::int64_t> lab(N, 99);
  CertifyOptions o;
  o.target_error = 0.05;
  o.delta = 0.1;
  const AutoLabelResult R = auto_label_items(pp, cp, cy, M, C, acc, lab, o);
  const ThresholdCertificate& c = R.certificate;
  REQUIRE(c.certified);
  CHECK(c.bound <= 0.05);
  CHECK(c.min_calibration == 45);
  std::int64_t n_acc = 0;
  for (std::int64_t i = 0; i < N; ++i) {
    float mx = 0;
    int arg = 0;
    for (int k = 0; k < C; ++k)
      if (pp[i * C + k] > mx) mx = pp[i * C + k], arg = k;
    const bool want = static_cast<double>(mx) >= c.threshold;
    CHECK(acc[i] == want);
    CHECK(lab[i] == (want ? arg : -1));
    n_acc += want;
  }
  CHECK(R.n_accepted == n_acc);
  CHECK(R.n_pool == N);
  CHECK(R.coverage == Approx(static_cast<double>(n_acc) / N));
  CHECK(R.coverage > 0.05);

  // Calibration too small: nothing accepted, a reason, no error.
  const AutoLabelResult S = auto_label_items(pp, cp, cy, 30, C, acc, lab, o);
  CHECK(!S.certificate.certified);
  CHECK(S.n_accepted == 0);
  CHECK(std::isnan(S.certificate.threshold));
  CHECK_THAT(S.certificate.reason, Catch::Contains("calibration set too small") && Catch::Contains("at least 45"));
  for (std::int64_t i = 0; i < N; ++i) {
    CHECK(acc[i] == 0);
    CHECK(lab[i] == -1);
  }
}

TEST_CASE("certified_auto_label per_class: one naive scan per predicted class at delta / C", "[propagation]") {
  const std::uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> U(0.0, 1.0);
  const std::int64_t C = 3, M = 4000, N = 1500;
  const double prior[C] = {0.7, 0.2, 0.1}, err_floor[C] = {0.0, 0.02, 0.1};
  // [n, C] float64 probabilities; per-class error floor, plus a rate growing below confidence 0.9
  // (none above it, so that class 0 always certifies)
  auto make = [&](std::int64_t n, std::vector<double>& p, std::vector<std::int64_t>& y) {
    p.resize(n * C);
    y.resize(n);
    for (std::int64_t i = 0; i < n; ++i) {
      const double u = U(rng);
      const int cls = u < prior[0] ? 0 : (u < prior[0] + prior[1] ? 1 : 2);
      const double conf = std::round((0.5 + 0.5 * U(rng)) * 64) / 64;  // ties
      for (int c = 0; c < C; ++c) p[i * C + c] = c == cls ? conf : (1 - conf) / (C - 1);
      const bool wrong = U(rng) < err_floor[cls] + (conf < 0.9 ? 0.5 * (0.9 - conf) : 0.0);
      y[i] = U(rng) < 0.1 ? -1 : (wrong ? (cls + 1) % C : cls);
    }
  };
  std::vector<double> cp, pp;
  std::vector<std::int64_t> cy, py;
  make(M, cp, cy);
  make(N, pp, py);
  std::vector<std::uint8_t> acc(N, 7);
  std::vector<std::int64_t> lab(N, 99);
  CertifyOptions o;
  o.target_error = 0.05;
  o.delta = 0.1;
  o.per_class = true;
  const AutoLabelResult R = auto_label_items(pp, cp, cy, M, C, acc, lab, o);
  REQUIRE(R.class_certificates.size() == static_cast<std::size_t>(C));
  auto argmax = [&](const std::vector<double>& p, std::int64_t i) {
    return static_cast<int>(std::max_element(p.begin() + i * C, p.begin() + (i + 1) * C) - (p.begin() + i * C));
  };
  std::vector<double> thr(C, NAN);
  std::int64_t labelled = 0, certified = 0;
  std::vector<bool> predicted(C, false);  // Bonferroni over the classes the pool predicts
  for (std::int64_t i = 0; i < N; ++i) predicted[argmax(pp, i)] = true;
  const double classes_in_pool = static_cast<double>(std::count(predicted.begin(), predicted.end(), true));
  for (int c = 0; c < C; ++c) {
    std::vector<std::pair<double, int>> units;
    for (std::int64_t i = 0; i < M; ++i)
      if (cy[i] >= 0 && argmax(cp, i) == c) units.push_back({cp[i * C + c], cy[i] != c});
    std::vector<double> pool_c;
    for (std::int64_t i = 0; i < N; ++i)
      if (argmax(pp, i) == c) pool_c.push_back(pp[i * C + c]);
    labelled += static_cast<std::int64_t>(units.size());
    const RefScan want = ref_scan(units, pool_c, o.target_error, o.delta / classes_in_pool);
    const ThresholdCertificate& k = R.class_certificates[c];
    INFO("class " << c << ": " << k.reason);
    CHECK(k.delta == Approx(o.delta / classes_in_pool));
    CHECK(k.n_calibration == static_cast<std::int64_t>(units.size()));
    REQUIRE(k.certified == want.certified);
    if (!want.certified) continue;
    ++certified;
    CHECK(k.threshold == want.threshold);
    CHECK(k.n_calibration_accepted == want.j);
    CHECK(k.calibration_errors == want.k);
    thr[c] = k.threshold;
  }
  CHECK(R.class_certificates[0].certified);  // class 0: no error above 0.9, far more than j0 units there
  CHECK(R.certificate.certified == (certified > 0));
  CHECK(std::isnan(R.certificate.threshold));
  CHECK(R.certificate.n_calibration == labelled);
  std::int64_t n_acc = 0;
  for (std::int64_t i = 0; i < N; ++i) {
    const int arg = argmax(pp, i);
    const bool want = pp[i * C + arg] >= thr[arg];  // false for NaN
    CHECK(acc[i] == want);
    CHECK(lab[i] == (want ? arg : -1));
    n_acc += want;
  }
  CHECK(R.n_accepted == n_acc);
  // per_class needs Item units
  o.unit = AcceptUnit::Image;
  o.max_voxel_error = 0.1;
  CHECK_THROWS_WITH(auto_label_items(pp, cp, cy, M, C, acc, lab, o),
                    Catch::Contains("per_class: only with unit=item"));
}

TEST_CASE("certified_auto_label on segmentation maps: voxel and image units, unlabelled voxels", "[propagation]") {
  const std::uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> U(0.0, 1.0);
  const std::int64_t C = 2, H = 6, W = 5, M = 120, N = 40;
  // [n, C, H, W] float64, class axis 1; an image has one "quality" q: its voxels are right with prob q.
  // The first `sure` images have q = 1: about half their voxels sit at confidence exactly 1 (never
  // wrong), so a certificate at target 0.1 (which needs the top 22 calibration voxels error-free) always
  // exists; without them 2 seeds in 900 drew too few and the scan rightly certified nothing.
  auto make = [&](std::int64_t n, std::vector<double>& p, std::vector<std::int64_t>& y, std::int64_t sure) {
    p.assign(n * C * H * W, 0);
    y.assign(n * H * W, 0);
    for (std::int64_t i = 0; i < n; ++i) {
      const double q = i < sure ? 1.0 : 0.6 + 0.4 * U(rng);
      for (std::int64_t v = 0; v < H * W; ++v) {
        const double conf = std::min(1.0, q + 0.05 * (U(rng) - 0.5));
        const int cls = U(rng) < 0.5;
        p[(i * C + cls) * H * W + v] = conf;
        p[(i * C + 1 - cls) * H * W + v] = 1 - conf;
        y[i * H * W + v] = U(rng) < conf ? cls : 1 - cls;
        if (U(rng) < 0.2) y[i * H * W + v] = -1;  // not labelled
      }
    }
  };
  std::vector<double> cp, pp;
  std::vector<std::int64_t> cy, py;
  make(M, cp, cy, 4);
  make(N, pp, py, 0);
  std::vector<std::uint8_t> acc_v(N * H * W), acc_i(N);
  std::vector<std::int64_t> lab(N * H * W);
  CertifyOptions o;
  o.target_error = 0.1;
  o.delta = 0.1;
  auto run = [&](const CertifyOptions& opt, std::vector<std::uint8_t>& acc, std::vector<std::int64_t> acc_shape) {
    return certified_auto_label(TensorView::of(pp.data(), {N, C, H, W}), TensorView::of(cp.data(), {M, C, H, W}),
                                TensorView::of(cy.data(), {M, H, W}), TensorView::of(acc.data(), acc_shape),
                                TensorView::of(lab.data(), {N, H, W}), opt);
  };
  const AutoLabelResult V = run(o, acc_v, {N, H, W});
  REQUIRE(V.certificate.certified);
  std::int64_t labelled = 0;
  for (auto y : cy) labelled += y >= 0;
  CHECK(V.certificate.n_calibration == labelled);
  CHECK(V.n_pool == N * H * W);
  for (std::int64_t i = 0; i < N; ++i)
    for (std::int64_t v = 0; v < H * W; ++v) {
      const double p0 = pp[(i * C + 0) * H * W + v], p1 = pp[(i * C + 1) * H * W + v];
      const bool want = std::max(p0, p1) >= V.certificate.threshold;
      CHECK(acc_v[i * H * W + v] == want);
      CHECK(lab[i * H * W + v] == (want ? (p1 > p0 ? 1 : 0) : -1));
    }

  CertifyOptions oi = o;
  oi.unit = AcceptUnit::Image;
  CHECK_THROWS_WITH(run(oi, acc_i, {N}), Catch::Contains("max_voxel_error"));
  oi.max_voxel_error = 0.25;
  o.max_voxel_error = 0.25;
  CHECK_THROWS_WITH(run(o, acc_v, {N, H, W}), Catch::Contains("only used with unit=image"));
  const AutoLabelResult I = run(oi, acc_i, {N});
  CHECK(I.n_pool == N);
  CHECK(I.certificate.n_calibration == M);
  if (I.certificate.certified) {
    for (std::int64_t i = 0; i < N; ++i) {
      double mean = 0;
      for (std::int64_t v = 0; v < H * W; ++v)
        mean += std::max(pp[(i * C + 0) * H * W + v], pp[(i * C + 1) * H * W + v]);
      mean /= H * W;
      const bool want = mean >= I.certificate.threshold;
      CHECK(acc_i[i] == want);
      for (std::int64_t v = 0; v < H * W; ++v) CHECK((lab[i * H * W + v] >= 0) == want);
    }
  }
}

TEST_CASE("certified_auto_label rejects bad input with the argument's name", "[propagation]") {
  std::vector<double> p = {0.9, 0.1, 0.2, 0.8, 0.5, 0.5};
  std::vector<std::int64_t> y = {0, 1, 1};
  std::vector<std::uint8_t> acc(3);
  std::vector<std::int64_t> lab(3);
  CertifyOptions o;
  o.target_error = 0.1;
  o.delta = 0.1;
  auto call = [&](const CertifyOptions& opt) {
    return certified_auto_label(TensorView::of(p.data(), {3, 2}), TensorView::of(p.data(), {3, 2}),
                                TensorView::of(y.data(), {3}), TensorView::of(acc.data(), {3}),
                                TensorView::of(lab.data(), {3}), opt);
  };
  CHECK_NOTHROW(call(o));
  CertifyOptions bad = o;
  bad.target_error = 1.0;
  CHECK_THROWS_WITH(call(bad), Catch::Contains("target_error: expected a value in (0, 1)"));
  bad = o;
  bad.delta = std::nan("");
  CHECK_THROWS_WITH(call(bad), Catch::Contains("delta: expected a value in (0, 1)"));
  y[2] = 2;
  CHECK_THROWS_WITH(call(o), Catch::Contains("calib_labels: entry [2] is 2"));
  y[2] = -2;
  CHECK_THROWS_WITH(call(o), Catch::Contains("calib_labels: entry [2] is -2"));
  y[2] = 1;
  p[3] = std::nan("");
  CHECK_THROWS_WITH(call(o), Catch::Contains("calib_probs: item [1] contains NaN"));
  p[3] = 0.7;
  CHECK_THROWS_WITH(call(o), Catch::Contains("calib_probs: item [1] has probabilities that do not sum to 1"));
  p[3] = 0.8;
  std::vector<double> q = p;
  q[4] = -0.5;
  q[5] = 1.5;
  CHECK_THROWS_WITH(certified_auto_label(TensorView::of(q.data(), {3, 2}), TensorView::of(p.data(), {3, 2}),
                                         TensorView::of(y.data(), {3}), TensorView::of(acc.data(), {3}),
                                         TensorView::of(lab.data(), {3}), o),
                    Catch::Contains("pool_probs: item [2] contains a negative probability"));
  std::vector<double> conf = {1, 2, std::nan("")};
  bad = o;
  bad.pool_confidence = TensorView::of(conf.data(), {3});
  CHECK_THROWS_WITH(call(bad), Catch::Contains("pass both pool_confidence and calib_confidence"));
  bad.calib_confidence = TensorView::of(conf.data(), {3});
  CHECK_THROWS_WITH(call(bad), Catch::Contains("calib_confidence: entry [2] is NaN"));
  std::vector<std::int32_t> lab32(3);
  CHECK_THROWS_WITH(certified_auto_label(TensorView::of(p.data(), {3, 2}), TensorView::of(p.data(), {3, 2}),
                                         TensorView::of(y.data(), {3}), TensorView::of(acc.data(), {3}),
                                         TensorView::of(lab32.data(), {3}), o),
                    Catch::Contains("labels: expected dtype int64"));
  CHECK_THROWS_WITH(certified_auto_label(TensorView::of(p.data(), {3, 2}), TensorView::of(p.data(), {2, 3}),
                                         TensorView::of(y.data(), {2}), TensorView::of(acc.data(), {3}),
                                         TensorView::of(lab.data(), {3}), o),
                    Catch::Contains("calib_probs: has 3 classes"));
  TensorView gpu = TensorView::of(p.data(), {3, 2});
  gpu.device = Device::cuda(0);
  CHECK_THROWS_WITH(certified_auto_label(gpu, TensorView::of(p.data(), {3, 2}), TensorView::of(y.data(), {3}),
                                         TensorView::of(acc.data(), {3}), TensorView::of(lab.data(), {3}), o),
                    Catch::Contains("CUDA path is not implemented yet"));
}

TEST_CASE("the certified error holds over repeated calibration draws (simulation)", "[propagation]") {
  // Known model: confidence s ~ U(0.5, 1), wrong with probability eta(s) = 2 (1 - s)^2 / 0.5 ... scaled so
  // that R(lambda) = P(wrong | s >= lambda) is increasing as lambda falls. Exact R(lambda) by integration.
  const std::uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> U(0.0, 1.0);
  auto eta = [](double s) { return 0.4 * (1 - s) * (1 - s) / 0.25; };  // 0 at s = 1, 0.4 at s = 0.5
  // R(l) = (1/(1-l)) ∫_l^1 0.4 (1-s)^2 / 0.25 ds = 0.4 (1-l)^2 / 0.75
  auto risk = [](double l) { return 0.4 * (1 - l) * (1 - l) / 0.75; };
  const double alpha = 0.05, delta = 0.1;
  const int draws = 400, n = 300;
  int exceed = 0, certified = 0;
  for (int t = 0; t < draws; ++t) {
    std::vector<double> s(n), pool(1000);
    std::vector<std::uint8_t> e(n);
    for (int i = 0; i < n; ++i) {
      s[i] = 0.5 + 0.5 * U(rng);
      e[i] = U(rng) < eta(s[i]);
    }
    for (auto& v : pool) v = 0.5 + 0.5 * U(rng);
    const ThresholdCertificate c = certify_threshold(TensorView::of(s.data(), {n}), TensorView::of(e.data(), {n}),
                                                     TensorView::of(pool.data(), {1000}), alpha, delta);
    if (!c.certified) continue;
    ++certified;
    exceed += risk(c.threshold) >= alpha;
  }
  // If the guarantee held with equality, exceed ~ Binomial(400, 0.1) (mean 40): 74 is its 1 - 1e-7
  // quantile (computed with scipy.stats.binom.isf), so a correct method fails fewer than 1e-7 runs.
  INFO("certified " << certified << " exceed " << exceed);
  CHECK(certified > draws / 2);
  CHECK(exceed <= 74);
}

TEST_CASE("label_issues equals a naive confident-learning reference", "[propagation]") {
  const std::uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> U(0.0, 1.0);
  const int N = 500, C = 4;
  std::vector<float> p(N * C);
  std::vector<std::int64_t> y(N);
  for (int i = 0; i < N; ++i) {
    double z = 0;
    const int cls = static_cast<int>(U(rng) * C);
    for (int c = 0; c < C; ++c) z += (p[i * C + c] = static_cast<float>(U(rng) + (c == cls ? 3 * U(rng) : 0)));
    float s = 0;
    for (int c = 0; c < C - 1; ++c) s += (p[i * C + c] = static_cast<float>(p[i * C + c] / z));
    p[i * C + C - 1] = 1 - s;
    y[i] = U(rng) < 0.8 ? cls : static_cast<int>(U(rng) * C);
    if (i % 50 == 7) y[i] = -1;
  }
  std::vector<std::int64_t> idx(N, -5), joint(C * C);
  std::vector<double> sc(N), thr(C);
  LabelIssuesOutputs out;
  out.indices = TensorView::of(idx.data(), {N});
  out.self_confidence = TensorView::of(sc.data(), {N});
  out.thresholds = TensorView::of(thr.data(), {C});
  out.confident_joint = TensorView::of(joint.data(), {C, C});
  const std::int64_t n = label_issues(TensorView::of(p.data(), {N, C}), TensorView::of(y.data(), {N}), out);
  // reference
  std::vector<double> t(C, 0);
  std::vector<int> cnt(C, 0);
  for (int i = 0; i < N; ++i)
    if (y[i] >= 0) t[y[i]] += p[i * C + y[i]], ++cnt[y[i]];
  for (int c = 0; c < C; ++c) t[c] /= cnt[c];
  std::vector<std::int64_t> J(C * C, 0);
  std::vector<std::pair<double, int>> want;
  for (int i = 0; i < N; ++i) {
    if (y[i] < 0) continue;
    int b = -1;
    for (int c = 0; c < C; ++c)  // thresholds allow 1e-6 for the rounding of the mean
      if (p[i * C + c] >= t[c] - 1e-6 && (b < 0 || p[i * C + c] > p[i * C + b])) b = c;
    if (b < 0) continue;
    ++J[y[i] * C + b];
    const int pred = static_cast<int>(std::max_element(&p[i * C], &p[i * C] + C) - &p[i * C]);
    if (b != y[i] && pred != y[i]) want.push_back({p[i * C + y[i]], i});
  }
  std::sort(want.begin(), want.end());
  REQUIRE(n == static_cast<std::int64_t>(want.size()));
  for (std::int64_t k = 0; k < n; ++k) {
    CHECK(idx[k] == want[k].second);
    CHECK(sc[k] == want[k].first);
  }
  CHECK(idx[n] == -5);  // past the flagged items: untouched
  for (int c = 0; c < C; ++c) CHECK(thr[c] == Approx(t[c]).epsilon(1e-12));
  CHECK(joint == J);
  y[3] = C;
  CHECK_THROWS_WITH(label_issues(TensorView::of(p.data(), {N, C}), TensorView::of(y.data(), {N}), out),
                    Catch::Contains("given_labels: entry [3] is 4"));
  y[3] = 0;
  LabelIssuesOutputs unset = out;
  unset.indices = TensorView();  // the one required output, left out
  CHECK_THROWS_WITH(label_issues(TensorView::of(p.data(), {N, C}), TensorView::of(y.data(), {N}), unset),
                    Catch::Contains("indices: is required"));
}

// ---- slice propagation ------------------------------------------------------------------------------

TEST_CASE("propagate_slices recovers a noisy sphere from two slices on every axis", "[propagation][slices]") {
  std::mt19937_64 g(fresh_seed());
  std::normal_distribution<double> nd;
  const std::int64_t Z = 20, H = 28, W = 30;  // the Python test's sphere
  std::vector<std::int64_t> lab(Z * H * W);
  std::vector<float> vol(Z * H * W);
  for (std::int64_t z = 0; z < Z; ++z)
    for (std::int64_t i = 0; i < H; ++i)
      for (std::int64_t j = 0; j < W; ++j) {
        const double r = std::sqrt((z - Z / 2.0) * (z - Z / 2.0) + (i - H / 2.0) * (i - H / 2.0) + (j - W / 2.0) * (j - W / 2.0));
        const std::int64_t e = (z * H + i) * W + j;
        lab[e] = (r < 7) + (r < 3);
        vol[e] = static_cast<float>(lab[e] + 0.05 * nd(g));
      }
  for (int axis : {0, 1, 2}) {
    const std::int64_t n = std::vector<std::int64_t>{Z, H, W}[axis];
    std::vector<std::int64_t> mask(lab.size(), -7);
    std::vector<double> conf(lab.size(), -1.0);
    SlicePropagationOptions opt;
    opt.axis = axis;
    propagate_slices(TensorView::of(vol.data(), {Z, H, W}), TensorView::of(lab.data(), {Z, H, W}), {n / 3, 2 * n / 3},
                     TensorView::of(mask.data(), {Z, H, W}), TensorView::of(conf.data(), {Z, H, W}), opt);
    std::int64_t right = 0;
    for (std::size_t e = 0; e < lab.size(); ++e) {
      right += mask[e] == lab[e];
      REQUIRE(conf[e] >= 0.0);
      REQUIRE(conf[e] <= 1.0);
    }
    CHECK(static_cast<double>(right) / lab.size() > 0.97);
  }
}

TEST_CASE("propagate_slices rejects bad input", "[propagation][slices][errors]") {
  std::vector<double> vol(4 * 5 * 6, 1.0);
  std::vector<std::int64_t> lab(vol.size(), 0), mask(vol.size());
  std::vector<double> conf(vol.size());
  const TensorView v = TensorView::of(vol.data(), {4, 5, 6}), l = TensorView::of(lab.data(), {4, 5, 6});
  const TensorView m = TensorView::of(mask.data(), {4, 5, 6}), c = TensorView::of(conf.data(), {4, 5, 6});
  CHECK_THROWS_WITH(propagate_slices(v, l, {}, m, c), Catch::Contains("at least one annotated slice"));
  CHECK_THROWS_WITH(propagate_slices(v, l, {4}, m, c), Catch::Contains("indices must be in [0, 4)"));
  CHECK_THROWS_WITH(propagate_slices(v, TensorView::of(lab.data(), {4, 5, 5}), {1}, m, c),
                    Catch::Contains("labels: expected volume's shape"));
  CHECK_THROWS_WITH(propagate_slices(v, l, {1}, c, c), Catch::Contains("mask: expected dtype int64"));
  SlicePropagationOptions bad;
  bad.beta = -1;
  CHECK_THROWS_WITH(propagate_slices(v, l, {1}, m, c, bad), Catch::Contains("beta"));
  lab[1 * 30 + 2 * 6 + 3] = 5;
  bad = {};
  bad.num_classes = 3;
  CHECK_THROWS_WITH(propagate_slices(v, l, {1}, m, c, bad), Catch::Contains("class 5 >= num_classes 3"));
  vol[2 * 30] = std::nan("");
  CHECK_THROWS_WITH(propagate_slices(v, l, {1}, m, c), Catch::Contains("volume: NaN or Inf at slice 2"));
  // a null volume is named, not read (it was dereferenced by the finiteness scan)
  CHECK_THROWS_WITH(propagate_slices(TensorView::of(static_cast<double*>(nullptr), {4, 5, 6}), l, {1}, m, c),
                    Catch::Contains("volume: data pointer is null"));
}

TEST_CASE("null data pointers are named; the shape queries read none", "[propagation][errors]") {
  std::vector<double> s = {0.9, 0.8, 0.7}, pool = {0.95, 0.5};
  std::vector<std::uint8_t> e = {0, 0, 1};
  const TensorView sv = TensorView::of(s.data(), {3}), ev = TensorView::of(e.data(), {3});
  const TensorView pv = TensorView::of(pool.data(), {2});
  CHECK_THROWS_WITH(certify_threshold(sv, TensorView::of(static_cast<std::uint8_t*>(nullptr), {3}), pv, 0.1, 0.1),
                    Catch::Contains("calib_errors: data pointer is null"));
  CHECK_THROWS_WITH(certify_threshold(TensorView::of(static_cast<double*>(nullptr), {3}), ev, pv, 0.1, 0.1),
                    Catch::Contains("calib_confidence: data pointer is null"));
  // auto_label_shapes and score_shape validate the layout only: a view without data is enough
  const TensorView probs = TensorView::of(static_cast<float*>(nullptr), {2, 3, 7, 5});
  CertifyOptions o;
  const auto shapes = auto_label_shapes(probs, o);
  CHECK(shapes[0] == std::vector<std::int64_t>{2, 7, 5});
  CHECK(shapes[1] == std::vector<std::int64_t>{2, 7, 5});
  CHECK(score_shape(probs) == std::vector<std::int64_t>{2, 5});  // [N, K, C, W]: K = 3, C = 7
  CHECK_THROWS_WITH(auto_label_shapes(TensorView::of(static_cast<float*>(nullptr), {2, 1}), o),
                    Catch::Contains("pool_probs"));  // still validated
}

namespace labelwise {
namespace detail {
std::string cublas_load_error();  // src/knn_backend.hpp (not a public header)
}
}  // namespace labelwise

// CUDA builds do not link cuBLAS (an extension built with CUDA must import where libcublas is absent):
// it is loaded on the first CUDA kNN call. The loading and the five symbols are checked here without a
// device, where the toolkit is installed (CI and the build machines).
TEST_CASE("CUDA builds resolve cuBLAS at run time", "[knn]") {
  const std::string err = labelwise::detail::cublas_load_error();
  if (!labelwise::built_with_cuda()) {
    CHECK(err == "built without CUDA");
    return;
  }
  INFO(err);
  CHECK(err.empty());
}

TEST_CASE("option names round-trip and unknown names list the valid ones", "[propagation]") {
  for (const AcceptUnit u : {AcceptUnit::Item, AcceptUnit::Image})
    CHECK(accept_unit_from_name(accept_unit_name(u)) == u);
  CHECK(std::string(accept_unit_name(AcceptUnit::Image)) == "image");
  CHECK_THROWS_WITH(accept_unit_from_name("voxel"), Catch::Contains("'item'") && Catch::Contains("'image'"));
  for (const DistanceMetric m : {DistanceMetric::Euclidean, DistanceMetric::Cosine})
    CHECK(distance_metric_from_name(distance_metric_name(m)) == m);
  CHECK(std::string(distance_metric_name(DistanceMetric::Cosine)) == "cosine");
  CHECK_THROWS_WITH(distance_metric_from_name("manhattan"), Catch::Contains("'euclidean' or 'cosine', got 'manhattan'"));
  for (const SpreadingVariant v : {SpreadingVariant::Symmetric, SpreadingVariant::Sklearn})
    CHECK(spreading_variant_from_name(spreading_variant_name(v)) == v);
  CHECK(std::string(spreading_variant_name(SpreadingVariant::Sklearn)) == "sklearn");
  CHECK_THROWS_WITH(spreading_variant_from_name("dense"), Catch::Contains("symmetric") && Catch::Contains("sklearn"));
}
