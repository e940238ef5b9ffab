// labelwise — segmentation heads in LibTorch (component labelwise::torch): MC dropout, ensemble,
// evidential. The C++ twins of labelwise.torch's MCDropoutHead / EnsembleHead / EvidentialHead
// (docs/segmentation.md): same parameter names, same forward semantics, same MC samples.
//
// Header-only, so that LibTorch stays in the translation units of the programs that use it.
//
// Shape contract
//   features : [B, F, H, W] (dims = 2) or [B, F, D, H, W] (dims = 3), F = in_channels, float (float16 /
//              bfloat16 are widened to float32 for sample / score), CPU or CUDA; the head's parameters
//              are used on the features' device.
//   forward  : logits [B, C, *spatial] (train like any module: cross-entropy, or evidential_loss for the
//              EvidentialHead).
//   sample   : [B, K, C, *spatial] float32, the K MC-dropout samples (K = M members for the ensemble),
//              labelwise::head_sample: masks from Philox-4x32-10, never torch's RNG, so the same on every
//              run, device and thread count, in train and eval mode, and equal to the Python heads'.
//   score    : {metric: [B, *spatial]} float32, labelwise::head_score (one fused pass, the samples are
//              never materialised); `mean` (if not null) receives the mean probabilities [B, C, *spatial].
//              EvidentialHead: closed form from the Dirichlet, in float64, returned as float32.
//
// Parameters (state-dict keys, as in Python):
//   MCDropoutHead, EvidentialHead : conv.weight [C, F, 1, 1(, 1)], conv.bias [C]
//   EnsembleHead                  : members.{m}.weight, members.{m}.bias, m = 0 .. M-1
//
// Weights on disk (save_head_weights / load_head_weights, save_tensors / load_tensors): a torch.save
// zip archive of a plain {name: tensor} dict — what Python writes with
// torch.save(dict(head.state_dict()), path) (labelwise.torch.save_head_weights) and reads with
// torch.load(path) (weights_only=True works: no type tags, no OrderedDict metadata).
//
// Errors: labelwise::Error naming the argument (features of the wrong rank / channel count, K < 1 or
// K >= 2^16 (every head, the EvidentialHead too, which ignores K), K · num_classes > 2^24, K < 2 for
// metrics that need samples, a metric requested twice, an ensemble's K other than M, p outside
// [0, 1 - 2^-32], index_offset + B > 2^32, dims other than 2 / 3, in_channels < 1, num_classes < 2,
// members < 1, a weights file with a missing / unexpected key or a shape mismatch, a file that
// cannot be read or written). The fused score / sample also need in_channels < 2^28,
// num_classes <= 4096 and members < 65536 (checked when they run). A call that fails leaves the
// caller's `mean` / `probs` tensors as they were.
#pragma once

#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/export.h>
#include <torch/csrc/jit/serialization/pickle.h>
#include <torch/csrc/jit/serialization/pickler.h>
#include <torch/torch.h>


#include <cmath>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <ostream>
#include <string>
#include <typeinfo>
#include <utility>
#include <vector>

#include "labelwise/core/error.hpp"
#include "labelwise/interop/torch.hpp"
#include "labelwise/segmentation/head_score.hpp"
#include "labelwise/uncertainty/metrics.hpp"

