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

LABELWISE_HD inline std::uint32_t bits_from_float(float f) {
  std::uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
}

/// IEEE binary16 -> binary32, exact: normals re-biased (15 -> 127), subnormals m · 2^-24, ±0, ±Inf, NaN.
/// Branch-free (three candidate bit patterns, one chosen by the exponent), so host loops vectorise it.
LABELWISE_HD inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  const std::uint32_t normal = sign | ((exp + 112u) << 23) | (mant << 13);
  const std::uint32_t special = sign | 0x7f800000u | (mant << 13);  // ±Inf (mant 0), NaN
  // m · 2^-24, exact for m < 2^10 (a normal float32 or +0), with the sign's bit
  const std::uint32_t subnormal = sign | bits_from_float(static_cast<float>(mant) * 5.9604644775390625e-8f);
  return float_from_bits(exp == 0 ? subnormal : (exp == 31 ? special : normal));
}

/// bfloat16 is the upper half of a binary32.
LABELWISE_HD inline float bfloat16_to_float(std::uint16_t h) {
  return float_from_bits(static_cast<std::uint32_t>(h) << 16);
}

}  // namespace detail
}  // namespace labelwise
