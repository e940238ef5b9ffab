// Front door of core-set, BADGE, weighted k-means, average linkage and cluster-margin: validate
// shapes, dtypes and devices, build the job, dispatch.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "diversity_backend.hpp"
#include "labelwise/acquisition/diversity.hpp"
#include "labelwise/core/parallel.hpp"
#include "labelwise/detail/diversity_impl.hpp"

namespace labelwise {

namespace {

bool is_float(DType t) { return t == DType::Float32 || t == DType::Float64; }

void check_not_cuda(const TensorView& v, const char* fn, const char* what) {
  check(!v.device.is_cuda(), ErrorKind::Type, fn, ": ", what, " is on ", v.device.str(), "; ", fn,
        " is not implemented on CUDA yet (pass CPU arrays)");
}

/// A float [rows, cols] matrix on the CPU; returns its description.
detail::Matrix check_matrix(const TensorView& v, const char* what, const char* shape_doc) {
  check(is_float(v.dtype), ErrorKind::Type, what, ": expected dtype float32 or float64, got ", dtype_name(v.dtype));
  check(v.ndim == 2, ErrorKind::Value, what, ": expected rank 2 ", shape_doc, ", got shape ", v.shape_str());
  check(v.shape[0] >= 1, ErrorKind::Value, what, ": the pool is empty (shape ", v.shape_str(), ")");
  check(v.shape[1] >= 1, ErrorKind::Value, what, ": expected at least one column, got shape ", v.shape_str());
  check(v.shape[0] <= std::numeric_limits<std::int64_t>::max() / v.shape[1], ErrorKind::Value, what, ": shape ",
        v.shape_str(), " has more elements than fit in int64");
  check(v.data != nullptr, ErrorKind::Value, what, ": data pointer is null");
  detail::Matrix m;
  m.data = v.data;
  m.dtype = v.dtype;
  m.rows = v.shape[0];
  m.cols = v.shape[1];
  m.row_stride = v.strides[0];
  m.col_stride = v.strides[1];
  return m;
}

void check_out(const TensorView& o, std::int64_t b, const Device& dev, const char* what, DType want,
               const char* pool) {
  check(o.dtype == want, ErrorKind::Type, what, ": expected dtype ", dtype_name(want), ", got ", dtype_name(o.dtype));
  check(o.ndim == 1 && o.shape[0] == b, ErrorKind::Value, what, ": expected shape [", b, "], got ", o.shape_str());
  check(o.device == dev, ErrorKind::Value, what, ": is on ", o.device.str(), " but ", pool, " is on ", dev.str());
}

/// CUDA input to a CPU-only build: the error that names the argument.
void check_cuda_built(const TensorView& v, const char* what) {
  check(!v.device.is_cuda() || built_with_cuda(), ErrorKind::Runtime, what,
        ": is a CUDA tensor, but labelwise was built without CUDA");
}

/// A 1-D view's elements, readable on the host through `at(i)` (element i's bytes): a host view in
/// place, a CUDA view through a host copy of the span of memory it covers.
struct HostSpan {
  std::vector<char> storage;
  const char* base = nullptr;
  std::int64_t stride_bytes = 0;
  const void* at(std::int64_t i) const { return base + i * stride_bytes; }
};
HostSpan host_span(const TensorView& v, const char* what, void* stream) {
  check_cuda_built(v, what);
  HostSpan h;
  const std::int64_t m = v.shape[0], s = v.strides[0], esize = dtype_size(v.dtype);
  h.base = static_cast<const char*>(v.data);
  h.stride_bytes = s * esize;
  if (v.device.is_cuda() && m > 0) {
    const std::int64_t lo = std::min<std::int64_t>(0, (m - 1) * s), hi = std::max<std::int64_t>(0, (m - 1) * s);
    h.storage.resize(static_cast<std::size_t>((hi - lo + 1) * esize));
    detail::copy_to_host(h.storage.data(), h.base + lo * esize, h.storage.size(), v.device.index, stream);
    h.base = h.storage.data() - lo * esize;
  }
  return h;
}

/// Writes host values into the int64 [b] output `out` (host or CUDA memory, any stride).
void write_indices(const std::vector<std::int64_t>& values, const TensorView& out, void* stream) {
  check_cuda_built(out, "indices");
  std::int64_t* dst = static_cast<std::int64_t*>(out.data);
  const std::int64_t stride = out.strides[0], count = static_cast<std::int64_t>(values.size());
  if (!out.device.is_cuda()) {
    for (std::int64_t t = 0; t < count; ++t) dst[t * stride] = values[t];
  } else if (stride == 1) {
    detail::copy_to_device(dst, values.data(), values.size() * sizeof(std::int64_t), out.device.index, stream);
  } else {
    for (std::int64_t t = 0; t < count; ++t)
      detail::copy_to_device(dst + t * stride, &values[t], sizeof(std::int64_t), out.device.index, stream);
  }
}

/// The labelled set as a byte mask over n items, from a bool / uint8 mask [n] or int64 indices [M]
/// (host or CUDA memory: a CUDA array is read through a host copy of the span it covers). A set that
/// covers every item is an error, whatever b (core-set and cluster-margin alike).
std::vector<std::uint8_t> labelled_mask(const TensorView& labeled, bool has_labeled, std::int64_t n, const char* pool,
                                        void* stream) {
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(n), 0);
  if (!has_labeled) return mask;
  check(labeled.ndim == 1, ErrorKind::Value,
        "labeled: expected a boolean mask [N] or an int64 index array [M], got shape ", labeled.shape_str());
  const std::int64_t m = labeled.shape[0];
  check(m == 0 || labeled.data != nullptr, ErrorKind::Value, "labeled: data pointer is null");
  check(labeled.dtype == DType::Bool || labeled.dtype == DType::UInt8 || labeled.dtype == DType::Int64,
        ErrorKind::Type, "labeled: expected dtype bool / uint8 (a mask) or int64 (indices), got ",
        dtype_name(labeled.dtype));
  const HostSpan host = host_span(labeled, "labeled", stream);
  if (labeled.dtype == DType::Bool || labeled.dtype == DType::UInt8) {
    check(m == n, ErrorKind::Value, "labeled: a mask must have one entry per row of ", pool, ": expected shape [", n,
          "], got ", labeled.shape_str());
    for (std::int64_t i = 0; i < n; ++i) mask[i] = *static_cast<const std::uint8_t*>(host.at(i)) != 0;
  } else {
    for (std::int64_t j = 0; j < m; ++j) {
      const std::int64_t i = *static_cast<const std::int64_t*>(host.at(j));
      check(i >= 0 && i < n, ErrorKind::Value, "labeled: index [", j, "] = ", i, " is outside [0, ", n, ") (the rows of ",
            pool, ")");
      mask[i] = 1;
    }
  }
  check(std::find(mask.begin(), mask.end(), std::uint8_t{0}) != mask.end(), ErrorKind::Value, "labeled: every one of the ",
        n, " items is labelled; nothing to select");
  return mask;
}

std::string row_str(std::int64_t i) { return "row [" + std::to_string(i) + "]"; }

/// Throws the error of a failed row check of `arg` (features / embeddings) in `fn`; returns on kDivOk.
void throw_row_failure(const detail::DiversityFailure& f, const char* arg, const char* fn) {
  const std::string row = std::string(arg) + ": " + row_str(f.item);
  switch (f.status) {
    case detail::kDivOk: return;
    case detail::kDivNonFinite: throw Error(ErrorKind::Value, row + " contains NaN or Inf");
    case detail::kDivZeroRow:
      throw Error(ErrorKind::Value, row + " is all zeros; metric='cosine' needs rows of nonzero norm");
    case detail::kDivNormOverflow:
      throw Error(ErrorKind::Value, row + " is too large: its squared norm exceeds 2.2e307, more than float64 "
                                          "distances between such rows can hold (scale the " + arg + " down)");
    case detail::kDivNormRange:
      throw Error(ErrorKind::Value, row + " has a squared norm outside the normal float64 range [2.2e-308, "
                                          "1.8e308], so it cannot be normalised for metric='cosine' (rescale the " +
                                          arg + "; cosine distances do not depend on the scale of a row)");
    default:
      throw Error(ErrorKind::Runtime, std::string(fn) + ": failed with status " + std::to_string(f.status) + " at " +
                                          row_str(f.item));
  }
}

}  // namespace

