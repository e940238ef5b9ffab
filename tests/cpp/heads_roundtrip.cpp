// Weights and outputs of the segmentation heads, both ways between Python (labelwise.torch) and C++
// (labelwise/segmentation/heads.hpp); driven by tests/python/heads_roundtrip.py (see tests/CMakeLists.txt):
//
//   heads_roundtrip DIR   1. loads the heads Python saved (DIR/py_<name>.pt) and the inputs and outputs
//                            Python computed with them (DIR/py_outputs.pt); checks forward (eval), sample,
//                            score (every metric, and the mean) and the evidential closed form against them;
//                            checks that Python's raw OrderedDict state_dict gives a clear labelwise::Error;
//                         2. saves randomly initialised heads of its own (DIR/cpp_<name>.pt) and their
//                            outputs on fresh inputs (DIR/cpp_outputs.pt) for Python to check.
//
// The heads, inputs and output names are the same on both sides (HEADS / outputs() here, HEADS /
// outputs() in the script). Exit status 0 when everything matches, 1 with a list of differences.
#include <cmath>
#include <cstdio>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "labelwise/segmentation/heads.hpp"

using namespace labelwise;

namespace {

const std::vector<Metric> kAllMetrics{Metric::PredictiveEntropy, Metric::ExpectedEntropy, Metric::Bald,
                                      Metric::LeastConfidence,   Metric::Margin,          Metric::Ratio,
                                      Metric::VariationRatio,    Metric::MaxMeanVariationRatio,
                                      Metric::MeanStd,           Metric::BalEntAcq};
constexpr std::int64_t kSamples = 16;
constexpr std::uint64_t kSeed = 0x1234567890ABCDEFull;

struct Heads {
  MCDropoutHead mc2{6, 4, 0.3, 2};
  MCDropoutHead mc3{6, 4, 0.6, 3};
  EnsembleHead en2{6, 4, 3, 2};
  EvidentialHead ev2{6, 4, 2};
  EvidentialHead ev3{6, 4, 3};
  std::vector<std::pair<std::string, torch::nn::Module*>> all() {
    return {{"mc2", mc2.get()}, {"mc3", mc3.get()}, {"en2", en2.get()}, {"ev2", ev2.get()}, {"ev3", ev3.get()}};
  }
};

void put_scores(NamedTensors& out, const std::string& name, const std::map<Metric, at::Tensor>& maps,
                const at::Tensor& mean) {
  for (const auto& [m, t] : maps) out.emplace_back(name + ".score." + metric_name(m), t);
  out.emplace_back(name + ".mean", mean);
}

/// Every output Python computes too, on x2 [B, F, H, W] and x3 [B, F, D, H, W].
NamedTensors outputs(Heads& h, const at::Tensor& x2, const at::Tensor& x3) {
  NamedTensors out{{"x2", x2}, {"x3", x3}};
  torch::NoGradGuard no_grad;
  at::Tensor mean;
  for (auto* mod : {static_cast<torch::nn::Module*>(h.mc2.get()), static_cast<torch::nn::Module*>(h.mc3.get()),
                    static_cast<torch::nn::Module*>(h.en2.get()), static_cast<torch::nn::Module*>(h.ev2.get()),
                    static_cast<torch::nn::Module*>(h.ev3.get())})
    mod->eval();
  out.emplace_back("mc2.forward", h.mc2->forward(x2));
  out.emplace_back("mc2.sample", h.mc2->sample(x2, kSamples, kSeed));
  put_scores(out, "mc2", h.mc2->score(x2, kSamples, kAllMetrics, kSeed, &mean), mean);
  out.emplace_back("mc3.forward", h.mc3->forward(x3));
  out.emplace_back("mc3.sample", h.mc3->sample(x3, kSamples, kSeed + 1, /*index_offset=*/5));
  put_scores(out, "mc3", h.mc3->score(x3, kSamples, kAllMetrics, kSeed + 1, &mean, 5), mean);
  out.emplace_back("en2.forward", h.en2->forward(x2));
  out.emplace_back("en2.forward_members", h.en2->forward_members(x2));
  out.emplace_back("en2.sample", h.en2->sample(x2));
  put_scores(out, "en2", h.en2->score(x2, std::nullopt, kAllMetrics, 0, &mean), mean);
  std::vector<Metric> ev_metrics;
  for (Metric m : kAllMetrics)
    if (m != Metric::VariationRatio) ev_metrics.push_back(m);
  for (auto& [name, head, x] : {std::tuple<std::string, EvidentialHead*, at::Tensor>{"ev2", &h.ev2, x2},
                                std::tuple<std::string, EvidentialHead*, at::Tensor>{"ev3", &h.ev3, x3}}) {
    EvidentialHead& e = *head;
    out.emplace_back(name + ".forward", e->forward(x));
    out.emplace_back(name + ".concentrations", e->concentrations(x));
    put_scores(out, name, e->score(x, std::nullopt, ev_metrics, 0, &mean), mean);
    const auto u = e->uncertainty(x);
    out.emplace_back(name + ".uncertainty.probs", u.probs);
    out.emplace_back(name + ".uncertainty.vacuity", u.vacuity);
    out.emplace_back(name + ".uncertainty.predictive_entropy", u.predictive_entropy);
    out.emplace_back(name + ".uncertainty.expected_entropy", u.expected_entropy);
    out.emplace_back(name + ".uncertainty.bald", u.bald);
  }
  return out;
}

/// Tolerances: sample / score of the sampled heads are the same arithmetic on both sides (float64 in a
/// fixed order, rounded to float32), so they must agree to a float32 ulp or so; forward is each torch
/// version's own float32 convolution; the evidential closed form is float64 torch ops rounded to float32.
double tolerance(const std::string& key) {
  if (key.find(".forward") != std::string::npos || key.find(".concentrations") != std::string::npos) return 1e-5;
  const std::string tail = ".sample";  // the samples: bit-identical by construction
  if (key.size() >= tail.size() && key.compare(key.size() - tail.size(), tail.size(), tail) == 0) return 0.0;
  return 2e-6;
}

int compare(const NamedTensors& mine, const NamedTensors& theirs, const std::string& what) {
  std::map<std::string, at::Tensor> t(theirs.begin(), theirs.end());
  int bad = 0, exact = 0;
  std::string close;
  for (const auto& kv : theirs) {
    const bool here = std::any_of(mine.begin(), mine.end(), [&](const auto& m) { return m.first == kv.first; });
    if (!here) {
      std::cout << "  MISSING here, present in " << what << ": " << kv.first << "\n";
      ++bad;
    }
  }
  for (const auto& [key, a] : mine) {
    if (key == "x2" || key == "x3") continue;
    const auto it = t.find(key);
    if (it == t.end()) {
      std::cout << "  MISSING in " << what << ": " << key << "\n";
      ++bad;
      continue;
    }
    const at::Tensor x = a.to(at::kDouble), y = it->second.to(at::kDouble);
    if (x.sizes() != y.sizes()) {
      std::cout << "  SHAPE " << key << ": " << x.sizes() << " vs " << y.sizes() << "\n";
      ++bad;
      continue;
    }
    // non-finite values (BalEntAcq's -inf) must sit at the same places with the same values
    const auto fx = at::isfinite(x), fy = at::isfinite(y);
    const bool same_nonfinite = at::equal(fx, fy) && at::equal(x.masked_select(~fx), y.masked_select(~fy));
    const auto xf = x.masked_select(fx), yf = y.masked_select(fx);
    const double tol = tolerance(key);
    const double err = xf.numel() ? ((xf - yf).abs() / (1.0 + yf.abs())).max().item<double>() : 0.0;
    if (!same_nonfinite || err > tol) {
      std::cout << "  DIFF " << key << ": max relative difference " << err << " (tolerance " << tol << ")"
                << (same_nonfinite ? "" : ", non-finite values differ") << "\n";
      ++bad;
    } else if (err == 0.0) {
      ++exact;
    } else {
      std::ostringstream os;
      os << " " << key << " (" << err << ")";
      close += os.str();
    }
  }
  std::cout << what << ": " << mine.size() - 2 << " outputs compared, " << exact << " bit-identical, " << bad
            << " mismatches\n";
  if (!close.empty()) std::cout << "  within tolerance, not bit-identical:" << close << "\n";
  return bad;
}

at::Tensor find(const NamedTensors& t, const std::string& key) {
  for (const auto& kv : t)
    if (kv.first == key) return kv.second;
  throw Error(ErrorKind::Value, "no tensor '" + key + "'");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: heads_roundtrip DIR\n";
    return 2;
  }
  const std::string dir = argv[1];
  torch::set_num_threads(1);
  int bad = 0;
  try {
    // 1. Python -> C++
    Heads py;
    for (auto& [name, mod] : py.all()) load_head_weights(*mod, dir + "/py_" + name + ".pt");
    const NamedTensors expected = load_tensors(dir + "/py_outputs.pt");
    const NamedTensors mine = outputs(py, find(expected, "x2"), find(expected, "x3"));
    bad += compare(mine, expected, "C++ heads with Python's weights vs Python's outputs");
    try {
      MCDropoutHead h(6, 4, 0.3, 2);
      load_head_weights(*h, dir + "/py_mc2_ordereddict.pt");
      std::cout << "  (LibTorch read Python's OrderedDict state_dict directly)\n";
    } catch (const Error& e) {
      const bool clear = std::string(e.what()).find("dict(module.state_dict())") != std::string::npos;
      std::cout << "  raw OrderedDict state_dict: " << (clear ? "clear error" : "UNCLEAR error") << "\n";
      bad += clear ? 0 : 1;
    }
    // 2. C++ -> Python: fresh random heads and inputs
    torch::manual_seed(20261128);
    Heads own;
    {
      torch::NoGradGuard no_grad;
      for (auto& [name, mod] : own.all())  // non-zero biases, so that a transposed or dropped bias shows
        for (auto& p : mod->named_parameters()) p.value().normal_(0.0, 0.7);
    }
    for (auto& [name, mod] : own.all()) save_head_weights(*mod, dir + "/cpp_" + name + ".pt");
    const auto x2 = torch::randn({2, 6, 5, 7});
    const auto x3 = torch::randn({2, 6, 3, 4, 5});
    save_tensors(dir + "/cpp_outputs.pt", outputs(own, x2, x3));
    // the files load back in C++ too
    Heads again;
    for (auto& [name, mod] : again.all()) load_head_weights(*mod, dir + "/cpp_" + name + ".pt");
    bad += compare(outputs(again, x2, x3), load_tensors(dir + "/cpp_outputs.pt"), "C++ reload");
    std::cout << "wrote " << own.all().size() << " heads and their outputs to " << dir << "\n";
  } catch (const std::exception& e) {
    std::cout << "ERROR: " << e.what() << "\n";
    return 1;
  }
  return bad == 0 ? 0 : 1;
}
