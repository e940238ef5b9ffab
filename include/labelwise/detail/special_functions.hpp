// labelwise — special functions usable on host and device (one definition for both).
#pragma once

#include <cmath>
#include <cstdint>

#include "labelwise/core/config.hpp"

// Small element-wise functions that must inline into the CPU's vector loops (a call would keep a
// loop scalar).
#if defined(__GNUC__) && !defined(__CUDACC__)
#define LABELWISE_VEC_INLINE inline __attribute__((always_inline))
#else
#define LABELWISE_VEC_INLINE inline
#endif

namespace labelwise {
namespace detail {
inline namespace LABELWISE_ISA_NAMESPACE {

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

/// ln|Γ(x)| and ψ(x) together for x > 0, sharing the recurrence to x >= 10 and one logarithm
/// (Stirling series for ln Γ, asymptotic series for ψ; both accurate to ~1e-14 relative).
/// Other x (negative, NaN) fall back to log_abs_gamma and digamma.
LABELWISE_HD inline void log_gamma_and_digamma(double x, double& lg, double& dg) {
  if (!(x > 0.0) || x == INFINITY) {
    lg = log_abs_gamma(x);
    dg = digamma(x);
    return;
  }
  double prod = 1.0, rec = 0.0;
  while (x < 10.0) {
    prod *= x;
    rec += 1.0 / x;
    x += 1.0;
  }
  const double lx = std::log(x), r = 1.0 / x, r2 = r * r;
  dg = lx - 0.5 * r -
       r2 * (1.0 / 12 - r2 * (1.0 / 120 - r2 * (1.0 / 252 - r2 * (1.0 / 240 - r2 * (1.0 / 132 - r2 * (691.0 / 32760)))))) -
       rec;
  lg = (x - 0.5) * lx - x + 0.91893853320467274178 +
       r * (1.0 / 12 - r2 * (1.0 / 360 - r2 * (1.0 / 1260 - r2 * (1.0 / 1680 - r2 * (1.0 / 1188))))) -
       (prod == 1.0 ? 0.0 : std::log(prod));
}

#if !LABELWISE_ON_DEVICE
/// Vectorisable float natural log for normal x > 0 (error <= 1.6 ulp): x = 2^e · m with m in
/// [sqrt(1/2), sqrt(2)) taken from the bits (offset by the bits of sqrt(1/2), so no compare), then
/// ln(1 + f) = f - f²/2 + f³ P(f) for f = m - 1, P a degree-6 least-squares fit of relative error
/// (fitted for this library, max 1.5e-7 relative on the interval). No division: a float division
/// costs ~4× a fused multiply-add in throughput on the vector units.
LABELWISE_VEC_INLINE float fast_logf(float x) {
  constexpr std::uint32_t kSqrtHalfBits = 0x3f3504f3u;  // sqrt(1/2) as a float
  const std::uint32_t rel = __builtin_bit_cast(std::uint32_t, x) - kSqrtHalfBits;
  const int e = static_cast<int>(rel) >> 23;  // arithmetic shift: x / 2^e lies in [sqrt(1/2), sqrt(2))
  const float m = __builtin_bit_cast(float, (rel & 0x007fffffu) + kSqrtHalfBits);
  const float f = m - 1.0f, f2 = f * f;
  const float p =
      0.33333858847618103f +
      f * (-0.2500174641609192f +
           f * (0.1996539831161499f +
                f * (-0.16565634310245514f + f * (0.14876963198184967f + f * (-0.14350201189517975f + f * 0.08917863667011261f)))));
  return static_cast<float>(e) * 0.693147180559945309f + (f - 0.5f * f2 + f2 * f * p);
}

/// Vectorisable float exp for x <= 0 (relative error ~2e-7; 0 below -87.3, -inf gives 0):
/// x = n ln2 + r with |r| <= ln2/2, e^r by its Taylor polynomial, 2^n from the exponent bits.
LABELWISE_VEC_INLINE float fast_expf_nonpositive(float x) {
  const bool under = !(x >= -87.3f);
  const float xc = under ? 0.0f : x;
  const float n = __builtin_floorf(xc * 1.44269504088896341f + 0.5f);
  const float r = (xc - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
  const float poly =
      1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720 + r * (1.0f / 5040)))))));
  const float scale = __builtin_bit_cast(float, static_cast<std::uint32_t>(static_cast<int>(n) + 127) << 23);
  return under ? 0.0f : poly * scale;
}

