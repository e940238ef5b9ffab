// labelwise — the one loop body of the uncertainty metrics, compiled by g++ for the CPU
// (src/cpu/uncertainty_cpu.cpp) and by nvcc for CUDA (src/cuda/uncertainty_cuda.cu).
// It scores one item (one image / voxel): K samples x C classes, strided.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <type_traits>
#if defined(__AVX512F__) && defined(__AVX512DQ__) && !defined(__CUDACC__)
#include <immintrin.h>
#define LABELWISE_ROWS_AVX512 1
#endif

#include "labelwise/core/config.hpp"
#include "labelwise/core/error.hpp"
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
#define LABELWISE_SIMD_PLOGP _Pragma("omp simd reduction(+ : plogp, psum)")
#define LABELWISE_SIMD_TOTAL _Pragma("omp simd reduction(+ : total)")
#define LABELWISE_SIMD_SPREAD _Pragma("omp simd reduction(+ : ssum, tsum) reduction(| : slow)")
#define LABELWISE_SIMD_PLAIN _Pragma("omp simd")
#define LABELWISE_SIMD_FLAT_ENT _Pragma("omp simd reduction(+ : plogp) reduction(| : bad)")
#define LABELWISE_SIMD_FLAT _Pragma("omp simd reduction(| : bad)")
#define LABELWISE_SIMD_H _Pragma("omp simd reduction(+ : h)")
#define LABELWISE_SIMD_PL _Pragma("omp simd reduction(+ : pl)")
#define LABELWISE_SIMD_BITS _Pragma("omp simd reduction(| : bits)")
#define LABELWISE_SIMD_BAND _Pragma("omp simd reduction(| : any_band, any_slow)")
#else
#define LABELWISE_SIMD_BAND
#define LABELWISE_SIMD_BITS
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

/// Σ p ln p over an item's flat values is summed in lanes of the compute type and flushed into
/// float64 every this many values (float32 input: ~1e-7 relative at any K·C).
constexpr int kEntFlush = 256;

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

// Elementary functions: fast vectorisable versions on the host (float, and double p·ln p through
// fast_log, ~1 ulp), the CUDA ones on the device.
LABELWISE_HD LABELWISE_VEC_INLINE float lw_exp_nonpositive(float v) {
#if LABELWISE_ON_DEVICE
  return ::expf(v);
#else
  return fast_expf_nonpositive(v);
#endif
}
LABELWISE_HD LABELWISE_VEC_INLINE double lw_exp_nonpositive(double v) { return ::exp(v); }
/// p·ln p for p >= 0 (0 for p = 0; in float, terms of p below 1e-37 are below any sum's resolution and skipped).
LABELWISE_HD LABELWISE_VEC_INLINE float lw_plogp(float p) {
#if LABELWISE_ON_DEVICE
  return p > 0.0f ? p * ::logf(p) : 0.0f;
#else
  return p > 1e-37f ? p * fast_logf(p) : 0.0f;
#endif
}
LABELWISE_HD LABELWISE_VEC_INLINE double lw_plogp(double p) { return p > 0.0 ? p * lw_log_d(p) : 0.0; }

constexpr double kLog1em32 = -73.68272297580946;  // ln(1e-32), the reference's guard inside log(B + 1e-32)

/// Class mean p̄_c and sample variance (ddof = 1, clamped at 0) from the shifted sums: the first
/// sample's p_0c, Σ_k (p_kc - p_0c) and Σ_k (p_kc - p_0c)², over K >= 2 samples (inv_k = 1 / K).
LABELWISE_HD LABELWISE_VEC_INLINE void class_mean_var(double first, double sum, double sumsq, int K, double inv_k,
                                                    double& mean, double& var) {
  const double mean_shift = sum * inv_k;
  mean = first + mean_shift;
  const double v = (sumsq - K * mean_shift * mean_shift) * (1.0 / (K - 1));  // one division per loop, hoisted
  var = v > 0.0 ? v : 0.0;
}

/// The reference implementation's floor of BalEntAcq's class means and variances: max(v, 1e-9).
constexpr double kBalEntAcqFloor = 1e-9;
LABELWISE_HD LABELWISE_VEC_INLINE double balentacq_floor(double v) { return v < kBalEntAcqFloor ? kBalEntAcqFloor : v; }

/// The moment-matched Beta of BalEntAcq's class term for class mean `mean` and sample variance `var`:
/// μ and σ² floored at 1e-9, α = μ²(1 - μ)/σ² - μ, β = (1/μ - 1)·α. Returns whether the fast term
/// balentacq_class_term_positive(mu, alpha, beta) applies (α + 1 > 0, 0 < β < 1e15, mean < 1);
/// otherwise the exact balentacq_class_term(mean, var) must be taken. Branch-free.
LABELWISE_HD LABELWISE_VEC_INLINE bool balentacq_beta_params(double mean, double var, double& mu, double& alpha,
                                                           double& beta) {
  mu = balentacq_floor(mean);
  const double v = balentacq_floor(var);
  // 1/σ² and 1/μ from one division (μσ² lies in [1e-18, 1]).
  const double inv = 1.0 / (mu * v);
  alpha = mu * mu * (1.0 - mu) * (mu * inv) - mu;
  beta = (v * inv - 1.0) * alpha;
  return (alpha + 1.0 > 0.0) & (beta > 0.0) & (beta < 1e15) & (mean < 1.0);
}

/// The BalEntAcq per-class term t_c = min(μ_c · h_c, 0) of the reference implementation
/// (jaeohwoo/BalancedEntropy, src/torch_utils.py @ 5cc1a5c): μ and σ² floored at 1e-9,
/// Beta(α+1, β) moment match, h_c its differential entropy with ln B taken as
/// log(B + 1e-32) exactly as the reference evaluates it. Where that expression is not finite
/// (μ_c = 1 exactly, where the reference yields NaN) the limit value 0 is returned.
LABELWISE_HD inline double balentacq_class_term(double mean, double var) {
  double mu, alpha, beta;
  balentacq_beta_params(mean, var, mu, alpha, beta);
  double lg_a, dg_a, lg_b, dg_b, lg_ab, dg_ab;
  log_gamma_and_digamma(alpha + 1.0, lg_a, dg_a);
  log_gamma_and_digamma(beta, lg_b, dg_b);
  log_gamma_and_digamma(alpha + beta + 1.0, lg_ab, dg_ab);
  const double log_beta_fn = lg_a + lg_b - lg_ab;
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

/// The two parts of BalEntAcq's h = log(B(A, B) + 1e-32) - (A-1) ψ(A) - (B-1) ψ(B) + (S-2) ψ(S) with
/// A = α+1, B = β, S = α+β+1 (the differential entropy of Beta(A, B) up to the guard), branch-free for
/// a vector loop over classes; valid for α + 1 > 0 and 0 < β < 1e15 (callers send the other classes
/// to balentacq_class_term). Returns ln B(A, B) and w = -(A-1) ψ(A) - (B-1) ψ(B) + (S-2) ψ(S).
///
/// Each argument X is shifted to X' >= 10 only when X < 10 (gamma_shift10), then
///   ln Γ(X) = (X' - 1/2) ln X' - X' + ln(2π)/2 + Σ_n B_2n / (2n(2n-1) X'^(2n-1)) - ln P_X   (Stirling)
///   ψ(X)    = ln X' - 1/(2X') - Σ_n B_2n / (2n X'^2n) - D_X / P_X                       (asymptotic)
/// (Abramowitz & Stegun 6.1.41 and 6.3.18; the recurrences 6.1.15 / 6.3.5 for the shift), with series
/// truncated as in log_gamma_and_digamma (~1e-14 relative at X' >= 10). Since every X' >= 10 and
/// every P_X < 20^10, the six reciprocals 1/X' and 1/P_X come from one division of their product
/// (below 1e80), and ln P_A + ln P_B - ln P_S from one logarithm: one division and four logarithms
/// per class instead of seven divisions and five logarithms.
LABELWISE_HD LABELWISE_VEC_INLINE void beta_entropy_parts(double alpha, double beta, double& log_beta_fn, double& w) {
  double ya, pa, da, yb, pb, db, ys, ps, ds;
  gamma_shift10(alpha + 1.0, ya, pa, da);
  gamma_shift10(beta, yb, pb, db);
  gamma_shift10(alpha + beta + 1.0, ys, ps, ds);
  const double ym = ya * yb * ys, pm = pa * pb * ps;
  const double inv = 1.0 / (ym * pm);
  const double inv_ym = pm * inv, inv_pm = ym * inv;
  const double ra = yb * ys * inv_ym, rb = ya * ys * inv_ym, rs = ya * yb * inv_ym;  // 1 / X'
  const double dpa = da * (pb * ps * inv_pm), dpb = db * (pa * ps * inv_pm), dps = ds * (pa * pb * inv_pm);  // D / P
  const double la = lw_log_d(ya), lb = lw_log_d(yb), ls = lw_log_d(ys);
  const double log_p = lw_log_d(pa * pb * (pa * pb * inv_pm));  // ln(P_A P_B / P_S), as (P_A P_B)² / (P_A P_B P_S)
  const double ra2 = ra * ra, rb2 = rb * rb, rs2 = rs * rs;
  // Σ_n B_2n / (2n(2n-1) r^-(2n-1)) and Σ_n B_2n / (2n r^-2n) at r = 1/X'.
  const double sta = ra * (1.0 / 12 - ra2 * (1.0 / 360 - ra2 * (1.0 / 1260 - ra2 * (1.0 / 1680 - ra2 * (1.0 / 1188)))));
  const double stb = rb * (1.0 / 12 - rb2 * (1.0 / 360 - rb2 * (1.0 / 1260 - rb2 * (1.0 / 1680 - rb2 * (1.0 / 1188)))));
  const double sts = rs * (1.0 / 12 - rs2 * (1.0 / 360 - rs2 * (1.0 / 1260 - rs2 * (1.0 / 1680 - rs2 * (1.0 / 1188)))));
  const double asa =
      ra2 * (1.0 / 12 - ra2 * (1.0 / 120 - ra2 * (1.0 / 252 - ra2 * (1.0 / 240 - ra2 * (1.0 / 132 - ra2 * (691.0 / 32760))))));
  const double asb =
      rb2 * (1.0 / 12 - rb2 * (1.0 / 120 - rb2 * (1.0 / 252 - rb2 * (1.0 / 240 - rb2 * (1.0 / 132 - rb2 * (691.0 / 32760))))));
  const double ass =
      rs2 * (1.0 / 12 - rs2 * (1.0 / 120 - rs2 * (1.0 / 252 - rs2 * (1.0 / 240 - rs2 * (1.0 / 132 - rs2 * (691.0 / 32760))))));
  const double lga = (ya - 0.5) * la - ya + sta;  // ln Γ(X) + ln P_X - ln(2π)/2
  const double lgb = (yb - 0.5) * lb - yb + stb;
  const double lgs = (ys - 0.5) * ls - ys + sts;
  log_beta_fn = lga + lgb - lgs + 0.91893853320467274178 - log_p;
  const double dga = la - 0.5 * ra - asa - dpa;  // ψ(X)
  const double dgb = lb - 0.5 * rb - asb - dpb;
  const double dgs = ls - 0.5 * rs - ass - dps;
  w = (alpha + beta - 1.0) * dgs - alpha * dga - (beta - 1.0) * dgb;
}

/// log(B + 1e-32) from ln B (the reference's guard); beyond |ln B - ln 1e-32| > 40 the smaller term
/// changes the result by < 5e-18 and is dropped (exactly: no logarithm there).
LABELWISE_HD LABELWISE_VEC_INLINE double balentacq_guarded_log_beta(double log_beta_fn) {
  const double hi = log_beta_fn > kLog1em32 ? log_beta_fn : kLog1em32;
  const double gap = -fabs(log_beta_fn - kLog1em32);
  return hi + (gap < -40.0 ? 0.0 : lw_log_d(1.0 + lw_exp_nonpositive_d(gap)));
}

/// The same term, branch-free for a vector loop over classes; valid when alpha + 1 > 0 and
/// 0 < beta < 1e15 (callers send the other classes to balentacq_class_term).
LABELWISE_HD LABELWISE_VEC_INLINE double balentacq_class_term_positive(double mu, double alpha, double beta) {
  double log_beta_fn, w;
  beta_entropy_parts(alpha, beta, log_beta_fn, w);
  const double t = mu * (balentacq_guarded_log_beta(log_beta_fn) + w);
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
      double mean, var;
      class_mean_var(first_p[c], sum_p[c], sumsq_p[c], K, inv_k, mean, var);
      ssum += sqrt(var);
    }
  } else {
    // Blocks of 8 classes (one AVX-512 vector of doubles, two AVX2 ones); the scratch is padded with
    // zeros to a multiple of kClassBlock, and lanes past C are masked out.
    for (int cb = 0; cb < C; cb += kClassBlock) {
      LABELWISE_SIMD_SPREAD
      for (int j = 0; j < kClassBlock; ++j) {
        const int c = cb + j;
        const bool real = c < C;
        double mean, var;
        class_mean_var(first_p[c], sum_p[c], sumsq_p[c], K, inv_k, mean, var);
        ssum += real ? sqrt(var) : 0.0;
        double mu, alpha, beta;
        const bool ok = balentacq_beta_params(mean, var, mu, alpha, beta);
        const double t = balentacq_class_term_positive(mu, ok ? alpha : 1.0, ok ? beta : 1.0);
        tsum += (ok & real) ? t : 0.0;
        slow |= (ok | !real) ? 0 : 1;
      }
    }
  }
  if (slow) {
    for (int c = 0; c < C; ++c) {
      double mean, var, mu, alpha, beta;
      class_mean_var(s.first[c], s.sum[c], s.sumsq[c], K, inv_k, mean, var);
      if (!balentacq_beta_params(mean, var, mu, alpha, beta)) tsum += balentacq_class_term(mean, var);
    }
  }
  std_sum = ssum;
  terms = tsum;
}

