// CPU backend of core-set (k-center greedy) and BADGE (k-means++ seeding on gradient embeddings).
//
// Both keep one number per item (the squared distance to the nearest centre) and make one pass over
// the pool per pick, on the library's static thread partition: every item's value is computed by one
// thread from its own row only, so it cannot depend on the thread count. Core-set's argmax uses a
// strict order (value, then lower index); BADGE sums its D² weights over fixed blocks of kSumBlock
// items (block sums in index order, then the blocks in order), so the sampled item is also the same
// on any thread count. Built with -ffp-contract=off (CMakeLists.txt): identical rows must give a
// difference of exactly 0.
#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "../cpu_variant.hpp"
#include "../diversity_backend.hpp"
#include "labelwise/core/parallel.hpp"
#include "labelwise/detail/diversity_impl.hpp"
#include "labelwise/detail/parallel_for.hpp"

namespace labelwise {
namespace detail {
namespace {

constexpr std::int64_t kGrainValues = 1 << 17;  // values per thread at least (starting a thread costs)
constexpr std::int64_t kSumBlock = kBadgeSumBlock;  // BADGE: fixed summation blocks
constexpr std::int64_t kCentreChunk = 64;  // core-set: labelled centres per cache-resident chunk

struct ArgMax {
  double v = -std::numeric_limits<double>::infinity();
  std::int64_t i = std::numeric_limits<std::int64_t>::max();
  void offer(double value, std::int64_t index) {
    if (value > v || (value == v && index < i)) {
      v = value;
      i = index;
    }
  }
};

ArgMax combine(const std::vector<ArgMax>& parts) {
  ArgMax best;
  for (const auto& p : parts) best.offer(p.v, p.i);
  return best;
}

DiversityFailure first_failure(const std::vector<DiversityFailure>& fs) {
  DiversityFailure worst;
  bool any = false;
  for (const auto& f : fs)
    if (f.status != kDivOk && (!any || f.item < worst.item)) {
      worst = f;
      any = true;
    }
  return worst;
}

/// Rows per thread at least, for rows of `cols` values.
std::int64_t grain_rows(std::int64_t cols) {
  return std::max<std::int64_t>(16, kGrainValues / std::max<std::int64_t>(cols, 1));
}

// The hot loops over a contiguous row, compiled for several x86 instruction sets
// (LABELWISE_CPU_CLONES). The reduction order depends only on the instruction set, never on the
// thread count.

LABELWISE_CPU_CLONES double row_sq(const float* x, std::int64_t d, const double* c) { return sq_dist_row(x, 1, d, c); }
LABELWISE_CPU_CLONES double row_sq(const double* x, std::int64_t d, const double* c) { return sq_dist_row(x, 1, d, c); }
LABELWISE_CPU_CLONES double row_sq_scaled(const float* x, std::int64_t d, double s, const double* c) {
  return sq_dist_row(x, 1, d, s, c);
}
LABELWISE_CPU_CLONES double row_sq_scaled(const double* x, std::int64_t d, double s, const double* c) {
  return sq_dist_row(x, 1, d, s, c);
}
LABELWISE_CPU_CLONES double row_dot(const float* x, std::int64_t d, const double* c) { return dot_row(x, 1, d, c); }
LABELWISE_CPU_CLONES double row_dot(const double* x, std::int64_t d, const double* c) { return dot_row(x, 1, d, c); }
LABELWISE_CPU_CLONES double row_dot_scaled(const float* x, std::int64_t d, double s, const double* c) {
  return dot_row(x, 1, d, s, c);
}
LABELWISE_CPU_CLONES double row_dot_scaled(const double* x, std::int64_t d, double s, const double* c) {
  return dot_row(x, 1, d, s, c);
}

template <typename T>
const T* row_ptr(const Matrix& m, std::int64_t i) {
  return static_cast<const T*>(m.data) + i * m.row_stride;
}

/// One pass over a row: its squared norm accumulated in double (so it may overflow to +inf or
/// underflow), its largest magnitude, whether it is all finite and whether any entry is nonzero.
struct RowScan {
  double ss = 0.0, amax = 0.0;
  bool finite = true, nonzero = false;
};

/// A contiguous row in one vector pass: a non-finite entry makes Σ v·0 NaN, and a finite row has a
/// nonzero entry iff its largest magnitude is > 0. (A scalar loop with a dependent add per entry and
/// std::fmax, a library call, took ~7 cycles a value: most of weighted_kmeans' time at b = 10.)
template <typename T>
RowScan scan_contiguous_impl(const T* r, std::int64_t d) {
  double ss = 0.0, amax = 0.0, nonfinite = 0.0;
#if defined(LABELWISE_CPU_SIMD)
#pragma omp simd reduction(+ : ss, nonfinite) reduction(max : amax)
#endif
  for (std::int64_t k = 0; k < d; ++k) {
    const double v = static_cast<double>(r[k]);
    const double a = std::fabs(v);
    nonfinite += v * 0.0;
    amax = a > amax ? a : amax;
    ss += v * v;
  }
  RowScan s;
  s.ss = ss;
  s.amax = amax;
  s.finite = nonfinite == 0.0;
  s.nonzero = amax > 0.0;
  return s;
}
LABELWISE_CPU_CLONES RowScan scan_contiguous(const float* r, std::int64_t d) { return scan_contiguous_impl(r, d); }
LABELWISE_CPU_CLONES RowScan scan_contiguous(const double* r, std::int64_t d) { return scan_contiguous_impl(r, d); }

/// The same for row i of m in any layout (strided rows in index order).
template <typename T>
RowScan scan_row(const Matrix& m, std::int64_t i) {
  const T* r = row_ptr<T>(m, i);
  if (m.col_stride == 1) return scan_contiguous(r, m.cols);
  RowScan s;
  for (std::int64_t k = 0; k < m.cols; ++k) {
    const double v = static_cast<double>(r[k * m.col_stride]);
    const double a = std::fabs(v);
    s.finite &= std::isfinite(v);
    s.nonzero |= v != 0.0;
    s.amax = a > s.amax ? a : s.amax;  // std::fmax's result (a NaN is skipped) without its library call
    s.ss += v * v;
  }
  return s;
}

/// The largest of the workers' largest magnitudes.
double max_of(const std::vector<double>& amax) { return *std::max_element(amax.begin(), amax.end()); }

/// Row i of m, times `scale`, as doubles.
template <typename T>
void load_row(const Matrix& m, std::int64_t i, double scale, double* out) {
  const T* r = row_ptr<T>(m, i);
  for (std::int64_t k = 0; k < m.cols; ++k) out[k] = static_cast<double>(r[k * m.col_stride]) * scale;
}

// ---- core-set -------------------------------------------------------------------------------------

template <typename T>
DiversityFailure coreset_run(const CoresetJob& job) {
  const Matrix& x = job.x;
  const std::int64_t n = x.rows, d = x.cols, cs = x.col_stride;
  const bool cosine = job.metric == 1;
  const std::int64_t grain = grain_rows(d);

  // Validate (NaN / Inf; zero rows for cosine) and, for cosine, the inverse norms; for Euclidean,
  // the largest magnitude (the features are read times 2^shift).
  std::vector<double> scale(cosine ? static_cast<std::size_t>(n) : 0);
  int shift = 0;
  {
    std::vector<DiversityFailure> fails(worker_slots());
    std::vector<double> amax(fails.size(), 0.0);
    parallel_for(n, grain, static_cast<int>(fails.size()), [&](std::int64_t begin, std::int64_t end, int w) {
      for (std::int64_t i = begin; i < end; ++i) {
        const RowScan r = scan_row<T>(x, i);
        const int st = r.finite ? row_norm_status(r.ss, r.nonzero, cosine) : kDivNonFinite;
        if (st != kDivOk) {
          fails[w] = {st, i};
          return;
        }
        if (cosine) scale[i] = 1.0 / std::sqrt(r.ss);
        amax[w] = std::max(amax[w], r.amax);
      }
    });
    const DiversityFailure f = first_failure(fails);
    if (f.status != kDivOk || job.b == 0) return f;
    if (!cosine) shift = feature_shift(max_of(amax));
  }
  const double unit = std::ldexp(1.0, shift);
  const bool scaled = cosine || shift != 0;
  auto scale_of = [&](std::int64_t i) { return cosine ? scale[i] : unit; };
  auto dist2 = [&](std::int64_t i, const double* c) {
    const T* r = row_ptr<T>(x, i);
    if (cs == 1) return scaled ? row_sq_scaled(r, d, scale_of(i), c) : row_sq(r, d, c);
    return scaled ? sq_dist_row(r, cs, d, scale_of(i), c) : sq_dist_row(r, cs, d, c);
  };

  // mins[i]: squared distance (cosine: of the unit rows) to the nearest labelled-or-chosen item;
  // -1 marks labelled and chosen items (never picked again).
  std::vector<double> mins(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) mins[i] = job.labeled[i] ? -1.0 : std::numeric_limits<double>::infinity();
  std::vector<ArgMax> parts(worker_slots());
  std::int64_t pick = -1;
  // owner[i]: position in `cent` (the labelled rows, then the picks) of the centre at distance
  // sqrt(mins[i]) from item i (-1: none yet). Used to skip items that the new centre cannot reach.
  std::vector<std::int64_t> owner(static_cast<std::size_t>(n), -1);
  std::vector<std::int64_t> cent;

  if (job.n_labeled > 0) {
    std::vector<std::int64_t>& lab = cent;
    lab.reserve(static_cast<std::size_t>(job.n_labeled + job.b));
    for (std::int64_t i = 0; i < n; ++i)
      if (job.labeled[i]) lab.push_back(i);
    std::vector<double> centres(static_cast<std::size_t>(kCentreChunk * d));
    const std::int64_t nl = static_cast<std::int64_t>(lab.size());
    for (std::int64_t c0 = 0; c0 < nl; c0 += kCentreChunk) {
      const std::int64_t c1 = std::min(nl, c0 + kCentreChunk);
      for (std::int64_t c = c0; c < c1; ++c) load_row<T>(x, lab[c], scale_of(lab[c]), &centres[(c - c0) * d]);
      const bool last = c1 == nl;
      std::fill(parts.begin(), parts.end(), ArgMax());
      parallel_for(n, grain, static_cast<int>(parts.size()), [&](std::int64_t begin, std::int64_t end, int w) {
        ArgMax best;
        for (std::int64_t i = begin; i < end; ++i) {
          double m = mins[i];
          if (m >= 0.0) {
            std::int64_t own = owner[i];
            for (std::int64_t c = c0; c < c1; ++c) {
              const double dd = dist2(i, &centres[(c - c0) * d]);
              if (dd < m) {
                m = dd;
                own = c;
              }
            }
            mins[i] = m;
            owner[i] = own;
          }
          if (last) best.offer(m, i);
        }
        parts[w] = best;
      });
    }
    pick = combine(parts).i;
  } else {
    // No labelled item: the first pick is the (unit) row farthest from the mean (unit) row. The mean
    // is summed over fixed blocks of rows, so its bits do not depend on the thread count.
    const std::int64_t nb = (n + kSumBlock - 1) / kSumBlock;
    std::vector<double> partial(static_cast<std::size_t>(nb * d), 0.0);
    parallel_for(nb, std::max<std::int64_t>(1, grain / kSumBlock), [&](std::int64_t b0, std::int64_t b1, int) {
      for (std::int64_t blk = b0; blk < b1; ++blk) {
        double* acc = &partial[blk * d];
        for (std::int64_t i = blk * kSumBlock; i < std::min(n, (blk + 1) * kSumBlock); ++i) {
          const T* r = row_ptr<T>(x, i);
          const double s = scale_of(i);
          for (std::int64_t k = 0; k < d; ++k) acc[k] += static_cast<double>(r[k * cs]) * s;
        }
      }
    });
    std::vector<double> mean(static_cast<std::size_t>(d), 0.0);
    for (std::int64_t blk = 0; blk < nb; ++blk)
      for (std::int64_t k = 0; k < d; ++k) mean[k] += partial[blk * d + k];
    bool zero = true;
    for (std::int64_t k = 0; k < d; ++k) {
      mean[k] /= static_cast<double>(n);
      zero &= mean[k] == 0.0;
    }
    if (cosine && zero) {
      pick = 0;  // every unit row is equally far from a zero mean
    } else {
      parallel_for(n, grain, static_cast<int>(parts.size()), [&](std::int64_t begin, std::int64_t end, int w) {
        ArgMax best;
        for (std::int64_t i = begin; i < end; ++i) best.offer(dist2(i, mean.data()), i);
        parts[w] = best;
      });
      pick = combine(parts).i;
    }
  }

  // Greedy: pick, then one pass that updates the minima and finds the next pick (= the radius).
  // Pruning (exact): if the new centre c is at least 2·(1 + 1e-6)·δ(i) from the centre o that owns
  // item i, then d(i, c) >= d(c, o) − d(i, o) >= (1 + 2e-6)·δ(i) by the triangle inequality, so δ(i)
  // cannot decrease and row i is not read. The margin dwarfs the rounding of the float64 sums
  // (~D·1e-16 relative), so the computed minima are the same bits as without pruning. It needs the
  // k centre-to-centre distances per pick, so it is used while k <= N / 8.
  constexpr double kPruneFactor = 4.0 * (1.0 + 1e-6) * (1.0 + 1e-6);
  std::vector<double> centre(static_cast<std::size_t>(d));
  std::vector<double> cc2;
  for (std::int64_t t = 0; t < job.b; ++t) {
    poll_interrupt();
    mins[pick] = -1.0;
    job.out_index[t * job.out_index_stride] = pick;
    load_row<T>(x, pick, scale_of(pick), centre.data());
    const std::int64_t k = static_cast<std::int64_t>(cent.size());
    const bool prune = job.prune && k > 0 && k <= n / 8;
    if (prune) {
      cc2.resize(static_cast<std::size_t>(k));
      parallel_for(k, grain, [&](std::int64_t begin, std::int64_t end, int) {
        for (std::int64_t j = begin; j < end; ++j) cc2[j] = dist2(cent[j], centre.data());
      });
    }
    cent.push_back(pick);
    std::fill(parts.begin(), parts.end(), ArgMax());
    parallel_for(n, grain, static_cast<int>(parts.size()), [&](std::int64_t begin, std::int64_t end, int w) {
      ArgMax best;
      for (std::int64_t i = begin; i < end; ++i) {
        double m = mins[i];
        if (m >= 0.0) {
          const std::int64_t o = owner[i];
          if (!(prune && o >= 0 && cc2[o] >= kPruneFactor * m)) {
            const double dd = dist2(i, centre.data());
            if (dd < m) {
              mins[i] = m = dd;
              owner[i] = k;
            }
          }
        }
        best.offer(m, i);
      }
      parts[w] = best;
    });
    const ArgMax best = combine(parts);
    const double r2 = std::max(0.0, best.v);  // -1: every item is covered
    job.out_radius[t * job.out_radius_stride] = cosine ? 0.5 * r2 : std::ldexp(std::sqrt(r2), -shift);
    pick = best.i;
  }
  return {};
}

// ---- BADGE ----------------------------------------------------------------------------------------

template <typename TX, typename TH>
DiversityFailure badge_run(const BadgeJob& job) {
  const std::int64_t n = job.x.rows, c = job.x.cols, d = job.h.cols, hs = job.h.col_stride;
  const std::int64_t grain = grain_rows(c + d);
  std::vector<double> a(static_cast<std::size_t>(n * c));  // a_n = p_n − onehot(argmax p_n)
  std::vector<double> g2(static_cast<std::size_t>(n));     // ||a_n||² ||h_n||²

  // Validate, and the residuals and norms; the embeddings' largest magnitude (they are read times
  // 2^shift, badge_shift).
  int shift = 0;
  {
    std::vector<DiversityFailure> fails(worker_slots());
    std::vector<double> amax(fails.size(), 0.0);
    parallel_for(n, grain, static_cast<int>(fails.size()), [&](std::int64_t begin, std::int64_t end, int w) {
      for (std::int64_t i = begin; i < end; ++i) {
        const TX* xr = row_ptr<TX>(job.x, i);
        const std::int64_t xs = job.x.col_stride;
        bool bad_nan = false, neg = false, all_neg_inf = true;
        double sum = 0.0;
        for (std::int64_t k = 0; k < c; ++k) {
          const double v = static_cast<double>(xr[k * xs]);
          if (job.kind == 0) {
            bad_nan |= !std::isfinite(v);
            neg |= v < 0.0;
            sum += v;
          } else {
            bad_nan |= std::isnan(v) || v == std::numeric_limits<double>::infinity();
            all_neg_inf &= v == -std::numeric_limits<double>::infinity();
            if (job.kind == 1) sum += std::exp(v);
          }
        }
        int st = kDivOk;
        if (bad_nan)
          st = kDivNonFinite;
        else if (job.kind == 0 && neg)
          st = kDivNegative;
        else if (job.kind == 2 && all_neg_inf)
          st = kDivAllNegInf;
        else if (job.kind != 2 && !(std::fabs(sum - 1.0) <= job.tolerance))
          st = kDivUnnormalised;
        if (st != kDivOk) {
          fails[w] = {st, i};
          return;
        }
        const RowScan hr = scan_row<TH>(job.h, i);
        const int hst = hr.finite ? row_norm_status(hr.ss, true, false) : kDivNonFinite;
        if (hst != kDivOk) {
          fails[w] = {hst, -1 - i};  // negative item: the embeddings' row
          return;
        }
        g2[i] = badge_residual(xr, xs, c, job.kind, &a[i * c]) * hr.ss;
        amax[w] = std::max(amax[w], hr.amax);
      }
    });
    // The first bad row (x before embeddings within a row).
    DiversityFailure worst;
    std::int64_t worst_row = std::numeric_limits<std::int64_t>::max();
    for (const auto& f : fails) {
      if (f.status == kDivOk) continue;
      const std::int64_t row = f.item < 0 ? -1 - f.item : f.item;
      if (row < worst_row) {
        worst = f;
        worst_row = row;
      }
    }
    if (worst.status != kDivOk || job.b == 0) return worst;
    shift = badge_shift(max_of(amax));
  }
  const double unit = std::ldexp(1.0, shift);
  if (shift != 0) {  // ||a||² · ||2^shift h||² (tiny rows' underflowed; huge rows' sums overflowed)
    parallel_for(n, grain, [&](std::int64_t begin, std::int64_t end, int) {
      for (std::int64_t i = begin; i < end; ++i) {
        double a2 = 0.0, h2 = 0.0;
        for (std::int64_t k = 0; k < c; ++k) a2 += a[i * c + k] * a[i * c + k];
        const TH* hr = row_ptr<TH>(job.h, i);
        for (std::int64_t k = 0; k < d; ++k) {
          const double v = static_cast<double>(hr[k * hs]) * unit;
          h2 += v * v;
        }
        g2[i] = a2 * h2;
      }
    });
  }

  // First centre: the largest ||g|| (ties: lower index).
  std::int64_t pick = 0;
  for (std::int64_t i = 1; i < n; ++i)
    if (g2[i] > g2[pick]) pick = i;

  std::vector<double> dist(static_cast<std::size_t>(n), std::numeric_limits<double>::infinity());
  std::vector<std::uint8_t> chosen(static_cast<std::size_t>(n), 0);
  const std::int64_t nb = (n + kSumBlock - 1) / kSumBlock;
  std::vector<double> block_sum(static_cast<std::size_t>(nb));
  std::vector<std::int64_t> block_last(static_cast<std::size_t>(nb));
  std::vector<double> hc(static_cast<std::size_t>(d));
  std::vector<double> ac(static_cast<std::size_t>(c));
  for (std::int64_t t = 0;; ++t) {
    poll_interrupt();
    job.out_index[t * job.out_index_stride] = pick;
    chosen[pick] = 1;
    dist[pick] = 0.0;
    if (t + 1 == job.b) break;
    // D² update against the new centre, and the fixed-block sums of D² over the items not chosen.
    load_row<TH>(job.h, pick, unit, hc.data());
    for (std::int64_t k = 0; k < c; ++k) ac[k] = a[pick * c + k];
    const double g2c = g2[pick];
    parallel_for(nb, std::max<std::int64_t>(1, grain / kSumBlock), [&](std::int64_t b0, std::int64_t b1, int) {
      for (std::int64_t blk = b0; blk < b1; ++blk) {
        double s = 0.0;
        std::int64_t last = -1;
        for (std::int64_t i = blk * kSumBlock; i < std::min(n, (blk + 1) * kSumBlock); ++i) {
          if (chosen[i]) continue;
          double aa = 0.0;
          for (std::int64_t k = 0; k < c; ++k) aa += a[i * c + k] * ac[k];
          // a·a' = 0 (e.g. a one-hot prediction, a = 0): h·h' is not needed.
          const TH* hr = row_ptr<TH>(job.h, i);
          const double hh = aa == 0.0                ? 0.0
                            : shift == 0 && hs == 1 ? row_dot(hr, d, hc.data())
                            : hs == 1               ? row_dot_scaled(hr, d, unit, hc.data())
                                                    : dot_row(hr, hs, d, unit, hc.data());
          const double dd = badge_sq_dist(g2[i], g2c, aa, hh);
          if (dd < dist[i]) dist[i] = dd;
          s += dist[i];
          if (dist[i] > 0.0) last = i;
        }
        block_sum[blk] = s;
        block_last[blk] = last;
      }
    });
    pick = badge_draw(block_sum, block_last, chosen, badge_uniform_of(job.seed, static_cast<std::uint64_t>(t + 1)),
                      [&](std::int64_t blk, double* out) {
                        const std::int64_t i0 = blk * kSumBlock;
                        std::copy(dist.begin() + i0, dist.begin() + std::min(n, i0 + kSumBlock), out);
                      });
    if (pick < 0) {  // Σ D² = 0: every remaining item coincides with a centre
      for (std::int64_t i = 0; i < n; ++i)
        if (!chosen[i]) {
          pick = i;
          break;
        }
    }
  }
  return {};
}

// ---- uncertainty-weighted k-means (Zhdanov 2019) ----------------------------------------------------

/// Index of the nearest centre (ties: the lower centre) and its squared distance.
std::pair<std::int64_t, double> nearest_centre(const double* row, const std::vector<double>& centres, std::int64_t k,
                                               std::int64_t d) {
  std::int64_t best = 0;
  double bd = std::numeric_limits<double>::infinity();
  for (std::int64_t c = 0; c < k; ++c) {
    const double v = row_sq(row, d, &centres[c * d]);
    if (v < bd) {
      bd = v;
      best = c;
    }
  }
  return {best, bd};
}

/// first_bad_euclidean_row (the lowest bad row whatever the thread count) for T.
template <typename T>
DiversityFailure first_bad_euclidean_row_of(const Matrix& x, int& shift) {
  std::vector<DiversityFailure> fails(static_cast<std::size_t>(worker_slots()));
  std::vector<double> amax(fails.size(), 0.0);
  parallel_for(x.rows, grain_rows(x.cols), static_cast<int>(fails.size()), [&](std::int64_t begin, std::int64_t end, int w) {
    for (std::int64_t i = begin; i < end && fails[w].status == kDivOk; ++i) {
      const RowScan r = scan_row<T>(x, i);
      const int st = r.finite ? row_norm_status(r.ss, true, false) : kDivNonFinite;
      if (st != kDivOk) fails[w] = {st, i};
      amax[w] = std::max(amax[w], r.amax);
    }
  });
  shift = feature_shift(max_of(amax));
  return first_failure(fails);
}

template <typename T>
DiversityFailure weighted_kmeans_run(const WeightedKmeansJob& job) {
  const Matrix& x = job.x;
  const std::int64_t d = x.cols, b = job.b;
  int shift = 0;
  const DiversityFailure bad = first_bad_euclidean_row_of<T>(x, shift);
  if (bad.status != kDivOk) return bad;
  if (b == 0) return {};
  const std::vector<std::int64_t> cand = weighted_kmeans_candidates(job.weights, b, job.prefilter);
  const std::int64_t m = static_cast<std::int64_t>(cand.size());
  std::vector<double> X(static_cast<std::size_t>(m == b ? 0 : m * d));
  if (m != b)
    for (std::int64_t j = 0; j < m; ++j) load_row<T>(x, cand[j], std::ldexp(1.0, shift), &X[j * d]);
  const std::vector<std::int64_t> picks = weighted_kmeans_cluster(X, job.weights, cand, d, b, job.max_iter);
  for (std::int64_t t = 0; t < b; ++t) job.out_index[t * job.out_index_stride] = picks[t];
  return {};
}

template <typename TX>
DiversityFailure badge_h(const BadgeJob& job) {
  return job.h.dtype == DType::Float32 ? badge_run<TX, float>(job) : badge_run<TX, double>(job);
}

}  // namespace

double contiguous_sq_dist(const double* x, const double* y, std::int64_t d) { return row_sq(x, d, y); }

std::vector<std::int64_t> weighted_kmeans_candidates(const std::vector<double>& w, std::int64_t b,
                                                     std::int64_t prefilter) {
  const std::int64_t n = static_cast<std::int64_t>(w.size());
  const std::int64_t m = prefilter >= (n + b - 1) / b ? n : prefilter * b;
  std::vector<std::int64_t> cand(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) cand[i] = i;
  const auto by_rank = [&](std::int64_t i, std::int64_t j) { return w[i] > w[j] || (w[i] == w[j] && i < j); };
  if (m < n) std::nth_element(cand.begin(), cand.begin() + m, cand.end(), by_rank);
  cand.resize(static_cast<std::size_t>(m));
  std::sort(cand.begin(), cand.end(), by_rank);
  return cand;
}

std::vector<std::int64_t> weighted_kmeans_cluster(const std::vector<double>& X, const std::vector<double>& w,
                                                  const std::vector<std::int64_t>& cand, std::int64_t d,
                                                  std::int64_t b, std::int64_t max_iter) {
  const std::int64_t m = static_cast<std::int64_t>(cand.size());
  if (m == b) return cand;  // prefilter 1 (or N == b): the top b by weight
  std::vector<std::int64_t> picks;
  picks.reserve(static_cast<std::size_t>(b));
  // The candidates' weights times the power of two that brings the largest to [1/2, 1) (exact, so the
  // same picks): the products weight · squared distance and the weighted sums cannot overflow however
  // large the scores (1e308 overflowed them).
  std::vector<double> wc(static_cast<std::size_t>(m));
  double w_max = 0.0;
  for (std::int64_t j = 0; j < m; ++j) w_max = std::max(w_max, w[cand[j]]);
  const int w_shift = normalising_shift(w_max);
  for (std::int64_t j = 0; j < m; ++j) wc[j] = std::ldexp(w[cand[j]], w_shift);
  const std::int64_t grain = grain_rows(d);

  // Seeding: weighted farthest-first traversal.
  std::vector<double> centres(static_cast<std::size_t>(b * d));
  std::vector<double> dist2(static_cast<std::size_t>(m), std::numeric_limits<double>::infinity());
  std::vector<std::uint8_t> seeded(static_cast<std::size_t>(m), 0);
  std::int64_t next = 0;  // rank 0: the best score
  for (std::int64_t t = 0; t < b; ++t) {
    poll_interrupt();
    seeded[next] = 1;
    std::copy(&X[next * d], &X[next * d] + d, &centres[t * d]);
    if (t + 1 == b) break;
    const double* c = &centres[t * d];
    std::vector<ArgMax> best(static_cast<std::size_t>(worker_slots()));
    parallel_for(m, grain, static_cast<int>(best.size()), [&](std::int64_t begin, std::int64_t end, int wk) {
      for (std::int64_t j = begin; j < end; ++j) {
        dist2[j] = std::min(dist2[j], row_sq(&X[j * d], d, c));
        if (!seeded[j]) best[wk].offer(wc[j] * dist2[j], cand[j]);  // ties: the lower item index
      }
    });
    const ArgMax pick = combine(best);
    if (pick.v > 0.0) {
      next = std::find(cand.begin(), cand.end(), pick.i) - cand.begin();
    } else {  // every remaining candidate sits on a centre or weighs 0: the best-ranked one not seeded
      next = std::find(seeded.begin(), seeded.end(), std::uint8_t{0}) - seeded.begin();
    }
  }

  // Lloyd iterations.
  std::vector<std::int64_t> assign(static_cast<std::size_t>(m));
  const auto reassign = [&]() {
    std::vector<std::uint8_t> changed(static_cast<std::size_t>(worker_slots()), 0);
    parallel_for(m, std::max<std::int64_t>(1, grain / std::max<std::int64_t>(b, 1)), static_cast<int>(changed.size()),
                 [&](std::int64_t begin, std::int64_t end, int wk) {
                   for (std::int64_t j = begin; j < end; ++j) {
                     const std::int64_t c = nearest_centre(&X[j * d], centres, b, d).first;
                     changed[wk] |= c != assign[j];
                     assign[j] = c;
                   }
                 });
    return std::any_of(changed.begin(), changed.end(), [](std::uint8_t v) { return v != 0; });
  };
  std::fill(assign.begin(), assign.end(), -1);
  reassign();
  std::vector<double> wsum(static_cast<std::size_t>(b)), count(static_cast<std::size_t>(b));
  std::vector<double> acc(static_cast<std::size_t>(b * d)), plain(static_cast<std::size_t>(b * d));
  for (std::int64_t it = 0; it < max_iter; ++it) {
    poll_interrupt();
    std::fill(wsum.begin(), wsum.end(), 0.0);
    std::fill(count.begin(), count.end(), 0.0);
    std::fill(acc.begin(), acc.end(), 0.0);
    std::fill(plain.begin(), plain.end(), 0.0);
    for (std::int64_t j = 0; j < m; ++j) {  // in rank order: the sums do not depend on threads
      const std::int64_t c = assign[j];
      wsum[c] += wc[j];
      count[c] += 1.0;
      for (std::int64_t k = 0; k < d; ++k) {
        acc[c * d + k] += wc[j] * X[j * d + k];
        plain[c * d + k] += X[j * d + k];
      }
    }
    for (std::int64_t c = 0; c < b; ++c) {
      if (count[c] == 0.0) continue;  // an empty cluster keeps its centre
      for (std::int64_t k = 0; k < d; ++k)
        centres[c * d + k] = wsum[c] > 0.0 ? acc[c * d + k] / wsum[c] : plain[c * d + k] / count[c];
    }
    if (!reassign()) break;
  }

  // One pick per cluster: the member nearest its centre; clusters by decreasing total score.
  std::vector<std::int64_t> rep(static_cast<std::size_t>(b), -1);
  std::vector<double> rep_d(static_cast<std::size_t>(b), std::numeric_limits<double>::infinity());
  std::fill(wsum.begin(), wsum.end(), 0.0);
  for (std::int64_t j = 0; j < m; ++j) {
    const std::int64_t c = assign[j];
    wsum[c] += wc[j];
    const double v = row_sq(&X[j * d], d, &centres[c * d]);
    if (rep[c] < 0 || v < rep_d[c] || (v == rep_d[c] && cand[j] < cand[rep[c]])) {
      rep_d[c] = v;
      rep[c] = j;
    }
  }
  std::vector<std::int64_t> order;
  for (std::int64_t c = 0; c < b; ++c)
    if (rep[c] >= 0) order.push_back(c);
  std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t c) { return wsum[a] > wsum[c]; });
  std::vector<std::uint8_t> taken(static_cast<std::size_t>(m), 0);
  for (std::int64_t c : order) {
    taken[rep[c]] = 1;
    picks.push_back(cand[rep[c]]);
  }
  for (std::int64_t j = 0; j < m && static_cast<std::int64_t>(picks.size()) < b; ++j)
    if (!taken[j]) picks.push_back(cand[j]);
  return picks;
}

DiversityFailure coreset_cpu(const CoresetJob& job) {
  return job.x.dtype == DType::Float32 ? coreset_run<float>(job) : coreset_run<double>(job);
}

DiversityFailure weighted_kmeans_cpu(const WeightedKmeansJob& job) {
  return job.x.dtype == DType::Float32 ? weighted_kmeans_run<float>(job) : weighted_kmeans_run<double>(job);
}

DiversityFailure badge_cpu(const BadgeJob& job) {
  return job.x.dtype == DType::Float32 ? badge_h<float>(job) : badge_h<double>(job);
}

DiversityFailure first_bad_euclidean_row(const Matrix& x, int& shift) {
  return x.dtype == DType::Float32 ? first_bad_euclidean_row_of<float>(x, shift)
                                   : first_bad_euclidean_row_of<double>(x, shift);
}

}  // namespace detail
}  // namespace labelwise