std::int64_t unlabeled_rows(const TensorView& labeled, std::int64_t n, const TensorView& rows, void* stream) {
  check(n >= 1, ErrorKind::Value, "n: expected a pool of at least 1 item, got ", n);
  check_cuda_built(labeled, "labeled");
  check(rows.device.is_cpu(), ErrorKind::Value, "rows: expected a host array, got one on ", rows.device.str());
  check_out(rows, n, rows.device, "rows", DType::Int64, "the pool");
  check(rows.data != nullptr, ErrorKind::Value, "rows: data pointer is null");
  const bool has_labeled = is_given(labeled);
  check_outputs({{rows, "rows"}}, has_labeled ? std::vector<NamedView>{{labeled, "labeled"}} : std::vector<NamedView>{});
  const std::vector<std::uint8_t> mask = labelled_mask(labeled, has_labeled, n, "the pool", stream);
  auto* out = static_cast<std::int64_t*>(rows.data);
  std::int64_t count = 0;
  for (std::int64_t i = 0; i < n; ++i)
    if (!mask[i]) out[count++ * rows.strides[0]] = i;
  return count;
}

double badge_uniform(std::uint64_t seed, std::uint64_t step) { return detail::badge_uniform_of(seed, step); }

void coreset(const TensorView& features, const TensorView& labeled, std::int64_t b, const TensorView& indices,
             const TensorView& radii, const CoresetOptions& options) {
  const bool has_labeled = is_given(labeled);
  if (has_labeled)
    check(labeled.device.is_cpu() || labeled.device == features.device, ErrorKind::Value, "labeled: is on ",
          labeled.device.str(), " but features is on ", features.device.str());
  const int metric = static_cast<int>(options.metric);
  check(metric == 0 || metric == 1, ErrorKind::Value, "metric: unknown core-set metric id ", metric);
  detail::CoresetJob job;
  job.x = check_matrix(features, "features", "[N, D]");
  job.metric = metric;
  job.prune = options.prune;
  const std::int64_t n = job.x.rows;

  const std::vector<std::uint8_t> mask = labelled_mask(labeled, has_labeled, n, "features", options.stream);
  std::int64_t n_labeled = 0;
  for (std::uint8_t v : mask) n_labeled += v;
  const std::int64_t n_free = n - n_labeled;
  check(b >= 0 && b <= n_free, ErrorKind::Value, "b: expected 0 <= b <= ", n_free,
        " (the number of unlabelled items), got b = ", b);
  check_out(indices, b, features.device, "indices", DType::Int64, "features");
  check_out(radii, b, features.device, "radii", DType::Float64, "features");
  check_outputs({{indices, "indices"}, {radii, "radii"}}, {{features, "features"}, {labeled, "labeled"}});

  job.labeled = mask.data();
  job.n_labeled = n_labeled;
  job.b = b;
  job.out_index = static_cast<std::int64_t*>(indices.data);
  job.out_index_stride = indices.strides[0];
  job.out_radius = static_cast<double*>(radii.data);
  job.out_radius_stride = radii.strides[0];
  if (features.device.is_cuda()) {
    job.device_index = features.device.index;
    job.stream = options.stream;
  }
  throw_row_failure(features.device.is_cuda() ? detail::coreset_cuda(job) : detail::coreset_cpu(job), "features",
                    "coreset");
}