/// BalEntAcq from H = H[p̄] and Σ_c t_c: MJEnt = Σ t + H, s = (H + ln 2)/(MJEnt + H), s<0 → 1/s.
/// A certain item gets -inf, the bottom of the ranking, where the reference's NaN sentinel
/// (-99999999999) also puts exactly certain ones: a class with mean probability 1 (so H = 0 up to
/// underflow), or so close to 1 that the Bernoulli variance bound p̄(1 - p̄) is below the variance
/// floor 1e-9 (float64 inputs only): there every moment-matched Beta is invalid, every t_c is 0, and
/// the formula's value jumps from about -1e9 (just above) to about +ln 2 / (2H) (docs/metrics.md).
LABELWISE_HD inline double balentacq_from_terms(double entropy_of_mean, double sum_terms, double top_mean) {
  if (entropy_of_mean <= 0.0 || top_mean >= 1.0 || top_mean * (1.0 - top_mean) < kBalEntAcqFloor) return -INFINITY;
  const double mjent = sum_terms + entropy_of_mean;
  double s = (entropy_of_mean + kLn2) / (mjent + entropy_of_mean);
  if (s < 0.0) s = 1.0 / s;
  return s;
}

/// What the metrics of one item are made of: H[p̄], Σ_k H[p_k] (ent_sum), the two largest class
/// means (top1 >= top2; equal on ties), the modal arg-max vote count, Σ_c std_c and Σ_c t_c.
struct ItemSummary {
  double entropy_of_mean, ent_sum, top1, top2;
  int mode;
  double std_sum, terms;
};