namespace labelwise {

// ---- weights files -------------------------------------------------------------------------------

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

/// Writes {name: tensor} as a torch.save zip archive of a plain dict (CPU, contiguous copies), readable
/// by Python's torch.load(path) (also with weights_only=True) and by load_tensors(). Errors: Value for
/// an undefined tensor or a name given twice; Runtime when the file cannot be written.
inline void save_tensors(const std::string& path, const NamedTensors& tensors) {
  c10::Dict<std::string, at::Tensor> dict;
  for (const auto& [name, t] : tensors) {
    check(t.defined(), ErrorKind::Value, "save_tensors: tensor '", name, "' is undefined");
    check(t.device().is_cpu() || t.device().is_cuda(), ErrorKind::Value, "save_tensors: tensor '", name,
          "' is on device ", t.device().str(), " (its values cannot be read)");
    check(!dict.contains(name), ErrorKind::Value, "save_tensors: duplicate name '", name, "'");
    dict.insert(name, t.detach().to(at::kCPU).contiguous().clone());
  }
  // torch::pickle_save tags typed dicts with torch.jit._pickle.restore_type_tag, which Python's
  // torch.load(weights_only=True) refuses; an untagged pickle of the same dict is a plain Python dict.
  std::vector<char> pickle;
  torch::jit::Pickler pickler([&](const char* b, size_t n) { pickle.insert(pickle.end(), b, b + n); },
                              /*tensor_table=*/nullptr, /*type_renamer=*/nullptr, /*memoized_class_types=*/nullptr,
                              /*get_tensor_id=*/nullptr, /*tag_aggregates=*/false);
  pickler.protocol();
  pickler.pushIValue(c10::IValue(dict));
  pickler.stop();
  // The archive is built in memory (a writer that cannot fail: a failing one made LibTorch's writer
  // throw again from its destructor, std::terminate), then written, flushed and closed, each checked
  // (a full disk or a file-size limit used to leave a truncated file without an error).
  std::string archive;
  {
    caffe2::serialize::PyTorchStreamWriter writer([&](const void* data, size_t n) -> size_t {
      archive.append(static_cast<const char*>(data), n);
      return n;
    });
    torch::jit::writeArchiveAndTensors("data", pickle.data(), pickle.size(), pickler.tensorData(), writer);
    writer.writeEndOfFile();
  }
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  check(bool(file), ErrorKind::Runtime, "save_tensors: cannot open '", path, "' for writing");
  file.write(archive.data(), static_cast<std::streamsize>(archive.size()));
  file.flush();
  file.close();
  check(!file.fail(), ErrorKind::Runtime, "save_tensors: writing '", path, "' failed (", archive.size(),
        " bytes: a full disk or a file-size limit?); the file may be incomplete");
}

/// Reads a {name: tensor} dict written by save_tensors() or by Python's torch.save of a plain dict
/// (in the file's key order). Python: save dict(head.state_dict()), not the OrderedDict itself (its
/// _metadata attribute is a pickle construct LibTorch 1.13 cannot read), or use labelwise.torch.save_head_weights.
/// Errors: Value when the file cannot be opened or does not hold such a dict.
inline NamedTensors load_tensors(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  check(bool(file), ErrorKind::Value, "load_tensors: cannot open '", path, "'");
  std::vector<char> bytes;
  try {  // a folder opens, then fails on the first read with std::ios_base::failure
    bytes.assign(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
  } catch (const std::exception& e) {
    throw Error(ErrorKind::Value, "load_tensors: cannot read '" + path + "' (" + e.what() + ")");
  }
  check(!file.bad(), ErrorKind::Value, "load_tensors: cannot read '", path, "'");
  c10::IValue value;
  try {
    value = torch::pickle_load(bytes);
  } catch (const std::exception& e) {
    const auto* ce = dynamic_cast<const c10::Error*>(&e);
    throw Error(ErrorKind::Value,
                "load_tensors: '" + path +
                    "' is not a torch.save archive of a plain {name: tensor} dict that LibTorch can read "
                    "(from Python save dict(module.state_dict()) or use labelwise.torch.save_head_weights): " +
                    (ce ? ce->what_without_backtrace() : e.what()));
  }
  check(value.isGenericDict(), ErrorKind::Value, "load_tensors: '", path, "' holds a ", value.tagKind(),
        ", expected a {name: tensor} dict");
  NamedTensors out;
  for (const auto& kv : value.toGenericDict()) {
    check(kv.key().isString(), ErrorKind::Value, "load_tensors: '", path, "': a key is a ", kv.key().tagKind(),
          ", expected str");
    check(kv.value().isTensor(), ErrorKind::Value, "load_tensors: '", path, "': '", kv.key().toStringRef(),
          "' is a ", kv.value().tagKind(), ", expected a tensor");
    out.emplace_back(kv.key().toStringRef(), kv.value().toTensor());
  }
  return out;
}

/// The module's parameters and buffers ("state dict"), named as Python names them.
inline NamedTensors head_state(const torch::nn::Module& module) {
  NamedTensors out;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) out.emplace_back(p.key(), p.value());
  for (const auto& b : module.named_buffers(/*recurse=*/true)) out.emplace_back(b.key(), b.value());
  return out;
}

/// Saves the module's parameters and buffers (see save_tensors for the format).
inline void save_head_weights(const torch::nn::Module& module, const std::string& path) {
  save_tensors(path, head_state(module));
}

/// Copies named tensors into the module's parameters and buffers, strictly: every key must be present,
/// no key may be left over, and shapes must match (Error(Value) naming the key and both shapes).
/// Values are converted to each parameter's device and dtype, floating point to floating point; a
/// floating-point value for an integer tensor, or the reverse, and a sparse or a non-CPU / CUDA value
/// are an Error(Type). Nothing is copied unless every key passes. `what` names the source in the messages (e.g. the file).
inline void load_head_state(torch::nn::Module& module, const NamedTensors& state, const std::string& what) {
  std::map<std::string, at::Tensor> given;
  for (const auto& [k, v] : state) {
    check(!given.count(k), ErrorKind::Value, what, ": key '", k, "' given twice");
    check(v.defined(), ErrorKind::Value, what, ": '", k, "' is an undefined tensor");
    given[k] = v;
  }
  torch::NoGradGuard no_grad;
  std::vector<std::pair<at::Tensor, at::Tensor>> copies;
  for (const auto& [name, target] : head_state(module)) {
    const auto it = given.find(name);
    check(it != given.end(), ErrorKind::Value, what, ": missing key '", name, "' (expected shape ",
          c10::str(target.sizes()), ")");
    check(it->second.sizes() == target.sizes(), ErrorKind::Value, what, ": size mismatch for '", name,
          "': expected shape ", c10::str(target.sizes()), ", got ", c10::str(it->second.sizes()));
    check(it->second.is_floating_point() == target.is_floating_point(), ErrorKind::Type, what, ": '", name,
          "' has dtype ", c10::toString(it->second.scalar_type()), ", expected ", c10::toString(target.scalar_type()));
    // copy_ would throw on these halfway through the copies (a sparse or meta source): refused here
    check(it->second.layout() == at::kStrided, ErrorKind::Type, what, ": '", name,
          "' is not a dense (strided) tensor (layout ", it->second.layout(), "; call .to_dense() first)");
    check(it->second.is_cpu() || it->second.is_cuda(), ErrorKind::Type, what, ": '", name, "' is on device ",
          it->second.device(), "; expected a CPU or CUDA tensor");
    copies.emplace_back(target, it->second);
    given.erase(it);
  }
  if (!given.empty()) {
    std::string keys;
    for (const auto& kv : given) keys += (keys.empty() ? "'" : ", '") + kv.first + "'";
    throw Error(ErrorKind::Value, what + ": unexpected key(s) " + keys);
  }
  for (auto& [dst, src] : copies) dst.copy_(src);  // all checked first: nothing half-loaded
}

/// Loads weights written by save_head_weights() or Python's labelwise.torch.save_head_weights, strictly.
inline void load_head_weights(torch::nn::Module& module, const std::string& path) {
  load_head_state(module, load_tensors(path), "load_head_weights('" + path + "')");
}

// ---- the heads -----------------------------------------------------------------------------------

namespace heads_detail {

/// The coordinates of the first true entry of a boolean tensor (empty when there is none), for the
/// error messages that name an entry.
inline std::vector<std::int64_t> first_true(const at::Tensor& mask) {
  const at::Tensor all = at::nonzero(mask);
  if (all.size(0) == 0) return {};
  const at::Tensor first = all[0].cpu();
  std::vector<std::int64_t> pos(static_cast<std::size_t>(first.size(0)));
  for (std::int64_t d = 0; d < first.size(0); ++d) pos[d] = first[d].item<std::int64_t>();
  return pos;
}

/// "[a, b, c]".
inline std::string index_str(const std::vector<std::int64_t>& pos) {
  std::string s = "[";
  for (std::size_t d = 0; d < pos.size(); ++d) s += (d ? ", " : "") + std::to_string(pos[d]);
  return s + "]";
}

/// Error(Value) naming the first metric that `metrics` holds twice.
inline void check_distinct_metrics(const std::vector<Metric>& metrics) {
  for (std::size_t i = 0; i < metrics.size(); ++i)
    for (std::size_t j = 0; j < i; ++j)
      check(metrics[i] != metrics[j], ErrorKind::Value, "metrics: ", metric_name(metrics[i]), " requested twice");
}

inline std::int64_t check_arg(std::int64_t v, const char* name, std::int64_t lo, std::int64_t hi = INT64_MAX) {
  check(v >= lo && v <= hi, ErrorKind::Value, name, ": expected an integer ",
        hi == INT64_MAX ? ">= " + std::to_string(lo) : "in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]",
        ", got ", v);
  return v;
}

/// The fused sample / score kernel's limits, checked when a sampled head is built (not at its first
/// score, after training): F < 2^28 features, C <= 4096 classes, fewer than 65536 members.
inline void check_kernel_limits(std::int64_t in_channels, std::int64_t num_classes, std::int64_t members) {
  check(in_channels < (std::int64_t(1) << 28), ErrorKind::Value,
        "in_channels: at most 2^28 - 1 for the fused sample / score kernel, got ", in_channels);
  check(num_classes <= 4096, ErrorKind::Value, "num_classes: at most 4096 for the fused sample / score kernel, got ",
        num_classes);
  check(members < 65536, ErrorKind::Value, "members: at most 65535 for the fused sample / score kernel, got ", members);
}

inline double check_p(double p) {
  check(p >= 0.0 && p <= kMaxDropout, ErrorKind::Value,
        "p: the dropout rate must be in [0, 1) and at most 1 - 2^-32 (masks compare 32-bit random words), got ", p);
  return p;
}

inline std::vector<std::int64_t> conv_kernel(int dims) { return std::vector<std::int64_t>(dims, 1); }

/// A 1x1(x1) convolution module of in -> out channels in `dims` dimensions (the caller registers it).
inline std::shared_ptr<torch::nn::Module> make_conv(std::int64_t in, std::int64_t out, int dims) {
  if (dims == 2) return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 1)).ptr();
  return torch::nn::Conv3d(torch::nn::Conv3dOptions(in, out, 1)).ptr();
}