void average_linkage_clusters(const TensorView& embeddings, const TensorView& clusters,
                              const AverageLinkageOptions& options) {
  check_not_cuda(embeddings, "average_linkage_clusters", "embeddings");
  check_not_cuda(clusters, "average_linkage_clusters", "clusters");
  detail::LinkageJob job;
  job.x = check_matrix(embeddings, "embeddings", "[N, D]");
  const std::int64_t n = job.x.rows;
  check((options.distance > 0.0) != (options.num_clusters > 0), ErrorKind::Value,
        "average_linkage_clusters: set exactly one of distance (> 0) and num_clusters (> 0); got distance = ",
        options.distance, ", num_clusters = ", options.num_clusters);
  check(!(options.distance < 0.0) && !std::isnan(options.distance) && !std::isinf(options.distance), ErrorKind::Value,
        "distance: expected a finite value > 0, got ", options.distance);
  check(options.num_clusters >= 0, ErrorKind::Value, "num_clusters: expected an integer >= 1, got ",
        options.num_clusters);  // above N: at most N clusters, every row its own (as SciPy's maxclust)
  check(clusters.dtype == DType::Int64, ErrorKind::Type, "clusters: expected dtype int64, got ",
        dtype_name(clusters.dtype));
  check(clusters.ndim == 1 && clusters.shape[0] == n, ErrorKind::Value, "clusters: expected shape [", n,
        "] (one per row of embeddings ", embeddings.shape_str(), "), got ", clusters.shape_str());
  check_outputs({{clusters, "clusters"}}, {{embeddings, "embeddings"}});
  throw_row_failure(detail::first_bad_euclidean_row(job.x, job.shift), "embeddings", "average_linkage_clusters");
  job.distance = options.distance;
  job.num_clusters = options.num_clusters;
  job.out = static_cast<std::int64_t*>(clusters.data);
  job.out_stride = clusters.strides[0];
  detail::average_linkage_cpu(job);
}

