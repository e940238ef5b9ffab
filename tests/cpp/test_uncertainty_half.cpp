// float16 / bfloat16 inputs of the metrics: widened exactly, so every metric equals the float32 pass
// over the same values (bit for bit), in any layout; the half formats' tolerances accept rounded
// probability vectors; errors name x's items and dtypes. The encoders / decoders here are written
// independently of include/labelwise/detail/half.hpp (frexp / ldexp arithmetic, not bit tricks).
#include <catch2/catch.hpp>

#include "test_seed.hpp"
#include "../../src/cpu/scratch_array.hpp"  // not a public header

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "labelwise/uncertainty/metrics.hpp"
#include "reference.hpp"

using namespace labelwise;

namespace {

/// Round-to-nearest-even float -> binary16 bits, for finite |f| < 65504.
std::uint16_t to_half(float f) {
  const std::uint16_t sign = std::signbit(f) ? 0x8000u : 0u;
  const double a = std::fabs(static_cast<double>(f));
  if (a == 0.0) return sign;
  int e = 0;
  const double m = std::frexp(a, &e);  // a = m 2^e, m in [0.5, 1)
  if (e - 1 < -14) return static_cast<std::uint16_t>(sign | std::lrint(std::ldexp(a, 24)));  // subnormal
  long q = std::lrint(std::ldexp(m, 11));  // 1024 .. 2048
  int E = e - 1 + 15;
  if (q == 2048) {
    q = 1024;
    ++E;
  }
  return static_cast<std::uint16_t>(sign | (E << 10) | (q - 1024));
}

float from_half(std::uint16_t h) {
  const int E = (h >> 10) & 31, mant = h & 1023;
  const double v = E == 0 ? std::ldexp(static_cast<double>(mant), -24) : std::ldexp(1024.0 + mant, E - 25);
  return static_cast<float>((h & 0x8000u) ? -v : v);
}

/// bfloat16: the float's upper 16 bits, rounded to nearest even.
std::uint16_t to_bf16(float f) {
  std::uint32_t b;
  std::memcpy(&b, &f, 4);
  b += 0x7fffu + ((b >> 16) & 1u);
  return static_cast<std::uint16_t>(b >> 16);
}

float from_bf16(std::uint16_t h) {
  const int E = (h >> 7) & 255, mant = h & 127;
  const double v = E == 0 ? std::ldexp(static_cast<double>(mant), -133) : std::ldexp(128.0 + mant, E - 134);
  return static_cast<float>((h & 0x8000u) ? -v : v);
}

std::vector<float> random_probs(std::mt19937_64& g, std::int64_t rows, int C) {
  std::gamma_distribution<float> gd(0.5f);
  std::vector<float> p(static_cast<std::size_t>(rows * C));
  for (std::int64_t r = 0; r < rows; ++r) {
    float s = 0.0f;
    for (int c = 0; c < C; ++c) s += p[r * C + c] = gd(g) + 1e-4f;
    for (int c = 0; c < C; ++c) p[r * C + c] /= s;
  }
  return p;
}

std::vector<MetricOutput> all_outputs(std::vector<std::vector<float>>& bufs, std::int64_t n) {
  std::vector<MetricOutput> outs;
  bufs.assign(kNumMetrics, std::vector<float>(static_cast<std::size_t>(n)));
  for (int m = 0; m < kNumMetrics; ++m) outs.push_back({static_cast<Metric>(m), TensorView::of(bufs[m].data(), {n})});
  return outs;
}

}  // namespace