/// The ten metrics of an item from its summary, into res[Metric] (the ones `mask` asks for; the
/// others may be left unset).
LABELWISE_HD inline void finish_metrics(const ItemSummary& m, int K, int C, unsigned mask, double* res) {
  const double inv_k = 1.0 / K;
  res[0] = m.entropy_of_mean;
  const double e_ent = m.ent_sum * inv_k;
  res[1] = e_ent;
  res[2] = m.entropy_of_mean - e_ent > 0.0 ? m.entropy_of_mean - e_ent : 0.0;
  res[3] = 1.0 - m.top1;
  res[4] = 1.0 - (m.top1 - m.top2);
  res[5] = m.top2 / m.top1;
  if (mask & kBitVariationRatio) res[6] = static_cast<double>(K - m.mode) / K;
  res[7] = 1.0 - m.top1;
  if (mask & (kBitMeanStd | kBitBalEntAcq)) res[8] = m.std_sum / C;
  if (mask & kBitBalEntAcq) res[9] = balentacq_from_terms(m.entropy_of_mean, m.terms, m.top1);
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

/// The status of a probability item known to be bad (the samples before k0 passed): the first sample
/// from k0 on with NaN / ±Inf or a negative value names the error, else it is unnormalised. The one
/// rule of every path (block, contiguous, row by row), so that they all name the same error.
template <typename T>
LABELWISE_HD int classify_bad_probs(const T* x, std::int64_t sk, std::int64_t sc, int K, int C, int k0 = 0) {
  for (int k = k0; k < K; ++k) {
    const int st = classify_bad_row(x + k * sk, sc, C, 0);
    if (st != kItemUnnormalised) return st;
  }
  return kItemUnnormalised;
}

/// The status of an item whose sample k0 failed score_item's row-by-row checks with status `row_status`
/// (the samples before k0 passed), by the rules of the contiguous and block paths, so that every path
/// names the same error: probabilities: the first sample from k0 on with NaN / ±Inf or a negative
/// value, else unnormalised; logits / log-probabilities: NaN or +Inf in any sample wins over sample
/// k0's own status (all -inf, or unnormalised log-probabilities).
template <typename T>
LABELWISE_HD int classify_failed_item(const T* x, std::int64_t sk, std::int64_t sc, int K, int C, int input_kind,
                                      int k0, int row_status) {
  if (input_kind == 0) return classify_bad_probs(x, sk, sc, K, C, k0);
  if (row_status == kItemNonFinite) return row_status;
  for (int k = k0 + 1; k < K; ++k)
    for (int c = 0; c < C; ++c) {
      const double v = static_cast<double>(x[k * sk + c * sc]);
      if (v != v || v == INFINITY) return kItemNonFinite;
    }
  return row_status;
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

#if !LABELWISE_ON_DEVICE
/// Σ of 16 values by a fixed pairwise tree (vectorises to 4 shuffle + add levels).
template <typename R>
inline R tree_sum16(const R* p) {
  R t8[8], t4[4];
  LABELWISE_SIMD_PLAIN
  for (int j = 0; j < 8; ++j) t8[j] = p[j] + p[j + 8];
  LABELWISE_SIMD_PLAIN
  for (int j = 0; j < 4; ++j) t4[j] = t8[j] + t8[j + 4];
  return (t4[0] + t4[2]) + (t4[1] + t4[3]);
}
#endif

/// Class sums of a contiguous K x C block that was copied to scratch (`blk`, padded by kClassBlock),
/// row k scaled by row_scale[k] (or 1): blocks of kClassBlock lanes, lanes past C masked, so that the
/// loops vectorise for any C. Returns 0, or non-zero when a row's total is off 1 by more than tol
/// (check_totals only).
template <typename R>
LABELWISE_HD int accumulate_block(const R* blk, const R* row_scale, int K, int C, const ItemScratch<R>& s,
                                  bool check_totals, double tol) {
#if !LABELWISE_ON_DEVICE
  if (C <= 16) {
    // Few classes: the accumulators fit in registers (a fixed 16-lane block).
    double first[16], sum[16], sumsq[16];
    R pr[16];
    LABELWISE_SIMD_PLAIN
    for (int j = 0; j < 16; ++j) {
      const bool real = j < C;
      const R v = blk[j];  // unconditional: the block is padded, and a masked load would not vectorise
      const R p = real ? v * (row_scale ? row_scale[0] : R(1)) : R(0);
      pr[j] = p;
      first[j] = static_cast<double>(p);
      sum[j] = 0.0;
      sumsq[j] = 0.0;
    }
    // Row totals by a fixed tree (an in-order horizontal sum is a 16-add dependency chain), checked
    // without a branch per row.
    int bad = check_totals && !(fabs(static_cast<double>(tree_sum16(pr)) - 1.0) <= tol);
    for (int k = 1; k < K; ++k) {
      const R* __restrict__ r = blk + k * C;
      const R scale = row_scale ? row_scale[k] : R(1);
      LABELWISE_SIMD_PLAIN
      for (int j = 0; j < 16; ++j) {
        const bool real = j < C;
        const R v = r[j];
        const R p = real ? v * scale : R(0);
        pr[j] = p;
        const double d = static_cast<double>(p) - first[j];
        sum[j] += d;
        sumsq[j] += d * d;
      }
      if (check_totals) bad |= fabs(static_cast<double>(tree_sum16(pr)) - 1.0) <= tol ? 0 : 1;
    }
    if (bad) return 1;
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
  double plogp_sum = 0.0;  // float64 over chunks of kEntFlush values (see block_item_stats)
  R* __restrict__ blk = s.block;
  if (need_ent) {
    for (int i0 = 0; i0 < n; i0 += kEntFlush) {
      const int i1 = n - i0 < kEntFlush ? n : i0 + kEntFlush;
      R plogp = R(0);
      LABELWISE_SIMD_FLAT_ENT
      for (int i = i0; i < i1; ++i) {
        const R v = static_cast<R>(x[i]);
        blk[i] = v;
        bad |= ((v >= R(0)) & (v <= R(2))) ? 0 : 1;  // NaN and ±Inf fail too
        plogp += lw_plogp(v);
      }
      plogp_sum += static_cast<double>(plogp);
    }
  } else {
    LABELWISE_SIMD_FLAT
    for (int i = 0; i < n; ++i) {
      const R v = static_cast<R>(x[i]);
      blk[i] = v;
      bad |= ((v >= R(0)) & (v <= R(2))) ? 0 : 1;
    }
  }
  if (bad) return classify_bad_probs(x, C, 1, K, C);
  if (accumulate_block<R>(blk, nullptr, K, C, s, true, tol) != 0) return kItemUnnormalised;
  ent_sum -= plogp_sum;
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
      R total = R(0);
      double plogp = 0.0;  // float64: a row of thousands of float32 terms keeps ~1e-7 accuracy
      LABELWISE_SIMD_PROBS
      for (int c = 0; c < C; ++c) {
        const R v = static_cast<R>(r[c * sc]);
        bad |= !(v >= R(0) && v <= R(2));  // also catches NaN and ±Inf
        total += v;
        if (need_ent) plogp += static_cast<double>(lw_plogp(v));
      }
      if (bad || !(fabs(static_cast<double>(total) - 1.0) <= tol))
        return classify_failed_item(x, sk, sc, K, C, input_kind, k, kItemUnnormalised);
      ent_sum -= plogp;
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
      if (mx == -INFINITY) return classify_failed_item(x, sk, sc, K, C, input_kind, k, kItemAllMasked);
      R z = R(0);
      LABELWISE_SIMD_Z
      for (int c = 0; c < C; ++c) {
        const R e = lw_exp_nonpositive(static_cast<R>(r[c * sc]) - mx);
        s.row[c] = e;
        z += e;
      }
      const double lse = static_cast<double>(mx) + log(static_cast<double>(z));
      if (input_kind == 1 && !(fabs(lse) <= tol))
        return classify_failed_item(x, sk, sc, K, C, input_kind, k, kItemUnnormalised);
      // Log-probabilities are used as given (like probabilities); logits are normalised.
      const R scale = static_cast<R>(input_kind == 1 ? exp(static_cast<double>(mx)) : 1.0 / static_cast<double>(z));
      // Logits: ln p = (x - mx) - ln z. x - mx is taken in R (exact or nearly: the two are close) and
      // ln z is applied once in double; subtracting a rounded ln-sum-exp in R instead lost half an ulp
      // of |x| per entry (4.6e-4 relative on logits near 1e4 in float32).
      const R shift = input_kind == 1 ? R(0) : mx;
      double plogp = 0.0, psum = 0.0;  // float64, as above
      LABELWISE_SIMD_PLOGP
      for (int c = 0; c < C; ++c) {
        const R p = s.row[c] * scale;
        accumulate<R>(s, c, p, first, need_sq);
        if (need_ent) {
          plogp += static_cast<double>(p > R(0) ? p * (static_cast<R>(r[c * sc]) - shift) : R(0));
          psum += static_cast<double>(p);
        }
      }
      ent_sum -= plogp - (input_kind == 1 ? 0.0 : log(static_cast<double>(z)) * psum);
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
  int mode = 0;
  if (need_votes)
    for (int c = 0; c < C; ++c) mode = s.votes[c] > mode ? s.votes[c] : mode;
  double std_sum = 0.0, terms = 0.0;
  if (need_sq) class_spread_terms(s, K, C, (mask & kBitBalEntAcq) != 0, std_sum, terms);
  finish_metrics(ItemSummary{h_mean, ent_sum, top1, top2, mode, std_sum, terms}, K, C, mask, res);
  return kItemOk;
}

#if !defined(__CUDACC__)
// ---------------------------------------------------------------------------------------------------
// CPU block path: every input kind and class count (the backend gathers other layouts into a
// contiguous block first; logits and log-probabilities become probabilities row by row, phase 0).
// Two phases per block of up to block_items(C) items:
//  1. per item, one pass over its K rows for each chunk of kRowLanes classes (a row chunk is a
//     kRowLanes-lane vector, lanes past C masked; C <= kRowLanes is one chunk): validation as vector
//     reductions (a running minimum for negatives; each row's total by a tree sum per chunk, or 16
//     rows at once on AVX-512 — NaN / ±Inf fail their row's total; no branch per row; exact
//     classification by classify_bad_probs only on failure), the shifted float64 class sums, arg-max
//     votes; Σ p ln p over the flat K·C values;
//  2. per block, the class terms (ln p̄, std, BalEntAcq) in flat vector loops over items × classes,
//     so that C = 10 fills whole vectors, then small per-item reductions over the classes.
// Everything is per item and in a fixed order: results do not depend on the block or thread split.
// ---------------------------------------------------------------------------------------------------
constexpr int kRowLanes = 16;
constexpr int kBlockItems = 32;
constexpr int kResSlots = 10;  // one per labelwise::Metric (kNumMetrics)

/// Items per block: kBlockItems, fewer for C > 128 so that each of phase 2's arrays (items × classes
/// float64 values) stays within 32 KiB.
inline int block_items(int C) {
  const int n = 4096 / C;
  return n < 1 ? 1 : (n > kBlockItems ? kBlockItems : n);
}

/// Per-worker scratch of the block path (allocated by the CPU backend, sizes below).
struct BlockScratch {
  // nb = block_items(C) items. first, sum and sumsq have kRowLanes entries of slack (block_item_stats
  // stores whole chunks).
  double* first;  // nb * C: p_0c
  double* sum;    // nb * C: Σ_k (p_kc - p_0c)
  double* sumsq;  // nb * C: Σ_k (p_kc - p_0c)²
  double* mu;     // nb * C: p̄_c
  double* plm;    // nb * C: p̄_c ln p̄_c
  double* sd;     // nb * C: std_k p_kc
  double* term;   // nb * C: BalEntAcq t_c (0 where the exact scalar path must redo it)
  int* slow;      // nb * C: 1 where t_c needs balentacq_class_term
  double* ent;    // nb: Σ_k H[p_k]
  int* mode;      // nb: f_mode
  void* pad;      // K·C + kRowLanes values of T: an item near the end of the view, zero padded
  double* lnb;    // nb * C: BalEntAcq ln B(α+1, β) (beta_entropy_parts)
  double* wpsi;   // nb * C: BalEntAcq's digamma part w (beta_entropy_parts)
};
inline std::size_t block_scratch_doubles(int nb, int C) { return static_cast<std::size_t>(nb) * (9 * static_cast<std::size_t>(C) + 1) + 3 * kRowLanes; }

/// Per-worker row state of phases 0 and 1 for C > kRowLanes, where a row spans several chunks of
/// kRowLanes classes (one chunk keeps it in registers instead): per row, lane-wise partial totals and
/// maxima over the chunks so far, reduced across the lanes once, after the last chunk.
template <typename T>
struct ChunkScratch {
  T* total;    // K·kRowLanes: a row's lane-wise totals
  T* best;     // K·kRowLanes: a row's lane-wise maxima (arg-max votes)
  int* arg;    // K: a row's arg-max class
  int* votes;  // C: vote counts, zero between items (chunk_mode clears what it counted)
};

/// The modal vote count from per-lane counts (one chunk).
inline int lane_mode(const int* votes) {
  int mode = 0;
  for (int j = 0; j < kRowLanes; ++j) mode = votes[j] > mode ? votes[j] : mode;
  return mode;
}

/// The modal vote count from the rows' arg-maxes in cs.arg (several chunks); leaves cs.votes zero.
template <typename T>
inline int chunk_mode(const ChunkScratch<T>& cs, int K) {
  int mode = 0;
  for (int k = 0; k < K; ++k) {
    const int n = ++cs.votes[cs.arg[k]];
    mode = n > mode ? n : mode;
  }
  for (int k = 0; k < K; ++k) cs.votes[cs.arg[k]] = 0;
  return mode;
}

/// The maximum of kRowLanes values by a fixed tree (no serial chain of compares).
template <typename R>
inline R max16(const R* v) {
  R m8[8], m4[4];
  LABELWISE_SIMD_PLAIN
  for (int j = 0; j < 8; ++j) m8[j] = v[j] > v[j + 8] ? v[j] : v[j + 8];
  LABELWISE_SIMD_PLAIN
  for (int j = 0; j < 4; ++j) m4[j] = m8[j] > m8[j + 4] ? m8[j] : m8[j + 4];
  const R a = m4[0] > m4[2] ? m4[0] : m4[2], b = m4[1] > m4[3] ? m4[1] : m4[3];
  return a > b ? a : b;
}

/// The lowest class c < C of row r with r[c] == m (the arg-max, ties to the lower class, for m the
/// row maximum), read in whole chunks of kRowLanes values up to the first that holds it; 0 when none
/// does (NaN rows, rejected by the callers).
template <typename R, typename T>
inline int first_equal(const T* r, int C, R m) {
  for (int cb = 0; cb < C; cb += kRowLanes) {
    unsigned bits = 0;
    LABELWISE_SIMD_BITS
    for (int j = 0; j < kRowLanes; ++j) bits |= ((cb + j < C) & (static_cast<R>(r[cb + j]) == m) ? 1u : 0u) << j;
    if (bits) return cb + __builtin_ctz(bits);
  }
  return 0;
}

#if defined(LABELWISE_ROWS_AVX512)
// GCC 12 warns "'__Y' may be used uninitialized" inside its own AVX-512 intrinsics (the
// _mm512_undefined_* placeholders of unmasked forms): a false positive.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
/// Sixteen row vectors -> one vector of their lane sums (lane t = Σ_j r[t][j]) by a transposing tree:
/// about 3 instructions per row instead of a horizontal reduction each.
template <bool kMax>
inline __m512 rows_reduce16(const __m512* r) {
  auto op = [](__m512 a, __m512 b) { return kMax ? _mm512_max_ps(a, b) : _mm512_add_ps(a, b); };
  __m512 a[8], b[4], c[2];
  for (int i = 0; i < 8; ++i)  // per 128-bit lane: [r2i, r2i+1, r2i, r2i+1] partials
    a[i] = op(_mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]), _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {  // per 128-bit lane: rows 4i..4i+3
    const __m512d x0 = _mm512_castps_pd(a[2 * i]), x1 = _mm512_castps_pd(a[2 * i + 1]);
    b[i] = op(_mm512_castpd_ps(_mm512_unpacklo_pd(x0, x1)), _mm512_castpd_ps(_mm512_unpackhi_pd(x0, x1)));
  }
  for (int i = 0; i < 2; ++i)  // 128-bit lanes: [b2i L0+L1, b2i L2+L3, b2i+1 L0+L1, b2i+1 L2+L3]
    c[i] = op(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88), _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xDD));
  return op(_mm512_shuffle_f32x4(c[0], c[1], 0x88), _mm512_shuffle_f32x4(c[0], c[1], 0xDD));
}