void weighted_kmeans(const TensorView& features, const TensorView& scores, std::int64_t b, const TensorView& indices,
                     const WeightedKmeansOptions& options) {
  check_cuda_built(features, "features");
  detail::WeightedKmeansJob job;
  job.x = check_matrix(features, "features", "[N, D]");
  const std::int64_t n = job.x.rows;
  check(is_float(scores.dtype), ErrorKind::Type, "scores: expected dtype float32 or float64, got ",
        dtype_name(scores.dtype));
  check(scores.ndim == 1 && scores.shape[0] == n, ErrorKind::Value, "scores: expected shape [", n,
        "] (one per row of features ", features.shape_str(), "), got ", scores.shape_str());
  check(scores.device == features.device, ErrorKind::Value, "scores: is on ", scores.device.str(), " but features is on ",
        features.device.str());
  check(scores.data != nullptr, ErrorKind::Value, "scores: data pointer is null");
  check(options.prefilter >= 1, ErrorKind::Value, "prefilter: expected an integer >= 1, got ", options.prefilter);
  check(options.max_iter >= 0, ErrorKind::Value, "max_iter: expected an integer >= 0, got ", options.max_iter);
  check(b >= 0 && b <= n, ErrorKind::Value, "b: expected 0 <= b <= ", n, " (the number of items), got b = ", b);
  check_out(indices, b, features.device, "indices", DType::Int64, "features");
  check_outputs({{indices, "indices"}}, {{features, "features"}, {scores, "scores"}});
  // The scores (N values) are read on the host, from a copy when they live on a GPU.
  const HostSpan host = host_span(scores, "scores", options.stream);
  std::vector<double>& w = job.weights;
  w.resize(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    const double v = scores.dtype == DType::Float32 ? static_cast<double>(*static_cast<const float*>(host.at(i)))
                                                    : *static_cast<const double*>(host.at(i));
    check(std::isfinite(v), ErrorKind::Value, "scores: [", i, "] is ", v, "; expected finite scores");
    check(v >= 0.0, ErrorKind::Value, "scores: [", i, "] = ", v,
          " is negative; the scores weight the clustering and must be >= 0 (shift or exponentiate them)");
    w[i] = v;
  }
  job.b = b;
  job.prefilter = options.prefilter;
  job.max_iter = options.max_iter;
  job.out_index = static_cast<std::int64_t*>(indices.data);
  job.out_index_stride = indices.strides[0];
  if (features.device.is_cuda()) {
    job.device_index = features.device.index;
    job.stream = options.stream;
  }
  throw_row_failure(features.device.is_cuda() ? detail::weighted_kmeans_cuda(job) : detail::weighted_kmeans_cpu(job),
                    "features", "weighted_kmeans");
}

