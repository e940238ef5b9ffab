// labelwise — loop bodies of core-set (k-center greedy) and BADGE (k-means++ on gradient embeddings).
// Plain inline functions with host/device qualifiers (LABELWISE_HD expands to nothing under g++), so a
// CUDA backend can include the same bodies. The CPU backend (src/cpu/diversity_cpu.cpp) is built with
// -ffp-contract=off: the Euclidean / cosine differences of two identical rows must be exactly 0.
#pragma once

#include <cmath>
#include <cstdint>

#include "labelwise/core/config.hpp"
#include "labelwise/core/rng.hpp"

namespace labelwise {
namespace detail {
inline namespace LABELWISE_ISA_NAMESPACE {

/// Uniform in (0, 1) of BADGE step t.
LABELWISE_HD inline double badge_uniform_of(std::uint64_t seed, std::uint64_t step) {
  return rng::uniform_open(rng::bits64(seed, rng::kStreamBadge, step));
}

/// Σ_d (scale·x[d·stride] − c[d])², accumulated in double (the simd reduction's order is fixed at
/// compile time, so the value never depends on the thread count). kScaled = false skips the multiply
/// (scale = 1). Identical rows give exactly 0 (no FMA).
template <bool kScaled, typename T>
LABELWISE_HD inline double sq_dist_row_impl(const T* x, std::int64_t stride, std::int64_t d, double scale,
                                            const double* c) {
  double s = 0.0;
  if (stride == 1) {
#if defined(LABELWISE_CPU_SIMD)
#pragma omp simd reduction(+ : s)
#endif
    for (std::int64_t k = 0; k < d; ++k) {
      const double e = (kScaled ? static_cast<double>(x[k]) * scale : static_cast<double>(x[k])) - c[k];
      s += e * e;
    }
  } else {
    for (std::int64_t k = 0; k < d; ++k) {
      const double v = static_cast<double>(x[k * stride]);
      const double e = (kScaled ? v * scale : v) - c[k];
      s += e * e;
    }
  }
  return s;
}

/// Squared distance to c of x scaled by `scale`: Euclidean feature_shift's power of two, or 1/|x|
/// (cosine on unit vectors; then c is the centre's unit vector).
template <typename T>
LABELWISE_HD inline double sq_dist_row(const T* x, std::int64_t stride, std::int64_t d, double scale,
                                       const double* c) {
  return sq_dist_row_impl<true>(x, stride, d, scale, c);
}

/// Σ_d (x[d·stride] − c[d])²: the Euclidean case without scaling (shift 0).
template <typename T>
LABELWISE_HD inline double sq_dist_row(const T* x, std::int64_t stride, std::int64_t d, const double* c) {
  return sq_dist_row_impl<false>(x, stride, d, 1.0, c);
}

/// Σ_d (scale·x[d·stride]) · c[d], accumulated in double; kScaled = false skips the multiply.
template <bool kScaled, typename T>
LABELWISE_HD inline double dot_row_impl(const T* x, std::int64_t stride, std::int64_t d, double scale, const double* c) {
  double s = 0.0;
  if (stride == 1) {
#if defined(LABELWISE_CPU_SIMD)
#pragma omp simd reduction(+ : s)
#endif
    for (std::int64_t k = 0; k < d; ++k) s += (kScaled ? static_cast<double>(x[k]) * scale : static_cast<double>(x[k])) * c[k];
  } else {
    for (std::int64_t k = 0; k < d; ++k) {
      const double v = static_cast<double>(x[k * stride]);
      s += (kScaled ? v * scale : v) * c[k];
    }
  }
  return s;
}

/// Σ_d x[d·stride] · c[d], accumulated in double.
template <typename T>
LABELWISE_HD inline double dot_row(const T* x, std::int64_t stride, std::int64_t d, const double* c) {
  return dot_row_impl<false>(x, stride, d, 1.0, c);
}

/// Σ_d (scale·x[d·stride]) · c[d] (scale: feature_shift's power of two).
template <typename T>
LABELWISE_HD inline double dot_row(const T* x, std::int64_t stride, std::int64_t d, double scale, const double* c) {
  return dot_row_impl<true>(x, stride, d, scale, c);
}

/// Squared distance between the gradient embeddings a⊗h and a'⊗h' from their factors:
/// ||a||²||h||² + ||a'||²||h'||² − 2 (a·a')(h·h'), with g2 = ||a||²||h||² and g2c = ||a'||²||h'||².
/// Results below 1e-12·(g2 + g2c) are cancellation error (the exact value of two equal embeddings
/// is 0) and return 0; never negative.
LABELWISE_HD inline double badge_sq_dist(double g2, double g2c, double aa, double hh) {
  const double d = (g2 + g2c) - 2.0 * (aa * hh);
  return d > 1e-12 * (g2 + g2c) ? d : 0.0;
}

/// a = p − onehot(argmax p) for one item (argmax ties: lower class), from C values v[k·stride]
/// that are probabilities (kind 0), log-probabilities (kind 1) or logits (kind 2; softmax with the
/// max subtracted). Writes a[0..C) and returns ||a||².
template <typename T>
LABELWISE_HD inline double badge_residual(const T* v, std::int64_t stride, std::int64_t c, int kind, double* a) {
  std::int64_t arg = 0;
  double best = static_cast<double>(v[0]);
  for (std::int64_t k = 1; k < c; ++k) {
    const double x = static_cast<double>(v[k * stride]);
    if (x > best) {
      best = x;
      arg = k;
    }
  }
  if (kind == 0) {
    for (std::int64_t k = 0; k < c; ++k) a[k] = static_cast<double>(v[k * stride]);
  } else if (kind == 1) {
    for (std::int64_t k = 0; k < c; ++k) a[k] = std::exp(static_cast<double>(v[k * stride]));
  } else {
    double z = 0.0;
    for (std::int64_t k = 0; k < c; ++k) {
      a[k] = std::exp(static_cast<double>(v[k * stride]) - best);
      z += a[k];
    }
    for (std::int64_t k = 0; k < c; ++k) a[k] /= z;
  }
  a[arg] -= 1.0;
  double n2 = 0.0;
  for (std::int64_t k = 0; k < c; ++k) n2 += a[k] * a[k];
  return n2;
}

}  // namespace LABELWISE_ISA_NAMESPACE
}  // namespace detail
}  // namespace labelwise
