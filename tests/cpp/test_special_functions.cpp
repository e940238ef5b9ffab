#include <catch2/catch.hpp>

#include <algorithm>
#include <limits>
#include <cmath>
#include <random>
#include <utility>
#include <vector>

#include "labelwise/detail/special_functions.hpp"
#include "labelwise/detail/uncertainty_impl.hpp"
#include "labelwise/uncertainty/metrics.hpp"
#include "test_seed.hpp"

using labelwise::detail::digamma;
namespace detail = labelwise::detail;

TEST_CASE("digamma matches closed forms", "[special]") {
  const double euler = 0.57721566490153286061;
  CHECK(digamma(1.0) == Approx(-euler).epsilon(1e-14));
  CHECK(digamma(0.5) == Approx(-euler - 2 * std::log(2.0)).epsilon(1e-14));
  // ψ(n + 1) = H_n - γ
  double harmonic = 0;
  for (int n = 1; n <= 40; ++n) {
    harmonic += 1.0 / n;
    CHECK(digamma(n + 1.0) == Approx(harmonic - euler).epsilon(1e-13));
  }
  // ψ(1/4) = -γ - π/2 - 3 ln 2 ; reflection: ψ(-1/2) = ψ(3/2) = 2 - γ - 2 ln 2 (since ψ(1-x) - ψ(x) = π cot πx)
  CHECK(digamma(0.25) == Approx(-euler - M_PI / 2 - 3 * std::log(2.0)).epsilon(1e-13));
  CHECK(digamma(-0.5) == Approx(2 - euler - 2 * std::log(2.0)).epsilon(1e-13));
  // Large argument: ψ(x) ~ ln x - 1/(2x)
  CHECK(digamma(1e8) == Approx(std::log(1e8) - 0.5e-8).epsilon(1e-15));
  CHECK(std::isnan(digamma(0.0)));
  CHECK(std::isnan(digamma(-3.0)));
  // ψ(x + 1) = ψ(x) + 1/x on a grid, including negative non-integers
  for (double x = -4.75; x < 30; x += 0.37) CHECK(digamma(x + 1) == Approx(digamma(x) + 1 / x).margin(1e-11));
}

using labelwise::detail::log_gamma_and_digamma;

TEST_CASE("joint ln-gamma / digamma equals lgamma_r and digamma", "[special]") {
  for (double x = 1e-9; x < 1e9; x *= 1.37) {
    double lg = 0, dg = 0;
    log_gamma_and_digamma(x, lg, dg);
    int sign = 0;
    const double want = lgamma_r(x, &sign);
    INFO("x = " << x);
    CHECK(lg == Approx(want).epsilon(1e-13).margin(1e-13));
    CHECK(dg == Approx(digamma(x)).epsilon(1e-13).margin(1e-12));
  }
  double lg = 0, dg = 0;
  log_gamma_and_digamma(-0.5, lg, dg);  // negative: falls back, ln|Γ(-1/2)| = ln(2√π)
  CHECK(lg == Approx(std::log(2 * std::sqrt(M_PI))).epsilon(1e-14));
}

TEST_CASE("fast float log and exp stay within 3e-7 relative of the C library", "[special]") {
  using labelwise::detail::fast_expf_nonpositive;
  using labelwise::detail::fast_logf;
  for (float x = 1.2e-38f; x < 3e38f; x *= 1.0013f) {
    const double want = std::log(static_cast<double>(x));
    CHECK(std::fabs(fast_logf(x) - want) <= 3e-7 * std::max(1.0, std::fabs(want)));
  }
  for (float x = 0.0f; x > -87.0f; x -= 0.00731f) {
    const double want = std::exp(static_cast<double>(x));
    CHECK(std::fabs(fast_expf_nonpositive(x) - want) <= 3e-7 * want);
  }
  CHECK(fast_expf_nonpositive(-INFINITY) == 0.0f);
  CHECK(fast_expf_nonpositive(-100.0f) == 0.0f);
  CHECK(fast_expf_nonpositive(0.0f) == 1.0f);
}