void badge(const TensorView& x, const TensorView& embeddings, std::int64_t b, const TensorView& indices,
           const BadgeOptions& options) {
  check(embeddings.device == x.device, ErrorKind::Value, "embeddings: is on ", embeddings.device.str(),
        " but x is on ", x.device.str());
  const int kind = static_cast<int>(options.input);
  check(kind >= 0 && kind <= 2, ErrorKind::Value, "input: unknown input kind id ", kind);
  detail::BadgeJob job;
  job.x = check_matrix(x, "x", "[N, C] (one prediction per item, classes on axis 1)");
  job.h = check_matrix(embeddings, "embeddings", "[N, D]");
  check(job.x.cols >= 2, ErrorKind::Value, "x: expected at least 2 classes on axis 1, got shape ", x.shape_str());
  check(job.h.rows == job.x.rows, ErrorKind::Value, "embeddings: expected ", job.x.rows,
        " rows (one per item of x ", x.shape_str(), "), got shape ", embeddings.shape_str());
  check(b >= 0 && b <= job.x.rows, ErrorKind::Value, "b: expected 0 <= b <= ", job.x.rows,
        " (the number of items), got b = ", b);
  check_out(indices, b, x.device, "indices", DType::Int64, "x");
  check_outputs({{indices, "indices"}}, {{x, "x"}, {embeddings, "embeddings"}});
  job.kind = kind;
  job.tolerance = normalization_tolerance(x.dtype);
  job.seed = options.seed;
  job.b = b;
  job.out_index = static_cast<std::int64_t*>(indices.data);
  job.out_index_stride = indices.strides[0];
  if (x.device.is_cuda()) {
    job.device_index = x.device.index;
    job.stream = options.stream;
  }
  const detail::DiversityFailure f = x.device.is_cuda() ? detail::badge_cuda(job) : detail::badge_cpu(job);
  const char* what_x = kind == 0 ? "probabilities" : kind == 1 ? "log-probabilities" : "logits";
  switch (f.status) {
    case detail::kDivOk: return;
    case detail::kDivNonFinite:
      if (f.item < 0)
        throw Error(ErrorKind::Value, "embeddings: " + row_str(-1 - f.item) + " contains NaN or Inf");
      throw Error(ErrorKind::Value, std::string("x: ") + row_str(f.item) + " contains NaN" +
                                        (kind == 2 ? " or +Inf" : kind == 1 ? " or +Inf" : " or Inf") + " (" + what_x +
                                        ")");
    case detail::kDivNormOverflow:
      throw Error(ErrorKind::Value, "embeddings: " + row_str(-1 - f.item) +
                                        " is too large: its squared norm exceeds 2.2e307, more than float64 "
                                        "distances between such rows can hold (scale the embeddings down)");
    case detail::kDivNegative:
      throw Error(ErrorKind::Value, "x: " + row_str(f.item) + " has a negative probability");
    case detail::kDivUnnormalised:
      throw Error(ErrorKind::Value, std::string("x: ") + row_str(f.item) + " does not sum to 1 within " +
                                        detail::concat(job.tolerance) + " (" + what_x +
                                        "; pass input='logits' for raw scores)");
    case detail::kDivAllNegInf:
      throw Error(ErrorKind::Value, "x: " + row_str(f.item) + " has every logit equal to -inf");
    default:
      throw Error(ErrorKind::Runtime, "badge: failed with status " + std::to_string(f.status));
  }
}

}  // namespace labelwise

