// Uncertainty metrics against naive float64 references on fresh random inputs.
#include <catch2/catch.hpp>

#include "test_seed.hpp"

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "labelwise/core/parallel.hpp"
#include "labelwise/uncertainty/metrics.hpp"
#include "reference.hpp"

using namespace labelwise;

namespace {


struct Pool {
  int N, K, C;
  std::vector<std::vector<std::vector<double>>> p;  // [N][K][C]
};

Pool make_pool(std::mt19937_64& rng, int N, int K, int C) {
  Pool P{N, K, C, {}};
  std::uniform_int_distribution<int> character(0, 3);
  for (int i = 0; i < N; ++i) {
    const int ch = character(rng);
    std::vector<std::vector<double>> item;
    for (int k = 0; k < K; ++k) item.push_back(ref::random_probs(rng, C, ch));
    P.p.push_back(item);
  }
  return P;
}

std::vector<MetricOutput> all_outputs(std::vector<std::vector<double>>& storage, std::int64_t N, bool samples) {
  std::vector<MetricOutput> outs;
  storage.assign(kNumMetrics, std::vector<double>(N, -12345.0));
  for (int m = 0; m < kNumMetrics; ++m) {
    if (!samples && metric_needs_samples(static_cast<Metric>(m))) continue;
    outs.push_back({static_cast<Metric>(m), TensorView::of(storage[m].data(), {N})});
  }
  return outs;
}

// Relative-or-absolute closeness with a per-dtype tolerance.
/// Item i of a contiguous [N, K, C] buffer as K rows of float64 (the references' input).
template <typename T>
std::vector<std::vector<double>> item_rows(const std::vector<T>& x, int i, int K, int C) {
  std::vector<std::vector<double>> item(K, std::vector<double>(C));
  for (int k = 0; k < K; ++k)
    for (int c = 0; c < C; ++c) item[k][c] = static_cast<double>(x[(static_cast<std::size_t>(i) * K + k) * C + c]);
  return item;
}

bool close(double a, double b, double tol) {
  if (std::isinf(a) || std::isinf(b)) return a == b;
  return std::fabs(a - b) <= tol * (1.0 + std::fabs(b));
}

/// BalEntAcq at its pole: an item certain to within rounding (the top class's mean within ~1e-12 of 1,
/// so the reference's s > 1e12). The kernel's and the reference's float64 means may differ in the
/// last ulp with one of them exactly 1: that side calls the item certain (-inf), the other gives s >
/// 1e12 (seen about once in 300 runs). Both are the documented behaviour at the boundary of the
/// certain-item rule (docs/metrics.md).
bool balentacq_at_pole(double got, double want) {
  return (got == -INFINITY && want > 1e12) || (want == -INFINITY && got > 1e12);
}

/// Scores logits (kind 2) or log-probabilities (kind 1) x [N, K, C] (all ten metrics) and checks every
/// item against the float64 definitions over exp(x) (normalised for logits); returns the results.
template <typename T>
std::vector<std::vector<double>> score_logs_against_reference(const std::vector<T>& x, int N, int K, int C, int kind) {
  const bool f32 = std::is_same<T, float>::value;
  ScoreOptions opt;
  opt.input = static_cast<InputKind>(kind);
  std::vector<std::vector<double>> store;
  auto outs = all_outputs(store, N, true);
  score(TensorView::of(x.data(), {N, K, C}), outs, opt);
  for (int i = 0; i < N; ++i) {
    std::vector<std::vector<double>> item(K, std::vector<double>(C));
    bool certain = false;  // some sample's top class within 1e-2 of 1 (1e-3 missed a K = 2, C = 104 item)
    for (int k = 0; k < K; ++k) {
      double z = 0;
      for (int c = 0; c < C; ++c) z += item[k][c] = std::exp(static_cast<double>(x[(static_cast<std::size_t>(i) * K + k) * C + c]));
      for (int c = 0; c < C; ++c) {
        if (kind == 2) item[k][c] /= z;
        certain |= item[k][c] > 1.0 - 1e-2;
      }
    }
    const auto r = ref::metrics(item);
    for (int m = 0; m < kNumMetrics; ++m) {
      INFO("item " << i << " metric " << metric_name(static_cast<Metric>(m)) << " got " << store[m][i] << " want "
                   << r[m]);
      const double s_abs = std::isfinite(r[m]) ? std::fabs(r[m]) : 0.0;
      if (m == 9 && balentacq_at_pole(store[m][i], r[m])) continue;
      if (f32 && m == 9) {
        // From float32 logits the probabilities exist only rounded to float32 (by softmax, in any
        // implementation), and for a nearly certain sample 1 - p of its top class then carries a
        // relative error of up to ulp(1) / (1 - p), which BalEntAcq's Beta terms amplify: there, only
        // ask for a number (not NaN).
        if (certain) {
          CHECK(!std::isnan(store[m][i]));
        } else {
          // measured: 2.4e-5 relative at K = 2, C = 2; near the pole (MJEnt + H -> 0, s = 1/s' small) the
          // float32 rounding of the denominator gives up to ~3e-3 *relative* error (s = -0.0425 against
          // -0.0424 in CI): a relative 5e-3 is accepted too — never a sign flip
          CHECK((close(store[m][i], r[m], 1e-4 + 1e-5 * s_abs) || std::fabs(store[m][i] - r[m]) <= 5e-3 * s_abs));
        }
        continue;
      }
      INFO("relative difference " << std::fabs(store[m][i] - r[m]) / (1.0 + std::fabs(r[m])));
      // float64: BalEntAcq near its pole amplifies the last-bit differences of exp / log.
      const double t = f32 ? 2e-4 : 1e-9;
      CHECK(close(store[m][i], r[m], m == 9 ? t + 1e-12 * s_abs : t));
    }
  }
  return store;
}

/// The pool scored (all ten metrics) in three layouts: [N, K, C] into a, [K, C, N] (items innermost)
/// into b and BaaL's [N, C, K] with a stride-2 sample axis into c2. Returns the [N, K, C] values.
template <typename T>
std::vector<T> score_three_layouts(const Pool& P, int N, int K, int C, std::vector<std::vector<double>>& a,
                                   std::vector<std::vector<double>>& b, std::vector<std::vector<double>>& c2) {
  const std::size_t n = static_cast<std::size_t>(N) * K * C;
  std::vector<T> nkc(n), kcn(n), ncpk(2 * n);
  for (int i = 0; i < N; ++i)
    for (int k = 0; k < K; ++k)
      for (int c = 0; c < C; ++c) {
        const T v = static_cast<T>(P.p[i][k][c]);
        nkc[(static_cast<std::size_t>(i) * K + k) * C + c] = v;
        kcn[(static_cast<std::size_t>(k) * C + c) * N + i] = v;
        ncpk[((static_cast<std::size_t>(i) * C + c) * K + k) * 2] = v;
      }
  auto oa = all_outputs(a, N, true), ob = all_outputs(b, N, true), oc = all_outputs(c2, N, true);
  score(TensorView::of(nkc.data(), {N, K, C}), oa);
  ScoreOptions o1;
  o1.sample_axis = 0;
  o1.class_axis = 1;
  score(TensorView::of(kcn.data(), {K, C, N}), ob, o1);
  ScoreOptions o2;
  o2.sample_axis = -1;
  o2.class_axis = 1;
  score(TensorView::of(ncpk.data(), {N, C, K}, {std::int64_t(C) * K * 2, std::int64_t(K) * 2, 2}), oc, o2);
  return nkc;
}

}  // namespace

