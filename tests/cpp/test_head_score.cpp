// Fused head sample-and-score (labelwise/segmentation/head_score.hpp) against an independent float64
// reference written here (its own scalar Philox call per mask element, its own softmax) and against
// labelwise::score of head_sample's output. Built with -ffp-contract=off (tests/CMakeLists.txt) so that
// the reference's logits are rounded exactly as documented.
#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "labelwise/core/parallel.hpp"
#include "labelwise/detail/head_score_impl.hpp"
#include "labelwise/segmentation/head_score.hpp"
#include "labelwise/uncertainty/metrics.hpp"
#include "head_cpu_form.hpp"
#include "reference.hpp"
#include "test_seed.hpp"

using namespace labelwise;

namespace {

// ---- the reference ----------------------------------------------------------------------------------

/// Keep decision of one mask element, from the documented layout (u = word / 2^32 >= p).
bool keep_ref(std::uint64_t seed, double p, std::uint32_t b, std::uint32_t k, int f, std::uint32_t v) {
  const auto w = ref::philox4x32_10({v, static_cast<std::uint32_t>(f / 4), (3u << 16) | k, b}, static_cast<std::uint32_t>(seed),
                            static_cast<std::uint32_t>(seed >> 32));
  return static_cast<double>(w[f % 4]) / 4294967296.0 >= p;
}

/// A head: weight [M, C, F], bias [M, C] (float64, contiguous).
struct Head {
  int M, C, F;
  std::vector<double> w, bias;
  Head(int M_, int C_, int F_, std::mt19937_64& rng) : M(M_), C(C_), F(F_), w(M_ * C_ * F_), bias(M_ * C_) {
    std::normal_distribution<double> n(0.0, 0.7);
    for (double& v : w) v = n(rng);
    for (double& v : bias) v = n(rng);
  }
  TensorView wv() const { return TensorView::of(w.data(), {M, C, F}); }
  TensorView bv() const { return TensorView::of(bias.data(), {M, C}); }
};

/// Features of a voxel grid, values x[b][f][v] (double), stored as T in either [B, F, V] or
/// channels-last [B, V, F] order (then viewed as [B, F, *spatial] through strides).
template <typename T>
struct Features {
  int B, F;
  std::vector<std::int64_t> spatial;
  std::int64_t V;
  bool channels_last;
  std::vector<T> data;
  Features(int B_, int F_, std::vector<std::int64_t> sp, bool last, std::mt19937_64& rng)
      : B(B_), F(F_), spatial(sp), V(std::accumulate(sp.begin(), sp.end(), std::int64_t(1), std::multiplies<>())),
        channels_last(last), data(static_cast<std::size_t>(B_) * F_ * V) {
    std::normal_distribution<double> n(0.0, 1.0);
    for (T& v : data) v = static_cast<T>(n(rng));
  }
  std::size_t index(int b, int f, std::int64_t v) const {
    return channels_last ? (static_cast<std::size_t>(b) * V + v) * F + f : (static_cast<std::size_t>(b) * F + f) * V + v;
  }
  double at(int b, int f, std::int64_t v) const { return static_cast<double>(data[index(b, f, v)]); }
  TensorView view() const {
    std::vector<std::int64_t> shape{B, F};
    shape.insert(shape.end(), spatial.begin(), spatial.end());
    return TensorView::of(data.data(), shape, ref::feature_strides(F, spatial, channels_last));
  }
};

/// Reference probabilities [B, K, C, V] (float32) of the documented arithmetic.
template <typename T>
std::vector<float> reference_samples(const Features<T>& x, const Head& h, int K, double p, std::uint64_t seed,
                                     std::uint32_t offset = 0) {
  std::vector<float> out(static_cast<std::size_t>(x.B) * K * h.C * x.V);
  const double s = 1.0 / (1.0 - p);
  std::vector<double> z(h.C);
  for (int b = 0; b < x.B; ++b)
    for (int k = 0; k < K; ++k)
      for (std::int64_t v = 0; v < x.V; ++v) {
        const int m = h.M > 1 ? k : 0;
        for (int c = 0; c < h.C; ++c) {
          double acc = h.bias[m * h.C + c];
          for (int f = 0; f < h.F; ++f) {
            const bool kept = p == 0.0 || keep_ref(seed, p, offset + b, k, f, static_cast<std::uint32_t>(v));
            const double d = kept ? x.at(b, f, v) * s : 0.0;
            acc = acc + h.w[(m * h.C + c) * h.F + f] * d;
          }
          z[c] = acc;
        }
        double mx = z[0];
        for (int c = 1; c < h.C; ++c) mx = std::max(mx, z[c]);
        double sum = 0;
        for (int c = 0; c < h.C; ++c) sum += std::exp(z[c] - mx);
        for (int c = 0; c < h.C; ++c)
          out[((static_cast<std::size_t>(b) * K + k) * h.C + c) * x.V + v] = static_cast<float>(std::exp(z[c] - mx) / sum);
      }
  return out;
}

std::vector<std::int64_t> concat(std::vector<std::int64_t> a, const std::vector<std::int64_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

/// The kernel's exp (det_exp_nonpositive, the same bits on CPU and CUDA) and the reference's std::exp
/// may differ in the last float64 bit, which changes a float32 rounding of a probability about once in
/// 2^28 values: every value must be equal or one float32 ulp apart, and at most 1 in 10^4 may differ.
/// A wrong mask, order of operations or layout changes far more values by far more.
void expect_same_samples(const std::vector<float>& got, const std::vector<float>& want) {
  REQUIRE(got.size() == want.size());
  std::size_t differ = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (got[i] == want[i]) continue;
    ++differ;
    INFO("value " << i << ": " << got[i] << " vs " << want[i]);
    CHECK((got[i] == std::nextafter(want[i], 2.0f) || got[i] == std::nextafter(want[i], -1.0f)));
  }
  CHECK(differ <= 1 + got.size() / 10000);
}

/// The HeadParams the backend builds for `h` and `opt` (src/head_score.cpp), with the weights packed
/// into `wt` ([M][F][Cp], zero padding) and the biases into `bias`.
labelwise::detail::HeadParams scalar_params(const Head& h, const HeadScoreOptions& opt, std::vector<double>& wt,
                                            std::vector<double>& bias) {
  labelwise::detail::HeadParams hp;
  hp.F = h.F;
  hp.C = h.C;
  hp.Cp = labelwise::detail::padded_classes(h.C);
  hp.K = static_cast<int>(opt.samples);
  hp.M = h.M;
  wt.assign(static_cast<std::size_t>(h.M) * h.F * hp.Cp, 0.0);
  for (int m = 0; m < h.M; ++m)
    for (int c = 0; c < h.C; ++c)
      for (int f = 0; f < h.F; ++f)
        wt[(static_cast<std::size_t>(m) * h.F + f) * hp.Cp + c] = h.w[(static_cast<std::size_t>(m) * h.C + c) * h.F + f];
  bias = h.bias;
  hp.wt = wt.data();
  hp.bias = bias.data();
  hp.dropout = opt.dropout > 0.0;
  hp.keep_threshold = static_cast<std::uint32_t>(std::ceil(opt.dropout * 4294967296.0));
  hp.scale = 1.0 / (1.0 - opt.dropout);
  hp.key0 = static_cast<std::uint32_t>(opt.seed);
  hp.key1 = static_cast<std::uint32_t>(opt.seed >> 32);
  return hp;
}

/// head_sample's probabilities must be the bits of head_voxel_probs, the one-thread-per-voxel loop body
/// that the CUDA kernel runs (here on the host), voxel by voxel: the CPU restructures the arithmetic
/// (shared products, fused multiply-adds by exact 0 / 1 gates, vectorised exponentials) and must not
/// change a bit. Returns head_voxel_probs' status of the first voxel that is not kItemOk (0 if none).
template <typename T>
int expect_scalar_body_bits(const Features<T>& x, const Head& h, const HeadScoreOptions& opt,
                            const std::vector<float>& samples) {
  std::vector<double> wt, bias;
  const labelwise::detail::HeadParams hp = scalar_params(h, opt, wt, bias);
  const int K = hp.K;
  std::vector<double> xs(static_cast<std::size_t>(x.F)), z(static_cast<std::size_t>(h.C));
  std::vector<float> p(static_cast<std::size_t>(K) * h.C);
  std::size_t differ = 0;
  for (int b = 0; b < x.B; ++b)
    for (std::int64_t v = 0; v < x.V; ++v) {
      const T* xv = x.data.data() + x.index(b, 0, v);
      const std::int64_t fs = x.channels_last ? 1 : x.V;
      const int st = labelwise::detail::head_voxel_probs<T>(xv, fs, hp, static_cast<std::uint32_t>(v),
                                                            static_cast<std::uint32_t>(opt.index_offset + b), xs.data(),
                                                            z.data(), p.data(), 1);
      if (st != 0) return st;
      for (int k = 0; k < K; ++k)
        for (int c = 0; c < h.C; ++c) {
          const float got = samples[((static_cast<std::size_t>(b) * K + k) * h.C + c) * x.V + v];
          if (std::memcmp(&got, &p[static_cast<std::size_t>(k) * h.C + c], sizeof(float)) != 0) ++differ;
        }
    }
  CHECK(differ == 0);
  return 0;
}

const std::vector<Metric> kAll = {Metric::PredictiveEntropy, Metric::ExpectedEntropy, Metric::Bald,
                                  Metric::LeastConfidence,   Metric::Margin,          Metric::Ratio,
                                  Metric::VariationRatio,    Metric::MaxMeanVariationRatio, Metric::MeanStd,
                                  Metric::BalEntAcq};

/// head_score of all metrics (float64 outputs) + the mean, vs labelwise::score / mean of head_sample.
template <typename T>
void check_fused_equals_sample_then_score(const Features<T>& x, const Head& h, const HeadScoreOptions& opt) {
  const int K = static_cast<int>(opt.samples);
  const std::vector<std::int64_t> grid = concat({x.B}, x.spatial);
  const std::size_t n = static_cast<std::size_t>(x.B) * x.V;
  std::vector<float> samples(n * K * h.C);
  head_sample(x.view(), h.wv(), h.bv(), TensorView::of(samples.data(), concat({x.B, K, h.C}, x.spatial)), opt);
  // the samples equal the independent reference (up to exp's last bit, see expect_same_samples), and
  // every bit of the CUDA loop body run on the host
  expect_same_samples(samples, reference_samples(x, h, K, opt.dropout, opt.seed));
  CHECK(expect_scalar_body_bits(x, h, opt, samples) == 0);

  std::vector<std::vector<double>> fused(kAll.size(), std::vector<double>(n)), ref(kAll.size(), std::vector<double>(n));
  std::vector<MetricOutput> fo, ro;
  for (std::size_t i = 0; i < kAll.size(); ++i) {
    if (K < 2 && metric_needs_samples(kAll[i])) continue;
    fo.push_back({kAll[i], TensorView::of(fused[i].data(), grid)});
    ro.push_back({kAll[i], TensorView::of(ref[i].data(), grid)});
  }
  std::vector<float> mean(n * h.C);
  const TensorView mv = TensorView::of(mean.data(), concat({x.B, h.C}, x.spatial));
  head_score(x.view(), h.wv(), h.bv(), fo, &mv, opt);
  score(TensorView::of(samples.data(), concat({x.B, K, h.C}, x.spatial)), ro);
  for (std::size_t i = 0; i < ro.size(); ++i) {
    const int m = static_cast<int>(ro[i].metric);
    for (std::size_t j = 0; j < n; ++j) {
      INFO(metric_name(ro[i].metric) << " voxel " << j);
      // equal infinities (BalEntAcq of a certain voxel) match; inf - inf would be NaN
      CHECK((fused[m][j] == ref[m][j] || std::abs(fused[m][j] - ref[m][j]) <= 1e-6 * std::max(1.0, std::abs(ref[m][j]))));
    }
  }
  for (int b = 0; b < x.B; ++b)
    for (int c = 0; c < h.C; ++c)
      for (std::int64_t v = 0; v < x.V; ++v) {
        double acc = 0;
        for (int k = 0; k < K; ++k) acc += samples[((static_cast<std::size_t>(b) * K + k) * h.C + c) * x.V + v];
        CHECK(mean[(static_cast<std::size_t>(b) * h.C + c) * x.V + v] == static_cast<float>(acc / K));
      }
  // The samples are the same bits on every instruction set (the baseline and AVX2 builds, forced, against
  // the widest one the processor has); the metrics of the builds only agree to the last bits of the
  // vectorised sums (whose lane split also depends on the scratch's alignment).
  const char* old = std::getenv("LABELWISE_CPU_ISA");
  const std::string saved = old ? old : "";
  for (const char* isa : {"generic", "avx2"}) {  // avx2 falls back to the widest when the CPU lacks it
    setenv("LABELWISE_CPU_ISA", isa, 1);
    std::vector<float> samples_isa(samples.size());
    head_sample(x.view(), h.wv(), h.bv(), TensorView::of(samples_isa.data(), concat({x.B, K, h.C}, x.spatial)), opt);
    std::vector<std::vector<double>> by_isa(kAll.size(), std::vector<double>(n));
    std::vector<MetricOutput> io;
    for (const MetricOutput& o : fo) io.push_back({o.metric, TensorView::of(by_isa[static_cast<int>(o.metric)].data(), grid)});
    head_score(x.view(), h.wv(), h.bv(), io, nullptr, opt);
    if (old) setenv("LABELWISE_CPU_ISA", saved.c_str(), 1); else unsetenv("LABELWISE_CPU_ISA");
    INFO("LABELWISE_CPU_ISA=" << isa);
    CHECK(std::memcmp(samples_isa.data(), samples.data(), samples.size() * sizeof(float)) == 0);
    for (const MetricOutput& o : io) {
      const int m = static_cast<int>(o.metric);
      for (std::size_t j = 0; j < n; ++j) {
        INFO(metric_name(o.metric) << " voxel " << j);
        CHECK((by_isa[m][j] == fused[m][j] ||
               std::abs(by_isa[m][j] - fused[m][j]) <= 1e-6 * std::max(1.0, std::abs(fused[m][j]))));
      }
    }
  }
}

}  // namespace

