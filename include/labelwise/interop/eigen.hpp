// labelwise — Eigen adapter (opt-in: include this header and link Eigen3::Eigen yourself).
// Eigen matrices are 2-D: use them for single predictions [N, C] (rows = items, cols = classes),
// or for any layout by building a TensorView from view(m).data with explicit shape/strides.
#pragma once

#include <Eigen/Core>

#include "labelwise/uncertainty/metrics.hpp"

namespace labelwise {
namespace eigen {

/// A [rows, cols] host view of a dense Eigen expression with direct access (Matrix, Map, Block, Ref),
/// no copy; its Scalar must be a type with a labelwise DType (float, double, int32/64, uint8, bool:
/// anything else does not compile).
template <typename Derived>
TensorView view(const Eigen::DenseBase<Derived>& m) {
  using Scalar = typename Derived::Scalar;
  const auto& d = m.derived();
  return TensorView::of(const_cast<Scalar*>(d.data()), {d.rows(), d.cols()},
                        {static_cast<std::int64_t>(d.rowStride()), static_cast<std::int64_t>(d.colStride())});
}

/// A rank-1 [n] host view of an Eigen vector expression with direct access (VectorXd, RowVectorXf,
/// a Map with an InnerStride, a column or row of a matrix), no copy, for the arguments that must be
/// rank 1 (scores, indices, keys, outputs [N]). Compile-time vectors only.
template <typename Derived>
TensorView vector_view(const Eigen::DenseBase<Derived>& v) {
  static_assert(Derived::IsVectorAtCompileTime, "eigen::vector_view: a vector expression (one row or column)");
  using Scalar = typename Derived::Scalar;
  const auto& d = v.derived();
  return TensorView::of(const_cast<Scalar*>(d.data()), {static_cast<std::int64_t>(d.size())},
                        {static_cast<std::int64_t>(d.innerStride())});
}

/// One metric of single predictions probs [N, C] (class axis 1, no samples) → [N], Scalar float or
/// double. Metrics that need samples (BALD, expected entropy, variation ratio, mean std, BalEntAcq)
/// raise Error(Value) here: build a TensorView with a sample axis for them. Errors: score()'s.
template <typename Derived>
Eigen::Matrix<typename Derived::Scalar, Eigen::Dynamic, 1> score(const Eigen::DenseBase<Derived>& probs, Metric metric,
                                                                 InputKind input = InputKind::Probabilities) {
  Eigen::Matrix<typename Derived::Scalar, Eigen::Dynamic, 1> out(probs.rows());
  ScoreOptions opt;
  opt.input = input;
  opt.sample_axis = std::nullopt;
  opt.class_axis = 1;
  labelwise::score(view(probs), {{metric, vector_view(out)}}, opt);
  return out;
}

}  // namespace eigen
}  // namespace labelwise
