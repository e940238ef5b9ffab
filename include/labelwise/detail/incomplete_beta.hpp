// labelwise — the regularized incomplete beta function, its inverse, the binomial CDF and the
// Clopper–Pearson upper bound, in float64. Host-only (they run once per calibration, not per item).
//
// Definitions (DLMF 8.17): I_x(a, b) = B_x(a, b) / B(a, b), the CDF of Beta(a, b) at x, with
// B_x(a, b) = ∫_0^x t^(a-1) (1-t)^(b-1) dt.
//
// Method, written for labelwise from the formulas:
//   * I_x(a, b) = x^a (1-x)^b / (a B(a, b)) · 1 / (1 + d_1 / (1 + d_2 / (1 + ...))) (DLMF 8.17.22) with
//       d_(2m+1) = -(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1)),  d_(2m) = m (b - m) x / ((a + 2m - 1)(a + 2m)),
//     evaluated by the modified Lentz algorithm (Thompson & Barnett, J. Comput. Phys. 64, 1986), for
//     x < (a + 1) / (a + b + 2), where it converges fast; otherwise through I_x(a, b) = 1 - I_(1-x)(b, a).
//   * The prefactor ln[x^a (1-x)^b / B(a, b)] is formed without cancelling large logarithms: for
//     a, b >= 10 from Stirling's series, ln Γ(z) = (z - 1/2) ln z - z + ln(2π)/2 + σ(z),
//       ln[...] = a log1p(d/a) + b log1p(-d/b) + ln(ab/(a+b))/2 - ln(2π)/2 + σ(a+b) - σ(a) - σ(b),
//     d = b x - a (1 - x); for one large argument the large log-gammas are differenced the same way.
//   * The inverse (the Beta quantile) is a Newton iteration safeguarded by bisection on a bracket
//     [lo, hi] that always contains the root, so it converges for every p in (0, 1).
// Accuracy (against scipy.special.betainc / betaincinv, tests/python/test_propagation.py): typically
// 1e-14 relative; the worst case, one parameter below 10 and the other large with x near the mean,
// is about 2e-16 · (a + b) (1e-9 at a + b = 1e7), where the fraction is ill-conditioned on both sides.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "labelwise/core/config.hpp"

