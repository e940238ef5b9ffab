// labelwise — the per-item body of top-k / stochastic selection, compiled by g++ for the CPU
// (src/cpu/selection_cpu.cpp, with -ffp-contract=off) and by nvcc for CUDA (src/cuda/selection_cuda.cu).
// It turns one item into a 64-bit *ordered key* u: an unsigned integer whose order is the order of the
// item's value (score or Gumbel key), so that both backends select on integers with a strict total
// order (u descending, then index ascending). Nothing here depends on the thread or block that runs it.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "labelwise/core/config.hpp"
#include "labelwise/core/rng.hpp"

namespace labelwise {
namespace detail {
inline namespace LABELWISE_ISA_NAMESPACE {

/// Per-item validation outcome; the front door turns a non-zero code into an Error.
enum SelectStatus : int {
  kSelectOk = 0,
  kSelectNaN = 1,            // a NaN score / value
  kSelectNegative = 2,       // a negative score in power mode
  kSelectBadRank = 3,        // a given rank < 1
  kSelectNegativeIndex = 4,  // a negative global index given to merge_top_k
  kSelectDuplicate = 5,      // the same global index twice among merge_top_k's winners
  kSelectOverflow = 6,       // softmax / power mode: beta * score (beta * ln score) overflows for a finite score
};

enum SelectMode : int { kModePower = 0, kModeSoftmax = 1, kModeSoftRank = 2 };

/// A strided view flattened in row-major order of its logical shape: item i's element offset.
/// The front door coalesces axes, so contiguous and 1-D strided views have ndim = 1.
struct FlatGrid {
  int ndim = 1;
  std::int64_t shape[kMaxDims] = {};
  std::int64_t stride[kMaxDims] = {};
};

LABELWISE_HD inline std::int64_t flat_offset(const FlatGrid& g, std::int64_t i) {
  if (g.ndim == 1) return i * g.stride[0];
  std::int64_t off = 0;
  for (int d = g.ndim - 1; d >= 0; --d) {
    off += (i % g.shape[d]) * g.stride[d];
    i /= g.shape[d];
  }
  return off;
}

/// Order-preserving map double → uint64 (a < b ⇔ key(a) < key(b) for non-NaN values; -0.0 and +0.0
/// map to the same key, ±inf to the extremes).
LABELWISE_HD inline std::uint64_t ordered_key(double v) {
  v = v == 0.0 ? 0.0 : v;  // -0.0 → +0.0: equal scores tie and break by index
  const std::uint64_t b = rng::double_bits(v);
  // Negative: flip every bit; positive: set the sign bit. Branch-free, so that CPU loops vectorise.
  const std::uint64_t negative = 0 - (b >> 63);
  return b ^ (negative | 0x8000000000000000ull);
}

/// Inverse of ordered_key.
LABELWISE_HD inline double ordered_value(std::uint64_t u) {
  return rng::bits_double((u >> 63) ? (u & 0x7FFFFFFFFFFFFFFFull) : ~u);
}

/// ln w of one item (w = s^β, exp(β s) or rank^-β) or a SelectStatus. s is the score, rank its
/// 1-based rank (SoftRank only). Returns -inf for weight 0 and +inf for an infinite weight.
LABELWISE_HD inline int stochastic_log_weight(int mode, double beta, double s, double rank, double* log_w) {
  if (s != s) return kSelectNaN;
  switch (mode) {
    case kModePower:
      if (s < 0.0) return kSelectNegative;
      *log_w = rng::mul_rn(beta, rng::det_log(s));  // s = 0 → -inf, s = +inf → +inf
      // as for softmax below: beta · ln s overflowing upwards for a finite s (a tiny temperature)
      if (s - s == 0.0 && *log_w == INFINITY) return kSelectOverflow;
      return kSelectOk;
    case kModeSoftmax:
      *log_w = rng::mul_rn(beta, s);
      // a finite score whose beta * s overflows upwards would get an infinite weight and be ordered by
      // index (downwards, weight 0 is right: the limit, as for s = -inf)
      if (s - s == 0.0 && *log_w == INFINITY) return kSelectOverflow;
      return kSelectOk;
    default:
      if (!(rank >= 1.0)) return kSelectBadRank;
      *log_w = -rng::mul_rn(beta, rng::det_log(rank));
      return kSelectOk;
  }
}

/// The Gumbel-top-k key ln w + G of the item with global index g: G = −ln(−ln U), U from
/// Philox-4x32-10 keyed by seed, counter (g, kStreamStochastic). Same bits on host and device.
LABELWISE_HD inline std::uint64_t gumbel_bits(std::uint64_t seed, std::uint64_t g) {
  return rng::bits64(seed, rng::kStreamStochastic, g);
}
LABELWISE_HD inline double gumbel_key_from_bits(double log_w, std::uint64_t bits) {
  return rng::add_rn(log_w, rng::gumbel(bits));
}
LABELWISE_HD inline double gumbel_key(double log_w, std::uint64_t seed, std::uint64_t g) {
  return gumbel_key_from_bits(log_w, gumbel_bits(seed, g));
}

#if !defined(__CUDACC__)
// ---- CPU pruning of stochastic keys (src/cpu/selection_cpu.cpp; here for the tests) ----------------

/// Below this uniform U, no item whose log-weight is at most max_log_w can beat the threshold key
/// thr: G(U) = −ln(−ln U) is increasing, so key <= max_log_w + G(U) < thr whenever
/// U < exp(−exp(−(thr − max_log_w))). A margin of 1e-12·(1 + |thr| + |max_log_w|) in key units (the
/// log-weights and keys are within a few ulp: det_log is within 2 ulp) and 1e-12 relative on U (near
/// U = 1, G is steep) makes the bound safe against the rounding of every step; items above it get
/// their exact key. The pruning only skips work: the result is the same bits as without it. 0 = no
/// pruning (also where the arithmetic overflows: thr − max_log_w and the margin both infinite).
inline double prune_uniform(double thr, double max_log_w) {
  if (!std::isfinite(thr) || !std::isfinite(max_log_w)) return 0.0;
  const double g0 = (thr - max_log_w) - 1e-12 * (1.0 + std::fabs(thr) + std::fabs(max_log_w));
  if (g0 != g0) return 0.0;  // inf - inf
  return std::exp(-std::exp(-g0)) * (1.0 - 1e-12);
}

/// prune_uniform per bucket of log-weights, so that each item is pruned by a bound near its own
/// weight (a block's best weight, the bound before, let most items of a heavy-tailed pool through:
/// softmax pruned ~87 % of N = 10^7 gamma-distributed scores). An item's bucket comes from bits it
/// already has: its rank's binary exponent (softrank: ranks in [2^e, 2^(e+1)) have log w <= -β e ln 2),
/// its score's (power: s in [2^e, 2^(e+1)) has log w < β (e+1) ln 2; s < 2^-63, 0 included, in the
/// lowest bucket), or β·s on a grid of 1/16 from thr - 24 (softmax; below that, everything is in the
/// lowest bucket, whose bound prunes all but ~4e-11 of it). The highest bucket never prunes.
class PruneTable {
 public:
  PruneTable(int mode, double beta) : mode_(mode), beta_(beta) {}

  /// The bounds for threshold key thr_u (ordered), null when thr is not finite (no pruning).
  const double* bounds(std::uint64_t thr_u) {
    if (ready_ && thr_u == thr_u_) return usable_ ? u0_ : nullptr;
    ready_ = true;
    thr_u_ = thr_u;
    const double thr = ordered_value(thr_u);
    usable_ = std::isfinite(thr);
    if (!usable_) return nullptr;
    base_ = thr - 24.0;
    const int n = size();
    for (int k = 0; k + 1 < n; ++k) {
      double max_log_w = 0.0;
      if (mode_ == kModeSoftRank)
        stochastic_log_weight(kModeSoftRank, beta_, 0.0, std::ldexp(1.0, k), &max_log_w);
      else if (mode_ == kModePower)  // the weight at the bucket's upper end, with the items' rounding
        stochastic_log_weight(kModePower, beta_, std::ldexp(1.0, k == 0 ? -63 : k - 63), 0.0, &max_log_w);
      else  // the grid's upper end, plus the rounding of the bucket's arithmetic (bucket())
        max_log_w = base_ + (k + 1) / 16.0 + 1e-12 * (1.0 + std::fabs(base_));
      u0_[k] = prune_uniform(thr, max_log_w);
    }
    u0_[n - 1] = 0.0;
    return u0_;
  }

  /// The bucket of a valid item: score s (power, softmax) or rank r >= 1 (softrank); kMode = the
  /// table's mode (a template argument, so that loops over items do not branch on it).
  template <int kMode>
  int bucket_for(double s, double r) const {
    if (kMode == kModeSoftRank) return exponent(r);  // 0..63
    if (kMode == kModePower) {
      const int e = exponent(s);  // s >= 0; 0 and subnormals -1023, +inf 1024
      return e < -63 ? 0 : (e > 62 ? 127 : e + 64);
    }
    const double x = (beta_ * s - base_) * 16.0;
    return !(x < 511.0) ? 511 : (x < 0.0 ? 0 : static_cast<int>(x));  // NaN (unreachable): no pruning
  }
  int bucket(double s, double r) const {
    return mode_ == kModeSoftRank ? bucket_for<kModeSoftRank>(s, r)
                                  : (mode_ == kModePower ? bucket_for<kModePower>(s, r) : bucket_for<kModeSoftmax>(s, r));
  }

 private:
  /// The binary exponent of v >= 0 from its bits (ilogb for normal numbers; a libm call per item
  /// cost ~6 % of power mode).
  static int exponent(double v) {
    std::uint64_t b;
    std::memcpy(&b, &v, sizeof b);
    return static_cast<int>((b >> 52) & 0x7FF) - 1023;
  }
  int size() const { return mode_ == kModeSoftRank ? 64 : (mode_ == kModePower ? 128 : 512); }

  int mode_;
  double beta_;
  double base_ = 0.0;
  std::uint64_t thr_u_ = 0;
  bool ready_ = false, usable_ = false;
  double u0_[512];
};
#endif  // !__CUDACC__

// ---- radix select on the composite key (u, t), t = ~global index (larger t = lower index) -------
// Used by the CUDA backend (one histogram pass per byte, most significant first); kept here, host
// and device, so that the CPU tests can check the selection logic on machines without a GPU.

/// The prefix chosen so far. Composite keys are unique, so once `done`, exactly b items have a key
/// whose first `depth` bytes are >= the prefix.
struct RadixState {
  std::uint64_t hi = 0, lo = 0;  // prefix bytes (those beyond `depth` are zero)
  long long need = 0;            // items still to take among those that share the prefix
  int depth = 0;                 // bytes decided, 0..16
  int done = 0;
};

LABELWISE_HD inline std::uint64_t radix_tie_key(std::int64_t global_index) {
  return ~static_cast<std::uint64_t>(global_index);
}

LABELWISE_HD inline bool radix_shares_prefix(std::uint64_t u, std::uint64_t t, const RadixState& st) {
  const int d = st.depth;
  if (d == 0) return true;
  if (d <= 8) return (u >> (64 - 8 * d)) == (st.hi >> (64 - 8 * d));
  return u == st.hi && (t >> (128 - 8 * d)) == (st.lo >> (128 - 8 * d));
}

LABELWISE_HD inline bool radix_at_or_above(std::uint64_t u, std::uint64_t t, const RadixState& st) {
  const int d = st.depth;
  if (d == 0) return true;
  if (d <= 8) return (u >> (64 - 8 * d)) >= (st.hi >> (64 - 8 * d));
  return u > st.hi || (u == st.hi && (t >> (128 - 8 * d)) >= (st.lo >> (128 - 8 * d)));
}

/// Byte d (0 = most significant) of the 128-bit key (u, t).
LABELWISE_HD inline unsigned radix_byte(std::uint64_t u, std::uint64_t t, int d) {
  return d < 8 ? static_cast<unsigned>((u >> (56 - 8 * d)) & 0xff)
               : static_cast<unsigned>((t >> (56 - 8 * (d - 8))) & 0xff);
}

/// One step: given the histogram of byte `depth` over the items sharing the prefix, picks the byte
/// that holds the need-th best item and extends the prefix.
template <typename Count>
LABELWISE_HD inline void radix_choose(RadixState& st, const Count* hist) {
  if (st.done) return;
  long long above = 0;
  for (int g = 255; g >= 0; --g) {
    const long long h = static_cast<long long>(hist[g]);
    if (above + h >= st.need) {
      const int d = st.depth;
      if (d < 8)
        st.hi |= static_cast<std::uint64_t>(g) << (56 - 8 * d);
      else
        st.lo |= static_cast<std::uint64_t>(g) << (56 - 8 * (d - 8));
      st.need -= above;
      st.depth = d + 1;
      if (h == st.need || st.depth == 16) st.done = 1;
      return;
    }
    above += h;
  }
}

}  // namespace LABELWISE_ISA_NAMESPACE
}  // namespace detail
}  // namespace labelwise
