// Front door of the fused head sample-and-score (labelwise/segmentation/head_score.hpp): validate,
// build the job, dispatch on device (and, on the CPU, on the instruction set: src/cpu/head_score_cpu.inc).
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "cpu_variant.hpp"
#include "head_score_backend.hpp"
#include "labelwise/segmentation/head_score.hpp"

namespace labelwise {

namespace detail {

namespace head_generic { HeadFailure head_cpu(const HeadJob& job); }
#if defined(__x86_64__)
namespace head_avx2 { HeadFailure head_cpu(const HeadJob& job); }
namespace head_avx512 { HeadFailure head_cpu(const HeadJob& job); }
#endif

HeadFailure head_cpu(const HeadJob& job) {
#if defined(__x86_64__)
  const CpuIsa isa = cpu_isa();
  if (isa == CpuIsa::Avx512) return head_avx512::head_cpu(job);
  if (isa == CpuIsa::Avx2) return head_avx2::head_cpu(job);
#endif
  return head_generic::head_cpu(job);
}

}  // namespace detail

namespace {

bool is_float(DType t) { return t == DType::Float32 || t == DType::Float64; }

std::string shape_of(const std::vector<std::int64_t>& s) { return TensorView(nullptr, DType::Float32, s).shape_str(); }

std::string voxel_str(const detail::ItemGrid& g, std::int64_t i) {
  std::string s;
  for (int d = g.ndim - 1; d >= 1; --d) {
    s = std::to_string(i % g.shape[d]) + (s.empty() ? "" : ", ") + s;
    i /= g.shape[d];
  }
  return "item " + std::to_string(i) + (g.ndim > 1 ? ", voxel [" + s + "]" : "");
}

struct Prepared {
  detail::HeadJob job;
  std::vector<std::int64_t> spatial;
  std::int64_t B = 0, C = 0;
};

Prepared prepare(const TensorView& x, const TensorView& weight, const TensorView& bias, const HeadScoreOptions& opt) {
  Prepared P;
  detail::HeadJob& job = P.job;
  check(is_float(x.dtype), ErrorKind::Type, "features: expected dtype float32 or float64, got ", dtype_name(x.dtype));
  check(x.ndim >= 2 && x.ndim <= 5, ErrorKind::Value,
        "features: expected [B, F, *spatial] with 0 to 3 spatial axes (rank 2 to 5), got shape ", x.shape_str());
  const std::int64_t total = x.checked_numel("features");
  check(total > 0, ErrorKind::Value, "features: input is empty (shape ", x.shape_str(), ")");
  check(x.data != nullptr, ErrorKind::Value, "features: data pointer is null");
  check(is_float(weight.dtype), ErrorKind::Type, "weight: expected dtype float32 or float64, got ",
        dtype_name(weight.dtype));
  check(is_float(bias.dtype), ErrorKind::Type, "bias: expected dtype float32 or float64, got ", dtype_name(bias.dtype));
  check(weight.device == x.device, ErrorKind::Value, "weight: is on ", weight.device.str(), " but features are on ",
        x.device.str());
  check(bias.device == x.device, ErrorKind::Value, "bias: is on ", bias.device.str(), " but features are on ",
        x.device.str());
  const std::int64_t B = x.shape[0], F = x.shape[1];
  check(weight.ndim == 3, ErrorKind::Value, "weight: expected [M, C, F] (rank 3), got shape ", weight.shape_str());
  const std::int64_t M = weight.shape[0], C = weight.shape[1];
  check(weight.shape[2] == F, ErrorKind::Value, "weight: expected [M, C, F] with F = ", F,
        " (features' axis 1), got shape ", weight.shape_str(), " for features of shape ", x.shape_str());
  check(M >= 1, ErrorKind::Value, "weight: expected at least one member (M >= 1), got shape ", weight.shape_str());
  check(C >= 2, ErrorKind::Value, "weight: expected at least 2 classes (C >= 2), got shape ", weight.shape_str());
  check(weight.data != nullptr, ErrorKind::Value, "weight: data pointer is null");
  check(bias.ndim == 2 && bias.shape[0] == M && bias.shape[1] == C, ErrorKind::Value, "bias: expected shape ",
        shape_of({M, C}), " ([M, C] of weight ", weight.shape_str(), "), got ", bias.shape_str());
  check(bias.data != nullptr, ErrorKind::Value, "bias: data pointer is null");
  constexpr std::int64_t kIntMax = std::numeric_limits<int>::max();
  check(F <= kIntMax / 8 && C <= 4096 && M < 65536, ErrorKind::Value,
        "weight: too large (F < 2^28, C <= 4096, M < 65536 supported), got shape ", weight.shape_str());
  const std::int64_t K = opt.samples;
  check(K >= 1 && K < 65536, ErrorKind::Value, "samples: K must be in [1, 65535], got ", K);
  check(K * C <= (std::int64_t(1) << 24), ErrorKind::Value, "samples: K * C = ", K * C,
        " probabilities per voxel is more than supported (2^24)");
  check(opt.dropout >= 0.0 && opt.dropout <= kMaxDropout, ErrorKind::Value,
        "dropout: the rate must be in [0, 1) and at most 1 - 2^-32 (masks compare 32-bit random words), got ",
        opt.dropout);
  if (M > 1) {
    check(K == M, ErrorKind::Value, "samples: an ensemble of M = ", M, " members (weight ", weight.shape_str(),
          ") has exactly K = M samples, got K = ", K);
    check(opt.dropout == 0.0, ErrorKind::Value, "dropout: must be 0 for an ensemble (M = ", M, "), got ",
          opt.dropout);
  }
  const std::int64_t V = total / (B * F);
  check(V <= 0xFFFFFFFFll, ErrorKind::Value, "features: at most 2^32 - 1 voxels per item, got ", V, " (shape ",
        x.shape_str(), ")");
  check(opt.index_offset <= 0xFFFFFFFFull && static_cast<std::uint64_t>(B) <= 0x100000000ull - opt.index_offset,
        ErrorKind::Value, "index_offset: items must have global indices below 2^32, got index_offset ",
        opt.index_offset, " + ", B, " items");

  job.x = x.data;
  job.x_dtype = x.dtype;
  job.grid.ndim = x.ndim - 1;
  job.grid.shape[0] = B;
  job.grid.in_stride[0] = x.strides[0];
  for (int d = 2; d < x.ndim; ++d) {
    job.grid.shape[d - 1] = x.shape[d];
    job.grid.in_stride[d - 1] = x.strides[d];
    P.spatial.push_back(x.shape[d]);
  }
  job.grid.count = B * V;
  job.x_feature_stride = x.strides[1];
  job.V = V;
  job.w = weight.data;
  job.w_dtype = weight.dtype;
  for (int d = 0; d < 3; ++d) job.w_stride[d] = weight.strides[d];
  job.bias = bias.data;
  job.bias_dtype = bias.dtype;
  job.bias_stride[0] = bias.strides[0];
  job.bias_stride[1] = bias.strides[1];
  detail::HeadParams& hp = job.hp;
  hp.F = static_cast<int>(F);
  hp.C = static_cast<int>(C);
  hp.Cp = detail::padded_classes(hp.C);
  hp.K = static_cast<int>(K);
  hp.M = static_cast<int>(M);
  hp.dropout = opt.dropout > 0.0;
  // keep <=> word / 2^32 >= p; p · 2^32 is exact in double, so this is word >= ceil(p · 2^32) (< 2^32 as
  // p <= kMaxDropout).
  hp.keep_threshold = static_cast<std::uint32_t>(std::ceil(opt.dropout * 4294967296.0));
  hp.scale = 1.0 / (1.0 - opt.dropout);
  hp.key0 = static_cast<std::uint32_t>(opt.seed);
  hp.key1 = static_cast<std::uint32_t>(opt.seed >> 32);
  job.item_offset = static_cast<std::uint32_t>(opt.index_offset);
  job.device_index = x.device.index;
  job.stream = opt.stream;
  P.B = B;
  P.C = C;
  return P;
}

/// Strides of `o` over the voxel grid axes [B, *spatial], skipping the axes listed in `skip` (sorted).
void grid_strides(const TensorView& o, std::initializer_list<int> skip, std::int64_t* out) {
  int g = 0;
  for (int d = 0; d < o.ndim; ++d) {
    bool skipped = false;
    for (int s : skip) skipped |= (s == d);
    if (!skipped) out[g++] = o.strides[d];
  }
}

void dispatch(const TensorView& x, const Prepared& P) {
  const detail::HeadJob& job = P.job;
  const detail::HeadFailure f = x.device.is_cpu() ? detail::head_cpu(job) : detail::head_cuda(job);
  if (f.status == 0) return;
  if (f.status == -1) {
    const std::int64_t nw = static_cast<std::int64_t>(job.hp.M) * job.hp.F * job.hp.Cp;
    if (f.item < nw) {
      const std::int64_t c = f.item % job.hp.Cp, mf = f.item / job.hp.Cp;
      throw Error(ErrorKind::Value, "weight: entry [" + std::to_string(mf / job.hp.F) + ", " + std::to_string(c) +
                                        ", " + std::to_string(mf % job.hp.F) + "] is NaN or Inf");
    }
    const std::int64_t jb = f.item - nw;
    throw Error(ErrorKind::Value, "bias: entry [" + std::to_string(jb / job.hp.C) + ", " +
                                      std::to_string(jb % job.hp.C) + "] is NaN or Inf");
  }
  const std::string where = voxel_str(job.grid, f.item);
  switch (f.status) {
    case detail::kItemNonFinite: throw Error(ErrorKind::Value, "features: " + where + " contains NaN or Inf");
    case detail::kHeadNonFiniteLogits:
      throw Error(ErrorKind::Value, "features: " + where +
                                        " gives logits that overflow float64 (features or weights far too large)");
    default:
      throw Error(ErrorKind::Runtime, "head_score: " + where + " failed with status " + std::to_string(f.status) +
                                          " (please report this)");
  }
}

}  // namespace

void head_score(const TensorView& features, const TensorView& weight, const TensorView& bias,
                const std::vector<MetricOutput>& outputs, const TensorView* mean, const HeadScoreOptions& options) {
  Prepared P = prepare(features, weight, bias, options);
  detail::HeadJob& job = P.job;
  check(!outputs.empty() || mean != nullptr, ErrorKind::Value, "outputs: no metric and no mean requested");
  std::vector<std::int64_t> out_shape{P.B};
  out_shape.insert(out_shape.end(), P.spatial.begin(), P.spatial.end());
  job.tol = normalization_tolerance(DType::Float32);
  for (const MetricOutput& mo : outputs) {
    const int m = static_cast<int>(mo.metric);
    const char* name = metric_name(mo.metric);
    check(!(job.mask & (1u << m)), ErrorKind::Value, "metrics: '", name, "' is requested twice");
    check(!metric_needs_samples(mo.metric) || job.hp.K >= 2, ErrorKind::Value, name,
          ": needs at least 2 samples, got K = ", job.hp.K);
    const TensorView& o = mo.out;
    check(o.device == features.device, ErrorKind::Value, name, ": output is on ", o.device.str(),
          " but features are on ", features.device.str());
    check(is_float(o.dtype), ErrorKind::Type, name, ": output dtype must be float32 or float64, got ",
          dtype_name(o.dtype));
    check(o.sizes() == out_shape, ErrorKind::Value, name, ": output has shape ", o.shape_str(), ", expected ",
          shape_of(out_shape), " ([B, *spatial] of features ", features.shape_str(), ")");
    job.mask |= 1u << m;
    job.out[m] = o.data;
    job.out_dtype[m] = o.dtype;
    grid_strides(o, {}, job.out_stride[m]);
  }
  if (mean) {
    std::vector<std::int64_t> want{P.B, P.C};
    want.insert(want.end(), P.spatial.begin(), P.spatial.end());
    check(mean->device == features.device, ErrorKind::Value, "mean: is on ", mean->device.str(),
          " but features are on ", features.device.str());
    check(is_float(mean->dtype), ErrorKind::Type, "mean: dtype must be float32 or float64, got ",
          dtype_name(mean->dtype));
    check(mean->sizes() == want, ErrorKind::Value, "mean: has shape ", mean->shape_str(), ", expected ",
          shape_of(want), " ([B, C, *spatial])");
    job.mean = mean->data;
    job.mean_dtype = mean->dtype;
    job.mean_class_stride = mean->strides[1];
    grid_strides(*mean, {1}, job.mean_stride);
  }
  std::vector<NamedView> outs;
  for (const MetricOutput& mo : outputs) outs.push_back({mo.out, std::string(metric_name(mo.metric)) + " output"});
  if (mean) outs.push_back({*mean, "mean"});
  check_outputs(outs, {{features, "features"}, {weight, "weight"}, {bias, "bias"}});
  dispatch(features, P);
}

void head_sample(const TensorView& features, const TensorView& weight, const TensorView& bias,
                 const TensorView& samples, const HeadScoreOptions& options) {
  Prepared P = prepare(features, weight, bias, options);
  detail::HeadJob& job = P.job;
  std::vector<std::int64_t> want{P.B, job.hp.K, P.C};
  want.insert(want.end(), P.spatial.begin(), P.spatial.end());
  check(samples.device == features.device, ErrorKind::Value, "samples: is on ", samples.device.str(),
        " but features are on ", features.device.str());
  check(samples.dtype == DType::Float32, ErrorKind::Type, "samples: dtype must be float32, got ",
        dtype_name(samples.dtype));
  check(samples.sizes() == want, ErrorKind::Value, "samples: has shape ", samples.shape_str(), ", expected ",
        shape_of(want), " ([B, K, C, *spatial])");
  check_outputs({{samples, "samples"}}, {{features, "features"}, {weight, "weight"}, {bias, "bias"}});
  job.samples = static_cast<float*>(samples.data);
  job.samples_k_stride = samples.strides[1];
  job.samples_c_stride = samples.strides[2];
  grid_strides(samples, {1, 2}, job.samples_stride);
  dispatch(features, P);
}

}  // namespace labelwise