TEST_CASE("det_exp_nonpositive is within 1 ulp of exp on (-inf, 0]", "[head_score]") {
  using labelwise::detail::det_exp_nonpositive;
  const std::uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(-708.0, 0.0), small(-1.0, 0.0);
  CHECK(det_exp_nonpositive(0.0) == 1.0);
  CHECK(det_exp_nonpositive(-0.0) == 1.0);
  CHECK(det_exp_nonpositive(-INFINITY) == 0.0);
  CHECK(det_exp_nonpositive(-708.5) == 0.0);
  CHECK(det_exp_nonpositive(-1e-300) == 1.0);
  int max_ulps = 0;
  for (int i = 0; i < 200000; ++i) {
    const double x = i % 2 ? u(rng) : small(rng) * (i % 3 ? 1.0 : 1e-6);
    const double got = det_exp_nonpositive(x), want = std::exp(x);
    const double ulp = std::nextafter(want, INFINITY) - want;
    const int ulps = static_cast<int>(std::lround(std::abs(got - want) / ulp));
    max_ulps = std::max(max_ulps, ulps);
  }
  CHECK(max_ulps <= 1);
}

/// The CPU forms of the head's arithmetic that this processor runs: (name, entry point).
static std::vector<std::pair<const char*, lw_test::HeadForm>> head_forms() {
  std::vector<std::pair<const char*, lw_test::HeadForm>> f{{"generic", lw_test::head_cpu_form_generic}};
#if defined(LABELWISE_TEST_X86_FORMS)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) f.push_back({"avx2", lw_test::head_cpu_form_avx2});
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq"))
    f.push_back({"avx512", lw_test::head_cpu_form_avx512});
#endif
  return f;
}