/// The vote counts per class (lanes) of the K rows' arg-maxes, ties to the lower class, for C <= 16
/// (rows C apart, read again with masked loads).
inline __m512i lowest_argmax_votes(const float* x, int K, int C) {
  const __mmask16 cm = static_cast<__mmask16>((1u << C) - 1u);
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  const __m512i ones = _mm512_set1_epi32(1);
  __m512i votes = _mm512_setzero_si512();
  for (int k = 0; k < K; ++k) {
    const __m512 v = _mm512_mask_loadu_ps(ninf, cm, x + static_cast<std::int64_t>(k) * C);
    const unsigned eq = _mm512_mask_cmp_ps_mask(cm, v, _mm512_set1_ps(_mm512_mask_reduce_max_ps(cm, v)), _CMP_EQ_OQ);
    votes = _mm512_mask_add_epi32(votes, static_cast<__mmask16>(eq & (0u - eq)), votes, ones);  // the lowest lane
  }
  return votes;
}

/// The modal vote count of an item whose K rows (x, C <= 16 classes C apart) the row loops counted in
/// every lane equal to the row's maximum: no scalar work per row, but a tie counts in each tied lane,
/// so counts that total more than K are redone by lowest_argmax_votes (ties are rare).
inline int vote_mode(__m512i votes, const float* x, int K, int C) {
  if (_mm512_reduce_add_epi32(votes) != K) votes = lowest_argmax_votes(x, K, C);
  return _mm512_reduce_max_epi32(votes);
}

/// The row loop of block_item_stats for float32 on AVX-512: masked loads of each row's chunk of 16
/// classes (nothing read past the row), rows in groups of 16 whose totals and maxima come from
/// rows_reduce16. Same results as the portable loop up to the order of the row-total sum (validation
/// only). For several chunks, each row's float64 total, its maximum so far and that maximum's class
/// are carried in `cs` (cs.total holds K doubles here, cs.best K floats). need_votes is a template
/// argument so that without votes the rows are dead after their totals (fewer registers spilled);
/// so is check, false for rows that block_softmax_rows made and validated (tol = inf): no row totals.
template <bool need_votes, bool check>
inline int block_rows_avx512(const float* x, int K, int C, double tol, bool need_sq, const ChunkScratch<float>& cs,
                             double* __restrict__ first_o, double* __restrict__ sum_o, double* __restrict__ sumsq_o,
                             int& mode_o) {
  const bool single = C <= 16;
  const __m512 zero = _mm512_setzero_ps();
  __m512 lo = zero;  // running minimum of all values (masked lanes are 0)
  int bad = 0;
  // One chunk: vote counts per class in the lanes of two integer vectors (even and odd rows: two
  // independent chains): each row adds 1 in every lane equal to its maximum by a masked add (no
  // store / reload of a counter in memory per row, no scalar mask arithmetic); vote_mode recounts an
  // item with a tie.
  __m512i votes = _mm512_setzero_si512(), votes_odd = votes;
  const __m512i ones = _mm512_set1_epi32(1);
  const __m512d one = _mm512_set1_pd(1.0), vtol = _mm512_set1_pd(tol);
  const __m512d absmask = _mm512_castsi512_pd(_mm512_set1_epi64(0x7fffffffffffffffLL));
  double* row_total = reinterpret_cast<double*>(cs.total);  // K doubles (intrinsic loads / stores only)
  for (int cb = 0; cb < C; cb += 16) {
    const int nl = C - cb;
    const bool last = nl <= 16;
    const __mmask16 cm = static_cast<__mmask16>(last ? (1u << nl) - 1u : 0xFFFFu);
    __m512d f0 = _mm512_setzero_pd(), f1 = f0, s0 = f0, s1 = f0, q0 = f0, q1 = f0;
    for (int k0 = 0; k0 < K; k0 += 16) {
      const int nr = K - k0 < 16 ? K - k0 : 16;
      const unsigned rowm = nr == 16 ? 0xFFFFu : ((1u << nr) - 1u);
      __m512 rows[16];
#pragma GCC unroll 16
      for (int t = 0; t < 16; ++t) {
        if (t >= nr) {
          rows[t] = zero;
          continue;
        }
        const __m512 v = _mm512_maskz_loadu_ps(cm, x + static_cast<std::int64_t>(k0 + t) * C + cb);
        rows[t] = v;
        lo = _mm512_min_ps(lo, v);
        const __m512d d0 = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
        const __m512d d1 = _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1));
        if (k0 + t == 0) {
          f0 = d0;
          f1 = d1;
        } else {
          const __m512d e0 = _mm512_sub_pd(d0, f0), e1 = _mm512_sub_pd(d1, f1);
          s0 = _mm512_add_pd(s0, e0);
          s1 = _mm512_add_pd(s1, e1);
          if (need_sq) {
            q0 = _mm512_fmadd_pd(e0, e0, q0);
            q1 = _mm512_fmadd_pd(e1, e1, q1);
          }
        }
      }
      // Row totals in float64, added to the previous chunks' (masked: rows past K are not touched),
      // checked after the last chunk like the portable loop: |total - 1| <= tol.
      if constexpr (check) {
        const __m512 tot = rows_reduce16<false>(rows);
        __m512d t0 = _mm512_cvtps_pd(_mm512_castps512_ps256(tot));
        __m512d t1 = _mm512_cvtps_pd(_mm512_extractf32x8_ps(tot, 1));
        const __mmask8 rm0 = static_cast<__mmask8>(rowm), rm1 = static_cast<__mmask8>(rowm >> 8);
        if (cb > 0) {
          t0 = _mm512_add_pd(t0, _mm512_maskz_loadu_pd(rm0, row_total + k0));
          t1 = _mm512_add_pd(t1, _mm512_maskz_loadu_pd(rm1, row_total + k0 + 8));
        }
        if (last) {
          const unsigned ok0 = _mm512_cmp_pd_mask(_mm512_and_pd(_mm512_sub_pd(t0, one), absmask), vtol, _CMP_LE_OQ);
          const unsigned ok1 = _mm512_cmp_pd_mask(_mm512_and_pd(_mm512_sub_pd(t1, one), absmask), vtol, _CMP_LE_OQ);
          if (((ok0 | (ok1 << 8)) & rowm) != rowm) bad = 1;
        } else {
          _mm512_mask_storeu_pd(row_total + k0, rm0, t0);
          _mm512_mask_storeu_pd(row_total + k0 + 8, rm1, t1);
        }
      }
      if constexpr (need_votes) {
        // Arg-max per row: the row maxima, then every lane equal to its own (vote_mode handles ties).
        const __m512 mx = rows_reduce16<true>(rows);
        if (single) {
#pragma GCC unroll 16
          for (int t = 0; t < 16; ++t) {
            if (t >= nr) break;
            const __m512 m = _mm512_permutexvar_ps(_mm512_set1_epi32(t), mx);
            const __mmask16 eq = _mm512_mask_cmp_ps_mask(cm, rows[t], m, _CMP_EQ_OQ);  // none only for NaN rows
            if (t % 2 == 0)
              votes = _mm512_mask_add_epi32(votes, eq, votes, ones);
            else
              votes_odd = _mm512_mask_add_epi32(votes_odd, eq, votes_odd, ones);
          }
        } else {
          // Only the rows whose maximum this chunk strictly raises (the lower chunk keeps a tie; all
          // rows in the first chunk) look for its lane.
          float* best = cs.best + k0;
          const __m512 prev = _mm512_maskz_loadu_ps(static_cast<__mmask16>(rowm), best);
          unsigned gt = cb == 0 ? rowm : (_mm512_cmp_ps_mask(mx, prev, _CMP_GT_OQ) & rowm);
          if (gt) {
            _mm512_mask_storeu_ps(best, static_cast<__mmask16>(gt), mx);
            alignas(64) float mxs[16];
            _mm512_store_ps(mxs, mx);
            for (; gt; gt &= gt - 1) {
              // The row chunk is loaded again (from L1): indexing rows[] by a run-time t would keep the
              // whole array in memory instead of registers.
              const int t = __builtin_ctz(gt);
              const __m512 v = _mm512_maskz_loadu_ps(cm, x + static_cast<std::int64_t>(k0 + t) * C + cb);
              const unsigned eq = _mm512_mask_cmp_ps_mask(cm, v, _mm512_set1_ps(mxs[t]), _CMP_EQ_OQ);
              cs.arg[k0 + t] = cb + (eq ? __builtin_ctz(eq) : 0);  // eq = 0 only for NaN rows
            }
          }
        }
      }
    }
    // Lanes past C are 0 (masked loads); the caller's arrays have kRowLanes of slack.
    _mm512_storeu_pd(first_o + cb, f0);
    _mm512_storeu_pd(first_o + cb + 8, f1);
    _mm512_storeu_pd(sum_o + cb, s0);
    _mm512_storeu_pd(sum_o + cb + 8, s1);
    _mm512_storeu_pd(sumsq_o + cb, q0);
    _mm512_storeu_pd(sumsq_o + cb + 8, q1);
  }
  // Validation: every row total within tol of 1 (a NaN or ±Inf makes its row's total fail) and no
  // negative value; then no value exceeds 1 + tol either. Exact classification only on failure.
  if (_mm512_cmp_ps_mask(lo, zero, _CMP_LT_OQ)) bad = 1;
  if (bad) return classify_bad_probs(x, C, 1, K, C);
  if constexpr (need_votes) mode_o = single ? vote_mode(_mm512_add_epi32(votes, votes_odd), x, K, C) : chunk_mode(cs, K);
  return kItemOk;
}
#pragma GCC diagnostic pop
#endif