TEST_CASE("fast double log / exp and the shift by ten of ln-gamma / digamma", "[special]") {
  using namespace labelwise::detail;
  for (double x = 1e-300; x < 1e300; x *= 1.731) {
    const double want = std::log(x);
    CHECK(std::fabs(fast_log(x) - want) <= 4e-16 * std::max(1.0, std::fabs(want)));
  }
  for (double x = 0.0; x > -700.0; x -= 0.0917) {
    const double want = std::exp(x);
    CHECK(std::fabs(fast_exp_nonpositive(x) - want) <= 4e-16 * want);
  }
  CHECK(fast_exp_nonpositive(-INFINITY) == 0.0);
  // ln Γ(x) = ln Γ(x') − ln P and ψ(x) = ψ(x') − D / P, with x' >= 10
  for (double x = 1e-12; x < 1e12; x *= 1.29) {
    double xs = 0, P = 0, D = 0;
    gamma_shift10(x, xs, P, D);
    INFO("x = " << x);
    CHECK(xs >= 10.0);
    CHECK((x < 10.0 ? xs == x + 10.0 : (xs == x && P == 1.0 && D == 0.0)));
    double lg = 0, dg = 0, lgs = 0, dgs = 0;
    log_gamma_and_digamma(x, lg, dg);
    log_gamma_and_digamma(xs, lgs, dgs);
    CHECK(lgs - std::log(P) == Approx(lg).epsilon(2e-13).margin(2e-13));
    CHECK(dgs - D / P == Approx(dg).epsilon(2e-13).margin(2e-12));
  }
}

TEST_CASE("branch-free BalEntAcq term equals the exact one", "[special]") {
  using namespace labelwise::detail;
  for (double mu = 1e-9; mu < 1.0; mu = mu * 1.7 + 1e-7) {
    for (double var : {0.0, 1e-10, 1e-6, 1e-3, 0.05 * mu * (1 - mu), 0.9 * mu * (1 - mu)}) {
      const double m = std::max(mu, 1e-9), v = std::max(var, 1e-9);
      const double a = m * m * (1 - m) / v - m, b = (1 / m - 1) * a;
      if (!(a + 1 > 0 && b > 0 && b < 1e15)) continue;
      INFO("mu " << mu << " var " << var);
      const double exact = balentacq_class_term(mu, var);
      CHECK(balentacq_class_term_positive(m, a, b) == Approx(exact).epsilon(1e-9).margin(1e-9 * (1 + a + b)));
    }
  }
}

namespace {
// Independent long-double references for the Beta-entropy parts: glibc's lgammal, and ψ by the
// recurrence ψ(x) = ψ(x+1) - 1/x up to x >= 30, then ln x - 1/(2x) - Σ_{n<=8} B_2n / (2n x^2n).
long double digamma_ld(long double x) {
  long double acc = 0.0L;
  while (x < 30.0L) {
    acc -= 1.0L / x;
    x += 1.0L;
  }
  const long double b2n[8] = {1.0L / 6, -1.0L / 30, 1.0L / 42, -1.0L / 30, 5.0L / 66, -691.0L / 2730, 7.0L / 6, -3617.0L / 510};
  const long double r2 = 1.0L / (x * x);
  long double p = r2, series = 0.0L;
  for (int n = 1; n <= 8; ++n) {
    series += b2n[n - 1] / (2 * n) * p;
    p *= r2;
  }
  return acc + std::log(x) - 0.5L / x - series;
}
}  // namespace

