// Core-set (k-center greedy) and BADGE against brute-force float64 references on fresh random pools,
// the factorised gradient-embedding distance, determinism across thread counts and every bad input.
#include <catch2/catch.hpp>

#include "test_seed.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <cmath>
#include <limits>
#include <random>
#include <set>
#include <vector>

#include "labelwise/acquisition/diversity.hpp"
#include "labelwise/core/parallel.hpp"
#include "labelwise/core/rng.hpp"
#include "labelwise/detail/diversity_impl.hpp"
#include "reference.hpp"

using namespace labelwise;

namespace {


struct ThreadGuard {
  ~ThreadGuard() { set_num_threads(0); }
};

// ---- core-set reference ---------------------------------------------------------------------------

struct CoresetRef {
  std::vector<std::int64_t> picks;
  std::vector<double> radii;
};

/// k-center greedy written from the paper, float64, O(b·N·D) with explicit distances.
CoresetRef coreset_ref(const std::vector<double>& x, std::int64_t n, std::int64_t d, std::vector<bool> taken,
                       std::int64_t b, bool cosine) {
  std::vector<double> u(x);
  if (cosine)
    for (std::int64_t i = 0; i < n; ++i) {
      double ss = 0;
      for (std::int64_t k = 0; k < d; ++k) ss += x[i * d + k] * x[i * d + k];
      const double s = 1.0 / std::sqrt(ss);
      for (std::int64_t k = 0; k < d; ++k) u[i * d + k] = x[i * d + k] * s;
    }
  auto sq = [&](std::int64_t i, const double* c) {
    double s = 0;
    for (std::int64_t k = 0; k < d; ++k) s += (u[i * d + k] - c[k]) * (u[i * d + k] - c[k]);
    return s;
  };
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> mins(n, inf);
  bool any = false;
  for (std::int64_t j = 0; j < n; ++j)
    if (taken[j]) {
      any = true;
      for (std::int64_t i = 0; i < n; ++i) mins[i] = std::min(mins[i], sq(i, &u[j * d]));
    }
  auto argmax = [&](const std::vector<double>& v) {
    std::int64_t best = -1;
    for (std::int64_t i = 0; i < n; ++i)
      if (!taken[i] && (best < 0 || v[i] > v[best])) best = i;
    return best;
  };
  std::int64_t pick;
  if (any) {
    pick = argmax(mins);
  } else {
    std::vector<double> mean(d, 0.0);
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t k = 0; k < d; ++k) mean[k] += u[i * d + k];
    for (auto& m : mean) m /= static_cast<double>(n);
    std::vector<double> to_mean(n);
    for (std::int64_t i = 0; i < n; ++i) to_mean[i] = sq(i, mean.data());
    pick = argmax(to_mean);
  }
  CoresetRef r;
  for (std::int64_t t = 0; t < b; ++t) {
    r.picks.push_back(pick);
    taken[pick] = true;
    for (std::int64_t i = 0; i < n; ++i) mins[i] = std::min(mins[i], sq(i, &u[pick * d]));
    const std::int64_t next = argmax(mins);
    const double m = next < 0 ? 0.0 : mins[next];
    r.radii.push_back(cosine ? 0.5 * m : std::sqrt(m));
    pick = next;
  }
  return r;
}

template <typename T>
std::vector<T> random_matrix(std::mt19937_64& g, std::int64_t n, std::int64_t d) {
  std::normal_distribution<double> nd;
  std::vector<T> x(n * d);
  for (auto& v : x) v = static_cast<T>(nd(g));
  return x;
}

template <typename T>
std::vector<double> widen(const std::vector<T>& x) {
  return std::vector<double>(x.begin(), x.end());
}

template <typename T>
void check_coreset(std::mt19937_64& g, std::int64_t n, std::int64_t d, std::int64_t b, DistanceMetric metric,
                   int labelled_kind /*0 none, 1 mask, 2 indices*/) {
  std::vector<T> x = random_matrix<T>(g, n, d);
  std::vector<bool> taken(n, false);
  std::vector<std::uint8_t> mask(n, 0);
  std::vector<std::int64_t> idx;
  if (labelled_kind != 0) {
    std::uniform_int_distribution<std::int64_t> pick(0, n - 1);
    for (int j = 0; j < 3; ++j) {
      const std::int64_t i = pick(g);
      taken[i] = true;
      mask[i] = 1;
      idx.push_back(i);
    }
  }
  std::int64_t free_items = 0;
  for (bool t : taken) free_items += !t;
  b = std::min(b, free_items);
  const CoresetRef ref = coreset_ref(widen(x), n, d, taken, b, metric == DistanceMetric::Cosine);
  std::vector<std::int64_t> out(b, -7);
  std::vector<double> radii(b, -7.0);
  TensorView lab;
  if (labelled_kind == 1) lab = TensorView(mask.data(), DType::Bool, {n});
  if (labelled_kind == 2) lab = TensorView::of(idx.data(), {static_cast<std::int64_t>(idx.size())});
  coreset(TensorView::of(x.data(), {n, d}), lab, b, TensorView::of(out.data(), {b}), TensorView::of(radii.data(), {b}),
          {metric});
  if (metric == DistanceMetric::Cosine && d == 1) {
    // One dimension: every unit row is +1 or -1, so all rows of a sign tie exactly and which of them
    // wins depends on the last bit of x * (1 / |x|). Only the radii (and distinct picks) are defined.
    std::vector<std::int64_t> sorted(out);
    std::sort(sorted.begin(), sorted.end());
    CHECK(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end());
    for (std::int64_t i : out) CHECK((i >= 0 && i < n && !taken[i]));
  } else {
    CHECK(out == ref.picks);
  }
  for (std::int64_t t = 0; t < b; ++t) CHECK(radii[t] == Approx(ref.radii[t]).epsilon(1e-9).margin(1e-12));
  for (std::int64_t t = 1; t < b; ++t) CHECK(radii[t] <= radii[t - 1]);
}

// ---- BADGE reference ------------------------------------------------------------------------------

/// Explicit gradient embeddings [N, C·D] in float64: g = (p − onehot(argmax p)) ⊗ h.
std::vector<double> explicit_gradients(const std::vector<double>& p, const std::vector<double>& h, std::int64_t n,
                                       std::int64_t c, std::int64_t d) {
  std::vector<double> gr(n * c * d);
  for (std::int64_t i = 0; i < n; ++i) {
    std::int64_t arg = 0;
    for (std::int64_t k = 1; k < c; ++k)
      if (p[i * c + k] > p[i * c + arg]) arg = k;
    for (std::int64_t k = 0; k < c; ++k) {
      const double a = p[i * c + k] - (k == arg ? 1.0 : 0.0);
      for (std::int64_t j = 0; j < d; ++j) gr[(i * c + k) * d + j] = a * h[i * d + j];
    }
  }
  return gr;
}

