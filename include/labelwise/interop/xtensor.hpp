// labelwise — xtensor adapter (opt-in: include this header and link xtensor yourself).
#pragma once

#include <type_traits>

#include <xtensor/xarray.hpp>

#include "labelwise/uncertainty/metrics.hpp"

namespace labelwise {
namespace xtensor {

/// A host view of an xtensor container or view with contiguous-or-strided storage (xarray, xtensor,
/// row- or column-major, xt::view / xt::strided_view results, temporaries included), no copy; strides
/// in elements. Its value_type must have a labelwise DType (float, double, int32/64, uint8, bool:
/// anything else does not compile). The view must not outlive the storage it points into.
template <typename E>
TensorView view(E&& e) {
  using T = std::remove_const_t<typename std::decay_t<E>::value_type>;
  std::vector<std::int64_t> shape(e.shape().begin(), e.shape().end());
  std::vector<std::int64_t> strides(e.strides().begin(), e.strides().end());
  for (std::size_t d = 0; d < shape.size(); ++d)
    if (shape[d] == 1) strides[d] = 0;  // xtensor reports 0 for broadcast axes of extent 1
  return TensorView::of(const_cast<T*>(e.data() + e.data_offset()), shape, strides);
}

/// One metric, owning result of shape score_shape(x) (same value type as x: float or double). x is any
/// expression view() takes (xarray, xtensor, strided views), read with `options` (default:
/// [N, K, C, *spatial] probabilities, sample axis 1). Errors: score()'s.
template <typename E>
xt::xarray<std::remove_const_t<typename E::value_type>> score(const E& x, Metric metric,
                                                               const ScoreOptions& options = {}) {
  using T = std::remove_const_t<typename E::value_type>;
  const TensorView xv = view(x);
  const std::vector<std::int64_t> shape = score_shape(xv, options);
  xt::xarray<T> out = xt::empty<T>(std::vector<std::size_t>(shape.begin(), shape.end()));
  labelwise::score(xv, {{metric, view(out)}}, options);
  return out;
}

}  // namespace xtensor
}  // namespace labelwise
