// Front door of top-k / stochastic selection and the shard merge: validate, build the job, dispatch.
#include <cmath>
#include <limits>
#include <string>

#include "labelwise/acquisition/selection.hpp"
#include "labelwise/core/parallel.hpp"
#include "selection_backend.hpp"

namespace labelwise {

namespace {

constexpr const char* kModeNames[] = {"power", "softmax", "softrank"};

/// Flattens a view in row-major order of its logical shape, merging axes that are laid out
/// contiguously relative to each other (a contiguous or 1-D strided view becomes ndim = 1).
detail::FlatGrid flat_grid(const TensorView& v) {
  detail::FlatGrid g;
  g.ndim = 0;
  for (int d = 0; d < v.ndim; ++d) {
    if (v.shape[d] == 1) continue;
    if (g.ndim > 0 && g.stride[g.ndim - 1] == v.strides[d] * v.shape[d]) {
      g.shape[g.ndim - 1] *= v.shape[d];
      g.stride[g.ndim - 1] = v.strides[d];
      continue;
    }
    g.shape[g.ndim] = v.shape[d];
    g.stride[g.ndim] = v.strides[d];
    ++g.ndim;
  }
  if (g.ndim == 0) {  // a single item
    g.ndim = 1;
    g.shape[0] = 1;
    g.stride[0] = 1;
  }
  return g;
}


bool is_float(DType t) { return t == DType::Float32 || t == DType::Float64; }

/// scores: float32/float64, rank >= 1, non-empty. Returns N.
std::int64_t check_pool(const TensorView& s, const char* what) {
  check(is_float(s.dtype), ErrorKind::Type, what, ": expected dtype float32 or float64, got ", dtype_name(s.dtype));
  check(s.ndim >= 1, ErrorKind::Value, what, ": expected rank >= 1 (a pool [N] or a map [N, *spatial]), got shape ",
        s.shape_str());
  const std::int64_t n = s.checked_numel(what);
  check(n > 0, ErrorKind::Value, what, ": the pool is empty (shape ", s.shape_str(), ")");
  check(s.data != nullptr, ErrorKind::Value, what, ": data pointer is null");
  return n;
}

void check_b(std::int64_t b, std::int64_t n, const char* pool) {
  check(b >= 0 && b <= n, ErrorKind::Value, "b: expected 0 <= b <= ", n, " (the number of items in ", pool,
        "), got b = ", b);
}

/// A 1-D output of b elements on `dev`.
void check_out(const TensorView& o, std::int64_t b, const Device& dev, const char* what, const char* pool,
               bool int64_only, bool float64_only) {
  if (int64_only)
    check(o.dtype == DType::Int64, ErrorKind::Type, what, ": expected dtype int64, got ", dtype_name(o.dtype));
  else if (float64_only)
    check(o.dtype == DType::Float64, ErrorKind::Type, what, ": expected dtype float64 (keys must stay exact for ",
          "merging), got ", dtype_name(o.dtype));
  else
    check(is_float(o.dtype), ErrorKind::Type, what, ": expected dtype float32 or float64, got ", dtype_name(o.dtype));
  check(o.ndim == 1 && o.shape[0] == b, ErrorKind::Value, what, ": expected shape [", b, "], got ", o.shape_str());
  check(o.device == dev, ErrorKind::Value, what, ": is on ", o.device.str(), " but ", pool, " is on ", dev.str());
}

std::string item_str(const TensorView& v, std::int64_t i) {
  std::string s = "item [" + std::to_string(i) + "]";
  if (v.ndim > 1) {
    std::string at;
    std::int64_t r = i;
    for (int d = v.ndim - 1; d >= 0; --d) {
      at = std::to_string(r % v.shape[d]) + (at.empty() ? "" : ", ") + at;
      r /= v.shape[d];
    }
    s += " (at [" + at + "] of shape " + v.shape_str() + ")";
  }
  return s;
}

void check_offset(std::int64_t offset, std::int64_t n) {
  check(offset >= 0, ErrorKind::Value, "index_offset: expected >= 0, got ", offset);
  check(offset <= std::numeric_limits<std::int64_t>::max() - n, ErrorKind::Value, "index_offset: ", offset, " + ", n,
        " items overflows int64");
}

void set_index_out(detail::SelectJob& job, const TensorView& o) {
  job.out_index = static_cast<std::int64_t*>(o.data);
  job.out_index_stride = o.ndim ? o.strides[0] : 0;
}

void set_value_out(detail::SelectJob& job, const TensorView* v) {
  if (!v) return;
  job.out_value = v->data;
  job.out_value_dtype = v->dtype;
  job.out_value_stride = v->ndim ? v->strides[0] : 0;
}

/// The backend of `dev`; `what` names the input in the CPU-only build's error for a CUDA tensor.
detail::SelectFailure dispatch(const detail::SelectJob& job, const Device& dev, const char* what) {
  if (dev.is_cpu()) return detail::select_cpu(job);
  check(built_with_cuda(), ErrorKind::Runtime, what, ": is a CUDA tensor, but labelwise was built without CUDA");
  return detail::select_cuda(job);
}

[[noreturn]] void throw_failure(const detail::SelectFailure& f, const TensorView& scores, const char* what,
                                const char* mode) {
  switch (f.status) {
    case detail::kSelectNaN:
      throw Error(ErrorKind::Value, std::string(what) + ": " + item_str(scores, f.item) + " is NaN");
    case detail::kSelectNegative:
      throw Error(ErrorKind::Value, std::string(what) + ": " + item_str(scores, f.item) + " is negative; mode=\"" +
                                        mode + "\" needs scores >= 0 (weights s^beta)");
    case detail::kSelectOverflow:
      throw Error(ErrorKind::Value, std::string(what) + ": " + item_str(scores, f.item) +
                                        (std::string(mode) == "power" ? "'s logarithm" : "") +
                                        " times 1 / temperature overflows a double (mode=\"" + mode +
                                        "\"); rescale the scores or raise the temperature");
    case detail::kSelectBadRank:
      throw Error(ErrorKind::Value, "ranks: " + item_str(scores, f.item) + " is below 1 (ranks are 1-based)");
    case detail::kSelectNegativeIndex:
      throw Error(ErrorKind::Value, "indices: entry [" + std::to_string(f.item) + "] is negative");
    case detail::kSelectDuplicate:
      throw Error(ErrorKind::Value, "indices: global index " + std::to_string(f.item) +
                                        " appears more than once among the winners (was a shard merged twice?)");
    default:
      throw Error(ErrorKind::Runtime, std::string(what) + ": " + item_str(scores, f.item) + " failed with status " +
                                          std::to_string(f.status));
  }
}

void top_k_impl(const TensorView& scores, std::int64_t b, const TensorView& indices, const TensorView* values,
                const SelectOptions& options) {
  const std::int64_t n = check_pool(scores, "scores");
  check_b(b, n, "scores");
  check_offset(options.index_offset, n);
  check_out(indices, b, scores.device, "indices", "scores", true, false);
  if (values) check_out(*values, b, scores.device, "values", "scores", false, false);
  std::vector<NamedView> outs{{indices, "indices"}};
  if (values) outs.push_back({*values, "values"});
  check_outputs(outs, {{scores, "scores"}});
  detail::SelectJob job;
  job.source = detail::SelectSource::Scores;
  job.values = scores.data;
  job.dtype = scores.dtype;
  job.grid = flat_grid(scores);
  job.n = n;
  job.index_offset = options.index_offset;
  job.b = b;
  set_index_out(job, indices);
  set_value_out(job, values);
  job.device_index = scores.device.index;
  job.stream = options.stream;
  const detail::SelectFailure f = dispatch(job, scores.device, "scores");
  if (f.status != 0) throw_failure(f, scores, "scores", "");
}

detail::SelectJob stochastic_job(const TensorView& scores, std::int64_t n, const StochasticOptions& opt) {
  const int mode = static_cast<int>(opt.mode);
  check(mode >= 0 && mode <= 2, ErrorKind::Value, "mode: unknown stochastic mode id ", mode);
  check(std::isfinite(opt.temperature) && opt.temperature > 0.0 && std::isfinite(1.0 / opt.temperature),
        ErrorKind::Value, "temperature: expected a finite value > 0 (with 1/temperature finite), got ",
        opt.temperature);
  check_offset(opt.index_offset, n);
  detail::SelectJob job;
  job.source = detail::SelectSource::Stochastic;
  job.values = scores.data;
  job.dtype = scores.dtype;
  job.grid = flat_grid(scores);
  job.n = n;
  job.mode = mode;
  job.beta = 1.0 / opt.temperature;
  job.seed = opt.seed;
  job.index_offset = opt.index_offset;
  const bool has_ranks = is_given(opt.ranks);
  if (has_ranks) {
    const TensorView& r = opt.ranks;
    check(opt.mode == StochasticMode::SoftRank, ErrorKind::Value, "ranks: only used by mode=\"softrank\", but mode=\"",
          kModeNames[mode], "\"");
    check(r.dtype == DType::Int64, ErrorKind::Type, "ranks: expected dtype int64, got ", dtype_name(r.dtype));
    check(r.sizes() == scores.sizes(), ErrorKind::Value, "ranks: expected the scores' shape ", scores.shape_str(),
          ", got ", r.shape_str());
    check(r.device == scores.device, ErrorKind::Value, "ranks: is on ", r.device.str(), " but scores is on ",
          scores.device.str());
    check(r.data != nullptr, ErrorKind::Value, "ranks: data pointer is null");
    job.ranks = static_cast<const std::int64_t*>(r.data);
    job.ranks_grid = flat_grid(r);
  } else {
    check(opt.mode != StochasticMode::SoftRank || opt.index_offset == 0, ErrorKind::Value,
          "ranks: mode=\"softrank\" on a shard (index_offset = ", opt.index_offset,
          ") needs the items' global ranks (soft-rank weights depend on the whole pool)");
  }
  job.device_index = scores.device.index;
  job.stream = opt.stream;
  return job;
}

void stochastic_impl(const TensorView& scores, std::int64_t b, const TensorView& indices, const TensorView* keys,
                     const StochasticOptions& options) {
  const std::int64_t n = check_pool(scores, "scores");
  check_b(b, n, "scores");
  detail::SelectJob job = stochastic_job(scores, n, options);
  check_out(indices, b, scores.device, "indices", "scores", true, false);
  if (keys) check_out(*keys, b, scores.device, "keys", "scores", false, true);
  std::vector<NamedView> outs{{indices, "indices"}};
  if (keys) outs.push_back({*keys, "keys"});
  check_outputs(outs, {{scores, "scores"}, {options.ranks, "ranks"}});
  job.b = b;
  set_index_out(job, indices);
  set_value_out(job, keys);
  const detail::SelectFailure f = dispatch(job, scores.device, "scores");
  if (f.status != 0) throw_failure(f, scores, "scores", stochastic_mode_name(options.mode));
}

void merge_impl(const TensorView& values, const TensorView& indices, std::int64_t b, const TensorView& out_indices,
                const TensorView* out_values, void* stream) {
  check(is_float(values.dtype), ErrorKind::Type, "values: expected dtype float32 or float64, got ",
        dtype_name(values.dtype));
  check(values.ndim == 1, ErrorKind::Value, "values: expected rank 1 (the concatenated shard values [M]), got shape ",
        values.shape_str());
  const std::int64_t m = values.shape[0];
  check(m > 0 || b == 0, ErrorKind::Value, "values: the pool is empty (shape ", values.shape_str(),
        "); only b = 0 can be merged from no items");
  check(m == 0 || values.data != nullptr, ErrorKind::Value, "values: data pointer is null");
  check(indices.dtype == DType::Int64, ErrorKind::Type, "indices: expected dtype int64, got ",
        dtype_name(indices.dtype));
  check(indices.ndim == 1 && indices.shape[0] == m, ErrorKind::Value, "indices: expected shape [", m,
        "] like values, got ", indices.shape_str());
  check(indices.device == values.device, ErrorKind::Value, "indices: is on ", indices.device.str(),
        " but values is on ", values.device.str());
  check(m == 0 || indices.data != nullptr, ErrorKind::Value, "indices: data pointer is null");
  check_b(b, m, "values");
  check_out(out_indices, b, values.device, "out_indices", "values", true, false);
  if (out_values) check_out(*out_values, b, values.device, "out_values", "values", false, false);
  std::vector<NamedView> outs{{out_indices, "out_indices"}};
  if (out_values) outs.push_back({*out_values, "out_values"});
  check_outputs(outs, {{values, "values"}, {indices, "indices"}});
  if (m == 0) return;  // b = 0 from shards that were each asked for none: nothing to merge
  detail::SelectJob job;
  job.source = detail::SelectSource::Pairs;
  job.values = values.data;
  job.dtype = values.dtype;
  job.grid = flat_grid(values);
  job.n = m;
  job.ids = static_cast<const std::int64_t*>(indices.data);
  job.ids_stride = indices.strides[0];
  job.b = b;
  set_index_out(job, out_indices);
  set_value_out(job, out_values);
  job.device_index = values.device.index;
  job.stream = stream;
  const detail::SelectFailure f = dispatch(job, values.device, "values");
  if (f.status == detail::kSelectNaN)
    throw Error(ErrorKind::Value, "values: entry [" + std::to_string(f.item) + "] is NaN");
  if (f.status != 0) throw_failure(f, values, "values", "");
}

}  // namespace

const char* stochastic_mode_name(StochasticMode mode) {
  const int i = static_cast<int>(mode);
  check(i >= 0 && i <= 2, ErrorKind::Value, "mode: unknown stochastic mode id ", i);
  return kModeNames[i];
}

StochasticMode stochastic_mode_from_name(const std::string& name) {
  for (int i = 0; i < 3; ++i)
    if (name == kModeNames[i]) return static_cast<StochasticMode>(i);
  throw Error(ErrorKind::Value, "mode: expected 'power', 'softmax' or 'softrank', got '" + name + "'");
}

void top_k(const TensorView& scores, std::int64_t b, const TensorView& indices, const SelectOptions& options) {
  top_k_impl(scores, b, indices, nullptr, options);
}

void top_k(const TensorView& scores, std::int64_t b, const TensorView& indices, const TensorView& values,
           const SelectOptions& options) {
  top_k_impl(scores, b, indices, &values, options);
}

void stochastic(const TensorView& scores, std::int64_t b, const TensorView& indices,
                const StochasticOptions& options) {
  stochastic_impl(scores, b, indices, nullptr, options);
}

void stochastic(const TensorView& scores, std::int64_t b, const TensorView& indices, const TensorView& keys,
                const StochasticOptions& options) {
  stochastic_impl(scores, b, indices, &keys, options);
}

void stochastic_keys(const TensorView& scores, const TensorView& keys, const StochasticOptions& options) {
  const std::int64_t n = check_pool(scores, "scores");
  detail::SelectJob job = stochastic_job(scores, n, options);
  check(keys.dtype == DType::Float64, ErrorKind::Type, "keys: expected dtype float64, got ", dtype_name(keys.dtype));
  check(keys.sizes() == scores.sizes(), ErrorKind::Value, "keys: expected the scores' shape ", scores.shape_str(),
        ", got ", keys.shape_str());
  check(keys.device == scores.device, ErrorKind::Value, "keys: is on ", keys.device.str(), " but scores is on ",
        scores.device.str());
  check_outputs({{keys, "keys"}}, {{scores, "scores"}, {options.ranks, "ranks"}});
  job.b = -1;
  job.out_keys = static_cast<double*>(keys.data);
  job.keys_grid = flat_grid(keys);
  const detail::SelectFailure f = dispatch(job, scores.device, "scores");
  if (f.status != 0) throw_failure(f, scores, "scores", stochastic_mode_name(options.mode));
}

void merge_top_k(const TensorView& values, const TensorView& indices, std::int64_t b, const TensorView& out_indices,
                 void* stream) {
  merge_impl(values, indices, b, out_indices, nullptr, stream);
}

void merge_top_k(const TensorView& values, const TensorView& indices, std::int64_t b, const TensorView& out_indices,
                 const TensorView& out_values, void* stream) {
  merge_impl(values, indices, b, out_indices, &out_values, stream);
}

}  // namespace labelwise
