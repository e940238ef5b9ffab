// labelwise — Philox-4x32-10 on many counters at once, for CPU loops that vectorise: the same rounds
// as rng::philox4x32_10 on structure-of-arrays lanes (word w of lane l in cw[l]). Integer arithmetic
// only, so every instruction set gives rng::philox4x32_10's bits. Used by the heads' dropout masks
// (head_score_impl.hpp) and stochastic's Gumbel noise (src/cpu/philox_lanes.inc).
#pragma once

#include <cstdint>

#include "labelwise/core/config.hpp"

#if defined(LABELWISE_CPU_SIMD)
#define LABELWISE_SIMD_LANES _Pragma("omp simd")
#else
#define LABELWISE_SIMD_LANES
#endif

namespace labelwise {
namespace detail {
inline namespace LABELWISE_ISA_NAMESPACE {

/// The 10 rounds on kLanes counters (c0 .. c3: the four counter words of every lane), key (k0, k1);
/// the results replace the counters.
template <int kLanes>
inline void philox_rounds_lanes(std::uint32_t* c0, std::uint32_t* c1, std::uint32_t* c2, std::uint32_t* c3,
                                std::uint32_t k0, std::uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    LABELWISE_SIMD_LANES
    for (int l = 0; l < kLanes; ++l) {
      const std::uint64_t p0 = static_cast<std::uint64_t>(c0[l]) * 0xD2511F53ull;
      const std::uint64_t p1 = static_cast<std::uint64_t>(c2[l]) * 0xCD9E8D57ull;
      const std::uint32_t n0 = static_cast<std::uint32_t>(p1 >> 32) ^ c1[l] ^ k0;
      const std::uint32_t n2 = static_cast<std::uint32_t>(p0 >> 32) ^ c3[l] ^ k1;
      c1[l] = static_cast<std::uint32_t>(p1);
      c3[l] = static_cast<std::uint32_t>(p0);
      c0[l] = n0;
      c2[l] = n2;
    }
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

}  // namespace LABELWISE_ISA_NAMESPACE
}  // namespace detail
}  // namespace labelwise
