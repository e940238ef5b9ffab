// labelwise — the distance between feature rows, shared by every function that measures one
// (core-set / k-center greedy, the kNN graph of label spreading and propagation).
#pragma once

#include <cstdint>
#include <string>

#include "labelwise/core/error.hpp"

namespace labelwise {

enum class DistanceMetric : int {
  Euclidean = 0,  ///< ||x - y||_2 (not squared)
  Cosine = 1,     ///< 1 - x.y / (||x|| ||y||), in [0, 2]; undefined for an all-zero row (an error)
};

/// "euclidean" / "cosine": the names the Python API takes as `metric=`; Error(Value) for a value
/// outside the enum (e.g. a cast integer), as every function taking a DistanceMetric gives.
inline const char* distance_metric_name(DistanceMetric metric) {
  check(metric == DistanceMetric::Euclidean || metric == DistanceMetric::Cosine, ErrorKind::Value,
        "metric: unknown distance metric id ", static_cast<int>(metric));
  return metric == DistanceMetric::Cosine ? "cosine" : "euclidean";
}

/// Inverse of distance_metric_name; throws Error(Value) "metric: expected 'euclidean' or 'cosine', got '...'".
inline DistanceMetric distance_metric_from_name(const std::string& name) {
  if (name == "euclidean") return DistanceMetric::Euclidean;
  if (name == "cosine") return DistanceMetric::Cosine;
  throw Error(ErrorKind::Value, "metric: expected 'euclidean' or 'cosine', got '" + name + "'");
}

}  // namespace labelwise