TEST_CASE("head_voxel_probs with the logits in registers, and the CPU form, give the scratch version's bits",
          "[head_score]") {
  // The CUDA kernel accumulates each sample's logits in a register array for C <= 8 / 16 / 32
  // (kRegs); the host runs both forms of the shared body and requires the same bits of the float64
  // exponentials left in z (they carry every bit of the logits: the float32 probabilities would hide
  // an operation taken in another order) and of the probabilities, with threads' scratch interleaved
  // (ts = 3, as on the device), NaN in the weights' padding lanes and after the biases (never read).
  std::mt19937_64 g(fresh_seed());
  std::normal_distribution<double> nd;
  const double kNaN = std::numeric_limits<double>::quiet_NaN();
  for (int C : {2, 7, 8, 9, 15, 16, 17, 24, 25, 31, 32})
    for (int mode = 0; mode < 3; ++mode) {  // 0: no dropout, 1: dropout p = 0.5, 2: ensemble
      const int F = 1 + static_cast<int>(g() % 40), K = 2 + static_cast<int>(g() % 5);
      const bool ensemble = mode == 2;
      labelwise::detail::HeadParams hp;
      hp.F = F;
      hp.C = C;
      hp.Cp = labelwise::detail::padded_classes(C);
      hp.K = K;
      hp.M = ensemble ? K : 1;
      std::vector<double> wt(static_cast<std::size_t>(hp.M) * F * hp.Cp, kNaN);
      std::vector<double> bias(static_cast<std::size_t>(hp.M) * C + 8, kNaN);
      for (int m = 0; m < hp.M; ++m)
        for (int f = 0; f < F; ++f)
          for (int c = 0; c < C; ++c) wt[(static_cast<std::size_t>(m) * F + f) * hp.Cp + c] = 0.3 * nd(g);
      for (int j = 0; j < hp.M * C; ++j) bias[j] = nd(g);
      hp.wt = wt.data();
      hp.bias = bias.data();
      hp.dropout = mode == 1;
      if (hp.dropout) {
        hp.keep_threshold = 1u << 31;  // p = 0.5
        hp.scale = 2.0;
      }
      hp.key0 = static_cast<std::uint32_t>(g());
      hp.key1 = static_cast<std::uint32_t>(g());
      std::vector<float> x(static_cast<std::size_t>(F) * 3);  // features 3 apart (a strided voxel)
      for (auto& v : x) v = static_cast<float>(nd(g));
      constexpr int ts = 3;
      std::vector<double> xs(static_cast<std::size_t>(F) * ts), z_want(static_cast<std::size_t>(C) * ts, 0.0),
          z_got(z_want.size(), 0.0);
      std::vector<float> want(static_cast<std::size_t>(K) * C * ts, 0.0f), got(want.size(), 0.0f);
      const std::uint32_t v = static_cast<std::uint32_t>(g()), b = static_cast<std::uint32_t>(g() % 5);
      INFO("C = " << C << ", F = " << F << ", K = " << K << (hp.dropout ? ", dropout" : "")
                  << (ensemble ? ", ensemble" : ""));
      REQUIRE(labelwise::detail::head_voxel_probs<float>(x.data(), 3, hp, v, b, xs.data(), z_want.data(), want.data(),
                                                         ts) == 0);
      int st = -1, regs_used = -1;
      labelwise::detail::with_logit_registers(C, [&](auto regs) {
        regs_used = decltype(regs)::value;
        st = labelwise::detail::head_voxel_probs<float, decltype(regs)::value>(x.data(), 3, hp, v, b, xs.data(),
                                                                               z_got.data(), got.data(), ts);
      });
      REQUIRE(st == 0);
      REQUIRE(regs_used >= C);  // the register form, as the CUDA launch picks it for C <= 32
      CHECK(std::memcmp(z_want.data(), z_got.data(), z_want.size() * sizeof(double)) == 0);
      CHECK(std::memcmp(want.data(), got.data(), want.size() * sizeof(float)) == 0);

      // The CPU form in every build the processor runs (generic, AVX2, AVX-512; head_cpu_form.inc, with
      // the library's flags): shared products and 0 / 1 gates (a fused multiply-add where the set has
      // one), exponentials of all samples at once. Every sample's float64 exponentials must be the
      // scalar body's bits (sample k's: the body run with K = k + 1, whose last sample is k; its mask
      // does not depend on K). The CPU form reads the weights' padding lanes, packed with zeros.
      std::vector<double> wt0(wt);
      for (double& w : wt0) w = std::isnan(w) ? 0.0 : w;
      labelwise::detail::HeadParams hp0 = hp;
      hp0.wt = wt0.data();
      std::vector<double> z_k(static_cast<std::size_t>(K) * C);  // the scalar body's exponentials, sample-major
      for (int k = 0; k < K; ++k) {
        labelwise::detail::HeadParams hk = hp;
        hk.K = k + 1;
        std::vector<float> pk(static_cast<std::size_t>(k + 1) * C * ts);
        REQUIRE(labelwise::detail::head_voxel_probs<float>(x.data(), 3, hk, v, b, xs.data(), z_want.data(), pk.data(),
                                                           ts) == 0);
        for (int c = 0; c < C; ++c) z_k[static_cast<std::size_t>(k) * C + c] = z_want[static_cast<std::size_t>(c) * ts];
      }
      const int G = (F + 3) / 4;
      for (const auto& form : head_forms()) {
        INFO("CPU form " << form.first);
        std::vector<double> cxs(F), cd(4 * static_cast<std::size_t>(F)), cu(8 * static_cast<std::size_t>(F)),
            cz(static_cast<std::size_t>(K) * hp.Cp, kNaN);
        std::vector<std::uint32_t> words(4 * static_cast<std::size_t>(K) * G), c1(static_cast<std::size_t>(K) * G),
            c2(c1.size());
        for (int k = 0; k < K; ++k)
          for (int gi = 0; gi < G; ++gi) {
            c1[static_cast<std::size_t>(k) * G + gi] = static_cast<std::uint32_t>(gi);
            c2[static_cast<std::size_t>(k) * G + gi] = (3u << 16) | static_cast<std::uint32_t>(k);
          }
        const lw_test::HeadFormScratch cs{cxs.data(), cd.data(), cu.data(), cz.data(), words.data(), c1.data(),
                                          c2.data()};
        std::vector<float> cpu(static_cast<std::size_t>(K) * C);
        REQUIRE(form.second(x.data(), 3, hp0, v, b, cs, cpu.data()) == 0);
        std::size_t differ = 0;
        for (int k = 0; k < K; ++k)
          for (int c = 0; c < C; ++c)
            differ += std::memcmp(&cz[static_cast<std::size_t>(k) * hp.Cp + c], &z_k[static_cast<std::size_t>(k) * C + c],
                                  sizeof(double)) != 0;
        CHECK(differ == 0);
        for (int k = 0; k < K; ++k)
          for (int c = 0; c < C; ++c)
            CHECK(cpu[static_cast<std::size_t>(k) * C + c] == want[(static_cast<std::size_t>(k) * C + c) * ts]);
      }
    }
}