/// k-means++ seeding with the documented uniform draws (Philox stream "BADG", counter t), computed by
/// the independent reference of reference.hpp (checked bit for bit against badge_uniform below).
std::vector<std::int64_t> badge_ref(const std::vector<double>& gr, std::int64_t n, std::int64_t m, std::int64_t b,
                                    std::uint64_t seed) {
  auto sq = [&](std::int64_t i, std::int64_t j) {
    double s = 0;
    for (std::int64_t k = 0; k < m; ++k) s += (gr[i * m + k] - gr[j * m + k]) * (gr[i * m + k] - gr[j * m + k]);
    return s;
  };
  std::vector<double> norm2(n);
  for (std::int64_t i = 0; i < n; ++i) {
    double s = 0;
    for (std::int64_t k = 0; k < m; ++k) s += gr[i * m + k] * gr[i * m + k];
    norm2[i] = s;
  }
  std::int64_t pick = std::max_element(norm2.begin(), norm2.end()) - norm2.begin();
  std::vector<std::int64_t> picks{pick};
  std::vector<double> d2(n, std::numeric_limits<double>::infinity());
  std::vector<bool> chosen(n, false);
  chosen[pick] = true;
  while (static_cast<std::int64_t>(picks.size()) < b) {
    for (std::int64_t i = 0; i < n; ++i) d2[i] = chosen[i] ? 0.0 : std::min(d2[i], sq(i, pick));
    double total = 0;
    for (double v : d2) total += v;
    const double target = ref::uniform_open_from_bits(ref::philox_bits64(seed, 0x42414447u, picks.size())) * total;
    double run = 0;
    pick = -1;
    for (std::int64_t i = 0; i < n; ++i) {
      run += d2[i];
      if (d2[i] > 0 && run > target) {
        pick = i;
        break;
      }
    }
    REQUIRE(pick >= 0);
    picks.push_back(pick);
    chosen[pick] = true;
  }
  return picks;
}

std::vector<double> random_probs(std::mt19937_64& g, std::int64_t n, std::int64_t c, double sharpness) {
  std::normal_distribution<double> nd;
  std::vector<double> p(n * c);
  for (std::int64_t i = 0; i < n; ++i) {
    double z = 0;
    for (std::int64_t k = 0; k < c; ++k) z += p[i * c + k] = std::exp(sharpness * nd(g));
    for (std::int64_t k = 0; k < c; ++k) p[i * c + k] /= z;
  }
  return p;
}

}  // namespace

TEST_CASE("coreset equals the brute-force k-center greedy reference", "[diversity][coreset]") {
  std::mt19937_64 g(fresh_seed());
  for (int rep = 0; rep < 4; ++rep) {
    for (DistanceMetric metric : {DistanceMetric::Euclidean, DistanceMetric::Cosine}) {
      for (int lk = 0; lk < 3; ++lk) {
        INFO("rep " << rep << " metric " << distance_metric_name(metric) << " labelled kind " << lk);
        check_coreset<double>(g, 40 + rep * 37, 1 + rep * 5, 15, metric, lk);
        check_coreset<float>(g, 53, 7, 53, metric, lk);  // every unlabelled item: the radius reaches 0
      }
    }
  }
}

TEST_CASE("coreset: pruning by the triangle inequality changes no bit", "[diversity][coreset]") {
  std::mt19937_64 g(fresh_seed());
  std::normal_distribution<double> nd;
  const std::int64_t n = 3000, d = 8, b = 150;
  // 25 tight clusters far apart: after ~25 picks almost every row is pruned.
  std::vector<double> centres = random_matrix<double>(g, 25, d);
  std::vector<float> x(n * d);
  std::uniform_int_distribution<int> which(0, 24);
  for (std::int64_t i = 0; i < n; ++i) {
    const int c = which(g);
    for (std::int64_t k = 0; k < d; ++k) x[i * d + k] = static_cast<float>(20 * centres[c * d + k] + nd(g));
  }
  for (std::int64_t i = 0; i < 40; ++i) {  // some near-duplicates (two coordinates copied)
    x[(n - 1 - i) * d] = x[i * d];
    x[(n - 1 - i) * d + 1] = x[i * d + 1];
  }
  std::vector<std::int64_t> lab = {5, 77, 1234};
  for (DistanceMetric metric : {DistanceMetric::Euclidean, DistanceMetric::Cosine}) {
    for (bool labelled : {false, true}) {
      INFO("metric " << distance_metric_name(metric) << " labelled " << labelled);
      const TensorView lv = labelled ? TensorView::of(lab.data(), {3}) : TensorView();
      std::vector<std::int64_t> a(b), c(b);
      std::vector<double> ra(b), rc(b);
      CoresetOptions on{metric, true}, off{metric, false};
      coreset(TensorView::of(x.data(), {n, d}), lv, b, TensorView::of(a.data(), {b}), TensorView::of(ra.data(), {b}),
              on);
      coreset(TensorView::of(x.data(), {n, d}), lv, b, TensorView::of(c.data(), {b}), TensorView::of(rc.data(), {b}),
              off);
      CHECK(a == c);
      CHECK(ra == rc);
      std::vector<bool> taken(n, false);
      if (labelled)
        for (auto i : lab) taken[i] = true;
      const CoresetRef ref = coreset_ref(widen(x), n, d, taken, b, metric == DistanceMetric::Cosine);
      CHECK(a == ref.picks);
      for (std::int64_t t = 0; t < b; ++t) CHECK(ra[t] == Approx(ref.radii[t]).epsilon(1e-9).margin(1e-12));
    }
  }
}

TEST_CASE("coreset: strided features give the same picks", "[diversity][coreset]") {
  std::mt19937_64 g(fresh_seed());
  const std::int64_t n = 300, d = 9, b = 20;
  std::vector<double> x = random_matrix<double>(g, n, d);
  std::vector<double> xt(n * d);  // column-major copy
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t k = 0; k < d; ++k) xt[k * n + i] = x[i * d + k];
  std::vector<std::int64_t> a(b), c(b);
  std::vector<double> ra(b), rc(b);
  coreset(TensorView::of(x.data(), {n, d}), TensorView(), b, TensorView::of(a.data(), {b}),
          TensorView::of(ra.data(), {b}));
  coreset(TensorView::of(xt.data(), {n, d}, {1, n}), TensorView(), b, TensorView::of(c.data(), {b}),
          TensorView::of(rc.data(), {b}));
  CHECK(a == c);
  for (std::int64_t t = 0; t < b; ++t) CHECK(rc[t] == Approx(ra[t]).epsilon(1e-12));  // summation order differs
}

