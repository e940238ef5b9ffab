// The memory-read floor of the CPU benchmarks: read a buffer once, split in contiguous parts over
// `threads` threads, with a sum that is bound by the loads, not by the adds. 32 independent float
// accumulators (8 SSE / 4 AVX / 2 AVX-512 vectors, whatever the compiler targets) keep many adds in
// flight; a single vector accumulator (what `#pragma omp simd reduction` or std::accumulate gives)
// is limited by the add latency to ~20 GB/s per core (float) and understated the bandwidth.
#pragma once

#include <cstddef>
#include <thread>
#include <vector>

namespace labelwise_bench {

inline float read_sum(const float* p, std::size_t n) {
  constexpr std::size_t kAcc = 32;
  float acc[kAcc] = {};
  std::size_t i = 0;
  for (; i + kAcc <= n; i += kAcc)
    for (std::size_t j = 0; j < kAcc; ++j) acc[j] += p[i + j];
  float s = 0.f;
  for (; i < n; ++i) s += p[i];
  for (std::size_t j = 0; j < kAcc; ++j) s += acc[j];
  return s;
}

/// Reads x[0, n) once on `threads` threads (contiguous parts); returns the partial sums' total.
inline float read_once(const float* x, std::size_t n, int threads) {
  std::vector<float> part(static_cast<std::size_t>(threads), 0.f);
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t)
    pool.emplace_back([&, t] { part[t] = read_sum(x + n * t / threads, n * (t + 1) / threads - n * t / threads); });
  part[0] = read_sum(x, n / threads);
  for (auto& th : pool) th.join();
  float s = 0.f;
  for (float v : part) s += v;
  return s;
}

}  // namespace labelwise_bench
