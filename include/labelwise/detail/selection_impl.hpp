// labelwise — the per-item body of top-k / stochastic selection, compiled by g++ for the CPU
// (src/cpu/selection_cpu.cpp, with -ffp-contract=off) and by nvcc for CUDA (src/cuda/selection_cuda.cu).
// It turns one item into a 64-bit *ordered key* u: an unsigned integer whose order is the order of the
// item's value (score or Gumbel key), so that both backends select on integers with a strict total
// order (u descending, then index ascending). Nothing here depends on the thread or block that runs it.
#pragma once

#include <cmath>
#include <cstdint>

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
  kSelectOverflow = 6,       // softmax mode: beta * score overflows for a finite score
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
