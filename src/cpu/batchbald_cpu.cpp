// CPU backend of greedy BatchBALD (docs/acquisition.md, "BatchBALD").
//
// The table of joint configurations of the chosen items (rows y with weights A[y, k], Ω_y, λ_y) is
// detail::JointTable, built on the host by detail::JointTableBuilder (src/batchbald_table.hpp), the same
// for the CUDA backend.
// For a candidate n with Q[y, c] = Σ_k A[y, k] p[n, k, c], the reference's joint entropy (exact: the true one;
// sampled: its importance-weighted estimate) is
//   H(n) = Σ_k s[n, k] L_k + T(n),   s[n, k] = Σ_c p[n, k, c],  L_k = −Σ_y A[y, k] λ_y,
//   T(n) = −Σ_y Σ_c Q[y, c] ln(Q[y, c] / Ω_y),
// and its score is H(n) − Σ_{i in batch} CE_i − CE_n. T(n) is a (rows × K) · (K × C) product and C logarithms
// per row: the whole cost.
//
// Pruning without changing the result: merging rows into groups (the prefixes (y_1..y_t), t < m) can only
// increase T (log-sum inequality: Σ_j Q_j ln(Q_j/Ω_j) >= (Σ_j Q_j) ln(Σ_j Q_j / Σ_j Ω_j) for any
// non-negative numbers), so the same formula on a coarser table is an upper bound of the score. A cascade
// of coarser tables (1 row, C rows, ...) prunes most candidates cheaply; only candidates whose bound
// reaches the best exact score found so far (minus a rounding margin) are refined. Every candidate's exact
// value is computed by one thread in a fixed order, and the cascade does not depend on the thread count,
// so the picks are the same on every thread count; they equal the picks of evaluating every candidate
// exactly (the margin, 1e-9 relative, is far above the rounding of these sums).
#include <algorithm>
#include <cstdlib>
#include <cmath>
#include <limits>
#include <string>
#include <unordered_map>
#include <vector>

#include "../batchbald_backend.hpp"
#include "../batchbald_table.hpp"
#include "../cpu_variant.hpp"
#include "labelwise/core/parallel.hpp"
#include "labelwise/detail/parallel_for.hpp"
#include "labelwise/detail/special_functions.hpp"