TEST_CASE("a product that overflows float64 in a channel every sample drops changes nothing", "[head_score]") {
  // The CPU forms each product W_cf · (x_f · s) once per voxel and gates it by 0 / 1 per sample; an
  // infinite product times a 0 gate would be NaN, so such a class block takes the masked features
  // instead. Voxel 0 with channel 1 dropped in both samples must give the finite probabilities of the
  // reference and of the CUDA loop body; with channel 1 kept, the logits overflow (a clear error).
  std::mt19937_64 rng(fresh_seed());
  Features<double> x(1, 3, {1}, false, rng);
  x.data[x.index(0, 1, 0)] = 1e300;  // times s = 2 and W = 1e10: 2e310
  Head h(1, 4, 3, rng);
  h.w[2 * 3 + 1] = 1e10;  // class 2, channel 1 (one class of the block overflows, the others do not)
  HeadScoreOptions opt;
  opt.samples = 2;
  opt.dropout = 0.5;
  std::uint64_t dropped = 0, kept = 0;
  bool have_dropped = false, have_kept = false;
  for (std::uint64_t seed = rng(); !(have_dropped && have_kept); ++seed) {
    const bool any = keep_ref(seed, 0.5, 0, 0, 1, 0) || keep_ref(seed, 0.5, 0, 1, 1, 0);
    if (!any && !have_dropped) dropped = seed, have_dropped = true;
    if (any && !have_kept) kept = seed, have_kept = true;
  }
  std::vector<float> samples(2 * 4);
  const TensorView sv = TensorView::of(samples.data(), {1, 2, 4, 1});
  const char* old = std::getenv("LABELWISE_CPU_ISA");
  const std::string saved = old ? old : "";
  for (const char* isa : {"generic", "avx2", "avx512"}) {  // a level the CPU lacks falls back to the widest
    INFO("LABELWISE_CPU_ISA=" << isa);
    setenv("LABELWISE_CPU_ISA", isa, 1);
    opt.seed = dropped;
    head_sample(x.view(), h.wv(), h.bv(), sv, opt);
    for (float v : samples) CHECK(std::isfinite(v));
    expect_same_samples(samples, reference_samples(x, h, 2, 0.5, dropped));
    CHECK(expect_scalar_body_bits(x, h, opt, samples) == 0);
    opt.seed = kept;
    CHECK_THROWS_WITH(head_sample(x.view(), h.wv(), h.bv(), sv, opt),
                      Catch::Matchers::Contains("features: item 0, voxel [0] gives logits that overflow"));
    CHECK(expect_scalar_body_bits(x, h, opt, samples) == labelwise::detail::kHeadNonFiniteLogits);
  }
  if (old) setenv("LABELWISE_CPU_ISA", saved.c_str(), 1); else unsetenv("LABELWISE_CPU_ISA");
}

