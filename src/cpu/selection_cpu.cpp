// CPU backend of top-k / stochastic selection and the shard merge.
//
// One pass over the pool on a static thread partition: every worker turns its items into
// (ordered key u, global index) candidates with the shared body (detail/selection_impl.hpp) and keeps
// its best b in a buffer of 2b: when the buffer is full, std::nth_element keeps the best b and their
// worst becomes a threshold that rejects most later items with one comparison (amortised O(1) per
// item). The workers' survivors (at most b each) are merged by nth_element and the b winners sorted.
// The order (u descending, index ascending) is strict, so the result is unique: it cannot depend on
// the thread count. Stochastic keys are made in blocks, and the worker's threshold also prunes them:
// items whose Gumbel noise provably cannot beat it skip their logarithms (PruneTable, per bucket of
// log-weights; detail/selection_impl.hpp). SoftRank without given ranks first ranks the pool (a
// stable radix sort of the scores, O(N)), then runs as with given ranks.
// Built with -ffp-contract=off (CMakeLists.txt) so that the keys are the same bits as on the GPU.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "../cpu_variant.hpp"
#include "../philox_lanes.hpp"
#include "../selection_backend.hpp"
#include "scratch_array.hpp"
#include "labelwise/core/parallel.hpp"
#include "labelwise/detail/parallel_for.hpp"

namespace labelwise {
namespace detail {

void philox_bits64_block(std::uint64_t seed, std::uint32_t stream, std::uint64_t index0, std::int64_t n,
                         std::uint64_t* out) {
  using Fn = void (*)(std::uint64_t, std::uint32_t, std::uint64_t, std::int64_t, std::uint64_t*);
  static const Fn fn = [] {
#if defined(__x86_64__)
    const CpuIsa isa = cpu_isa();
    if (isa == CpuIsa::Avx512) return Fn(isa_philox_avx512::philox_bits64_lanes);
    if (isa == CpuIsa::Avx2) return Fn(isa_philox_avx2::philox_bits64_lanes);
#endif
    return Fn(isa_philox_base::philox_bits64_lanes);
  }();
  fn(seed, stream, index0, n, out);
}

namespace {

struct Cand {
  std::uint64_t u;
  std::int64_t id;
};

struct Better {
  bool operator()(const Cand& a, const Cand& b) const { return a.u > b.u || (a.u == b.u && a.id < b.id); }
};

/// The best b candidates seen so far (in no particular order until finish()).
class BestB {
 public:
  explicit BestB(std::int64_t b) : b_(static_cast<std::size_t>(b)), cap_(std::max<std::size_t>(2 * b_, 4096)) {}

  void push(std::uint64_t u, std::int64_t id) {
    if (full_ && !(u > thr_.u || (u == thr_.u && id < thr_.id))) return;
    buf_.push_back({u, id});
    if (buf_.size() >= cap_) shrink();
  }

  /// From now on admits only candidates whose key is at least u: a floor under the final threshold
  /// when at least b items of the whole pool reach it (the caller checks; see top_k_floor). The
  /// first shrink replaces it by a real threshold.
  void set_floor(std::uint64_t u) {
    thr_ = {u, std::numeric_limits<std::int64_t>::max()};
    full_ = true;
  }

  /// True once a threshold exists: only candidates better than threshold() can still enter.
  bool full() const { return full_; }
  const Cand& threshold() const { return thr_; }

  /// At most b candidates, the best of everything pushed.
  std::vector<Cand>& finish() {
    if (buf_.size() > b_) shrink();
    return buf_;
  }

 private:
  void shrink() {
    if (b_ == 0) {
      buf_.clear();
      thr_ = {~0ull, -1};  // nothing passes
      full_ = true;
      return;
    }
    std::nth_element(buf_.begin(), buf_.begin() + (b_ - 1), buf_.end(), Better());
    buf_.resize(b_);
    thr_ = buf_[b_ - 1];  // the worst kept: anything not better can never enter the top b
    full_ = true;
  }

