// float16 / bfloat16 -> float32 on the host, for the metrics' half-precision inputs (src/uncertainty.cpp).
#include <algorithm>
#include <cstdint>

#include "../cpu_variant.hpp"
#include "../uncertainty_backend.hpp"
#include "labelwise/detail/half.hpp"
#include "labelwise/detail/parallel_for.hpp"

namespace labelwise {
namespace detail {
namespace {

/// A contiguous row of n values, vectorised in the widest instruction set the processor has (exact
/// conversions: every build gives the same floats).
LABELWISE_CPU_CLONES void widen_contiguous(const std::uint16_t* s, std::int64_t n, bool bf16, float* o) {
  if (bf16) {
#pragma omp simd
    for (std::int64_t i = 0; i < n; ++i) o[i] = bfloat16_to_float(s[i]);
  } else {
#pragma omp simd
    for (std::int64_t i = 0; i < n; ++i) o[i] = half_to_float(s[i]);
  }
}

}  // namespace

void widen_to_float32_cpu(const TensorView& x, float* out) {
  const auto* src = static_cast<const std::uint16_t*>(x.data);
  const bool bf16 = x.dtype == DType::BFloat16;
  // A row: the trailing axes that lie contiguously in memory (all of a C-order tensor), or else the
  // last axis at its stride; the axes before `first` are walked. Rows are cut into pieces of at most
  // kPiece values so that one long row still spreads over the threads.
  constexpr std::int64_t kPiece = 1 << 16;
  int first = x.ndim - 1;
  std::int64_t inner = x.shape[first];
  const std::int64_t st = x.strides[first];
  if (st == 1)
    while (first > 0 && x.strides[first - 1] == inner) inner *= x.shape[--first];
  if (inner == 0) return;
  const std::int64_t rows = x.numel() / inner, per_row = (inner + kPiece - 1) / kPiece;
  parallel_for(rows * per_row, std::max<std::int64_t>(1, kPiece / inner), [&](std::int64_t p0, std::int64_t p1, int) {
    for (std::int64_t p = p0; p < p1; ++p) {
      const std::int64_t r = p / per_row, i0 = (p - r * per_row) * kPiece;
      const std::int64_t n = inner - i0 < kPiece ? inner - i0 : kPiece;
      // offset of row r (the axes before `first`, row-major)
      std::int64_t off = 0, rem = r;
      for (int d = first - 1; d >= 0; --d) {
        off += (rem % x.shape[d]) * x.strides[d];
        rem /= x.shape[d];
      }
      const std::uint16_t* s = src + off + i0 * st;
      float* o = out + r * inner + i0;
      if (st == 1)
        widen_contiguous(s, n, bf16, o);
      else if (bf16)
        for (std::int64_t i = 0; i < n; ++i) o[i] = bfloat16_to_float(s[i * st]);
      else
        for (std::int64_t i = 0; i < n; ++i) o[i] = half_to_float(s[i * st]);
    }
  });
}

}  // namespace detail
}  // namespace labelwise
