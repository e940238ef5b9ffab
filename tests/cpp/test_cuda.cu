// CPU == CUDA for the uncertainty metrics. Tagged [cuda]: CPU-only CI excludes it
// (catch_discover_tests TEST_SPEC "~[cuda]"); bench/gpu_check.sh runs it on a GPU machine.
#include <catch2/catch.hpp>

#include "test_seed.hpp"
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <type_traits>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <sstream>
#include <vector>

#include "labelwise/uncertainty/metrics.hpp"
#include "cuda_test_util.cuh"
#include "reference.hpp"

using namespace labelwise;
using lw_test::DeviceArray;

namespace {

/// Every metric of a contiguous [N, K, C] pool on the CPU and on CUDA. mixed = false: smooth gamma(0.5)
/// rows. mixed = true: one character per item, in turn the four of the CPU tests (ref::random_probs:
/// spread, near one-hot, uniform, entries of 1e-30) and a fifth with exact zeros (1 to C - 1 classes of
/// probability 0: -inf log-probabilities, masked -inf logits); logits are then ln p plus one offset per
/// row (the row keeps its character).
template <typename T>
void compare_layout(int N, int K, int C, InputKind kind, std::uint64_t seed, bool mixed = false) {
  INFO("compare_layout: N " << N << " K " << K << " C " << C << " kind " << static_cast<int>(kind) << " seed "
                            << seed << (mixed ? " mixed rows" : " smooth rows")
                            << (std::is_same<T, float>::value ? " float32" : " float64"));
  std::mt19937_64 rng(seed);
  std::gamma_distribution<double> g(0.5);
  std::normal_distribution<double> n01(0, 2);
  std::uniform_int_distribution<int> zeros(1, C - 1);
  std::vector<T> host(static_cast<std::size_t>(N) * K * C);
  std::vector<char> certain(N, 0);  // some sample's top class within 1e-2 of 1
  for (int i = 0; i < N; ++i) {
    const int ch = static_cast<int>((static_cast<std::uint64_t>(i) + seed) % 5);
    for (int k = 0; k < K; ++k) {
      std::vector<double> q(C);
      if (!mixed) {
        double z = 0;
        for (int c = 0; c < C; ++c) z += (q[c] = g(rng) + 1e-9);
        for (double& v : q) v /= z;
      } else if (ch < 4) {
        q = ref::random_probs(rng, C, ch);
      } else {
        q = ref::random_probs(rng, C, 0);
        std::vector<int> order(C);
        for (int c = 0; c < C; ++c) order[c] = c;
        std::shuffle(order.begin(), order.end(), rng);
        const int nz = zeros(rng);
        for (int j = 0; j < nz; ++j) q[order[j]] = 0.0;
        double z = 0;
        for (double v : q) z += v;
        for (double& v : q) v /= z;
      }
      const double offset = n01(rng);
      T* row = &host[(static_cast<std::size_t>(i) * K + k) * C];
      for (int c = 0; c < C; ++c) {
        const double p = q[c];
        certain[i] |= p > 1.0 - 1e-2;
        row[c] = static_cast<T>(kind == InputKind::Probabilities      ? p
                                : kind == InputKind::LogProbabilities ? std::log(p)
                                                                      : std::log(p) + (mixed ? offset : n01(rng)));
      }
    }
  }
  DeviceArray<T> dx(host.size());
  REQUIRE(cudaMemcpy(dx.ptr, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
  DeviceArray<double> dout(static_cast<std::size_t>(kNumMetrics) * N);
  std::vector<double> cpu(static_cast<std::size_t>(kNumMetrics) * N), gpu(cpu.size());
  std::vector<MetricOutput> oc, og;
  for (int m = 0; m < kNumMetrics; ++m) {
    oc.push_back({static_cast<Metric>(m), TensorView::of(cpu.data() + m * N, {N})});
    og.push_back({static_cast<Metric>(m),
                  TensorView(dout.ptr + m * N, DType::Float64, {N}, Device::cuda(0))});
  }
  ScoreOptions opt;
  opt.input = kind;
  score(TensorView::of(host.data(), {N, K, C}), oc, opt);
  score(TensorView(dx.ptr, dtype_of<T>::value, {N, K, C}, Device::cuda(0)), og, opt);
  REQUIRE(cudaMemcpy(gpu.data(), dout.ptr, gpu.size() * sizeof(double), cudaMemcpyDeviceToHost) == cudaSuccess);
  const bool f32 = std::is_same<T, float>::value;
  const double tol = f32 ? 1e-4 : 1e-10;
  // One CHECK per metric (a count and the first few items), not one per item: a kernel wrong everywhere
  // would otherwise write ~10^5 failures, too much log to come back from the GPU machine.
  for (int m = 0; m < kNumMetrics; ++m) {
    int bad = 0;
    std::ostringstream first;
    for (int i = 0; i < N; ++i) {
      const double a = cpu[m * N + i], g = gpu[m * N + i];
      const bool balentacq = m == static_cast<int>(Metric::BalEntAcq);
      // From float32 inputs, a nearly certain sample's 1 - p carries a relative error of up to
      // ulp(1) / (1 - p), which BalEntAcq's Beta terms amplify, and the two backends round their sums in
      // different orders: there only both being numbers is asked (the C++ CPU tests' rule against the
      // float64 reference).
      const bool only_numbers = balentacq && f32 && mixed && certain[i];
      const bool ok = !std::isnan(a) && !std::isnan(g) &&
                      (only_numbers ||
                       ref::backends_agree(a, g, tol, balentacq, f32, cpu[static_cast<int>(Metric::LeastConfidence) * N + i]));
      if (!ok && bad++ < 3)
        first << " [item " << i << " character "
              << (mixed ? static_cast<int>((static_cast<std::uint64_t>(i) + seed) % 5) : -1) << ": cpu " << a
              << " gpu " << g << "]";
    }
    INFO(metric_name(static_cast<Metric>(m)) << ": " << bad << " of " << N << " items differ" << first.str());
    CHECK(bad == 0);
  }
}
/// Every metric of x (host bytes `host`, dtype dt, shape / strides as given) on the CPU and on CUDA (a
/// byte copy of the same storage), into float64 or float32 outputs; equal within tol (relative), equal
/// infinities, BalEntAcq's pole and float32 rule as in ref::backends_agree.
void cpu_equals_cuda(const std::vector<unsigned char>& host, DType dt, const std::vector<std::int64_t>& shape,
                     const std::vector<std::int64_t>& strides, const ScoreOptions& opt, DType out_dt, double tol) {
  const TensorView hx(const_cast<unsigned char*>(host.data()), dt, shape, strides);
  const std::vector<std::int64_t> oshape = score_shape(hx, opt);
  std::int64_t n = 1;
  for (auto d : oshape) n *= d;
  const std::size_t es = out_dt == DType::Float32 ? 4 : 8;
  std::vector<unsigned char> cpu(static_cast<std::size_t>(kNumMetrics * n) * es), gpu(cpu.size());
  DeviceArray<unsigned char> dx(host), dout(cpu.size());
  // Every metric, or without a sample axis the ones that need none.
  std::vector<int> metrics;
  for (int m = 0; m < kNumMetrics; ++m)
    if (opt.sample_axis || !metric_needs_samples(static_cast<Metric>(m))) metrics.push_back(m);
  std::vector<MetricOutput> oc, og;
  for (int m : metrics) {
    oc.push_back({static_cast<Metric>(m), TensorView(cpu.data() + m * n * es, out_dt, oshape)});
    og.push_back({static_cast<Metric>(m), TensorView(dout.ptr + m * n * es, out_dt, oshape, Device::cuda(0))});
  }
  score(hx, oc, opt);
  score(TensorView(dx.ptr, dt, shape, strides, Device::cuda(0)), og, opt);
  gpu = dout.host();
  auto at = [&](const std::vector<unsigned char>& v, std::int64_t q) {
    if (out_dt == DType::Float64) {
      double d;
      std::memcpy(&d, v.data() + q * 8, 8);
      return d;
    }
    float f;
    std::memcpy(&f, v.data() + q * 4, 4);
    return static_cast<double>(f);
  };
  for (int m : metrics) {
    std::int64_t bad = 0, first = -1;
    for (std::int64_t i = 0; i < n; ++i) {
      const double a = at(cpu, m * n + i), g = at(gpu, m * n + i);
      if (!ref::backends_agree(a, g, tol, m == static_cast<int>(Metric::BalEntAcq), dt != DType::Float64,
                               at(cpu, static_cast<int>(Metric::LeastConfidence) * n + i)))
        if (bad++ == 0) first = i;
    }
    INFO(metric_name(static_cast<Metric>(m)) << ": " << bad << " of " << n << " items differ; first " << first
                                             << (first >= 0 ? " cpu " + std::to_string(at(cpu, m * n + first)) +
                                                                  " gpu " + std::to_string(at(gpu, m * n + first))
                                                            : std::string()));
    CHECK(bad == 0);
  }
}

/// n logits rows of C classes (normal, scale 2) as float values.
std::vector<float> random_logits(std::size_t count, std::mt19937_64& rng) {
  std::normal_distribution<double> n01(0, 2);
  std::vector<float> v(count);
  for (float& x : v) x = static_cast<float>(n01(rng));
  return v;
}

template <typename T>
std::vector<unsigned char> bytes_of(const std::vector<T>& v) {
  std::vector<unsigned char> b(v.size() * sizeof(T));
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

}  // namespace

TEST_CASE("CUDA equals CPU: strided layouts, float16 / bfloat16, float32 outputs, more items than threads",
          "[cuda]") {
  lw_test::require_device();
  std::mt19937_64 rng(fresh_seed());
  ScoreOptions logits;
  logits.input = InputKind::Logits;
  for (const auto& [N, K, C] : {std::array<int, 3>{700, 9, 6}, std::array<int, 3>{333, 7, 40}}) {
    // BaaL's [N, C, K]: samples on the last axis, classes in the middle (and more than 32 classes)
    const std::vector<float> x = random_logits(static_cast<std::size_t>(N) * C * K, rng);
    ScoreOptions o = logits;
    o.sample_axis = 2;
    o.class_axis = 1;
    cpu_equals_cuda(bytes_of(x), DType::Float32, {N, C, K}, {C * K, K, 1}, o, DType::Float64, 1e-4);
    // a transposed view of [K, N, C] storage read as [N, K, C] (sample stride > item stride)
    cpu_equals_cuda(bytes_of(x), DType::Float32, {N, K, C}, {C, N * C, 1}, logits, DType::Float32, 1e-4);
  }
  {
    // float16 / bfloat16 logits (widened exactly on both sides), 2D segmentation maps [B, K, C, H, W]
    const int B = 2, K = 5, C = 4, H = 13, W = 17;
    const std::vector<float> x = random_logits(static_cast<std::size_t>(B) * K * C * H * W, rng);
    std::vector<std::uint16_t> h16(x.size()), b16(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) {
      const __half h = __float2half(x[i]);
      const __nv_bfloat16 b = __float2bfloat16(x[i]);
      std::memcpy(&h16[i], &h, 2);
      std::memcpy(&b16[i], &b, 2);
    }
    const std::vector<std::int64_t> shape{B, K, C, H, W}, strides{K * C * H * W, C * H * W, H * W, W, 1};
    cpu_equals_cuda(bytes_of(h16), DType::Float16, shape, strides, logits, DType::Float64, 1e-4);
    cpu_equals_cuda(bytes_of(b16), DType::BFloat16, shape, strides, logits, DType::Float32, 1e-4);
  }
  {
    // more items than the grid has threads (132 SMs x 16 x 128 = 270k on an H200): each thread loops
    // over many items and reuses its scratch
    const int N = 1 << 20, K = 3, C = 3;
    const std::vector<float> x = random_logits(static_cast<std::size_t>(N) * K * C, rng);
    cpu_equals_cuda(bytes_of(x), DType::Float32, {N, K, C}, {K * C, C, 1}, logits, DType::Float64, 1e-4);
  }
}

TEST_CASE("CUDA equals CPU for all metrics and input kinds", "[cuda]") {
  lw_test::require_device();
  const std::uint64_t seed = fresh_seed();
  for (int kind = 0; kind < 3; ++kind) {
    compare_layout<float>(3000, 20, 10, static_cast<InputKind>(kind), seed + kind);
    compare_layout<double>(500, 8, 14, static_cast<InputKind>(kind), seed + 10 + kind);
  }
}

TEST_CASE("CUDA equals CPU on near one-hot, uniform, tiny and exact-zero rows, masked logits, C > 16", "[cuda]") {
  lw_test::require_device();
  const std::uint64_t seed = fresh_seed();
  for (int kind = 0; kind < 3; ++kind) {
    const InputKind ik = static_cast<InputKind>(kind);
    // the row characters of the CPU tests, at the class counts the existing cases use
    compare_layout<float>(2000, 10, 10, ik, seed + 100 + kind, true);
    compare_layout<double>(500, 8, 14, ik, seed + 110 + kind, true);
    // more than 16 classes (beyond one 16-wide vector / the small per-thread scratch), smooth and mixed
    for (int C : {17, 33, 100}) {
      compare_layout<float>(600, 6, C, ik, seed + 200 + 10 * C + kind);
      compare_layout<float>(600, 6, C, ik, seed + 300 + 10 * C + kind, true);
      compare_layout<double>(300, 5, C, ik, seed + 400 + 10 * C + kind, true);
    }
  }
}

TEST_CASE("CUDA reports the first bad item", "[cuda]") {
  std::vector<float> host(100 * 2 * 2, 0.5f);
  host[57 * 4 + 1] = NAN;
  host[90 * 4 + 2] = NAN;
  DeviceArray<float> dx(host.size()), dout(100);
  REQUIRE(cudaMemcpy(dx.ptr, host.data(), host.size() * 4, cudaMemcpyHostToDevice) == cudaSuccess);
  CHECK_THROWS_WITH(bald(TensorView(dx.ptr, DType::Float32, {100, 2, 2}, Device::cuda(0)),
                         TensorView(dout.ptr, DType::Float32, {100}, Device::cuda(0))),
                    Catch::Contains("item [57]"));
}

TEST_CASE("CUDA equals CPU at class counts around each power of two up to 257, and at K = 100", "[cuda]") {
  lw_test::require_device();
  const std::uint64_t seed = fresh_seed();
  // Class counts at which a CUDA kernel changes shape (a kernel that spreads an item's classes over
  // lanes: 2 to 32 lanes, 2 to 8 classes per lane, up to 256; shared-memory staging limits); item
  // counts that are no multiple of a block's items.
  for (int C : {2, 3, 5, 8, 9, 16, 31, 32, 33, 64, 65, 128, 129, 256, 257}) {
    compare_layout<float>(301, 4, C, InputKind::Probabilities, seed + 500 + C, true);
    compare_layout<float>(301, 4, C, InputKind::Logits, seed + 800 + C, true);
    compare_layout<double>(157, 3, C, InputKind::LogProbabilities, seed + 1100 + C, true);
  }
  // Many samples per item: more rows than a kernel may stage at once.
  compare_layout<float>(203, 100, 10, InputKind::Probabilities, seed + 1400, true);
  compare_layout<float>(203, 100, 10, InputKind::Logits, seed + 1401);
  compare_layout<double>(40, 5, 256, InputKind::Logits, seed + 1402, true);
}

TEST_CASE("CUDA equals CPU where blocks loop over several groups of items", "[cuda]") {
  // The metrics kernels run a grid bounded by the multiprocessor count, each block looping over groups
  // of items with its shared-memory stage rewritten every pass (the lanes kernel of branch
  // cuda-lanes-kernel: about 400 blocks on 132 SMs). The other cases fit in one pass; these need two
  // to four on an H100 / H200 in every staging order: items apart (rows contiguous, no flat copy),
  // segmentation maps (items side by side), rows in several chunks on a map, and 40 / 129 classes
  // (2 / 8 classes per lane there). Small enough for the sanitizers' runs.
  lw_test::require_device();
  std::mt19937_64 rng(fresh_seed());
  ScoreOptions logits;
  logits.input = InputKind::Logits;
  {
    const int N = 13000, K = 4, C = 10;  // 16 lanes an item: 16 items a block pass
    const std::vector<float> x = random_logits(static_cast<std::size_t>(2 * N) * K * C, rng);
    cpu_equals_cuda(bytes_of(x), DType::Float32, {N, K, C}, {2 * K * C, C, 1}, logits, DType::Float64, 1e-4);
  }
  {
    const int B = 1, K = 3, C = 14, H = 100, W = 100;  // 10 000 pixels
    const std::vector<float> x = random_logits(static_cast<std::size_t>(B) * K * C * H * W, rng);
    cpu_equals_cuda(bytes_of(x), DType::Float32, {B, K, C, H, W}, {K * C * H * W, C * H * W, H * W, W, 1}, logits,
                    DType::Float32, 1e-4);
  }
  {
    const int B = 1, K = 30, C = 14, H = 90, W = 90;  // 8 100 pixels, 27 rows a chunk
    const std::vector<float> x = random_logits(static_cast<std::size_t>(B) * K * C * H * W, rng);
    cpu_equals_cuda(bytes_of(x), DType::Float32, {B, K, C, H, W}, {K * C * H * W, C * H * W, H * W, W, 1}, logits,
                    DType::Float64, 1e-4);
  }
  for (int C : {40, 129}) {  // 2 and 8 classes per lane, 32 lanes an item
    const int B = 1, K = 3, H = 50, W = 60;
    const std::vector<float> x = random_logits(static_cast<std::size_t>(B) * K * C * H * W, rng);
    cpu_equals_cuda(bytes_of(x), DType::Float32, {B, K, C, H, W}, {K * C * H * W, C * H * W, H * W, W, 1}, logits,
                    DType::Float64, 1e-4);
    const int N = 5000;
    std::vector<double> y(static_cast<std::size_t>(N) * K * C);
    std::normal_distribution<double> n01(0, 2);
    for (double& e : y) e = n01(rng);
    cpu_equals_cuda(bytes_of(y), DType::Float64, {N, K, C}, {K * C, C, 1}, logits, DType::Float64, 1e-10);
  }
}

TEST_CASE("CUDA equals CPU on 3D maps, BaaL's layout with 40 classes, and items apart in memory", "[cuda]") {
  lw_test::require_device();
  std::mt19937_64 rng(fresh_seed());
  ScoreOptions logits;
  logits.input = InputKind::Logits;
  {
    // 3D segmentation maps [B, K, C, D, H, W]: neighbouring voxels side by side, a voxel count that is
    // no multiple of a block's items
    const int B = 2, K = 6, C = 14, D = 3, H = 11, W = 7;
    const std::vector<float> x = random_logits(static_cast<std::size_t>(B) * K * C * D * H * W, rng);
    const std::int64_t v = static_cast<std::int64_t>(D) * H * W;
    cpu_equals_cuda(bytes_of(x), DType::Float32, {B, K, C, D, H, W}, {K * C * v, C * v, v, H * W, W, 1}, logits,
                    DType::Float64, 1e-4);
  }
  {
    // every other item of a contiguous pool: each item's rows contiguous, the items not
    const int N = 257, K = 20, C = 10;
    const std::vector<float> x = random_logits(static_cast<std::size_t>(2 * N) * K * C, rng);
    cpu_equals_cuda(bytes_of(x), DType::Float32, {N, K, C}, {2 * K * C, C, 1}, logits, DType::Float64, 1e-4);
    // and float64 with many samples
    const int K2 = 100;
    std::vector<double> y(static_cast<std::size_t>(2 * N) * K2 * C);
    std::normal_distribution<double> n01(0, 2);
    for (double& e : y) e = n01(rng);
    cpu_equals_cuda(bytes_of(y), DType::Float64, {N, K2, C}, {2 * K2 * C, C, 1}, logits, DType::Float64, 1e-10);
  }
  {
    // single predictions (no sample axis): [N, C] and 2D maps [B, C, H, W]
    ScoreOptions single = logits;
    single.sample_axis = std::nullopt;
    const int N = 1000, C = 7, B = 3, H = 19, W = 23;
    const std::vector<float> x = random_logits(static_cast<std::size_t>(N) * C, rng);
    cpu_equals_cuda(bytes_of(x), DType::Float32, {N, C}, {C, 1}, single, DType::Float64, 1e-4);
    const std::vector<float> m = random_logits(static_cast<std::size_t>(B) * C * H * W, rng);
    cpu_equals_cuda(bytes_of(m), DType::Float32, {B, C, H, W}, {C * H * W, H * W, W, 1}, single, DType::Float64, 1e-4);
  }
}

namespace {

/// The message of the Error that f throws, or "" when it throws none.
template <typename F>
std::string error_message(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("CUDA names the same bad item and error as the CPU, in any row chunk", "[cuda]") {
  lw_test::require_device();
  std::mt19937_64 rng(fresh_seed());
  // K = 100 rows of C = 10 float32 classes: more rows than a kernel may stage at once, so bad values
  // at rows 38 to 99 are found in a later chunk; the bad items sit inside a block's items.
  const int N = 64, K = 100, C = 10;
  struct Case {
    InputKind kind;
    const char* what;
    std::function<void(std::vector<float>&, int item, int row)> spoil;
  };
  auto row_at = [&](std::vector<float>& x, int i, int k) { return &x[(static_cast<std::size_t>(i) * K + k) * C]; };
  const std::vector<Case> cases{
      {InputKind::Probabilities, "NaN", [&](std::vector<float>& x, int i, int k) { row_at(x, i, k)[3] = NAN; }},
      {InputKind::Probabilities, "negative",
       [&](std::vector<float>& x, int i, int k) {
         row_at(x, i, k)[2] = -0.25f;
         row_at(x, i, k)[5] += 0.25f;
       }},
      {InputKind::Probabilities, "unnormalised", [&](std::vector<float>& x, int i, int k) { row_at(x, i, k)[0] += 0.5f; }},
      {InputKind::Logits, "+inf logit", [&](std::vector<float>& x, int i, int k) { row_at(x, i, k)[9] = INFINITY; }},
      {InputKind::Logits, "all -inf row",
       [&](std::vector<float>& x, int i, int k) {
         for (int c = 0; c < C; ++c) row_at(x, i, k)[c] = -INFINITY;
       }},
      {InputKind::LogProbabilities, "unnormalised log-probabilities",
       [&](std::vector<float>& x, int i, int k) { row_at(x, i, k)[1] += 1.0f; }},
  };
  for (const Case& cs : cases) {
    for (int row : {0, 37, 38, 60, 99}) {
      std::vector<float> x(static_cast<std::size_t>(N) * K * C);
      for (int i = 0; i < N; ++i)
        for (int k = 0; k < K; ++k) {
          const std::vector<double> q = ref::random_probs(rng, C, 0);
          for (int c = 0; c < C; ++c)
            row_at(x, i, k)[c] = static_cast<float>(cs.kind == InputKind::Probabilities ? q[c] : std::log(q[c]));
        }
      cs.spoil(x, 37, row);
      cs.spoil(x, 41, 0);  // a later item: the first bad one is reported
      DeviceArray<float> dx(x), dout(N);
      ScoreOptions opt;
      opt.input = cs.kind;
      std::vector<float> out(N);
      const std::string cpu = error_message([&] {
        score(TensorView::of(x.data(), {N, K, C}), {{Metric::BalEntAcq, TensorView::of(out.data(), {N})}}, opt);
      });
      const std::string gpu = error_message([&] {
        score(dx.view({N, K, C}), {{Metric::BalEntAcq, dout.view({N})}}, opt);
      });
      INFO(cs.what << " at row " << row << ": cpu \"" << cpu << "\" gpu \"" << gpu << "\"");
      CHECK(!cpu.empty());
      CHECK(cpu.find("[37]") != std::string::npos);
      CHECK(gpu == cpu);
    }
  }
}