inline at::Tensor conv(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int dims) {
  return dims == 2 ? at::conv2d(x, w, b) : at::conv3d(x, w, b);
}

inline at::Tensor param(torch::nn::Module& m, const char* name) { return m.named_parameters(false)[name]; }

/// features as float32 / float64 (float16 / bfloat16 widened), checked.
inline at::Tensor sample_input(const at::Tensor& features) {
  const at::Tensor x = features.resolve_neg();  // a lazily negated view: its real values
  if (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble) return x;
  return x.to(at::kFloat);
}

/// A weight or bias as the fused kernels take it: detached, on the features' device, float32 / float64
/// kept and anything else (float16, bfloat16) widened to float64, exactly (as the Python heads do).
inline at::Tensor kernel_param(const at::Tensor& t, const at::Device& device) {
  at::Tensor r = t.detach().to(device);
  if (r.scalar_type() == at::kFloat || r.scalar_type() == at::kDouble) return r;
  return r.to(at::kDouble);
}

}  // namespace heads_detail

/// Shared parts of the three heads.
class HeadBase : public torch::nn::Module {
 public:
  HeadBase(std::int64_t in_channels, std::int64_t num_classes, int dims)
      : in_channels_(heads_detail::check_arg(in_channels, "in_channels", 1, INT32_MAX)),  // as in Python
        num_classes_(heads_detail::check_arg(num_classes, "num_classes", 2, INT32_MAX)),
        dims_(static_cast<int>(heads_detail::check_arg(dims, "dims", 2, 3))) {}

  std::int64_t in_channels() const { return in_channels_; }
  std::int64_t num_classes() const { return num_classes_; }
  int dims() const { return dims_; }

  /// Throws labelwise::Error naming `name` unless x is a float [B, F, *spatial] of this head.
  void check_features(const at::Tensor& x, const char* name = "features") const {
    check(x.defined(), ErrorKind::Value, name, ": undefined tensor");
    check(x.is_floating_point(), ErrorKind::Type, name, ": expected a floating-point tensor, got ",
          c10::toString(x.scalar_type()));
    check(x.layout() == at::kStrided, ErrorKind::Type, name, ": expected a dense (strided) tensor, got layout ",
          x.layout(), " (call .to_dense() first)");
    const char* want = dims_ == 2 ? "[B, F, H, W]" : "[B, F, D, H, W]";
    check(x.dim() == dims_ + 2, ErrorKind::Value, name, ": expected ", want, " (rank ", dims_ + 2, ") for dims=", dims_,
          ", got rank ", x.dim(), " with shape ", c10::str(x.sizes()));
    check(x.size(1) == in_channels_, ErrorKind::Value, name, ": expected ", in_channels_,
          " channels (in_channels) on axis 1, got ", x.size(1), " in shape ", c10::str(x.sizes()));
    check(x.numel() > 0, ErrorKind::Value, name, ": empty feature map, shape ", c10::str(x.sizes()));
    // before any output is allocated (as in Python): the fused kernel's counters index voxels in 32 bits
    std::int64_t voxels = 1;
    for (std::int64_t d = 2; d < x.dim(); ++d) voxels *= x.size(d);  // <= numel, no overflow
    check(voxels <= 0xFFFFFFFFll, ErrorKind::Value, name, ": at most 2^32 - 1 voxels per item, got ", voxels);
  }

  /// A deep copy: a head of the same type and configuration whose parameters and buffers are copies of
  /// these (moved to `device` when given), in the same training mode, as torch::nn::Cloneable modules
  /// give. So nets that hold a head can be cloned (Sequential::clone, a Cloneable parent,
  /// torch::nn::parallel::data_parallel). Draws the fresh head's initial weights from torch's global
  /// generator before overwriting them, as Cloneable's reset() does.
  std::shared_ptr<torch::nn::Module> clone(const c10::optional<torch::Device>& device = c10::nullopt) const override {
    std::shared_ptr<HeadBase> copy = fresh();
    copy->copy_state_from(*this, device);
    return copy;
  }

 protected:
  /// A head of this type and configuration, with newly initialised parameters.
  virtual std::shared_ptr<HeadBase> fresh() const = 0;

  std::vector<std::int64_t> spatial(const at::Tensor& x) const {
    return std::vector<std::int64_t>(x.sizes().begin() + 2, x.sizes().end());
  }

  /// Every parameter finite, else an Error naming it and its first bad entry in its own coordinates
  /// (e.g. "conv.weight[1, 1, 0, 0]"), before any kernel sees the weights; one device sync when all
  /// are finite.
  void check_parameters() const {
    std::vector<at::Tensor> finite;
    for (const auto& item : named_parameters()) finite.push_back(at::isfinite(item.value().detach()).all());
    if (finite.empty() || at::stack(finite).all().item<bool>()) return;
    for (const auto& item : named_parameters()) {
      const std::vector<std::int64_t> pos = heads_detail::first_true(~at::isfinite(item.value().detach()));
      if (!pos.empty())
        throw Error(ErrorKind::Value, item.key() + heads_detail::index_str(pos) +
                                          " is NaN or Inf: the head's parameters must be finite");
    }
  }