TEST_CASE("coreset: duplicates have distance 0, ties break by the lower index", "[diversity][coreset]") {
  // Rows: 0..3 distinct, 4..7 copies of 0..3. All four distinct points first, then radius 0.
  for (DistanceMetric metric : {DistanceMetric::Euclidean, DistanceMetric::Cosine}) {
    const std::vector<double> base = {1, 0, 0, 1, -1, 0.5, 0.25, -2};
    std::vector<double> x(base);
    x.insert(x.end(), base.begin(), base.end());
    const std::int64_t n = 8, d = 2, b = 8;
    std::vector<std::int64_t> out(b);
    std::vector<double> radii(b);
    coreset(TensorView::of(x.data(), {n, d}), TensorView(), b, TensorView::of(out.data(), {b}),
            TensorView::of(radii.data(), {b}), {metric});
    std::vector<std::int64_t> first4(out.begin(), out.begin() + 4);
    std::sort(first4.begin(), first4.end());
    CHECK(first4 == std::vector<std::int64_t>{0, 1, 2, 3});  // a duplicate never precedes a new point
    CHECK(radii[3] == 0.0);
    CHECK(std::vector<std::int64_t>(out.begin() + 4, out.end()) == std::vector<std::int64_t>{4, 5, 6, 7});
    for (int t = 3; t < 8; ++t) CHECK(radii[t] == 0.0);
    const CoresetRef ref = coreset_ref(x, n, d, std::vector<bool>(n, false), b, metric == DistanceMetric::Cosine);
    CHECK(out == ref.picks);
  }
  // Every point identical: radius 0 at once, picks by index.
  std::vector<float> same(5 * 3, 2.5f);
  std::vector<std::int64_t> out(3);
  std::vector<double> radii(3);
  coreset(TensorView::of(same.data(), {5, 3}), TensorView(), 3, TensorView::of(out.data(), {3}),
          TensorView::of(radii.data(), {3}));
  CHECK(out == std::vector<std::int64_t>{0, 1, 2});
  CHECK(radii == std::vector<double>{0, 0, 0});
}

TEST_CASE("coreset and badge give the same result on every thread count", "[diversity]") {
  ThreadGuard guard;
  std::mt19937_64 g(fresh_seed());
  const std::int64_t n = 40000, d = 16, c = 5, b = 30;  // several chunks per thread count
  std::vector<float> x = random_matrix<float>(g, n, d);
  std::vector<double> p = random_probs(g, n, c, 1.5);
  const std::uint64_t seed = fresh_seed();
  std::vector<std::int64_t> ref_c, ref_b;
  std::vector<double> ref_r;
  for (int threads : {1, 2, 3, 7}) {
    set_num_threads(threads);
    std::vector<std::int64_t> oc(b), ob(b);
    std::vector<double> r(b);
    coreset(TensorView::of(x.data(), {n, d}), TensorView(), b, TensorView::of(oc.data(), {b}),
            TensorView::of(r.data(), {b}), {DistanceMetric::Cosine});
    badge(TensorView::of(p.data(), {n, c}), TensorView::of(x.data(), {n, d}), b, TensorView::of(ob.data(), {b}),
          {InputKind::Probabilities, seed});
    if (ref_c.empty()) {
      ref_c = oc;
      ref_b = ob;
      ref_r = r;
    } else {
      CHECK(oc == ref_c);
      CHECK(r == ref_r);
      CHECK(ob == ref_b);
    }
  }
}

TEST_CASE("badge: the factorised distance equals the explicit ||g - g'||^2", "[diversity][badge]") {
  std::mt19937_64 g(fresh_seed());
  std::normal_distribution<double> nd;
  for (int rep = 0; rep < 200; ++rep) {
    const std::int64_t c = 2 + rep % 9, d = 1 + rep % 17;
    std::vector<double> logits(2 * c), h(2 * d);
    for (auto& v : logits) v = 3 * nd(g);
    for (auto& v : h) v = nd(g);
    std::vector<double> a(2 * c);
    const double na0 = detail::badge_residual(&logits[0], 1, c, 2, &a[0]);
    const double na1 = detail::badge_residual(&logits[c], 1, c, 2, &a[c]);
    double nh0 = 0, nh1 = 0, aa = 0, hh = 0;
    for (std::int64_t k = 0; k < d; ++k) {
      nh0 += h[k] * h[k];
      nh1 += h[d + k] * h[d + k];
      hh += h[k] * h[d + k];
    }
    for (std::int64_t k = 0; k < c; ++k) aa += a[k] * a[c + k];
    const double fact = detail::badge_sq_dist(na0 * nh0, na1 * nh1, aa, hh);
    // Explicit: softmax, residual, outer products, squared distance.
    std::vector<double> p(2 * c);
    for (int r = 0; r < 2; ++r) {
      double mx = -1e300, z = 0;
      for (std::int64_t k = 0; k < c; ++k) mx = std::max(mx, logits[r * c + k]);
      for (std::int64_t k = 0; k < c; ++k) z += p[r * c + k] = std::exp(logits[r * c + k] - mx);
      for (std::int64_t k = 0; k < c; ++k) p[r * c + k] /= z;
    }
    const std::vector<double> gr = explicit_gradients(p, h, 2, c, d);
    double expl = 0, scale = 0;
    for (std::int64_t k = 0; k < c * d; ++k) {
      expl += (gr[k] - gr[c * d + k]) * (gr[k] - gr[c * d + k]);
      scale += gr[k] * gr[k] + gr[c * d + k] * gr[c * d + k];
    }
    CHECK(fact == Approx(expl).margin(1e-12 * scale + 1e-300));
    // The same embedding twice: exactly 0.
    CHECK(detail::badge_sq_dist(na0 * nh0, na0 * nh0, na0, nh0) == 0.0);
  }
}

TEST_CASE("badge equals a brute-force k-means++ reference with the same draws", "[diversity][badge]") {
  std::mt19937_64 g(fresh_seed());
  for (int rep = 0; rep < 6; ++rep) {
    const std::int64_t n = 60 + 17 * rep, c = 2 + rep, d = 1 + 3 * rep, b = std::min<std::int64_t>(n, 25);
    const bool f32 = rep % 2 == 1;
    std::vector<double> p = random_probs(g, n, c, 2.0);
    if (rep >= 3)  // some confident items: a = 0, g = 0
      for (std::int64_t i = 0; i < n; i += 7)
        for (std::int64_t k = 0; k < c; ++k) p[i * c + k] = k == 1 ? 1.0 : 0.0;
    std::vector<double> h = random_matrix<double>(g, n, d);
    std::vector<float> hf(h.begin(), h.end());
    const std::vector<double> hd = f32 ? widen(hf) : h;
    const std::uint64_t seed = fresh_seed();
    INFO("rep " << rep << " seed " << seed);
    const std::vector<std::int64_t> want = badge_ref(explicit_gradients(p, hd, n, c, d), n, c * d, b, seed);
    std::vector<std::int64_t> out(b);
    const TensorView hv = f32 ? TensorView::of(hf.data(), {n, d}) : TensorView::of(h.data(), {n, d});
    badge(TensorView::of(p.data(), {n, c}), hv, b, TensorView::of(out.data(), {b}), {InputKind::Probabilities, seed});
    CHECK(out == want);
    // Logits give the same picks as their softmax.
    std::vector<double> logits(n * c);
    std::vector<double> q = random_probs(g, n, c, 1.0);
    for (std::int64_t i = 0; i < n * c; ++i) logits[i] = std::log(q[i]) + 0.3;
    std::vector<std::int64_t> from_logits(b);
    badge(TensorView::of(logits.data(), {n, c}), hv, b, TensorView::of(from_logits.data(), {b}),
          {InputKind::Logits, seed});
    CHECK(from_logits == badge_ref(explicit_gradients(q, hd, n, c, d), n, c * d, b, seed));
  }
}

