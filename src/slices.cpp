// Slice-to-slice random-walker propagation (include/labelwise/propagation/slices.hpp): validation, the
// sweeps over the intervals between annotated slices (in parallel), and the per-slice random walker
// (Eigen sparse LDLᵀ).
#include <Eigen/SparseCholesky>
#include <Eigen/SparseCore>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "labelwise/detail/parallel_for.hpp"
#include "labelwise/propagation/slices.hpp"

namespace labelwise {
namespace {

/// Strided access to one slice (z, i, j) of a [Z, H, W] view whose slice axis was moved first.
struct Planes {
  const void* data = nullptr;
  DType dtype = DType::Float64;
  std::int64_t Z = 0, H = 0, W = 0;
  std::int64_t sz = 0, si = 0, sj = 0;
  std::int64_t off(std::int64_t z, std::int64_t i, std::int64_t j) const { return z * sz + i * si + j * sj; }
};

Planes planes_of(const TensorView& v, int axis) {
  const int p = axis == 0 ? 1 : 0, q = axis == 2 ? 1 : 2;
  Planes P;
  P.data = v.data;
  P.dtype = v.dtype;
  P.Z = v.shape[axis];
  P.H = v.shape[p];
  P.W = v.shape[q];
  P.sz = v.strides[axis];
  P.si = v.strides[p];
  P.sj = v.strides[q];
  return P;
}

double intensity(const Planes& P, std::int64_t z, std::int64_t i, std::int64_t j) {
  const std::int64_t o = P.off(z, i, j);
  return P.dtype == DType::Float32 ? static_cast<double>(static_cast<const float*>(P.data)[o])
                                   : static_cast<const double*>(P.data)[o];
}

std::int64_t label_at(const Planes& P, std::int64_t z, std::int64_t i, std::int64_t j) {
  return static_cast<const std::int64_t*>(P.data)[P.off(z, i, j)];
}

/// Grady's random walker on slice z: seeds[p] = class or -1; returns probabilities [C][H·W].
std::vector<double> random_walker(const Planes& vol, std::int64_t z, const std::vector<std::int64_t>& seeds,
                                  std::int64_t C, double beta) {
  const std::int64_t H = vol.H, W = vol.W, n = H * W;
  std::vector<double> g(static_cast<std::size_t>(n));
  // Zero mean, unit variance: g = (v - mean) / (sd + 1e-12 · max|v|), the guard relative so that the
  // result does not depend on the volume's units. The values are first scaled by a power of two
  // (exact) into [-2, 2], so that the sums neither overflow (1e307) nor underflow (1e-200).
  double top = 0.0;
  for (std::int64_t i = 0; i < H; ++i)
    for (std::int64_t j = 0; j < W; ++j) {
      g[i * W + j] = intensity(vol, z, i, j);
      top = std::max(top, std::fabs(g[i * W + j]));
    }
  if (top > 0.0) {
    const int e = std::ilogb(top);
    for (double& v : g) v = std::ldexp(v, -e);
    top = std::ldexp(top, -e);
  }
  double mean = 0.0;
  for (double v : g) mean += v;
  mean /= static_cast<double>(n);
  double var = 0.0;
  for (double v : g) var += (v - mean) * (v - mean);
  const double spread = std::sqrt(var / static_cast<double>(n)) + 1e-12 * top;
  const double scale = spread > 0.0 ? 1.0 / spread : 1.0;  // an all-zero slice stays zero
  for (double& v : g) v = (v - mean) * scale;

  std::vector<double> probs(static_cast<std::size_t>(C * n), 0.0);
  std::vector<std::int64_t> unknown(static_cast<std::size_t>(n), -1);  // compact index of unseeded pixels
  std::int64_t nu = 0;
  std::vector<std::uint8_t> present(static_cast<std::size_t>(C), 0);
  for (std::int64_t p = 0; p < n; ++p) {
    if (seeds[p] >= 0) {
      probs[seeds[p] * n + p] = 1.0;
      present[seeds[p]] = 1;
    } else {
      unknown[p] = nu++;
    }
  }
  if (nu == 0) return probs;

  // Reduced Laplacian L_UU (degree on the diagonal, -w off it) and the right-hand sides -L_US·p_S.
  std::vector<Eigen::Triplet<double>> trip;
  trip.reserve(static_cast<std::size_t>(5 * nu));
  std::vector<double> degree(static_cast<std::size_t>(n), 0.0);
  Eigen::MatrixXd rhs = Eigen::MatrixXd::Zero(nu, C);
  auto edge = [&](std::int64_t a, std::int64_t b) {
    const double d = g[a] - g[b];
    const double w = std::exp(-beta * d * d) + 1e-10;  // never 0: the graph stays connected
    degree[a] += w;
    degree[b] += w;
    const std::int64_t ua = unknown[a], ub = unknown[b];
    if (ua >= 0 && ub >= 0) {
      trip.emplace_back(ua, ub, -w);
      trip.emplace_back(ub, ua, -w);
    } else if (ua >= 0) {
      rhs(ua, seeds[b]) += w;
    } else if (ub >= 0) {
      rhs(ub, seeds[a]) += w;
    }
  };
  for (std::int64_t i = 0; i < H; ++i)
    for (std::int64_t j = 0; j + 1 < W; ++j) edge(i * W + j, i * W + j + 1);
  for (std::int64_t i = 0; i + 1 < H; ++i)
    for (std::int64_t j = 0; j < W; ++j) edge(i * W + j, (i + 1) * W + j);
  for (std::int64_t p = 0; p < n; ++p)
    if (unknown[p] >= 0) trip.emplace_back(unknown[p], unknown[p], degree[p]);
  Eigen::SparseMatrix<double> L(nu, nu);
  L.setFromTriplets(trip.begin(), trip.end());
  Eigen::SimplicialLDLT<Eigen::SparseMatrix<double>> solver(L);
  check(solver.info() == Eigen::Success, ErrorKind::Runtime, "propagate_slices: the random-walker system of slice ", z,
        " could not be factorised");
  for (std::int64_t c = 0; c < C; ++c) {
    if (!present[c]) continue;
    const Eigen::VectorXd x = solver.solve(rhs.col(c));
    for (std::int64_t p = 0; p < n; ++p)
      if (unknown[p] >= 0) probs[c * n + p] = std::min(1.0, std::max(0.0, x[unknown[p]]));
  }
  for (std::int64_t p = 0; p < n; ++p) {
    if (unknown[p] < 0) continue;
    double tot = 0.0;
    for (std::int64_t c = 0; c < C; ++c) tot += probs[c * n + p];
    if (tot > 0.0)
      for (std::int64_t c = 0; c < C; ++c) probs[c * n + p] /= tot;
  }
  return probs;
}

/// Seeds from the neighbour's labels and confidence: erosion by `erode` (edge-clamped) and the
/// confidence threshold (erode >= 1). If no pixel survives, erosion 1 without the threshold (so that class
/// boundaries stay unseeded and the walker decides them from the image); only if that leaves nothing
/// either, the whole neighbour mask.
std::vector<std::int64_t> seeds_from(const std::vector<std::int64_t>& lab, const std::vector<double>& conf,
                                     std::int64_t H, std::int64_t W, std::int64_t erode, double min_conf) {
  std::vector<std::int64_t> s(lab.size(), -1);
  std::vector<std::uint8_t> row_ok(lab.size());
  auto select = [&](std::int64_t e, double threshold) {
    // Separable: row_ok[p] = the (2e+1)-pixel row window around p (edge-clamped) has p's label; then the
    // box holds p's label iff every pixel of p's column window is row_ok and has p's label.
    e = std::min(e, std::max(H, W));  // a larger window clamps to the same pixels
    for (std::int64_t i = 0; i < H; ++i)
      for (std::int64_t j = 0; j < W; ++j) {
        const std::int64_t p = i * W + j;
        bool ok = true;
        for (std::int64_t x = std::max<std::int64_t>(0, j - e); x <= std::min(W - 1, j + e) && ok; ++x)
          ok = lab[i * W + x] == lab[p];
        row_ok[p] = ok;
      }
    bool any = false;
    for (std::int64_t i = 0; i < H; ++i)
      for (std::int64_t j = 0; j < W; ++j) {
        const std::int64_t p = i * W + j;
        bool keep = conf[p] >= threshold;
        for (std::int64_t y = std::max<std::int64_t>(0, i - e); y <= std::min(H - 1, i + e) && keep; ++y)
          keep = row_ok[y * W + j] && lab[y * W + j] == lab[p];
        s[p] = keep ? lab[p] : -1;
        any = any || keep;
      }
    return any;
  };
  if (select(erode, min_conf) || select(1, 0.0)) return s;
  return lab;
}

/// argmax (lowest class on ties) and its probability of every pixel of probs [C][n].
void decide(const std::vector<double>& probs, std::int64_t C, std::int64_t n, std::vector<std::int64_t>& lab,
            std::vector<double>& conf) {
  lab.assign(static_cast<std::size_t>(n), 0);
  conf.assign(static_cast<std::size_t>(n), 0.0);
  for (std::int64_t p = 0; p < n; ++p) {
    std::int64_t best = 0;
    for (std::int64_t c = 1; c < C; ++c)
      if (probs[c * n + p] > probs[best * n + p]) best = c;
    lab[p] = best;
    conf[p] = probs[best * n + p];
  }
}

}  // namespace

void propagate_slices(const TensorView& volume, const TensorView& labels,
                      const std::vector<std::int64_t>& labelled_slices, const TensorView& mask,
                      const TensorView& confidence, const SlicePropagationOptions& options) {
  for (const TensorView* v : {&volume, &labels, &mask, &confidence})
    check(v->device.is_cpu(), ErrorKind::Type, "propagate_slices: every array must be on the CPU, got ",
          v->device.str(), " (copy it to the host)");
  check(volume.dtype == DType::Float32 || volume.dtype == DType::Float64, ErrorKind::Type,
        "volume: expected dtype float32 or float64, got ", dtype_name(volume.dtype));
  check(volume.ndim == 3, ErrorKind::Value, "volume: expected rank 3 [Z, H, W], got shape ", volume.shape_str());
  check(volume.checked_numel("volume") > 0, ErrorKind::Value, "volume: empty (shape ", volume.shape_str(), ")");
  check(volume.data != nullptr, ErrorKind::Value, "volume: data pointer is null");
  const std::vector<std::int64_t> shape = volume.sizes();
  const auto same_shape = [&](const TensorView& v, const char* what, DType dt, const char* dts) {
    check(v.dtype == dt, ErrorKind::Type, what, ": expected dtype ", dts, ", got ", dtype_name(v.dtype));
    check(v.sizes() == shape, ErrorKind::Value, what, ": expected volume's shape ", volume.shape_str(), ", got ",
          v.shape_str());
  };
  same_shape(labels, "labels", DType::Int64, "int64");
  check(labels.data != nullptr, ErrorKind::Value, "labels: data pointer is null");
  same_shape(mask, "mask", DType::Int64, "int64");
  same_shape(confidence, "confidence", DType::Float64, "float64");
  check_outputs({{mask, "mask"}, {confidence, "confidence"}}, {{volume, "volume"}, {labels, "labels"}});
  check(options.axis >= -3 && options.axis < 3, ErrorKind::Value, "axis: expected an axis in [-3, 3), got ",
        options.axis);
  check(options.beta > 0.0 && std::isfinite(options.beta), ErrorKind::Value, "beta: expected a finite value > 0, got ",
        options.beta);
  check(options.erode >= 1, ErrorKind::Value, "erode: expected an integer >= 1 (class boundaries are never seeded), got ",
        options.erode);
  check(options.min_confidence >= 0.0 && options.min_confidence <= 1.0, ErrorKind::Value,
        "min_confidence: expected a value in [0, 1], got ", options.min_confidence);
  check(options.num_classes >= 0, ErrorKind::Value, "num_classes: expected an integer >= 0 (0: from the labels), got ",
        options.num_classes);
  const int axis = options.axis < 0 ? options.axis + 3 : options.axis;
  const Planes vol = planes_of(volume, axis), lab = planes_of(labels, axis);
  const Planes out_mask = planes_of(mask, axis), out_conf = planes_of(confidence, axis);
  const std::int64_t Z = vol.Z, H = vol.H, W = vol.W, n = H * W;

  std::vector<std::int64_t> ann(labelled_slices);
  std::sort(ann.begin(), ann.end());
  ann.erase(std::unique(ann.begin(), ann.end()), ann.end());
  check(!ann.empty(), ErrorKind::Value, "labelled_slices: at least one annotated slice is needed");
  check(ann.front() >= 0 && ann.back() < Z, ErrorKind::Value, "labelled_slices: indices must be in [0, ", Z,
        "), got ", ann.front(), "..", ann.back());
  for (std::int64_t z = 0; z < Z; ++z)
    for (std::int64_t i = 0; i < H; ++i)
      for (std::int64_t j = 0; j < W; ++j)
        check(std::isfinite(intensity(vol, z, i, j)), ErrorKind::Value, "volume: NaN or Inf at slice ", z, ", [", i,
              ", ", j, "]");
  std::int64_t max_label = 0;
  for (std::int64_t s : ann)
    for (std::int64_t i = 0; i < H; ++i)
      for (std::int64_t j = 0; j < W; ++j) {
        const std::int64_t v = label_at(lab, s, i, j);
        check(v >= 0, ErrorKind::Value, "labels: annotated slice ", s, " holds class ", v, " at [", i, ", ", j,
              "]; classes must be >= 0");
        max_label = std::max(max_label, v);
      }
  // C probabilities per voxel are kept for each slice being propagated: bound C before allocating
  constexpr std::int64_t kMaxClasses = 65536;
  check(options.num_classes <= kMaxClasses, ErrorKind::Value, "num_classes: at most ", kMaxClasses,
        " (propagate_slices keeps one probability per class and voxel), got ", options.num_classes);
  check(max_label < kMaxClasses, ErrorKind::Value, "labels: class ", max_label,
        " on an annotated slice; propagate_slices keeps one probability per class and voxel and takes at most ",
        kMaxClasses, " classes (remap sparse codes, e.g. an 'ignore' value of 255 costs 256 classes)");
  const std::int64_t C = options.num_classes == 0 ? max_label + 1 : options.num_classes;
  check(max_label < C, ErrorKind::Value, "labels: class ", max_label, " >= num_classes ", C);

  auto write_slice = [&](std::int64_t z, const std::vector<std::int64_t>& m, const std::vector<double>& c) {
    for (std::int64_t i = 0; i < H; ++i)
      for (std::int64_t j = 0; j < W; ++j) {
        static_cast<std::int64_t*>(mask.data)[out_mask.off(z, i, j)] = m[i * W + j];
        static_cast<double*>(confidence.data)[out_conf.off(z, i, j)] = c[i * W + j];
      }
  };
  auto annotated = [&](std::int64_t s) {
    std::vector<std::int64_t> m(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < H; ++i)
      for (std::int64_t j = 0; j < W; ++j) m[i * W + j] = label_at(lab, s, i, j);
    return m;
  };

  // Jobs: the segment below the first annotated slice (one downward sweep), each interval between two
  // annotated slices (both sweeps, mixed), the segment above the last one (one upward sweep).
  struct Job {
    std::int64_t lo, hi;  // annotated slice below (-1: none) and above (Z: none)
  };
  std::vector<Job> jobs;
  jobs.push_back({-1, ann.front()});
  for (std::size_t a = 0; a + 1 < ann.size(); ++a) jobs.push_back({ann[a], ann[a + 1]});
  jobs.push_back({ann.back(), Z});
  detail::parallel_for(static_cast<std::int64_t>(jobs.size()), 1, [&](std::int64_t j0, std::int64_t j1, int) {
    for (std::int64_t jn = j0; jn < j1; ++jn) {
      const Job job = jobs[jn];
      const std::int64_t first = job.lo + 1, count = job.hi - first;  // the slices strictly between
      if (job.lo >= 0) write_slice(job.lo, annotated(job.lo), std::vector<double>(static_cast<std::size_t>(n), 1.0));
      if (count <= 0) continue;
      // Between two annotated slices the first sweep's weighted probabilities are kept and the second
      // sweep mixes and writes each slice as it goes; a one-sided segment writes as it goes (no store).
      const bool both = job.lo >= 0 && job.hi < Z;
      std::vector<double> acc(both ? static_cast<std::size_t>(count * C * n) : 0), weight(both ? count : 0, 0.0);
      const double span = static_cast<double>(job.hi - job.lo);
      std::vector<std::int64_t> m;
      std::vector<double> c, q;
      auto sweep = [&](std::int64_t from, std::int64_t step, bool store) {
        std::vector<std::int64_t> prev = annotated(from);
        std::vector<double> prev_conf(static_cast<std::size_t>(n), 1.0);
        for (std::int64_t z = from + step; z > job.lo && z < job.hi; z += step) {
          const std::vector<std::int64_t> seeds = seeds_from(prev, prev_conf, H, W, options.erode, options.min_confidence);
          detail::poll_interrupt();
          const std::vector<double> p = random_walker(vol, z, seeds, C, options.beta);
          decide(p, C, n, prev, prev_conf);  // this slice's own decision seeds the next one
          if (!both) {
            write_slice(z, prev, prev_conf);
          } else {
            const double w = step > 0 ? static_cast<double>(job.hi - z) / span : static_cast<double>(z - job.lo) / span;
            double* a = &acc[(z - first) * C * n];
            if (store) {
              for (std::int64_t e = 0; e < C * n; ++e) a[e] = w * p[e];
              weight[z - first] = w;
            } else {
              q.resize(static_cast<std::size_t>(C * n));
              const double wz = std::max(weight[z - first] + w, 1e-12);
              for (std::int64_t e = 0; e < C * n; ++e) q[e] = (a[e] + w * p[e]) / wz;
              decide(q, C, n, m, c);
              write_slice(z, m, c);
            }
          }
        }
      };
      if (job.lo >= 0) sweep(job.lo, +1, both);
      if (job.hi < Z) sweep(job.hi, -1, false);
    }
  });
}

}  // namespace labelwise
