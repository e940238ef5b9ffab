// labelwise — certified auto-labelling: pick a confidence threshold on a human-labelled calibration
// set so that, with probability >= 1 - delta over the calibration draw, the expected error rate of
// a pool item the model labels (the population rate among items at or above the threshold; the
// realised rate on a small accepted set scatters around it binomially) is <= target_error.
// The method, its guarantee and the proof: docs/propagation.md.
//
// Procedure (Learn-then-Test fixed-sequence testing, exact binomial p-values)
//   1. Every calibration unit u has a confidence s_u (higher = more confident) and a loss e_u in {0, 1}
//      (1 = the model's label is wrong); every pool unit v a confidence t_v. For a threshold λ let
//      J(λ) = #{u : s_u >= λ} and K(λ) = #{u : s_u >= λ, e_u = 1}.
//   2. The candidate thresholds are the pool's distinct confidences, descending. j0 =
//      max(min_certifiable_count(target_error, delta), options.scan_start); candidates with fewer than
//      t = max(j0, min(2 j0, n / 2)) calibration units at or above them are skipped (below j0 no test
//      can pass; a first test on about 2 j0 units tolerates one stray error at the top).
//   3. Down the other candidates: if P(Binomial(J(λ), target_error) <= K(λ)) > delta (the
//      Clopper–Pearson bound exceeds target_error) STOP, else remember λ.
//   4. The last remembered λ = threshold; pool units with t >= threshold are accepted (equal
//      confidences together). None remembered: nothing accepted, threshold = NaN, certified = false,
//      `reason` says why.
// Guarantee (proof in docs/propagation.md): if (i) the calibration units are i.i.d. draws of the
// distribution the pool units come from, independent of the pool, and (ii) R(λ) = P(wrong | s >= λ)
// is non-increasing in λ (lowering the threshold never lowers the error rate among accepted units),
// then over the calibration draw
//     P( R(threshold) >= target_error ) <= delta,
// i.e. with probability >= 1 - delta the expected error rate of an auto-labelled unit is below
// target_error (the realised rate on a finite pool scatters binomially around it). No caveat for
// ties: the threshold is a pool confidence. `bound` is the Clopper–Pearson bound at the threshold
// (<= target_error); the promise is target_error, not `bound` (a selected bound is not by itself a
// 1 - delta bound).
//
// Shape contract of certified_auto_label
//   pool_probs   : [N, C, *spatial] probabilities (class axis = options.class_axis; any strides);
//                  float32 / float64, CPU. Every class vector must be >= 0 and sum to 1 within
//                  normalization_tolerance(dtype). [N, C] for classification.
//   calib_probs  : [M, C, *spatial'] with the same rank, class axis and C as pool_probs (spatial
//                  extents may differ); float32 / float64, CPU.
//   calib_labels : calib_probs' shape without the class axis ([M] or [M, *spatial']); int64, int32 or
//                  uint8; each entry in [0, C) or -1 (= not labelled: skipped, e.g. sparse voxel clicks).
//   accepted     : out, bool or uint8; unit Item: pool_probs' shape without the class axis
//                  ([N] or [N, *spatial]), unit Image: [N]. The caller owns it.
//   labels       : out, int64, pool_probs' shape without the class axis: arg-max class (ties: lower
//                  class index) where accepted, -1 elsewhere. The caller owns it.
//   options.pool_confidence / calib_confidence (optional, both or neither): float32 / float64, higher =
//                  more confident (pass a negated uncertainty metric), NaN not allowed, ±inf allowed;
//                  unit Item: the label-map shape of pool / calibration; unit Image: that shape or [N] / [M]
//                  (one score per image). Default: the maximum class probability.
//   Units: Item = every entry of the label map (an item of [N, C], a voxel of [N, C, D, H, W]).
//          Image = every index of the first label-map axis; an image's confidence is the mean of its
//          voxel confidences, and a calibration image counts as wrong when more than
//          options.max_voxel_error of its labelled voxels are mislabelled.
//          Assumption (i) is about units. Voxels are not independent (neighbours share their errors);
//          for Item units of a segmentation, draw the calibration voxels uniformly at random from the
//          pool voxels to be auto-labelled ("clicks" a human labels, every other voxel -1) and pass
//          the whole pool: then, over the draw of the clicks, the error rate of the pool voxels at or
//          above the threshold (clicks included) is below target_error with probability about
//          1 - delta, whatever the correlation (docs/propagation.md, "Voxels and images": (ii) holds
//          only approximately for a finite pool).
//          Clicks on a few other images measure those images only, and densely labelled calibration
//          images overstate the calibration size: certify whole images (Image) then.
//   Per class (options.per_class, Item unit only): the units are split by their predicted (arg-max)
//          class and every class is scanned on its own at delta / C' (Bonferroni over the C' classes
//          that the pool predicts; the others have nothing to certify; (ii) is then needed for every
//          class's own curve P(wrong | s >= λ, predicted c)),
//          with its own threshold. Guarantee: with probability >= 1 - delta, simultaneously for every
//          class c, the error rate among units auto-labelled c is below target_error (hence also
//          among all auto-labelled units). For segmentation, where background voxels dominate, the
//          pooled scan can certify a low overall error while a rare foreground class is mostly wrong;
//          the per-class scan cannot.
//
// Errors (labelwise::Error): target_error / delta outside (0, 1); max_voxel_error outside [0, 1) or
// missing for unit Image, or set for unit Item; per_class with unit Image; scan_start < 0; NaN / Inf / negative / unnormalised probabilities (naming the first bad unit);
// NaN confidences; labels < -1 or >= C; wrong ranks, shapes, dtypes; empty pool or calibration;
// only one of the two confidences; CUDA inputs (Type: the CUDA path is not implemented yet; these
// functions run on the CPU). A calibration set too small, or whose most confident units already
// exceed the target, is not an error: the result has certified = false, nothing accepted, a reason.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "labelwise/core/tensor_view.hpp"

