// Front doors of labelwise/propagation: certified auto-labelling, confident-learning label issues and
// the exact binomial tools. Validate, then run the CPU loops (src/cpu/propagation_cpu.cpp).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "labelwise/detail/incomplete_beta.hpp"
#include "labelwise/propagation/binomial.hpp"
#include "labelwise/propagation/certified.hpp"
#include "labelwise/propagation/label_issues.hpp"
#include "labelwise/uncertainty/metrics.hpp"  // normalization_tolerance
#include "propagation_backend.hpp"

namespace labelwise {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

/// A number in an error message: 6 significant digits, as check() streams them (1e-06, 0.001).
std::string num(double v) { return detail::concat(v); }

bool is_float(DType t) { return t == DType::Float32 || t == DType::Float64; }
bool is_label_dtype(DType t) { return t == DType::Int64 || t == DType::Int32 || t == DType::UInt8; }

void check_unit_interval(double v, const char* what) {
  check(std::isfinite(v) && v > 0.0 && v < 1.0, ErrorKind::Value, what, ": expected a value in (0, 1), got ", num(v));
}

/// CUDA inputs: these functions are CPU-only for now (documented), so say so instead of copying.
void check_cpu(const TensorView& v, const char* fn, const char* what) {
  check(v.device.is_cpu(), ErrorKind::Type, what, ": is on ", v.device.str(), "; ", fn,
        " runs on the CPU only (its CUDA path is not implemented yet): pass CPU arrays, e.g. x.cpu()");
}

std::string shape_str(const std::vector<std::int64_t>& s) { return TensorView(nullptr, DType::Float32, s).shape_str(); }

/// A probability tensor [N, C, *spatial] (class axis named): its label map and strides.
struct Probs {
  detail::MapLayout map;
  detail::Strided view;
  std::int64_t class_stride = 0;
  int C = 0;
  int class_axis = 0;
  double tol = 0.0;
  std::vector<std::int64_t> map_shape;
};

/// x's layout, validated; the data pointer too unless `shape_only` (auto_label_shapes reads no values).
Probs describe_probs(const TensorView& x, int class_axis, const char* what, bool shape_only = false) {
  check(is_float(x.dtype), ErrorKind::Type, what, ": expected dtype float32 or float64 (probabilities), got ",
        dtype_name(x.dtype));
  check(x.ndim >= 2, ErrorKind::Value, what, ": expected rank >= 2 ([N, C] or [N, C, *spatial]), got shape ",
        x.shape_str());
  check(class_axis >= -x.ndim && class_axis < x.ndim, ErrorKind::Value, "class_axis: axis ", class_axis,
        " is out of range for ", what, " of rank ", x.ndim);
  Probs P;
  P.class_axis = class_axis < 0 ? class_axis + x.ndim : class_axis;
  const std::int64_t total = x.checked_numel(what);
  check(total > 0, ErrorKind::Value, what, ": is empty (shape ", x.shape_str(), ")");
  check(shape_only || x.data != nullptr, ErrorKind::Value, what, ": data pointer is null");
  const std::int64_t C = x.shape[P.class_axis];
  check(C >= 2, ErrorKind::Value, what, ": the class axis (axis ", P.class_axis, ") has ", C,
        " entry; at least 2 classes are needed (shape ", x.shape_str(), ")");
  check(C <= std::numeric_limits<int>::max(), ErrorKind::Value, what, ": more than 2^31-1 classes");
  P.C = static_cast<int>(C);
  P.class_stride = x.strides[P.class_axis];
  P.view.data = x.data;
  P.view.dtype = x.dtype;
  P.map.count = 1;
  for (int d = 0; d < x.ndim; ++d) {
    if (d == P.class_axis) continue;
    P.map.shape[P.map.ndim] = x.shape[d];
    P.view.stride[P.map.ndim] = x.strides[d];
    ++P.map.ndim;
    P.map.count *= x.shape[d];
    P.map_shape.push_back(x.shape[d]);
  }
  P.map.per_image = P.map.count / P.map.shape[0];
  P.tol = normalization_tolerance(x.dtype);
  return P;
}

detail::Strided strided(const TensorView& v) {
  detail::Strided s;
  s.data = v.data;
  s.dtype = v.dtype;
  for (int d = 0; d < v.ndim; ++d) s.stride[d] = v.strides[d];
  return s;
}

/// The per-unit pass over one probability tensor (calibration or pool), with its optional confidence.
detail::UnitJob unit_job(const Probs& X, const TensorView* confidence, bool confidence_per_image) {
  detail::UnitJob job;
  job.map = X.map;
  job.probs = X.view;
  job.class_stride = X.class_stride;
  job.C = X.C;
  job.tol = X.tol;
  if (confidence) {
    job.confidence = strided(*confidence);
    job.image_confidence = confidence_per_image;
  }
  return job;
}

std::string unit_str(const detail::MapLayout& m, std::int64_t unit) {
  std::string s;
  for (int d = m.ndim - 1; d >= 0; --d) {
    s = std::to_string(unit % m.shape[d]) + (s.empty() ? "" : ", ") + s;
    unit /= m.shape[d];
  }
  return "[" + s + "]";
}

/// labels_dtype: the labels' dtype where the pass read labels (uint8 cannot hold the -1 that marks an
/// unlabelled unit, so its message says so instead of offering -1).
[[noreturn]] void throw_unit_failure(const detail::UnitFailure& f, const Probs& P, const char* probs_name,
                                     const char* conf_name, const char* labels_name,
                                     DType labels_dtype = DType::Int64) {
  const std::string at = unit_str(P.map, f.unit);
  switch (f.status) {
    case detail::kUnitNonFinite:
      throw Error(ErrorKind::Value, std::string(probs_name) + ": item " + at + " contains NaN or Inf");
    case detail::kUnitNegative:
      throw Error(ErrorKind::Value, std::string(probs_name) + ": item " + at + " contains a negative probability");
    case detail::kUnitUnnormalised:
      throw Error(ErrorKind::Value, std::string(probs_name) + ": item " + at +
                                        " has probabilities that do not sum to 1 over the class axis (tolerance " +
                                        num(P.tol) + ")");
    case detail::kUnitBadLabel:
      throw Error(ErrorKind::Value, std::string(labels_name) + ": entry " + at + " is " + std::to_string(f.value) +
                                        "; expected a class in [0, " + std::to_string(P.C) +
                                        (labels_dtype == DType::UInt8
                                             ? ") (uint8 labels cannot hold -1: pass int32 / int64 labels to mark "
                                               "unlabelled items with -1)"
                                             : ") or -1 (not labelled)"));
    case detail::kUnitNaNConfidence:
      throw Error(ErrorKind::Value, std::string(conf_name) + ": entry " + at + " is NaN");
    case detail::kUnitNaNImageMean:
      throw Error(ErrorKind::Value, std::string(conf_name) + ": the mean confidence of image [" +
                                        std::to_string(f.value) + "] is NaN (it mixes +inf and -inf voxels)");
    default:
      throw Error(ErrorKind::Runtime, std::string(probs_name) + ": item " + at + " failed with status " +
                                          std::to_string(f.status));
  }
}

struct Scored {
  double score;
  std::uint8_t error;
};

/// The largest k >= k_ok with P(Bin(n, alpha) <= k) <= delta (k_ok is known to satisfy it).
std::int64_t max_allowed_errors(std::int64_t n, std::int64_t k_ok, double alpha, double delta) {
  std::int64_t lo = k_ok, hi = n;  // cdf(n) = 1 > delta
  while (hi - lo > 1) {
    const std::int64_t mid = lo + (hi - lo) / 2;
    if (detail::binomial_cdf(mid, n, alpha) <= delta) lo = mid;
    else hi = mid;
  }
  return lo;
}

/// One scan's data: the calibration units' distinct scores (the cuts of the pool grid), the
/// calibration counts at each cut, and the pool units counted between the cuts.
struct Calibration {
  detail::PoolGrid grid;
  std::vector<std::int64_t> J, K;  // [cut.size()]: calibration units, and wrong ones, with score >= cut[i]
  std::int64_t n = 0;
  // Calibration counts of a pool unit in interval i (units scoring at least as high as it does).
  std::int64_t J_at(std::int64_t i) const { return i == 0 ? 0 : J[i - 1]; }
  std::int64_t K_at(std::int64_t i) const { return i == 0 ? 0 : K[i - 1]; }
};

/// Sorts the calibration units and sets up the grid (its pool counts zeroed).
Calibration calibrate(std::vector<Scored>& units) {
  std::sort(units.begin(), units.end(), [](const Scored& a, const Scored& b) { return a.score > b.score; });
  Calibration cal;
  cal.n = static_cast<std::int64_t>(units.size());
  std::int64_t K = 0;
  for (std::size_t u = 0; u < units.size(); ++u) {
    K += units[u].error;
    if (u + 1 < units.size() && units[u + 1].score == units[u].score) continue;  // inside a run of ties
    cal.grid.cut.push_back(units[u].score);
    cal.J.push_back(static_cast<std::int64_t>(u + 1));
    cal.K.push_back(K);
  }
  cal.grid.reset();
  return cal;
}

/// The smallest n whose Clopper–Pearson bound after 0 errors is <= alpha (any size up to 4e18: the
/// certificates quote it in their "calibration set too small" reasons; min_certifiable_count limits
/// it to 2^50). 1 - delta^(1/n) <= alpha <=> n >= ln(delta) / ln(1 - alpha); the rounding is fixed by
/// direct checks (the k = 0 bound is a closed form, exact at any n).
std::int64_t certifiable_count(double alpha, double delta) {
  const double guess = std::ceil(std::log(delta) / std::log1p(-alpha));
  check(guess < 4e18, ErrorKind::Value, "target_error: ", num(alpha), " is too small to certify with any n");
  std::int64_t n = std::max<std::int64_t>(1, static_cast<std::int64_t>(guess));
  while (detail::clopper_pearson_upper(0, n, delta) > alpha) ++n;
  while (n > 1 && detail::clopper_pearson_upper(0, n - 1, delta) <= alpha) --n;
  return n;
}

/// The fixed-sequence scan over the pool's own confidences (include/labelwise/propagation/certified.hpp).
ThresholdCertificate scan(const Calibration& cal, double alpha, double delta, std::int64_t scan_start,
                          const std::string& plural) {
  ThresholdCertificate c;
  c.target_error = alpha;
  c.delta = delta;
  const std::int64_t n = cal.n;
  c.min_calibration = certifiable_count(alpha, delta);
  const std::int64_t j0 = std::max(c.min_calibration, scan_start);
  c.n_calibration = n;
  c.scan_start = j0;
  const std::string settings = "target_error=" + num(alpha) + " at delta=" + num(delta);
  if (n == 0) {
    c.reason = "no labelled calibration " + plural + ": nothing can be certified";
    return c;
  }
  if (n < c.min_calibration) {
    c.reason = "calibration set too small: " + std::to_string(n) + " labelled calibration " + plural +
               ", but certifying " + settings + " needs at least " + std::to_string(c.min_calibration) +
               " (all of them right); nothing can be certified at this size";
    return c;
  }
  if (n < j0) {
    c.reason = "calibration set too small for scan_start: " + std::to_string(n) + " labelled calibration " + plural +
               " < scan_start = " + std::to_string(j0) + "; nothing can be certified";
    return c;
  }
  const detail::PoolGrid& g = cal.grid;
  std::int64_t pool = 0;
  for (const std::int64_t v : g.count) pool += v;
  if (pool == 0) {
    c.reason = "no pool " + plural + ": nothing to certify";
    return c;
  }
  // Start at the first candidate (pool confidence) with at least t = max(j0, min(2 j0, n / 2))
  // calibration units at or above it (step 2 of certified.hpp): with fewer than j0 no test could pass,
  // and a first test on about 2 j0 units tolerates a stray wrong label among the most confident.
  const std::int64_t t = std::max(j0, std::min(2 * j0, n / 2));
  c.start_rank = 0;
  const std::int64_t m = static_cast<std::int64_t>(g.cut.size());
  std::int64_t i = 0, seen = g.count[0];
  while (i < m && (g.count[i] == 0 || cal.J_at(i) < t)) seen += g.count[++i];
  if (g.count[i] == 0 || cal.J_at(i) < t) {
    c.reason = "fewer than " + std::to_string(t) + " calibration units score at least as high as any pool " + plural +
               " (the scan's first test needs " + std::to_string(t) +
               "): nothing can be certified (the pool is more confident than the calibration set)";
    return c;
  }
  const std::int64_t k = seen;
  c.start_rank = k;
  std::int64_t last = -1, k_allowed = -1;
  for (; i <= m; ++i) {
    if (g.count[i] == 0) continue;  // no pool confidence here: no threshold to test
    const std::int64_t J = cal.J_at(i), K = cal.K_at(i);
    if (K > k_allowed) {  // K <= k_allowed passes: the binomial CDF at K falls as J grows
      if (detail::binomial_cdf(K, J, alpha) > delta) {  // J >= t >= 1 from the start on
        if (last < 0) {
          c.reason = "the scan starts at the pool's " + std::to_string(k) + " most confident " + plural + ", and the " +
                     std::to_string(J) + " calibration " + plural + " scoring at least as high contain " + std::to_string(K) +
                     " wrong: Clopper-Pearson bound " + num(detail::clopper_pearson_upper(K, J, delta)) + " > " +
                     settings + "; nothing can be certified at this calibration size (more calibration data, "
                     "a larger target_error or a better model are needed)";
        }
        break;
      }
      k_allowed = max_allowed_errors(J, K, alpha, delta);
    }
    last = i;
  }
  if (last < 0) return c;
  c.certified = true;
  c.threshold = g.min_score[last];
  c.n_calibration_accepted = cal.J_at(last);
  c.calibration_errors = cal.K_at(last);
  c.bound = detail::clopper_pearson_upper(c.calibration_errors, c.n_calibration_accepted, delta);
  return c;
}

/// The per-class scan: every class c on its own units at delta / C; returns the summary certificate
/// (include/labelwise/propagation/certified.hpp, AutoLabelResult::certificate) and fills `classes`.
ThresholdCertificate per_class_scan(const std::vector<Calibration>& by_class, double alpha, double delta,
                                    std::int64_t scan_start, const char* plural,
                                    std::vector<ThresholdCertificate>& classes) {
  const int C = static_cast<int>(by_class.size());
  // Bonferroni over the classes the pool predicts (fixed given the pool): a class with no pool unit
  // has nothing to certify and no test.
  int tested = 0;
  for (const Calibration& cal : by_class)
    for (const std::int64_t v : cal.grid.count)
      if (v > 0) {
        ++tested;
        break;
      }
  const double class_delta = delta / std::max(tested, 1);
  ThresholdCertificate s;
  s.target_error = alpha;
  s.delta = delta;
  s.bound = kNaN;
  std::string reasons;
  classes.clear();
  for (int c = 0; c < C; ++c) {
    classes.push_back(scan(by_class[c], alpha, class_delta, scan_start,
                           std::string(plural) + " predicted as class " + std::to_string(c)));
    const ThresholdCertificate& k = classes.back();
    s.n_calibration += k.n_calibration;
    s.min_calibration = k.min_calibration;
    s.scan_start = k.scan_start;
    if (k.certified) {
      s.certified = true;
      s.n_calibration_accepted += k.n_calibration_accepted;
      s.calibration_errors += k.calibration_errors;
      s.bound = std::isnan(s.bound) ? k.bound : std::max(s.bound, k.bound);
    } else {
      reasons += (reasons.empty() ? "" : "; ") + std::string("class ") + std::to_string(c) + ": " + k.reason;
    }
  }
  if (!s.certified)
    s.reason = "per_class: no class could be certified (each of the " + std::to_string(tested) +
               " classes predicted in the pool at delta / " + std::to_string(tested) + " = " + num(class_delta) +
               "): " + reasons;
  return s;
}

/// Calls fn(flat index, element offset) over the view's elements in row-major order (any strides).
template <typename Fn>
void for_each_offset(const TensorView& v, Fn&& fn) {
  const std::int64_t n = v.numel();
  std::vector<std::int64_t> idx(static_cast<std::size_t>(v.ndim), 0);
  std::int64_t off = 0;
  for (std::int64_t u = 0; u < n; ++u) {
    fn(u, off);
    for (int d = v.ndim - 1; d >= 0; --d) {
      off += v.strides[d];
      if (++idx[d] < v.shape[d]) break;
      off -= v.strides[d] * v.shape[d];
      idx[d] = 0;
    }
  }
}

}  // namespace

