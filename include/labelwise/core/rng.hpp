// labelwise — counter-based random numbers that are the same bits on every thread count and device.
//
// Randomised methods never carry RNG state: the random number of item i is a pure function of
// (seed, stream, i), computed by the Philox-4x32-10 block cipher (Salmon, Moraes, Dror, Shaw,
// "Parallel random numbers: as easy as 1, 2, 3", SC'11). So a batch is the same whichever thread or
// CUDA block happens to handle item i, and a shard that knows its items' global indices draws exactly
// the numbers one machine would.
//
// The floating-point part (uniform → exponential → Gumbel) uses only IEEE-754 +, -, *, / in round-to-
// nearest (no FMA contraction: explicit __d*_rn intrinsics on the device; the CPU backends are built
// with -ffp-contract=off) and a logarithm written here from those operations, so that host and device
// produce identical bits. The library's log (glibc, CUDA libdevice) differs between them in the last
// bit, which would be enough to reorder two nearly equal keys.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "labelwise/core/config.hpp"

#ifndef LABELWISE_ISA_NAMESPACE  // normally set by config.hpp: inline functions compiled with different
#define LABELWISE_ISA_NAMESPACE isa_base  // instruction sets / FP flags must not merge at link time
#endif

namespace labelwise {
namespace rng {
inline namespace LABELWISE_ISA_NAMESPACE {

/// Streams: independent sequences under the same seed, one per randomised method, so that a user
/// who passes the same seed to two methods does not get correlated draws.
enum Stream : std::uint32_t {
  kStreamStochastic = 1,  ///< Gumbel noise of labelwise::stochastic
  kStreamBatchBald = 2,   ///< sampled joint configurations of labelwise::batchbald
  kStreamDropout = 3,     ///< dropout masks of the segmentation heads (docs/segmentation.md)
  kStreamBadge = 0x42414447u,          ///< "BADG": BADGE's k-means++ draws (labelwise::badge_uniform)
  kStreamClusterMargin = 0x434C4D47u,  ///< "CLMG": cluster-margin's order within a cluster
};

/// A Philox counter or output block: four 32-bit words.
struct Philox4x32 {
  std::uint32_t v[4];
};

/// Philox-4x32-10: 10 rounds of the multiply-xor Feistel-like round of Salmon et al. (SC'11),
/// multipliers 0xD2511F53 / 0xCD9E8D57, Weyl key increments 0x9E3779B9 / 0xBB67AE85.
LABELWISE_HD inline Philox4x32 philox4x32_10(Philox4x32 ctr, std::uint32_t k0, std::uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    const std::uint64_t p0 = static_cast<std::uint64_t>(0xD2511F53u) * ctr.v[0];
    const std::uint64_t p1 = static_cast<std::uint64_t>(0xCD9E8D57u) * ctr.v[2];
    const std::uint32_t hi0 = static_cast<std::uint32_t>(p0 >> 32), lo0 = static_cast<std::uint32_t>(p0);
    const std::uint32_t hi1 = static_cast<std::uint32_t>(p1 >> 32), lo1 = static_cast<std::uint32_t>(p1);
    ctr.v[0] = hi1 ^ ctr.v[1] ^ k0;
    ctr.v[1] = lo1;
    ctr.v[2] = hi0 ^ ctr.v[3] ^ k1;
    ctr.v[3] = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return ctr;
}

/// 64 random bits for item `index` of `stream` under `seed`:
/// Philox-4x32-10 with key (seed low, seed high) and counter (index low, index high, stream, 0);
/// the first two output words, low word first.
LABELWISE_HD inline std::uint64_t bits64(std::uint64_t seed, std::uint32_t stream, std::uint64_t index) {
  const Philox4x32 ctr{{static_cast<std::uint32_t>(index), static_cast<std::uint32_t>(index >> 32), stream, 0u}};
  const Philox4x32 r = philox4x32_10(ctr, static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32));
  return static_cast<std::uint64_t>(r.v[0]) | (static_cast<std::uint64_t>(r.v[1]) << 32);
}

// ---- exactly rounded arithmetic that no compiler may fuse into an FMA ------------------------------
// a·b, a + b, a − b, a / b, each rounded to nearest once: the device intrinsics on CUDA (never
// contracted), the plain operators on the host, where the translation units that rely on them are
// built with -ffp-contract=off (CMakeLists.txt): the same bits on every CPU and on CUDA.
LABELWISE_HD inline double mul_rn(double a, double b) {
#if LABELWISE_ON_DEVICE
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
LABELWISE_HD inline double add_rn(double a, double b) {
#if LABELWISE_ON_DEVICE
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
LABELWISE_HD inline double sub_rn(double a, double b) {
#if LABELWISE_ON_DEVICE
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
LABELWISE_HD inline double div_rn(double a, double b) {
#if LABELWISE_ON_DEVICE
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}

/// The IEEE-754 bit pattern of x, and back.
LABELWISE_HD inline std::uint64_t double_bits(double x) {
  std::uint64_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}
LABELWISE_HD inline double bits_double(std::uint64_t b) {
  double x;
  std::memcpy(&x, &b, sizeof x);
  return x;
}

/// Natural logarithm with the same bits on host and device (within 2 ulp of the true value).
/// x = 2^e · m with m in (√2/2, √2]; ln m = 2 atanh(s), s = (m − 1)/(m + 1), |s| < 0.1716, by its
/// Taylor series 2s (1 + s²/3 + s⁴/5 + … + s²⁰/21) (the first omitted term is below 2^-55), evaluated
/// as f − s·(f − 2s²·P(s²)) with f = m − 1;
/// ln x = e·ln2_hi + (ln m + e·ln2_lo) with ln2_hi holding 21 significant bits, so e·ln2_hi is exact.
/// ln 0 = −inf, ln(+inf) = +inf, ln of a negative number or NaN = NaN. Subnormals are handled.
LABELWISE_HD inline double det_log(double x) {
  if (!(x > 0.0)) return x == 0.0 ? -INFINITY : NAN;
  if (x == INFINITY) return x;
  std::uint64_t b = double_bits(x);
  int e = 0;
  if (b < (std::uint64_t(1) << 52)) {  // subnormal: scale by 2^54 (exact)
    x = mul_rn(x, 18014398509481984.0);
    b = double_bits(x);
    e = -54;
  }
  e += static_cast<int>(b >> 52) - 1023;
  double m = bits_double((b & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull);  // [1, 2)
  if (m > 1.4142135623730951) {
    m = mul_rn(m, 0.5);  // exact
    e += 1;
  }
  const double f = sub_rn(m, 1.0);  // exact (Sterbenz)
  const double s = div_rn(f, add_rn(2.0, f));
  const double z = mul_rn(s, s);
  // Horner in z: P = Σ_{k=1..10} z^(k-1) / (2k+1), so that ln m = 2s + 2s·z·P.
  double p = 1.0 / 21.0;
  p = add_rn(mul_rn(p, z), 1.0 / 19.0);
  p = add_rn(mul_rn(p, z), 1.0 / 17.0);
  p = add_rn(mul_rn(p, z), 1.0 / 15.0);
  p = add_rn(mul_rn(p, z), 1.0 / 13.0);
  p = add_rn(mul_rn(p, z), 1.0 / 11.0);
  p = add_rn(mul_rn(p, z), 1.0 / 9.0);
  p = add_rn(mul_rn(p, z), 1.0 / 7.0);
  p = add_rn(mul_rn(p, z), 1.0 / 5.0);
  p = add_rn(mul_rn(p, z), 1.0 / 3.0);
  // 2s = f − s·f, so ln m = f − s·(f − 2z·P): the leading term f is exact and the rounding error
  // of s only enters through s·f ≈ f²/2 (about one ulp in total, also next to x = 1).
  const double two_z_p = mul_rn(add_rn(z, z), p);
  const double log_m = sub_rn(f, mul_rn(s, sub_rn(f, two_z_p)));
  if (e == 0) return log_m;
  const double de = static_cast<double>(e);
  constexpr double kLn2Hi = 0.6931467056274414;     // 0x3FE62E4200000000
  constexpr double kLn2Lo = 4.7493250390316726e-07;  // ln 2 − kLn2Hi
  return add_rn(mul_rn(de, kLn2Hi), add_rn(log_m, mul_rn(de, kLn2Lo)));
}

/// Uniform on the open interval (0, 1): (2k + 1) / 2^53 with k the top 52 of the 64 bits, so
/// 0 and 1 are never drawn and the value is exact.
LABELWISE_HD inline double uniform_open(std::uint64_t bits) {
  return static_cast<double>(((bits >> 12) << 1) | 1u) * 1.1102230246251565e-16;  // 2^-53
}

/// Standard Gumbel variate −ln(−ln U) of 64 random bits; finite, in about [−3.6, 36.7].
LABELWISE_HD inline double gumbel(std::uint64_t bits) {
  const double exponential = -det_log(uniform_open(bits));
  return -det_log(exponential);
}

}  // namespace LABELWISE_ISA_NAMESPACE
}  // namespace rng
}  // namespace labelwise
