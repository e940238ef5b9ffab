// Google Benchmark: the fused uncertainty pass on CPU, with bytes/s counters.
// The floor is the input read once: N*K*C*sizeof(T) bytes over the machine's read bandwidth,
// measured by BM_read_floor in the same run (a load-bound sum over the same buffer, bench/read_floor.hpp).
#include <benchmark/benchmark.h>

#include <numeric>
#include <cmath>
#include <random>
#include <thread>
#include <vector>

#include "labelwise/labelwise.hpp"
#include "read_floor.hpp"

using namespace labelwise;

namespace {
const std::vector<float>& probs(std::int64_t N, std::int64_t K, std::int64_t C) {
  static std::vector<float> x;
  if (static_cast<std::int64_t>(x.size()) != N * K * C) {
    x.resize(N * K * C);
    std::mt19937 rng(1);
    std::gamma_distribution<float> g(0.5f);
    for (std::int64_t r = 0; r < N * K; ++r) {
      float z = 0;
      for (std::int64_t c = 0; c < C; ++c) z += (x[r * C + c] = g(rng) + 1e-6f);
      for (std::int64_t c = 0; c < C; ++c) x[r * C + c] /= z;
    }
  }
  return x;
}

// The floor: read the same bytes once on every thread labelwise uses (bench/read_floor.hpp).
void BM_read_floor(benchmark::State& st) {
  const std::int64_t N = st.range(0), K = st.range(1), C = st.range(2);
  const auto& x = probs(N, K, C);
  const int T = labelwise::num_threads();
  for (auto _ : st) benchmark::DoNotOptimize(labelwise_bench::read_once(x.data(), x.size(), T));
  st.SetBytesProcessed(st.iterations() * N * K * C * 4);
  st.counters["threads"] = T;
}

void run_metrics(benchmark::State& st, const std::vector<Metric>& metrics, InputKind kind) {
  const std::int64_t N = st.range(0), K = st.range(1), C = st.range(2);
  std::vector<float> x = probs(N, K, C);
  if (kind != InputKind::Probabilities)
    for (float& v : x) v = std::log(v);
  std::vector<std::vector<float>> out(metrics.size(), std::vector<float>(N));
  std::vector<MetricOutput> outs;
  for (std::size_t m = 0; m < metrics.size(); ++m) outs.push_back({metrics[m], TensorView::of(out[m].data(), {N})});
  ScoreOptions opt;
  opt.input = kind;
  for (auto _ : st) {
    score(TensorView::of(x.data(), {N, K, C}), outs, opt);
    benchmark::ClobberMemory();
  }
  st.SetBytesProcessed(st.iterations() * N * K * C * 4);
  st.SetItemsProcessed(st.iterations() * N);
}

std::vector<Metric> all() {
  std::vector<Metric> m;
  for (int i = 0; i < kNumMetrics; ++i) m.push_back(Metric(i));
  return m;
}

void BM_all_metrics_probs(benchmark::State& st) { run_metrics(st, all(), InputKind::Probabilities); }
void BM_all_metrics_logits(benchmark::State& st) { run_metrics(st, all(), InputKind::Logits); }
// The same values read as log-probabilities (they are: ln of normalised rows).
void BM_all_metrics_log_probs(benchmark::State& st) { run_metrics(st, all(), InputKind::LogProbabilities); }
void BM_bald_probs(benchmark::State& st) { run_metrics(st, {Metric::Bald}, InputKind::Probabilities); }
void BM_entropy_probs(benchmark::State& st) { run_metrics(st, {Metric::PredictiveEntropy}, InputKind::Probabilities); }
void BM_balentacq_probs(benchmark::State& st) { run_metrics(st, {Metric::BalEntAcq}, InputKind::Probabilities); }
// The five metrics that need only the mean prediction, in one pass.
void BM_mean_only_probs(benchmark::State& st) {
  run_metrics(st,
              {Metric::PredictiveEntropy, Metric::LeastConfidence, Metric::Margin, Metric::Ratio,
               Metric::MaxMeanVariationRatio},
              InputKind::Probabilities);
}
// All ten on BaaL's layout [N, C, K] (a strided view: items are gathered into a contiguous block).
void BM_all_metrics_probs_nck(benchmark::State& st) {
  const std::int64_t N = st.range(0), K = st.range(1), C = st.range(2);
  const auto& src = probs(N, K, C);
  std::vector<float> x(src.size());
  for (std::int64_t i = 0; i < N; ++i)
    for (std::int64_t k = 0; k < K; ++k)
      for (std::int64_t c = 0; c < C; ++c) x[(i * C + c) * K + k] = src[(i * K + k) * C + c];
  std::vector<std::vector<float>> out(kNumMetrics, std::vector<float>(N));
  std::vector<MetricOutput> outs;
  for (int m = 0; m < kNumMetrics; ++m) outs.push_back({Metric(m), TensorView::of(out[m].data(), {N})});
  ScoreOptions opt;
  opt.sample_axis = -1;
  opt.class_axis = 1;
  for (auto _ : st) {
    score(TensorView::of(x.data(), {N, C, K}), outs, opt);
    benchmark::ClobberMemory();
  }
  st.SetBytesProcessed(st.iterations() * N * K * C * 4);
  st.SetItemsProcessed(st.iterations() * N);
}
}  // namespace

#define SHAPE Args({100000, 20, 10})->Unit(benchmark::kMillisecond)->UseRealTime()
BENCHMARK(BM_read_floor)->SHAPE;
BENCHMARK(BM_all_metrics_probs)->SHAPE;
BENCHMARK(BM_all_metrics_logits)->SHAPE;
BENCHMARK(BM_all_metrics_log_probs)->SHAPE;
BENCHMARK(BM_bald_probs)->SHAPE;
BENCHMARK(BM_entropy_probs)->SHAPE;
BENCHMARK(BM_balentacq_probs)->SHAPE;
BENCHMARK(BM_mean_only_probs)->SHAPE;
BENCHMARK(BM_all_metrics_probs_nck)->SHAPE;
// Many classes (issue 2): segmentation with an organ / atlas label set (TotalSegmentator: 104) and
// ImageNet-size classification (1000), each next to the read floor of its own bytes. The cases of a
// shape are registered together, so its input is generated once.
#define SHAPE_C104 Args({20000, 20, 104})->Unit(benchmark::kMillisecond)->UseRealTime()
BENCHMARK(BM_read_floor)->SHAPE_C104;
BENCHMARK(BM_all_metrics_probs)->SHAPE_C104;
BENCHMARK(BM_all_metrics_logits)->SHAPE_C104;
BENCHMARK(BM_all_metrics_log_probs)->SHAPE_C104;
BENCHMARK(BM_balentacq_probs)->SHAPE_C104;
BENCHMARK(BM_all_metrics_probs_nck)->SHAPE_C104;
#define SHAPE_C1000 Args({5000, 20, 1000})->Unit(benchmark::kMillisecond)->UseRealTime()
BENCHMARK(BM_read_floor)->SHAPE_C1000;
BENCHMARK(BM_all_metrics_probs)->SHAPE_C1000;
BENCHMARK(BM_all_metrics_logits)->SHAPE_C1000;
BENCHMARK(BM_all_metrics_log_probs)->SHAPE_C1000;
BENCHMARK(BM_balentacq_probs)->SHAPE_C1000;
BENCHMARK(BM_all_metrics_probs_nck)->SHAPE_C1000;
BENCHMARK_MAIN();
