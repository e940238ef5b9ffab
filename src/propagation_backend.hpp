// labelwise — internal contract between the propagation front doors (src/propagation.cpp) and their
// CPU loops (src/cpu/propagation_cpu.cpp). CPU only for now.
#pragma once

#include <cstdint>
#include <vector>

#include "labelwise/core/tensor_view.hpp"

namespace labelwise {
namespace detail {

/// Element `off` of a float32 / float64 array, as a double.
inline double read_float(const void* p, DType t, std::int64_t off) {
  return t == DType::Float64 ? static_cast<const double*>(p)[off]
                             : static_cast<double>(static_cast<const float*>(p)[off]);
}

/// The label-map axes of a probability tensor (every axis but the class axis), in order; axis 0 is
/// the image (item) axis.
struct MapLayout {
  int ndim = 0;
  std::int64_t shape[kMaxDims] = {};
  std::int64_t count = 0;      // product of shape
  std::int64_t per_image = 1;  // product of shape[1:]
};

/// A typed pointer with strides over the label-map axes (or over [N] for per-image data).
struct Strided {
  const void* data = nullptr;
  DType dtype = DType::Float32;
  std::int64_t stride[kMaxDims] = {};
};

enum UnitStatus : int {
  kUnitOk = 0,
  kUnitNonFinite = 1,      // NaN / Inf probability
  kUnitNegative = 2,       // negative probability
  kUnitUnnormalised = 3,   // probabilities do not sum to 1
  kUnitBadLabel = 4,       // label < -1 or >= C (value in UnitFailure::value)
  kUnitNaNConfidence = 5,  // NaN confidence
  kUnitNaNImageMean = 6,   // an image's mean confidence is NaN (+inf and -inf voxels)
};

/// First failing unit (lowest flat label-map index; an image index for kUnitNaNImageMean).
struct UnitFailure {
  int status = kUnitOk;
  std::int64_t unit = 0;
  std::int64_t value = 0;
};

/// The calibration cuts of one scan and the pool units counted between them: `cut` holds the distinct
/// calibration scores, descending; a pool unit with confidence s falls in interval i = the number of
/// cuts >= s (0: above every cut; cut.size(): at or below the last), and count[i] / min_score[i] are
/// the number of pool units there and their smallest confidence.
struct PoolGrid {
  std::vector<double> cut;
  std::vector<std::int64_t> count;  // [cut.size() + 1]
  std::vector<double> min_score;    // [cut.size() + 1], +inf where count is 0
  std::int64_t interval(double s) const;
  void reset();
  void add(double s) {
    const std::int64_t i = interval(s);
    ++count[i];
    if (s < min_score[i]) min_score[i] = s;
  }
  void merge(const PoolGrid& other);
};

/// One validated pass over probabilities (+ optional confidences and labels).
struct UnitJob {
  MapLayout map;
  Strided probs;
  std::int64_t class_stride = 0;
  int C = 0;
  double tol = 0.0;
  Strided confidence;             // data == nullptr: use the maximum class probability
  bool image_confidence = false;  // confidence is [N] (one per image), not per voxel
  Strided labels;                 // data == nullptr: no labels
  // outputs (each optional)
  double* unit_conf = nullptr;          // [count] per-voxel confidence
  std::int8_t* unit_error = nullptr;    // [count] -1 unlabelled, 0 right, 1 wrong (needs labels)
  std::int32_t* unit_class = nullptr;   // [count] predicted (arg-max) class
  // Item units: every unit counted in grids[0], or with class_grids in grids[its predicted class]
  std::vector<PoolGrid>* grids = nullptr;
  bool class_grids = false;
  double* image_conf = nullptr;         // [N] mean voxel confidence (or the given per-image one)
  std::int64_t* image_wrong = nullptr;  // [N] mislabelled voxels (needs labels)
  std::int64_t* image_labelled = nullptr;  // [N] labelled voxels (needs labels)
};

UnitFailure unit_pass_cpu(const UnitJob& job);

/// Writes accepted / labels for the pool; returns the number of accepted units.
struct WriteJob {
  MapLayout map;
  Strided probs;
  std::int64_t class_stride = 0;
  int C = 0;
  Strided confidence;  // Item unit only (data == nullptr: maximum class probability)
  const double* threshold = nullptr;  // Item unit: [C] accept a unit predicted c when conf >= threshold[c] (NaN: never)
  const std::uint8_t* image_accept = nullptr;  // Image unit: [N] decisions; nullptr: Item unit
  void* accepted = nullptr;                    // Item unit only: bool / uint8 over the map
  std::int64_t accepted_stride[kMaxDims] = {};
  std::int64_t* labels = nullptr;              // int64 over the map
  std::int64_t labels_stride[kMaxDims] = {};
};

std::int64_t write_pass_cpu(const WriteJob& job);

}  // namespace detail
}  // namespace labelwise
