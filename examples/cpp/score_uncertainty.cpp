// Scores MC-dropout-like predictions with every metric and prints the items to label next.
// Usage: score_uncertainty [N=8] [K=20] [C=4]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <vector>

#include "labelwise/labelwise.hpp"

int main(int argc, char** argv) {
  using namespace labelwise;
  const int N = argc > 1 ? std::atoi(argv[1]) : 8, K = argc > 2 ? std::atoi(argv[2]) : 20,
            C = argc > 3 ? std::atoi(argv[3]) : 4;
  // Synthetic logits [N, K, C]: item i gets a noise level that grows with i.
  std::mt19937 rng(0);
  std::normal_distribution<float> noise(0.f, 1.f);
  std::vector<float> logits(static_cast<std::size_t>(N) * K * C);
  for (int i = 0; i < N; ++i)
    for (int k = 0; k < K; ++k)
      for (int c = 0; c < C; ++c)
        logits[(static_cast<std::size_t>(i) * K + k) * C + c] = (c == 0 ? 3.f : 0.f) + 0.5f * i * noise(rng);

  std::vector<std::vector<float>> results(kNumMetrics, std::vector<float>(N));
  std::vector<MetricOutput> outs;
  for (int m = 0; m < kNumMetrics; ++m) outs.push_back({Metric(m), TensorView::of(results[m].data(), {N})});
  ScoreOptions opt;
  opt.input = InputKind::Logits;  // [N, K, C], softmax fused
  try {
    score(TensorView::of(logits.data(), {N, K, C}), outs, opt);
  } catch (const Error& e) {
    std::fprintf(stderr, "labelwise error: %s\n", e.what());
    return 1;
  }
  std::printf("%-6s", "item");
  for (int m = 0; m < kNumMetrics; ++m) std::printf(" %10.10s", metric_name(Metric(m)));
  std::printf("\n");
  for (int i = 0; i < N; ++i) {
    std::printf("%-6d", i);
    for (int m = 0; m < kNumMetrics; ++m) std::printf(" %10.4f", results[m][i]);
    std::printf("\n");
  }
  std::vector<int> order(N);
  std::iota(order.begin(), order.end(), 0);
  const auto& b = results[static_cast<int>(Metric::Bald)];
  std::stable_sort(order.begin(), order.end(), [&](int a, int c) { return b[a] > b[c]; });
  std::printf("label next (by BALD):");
  for (int j = 0; j < std::min(N, 3); ++j) std::printf(" %d", order[j]);
  std::printf("\n");
  return 0;
}
