// The memory-read floor of the CPU benchmarks: read a buffer once, split in contiguous parts over
// `threads` threads, with a sum that is bound by the loads, not by the adds. 32 independent float
// accumulators (8 SSE / 4 AVX / 2 AVX-512 vectors, whatever the compiler targets) keep many adds in
// flight; a single vector accumulator (what `#pragma omp simd reduction` or std::accumulate gives)
// is limited by the add latency to ~20 GB/s per core (float) and understated the bandwidth. The sum
// is compiled for AVX-512, AVX2 and the baseline (GCC target_clones, the widest the processor has),
// as the library's own loops are: the benchmark targets have no -march, and the baseline's SSE loop
// read 80 MB 1.4x slower than the AVX-512 one on the Xeon VM (session 17).
#pragma once

#include <cstddef>
#include <thread>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define LABELWISE_BENCH_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LABELWISE_BENCH_CLONES
#endif

namespace labelwise_bench {

LABELWISE_BENCH_CLONES static float read_sum(const float* p, std::size_t n) {
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