// ---- binomial tools ----------------------------------------------------------------------------

namespace {
/// The largest a + b (and binomial n) the float64 incomplete beta is evaluated for: measured against
/// scipy, its absolute error is below 1e-7 up to 2^51 and total (0.5) from 2^52 on.
constexpr double kMaxBetaTotal = 1125899906842624.0;  // 2^50

void check_beta_total(double total, const char* what) {
  check(total <= kMaxBetaTotal, ErrorKind::Value, what, ": expected at most 2^50 = 1125899906842624, got ", num(total),
        " (beyond about 2^52 the float64 incomplete beta has no correct digit)");
}
}  // namespace

double regularized_incomplete_beta(double x, double a, double b) {
  check(x >= 0.0 && x <= 1.0, ErrorKind::Value, "x: expected a value in [0, 1], got ", num(x));
  check(std::isfinite(a) && a > 0.0, ErrorKind::Value, "a: expected a finite value > 0, got ", num(a));
  check(std::isfinite(b) && b > 0.0, ErrorKind::Value, "b: expected a finite value > 0, got ", num(b));
  check_beta_total(a + b, "a + b");
  double I, Ic;
  detail::ibeta_pair(x, 1.0 - x, a, b, &I, &Ic);
  return I;
}

double beta_quantile(double p, double a, double b) {
  check(p >= 0.0 && p <= 1.0, ErrorKind::Value, "p: expected a value in [0, 1], got ", num(p));
  check(std::isfinite(a) && a > 0.0, ErrorKind::Value, "a: expected a finite value > 0, got ", num(a));
  check(std::isfinite(b) && b > 0.0, ErrorKind::Value, "b: expected a finite value > 0, got ", num(b));
  check_beta_total(a + b, "a + b");
  return detail::ibeta_inverse(p, 1.0 - p, a, b);
}

