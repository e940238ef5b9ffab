// CPU == CUDA for the uncertainty metrics. Tagged [cuda]: CPU-only CI excludes it
// (catch_discover_tests TEST_SPEC "~[cuda]"); bench/gpu_check.sh runs it on a GPU machine.
#include <catch2/catch.hpp>

#include "test_seed.hpp"
#include <cuda_runtime.h>

#include <cmath>
#include <random>
#include <vector>

#include "labelwise/uncertainty/metrics.hpp"
#include "cuda_test_util.cuh"

using namespace labelwise;
using lw_test::DeviceArray;

namespace {

template <typename T>
void compare_layout(int N, int K, int C, InputKind kind, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::gamma_distribution<double> g(0.5);
  std::normal_distribution<double> n01(0, 2);
  std::vector<T> host(static_cast<std::size_t>(N) * K * C);
  for (std::size_t r = 0; r < host.size() / C; ++r) {
    double z = 0;
    std::vector<double> q(C);
    for (int c = 0; c < C; ++c) z += (q[c] = g(rng) + 1e-9);
    for (int c = 0; c < C; ++c) {
      const double p = q[c] / z;
      host[r * C + c] = static_cast<T>(kind == InputKind::Probabilities ? p
                                       : kind == InputKind::LogProbabilities ? std::log(p)
                                                                             : std::log(p) + n01(rng));
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
  const double tol = std::is_same<T, float>::value ? 1e-4 : 1e-10;
  for (int m = 0; m < kNumMetrics; ++m)
    for (int i = 0; i < N; ++i) {
      INFO(metric_name(static_cast<Metric>(m)) << " item " << i << " cpu " << cpu[m * N + i] << " gpu "
                                               << gpu[m * N + i]);
      const double a = cpu[m * N + i], g = gpu[m * N + i];
      // Equal infinities (BalEntAcq's certain items) match; so does BalEntAcq's pole, where one side
      // rounds the top mean to exactly 1 (-inf) and the other gives s > 1e12 (the C++ CPU tests' rule).
      const bool pole = m == static_cast<int>(Metric::BalEntAcq) &&
                        ((a == -INFINITY && g > 1e12) || (g == -INFINITY && a > 1e12));
      CHECK(((std::isinf(a) && a == g) || pole || std::fabs(a - g) <= tol * (1 + std::fabs(a))));
    }
}
}  // namespace

TEST_CASE("CUDA equals CPU for all metrics and input kinds", "[cuda]") {
  int devices = 0;
  REQUIRE(cudaGetDeviceCount(&devices) == cudaSuccess);
  REQUIRE(devices > 0);
  const std::uint64_t seed = fresh_seed();
  for (int kind = 0; kind < 3; ++kind) {
    compare_layout<float>(3000, 20, 10, static_cast<InputKind>(kind), seed + kind);
    compare_layout<double>(500, 8, 14, static_cast<InputKind>(kind), seed + 10 + kind);
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