TEST_CASE("badge: degenerate pools follow the documented rules", "[diversity][badge]") {
  // Every prediction one-hot: every g = 0, Σ D² = 0 at each step: picks 0, 1, 2, ...
  const std::int64_t n = 6, c = 3, d = 2;
  std::vector<double> p(n * c, 0.0), h(n * d, 1.0);
  for (std::int64_t i = 0; i < n; ++i) p[i * c + i % c] = 1.0;
  std::vector<std::int64_t> out(4);
  badge(TensorView::of(p.data(), {n, c}), TensorView::of(h.data(), {n, d}), 4, TensorView::of(out.data(), {4}),
        {InputKind::Probabilities, 1});
  CHECK(out == std::vector<std::int64_t>{0, 1, 2, 3});
  // b = N: every item exactly once.
  std::mt19937_64 g(fresh_seed());
  std::vector<double> q = random_probs(g, 30, 4, 1.0);
  std::vector<double> e = random_matrix<double>(g, 30, 3);
  std::vector<std::int64_t> all(30);
  badge(TensorView::of(q.data(), {30, 4}), TensorView::of(e.data(), {30, 3}), 30, TensorView::of(all.data(), {30}),
        {InputKind::Probabilities, 9});
  std::sort(all.begin(), all.end());
  for (std::int64_t i = 0; i < 30; ++i) CHECK(all[i] == i);
  CHECK(badge_uniform(5, 1) == detail::badge_uniform_of(5, 1));
  CHECK(badge_uniform(5, 1) > 0.0);
  CHECK(badge_uniform(5, 1) < 1.0);
  CHECK(badge_uniform(5, 1) != badge_uniform(5, 2));
}

TEST_CASE("badge_uniform equals the documented Philox draw, bit for bit", "[diversity][badge]") {
  // The reference (tests/cpp/reference.hpp) is Philox-4x32-10 written from the paper, checked here
  // against the Random123 known answers, then the documented stream "BADG" = 0x42414447, counter
  // (t lo, t hi, stream, 0), key (seed lo, seed hi) and U = (2k + 1) / 2^53 from the top 52 bits.
  CHECK(ref::philox4x32_10({0, 0, 0, 0}, 0, 0) == std::array<std::uint32_t, 4>{0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8});
  CHECK(ref::philox4x32_10({0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF}, 0xFFFFFFFF, 0xFFFFFFFF) ==
        std::array<std::uint32_t, 4>{0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD});
  CHECK(ref::philox4x32_10({0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344}, 0xA4093822, 0x299F31D0) ==
        std::array<std::uint32_t, 4>{0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1});
  const std::uint32_t kBadg = ('B' << 24) | ('A' << 16) | ('D' << 8) | 'G';
  REQUIRE(kBadg == 0x42414447u);
  std::mt19937_64 g(fresh_seed());
  std::vector<std::uint64_t> seeds{0, 1, 5, 0xFFFFFFFFull, 0x100000000ull, ~0ull};
  for (int i = 0; i < 20; ++i) seeds.push_back(g());
  for (const std::uint64_t seed : seeds) {
    std::vector<std::uint64_t> steps{0, 1, 2, 3, 1000, 0xFFFFFFFFull, 0x100000000ull, ~0ull};
    for (int i = 0; i < 20; ++i) steps.push_back(g() >> (g() % 64));
    for (const std::uint64_t t : steps) {
      const double want = ref::uniform_open_from_bits(ref::philox_bits64(seed, kBadg, t));
      const double got = badge_uniform(seed, t);
      INFO("seed " << seed << " t " << t << " got " << got << " want " << want);
      CHECK(std::memcmp(&got, &want, sizeof(double)) == 0);
      CHECK(got > 0.0);
      CHECK(got < 1.0);
    }
  }
  // the extremes of the mapping: k = 0 gives 2^-53, k = 2^52 - 1 gives 1 - 2^-53
  CHECK(ref::uniform_open_from_bits(0) == std::ldexp(1.0, -53));
  CHECK(ref::uniform_open_from_bits(0xFFF) == std::ldexp(1.0, -53));
  CHECK(ref::uniform_open_from_bits(~0ull) == 1.0 - std::ldexp(1.0, -53));
}

