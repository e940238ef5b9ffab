// labelwise — likely wrong human labels by confident learning (Northcutt, Jiang, Chuang, "Confident
// Learning: Estimating Uncertainty in Dataset Labels", JAIR 70, 2021). Details: docs/propagation.md.
//
// Method (the paper's "C_{ỹ,y*}" variant: the off-diagonal of the confident joint)
//   p̂_ij = out-of-sample predicted probability of class j for item i (e.g. cross-validated); ỹ_i = its
//   given label. Self-confidence of item i: p̂_{i,ỹ_i}.
//   1. Per-class thresholds t_j = mean of p̂_ij over the items labelled j (the expected self-confidence
//      of class j). A class that no item is labelled with has no threshold (NaN): it can never be an
//      item's confident true class.
//   2. Confident joint C[ỹ][y*]: item i with given label ỹ_i = a is counted in C[a][b] with
//      b = arg max { p̂_ij : p̂_ij >= t_j - 1e-6 } (ties: the lower class index; the 1e-6 allows for
//      the rounding of the mean, which can land above n equal self-confidences, as cleanlab allows);
//      items with no class at or above its threshold are not counted.
//   3. Label issues: the items counted off the diagonal (b != ỹ_i), except those whose given label is
//      the model's own prediction (ỹ_i = arg max_j p̂_ij, the lower class on ties: the model agrees with
//      the label although the item reaches another class's lower threshold; cleanlab drops these too),
//      ranked by self-confidence, lowest first (ties: lower item index). The joint keeps them.
//   We do not apply the paper's calibration of C to the label counts (Eq. 3): it rescales the cells
//   but does not change which items lie off the diagonal, which is what this function reports.
//
// Shape contract
//   probs        : [N, C] probabilities (class axis = class_axis: 1 or -1 for [N, C], 0 or -2 for
//                  [C, N]); float32 / float64, CPU, any strides. Each class vector >= 0 and summing to 1
//                  within normalization_tolerance(dtype). N >= 1, C >= 2.
//   given_labels : int64 / int32 / uint8 [N], each in [0, C) or -1 (= not labelled: ignored — neither
//                  used for the thresholds nor reported).
//   out.indices  : int64 [N] (capacity); the first n_issues entries receive the flagged item indices,
//                  lowest self-confidence first; the rest are left untouched. Required.
//   out.self_confidence : [N] float32 / float64 (optional): the self-confidence of each flagged item,
//                  in the same order (first n_issues entries).
//   out.thresholds      : float64 [C] (optional): t_j (NaN for a class nobody is labelled with).
//   out.confident_joint : int64 [C, C] (optional): C[given][confident true].
//   returns      : n_issues.
// Errors (labelwise::Error): NaN / Inf / negative / unnormalised probabilities (naming the item), labels
// < -1 or >= C, wrong ranks / shapes / dtypes, empty input, CUDA inputs (Type: CPU only for now).
#pragma once

#include <cstdint>

#include "labelwise/core/tensor_view.hpp"

namespace labelwise {

struct LabelIssuesOutputs {
  TensorView indices;          ///< int64 [N], required
  TensorView self_confidence;  ///< [N] float32 / float64, optional (data == nullptr: not written)
  TensorView thresholds;       ///< float64 [C], optional
  TensorView confident_joint;  ///< int64 [C, C], optional
};

/// Confident-learning label issues (see above); returns how many items were flagged.
std::int64_t label_issues(const TensorView& probs, const TensorView& given_labels, const LabelIssuesOutputs& out,
                          int class_axis = 1);

}  // namespace labelwise