TEST_CASE("philox reference matches the Random123 known answers", "[head_score]") {
  CHECK(ref::philox4x32_10({0, 0, 0, 0}, 0, 0) == std::array<std::uint32_t, 4>{0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8});
  CHECK(ref::philox4x32_10({0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344}, 0xA4093822, 0x299F31D0) ==
        std::array<std::uint32_t, 4>{0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1});
}

TEMPLATE_TEST_CASE("MC dropout: samples equal the float64 reference, fused score equals score(head_sample)",
                   "[head_score]", float, double) {
  GENERATE(0, 1, 2);  // three fresh draws of F, C, K and the data
  const std::uint64_t seed = fresh_seed();
  std::mt19937_64 rng(seed);
  const bool last = GENERATE(false, true);  // channels-last storage: strided / transposed features
  const std::vector<std::int64_t> sp = GENERATE(std::vector<std::int64_t>{5, 7}, std::vector<std::int64_t>{3, 4, 5},
                                                std::vector<std::int64_t>{}, std::vector<std::int64_t>{9});
  const int F = 1 + static_cast<int>(rng() % 11), C = 2 + static_cast<int>(rng() % 10);
  Features<TestType> x(2, F, sp, last, rng);
  Head h(1, C, F, rng);
  HeadScoreOptions opt;
  opt.samples = 2 + static_cast<int>(rng() % 7);
  opt.dropout = GENERATE(0.0, 0.3, 0.5);
  opt.seed = rng();  // both key words
  INFO("seed " << seed << " F=" << F << " C=" << C << " K=" << opt.samples << " p=" << opt.dropout << " last=" << last);
  check_fused_equals_sample_then_score(x, h, opt);
}

TEMPLATE_TEST_CASE("MC dropout, wide heads (C in {17, 33, 100}, F in {16, 17, 64}): samples equal the float64 "
                   "reference, fused score equals score(head_sample)",
                   "[head_score]", float, double) {
  const std::uint64_t seed = fresh_seed();
  std::mt19937_64 rng(seed);
  const int C = GENERATE(17, 33, 100);
  const int F = GENERATE(16, 17, 64);
  const bool last = GENERATE(false, true);
  const std::vector<std::int64_t> sp = GENERATE(std::vector<std::int64_t>{5, 7}, std::vector<std::int64_t>{3});
  Features<TestType> x(2, F, sp, last, rng);
  Head h(1, C, F, rng);
  HeadScoreOptions opt;
  opt.samples = 2 + static_cast<int>(rng() % 7);
  opt.dropout = GENERATE(0.0, 0.3);
  opt.seed = rng();
  INFO("seed " << seed << " F=" << F << " C=" << C << " K=" << opt.samples << " p=" << opt.dropout << " last=" << last);
  check_fused_equals_sample_then_score(x, h, opt);
}

TEMPLATE_TEST_CASE("ensemble: sample k is member k, fused score equals score(head_sample)", "[head_score]", float,
                   double) {
  GENERATE(0, 1);  // two fresh draws of M, F, C and the data
  const std::uint64_t seed = fresh_seed();
  std::mt19937_64 rng(seed);
  const bool last = GENERATE(false, true);
  const std::vector<std::int64_t> sp = GENERATE(std::vector<std::int64_t>{6, 5}, std::vector<std::int64_t>{2, 3, 4});
  const int M = 2 + static_cast<int>(rng() % 4), F = 1 + static_cast<int>(rng() % 9), C = 2 + static_cast<int>(rng() % 6);
  Features<TestType> x(3, F, sp, last, rng);
  Head h(M, C, F, rng);
  HeadScoreOptions opt;
  opt.samples = M;
  opt.seed = rng();
  INFO("seed " << seed << " M=" << M << " F=" << F << " C=" << C << " last=" << last);
  check_fused_equals_sample_then_score(x, h, opt);
}

TEMPLATE_TEST_CASE("ensemble, wide heads (C in {17, 33, 100}, F in {16, 17, 64})", "[head_score]", float, double) {
  const std::uint64_t seed = fresh_seed();
  std::mt19937_64 rng(seed);
  const int C = GENERATE(17, 33, 100);
  const int F = GENERATE(16, 17, 64);
  const int M = 2 + static_cast<int>(rng() % 4);
  const bool last = GENERATE(false, true);
  Features<TestType> x(2, F, {4, 5}, last, rng);
  Head h(M, C, F, rng);
  HeadScoreOptions opt;
  opt.samples = M;
  opt.seed = rng();
  INFO("seed " << seed << " M=" << M << " F=" << F << " C=" << C << " last=" << last);
  check_fused_equals_sample_then_score(x, h, opt);
}

TEST_CASE("mixed dtypes: float32 weights, strided weight view, float32 outputs", "[head_score]") {
  const std::uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  Features<float> x(2, 6, {4, 5}, false, rng);
  Head h(1, 3, 6, rng);
  // weight stored as [F, C] (transposed) float32, viewed as [1, C, F]
  std::vector<float> wt(6 * 3), b32(3);
  for (int c = 0; c < 3; ++c) {
    b32[c] = static_cast<float>(h.bias[c]);
    h.bias[c] = b32[c];
    for (int f = 0; f < 6; ++f) {
      wt[f * 3 + c] = static_cast<float>(h.w[c * 6 + f]);
      h.w[c * 6 + f] = wt[f * 3 + c];
    }
  }
  const TensorView wv = TensorView::of(wt.data(), {1, 3, 6}, {18, 1, 3});
  const TensorView bv = TensorView::of(b32.data(), {1, 3});
  HeadScoreOptions opt;
  opt.samples = 4;
  opt.dropout = 0.25;
  opt.seed = 77;
  std::vector<float> s(2 * 4 * 3 * 20);
  head_sample(x.view(), wv, bv, TensorView::of(s.data(), {2, 4, 3, 4, 5}), opt);
  expect_same_samples(s, reference_samples(x, h, 4, 0.25, 77));
  std::vector<float> bald32(40);
  std::vector<double> bald64(40);
  head_score(x.view(), wv, bv, {{Metric::Bald, TensorView::of(bald32.data(), {2, 4, 5})}}, nullptr, opt);
  bald(TensorView::of(s.data(), {2, 4, 3, 4, 5}), TensorView::of(bald64.data(), {2, 4, 5}));
  for (int i = 0; i < 40; ++i) CHECK(std::abs(bald32[i] - bald64[i]) <= 1e-6);
}