namespace labelwise {
namespace detail {
inline namespace LABELWISE_ISA_NAMESPACE {

constexpr double kHalfLn2Pi = 0.91893853320467274178;  // ln(2π) / 2

/// σ(z) = ln Γ(z) - [(z - 1/2) ln z - z + ln(2π)/2] by Stirling's series (z >= 10: error < 1e-17).
inline double stirling_remainder(double z) {
  const double r = 1.0 / z, r2 = r * r;
  // B_2k / (2k (2k - 1)) for k = 1..7
  return r * (1.0 / 12 + r2 * (-1.0 / 360 + r2 * (1.0 / 1260 + r2 * (-1.0 / 1680 + r2 * (1.0 / 1188 +
                r2 * (-691.0 / 360360 + r2 * (1.0 / 156)))))));
}

inline double log_gamma_host(double x) {
  int sign = 0;
  return ::lgamma_r(x, &sign);
}

/// ln B(a, b) for a, b > 0.
inline double log_beta(double a, double b) {
  if (a > b) std::swap(a, b);  // a <= b
  if (a >= 10.0) {
    // (a - 1/2) ln(a/(a+b)) + (b - 1/2) ln(b/(a+b)) + ln(a+b)/2 ... rewritten with log1p.
    const double s = a + b;
    return (a - 0.5) * std::log(a / s) + b * std::log1p(-a / s) - 0.5 * std::log(b) + kHalfLn2Pi +
           stirling_remainder(a) + stirling_remainder(b) - stirling_remainder(s);
  }
  if (b >= 10.0) {
    // ln Γ(b) - ln Γ(a + b) = -a ln(a + b) - (b - 1/2) log1p(a/b) + a + σ(b) - σ(a + b)
    const double s = a + b;
    return log_gamma_host(a) - a * std::log(s) - (b - 0.5) * std::log1p(a / b) + a + stirling_remainder(b) -
           stirling_remainder(s);
  }
  return log_gamma_host(a) + log_gamma_host(b) - log_gamma_host(a + b);
}

/// ln[x^a y^b / B(a, b)] with y = 1 - x given separately. The smaller of x and y is taken as the exact
/// one (the other was typically rounded from 1 - it): ln of the larger comes from log1p of the smaller.
inline double ibeta_log_prefactor(double x, double y, double a, double b) {
  if (x <= 0.0 || y <= 0.0) return -std::numeric_limits<double>::infinity();
  if (a >= 10.0 && b >= 10.0) {
    const double d = b * x - a * y;  // x (a + b) - a: how far x is from a / (a + b)
    // Near the mode (where the value is not negligible) the Stirling form avoids cancelling a ln x
    // against ln B; far from it log1p(d/a) would itself cancel, and the value underflows anyway.
    if (std::fabs(d) <= 0.5 * std::min(a, b))
      return a * std::log1p(d / a) + b * std::log1p(-d / b) + 0.5 * std::log(a / (a + b) * b) - kHalfLn2Pi +
             stirling_remainder(a + b) - stirling_remainder(a) - stirling_remainder(b);
  }
  const double lx = x <= y ? std::log(x) : std::log1p(-y);
  const double ly = y <= x ? std::log(y) : std::log1p(-x);
  return a * lx + b * ly - log_beta(a, b);
}

/// The continued fraction 1 / (1 + d_1 / (1 + d_2 / ...)) of DLMF 8.17.22 (modified Lentz).
/// *converged (optional) tells whether successive convergents agreed within 1e-16 before the cap.
inline double ibeta_continued_fraction(double x, double a, double b, bool* converged = nullptr) {
  constexpr double kTiny = 1e-300;
  constexpr double kEps = 1e-16;
  const int max_terms = 200 + static_cast<int>(20.0 * std::sqrt(a + b));
  // f = b_0 + a_1 / (b_1 + a_2 / (b_2 + ...)) with b_0 = 0, a_1 = 1, b_m = 1, a_(m+1) = d_m.
  double f = kTiny, C = kTiny, D = 0.0;
  for (int m = 1; m <= 2 * max_terms + 1; ++m) {
    double am;  // numerator a_m of the m-th term
    if (m == 1) {
      am = 1.0;
    } else {
      const int i = m - 1;  // d_i
      if (i % 2 == 1) {
        const double k = (i - 1) / 2;
        am = -(a + k) * (a + b + k) * x / ((a + 2 * k) * (a + 2 * k + 1));
      } else {
        const double k = i / 2;
        am = k * (b - k) * x / ((a + 2 * k - 1) * (a + 2 * k));
      }
    }
    D = 1.0 + am * D;  // b_m = 1
    if (std::fabs(D) < kTiny) D = kTiny;
    C = 1.0 + am / C;
    if (std::fabs(C) < kTiny) C = kTiny;
    D = 1.0 / D;
    const double delta = C * D;
    f *= delta;
    if (m > 1 && std::fabs(delta - 1.0) < kEps) {
      if (converged) *converged = true;
      return f;
    }
  }
  if (converged) *converged = false;
  return f;
}

/// I_x(a, b) and its complement 1 - I_x(a, b), each accurate to a few ulps relative to itself where
/// it is the directly computed side. x in [0, 1], y = 1 - x, a, b > 0.
inline void ibeta_pair(double x, double y, double a, double b, double* I, double* Ic) {
  if (x <= 0.0) {
    *I = 0.0;
    *Ic = 1.0;
    return;
  }
  if (y <= 0.0) {
    *I = 1.0;
    *Ic = 0.0;
    return;
  }
  // The fraction converges fast for x < (a + 1) / (a + b + 2). Near that point, with one parameter
  // small (< 10) and the other large, the side this rule picks is ill-conditioned: its value F is
  // huge (1 + d_1 / (...) nearly cancels; relative error about F · 1e-16), while the other side,
  // led by the small parameter, has terms of size about (large parameter) · (its x) / (4m) and stays
  // accurate just past its own switch point (up to 1.5 times it). So there the other side is evaluated
  // too and kept when it converged to a smaller F. (With both parameters large, or further past its
  // switch point, the other side is unstable and is never used.)
  bool x_side = x < (a + 1.0) / (a + b + 2.0);
  double F = x_side ? ibeta_continued_fraction(x, a, b) : ibeta_continued_fraction(y, b, a);
  const double other_z = x_side ? y : x, other_p = x_side ? b : a;
  if (F > 64.0 && other_p < 10.0 && other_z < 1.5 * (other_p + 1.0) / (a + b + 2.0)) {
    bool ok = false;
    const double G = x_side ? ibeta_continued_fraction(y, b, a, &ok) : ibeta_continued_fraction(x, a, b, &ok);
    if (ok && G > 0.0 && G < F) {
      x_side = !x_side;
      F = G;
    }
  }
  // Clamped to [0, 1]: with a parameter far below 1 the side computed can round a few 1e-14 above 1
  // (and its complement below 0).
  if (x_side) {
    const double v = std::min(1.0, std::exp(ibeta_log_prefactor(x, y, a, b)) * F / a);
    *I = v;
    *Ic = 1.0 - v;
  } else {
    const double v = std::min(1.0, std::exp(ibeta_log_prefactor(y, x, b, a)) * F / b);
    *Ic = v;
    *I = 1.0 - v;
  }
}

inline double ibeta(double x, double a, double b) {
  double I, Ic;
  ibeta_pair(x, 1.0 - x, a, b, &I, &Ic);
  return I;
}

/// The x in [0, 1] with I_x(a, b) = p, given p and q = 1 - p separately (0 < p < 1).
inline double ibeta_inverse(double p, double q, double a, double b) {
  if (!(p > 0.0)) return 0.0;
  if (!(q > 0.0)) return 1.0;
  const bool use_complement = p > 0.5;  // compare the smaller tail: no cancellation near 1
  const double lnB = log_beta(a, b);
  const double log_target = use_complement ? std::log(q) : std::log(p);
  // Residual in log space, increasing in x: r(x) = ln I_x - ln p, or ln q - ln(1 - I_x). Tails far
  // below 1e-100 (Clopper-Pearson at tiny delta) keep full relative accuracy this way; the linear
  // residual I_x - p stopped short of the root there. *tail = the compared tail at x.
  auto residual = [&](double x, double* tail) {
    double I, Ic;
    ibeta_pair(x, 1.0 - x, a, b, &I, &Ic);
    *tail = use_complement ? Ic : I;
    if (!(*tail > 0.0)) return use_complement ? HUGE_VAL : -HUGE_VAL;
    return use_complement ? log_target - std::log(Ic) : std::log(I) - log_target;
  };
  double lo = 0.0, hi = 1.0;
  // Start at the mean, or at the small-x / small-(1-x) tail approximation when that side is thin.
  double x = a / (a + b);
  {
    const double lx = (std::log(p) + std::log(a) + lnB) / a;  // I_x ~ x^a / (a B) for small x
    if (lx < std::log(x)) x = std::exp(lx);
    const double ly = (std::log(q) + std::log(b) + lnB) / b;  // 1 - I_x ~ (1-x)^b / (b B) for x near 1
    if (ly < std::log(1.0 - x)) x = -std::expm1(ly);
    if (!(x > 0.0 && x < 1.0)) x = 0.5;
  }
  for (int it = 0; it < 400; ++it) {
    double tail = 0.0;
    const double r = residual(x, &tail);
    if (r == 0.0 || std::fabs(r) <= 1e-15) return x;
    if (r < 0.0) lo = x;
    else hi = x;
    // Newton step on the log residual: d/dx ln T = ±f(x) / T, f(x) = x^(a-1) (1-x)^(b-1) / B(a, b).
    const double log_density = (a - 1.0) * std::log(x) + (b - 1.0) * std::log1p(-x) - lnB;
    double next = std::isfinite(r) ? x - r * std::exp(std::log(tail) - log_density) : -1.0;
    if (!(next > lo && next < hi)) {
      // Bisect; geometrically when the bracket spans orders of magnitude near 0.
      next = (lo == 0.0 && hi > 0.0 && hi < 1e-3) ? hi * 1e-3 : 0.5 * (lo + hi);
      if (lo > 0.0 && hi / lo > 1e3) next = std::sqrt(lo * hi);
    }
    // steps relative to the nearer end: near 1 the answer's precision is that of 1 - x
    if (next == x || std::fabs(next - x) <= 1e-15 * std::min(x, 1.0 - x) || hi - lo <= 4e-16 * hi) return next;
    x = next;
  }
  return x;
}

/// P(Binomial(n, theta) <= k) = I_(1-theta)(n - k, k + 1) for 0 <= k < n.
inline double binomial_cdf(std::int64_t k, std::int64_t n, double theta) {
  if (k < 0) return 0.0;
  if (k >= n) return 1.0;
  if (theta <= 0.0) return 1.0;
  if (theta >= 1.0) return 0.0;
  double I, Ic;
  ibeta_pair(1.0 - theta, theta, static_cast<double>(n - k), static_cast<double>(k + 1), &I, &Ic);
  return I;
}

/// Clopper–Pearson one-sided upper confidence bound for a binomial proportion after k errors in n
/// trials at level 1 - delta: the theta with P(Binomial(n, theta) <= k) = delta, i.e. the
/// (1 - delta) quantile of Beta(k + 1, n - k); 1 when k = n; 1 - delta^(1/n) when k = 0.
inline double clopper_pearson_upper(std::int64_t k, std::int64_t n, double delta) {
  if (n <= 0 || k >= n) return 1.0;
  if (k <= 0) return -std::expm1(std::log(delta) / static_cast<double>(n));
  return ibeta_inverse(1.0 - delta, delta, static_cast<double>(k + 1), static_cast<double>(n - k));
}

}  // namespace LABELWISE_ISA_NAMESPACE
}  // namespace detail
}  // namespace labelwise