namespace labelwise {

/// What one accept / reject decision covers.
enum class AcceptUnit : int {
  Item = 0,   ///< each entry of the label map: an item ([N, C]) or a voxel / pixel ([N, C, *spatial])
  Image = 1,  ///< each image (index of the first label-map axis) as a whole
};

/// "item", "image".
const char* accept_unit_name(AcceptUnit unit);
/// Inverse of accept_unit_name; throws Error(Value) listing the valid names.
AcceptUnit accept_unit_from_name(const std::string& name);

/// What the calibration scan found (steps 1-4 above).
struct ThresholdCertificate {
  /// True when some threshold passed the scan: the guarantee holds for the units it accepts.
  bool certified = false;
  /// Accept units with confidence >= threshold. NaN when nothing is certified (accepts nothing).
  double threshold = std::numeric_limits<double>::quiet_NaN();
  /// Clopper–Pearson upper bound at the chosen threshold (<= target_error); NaN when not certified.
  double bound = std::numeric_limits<double>::quiet_NaN();
  std::int64_t n_calibration = 0;           ///< calibration units used (labelled ones)
  std::int64_t n_calibration_accepted = 0;  ///< ĵ: calibration units at or above the threshold
  std::int64_t calibration_errors = 0;      ///< K_ĵ: wrong ones among them
  std::int64_t min_calibration = 0;         ///< min_certifiable_count(target_error, delta)
  std::int64_t scan_start = 0;              ///< j0: max(min_calibration, the scan_start asked for)
  /// the pool units that the scan's first test accepts (0 when no test ran): every pool unit down to
  /// the next lower calibration score below the first candidate tested (the candidates between two
  /// calibration scores share J and K, and are tested once)
  std::int64_t start_rank = 0;
  double target_error = 0.0;  ///< the error rate asked for, as given
  double delta = 0.0;         ///< the risk asked for: the guarantee holds with probability >= 1 - delta
  /// Empty when certified; otherwise why nothing could be certified.
  std::string reason;
};

/// The certificate plus what it did to the pool.
struct AutoLabelResult {
  /// The scan's certificate. With options.per_class, a summary of class_certificates: certified when
  /// any class is, threshold NaN (the thresholds are per class), bound the largest certified class
  /// bound, n_calibration all labelled units, n_calibration_accepted / calibration_errors summed over
  /// the certified classes, min_calibration / scan_start those of one class (at delta / C'), delta the
  /// overall delta, reason empty when any class is certified.
  ThresholdCertificate certificate;
  /// options.per_class only: [C], entry c certifies the units predicted as class c at delta / C'
  /// (C' = classes the pool predicts).
  std::vector<ThresholdCertificate> class_certificates;
  std::int64_t n_pool = 0;      ///< pool units (items, voxels or images)
  std::int64_t n_accepted = 0;  ///< pool units accepted
  double coverage = 0.0;        ///< n_accepted / n_pool
};

struct CertifyOptions {
  /// α in (0, 1): the error rate to certify. Required (NaN = not set, an error).
  double target_error = std::numeric_limits<double>::quiet_NaN();
  /// δ in (0, 1): the allowed probability that the certificate is wrong. Required.
  double delta = std::numeric_limits<double>::quiet_NaN();
  /// Class axis of pool_probs and calib_probs (negative counts from the end).
  int class_axis = 1;
  AcceptUnit unit = AcceptUnit::Item;
  /// Image unit only: a calibration image is wrong when its fraction of mislabelled labelled voxels
  /// exceeds this, in [0, 1). Required for Image.
  double max_voxel_error = std::numeric_limits<double>::quiet_NaN();
  /// j0 of step 2 is max(min_certifiable_count, scan_start). Any value fixed before the labels are
  /// seen keeps the guarantee. The first test sees t = max(j0, min(2 j0, n / 2)) calibration units:
  /// one wrong label among them is tolerated once n >= 4 j0 (two stop the scan), none when t = j0
  /// (n < 2 j0); a larger scan_start tolerates a few more, at the price of never certifying fewer
  /// than t calibration units. 0 = min_certifiable_count.
  std::int64_t scan_start = 0;
  /// Item unit only: one threshold per predicted class, each class scanned at delta / C' (see
  /// "Per class" above); the result's class_certificates hold them.
  bool per_class = false;
  /// Optional per-unit confidences (higher = more confident), both or neither; default-constructed
  /// (data == nullptr) = not given: the maximum class probability is used.
  TensorView pool_confidence;
  TensorView calib_confidence;
};

/// The scan alone, on given calibration scores and losses and the pool's confidences (the thresholds
/// it tests; the certificate's threshold is one of them).
///   calib_confidence : [n] (any shape; numel units), float32 / float64, CPU, no NaN (±inf allowed)
///   calib_errors     : same shape, bool / uint8 / int32 / int64 with values 0 (right) or 1 (wrong)
///   pool_confidence  : [N] (any shape), float32 / float64, CPU, no NaN: the units to be accepted
///   target_error, delta : in (0, 1); scan_start >= 0 (0: min_certifiable_count, as certified_auto_label)
/// n = 0 or N = 0 is allowed (nothing certified). Errors: target_error or delta outside (0, 1),
/// scan_start < 0, a NaN confidence or an error value other than 0 / 1 (naming the entry), calib_errors
/// not of calib_confidence's shape, wrong dtypes (Type), CUDA arrays (Type).
ThresholdCertificate certify_threshold(const TensorView& calib_confidence, const TensorView& calib_errors,
                                       const TensorView& pool_confidence, double target_error, double delta,
                                       std::int64_t scan_start = 0);

/// The shapes certified_auto_label writes: {accepted shape, labels shape}. Reads no values
/// (pool_probs.data may be null).
std::vector<std::vector<std::int64_t>> auto_label_shapes(const TensorView& pool_probs,
                                                         const CertifyOptions& options = {});

/// Certified auto-labelling of a pool (see the shape contract above).
AutoLabelResult certified_auto_label(const TensorView& pool_probs, const TensorView& calib_probs,
                                     const TensorView& calib_labels, const TensorView& accepted,
                                     const TensorView& labels, const CertifyOptions& options);

}  // namespace labelwise
