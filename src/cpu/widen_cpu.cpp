// float16 / bfloat16 -> float32 on the host, for the metrics' half-precision inputs (src/uncertainty.cpp).
#include <cstdint>

#include "../uncertainty_backend.hpp"
#include "labelwise/detail/half.hpp"
#include "labelwise/detail/parallel_for.hpp"

namespace labelwise {
namespace detail {

void widen_to_float32_cpu(const TensorView& x, float* out) {
  const auto* src = static_cast<const std::uint16_t*>(x.data);
  const bool bf16 = x.dtype == DType::BFloat16;
  const int last = x.ndim - 1;
  const std::int64_t inner = x.shape[last], rows = x.numel() / (inner > 0 ? inner : 1);
  parallel_for(rows, 1024, [&](std::int64_t r0, std::int64_t r1, int) {
    for (std::int64_t r = r0; r < r1; ++r) {
      // offset of row r (all axes but the last, row-major)
      std::int64_t off = 0, rem = r;
      for (int d = last - 1; d >= 0; --d) {
        off += (rem % x.shape[d]) * x.strides[d];
        rem /= x.shape[d];
      }
      const std::uint16_t* s = src + off;
      float* o = out + r * inner;
      const std::int64_t st = x.strides[last];
      if (bf16)
        for (std::int64_t i = 0; i < inner; ++i) o[i] = bfloat16_to_float(s[i * st]);
      else
        for (std::int64_t i = 0; i < inner; ++i) o[i] = half_to_float(s[i * st]);
    }
  });
}

}  // namespace detail
}  // namespace labelwise
