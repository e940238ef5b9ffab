// Front door of the uncertainty metrics: validate, build the job, dispatch on device.
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "labelwise/uncertainty/metrics.hpp"
#include "cpu/scratch_array.hpp"
#include "uncertainty_backend.hpp"

namespace labelwise {

namespace {

constexpr const char* kNames[kNumMetrics] = {
    "predictive_entropy", "expected_entropy", "bald",     "least_confidence", "margin",
    "ratio",              "variation_ratio",  "max_mean_variation_ratio", "mean_std", "balentacq"};

bool is_half(DType t) { return t == DType::Float16 || t == DType::BFloat16; }

int normalise_axis(int axis, int ndim, const char* what) {
  check(axis >= -ndim && axis < ndim, ErrorKind::Value, what, ": axis ", axis, " is out of range for an input of rank ",
        ndim);
  return axis < 0 ? axis + ndim : axis;
}

struct Layout {
  int sample_axis = -1;  // -1: none
  int class_axis = 0;
  int K = 1;
  int C = 0;
  detail::ItemGrid grid;
  std::vector<std::int64_t> out_shape;
};

/// x's layout, validated; the data pointer too unless `shape_only` (score_shape reads no values).
Layout describe(const TensorView& x, const ScoreOptions& opt, bool shape_only = false) {
  check(x.dtype == DType::Float32 || x.dtype == DType::Float64 || is_half(x.dtype), ErrorKind::Type,
        "x: expected dtype float16, bfloat16, float32 or float64, got ", dtype_name(x.dtype));
  const int min_rank = opt.sample_axis ? 2 : 1;
  check(x.ndim >= min_rank, ErrorKind::Value, "x: expected rank >= ", min_rank, " (",
        opt.sample_axis ? "samples and classes" : "classes", "), got shape ", x.shape_str());
  Layout L;
  // [N, C] with the default axes of [N, K, C, *spatial] (the likeliest mistake): say what to pass
  check(opt.class_axis || !opt.sample_axis || x.ndim >= 3, ErrorKind::Value, "x: shape ", x.shape_str(),
        " has no axis 2 for the default class axis of samples [N, K, C, *spatial]; for single predictions [N, C, "
        "*spatial] pass no sample axis (Python: sample_axis=None), or name the axes");
  L.class_axis = normalise_axis(opt.class_axis.value_or(opt.sample_axis ? 2 : 1), x.ndim, "class_axis");
  if (opt.sample_axis) {
    L.sample_axis = normalise_axis(*opt.sample_axis, x.ndim, "sample_axis");
    check(L.sample_axis != L.class_axis, ErrorKind::Value, "sample_axis and class_axis both name axis ", L.class_axis,
          " of x (shape ", x.shape_str(), "); for the samples last, as [N, C, ..., K], pass class_axis=1 too");
  }
  const std::int64_t total = x.checked_numel("x");
  check(total > 0, ErrorKind::Value, "x: input is empty (shape ", x.shape_str(), ")");
  check(shape_only || x.data != nullptr, ErrorKind::Value, "x: data pointer is null");
  const std::int64_t C = x.shape[L.class_axis];
  const std::int64_t K = L.sample_axis >= 0 ? x.shape[L.sample_axis] : 1;
  check(C >= 2, ErrorKind::Value, "x: the class axis (axis ", L.class_axis, ") has ", C,
        " entry; at least 2 classes are needed (shape ", x.shape_str(), ")");
  check(C <= std::numeric_limits<int>::max() && K <= std::numeric_limits<int>::max(), ErrorKind::Value,
        "x: sample or class axis longer than 2^31-1 (shape ", x.shape_str(), ")");
  // per-item offsets (sample, class) are int: K·C plus a row of vector padding must fit
  check(K * C <= std::numeric_limits<int>::max() - 4096, ErrorKind::Value, "x: one item holds K·C = ", K * C,
        " values (K = ", K, ", C = ", C, "); at most 2^31 - 4097 per item (shape ", x.shape_str(), ")");
  L.C = static_cast<int>(C);
  L.K = static_cast<int>(K);
  L.grid.count = 1;
  for (int d = 0; d < x.ndim; ++d) {
    if (d == L.class_axis || d == L.sample_axis) continue;
    L.grid.shape[L.grid.ndim] = x.shape[d];
    L.grid.in_stride[L.grid.ndim] = x.strides[d];
    ++L.grid.ndim;
    L.grid.count *= x.shape[d];
    L.out_shape.push_back(x.shape[d]);
  }
  return L;
}

std::string item_index_str(const detail::ItemGrid& g, std::int64_t i) {
  std::string s;
  for (int d = g.ndim - 1; d >= 0; --d) {
    s = std::to_string(i % g.shape[d]) + (s.empty() ? "" : ", ") + s;
    i /= g.shape[d];
  }
  return "[" + s + "]";
}

}  // namespace

const char* metric_name(Metric m) {
  const int i = static_cast<int>(m);
  check(i >= 0 && i < kNumMetrics, ErrorKind::Value, "metric: unknown metric id ", i);
  return kNames[i];
}

Metric metric_from_name(const std::string& name) {
  std::string all;
  for (int i = 0; i < kNumMetrics; ++i) {
    if (name == kNames[i]) return static_cast<Metric>(i);
    all += (i ? ", " : "") + std::string(kNames[i]);
  }
  throw Error(ErrorKind::Value, "metrics: unknown metric '" + name + "'; expected one of: " + all);
}

const char* input_kind_name(InputKind kind) {
  switch (kind) {
    case InputKind::Probabilities: return "probs";
    case InputKind::LogProbabilities: return "log_probs";
    case InputKind::Logits: return "logits";
  }
  throw Error(ErrorKind::Value, "input: unknown input kind id " + std::to_string(static_cast<int>(kind)));
}

InputKind input_kind_from_name(const std::string& name) {
  for (InputKind k : {InputKind::Probabilities, InputKind::LogProbabilities, InputKind::Logits})
    if (name == input_kind_name(k)) return k;
  throw Error(ErrorKind::Value, "input: expected 'probs', 'log_probs' or 'logits', got '" + name + "'");
}

bool metric_needs_samples(Metric m) {
  metric_name(m);  // Error(Value) for an id outside the enum
  switch (m) {
    case Metric::ExpectedEntropy:
    case Metric::Bald:
    case Metric::VariationRatio:
    case Metric::MeanStd:
    case Metric::BalEntAcq: return true;
    default: return false;
  }
}

double normalization_tolerance(DType dtype) {
  switch (dtype) {
    case DType::Float64: return 1e-6;
    case DType::Float16: return 5e-3;   // 2^-11 rounding of each value (and of log-probabilities: × ln C)
    case DType::BFloat16: return 4e-2;  // 2^-8
    default: return 1e-3;
  }
}

std::vector<std::int64_t> score_shape(const TensorView& x, const ScoreOptions& options) {
  return describe(x, options, true).out_shape;
}

namespace {

/// Points the job at the data of y (layout Ly): pointer, dtype and strides.
void point_at(detail::ScoreJob& job, const TensorView& y, const Layout& Ly) {
  job.x = y.data;
  job.dtype = y.dtype;
  job.grid = Ly.grid;
  job.sample_stride = Ly.sample_axis >= 0 ? y.strides[Ly.sample_axis] : 0;
  job.class_stride = y.strides[Ly.class_axis];
}

/// The job for x and the requested outputs, every argument validated (x's own data and strides).
detail::ScoreJob make_job(const TensorView& x, const Layout& L, const std::vector<MetricOutput>& outputs,
                          const ScoreOptions& options) {
  check(!outputs.empty(), ErrorKind::Value, "metrics: no metric requested");
  detail::ScoreJob job;
  point_at(job, x, L);
  job.K = L.K;
  job.C = L.C;
  job.input_kind = static_cast<int>(options.input);
  check(job.input_kind >= 0 && job.input_kind <= 2, ErrorKind::Value, "input: unknown input kind ", job.input_kind);
  job.tol = normalization_tolerance(x.dtype);
  job.device_index = x.device.index;
  job.stream = options.stream;
  for (const MetricOutput& mo : outputs) {
    const int m = static_cast<int>(mo.metric);
    const char* name = metric_name(mo.metric);
    check(!(job.mask & (1u << m)), ErrorKind::Value, "metrics: '", name, "' is requested twice");
    if (metric_needs_samples(mo.metric)) {
      check(L.sample_axis >= 0, ErrorKind::Value, name,
            ": needs MC / ensemble samples, but the input has no sample axis (pass sample_axis)");
      check(L.K >= 2, ErrorKind::Value, name, ": needs at least 2 samples, but the sample axis (axis ", L.sample_axis,
            ") has K = ", L.K, " (shape ", x.shape_str(), ")");
    }
    const TensorView& o = mo.out;
    check(o.device == x.device, ErrorKind::Value, name, ": output is on ", o.device.str(), " but x is on ",
          x.device.str());
    check(o.dtype == DType::Float32 || o.dtype == DType::Float64, ErrorKind::Type, name,
          ": output dtype must be float32 or float64, got ", dtype_name(o.dtype));
    check(o.sizes() == L.out_shape, ErrorKind::Value, name, ": output has shape ", o.shape_str(), ", expected ",
          TensorView(nullptr, DType::Float32, L.out_shape).shape_str());
    job.mask |= 1u << m;
    job.out[m] = o.data;
    job.out_dtype[m] = o.dtype;
    for (int d = 0; d < o.ndim; ++d) job.out_stride[m][d] = o.strides[d];
  }
  std::vector<NamedView> outs;
  for (const MetricOutput& mo : outputs) outs.push_back({mo.out, std::string(metric_name(mo.metric)) + " output"});
  check_outputs(outs, {{x, "x"}});
  return job;
}

/// Runs the job on x's device; a failing item becomes the error naming it.
void run(const detail::ScoreJob& job, const Device& device, const Layout& L, const ScoreOptions& options) {
  const detail::ScoreFailure f = device.is_cpu() ? detail::score_cpu(job) : detail::score_cuda(job);
  if (f.status == 0) return;
  const std::string where = "item " + item_index_str(L.grid, f.item) + " of x";
  const char* kind = options.input == InputKind::Probabilities      ? "probabilities"
                     : options.input == InputKind::LogProbabilities ? "log-probabilities"
                                                                    : "logits";
  switch (f.status) {
    case detail::kItemNonFinite:
      throw Error(ErrorKind::Value, "x: " + where + " contains NaN or Inf (input=" + kind + ")");
    case detail::kItemNegative:
      throw Error(ErrorKind::Value, "x: " + where + " contains a negative probability");
    case detail::kItemUnnormalised:
      throw Error(ErrorKind::Value, "x: " + where + " has " + kind +
                                        " that do not sum to 1 over the class axis (tolerance " +
                                        detail::concat(job.tol) + "); pass input=\"logits\" for unnormalised scores");
    case detail::kItemAllMasked:
      throw Error(ErrorKind::Value, "x: " + where + " has a sample whose " + kind + " are all -inf" +
                                        (options.input == InputKind::LogProbabilities
                                             ? " (probabilities summing to 0, not 1)"
                                             : ""));
    default: throw Error(ErrorKind::Runtime, "x: " + where + " failed with status " + std::to_string(f.status));
  }
}

}  // namespace

void score(const TensorView& x, const std::vector<MetricOutput>& outputs, const ScoreOptions& options) {
  const Layout L = describe(x, options);
  detail::ScoreJob job = make_job(x, L, outputs, options);
  if (!is_half(x.dtype)) return run(job, x.device, L, options);
  // float16 / bfloat16: widened exactly to a contiguous float32 copy of the same shape (same item
  // indices in the errors) once every argument is checked; the job keeps the half format's tolerance.
  std::vector<std::int64_t> shape(x.shape, x.shape + x.ndim);
  const std::int64_t n = x.numel();
  if (x.device.is_cpu()) {
    // Not value-initialised (zeroing it was a whole extra pass); the widening writes every element.
    const detail::ScratchArray<float> wide = detail::scratch_array<float>(static_cast<std::size_t>(n));
    detail::widen_to_float32_cpu(x, wide.get());
    const TensorView y = TensorView::of(wide.get(), shape);
    point_at(job, y, describe(y, options));
    return run(job, x.device, L, options);
  }
  const int dev = x.device.index;
  std::unique_ptr<float, std::function<void(float*)>> wide(
      detail::cuda_alloc_floats(n, dev, options.stream),
      [dev, &options](float* p) { detail::cuda_free_floats(p, dev, options.stream); });
  detail::widen_to_float32_cuda(x, wide.get(), options.stream);
  const TensorView y(wide.get(), DType::Float32, shape, x.device);
  point_at(job, y, describe(y, options));
  run(job, x.device, L, options);
}

#define LABELWISE_ONE_METRIC(fn, M)                                                    \
  void fn(const TensorView& x, const TensorView& out, const ScoreOptions& options) { \
    score(x, {MetricOutput{Metric::M, out}}, options);                                \
  }
LABELWISE_ONE_METRIC(predictive_entropy, PredictiveEntropy)
LABELWISE_ONE_METRIC(expected_entropy, ExpectedEntropy)
LABELWISE_ONE_METRIC(bald, Bald)
LABELWISE_ONE_METRIC(least_confidence, LeastConfidence)
LABELWISE_ONE_METRIC(margin, Margin)
LABELWISE_ONE_METRIC(ratio, Ratio)
LABELWISE_ONE_METRIC(variation_ratio, VariationRatio)
LABELWISE_ONE_METRIC(max_mean_variation_ratio, MaxMeanVariationRatio)
LABELWISE_ONE_METRIC(mean_std, MeanStd)
LABELWISE_ONE_METRIC(balentacq, BalEntAcq)
#undef LABELWISE_ONE_METRIC

}  // namespace labelwise