namespace labelwise {

void cluster_margin(const TensorView& margins, const TensorView& clusters, const TensorView& labeled, std::int64_t b,
                    const TensorView& indices, const ClusterMarginOptions& options) {
  const bool has_labeled = is_given(labeled);
  check(is_float(margins.dtype), ErrorKind::Type, "margins: expected dtype float32 or float64, got ",
        dtype_name(margins.dtype));
  check(margins.ndim == 1, ErrorKind::Value, "margins: expected rank 1 [N], got shape ", margins.shape_str());
  const std::int64_t n = margins.shape[0];
  check(n >= 1, ErrorKind::Value, "margins: the pool is empty (shape ", margins.shape_str(), ")");
  check(margins.data != nullptr, ErrorKind::Value, "margins: data pointer is null");
  check(clusters.dtype == DType::Int64, ErrorKind::Type, "clusters: expected dtype int64, got ",
        dtype_name(clusters.dtype));
  check(clusters.ndim == 1 && clusters.shape[0] == n, ErrorKind::Value, "clusters: expected shape [", n,
        "] (one id per item of margins), got ", clusters.shape_str());
  check(clusters.data != nullptr, ErrorKind::Value, "clusters: data pointer is null");
  check(clusters.device == margins.device, ErrorKind::Value, "clusters: is on ", clusters.device.str(),
        " but margins is on ", margins.device.str());
  check(indices.device == margins.device, ErrorKind::Value, "indices: is on ", indices.device.str(),
        " but margins is on ", margins.device.str());
  if (has_labeled)  // on the host or with the margins, as for coreset
    check(labeled.device.is_cpu() || labeled.device == margins.device, ErrorKind::Value, "labeled: is on ",
          labeled.device.str(), " but margins is on ", margins.device.str());
  // Everything here is O(N) scalars: CUDA arrays are read through host copies.
  const std::vector<std::uint8_t> mask = labelled_mask(labeled, has_labeled, n, "margins", options.stream);
  const HostSpan margin_span = host_span(margins, "margins", options.stream);
  std::vector<double> m(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    m[i] = margins.dtype == DType::Float32 ? static_cast<double>(*static_cast<const float*>(margin_span.at(i)))
                                           : *static_cast<const double*>(margin_span.at(i));
    check(!std::isnan(m[i]), ErrorKind::Value, "margins: NaN at item [", i, "]");
  }
  std::vector<std::int64_t> free;
  for (std::int64_t i = 0; i < n; ++i)
    if (!mask[i]) free.push_back(i);
  const std::int64_t n_free = static_cast<std::int64_t>(free.size());
  check(b >= 0 && b <= n_free, ErrorKind::Value, "b: expected 0 <= b <= ", n_free,
        " (the number of unlabelled items), got b = ", b);
  check(options.candidates >= 0, ErrorKind::Value, "candidates: expected an integer >= 0 (0: 10·b), got ",
        options.candidates);
  const std::int64_t cand = options.candidates == 0
                                ? (b > n_free / 10 ? n_free : 10 * b)
                                : std::min(options.candidates, n_free);
  check(cand >= b, ErrorKind::Value, "candidates: ", options.candidates, " is fewer than b = ", b);
  check_out(indices, b, margins.device, "indices", DType::Int64, "margins");
  check_outputs({{indices, "indices"}}, {{margins, "margins"}, {clusters, "clusters"}, {labeled, "labeled"}});
  if (b == 0) return;

  // The `cand` most uncertain unlabelled items (margin descending, then lower index).
  const auto by_margin = [&](std::int64_t i, std::int64_t j) { return m[i] > m[j] || (m[i] == m[j] && i < j); };
  if (cand < n_free) std::nth_element(free.begin(), free.begin() + cand, free.end(), by_margin);
  free.resize(static_cast<std::size_t>(cand));
  // Group by cluster; within a group, the order of the Philox keys.
  const HostSpan cluster_span = host_span(clusters, "clusters", options.stream);
  struct Member {
    std::int64_t cluster;
    std::uint64_t key;
    std::int64_t item;
  };
  std::vector<Member> members;
  members.reserve(free.size());
  for (std::int64_t i : free)
    members.push_back({*static_cast<const std::int64_t*>(cluster_span.at(i)),
                       rng::bits64(options.seed, rng::kStreamClusterMargin, i), i});
  std::sort(members.begin(), members.end(), [](const Member& a, const Member& c) {
    if (a.cluster != c.cluster) return a.cluster < c.cluster;
    if (a.key != c.key) return a.key < c.key;
    return a.item < c.item;
  });
  struct Group {
    std::size_t begin, end, next;
  };
  std::vector<Group> groups;
  for (std::size_t j = 0; j < members.size();) {
    std::size_t e = j;
    while (e < members.size() && members[e].cluster == members[j].cluster) ++e;
    groups.push_back({j, e, j});
    j = e;
  }
  // Smallest group first; ties: the lower cluster id (already in that order: stable sort).
  std::stable_sort(groups.begin(), groups.end(),
                   [](const Group& a, const Group& c) { return a.end - a.begin < c.end - c.begin; });
  std::vector<std::int64_t> picks;
  picks.reserve(static_cast<std::size_t>(b));
  while (static_cast<std::int64_t>(picks.size()) < b) {
    for (Group& g : groups) {
      if (g.next == g.end || static_cast<std::int64_t>(picks.size()) == b) continue;
      picks.push_back(members[g.next++].item);
    }
  }
  write_indices(picks, indices, options.stream);
}

}  // namespace labelwise