TEST_CASE("coreset and badge reject bad input", "[diversity][errors]") {
  std::vector<double> x(12, 1.0);
  for (int i = 0; i < 12; ++i) x[i] = i * 0.5 - 2;
  std::vector<std::int64_t> out(4);
  std::vector<double> radii(4);
  auto idx = [&](std::int64_t b) { return TensorView::of(out.data(), {b}); };
  auto rad = [&](std::int64_t b) { return TensorView::of(radii.data(), {b}); };
  const TensorView fx = TensorView::of(x.data(), {4, 3});
  auto kind_of = [](auto&& fn) {
    try {
      fn();
    } catch (const Error& e) {
      return e.kind();
    }
    return static_cast<ErrorKind>(-1);
  };
  // b = 0 is valid.
  coreset(fx, TensorView(), 0, idx(0), rad(0));
  // b > unlabelled, b < 0.
  CHECK_THROWS_WITH(coreset(fx, TensorView(), 5, idx(4), rad(4)), Catch::Contains("b: expected 0 <= b <= 4"));
  CHECK_THROWS_WITH(coreset(fx, TensorView(), -1, idx(0), rad(0)), Catch::Contains("b: expected"));
  std::vector<std::int64_t> lab = {1, 1, 3};
  CHECK_THROWS_WITH(coreset(fx, TensorView::of(lab.data(), {3}), 3, idx(3), rad(3)),
                    Catch::Contains("b: expected 0 <= b <= 2"));
  // All labelled.
  std::vector<std::uint8_t> all(4, 1);
  CHECK_THROWS_WITH(coreset(fx, TensorView(all.data(), DType::Bool, {4}), 0, idx(0), rad(0)),
                    Catch::Contains("every one of the 4 items is labelled"));
  // Mask of the wrong length, index out of range, wrong dtype.
  CHECK_THROWS_WITH(coreset(fx, TensorView(all.data(), DType::Bool, {3}), 1, idx(1), rad(1)),
                    Catch::Contains("expected shape [4]"));
  std::vector<std::int64_t> bad = {0, 4};
  CHECK_THROWS_WITH(coreset(fx, TensorView::of(bad.data(), {2}), 1, idx(1), rad(1)),
                    Catch::Contains("outside [0, 4)"));
  std::vector<float> fl(4, 0.f);
  CHECK(kind_of([&] { coreset(fx, TensorView::of(fl.data(), {4}), 1, idx(1), rad(1)); }) == ErrorKind::Type);
  // Empty pool, D = 0, wrong rank.
  CHECK_THROWS_WITH(coreset(TensorView::of(x.data(), {0, 3}), TensorView(), 0, idx(0), rad(0)),
                    Catch::Contains("empty"));
  CHECK_THROWS_WITH(coreset(TensorView::of(x.data(), {4, 0}), TensorView(), 0, idx(0), rad(0)),
                    Catch::Contains("at least one column"));
  CHECK_THROWS_WITH(coreset(TensorView::of(x.data(), {12}), TensorView(), 1, idx(1), rad(1)),
                    Catch::Contains("expected rank 2"));
  // NaN / Inf, zero rows with cosine.
  std::vector<double> y(x);
  y[7] = std::nan("");
  CHECK_THROWS_WITH(coreset(TensorView::of(y.data(), {4, 3}), TensorView(), 1, idx(1), rad(1)),
                    Catch::Contains("row [2] contains NaN or Inf"));
  y[7] = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH(coreset(TensorView::of(y.data(), {4, 3}), TensorView(), 0, idx(0), rad(0)),
                    Catch::Contains("row [2]"));
  y = x;
  y[3] = y[4] = y[5] = 0.0;
  CHECK_THROWS_WITH(coreset(TensorView::of(y.data(), {4, 3}), TensorView(), 1, idx(1), rad(1), {DistanceMetric::Cosine}),
                    Catch::Contains("row [1] is all zeros"));
  coreset(TensorView::of(y.data(), {4, 3}), TensorView(), 1, idx(1), rad(1));  // fine for Euclidean
  // Outputs.
  std::vector<float> rf(4);
  CHECK(kind_of([&] { coreset(fx, TensorView(), 2, idx(2), TensorView::of(rf.data(), {2})); }) == ErrorKind::Type);
  CHECK_THROWS_WITH(coreset(fx, TensorView(), 2, idx(3), rad(2)), Catch::Contains("indices: expected shape [2]"));
  // CUDA input.
  TensorView cuda_x = fx;
  cuda_x.device = Device::cuda(0);
  CHECK_THROWS_WITH(coreset(cuda_x, TensorView(), 1, idx(1), rad(1)),
                    Catch::Contains("indices: is on cpu but features is on cuda:0"));
  std::vector<std::uint8_t> host_mask(4, 0);
  TensorView cuda_mask = TensorView::of(host_mask.data(), {4});
  cuda_mask.device = Device::cuda(1);
  CHECK_THROWS_WITH(coreset(fx, cuda_mask, 1, idx(1), rad(1)), Catch::Contains("labeled: is on cuda:1 but features is on cpu"));
  if (!built_with_cuda()) {
    TensorView cuda_i = idx(1), cuda_r = rad(1);
    cuda_i.device = cuda_r.device = Device::cuda(0);
    CHECK_THROWS_WITH(coreset(cuda_x, TensorView(), 1, cuda_i, cuda_r), Catch::Contains("built without CUDA"));
    CHECK(kind_of([&] { coreset(cuda_x, TensorView(), 1, cuda_i, cuda_r); }) == ErrorKind::Runtime);
  }
  // Integer features.
  std::vector<std::int64_t> ints(12);
  CHECK(kind_of([&] { coreset(TensorView::of(ints.data(), {4, 3}), TensorView(), 1, idx(1), rad(1)); }) ==
        ErrorKind::Type);

  // ---- BADGE ----
  std::vector<double> p = {0.2, 0.8, 0.5, 0.5, 1.0, 0.0, 0.3, 0.7};
  const TensorView pv = TensorView::of(p.data(), {4, 2});
  badge(pv, fx, 0, idx(0), {});
  CHECK_THROWS_WITH(badge(pv, fx, 5, idx(4), {}), Catch::Contains("b: expected 0 <= b <= 4"));
  CHECK_THROWS_WITH(badge(pv, TensorView::of(x.data(), {3, 4}), 1, idx(1), {}),
                    Catch::Contains("embeddings: expected 4 rows"));
  CHECK_THROWS_WITH(badge(TensorView::of(p.data(), {8, 1}), TensorView::of(x.data(), {8, 1}), 1, idx(1), {}),
                    Catch::Contains("at least 2 classes"));
  CHECK_THROWS_WITH(badge(TensorView::of(p.data(), {8}), fx, 1, idx(1), {}), Catch::Contains("expected rank 2"));
  CHECK_THROWS_WITH(badge(TensorView::of(p.data(), {0, 2}), TensorView::of(x.data(), {0, 3}), 0, idx(0), {}),
                    Catch::Contains("empty"));
  std::vector<double> q(p);
  q[2] = std::nan("");
  CHECK_THROWS_WITH(badge(TensorView::of(q.data(), {4, 2}), fx, 1, idx(1), {}), Catch::Contains("x: row [1]"));
  q = p;
  q[4] = -0.1;
  q[5] = 1.1;
  CHECK_THROWS_WITH(badge(TensorView::of(q.data(), {4, 2}), fx, 1, idx(1), {}), Catch::Contains("negative"));
  q = p;
  q[6] = 0.9;
  CHECK_THROWS_WITH(badge(TensorView::of(q.data(), {4, 2}), fx, 1, idx(1), {}),
                    Catch::Contains("row [3] does not sum to 1"));
  badge(TensorView::of(q.data(), {4, 2}), fx, 1, idx(1), {InputKind::Logits, 0});  // logits need no normalisation
  q[6] = -std::numeric_limits<double>::infinity();
  q[7] = -std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH(badge(TensorView::of(q.data(), {4, 2}), fx, 1, idx(1), {InputKind::Logits, 0}),
                    Catch::Contains("every logit equal to -inf"));
  y = x;
  y[10] = std::nan("");
  CHECK_THROWS_WITH(badge(pv, TensorView::of(y.data(), {4, 3}), 1, idx(1), {}),
                    Catch::Contains("embeddings: row [3] contains NaN or Inf"));
  y = x;
  y[7] = 1e200;  // finite, but its square is not: no distance to it could be formed
  CHECK_THROWS_WITH(badge(pv, TensorView::of(y.data(), {4, 3}), 1, idx(1), {}),
                    Catch::Contains("embeddings: row [2] is too large: its squared norm exceeds 2.2e307"));
  y[7] = 1e150;  // squared norm 1e300: fine
  badge(pv, TensorView::of(y.data(), {4, 3}), 2, idx(2), {});
  TensorView cuda_p = pv;
  cuda_p.device = Device::cuda(0);
  CHECK_THROWS_WITH(badge(cuda_p, fx, 1, idx(1), {}), Catch::Contains("embeddings: is on cpu but x is on cuda:0"));
  if (!built_with_cuda()) {
    TensorView cuda_e = fx, cuda_i = idx(1);
    cuda_e.device = cuda_i.device = Device::cuda(0);
    CHECK_THROWS_WITH(badge(cuda_p, cuda_e, 1, cuda_i, {}), Catch::Contains("built without CUDA"));
  }
  CHECK(kind_of([&] { badge(pv, fx, 2, TensorView::of(radii.data(), {2}), {}); }) == ErrorKind::Type);
}

// ---- weighted k-means hybrid ------------------------------------------------------------------------