TEST_CASE("float16 / bfloat16 inputs equal float32 over the same values", "[uncertainty][half]") {
  const std::uint64_t seed = fresh_seed();
  std::mt19937_64 g(seed);
  const std::int64_t N = 150;
  const int K = 6, C = 7;
  const std::vector<float> p = random_probs(g, N * K, C);
  for (int fmt = 0; fmt < 2; ++fmt) {
    INFO((fmt ? "bfloat16" : "float16"));
    for (int kind = 0; kind < 3; ++kind) {  // probabilities, log-probabilities, logits
      std::vector<std::uint16_t> h(p.size());
      std::vector<float> wide(p.size());
      for (std::size_t i = 0; i < p.size(); ++i) {
        const float v = kind == 0 ? p[i] : std::log(p[i]) + (kind == 2 ? 1.5f : 0.0f);
        h[i] = fmt ? to_bf16(v) : to_half(v);
        wide[i] = fmt ? from_bf16(h[i]) : from_half(h[i]);
      }
      ScoreOptions opt;
      opt.input = static_cast<InputKind>(kind);
      std::vector<std::vector<float>> want, got;
      const auto wo = all_outputs(want, N);
      const auto go = all_outputs(got, N);
      const TensorView hx(h.data(), fmt ? DType::BFloat16 : DType::Float16, {N, K, C});
      REQUIRE_NOTHROW(score(hx, go, opt));
      // the float32 reference over the same values, with the tolerance of the half format
      ScoreOptions ref = opt;
      const double tol = normalization_tolerance(fmt ? DType::BFloat16 : DType::Float16);
      bool within_f32 = true;
      if (kind != 2)
        for (std::int64_t r = 0; r < N * K; ++r) {
          double s = 0.0;
          for (int c = 0; c < C; ++c) s += kind == 0 ? wide[r * C + c] : std::exp(static_cast<double>(wide[r * C + c]));
          within_f32 &= std::fabs(kind == 0 ? s - 1.0 : std::log(s)) <= 1e-3;
          CHECK(std::fabs(kind == 0 ? s - 1.0 : std::log(s)) <= tol);
        }
      if (within_f32) {  // the float32 pass accepts the rounded values: bit for bit the same results
        score(TensorView::of(wide.data(), {N, K, C}), wo, ref);
        for (int m = 0; m < kNumMetrics; ++m)
          for (std::int64_t i = 0; i < N; ++i) {
            INFO(metric_name(static_cast<Metric>(m)) << " item " << i << " kind " << kind);
            CHECK(std::memcmp(&got[m][i], &want[m][i], sizeof(float)) == 0);
          }
      }
      // Every kind against the float64 definitions over the widened values, as the library reads them
      // (docs/metrics.md): probabilities and log-probabilities used as given (exp of the widened
      // log-probabilities, not renormalised: bfloat16 rows sum to 1 only within ~3e-3, which the
      // float32 comparison above cannot accept), logits through a float64 softmax. Only the float32
      // arithmetic of the pass separates the results from these values.
      {
        INFO("kind " << kind << " seed " << seed);
        for (std::int64_t i = 0; i < N; ++i) {
          std::vector<std::vector<double>> item(K, std::vector<double>(C));
          for (int k = 0; k < K; ++k) {
            const float* w = &wide[(i * K + k) * C];
            if (kind == 0) {
              for (int c = 0; c < C; ++c) item[k][c] = w[c];
            } else if (kind == 1) {
              for (int c = 0; c < C; ++c) item[k][c] = std::exp(static_cast<double>(w[c]));
            } else {
              double mx = -INFINITY, z = 0.0;
              for (int c = 0; c < C; ++c) mx = std::max(mx, static_cast<double>(w[c]));
              for (int c = 0; c < C; ++c) z += item[k][c] = std::exp(static_cast<double>(w[c]) - mx);
              for (int c = 0; c < C; ++c) item[k][c] /= z;
            }
          }
          const auto r = ref::metrics(item);
          for (int m = 0; m < kNumMetrics; ++m) {
            INFO(metric_name(static_cast<Metric>(m)) << " item " << i << " got " << got[m][i] << " want " << r[m]);
            const double t = m == 9 ? 3e-3 + 2e-6 * std::fabs(r[m]) : 2e-5;  // measured float32 error ~1e-7
            if (std::isinf(r[m]))
              CHECK(got[m][i] == r[m]);
            else
              CHECK(std::fabs(got[m][i] - r[m]) <= t * (1.0 + std::fabs(r[m])));
          }
        }
      }
    }
  }
}