TEMPLATE_TEST_CASE("all metrics match the float64 reference for every input kind", "[uncertainty]", float, double) {
  const std::uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const int N = 300, K = 7, C = 5;
  Pool P = make_pool(rng, N, K, C);
  const double tol = std::is_same<TestType, float>::value ? 2e-4 : 1e-9;
  for (int kind = 0; kind < 3; ++kind) {
    INFO("input kind " << kind);
    std::vector<TestType> x(static_cast<std::size_t>(N) * K * C);
    std::normal_distribution<double> shift(0.0, 3.0);
    for (int i = 0; i < N; ++i)
      for (int k = 0; k < K; ++k) {
        const double offset = shift(rng);  // logits are only defined up to a constant
        for (int c = 0; c < C; ++c) {
          const double p = P.p[i][k][c];
          double v = p;
          if (kind == 1) v = std::log(p);
          if (kind == 2) v = std::log(p) + offset;
          x[(static_cast<std::size_t>(i) * K + k) * C + c] = static_cast<TestType>(v);
        }
      }
    std::vector<std::vector<double>> store;
    auto outs = all_outputs(store, N, true);
    ScoreOptions opt;
    opt.input = static_cast<InputKind>(kind);
    score(TensorView::of(x.data(), {N, K, C}), outs, opt);
    for (int i = 0; i < N; ++i) {
      // The reference sees exactly the probabilities the kernel sees (after the cast).
      std::vector<std::vector<double>> item(K, std::vector<double>(C));
      for (int k = 0; k < K; ++k) {
        double z = 0;
        for (int c = 0; c < C; ++c) {
          const double v = x[(static_cast<std::size_t>(i) * K + k) * C + c];
          item[k][c] = kind == 0 ? v : std::exp(v);
          z += item[k][c];
        }
        if (kind == 2)
          for (int c = 0; c < C; ++c) item[k][c] /= z;
      }
      const auto r = ref::metrics(item);
      for (int m = 0; m < kNumMetrics; ++m) {
        INFO("item " << i << " metric " << metric_name(static_cast<Metric>(m)) << " got " << store[m][i]
                     << " want " << r[m]);
        // BalEntAcq's s = (H + ln 2) / (MJEnt + H) is ill-conditioned where the denominator nears 0:
        // a relative error e of the float32 probabilities moves s by about e·s²/(H + ln 2), so the
        // float32 tolerance grows with |s| (docs/metrics.md).
        const double s_abs = std::isfinite(r[m]) ? std::fabs(r[m]) : 0.0;
        const double t = (m == 9 && std::is_same<TestType, float>::value) ? 3e-3 + 2e-6 * s_abs : tol;
        CHECK((close(store[m][i], r[m], t) || (m == 9 && balentacq_at_pole(store[m][i], r[m]))));
      }
    }
  }
}

