// labelwise — Philox-4x32-10 on many counters at once, for CPU loops that vectorise: the same rounds
// as rng::philox4x32_10 on structure-of-arrays lanes (word w of lane l in cw[l]). Integer arithmetic
// only, so every instruction set gives rng::philox4x32_10's bits. Used by the heads' dropout masks
// (head_score_impl.hpp) and stochastic's Gumbel noise (src/cpu/philox_lanes.inc).
#pragma once

#include <cstdint>

#include "labelwise/core/config.hpp"
#if defined(__AVX512F__) && !defined(__CUDACC__)
#include <immintrin.h>
#endif

#if defined(LABELWISE_CPU_SIMD)
#define LABELWISE_SIMD_LANES _Pragma("omp simd")
#else
#define LABELWISE_SIMD_LANES
#endif

namespace labelwise {
namespace detail {
inline namespace LABELWISE_ISA_NAMESPACE {

#if defined(__AVX512F__) && !defined(__CUDACC__)
// GCC 12's AVX-512 intrinsics start some results from _mm512_undefined_epi32(), which its
// -Wmaybe-uninitialized reports at every inlined call (GCC bug 105593, fixed in GCC 13).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
/// The 10 rounds on the 16 counters held in the 32-bit lanes of c0 .. c3 (vector w: word w of every
/// counter), key (k0, k1); the results replace the counters. Each 32 x 32 -> 64-bit product comes from
/// two vpmuludq (the even lanes, then the odd ones swapped down by vpshufd), and its high and low words
/// are gathered back into lane order by one two-source permutation each: per round 12 operations
/// instead of the 16 of shifting and blending the halves (2.7x the bits per second of that form here,
/// measured on philox_bits64_lanes; the same bits, tests/cpp/test_acquisition.cpp).
inline void philox_rounds_avx512(__m512i& c0, __m512i& c1, __m512i& c2, __m512i& c3, std::uint32_t k0,
                                 std::uint32_t k1) {
  const __m512i m0 = _mm512_set1_epi64(0xD2511F53ll), m1 = _mm512_set1_epi64(0xCD9E8D57ll);
  // lane 2q <- word 2q + 1 (high) / 2q (low) of the even product, lane 2q + 1 <- the same of the odd one
  const __m512i hi = _mm512_set_epi32(31, 15, 29, 13, 27, 11, 25, 9, 23, 7, 21, 5, 19, 3, 17, 1);
  const __m512i lo = _mm512_set_epi32(30, 14, 28, 12, 26, 10, 24, 8, 22, 6, 20, 4, 18, 2, 16, 0);
  for (int round = 0; round < 10; ++round) {
    const __m512i e0 = _mm512_mul_epu32(c0, m0), o0 = _mm512_mul_epu32(_mm512_shuffle_epi32(c0, _MM_PERM_CDAB), m0);
    const __m512i e1 = _mm512_mul_epu32(c2, m1), o1 = _mm512_mul_epu32(_mm512_shuffle_epi32(c2, _MM_PERM_CDAB), m1);
    const __m512i hi0 = _mm512_permutex2var_epi32(e0, hi, o0), lo0 = _mm512_permutex2var_epi32(e0, lo, o0);
    const __m512i hi1 = _mm512_permutex2var_epi32(e1, hi, o1), lo1 = _mm512_permutex2var_epi32(e1, lo, o1);
    c0 = _mm512_ternarylogic_epi32(hi1, c1, _mm512_set1_epi32(static_cast<int>(k0)), 0x96);  // a ^ b ^ c
    c2 = _mm512_ternarylogic_epi32(hi0, c3, _mm512_set1_epi32(static_cast<int>(k1)), 0x96);
    c1 = lo1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}
#endif

/// The 10 rounds on kLanes counters (c0 .. c3: the four counter words of every lane), key (k0, k1);
/// the results replace the counters.
template <int kLanes>
inline void philox_rounds_lanes(std::uint32_t* c0, std::uint32_t* c1, std::uint32_t* c2, std::uint32_t* c3,
                                std::uint32_t k0, std::uint32_t k1) {
#if defined(__AVX512F__) && !defined(__CUDACC__)
  if constexpr (kLanes == 16) {
    __m512i v0 = _mm512_loadu_si512(c0), v1 = _mm512_loadu_si512(c1), v2 = _mm512_loadu_si512(c2),
            v3 = _mm512_loadu_si512(c3);
    philox_rounds_avx512(v0, v1, v2, v3, k0, k1);
    _mm512_storeu_si512(c0, v0);
    _mm512_storeu_si512(c1, v1);
    _mm512_storeu_si512(c2, v2);
    _mm512_storeu_si512(c3, v3);
    return;
  }
#endif
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

#if defined(__AVX512F__) && !defined(__CUDACC__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