TEST_CASE("float16 inputs in other layouts and segmentation maps", "[uncertainty][half]") {
  std::mt19937_64 g(11);
  const std::int64_t N = 3, H = 4, W = 5;
  const int K = 4, C = 3;
  // contiguous [N, K, C, H, W] as the reference, and a [N, H, W, C, K] (BaaL-like) copy through axes
  const std::vector<float> p = random_probs(g, N * K * H * W, C);  // rows (n, k, h, w) x C
  std::vector<std::uint16_t> a(p.size()), b(p.size());
  std::vector<float> wide(p.size());
  for (std::int64_t n = 0; n < N; ++n)
    for (int k = 0; k < K; ++k)
      for (std::int64_t y = 0; y < H; ++y)
        for (std::int64_t x = 0; x < W; ++x)
          for (int c = 0; c < C; ++c) {
            const float v = p[(((n * K + k) * H + y) * W + x) * C + c];
            const std::uint16_t hv = to_half(v);
            a[(((n * K + k) * C + c) * H + y) * W + x] = hv;
            b[(((n * H + y) * W + x) * C + c) * K + k] = hv;
            wide[(((n * K + k) * C + c) * H + y) * W + x] = from_half(hv);
          }
  std::vector<float> ea(N * H * W), eb(N * H * W);
  ScoreOptions o1;  // [N, K, C, H, W]
  score(TensorView(a.data(), DType::Float16, {N, K, C, H, W}), {{Metric::Bald, TensorView::of(ea.data(), {N, H, W})}}, o1);
  ScoreOptions o2;
  o2.sample_axis = 4;
  o2.class_axis = 3;
  score(TensorView(b.data(), DType::Float16, {N, H, W, C, K}), {{Metric::Bald, TensorView::of(eb.data(), {N, H, W})}}, o2);
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t y = 0; y < H; ++y)
      for (std::int64_t x = 0; x < W; ++x) {
        std::vector<std::vector<double>> item(K, std::vector<double>(C));
        for (int k = 0; k < K; ++k)
          for (int c = 0; c < C; ++c) item[k][c] = wide[(((n * K + k) * C + c) * H + y) * W + x];
        const std::int64_t i = (n * H + y) * W + x;
        INFO("pixel " << i);
        CHECK(ea[i] == eb[i]);  // the same values in another layout: the same result
        CHECK(ea[i] == Approx(ref::metrics(item)[2]).margin(2e-6));  // BALD from the definition, float64
      }
}

TEST_CASE("float16 views that are not one contiguous block widen like a contiguous copy", "[uncertainty][half]") {
  // The widening reads the trailing axes that lie contiguously as one row, in pieces of 2^16 values,
  // and walks the others: items apart (rows of K·C contiguous), classes padded (rows of C), a
  // transposed view (class stride K: no contiguous axis), and one contiguous block of 800 000 values
  // (13 pieces). Each must give exactly the metrics of a contiguous float32 copy of its values.
  std::mt19937_64 g(fresh_seed());
  struct Case {
    const char* what;
    std::int64_t N, K, C;
    std::vector<std::int64_t> strides;  // of the [N, K, C] view, elements
    std::int64_t storage;
  };
  const std::int64_t N = 257, K = 6, C = 5;
  const std::vector<Case> cases = {
      {"items apart", N, K, C, {2 * K * C, C, 1}, 2 * N * K * C},
      {"classes padded", N, K, C, {K * (C + 2), C + 2, 1}, N * K * (C + 2)},
      {"transposed [N, C, K] storage", N, K, C, {K * C, 1, K}, N * K * C},
      {"one block of 800 000 values", 4000, 20, 10, {200, 10, 1}, 800000},
  };
  for (const Case& cs : cases) {
    INFO(cs.what);
    const std::vector<float> p = random_probs(g, cs.N * cs.K, static_cast<int>(cs.C));  // rows (n, k) x C
    std::vector<std::uint16_t> h(static_cast<std::size_t>(cs.storage), to_half(0.25f));
    std::vector<float> wide(p.size());
    for (std::int64_t n = 0; n < cs.N; ++n)
      for (std::int64_t k = 0; k < cs.K; ++k)
        for (std::int64_t c = 0; c < cs.C; ++c) {
          const std::uint16_t hv = to_half(p[(n * cs.K + k) * cs.C + c]);
          h[n * cs.strides[0] + k * cs.strides[1] + c * cs.strides[2]] = hv;
          wide[(n * cs.K + k) * cs.C + c] = from_half(hv);
        }
    std::vector<double> got(static_cast<std::size_t>(kNumMetrics * cs.N)), want(got.size());
    std::vector<MetricOutput> og, ow;
    for (int m = 0; m < kNumMetrics; ++m) {
      og.push_back({static_cast<Metric>(m), TensorView::of(got.data() + m * cs.N, {cs.N})});
      ow.push_back({static_cast<Metric>(m), TensorView::of(want.data() + m * cs.N, {cs.N})});
    }
    score(TensorView(h.data(), DType::Float16, {cs.N, cs.K, cs.C}, cs.strides), og);
    score(TensorView::of(wide.data(), {cs.N, cs.K, cs.C}), ow);
    std::size_t differ = 0;
    for (std::size_t i = 0; i < got.size(); ++i) differ += !(got[i] == want[i] || (got[i] != got[i] && want[i] != want[i]));
    CHECK(differ == 0);
  }
}