double binomial_cdf(std::int64_t k, std::int64_t n, double theta) {
  check(n >= 0, ErrorKind::Value, "n: expected n >= 0, got ", n);
  check_beta_total(static_cast<double>(n), "n");
  check(theta >= 0.0 && theta <= 1.0, ErrorKind::Value, "theta: expected a value in [0, 1], got ", num(theta));
  return detail::binomial_cdf(k, n, theta);
}

double clopper_pearson_upper(std::int64_t errors, std::int64_t n, double delta) {
  check(n >= 0, ErrorKind::Value, "n: expected n >= 0, got ", n);
  check_beta_total(static_cast<double>(n), "n");
  check(errors >= 0 && errors <= n, ErrorKind::Value, "errors: expected 0 <= errors <= n = ", n, ", got ", errors);
  check_unit_interval(delta, "delta");
  return detail::clopper_pearson_upper(errors, n, delta);
}

std::int64_t min_certifiable_count(double target_error, double delta) {
  check_unit_interval(target_error, "target_error");
  check_unit_interval(delta, "delta");
  const std::int64_t n = certifiable_count(target_error, delta);
  check(static_cast<double>(n) <= kMaxBetaTotal, ErrorKind::Value, "target_error: ", num(target_error), " at delta ",
        num(delta), " needs more than 2^50 calibration units (", n, "), beyond the binomial tools' domain");
  return n;
}

