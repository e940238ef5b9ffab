// labelwise — exact float16 / bfloat16 -> float32 conversions from the raw 16-bit patterns, the same
// code on the host and on CUDA (the metrics widen half-precision inputs with them).
#pragma once

#include <cstdint>
#include <cstring>

#include "labelwise/core/config.hpp"

namespace labelwise {
namespace detail {

LABELWISE_HD inline float float_from_bits(std::uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

/// IEEE binary16 -> binary32, exact: normals re-biased (15 -> 127), subnormals m · 2^-24, ±0, ±Inf, NaN.
LABELWISE_HD inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0) {
    const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;  // 2^-24, exact for mant < 2^10
    return sign ? -v : v;
  }
  if (exp == 31) return float_from_bits(sign | 0x7f800000u | (mant << 13));
  return float_from_bits(sign | ((exp + 112u) << 23) | (mant << 13));
}

/// bfloat16 is the upper half of a binary32.
LABELWISE_HD inline float bfloat16_to_float(std::uint16_t h) {
  return float_from_bits(static_cast<std::uint32_t>(h) << 16);
}

}  // namespace detail
}  // namespace labelwise
