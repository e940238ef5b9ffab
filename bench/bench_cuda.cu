// CUDA benchmark of the fused uncertainty pass, timed with CUDA events (no Google Benchmark:
// the GPU machine has none). Prints a Markdown table: time, bytes read / s, and the floors —
// the device's measured copy bandwidth (cudaMemcpy D2D, read + write bytes) and a read-only
// reduction kernel over the same buffer.
// Usage: bench_cuda [N=1310720] [K=20] [C=10]   (default input: 1.05 GB of float32 probabilities)
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "labelwise/labelwise.hpp"

#define CK(x)                                                                       \
  do {                                                                              \
    cudaError_t e = (x);                                                            \
    if (e != cudaSuccess) {                                                         \
      std::fprintf(stderr, "%s failed: %s\n", #x, cudaGetErrorString(e));           \
      std::exit(1);                                                                 \
    }                                                                               \
  } while (0)

__global__ void read_sum(const float4* __restrict__ x, std::size_t n4, float* out) {
  float s = 0.f;
  for (std::size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += gridDim.x * blockDim.x) {
    const float4 v = x[i];
    s += v.x + v.y + v.z + v.w;
  }
  if (s == 12345.678f) *out = s;  // keep the loads alive
}

template <typename F>
float time_ms(F f, int reps = 10) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  f();  // warm-up
  CK(cudaDeviceSynchronize());
  float best = 1e30f;
  for (int r = 0; r < reps; ++r) {
    CK(cudaEventRecord(a));
    f();
    CK(cudaEventRecord(b));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    best = ms < best ? ms : best;
  }
  return best;
}