namespace labelwise {
namespace detail {
namespace {

struct Level {
  std::int64_t rows = 0;
  std::vector<double> a;      // rows × K
  std::vector<double> omega;  // rows
  std::vector<double> log_omega;
  // The same rows in blocks of W = 4 (AVX2) or 8 (AVX-512) for the vector kernels:
  // at[(blk * K + k) * W + lane], lo4[blk * W + lane] (rows padded with zeros to a multiple of W).
  std::vector<double> at;
  std::vector<double> lo4;
};

/// Rows per vector block of the kernel this process uses: 8 (AVX-512), 4 (AVX2 + FMA) or 0 (portable).
int vector_rows();


/// Ω, ln Ω and (for the vector kernels) the W-row layout of a level whose row weights are a[rows × K].
/// The portable loop reads lv.a; the vector kernels read only the layout, so lv.a may stay empty there.
void finish_level(Level& lv, const double* a, int K) {
  lv.omega.assign(lv.rows, 0.0);
  lv.log_omega.assign(lv.rows, 0.0);
  for (std::int64_t r = 0; r < lv.rows; ++r) {
    double s = 0.0;
    for (int k = 0; k < K; ++k) s += a[r * K + k];
    lv.omega[r] = s;
    lv.log_omega[r] = s > 0.0 ? std::log(s) : 0.0;
  }
  const int W = vector_rows();
  if (W == 0) return;
  const std::int64_t nb = (lv.rows + W - 1) / W;
  lv.at.assign(nb * K * W, 0.0);
  lv.lo4.assign(nb * W, 0.0);
  for (std::int64_t r = 0; r < lv.rows; ++r) {
    const std::int64_t blk = r / W, lane = r % W;
    for (int k = 0; k < K; ++k) lv.at[(blk * K + k) * W + lane] = a[r * K + k];
    lv.lo4[r] = lv.log_omega[r];
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
// Vector kernels (chosen at run time): W rows per vector (AVX2 + FMA: W = 4; AVX-512: W = 8), the
// classes in register-held chunks of up to MaxCB, the candidate's probability broadcast into each FMA,
// and the library's branch-free logarithm (detail::fast_log) on each lane. One template serves both:
// it is always inlined into the two entry points below, which carry the instruction-set attributes.
#define LW_BB_VECTOR 1
typedef double v4d __attribute__((vector_size(32)));
typedef double v8d __attribute__((vector_size(64)));
#define LW_BB_INLINE __attribute__((always_inline)) inline

/// An unaligned vector load (the table rows are 8-byte aligned; an alignment attribute on a typedef would
/// be dropped as a template argument).
template <typename V>
LW_BB_INLINE V load(const double* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}

/// −Σ_c Q ln(Q / Ω) of one block of W rows for classes [c0, c0 + CB), added to tv, in class order. With
/// W = 8 (32 registers) the CB logarithms are unrolled so that their chains interleave; with W = 4 (16
/// registers) that spills and runs 2.3x slower, so there they are taken one class at a time.
template <typename V, int W, int CB>
LW_BB_INLINE void chunk(const double* at, const double* pn, int K, int C, int c0, const V& lo, V& tv) {
  V acc[CB];
  for (int cc = 0; cc < CB; ++cc) acc[cc] = V{};
  for (int k = 0; k < K; ++k) {
    const V a = load<V>(at + W * k);
    const double* pk = pn + k * C + c0;
    for (int cc = 0; cc < CB; ++cc) acc[cc] += a * pk[cc];
  }
  const V tiny = V{} + 1e-300;
  auto term = [&](const V& q) {
    const V qc = q > tiny ? q : tiny;  // q = 0 contributes 0 · finite = 0
    V lg;
    for (int l = 0; l < W; ++l) lg[l] = fast_log(qc[l]);
    return q * (lg - lo);
  };
  if constexpr (W == 8) {
    V terms[CB];
#pragma GCC unroll 16
    for (int cc = 0; cc < CB; ++cc) terms[cc] = term(acc[cc]);
#pragma GCC unroll 16
    for (int cc = 0; cc < CB; ++cc) tv -= terms[cc];
  } else {
    for (int cc = 0; cc < CB; ++cc) tv -= term(acc[cc]);
  }
}

/// All C classes of one block: chunks of MaxCB, then the rest in one chunk.
template <typename V, int W, int MaxCB>
LW_BB_INLINE void block(const double* at, const double* pn, int K, int C, const V& lo, V& t) {
  int c0 = 0;
  for (; C - c0 >= MaxCB; c0 += MaxCB) chunk<V, W, MaxCB>(at, pn, K, C, c0, lo, t);
  switch (C - c0) {
#define LW_BB_REST(n) \
  case n:             \
    if constexpr (n < MaxCB) chunk<V, W, n>(at, pn, K, C, c0, lo, t); \
    break;
    LW_BB_REST(1) LW_BB_REST(2) LW_BB_REST(3) LW_BB_REST(4) LW_BB_REST(5) LW_BB_REST(6) LW_BB_REST(7)
    LW_BB_REST(8) LW_BB_REST(9) LW_BB_REST(10) LW_BB_REST(11) LW_BB_REST(12) LW_BB_REST(13) LW_BB_REST(14)
    LW_BB_REST(15)
#undef LW_BB_REST
    default: break;
  }
}

/// T(n) of up to kGroup candidates at once, row chunk by row chunk, so that each 256 KiB chunk of the
/// table is read from cache once per group rather than once per candidate. Every candidate's sum runs
/// over the rows in the same order whatever group it is in, so its value does not depend on the grouping
/// (thread count). The lanes are summed pairwise at the end.
constexpr int kGroup = 16;
template <typename V, int W, int MaxCB>
LW_BB_INLINE void level_t_group(const Level& lv, const double* const* pns, int cnt, int K, int C, double* out) {
  V tv[kGroup];
  for (int i = 0; i < cnt; ++i) tv[i] = V{};
  const std::int64_t nb = (lv.rows + W - 1) / W;
  const std::int64_t chunk_blocks = std::max<std::int64_t>(1, 32768 / (K * W));
  for (std::int64_t b0 = 0; b0 < nb; b0 += chunk_blocks) {
    const std::int64_t b1 = std::min(nb, b0 + chunk_blocks);
    for (int i = 0; i < cnt; ++i) {
      V t = tv[i];
      for (std::int64_t blk = b0; blk < b1; ++blk) {
        const V lo = load<V>(lv.lo4.data() + blk * W);
        block<V, W, MaxCB>(lv.at.data() + blk * K * W, pns[i], K, C, lo, t);
      }
      tv[i] = t;
    }
  }
  for (int i = 0; i < cnt; ++i) {
    double lanes[W];
    for (int l = 0; l < W; ++l) lanes[l] = tv[i][l];
    for (int width = W / 2; width >= 1; width /= 2)  // pairwise: (l0 + l1) + (l2 + l3), ...
      for (int l = 0; l < width; ++l) lanes[l] = lanes[2 * l] + lanes[2 * l + 1];
    out[i] = lanes[0];
  }
}

__attribute__((target("avx2,fma"))) void level_t_avx2_group(const Level& lv, const double* const* pns, int cnt,
                                                              int K, int C, double* out) {
  level_t_group<v4d, 4, 8>(lv, pns, cnt, K, C, out);
}

// AVX-512: 32 registers hold up to 16 class accumulators; on Zen 4 and Intel cores it issues about a
// third of the AVX2 kernel's instructions per multiply-add.
__attribute__((target("avx512f,avx512dq,fma"))) void level_t_avx512_group(const Level& lv, const double* const* pns,
                                                                           int cnt, int K, int C, double* out) {
  level_t_group<v8d, 8, 16>(lv, pns, cnt, K, C, out);
}
#endif

/// The vector kernel, chosen once per process by the library's CPU variant (cpu_isa(): AVX-512, AVX2 +
/// FMA or generic, LABELWISE_CPU_ISA forcing one); LABELWISE_BATCHBALD_SCALAR (any value) forces the
/// portable loop. The kernels can differ in the last bits of a candidate's value (another summation
/// order); each is the same on every thread count.
int vector_rows() {
  static const int w = [] {
#ifdef LW_BB_VECTOR
    if (std::getenv("LABELWISE_BATCHBALD_SCALAR") != nullptr) return 0;
    const CpuIsa isa = cpu_isa();
    return isa == CpuIsa::Avx512 ? 8 : isa == CpuIsa::Avx2 ? 4 : 0;
#else
    return 0;
#endif
  }();
  return w;
}

/// T(n) on a level: −Σ_rows Σ_c Q ln(Q/Ω) (portable path). q: scratch of C doubles.
double level_t(const Level& lv, const double* pn, int K, int C, double* q) {
  double total = 0.0;
  const double* a = lv.a.data();
  for (std::int64_t r = 0; r < lv.rows; ++r, a += K) {
    if (!(lv.omega[r] > 0.0)) continue;
    for (int c = 0; c < C; ++c) q[c] = 0.0;
    for (int k = 0; k < K; ++k) {
      const double ak = a[k];
      const double* pk = pn + k * C;
#pragma omp simd
      for (int c = 0; c < C; ++c) q[c] += ak * pk[c];
    }
    const double lo = lv.log_omega[r];
    double t = 0.0;
    for (int c = 0; c < C; ++c)
      if (q[c] > 0.0) t -= q[c] * (std::log(q[c]) - lo);
    total += t;
  }
  return total;
}

/// A coarser level: its row g is the sum of the table rows r with group[r] == g (in increasing r).
Level merged_level(const JointTable& tb, int K, const std::vector<std::int64_t>& group, std::int64_t groups) {
  Level lv;
  lv.rows = groups;
  lv.a.assign(static_cast<std::size_t>(groups) * K, 0.0);
  for (std::int64_t r = 0; r < tb.rows; ++r)
    for (int k = 0; k < K; ++k) lv.a[group[r] * K + k] += tb.a[r * K + k];
  finish_level(lv, lv.a.data(), K);
  if (vector_rows() > 0) std::vector<double>().swap(lv.a);  // only the layout is read
  return lv;
}

/// The levels of the pruning cascade in order of their row counts, the table itself last. Every coarser
/// level merges rows of the table, which can only raise T — by the log-sum inequality, for any
/// non-negative weights, so for exact and sampled tables alike: an upper bound of each candidate's score.
/// Three groupings, each tight in another situation:
///   prefix    — rows sharing their first t labels (the table is sorted): tight while the joint MI grows;
///   truncated — the heaviest rows (all but 1e-2 / 1e-3 / 1e-4 of the mass) kept, the rest merged into
///               one: tight where the configurations' mass is concentrated (saturated exact steps);
///   posterior — rows grouped by the sample that weighs most in A[y, ·] (then by the two heaviest): their
///               rows mix the candidate's K predictions with nearly the same weights, so the merge loses
///               little; this is what keeps saturated batches cheap, sampled steps included.
/// A level is kept only if it has at most half the table's rows and is not much finer than the previous
/// one of its kind. Only the table itself when `full` (LABELWISE_BATCHBALD_FULL set, to any value: every
/// candidate evaluated exactly, for tests and timings) or when few candidates are left (building the
/// levels would cost more than it saves).
std::vector<Level> build_cascade(const JointTable& tb, int K, bool full) {
  const std::int64_t R = tb.rows;
  const int m = tb.m;
  Level fin;  // the table itself (last in the cascade); its Ω also orders the truncated levels' rows
  fin.rows = R;
  if (vector_rows() == 0) fin.a = tb.a;  // the portable loop reads the weights; the kernels the layout
  finish_level(fin, tb.a.data(), K);
  std::vector<Level> cascade;
  std::vector<std::int64_t> group(static_cast<std::size_t>(R));
  if (!full) {
    // prefix levels: the first differing label position between row r and row r - 1
    std::vector<int> diff(R, 0);
    for (std::int64_t r = 1; r < R; ++r) {
      int d = 0;
      const std::int32_t* x = tb.labels.data() + r * m;
      const std::int32_t* y = x - m;
      while (d < m && x[d] == y[d]) ++d;
      diff[r] = d;
    }
    std::int64_t last_rows = 0;
    for (int t = 0; t < m; ++t) {
      std::int64_t g = 0;
      for (std::int64_t r = 0; r < R; ++r) group[r] = (r > 0 && diff[r] < t) ? ++g : g;
      ++g;
      if (g * 2 > R) break;                      // not much cheaper than the finest table
      if (t > 0 && g < last_rows * 3) continue;  // not much finer than the previous level
      cascade.push_back(merged_level(tb, K, group, g));
      last_rows = g;
    }
    // truncated levels: rows by Ω descending, ties by the lower row
    const std::vector<double>& om = fin.omega;
    double total = 0.0;
    for (std::int64_t r = 0; r < R; ++r) total += om[r];
    std::vector<std::int64_t> order(static_cast<std::size_t>(R));
    for (std::int64_t r = 0; r < R; ++r) order[r] = r;
    std::stable_sort(order.begin(), order.end(), [&](std::int64_t x, std::int64_t y) { return om[x] > om[y]; });
    std::int64_t kept_prev = 0, next = 0;
    double cum = 0.0;
    for (double eps : {1e-2, 1e-3, 1e-4}) {
      while (next < R && cum < (1.0 - eps) * total) cum += om[order[next++]];
      const std::int64_t keep = next;
      if (keep + 1 > R / 2) break;
      if (kept_prev > 0 && keep < kept_prev * 3 / 2) continue;
      std::vector<char> heavy(static_cast<std::size_t>(R), 0);
      for (std::int64_t j = 0; j < keep; ++j) heavy[order[j]] = 1;
      std::int64_t g = 0;
      for (std::int64_t r = 0; r < R; ++r) group[r] = heavy[r] ? g++ : -1;  // heavy rows in table order
      for (std::int64_t r = 0; r < R; ++r)
        if (group[r] < 0) group[r] = keep;  // then the merged rest
      cascade.push_back(merged_level(tb, K, group, keep + 1));
      kept_prev = keep;
    }
    // posterior levels
    std::vector<std::int64_t> first(static_cast<std::size_t>(R)), second(static_cast<std::size_t>(R));
    for (std::int64_t r = 0; r < R; ++r) {
      const double* a = tb.a.data() + r * K;
      int b1 = 0, b2 = -1;
      for (int k = 1; k < K; ++k)
        if (a[k] > a[b1]) b1 = k;
      for (int k = 0; k < K; ++k)
        if (k != b1 && (b2 < 0 || a[k] > a[b2])) b2 = k;
      first[r] = b1;
      second[r] = b2 < 0 ? 0 : b2;
    }
    std::vector<std::int64_t> id_of(static_cast<std::size_t>(K), -1);  // depth 1: by the heaviest sample
    std::int64_t g1 = 0;
    for (std::int64_t r = 0; r < R; ++r) group[r] = id_of[first[r]] < 0 ? (id_of[first[r]] = g1++) : id_of[first[r]];
    if (g1 * 2 <= R) {
      cascade.push_back(merged_level(tb, K, group, g1));
      std::unordered_map<std::int64_t, std::int64_t> pair_id;  // depth 2: by the two heaviest
      bool small = true;
      for (std::int64_t r = 0; r < R && small; ++r) {
        const std::int64_t key = first[r] * K + second[r];
        group[r] = pair_id.emplace(key, static_cast<std::int64_t>(pair_id.size())).first->second;
        small = static_cast<std::int64_t>(pair_id.size()) * 2 <= R;
      }
      if (small) cascade.push_back(merged_level(tb, K, group, static_cast<std::int64_t>(pair_id.size())));
    }
    std::stable_sort(cascade.begin(), cascade.end(), [](const Level& x, const Level& y) { return x.rows < y.rows; });
  }
  cascade.push_back(std::move(fin));
  return cascade;
}

}  // namespace

constexpr int kGroupMax = 16;
#ifdef LW_BB_VECTOR
static_assert(kGroupMax == kGroup, "candidate groups of the vector kernel");
#endif

void batchbald_cpu(const BatchBaldJob& job) {
  const std::int64_t N = job.n;
  const int K = job.k, C = job.c;
  const std::int64_t KC = static_cast<std::int64_t>(K) * C;
  // s[n, k] = Σ_c p[n, k, c] (1 up to the input's normalisation tolerance; kept as the reference does).
  std::vector<double> s(N * K);
  parallel_for(N, 256, [&](std::int64_t begin, std::int64_t end, int) {
    for (std::int64_t n = begin; n < end; ++n)
      for (int k = 0; k < K; ++k) {
        double v = 0.0;
        for (int c = 0; c < C; ++c) v += job.p[n * KC + k * C + c];
        s[n * K + k] = v;
      }
  });

  JointTableBuilder tables(K, C, job.req.num_samples, job.req.seed);

  std::vector<char> is_chosen(N, 0);
  std::vector<double> base(N), bound(N), exact_val(N);
  std::vector<char> has_exact(N);
  double ce_batch = 0.0;
  constexpr int kProbe = 4;  // candidates evaluated exactly per cascade level to raise the threshold

  // LABELWISE_BATCHBALD_FULL (any value): no cascade, every candidate exact. LABELWISE_BATCHBALD_CHECK_BOUNDS
  // (any value): every level is also evaluated for every candidate and must not fall below its exact value
  // (a test hook: the search itself would rarely show a wrong bound, as its probes often settle a step).
  const bool full = std::getenv("LABELWISE_BATCHBALD_FULL") != nullptr;
  const bool check_bounds = std::getenv("LABELWISE_BATCHBALD_CHECK_BOUNDS") != nullptr;
  constexpr std::int64_t kFewCandidates = 64;  // below this, building the levels costs more than it saves

  for (std::int64_t step = 0; step < job.req.b; ++step) {
    poll_interrupt();
    const JointTable& tb = tables.table();
    const std::vector<Level> cascade = build_cascade(tb, K, full || N - step <= kFewCandidates);
    const int levels = static_cast<int>(cascade.size());
    // Pruning margin: the bounds and the exact values are sums over up to R rows, each lane in sequence,
    // so their rounding grows with R (≈ R · 2^-53 relative at worst); 1e-9 covers realistic tables.
    const double margin = std::max(1e-9, 4.0 * static_cast<double>(tb.rows) * std::ldexp(1.0, -53));
    const Level& fin = cascade.back();
    std::vector<std::int64_t> active;
    active.reserve(N - step);
    for (std::int64_t n = 0; n < N; ++n)
      if (!is_chosen[n]) active.push_back(n);
    std::fill(has_exact.begin(), has_exact.end(), 0);

    auto eval = [&](const std::vector<std::int64_t>& list, const Level& lv, bool is_exact, bool with_base) {
      parallel_for(static_cast<std::int64_t>(list.size()), lv.rows >= 64 ? 1 : 64,
                   [&](std::int64_t begin, std::int64_t end, int) {
                     std::vector<double> q(C);
                     double tvals[kGroupMax];
                     const double* pns[kGroupMax];
                     for (std::int64_t i = begin; i < end; ++i) {
                       const std::int64_t n = list[i];
                       if (with_base) {
                         double d = 0.0;
                         for (int k = 0; k < K; ++k) d += s[n * K + k] * tb.L[k];
                         base[n] = d - ce_batch - job.ce[n];
                       }
                       const std::int64_t g = (i - begin) % kGroupMax;
                       if (g == 0) {  // the T values of the next group of candidates
                         const int cnt = static_cast<int>(std::min<std::int64_t>(kGroupMax, end - i));
                         for (int j = 0; j < cnt; ++j) pns[j] = job.p + list[i + j] * KC;
#ifdef LW_BB_VECTOR
                         if (vector_rows() == 8)
                           level_t_avx512_group(lv, pns, cnt, K, C, tvals);
                         else if (vector_rows() == 4)
                           level_t_avx2_group(lv, pns, cnt, K, C, tvals);
                         else
#endif
                           for (int j = 0; j < cnt; ++j) tvals[j] = level_t(lv, pns[j], K, C, q.data());
                       }
                       const double v = base[n] + tvals[g];
                       if (is_exact) {
                         exact_val[n] = v;
                         has_exact[n] = 1;
                       }
                       // every level bounds from above: keep the tightest bound seen this step
                       bound[n] = with_base ? v : std::min(bound[n], v);
                     }
                   });
    };
    auto better = [&](std::int64_t x, std::int64_t y) {
      return bound[x] > bound[y] || (bound[x] == bound[y] && x < y);
    };

    if (check_bounds && levels > 1) {
      std::vector<std::vector<double>> at_level;
      for (int li = 0; li + 1 < levels; ++li) {
        eval(active, cascade[li], false, true);
        at_level.emplace_back(bound);
      }
      eval(active, cascade.back(), true, false);
      for (int li = 0; li + 1 < levels; ++li)
        for (std::int64_t n : active)
          check(at_level[li][n] + margin * (1.0 + std::fabs(exact_val[n])) >= exact_val[n], ErrorKind::Runtime,
                "batchbald: cascade level ", li, " (", cascade[li].rows, " rows) bounds candidate ", n, " at ",
                at_level[li][n], ", below its exact value ", exact_val[n], " (step ", step, ")");
      std::fill(has_exact.begin(), has_exact.end(), 0);
    }
    eval(active, cascade[0], levels == 1, true);
    double beta = -std::numeric_limits<double>::infinity();
    for (int li = 1; li < levels; ++li) {
      // Raise the threshold: evaluate the best few by their current bound exactly.
      const std::size_t np = std::min<std::size_t>(kProbe, active.size());
      std::partial_sort(active.begin(), active.begin() + np, active.end(), better);
      std::vector<std::int64_t> probe;
      for (std::size_t i = 0; i < np; ++i)
        if (!has_exact[active[i]]) probe.push_back(active[i]);
      eval(probe, fin, true, false);
      for (std::int64_t n : probe) beta = std::max(beta, exact_val[n]);
      // Prune, then refine the survivors to this level.
      std::vector<std::int64_t> keep, refine;
      for (std::int64_t n : active) {
        const double v = bound[n];
        if (v + margin * (1.0 + std::fabs(v)) >= beta) {
          keep.push_back(n);
          if (!has_exact[n]) refine.push_back(n);
        }
      }
      active.swap(keep);
      eval(refine, cascade[li], li == levels - 1, false);
    }
    std::int64_t win = -1;
    for (std::int64_t n : active)
      if (win < 0 || exact_val[n] > exact_val[win] || (exact_val[n] == exact_val[win] && n < win)) win = n;

    job.req.out_index[step * job.req.out_index_stride] = win;
    if (job.req.out_score) job.req.out_score[step * job.req.out_score_stride] = exact_val[win];
    is_chosen[win] = 1;
    ce_batch += job.ce[win];
    if (step + 1 == job.req.b) break;
    tables.add(job.p + win * KC);
  }
}

}  // namespace detail
}  // namespace labelwise