TEST_CASE("dropout masks keep each channel with probability 1 - p", "[head_score]") {
  // C = 2, one-hot weights on channel f0: p_1 = sigmoid(x · s) when f0 is kept, exactly 1/2 when dropped.
  const int F = 8, K = 8, B = 2;
  const std::int64_t V = 1500;
  for (double p : {0.1, 0.5, 0.8}) {
    std::vector<float> x(static_cast<std::size_t>(B) * F * V, 1.0f);
    for (int f0 = 0; f0 < F; ++f0) {
      std::vector<double> w(2 * F, 0.0), bias(2, 0.0);
      w[F + f0] = 1.0;
      HeadScoreOptions opt;
      opt.samples = K;
      opt.dropout = p;
      opt.seed = 1234567890123ull;
      std::vector<float> s(static_cast<std::size_t>(B) * K * 2 * V);
      head_sample(TensorView::of(x.data(), {B, F, V}), TensorView::of(w.data(), {1, 2, F}),
                  TensorView::of(bias.data(), {1, 2}), TensorView::of(s.data(), {B, K, 2, V}), opt);
      std::int64_t kept = 0, total = 0;
      for (int b = 0; b < B; ++b)
        for (int k = 0; k < K; ++k)
          for (std::int64_t v = 0; v < V; ++v) {
            const float p1 = s[((static_cast<std::size_t>(b) * K + k) * 2 + 1) * V + v];
            const bool was_kept = p1 != 0.5f;
            CHECK(was_kept == keep_ref(opt.seed, p, b, k, f0, static_cast<std::uint32_t>(v)));
            kept += was_kept;
            ++total;
          }
      const double q = 1 - p, sd = std::sqrt(total * p * q);
      INFO("p=" << p << " f0=" << f0 << " kept " << kept << " of " << total);
      CHECK(std::abs(kept - total * q) <= 5 * sd + 1);
    }
  }
}

TEST_CASE("p = 0 gives K identical samples; K = 1 works for metrics without samples", "[head_score]") {
  const std::uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  Features<double> x(2, 5, {3, 4}, false, rng);
  Head h(1, 4, 5, rng);
  HeadScoreOptions opt;
  opt.samples = 5;
  opt.seed = 99;
  std::vector<float> s(2 * 5 * 4 * 12);
  head_sample(x.view(), h.wv(), h.bv(), TensorView::of(s.data(), {2, 5, 4, 3, 4}), opt);
  for (int b = 0; b < 2; ++b)
    for (int k = 1; k < 5; ++k)
      CHECK(std::memcmp(&s[(b * 5 + k) * 48], &s[(b * 5) * 48], 48 * sizeof(float)) == 0);
  std::vector<double> bald_out(24);
  head_score(x.view(), h.wv(), h.bv(), {{Metric::Bald, TensorView::of(bald_out.data(), {2, 3, 4})}}, nullptr, opt);
  for (double v : bald_out) CHECK(std::abs(v) <= 1e-6);  // H[p̄] - E[H] of identical samples (float entropies)
  opt.samples = 1;
  std::vector<double> pe(24), pe_ref(24);
  head_score(x.view(), h.wv(), h.bv(), {{Metric::PredictiveEntropy, TensorView::of(pe.data(), {2, 3, 4})}}, nullptr, opt);
  std::vector<float> s1(2 * 4 * 12);
  head_sample(x.view(), h.wv(), h.bv(), TensorView::of(s1.data(), {2, 1, 4, 3, 4}), opt);
  predictive_entropy(TensorView::of(s1.data(), {2, 1, 4, 3, 4}), TensorView::of(pe_ref.data(), {2, 3, 4}));
  for (int i = 0; i < 24; ++i) CHECK(std::abs(pe[i] - pe_ref[i]) <= 1e-12);
}

TEST_CASE("index_offset: a shard draws exactly the whole batch's samples; thread count is invisible",
          "[head_score]") {
  const std::uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  Features<float> x(4, 7, {6, 5}, false, rng);
  Head h(1, 3, 7, rng);
  HeadScoreOptions opt;
  opt.samples = 6;
  opt.dropout = 0.4;
  opt.seed = 0xDEADBEEFCAFEull;
  const std::size_t per_item = 6 * 3 * 30;
  std::vector<float> whole(4 * per_item), shard(2 * per_item);
  head_sample(x.view(), h.wv(), h.bv(), TensorView::of(whole.data(), {4, 6, 3, 6, 5}), opt);
  TensorView tail = x.view();
  tail.data = x.data.data() + 2 * 7 * 30;
  tail.shape[0] = 2;
  HeadScoreOptions sh = opt;
  sh.index_offset = 2;
  head_sample(tail, h.wv(), h.bv(), TensorView::of(shard.data(), {2, 6, 3, 6, 5}), sh);
  CHECK(std::memcmp(shard.data(), whole.data() + 2 * per_item, shard.size() * sizeof(float)) == 0);
  // without the offset the shard draws other masks
  head_sample(tail, h.wv(), h.bv(), TensorView::of(shard.data(), {2, 6, 3, 6, 5}), opt);
  CHECK(std::memcmp(shard.data(), whole.data() + 2 * per_item, shard.size() * sizeof(float)) != 0);
  std::vector<double> m_whole(4 * 30), m_shard(2 * 30);
  head_score(x.view(), h.wv(), h.bv(), {{Metric::BalEntAcq, TensorView::of(m_whole.data(), {4, 6, 5})}}, nullptr, opt);
  head_score(tail, h.wv(), h.bv(), {{Metric::BalEntAcq, TensorView::of(m_shard.data(), {2, 6, 5})}}, nullptr, sh);
  CHECK(std::memcmp(m_shard.data(), m_whole.data() + 60, 60 * sizeof(double)) == 0);
  // thread count: the CPU backend splits the voxels into chunks of about 65536 / (K·C·F) = 520 here, so
  // the volume has 2 x 50 x 40 = 4000 voxels (8 chunks); 1, 2 and 3 threads give the same bits.
  Features<float> big(2, 7, {50, 40}, false, rng);
  std::vector<double> m1(4000), m2(4000), m3(4000);
  std::vector<float> s1(2 * 6 * 3 * 2000), s3(s1.size());
  set_num_threads(1);
  head_score(big.view(), h.wv(), h.bv(), {{Metric::BalEntAcq, TensorView::of(m1.data(), {2, 50, 40})}}, nullptr, opt);
  head_sample(big.view(), h.wv(), h.bv(), TensorView::of(s1.data(), {2, 6, 3, 50, 40}), opt);
  set_num_threads(2);
  head_score(big.view(), h.wv(), h.bv(), {{Metric::BalEntAcq, TensorView::of(m2.data(), {2, 50, 40})}}, nullptr, opt);
  set_num_threads(3);
  head_score(big.view(), h.wv(), h.bv(), {{Metric::BalEntAcq, TensorView::of(m3.data(), {2, 50, 40})}}, nullptr, opt);
  head_sample(big.view(), h.wv(), h.bv(), TensorView::of(s3.data(), {2, 6, 3, 50, 40}), opt);
  set_num_threads(0);
  CHECK(std::memcmp(m1.data(), m2.data(), m1.size() * sizeof(double)) == 0);
  CHECK(std::memcmp(m1.data(), m3.data(), m1.size() * sizeof(double)) == 0);
  CHECK(std::memcmp(s1.data(), s3.data(), s1.size() * sizeof(float)) == 0);
}

