// labelwise._core — the Python extension. It links no framework: arrays arrive as DLPack
// capsules (numpy, torch, cupy, ... on CPU or CUDA) and are used in place, without a copy.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <new>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "labelwise/acquisition/batchbald.hpp"
#include "labelwise/acquisition/diversity.hpp"
#include "labelwise/acquisition/regions.hpp"
#include "labelwise/acquisition/selection.hpp"
#include "labelwise/core/parallel.hpp"
#include "labelwise/interop/dlpack.hpp"
#include "labelwise/propagation/binomial.hpp"
#include "labelwise/propagation/certified.hpp"
#include "labelwise/propagation/label_issues.hpp"
#include "labelwise/propagation/knn.hpp"
#include "labelwise/propagation/slices.hpp"
#include "labelwise/propagation/spreading.hpp"
#include "labelwise/segmentation/head_score.hpp"
#include "labelwise/uncertainty/metrics.hpp"

namespace py = pybind11;
using namespace labelwise;

namespace {

/// Borrowed view of a DLPack capsule; the capsule (owned by Python) keeps the memory alive.
TensorView view_of(const py::capsule& cap, const char* what, bool writable) {
  const char* name = cap.name();
  if (name && std::string(name) == "dltensor") {
    auto* m = static_cast<dlpack::DLManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), "dltensor"));
    if (!m) throw py::error_already_set();
    return dlpack::to_view(m->dl_tensor, what);
  }
  if (name && std::string(name) == "dltensor_versioned") {
    auto* m = static_cast<dlpack::DLManagedTensorVersioned*>(PyCapsule_GetPointer(cap.ptr(), "dltensor_versioned"));
    if (!m) throw py::error_already_set();
    check(m->version.major == 1, ErrorKind::Type, what, ": unsupported DLPack major version ", m->version.major);
    check(!(writable && (m->flags & dlpack::kFlagReadOnly)), ErrorKind::Value, what, ": output array is read-only");
    return dlpack::to_view(m->dl_tensor, what);
  }
  throw Error(ErrorKind::Type, std::string(what) + ": expected a DLPack capsule ('dltensor'), got '" +
                                   (name ? name : "<unnamed>") + "' (was it already consumed?)");
}

ScoreOptions make_options(const std::string& input, std::optional<int> sample_axis, std::optional<int> class_axis,
                          std::uintptr_t stream) {
  ScoreOptions opt;
  opt.input = input_kind_from_name(input);
  opt.sample_axis = sample_axis;
  opt.class_axis = class_axis;
  opt.stream = reinterpret_cast<void*>(stream);
  return opt;
}

}  // namespace

/// The interrupt check of long-running calls (labelwise::set_interrupt_check): runs Python's signal
/// handlers (they run only on the main thread); true when one raised, e.g. KeyboardInterrupt on Ctrl-C,
/// whose exception then stays set for the call's error translation.
bool python_finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return !Py_IsInitialized() || Py_IsFinalizing();
#else
  return !Py_IsInitialized() || _Py_IsFinalizing();
#endif
}

/// Releases the GIL for the C++ work of a call, like py::gil_scoped_release, but safe when Python
/// shuts down meanwhile (a daemon thread still inside labelwise). Python < 3.14 ends a thread that
/// asks for the GIL during shutdown with pthread_exit, a forced unwind: from a noexcept destructor
/// (gil_scoped_release's) that is std::terminate, and so is a second one started while the first
/// unwinds this call (the interrupt check may have started it; std::uncaught_exceptions does not
/// count it). So once shutdown has begun the thread parks until the process exits, as Python 3.14
/// itself does with such threads; should shutdown begin just after that check, the one unwind that
/// PyEval_RestoreThread starts leaves this noexcept(false) destructor normally.
class ReleaseGil {
 public:
  ReleaseGil() : state_(PyEval_SaveThread()) {}
  ReleaseGil(const ReleaseGil&) = delete;
  ReleaseGil& operator=(const ReleaseGil&) = delete;
  ~ReleaseGil() noexcept(false) {
    if (python_finalizing())
      for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
    PyEval_RestoreThread(state_);
  }