  /// The fused kernels' options; CUDA input runs on torch's current stream on its device.
  static HeadScoreOptions kernel_options(const at::Tensor& x, std::int64_t K, double p, std::uint64_t seed,
                                         std::uint64_t index_offset) {
    HeadScoreOptions opt;
    opt.samples = K;
    opt.dropout = p;
    opt.seed = seed;
    opt.index_offset = index_offset;
    opt.stream = torch_interop::current_stream(x);
    return opt;
  }

  /// head_score / head_sample on weight [M, C, F], bias [M, C].
  std::map<Metric, at::Tensor> fused_score(const at::Tensor& features, const at::Tensor& weight, const at::Tensor& bias,
                                           std::int64_t K, double p, const std::vector<Metric>& metrics,
                                           std::uint64_t seed, at::Tensor* mean, std::uint64_t index_offset) const {
    check_features(features);
    check(!metrics.empty(), ErrorKind::Value, "metrics: expected at least one metric");
    heads_detail::check_distinct_metrics(metrics);
    check_samples_per_voxel(K, "K", "K");
    check_parameters();
    const at::Tensor x = heads_detail::sample_input(features);
    const at::Tensor w = heads_detail::kernel_param(weight, x.device());
    const at::Tensor b = heads_detail::kernel_param(bias, x.device());
    std::vector<std::int64_t> shape{x.size(0)};
    for (auto s : spatial(x)) shape.push_back(s);
    const auto fopt = at::TensorOptions().dtype(at::kFloat).device(x.device());
    std::map<Metric, at::Tensor> results;
    std::vector<MetricOutput> outs;
    for (Metric m : metrics) {
      at::Tensor o = at::empty(shape, fopt);
      results.emplace(m, o);
      outs.push_back({m, torch_interop::view(o)});
    }
    // the caller's `mean` is assigned only after the kernel succeeded (a failed call leaves it as it was)
    at::Tensor mean_out;
    TensorView mean_view;
    if (mean != nullptr) {
      std::vector<std::int64_t> mshape{x.size(0), num_classes_};
      for (auto s : spatial(x)) mshape.push_back(s);
      mean_out = at::empty(mshape, fopt);
      mean_view = torch_interop::view(mean_out);
    }
    head_score(torch_interop::view(x), torch_interop::view(w), torch_interop::view(b), outs,
               mean != nullptr ? &mean_view : nullptr, kernel_options(x, K, p, seed, index_offset));
    if (mean != nullptr) *mean = mean_out;
    return results;
  }

  /// The fused kernels keep K · C probabilities per voxel: at most 2^24, checked before any output
  /// [B, K, C, *spatial] is allocated. `name` / `symbol`: how the caller names K ("K" / "K", or an
  /// ensemble's "members" / "M"). K itself is in [1, 2^16) (the callers check it).
  void check_samples_per_voxel(std::int64_t K, const char* name, const char* symbol) const {
    check(K * num_classes_ <= (std::int64_t(1) << 24), ErrorKind::Value, name, ": ", symbol, " · C = ",
          K * num_classes_, " probabilities per voxel is more than the fused kernels support (2^24); C = ",
          num_classes_);
  }

  at::Tensor fused_sample(const at::Tensor& features, const at::Tensor& weight, const at::Tensor& bias,
                          std::int64_t K, double p, std::uint64_t seed, std::uint64_t index_offset) const {
    check_features(features);
    check_samples_per_voxel(K, "K", "K");
    check_parameters();
    const at::Tensor x = heads_detail::sample_input(features);
    const at::Tensor w = heads_detail::kernel_param(weight, x.device());
    const at::Tensor b = heads_detail::kernel_param(bias, x.device());
    std::vector<std::int64_t> shape{x.size(0), K, num_classes_};
    for (auto s : spatial(x)) shape.push_back(s);
    at::Tensor out = at::empty(shape, at::TensorOptions().dtype(at::kFloat).device(x.device()));
    head_sample(torch_interop::view(x), torch_interop::view(w), torch_interop::view(b), torch_interop::view(out),
                kernel_options(x, K, p, seed, index_offset));
    return out;
  }

  std::int64_t in_channels_, num_classes_;
  int dims_;

 private:
  // A Cloneable parent clones a child into the child its own reset() registered, through this.
  void clone_(torch::nn::Module& other, const c10::optional<torch::Device>& device) override {
    const auto* src = dynamic_cast<const HeadBase*>(&other);
    check(src != nullptr && typeid(*src) == typeid(*this), ErrorKind::Type,
          "clone: the parent's reset() registered another kind of module in place of this head");
    copy_state_from(*src, device);
  }

  void copy_state_from(const HeadBase& src, const c10::optional<torch::Device>& device) {
    torch::NoGradGuard no_grad;
    NamedTensors to = head_state(*this);
    const NamedTensors from = head_state(src);
    check(to.size() == from.size(), ErrorKind::Value, "clone: ", from.size(), " tensors to copy into ", to.size());
    for (std::size_t i = 0; i < to.size(); ++i) {
      const at::Tensor& t = from[i].second;
      check(to[i].first == from[i].first && to[i].second.sizes() == t.sizes(), ErrorKind::Value, "clone: '",
            from[i].first, "' ", c10::str(t.sizes()), " has no twin in the copy");
      to[i].second.set_data(device && t.device() != *device ? t.to(*device) : t.clone());
    }
    train(src.is_training());
  }
};

/// Dropout (rate p, element-wise) + 1x1(x1) convolution. Parameters conv.weight, conv.bias.
/// forward: train mode one stochastic pass with torch's dropout (scaled by 1/(1-p)); eval mode no dropout.
class MCDropoutHeadImpl : public HeadBase {
 public:
  MCDropoutHeadImpl(std::int64_t in_channels, std::int64_t num_classes, double p = 0.5, int dims = 2)
      : HeadBase(in_channels, num_classes, dims), p_(heads_detail::check_p(p)) {
    heads_detail::check_kernel_limits(in_channels_, num_classes_, 1);
    conv_ = register_module("conv", heads_detail::make_conv(in_channels_, num_classes_, dims_));
  }