TEST_CASE("head_score / head_sample: bad input gets a clear error naming the argument", "[head_score][errors]") {
  std::vector<float> x(2 * 3 * 4 * 5, 0.5f), w(1 * 4 * 3, 0.1f), bias(4, 0.0f), out(2 * 4 * 5),
      samples(2 * 3 * 4 * 20), mean(2 * 4 * 20);
  std::vector<double> w2(3 * 4 * 3, 0.1), b2(3 * 4, 0.0);
  const TensorView xv = TensorView::of(x.data(), {2, 3, 4, 5});
  const TensorView wv = TensorView::of(w.data(), {1, 4, 3});
  const TensorView bv = TensorView::of(bias.data(), {1, 4});
  const TensorView ov = TensorView::of(out.data(), {2, 4, 5});
  const TensorView sv = TensorView::of(samples.data(), {2, 3, 4, 4, 5});
  HeadScoreOptions opt;
  opt.samples = 3;
  opt.dropout = 0.5;
  auto score1 = [&](const TensorView& f, const TensorView& ww, const TensorView& bb, const TensorView& o,
                    const HeadScoreOptions& op, Metric m = Metric::Bald) {
    head_score(f, ww, bb, {{m, o}}, nullptr, op);
  };
  using Catch::Contains;
  SECTION("valid call") {
    CHECK_NOTHROW(score1(xv, wv, bv, ov, opt));
    CHECK_NOTHROW(head_sample(xv, wv, bv, sv, opt));
  }
  SECTION("features rank") {
    CHECK_THROWS_WITH(score1(TensorView::of(x.data(), {120}), wv, bv, TensorView::of(out.data(), {120}), opt),
                      Contains("features:") && Contains("rank 2 to 5") && Contains("[120]"));
    CHECK_THROWS_WITH(head_sample(TensorView::of(x.data(), {1, 2, 3, 4, 5, 1}), wv, bv, sv, opt),
                      Contains("features:") && Contains("rank 2 to 5"));
  }
  SECTION("empty features") {
    CHECK_THROWS_WITH(score1(TensorView::of(x.data(), {0, 3, 4, 5}), wv, bv, TensorView::of(out.data(), {0, 4, 5}), opt),
                      Contains("features: input is empty"));
  }
  SECTION("weight and bias shapes") {
    CHECK_THROWS_WITH(score1(xv, TensorView::of(w.data(), {4, 3}), bv, ov, opt),
                      Contains("weight: expected [M, C, F] (rank 3)") && Contains("[4, 3]"));
    CHECK_THROWS_WITH(score1(xv, TensorView::of(w.data(), {1, 3, 4}), bv, ov, opt),
                      Contains("weight:") && Contains("F = 3") && Contains("[1, 3, 4]"));
    CHECK_THROWS_WITH(score1(xv, TensorView::of(w.data(), {1, 1, 3}), TensorView::of(bias.data(), {1, 1}), ov, opt),
                      Contains("weight: expected at least 2 classes"));
    CHECK_THROWS_WITH(score1(xv, wv, TensorView::of(bias.data(), {4}), ov, opt),
                      Contains("bias: expected shape [1, 4]") && Contains("got [4]"));
  }
  SECTION("output, mean and samples shapes and dtypes") {
    CHECK_THROWS_WITH(score1(xv, wv, bv, TensorView::of(out.data(), {2, 20}), opt),
                      Contains("bald: output has shape [2, 20], expected [2, 4, 5]"));
    std::vector<std::int32_t> iout(40);
    CHECK_THROWS_WITH(score1(xv, wv, bv, TensorView::of(iout.data(), {2, 4, 5}), opt),
                      Contains("bald: output dtype must be float32 or float64, got int32"));
    const TensorView bad_mean = TensorView::of(mean.data(), {2, 3, 4, 5});
    CHECK_THROWS_WITH(head_score(xv, wv, bv, {{Metric::Bald, ov}}, &bad_mean, opt),
                      Contains("mean: has shape [2, 3, 4, 5], expected [2, 4, 4, 5]"));
    CHECK_THROWS_WITH(head_sample(xv, wv, bv, TensorView::of(samples.data(), {2, 4, 4, 4, 5}), opt),
                      Contains("samples: has shape [2, 4, 4, 4, 5], expected [2, 3, 4, 4, 5]"));
    std::vector<double> s64(samples.size());
    CHECK_THROWS_WITH(head_sample(xv, wv, bv, TensorView::of(s64.data(), {2, 3, 4, 4, 5}), opt),
                      Contains("samples: dtype must be float32, got float64"));
    CHECK_THROWS_WITH(head_score(xv, wv, bv, {}, nullptr, opt), Contains("outputs: no metric and no mean"));
    CHECK_THROWS_WITH(head_score(xv, wv, bv, {{Metric::Bald, ov}, {Metric::Bald, ov}}, nullptr, opt),
                      Contains("'bald' is requested twice"));
  }
  SECTION("K") {
    HeadScoreOptions o = opt;
    o.samples = 1;
    for (Metric m : {Metric::Bald, Metric::ExpectedEntropy, Metric::VariationRatio, Metric::MeanStd, Metric::BalEntAcq})
      CHECK_THROWS_WITH(score1(xv, wv, bv, ov, o, m), Contains(": needs at least 2 samples, got K = 1"));
    CHECK_NOTHROW(score1(xv, wv, bv, ov, o, Metric::PredictiveEntropy));
    o.samples = 0;
    CHECK_THROWS_WITH(score1(xv, wv, bv, ov, o), Contains("samples: K must be in [1, 65535], got 0"));
    o.samples = 65536;
    CHECK_THROWS_WITH(score1(xv, wv, bv, ov, o), Contains("samples: K must be in [1, 65535], got 65536"));
  }
  SECTION("dropout rate") {
    // Rates in (1 - 2^-32, 1) would make the 32-bit keep threshold 2^32 (it wrapped to 0: every channel kept).
    for (double p : {-0.1, 1.0, 1.5, double(NAN), double(INFINITY), std::nextafter(1.0, 0.0), 1.0 - 0x1p-33}) {
      HeadScoreOptions o = opt;
      o.dropout = p;
      CHECK_THROWS_WITH(score1(xv, wv, bv, ov, o), Contains("dropout: the rate must be in [0, 1)"));
    }
    HeadScoreOptions o = opt;
    o.dropout = kMaxDropout;  // the largest rate is valid
    CHECK_NOTHROW(score1(xv, wv, bv, ov, o));
  }
  SECTION("ensembles: K = M and no dropout") {
    const TensorView ew = TensorView::of(w2.data(), {3, 4, 3}), eb = TensorView::of(b2.data(), {3, 4});
    HeadScoreOptions o;
    o.samples = 3;
    CHECK_NOTHROW(score1(xv, ew, eb, ov, o));
    o.samples = 4;
    CHECK_THROWS_WITH(score1(xv, ew, eb, ov, o), Contains("samples: an ensemble of M = 3") && Contains("got K = 4"));
    o.samples = 3;
    o.dropout = 0.2;
    CHECK_THROWS_WITH(score1(xv, ew, eb, ov, o), Contains("dropout: must be 0 for an ensemble (M = 3)"));
    CHECK_THROWS_WITH(score1(xv, ew, TensorView::of(b2.data(), {2, 4}), ov, opt), Contains("bias: expected shape [3, 4]"));
  }
  SECTION("NaN / Inf features, weights, bias, overflowing logits") {
    x[1 * 60 + 2 * 20 + 3 * 5 + 4] = NAN;  // item 1, feature 2, voxel [3, 4]
    CHECK_THROWS_WITH(score1(xv, wv, bv, ov, opt), Contains("features: item 1, voxel [3, 4] contains NaN or Inf"));
    CHECK_THROWS_WITH(head_sample(xv, wv, bv, sv, opt), Contains("features: item 1, voxel [3, 4] contains NaN or Inf"));
    x[1 * 60 + 2 * 20 + 3 * 5 + 4] = 0.5f;
    x[7] = -INFINITY;
    CHECK_THROWS_WITH(score1(xv, wv, bv, ov, opt), Contains("features: item 0, voxel [1, 2] contains NaN or Inf"));
    x[7] = 0.5f;
    w[5] = INFINITY;
    CHECK_THROWS_WITH(score1(xv, wv, bv, ov, opt), Contains("weight: entry [0, 1, 2] is NaN or Inf"));
    w[5] = 0.1f;
    bias[3] = NAN;
    CHECK_THROWS_WITH(score1(xv, wv, bv, ov, opt), Contains("bias: entry [0, 3] is NaN or Inf"));
    bias[3] = 0.0f;
    std::fill(w.begin(), w.end(), 3e38f);
    std::vector<double> xd(x.size(), 1e300);
    HeadScoreOptions o;
    o.samples = 2;
    CHECK_THROWS_WITH(score1(TensorView::of(xd.data(), {2, 3, 4, 5}), wv, bv, ov, o),
                      Contains("features: item 0, voxel [0, 0] gives logits that overflow"));
  }
  SECTION("dtypes") {
    std::vector<std::int32_t> xi(x.size());
    CHECK_THROWS_WITH(score1(TensorView::of(xi.data(), {2, 3, 4, 5}), wv, bv, ov, opt),
                      Contains("features: expected dtype float32 or float64, got int32"));
    std::vector<std::int64_t> wi(w.size());
    CHECK_THROWS_WITH(score1(xv, TensorView::of(wi.data(), {1, 4, 3}), bv, ov, opt),
                      Contains("weight: expected dtype float32 or float64, got int64"));
    std::vector<std::uint8_t> bi(4);
    CHECK_THROWS_WITH(score1(xv, wv, TensorView::of(bi.data(), {1, 4}), ov, opt),
                      Contains("bias: expected dtype float32 or float64, got uint8"));
  }
  SECTION("index_offset beyond 2^32 items") {
    HeadScoreOptions o = opt;
    o.index_offset = 0xFFFFFFFFull;  // + 2 items
    CHECK_THROWS_WITH(score1(xv, wv, bv, ov, o), Contains("index_offset: items must have global indices below 2^32"));
    o.index_offset = 0xFFFFFFFEull;
    CHECK_NOTHROW(score1(xv, wv, bv, ov, o));
  }
  SECTION("devices") {
    TensorView wc = wv;
    wc.device = Device::cuda(0);
    CHECK_THROWS_WITH(score1(xv, wc, bv, ov, opt), Contains("weight: is on cuda:0 but features are on cpu"));
    TensorView bc = bv;
    bc.device = Device::cuda(0);
    CHECK_THROWS_WITH(score1(xv, wv, bc, ov, opt), Contains("bias: is on cuda:0 but features are on cpu"));
    TensorView oc = ov;
    oc.device = Device::cuda(0);
    CHECK_THROWS_WITH(score1(xv, wv, bv, oc, opt), Contains("bald: output is on cuda:0 but features are on cpu"));
    TensorView sc = sv;
    sc.device = Device::cuda(0);
    CHECK_THROWS_WITH(head_sample(xv, wv, bv, sc, opt), Contains("samples: is on cuda:0 but features are on cpu"));
    if (!built_with_cuda()) {
      TensorView xc = xv;
      xc.device = Device::cuda(0);
      wc.device = bc.device = Device::cuda(0);
      CHECK_THROWS_WITH(score1(xc, wc, bc, oc, opt), Contains("features: is a CUDA tensor") && Contains("built without CUDA"));
      CHECK_THROWS_WITH(head_sample(xc, wc, bc, sc, opt), Contains("built without CUDA"));
    }
  }
}