  std::size_t b_, cap_;
  std::vector<Cand> buf_;
  Cand thr_{0, 0};
  bool full_ = false;
};

constexpr std::int64_t kGrain = 1 << 15;
constexpr int kBlock = 256;  // keys are made in blocks (a vectorisable loop), then offered to BestB

struct Shared {
  std::vector<BestB> best;
  std::vector<SelectFailure> failures;
  Shared(int workers, std::int64_t b) : failures(workers) {
    best.reserve(workers);
    for (int w = 0; w < workers; ++w) best.emplace_back(b < 0 ? 0 : b);
  }
};

SelectFailure first_failure(const std::vector<SelectFailure>& fs) {
  SelectFailure worst;
  for (const auto& f : fs)
    if (f.status != 0 && (worst.status == 0 || f.item < worst.item)) worst = f;
  return worst;
}

/// Writes the sorted winners.
void write_outputs(const SelectJob& job, const std::vector<Cand>& win) {
  for (std::size_t j = 0; j < win.size(); ++j) {
    job.out_index[static_cast<std::int64_t>(j) * job.out_index_stride] = win[j].id;
    if (job.out_value) {
      const double v = ordered_value(win[j].u);
      const std::int64_t o = static_cast<std::int64_t>(j) * job.out_value_stride;
      if (job.out_value_dtype == DType::Float32)
        static_cast<float*>(job.out_value)[o] = static_cast<float>(v);
      else
        static_cast<double*>(job.out_value)[o] = v;
    }
  }
}

/// Sorts by Better on up to num_threads() threads: sorted chunks, then merged (the order is strict,
/// so the result does not depend on the thread count).
void parallel_sort(std::vector<Cand>& v) {
  const std::int64_t n = static_cast<std::int64_t>(v.size());
  const int slots = worker_slots();
  std::vector<std::pair<std::int64_t, std::int64_t>> chunks(slots, {0, 0});
  parallel_for(n, kGrain, slots, [&](std::int64_t begin, std::int64_t end, int w) {
    std::sort(v.begin() + begin, v.begin() + end, Better());
    chunks[w] = {begin, end};
  });
  for (const auto& c : chunks)
    if (c.first > 0 && c.second > c.first)
      std::inplace_merge(v.begin(), v.begin() + c.first, v.begin() + c.second, Better());
}


/// True when some x[j], j < m, is not below t (NaN included). Whole 16-byte vectors (GCC vector
/// extensions: the compiler left the plain loop scalar, a compare and an or per item; 32-byte ones
/// were slower in this SSE2 translation unit), the rest scalar.
typedef float Float4 __attribute__((vector_size(16)));
typedef double Double2 __attribute__((vector_size(16)));
template <typename T>
bool any_not_below(const T* x, int m, T t) {
  using Vec = typename std::conditional<std::is_same<T, float>::value, Float4, Double2>::type;
  constexpr int L = static_cast<int>(sizeof(Vec) / sizeof(T));
  using Mask = decltype(Vec{} < Vec{});
  const Vec tv = Vec{} + t;
  Mask acc = {};
  int j = 0;
  for (; j + L <= m; j += L) {
    Vec v;
    std::memcpy(&v, x + j, sizeof v);
    acc |= ~(v < tv);
  }
  bool any = false;
  for (int l = 0; l < L; ++l) any |= acc[l] != 0;
  for (; j < m; ++j) any |= !(x[j] < t);
  return any;
}

/// Scratch of n values, not initialised (a std::vector would write every page once more).
template <typename V>
using Buffer = ScratchArray<V>;  // uninitialised, huge-page advised when large (scratch_array.hpp)

/// Order-preserving 32-bit key of a float (-0 = +0), as ordered_key for doubles.
inline std::uint32_t ordered_key32(float v) {
  v = v == 0.0f ? 0.0f : v;
  std::uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  const std::uint32_t negative = 0u - (b >> 31);
  return b ^ (negative | 0x80000000u);
}

/// Stable least-significant-digit radix sort of `key` (ascending in bits [lo_bit, 64); equal there,
/// the input order stays) with an optional payload moved alongside, on the static partition `parts`
/// (part w = [parts[w], parts[w + 1])). Digits of 11 bits; a digit that is the same for every item
/// is skipped. `key` and `payload` hold the result; the tmp vectors are scratch of the same size.
template <typename P>
void radix_sort_stable(Buffer<std::uint64_t>& key, Buffer<std::uint64_t>& key_tmp, Buffer<P>* payload,
                       Buffer<P>* payload_tmp, int lo_bit, const std::vector<std::int64_t>& parts) {
  constexpr int kBits = 11, kBuckets = 1 << kBits;
  const int W = static_cast<int>(parts.size()) - 1;
  const std::int64_t n = parts[W];
  std::vector<std::int64_t> count(static_cast<std::size_t>(W) * kBuckets);
  for (int shift = lo_bit; shift < 64; shift += kBits) {
    const std::uint64_t mask = kBuckets - 1;
    parallel_for(W, 1, [&](std::int64_t w0, std::int64_t w1, int) {
      for (std::int64_t w = w0; w < w1; ++w) {
        std::int64_t* c = count.data() + w * kBuckets;
        std::fill(c, c + kBuckets, 0);
        const std::uint64_t* k = key.get();
        for (std::int64_t i = parts[w]; i < parts[w + 1]; ++i) ++c[(k[i] >> shift) & mask];
      }
    });
    // Offsets: bucket-major, part-minor (stability); a digit shared by every item moves nothing.
    bool trivial = false;
    std::int64_t at = 0;
    for (int d = 0; d < kBuckets; ++d) {
      std::int64_t total = 0;
      for (int w = 0; w < W; ++w) {
        const std::int64_t c = count[static_cast<std::size_t>(w) * kBuckets + d];
        count[static_cast<std::size_t>(w) * kBuckets + d] = at + total;
        total += c;
      }
      trivial |= total == n;
      at += total;
    }
    if (trivial) continue;
    parallel_for(W, 1, [&](std::int64_t w0, std::int64_t w1, int) {
      for (std::int64_t w = w0; w < w1; ++w) {
        std::int64_t* o = count.data() + w * kBuckets;
        const std::uint64_t* k = key.get();
        std::uint64_t* kt = key_tmp.get();
        if (payload) {
          const P* p = payload->get();
          P* pt = payload_tmp->get();
          for (std::int64_t i = parts[w]; i < parts[w + 1]; ++i) {
            const std::int64_t dst = o[(k[i] >> shift) & mask]++;
            kt[dst] = k[i];
            pt[dst] = p[i];
          }
        } else {
          for (std::int64_t i = parts[w]; i < parts[w + 1]; ++i) kt[o[(k[i] >> shift) & mask]++] = k[i];
        }
      }
    });
    key.swap(key_tmp);
    if (payload) payload->swap(*payload_tmp);
  }
}

/// Every item's 1-based rank by score, descending, ties (-0 = +0 included) to the lower index: a
/// stable radix sort of order-preserving keys that starts in index order (float32 scores of fewer
/// than 2^32 items: key and index share one 64-bit word; else the index, of type P, is moved
/// alongside), then rank[order[p]] = p + 1. O(N), where a comparison sort of 10^7 items took ~0.45 s
/// of softrank's 0.64 s. kSelectNaN for the first NaN.
template <typename T, typename P>
SelectFailure ranks_from_scores(const SelectJob& job, Buffer<std::int64_t>& rank) {
  const T* x = static_cast<const T*>(job.values);
  const std::int64_t n = job.n;
  const bool contiguous = job.grid.ndim == 1 && job.grid.stride[0] == 1;
  const int W = static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>(num_threads(), (n + kGrain - 1) / kGrain)));
  std::vector<std::int64_t> parts(static_cast<std::size_t>(W) + 1);
  for (int w = 0; w <= W; ++w) parts[w] = n * w / W;
  constexpr bool kPackable = std::is_same<T, float>::value;
  const bool packed = kPackable && n <= 0xFFFFFFFFll;
  const std::size_t un = static_cast<std::size_t>(n);
  Buffer<std::uint64_t> key = scratch_array<std::uint64_t>(un), key_tmp = scratch_array<std::uint64_t>(un);
  Buffer<P> id = packed ? Buffer<P>() : scratch_array<P>(un), id_tmp = packed ? Buffer<P>() : scratch_array<P>(un);
  std::vector<SelectFailure> failures(static_cast<std::size_t>(W));
  parallel_for(W, 1, [&](std::int64_t w0, std::int64_t w1, int) {
    for (std::int64_t w = w0; w < w1; ++w) {
      for (std::int64_t i = parts[w]; i < parts[w + 1]; ++i) {
        const T s = x[contiguous ? i : flat_offset(job.grid, i)];
        if (s != s) {
          failures[w] = {kSelectNaN, i};
          break;
        }
        // Complemented keys: ascending order = score descending.
        if (packed) {
          key[i] = (static_cast<std::uint64_t>(~ordered_key32(static_cast<float>(s))) << 32) | static_cast<std::uint64_t>(i);
        } else {
          key[i] = ~ordered_key(static_cast<double>(s));
          id[i] = static_cast<P>(i);
        }
      }
    }
  });
  const SelectFailure f = first_failure(failures);
  if (f.status != 0) return f;
  if (packed)
    radix_sort_stable<P>(key, key_tmp, nullptr, nullptr, 32, parts);
  else
    radix_sort_stable<P>(key, key_tmp, &id, &id_tmp, 0, parts);
  key_tmp.reset();
  id_tmp.reset();
  rank = scratch_array<std::int64_t>(un);
  parallel_for(n, kGrain, [&](std::int64_t begin, std::int64_t end, int) {
    if (packed)
      for (std::int64_t p = begin; p < end; ++p) rank[key[p] & 0xFFFFFFFFull] = p + 1;
    else
      for (std::int64_t p = begin; p < end; ++p) rank[id[p]] = p + 1;
  });
  return {};
}

/// top_k on a large pool: the value of a regularly spaced sample of S = 65536 scores that about
/// 1.25·b + 32·N/S of the pool's items should reach, when that is well below N (else false). The
/// workers start with it as their threshold instead of admitting everything until they hold 2b
/// candidates, whose threshold then rises slowly: at N = 10^7, b = 10^4 most of the time went to
/// pushes that a later threshold would have refused. If fewer than b items reach it (a sample that
/// misrepresents the pool), the pass is run again without it; the result is the same either way.
template <typename T, typename Load>
bool top_k_floor(std::int64_t n, std::int64_t b, const Load& load, T& floor) {
  constexpr std::int64_t S = 65536;
  if (n < 16 * S || b < 1) return false;
  const double expect = static_cast<double>(S) * static_cast<double>(b) / static_cast<double>(n);
  if (expect < 16.0) return false;  // too few sample items above the floor to place it
  const std::int64_t q = static_cast<std::int64_t>(std::ceil(1.25 * expect)) + 32;
  if (q >= S / 2) return false;  // most of the pool would pass anyway
  std::vector<T> sample(static_cast<std::size_t>(S));
  for (std::int64_t k = 0; k < S; ++k) {
    sample[k] = static_cast<T>(load(k * (n / S)));
    if (sample[k] != sample[k]) return false;  // NaN: the pass reports it
  }
  std::nth_element(sample.begin(), sample.begin() + q, sample.end(), std::greater<T>());
  floor = sample[q];
  return true;
}

template <typename T>
SelectFailure run(const SelectJob& job) {
  const T* x = static_cast<const T*>(job.values);
  const int workers = worker_slots(job.n, kGrain);  // per-worker state only for workers that get a chunk
  Shared sh(workers, job.b);
  const std::int64_t n = job.n;
  const bool select = job.b > 0;  // b = 0: validate only; b = -1: keys only (stochastic_keys)
  const bool contiguous = job.grid.ndim == 1 && job.grid.stride[0] == 1;
  auto load = [&](std::int64_t i) { return static_cast<double>(x[contiguous ? i : flat_offset(job.grid, i)]); };
  const std::uint64_t seed = job.seed;
  const std::int64_t offset = job.index_offset;

  if (job.source == SelectSource::Stochastic && job.mode == kModeSoftRank && job.ranks == nullptr) {
    // Ranks from the scores, then the same pass as for given ranks (the keys are the same bits).
    Buffer<std::int64_t> ranks;
    // The index payload of the float64 sort: 4 bytes per item while indices fit.
    const SelectFailure f = n <= 0xFFFFFFFFll ? ranks_from_scores<T, std::uint32_t>(job, ranks)
                                              : ranks_from_scores<T, std::int64_t>(job, ranks);
    if (f.status != 0) return f;
    SelectJob ranked = job;
    ranked.ranks = ranks.get();
    ranked.ranks_grid = FlatGrid{};
    ranked.ranks_grid.shape[0] = n;
    ranked.ranks_grid.stride[0] = 1;
    return run<T>(ranked);
  }
  if (job.source == SelectSource::Stochastic) {
    if (job.out_keys) {
      // Every item is validated before any key is written (outputs only for valid input).
      parallel_for(n, kGrain, workers, [&](std::int64_t begin, std::int64_t end, int w) {
        for (std::int64_t i = begin; i < end; ++i) {
          const double r = job.ranks ? static_cast<double>(job.ranks[flat_offset(job.ranks_grid, i)]) : 0.0;
          double lw = 0.0;
          const int st = stochastic_log_weight(job.mode, job.beta, load(i), r, &lw);
          if (st != kSelectOk) {
            sh.failures[w] = {st, i};
            return;
          }
        }
      });
      const SelectFailure f = first_failure(sh.failures);
      if (f.status != 0) return f;
    }
    // One instance per mode, so that the item loops do not branch on it.
    auto pass = [&](auto mode_constant) {
      constexpr int kMode = decltype(mode_constant)::value;
      const bool ranks_flat = job.ranks && job.ranks_grid.ndim == 1 && job.ranks_grid.stride[0] == 1;
      const double beta = job.beta;
      parallel_for(n, kGrain, workers, [&](std::int64_t begin, std::int64_t end, int w) {
        BestB& best = sh.best[w];
        double sv[kBlock], rv[kBlock];
        int survivors[kBlock];
        std::uint64_t block_bits[kBlock];  // = gumbel_bits(seed, g) of the block's items, vectorised
        PruneTable prune(kMode, beta);
        for (std::int64_t i0 = begin; i0 < end; i0 += kBlock) {
          const int m = static_cast<int>(std::min<std::int64_t>(kBlock, end - i0));
          // Validate the block (NaN, negative power scores, ranks < 1, softmax overflow) before any key.
          if (contiguous) {
            const T* xb = x + i0;
            for (int j = 0; j < m; ++j) sv[j] = static_cast<double>(xb[j]);
          } else {
            for (int j = 0; j < m; ++j) sv[j] = load(i0 + j);
          }
          int bad = 0;
          if (kMode == kModeSoftRank) {
            if (ranks_flat) {
              for (int j = 0; j < m; ++j) rv[j] = static_cast<double>(job.ranks[i0 + j]);
            } else {
              for (int j = 0; j < m; ++j) rv[j] = static_cast<double>(job.ranks[flat_offset(job.ranks_grid, i0 + j)]);
            }
            for (int j = 0; j < m; ++j) bad |= (sv[j] != sv[j]) | !(rv[j] >= 1.0);
          } else if (kMode == kModePower) {
            for (int j = 0; j < m; ++j) bad |= !(sv[j] >= 0.0);  // NaN too
            // beta · ln s can overflow for a finite s only when beta > DBL_MAX / ln(DBL_MAX) ~ 2.5e305
            // (a temperature near 1e-305 or below): then every item is checked exactly below
            bad |= beta > 2.5e305 ? 1 : 0;
          } else {
            // a finite score whose beta * s overflows
            for (int j = 0; j < m; ++j) bad |= (sv[j] != sv[j]) | ((sv[j] - sv[j] == 0.0) & (beta * sv[j] == INFINITY));
          }
          if (bad) {
            for (int j = 0; j < m; ++j) {
              double lw = 0.0;
              const int st = stochastic_log_weight(kMode, beta, sv[j], kMode == kModeSoftRank ? rv[j] : 0.0, &lw);
              if (st != kSelectOk) {
                sh.failures[w] = {st, i0 + j};
                return;
              }
            }
          }
          philox_bits64_block(seed, rng::kStreamStochastic, static_cast<std::uint64_t>(i0 + offset), m, block_bits);
          // The items that pruning cannot rule out (all of them until the worker has a threshold).
          int ns = 0;
          if (const double* u0 = !job.out_keys && select && best.full() ? prune.bounds(best.threshold().u) : nullptr) {
            for (int j = 0; j < m; ++j) {
              survivors[ns] = j;
              ns += rng::uniform_open(block_bits[j]) >= u0[prune.bucket_for<kMode>(sv[j], kMode == kModeSoftRank ? rv[j] : 0.0)] ? 1 : 0;
            }
          } else {
            for (int j = 0; j < m; ++j) survivors[j] = j;
            ns = m;
          }
          for (int t = 0; t < ns; ++t) {
            const int j = survivors[t];
            double log_w = 0.0;
            stochastic_log_weight(kMode, beta, sv[j], kMode == kModeSoftRank ? rv[j] : 0.0, &log_w);
            const double key = gumbel_key_from_bits(log_w, block_bits[j]);
            if (job.out_keys) job.out_keys[flat_offset(job.keys_grid, i0 + j)] = key;
            if (select) best.push(ordered_key(key), i0 + j + offset);
          }
        }
      });
    };
    if (job.mode == kModePower)
      pass(std::integral_constant<int, kModePower>{});
    else if (job.mode == kModeSoftmax)
      pass(std::integral_constant<int, kModeSoftmax>{});
    else
      pass(std::integral_constant<int, kModeSoftRank>{});
  } else {
    // Scores (top_k) and Pairs (merge_top_k): ordered keys in a branch-free, vectorisable block loop,
    // then one comparison against the worker's threshold before the exact push.
    T floor = 0;
    const bool primed = select && job.source == SelectSource::Scores && top_k_floor<T>(n, job.b, load, floor);
    auto scan = [&](bool use_floor) { parallel_for(n, kGrain, workers, [&](std::int64_t begin, std::int64_t end, int w) {
      BestB& best = sh.best[w];
      if (use_floor) best.set_floor(ordered_key(static_cast<double>(floor)));
      std::uint64_t u[kBlock];
      for (std::int64_t i0 = begin; i0 < end; i0 += kBlock) {
        const int m = static_cast<int>(std::min<std::int64_t>(kBlock, end - i0));
        bool bad = false;
        if (contiguous && select && job.source == SelectSource::Scores && best.full()) {
          // Once the worker holds b candidates, most blocks have nothing to offer: one vectorisable
          // comparison with the current threshold's value skips them. !(s < t) also holds for NaN, and
          // for every s whose key reaches the threshold (ordered_key is monotone, -0 and +0 tie), so
          // a block is skipped only when no item could be pushed and none is NaN. (This whole-block
          // pass before the 32-item parts below is not redundant: measured, it is the faster skip.)
          const T t = static_cast<T>(ordered_value(best.threshold().u));
          const T* xb = x + i0;
          if (!any_not_below(xb, m, t)) continue;
          // Few items of a block pass once the heap is full: offer only those (in index order, so the
          // first NaN met is the block's first), instead of making every item's key; parts of 32
          // with nothing to offer are passed over after the same vector comparison.
          for (int j0 = 0; j0 < m; j0 += 32) {
            const int j1 = std::min(m, j0 + 32);
            if (!any_not_below(xb + j0, j1 - j0, t)) continue;
            for (int j = j0; j < j1; ++j) {
              if (xb[j] < t) continue;
              if (xb[j] != xb[j]) {
                sh.failures[w] = {kSelectNaN, i0 + j};
                return;
              }
              best.push(ordered_key(static_cast<double>(xb[j])), i0 + j + offset);
            }
          }
          continue;
        }
        if (contiguous) {
          const T* xb = x + i0;
          for (int j = 0; j < m; ++j) {
            const double s = static_cast<double>(xb[j]);
            bad |= s != s;
            u[j] = ordered_key(s);
          }
        } else {
          for (int j = 0; j < m; ++j) {
            const double s = load(i0 + j);
            bad |= s != s;
            u[j] = ordered_key(s);
          }
        }
        const bool pairs = job.source == SelectSource::Pairs;
        if (pairs)
          for (int j = 0; j < m; ++j) bad |= job.ids[(i0 + j) * job.ids_stride] < 0;
        if (bad) {  // the first bad item in index order: NaN value, then (merge) a negative id
          for (int j = 0; j < m; ++j) {
            if (load(i0 + j) != load(i0 + j)) {
              sh.failures[w] = {kSelectNaN, i0 + j};
              return;
            }
            if (pairs && job.ids[(i0 + j) * job.ids_stride] < 0) {
              sh.failures[w] = {kSelectNegativeIndex, i0 + j};
              return;
            }
          }
        }
        if (!select) continue;
        const std::uint64_t tu = best.full() ? best.threshold().u : 0;
        if (pairs) {
          for (int j = 0; j < m; ++j)
            if (u[j] >= tu) best.push(u[j], job.ids[(i0 + j) * job.ids_stride]);
        } else {
          for (int j = 0; j < m; ++j)
            if (u[j] >= tu) best.push(u[j], i0 + j + offset);
        }
      }
    }); };
    scan(primed);
    if (primed && first_failure(sh.failures).status == 0) {
      // Every item at or above the floor was admitted by a worker that never shrank its buffer; a
      // worker that did holds b of them. So fewer than b in all means fewer than b reach the floor.
      std::size_t held = 0;
      for (auto& bb : sh.best) held += bb.finish().size();
      if (held < static_cast<std::size_t>(job.b)) {
        sh = Shared(workers, job.b);
        scan(false);
      }
    }
  }
  const SelectFailure f = first_failure(sh.failures);
  if (f.status != 0 || !select) return f;

  std::vector<Cand> win;
  for (auto& bb : sh.best) {
    auto& v = bb.finish();
    win.insert(win.end(), v.begin(), v.end());
  }
  const std::size_t b = static_cast<std::size_t>(job.b);
  if (win.size() > b) {
    std::nth_element(win.begin(), win.begin() + b, win.end(), Better());
    win.resize(b);
  }
  parallel_sort(win);
  if (job.source == SelectSource::Pairs) {
    std::vector<std::int64_t> ids(win.size());
    for (std::size_t j = 0; j < win.size(); ++j) ids[j] = win[j].id;
    std::sort(ids.begin(), ids.end());
    for (std::size_t j = 1; j < ids.size(); ++j)
      if (ids[j] == ids[j - 1]) return {kSelectDuplicate, ids[j]};
  }
  write_outputs(job, win);
  return {};
}

}  // namespace

SelectFailure select_cpu(const SelectJob& job) {
  return job.dtype == DType::Float32 ? run<float>(job) : run<double>(job);
}

}  // namespace detail
}  // namespace labelwise