TEST_CASE("strided and permuted layouts equal the contiguous one", "[uncertainty]") {
  const std::uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const int N = 64, K = 5, C = 4;
  Pool P = make_pool(rng, N, K, C);
  std::vector<std::vector<double>> a, b, c2;
  const std::vector<double> nkc = score_three_layouts<double>(P, N, K, C, a, b, c2);
  // Every layout is gathered into the same contiguous block first: the same bits.
  for (int m = 0; m < kNumMetrics; ++m)
    for (int i = 0; i < N; ++i) {
      INFO(metric_name(static_cast<Metric>(m)) << " item " << i);
      CHECK(a[m][i] == b[m][i]);
      CHECK(a[m][i] == c2[m][i]);
    }

  // A strided output (every third element) gets the same numbers.
  std::vector<double> wide(3 * N, -1.0);
  bald(TensorView::of(nkc.data(), {N, K, C}), TensorView::of(wide.data(), {N}, {3}));
  for (int i = 0; i < N; ++i) CHECK(wide[3 * i] == a[2][i]);  // same input layout: bit for bit
}

TEST_CASE("segmentation maps equal per-pixel classification", "[uncertainty]") {
  const std::uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const int B = 2, K = 4, C = 3, D = 3, H = 5, W = 6;
  const int V = D * H * W;
  Pool P = make_pool(rng, B * V, K, C);
  std::vector<float> vol(static_cast<std::size_t>(B) * K * C * V), flat(static_cast<std::size_t>(B) * V * K * C);
  for (int b = 0; b < B; ++b)
    for (int v = 0; v < V; ++v)
      for (int k = 0; k < K; ++k)
        for (int c = 0; c < C; ++c) {
          const float p = static_cast<float>(P.p[b * V + v][k][c]);
          vol[((static_cast<std::size_t>(b) * K + k) * C + c) * V + v] = p;
          flat[((static_cast<std::size_t>(b) * V + v) * K + k) * C + c] = p;
        }
  for (int m = 0; m < kNumMetrics; ++m) {
    std::vector<float> map(B * V), per_pixel(B * V);
    const Metric metric = static_cast<Metric>(m);
    score(TensorView::of(vol.data(), {B, K, C, D, H, W}), {{metric, TensorView::of(map.data(), {B, D, H, W})}});
    score(TensorView::of(flat.data(), {B * V, K, C}), {{metric, TensorView::of(per_pixel.data(), {B * V})}});
    for (int i = 0; i < B * V; ++i) {
      INFO(metric_name(metric) << " voxel " << i << ": " << map[i] << " vs " << per_pixel[i]);
      CHECK(close(map[i], per_pixel[i], 2e-5));
    }
  }
}

TEST_CASE("single predictions (no sample axis)", "[uncertainty]") {
  std::vector<double> x = {0.7, 0.2, 0.1, 0.5, 0.5, 0.0};
  std::vector<double> pe(2), mg(2), lc(2), ra(2);
  ScoreOptions opt;
  opt.sample_axis = std::nullopt;
  opt.class_axis = 1;
  score(TensorView::of(x.data(), {2, 3}),
        {{Metric::PredictiveEntropy, TensorView::of(pe.data(), {2})},
         {Metric::Margin, TensorView::of(mg.data(), {2})},
         {Metric::LeastConfidence, TensorView::of(lc.data(), {2})},
         {Metric::Ratio, TensorView::of(ra.data(), {2})}},
        opt);
  CHECK(pe[0] == Approx(-(0.7 * std::log(0.7) + 0.2 * std::log(0.2) + 0.1 * std::log(0.1))));
  CHECK(pe[1] == Approx(std::log(2.0)));
  CHECK(mg[0] == Approx(0.5));
  CHECK(mg[1] == Approx(1.0));
  CHECK(lc[0] == Approx(0.3));
  CHECK(ra[1] == Approx(1.0));
  // class_axis left unset: 1 without a sample axis (2 with one)
  ScoreOptions dflt;
  dflt.sample_axis = std::nullopt;
  std::vector<double> pe2(2);
  predictive_entropy(TensorView::of(x.data(), {2, 3}), TensorView::of(pe2.data(), {2}), dflt);
  CHECK(pe2 == pe);
  std::vector<double> out(2);
  CHECK_THROWS_WITH(bald(TensorView::of(x.data(), {2, 3}), TensorView::of(out.data(), {2}), opt),
                    Catch::Contains("no sample axis"));
  // [N, C] with the default axes of [N, K, C]: the message says how to pass single predictions
  CHECK_THROWS_WITH(predictive_entropy(TensorView::of(x.data(), {2, 3}), TensorView::of(out.data(), {2})),
                    Catch::Contains("has no axis 2 for the default class axis") &&
                        Catch::Contains("pass no sample axis (Python: sample_axis=None)"));
}

