// CUDA == CPU for greedy BatchBALD on fresh random pools: the same picks, scores within 1e-9 relative
// (the device sums the table's rows in another order), in the exact and the sampled regime, for
// float32 / float64, strided layouts, logits, pools that do not fill a candidate group, tables split
// over many row slices, K · C above 48 KiB of shared memory; and the errors.
// Tagged [cuda]: CPU-only CI excludes it; bench/gpu_check.sh runs it on a GPU machine.
#include <catch2/catch.hpp>
#include <cuda_runtime.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.cuh"
#include "labelwise/acquisition/batchbald.hpp"

using namespace labelwise;
using lw_test::DeviceArray;

namespace {

/// Softmax of per-item means plus per-sample noise: [N][K][C] probabilities with real disagreement.
std::vector<double> random_probs(std::mt19937_64& g, int N, int K, int C) {
  std::normal_distribution<double> nd;
  std::vector<double> p(static_cast<std::size_t>(N) * K * C);
  for (int n = 0; n < N; ++n) {
    std::vector<double> mu(C);
    for (auto& m : mu) m = 2.0 * nd(g);
    const double spread = 1.5 * std::fabs(nd(g));
    for (int k = 0; k < K; ++k) {
      double* row = p.data() + (static_cast<std::size_t>(n) * K + k) * C;
      double mx = -1e300, s = 0.0;
      for (int c = 0; c < C; ++c) mx = std::max(mx, row[c] = mu[c] + spread * nd(g));
      for (int c = 0; c < C; ++c) s += row[c] = std::exp(row[c] - mx);
      for (int c = 0; c < C; ++c) row[c] /= s;
    }
  }
  return p;
}

/// Runs x (host layout `shape`, the options' axes) on the CPU and, copied as is, on the GPU; compares.
template <typename T>
void cpu_vs_cuda(const std::vector<T>& x, const std::vector<std::int64_t>& shape, std::int64_t b,
                 const BatchBaldOptions& opt) {
  std::vector<std::int64_t> ci(b);
  std::vector<double> cs(b);
  batchbald(TensorView::of(x.data(), shape), b, TensorView::of(ci.data(), {b}), TensorView::of(cs.data(), {b}), opt);
  DeviceArray<T> dx(x);
  DeviceArray<std::int64_t> di(static_cast<std::size_t>(b));
  DeviceArray<double> ds(static_cast<std::size_t>(b));
  batchbald(dx.view(shape), b, di.view({b}), ds.view({b}), opt);
  CHECK(di.host() == ci);
  const std::vector<double> gs = ds.host();
  for (std::int64_t i = 0; i < b; ++i) CHECK(gs[i] == Approx(cs[i]).epsilon(1e-9).margin(1e-12));
}

}  // namespace

TEST_CASE("batchbald on CUDA equals the CPU", "[cuda][batchbald]") {
  const std::uint64_t seed = lw_test::fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 g(seed);
  BatchBaldOptions opt;
  opt.seed = seed;

  SECTION("exact, then sampled (float64, [N, K, C])") {
    const int N = 203, K = 10, C = 5;  // 203: the last candidate group is partial
    opt.num_samples = 1000;            // exact while 5^m <= 1000 (m <= 4), then 1000 sampled configurations
    cpu_vs_cuda(random_probs(g, N, K, C), {N, K, C}, 7, opt);
  }
  SECTION("float32 in the [K, N, C] layout") {
    const int N = 150, K = 8, C = 6;
    const auto p = random_probs(g, N, K, C);
    std::vector<float> knc(p.size());
    for (int n = 0; n < N; ++n)
      for (int k = 0; k < K; ++k)
        for (int c = 0; c < C; ++c)
          knc[(static_cast<std::size_t>(k) * N + n) * C + c] =
              static_cast<float>(p[(static_cast<std::size_t>(n) * K + k) * C + c]);
    // float32 rows sum to 1 within the tolerance only: both devices see the same rounded values
    opt.num_samples = 500;
    opt.sample_axis = 0;
    opt.class_axis = -1;
    cpu_vs_cuda(knc, {K, N, C}, 5, opt);
  }
  SECTION("logits and log-probabilities") {
    const int N = 64, K = 6, C = 4;
    const auto p = random_probs(g, N, K, C);
    std::vector<double> lg(p.size());
    for (std::size_t i = 0; i < p.size(); ++i) lg[i] = std::log(p[i]) + 2.0;
    opt.num_samples = 300;
    opt.input = InputKind::Logits;
    cpu_vs_cuda(lg, {N, K, C}, 6, opt);
    for (std::size_t i = 0; i < p.size(); ++i) lg[i] = std::log(p[i]);
    opt.input = InputKind::LogProbabilities;
    cpu_vs_cuda(lg, {N, K, C}, 6, opt);
  }
  SECTION("a small pool against a large table (many row slices)") {
    const int N = 9, K = 12, C = 10;
    opt.num_samples = 20000;  // exact up to 10^4 rows
    cpu_vs_cuda(random_probs(g, N, K, C), {N, K, C}, 6, opt);
  }
  SECTION("K · C at the 48 KiB boundary (dynamic just under it, dynamic + static just over)") {
    const int N = 30, K = 16, C = 96;  // 4 · 1536 doubles = 48 KiB dynamic + the static reduction buffer
    opt.num_samples = 100;
    cpu_vs_cuda(random_probs(g, N, K, C), {N, K, C}, 3, opt);
  }
  SECTION("K · C above 48 KiB of shared memory per block") {
    const int N = 40, K = 64, C = 40;
    opt.num_samples = 100;
    cpu_vs_cuda(random_probs(g, N, K, C), {N, K, C}, 3, opt);
  }
}

TEST_CASE("batchbald on CUDA: errors", "[cuda][batchbald]") {
  std::mt19937_64 g(3);
  const int N = 20, K = 4, C = 3;
  auto p = random_probs(g, N, K, C);
  BatchBaldOptions opt;
  opt.num_samples = 100;
  DeviceArray<std::int64_t> di(4);
  {
    auto bad = p;
    bad[(5 * K + 2) * C + 1] = std::nan("");
    DeviceArray<double> dx(bad);
    try {
      batchbald(dx.view({N, K, C}), 2, di.view({2}), opt);
      FAIL("no error for NaN");
    } catch (const Error& e) {
      CHECK(std::string(e.what()).find("NaN or Inf") != std::string::npos);
      CHECK(std::string(e.what()).find("5") != std::string::npos);
    }
  }
  DeviceArray<double> dx(p);
  std::vector<std::int64_t> host_idx(2);
  CHECK_THROWS_WITH(batchbald(dx.view({N, K, C}), 2, TensorView::of(host_idx.data(), {2}), opt),
                    Catch::Contains("indices: is on"));
  CHECK_NOTHROW(batchbald(dx.view({N, K, C}), 0, di.view({0}), opt));
  // K · C beyond the device's shared memory for one candidate group
  const int K2 = 200, C2 = 100;
  std::vector<double> wide(static_cast<std::size_t>(2) * K2 * C2, 1.0 / C2);
  DeviceArray<double> dw(wide);
  CHECK_THROWS_WITH(batchbald(dw.view({2, K2, C2}), 1, di.view({1}), opt), Catch::Contains("too large"));
}
