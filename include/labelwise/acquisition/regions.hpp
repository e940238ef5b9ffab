// labelwise — region acquisition for segmentation: turn per-voxel uncertainty maps into patches or
// slices to label. Definitions: docs/acquisition.md ("Regions").
//
// Shape contract
//   map    : [N, *spatial] with 1 to 3 spatial axes (e.g. BALD maps [N, H, W] or [N, D, H, W]);
//            float32 or float64, CPU, any strides. No NaN (+-inf allowed: they propagate to the
//            means; a patch holding both +inf and -inf has no mean and is an error naming it).
//   patch  : one size per spatial axis, 1 <= patch_d <= S_d.
//   stride : one step per spatial axis, >= 1 (the patch size gives non-overlapping tiles).
//   A patch's score is the mean of the map over its voxels (a box filter: separable window sums in
//   float64, O(voxels) per axis whatever the patch size; a sum only adds values inside its patch, so
//   a huge value in one patch cannot swamp its neighbours' means; an image whose finite values could
//   overflow a window sum, near 1.8e308, is summed scaled by a power of two). Only whole patches are scored:
//   grid_d = (S_d - patch_d) / stride_d + 1 positions per axis.
//
// Errors (labelwise::Error): NaN (naming the first voxel), wrong rank, empty map, patch or stride of
// the wrong length or out of range, b < 0 or larger than the number of non-overlapping patches that
// could be found, wrong output shapes / dtypes, CUDA input (not implemented on CUDA yet).
#pragma once

#include <cstdint>
#include <vector>

#include "labelwise/core/tensor_view.hpp"

namespace labelwise {

/// Patch scores: out [N, *grid] float32 / float64 (caller-owned, CPU), out[n, g...] = mean of map over
/// the patch whose first voxel is g·stride. Errors as above (the shape of out included).
void patch_scores(const TensorView& map, const std::vector<std::int64_t>& patch,
                  const std::vector<std::int64_t>& stride, const TensorView& out);

/// The b highest-scoring patches that do not overlap each other (greedy: best first, a patch that
/// overlaps an already chosen one in the same image is skipped; ties by the lower patch index).
///   corners: int64 [b, 1 + spatial]: (n, first voxel per spatial axis) of each chosen patch (out, CPU)
///   scores : float32 or float64 [b]: their mean scores (out, CPU)
void top_regions(const TensorView& map, std::int64_t b, const std::vector<std::int64_t>& patch,
                 const std::vector<std::int64_t>& stride, const TensorView& corners, const TensorView& scores);

/// Slice scores: the mean of the map over every spatial axis but `axis` (a spatial axis, 1-based
/// like in map's shape, negative counts from the end): out [N, S_axis] float32 / float64 (CPU).
/// Errors: as above, and an axis that is not spatial (0, the items, included).
void slice_scores(const TensorView& map, int axis, const TensorView& out);

}  // namespace labelwise