TEST_CASE("exact zeros and one-hot samples give the limit values, never NaN", "[uncertainty]") {
  // K = 3 identical one-hot samples, and a mix with exact zeros.
  std::vector<double> x = {1, 0, 0, 1, 0, 0, 1, 0, 0,   // certain
                           0.5, 0.5, 0, 0, 1, 0, 1, 0, 0};
  std::vector<std::vector<double>> store;
  auto outs = all_outputs(store, 2, true);
  score(TensorView::of(x.data(), {2, 3, 3}), outs);
  for (int m = 0; m < kNumMetrics; ++m) {
    INFO(metric_name(static_cast<Metric>(m)));
    CHECK(!std::isnan(store[m][0]));
    CHECK(std::isfinite(store[m][1]));
  }
  CHECK(store[0][0] == 0.0);  // predictive entropy of a certain item
  CHECK(store[2][0] == 0.0);  // BALD
  CHECK(store[6][0] == 0.0);  // variation ratio
  // All-certain item: the reference yields NaN and ranks it last with a sentinel; we give -inf.
  CHECK(std::isinf(store[9][0]));
  CHECK(store[9][0] < 0);
}

TEST_CASE("results do not depend on the thread count", "[uncertainty]") {
  const std::uint64_t seed = fresh_seed();
  std::mt19937_64 rng(seed);
  const int N = 5000, K = 4, C = 6;
  std::vector<float> x;
  for (int i = 0; i < N * K; ++i)
    for (double v : ref::random_probs(rng, C, 0)) x.push_back(static_cast<float>(v));
  std::vector<std::vector<double>> a, b;
  auto oa = all_outputs(a, N, true), ob = all_outputs(b, N, true);
  set_num_threads(1);
  score(TensorView::of(x.data(), {N, K, C}), oa);
  set_num_threads(7);
  score(TensorView::of(x.data(), {N, K, C}), ob);
  set_num_threads(0);
  CHECK(a == b);
}

TEST_CASE("bad input gets a clear error naming the argument", "[uncertainty][errors]") {
  std::vector<float> x(2 * 3 * 4, 0.25f);
  std::vector<float> out(2);
  const TensorView xv = TensorView::of(x.data(), {2, 3, 4});
  const TensorView ov = TensorView::of(out.data(), {2});
  SECTION("NaN") {
    x[13] = NAN;
    CHECK_THROWS_WITH(bald(xv, ov), Catch::Contains("item [1]") && Catch::Contains("NaN"));
  }
  SECTION("Inf") {
    x[0] = INFINITY;
    CHECK_THROWS_WITH(bald(xv, ov), Catch::Contains("item [0]") && Catch::Contains("Inf"));
  }
  SECTION("negative probability") {
    x[5] = -0.25f;
    x[6] = 0.75f;
    CHECK_THROWS_WITH(bald(xv, ov), Catch::Contains("negative probability"));
  }
  SECTION("unnormalised probabilities") {
    x[20] = 0.3f;
    CHECK_THROWS_WITH(bald(xv, ov), Catch::Contains("do not sum to 1"));
  }
  SECTION("unnormalised log-probabilities") {
    ScoreOptions o;
    o.input = InputKind::LogProbabilities;
    CHECK_THROWS_WITH(bald(xv, ov, o), Catch::Contains("log-probabilities that do not sum to 1"));
  }
  SECTION("logits all -inf") {
    ScoreOptions o;
    o.input = InputKind::Logits;
    for (int c = 0; c < 4; ++c) x[4 + c] = -INFINITY;
    CHECK_THROWS_WITH(bald(xv, ov, o), Catch::Contains("all -inf"));
  }
  SECTION("wrong rank") {
    CHECK_THROWS_WITH(bald(TensorView::of(x.data(), {24}), ov), Catch::Contains("expected rank >= 2"));
  }
  SECTION("K < 2") {
    CHECK_THROWS_WITH(bald(TensorView::of(x.data(), {6, 1, 4}), TensorView::of(out.data(), {6})),
                      Catch::Contains("at least 2 samples"));
  }
  SECTION("C < 2") {
    std::vector<float> ones(6, 1.0f);
    CHECK_THROWS_WITH(predictive_entropy(TensorView::of(ones.data(), {2, 3, 1}), ov),
                      Catch::Contains("at least 2 classes"));
  }
  SECTION("empty") {
    CHECK_THROWS_WITH(bald(TensorView::of(x.data(), {0, 3, 4}), TensorView::of(out.data(), {0})),
                      Catch::Contains("empty"));
  }
  SECTION("axes") {
    ScoreOptions o;
    o.sample_axis = 2;
    o.class_axis = -1;
    CHECK_THROWS_WITH(bald(xv, ov, o), Catch::Contains("both name axis 2"));
    o.class_axis = 5;
    CHECK_THROWS_WITH(bald(xv, ov, o), Catch::Contains("out of range"));
  }
  SECTION("output shape") {
    CHECK_THROWS_WITH(bald(xv, TensorView::of(out.data(), {1})), Catch::Contains("expected [2]"));
  }
  SECTION("dtype") {
    std::vector<std::int32_t> xi(24, 0);
    try {
      bald(TensorView::of(xi.data(), {2, 3, 4}), ov);
      FAIL("no error");
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::Type);
      CHECK_THAT(e.what(), Catch::Contains("int32"));
    }
  }
  SECTION("mismatched devices") {
    TensorView cuda_out = ov;
    cuda_out.device = Device::cuda(0);
    CHECK_THROWS_WITH(bald(xv, cuda_out), Catch::Contains("output is on cuda:0 but x is on cpu"));
  }
  SECTION("duplicate metric") {
    CHECK_THROWS_WITH(score(xv, {{Metric::Bald, ov}, {Metric::Bald, ov}}), Catch::Contains("requested twice"));
  }
  SECTION("sizes that overflow") {
    const std::int64_t big = std::int64_t(1) << 40;
    CHECK_THROWS_WITH(bald(TensorView::of(x.data(), {big, big, 4}), ov), Catch::Contains("int64"));
  }
  SECTION("unknown metric name") {
    CHECK_THROWS_WITH(metric_from_name("entropy"), Catch::Contains("predictive_entropy"));
  }
  SECTION("input kind names round-trip; an unknown one names the argument") {
    for (InputKind k : {InputKind::Probabilities, InputKind::LogProbabilities, InputKind::Logits})
      CHECK(input_kind_from_name(input_kind_name(k)) == k);
    CHECK(std::string(input_kind_name(InputKind::LogProbabilities)) == "log_probs");
    CHECK_THROWS_WITH(input_kind_from_name("probabilities"), Catch::Contains("input: expected 'probs'"));
  }
  SECTION("CUDA input") {
    TensorView xc = xv, oc = ov;
    xc.device = oc.device = Device::cuda(0);
    if (!built_with_cuda()) CHECK_THROWS_WITH(bald(xc, oc), Catch::Contains("built without CUDA"));
  }
}

