// labelwise — the certification bound of the exact kNN search, shared by the CPU (src/knn.cpp) and
// CUDA (src/cuda/knn_cuda.cu) backends so that both certify with the same formula.
#pragma once

#include <cstdint>

#include "labelwise/core/config.hpp"

namespace labelwise {
namespace detail {

/// Lower bound on the exact key (squared euclidean distance, or cosine distance 1 - cos) between row
/// i and any row j whose float32 approximate candidate key a_ij = yn_i + yn_j - 2 y_i.y_j is at least
/// `amax`. y are the float32 candidate-space rows (centred, or scaled to unit length: `unit` = 2 for
/// cosine, as ||u - v||^2 = 2 (1 - cos), else 1), yn their squared norms in float64, yn_max the largest.
/// |a_ij - ||u_i - u_j||^2| <= eps_i in candidate units: float32 rounding of the rows, the float32
/// dot product in any summation order (|error of y_i.y_j| <= (D + 2) 2^-24 ||y_i|| ||y_j||), folded
/// into c32 = (D + 8) 2^-22, plus a few ulps of (yn_i + yn_max) for a's own float32 arithmetic.
/// `extra`: further absolute error in candidate units (0 for the exact rule).
LABELWISE_HD inline double knn_lower_bound32(float amax, double yn_i, double yn_max, std::int64_t D, double unit,
                                             double extra) {
  const double c32 = static_cast<double>(D + 8) * (1.0 / 4194304.0);  // 2^-22
  const double s = yn_i + yn_max;
  const double eps = c32 * s + 8.0 * (1.0 / 16777216.0) * s + extra;  // 8 * 2^-24
  return (static_cast<double>(amax) - eps) / unit;
}

/// The k-th exact key with the relative slack both backends certify against.
LABELWISE_HD inline double knn_kth_slack(double kth) { return kth * (1.0 + 1e-12) + 1e-300; }

}  // namespace detail
}  // namespace labelwise
