// CPU loops of certified auto-labelling: one validated pass over probabilities (+ confidences and
// labels), and the pool write pass. Parallel over images (axis 0 of the label map); every per-image
// sum runs in one thread in a fixed order, so results never depend on the thread count.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <mutex>

#include "../propagation_backend.hpp"
#include "labelwise/detail/parallel_for.hpp"

namespace labelwise {
namespace detail {
namespace {

/// Walks the voxels of one image (label-map axes 1..ndim-1) in row-major order, keeping the element
/// offsets of up to four strided arrays.
struct Walker {
  static constexpr int kArrays = 4;
  int nd = 0;  // inner axes
  std::int64_t shape[kMaxDims] = {};
  std::int64_t stride[kArrays][kMaxDims] = {};
  std::int64_t idx[kMaxDims] = {};
  std::int64_t off[kArrays] = {};

  Walker(const MapLayout& m, const std::int64_t* const strides[kArrays]) {
    nd = m.ndim - 1;
    for (int d = 0; d < nd; ++d) {
      shape[d] = m.shape[d + 1];
      for (int a = 0; a < kArrays; ++a) stride[a][d] = strides[a] ? strides[a][d + 1] : 0;
    }
  }
  void start(const std::int64_t base[kArrays]) {
    for (int d = 0; d < nd; ++d) idx[d] = 0;
    for (int a = 0; a < kArrays; ++a) off[a] = base[a];
  }
  void next() {
    for (int d = nd - 1; d >= 0; --d) {
      ++idx[d];
      for (int a = 0; a < kArrays; ++a) off[a] += stride[a][d];
      if (idx[d] < shape[d]) return;
      for (int a = 0; a < kArrays; ++a) off[a] -= stride[a][d] * shape[d];
      idx[d] = 0;
    }
  }
};

inline std::int64_t read_int(const void* p, DType t, std::int64_t off) {
  switch (t) {
    case DType::Int64: return static_cast<const std::int64_t*>(p)[off];
    case DType::Int32: return static_cast<const std::int32_t*>(p)[off];
    case DType::UInt8: return static_cast<const std::uint8_t*>(p)[off];
    case DType::Bool: return static_cast<const std::uint8_t*>(p)[off] ? 1 : 0;
    default: return 0;
  }
}

/// Validates one class vector and returns its arg-max (ties: lower index) and maximum.
template <typename T>
inline int class_vector(const T* p, std::int64_t cs, int C, double tol, int* argmax, double* maxp) {
  double sum = 0.0, best = -1.0;
  int arg = 0;
  for (int c = 0; c < C; ++c) {
    const double v = static_cast<double>(p[c * cs]);
    if (!std::isfinite(v)) return kUnitNonFinite;
    if (v < 0.0) return kUnitNegative;
    sum += v;
    if (v > best) {
      best = v;
      arg = c;
    }
  }
  if (!(std::fabs(sum - 1.0) <= tol)) return kUnitUnnormalised;
  *argmax = arg;
  *maxp = best;
  return kUnitOk;
}

/// Keeps the failure with the lowest unit index across threads.
struct FirstFailure {
  std::mutex m;
  UnitFailure f;
  bool any = false;
  void offer(const UnitFailure& g) {
    std::lock_guard<std::mutex> lock(m);
    if (!any || g.unit < f.unit) {
      f = g;
      any = true;
    }
  }
};

}  // namespace

std::int64_t PoolGrid::interval(double s) const {
  // The number of cuts >= s (the cuts descend): std::partition_point's answer, by a search without
  // branches. Its comparisons are coin flips for the pool's scores, and their mispredictions were
  // most of certified_auto_label's pass over a large pool. Invariant: every cut before p is >= s and
  // the answer lies in [p, p + n].
  const double* p = cut.data();
  std::size_t n = cut.size();
  if (n == 0) return 0;
  while (n > 1) {
    const std::size_t half = n / 2;
    p += static_cast<std::size_t>(p[half] >= s) * half;
    n -= half;
  }
  return (p - cut.data()) + (*p >= s ? 1 : 0);
}

void PoolGrid::reset() {
  count.assign(cut.size() + 1, 0);
  min_score.assign(cut.size() + 1, std::numeric_limits<double>::infinity());
}

void PoolGrid::merge(const PoolGrid& other) {
  for (std::size_t i = 0; i < count.size(); ++i) {
    count[i] += other.count[i];
    min_score[i] = std::min(min_score[i], other.min_score[i]);
  }
}

namespace {

template <typename T>
UnitFailure unit_pass_t(const UnitJob& job) {
  const MapLayout& M = job.map;
  const std::int64_t N = M.shape[0];
  const bool conf_voxel = job.confidence.data && !job.image_confidence;
  const bool has_labels = job.labels.data != nullptr;
  const std::int64_t* strides[Walker::kArrays] = {job.probs.stride, conf_voxel ? job.confidence.stride : nullptr,
                                                  has_labels ? job.labels.stride : nullptr, nullptr};
  FirstFailure first;
  std::mutex grid_mutex;
  const std::int64_t grain = std::max<std::int64_t>(1, 65536 / std::max<std::int64_t>(1, M.per_image));
  parallel_for(N, grain, [&](std::int64_t b, std::int64_t e, int) {
    Walker w(M, strides);
    const T* P = static_cast<const T*>(job.probs.data);
    // This worker's counts, merged at the end (integer counts and minima: the merge order does not
    // matter). Only the cuts are read from the shared grids; their counts are written under the lock.
    std::vector<PoolGrid> grids(job.grids ? job.grids->size() : 0);
    for (std::size_t g = 0; g < grids.size(); ++g) {
      grids[g].cut = (*job.grids)[g].cut;
      grids[g].reset();
    }
    for (std::int64_t i = b; i < e; ++i) {
      const std::int64_t base[Walker::kArrays] = {i * job.probs.stride[0],
                                                  conf_voxel ? i * job.confidence.stride[0] : 0,
                                                  has_labels ? i * job.labels.stride[0] : 0, 0};
      w.start(base);
      double conf_sum = 0.0;
      std::int64_t wrong = 0, labelled = 0;
      for (std::int64_t r = 0; r < M.per_image; ++r, w.next()) {
        const std::int64_t unit = i * M.per_image + r;
        int arg = 0;
        double maxp = 0.0;
        const int st = class_vector(P + w.off[0], job.class_stride, job.C, job.tol, &arg, &maxp);
        if (st != kUnitOk) {
          first.offer({st, unit, 0});
          return;
        }
        double conf = maxp;
        if (conf_voxel) {
          conf = read_float(job.confidence.data, job.confidence.dtype, w.off[1]);
          if (std::isnan(conf)) {
            first.offer({kUnitNaNConfidence, unit, 0});
            return;
          }
        }
        if (job.unit_conf) job.unit_conf[unit] = conf;
        if (job.unit_class) job.unit_class[unit] = arg;
        if (job.grids) grids[job.class_grids ? arg : 0].add(conf);
        conf_sum += conf;
        if (has_labels) {
          const std::int64_t lab = read_int(job.labels.data, job.labels.dtype, w.off[2]);
          if (lab < -1 || lab >= job.C) {
            first.offer({kUnitBadLabel, unit, lab});
            return;
          }
          const bool is_labelled = lab >= 0;
          const bool is_wrong = is_labelled && lab != arg;
          labelled += is_labelled;
          wrong += is_wrong;
          if (job.unit_error) job.unit_error[unit] = static_cast<std::int8_t>(is_labelled ? (is_wrong ? 1 : 0) : -1);
        }
      }
      if (job.image_conf) {
        double c;
        if (job.image_confidence) {
          c = read_float(job.confidence.data, job.confidence.dtype, i * job.confidence.stride[0]);
          if (std::isnan(c)) {
            first.offer({kUnitNaNConfidence, i * M.per_image, 0});
            return;
          }
        } else {
          c = conf_sum / static_cast<double>(M.per_image);
          if (std::isnan(c)) {
            first.offer({kUnitNaNImageMean, i * M.per_image, i});
            return;
          }
        }
        job.image_conf[i] = c;
      }
      if (job.image_wrong) job.image_wrong[i] = wrong;
      if (job.image_labelled) job.image_labelled[i] = labelled;
    }
    if (job.grids) {
      std::lock_guard<std::mutex> lock(grid_mutex);
      for (std::size_t g = 0; g < grids.size(); ++g) (*job.grids)[g].merge(grids[g]);
    }
  });
  return first.any ? first.f : UnitFailure{};
}

template <typename T>
std::int64_t write_pass_t(const WriteJob& job) {
  const MapLayout& M = job.map;
  const std::int64_t N = M.shape[0];
  const bool image_unit = job.image_accept != nullptr;
  const bool conf_voxel = !image_unit && job.confidence.data;
  const std::int64_t* strides[Walker::kArrays] = {job.probs.stride, conf_voxel ? job.confidence.stride : nullptr,
                                                  job.labels_stride, image_unit ? nullptr : job.accepted_stride};
  std::atomic<std::int64_t> total{0};
  const std::int64_t grain = std::max<std::int64_t>(1, 65536 / std::max<std::int64_t>(1, M.per_image));
  parallel_for(N, grain, [&](std::int64_t b, std::int64_t e, int) {
    Walker w(M, strides);
    const T* P = static_cast<const T*>(job.probs.data);
    std::uint8_t* acc = static_cast<std::uint8_t*>(job.accepted);
    std::int64_t count = 0;
    for (std::int64_t i = b; i < e; ++i) {
      const std::int64_t base[Walker::kArrays] = {i * job.probs.stride[0],
                                                  conf_voxel ? i * job.confidence.stride[0] : 0,
                                                  i * job.labels_stride[0],
                                                  image_unit ? 0 : i * job.accepted_stride[0]};
      w.start(base);
      const bool image_ok = image_unit && job.image_accept[i];
      count += image_ok;
      for (std::int64_t r = 0; r < M.per_image; ++r, w.next()) {
        const T* p = P + w.off[0];
        int arg = 0;
        double best = -1.0;
        for (int c = 0; c < job.C; ++c) {
          const double v = static_cast<double>(p[c * job.class_stride]);
          if (v > best) {
            best = v;
            arg = c;
          }
        }
        bool ok = image_ok;
        if (!image_unit) {
          const double conf = conf_voxel ? read_float(job.confidence.data, job.confidence.dtype, w.off[1]) : best;
          ok = conf >= job.threshold[arg];  // false for a NaN threshold (class not certified)
          acc[w.off[3]] = ok ? 1 : 0;
          count += ok;
        }
        job.labels[w.off[2]] = ok ? arg : -1;
      }
    }
    total += count;
  });
  return total.load();
}

}  // namespace

UnitFailure unit_pass_cpu(const UnitJob& job) {
  return job.probs.dtype == DType::Float64 ? unit_pass_t<double>(job) : unit_pass_t<float>(job);
}

std::int64_t write_pass_cpu(const WriteJob& job) {
  return job.probs.dtype == DType::Float64 ? write_pass_t<double>(job) : write_pass_t<float>(job);
}

}  // namespace detail
}  // namespace labelwise