TEST_CASE("class counts around the vector width, many samples, and the first bad item", "[uncertainty]") {
  // The CPU takes a blocked path (blocks of up to 32 items, rows read in chunks of 16 lanes — one
  // chunk for C <= 16, several with row totals and arg-maxes carried across them otherwise — the last
  // item of the view from a padded copy): against the float64 reference, N not a multiple of the block,
  // C around one and several chunks, and many classes (fewer items per block).
  const std::uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const int N = 77;
  for (int K : {2, 20}) {
    for (int C : {2, 10, 16, 17, 31, 32, 33, 104, 1000}) {
      INFO("K " << K << " C " << C);
      Pool P = make_pool(rng, N, K, C);
      std::vector<float> x(static_cast<std::size_t>(N) * K * C);
      for (int i = 0; i < N; ++i)
        for (int k = 0; k < K; ++k)
          for (int c = 0; c < C; ++c) x[(static_cast<std::size_t>(i) * K + k) * C + c] = static_cast<float>(P.p[i][k][c]);
      std::vector<std::vector<double>> store;
      auto outs = all_outputs(store, N, true);
      score(TensorView::of(x.data(), {N, K, C}), outs);
      for (int i = 0; i < N; ++i) {
        const auto r = ref::metrics(item_rows(x, i, K, C));
        for (int m = 0; m < kNumMetrics; ++m) {
          INFO("item " << i << " metric " << metric_name(static_cast<Metric>(m)) << " got " << store[m][i] << " want "
                       << r[m]);
          const double s_abs = std::isfinite(r[m]) ? std::fabs(r[m]) : 0.0;
          CHECK(close(store[m][i], r[m], m == 9 ? 3e-3 + 2e-6 * s_abs : 2e-4));
        }
      }
      // The error names the lowest bad item, whichever thread and block it falls in.
      for (int threads : {1, 2, 3}) {
        set_num_threads(threads);
        std::vector<float> y = x;
        y[(static_cast<std::size_t>(70) * K + K - 1) * C + C - 1] = NAN;  // last row, last class of item 70
        y[(static_cast<std::size_t>(45) * K + 1) * C] += 0.01f;           // item 45 unnormalised
        std::vector<float> out(N);
        CHECK_THROWS_WITH(bald(TensorView::of(y.data(), {N, K, C}), TensorView::of(out.data(), {N})),
                          Catch::Contains("item [45]") && Catch::Contains("do not sum to 1"));
        y[(static_cast<std::size_t>(45) * K + 1) * C] -= 0.01f;
        CHECK_THROWS_WITH(bald(TensorView::of(y.data(), {N, K, C}), TensorView::of(out.data(), {N})),
                          Catch::Contains("item [70]") && Catch::Contains("NaN"));
        y[(static_cast<std::size_t>(70) * K + K - 1) * C + C - 1] = x[(static_cast<std::size_t>(70) * K + K - 1) * C + C - 1];
        y[(static_cast<std::size_t>(76) * K) * C + 1] = -1e-3f;  // the last item (read from a padded copy)
        CHECK_THROWS_WITH(bald(TensorView::of(y.data(), {N, K, C}), TensorView::of(out.data(), {N})),
                          Catch::Contains("item [76]") && Catch::Contains("negative probability"));
      }
      set_num_threads(0);
    }
  }
}

