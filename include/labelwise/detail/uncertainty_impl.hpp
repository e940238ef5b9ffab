// labelwise — the one loop body of the uncertainty metrics, compiled by g++ for the CPU
// (src/cpu/uncertainty_cpu.cpp) and by nvcc for CUDA (src/cuda/uncertainty_cuda.cu).
// It scores one item (one image / voxel): K samples x C classes, strided.
#pragma once

#include <cmath>
#include <cstdint>

#include "labelwise/core/config.hpp"
#include "labelwise/detail/special_functions.hpp"

namespace labelwise {
namespace detail {

/// Per-item validation outcome; the front door turns a non-zero code into an Error.
enum ItemStatus : int {
  kItemOk = 0,
  kItemNonFinite = 1,     // NaN or +Inf (or -Inf among probabilities)
  kItemNegative = 2,      // a negative probability
  kItemUnnormalised = 3,  // Σ p (or exp-sum of log-probabilities) off 1 by more than the tolerance
  kItemAllMasked = 4,     // a logit row that is -inf everywhere
};

constexpr unsigned metric_bit(int m) { return 1u << m; }

// Bit positions follow labelwise::Metric.
enum : unsigned {
  kBitPredictiveEntropy = 1u << 0,
  kBitExpectedEntropy = 1u << 1,
  kBitBald = 1u << 2,
  kBitLeastConfidence = 1u << 3,
  kBitMargin = 1u << 4,
  kBitRatio = 1u << 5,
  kBitVariationRatio = 1u << 6,
  kBitMaxMeanVariationRatio = 1u << 7,
  kBitMeanStd = 1u << 8,
  kBitBalEntAcq = 1u << 9,
};

/// Per-item accumulators, C entries each, owned by the caller (stack, thread-local or global scratch).
struct ItemScratch {
  double* first;  // p_0c: sums below are shifted by the first sample, so that the variance of
                  // nearly identical samples does not cancel catastrophically
  double* sum;    // Σ_k (p_kc - p_0c)
  double* sumsq;  // Σ_k (p_kc - p_0c)², only when MeanStd or BalEntAcq is requested
  double* row;    // exp(x - max) of the current sample, for logits / log-probabilities
  int* votes;     // number of samples whose arg-max is c, only for VariationRatio
};

/// Compute type for the element-wise work: float stays float, everything else double.
template <typename T> struct compute_type { using type = double; };
template <> struct compute_type<float> { using type = float; };

LABELWISE_HD inline float lw_exp(float v) { return ::expf(v); }
LABELWISE_HD inline double lw_exp(double v) { return ::exp(v); }
LABELWISE_HD inline float lw_log(float v) { return ::logf(v); }
LABELWISE_HD inline double lw_log(double v) { return ::log(v); }

/// The BalEntAcq per-class term t_c = min(μ_c · h_c, 0) of the reference implementation
/// (jaeohwoo/BalancedEntropy, src/torch_utils.py @ 5cc1a5c): μ and σ² floored at 1e-9,
/// Beta(α+1, β) moment match, h_c its differential entropy with ln B taken as
/// log(B + 1e-32) exactly as the reference evaluates it. Where that expression is not finite
/// (μ_c = 0 or 1 exactly, where the reference yields NaN) the limit value 0 is returned.
LABELWISE_HD inline double balentacq_class_term(double mean, double var) {
  const double mu = mean < 1e-9 ? 1e-9 : mean;
  const double v = var < 1e-9 ? 1e-9 : var;
  const double alpha = mu * mu * (1.0 - mu) / v - mu;
  const double beta = (1.0 / mu - 1.0) * alpha;
  const double log_beta_fn = log_abs_gamma(alpha + 1.0) + log_abs_gamma(beta) - log_abs_gamma(alpha + beta + 1.0);
  const double log_beta_ref = log_add_exp(log_beta_fn, -73.68272297580946);  // ln(1e-32)
  const double h = log_beta_ref - alpha * digamma(alpha + 1.0) - (beta - 1.0) * digamma(beta) +
                   (alpha + beta - 1.0) * digamma(alpha + beta + 1.0);
  const double t = mu * h;
  if (!(t > -INFINITY && t < INFINITY)) return 0.0;
  return t < 0.0 ? t : 0.0;
}

/// BalEntAcq from H = H[p̄] and Σ_c t_c: MJEnt = Σ t + H, s = (H + ln 2)/(MJEnt + H), s<0 → 1/s.
/// A certain item (a class with mean probability exactly 1, so H = 0 up to underflow) gets -inf,
/// the bottom of the ranking, where the reference's NaN sentinel (-99999999999) also puts it.
LABELWISE_HD inline double balentacq_from_terms(double entropy_of_mean, double sum_terms, double top_mean) {
  if (entropy_of_mean <= 0.0 || top_mean >= 1.0) return -INFINITY;
  const double mjent = sum_terms + entropy_of_mean;
  double s = (entropy_of_mean + kLn2) / (mjent + entropy_of_mean);
  if (s < 0.0) s = 1.0 / s;
  return s;
}

/// Scores one item. `x` points at element (k=0, c=0); sk / sc are the sample / class strides.
/// Writes the requested metrics into res[Metric] and returns an ItemStatus.
template <typename T>
LABELWISE_HD int score_item(const T* x, std::int64_t sk, std::int64_t sc, int K, int C, int input_kind,
                            unsigned mask, double tol, ItemScratch s, double* res) {
  using R = typename compute_type<T>::type;
  const bool need_ent = (mask & (kBitExpectedEntropy | kBitBald)) != 0;
  const bool need_sq = (mask & (kBitMeanStd | kBitBalEntAcq)) != 0;
  const bool need_votes = (mask & kBitVariationRatio) != 0;
  for (int c = 0; c < C; ++c) {
    s.sum[c] = 0.0;
    if (need_sq) s.sumsq[c] = 0.0;
    if (need_votes) s.votes[c] = 0;
  }
  double ent_sum = 0.0;
  for (int k = 0; k < K; ++k) {
    const T* r = x + k * sk;
    // Pass 1: validity, max and arg-max (strict '>' keeps the lowest index on ties).
    R mx = -INFINITY;
    int arg = 0;
    if (input_kind == 0) {
      double total = 0.0;
      for (int c = 0; c < C; ++c) {
        const R v = static_cast<R>(r[c * sc]);
        if (!(v >= R(0) && v <= R(2))) {
          if (v != v || v == INFINITY || v == -INFINITY) return kItemNonFinite;
          return v < R(0) ? kItemNegative : kItemUnnormalised;
        }
        total += static_cast<double>(v);
        if (v > mx) { mx = v; arg = c; }
      }
      if (fabs(total - 1.0) > tol) return kItemUnnormalised;
      for (int c = 0; c < C; ++c) {
        const R p = static_cast<R>(r[c * sc]);
        if (k == 0) s.first[c] = static_cast<double>(p);
        const double d = static_cast<double>(p) - s.first[c];
        s.sum[c] += d;
        if (need_sq) s.sumsq[c] += d * d;
        if (need_ent && p > R(0)) ent_sum -= static_cast<double>(p * lw_log(p));
      }
    } else {
      for (int c = 0; c < C; ++c) {
        const R v = static_cast<R>(r[c * sc]);
        if (v != v || v == INFINITY) return kItemNonFinite;
        if (v > mx) { mx = v; arg = c; }
      }
      if (mx == -INFINITY) return kItemAllMasked;
      double z = 0.0;
      for (int c = 0; c < C; ++c) {
        const R e = lw_exp(static_cast<R>(r[c * sc]) - mx);
        s.row[c] = static_cast<double>(e);
        z += static_cast<double>(e);
      }
      const double lse = static_cast<double>(mx) + log(z);
      if (input_kind == 1 && fabs(lse) > tol) return kItemUnnormalised;
      // Log-probabilities are used as given (like probabilities); logits are normalised.
      const double scale = input_kind == 1 ? exp(static_cast<double>(mx)) : 1.0 / z;
      const double shift = input_kind == 1 ? 0.0 : lse;
      for (int c = 0; c < C; ++c) {
        const double p = s.row[c] * scale;
        if (k == 0) s.first[c] = p;
        const double d = p - s.first[c];
        s.sum[c] += d;
        if (need_sq) s.sumsq[c] += d * d;
        if (need_ent && p > 0.0) ent_sum -= p * (static_cast<double>(r[c * sc]) - shift);
      }
    }
    if (need_votes) s.votes[arg] += 1;
  }

  // Finalise from the per-class sums.
  const double inv_k = 1.0 / K;
  double h_mean = 0.0, top1 = -1.0, top2 = -1.0;
  for (int c = 0; c < C; ++c) {
    const double mu = s.first[c] + s.sum[c] * inv_k;
    if (mu > 0.0) h_mean -= mu * log(mu);
    if (mu > top1) { top2 = top1; top1 = mu; }
    else if (mu > top2) { top2 = mu; }
  }
  res[0] = h_mean;
  const double e_ent = ent_sum * inv_k;
  res[1] = e_ent;
  res[2] = h_mean - e_ent > 0.0 ? h_mean - e_ent : 0.0;
  res[3] = 1.0 - top1;
  res[4] = 1.0 - (top1 - top2);
  res[5] = top2 / top1;
  if (need_votes) {
    int mode = 0;
    for (int c = 0; c < C; ++c) mode = s.votes[c] > mode ? s.votes[c] : mode;
    res[6] = 1.0 - mode * inv_k;
  }
  res[7] = 1.0 - top1;
  if (need_sq) {
    double std_sum = 0.0, terms = 0.0;
    const bool want_bal = (mask & kBitBalEntAcq) != 0;
    for (int c = 0; c < C; ++c) {
      const double mean_shift = s.sum[c] * inv_k;
      const double mu = s.first[c] + mean_shift;
      double var = (s.sumsq[c] - K * mean_shift * mean_shift) / (K - 1);
      var = var > 0.0 ? var : 0.0;
      std_sum += sqrt(var);
      if (want_bal) terms += balentacq_class_term(mu, var);
    }
    res[8] = std_sum / C;
    if (want_bal) res[9] = balentacq_from_terms(h_mean, terms, top1);
  }
  return kItemOk;
}

/// Flattened description of an item grid: the non-sample, non-class ("outer") axes.
struct ItemGrid {
  int ndim = 0;                  // number of outer axes
  std::int64_t shape[8] = {};    // their extents
  std::int64_t in_stride[8] = {};
  std::int64_t count = 0;        // product of shape
};

/// Offset (elements) of item `i` (row-major over the outer axes) given per-axis strides.
LABELWISE_HD inline std::int64_t item_offset(const ItemGrid& g, const std::int64_t* strides, std::int64_t i) {
  std::int64_t off = 0;
  for (int d = g.ndim - 1; d >= 0; --d) {
    const std::int64_t n = g.shape[d];
    const std::int64_t q = i / n;
    off += (i - q * n) * strides[d];
    i = q;
  }
  return off;
}

}  // namespace detail
}  // namespace labelwise
