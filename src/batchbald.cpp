// Front door of BatchBALD: check the arguments, validate x (the metrics' input checks, through
// labelwise::score), then either turn x into dense float64 probabilities and conditional entropies for
// the CPU backend or hand x to the CUDA backend (which does the same on the device).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <new>
#include <string>
#include <vector>

#include "batchbald_backend.hpp"
#include "labelwise/acquisition/batchbald.hpp"
#include "labelwise/detail/parallel_for.hpp"

namespace labelwise {

namespace {

int norm_axis(int axis, int ndim, const char* what) {
  check(axis >= -ndim && axis < ndim, ErrorKind::Value, what, ": axis ", axis, " is out of range for an input of rank ",
        ndim);
  return axis < 0 ? axis + ndim : axis;
}

template <typename T>
void densify(const TensorView& x, int item_axis, int sample_axis, int class_axis, InputKind input,
             std::vector<double>& p) {
  const T* base = static_cast<const T*>(x.data);
  const std::int64_t N = x.shape[item_axis];
  const int K = static_cast<int>(x.shape[sample_axis]), C = static_cast<int>(x.shape[class_axis]);
  const std::int64_t sn = x.strides[item_axis], sk = x.strides[sample_axis], sc = x.strides[class_axis];
  detail::parallel_for(N, 64, [&](std::int64_t begin, std::int64_t end, int) {
    for (std::int64_t n = begin; n < end; ++n)
      for (int k = 0; k < K; ++k) {
        const T* row = base + n * sn + k * sk;
        double* out = p.data() + (n * K + k) * C;
        if (input == InputKind::Probabilities) {
          for (int c = 0; c < C; ++c) out[c] = static_cast<double>(row[c * sc]);
        } else if (input == InputKind::LogProbabilities) {
          for (int c = 0; c < C; ++c) out[c] = std::exp(static_cast<double>(row[c * sc]));
        } else {  // logits: softmax in float64 (-inf = masked class; validation rejects all -inf rows)
          double mx = -std::numeric_limits<double>::infinity();
          for (int c = 0; c < C; ++c) mx = std::max(mx, static_cast<double>(row[c * sc]));
          double s = 0.0;
          for (int c = 0; c < C; ++c) s += out[c] = std::exp(static_cast<double>(row[c * sc]) - mx);
          for (int c = 0; c < C; ++c) out[c] /= s;
        }
      }
  });
}

void batchbald_impl(const TensorView& x, std::int64_t b, const TensorView& indices, const TensorView* scores,
                    const BatchBaldOptions& opt) {
  check(x.dtype == DType::Float32 || x.dtype == DType::Float64, ErrorKind::Type,
        "x: expected dtype float32 or float64, got ", dtype_name(x.dtype));
  check(x.ndim == 3, ErrorKind::Value,
        "x: expected rank 3 (items, MC samples and classes, e.g. [N, K, C]), got shape ", x.shape_str());
  const int sa = norm_axis(opt.sample_axis, 3, "sample_axis");
  const int ca = norm_axis(opt.class_axis, 3, "class_axis");
  check(sa != ca, ErrorKind::Value, "sample_axis and class_axis both name axis ", ca, " of x (shape ", x.shape_str(),
        "); for [N, C, K] pass class_axis=1 too");
  const int ia = 3 - sa - ca;
  const std::int64_t N = x.shape[ia], K = x.shape[sa], C = x.shape[ca];
  check(N > 0, ErrorKind::Value, "x: the pool is empty (shape ", x.shape_str(), ")");
  check(K >= 2, ErrorKind::Value, "batchbald: needs at least 2 samples, but the sample axis (axis ", sa, ") has ", K,
        " (shape ", x.shape_str(), ")");
  check(C >= 2, ErrorKind::Value, "x: the class axis (axis ", ca, ") has ", C, C == 1 ? " entry" : " entries",
        "; at least 2 classes are needed (shape ", x.shape_str(), ")");
  check(K <= (1 << 20) && C <= (1 << 20), ErrorKind::Value, "x: sample or class axis longer than 2^20 (shape ",
        x.shape_str(), ")");
  check(N <= std::numeric_limits<std::int64_t>::max() / (K * C), ErrorKind::Value, "x: shape ", x.shape_str(),
        " has more elements than fit in int64");
  check(b >= 0 && b <= N, ErrorKind::Value, "b: expected 0 <= b <= ", N, " (the number of items in x), got b = ", b);
  check(opt.num_samples >= 1 && opt.num_samples <= (std::int64_t(1) << 31), ErrorKind::Value,
        "num_samples: expected 1 <= num_samples <= 2^31, got ", opt.num_samples);
  check(indices.dtype == DType::Int64, ErrorKind::Type, "indices: expected dtype int64, got ",
        dtype_name(indices.dtype));
  check(indices.ndim == 1 && indices.shape[0] == b, ErrorKind::Value, "indices: expected shape [", b, "], got ",
        indices.shape_str());
  check(indices.device == x.device, ErrorKind::Value, "indices: is on ", indices.device.str(), " but x is on ",
        x.device.str());
  if (scores) {
    check(scores->dtype == DType::Float64, ErrorKind::Type, "scores: expected dtype float64, got ",
          dtype_name(scores->dtype));
    check(scores->ndim == 1 && scores->shape[0] == b, ErrorKind::Value, "scores: expected shape [", b, "], got ",
          scores->shape_str());
    check(scores->device == x.device, ErrorKind::Value, "scores: is on ", scores->device.str(), " but x is on ",
          x.device.str());
  }
  std::vector<NamedView> outs{{indices, "indices"}};
  if (scores) outs.push_back({*scores, "scores"});
  check_outputs(outs, {{x, "x"}});

  // The metrics' validation (NaN / Inf, negative or unnormalised probabilities, naming the first bad item).
  ScoreOptions so;
  so.input = opt.input;
  so.sample_axis = sa;
  so.class_axis = ca;
  so.stream = opt.stream;
  detail::BatchBaldRequest req;
  req.b = b;
  req.num_samples = opt.num_samples;
  req.seed = opt.seed;
  req.out_index = static_cast<std::int64_t*>(indices.data);
  req.out_index_stride = indices.strides[0];
  if (scores) {
    req.out_score = static_cast<double*>(scores->data);
    req.out_score_stride = scores->strides[0];
  }
  if (x.device.is_cuda()) {
    detail::BatchBaldCudaJob job;
    job.x = x.data;
    job.dtype = x.dtype;
    job.input = static_cast<int>(opt.input);
    job.n = N;
    job.k = static_cast<int>(K);
    job.c = static_cast<int>(C);
    job.item_stride = x.strides[ia];
    job.sample_stride = x.strides[sa];
    job.class_stride = x.strides[ca];
    job.req = req;
    job.device_index = x.device.index;
    job.stream = opt.stream;
    job.validate = [&](const TensorView& ee) { score(x, {{Metric::ExpectedEntropy, ee}}, so); };
    detail::batchbald_cuda(job);
    return;
  }
  std::vector<double> ee(static_cast<std::size_t>(N));
  score(x, {{Metric::ExpectedEntropy, TensorView::of(ee.data(), {N})}}, so);
  if (b == 0) return;

  std::vector<double> p(static_cast<std::size_t>(N * K * C));
  if (x.dtype == DType::Float32)
    densify<float>(x, ia, sa, ca, opt.input, p);
  else
    densify<double>(x, ia, sa, ca, opt.input, p);
  // Conditional entropies in float64 from the dense probabilities (0 ln 0 = 0).
  std::vector<double> ce(static_cast<std::size_t>(N));
  detail::parallel_for(N, 256, [&](std::int64_t begin, std::int64_t end, int) {
    for (std::int64_t n = begin; n < end; ++n) {
      const double* pn = p.data() + n * K * C;
      double h = 0.0;
      for (std::int64_t j = 0; j < K * C; ++j)
        if (pn[j] > 0.0) h -= pn[j] * std::log(pn[j]);
      ce[n] = h / static_cast<double>(K);
    }
  });

  detail::BatchBaldJob job;
  job.p = p.data();
  job.ce = ce.data();
  job.n = N;
  job.k = static_cast<int>(K);
  job.c = static_cast<int>(C);
  job.req = req;
  detail::batchbald_cpu(job);
}

/// batchbald_impl, with a failed host allocation reported by its sizes: the joint-configuration
/// table grows to about num_samples × K float64 values (num_samples may be up to 2^31), next to the
/// pool's dense probabilities.
void batchbald_checked(const TensorView& x, std::int64_t b, const TensorView& indices, const TensorView* scores,
                       const BatchBaldOptions& options) {
  try {
    batchbald_impl(x, b, indices, scores, options);
  } catch (const std::bad_alloc&) {
    // Allocation starts after the shape checks: x has rank 3 and a valid sample axis here.
    const double k = static_cast<double>(x.shape[((options.sample_axis % 3) + 3) % 3]);
    const double table_gib = static_cast<double>(options.num_samples) * k * 8.0 / 1073741824.0;
    const double pool_gib = static_cast<double>(x.numel()) * 8.0 / 1073741824.0;
    char sizes[160];
    std::snprintf(sizes, sizeof sizes, "num_samples = %lld: up to %.3g GiB) next to the pool's probabilities in "
                  "float64 (%.3g GiB)", static_cast<long long>(options.num_samples), table_gib, pool_gib);
    throw Error(ErrorKind::Runtime, std::string("batchbald: out of host memory. Its table of joint configurations grows "
                                                "to about num_samples x K float64 values (") +
                                        sizes + "; lower num_samples");
  }
}

}  // namespace

void batchbald(const TensorView& x, std::int64_t b, const TensorView& indices, const BatchBaldOptions& options) {
  batchbald_checked(x, b, indices, nullptr, options);
}

void batchbald(const TensorView& x, std::int64_t b, const TensorView& indices, const TensorView& scores,
               const BatchBaldOptions& options) {
  batchbald_checked(x, b, indices, &scores, options);
}

}  // namespace labelwise
