// labelwise — 3D masks from a few annotated slices: slice-to-slice random-walker propagation (CPU).
// Method and evidence on Colin27: docs/propagation.md ("Slice propagation").
//
// Method
//   Every slice that is not annotated is segmented from its neighbour, sweeping away from each
//   annotated slice towards the next one (or the end of the volume): the neighbour's labels, eroded
//   by `erode` pixels (a pixel survives if its whole (2·erode+1)² neighbourhood, edge-clamped, has
//   its label) and kept where the neighbour's confidence is >= `min_confidence`, seed Grady's random
//   walker (IEEE TPAMI 2006) on this slice: a 4-neighbour graph with edge weights
//   exp(-beta·(g_i - g_j)²) + 1e-10 on the slice's intensities scaled to zero mean and unit variance
//   (divided by sd + 1e-12·max|intensity|: the same masks in any units),
//   one sparse SPD solve (Eigen's simplicial LDLᵀ) per class present among the seeds; probabilities
//   clipped to [0, 1] and normalised. If no seed survives, the neighbour's labels eroded by 1 pixel
//   without the confidence threshold seed the slice (class boundaries stay unseeded, so the walker
//   still decides them from the image); only if none survives that either, the whole neighbour mask.
//   A slice between two annotated slices gets the distance-weighted mean of the probabilities
//   propagated from both sides (weights falling linearly with the distance). Intervals between
//   annotated slices are independent and run in parallel; the result does not depend on the thread
//   count.
//
// Shape contract
//   volume     : [Z, H, W] (with the slice axis named by options.axis; the other two axes keep their
//                order) float32 / float64, CPU, any strides, finite.
//   labels     : int64, volume's shape, any strides; read only on the annotated slices (classes >= 0).
//   labelled_slices : the annotated slice indices along the axis (any order, repeats ignored), >= 1 of them.
//   mask       : int64, volume's shape (out): the class of every voxel (the labels on annotated slices).
//   confidence : float64, volume's shape (out): the probability of that class (1 on annotated slices,
//                and on the seeds of slices beyond the outermost annotated ones: carried over from
//                the neighbour, not measured; between two annotated slices, the distance-weighted
//                mix of the two sweeps).
// Limits of the method: a structure narrower than 2·erode + 1 pixels leaves no seed and vanishes from
// the propagated slices (unless no pixel of the slice survives the erosion: the fallback above;
// erode = 1 keeps structures >= 3 pixels wide); a structure that ends is extrapolated for as long as
// its eroded interior leaves seeds, with confidence 1 on them.
// Errors (labelwise::Error): wrong ranks / shapes / dtypes, NaN / Inf intensities, no annotated
// slice or one out of range, a negative label or one >= num_classes (or >= 65536) on an annotated
// slice, num_classes < 0 or > 65536, an axis outside [-3, 3), beta <= 0 or not finite,
// erode < 1, min_confidence outside [0, 1], CUDA arrays (Type); a random-walker system the sparse
// solver cannot factorise (Runtime, naming the slice).
#pragma once

#include <cstdint>
#include <vector>

#include "labelwise/core/tensor_view.hpp"

namespace labelwise {

struct SlicePropagationOptions {
  /// The slice axis of volume, in [-3, 3) (negative counts from the end).
  int axis = 0;
  /// Number of classes, 0 <= num_classes <= 65536; 0 = the largest label on the annotated slices + 1.
  std::int64_t num_classes = 0;
  /// Edge-weight contrast of the random walker; finite, > 0.
  double beta = 30.0;
  /// Erosion radius of the seeds (pixels), >= 1.
  std::int64_t erode = 2;
  /// Seeds keep only the neighbour's pixels of at least this confidence, in [0, 1].
  double min_confidence = 0.9;
};

/// See the method above.
void propagate_slices(const TensorView& volume, const TensorView& labels,
                      const std::vector<std::int64_t>& labelled_slices, const TensorView& mask,
                      const TensorView& confidence, const SlicePropagationOptions& options = {});

}  // namespace labelwise