TEMPLATE_TEST_CASE("logits and log-probabilities around the vector width, and their errors", "[uncertainty]", float,
                   double) {
  // The CPU turns logits / log-probabilities into probabilities row by row (block path; one chunk of
  // 16 lanes for C <= 16, several otherwise): against the float64 reference, N not a multiple of the
  // block, exact zeros as -inf, logits shifted by a random constant per sample.
  const std::uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> shift(0.0, 3.0);
  const int N = 77;
  for (int kind : {1, 2}) {
    for (int K : {2, 20}) {
      for (int C : {2, 10, 16, 17, 33, 104, 1000}) {
        INFO("input kind " << kind << " K " << K << " C " << C);
        Pool P = make_pool(rng, N, K, C);
        std::vector<TestType> x(static_cast<std::size_t>(N) * K * C);
        for (int i = 0; i < N; ++i)
          for (int k = 0; k < K; ++k) {
            const double offset = kind == 2 ? shift(rng) : 0.0;
            for (int c = 0; c < C; ++c)
              x[(static_cast<std::size_t>(i) * K + k) * C + c] = static_cast<TestType>(std::log(P.p[i][k][c]) + offset);
          }
        const std::vector<std::vector<double>> store = score_logs_against_reference(x, N, K, C, kind);
        ScoreOptions opt;
        opt.input = static_cast<InputKind>(kind);
        // The error names the lowest bad item, whichever thread and block it falls in; NaN / +Inf
        // anywhere in an item come before its other faults; otherwise the first bad sample counts.
        const auto at = [&](int i, int k, int c) -> TestType& { return x[(static_cast<std::size_t>(i) * K + k) * C + c]; };
        for (int threads : {1, 2, 3}) {
          set_num_threads(threads);
          std::vector<float> out(N);
          const TensorView ov = TensorView::of(out.data(), {N});
          std::vector<TestType> y = x;
          const TensorView yv = TensorView::of(y.data(), {N, K, C});
          y[(static_cast<std::size_t>(70) * K + K - 1) * C + C - 1] = NAN;  // last row, last class of item 70
          for (int c = 0; c < C; ++c) y[(static_cast<std::size_t>(45) * K + K - 1) * C + c] = -INFINITY;  // item 45
          CHECK_THROWS_WITH(bald(yv, ov, opt), Catch::Contains("item [45]") && Catch::Contains("all -inf"));
          y[(static_cast<std::size_t>(45) * K) * C] = NAN;  // NaN in an earlier sample of the same item
          CHECK_THROWS_WITH(bald(yv, ov, opt), Catch::Contains("item [45]") && Catch::Contains("NaN or Inf"));
          y[(static_cast<std::size_t>(45) * K) * C] = INFINITY;
          CHECK_THROWS_WITH(bald(yv, ov, opt), Catch::Contains("item [45]") && Catch::Contains("NaN or Inf"));
          for (int k = 0; k < K; ++k)
            for (int c = 0; c < C; ++c) y[(static_cast<std::size_t>(45) * K + k) * C + c] = at(45, k, c);
          CHECK_THROWS_WITH(bald(yv, ov, opt), Catch::Contains("item [70]") && Catch::Contains("NaN or Inf"));
          y[(static_cast<std::size_t>(70) * K + K - 1) * C + C - 1] = at(70, K - 1, C - 1);
          // The last item (read from a padded copy): one sample all -inf.
          for (int c = 0; c < C; ++c) y[(static_cast<std::size_t>(76) * K + K - 1) * C + c] = -INFINITY;
          CHECK_THROWS_WITH(bald(yv, ov, opt), Catch::Contains("item [76]") && Catch::Contains("all -inf"));
          if (kind == 1) {
            // Unnormalised log-probabilities in an earlier sample than the all -inf one.
            for (int c = 0; c < C; ++c) y[(static_cast<std::size_t>(76) * K) * C + c] += static_cast<TestType>(0.01);
            CHECK_THROWS_WITH(bald(yv, ov, opt),
                              Catch::Contains("item [76]") && Catch::Contains("log-probabilities that do not sum to 1"));
            for (int c = 0; c < C; ++c) y[(static_cast<std::size_t>(12) * K + K / 2) * C + c] += static_cast<TestType>(0.01);
            CHECK_THROWS_WITH(bald(yv, ov, opt),
                              Catch::Contains("item [12]") && Catch::Contains("log-probabilities that do not sum to 1"));
          } else {
            // Logits need no normalisation: any constant shift is fine.
            for (int k = 0; k < K; ++k)
              for (int c = 0; c < C; ++c) y[(static_cast<std::size_t>(76) * K + k) * C + c] = at(76, k, c) + static_cast<TestType>(40);
            std::vector<float> o2(N);
            bald(yv, TensorView::of(o2.data(), {N}), opt);
            CHECK(std::fabs(o2[76] - store[2][76]) <= 1e-4 * (1.0 + std::fabs(store[2][76])));
          }
        }
        set_num_threads(0);
      }
    }
  }
}