  double p() const { return p_; }
  at::Tensor weight() { return heads_detail::param(*conv_, "weight"); }
  at::Tensor bias() { return heads_detail::param(*conv_, "bias"); }

  at::Tensor forward(const at::Tensor& features) {
    check_features(features);
    return heads_detail::conv(at::dropout(features, p_, is_training()), weight(), bias(), dims_);
  }

  /// The K MC-dropout samples' probabilities [B, K, C, *spatial] (float32) that score() reduces.
  at::Tensor sample(const at::Tensor& features, std::int64_t K = 20, std::uint64_t seed = 0,
                    std::uint64_t index_offset = 0) {
    heads_detail::check_arg(K, "K", 1, (1 << 16) - 1);
    return fused_sample(features, flat_weight(), bias().unsqueeze(0), K, p_, seed, index_offset);
  }

  /// Per-voxel maps {metric: [B, *spatial]} (float32) of K MC-dropout samples (1 <= K <= 65535; K >= 2
  /// for metrics that need samples), one fused pass. The masks are a pure function of (seed, voxel,
  /// channel, sample, index_offset + batch item) (docs/segmentation.md): the same on CPU and CUDA.
  /// mean (optional): receives the mean probabilities [B, C, *spatial] (float32).
  std::map<Metric, at::Tensor> score(const at::Tensor& features, std::int64_t K = 20,
                                     const std::vector<Metric>& metrics = {Metric::Bald, Metric::BalEntAcq},
                                     std::uint64_t seed = 0, at::Tensor* mean = nullptr,
                                     std::uint64_t index_offset = 0) {
    heads_detail::check_arg(K, "K", 1, (1 << 16) - 1);
    if (K < 2)
      for (Metric m : metrics)
        check(!metric_needs_samples(m), ErrorKind::Value, "K: the metric ", metric_name(m),
              " needs K >= 2 samples, got K=", K);
    return fused_score(features, flat_weight(), bias().unsqueeze(0), K, p_, metrics, seed, mean, index_offset);
  }

  std::shared_ptr<HeadBase> fresh() const override {
    return std::make_shared<MCDropoutHeadImpl>(in_channels_, num_classes_, p_, dims_);
  }

  void pretty_print(std::ostream& os) const override {
    os << "labelwise::MCDropoutHead(in_channels=" << in_channels_ << ", num_classes=" << num_classes_
       << ", dims=" << dims_ << ", p=" << p_ << ")";
  }

 private:
  at::Tensor flat_weight() { return weight().reshape({1, num_classes_, in_channels_}); }
  double p_;
  std::shared_ptr<torch::nn::Module> conv_;
};
TORCH_MODULE(MCDropoutHead);

/// M independent 1x1(x1) convolutions; their softmax outputs are the samples (K = M).
/// Parameters members.{m}.weight, members.{m}.bias. forward: train mode one member drawn uniformly with
/// torch's RNG; eval mode log(mean_m softmax(z_m)). forward_members: [B, M, C, *spatial].
class EnsembleHeadImpl : public HeadBase {
 public:
  EnsembleHeadImpl(std::int64_t in_channels, std::int64_t num_classes, std::int64_t members = 5, int dims = 2)
      : HeadBase(in_channels, num_classes, dims), num_members_(heads_detail::check_arg(members, "members", 1)) {
    heads_detail::check_kernel_limits(in_channels_, num_classes_, num_members_);
    check_samples_per_voxel(num_members_, "members", "M");  // M · C <= 2^24, checked before training
    members_ = register_module("members", torch::nn::ModuleList());
    for (std::int64_t m = 0; m < num_members_; ++m) members_->push_back(heads_detail::make_conv(in_channels_, num_classes_, dims_));
  }

  std::int64_t num_members() const { return num_members_; }
  /// m itself, or Error(Value) naming it when outside [0, num_members()).
  std::int64_t member_index(std::int64_t m) const {
    check(m >= 0 && m < num_members_, ErrorKind::Value, "m: member index ", m, " outside [0, ", num_members_, ")");
    return m;
  }
  at::Tensor weight(std::int64_t m) { return heads_detail::param(*members_->ptr(member_index(m)), "weight"); }
  at::Tensor bias(std::int64_t m) { return heads_detail::param(*members_->ptr(member_index(m)), "bias"); }

  /// The M members' logits [B, M, C, *spatial] for features [B, F, *spatial] (dtype and device as forward()'s).
  at::Tensor forward_members(const at::Tensor& features) {
    check_features(features);
    std::vector<at::Tensor> z;
    for (std::int64_t m = 0; m < num_members_; ++m) z.push_back(heads_detail::conv(features, weight(m), bias(m), dims_));
    return at::stack(z, 1);
  }

  at::Tensor forward(const at::Tensor& features) {
    check_features(features);
    if (is_training()) {
      const std::int64_t m = at::randint(num_members_, at::IntArrayRef{}, at::TensorOptions(at::kLong)).item<std::int64_t>();
      return heads_detail::conv(features, weight(m), bias(m), dims_);
    }
    return at::logsumexp(at::log_softmax(forward_members(features), 2), 1) - std::log(double(num_members_));
  }

  /// The M members' probabilities [B, M, C, *spatial] (float32). K: nullopt or M; seed: unused.
  at::Tensor sample(const at::Tensor& features, std::optional<std::int64_t> K = std::nullopt, std::uint64_t seed = 0,
                    std::uint64_t index_offset = 0) {
    const std::int64_t k = resolve_K(K);
    return fused_sample(features, stacked_weight(), stacked_bias(), k, 0.0, seed, index_offset);
  }

  /// Per-voxel maps {metric: [B, *spatial]} (float32) over the M members' probabilities, one fused
  /// pass; mean (optional): the members' mean probabilities [B, C, *spatial] (float32). K: nullopt or
  /// M (Error(Value) otherwise); metrics that need samples need M >= 2; seed and index_offset unused
  /// (the members are deterministic).
  std::map<Metric, at::Tensor> score(const at::Tensor& features, std::optional<std::int64_t> K = std::nullopt,
                                     const std::vector<Metric>& metrics = {Metric::Bald, Metric::BalEntAcq},
                                     std::uint64_t seed = 0, at::Tensor* mean = nullptr,
                                     std::uint64_t index_offset = 0) {
    const std::int64_t k = resolve_K(K);
    if (k < 2)
      for (Metric m : metrics)
        check(!metric_needs_samples(m), ErrorKind::Value, "K: the metric ", metric_name(m),
              " needs K >= 2 samples (members), got K=", k);
    return fused_score(features, stacked_weight(), stacked_bias(), k, 0.0, metrics, seed, mean, index_offset);
  }