// ---- certified auto-labelling -----------------------------------------------------------------

const char* accept_unit_name(AcceptUnit unit) {
  switch (unit) {
    case AcceptUnit::Item: return "item";
    case AcceptUnit::Image: return "image";
  }
  throw Error(ErrorKind::Value, "unit: unknown accept unit id " + std::to_string(static_cast<int>(unit)));
}

AcceptUnit accept_unit_from_name(const std::string& name) {
  if (name == "item") return AcceptUnit::Item;
  if (name == "image") return AcceptUnit::Image;
  throw Error(ErrorKind::Value, "unit: expected 'item' or 'image', got '" + name + "'");
}

ThresholdCertificate certify_threshold(const TensorView& calib_confidence, const TensorView& calib_errors,
                                       const TensorView& pool_confidence, double target_error, double delta,
                                       std::int64_t scan_start) {
  check_unit_interval(target_error, "target_error");
  check_unit_interval(delta, "delta");
  check(scan_start >= 0, ErrorKind::Value, "scan_start: expected >= 0 (0 = min_certifiable_count), got ", scan_start);
  check_cpu(calib_confidence, "certify_threshold", "calib_confidence");
  check_cpu(calib_errors, "certify_threshold", "calib_errors");
  check_cpu(pool_confidence, "certify_threshold", "pool_confidence");
  for (const auto& [v, what] : {std::pair<const TensorView*, const char*>{&calib_confidence, "calib_confidence"},
                                {&pool_confidence, "pool_confidence"}})
    check(is_float(v->dtype), ErrorKind::Type, what, ": expected dtype float32 or float64, got ", dtype_name(v->dtype));
  check(is_label_dtype(calib_errors.dtype) || calib_errors.dtype == DType::Bool, ErrorKind::Type,
        "calib_errors: expected dtype bool, uint8, int32 or int64, got ", dtype_name(calib_errors.dtype));
  check(calib_errors.sizes() == calib_confidence.sizes(), ErrorKind::Value, "calib_errors: expected shape ",
        calib_confidence.shape_str(), " like calib_confidence, got ", calib_errors.shape_str());
  const std::int64_t n = calib_confidence.checked_numel("calib_confidence");
  check(n == 0 || calib_confidence.data, ErrorKind::Value, "calib_confidence: data pointer is null");
  check(n == 0 || calib_errors.data, ErrorKind::Value, "calib_errors: data pointer is null");
  const std::int64_t n_pool = pool_confidence.checked_numel("pool_confidence");
  check(n_pool == 0 || pool_confidence.data, ErrorKind::Value, "pool_confidence: data pointer is null");
  std::vector<Scored> units(static_cast<std::size_t>(n));
  for_each_offset(calib_confidence, [&](std::int64_t u, std::int64_t off) {
    const double s = detail::read_float(calib_confidence.data, calib_confidence.dtype, off);
    check(!std::isnan(s), ErrorKind::Value, "calib_confidence: entry [", u, "] is NaN");
    units[static_cast<std::size_t>(u)].score = s;
  });
  for_each_offset(calib_errors, [&](std::int64_t u, std::int64_t off) {
    std::int64_t e = 0;
    switch (calib_errors.dtype) {
      case DType::Int64: e = static_cast<const std::int64_t*>(calib_errors.data)[off]; break;
      case DType::Int32: e = static_cast<const std::int32_t*>(calib_errors.data)[off]; break;
      default: e = static_cast<const std::uint8_t*>(calib_errors.data)[off]; break;
    }
    check(e == 0 || e == 1, ErrorKind::Value, "calib_errors: entry [", u, "] is ", e,
          "; expected 0 (right) or 1 (wrong)");
    units[static_cast<std::size_t>(u)].error = static_cast<std::uint8_t>(e);
  });
  Calibration cal = calibrate(units);
  for_each_offset(pool_confidence, [&](std::int64_t u, std::int64_t off) {
    const double s = detail::read_float(pool_confidence.data, pool_confidence.dtype, off);
    check(!std::isnan(s), ErrorKind::Value, "pool_confidence: entry [", u, "] is NaN");
    cal.grid.add(s);
  });
  return scan(cal, target_error, delta, scan_start, "items");
}

