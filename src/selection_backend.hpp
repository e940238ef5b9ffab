// labelwise — internal contract between the selection front door (src/selection.cpp) and its
// CPU / CUDA backends.
#pragma once

#include <cstdint>

#include "labelwise/acquisition/selection.hpp"
#include "labelwise/core/tensor_view.hpp"
#include "labelwise/detail/selection_impl.hpp"

namespace labelwise {
namespace detail {

/// Where each item's ordered key u and its tie-breaking global index come from.
enum class SelectSource : int {
  Scores = 0,      ///< u = ordered_key(score), index = i + index_offset          (top_k)
  Stochastic = 1,  ///< u = ordered_key(ln w + Gumbel), index = i + index_offset (stochastic)
  Pairs = 2,       ///< u = ordered_key(value), index = ids[i]                    (merge_top_k)
};

struct SelectJob {
  SelectSource source = SelectSource::Scores;
  const void* values = nullptr;  // scores (Scores, Stochastic) or values (Pairs)
  DType dtype = DType::Float32;  // Float32 or Float64
  FlatGrid grid;                 // values' flattened strides
  std::int64_t n = 0;            // items, >= 1
  // Pairs: the global indices, 1-D.
  const std::int64_t* ids = nullptr;
  std::int64_t ids_stride = 0;
  // Stochastic.
  int mode = kModePower;
  double beta = 1.0;
  std::uint64_t seed = 0;
  const std::int64_t* ranks = nullptr;  // SoftRank: given global ranks (else computed from the scores)
  FlatGrid ranks_grid;
  std::int64_t index_offset = 0;
  // Selection: b in [0, n]; b = -1: no selection, only the keys below (stochastic_keys).
  std::int64_t b = 0;
  std::int64_t* out_index = nullptr;
  std::int64_t out_index_stride = 0;
  void* out_value = nullptr;  // optional: selected scores / keys / values
  DType out_value_dtype = DType::Float64;
  std::int64_t out_value_stride = 0;
  // Optional (Stochastic): every item's key, float64, the scores' shape.
  double* out_keys = nullptr;
  FlatGrid keys_grid;
  int device_index = 0;
  void* stream = nullptr;
};

/// First failing item (lowest item index) and its SelectStatus; for kSelectDuplicate, `item` is the
/// duplicated global index. status 0 when the input is valid. Outputs are written only when valid.
struct SelectFailure {
  int status = 0;
  std::int64_t item = 0;
};

SelectFailure select_cpu(const SelectJob& job);
SelectFailure select_cuda(const SelectJob& job);  // throws Error(Runtime) in a CPU-only build

}  // namespace detail
}  // namespace labelwise
