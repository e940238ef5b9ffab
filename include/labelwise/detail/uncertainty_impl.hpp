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

/// Flattened description of an item grid: the non-sample, non-class ("outer") axes.
struct ItemGrid {
  int ndim = 0;                  // number of outer axes
  std::int64_t shape[8] = {};    // their extents
  std::int64_t in_stride[8] = {};
  std::int64_t count = 0;        // product of shape
};

inline namespace LABELWISE_ISA_NAMESPACE {

// SIMD reductions for the CPU backends (compiled with -fopenmp-simd; no OpenMP runtime is used).
// The summation order then depends on the vector width, so results may differ in the last bits
// between CPU variants (generic / AVX2 / AVX-512), never between runs or thread counts.
#if defined(LABELWISE_CPU_SIMD) && !defined(__CUDACC__)
#define LABELWISE_SIMD_PROBS _Pragma("omp simd reduction(+ : total, plogp) reduction(| : bad)")
#define LABELWISE_SIMD_MAX _Pragma("omp simd reduction(max : mx) reduction(| : bad)")
#define LABELWISE_SIMD_Z _Pragma("omp simd reduction(+ : z)")
#define LABELWISE_SIMD_PLOGP _Pragma("omp simd reduction(+ : plogp)")
#define LABELWISE_SIMD_TOTAL _Pragma("omp simd reduction(+ : total)")
#define LABELWISE_SIMD_SPREAD _Pragma("omp simd reduction(+ : ssum, tsum) reduction(| : slow)")
#define LABELWISE_SIMD_PLAIN _Pragma("omp simd")
#define LABELWISE_SIMD_FLAT_ENT _Pragma("omp simd reduction(+ : plogp) reduction(| : bad)")
#define LABELWISE_SIMD_FLAT _Pragma("omp simd reduction(| : bad)")
#define LABELWISE_SIMD_H _Pragma("omp simd reduction(+ : h)")
#define LABELWISE_SIMD_PL _Pragma("omp simd reduction(+ : pl)")
#else
#define LABELWISE_SIMD_PLAIN
#define LABELWISE_SIMD_FLAT_ENT
#define LABELWISE_SIMD_FLAT
#define LABELWISE_SIMD_H
#define LABELWISE_SIMD_PL
#define LABELWISE_SIMD_SPREAD
#define LABELWISE_SIMD_TOTAL
#define LABELWISE_SIMD_PROBS
#define LABELWISE_SIMD_MAX
#define LABELWISE_SIMD_Z
#define LABELWISE_SIMD_PLOGP
#endif

/// Compute type for the element-wise work: float stays float, everything else double.
template <typename T> struct compute_type { using type = double; };
template <> struct compute_type<float> { using type = float; };

/// Class loops that must vectorise run over blocks of this many classes; scratch arrays are padded
/// to a multiple of it (with zeros) by padded_classes().
constexpr int kClassBlock = 8;
LABELWISE_HD constexpr int padded_classes(int C) { return (C + kClassBlock - 1) / kClassBlock * kClassBlock; }

/// Per-item accumulators, C entries each (padded_classes(C) allocated, the padding zero), in the compute type A, owned by the caller
/// (thread-local on the CPU, global scratch on CUDA).
template <typename A>
struct ItemScratch {
  // The class statistics are float64 for every input type: BalEntAcq's Beta terms are very sensitive
  // to the variance of nearly certain classes.
  double* first;  // p_0c: the sums below are shifted by the first sample, so that the variance of
                  // nearly identical samples does not cancel catastrophically
  double* sum;    // Σ_k (p_kc - p_0c)
  double* sumsq;  // Σ_k (p_kc - p_0c)², only when MeanStd or BalEntAcq is requested
  A* row;     // exp(x - max) of the current sample, for logits / log-probabilities
  int* votes; // number of samples whose arg-max is c, only for VariationRatio
  A* block;   // K·C + 16 values: a contiguous item block copied (probabilities) or its
              // exp(x - item max) (logits); CPU dense path only, else null. row needs max(C, K) entries.
  A* block2;  // K·C values: exp(x - max)·(x - max) (logits, CPU dense path only)
  A* staged;  // K·C values: a strided item gathered into a contiguous block (CPU only; else null)
};

// Elementary functions: fast vectorisable float versions on the host, the CUDA ones on the device,
// and the C library's for double everywhere.
LABELWISE_HD inline float lw_exp_nonpositive(float v) {
#if LABELWISE_ON_DEVICE
  return ::expf(v);
#else
  return fast_expf_nonpositive(v);
#endif
}
LABELWISE_HD inline double lw_exp_nonpositive(double v) { return ::exp(v); }
/// p·ln p for p >= 0 (0 for p = 0; in float, terms of p below 1e-37 are below any sum's resolution and skipped).
LABELWISE_HD inline float lw_plogp(float p) {
#if LABELWISE_ON_DEVICE
  return p > 0.0f ? p * ::logf(p) : 0.0f;
#else
  return p > 1e-37f ? p * fast_logf(p) : 0.0f;
#endif
}
LABELWISE_HD inline double lw_plogp(double p) { return p > 0.0 ? p * ::log(p) : 0.0; }

/// The BalEntAcq per-class term t_c = min(μ_c · h_c, 0) of the reference implementation
/// (jaeohwoo/BalancedEntropy, src/torch_utils.py @ 5cc1a5c): μ and σ² floored at 1e-9,
/// Beta(α+1, β) moment match, h_c its differential entropy with ln B taken as
/// log(B + 1e-32) exactly as the reference evaluates it. Where that expression is not finite
/// (μ_c = 1 exactly, where the reference yields NaN) the limit value 0 is returned.
LABELWISE_HD inline double balentacq_class_term(double mean, double var) {
  const double mu = mean < 1e-9 ? 1e-9 : mean;
  const double v = var < 1e-9 ? 1e-9 : var;
  const double alpha = mu * mu * (1.0 - mu) / v - mu;
  const double beta = (1.0 / mu - 1.0) * alpha;
  double lg_a, dg_a, lg_b, dg_b, lg_ab, dg_ab;
  log_gamma_and_digamma(alpha + 1.0, lg_a, dg_a);
  log_gamma_and_digamma(beta, lg_b, dg_b);
  log_gamma_and_digamma(alpha + beta + 1.0, lg_ab, dg_ab);
  const double log_beta_fn = lg_a + lg_b - lg_ab;
  constexpr double kLog1em32 = -73.68272297580946;  // ln(1e-32)
  const double d = log_beta_fn - kLog1em32;
  // log(B + 1e-32); beyond |d| > 40 the smaller term changes the result by < 5e-18.
  const double log_beta_ref = d < -40.0 ? kLog1em32 : (d > 40.0 ? log_beta_fn : log_add_exp(log_beta_fn, kLog1em32));
  const double h = log_beta_ref - alpha * dg_a - (beta - 1.0) * dg_b + (alpha + beta - 1.0) * dg_ab;
  const double t = mu * h;
  if (!(t > -INFINITY && t < INFINITY)) return 0.0;
  return t < 0.0 ? t : 0.0;
}

/// H[p̄] = -Σ_c p̄_c ln p̄_c over blocks of kClassBlock classes (vectorised on the CPU; padding is 0).
template <typename A>
LABELWISE_HD double mean_entropy(const ItemScratch<A>& s, int C, double inv_k) {
  const double* __restrict__ first_p = s.first;
  const double* __restrict__ sum_p = s.sum;
  double h = 0.0;
  for (int cb = 0; cb < C; cb += kClassBlock) {
    LABELWISE_SIMD_H
    for (int j = 0; j < kClassBlock; ++j) {
      const int c = cb + j;
      const double mu = static_cast<double>(first_p[c]) + static_cast<double>(sum_p[c]) * inv_k;
      const bool pos = (mu > 0.0) & (c < C);
      const double lg = lw_log_d(pos ? mu : 1.0);
      h -= pos ? mu * lg : 0.0;
    }
  }
  return h;
}

/// The same term, branch-free for a vector loop over classes; valid when alpha + 1 > 0 and beta > 0
/// (callers send the other classes to balentacq_class_term).
LABELWISE_HD inline double balentacq_class_term_positive(double mu, double alpha, double beta) {
  // ln B(α+1, β) = ln Γ(α+1) + ln Γ(β) - ln Γ(α+β+1), with the three shift products in one log.
  double lg_a, dg_a, p_a, lg_b, dg_b, p_b, lg_ab, dg_ab, p_ab;
  log_gamma_and_digamma_shifted_parts(alpha + 1.0, lg_a, dg_a, p_a);
  log_gamma_and_digamma_shifted_parts(beta, lg_b, dg_b, p_b);
  log_gamma_and_digamma_shifted_parts(alpha + beta + 1.0, lg_ab, dg_ab, p_ab);
  const double log_beta_fn = lg_a + lg_b - lg_ab - lw_log_d(p_a * (p_b / p_ab));
  constexpr double kLog1em32 = -73.68272297580946;  // ln(1e-32)
  const double hi = log_beta_fn > kLog1em32 ? log_beta_fn : kLog1em32;
  const double gap = -fabs(log_beta_fn - kLog1em32);
  const double log_beta_ref = hi + (gap < -40.0 ? 0.0 : lw_log_d(1.0 + lw_exp_nonpositive_d(gap)));
  const double h = log_beta_ref - alpha * dg_a - (beta - 1.0) * dg_b + (alpha + beta - 1.0) * dg_ab;
  const double t = mu * h;
  return t < 0.0 ? t : 0.0;
}

/// Σ_c sqrt(var_c) and Σ_c t_c (BalEntAcq terms) from the shifted per-class sums, in one loop over
/// classes that the CPU backends vectorise; classes with a non-positive Gamma argument (rare: sample
/// variance above the Bernoulli bound) are redone exactly afterwards.
template <typename A>
LABELWISE_HD void class_spread_terms(const ItemScratch<A>& s, int K, int C, bool want_bal, double& std_sum,
                                     double& terms) {
  const double inv_k = 1.0 / K;
  // Local copies: loads through `s` inside the loops would block vectorisation.
  const double* __restrict__ first_p = s.first;
  const double* __restrict__ sum_p = s.sum;
  const double* __restrict__ sumsq_p = s.sumsq;
  int slow = 0;
  double ssum = 0.0, tsum = 0.0;
  if (!want_bal) {
    LABELWISE_SIMD_SPREAD
    for (int c = 0; c < C; ++c) {
      const double mean_shift = static_cast<double>(sum_p[c]) * inv_k;
      const double var = (static_cast<double>(sumsq_p[c]) - K * mean_shift * mean_shift) / (K - 1);
      ssum += sqrt(var > 0.0 ? var : 0.0);
    }
  } else {
    // Blocks of 8 classes (one AVX-512 vector of doubles, two AVX2 ones); the scratch is padded with
    // zeros to a multiple of kClassBlock, and lanes past C are masked out.
    for (int cb = 0; cb < C; cb += kClassBlock) {
      LABELWISE_SIMD_SPREAD
      for (int j = 0; j < kClassBlock; ++j) {
        const int c = cb + j;
        const bool real = c < C;
        const double mean_shift = static_cast<double>(sum_p[c]) * inv_k;
        const double mean = static_cast<double>(first_p[c]) + mean_shift;
        double var = (static_cast<double>(sumsq_p[c]) - K * mean_shift * mean_shift) / (K - 1);
        var = var > 0.0 ? var : 0.0;
        ssum += real ? sqrt(var) : 0.0;
        const double mu = mean < 1e-9 ? 1e-9 : mean;
        const double v = var < 1e-9 ? 1e-9 : var;
        const double alpha = mu * mu * (1.0 - mu) / v - mu;
        const double beta = (1.0 / mu - 1.0) * alpha;
        const bool ok = (alpha + 1.0 > 0.0) & (beta > 0.0) & (beta < 1e15) & (mean < 1.0);
        const double t = balentacq_class_term_positive(mu, ok ? alpha : 1.0, ok ? beta : 1.0);
        tsum += (ok & real) ? t : 0.0;
        slow |= (ok | !real) ? 0 : 1;
      }
    }
  }
  if (slow) {
    for (int c = 0; c < C; ++c) {
      const double mean_shift = static_cast<double>(s.sum[c]) * inv_k;
      const double mean = static_cast<double>(s.first[c]) + mean_shift;
      double var = (static_cast<double>(s.sumsq[c]) - K * mean_shift * mean_shift) / (K - 1);
      var = var > 0.0 ? var : 0.0;
      const double mu = mean < 1e-9 ? 1e-9 : mean;
      const double v = var < 1e-9 ? 1e-9 : var;
      const double alpha = mu * mu * (1.0 - mu) / v - mu;
      const double beta = (1.0 / mu - 1.0) * alpha;
      if (!((alpha + 1.0 > 0.0) && (beta > 0.0) && (beta < 1e15) && (mean < 1.0))) tsum += balentacq_class_term(mean, var);
    }
  }
  std_sum = ssum;
  terms = tsum;
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

/// Classifies an invalid sample row exactly (slow path, only taken on error).
template <typename T>
LABELWISE_HD int classify_bad_row(const T* r, std::int64_t sc, int C, int input_kind) {
  for (int c = 0; c < C; ++c) {
    const double v = static_cast<double>(r[c * sc]);
    if (v != v || v == INFINITY || (input_kind == 0 && v == -INFINITY)) return kItemNonFinite;
  }
  if (input_kind == 0)
    for (int c = 0; c < C; ++c)
      if (static_cast<double>(r[c * sc]) < 0.0) return kItemNegative;
  return kItemUnnormalised;
}

/// Adds one sample's probability p_c to the shifted per-class sums.
template <typename A>
LABELWISE_HD inline void accumulate(const ItemScratch<A>& s, int c, A pa, bool first_sample, bool need_sq) {
  const double p = static_cast<double>(pa);
  if (first_sample) {
    s.first[c] = p;
    s.sum[c] = 0.0;
    if (need_sq) s.sumsq[c] = 0.0;
  } else {
    const double d = p - s.first[c];
    s.sum[c] += d;
    if (need_sq) s.sumsq[c] += d * d;
  }
}

/// Class sums of a contiguous K x C block that was copied to scratch (`blk`, padded by kClassBlock),
/// row k scaled by row_scale[k] (or 1): blocks of kClassBlock lanes, lanes past C masked, so that the
/// loops vectorise for any C. Returns 0, or the first row whose total is off 1 by more than tol
/// plus 1 (check_totals only).
template <typename R>
LABELWISE_HD int accumulate_block(const R* blk, const R* row_scale, int K, int C, const ItemScratch<R>& s,
                                  bool check_totals, double tol) {
#if !LABELWISE_ON_DEVICE
  if (C <= 16) {
    // Few classes: the accumulators fit in registers (a fixed 16-lane block).
    double first[16], sum[16], sumsq[16];
    R total = R(0);
    LABELWISE_SIMD_TOTAL
    for (int j = 0; j < 16; ++j) {
      const bool real = j < C;
      const R v = blk[j];  // unconditional: the block is padded, and a masked load would not vectorise
      const R p = real ? v * (row_scale ? row_scale[0] : R(1)) : R(0);
      first[j] = static_cast<double>(p);
      sum[j] = 0.0;
      sumsq[j] = 0.0;
      total += p;
    }
    if (check_totals && !(fabs(static_cast<double>(total) - 1.0) <= tol)) return 1;
    for (int k = 1; k < K; ++k) {
      const R* __restrict__ r = blk + k * C;
      const R scale = row_scale ? row_scale[k] : R(1);
      total = R(0);
      LABELWISE_SIMD_TOTAL
      for (int j = 0; j < 16; ++j) {
        const bool real = j < C;
        const R v = r[j];
        const R p = real ? v * scale : R(0);
        const double d = static_cast<double>(p) - first[j];
        sum[j] += d;
        sumsq[j] += d * d;
        total += p;
      }
      if (check_totals && !(fabs(static_cast<double>(total) - 1.0) <= tol)) return k + 1;
    }
    for (int j = 0; j < C; ++j) {
      s.first[j] = first[j];
      s.sum[j] = sum[j];
      s.sumsq[j] = sumsq[j];
    }
    return 0;
  }
#endif
  double* __restrict__ first_p = s.first;
  double* __restrict__ sum_p = s.sum;
  double* __restrict__ sumsq_p = s.sumsq;
  for (int k = 0; k < K; ++k) {
    const R* __restrict__ r = blk + k * C;
    const R scale = row_scale ? row_scale[k] : R(1);
    R total = R(0);
    for (int cb = 0; cb < C; cb += kClassBlock) {
      if (k == 0) {
        LABELWISE_SIMD_TOTAL
        for (int j = 0; j < kClassBlock; ++j) {
          const int c = cb + j;
          const bool real = c < C;
          const R p = r[c] * scale;
          first_p[c] = real ? static_cast<double>(p) : 0.0;
          sum_p[c] = 0.0;
          sumsq_p[c] = 0.0;
          total += real ? p : R(0);
        }
      } else {
        LABELWISE_SIMD_TOTAL
        for (int j = 0; j < kClassBlock; ++j) {
          const int c = cb + j;
          const bool real = c < C;
          const R p = r[c] * scale;
          const double d = real ? static_cast<double>(p) - first_p[c] : 0.0;
          sum_p[c] += d;
          sumsq_p[c] += d * d;
          total += real ? p : R(0);
        }
      }
    }
    if (check_totals && !(fabs(static_cast<double>(total) - 1.0) <= tol)) return k + 1;
  }
  return 0;
}

/// Probabilities laid out as one contiguous K x C block: one flat vector loop over all K·C values
/// for the validity check and Σ p ln p (copying them to scratch), then the class sums.
/// Returns an ItemStatus; adds -Σ p ln p to ent_sum.
template <typename R, typename T>
LABELWISE_HD int contiguous_probs(const T* x, int K, int C, double tol, bool need_ent, const ItemScratch<R>& s,
                                  double& ent_sum) {
  const int n = K * C;
  int bad = 0;
  R plogp = R(0);
  R* __restrict__ blk = s.block;
  if (need_ent) {
    LABELWISE_SIMD_FLAT_ENT
    for (int i = 0; i < n; ++i) {
      const R v = static_cast<R>(x[i]);
      blk[i] = v;
      bad |= ((v >= R(0)) & (v <= R(2))) ? 0 : 1;  // NaN and ±Inf fail too
      plogp += lw_plogp(v);
    }
  } else {
    LABELWISE_SIMD_FLAT
    for (int i = 0; i < n; ++i) {
      const R v = static_cast<R>(x[i]);
      blk[i] = v;
      bad |= ((v >= R(0)) & (v <= R(2))) ? 0 : 1;
    }
  }
  if (bad) {
    for (int k = 0; k < K; ++k) {
      const int st = classify_bad_row(x + k * C, 1, C, 0);
      if (st != kItemUnnormalised) return st;
    }
    return kItemUnnormalised;
  }
  if (accumulate_block<R>(blk, nullptr, K, C, s, true, tol) != 0) return kItemUnnormalised;
  ent_sum -= static_cast<double>(plogp);
  return kItemOk;
}

/// Logits or log-probabilities laid out as one contiguous K x C block. Softmax is shift-invariant per
/// sample, so the exponentials are taken against the item's maximum in one flat vector loop; a sample
/// whose values all sit more than ~87 (float) below that maximum underflows to z = 0, and then the
/// item is redone row by row (returns -1). Otherwise returns an ItemStatus and adds -Σ p ln p:
/// per sample, Σ_c p_c ln p_c = (Σ_c e_c (x_c - m)) / z - ln z for logits (e = exp(x - m), z = Σ e),
/// and Σ_c p_c x_c with p = e·exp(m) for log-probabilities.
template <typename R, typename T>
LABELWISE_HD int contiguous_logs(const T* x, int K, int C, int input_kind, double tol, bool need_ent,
                                 const ItemScratch<R>& s, double& ent_sum) {
  const int n = K * C;
  int bad = 0;
  R mx = -INFINITY;
  LABELWISE_SIMD_MAX
  for (int i = 0; i < n; ++i) {
    const R v = static_cast<R>(x[i]);
    bad |= ((v != v) | (v == INFINITY)) ? 1 : 0;
    mx = v > mx ? v : mx;
  }
  if (bad) return kItemNonFinite;
  if (mx == -INFINITY) return kItemAllMasked;
  R* __restrict__ e = s.block;
  R* __restrict__ t = s.block2;  // e·(x - m): the entropy numerator, 0 where e = 0
  LABELWISE_SIMD_PLAIN
  for (int i = 0; i < n; ++i) {
    const R xm = static_cast<R>(x[i]) - mx;
    const R ei = lw_exp_nonpositive(xm);
    e[i] = ei;
    t[i] = ei > R(0) ? ei * xm : R(0);
  }
  R* scale = s.row;  // per-sample scale, K entries
  double plogp = 0.0;
  for (int k = 0; k < K; ++k) {
    R z = R(0), u = R(0);
    for (int c = 0; c < C; ++c) {
      z += e[k * C + c];
      u += t[k * C + c];
    }
    if (!(z > R(0))) return -1;  // underflow against the item maximum (or a fully masked sample)
    const double log_z = lw_log_d(static_cast<double>(z));
    const double lse = static_cast<double>(mx) + log_z;
    if (input_kind == 1 && !(fabs(lse) <= tol)) return kItemUnnormalised;
    if (input_kind == 1) {
      const double em = exp(static_cast<double>(mx));
      scale[k] = static_cast<R>(em);
      plogp += em * (static_cast<double>(u) + static_cast<double>(mx) * static_cast<double>(z));
    } else {
      scale[k] = static_cast<R>(1.0 / static_cast<double>(z));
      plogp += static_cast<double>(u) / static_cast<double>(z) - log_z;
    }
  }
  accumulate_block<R>(e, scale, K, C, s, false, tol);
  if (need_ent) ent_sum -= plogp;
  return kItemOk;
}

/// Scores one item. `x` points at element (k=0, c=0); sk / sc are the sample / class strides
/// (kDense: the class stride is 1, which lets the compiler vectorise the class loops).
/// Writes the requested metrics into res[Metric] and returns an ItemStatus.
template <typename T, bool kDense = false>
LABELWISE_HD int score_item(const T* x, std::int64_t sk, std::int64_t sc_arg, int K, int C, int input_kind,
                            unsigned mask, double tol, ItemScratch<typename compute_type<T>::type> s, double* res) {
  using R = typename compute_type<T>::type;
  const std::int64_t sc = kDense ? 1 : sc_arg;
  const bool need_ent = (mask & (kBitExpectedEntropy | kBitBald)) != 0;
  const bool need_sq = (mask & (kBitMeanStd | kBitBalEntAcq)) != 0;
  const bool need_votes = (mask & kBitVariationRatio) != 0;
  if (need_votes)
    for (int c = 0; c < C; ++c) s.votes[c] = 0;
  double ent_sum = 0.0;
  bool contiguous = s.block != nullptr && sc == 1 && sk == C;
  const T* blk = x;
  if (s.block != nullptr && !contiguous && s.staged != nullptr) {
    // Any other layout (BaaL's [N, C, K], transposed or sliced views): gather the item's K x C values
    // into a contiguous block once, reading along the smaller stride, then take the contiguous path.
    R* st = s.staged;
    if (sk < sc) {
      for (int c = 0; c < C; ++c)
        for (int k = 0; k < K; ++k) st[k * C + c] = static_cast<R>(x[k * sk + c * sc]);
    } else {
      for (int k = 0; k < K; ++k)
        for (int c = 0; c < C; ++c) st[k * C + c] = static_cast<R>(x[k * sk + c * sc]);
    }
    blk = reinterpret_cast<const T*>(st);  // T and R are the same type for float and double input
    contiguous = true;
  }
  if (contiguous) {
    const int st = input_kind == 0 ? contiguous_probs<R>(blk, K, C, tol, need_ent, s, ent_sum)
                                   : contiguous_logs<R>(blk, K, C, input_kind, tol, need_ent, s, ent_sum);
    if (st == -1) {
      contiguous = false;  // underflow against the item maximum: redo this item sample by sample
      ent_sum = 0.0;
    } else if (st != kItemOk) {
      return st;
    }
  }
  for (int k = 0; k < K; ++k) {
    const T* r = x + k * sk;
    const bool first = k == 0;
    if (contiguous) {
      // done above
    } else if (input_kind == 0) {
      // One pass for validity, normalisation and the sample's entropy; a second for the sums.
      int bad = 0;
      R total = R(0), plogp = R(0);
      LABELWISE_SIMD_PROBS
      for (int c = 0; c < C; ++c) {
        const R v = static_cast<R>(r[c * sc]);
        bad |= !(v >= R(0) && v <= R(2));  // also catches NaN and ±Inf
        total += v;
        if (need_ent) plogp += lw_plogp(v);
      }
      if (bad || !(fabs(static_cast<double>(total) - 1.0) <= tol)) return classify_bad_row(r, sc, C, input_kind);
      ent_sum -= static_cast<double>(plogp);
      for (int c = 0; c < C; ++c) accumulate<R>(s, c, static_cast<R>(r[c * sc]), first, need_sq);
    } else {
      int bad = 0;
      R mx = -INFINITY;
      LABELWISE_SIMD_MAX
      for (int c = 0; c < C; ++c) {
        const R v = static_cast<R>(r[c * sc]);
        bad |= (v != v) | (v == INFINITY);
        mx = v > mx ? v : mx;
      }
      if (bad) return kItemNonFinite;
      if (mx == -INFINITY) return kItemAllMasked;
      R z = R(0);
      LABELWISE_SIMD_Z
      for (int c = 0; c < C; ++c) {
        const R e = lw_exp_nonpositive(static_cast<R>(r[c * sc]) - mx);
        s.row[c] = e;
        z += e;
      }
      const double lse = static_cast<double>(mx) + log(static_cast<double>(z));
      if (input_kind == 1 && !(fabs(lse) <= tol)) return kItemUnnormalised;
      // Log-probabilities are used as given (like probabilities); logits are normalised.
      const R scale = static_cast<R>(input_kind == 1 ? exp(static_cast<double>(mx)) : 1.0 / static_cast<double>(z));
      const R shift = static_cast<R>(input_kind == 1 ? 0.0 : lse);
      R plogp = R(0);
      LABELWISE_SIMD_PLOGP
      for (int c = 0; c < C; ++c) {
        const R p = s.row[c] * scale;
        accumulate<R>(s, c, p, first, need_sq);
        if (need_ent) plogp += p > R(0) ? p * (static_cast<R>(r[c * sc]) - shift) : R(0);
      }
      ent_sum -= static_cast<double>(plogp);
    }
    if (need_votes) {
      // Arg-max of the sample (strict '>' keeps the lowest index on ties).
      R best = static_cast<R>(r[0]);
      int arg = 0;
      for (int c = 1; c < C; ++c) {
        const R v = static_cast<R>(r[c * sc]);
        if (v > best) { best = v; arg = c; }
      }
      s.votes[arg] += 1;
    }
  }

  // Finalise from the per-class sums (in double).
  const double inv_k = 1.0 / K;
  const double h_mean = mean_entropy(s, C, inv_k);
  double top1 = -1.0, top2 = -1.0;
  for (int c = 0; c < C; ++c) {
    const double mu = static_cast<double>(s.first[c]) + static_cast<double>(s.sum[c]) * inv_k;
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
    res[6] = static_cast<double>(K - mode) / K;
  }
  res[7] = 1.0 - top1;
  if (need_sq) {
    double std_sum = 0.0, terms = 0.0;
    const bool want_bal = (mask & kBitBalEntAcq) != 0;
    class_spread_terms(s, K, C, want_bal, std_sum, terms);
    res[8] = std_sum / C;
    if (want_bal) res[9] = balentacq_from_terms(h_mean, terms, top1);
  }
  return kItemOk;
}

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

}  // namespace LABELWISE_ISA_NAMESPACE
}  // namespace detail
}  // namespace labelwise