std::vector<std::vector<std::int64_t>> auto_label_shapes(const TensorView& pool_probs, const CertifyOptions& options) {
  const Probs P = describe_probs(pool_probs, options.class_axis, "pool_probs", true);
  std::vector<std::int64_t> acc = P.map_shape;
  if (options.unit == AcceptUnit::Image) acc = {P.map.shape[0]};
  return {acc, P.map_shape};
}

AutoLabelResult certified_auto_label(const TensorView& pool_probs, const TensorView& calib_probs,
                                     const TensorView& calib_labels, const TensorView& accepted,
                                     const TensorView& labels, const CertifyOptions& opt) {
  constexpr const char* fn = "certified_auto_label";
  // ---- arguments
  check_unit_interval(opt.target_error, "target_error");
  check_unit_interval(opt.delta, "delta");
  check(opt.scan_start >= 0, ErrorKind::Value, "scan_start: expected >= 0 (0 = min_certifiable_count), got ",
        opt.scan_start);
  const bool image_unit = opt.unit == AcceptUnit::Image;
  check(image_unit || opt.unit == AcceptUnit::Item, ErrorKind::Value, "unit: unknown accept unit id ",
        static_cast<int>(opt.unit));
  if (image_unit) {
    check(!std::isnan(opt.max_voxel_error), ErrorKind::Value,
          "max_voxel_error: required with unit=image (the fraction of mislabelled voxels above which a "
          "calibration image counts as wrong, in [0, 1)), but it is not set");
    check(std::isfinite(opt.max_voxel_error) && opt.max_voxel_error >= 0.0 && opt.max_voxel_error < 1.0,
          ErrorKind::Value, "max_voxel_error: unit=image needs the fraction of mislabelled voxels above which a "
          "calibration image counts as wrong, in [0, 1); got ", num(opt.max_voxel_error));
  } else {
    check(std::isnan(opt.max_voxel_error), ErrorKind::Value,
          "max_voxel_error: only used with unit=image (whole images), but unit=item");
  }
  check(!(image_unit && opt.per_class), ErrorKind::Value,
        "per_class: only with unit=item (a whole image has no single predicted class)");
  const bool has_conf = is_given(opt.pool_confidence);
  check(has_conf == is_given(opt.calib_confidence), ErrorKind::Value, has_conf ? "calib_confidence" : "pool_confidence",
        ": pass both pool_confidence and calib_confidence, or neither (then the maximum class probability is used)");
  for (const auto& [v, what] : {std::pair<const TensorView*, const char*>{&pool_probs, "pool_probs"},
                                {&calib_probs, "calib_probs"},
                                {&calib_labels, "calib_labels"},
                                {&accepted, "accepted"},
                                {&labels, "labels"}})
    check_cpu(*v, fn, what);
  if (has_conf) {
    check_cpu(opt.pool_confidence, fn, "pool_confidence");
    check_cpu(opt.calib_confidence, fn, "calib_confidence");
  }
  const Probs P = describe_probs(pool_probs, opt.class_axis, "pool_probs");
  const Probs Q = describe_probs(calib_probs, opt.class_axis, "calib_probs");
  check(calib_probs.ndim == pool_probs.ndim, ErrorKind::Value, "calib_probs: expected rank ", pool_probs.ndim,
        " like pool_probs (shape ", pool_probs.shape_str(), "), got shape ", calib_probs.shape_str());
  check(Q.C == P.C, ErrorKind::Value, "calib_probs: has ", Q.C, " classes on axis ", Q.class_axis,
        " but pool_probs has ", P.C, " (shape ", calib_probs.shape_str(), " vs ", pool_probs.shape_str(), ")");
  check(is_label_dtype(calib_labels.dtype), ErrorKind::Type, "calib_labels: expected dtype int64, int32 or uint8, got ",
        dtype_name(calib_labels.dtype));
  check(calib_labels.sizes() == Q.map_shape, ErrorKind::Value, "calib_labels: expected shape ", shape_str(Q.map_shape),
        " (calib_probs without its class axis), got ", calib_labels.shape_str());
  check(calib_labels.data != nullptr, ErrorKind::Value, "calib_labels: data pointer is null");
  auto check_conf = [&](const TensorView& c, const Probs& X, const char* what, const char* probs_name) {
    check(is_float(c.dtype), ErrorKind::Type, what,
          ": expected dtype float32 or float64 (higher = more confident), got ", dtype_name(c.dtype));
    const bool per_image = image_unit && c.ndim == 1 && c.shape[0] == X.map.shape[0];
    check(c.sizes() == X.map_shape || per_image, ErrorKind::Value, what, ": expected shape ", shape_str(X.map_shape),
          " (", probs_name, " without its class axis)",
          image_unit ? " or [" + std::to_string(X.map.shape[0]) + "] (one per image)" : std::string(), ", got ",
          c.shape_str());
    check(c.data != nullptr, ErrorKind::Value, what, ": data pointer is null");
    return per_image && X.map.ndim > 1;  // [N] for a map [N]: per-voxel and per-image coincide
  };
  bool pool_conf_per_image = false, calib_conf_per_image = false;
  if (has_conf) {
    pool_conf_per_image = check_conf(opt.pool_confidence, P, "pool_confidence", "pool_probs");
    calib_conf_per_image = check_conf(opt.calib_confidence, Q, "calib_confidence", "calib_probs");
  }
  const std::vector<std::int64_t> acc_shape = image_unit ? std::vector<std::int64_t>{P.map.shape[0]} : P.map_shape;
  check(accepted.dtype == DType::Bool || accepted.dtype == DType::UInt8, ErrorKind::Type,
        "accepted: expected dtype bool or uint8, got ", dtype_name(accepted.dtype));
  check(accepted.sizes() == acc_shape, ErrorKind::Value, "accepted: expected shape ", shape_str(acc_shape), ", got ",
        accepted.shape_str());
  check(labels.dtype == DType::Int64, ErrorKind::Type, "labels: expected dtype int64, got ", dtype_name(labels.dtype));
  check(labels.sizes() == P.map_shape, ErrorKind::Value, "labels: expected shape ", shape_str(P.map_shape),
        " (pool_probs without its class axis), got ", labels.shape_str());
  check_outputs({{accepted, "accepted"}, {labels, "labels"}},
                {{pool_probs, "pool_probs"}, {calib_probs, "calib_probs"}, {calib_labels, "calib_labels"},
                 {opt.pool_confidence, "pool_confidence"}, {opt.calib_confidence, "calib_confidence"}});

  // ---- calibration pass
  detail::UnitJob cj = unit_job(Q, has_conf ? &opt.calib_confidence : nullptr, calib_conf_per_image);
  cj.labels = strided(calib_labels);
  const std::int64_t M = Q.map.shape[0];
  std::vector<double> c_conf, c_img_conf;
  std::vector<std::int8_t> c_err;
  std::vector<std::int32_t> c_class;
  std::vector<std::int64_t> c_wrong, c_labelled;
  if (image_unit) {
    c_img_conf.resize(M);
    c_wrong.resize(M);
    c_labelled.resize(M);
    cj.image_conf = c_img_conf.data();
    cj.image_wrong = c_wrong.data();
    cj.image_labelled = c_labelled.data();
  } else {
    c_conf.resize(Q.map.count);
    c_err.resize(Q.map.count);
    cj.unit_conf = c_conf.data();
    cj.unit_error = c_err.data();
    if (opt.per_class) {
      c_class.resize(Q.map.count);
      cj.unit_class = c_class.data();
    }
  }
  detail::UnitFailure f = detail::unit_pass_cpu(cj);
  if (f.status) throw_unit_failure(f, Q, "calib_probs", "calib_confidence", "calib_labels", calib_labels.dtype);

  // ---- the calibration units of each scan: all of them, or those predicted as each class
  std::vector<Calibration> cals;
  if (image_unit) {
    std::vector<Scored> units;
    for (std::int64_t i = 0; i < M; ++i) {
      if (c_labelled[i] == 0) continue;
      const bool wrong = static_cast<double>(c_wrong[i]) > opt.max_voxel_error * static_cast<double>(c_labelled[i]);
      units.push_back({c_img_conf[i], static_cast<std::uint8_t>(wrong)});
    }
    cals.push_back(calibrate(units));
  } else {
    std::vector<std::vector<Scored>> units(opt.per_class ? static_cast<std::size_t>(P.C) : 1);
    for (std::int64_t u = 0; u < Q.map.count; ++u)
      if (c_err[u] >= 0) units[opt.per_class ? c_class[u] : 0].push_back({c_conf[u], static_cast<std::uint8_t>(c_err[u])});
    for (auto& g : units) cals.push_back(calibrate(g));
  }

  // ---- pool validation pass, counting the pool's confidences between the calibration cuts
  // (nothing is written to the outputs before every input is validated)
  std::vector<detail::PoolGrid> grids;
  for (const Calibration& c : cals) grids.push_back(c.grid);
  detail::UnitJob pj = unit_job(P, has_conf ? &opt.pool_confidence : nullptr, pool_conf_per_image);
  const std::int64_t N = P.map.shape[0];
  std::vector<double> p_img_conf;
  if (image_unit) {
    p_img_conf.resize(N);
    pj.image_conf = p_img_conf.data();
  } else {
    pj.grids = &grids;
    pj.class_grids = opt.per_class;
  }
  f = detail::unit_pass_cpu(pj);
  if (f.status) throw_unit_failure(f, P, "pool_probs", "pool_confidence", "labels");
  if (image_unit)
    for (const double c : p_img_conf) grids[0].add(c);
  for (std::size_t g = 0; g < cals.size(); ++g) cals[g].grid = std::move(grids[g]);

  // ---- certify
  const char* plural = image_unit ? "images" : (Q.map.ndim > 1 ? "voxels" : "items");
  AutoLabelResult R;
  std::vector<double> thresholds(static_cast<std::size_t>(P.C));  // per predicted class (Item unit)
  if (!opt.per_class) {
    R.certificate = scan(cals[0], opt.target_error, opt.delta, opt.scan_start, plural);
    std::fill(thresholds.begin(), thresholds.end(), R.certificate.threshold);  // NaN when not certified
  } else {
    R.certificate = per_class_scan(cals, opt.target_error, opt.delta, opt.scan_start, plural, R.class_certificates);
    for (int c = 0; c < P.C; ++c) thresholds[c] = R.class_certificates[c].threshold;
  }
  const ThresholdCertificate& cert = R.certificate;

  // ---- write the pool's decisions
  detail::WriteJob wj;
  wj.map = P.map;
  wj.probs = P.view;
  wj.class_stride = P.class_stride;
  wj.C = P.C;
  wj.threshold = thresholds.data();
  std::vector<std::uint8_t> decide;
  if (image_unit) {
    decide.resize(N);
    std::uint8_t* acc = static_cast<std::uint8_t*>(accepted.data);
    for (std::int64_t i = 0; i < N; ++i) {
      decide[i] = cert.certified && p_img_conf[i] >= cert.threshold;
      acc[i * accepted.strides[0]] = decide[i];
    }
    wj.image_accept = decide.data();
  } else {
    if (has_conf) wj.confidence = strided(opt.pool_confidence);
    wj.accepted = accepted.data;
    for (int d = 0; d < accepted.ndim; ++d) wj.accepted_stride[d] = accepted.strides[d];
  }
  wj.labels = static_cast<std::int64_t*>(labels.data);
  for (int d = 0; d < labels.ndim; ++d) wj.labels_stride[d] = labels.strides[d];
  R.n_accepted = detail::write_pass_cpu(wj);
  R.n_pool = image_unit ? N : P.map.count;
  R.coverage = static_cast<double>(R.n_accepted) / static_cast<double>(R.n_pool);
  return R;
}