int main(int argc, char** argv) {
  using namespace labelwise;
  const std::int64_t N = argc > 1 ? std::atoll(argv[1]) : 1310720, K = argc > 2 ? std::atoll(argv[2]) : 20,
                     C = argc > 3 ? std::atoll(argv[3]) : 10;
  const std::size_t n = static_cast<std::size_t>(N * K * C);
  const double bytes = 4.0 * n;
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs; input [N=%lld, K=%lld, C=%lld] float32 = %.2f GB\n", prop.name,
              prop.multiProcessorCount, (long long)N, (long long)K, (long long)C, bytes / 1e9);

  // Random probabilities, generated on the host once per row block and replicated to fill N.
  const std::int64_t rows = std::min<std::int64_t>(N * K, 1 << 16);
  std::vector<float> host(static_cast<std::size_t>(rows * C));
  std::mt19937 rng(3);
  std::gamma_distribution<float> g(0.5f);
  for (std::int64_t r = 0; r < rows; ++r) {
    float z = 0;
    for (std::int64_t c = 0; c < C; ++c) z += (host[r * C + c] = g(rng) + 1e-6f);
    for (std::int64_t c = 0; c < C; ++c) host[r * C + c] /= z;
  }
  float *x = nullptr, *copy = nullptr, *out = nullptr, *sink = nullptr;
  CK(cudaMalloc(&x, n * 4));
  CK(cudaMalloc(&copy, n * 4));
  CK(cudaMalloc(&out, kNumMetrics * N * 4));
  CK(cudaMalloc(&sink, 4));
  for (std::size_t off = 0; off < n; off += host.size())
    CK(cudaMemcpy(x + off, host.data(), std::min(host.size(), n - off) * 4, cudaMemcpyHostToDevice));

  const float copy_ms = time_ms([&] { CK(cudaMemcpyAsync(copy, x, n * 4, cudaMemcpyDeviceToDevice)); });
  const double copy_bw = 2 * bytes / (copy_ms * 1e-3);
  const float read_ms = time_ms([&] { read_sum<<<prop.multiProcessorCount * 8, 512>>>(reinterpret_cast<const float4*>(x), n / 4, sink); });
  const double read_bw = bytes / (read_ms * 1e-3);
  std::printf("\n| case | time (ms) | GB/s read | %% of copy bw | %% of read-kernel bw |\n|---|---|---|---|---|\n");
  std::printf("| cudaMemcpy D2D (read+write) | %.3f | %.0f (r+w) | 100 | - |\n", copy_ms, copy_bw / 1e9);
  std::printf("| read-only reduction kernel | %.3f | %.0f | %.0f | 100 |\n", read_ms, read_bw / 1e9, 100 * read_bw / copy_bw);

  const TensorView pool(x, DType::Float32, {N, K, C}, Device::cuda(0));
  auto run = [&](const char* label, std::vector<Metric> metrics, InputKind kind, const TensorView& xv) {
    ScoreOptions opt;
    opt.input = kind;
    const std::vector<std::int64_t> oshape = score_shape(xv, opt);  // [N] or [B, H, W]
    std::vector<MetricOutput> outs;
    for (std::size_t m = 0; m < metrics.size(); ++m)
      outs.push_back({metrics[m], TensorView(out + m * N, DType::Float32, oshape, Device::cuda(0))});
    const float ms = time_ms([&] { score(xv, outs, opt); }, 5);
    const double bw = bytes / (ms * 1e-3);
    std::printf("| %s | %.3f | %.0f | %.0f | %.0f |\n", label, ms, bw / 1e9, 100 * bw / copy_bw, 100 * bw / read_bw);
  };
  std::vector<Metric> all;
  for (int m = 0; m < kNumMetrics; ++m) all.push_back(Metric(m));
  run("all 10 metrics, probs", all, InputKind::Probabilities, pool);
  run("bald, probs", {Metric::Bald}, InputKind::Probabilities, pool);
  run("predictive_entropy, probs", {Metric::PredictiveEntropy}, InputKind::Probabilities, pool);
  run("balentacq, probs", {Metric::BalEntAcq}, InputKind::Probabilities, pool);
  run("all 10 metrics, logits", all, InputKind::Logits, pool);
  if (N % (512 * 512) == 0) {
    // The same bytes as segmentation maps [B, K, C, 512, 512]: neighbouring pixels side by side.
    const std::int64_t B = N / (512 * 512), hw = 512 * 512;
    const TensorView seg(x, DType::Float32, {B, K, C, 512, 512}, {K * C * hw, C * hw, hw, 512, 1}, Device::cuda(0));
    run("all 10 metrics, logits, [B, K, C, 512, 512] maps", all, InputKind::Logits, seg);
  }
  std::printf("\nfloor for the fused pass: %.3f ms (bytes / read-kernel bandwidth)\n", bytes / read_bw * 1e3);

  // Acquisition: top_k and stochastic on N_sel = 10^7 float32 scores drawn as bench_acquisition's CPU
  // scores are (gamma(2) draws: almost no ties; the replicated probability blocks of x repeat every value
  // ~15 times, which changes top_k's sampled floor and stochastic's pruning), b = 10^4. Floor: the
  // scores read once at the read-kernel bandwidth.
  {
    const std::int64_t n_sel = 10000000, b_sel = 10000;
    std::vector<float> host_scores(static_cast<std::size_t>(n_sel));
    std::mt19937 srng(11);
    std::gamma_distribution<float> sg(2.0f);
    for (auto& v : host_scores) v = sg(srng);
    float* scores = nullptr;
    CK(cudaMalloc(&scores, n_sel * sizeof(float)));
    CK(cudaMemcpy(scores, host_scores.data(), n_sel * sizeof(float), cudaMemcpyHostToDevice));
    std::int64_t* sel = nullptr;
    CK(cudaMalloc(&sel, b_sel * sizeof(std::int64_t)));
    const TensorView sv(scores, DType::Float32, {n_sel}, Device::cuda(0));
    const TensorView iv(sel, DType::Int64, {b_sel}, Device::cuda(0));
    const double sel_bytes = 4.0 * n_sel;
    std::printf("\n| acquisition, N=%lld float32, b=%lld | time (ms) | GB/s scores read | floor (ms) |\n|---|---|---|---|\n",
                (long long)n_sel, (long long)b_sel);
    auto row = [&](const char* label, auto&& f) {
      const float ms = time_ms(f, 5);
      std::printf("| %s | %.3f | %.0f | %.3f |\n", label, ms, sel_bytes / (ms * 1e-3) / 1e9, sel_bytes / read_bw * 1e3);
    };
    row("top_k", [&] { top_k(sv, b_sel, iv); });
    const StochasticMode modes[] = {StochasticMode::Power, StochasticMode::Softmax, StochasticMode::SoftRank};
    for (StochasticMode mode : modes) {
      StochasticOptions o;
      o.mode = mode;
      o.seed = 1;
      const std::string label = std::string("stochastic ") + stochastic_mode_name(mode);
      row(label.c_str(), [&] { stochastic(sv, b_sel, iv, o); });
    }
    cudaFree(sel);
    cudaFree(scores);
  }
  cudaFree(x);
  cudaFree(copy);
  cudaFree(out);
  cudaFree(sink);
  return 0;
}