TEST_CASE("unlabeled_rows: the rows a mask or an index list leaves, and coreset's errors", "[diversity]") {
  std::mt19937_64 g(fresh_seed());
  const std::int64_t n = 57;
  std::vector<std::uint8_t> mask(n);
  std::vector<std::int64_t> ids, want;
  for (std::int64_t i = 0; i < n; ++i) {
    mask[i] = (g() % 3 == 0) ? 1 : 0;
    if (mask[i]) ids.push_back(i), ids.push_back(i);  // repeats are allowed
    else want.push_back(i);
  }
  std::vector<std::int64_t> rows(2 * n, -7);
  const TensorView strided = TensorView::of(rows.data(), {n}, {2});
  CHECK(unlabeled_rows(TensorView::of(mask.data(), {n}), n, strided) == static_cast<std::int64_t>(want.size()));
  for (std::size_t j = 0; j < want.size(); ++j) CHECK(rows[2 * j] == want[j]);
  CHECK(rows[1] == -7);  // the stride is respected
  std::vector<std::int64_t> dense(n);
  const TensorView out = TensorView::of(dense.data(), {n});
  CHECK(unlabeled_rows(TensorView::of(ids.data(), {static_cast<std::int64_t>(ids.size())}), n, out) ==
        static_cast<std::int64_t>(want.size()));
  CHECK(std::equal(want.begin(), want.end(), dense.begin()));
  CHECK(unlabeled_rows(TensorView(), n, out) == n);
  CHECK(dense[n - 1] == n - 1);
  std::vector<std::uint8_t> all(n, 1);
  CHECK_THROWS_WITH(unlabeled_rows(TensorView::of(all.data(), {n}), n, out),
                    Catch::Contains("labeled: every one of the 57 items is labelled"));
  std::int64_t bad[2] = {3, n};
  CHECK_THROWS_WITH(unlabeled_rows(TensorView::of(bad, {2}), n, out),
                    Catch::Contains("labeled: index [1] = 57 is outside [0, 57)"));
  CHECK_THROWS_WITH(unlabeled_rows(TensorView::of(mask.data(), {n - 1}), n, out),
                    Catch::Contains("labeled: a mask must have one entry per row"));
  CHECK_THROWS_WITH(unlabeled_rows(TensorView(), n, TensorView::of(dense.data(), {n - 1})),
                    Catch::Contains("rows: expected shape [57]"));
}

TEST_CASE("weighted_kmeans: one pick per blob, from its uncertain side; prefilter 1 is top-b",
          "[diversity][weighted_kmeans]") {
  ThreadGuard guard;
  std::mt19937_64 g(fresh_seed());
  std::normal_distribution<double> nd;
  std::uniform_real_distribution<double> ud;
  const std::int64_t per = 60, d = 3, nb = 5, n = per * nb;
  std::vector<double> x(n * d), w(n);
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t blob = i / per;
    for (std::int64_t k = 0; k < d; ++k) x[i * d + k] = 30.0 * (k == blob % d ? 1 + blob / d : 0) + nd(g);
    // uncertain where the first coordinate is below the blob's centre; blob 0 is twice as uncertain
    const double centre = blob % d == 0 ? 30.0 * (1 + blob / d) : 0.0;
    w[i] = (x[i * d] < centre ? 1.0 : 0.05) * (blob == 0 ? 2.0 : 1.0) + 0.01 * ud(g);
  }
  std::vector<std::int64_t> out(nb);
  weighted_kmeans(TensorView::of(x.data(), {n, d}), TensorView::of(w.data(), {n}), nb, TensorView::of(out.data(), {nb}),
                  {per, 100});
  std::vector<std::int64_t> blobs;
  int uncertain_side = 0;
  for (std::int64_t i : out) {
    blobs.push_back(i / per);
    const std::int64_t blob = i / per;
    const double centre = blob % d == 0 ? 30.0 * (1 + blob / d) : 0.0;
    // The weighted centroid sits about 0.7 sigma on the uncertain side; the member nearest to it is
    // almost always there too (a sparse draw can leave a point just across the centre nearest).
    CHECK(x[i * d] < centre + 0.5);
    uncertain_side += x[i * d] < centre;
  }
  CHECK(uncertain_side >= 4);
  std::sort(blobs.begin(), blobs.end());
  CHECK(blobs == std::vector<std::int64_t>{0, 1, 2, 3, 4});

  // prefilter = 1: the top-b by score (descending, ties lower index)
  std::vector<std::int64_t> top(7), order(n);
  weighted_kmeans(TensorView::of(x.data(), {n, d}), TensorView::of(w.data(), {n}), 7, TensorView::of(top.data(), {7}),
                  {1, 100});
  for (std::int64_t i = 0; i < n; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) { return w[a] > w[b]; });
  CHECK(std::vector<std::int64_t>(order.begin(), order.begin() + 7) == top);

  // the same picks on any thread count and with strided (column-major) features
  std::vector<double> xt(n * d);  // column-major copy
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t k = 0; k < d; ++k) xt[k * n + i] = x[i * d + k];
  for (int threads : {1, 2, 5}) {
    set_num_threads(threads);
    std::vector<std::int64_t> o(12), o2(12);
    weighted_kmeans(TensorView::of(x.data(), {n, d}), TensorView::of(w.data(), {n}), 12, TensorView::of(o.data(), {12}));
    weighted_kmeans(TensorView(xt.data(), DType::Float64, {n, d}, {1, n}, Device::cpu()),
                    TensorView::of(w.data(), {n}), 12, TensorView::of(o2.data(), {12}));
    CHECK(o == o2);
    if (threads == 1) out = o;
    CHECK(o == out);
    std::set<std::int64_t> uniq(o.begin(), o.end());
    CHECK(uniq.size() == 12);
  }
}

TEST_CASE("weighted_kmeans rejects bad input", "[diversity][weighted_kmeans][errors]") {
  std::vector<double> x(12), w = {0.1, 0.2, 0.3, 0.4};
  for (int i = 0; i < 12; ++i) x[i] = i * 0.5 - 2;
  std::vector<std::int64_t> out(4);
  const TensorView fx = TensorView::of(x.data(), {4, 3});
  const TensorView fw = TensorView::of(w.data(), {4});
  weighted_kmeans(fx, fw, 0, TensorView::of(out.data(), {0}));
  CHECK_THROWS_WITH(weighted_kmeans(fx, fw, 5, TensorView::of(out.data(), {4})),
                    Catch::Contains("b: expected 0 <= b <= 4"));
  CHECK_THROWS_WITH(weighted_kmeans(fx, TensorView::of(w.data(), {3}), 2, TensorView::of(out.data(), {2})),
                    Catch::Contains("scores: expected shape [4]"));
  CHECK_THROWS_WITH(weighted_kmeans(fx, fw, 2, TensorView::of(out.data(), {2}), {0, 10}),
                    Catch::Contains("prefilter: expected an integer >= 1"));
  CHECK_THROWS_WITH(weighted_kmeans(fx, fw, 2, TensorView::of(out.data(), {2}), {10, -1}),
                    Catch::Contains("max_iter: expected an integer >= 0"));
  CHECK_THROWS_WITH(weighted_kmeans(fx, fw, 2, TensorView::of(out.data(), {3})), Catch::Contains("indices: expected shape [2]"));
  w[2] = -1;
  CHECK_THROWS_WITH(weighted_kmeans(fx, fw, 2, TensorView::of(out.data(), {2})), Catch::Contains("scores: [2] = -1 is negative"));
  w[2] = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH(weighted_kmeans(fx, fw, 2, TensorView::of(out.data(), {2})), Catch::Contains("scores: [2] is nan"));
  w[2] = 0.3;
  x[7] = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH(weighted_kmeans(fx, fw, 2, TensorView::of(out.data(), {2})),
                    Catch::Contains("features: row [2] contains NaN or Inf"));
  x[7] = 0;
  TensorView cuda_x = fx;
  cuda_x.device = Device::cuda(0);
  if (built_with_cuda()) {
    CHECK_THROWS_WITH(weighted_kmeans(cuda_x, fw, 1, TensorView::of(out.data(), {1})),
                      Catch::Contains("scores: is on cpu but features is on cuda:0"));
  } else {
    CHECK_THROWS_WITH(weighted_kmeans(cuda_x, fw, 1, TensorView::of(out.data(), {1})),
                      Catch::Contains("features: is a CUDA tensor, but labelwise was built without CUDA"));
  }
}