TEST_CASE("scratch arrays refuse sizes whose byte count wraps, and hold what is asked", "[uncertainty][half]") {
  using labelwise::detail::scratch_array;
  CHECK_THROWS_AS(scratch_array<float>(SIZE_MAX / 2), std::bad_alloc);             // n · 4 wraps
  CHECK_THROWS_AS(scratch_array<double>(SIZE_MAX / sizeof(double) + 2), std::bad_alloc);
  CHECK_THROWS_AS(scratch_array<char>(SIZE_MAX - 1000), std::bad_alloc);            // the 2 MiB rounding wraps
  const auto empty = scratch_array<float>(0);
  CHECK(empty != nullptr);
  for (std::size_t n : {std::size_t(1), std::size_t(1000), std::size_t(3) << 20}) {  // malloc and huge-page blocks
    auto a = scratch_array<std::uint32_t>(n);
    for (std::size_t i = 0; i < n; ++i) a[i] = static_cast<std::uint32_t>(i);
    CHECK(a[n - 1] == static_cast<std::uint32_t>(n - 1));
  }
}

TEST_CASE("float16 / bfloat16 errors", "[uncertainty][half][errors]") {
  std::mt19937_64 g(5);
  const std::int64_t N = 8;
  const int K = 3, C = 4;
  const std::vector<float> p = random_probs(g, N * K, C);
  std::vector<std::uint16_t> h(p.size());
  for (std::size_t i = 0; i < p.size(); ++i) h[i] = to_half(p[i]);
  std::vector<float> out(N);
  const std::vector<MetricOutput> outs{{Metric::Bald, TensorView::of(out.data(), {N})}};
  auto bad = h;
  bad[(5 * K + 1) * C + 2] = 0x7e00u;  // NaN
  CHECK_THROWS_WITH(score(TensorView(bad.data(), DType::Float16, {N, K, C}), outs),
                    Catch::Contains("item [5]") && Catch::Contains("NaN or Inf"));
  bad = h;
  bad[(6 * K) * C] = to_half(from_half(h[(6 * K) * C]) + 0.05f);  // sum 1.05: beyond 5e-3
  CHECK_THROWS_WITH(score(TensorView(bad.data(), DType::Float16, {N, K, C}), outs),
                    Catch::Contains("item [6]") && Catch::Contains("do not sum to 1"));
  bad = h;
  bad[(2 * K + 1) * C + 1] = 0xbc00u;  // -1
  CHECK_THROWS_WITH(score(TensorView(bad.data(), DType::Float16, {N, K, C}), outs),
                    Catch::Contains("item [2]") && Catch::Contains("negative"));
  std::vector<std::int32_t> ints(N * K * C);
  CHECK_THROWS_WITH(score(TensorView::of(ints.data(), {N, K, C}), outs), Catch::Contains("float16, bfloat16"));
  CHECK_THROWS_WITH(score(TensorView(h.data(), DType::BFloat16, {N, K}), outs), Catch::Contains("has no axis 2 for the default class axis"));
  CHECK(normalization_tolerance(DType::Float16) == 5e-3);
  CHECK(normalization_tolerance(DType::BFloat16) == 4e-2);
}
