// Naive float64 references written from the metric definitions (docs/metrics.md), used only by tests.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace ref {

/// ψ(x) in long double, written independently of labelwise/detail/special_functions.hpp: the
/// recurrence ψ(x) = ψ(x + 1) − 1/x up to x >= 30 (it also carries x in (−∞, 0) that is not an
/// integer up to positive arguments; BalEntAcq only sends x > −1 there), then the asymptotic series
/// ln x − 1/(2x) − Σ_{n<=8} B_2n / (2n x^2n) (truncation below 1e-25 at x >= 30). Poles (0, −1, −2, …)
/// give NaN. Large negative x uses the reflection ψ(x) = ψ(1 − x) − π / tan(π x) instead of a long loop.
inline double digamma(double xd) {
  if (std::isnan(xd)) return xd;
  if (xd <= 0.0 && std::floor(xd) == xd) return NAN;
  long double x = xd, acc = 0.0L;
  if (x < -1000.0L) {
    const long double pi = 3.141592653589793238462643383279502884L;
    acc = -pi / std::tan(pi * x);
    x = 1.0L - x;
  }
  while (x < 30.0L) {
    acc -= 1.0L / x;
    x += 1.0L;
  }
  const long double b2n[8] = {1.0L / 6, -1.0L / 30, 1.0L / 42, -1.0L / 30, 5.0L / 66, -691.0L / 2730, 7.0L / 6,
                              -3617.0L / 510};
  const long double r2 = 1.0L / (x * x);
  long double p = r2, series = 0.0L;
  for (int n = 1; n <= 8; ++n) {
    series += b2n[n - 1] / (2 * n) * p;
    p *= r2;
  }
  return static_cast<double>(acc + std::log(x) - 0.5L / x - series);
}

/// P(X = i) for X ~ Binomial(n, p), 0 < p < 1, from lgamma in log space.
inline double binomial_pmf(int i, int n, double p) {
  return std::exp(std::lgamma(n + 1.0) - std::lgamma(i + 1.0) - std::lgamma(n - i + 1.0) + i * std::log(p) +
                  (n - i) * std::log1p(-p));
}

/// P(X <= k) by direct summation of the pmf (small n only).
inline double binomial_cdf(int k, int n, double p) {
  double s = 0.0;
  for (int i = 0; i <= std::min(k, n); ++i) s += binomial_pmf(i, n, p);
  return s;
}

/// P(X >= k) by direct summation of the pmf (small n only; accurate in the far upper tail, unlike
/// 1 - binomial_cdf(k - 1, n, p)).
inline double binomial_upper(int k, int n, double p) {
  double s = 0.0;
  for (int i = std::max(k, 0); i <= n; ++i) s += binomial_pmf(i, n, p);
  return s;
}

/// probs[k][c] of one item → the ten metrics in labelwise::Metric order.
inline std::array<double, 10> metrics(const std::vector<std::vector<double>>& p) {
  const int K = static_cast<int>(p.size()), C = static_cast<int>(p[0].size());
  std::vector<double> mean(C, 0.0);
  for (int k = 0; k < K; ++k)
    for (int c = 0; c < C; ++c) mean[c] += p[k][c] / K;
  auto entropy = [](const std::vector<double>& q) {
    double h = 0;
    for (double v : q)
      if (v > 0) h -= v * std::log(v);
    return h;
  };
  const double H = entropy(mean);
  double EH = 0;
  for (int k = 0; k < K; ++k) EH += entropy(p[k]) / K;
  std::vector<double> sorted = mean;
  std::sort(sorted.begin(), sorted.end(), std::greater<double>());
  std::vector<int> votes(C, 0);
  for (int k = 0; k < K; ++k) votes[std::max_element(p[k].begin(), p[k].end()) - p[k].begin()]++;
  const int mode = *std::max_element(votes.begin(), votes.end());
  std::array<double, 10> r{};
  r[0] = H;
  r[1] = EH;
  r[2] = std::max(H - EH, 0.0);
  r[3] = 1 - sorted[0];
  r[4] = 1 - (sorted[0] - sorted[1]);
  r[5] = sorted[1] / sorted[0];
  r[6] = 1 - double(mode) / K;
  r[7] = 1 - sorted[0];
  if (K >= 2) {
    double std_sum = 0, terms = 0;
    for (int c = 0; c < C; ++c) {
      double var = 0;
      for (int k = 0; k < K; ++k) var += (p[k][c] - mean[c]) * (p[k][c] - mean[c]);
      var /= (K - 1);
      std_sum += std::sqrt(var);
      // BalEntAcq class term, straight from the reference formula.
      const double mu = std::max(mean[c], 1e-9), v = std::max(var, 1e-9);
      const double a = mu * mu * (1 - mu) / v - mu, b = (1 / mu - 1) * a;
      const double lnB = std::lgamma(a + 1) + std::lgamma(b) - std::lgamma(a + b + 1);
      const double lnB_ref = std::log(std::exp(lnB) + 1e-32);
      const double h = lnB_ref - a * digamma(a + 1) - (b - 1) * digamma(b) + (a + b - 1) * digamma(a + b + 1);
      double t = mu * h;
      if (!std::isfinite(t)) t = 0;
      terms += std::min(t, 0.0);
    }
    r[8] = std_sum / C;
    double s = (H + std::log(2.0)) / (terms + 2 * H);
    if (s < 0) s = 1 / s;
    // certain item (top mean 1, or its Bernoulli variance below the 1e-9 floor): bottom of the ranking
    r[9] = (H == 0 || sorted[0] >= 1.0 || sorted[0] * (1 - sorted[0]) < 1e-9) ? -INFINITY : s;
  }
  return r;
}