TEMPLATE_TEST_CASE("masked classes (-inf logits / log-probabilities) count as probability 0", "[uncertainty]", float,
                   double) {
  // A -inf entry is a class of probability 0: it must count 0 · ln 0 = 0 in the entropies (not NaN)
  // and 0 in every other statistic, for one chunk of 16 lanes and several. About a third of the
  // classes of every sample masked, one class of each sample kept.
  const std::uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> shift(0.0, 3.0);
  std::bernoulli_distribution masked(0.35);
  const int N = 23, K = 6;
  for (int kind : {1, 2}) {
    for (int C : {3, 10, 16, 17, 40, 1000}) {
      INFO("input kind " << kind << " C " << C);
      Pool P = make_pool(rng, N, K, C);
      std::uniform_int_distribution<int> pick(0, C - 1);
      std::vector<TestType> x(static_cast<std::size_t>(N) * K * C);
      for (int i = 0; i < N; ++i)
        for (int k = 0; k < K; ++k) {
          std::vector<double>& q = P.p[i][k];
          const int keep = pick(rng);
          double s = 0;
          for (int c = 0; c < C; ++c) {
            if (c != keep && masked(rng)) q[c] = 0.0;
            s += q[c];
          }
          const double offset = kind == 2 ? shift(rng) : 0.0;
          for (int c = 0; c < C; ++c)
            x[(static_cast<std::size_t>(i) * K + k) * C + c] =
                q[c] > 0.0 ? static_cast<TestType>(std::log(q[c] / s) + offset) : -std::numeric_limits<TestType>::infinity();
        }
      score_logs_against_reference(x, N, K, C, kind);
    }
  }
}

TEMPLATE_TEST_CASE("many classes: every layout against the reference, bit for bit alike", "[uncertainty]", float,
                   double) {
  // C > 16 takes the block path in chunks of 16 classes: [N, K, C], [K, C, N] (items innermost) and
  // BaaL's [N, C, K] with a stride-2 sample axis are gathered into the same contiguous block, so they
  // agree exactly, and with the float64 reference; near-one-hot, uniform and tiny-probability items
  // (make_pool's characters) included.
  const std::uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const bool f32 = std::is_same<TestType, float>::value;
  for (int C : {24, 40, 104, 1000}) {
    const int N = C >= 1000 ? 37 : 101, K = 6;
    INFO("C " << C);
    Pool P = make_pool(rng, N, K, C);
    std::vector<std::vector<double>> a, b, c2;
    const std::vector<TestType> nkc = score_three_layouts<TestType>(P, N, K, C, a, b, c2);
    for (int i = 0; i < N; ++i) {
      std::vector<std::vector<double>> item(K, std::vector<double>(C));
      for (int k = 0; k < K; ++k)
        for (int c = 0; c < C; ++c) item[k][c] = nkc[(static_cast<std::size_t>(i) * K + k) * C + c];
      const auto r = ref::metrics(item);
      for (int m = 0; m < kNumMetrics; ++m) {
        INFO("item " << i << " metric " << metric_name(static_cast<Metric>(m)) << " got " << a[m][i] << " want "
                     << r[m]);
        const double s_abs = std::isfinite(r[m]) ? std::fabs(r[m]) : 0.0;
        const double t = m == 9 ? (f32 ? 3e-3 + 2e-6 * s_abs : 1e-9 + 1e-12 * s_abs) : (f32 ? 2e-4 : 1e-9);
        CHECK((close(a[m][i], r[m], t) || (m == 9 && balentacq_at_pole(a[m][i], r[m]))));
        CHECK(b[m][i] == a[m][i]);
        CHECK(c2[m][i] == a[m][i]);
      }
    }
  }
}

