// Fresh random seeds for the C++ tests that a failure can replay.
//
// Each run draws one base seed (or takes LABELWISE_SEED from the environment) and prints it once on
// stderr; every fresh_seed() call mixes it with the running test case's name and the call's index within
// that test case. So `LABELWISE_SEED=<printed value> labelwise_tests "<test name>"` replays exactly
// the inputs of a failed test, whether it ran alone (as under CTest) or inside the whole binary.
#pragma once

#include <catch2/catch.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

namespace lw_test_seed {

inline std::uint64_t splitmix64(std::uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

inline std::uint64_t base_seed() {
  static const std::uint64_t base = [] {
    std::uint64_t s;
    if (const char* env = std::getenv("LABELWISE_SEED"); env && *env) {
      s = std::strtoull(env, nullptr, 0);
    } else {
      std::random_device rd;
      s = (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
    }
    std::fprintf(stderr, "labelwise tests: LABELWISE_SEED=%llu (set it to replay these inputs)\n",
                 static_cast<unsigned long long>(s));
    return s;
  }();
  return base;
}

}  // namespace lw_test_seed

/// A seed for this test's random inputs: new on every run, replayable through LABELWISE_SEED.
inline std::uint64_t fresh_seed() {
  static std::string test_name;
  static std::uint64_t index = 0;
  const std::string current = Catch::getResultCapture().getCurrentTestName();
  if (current != test_name) {
    test_name = current;
    index = 0;
  }
  std::uint64_t h = 1469598103934665603ull;  // FNV-1a of the test case name
  for (unsigned char c : current) h = (h ^ c) * 1099511628211ull;
  return lw_test_seed::splitmix64(lw_test_seed::base_seed() ^ lw_test_seed::splitmix64(h + index++));
}