/// Phase 1 for one item: `x` at (k=0, c=0), rows C apart (K == 1 allowed). The classes are taken in
/// chunks of kRowLanes lanes (one chunk for C <= kRowLanes), read kRowLanes wide from every chunk start
/// (c = 0, kRowLanes, 2·kRowLanes, ...: (K - 1)·C + round_up(C, kRowLanes) values in all). Writes the item's
/// class sums shifted by the first sample (round_up(C, kRowLanes) entries each, the C real ones first;
/// sumsq only when need_sq), -Σ_k Σ_c p ln p and the modal vote count; returns an ItemStatus. `cs`
/// carries each row's totals and maxima from one chunk to the next (used only when C > kRowLanes).
template <typename T>
inline int block_item_stats(const T* x, int K, int C, double tol, bool need_ent, bool need_sq, bool need_votes,
                            const ChunkScratch<T>& cs, double* __restrict__ first_o, double* __restrict__ sum_o,
                            double* __restrict__ sumsq_o, double& ent_o, int& mode_o) {
  using R = typename compute_type<T>::type;
  constexpr int W = kRowLanes;
  int bad = 0;
  if (need_ent) {
    // Σ p ln p over the flat K·C values: whole vectors of kRowLanes, then the last kRowLanes values
    // once more with the lanes already counted masked off (no scalar remainder loop). Range errors
    // are caught by the row loop below.
    // The partial sums stay in kRowLanes lanes until one fixed tree sum at the end (a serial
    // horizontal sum after each loop would put a chain of 2·kRowLanes dependent adds on every item).
    // The lanes are flushed into float64 lanes every kEntFlush values, so that float32 input keeps
    // ~1e-7 relative accuracy at any K·C (summed in float32 lanes throughout, the error grew to 1e-5
    // at C = 10^4).
    const int n = K * C;
    const int nv = n / W * W;
    R acc[W];
    double accd[W];
    LABELWISE_SIMD_PLAIN
    for (int j = 0; j < W; ++j) {
      acc[j] = R(0);
      accd[j] = 0.0;
    }
    for (int i0 = 0; i0 < nv; i0 += kEntFlush) {
      const int i1 = nv - i0 < kEntFlush ? nv : i0 + kEntFlush;
      for (int i = i0; i < i1; i += W) {
        LABELWISE_SIMD_PLAIN
        for (int j = 0; j < W; ++j) acc[j] += lw_plogp(static_cast<R>(x[i + j]));
      }
      LABELWISE_SIMD_PLAIN
      for (int j = 0; j < W; ++j) {
        accd[j] += static_cast<double>(acc[j]);
        acc[j] = R(0);
      }
    }
    if (nv < n) {
      // kRowLanes values are readable from x, so for n < kRowLanes the tail starts at x.
      const T* __restrict__ tail = n >= W ? x + (n - W) : x;
      const int skip = n >= W ? W - (n - nv) : 0, lim = n >= W ? W : n;
      LABELWISE_SIMD_PLAIN
      for (int j = 0; j < W; ++j) {
        const R v = static_cast<R>(tail[j]);
        const R u = (j >= skip) & (j < lim) ? v : R(0);
        acc[j] += lw_plogp(u >= R(0) ? u : R(0));
      }
    }
    LABELWISE_SIMD_PLAIN
    for (int j = 0; j < W; ++j) accd[j] += static_cast<double>(acc[j]);
    ent_o = 0.0 - tree_sum16(accd);  // 0 - x: +0 (not -0) for certain rows
  }
#if defined(LABELWISE_ROWS_AVX512)
  if constexpr (std::is_same<T, float>::value) {
    if (!(tol < static_cast<double>(INFINITY)))  // rows from block_softmax_rows, already validated
      return need_votes ? block_rows_avx512<true, false>(x, K, C, tol, need_sq, cs, first_o, sum_o, sumsq_o, mode_o)
                        : block_rows_avx512<false, false>(x, K, C, tol, need_sq, cs, first_o, sum_o, sumsq_o, mode_o);
    return need_votes ? block_rows_avx512<true, true>(x, K, C, tol, need_sq, cs, first_o, sum_o, sumsq_o, mode_o)
                      : block_rows_avx512<false, true>(x, K, C, tol, need_sq, cs, first_o, sum_o, sumsq_o, mode_o);
  }
#endif
  // Chunk by chunk: the chunk's class sums and the running minimum stay in registers over the K rows.
  // One chunk (C <= kRowLanes) checks each row's total and counts its vote in lanes directly; with
  // several, each row's lane-wise totals and maxima are carried from chunk to chunk in `cs` and
  // reduced across the lanes after the last one (no horizontal work per chunk).
  int votes[W];
  for (int j = 0; j < W; ++j) votes[j] = 0;
  R lo[W];
  LABELWISE_SIMD_PLAIN
  for (int j = 0; j < W; ++j) lo[j] = R(0);
  for (int cb = 0; cb < C; cb += W) {
    const int nl = C - cb;  // real lanes of this chunk: all W but in the last one
    const bool last = nl <= W, single = last && cb == 0;
    double first[W], sum[W], sumsq[W];
    LABELWISE_SIMD_PLAIN
    for (int j = 0; j < W; ++j) {
      first[j] = 0.0;
      sum[j] = 0.0;
      sumsq[j] = 0.0;
    }
    for (int k = 0; k < K; ++k) {
      const T* __restrict__ r = x + static_cast<std::int64_t>(k) * C + cb;
      R p[W];
      LABELWISE_SIMD_PLAIN
      for (int j = 0; j < W; ++j) {
        const R v = static_cast<R>(r[j]);  // unconditional (readable), masked below
        p[j] = j < nl ? v : R(0);
        lo[j] = p[j] < lo[j] ? p[j] : lo[j];  // negatives; NaN / ±Inf fail their row's total below
      }
      // Shifted sums whatever the metric set, so that a metric's value does not depend on which other
      // metrics are requested (bit for bit).
      if (k == 0) {
        LABELWISE_SIMD_PLAIN
        for (int j = 0; j < W; ++j) first[j] = static_cast<double>(p[j]);
      } else if (!need_sq) {
        LABELWISE_SIMD_PLAIN
        for (int j = 0; j < W; ++j) sum[j] += static_cast<double>(p[j]) - first[j];
      } else {
        LABELWISE_SIMD_PLAIN
        for (int j = 0; j < W; ++j) {
          const double d = static_cast<double>(p[j]) - first[j];
          sum[j] += d;
          sumsq[j] += d * d;
        }
      }
      if (single) {
        // The row total by a fixed tree (no serial horizontal chain), checked without a branch.
        bad |= fabs(static_cast<double>(tree_sum16(p)) - 1.0) <= tol ? 0 : 1;  // NaN fails
        if (need_votes) {
          // Arg-max with ties to the lower class: tree max, then the lowest lane equal to it, added
          // one-hot over the lanes (vectorises; no counter stored and reloaded per row).
          const int w = first_equal(p, C, max16(p));
          LABELWISE_SIMD_PLAIN
          for (int j = 0; j < W; ++j) votes[j] += j == w ? 1 : 0;
        }
        continue;
      }
      R* __restrict__ tl = cs.total + static_cast<std::int64_t>(k) * W;
      R* __restrict__ bl = cs.best + static_cast<std::int64_t>(k) * W;
      if (cb == 0) {
        LABELWISE_SIMD_PLAIN
        for (int j = 0; j < W; ++j) tl[j] = p[j];
        if (need_votes) {
          LABELWISE_SIMD_PLAIN
          for (int j = 0; j < W; ++j) bl[j] = p[j];
        }
      } else {
        LABELWISE_SIMD_PLAIN
        for (int j = 0; j < W; ++j) tl[j] += p[j];
        if (need_votes) {
          LABELWISE_SIMD_PLAIN
          for (int j = 0; j < W; ++j) bl[j] = p[j] > bl[j] ? p[j] : bl[j];  // lanes past C are 0
        }
      }
      if (last) {
        bad |= fabs(static_cast<double>(tree_sum16(tl)) - 1.0) <= tol ? 0 : 1;  // NaN fails
        // The row maximum is known only now: its lowest class from the row itself (still in cache).
        if (need_votes) cs.arg[k] = first_equal(x + static_cast<std::int64_t>(k) * C, C, max16(bl));
      }
    }
    // All W lanes (the lanes past C are 0): the caller's arrays have kRowLanes of slack, and the next
    // chunk's or item's stores overwrite the spill.
    LABELWISE_SIMD_PLAIN
    for (int j = 0; j < W; ++j) {
      first_o[cb + j] = first[j];
      sum_o[cb + j] = sum[j];
      sumsq_o[cb + j] = sumsq[j];
    }
  }
  // Every row total within tol of 1 and no negative value: then no value exceeds 1 + tol either.
  LABELWISE_SIMD_FLAT
  for (int j = 0; j < W; ++j) bad |= lo[j] < R(0) ? 1 : 0;
  if (bad) return classify_bad_probs(x, C, 1, K, C);
  if (need_votes) mode_o = C <= W ? lane_mode(votes) : chunk_mode(cs, K);
  return kItemOk;
}