TEST_CASE("arg-max ties go to the lower class, within and across class chunks", "[uncertainty]") {
  // Variation ratio counts each sample's arg-max, ties to the lower class. With C = 40 (three chunks of
  // 16 lanes) classes 5, 21 and 37 share a lane: samples 0-1 tie 5 with 21, samples 2-3 have 21 alone
  // on top, so the votes are 5, 5, 21, 21 (mode 2, VR 0.5); ties to the higher class would give VR 0.
  // Item 1 ties classes 3 and 30 (other lanes, other chunks) the same way. With C = 10 (one chunk;
  // float32 probabilities count the votes of tied lanes first, then recount) classes 2 / 7 and 1 / 8:
  // counting a tie in both classes would give class 7 four votes (VR 0).
  const int K = 4;
  for (const int C : {40, 10})
  for (int kind : {0, 1, 2}) {
    INFO("C " << C << " input kind " << kind);
    const int lo0 = C == 40 ? 5 : 2, hi0 = C == 40 ? 21 : 7, lo1 = C == 40 ? 3 : 1, hi1 = C == 40 ? 30 : 8;
    std::vector<float> x(2 * K * C);
    const auto row = [&](int i, int k, int lo_cls, int hi_cls, bool tie) {
      float* r = x.data() + (static_cast<std::size_t>(i) * K + k) * C;
      for (int c = 0; c < C; ++c) r[c] = 0.01f;
      r[hi_cls] = 0.2f;
      r[lo_cls] = tie ? 0.2f : 0.1f;
      float z = 0;
      for (int c = 0; c < C; ++c) z += r[c];
      for (int c = 0; c < C; ++c) r[c] = kind == 0 ? r[c] / z : std::log(r[c] / z);
    };
    for (int k = 0; k < K; ++k) {
      row(0, k, lo0, hi0, k < 2);
      row(1, k, lo1, hi1, k < 2);
    }
    ScoreOptions opt;
    opt.input = static_cast<InputKind>(kind);
    std::vector<float> vr(2);
    variation_ratio(TensorView::of(x.data(), {2, K, C}), TensorView::of(vr.data(), {2}), opt);
    CHECK(vr[0] == 0.5f);
    CHECK(vr[1] == 0.5f);
  }
}

// Each single-metric entry point computes its own metric (a swapped dispatch would pass every test
// that goes through score()).
TEST_CASE("single-metric functions equal their score() entry", "[uncertainty]") {
  std::mt19937_64 rng(fresh_seed());
  const int N = 64, K = 6, C = 5;
  std::vector<double> x;
  for (int i = 0; i < N * K; ++i) {
    const std::vector<double> q = ref::random_probs(rng, C, i % 4);
    x.insert(x.end(), q.begin(), q.end());
  }
  const TensorView xv = TensorView::of(x.data(), {N, K, C});
  using Fn = void (*)(const TensorView&, const TensorView&, const ScoreOptions&);
  const std::pair<Metric, Fn> fns[] = {
      {Metric::PredictiveEntropy, predictive_entropy}, {Metric::ExpectedEntropy, expected_entropy},
      {Metric::Bald, bald},                             {Metric::LeastConfidence, least_confidence},
      {Metric::Margin, margin},                         {Metric::Ratio, ratio},
      {Metric::VariationRatio, variation_ratio},        {Metric::MaxMeanVariationRatio, max_mean_variation_ratio},
      {Metric::MeanStd, mean_std},                      {Metric::BalEntAcq, balentacq}};
  std::vector<std::vector<double>> outs(kNumMetrics, std::vector<double>(N));
  for (const auto& [m, fn] : fns) fn(xv, TensorView::of(outs[static_cast<int>(m)].data(), {N}), ScoreOptions{});
  for (int i = 0; i < N; ++i) {
    const auto r = ref::metrics(item_rows(x, i, K, C));
    for (int m = 0; m < kNumMetrics; ++m) {
      INFO("item " << i << " metric " << metric_name(static_cast<Metric>(m)));
      if (m == 9 && balentacq_at_pole(outs[m][i], r[m])) continue;
      CHECK(close(outs[m][i], r[m], m == 9 ? 1e-9 + 1e-12 * std::fabs(r[m]) : 1e-12));
    }
  }
}

TEST_CASE("float32 expected entropy and BALD stay accurate at thousands of classes", "[uncertainty]") {
  // The samples' Σ p ln p over K·C float32 values: summed in float32 lanes throughout, the relative
  // error grew to 1.5e-5 at C = 10^4 (skewed rows), swamping small BALD values. Against the float64
  // reference of the same (float32) values.
  const std::uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  std::gamma_distribution<double> skew(0.05), flat(50.0);
  for (int C : {2000, 10000}) {
    const int N = 4, K = 6;
    std::vector<float> x(static_cast<std::size_t>(N) * K * C);
    for (int i = 0; i < N; ++i)
      for (int k = 0; k < K; ++k) {
        float* row = &x[(static_cast<std::size_t>(i) * K + k) * C];
        double z = 0;
        std::vector<double> q(C);
        for (int c = 0; c < C; ++c) z += (q[c] = (i % 2 ? flat(rng) : skew(rng)) + 1e-12);
        for (int c = 0; c < C; ++c) row[c] = static_cast<float>(q[c] / z);
      }
    std::vector<double> ee(N), bd(N);
    score(TensorView::of(x.data(), {N, K, C}),
          {{Metric::ExpectedEntropy, TensorView::of(ee.data(), {N})}, {Metric::Bald, TensorView::of(bd.data(), {N})}});
    for (int i = 0; i < N; ++i) {
      const auto r = ref::metrics(item_rows(x, i, K, C));  // float64 from the float32 values
      INFO("C " << C << " item " << i << " expected entropy " << ee[i] << " reference " << r[1] << " BALD " << bd[i]
                << " reference " << r[2]);
      CHECK(std::fabs(ee[i] - r[1]) <= 1e-6 * r[1]);
      CHECK(std::fabs(bd[i] - r[2]) <= 1e-6 * r[1]);
    }
  }
}