 private:
  PyThreadState* state_;
};

bool python_signal_raised() {
  if (python_finalizing()) return false;
  py::gil_scoped_acquire gil;  // shutdown may begin after the check: then a forced unwind from here, let through
  return PyErr_CheckSignals() != 0;
}

PYBIND11_MODULE(_core, m) {
  m.doc() = "labelwise C++/CUDA core (use the `labelwise` package, not this module)";
  set_interrupt_check(&python_signal_raised);

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      switch (e.kind()) {
        case ErrorKind::Value: PyErr_SetString(PyExc_ValueError, e.what()); break;
        case ErrorKind::Type: PyErr_SetString(PyExc_TypeError, e.what()); break;
        case ErrorKind::Runtime: PyErr_SetString(PyExc_RuntimeError, e.what()); break;
        case ErrorKind::Interrupted:  // the signal handler's own exception (KeyboardInterrupt) is already set
          if (!PyErr_Occurred()) PyErr_SetString(PyExc_KeyboardInterrupt, e.what());
          break;
      }
    } catch (const std::bad_alloc&) {
      PyErr_SetString(PyExc_MemoryError,
                      "labelwise: out of host memory (an allocation for the call failed; an input may be larger "
                      "than its storage, e.g. a broadcast view of a huge shape)");
    }
  });

  m.attr("METRICS") = [] {
    std::vector<std::string> names;
    for (int i = 0; i < kNumMetrics; ++i) names.emplace_back(metric_name(static_cast<Metric>(i)));
    return names;
  }();
  m.def("metric_needs_samples", [](const std::string& name) { return metric_needs_samples(metric_from_name(name)); });
  m.def("built_with_cuda", &built_with_cuda, "True when this build contains the CUDA kernels.");
  m.def("num_threads", &num_threads,
        "Number of CPU threads labelwise uses (default: the LABELWISE_NUM_THREADS environment variable, read "
        "once at the first call, else all cores).");
  m.def("set_num_threads", &set_num_threads, py::arg("n"),
        "Sets the CPU thread count for every later call; n <= 0 restores the default. Results never depend on "
        "it. Process-wide and safe from any thread at any time: running calls finish each parallel stage with "
        "the count it started with.");
  m.def("normalization_tolerance", [](const std::string& dtype) {
    return normalization_tolerance(dtype == "float64" ? DType::Float64 : DType::Float32);
  });

  m.def(
      "score_shape",
      [](const py::capsule& x, const std::string& input, std::optional<int> sample_axis, std::optional<int> class_axis) {
        return score_shape(view_of(x, "x", false), make_options(input, sample_axis, class_axis, 0));
      },
      py::arg("x"), py::arg("input"), py::arg("sample_axis"), py::arg("class_axis"));

  m.def(
      "score",
      [](const py::capsule& x, const std::vector<std::pair<std::string, py::capsule>>& outputs,
         const std::string& input, std::optional<int> sample_axis, std::optional<int> class_axis,
         std::uintptr_t stream) {
        const TensorView xv = view_of(x, "x", false);
        std::vector<MetricOutput> outs;
        for (const auto& [name, cap] : outputs) outs.push_back({metric_from_name(name), view_of(cap, "out", true)});
        const ScoreOptions opt = make_options(input, sample_axis, class_axis, stream);
        ReleaseGil release;
        score(xv, outs, opt);
      },
      py::arg("x"), py::arg("outputs"), py::arg("input"), py::arg("sample_axis"), py::arg("class_axis"),
      py::arg("stream") = 0);

  // ---- segmentation heads: fused sample-and-score of a 1x1(x1) MC-dropout / ensemble head ---------
  auto head_options = [](std::int64_t samples, double dropout, std::uint64_t seed, std::uint64_t index_offset,
                         std::uintptr_t stream) {
    HeadScoreOptions opt;
    opt.samples = samples;
    opt.dropout = dropout;
    opt.seed = seed;
    opt.index_offset = index_offset;
    opt.stream = reinterpret_cast<void*>(stream);
    return opt;
  };
  m.def(
      "head_score",
      [head_options](const py::capsule& features, const py::capsule& weight, const py::capsule& bias,
                     const std::vector<std::pair<std::string, py::capsule>>& outputs, const py::object& mean,
                     std::int64_t samples, double dropout, std::uint64_t seed, std::uint64_t index_offset,
                     std::uintptr_t stream) {
        const TensorView fv = view_of(features, "features", false);
        const TensorView wv = view_of(weight, "weight", false);
        const TensorView bv = view_of(bias, "bias", false);
        std::vector<MetricOutput> outs;
        for (const auto& [name, cap] : outputs) outs.push_back({metric_from_name(name), view_of(cap, "out", true)});
        std::optional<TensorView> mv;
        if (!mean.is_none()) mv = view_of(mean.cast<py::capsule>(), "mean", true);
        const HeadScoreOptions opt = head_options(samples, dropout, seed, index_offset, stream);
        ReleaseGil release;
        head_score(fv, wv, bv, outs, mv ? &*mv : nullptr, opt);
      },
      py::arg("features"), py::arg("weight"), py::arg("bias"), py::arg("outputs"), py::arg("mean"),
      py::arg("samples"), py::arg("dropout"), py::arg("seed"), py::arg("index_offset") = 0, py::arg("stream") = 0);
  m.def(
      "head_sample",
      [head_options](const py::capsule& features, const py::capsule& weight, const py::capsule& bias,
                     const py::capsule& out, std::int64_t samples, double dropout, std::uint64_t seed,
                     std::uint64_t index_offset, std::uintptr_t stream) {
        const TensorView fv = view_of(features, "features", false);
        const TensorView wv = view_of(weight, "weight", false);
        const TensorView bv = view_of(bias, "bias", false);
        const TensorView sv = view_of(out, "samples", true);
        const HeadScoreOptions opt = head_options(samples, dropout, seed, index_offset, stream);
        ReleaseGil release;
        head_sample(fv, wv, bv, sv, opt);
      },
      py::arg("features"), py::arg("weight"), py::arg("bias"), py::arg("samples_out"), py::arg("samples"),
      py::arg("dropout"), py::arg("seed"), py::arg("index_offset") = 0, py::arg("stream") = 0);

  // ---- acquisition: top-k, stochastic (Gumbel-top-k), shard merge (labelwise.acquisition) ----
  // Optional arrays arrive as None or a DLPack capsule.
  auto optional_view = [](const py::object& cap, const char* what, bool writable) -> std::optional<TensorView> {
    if (cap.is_none()) return std::nullopt;
    return view_of(cap.cast<py::capsule>(), what, writable);
  };
  m.def(
      "top_k",
      [optional_view](const py::capsule& scores, std::int64_t b, const py::capsule& indices, const py::object& values,
                      std::int64_t index_offset, std::uintptr_t stream) {
        const TensorView sv = view_of(scores, "scores", false);
        const TensorView iv = view_of(indices, "indices", true);
        const std::optional<TensorView> vv = optional_view(values, "values", true);
        SelectOptions opt;
        opt.index_offset = index_offset;
        opt.stream = reinterpret_cast<void*>(stream);
        ReleaseGil release;
        if (vv)
          top_k(sv, b, iv, *vv, opt);
        else
          top_k(sv, b, iv, opt);
      },
      py::arg("scores"), py::arg("b"), py::arg("indices"), py::arg("values"), py::arg("index_offset") = 0,
      py::arg("stream") = 0);

  auto stochastic_options = [optional_view](const std::string& mode, double temperature, std::uint64_t seed,
                                            std::int64_t index_offset, const py::object& ranks,
                                            std::uintptr_t stream) {
    StochasticOptions opt;
    opt.mode = stochastic_mode_from_name(mode);
    opt.temperature = temperature;
    opt.seed = seed;
    opt.index_offset = index_offset;
    if (auto r = optional_view(ranks, "ranks", false)) opt.ranks = *r;
    opt.stream = reinterpret_cast<void*>(stream);
    return opt;
  };
  m.def(
      "stochastic",
      [optional_view, stochastic_options](const py::capsule& scores, std::int64_t b, const py::capsule& indices,
                                          const py::object& keys, const std::string& mode, double temperature,
                                          std::uint64_t seed, std::int64_t index_offset, const py::object& ranks,
                                          std::uintptr_t stream) {
        const TensorView sv = view_of(scores, "scores", false);
        const TensorView iv = view_of(indices, "indices", true);
        const std::optional<TensorView> kv = optional_view(keys, "keys", true);
        const StochasticOptions opt = stochastic_options(mode, temperature, seed, index_offset, ranks, stream);
        ReleaseGil release;
        if (kv)
          stochastic(sv, b, iv, *kv, opt);
        else
          stochastic(sv, b, iv, opt);
      },
      py::arg("scores"), py::arg("b"), py::arg("indices"), py::arg("keys"), py::arg("mode"), py::arg("temperature"),
      py::arg("seed"), py::arg("index_offset") = 0, py::arg("ranks") = py::none(), py::arg("stream") = 0);

  m.def(
      "stochastic_keys",
      [stochastic_options](const py::capsule& scores, const py::capsule& keys, const std::string& mode,
                           double temperature, std::uint64_t seed, std::int64_t index_offset, const py::object& ranks,
                           std::uintptr_t stream) {
        const TensorView sv = view_of(scores, "scores", false);
        const TensorView kv = view_of(keys, "keys", true);
        const StochasticOptions opt = stochastic_options(mode, temperature, seed, index_offset, ranks, stream);
        ReleaseGil release;
        stochastic_keys(sv, kv, opt);
      },
      py::arg("scores"), py::arg("keys"), py::arg("mode"), py::arg("temperature"), py::arg("seed"),
      py::arg("index_offset") = 0, py::arg("ranks") = py::none(), py::arg("stream") = 0);

  m.def(
      "merge_top_k",
      [optional_view](const py::capsule& values, const py::capsule& indices, std::int64_t b,
                      const py::capsule& out_indices, const py::object& out_values, std::uintptr_t stream) {
        const TensorView vv = view_of(values, "values", false);
        const TensorView iv = view_of(indices, "indices", false);
        const TensorView ov = view_of(out_indices, "out_indices", true);
        const std::optional<TensorView> ovv = optional_view(out_values, "out_values", true);
        ReleaseGil release;
        if (ovv)
          merge_top_k(vv, iv, b, ov, *ovv, reinterpret_cast<void*>(stream));
        else
          merge_top_k(vv, iv, b, ov, reinterpret_cast<void*>(stream));
      },
      py::arg("values"), py::arg("indices"), py::arg("b"), py::arg("out_indices"), py::arg("out_values"),
      py::arg("stream") = 0);

  // ---- propagation: certified auto-labelling, label issues, exact binomial tools ----------------
  auto prop_view = [](const py::object& cap, const char* what, bool writable) -> TensorView {
    if (cap.is_none()) return TensorView();
    return view_of(cap.cast<py::capsule>(), what, writable);
  };
  auto certificate_dict = [](const ThresholdCertificate& c) {
    py::dict d;
    d["certified"] = c.certified;
    d["threshold"] = c.threshold;
    d["bound"] = c.bound;
    d["n_calibration"] = c.n_calibration;
    d["n_calibration_accepted"] = c.n_calibration_accepted;
    d["calibration_errors"] = c.calibration_errors;
    d["min_calibration"] = c.min_calibration;
    d["scan_start"] = c.scan_start;
    d["start_rank"] = c.start_rank;
    d["target_error"] = c.target_error;
    d["delta"] = c.delta;
    d["reason"] = c.reason;
    return d;
  };
  m.def("regularized_incomplete_beta", &regularized_incomplete_beta, py::arg("x"), py::arg("a"), py::arg("b"));
  m.def("beta_quantile", &beta_quantile, py::arg("p"), py::arg("a"), py::arg("b"));
  m.def("binomial_cdf", &binomial_cdf, py::arg("k"), py::arg("n"), py::arg("theta"));
  m.def("clopper_pearson_upper", &clopper_pearson_upper, py::arg("errors"), py::arg("n"), py::arg("delta"));
  m.def("min_certifiable_count", &min_certifiable_count, py::arg("target_error"), py::arg("delta"));
  m.def(
      "auto_label_shapes",
      [](const py::capsule& pool_probs, int class_axis, const std::string& unit) {
        CertifyOptions opt;
        opt.class_axis = class_axis;
        opt.unit = accept_unit_from_name(unit);
        return auto_label_shapes(view_of(pool_probs, "pool_probs", false), opt);
      },
      py::arg("pool_probs"), py::arg("class_axis"), py::arg("unit"));
  m.def(
      "certify_threshold",
      [certificate_dict](const py::capsule& calib_confidence, const py::capsule& calib_errors,
                         const py::capsule& pool_confidence, double target_error, double delta,
                         std::int64_t scan_start) {
        const TensorView cv = view_of(calib_confidence, "calib_confidence", false);
        const TensorView ev = view_of(calib_errors, "calib_errors", false);
        const TensorView pv = view_of(pool_confidence, "pool_confidence", false);
        ThresholdCertificate c;
        {
          ReleaseGil release;
          c = certify_threshold(cv, ev, pv, target_error, delta, scan_start);
        }
        return certificate_dict(c);
      },
      py::arg("calib_confidence"), py::arg("calib_errors"), py::arg("pool_confidence"), py::arg("target_error"),
      py::arg("delta"),
      py::arg("scan_start") = 0);
  m.def(
      "certified_auto_label",
      [prop_view, certificate_dict](const py::capsule& pool_probs, const py::capsule& calib_probs,
                                    const py::capsule& calib_labels, const py::capsule& accepted,
                                    const py::capsule& labels, double target_error, double delta, int class_axis,
                                    const std::string& unit, std::optional<double> max_voxel_error,
                                    const py::object& pool_confidence, const py::object& calib_confidence,
                                    std::int64_t scan_start, bool per_class) {
        CertifyOptions opt;
        opt.target_error = target_error;
        opt.delta = delta;
        opt.class_axis = class_axis;
        opt.unit = accept_unit_from_name(unit);
        if (max_voxel_error) opt.max_voxel_error = *max_voxel_error;
        opt.pool_confidence = prop_view(pool_confidence, "pool_confidence", false);
        opt.calib_confidence = prop_view(calib_confidence, "calib_confidence", false);
        opt.scan_start = scan_start;
        opt.per_class = per_class;
        const TensorView pv = view_of(pool_probs, "pool_probs", false);
        const TensorView cv = view_of(calib_probs, "calib_probs", false);
        const TensorView lv = view_of(calib_labels, "calib_labels", false);
        const TensorView av = view_of(accepted, "accepted", true);
        const TensorView ov = view_of(labels, "labels", true);
        AutoLabelResult r;
        {
          ReleaseGil release;
          r = certified_auto_label(pv, cv, lv, av, ov, opt);
        }
        py::dict d = certificate_dict(r.certificate);
        d["n_pool"] = r.n_pool;
        d["n_accepted"] = r.n_accepted;
        d["coverage"] = r.coverage;
        py::list classes;
        for (const auto& c : r.class_certificates) classes.append(certificate_dict(c));
        d["class_certificates"] = classes;
        return d;
      },
      py::arg("pool_probs"), py::arg("calib_probs"), py::arg("calib_labels"), py::arg("accepted"), py::arg("labels"),
      py::arg("target_error"), py::arg("delta"), py::arg("class_axis"), py::arg("unit"), py::arg("max_voxel_error"),
      py::arg("pool_confidence"), py::arg("calib_confidence"), py::arg("scan_start") = 0, py::arg("per_class") = false);
  m.def(
      "label_issues",
      [prop_view](const py::capsule& probs, const py::capsule& given_labels, const py::capsule& indices,
                  const py::object& self_confidence, const py::object& thresholds, const py::object& confident_joint,
                  int class_axis) {
        const TensorView pv = view_of(probs, "probs", false);
        const TensorView lv = view_of(given_labels, "given_labels", false);
        LabelIssuesOutputs out;
        out.indices = view_of(indices, "indices", true);
        out.self_confidence = prop_view(self_confidence, "self_confidence", true);
        out.thresholds = prop_view(thresholds, "thresholds", true);
        out.confident_joint = prop_view(confident_joint, "confident_joint", true);
        ReleaseGil release;
        return label_issues(pv, lv, out, class_axis);
      },
      py::arg("probs"), py::arg("given_labels"), py::arg("indices"), py::arg("self_confidence"),
      py::arg("thresholds"), py::arg("confident_joint"), py::arg("class_axis"));

  // ---- acquisition: BatchBALD (labelwise.acquisition.batchbald), CPU and CUDA -----------------
  m.def(
      "batchbald",
      [](const py::capsule& x, std::int64_t b, const py::capsule& indices, const py::capsule& scores,
         std::int64_t num_samples, std::uint64_t seed, const std::string& input, int sample_axis, int class_axis,
         std::uintptr_t stream) {
        const TensorView xv = view_of(x, "x", false);
        const TensorView iv = view_of(indices, "indices", true);
        const TensorView sv = view_of(scores, "scores", true);
        BatchBaldOptions opt;
        opt.input = input_kind_from_name(input);
        opt.num_samples = num_samples;
        opt.seed = seed;
        opt.sample_axis = sample_axis;
        opt.class_axis = class_axis;
        opt.stream = reinterpret_cast<void*>(stream);
        ReleaseGil release;
        batchbald(xv, b, iv, sv, opt);
      },
      py::arg("x"), py::arg("b"), py::arg("indices"), py::arg("scores"), py::arg("num_samples"), py::arg("seed"),
      py::arg("input"), py::arg("sample_axis"), py::arg("class_axis"), py::arg("stream") = 0);

  // ---- acquisition: core-set, BADGE, cluster-margin, weighted k-means (labelwise.acquisition) -----
  m.def(
      "coreset",
      [](const py::capsule& features, const py::object& labeled, std::int64_t b, const py::capsule& indices,
         const py::capsule& radii, const std::string& metric, bool prune, std::uintptr_t stream) {
        const TensorView fv = view_of(features, "features", false);
        const TensorView lv = labeled.is_none() ? TensorView() : view_of(labeled.cast<py::capsule>(), "labeled", false);
        const TensorView iv = view_of(indices, "indices", true);
        const TensorView rv = view_of(radii, "radii", true);
        CoresetOptions opt;
        opt.metric = distance_metric_from_name(metric);
        opt.prune = prune;
        opt.stream = reinterpret_cast<void*>(stream);
        ReleaseGil release;
        coreset(fv, lv, b, iv, rv, opt);
      },
      py::arg("features"), py::arg("labeled"), py::arg("b"), py::arg("indices"), py::arg("radii"),
      py::arg("metric"), py::arg("prune") = true, py::arg("stream") = 0);
  m.def(
      "unlabeled_rows",
      [](const py::capsule& labeled, std::int64_t n, const py::capsule& rows, std::uintptr_t stream) {
        const TensorView lv = view_of(labeled, "labeled", false), rv = view_of(rows, "rows", true);
        ReleaseGil release;
        return unlabeled_rows(lv, n, rv, reinterpret_cast<void*>(stream));
      },
      py::arg("labeled"), py::arg("n"), py::arg("rows"), py::arg("stream") = 0);
  m.def(
      "badge",
      [](const py::capsule& x, const py::capsule& embeddings, std::int64_t b, const py::capsule& indices,
         std::uint64_t seed, const std::string& input, std::uintptr_t stream) {
        const TensorView xv = view_of(x, "x", false);
        const TensorView ev = view_of(embeddings, "embeddings", false);
        const TensorView iv = view_of(indices, "indices", true);
        BadgeOptions opt;
        opt.input = input_kind_from_name(input);
        opt.seed = seed;
        opt.stream = reinterpret_cast<void*>(stream);
        ReleaseGil release;
        badge(xv, ev, b, iv, opt);
      },
      py::arg("x"), py::arg("embeddings"), py::arg("b"), py::arg("indices"), py::arg("seed"), py::arg("input"),
      py::arg("stream") = 0);
  m.def("badge_uniform", &badge_uniform, py::arg("seed"), py::arg("step"));
  m.def(
      "cluster_margin",
      [](const py::capsule& margins, const py::capsule& clusters, const py::object& labeled, std::int64_t b,
         const py::capsule& indices, std::int64_t candidates, std::uint64_t seed, std::uintptr_t stream) {
        const TensorView mv = view_of(margins, "margins", false);
        const TensorView cv = view_of(clusters, "clusters", false);
        const TensorView lv = labeled.is_none() ? TensorView() : view_of(labeled.cast<py::capsule>(), "labeled", false);
        const TensorView iv = view_of(indices, "indices", true);
        ClusterMarginOptions opt;
        opt.candidates = candidates;
        opt.seed = seed;
        opt.stream = reinterpret_cast<void*>(stream);
        ReleaseGil release;
        cluster_margin(mv, cv, lv, b, iv, opt);
      },
      py::arg("margins"), py::arg("clusters"), py::arg("labeled"), py::arg("b"), py::arg("indices"),
      py::arg("candidates"), py::arg("seed"), py::arg("stream") = 0);
  m.def(
      "average_linkage_clusters",
      [](const py::capsule& features, const py::capsule& clusters, double distance, std::int64_t num_clusters) {
        const TensorView fv = view_of(features, "features", false);
        const TensorView cv = view_of(clusters, "clusters", true);
        AverageLinkageOptions opt;
        opt.distance = distance;
        opt.num_clusters = num_clusters;
        ReleaseGil release;
        average_linkage_clusters(fv, cv, opt);
      },
      py::arg("features"), py::arg("clusters"), py::arg("distance"), py::arg("num_clusters"));
  m.def(
      "weighted_kmeans",
      [](const py::capsule& features, const py::capsule& scores, std::int64_t b, const py::capsule& indices,
         std::int64_t prefilter, std::int64_t max_iter, std::uintptr_t stream) {
        const TensorView fv = view_of(features, "features", false);
        const TensorView sv = view_of(scores, "scores", false);
        const TensorView iv = view_of(indices, "indices", true);
        WeightedKmeansOptions opt;
        opt.prefilter = prefilter;
        opt.max_iter = max_iter;
        opt.stream = reinterpret_cast<void*>(stream);
        ReleaseGil release;
        weighted_kmeans(fv, sv, b, iv, opt);
      },
      py::arg("features"), py::arg("scores"), py::arg("b"), py::arg("indices"), py::arg("prefilter"),
      py::arg("max_iter"), py::arg("stream") = 0);

  // ---- acquisition: regions of segmentation maps (patches, slices), CPU ----------------------------
  m.def(
      "patch_scores",
      [](const py::capsule& map, const std::vector<std::int64_t>& patch, const std::vector<std::int64_t>& stride,
         const py::capsule& out) {
        const TensorView mv = view_of(map, "map", false), ov = view_of(out, "out", true);
        ReleaseGil release;
        patch_scores(mv, patch, stride, ov);
      },
      py::arg("map"), py::arg("patch"), py::arg("stride"), py::arg("out"));
  m.def(
      "top_regions",
      [](const py::capsule& map, std::int64_t b, const std::vector<std::int64_t>& patch,
         const std::vector<std::int64_t>& stride, const py::capsule& corners, const py::capsule& scores) {
        const TensorView mv = view_of(map, "map", false), cv = view_of(corners, "corners", true),
                         sv = view_of(scores, "scores", true);
        ReleaseGil release;
        top_regions(mv, b, patch, stride, cv, sv);
      },
      py::arg("map"), py::arg("b"), py::arg("patch"), py::arg("stride"), py::arg("corners"), py::arg("scores"));
  m.def(
      "slice_scores",
      [](const py::capsule& map, int axis, const py::capsule& out) {
        const TensorView mv = view_of(map, "map", false), ov = view_of(out, "out", true);
        ReleaseGil release;
        slice_scores(mv, axis, ov);
      },
      py::arg("map"), py::arg("axis"), py::arg("out"));

  // ---- propagation: kNN graph, label spreading / propagation (labelwise.propagation), CPU --------
  m.def(
      "knn_graph",
      [](const py::capsule& features, std::int64_t k, const py::capsule& indices, const py::capsule& distances,
         const std::string& metric, std::uintptr_t stream) {
        const TensorView fv = view_of(features, "features", false);
        const TensorView iv = view_of(indices, "indices", true);
        const TensorView dv = view_of(distances, "distances", true);
        const DistanceMetric km = distance_metric_from_name(metric);
        ReleaseGil release;
        knn_graph(fv, k, iv, dv, km, reinterpret_cast<void*>(stream));
      },
      py::arg("features"), py::arg("k"), py::arg("indices"), py::arg("distances"), py::arg("metric"),
      py::arg("stream") = 0);
  m.def(
      "propagate_slices",
      [](const py::capsule& volume, const py::capsule& labels, const std::vector<std::int64_t>& slices,
         const py::capsule& mask, const py::capsule& confidence, int axis, std::int64_t num_classes, double beta,
         std::int64_t erode, double min_confidence) {
        const TensorView vv = view_of(volume, "volume", false);
        const TensorView lv = view_of(labels, "labels", false);
        const TensorView mv = view_of(mask, "mask", true);
        const TensorView cv = view_of(confidence, "confidence", true);
        SlicePropagationOptions opt;
        opt.axis = axis;
        opt.num_classes = num_classes;
        opt.beta = beta;
        opt.erode = erode;
        opt.min_confidence = min_confidence;
        ReleaseGil release;
        propagate_slices(vv, lv, slices, mv, cv, opt);
      },
      py::arg("volume"), py::arg("labels"), py::arg("slices"), py::arg("mask"), py::arg("confidence"),
      py::arg("axis"), py::arg("num_classes"), py::arg("beta"), py::arg("erode"), py::arg("min_confidence"));
  m.def(
      "spreading_num_classes",
      [](const py::capsule& labels) { return spreading_num_classes(view_of(labels, "labels", false)); },
      py::arg("labels"));
  m.def(
      "label_spreading",
      [](const py::capsule& features, const py::capsule& labels, const py::capsule& distributions,
         const py::capsule& out_labels, bool propagation, std::int64_t k, double alpha, std::int64_t max_iter,
         double tol, const std::string& variant, int sklearn_threads) {
        const TensorView fv = view_of(features, "features", false);
        const TensorView lv = view_of(labels, "labels", false);
        const TensorView dv = view_of(distributions, "distributions", true);
        const TensorView ov = view_of(out_labels, "out_labels", true);
        SpreadingOptions opt;
        opt.k = k;
        opt.alpha = alpha;
        opt.max_iter = max_iter;
        opt.tol = tol;
        opt.variant = spreading_variant_from_name(variant);
        opt.sklearn_threads = sklearn_threads;
        SpreadingResult r;
        {
          ReleaseGil release;
          r = propagation ? label_propagation(fv, lv, dv, ov, opt) : label_spreading(fv, lv, dv, ov, opt);
        }
        py::dict d;
        d["n_iter"] = r.n_iter;
        d["converged"] = r.converged;
        d["unreached"] = r.unreached;
        d["n_classes"] = r.n_classes;
        return d;
      },
      py::arg("features"), py::arg("labels"), py::arg("distributions"), py::arg("out_labels"),
      py::arg("propagation"), py::arg("k"), py::arg("alpha"), py::arg("max_iter"), py::arg("tol"),
      py::arg("variant"), py::arg("sklearn_threads"));
}