/// Natural logarithm in the compute type (host only): fast_logf for float, lw_log_d for double.
LABELWISE_VEC_INLINE float lw_log_r(float v) { return fast_logf(v); }
LABELWISE_VEC_INLINE double lw_log_r(double v) { return lw_log_d(v); }

/// acc_j -= ln z_j for the first n (<= kRowLanes) of kRowLanes row sums z_j >= 1 (lanes from n on
/// unchanged): the logarithms of logit rows for their entropies (block_softmax_rows), one vector per
/// kRowLanes rows, kept in lanes (no horizontal sum per call).
template <typename R>
inline void rows_sub_log(const R* z, int n, R* __restrict__ acc) {
  LABELWISE_SIMD_PLAIN
  for (int j = 0; j < kRowLanes; ++j) acc[j] -= lw_log_r(j < n ? z[j] : R(1));
}

/// Phase 0 for logits and log-probabilities (the same reading rules as block_item_stats): per sample
/// row, the row maximum m, e = exp(x - m) and z = Σ e, then the row's probabilities written to `p_o`
/// (rows C apart, whole chunks of kRowLanes values stored, so (K - 1)·C + round_up(C, kRowLanes)
/// entries): e / z for logits, e · exp(m) for log-probabilities (used as given, like probabilities,
/// after the check |m + ln z| <= tol). The modal vote count comes from the raw values (ties to the
/// lower class; `cs` as in block_item_stats). With need_ent, also Σ_k H[p_k] into ent_o, without a
/// logarithm per element (block_item_stats then skips its Σ p ln p): ln p_c is known exactly,
///   logits:            ln p_c = (x_c - m) - ln z, so H = ln z · Σ_c p_c - Σ_c p_c (x_c - m)
///                      (Σ_c p_c = 1 to rounding: one logarithm per row, taken kRowLanes rows at a time);
///   log-probabilities: ln p_c = x_c (used as given), so H = -Σ_c p_c x_c (no logarithm at all);
/// p_c being the probabilities written to p_o, and -inf entries (p_c = 0) counting 0 · ln 0 = 0. With
/// x_c - m <= 0 and z >= 1 (for log-probabilities x_c <= tol) every term is non-negative up to
/// p_c·tol: no cancellation, so H is within a few eps (of the compute type) of itself, like the sum of
/// p ln p it replaces, and accumulated the same way: in kRowLanes lanes of the compute type over the
/// item, the lanes summed in float64 once.
/// Validation as score_item: NaN or +Inf anywhere in the item -> kItemNonFinite;
/// otherwise the first sample (in order) that is -inf everywhere (kItemAllMasked) or, for
/// log-probabilities, not normalised (kItemUnnormalised). -inf entries are allowed (p = 0).
#if defined(LABELWISE_ROWS_AVX512)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
/// block_softmax_rows for float32 on AVX-512: rows in groups of 16 (masked loads, lanes past C at
/// -inf) whose maxima and exp-sums come from rows_reduce16, one division for the 16 scales. Same
/// results as the portable loop up to the order of the exp-sum and of the entropy's sums.
inline int block_softmax_avx512(const float* x, int K, int C, int input_kind, double tol, bool need_votes,
                                bool need_ent, float* __restrict__ p_o, int& mode_o, double& ent_o) {
  const __m512 lowest = _mm512_set1_ps(-3.40282347e38f);  // -inf -> lowest: 0 · ln 0 = 0, not NaN
  const __mmask16 cm = static_cast<__mmask16>((1u << C) - 1u);
  const __m512 ninf = _mm512_set1_ps(-INFINITY), pinf = _mm512_set1_ps(INFINITY), zero = _mm512_setzero_ps();
  const double lo_total = exp(-tol), hi_total = exp(tol);
  unsigned bad = 0;
  int fail = 0;
  __m512i votes = _mm512_setzero_si512();  // per-class vote counts, as in block_rows_avx512
  const __m512i ones = _mm512_set1_epi32(1);
  alignas(64) float mxs[16], zs[16], sc[16], tmp[16];
  // Lane-wise Σ p·(x - m) - Σ_k ln z_k (logits) or Σ p·x (log-probabilities): minus the entropy.
  __m512 plp = zero;
  for (int k0 = 0; k0 < K; k0 += 16) {
    const int nr = K - k0 < 16 ? K - k0 : 16;
    __m512 rows[16], e[16];
#pragma GCC unroll 16
    for (int t = 0; t < 16; ++t) {
      if (t >= nr) {
        rows[t] = ninf;
        continue;
      }
      const __m512 v = _mm512_mask_loadu_ps(ninf, cm, x + static_cast<std::int64_t>(k0 + t) * C);
      rows[t] = v;
      bad |= _mm512_mask_cmp_ps_mask(cm, v, v, _CMP_UNORD_Q) | _mm512_mask_cmp_ps_mask(cm, v, pinf, _CMP_EQ_OQ);
    }
    _mm512_store_ps(mxs, rows_reduce16<true>(rows));
    for (int t = 0; t < 16; ++t) {
      if (t >= nr) {
        e[t] = zero;
        continue;
      }
      // -inf entries (and the masked lanes) give exp(-inf) = 0; an all -inf row gives NaN, caught below.
      _mm512_store_ps(tmp, _mm512_min_ps(_mm512_sub_ps(rows[t], _mm512_set1_ps(mxs[t])), zero));
      LABELWISE_SIMD_PLAIN
      for (int j = 0; j < 16; ++j) tmp[j] = lw_exp_nonpositive(tmp[j]);
      e[t] = _mm512_load_ps(tmp);
    }
    const __m512 z = rows_reduce16<false>(e);
    _mm512_store_ps(zs, z);
    if (need_ent && input_kind != 1) {
      _mm512_store_ps(tmp, plp);
      rows_sub_log(zs, nr, tmp);
      plp = _mm512_load_ps(tmp);
    }
    if (input_kind == 1) {
      // exp(m) of the 16 rows at once; a row maximum above 0 (at most tol in valid input) is rare
      // and redone by the library exp (too large an m gives +inf and fails the check).
      alignas(64) double em[16];
      LABELWISE_SIMD_PLAIN
      for (int t = 0; t < 16; ++t) {
        const double m = static_cast<double>(mxs[t]);
        em[t] = lw_exp_nonpositive_d(m <= 0.0 ? m : 0.0);
      }
      for (int t = 0; t < nr; ++t) {
        if (mxs[t] > 0.0f) em[t] = exp(static_cast<double>(mxs[t]));
        // |m + ln z| <= tol, tested as exp(-tol) <= z·exp(m) <= exp(tol) (no logarithm per row).
        const double total = static_cast<double>(zs[t]) * em[t];
        if (!fail && !(mxs[t] > -INFINITY)) fail = kItemAllMasked;
        if (!fail && !((total >= lo_total) & (total <= hi_total))) fail = kItemUnnormalised;
        sc[t] = static_cast<float>(em[t]);
      }
    } else {
      _mm512_store_ps(sc, _mm512_div_ps(_mm512_set1_ps(1.0f), z));  // z >= 1: the maximum contributes 1
      for (int t = 0; t < nr; ++t)
        if (!fail && !(mxs[t] > -INFINITY)) fail = kItemAllMasked;
    }
    for (int t = 0; t < nr; ++t) {
      const __m512 p = _mm512_mul_ps(e[t], _mm512_set1_ps(sc[t]));
      _mm512_storeu_ps(p_o + static_cast<std::int64_t>(k0 + t) * C, p);
      if (need_ent) {
        const __m512 lp = input_kind == 1 ? rows[t] : _mm512_sub_ps(rows[t], _mm512_set1_ps(mxs[t]));
        plp = _mm512_fmadd_ps(p, _mm512_max_ps(lp, lowest), plp);
      }
      if (need_votes) {
        // Arg-max from the raw values: every lane equal to the maximum (lanes past C are -inf < max);
        // vote_mode recounts an item with a tie.
        const __mmask16 eq = _mm512_mask_cmp_ps_mask(cm, rows[t], _mm512_set1_ps(mxs[t]), _CMP_EQ_OQ);
        votes = _mm512_mask_add_epi32(votes, eq, votes, ones);
      }
    }
  }
  if (bad) return kItemNonFinite;
  if (fail) return fail;
  if (need_votes) mode_o = vote_mode(votes, x, K, C);
  if (need_ent) {
    const double s = _mm512_reduce_add_pd(_mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(plp)),
                                                        _mm512_cvtps_pd(_mm512_extractf32x8_ps(plp, 1))));
    ent_o = 0.0 - s;
  }
  return kItemOk;
}
#pragma GCC diagnostic pop
#endif