TEST_CASE("Beta-entropy parts (one division, four logs) against a long-double reference", "[special]") {
  using namespace labelwise::detail;
  // ln B(A, B) and w = -(A-1) ψ(A) - (B-1) ψ(B) + (S-2) ψ(S), A = α+1, S = α+β+1, over the domain the
  // BalEntAcq loops send (A > 0, 0 < β < 1e15): log-uniform points, the shift threshold X = 10 and
  // small integers. Both are differences of terms of size ~X ln X, so the error is measured in units of
  // eps · (1 + Σ_X (X |ln X| + 1/X)); against mpmath (50 digits) on 60 000 such points: at most 17
  // units, as the previous per-argument evaluation (16); this reference sees at most 13.
  std::mt19937_64 rng(20261128);
  std::uniform_real_distribution<double> ea(-12.0, 8.2), eb(-20.0, 14.99);
  std::vector<std::pair<double, double>> pts;  // (A, B)
  for (int i = 0; i < 20000; ++i) pts.emplace_back(std::pow(10.0, ea(rng)), std::pow(10.0, eb(rng)));
  for (double x : {9.999999999, 10.0, 10.000000001, 1.0, 2.0, 0.5, 19.99, 20.0})
    for (double y : {1e-6, 0.3, 1.0, 9.99999, 10.0, 10.5, 123.0, 1e6, 1e12}) {
      pts.emplace_back(x, y);
      pts.emplace_back(y, x);
    }
  double worst_lb = 0.0, worst_w = 0.0;
  for (const auto& ab : pts) {
    const double alpha = ab.first - 1.0, beta = ab.second;
    if (!(alpha + 1.0 > 0.0)) continue;
    double lb = 0.0, w = 0.0;
    beta_entropy_parts(alpha, beta, lb, w);
    // The same rounded arguments as the kernel (A = α+1 and S = α+β+1 in double).
    const long double A = alpha + 1.0, B = beta, S = alpha + beta + 1.0;
    const long double lb_ref = lgammal(A) + lgammal(B) - lgammal(S);
    const long double w_ref = -static_cast<long double>(alpha) * digamma_ld(A) - (B - 1.0L) * digamma_ld(B) +
                              (static_cast<long double>(alpha) + B - 1.0L) * digamma_ld(S);
    double mag = 1.0;
    for (long double x : {A, B, S}) mag += static_cast<double>(x * std::fabs(std::log(x)) + 1.0L / x);
    const double unit = 2.220446049250313e-16 * mag;
    INFO("A " << static_cast<double>(A) << " B " << beta);
    const double e_lb = static_cast<double>(std::fabs(lb - lb_ref)) / unit;
    const double e_w = static_cast<double>(std::fabs(w - w_ref)) / unit;
    CHECK(e_lb <= 32.0);
    CHECK(e_w <= 32.0);
    worst_lb = std::max(worst_lb, e_lb);
    worst_w = std::max(worst_w, e_w);
  }
  INFO("worst ln B " << worst_lb << " w " << worst_w << " (units of eps · magnitude)");
  CHECK(std::max(worst_lb, worst_w) < 32.0);
}

// The per-item path (score_item: what every CUDA thread runs) on float32 logits far from 0: the
// entropies must keep float32 accuracy relative to the entropy, not to |x| (a rounded ln-sum-exp
// subtracted in float lost half an ulp of |x| per entry: 4.6e-4 relative at 1e4).
TEST_CASE("score_item: float32 logits far from zero keep the entropies' accuracy", "[uncertainty]") {
  std::mt19937_64 gen(fresh_seed());
  std::uniform_real_distribution<double> off(-3e4, 3e4), spread(0.0, 4.0);
  for (int trial = 0; trial < 200; ++trial) {
    const int K = 2 + static_cast<int>(gen() % 5), C = 2 + static_cast<int>(gen() % 20);
    const double base = off(gen);
    std::vector<float> x(static_cast<std::size_t>(K * C));
    for (float& v : x) v = static_cast<float>(base + spread(gen));
    // float64 reference on the float32 values
    double H = 0.0, EH = 0.0;
    std::vector<double> mean(C, 0.0);
    for (int k = 0; k < K; ++k) {
      double mx = -INFINITY, z = 0.0;
      for (int c = 0; c < C; ++c) mx = std::max(mx, static_cast<double>(x[k * C + c]));
      for (int c = 0; c < C; ++c) z += std::exp(x[k * C + c] - mx);
      for (int c = 0; c < C; ++c) {
        const double lp = x[k * C + c] - mx - std::log(z), p = std::exp(lp);
        EH -= p * lp / K;
        mean[c] += p / K;
      }
    }
    for (double m : mean) H -= m > 0 ? m * std::log(m) : 0.0;
    const int Cp = detail::padded_classes(C);
    std::vector<double> stats(3 * static_cast<std::size_t>(Cp), 0.0);
    std::vector<float> row(static_cast<std::size_t>(Cp), 0.0f);
    std::vector<int> votes(static_cast<std::size_t>(Cp), 0);
    detail::ItemScratch<float> s{stats.data(), stats.data() + Cp, stats.data() + 2 * Cp, row.data(), votes.data(),
                                 nullptr, nullptr, nullptr};
    double res[labelwise::kNumMetrics] = {};
    const unsigned mask = detail::kBitPredictiveEntropy | detail::kBitExpectedEntropy | detail::kBitBald;
    REQUIRE(detail::score_item<float>(x.data(), C, 1, K, C, /*logits*/ 2, mask, 1e-3, s, res) == detail::kItemOk);
    INFO("trial " << trial << " K=" << K << " C=" << C << " base=" << base);
    CHECK(std::fabs(res[1] - EH) <= 2e-6 * EH + 1e-6);
    CHECK(std::fabs(res[0] - H) <= 2e-6 * H + 1e-6);
  }
}

