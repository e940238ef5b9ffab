// labelwise — label spreading (Zhou, Bousquet, Lal, Weston, Schölkopf, "Learning with Local and Global
// Consistency", NIPS 2004) and label propagation (Zhu, Ghahramani, "Learning from Labeled and
// Unlabeled Data with Label Propagation", CMU-CALD-02-107, 2002) on a kNN graph. CPU, multi-threaded.
// Details and the exact correspondence with scikit-learn: docs/propagation.md.
//
// Variants
//   Symmetric (default): the kNN graph of knn_graph (the point itself excluded), symmetrised
//     (W_ij = 1 when j is among the k nearest of i or i among those of j).
//     Spreading: S = D^-1/2 W D^-1/2, F <- alpha S F + (1 - alpha) Y.
//     Propagation: T = D^-1 W, F <- T F, each row divided by its sum (0 stays 0), labelled rows
//     reset to their one-hot label.
//     The loop does not stop on tol while an item that a label reaches (the labels' connected
//     components) is still all zero: mass h hops from a label is ~alpha^h, so the change per step
//     falls below tol before it arrives. Items that no label reaches (another component), or that
//     max_iter steps do not reach (converged = false), get an all-zero distribution and the label -1.
//   Sklearn: reproduces sklearn.semi_supervised.LabelSpreading(kernel="knn") / LabelPropagation(
//     kernel="knn") (scikit-learn 1.9.1, as tested): its directed kNN graph *including* the point itself, chosen
//     with sklearn's own tie rule (more than 15 features or k >= N / 2: its brute-force max-heap,
//     fed in the order its ArgKmin uses for `sklearn_threads` OpenMP threads; otherwise the order
//     of the KD-tree its NearestNeighbors builds), its in-degree-normalised graph (spreading) or 1/k row
//     weights (propagation), its convergence test and its output normalisation; unreached items
//     get an all-zero distribution and label 0, as in sklearn.
//   Both: F starts at the one-hot labels Y (zeros for unlabelled items); before each iteration the
//   loop stops when sum |F - F_previous| < tol (F_previous = 0 before the first); at most max_iter
//   iterations; at the end each row of F is divided by its sum (rows summing to 0 stay 0) and the
//   label is the arg-max (ties: lower class).
//
// Shape contract
//   features      : [N, D] float32 / float64, CPU, any strides; finite. N >= 2.
//   labels        : [N] int64 / int32, each in [0, C) or -1 (unlabelled). C = max label + 1; every
//                   class in [0, C) must have at least one labelled item; at least one labelled item.
//   distributions : float64 [N, C] (written): the normalised label distributions.
//   out_labels    : int64 [N] (written): the arg-max class (-1 for unreached items, Symmetric only).
// Errors (labelwise::Error): NaN / Inf features, labels < -1, no labelled item, a class index below
// the largest label that no item carries, k < 1 or k >= N (k > N for Sklearn, whose k counts the point
// itself), alpha not in (0, 1) (spreading),
// max_iter < 0, tol < 0 or NaN, wrong shapes / dtypes, CUDA inputs.
#pragma once

#include <cstdint>
#include <string>

#include "labelwise/core/tensor_view.hpp"

namespace labelwise {

/// The graph and update rule (see Variants above).
enum class SpreadingVariant : std::uint8_t { Symmetric, Sklearn };

/// "symmetric" or "sklearn" (the Python API's names).
const char* spreading_variant_name(SpreadingVariant v);
/// Inverse of spreading_variant_name; throws Error(Value) naming the valid names.
SpreadingVariant spreading_variant_from_name(const std::string& name);

struct SpreadingOptions {
  /// Neighbours per item: 1 <= k < N (Symmetric; the point itself excluded), 1 <= k <= N (Sklearn; the
  /// point itself counted, as sklearn's n_neighbors).
  std::int64_t k = 7;
  double alpha = 0.2;          ///< label_spreading only: weight of the neighbours (1 - alpha: of the labels), in (0, 1)
  /// 0 (default): each function's own default, sklearn's: 30 for label_spreading, 1000 for
  /// label_propagation. Otherwise >= 1.
  std::int64_t max_iter = 0;
  /// Stop when sum |F - F_previous| < tol (see Both above); >= 0, not NaN.
  double tol = 1e-3;
  /// Symmetric (default) or sklearn's exact graph and rules (see Variants above).
  SpreadingVariant variant = SpreadingVariant::Symmetric;
  /// Sklearn variant with more than 15 features (or k >= N / 2): the number of OpenMP threads
  /// scikit-learn's brute-force ArgKmin would use (it decides how equidistant neighbours are
  /// chosen). <= 0: labelwise::num_threads(). Not used where sklearn searches with its KD-tree.
  int sklearn_threads = 0;
};

struct SpreadingResult {
  std::int64_t n_iter = 0;    ///< iterations run (sklearn's n_iter_)
  bool converged = false;     ///< false: max_iter was reached (sklearn warns), or `unreached` > 0
  std::int64_t n_classes = 0;  ///< C = max label + 1: the columns of the distributions
  /// Symmetric variant: items that a label reaches in the graph but whose label mass underflowed
  /// float64 on the way (it shrinks by about alpha times an edge weight per hop), so they keep -1.
  /// The loop stops once the change is below tol and this count has not moved for 3 steps.
  std::int64_t unreached = 0;
};

/// The number of classes C of a label vector (max label + 1), validated as above.
std::int64_t spreading_num_classes(const TensorView& labels);

/// Label spreading (Zhou et al. 2004) on the kNN graph of `features`: shapes, variants and errors in
/// the contract at the top of this header (features [N, D] CPU float; labels [N] int64 / int32;
/// distributions float64 [N, C] and out_labels int64 [N] written, any strides, CPU).
SpreadingResult label_spreading(const TensorView& features, const TensorView& labels, const TensorView& distributions,
                                const TensorView& out_labels, const SpreadingOptions& options = {});

/// Label propagation (Zhu & Ghahramani 2002): the same contract as label_spreading (alpha unused).
SpreadingResult label_propagation(const TensorView& features, const TensorView& labels,
                                  const TensorView& distributions, const TensorView& out_labels,
                                  const SpreadingOptions& options = {});

}  // namespace labelwise