template <typename T, bool need_ent>
[[gnu::noinline]] inline int block_softmax_rows(const T* x, int K, int C, int input_kind, double tol, bool need_votes,
                              const ChunkScratch<T>& cs, T* __restrict__ p_o, int& mode_o, double& ent_o) {
  using R = typename compute_type<T>::type;
  static_assert(std::is_same<R, T>::value, "float and double only");
#if defined(LABELWISE_ROWS_AVX512)
  if constexpr (std::is_same<T, float>::value)
    if (C <= kRowLanes)
      return block_softmax_avx512(x, K, C, input_kind, tol, need_votes, need_ent, p_o, mode_o, ent_o);
#endif
  constexpr int W = kRowLanes;
  int bad = 0, fail = 0;
  int votes[W];
  for (int j = 0; j < W; ++j) votes[j] = 0;
  // The entropy (need_ent): lane-wise Σ p·(x - m) - Σ_k ln z_k (logits; the rows' z gathered W at a
  // time) or Σ p·x (log-probabilities): minus the entropy.
  R plp[W], zr[W];
  for (int j = 0; j < W; ++j) {
    plp[j] = R(0);
    zr[j] = R(1);
  }
  double pl_rest = 0.0;  // the same Σ p·(x - m) or Σ p·x over the classes past the first chunk (a
                        // scalar: a scalar store into plp would stall its next vector load)
  const R lowest = std::numeric_limits<R>::lowest();  // -inf -> lowest: 0 · ln 0 = 0, not NaN
  const double lo_total = exp(-tol), hi_total = exp(tol);
  for (int k = 0; k < K; ++k) {
    // The first kRowLanes classes of a row stay in registers (for C <= kRowLanes the whole row, read
    // once); the classes after them are flat vector loops (max, then exp into p_o and its sum, then
    // the scale), which add nothing for C <= kRowLanes.
    const T* __restrict__ r = x + static_cast<std::int64_t>(k) * C;
    T* __restrict__ po = p_o + static_cast<std::int64_t>(k) * C;
    R v[W];
    LABELWISE_SIMD_FLAT
    for (int j = 0; j < W; ++j) {
      const R u = r[j];  // unconditional (readable), masked below
      const bool real = j < C;
      v[j] = real ? u : -INFINITY;
      bad |= (real & ((u != u) | (u == INFINITY))) ? 1 : 0;
    }
    // For C > W: the whole chunks after the first as flat vector loops up to cf, then the last partial
    // chunk (if any) as one chunk of W lanes, lanes past C masked (a chunk is readable from its start):
    // no scalar remainder loop.
#if defined(LABELWISE_ROWS_AVX512)
    const int cf = C <= W ? W : C - (C - W) % W;
#else
    // AVX2 / generic: flat loops up to C (with the compiler's own remainder). The masked last chunk
    // made the AVX2 build 10-25 % slower even at C = 10, where it never runs (code generation).
    const int cf = C;
#endif
    R mx = max16(v);
    LABELWISE_SIMD_MAX
    for (int c = W; c < cf; ++c) {
      const R u = r[c];
      bad |= ((u != u) | (u == INFINITY)) ? 1 : 0;
      mx = u > mx ? u : mx;
    }
    if (cf < C) {
      R ml[W];
      LABELWISE_SIMD_FLAT
      for (int j = 0; j < W; ++j) {
        const R u = r[cf + j];
        const bool real = cf + j < C;
        bad |= (real & ((u != u) | (u == INFINITY))) ? 1 : 0;
        ml[j] = real & (u > mx) ? u : mx;
      }
      mx = max16(ml);
    }
    if (!(mx > -INFINITY)) {  // -inf everywhere (or NaN, caught by bad)
      if (!fail) fail = kItemAllMasked;
      continue;
    }
    R e[W];
    LABELWISE_SIMD_PLAIN
    for (int j = 0; j < W; ++j) {
      const R d = v[j] - mx;  // -inf for masked lanes and -inf entries: exp gives 0
      e[j] = lw_exp_nonpositive(d <= R(0) ? d : R(0));
    }
    R z = R(0);
    LABELWISE_SIMD_Z
    for (int c = W; c < cf; ++c) {
      const R d = static_cast<R>(r[c]) - mx;
      const R ec = lw_exp_nonpositive(d <= R(0) ? d : R(0));
      po[c] = ec;
      z += ec;
    }
    if (cf < C) {
      // The lanes past C are 0, written into the next row (which overwrites them) or the slack.
      R el[W];
      LABELWISE_SIMD_PLAIN
      for (int j = 0; j < W; ++j) {
        const R d = cf + j < C ? static_cast<R>(r[cf + j]) - mx : R(-INFINITY);
        el[j] = lw_exp_nonpositive(d <= R(0) ? d : R(0));
        po[cf + j] = el[j];
      }
      z += tree_sum16(el);
    }
    z += tree_sum16(e);  // one chunk: exactly the tree sum
    R scale;
    if (input_kind == 1) {
      // |m + ln z| <= tol, tested as exp(-tol) <= z·exp(m) <= exp(tol) (no logarithm per row).
      const double em = exp(static_cast<double>(mx));
      const double total = static_cast<double>(z) * em;
      if (!fail && !((total >= lo_total) & (total <= hi_total))) fail = kItemUnnormalised;
      scale = static_cast<R>(em);
    } else {
      scale = R(1) / z;  // z >= 1: the maximum contributes 1
    }
    // All W lanes of the first chunk (lanes past C are 0, overwritten by the next row or in the slack).
    if constexpr (need_ent) {
      // ln p = x - m - ln z (logits; the ln z once per W rows) or x (log-probabilities).
      const R shift = input_kind == 1 ? R(0) : mx;
      LABELWISE_SIMD_PLAIN
      for (int j = 0; j < W; ++j) {
        const R p = e[j] * scale;
        po[j] = p;
        const R lp = v[j] - shift;
        plp[j] += p * (lp > lowest ? lp : lowest);
      }
      R pl = R(0);
      LABELWISE_SIMD_PL
      for (int c = W; c < C; ++c) {
        const R p = po[c] * scale;
        po[c] = p;
        const R lp = static_cast<R>(r[c]) - shift;
        pl += p * (lp > lowest ? lp : lowest);
      }
      pl_rest += static_cast<double>(pl);
      if (input_kind != 1) {
        const int slot = k % W;
        zr[slot] = z;
        if (slot == W - 1 || k == K - 1) rows_sub_log(zr, slot + 1, plp);
      }
    } else {
      LABELWISE_SIMD_PLAIN
      for (int j = 0; j < W; ++j) po[j] = e[j] * scale;
      LABELWISE_SIMD_PLAIN
      for (int c = W; c < C; ++c) po[c] *= scale;
    }
    if (need_votes) {
      // The lowest class holding the row maximum, ties to the lower class (masked lanes are -inf < mx;
      // for several chunks, read again from the row up to the first chunk that holds it).
      const int w = C <= W ? first_equal(v, C, mx) : first_equal(r, C, mx);
      if (C <= W) {
        LABELWISE_SIMD_PLAIN
        for (int j = 0; j < W; ++j) votes[j] += j == w ? 1 : 0;
      } else {
        cs.arg[k] = w;
      }
    }
  }
  if (bad) return kItemNonFinite;
  if (fail) return fail;
  if (need_votes) mode_o = C <= W ? lane_mode(votes) : chunk_mode(cs, K);
  if constexpr (need_ent) {
    double h = 0.0;
    LABELWISE_SIMD_H
    for (int j = 0; j < W; ++j) h += static_cast<double>(plp[j]);
    ent_o = 0.0 - (h + pl_rest);
  }
  return kItemOk;
}