namespace {
/// score_item on one item [K, C] (float64), through the row-by-row path (no block scratch: the path
/// of the CUDA kernel) or the contiguous block path (the CPU's).
int item_status(const std::vector<double>& x, int K, int C, int input_kind, bool rows) {
  const int Cp = labelwise::detail::padded_classes(C);
  std::vector<double> stats(3 * static_cast<std::size_t>(Cp), 0.0), row(static_cast<std::size_t>(Cp + K + 16), 0.0);
  std::vector<double> block(static_cast<std::size_t>(K * C + 16), 0.0), block2(block.size(), 0.0);
  std::vector<int> votes(static_cast<std::size_t>(Cp), 0);
  labelwise::detail::ItemScratch<double> s{stats.data(), stats.data() + Cp, stats.data() + 2 * Cp, row.data(),
                                           votes.data(),  rows ? nullptr : block.data(),
                                           rows ? nullptr : block2.data(), nullptr};
  double res[labelwise::kNumMetrics] = {};
  return labelwise::detail::score_item<double>(x.data(), C, 1, K, C, input_kind, 0x3FFu, 1e-6, s, res);
}
}  // namespace

TEST_CASE("the row-by-row path names the same error as the block path for every bad item", "[uncertainty][errors]") {
  using namespace labelwise::detail;
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = INFINITY;
  // Items whose first bad sample is not the one that decides the error.
  struct Case {
    std::vector<double> x;
    int input_kind, expected;
  };
  const std::vector<Case> cases = {
      {{0.6, 0.6, nan, 1.0}, 0, kItemNonFinite},       // unnormalised sample, then NaN
      {{0.6, 0.6, -0.1, 1.1}, 0, kItemNegative},       // unnormalised sample, then a negative value
      {{-inf, -inf, nan, 0.0}, 2, kItemNonFinite},     // all -inf logits, then NaN
      {{0.0, 0.0, nan, 0.0}, 1, kItemNonFinite},       // unnormalised log-probabilities, then NaN
      {{-inf, -inf, 0.0, inf}, 1, kItemNonFinite},     // all -inf, then +inf
      {{0.5, 0.5, 0.6, 0.6}, 0, kItemUnnormalised},
      {{0.0, -inf, -inf, -inf}, 2, kItemAllMasked},
  };
  for (const Case& c : cases) {
    INFO("input kind " << c.input_kind << ", x = " << c.x[0] << " " << c.x[1] << " " << c.x[2] << " " << c.x[3]);
    CHECK(item_status(c.x, 2, 2, c.input_kind, false) == c.expected);
    CHECK(item_status(c.x, 2, 2, c.input_kind, true) == c.expected);
  }
  // Fresh random items with faults in random samples: both paths agree.
  std::mt19937_64 g(fresh_seed());
  std::uniform_real_distribution<double> u(0.05, 1.0);
  const double faults[] = {nan, inf, -inf, -0.25, 3.0};
  for (int trial = 0; trial < 3000; ++trial) {
    const int K = 2 + static_cast<int>(g() % 4), C = 2 + static_cast<int>(g() % 5), kind = static_cast<int>(g() % 3);
    std::vector<double> x(static_cast<std::size_t>(K * C));
    for (int k = 0; k < K; ++k) {
      double t = 0.0;
      for (int c = 0; c < C; ++c) t += (x[k * C + c] = u(g));
      for (int c = 0; c < C; ++c) {
        const double p = x[k * C + c] / t;
        x[k * C + c] = kind == 0 ? p : std::log(p) + (kind == 2 ? 3.0 : 0.0);
      }
    }
    const int nf = 1 + static_cast<int>(g() % 3);
    for (int f = 0; f < nf; ++f) {
      const int k = static_cast<int>(g() % K);
      if (g() % 4 == 0) {  // a whole sample of -inf
        for (int c = 0; c < C; ++c) x[k * C + c] = -inf;
      } else {
        x[k * C + static_cast<int>(g() % C)] = faults[g() % 5];
      }
    }
    INFO("trial " << trial << " K=" << K << " C=" << C << " kind " << kind);
    CHECK(item_status(x, K, C, kind, true) == item_status(x, K, C, kind, false));
  }
}