/// Philox-4x32-10 (Salmon, Moraes, Dror and Shaw, SC'11), written from the paper independently of
/// labelwise/core/rng.hpp: 10 rounds of the two multiplications, key bumped by the Weyl constants.
inline std::array<std::uint32_t, 4> philox4x32_10(std::array<std::uint32_t, 4> c, std::uint32_t k0, std::uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    const std::uint64_t p0 = 0xD2511F53ull * c[0], p1 = 0xCD9E8D57ull * c[2];
    c = {static_cast<std::uint32_t>(p1 >> 32) ^ c[1] ^ k0, static_cast<std::uint32_t>(p1),
         static_cast<std::uint32_t>(p0 >> 32) ^ c[3] ^ k1, static_cast<std::uint32_t>(p0)};
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c;
}

/// The documented 64 random bits of (seed, stream, index) (docs/acquisition.md, "Random numbers"):
/// key (seed lo, seed hi), counter (index lo, index hi, stream, 0), the first two words, low first.
inline std::uint64_t philox_bits64(std::uint64_t seed, std::uint32_t stream, std::uint64_t index) {
  const auto w = philox4x32_10({static_cast<std::uint32_t>(index), static_cast<std::uint32_t>(index >> 32), stream, 0u},
                               static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32));
  return static_cast<std::uint64_t>(w[0]) | (static_cast<std::uint64_t>(w[1]) << 32);
}

/// The documented uniform: U = (2k + 1) / 2^53 with k the top 52 bits of the 64 (exact in float64).
inline double uniform_open_from_bits(std::uint64_t bits) {
  return std::ldexp(static_cast<double>(2 * (bits >> 12) + 1), -53);
}

/// Random probability vectors of several characters: spread, near one-hot, uniform, tiny entries.
inline std::vector<double> random_probs(std::mt19937_64& rng, int C, int character) {
  std::vector<double> q(C);
  std::gamma_distribution<double> g(character == 0 ? 1.0 : 0.3);
  std::uniform_int_distribution<int> pick(0, C - 1);
  double s = 0;
  for (int c = 0; c < C; ++c) {
    switch (character) {
      case 1: q[c] = 1e-4 * g(rng); break;  // near one-hot
      case 2: q[c] = 1.0; break;            // uniform
      case 3: q[c] = 1e-30 * (1 + g(rng)); break;  // tiny probabilities
      default: q[c] = g(rng) + 1e-12; break;
    }
  }
  if (character == 1 || character == 3) q[pick(rng)] = 1.0;
  for (double v : q) s += v;
  for (double& v : q) v /= s;
  return q;
}

/// Strides (in elements) of a [B, F, *spatial] feature map stored C-order, or channels-last
/// ([B, *spatial, F] in memory) and viewed as [B, F, *spatial].
inline std::vector<std::int64_t> feature_strides(std::int64_t F, const std::vector<std::int64_t>& spatial,
                                                 bool channels_last) {
  std::int64_t V = 1;
  for (auto v : spatial) V *= v;
  std::vector<std::int64_t> strides{F * V, channels_last ? 1 : V}, sp(spatial.size());
  std::int64_t s = channels_last ? F : 1;
  for (int d = static_cast<int>(spatial.size()) - 1; d >= 0; --d) {
    sp[d] = s;
    s *= spatial[d];
  }
  strides.insert(strides.end(), sp.begin(), sp.end());
  return strides;
}

/// BalEntAcq computed in float32 arithmetic on two backends: each rounds the probabilities to
/// float32 (softmax, or the float16 / bfloat16 values widened), and s = (H + ln 2) / (MJEnt + H)
/// amplifies a relative error e of them by about s² / (H + ln 2) (docs/metrics.md): the C++ CPU tests
/// accept 3e-3 + 2e-6 |s| relative against the float64 reference (and 5e-3 near the pole), so two
/// backends may differ by about twice that, never in sign. Measured on an H200: 1.1e-3 relative at
/// |s| ~ 330, 1.3 % at |s| ~ 2.3e5. Where the top class's mean is within 1e-2 of 1
/// (`least_confidence` < 1e-2), 1 - p̄ itself carries a relative error of up to ulp(1) / (1 - p̄), and,
/// as in the CPU tests for nearly certain items, only a number is asked for (measured on an H200:
/// 44.73 against 45.53 on such an item).
inline bool float32_balentacq_close(double a, double g, double least_confidence) {
  if (least_confidence < 1e-2) return !std::isnan(a) && !std::isnan(g);
  return std::isfinite(a) && std::isfinite(g) && (a > 0) == (g > 0) &&
         std::fabs(a - g) <= (1e-2 + 4e-6 * std::fabs(a)) * std::fabs(a);
}

/// Two backends' values of one metric agree (the CPU's a, the other's g): equal infinities (BalEntAcq
/// of a certain item); BalEntAcq's pole, where one side rounds the top mean to exactly 1 (-inf) and the
/// other gives s > 1e12; |a - g| <= t·max(1, |a|), where t = tol, plus 1e-12·|a| for BalEntAcq,
/// whose value amplifies last-bit differences near its pole; or, for BalEntAcq computed in float32
/// arithmetic, float32_balentacq_close with the CPU's least confidence of the item.
inline bool backends_agree(double a, double g, double tol, bool balentacq, bool float32 = false,
                           double least_confidence = 1.0) {
  if (std::isinf(a) && a == g) return true;
  if (balentacq && ((a == -INFINITY && g > 1e12) || (g == -INFINITY && a > 1e12))) return true;
  const double t = tol + (balentacq && std::isfinite(a) ? 1e-12 * std::fabs(a) : 0.0);
  if (std::fabs(a - g) <= t * std::max(1.0, std::fabs(a))) return true;
  return balentacq && float32 && float32_balentacq_close(a, g, least_confidence);
}

}  // namespace ref