/// Phase 2 for `nb` items whose phase-1 results are in `b`: writes res[item * kResSlots + metric].
inline void block_finalise(const BlockScratch& b, int nb, int K, int C, unsigned mask, double* __restrict__ res) {
  const int n = nb * C;
  const double inv_k = 1.0 / K;
  const bool need_h = (mask & (kBitPredictiveEntropy | kBitBald | kBitBalEntAcq)) != 0;
  const bool need_sq = (mask & (kBitMeanStd | kBitBalEntAcq)) != 0;
  const bool want_bal = (mask & kBitBalEntAcq) != 0;
  const double* __restrict__ first_p = b.first;
  const double* __restrict__ sum_p = b.sum;
  const double* __restrict__ sumsq_p = b.sumsq;
  double* __restrict__ mu_p = b.mu;
  double* __restrict__ plm_p = b.plm;
  double* __restrict__ sd_p = b.sd;
  double* __restrict__ term_p = b.term;
  int* __restrict__ slow_p = b.slow;
  LABELWISE_SIMD_PLAIN
  for (int j = 0; j < n; ++j) {
    const double mean = first_p[j] + sum_p[j] * inv_k;
    mu_p[j] = mean;
    if (need_h) {
      const bool pos = mean > 0.0;
      plm_p[j] = pos ? mean * lw_log_d(pos ? mean : 1.0) : 0.0;
    }
  }
  if (need_sq && !want_bal) {
    LABELWISE_SIMD_PLAIN
    for (int j = 0; j < n; ++j) {
      double mean, var;
      class_mean_var(first_p[j], sum_p[j], sumsq_p[j], K, inv_k, mean, var);
      sd_p[j] = sqrt(var);
    }
  } else if (want_bal) {
    double* __restrict__ lnb_p = b.lnb;
    double* __restrict__ w_p = b.wpsi;
    // Segments of kBandSegment class terms, so that the rare passes below (the guard's logarithm, the
    // exact scalar term) cover only the segments that need them, while their values are in L1.
    constexpr int kBandSegment = 64;
    for (int j0 = 0; j0 < n; j0 += kBandSegment) {
      const int j1 = n - j0 < kBandSegment ? n : j0 + kBandSegment;
      int any_band = 0, any_slow = 0;
      LABELWISE_SIMD_BAND
      for (int j = j0; j < j1; ++j) {
        double mean, var;
        class_mean_var(first_p[j], sum_p[j], sumsq_p[j], K, inv_k, mean, var);
        sd_p[j] = sqrt(var);
        double mu, alpha, beta;
        const bool ok = balentacq_beta_params(mean, var, mu, alpha, beta);
        double lb, w;
        beta_entropy_parts(ok ? alpha : 1.0, ok ? beta : 1.0, lb, w);
        // log(B + 1e-32) without its logarithm, exact outside |ln B - ln 1e-32| <= 40 (see
        // balentacq_guarded_log_beta); classes inside that band are redone below.
        const double t = mu * ((lb > kLog1em32 ? lb : kLog1em32) + w);
        const bool band = ok & (fabs(lb - kLog1em32) <= 40.0);
        term_p[j] = ok ? (t < 0.0 ? t : 0.0) : 0.0;
        slow_p[j] = ok ? 0 : 1;
        lnb_p[j] = lb;
        w_p[j] = w;
        any_band |= band ? 1 : 0;
        any_slow |= ok ? 0 : 1;
      }
      if (any_band) {
        // The guard's logarithm for the classes in the band (rare unless the samples agree closely).
        LABELWISE_SIMD_PLAIN
        for (int j = j0; j < j1; ++j) {
          const double lb = lnb_p[j];
          const bool band = (slow_p[j] == 0) & (fabs(lb - kLog1em32) <= 40.0);
          const double mu = balentacq_floor(mu_p[j]);
          const double t = mu * (balentacq_guarded_log_beta(band ? lb : 0.0) + w_p[j]);
          term_p[j] = band ? (t < 0.0 ? t : 0.0) : term_p[j];
        }
      }
      if (any_slow) {
        for (int j = j0; j < j1; ++j) {
          if (!slow_p[j]) continue;
          double mean, var;
          class_mean_var(first_p[j], sum_p[j], sumsq_p[j], K, inv_k, mean, var);
          term_p[j] = balentacq_class_term(mean, var);
        }
      }
    }
  }
  // Per-item reductions over the classes. The two largest means are the same whatever the order; the
  // sums (entropy, std, BalEntAcq terms) depend on it, and so on C only, never on the block split.
  double top1[kBlockItems], top2[kBlockItems], h[kBlockItems], ssum[kBlockItems], tsum[kBlockItems];
  LABELWISE_SIMD_PLAIN
  for (int i = 0; i < nb; ++i) {
    top1[i] = -1.0;
    top2[i] = -1.0;
    h[i] = 0.0;
    ssum[i] = 0.0;
    tsum[i] = 0.0;
  }
  if (C <= kRowLanes) {
    // Few classes: in class order, vectorised across the block's items (class values C apart: strided
    // loads); no per-item dependency chain of compares.
    for (int c = 0; c < C; ++c) {
      LABELWISE_SIMD_PLAIN
      for (int i = 0; i < nb; ++i) {
        const double m = mu_p[i * C + c];
        const double lo = m < top1[i] ? m : top1[i];
        top2[i] = lo > top2[i] ? lo : top2[i];
        top1[i] = m > top1[i] ? m : top1[i];
      }
      if (need_h) {
        LABELWISE_SIMD_PLAIN
        for (int i = 0; i < nb; ++i) h[i] -= plm_p[i * C + c];
      }
      if (need_sq) {
        LABELWISE_SIMD_PLAIN
        for (int i = 0; i < nb; ++i) ssum[i] += sd_p[i * C + c];
      }
      if (want_bal) {
        LABELWISE_SIMD_PLAIN
        for (int i = 0; i < nb; ++i) tsum[i] += term_p[i * C + c];
      }
    }
  } else {
    // Many classes (few items per block): per item, over its classes in kClassBlock lanes (contiguous
    // loads; the lanes past C read the next values and are masked), the lanes merged once per item.
    constexpr int L = kClassBlock;
    for (int i = 0; i < nb; ++i) {
      const double* __restrict__ mu_i = mu_p + i * C;
      const double* __restrict__ plm_i = plm_p + i * C;
      const double* __restrict__ sd_i = sd_p + i * C;
      const double* __restrict__ term_i = term_p + i * C;
      double t1[L], t2[L], hl[L], sl[L], tl[L];
      LABELWISE_SIMD_PLAIN
      for (int j = 0; j < L; ++j) {
        t1[j] = -1.0;
        t2[j] = -1.0;
        hl[j] = 0.0;
        sl[j] = 0.0;
        tl[j] = 0.0;
      }
      for (int cb = 0; cb < C; cb += L) {
        LABELWISE_SIMD_PLAIN
        for (int j = 0; j < L; ++j) {
          const bool real = cb + j < C;
          const double m = real ? mu_i[cb + j] : -1.0;
          const double lo = m < t1[j] ? m : t1[j];
          t2[j] = lo > t2[j] ? lo : t2[j];
          t1[j] = m > t1[j] ? m : t1[j];
        }
        if (need_h) {
          LABELWISE_SIMD_PLAIN
          for (int j = 0; j < L; ++j) hl[j] -= cb + j < C ? plm_i[cb + j] : 0.0;
        }
        if (need_sq) {
          LABELWISE_SIMD_PLAIN
          for (int j = 0; j < L; ++j) sl[j] += cb + j < C ? sd_i[cb + j] : 0.0;
        }
        if (want_bal) {
          LABELWISE_SIMD_PLAIN
          for (int j = 0; j < L; ++j) tl[j] += cb + j < C ? term_i[cb + j] : 0.0;
        }
      }
      // The two largest of the lanes' pairs (as a multiset: a tie gives top2 = top1).
      double a1 = -1.0, a2 = -1.0;
      for (int j = 0; j < L; ++j) {
        for (const double m : {t1[j], t2[j]}) {
          const double lo = m < a1 ? m : a1;
          a2 = lo > a2 ? lo : a2;
          a1 = m > a1 ? m : a1;
        }
      }
      top1[i] = a1;
      top2[i] = a2;
      for (int j = 0; j < L; ++j) {
        h[i] += hl[j];
        ssum[i] += sl[j];
        tsum[i] += tl[j];
      }
    }
  }
  for (int i = 0; i < nb; ++i) {
    finish_metrics(ItemSummary{h[i], b.ent[i], top1[i], top2[i], b.mode[i], ssum[i], tsum[i]}, K, C, mask,
                   res + i * kResSlots);
  }
}

/// Per-worker scratch of the block path: the BlockScratch of block_items(C) items, the ChunkScratch,
/// kResSlots results per item and two item buffers of K·C + kRowLanes values of T: pad() (an item
/// gathered, or copied near the end of a view, zero padded) and probs() (an item's probabilities made
/// from logits). Plain calloc'd blocks: std:: containers instantiated here would be compiled for this
/// instruction set and could be merged by the linker into another variant.
template <typename T>
class BlockWorkspace {
 public:
  BlockWorkspace(int K, int C) : nb_(detail::block_items(C)) {
    const std::size_t nd = block_scratch_doubles(nb_, C);
    const std::size_t ni = static_cast<std::size_t>(nb_) * (C + 1);
    const std::size_t npad = static_cast<std::size_t>(K) * C + kRowLanes;
    const std::size_t nlanes = static_cast<std::size_t>(K) * kRowLanes;  // ChunkScratch: 2·K·kRowLanes of T
    dbl_ = static_cast<double*>(std::calloc(nd + static_cast<std::size_t>(nb_) * kResSlots, sizeof(double)));
    ints_ = static_cast<int*>(std::calloc(ni + K + C, sizeof(int)));
    vals_ = static_cast<T*>(std::calloc(2 * npad + 2 * nlanes, sizeof(T)));
    if (!dbl_ || !ints_ || !vals_) {
      release();
      throw Error(ErrorKind::Runtime, "out of memory for per-thread scratch");
    }
    const std::size_t bc = static_cast<std::size_t>(nb_) * C, bs = bc + kRowLanes;
    double* d = dbl_;
    b_ = BlockScratch{d,          d + bs,          d + 2 * bs,  d + 3 * bs, d + 3 * bs + bc, d + 3 * bs + 2 * bc,
                      d + 3 * bs + 3 * bc, ints_, d + 3 * bs + 4 * bc, ints_ + bc, vals_,
                      d + 3 * bs + 4 * bc + nb_, d + 3 * bs + 5 * bc + nb_};
    res_ = dbl_ + nd;
    probs_ = vals_ + npad;
    cs_ = ChunkScratch<T>{vals_ + 2 * npad, vals_ + 2 * npad + nlanes, ints_ + ni, ints_ + ni + K};
  }
  ~BlockWorkspace() { release(); }
  BlockWorkspace(const BlockWorkspace&) = delete;
  BlockWorkspace& operator=(const BlockWorkspace&) = delete;
  int block_items() const { return nb_; }
  const BlockScratch& scratch() const { return b_; }
  const ChunkScratch<T>& chunks() const { return cs_; }
  double* results() const { return res_; }  // res[item * kResSlots + metric] (block_finalise)
  T* pad() const { return vals_; }
  T* probs() const { return probs_; }

 private:
  void release() {
    std::free(dbl_);
    std::free(ints_);
    std::free(vals_);
  }
  int nb_;
  double* dbl_ = nullptr;
  int* ints_ = nullptr;
  T* vals_ = nullptr;
  T* probs_ = nullptr;
  double* res_ = nullptr;
  BlockScratch b_{};
  ChunkScratch<T> cs_{};
};
#endif  // !__CUDACC__

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
