// Google Benchmark: top-k and stochastic (Gumbel-top-k) selection on the CPU, N = 10^7 float32 scores.
// Counters: bytes/s of scores read (N * 4 bytes per call) and items/s. The floor is one read of the
// scores, measured by BM_read_floor in the same run (the same 2-thread split as the library uses on
// this machine); BM_baseline_nth_element is the textbook formulation (copy (score, index) pairs,
// std::nth_element, sort the b winners) on one thread. BM_philox_floor is stochastic's other floor:
// the 64 random bits of every item (the library's vectorised Philox, the same threads), which the
// exact Gumbel-top-k law needs whatever the pruning.
// Shapes: Args({N, b}); stochastic cases also name the mode.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include "labelwise/labelwise.hpp"
#include "read_floor.hpp"

using namespace labelwise;

namespace labelwise {
namespace detail {
void philox_bits64_block(std::uint64_t seed, std::uint32_t stream, std::uint64_t index0, std::int64_t n,
                         std::uint64_t* out);  // src/philox_lanes.hpp (not a public header)
}
}  // namespace labelwise

namespace {
const std::vector<float>& scores(std::int64_t n) {
  static std::vector<float> s;
  if (static_cast<std::int64_t>(s.size()) != n) {
    s.resize(static_cast<std::size_t>(n));
    std::mt19937 rng(7);
    std::gamma_distribution<float> g(2.0f);  // positive, long-tailed like uncertainty scores
    for (auto& v : s) v = g(rng);
  }
  return s;
}

void BM_read_floor(benchmark::State& st) {
  const auto& s = scores(st.range(0));
  const int workers = std::max(1, num_threads());
  for (auto _ : st) benchmark::DoNotOptimize(labelwise_bench::read_once(s.data(), s.size(), workers));
  st.SetBytesProcessed(st.iterations() * st.range(0) * 4);
  st.SetItemsProcessed(st.iterations() * st.range(0));
}

void BM_philox_floor(benchmark::State& st) {
  const std::int64_t n = st.range(0);
  const int workers = std::max(1, num_threads());
  for (auto _ : st) {
    std::vector<std::uint64_t> acc(static_cast<std::size_t>(workers));
    std::vector<std::thread> pool;
    for (int w = 0; w < workers; ++w)
      pool.emplace_back([&, w] {
        std::uint64_t bits[256], x = 0;
        for (std::int64_t i0 = n * w / workers; i0 < n * (w + 1) / workers; i0 += 256) {
          const std::int64_t m = std::min<std::int64_t>(256, n * (w + 1) / workers - i0);
          detail::philox_bits64_block(42, 0, static_cast<std::uint64_t>(i0), m, bits);
          for (std::int64_t j = 0; j < m; ++j) x ^= bits[j];
        }
        acc[w] = x;
      });
    for (auto& t : pool) t.join();
    benchmark::DoNotOptimize(acc.data());
  }
  st.SetItemsProcessed(st.iterations() * n);
}

void BM_top_k(benchmark::State& st) {
  const std::int64_t n = st.range(0), b = st.range(1);
  const auto& s = scores(n);
  std::vector<std::int64_t> idx(static_cast<std::size_t>(b));
  for (auto _ : st) {
    top_k(TensorView::of(s.data(), {n}), b, TensorView::of(idx.data(), {b}));
    benchmark::ClobberMemory();
  }
  st.SetBytesProcessed(st.iterations() * n * 4);
  st.SetItemsProcessed(st.iterations() * n);
}

void BM_baseline_nth_element(benchmark::State& st) {
  const std::int64_t n = st.range(0), b = st.range(1);
  const auto& s = scores(n);
  std::vector<std::pair<float, std::int64_t>> pairs(static_cast<std::size_t>(n));
  auto better = [](const auto& a, const auto& c) { return a.first > c.first || (a.first == c.first && a.second < c.second); };
  for (auto _ : st) {
    for (std::int64_t i = 0; i < n; ++i) pairs[i] = {s[i], i};
    std::nth_element(pairs.begin(), pairs.begin() + b, pairs.end(), better);
    std::sort(pairs.begin(), pairs.begin() + b, better);
    benchmark::DoNotOptimize(pairs.data());
  }
  st.SetBytesProcessed(st.iterations() * n * 4);
  st.SetItemsProcessed(st.iterations() * n);
}

void run_stochastic(benchmark::State& st, StochasticMode mode) {
  const std::int64_t n = st.range(0), b = st.range(1);
  const auto& s = scores(n);
  std::vector<std::int64_t> idx(static_cast<std::size_t>(b));
  StochasticOptions o;
  o.mode = mode;
  o.seed = 42;
  for (auto _ : st) {
    stochastic(TensorView::of(s.data(), {n}), b, TensorView::of(idx.data(), {b}), o);
    benchmark::ClobberMemory();
  }
  st.SetBytesProcessed(st.iterations() * n * 4);
  st.SetItemsProcessed(st.iterations() * n);
}

void BM_stochastic_power(benchmark::State& st) { run_stochastic(st, StochasticMode::Power); }
void BM_stochastic_softmax(benchmark::State& st) { run_stochastic(st, StochasticMode::Softmax); }
void BM_stochastic_softrank(benchmark::State& st) { run_stochastic(st, StochasticMode::SoftRank); }
}  // namespace

#define N1E7(b) Args({10000000, b})->Unit(benchmark::kMillisecond)->UseRealTime()
BENCHMARK(BM_read_floor)->N1E7(0);
BENCHMARK(BM_top_k)->N1E7(100)->N1E7(10000)->N1E7(1000000);
BENCHMARK(BM_baseline_nth_element)->N1E7(10000);
BENCHMARK(BM_philox_floor)->N1E7(0);
BENCHMARK(BM_stochastic_power)->N1E7(10000);
BENCHMARK(BM_stochastic_softmax)->N1E7(10000);
BENCHMARK(BM_stochastic_softrank)->N1E7(10000);
BENCHMARK_MAIN();