  std::shared_ptr<HeadBase> fresh() const override {
    return std::make_shared<EnsembleHeadImpl>(in_channels_, num_classes_, num_members_, dims_);
  }

  void pretty_print(std::ostream& os) const override {
    os << "labelwise::EnsembleHead(in_channels=" << in_channels_ << ", num_classes=" << num_classes_
       << ", dims=" << dims_ << ", members=" << num_members_ << ")";
  }

 private:
  std::int64_t resolve_K(std::optional<std::int64_t> K) const {
    if (K)
      check(*K == num_members_, ErrorKind::Value, "K: an EnsembleHead has exactly ", num_members_,
            " samples (its members); got K=", *K, " (pass std::nullopt)");
    return num_members_;  // an ensemble's K is its member count; M · C <= 2^24 was checked when it was built
  }
  at::Tensor stacked_weight() {
    std::vector<at::Tensor> w;
    for (std::int64_t m = 0; m < num_members_; ++m) w.push_back(weight(m).detach().reshape({num_classes_, in_channels_}));
    return at::stack(w, 0);
  }
  at::Tensor stacked_bias() {
    std::vector<at::Tensor> b;
    for (std::int64_t m = 0; m < num_members_; ++m) b.push_back(bias(m).detach());
    return at::stack(b, 0);
  }
  std::int64_t num_members_;
  torch::nn::ModuleList members_{nullptr};
};
TORCH_MODULE(EnsembleHead);

/// Closed-form Dirichlet uncertainty of an EvidentialHead (float32).
/// EvidentialHead::uncertainty(): closed forms of Dir(alpha), S = Σ_c alpha_c; maps [B, *spatial].
struct EvidentialUncertainty {
  at::Tensor probs;               ///< alpha / S, [B, C, *spatial]
  at::Tensor vacuity;             ///< C / S, [B, *spatial]
  at::Tensor predictive_entropy;  ///< H[alpha / S], [B, *spatial]
  at::Tensor expected_entropy;    ///< psi(S + 1) - sum_c (alpha_c / S) psi(alpha_c + 1), [B, *spatial]
  at::Tensor bald;                ///< predictive - expected entropy, clamped at 0, [B, *spatial]
};

namespace heads_detail {

inline at::Tensor entropy64(const at::Tensor& p, int64_t dim) {
  return -at::where(p > 0, p * at::log(p), at::zeros({}, p.options())).sum(dim);
}

/// BalEntAcq from the Dirichlet's exact marginal means mu = alpha / S and variances
/// mu (1 - mu) / (S + 1), with the sample metric's floors (both at least 1e-9): its K -> infinity limit
/// (docs/segmentation.md). Without the floors moment matching gives back Beta(alpha_c, S - alpha_c);
/// with them the Beta parameters stay below ~1e9, where the lgamma / digamma differences keep their
/// precision. The Python twin (labelwise.torch._balentacq_dirichlet) is the same, line by line.
inline at::Tensor balentacq_dirichlet(const at::Tensor& S, const at::Tensor& mu, const at::Tensor& H) {
  const at::Tensor m = mu.clamp_min(1e-9);
  const at::Tensor var = (mu * (1 - mu) / (S + 1)).clamp_min(1e-9);
  const at::Tensor a = m * m * (1 - m) / var - m;
  const at::Tensor b = (1 / m - 1) * a;
  at::Tensor ln_beta = at::lgamma(a + 1) + at::lgamma(b) - at::lgamma(a + b + 1);
  ln_beta = at::logaddexp(ln_beta, at::full_like(ln_beta, std::log(1e-32)));
  const at::Tensor h = ln_beta - a * at::digamma(a + 1) - (b - 1) * at::digamma(b) + (a + b - 1) * at::digamma(a + b + 1);
  at::Tensor t = at::clamp_max(mu.clamp_min(1e-9) * h, 0.0);
  t = at::where(at::isfinite(t), t, at::zeros_like(t));
  const at::Tensor mjent = t.sum(1) + H;
  at::Tensor s = (H + std::log(2.0)) / (mjent + H);
  s = at::where(s < 0, 1 / s, s);
  // a certain voxel (top mean 1, or its Bernoulli variance below the floor): -inf, as the sample metric
  const at::Tensor top = std::get<0>(mu.max(1));
  return at::where((H <= 0) | (top * (1 - top) < 1e-9), at::full_like(s, -INFINITY), s);
}

}  // namespace heads_detail

/// 1x1(x1) convolution to Dirichlet concentrations alpha = softplus(z) + 1 (Sensoy et al. 2018).
/// Parameters conv.weight, conv.bias. forward: the logits z in both modes (train with evidential_loss).
class EvidentialHeadImpl : public HeadBase {
 public:
  EvidentialHeadImpl(std::int64_t in_channels, std::int64_t num_classes, int dims = 2)
      : HeadBase(in_channels, num_classes, dims) {
    conv_ = register_module("conv", heads_detail::make_conv(in_channels_, num_classes_, dims_));
  }

  at::Tensor weight() { return heads_detail::param(*conv_, "weight"); }
  at::Tensor bias() { return heads_detail::param(*conv_, "bias"); }

  at::Tensor forward(const at::Tensor& features) {
    check_features(features);
    return heads_detail::conv(features, weight(), bias(), dims_);
  }

  /// alpha = softplus(forward(features)) + 1: [B, C, *spatial], dtype and device as forward()'s.
  at::Tensor concentrations(const at::Tensor& features) { return at::softplus(forward(features), 1, 20) + 1.0; }

  /// Probabilities, vacuity, predictive / expected entropy and BALD in closed form (float32).
  EvidentialUncertainty uncertainty(const at::Tensor& features) {
    const std::vector<Metric> metrics{Metric::PredictiveEntropy, Metric::ExpectedEntropy, Metric::Bald};
    at::Tensor probs, vacuity;
    const std::map<Metric, at::Tensor> maps = closed_form(features, metrics, &probs, &vacuity);
    EvidentialUncertainty u;
    u.probs = probs;
    u.vacuity = vacuity;
    u.predictive_entropy = maps.at(Metric::PredictiveEntropy);
    u.expected_entropy = maps.at(Metric::ExpectedEntropy);
    u.bald = maps.at(Metric::Bald);
    return u;
  }