// ---- cluster-margin -----------------------------------------------------------------------------------

TEST_CASE("cluster_margin: round-robin over clusters from the smallest, Philox order within", "[diversity][cluster_margin]") {
  std::mt19937_64 g(fresh_seed());
  std::uniform_real_distribution<double> ud;
  const std::int64_t n = 60;
  std::vector<double> m(n);
  std::vector<std::int64_t> ids(n);
  for (std::int64_t i = 0; i < n; ++i) {
    m[i] = ud(g);
    ids[i] = i < 5 ? 7 : i < 20 ? 3 : 11;  // sizes 5, 15, 40
  }
  const std::uint64_t seed = fresh_seed();
  const std::int64_t b = 9;
  std::vector<std::int64_t> out(b);
  cluster_margin(TensorView::of(m.data(), {n}), TensorView::of(ids.data(), {n}), TensorView(), b,
                 TensorView::of(out.data(), {b}), {n, seed});
  // every round visits the clusters in ascending size: 7 (5 items), 3 (15), 11 (40)
  for (std::int64_t t = 0; t < b; ++t) CHECK(ids[out[t]] == std::vector<std::int64_t>{7, 3, 11}[t % 3]);
  // within a cluster: ascending Philox keys
  for (std::int64_t t = 3; t < b; ++t)
    CHECK(rng::bits64(seed, rng::kStreamClusterMargin, out[t - 3]) < rng::bits64(seed, rng::kStreamClusterMargin, out[t]));
  // candidates = b: exactly the b largest margins
  std::vector<std::int64_t> top(b), order(n);
  cluster_margin(TensorView::of(m.data(), {n}), TensorView::of(ids.data(), {n}), TensorView(), b,
                 TensorView::of(top.data(), {b}), {b, seed});
  for (std::int64_t i = 0; i < n; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t c) { return m[a] > m[c]; });
  std::sort(top.begin(), top.end());
  std::vector<std::int64_t> want(order.begin(), order.begin() + b);
  std::sort(want.begin(), want.end());
  CHECK(top == want);
  // labelled items are never picked
  std::vector<std::int64_t> lab = {out[0], out[1]};
  std::vector<std::int64_t> again(b);
  cluster_margin(TensorView::of(m.data(), {n}), TensorView::of(ids.data(), {n}), TensorView::of(lab.data(), {2}), b,
                 TensorView::of(again.data(), {b}), {n, seed});
  for (std::int64_t i : again) CHECK((i != lab[0] && i != lab[1]));
}

TEST_CASE("cluster_margin rejects bad input", "[diversity][cluster_margin][errors]") {
  std::vector<double> m = {0.1, 0.5, std::numeric_limits<double>::quiet_NaN(), 0.3};
  std::vector<std::int64_t> ids = {0, 1, 0, 1}, out(4);
  const TensorView iv = TensorView::of(ids.data(), {4});
  CHECK_THROWS_WITH(cluster_margin(TensorView::of(m.data(), {4}), iv, TensorView(), 1, TensorView::of(out.data(), {1})),
                    Catch::Contains("margins: NaN at item [2]"));
  m[2] = 0.2;
  const TensorView mv = TensorView::of(m.data(), {4});
  CHECK_THROWS_WITH(cluster_margin(mv, iv, TensorView(), 5, TensorView::of(out.data(), {4})),
                    Catch::Contains("b: expected 0 <= b <= 4"));
  CHECK_THROWS_WITH(cluster_margin(mv, TensorView::of(ids.data(), {3}), TensorView(), 1, TensorView::of(out.data(), {1})),
                    Catch::Contains("clusters: expected shape [4]"));
  CHECK_THROWS_WITH(cluster_margin(mv, iv, TensorView(), 3, TensorView::of(out.data(), {3}), {2, 0}),
                    Catch::Contains("candidates: 2 is fewer than b = 3"));
  std::vector<std::int64_t> lab = {4};
  CHECK_THROWS_WITH(cluster_margin(mv, iv, TensorView::of(lab.data(), {1}), 1, TensorView::of(out.data(), {1})),
                    Catch::Contains("labeled: index [0] = 4 is outside [0, 4)"));
  std::vector<std::int64_t> every = {3, 0, 2, 1, 0};  // all four items, one repeated: even b = 0 is an error
  CHECK_THROWS_WITH(cluster_margin(mv, iv, TensorView::of(every.data(), {5}), 0, TensorView::of(out.data(), {0})),
                    Catch::Contains("labeled: every one of the 4 items is labelled"));
  std::vector<float> fids(4);
  CHECK_THROWS_WITH(cluster_margin(mv, TensorView::of(fids.data(), {4}), TensorView(), 1, TensorView::of(out.data(), {1})),
                    Catch::Contains("clusters: expected dtype int64"));
  cluster_margin(mv, iv, TensorView(), 0, TensorView::of(out.data(), {0}));  // b = 0: valid
  // Devices: every array on the margins' device (labeled may also stay on the host).
  TensorView cuda_m = mv, cuda_ids = iv, cuda_out = TensorView::of(out.data(), {1});
  cuda_m.device = cuda_ids.device = cuda_out.device = Device::cuda(0);
  CHECK_THROWS_WITH(cluster_margin(cuda_m, iv, TensorView(), 1, cuda_out),
                    Catch::Contains("clusters: is on cpu but margins is on cuda:0"));
  CHECK_THROWS_WITH(cluster_margin(cuda_m, cuda_ids, TensorView(), 1, TensorView::of(out.data(), {1})),
                    Catch::Contains("indices: is on cpu but margins is on cuda:0"));
  if (!built_with_cuda())
    CHECK_THROWS_WITH(cluster_margin(cuda_m, cuda_ids, TensorView(), 1, cuda_out),
                      Catch::Contains("margins: is a CUDA tensor, but labelwise was built without CUDA"));
}

// ---- average-linkage clusters ----------------------------------------------------------------------

