// labelwise._core — the Python extension. It links no framework: arrays arrive as DLPack
// capsules (numpy, torch, cupy, ... on CPU or CUDA) and are used in place, without a copy.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "labelwise/core/parallel.hpp"
#include "labelwise/interop/dlpack.hpp"
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

InputKind parse_input(const std::string& s) {
  if (s == "probs") return InputKind::Probabilities;
  if (s == "log_probs") return InputKind::LogProbabilities;
  if (s == "logits") return InputKind::Logits;
  throw Error(ErrorKind::Value, "input: expected 'probs', 'log_probs' or 'logits', got '" + s + "'");
}

ScoreOptions make_options(const std::string& input, std::optional<int> sample_axis, int class_axis,
                          std::uintptr_t stream) {
  ScoreOptions opt;
  opt.input = parse_input(input);
  opt.sample_axis = sample_axis;
  opt.class_axis = class_axis;
  opt.stream = reinterpret_cast<void*>(stream);
  return opt;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "labelwise C++/CUDA core (use the `labelwise` package, not this module)";

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      switch (e.kind()) {
        case ErrorKind::Value: PyErr_SetString(PyExc_ValueError, e.what()); break;
        case ErrorKind::Type: PyErr_SetString(PyExc_TypeError, e.what()); break;
        case ErrorKind::Runtime: PyErr_SetString(PyExc_RuntimeError, e.what()); break;
      }
    }
  });

  m.attr("METRICS") = [] {
    std::vector<std::string> names;
    for (int i = 0; i < kNumMetrics; ++i) names.emplace_back(metric_name(static_cast<Metric>(i)));
    return names;
  }();
  m.def("metric_needs_samples", [](const std::string& name) { return metric_needs_samples(metric_from_name(name)); });
  m.def("built_with_cuda", &built_with_cuda);
  m.def("num_threads", &num_threads);
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  m.def("normalization_tolerance", [](const std::string& dtype) {
    return normalization_tolerance(dtype == "float64" ? DType::Float64 : DType::Float32);
  });

  m.def(
      "score_shape",
      [](const py::capsule& x, const std::string& input, std::optional<int> sample_axis, int class_axis) {
        return score_shape(view_of(x, "x", false), make_options(input, sample_axis, class_axis, 0));
      },
      py::arg("x"), py::arg("input"), py::arg("sample_axis"), py::arg("class_axis"));

  m.def(
      "score",
      [](const py::capsule& x, const std::vector<std::pair<std::string, py::capsule>>& outputs,
         const std::string& input, std::optional<int> sample_axis, int class_axis, std::uintptr_t stream) {
        const TensorView xv = view_of(x, "x", false);
        std::vector<MetricOutput> outs;
        for (const auto& [name, cap] : outputs) outs.push_back({metric_from_name(name), view_of(cap, "out", true)});
        const ScoreOptions opt = make_options(input, sample_axis, class_axis, stream);
        py::gil_scoped_release release;
        score(xv, outs, opt);
      },
      py::arg("x"), py::arg("outputs"), py::arg("input"), py::arg("sample_axis"), py::arg("class_axis"),
      py::arg("stream") = 0);
}