  /// Per-voxel maps {metric: [B, *spatial]} (float32) in closed form; any metric but VariationRatio.
  /// K, seed and index_offset are accepted for a uniform call across heads and ignored (nothing is
  /// sampled). The vacuity map, which Python's score() also takes as a metric name, is uncertainty()'s
  /// `vacuity` here (it is not a labelwise::Metric).
  std::map<Metric, at::Tensor> score(const at::Tensor& features, std::optional<std::int64_t> K = std::nullopt,
                                     const std::vector<Metric>& metrics = {Metric::Bald, Metric::BalEntAcq},
                                     std::uint64_t seed = 0, at::Tensor* mean = nullptr,
                                     std::uint64_t index_offset = 0) {
    (void)seed;
    // checked as for the sampled heads, so that one call serves every head
    if (K) heads_detail::check_arg(*K, "K", 1, (1 << 16) - 1);
    check(!metrics.empty(), ErrorKind::Value, "metrics: expected at least one metric");
    for (Metric m : metrics)
      check(m != Metric::VariationRatio, ErrorKind::Value,
            "metrics: variation_ratio has no closed form for an EvidentialHead");
    heads_detail::check_distinct_metrics(metrics);
    check_features(features);
    check(index_offset <= (std::uint64_t(1) << 32) - static_cast<std::uint64_t>(features.size(0)), ErrorKind::Value,
          "index_offset: items must have global indices below 2^32, got index_offset ", index_offset, " for ",
          features.size(0), " items");
    return closed_form(features, metrics, mean, nullptr);
  }

  std::shared_ptr<HeadBase> fresh() const override {
    return std::make_shared<EvidentialHeadImpl>(in_channels_, num_classes_, dims_);
  }

  void pretty_print(std::ostream& os) const override {
    os << "labelwise::EvidentialHead(in_channels=" << in_channels_ << ", num_classes=" << num_classes_
       << ", dims=" << dims_ << ")";
  }

  /// float64 feature values converted per chunk of the closed form (128 MiB): the float64 copies of a
  /// large volume (512 x 512 x 300 voxels, F = 32: 20 GB) are never made whole. As in the Python twin.
  std::int64_t chunk_values = std::int64_t(1) << 24;

 private:
  /// The closed-form maps, and optionally alpha / S [B, C, *spatial] and the vacuity C / S, float32,
  /// computed in float64 over chunks of the last spatial axis.
  std::map<Metric, at::Tensor> closed_form(const at::Tensor& features, const std::vector<Metric>& metrics,
                                           at::Tensor* probs, at::Tensor* vacuity) {
    check_features(features);
    // before at::isfinite, which would fail in another backend's words (as Python's _check_scoring_device)
    check(features.is_cpu() || features.is_cuda(), ErrorKind::Type, "features: a torch tensor on device ",
          features.device(), "; expected a CPU or CUDA tensor");
    torch::NoGradGuard no_grad;
    const std::int64_t last = features.size(-1);
    const std::int64_t per_index = features.numel() / last;
    const std::int64_t step = std::max<std::int64_t>(1, chunk_values / std::max<std::int64_t>(1, per_index));
    for (std::int64_t a = 0; a < last; a += step)  // by chunks too: no mask of the whole volume
      check(bool(at::isfinite(features.narrow(-1, a, std::min(step, last - a))).all().item<bool>()), ErrorKind::Value,
            "features: contains NaN or Inf");
    check_parameters();  // named in their own coordinates, before the features are blamed
    const at::Tensor w = weight().detach().to(features.device(), at::kDouble);
    const at::Tensor b = bias().detach().to(features.device(), at::kDouble);
    std::vector<std::int64_t> map_shape{features.size(0)}, probs_shape{features.size(0), num_classes_};
    for (std::int64_t d = 2; d < features.dim(); ++d) {
      map_shape.push_back(features.size(d));
      probs_shape.push_back(features.size(d));
    }
    const auto f32 = features.options().dtype(at::kFloat);
    std::map<Metric, at::Tensor> out;
    for (Metric m : metrics) out[m] = at::empty(map_shape, f32);
    // local until the end: `probs` may be the caller's features (score(x, ..., &x)), and a failed call
    // leaves the caller's tensors as they were
    at::Tensor probs_out, vacuity_out;
    if (probs) probs_out = at::empty(probs_shape, f32);
    if (vacuity) vacuity_out = at::empty(map_shape, f32);
    for (std::int64_t a = 0; a < last; a += step) {
      const std::int64_t n = std::min(step, last - a);
      const at::Tensor z = heads_detail::conv(features.narrow(-1, a, n).to(at::kDouble), w, b, dims_);
      const at::Tensor alpha = at::softplus(z, 1, 20) + 1.0;
      std::vector<std::int64_t> bad = heads_detail::first_true(~at::isfinite(alpha.sum(1)));
      if (!bad.empty()) {
        bad.back() += a;  // the chunk's offset on the last axis
        throw Error(ErrorKind::Value, "features: voxel " + heads_detail::index_str(bad) +
                                          " gives concentrations that overflow float64 (features or weights far too "
                                          "large; both are finite)");
      }
      const at::Tensor S = alpha.sum(1, true);
      const at::Tensor mu = alpha / S;
      const at::Tensor H = heads_detail::entropy64(mu, 1);
      at::Tensor eh, top2;
      for (Metric m : metrics) {
        at::Tensor r;
        switch (m) {
          case Metric::PredictiveEntropy: r = H; break;
          case Metric::ExpectedEntropy:
          case Metric::Bald:
            if (!eh.defined()) eh = expected_entropy(alpha, S, mu);
            r = m == Metric::Bald ? at::clamp_min(H - eh, 0.0) : eh;
            break;
          case Metric::LeastConfidence:
          case Metric::MaxMeanVariationRatio:
          case Metric::Margin:
          case Metric::Ratio:
            if (!top2.defined()) top2 = std::get<0>(at::topk(mu, 2, 1));
            if (m == Metric::Margin)
              r = 1 - (top2.select(1, 0) - top2.select(1, 1));
            else if (m == Metric::Ratio)
              r = top2.select(1, 1) / top2.select(1, 0);
            else
              r = 1 - top2.select(1, 0);
            break;
          case Metric::MeanStd: r = at::sqrt(alpha * (S - alpha) / (S * S * (S + 1))).mean(1); break;
          case Metric::BalEntAcq: r = heads_detail::balentacq_dirichlet(S, mu, H); break;
          default: throw Error(ErrorKind::Value, std::string("metrics: unsupported metric ") + metric_name(m));
        }
        out[m].narrow(-1, a, n).copy_(r);
      }
      if (probs) probs_out.narrow(-1, a, n).copy_(mu);
      if (vacuity) vacuity_out.narrow(-1, a, n).copy_(double(num_classes_) / S.select(1, 0));
    }
    if (probs) *probs = probs_out;
    if (vacuity) *vacuity = vacuity_out;
    return out;
  }
  static at::Tensor expected_entropy(const at::Tensor& alpha, const at::Tensor& S, const at::Tensor& mu) {
    return at::digamma(S.select(1, 0) + 1) - (mu * at::digamma(alpha + 1)).sum(1);
  }
  std::shared_ptr<torch::nn::Module> conv_;
};
TORCH_MODULE(EvidentialHead);