namespace {

/// Agglomerative average linkage from the definition: repeatedly merge the two clusters of the
/// smallest mean pairwise distance (recomputed from the points, float64) while it is <= t, or until
/// `count` clusters remain. Returns ids numbered by each cluster's lowest member.
std::vector<std::int64_t> linkage_ref(const std::vector<double>& x, int n, int d, double t, int count) {
  std::vector<std::vector<int>> cl(n);
  for (int i = 0; i < n; ++i) cl[i] = {i};
  auto dist = [&](int i, int j) {
    double s = 0.0;
    for (int k = 0; k < d; ++k) s += (x[i * d + k] - x[j * d + k]) * (x[i * d + k] - x[j * d + k]);
    return std::sqrt(s);
  };
  while (cl.size() > 1) {
    double best = std::numeric_limits<double>::infinity();
    std::size_t ba = 0, bb = 0;
    for (std::size_t a = 0; a < cl.size(); ++a)
      for (std::size_t b = a + 1; b < cl.size(); ++b) {
        double s = 0.0;
        for (int i : cl[a])
          for (int j : cl[b]) s += dist(i, j);
        s /= static_cast<double>(cl[a].size() * cl[b].size());
        if (s < best) {
          best = s;
          ba = a;
          bb = b;
        }
      }
    if (count > 0 ? static_cast<int>(cl.size()) <= count : best > t) break;
    cl[ba].insert(cl[ba].end(), cl[bb].begin(), cl[bb].end());
    cl.erase(cl.begin() + static_cast<std::ptrdiff_t>(bb));
  }
  std::vector<std::int64_t> owner(n);
  for (std::size_t c = 0; c < cl.size(); ++c)
    for (int i : cl[c]) owner[i] = *std::min_element(cl[c].begin(), cl[c].end());
  std::vector<std::int64_t> id(n, -1), out(n);
  std::int64_t next = 0;
  for (int i = 0; i < n; ++i) {
    if (id[owner[i]] < 0) id[owner[i]] = next++;
    out[i] = id[owner[i]];
  }
  return out;
}

}  // namespace

TEST_CASE("average_linkage_clusters equals agglomeration from the definition", "[diversity][linkage]") {
  const std::uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 g(seed);
  std::normal_distribution<double> nd;
  ThreadGuard tg;
  for (int trial = 0; trial < 6; ++trial) {
    const int n = 20 + trial * 7, d = 1 + trial;
    // a few blobs of different spreads, so that the dendrogram has structure
    std::vector<double> x(static_cast<std::size_t>(n) * d);
    for (int i = 0; i < n; ++i) {
      const int blob = i % 4;
      for (int k = 0; k < d; ++k) x[i * d + k] = 4.0 * blob * (k == blob % d) + (0.3 + 0.4 * blob) * nd(g);
    }
    for (int count : {1, 2, 3, 5, n - 1, n}) {
      std::vector<std::int64_t> ids(n);
      AverageLinkageOptions opt;
      opt.num_clusters = count;
      set_num_threads(1 + trial % 2);
      average_linkage_clusters(TensorView::of(x.data(), {n, d}), TensorView::of(ids.data(), {n}), opt);
      CHECK(ids == linkage_ref(x, n, d, 0.0, count));
    }
    for (double t : {0.5, 1.5, 3.0, 100.0}) {
      std::vector<std::int64_t> ids(n);
      AverageLinkageOptions opt;
      opt.distance = t;
      average_linkage_clusters(TensorView::of(x.data(), {n, d}), TensorView::of(ids.data(), {n}), opt);
      CHECK(ids == linkage_ref(x, n, d, t, 0));
    }
  }
  // float32, transposed storage ([D, N] read as [N, D] through strides): the same as float64 rows
  const int n = 30, d = 3;
  std::vector<double> x(n * d);
  for (auto& v : x) v = nd(g);
  std::vector<float> xt(n * d);
  std::vector<double> x32(n * d);
  for (int i = 0; i < n; ++i)
    for (int k = 0; k < d; ++k) x32[i * d + k] = xt[k * n + i] = static_cast<float>(x[i * d + k]);
  std::vector<std::int64_t> ids(n), ids32(2 * n);
  AverageLinkageOptions opt;
  opt.num_clusters = 4;
  average_linkage_clusters(TensorView::of(x32.data(), {n, d}), TensorView::of(ids.data(), {n}), opt);
  average_linkage_clusters(TensorView(xt.data(), DType::Float32, {n, d}, {1, n}),
                           TensorView(ids32.data(), DType::Int64, {n}, {2}), opt);
  for (int i = 0; i < n; ++i) CHECK(ids32[2 * i] == ids[i]);
  // one row: one cluster
  std::int64_t one = -1;
  average_linkage_clusters(TensorView::of(x.data(), {1, d}), TensorView::of(&one, {1}), opt = {0.0, 1});
  CHECK(one == 0);
}

TEST_CASE("average_linkage_clusters rejects bad input", "[diversity][linkage][errors]") {
  std::vector<double> x(10 * 3, 0.5);
  for (int i = 0; i < 30; ++i) x[i] = 0.1 * i;
  std::vector<std::int64_t> ids(10);
  const TensorView xv = TensorView::of(x.data(), {10, 3});
  const TensorView iv = TensorView::of(ids.data(), {10});
  AverageLinkageOptions opt;
  CHECK_THROWS_WITH(average_linkage_clusters(xv, iv, opt), Catch::Contains("exactly one"));
  opt.distance = 1.0;
  opt.num_clusters = 2;
  CHECK_THROWS_WITH(average_linkage_clusters(xv, iv, opt), Catch::Contains("exactly one"));
  opt = {};
  opt.num_clusters = 11;  // more than the rows: at most 11 clusters, every row its own (SciPy's maxclust)
  average_linkage_clusters(xv, iv, opt);
  for (std::int64_t i = 0; i < 10; ++i) CHECK(ids[i] == i);
  opt.distance = 1.0;
  opt.num_clusters = -1;
  CHECK_THROWS_WITH(average_linkage_clusters(xv, iv, opt), Catch::Contains("num_clusters: expected an integer >= 1"));
  opt = {};
  opt.distance = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH(average_linkage_clusters(xv, iv, opt), Catch::Contains("finite"));
  opt = {};
  opt.num_clusters = 2;
  x[7 * 3 + 1] = std::nan("");
  CHECK_THROWS_WITH(average_linkage_clusters(xv, iv, opt), Catch::Contains("row [7]") && Catch::Contains("NaN"));
  x[7 * 3 + 1] = 0.0;
  std::vector<std::int32_t> ids32(10);
  CHECK_THROWS_WITH(average_linkage_clusters(xv, TensorView::of(ids32.data(), {10}), opt), Catch::Contains("int64"));
  CHECK_THROWS_WITH(average_linkage_clusters(xv, TensorView::of(ids.data(), {9}), opt), Catch::Contains("shape [10]"));
  CHECK_THROWS_WITH(average_linkage_clusters(TensorView::of(x.data(), {30}), iv, opt), Catch::Contains("rank 2"));
  TensorView cuda = xv;
  cuda.device = Device::cuda(0);
  CHECK_THROWS_WITH(average_linkage_clusters(cuda, iv, opt), Catch::Contains("not implemented on CUDA"));
}
