// labelwise — internal contract between the fused head front door (src/head_score.cpp) and its
// CPU (same file) / CUDA (src/cuda/head_score_cuda.cu) backends.
#pragma once

#include <cstdint>

#include "labelwise/core/tensor_view.hpp"
#include "labelwise/detail/head_score_impl.hpp"
#include "labelwise/detail/uncertainty_impl.hpp"
#include "labelwise/segmentation/head_score.hpp"
#include "labelwise/uncertainty/metrics.hpp"

namespace labelwise {
namespace detail {

/// Status of a voxel whose probabilities the metrics' validation refused (should not happen; reported
/// as a bug).
constexpr int kHeadScoreRefused = 6;

struct HeadJob {
  // features: the voxel grid [B, *spatial] with features' strides, the feature (channel) stride.
  const void* x = nullptr;
  DType x_dtype = DType::Float32;
  ItemGrid grid;
  std::int64_t x_feature_stride = 0;
  std::int64_t V = 0;  // voxels per item (grid.count / B)
  // weight [M, C, F] and bias [M, C], any float dtype and strides (packed to float64 by the backend).
  const void* w = nullptr;
  DType w_dtype = DType::Float32;
  std::int64_t w_stride[3] = {};
  const void* bias = nullptr;
  DType bias_dtype = DType::Float32;
  std::int64_t bias_stride[2] = {};
  HeadParams hp;  // everything but the packed weight / bias pointers
  std::uint32_t item_offset = 0;
  // head_score: metrics (mask, out per metric over the grid axes) and the optional mean [B, C, *spatial].
  unsigned mask = 0;
  double tol = 0.0;
  void* out[kNumMetrics] = {};
  DType out_dtype[kNumMetrics] = {};
  std::int64_t out_stride[kNumMetrics][kMaxDims] = {};
  void* mean = nullptr;
  DType mean_dtype = DType::Float32;
  std::int64_t mean_stride[kMaxDims] = {};  // over the grid axes
  std::int64_t mean_class_stride = 0;
  // head_sample: samples [B, K, C, *spatial] float32.
  float* samples = nullptr;
  std::int64_t samples_stride[kMaxDims] = {};  // over the grid axes
  std::int64_t samples_k_stride = 0;
  std::int64_t samples_c_stride = 0;
  int device_index = 0;
  void* stream = nullptr;
};

/// First failing voxel (lowest flat grid index) and its status; status 0 when all went well;
/// status -1: a weight or bias entry is not finite (item = its packed index).
struct HeadFailure {
  int status = 0;
  std::int64_t item = 0;
};

HeadFailure head_cpu(const HeadJob& job);
HeadFailure head_cuda(const HeadJob& job);  // throws Error(Runtime) in a CPU-only build

/// Packed float64 value of entry j of the head's parameters: j < M·F·Cp: wt[m][f][c] (0 in the class
/// padding), else bias[m][c] with j - M·F·Cp = m·C + c. Used by both backends.
LABELWISE_HD inline double head_param(const HeadJob& job, std::int64_t j) {
  const HeadParams& hp = job.hp;
  const std::int64_t nw = static_cast<std::int64_t>(hp.M) * hp.F * hp.Cp;
  if (j < nw) {
    const std::int64_t c = j % hp.Cp, mf = j / hp.Cp, f = mf % hp.F, m = mf / hp.F;
    if (c >= hp.C) return 0.0;
    const std::int64_t off = m * job.w_stride[0] + c * job.w_stride[1] + f * job.w_stride[2];
    return job.w_dtype == DType::Float32 ? static_cast<double>(static_cast<const float*>(job.w)[off])
                                         : static_cast<const double*>(job.w)[off];
  }
  const std::int64_t jb = j - nw, c = jb % hp.C, m = jb / hp.C;
  const std::int64_t off = m * job.bias_stride[0] + c * job.bias_stride[1];
  return job.bias_dtype == DType::Float32 ? static_cast<double>(static_cast<const float*>(job.bias)[off])
                                          : static_cast<const double*>(job.bias)[off];
}

}  // namespace detail
}  // namespace labelwise