/// Expected cross-entropy under Dir(alpha), psi(S) - psi(alpha_y), averaged over voxels, plus kl_weight
/// times KL(Dir(alpha~) || Dir(1)) with alpha~ = y + (1 - y) alpha (Sensoy et al. 2018, eqs. 4-5), as
/// labelwise.torch.evidential_loss. logits [B, C, *spatial], target integer [B, *spatial] in [0, C);
/// voxels labelled ignore_index (e.g. 255, -100) are left out of the means (none left, or no voxel at
/// all: 0). Returns a 0-dim tensor in the logits' dtype (floating point). Errors: Value for a label
/// outside [0, C) (naming the voxel), a target not of shape [B, *spatial], kl_weight not finite or
/// negative; Type for non-float logits or a non-integer target.
inline at::Tensor evidential_loss(const at::Tensor& logits, const at::Tensor& target, double kl_weight = 0.0,
                                  std::optional<std::int64_t> ignore_index = std::nullopt) {
  check(logits.defined() && target.defined(), ErrorKind::Value, logits.defined() ? "target" : "logits",
        ": is an undefined tensor");
  check(logits.dim() >= 2, ErrorKind::Value, "logits: expected [B, C, *spatial], got shape ", c10::str(logits.sizes()));
  std::vector<std::int64_t> want{logits.size(0)};
  for (std::int64_t d = 2; d < logits.dim(); ++d) want.push_back(logits.size(d));
  check(target.sizes() == at::IntArrayRef(want), ErrorKind::Value, "target: expected shape ", at::IntArrayRef(want), ", got ",
        c10::str(target.sizes()));
  check(logits.is_floating_point(), ErrorKind::Type, "logits: expected a floating-point tensor, got ",
        c10::toString(logits.scalar_type()));
  check(!target.is_floating_point() && !target.is_complex() && target.scalar_type() != at::kBool, ErrorKind::Type,
        "target: expected integer class indices, got ", c10::toString(target.scalar_type()));
  check(std::isfinite(kl_weight) && kl_weight >= 0.0, ErrorKind::Value, "kl_weight: expected a finite value >= 0, got ",
        kl_weight);
  if (target.numel() == 0) return logits.sum() * 0.0;  // no voxel: 0, as when every voxel is ignored
  const std::int64_t C = logits.size(1);
  at::Tensor t = target.to(at::kLong);  // labels and ignore_index compared as integers (uint8 wraps)
  at::Tensor valid;
  if (ignore_index) valid = t != *ignore_index;
  at::Tensor out = (t < 0) | (t >= C);
  if (valid.defined()) out = out & valid;
  const std::vector<std::int64_t> bad = heads_detail::first_true(out);
  if (!bad.empty()) {
    const std::vector<at::indexing::TensorIndex> idx(bad.begin(), bad.end());
    throw Error(ErrorKind::Value, "target: voxel " + heads_detail::index_str(bad) + " has label " +
                                      std::to_string(t.index(idx).item<std::int64_t>()) + ", outside [0, " +
                                      std::to_string(C) + ")" +
                                      (ignore_index ? "" : " (pass ignore_index to leave such voxels out)"));
  }
  // float16 on the CPU, where LibTorch has no half softplus / digamma: computed in float32, returned
  // in float16
  const bool upcast = logits.scalar_type() == at::kHalf && !logits.is_cuda();
  at::Tensor z = upcast ? logits.to(at::kFloat) : logits;
  if (valid.defined()) {
    t = at::where(valid, t, at::zeros_like(t));
    z = at::where(valid.unsqueeze(1), z, at::zeros_like(z));  // ignored: finite, no gradient
  }
  const auto in_dtype = [&](const at::Tensor& l) { return upcast ? l.to(at::kHalf) : l; };
  const at::Tensor alpha = at::softplus(z, 1, 20) + 1.0;
  const at::Tensor S = alpha.sum(1);
  const at::Tensor a_y = alpha.gather(1, t.unsqueeze(1)).squeeze(1);
  const at::Tensor per_voxel = at::digamma(S) - at::digamma(a_y);
  at::Tensor kl;
  if (kl_weight != 0.0) {
    const at::Tensor y = at::one_hot(t, C).movedim(-1, 1).to(alpha.scalar_type());
    const at::Tensor at_ = y + (1 - y) * alpha;
    const at::Tensor St = at_.sum(1);
    kl = at::lgamma(St) - std::lgamma(double(C)) - at::lgamma(at_).sum(1) +
         ((at_ - 1) * (at::digamma(at_) - at::digamma(St).unsqueeze(1))).sum(1);
  }
  if (!valid.defined()) {
    const at::Tensor loss = per_voxel.mean();
    return in_dtype(kl_weight != 0.0 ? loss + kl_weight * kl.mean() : loss);
  }
  // Ignored voxels are left out of both means (none left: 0), accumulated in float32 at least (half
  // sums overflow past 65504 voxels) and returned in alpha's dtype.
  const auto acc = at::promote_types(alpha.scalar_type(), at::kFloat);
  const at::Tensor n = valid.sum().clamp_min(1).to(acc);
  const auto masked_mean = [&](const at::Tensor& v) {
    return (at::where(valid, v, at::zeros_like(v)).sum(acc) / n).to(alpha.scalar_type());
  };
  const at::Tensor loss = masked_mean(per_voxel);
  return in_dtype(kl_weight != 0.0 ? loss + kl_weight * masked_mean(kl) : loss);
}

}  // namespace labelwise