// ---- label issues (confident learning) -----------------------------------------------------------

std::int64_t label_issues(const TensorView& probs, const TensorView& given_labels, const LabelIssuesOutputs& out,
                          int class_axis) {
  constexpr const char* fn = "label_issues";
  check_cpu(probs, fn, "probs");
  check_cpu(given_labels, fn, "given_labels");
  check(probs.ndim == 2, ErrorKind::Value, "probs: expected rank 2 ([N, C]), got shape ", probs.shape_str());
  const Probs P = describe_probs(probs, class_axis, "probs");
  const std::int64_t N = P.map.shape[0];
  const int C = P.C;
  check(is_label_dtype(given_labels.dtype), ErrorKind::Type, "given_labels: expected dtype int64, int32 or uint8, got ",
        dtype_name(given_labels.dtype));
  check(given_labels.ndim == 1 && given_labels.shape[0] == N, ErrorKind::Value, "given_labels: expected shape [", N,
        "], got ", given_labels.shape_str());
  check(given_labels.data != nullptr, ErrorKind::Value, "given_labels: data pointer is null");
  const TensorView& I = out.indices;
  check(is_given(I), ErrorKind::Value,
        "indices: is required (int64 [N], the capacity for the flagged items), but was not set");
  check_cpu(I, fn, "indices");
  check(I.dtype == DType::Int64, ErrorKind::Type, "indices: expected dtype int64, got ", dtype_name(I.dtype));
  check(I.ndim == 1 && I.shape[0] == N, ErrorKind::Value, "indices: expected shape [", N, "] (capacity), got ",
        I.shape_str());
  const bool want_sc = is_given(out.self_confidence), want_t = is_given(out.thresholds), want_cj = is_given(out.confident_joint);
  if (want_sc) {
    const TensorView& v = out.self_confidence;
    check_cpu(v, fn, "self_confidence");
    check(is_float(v.dtype), ErrorKind::Type, "self_confidence: expected dtype float32 or float64, got ",
          dtype_name(v.dtype));
    check(v.ndim == 1 && v.shape[0] == N, ErrorKind::Value, "self_confidence: expected shape [", N, "], got ",
          v.shape_str());
  }
  if (want_t) {
    const TensorView& v = out.thresholds;
    check_cpu(v, fn, "thresholds");
    check(v.dtype == DType::Float64, ErrorKind::Type, "thresholds: expected dtype float64, got ", dtype_name(v.dtype));
    check(v.ndim == 1 && v.shape[0] == C, ErrorKind::Value, "thresholds: expected shape [", C, "], got ",
          v.shape_str());
  }
  if (want_cj) {
    const TensorView& v = out.confident_joint;
    check_cpu(v, fn, "confident_joint");
    check(v.dtype == DType::Int64, ErrorKind::Type, "confident_joint: expected dtype int64, got ", dtype_name(v.dtype));
    check(v.ndim == 2 && v.shape[0] == C && v.shape[1] == C, ErrorKind::Value, "confident_joint: expected shape [", C,
          ", ", C, "], got ", v.shape_str());
  }
  std::vector<NamedView> outs{{I, "indices"}};
  if (want_sc) outs.push_back({out.self_confidence, "self_confidence"});
  if (want_t) outs.push_back({out.thresholds, "thresholds"});
  if (want_cj) outs.push_back({out.confident_joint, "confident_joint"});
  check_outputs(outs, {{probs, "probs"}, {given_labels, "given_labels"}});

  // Validate (probabilities and labels) and read everything into float64, single-threaded: the class
  // means must not depend on a thread count.
  detail::UnitJob job;
  job.map = P.map;
  job.probs = P.view;
  job.class_stride = P.class_stride;
  job.C = C;
  job.tol = P.tol;
  job.labels = strided(given_labels);
  const detail::UnitFailure f = detail::unit_pass_cpu(job);
  if (f.status) throw_unit_failure(f, P, "probs", "probs", "given_labels", given_labels.dtype);

  auto prob = [&](std::int64_t i, int c) {
    const std::int64_t off = i * P.view.stride[0] + c * P.class_stride;
    return P.view.dtype == DType::Float64 ? static_cast<const double*>(P.view.data)[off]
                                          : static_cast<double>(static_cast<const float*>(P.view.data)[off]);
  };
  auto label = [&](std::int64_t i) -> std::int64_t {
    const std::int64_t off = i * given_labels.strides[0];
    switch (given_labels.dtype) {
      case DType::Int64: return static_cast<const std::int64_t*>(given_labels.data)[off];
      case DType::Int32: return static_cast<const std::int32_t*>(given_labels.data)[off];
      default: return static_cast<const std::uint8_t*>(given_labels.data)[off];
    }
  };
  // 1. per-class thresholds t_j = mean self-confidence of the items labelled j
  std::vector<double> sum(C, 0.0), t(C, kNaN);
  std::vector<std::int64_t> cnt(C, 0);
  for (std::int64_t i = 0; i < N; ++i) {
    const std::int64_t y = label(i);
    if (y < 0) continue;
    sum[y] += prob(i, static_cast<int>(y));
    ++cnt[y];
  }
  for (int j = 0; j < C; ++j)
    if (cnt[j] > 0) t[j] = sum[j] / static_cast<double>(cnt[j]);
  // 2. confident joint; 3. off-diagonal items whose given label is not the model's prediction.
  // The threshold test allows kThresholdSlack for the rounding of the mean: the float64 mean of n equal
  // self-confidences can round above them (5 x 0.98, 7 x 0.9), which would leave a class with no
  // confident member (cleanlab allows the same 1e-6).
  constexpr double kThresholdSlack = 1e-6;
  std::vector<std::int64_t> joint(static_cast<std::size_t>(C) * C, 0);
  std::vector<std::pair<double, std::int64_t>> issues;
  for (std::int64_t i = 0; i < N; ++i) {
    const std::int64_t y = label(i);
    if (y < 0) continue;
    int best = -1;
    double best_p = -1.0;
    for (int j = 0; j < C; ++j) {
      if (!(cnt[j] > 0)) continue;  // no threshold: never a confident true class
      const double p = prob(i, j);
      if (p >= t[j] - kThresholdSlack && p > best_p) {
        best_p = p;
        best = j;
      }
    }
    if (best < 0) continue;
    ++joint[static_cast<std::size_t>(y) * C + best];
    if (best == y) continue;
    const double p_y = prob(i, static_cast<int>(y));
    bool predicted = true;  // is y the model's prediction (the first class of the largest probability)?
    for (int j = 0; j < C && predicted; ++j) {
      const double p = prob(i, j);
      predicted = j < y ? p < p_y : p <= p_y;
    }
    if (!predicted) issues.push_back({p_y, i});
  }
  std::sort(issues.begin(), issues.end());  // self-confidence ascending, ties: lower index
  auto* idx = static_cast<std::int64_t*>(I.data);
  for (std::size_t k = 0; k < issues.size(); ++k) idx[static_cast<std::int64_t>(k) * I.strides[0]] = issues[k].second;
  if (want_sc) {
    const TensorView& v = out.self_confidence;
    for (std::size_t k = 0; k < issues.size(); ++k) {
      const std::int64_t off = static_cast<std::int64_t>(k) * v.strides[0];
      if (v.dtype == DType::Float64) static_cast<double*>(v.data)[off] = issues[k].first;
      else static_cast<float*>(v.data)[off] = static_cast<float>(issues[k].first);
    }
  }
  if (want_t)
    for (int j = 0; j < C; ++j) static_cast<double*>(out.thresholds.data)[j * out.thresholds.strides[0]] = t[j];
  if (want_cj)
    for (int a = 0; a < C; ++a)
      for (int b = 0; b < C; ++b)
        static_cast<std::int64_t*>(out.confident_joint.data)[a * out.confident_joint.strides[0] +
                                                             b * out.confident_joint.strides[1]] =
            joint[static_cast<std::size_t>(a) * C + b];
  return static_cast<std::int64_t>(issues.size());
}

}  // namespace labelwise
