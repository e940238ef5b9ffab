// Internal: the jobs the BatchBALD front door (src/batchbald.cpp) hands to the CPU and CUDA backends.
#pragma once

#include <cstdint>
#include <functional>

#include "labelwise/core/tensor_view.hpp"

namespace labelwise {
namespace detail {

/// What both backends are asked for: b picks, the table's budget and seed, where the results go (on
/// the device of x).
struct BatchBaldRequest {
  std::int64_t b = 0;
  std::int64_t num_samples = 0;
  std::uint64_t seed = 0;
  std::int64_t* out_index = nullptr;
  std::int64_t out_index_stride = 1;
  double* out_score = nullptr;  ///< optional
  std::int64_t out_score_stride = 1;
};

struct BatchBaldJob {
  const double* p = nullptr;   ///< dense probabilities [N][K][C], float64
  const double* ce = nullptr;  ///< [N] conditional (expected) entropies (1/K) Σ_k H[p_k]
  std::int64_t n = 0;
  int k = 0;
  int c = 0;
  BatchBaldRequest req;
};

void batchbald_cpu(const BatchBaldJob& job);

/// The CUDA backend's job: x read in place on the device (validated shapes; strides in elements).
struct BatchBaldCudaJob {
  const void* x = nullptr;
  DType dtype = DType::Float32;  ///< Float32 or Float64
  int input = 0;                 ///< InputKind: 0 probabilities, 1 log-probabilities, 2 logits
  std::int64_t n = 0;
  int k = 0;
  int c = 0;
  std::int64_t item_stride = 0, sample_stride = 0, class_stride = 0;
  BatchBaldRequest req;  ///< outputs on the device
  int device_index = 0;
  void* stream = nullptr;  ///< cudaStream_t
  /// Validates x like the metrics do, writing its N expected entropies to the given device buffer
  /// (labelwise::score; throws the metrics' errors). Called before any other work.
  std::function<void(const TensorView& ee)> validate;
};

void batchbald_cuda(const BatchBaldCudaJob& job);

}  // namespace detail
}  // namespace labelwise