/// Vectorisable double natural log for normal finite x > 0 (error ~1 ulp): exponent from the bits,
/// mantissa in [sqrt(1/2), sqrt(2)), 2·atanh(s) to s^22.
LABELWISE_VEC_INLINE double fast_log(double x) {
  const std::uint64_t bits = __builtin_bit_cast(std::uint64_t, x);
  // The biased exponent n as a double without an int64 -> double conversion (AVX2 and SSE2 have
  // none, which kept every loop calling this scalar): 2^52 + n has the bits 0x4330... | n.
  const double biased = __builtin_bit_cast(double, (bits >> 52) | 0x4330000000000000ULL) - 4503599627370496.0;
  double m = __builtin_bit_cast(double, (bits & 0x000fffffffffffffULL) | 0x3ff0000000000000ULL);
  const bool big = m > 1.4142135623730951;
  m = big ? 0.5 * m : m;
  const double de = biased - (big ? 1022.0 : 1023.0);
  const double s = (m - 1.0) / (m + 1.0), z = s * s;
  const double series =
      2.0 * s *
      (1.0 + z * (1.0 / 3 + z * (1.0 / 5 + z * (1.0 / 7 + z * (1.0 / 9 + z * (1.0 / 11 + z * (1.0 / 13 + z * (1.0 / 15 +
       z * (1.0 / 17 + z * (1.0 / 19 + z * (1.0 / 21 + z * (1.0 / 23))))))))))));
  return de * 6.93147180369123816490e-01 + (de * 1.90821492927058770002e-10 + series);
}

/// Vectorisable double exp for x <= 0 (error ~1 ulp; 0 below -708).
LABELWISE_VEC_INLINE double fast_exp_nonpositive(double x) {
  const bool under = !(x >= -708.0);
  const double xc = under ? 0.0 : x;
  const double n = __builtin_floor(xc * 1.4426950408889634 + 0.5);
  const double r = (xc - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
  double poly = 1.0 / 6227020800.0;  // 1/13!
  poly = poly * r + 1.0 / 479001600.0;
  poly = poly * r + 1.0 / 39916800.0;
  poly = poly * r + 1.0 / 3628800.0;
  poly = poly * r + 1.0 / 362880.0;
  poly = poly * r + 1.0 / 40320.0;
  poly = poly * r + 1.0 / 5040.0;
  poly = poly * r + 1.0 / 720.0;
  poly = poly * r + 1.0 / 120.0;
  poly = poly * r + 1.0 / 24.0;
  poly = poly * r + 1.0 / 6.0;
  poly = poly * r + 0.5;
  poly = poly * r + 1.0;
  poly = poly * r + 1.0;
  // 2^n from the exponent bits; n + 1023 (integral, in [0, 1023]) read from the low bits of
  // 2^52 + n + 1023, again without a double <-> int64 conversion (none on AVX2 / SSE2).
  const std::uint64_t nb = __builtin_bit_cast(std::uint64_t, n + (4503599627370496.0 + 1023.0));
  const double scale = __builtin_bit_cast(double, nb << 52);
  return under ? 0.0 : poly * scale;
}
#endif

LABELWISE_HD LABELWISE_VEC_INLINE double lw_log_d(double x) {
#if LABELWISE_ON_DEVICE
  return ::log(x);
#else
  return fast_log(x);
#endif
}
LABELWISE_HD LABELWISE_VEC_INLINE double lw_exp_nonpositive_d(double x) {
#if LABELWISE_ON_DEVICE
  return ::exp(x);
#else
  return fast_exp_nonpositive(x);
#endif
}

/// The shift of the branch-free Beta-entropy parts (uncertainty_impl.hpp, beta_entropy_parts): for
/// 0 < x < 10, x' = x + 10 with P = x(x+1)...(x+9) and D = P' (so that ln Γ(x) = ln Γ(x') - ln P and
/// ψ(x) = ψ(x') - D/P); for x >= 10 no shift (x' = x, P = 1, D = 0). Either way x' >= 10, where the
/// Stirling / asymptotic series reach ~1e-14, and P < 20^10 stays small enough that products of
/// several of them share one division. Branch-free (both products are computed, one is selected).
LABELWISE_HD LABELWISE_VEC_INLINE void gamma_shift10(double x, double& x_shifted, double& P, double& D) {
  // P as five pair products q_i = (x+i)(x+9-i) = x(x+9) + i(9-i) and D = P' (each q_i' = 2x + 9): half
  // the multiply-adds of the plain product. For large x these overflow harmlessly: they are not selected.
  const double u = x * (x + 9.0), w = 2.0 * x + 9.0;
  double p = u, d = w;
  const double c[4] = {8.0, 14.0, 18.0, 20.0};
  for (int i = 0; i < 4; ++i) {
    const double q = u + c[i];
    d = d * q + p * w;
    p = p * q;
  }
  const bool small = x < 10.0;
  x_shifted = small ? x + 10.0 : x;
  P = small ? p : 1.0;
  D = small ? d : 0.0;
}

/// log(exp(a) + exp(b)) without overflow.
LABELWISE_HD inline double log_add_exp(double a, double b) {
  const double hi = a > b ? a : b;
  const double lo = a > b ? b : a;
  if (hi == -INFINITY) return -INFINITY;
  return hi + std::log1p(std::exp(lo - hi));
}

}  // namespace LABELWISE_ISA_NAMESPACE
}  // namespace detail
}  // namespace labelwise
