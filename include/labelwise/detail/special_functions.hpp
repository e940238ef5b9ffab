// labelwise — special functions usable on host and device (one definition for both).
#pragma once

#include <cmath>

#include "labelwise/core/config.hpp"

namespace labelwise {
namespace detail {

constexpr double kPi = 3.14159265358979323846;
constexpr double kLn2 = 0.69314718055994530942;

/// ln|Γ(x)| for any real x that is not a pole (like torch.lgamma / scipy.special.gammaln).
LABELWISE_HD inline double log_abs_gamma(double x) {
#if LABELWISE_ON_DEVICE
  return ::lgamma(x);
#else
  int sign = 0;
  return ::lgamma_r(x, &sign);  // re-entrant: plain lgamma writes the global signgam
#endif
}

/// Digamma ψ(x) = d/dx ln Γ(x) for real x; NaN at the poles 0, -1, -2, ...
/// Reflection for x < 0, recurrence up to x >= 10, then the asymptotic series
/// ψ(x) ~ ln x - 1/(2x) - Σ B_2n / (2n x^2n); absolute error below 1e-14.
LABELWISE_HD inline double digamma(double x) {
  if (!(x == x)) return x;
  if (x <= 0.0 && std::floor(x) == x) return NAN;
  double result = 0.0;
  if (x < 0.0) {
    // ψ(x) = ψ(1 - x) - π / tan(π x)
    result = -kPi / std::tan(kPi * x);
    x = 1.0 - x;
  }
  while (x < 10.0) {
    result -= 1.0 / x;
    x += 1.0;
  }
  const double r = 1.0 / (x * x);
  const double series =
      r * (1.0 / 12 - r * (1.0 / 120 - r * (1.0 / 252 - r * (1.0 / 240 - r * (1.0 / 132 - r * (691.0 / 32760))))));
  return result + std::log(x) - 0.5 / x - series;
}

/// log(exp(a) + exp(b)) without overflow.
LABELWISE_HD inline double log_add_exp(double a, double b) {
  const double hi = a > b ? a : b;
  const double lo = a > b ? b : a;
  if (hi == -INFINITY) return -INFINITY;
  return hi + std::log1p(std::exp(lo - hi));
}

}  // namespace detail
}  // namespace labelwise
