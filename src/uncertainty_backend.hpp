// labelwise — internal contract between the uncertainty front door and its CPU / CUDA backends.
#pragma once

#include <cstdint>

#include "labelwise/core/tensor_view.hpp"
#include "labelwise/detail/uncertainty_impl.hpp"
#include "labelwise/uncertainty/metrics.hpp"

namespace labelwise {
namespace detail {

struct ScoreJob {
  const void* x = nullptr;
  DType dtype = DType::Float32;
  ItemGrid grid;                // outer axes with x's strides
  std::int64_t sample_stride = 0;
  std::int64_t class_stride = 0;
  int K = 1;
  int C = 0;
  int input_kind = 0;
  unsigned mask = 0;
  double tol = 0.0;
  void* out[kNumMetrics] = {};
  DType out_dtype[kNumMetrics] = {};
  std::int64_t out_stride[kNumMetrics][kMaxDims] = {};
  int device_index = 0;
  void* stream = nullptr;
};

/// First failing item (lowest index) and its ItemStatus; status 0 when all items are valid.
struct ScoreFailure {
  int status = 0;
  std::int64_t item = 0;
};

ScoreFailure score_cpu(const ScoreJob& job);
ScoreFailure score_cuda(const ScoreJob& job);  // throws Error(Runtime) in a CPU-only build

/// float16 / bfloat16 input: x (any strides) widened to a contiguous float32 array of the same shape
/// (row-major), exactly (both formats are subsets of float32). On the host, or on x's CUDA device in
/// stream order (an array from cuda_alloc_floats).
void widen_to_float32_cpu(const TensorView& x, float* out);
void widen_to_float32_cuda(const TensorView& x, float* out, void* stream);
float* cuda_alloc_floats(std::int64_t count, int device, void* stream);
void cuda_free_floats(float* p, int device, void* stream) noexcept;

}  // namespace detail
}  // namespace labelwise
