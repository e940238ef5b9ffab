// Front doors of labelwise/propagation/spreading.hpp: label spreading and label propagation on a kNN
// graph (src/knn.cpp), in labelwise's symmetric variant or in scikit-learn's (see the header and
// docs/propagation.md). CPU; the sparse products run in parallel over rows, every sum in a fixed
// order, so results never depend on the thread count.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "knn_backend.hpp"
#include "labelwise/core/parallel.hpp"
#include "labelwise/detail/parallel_for.hpp"
#include "labelwise/propagation/spreading.hpp"

namespace labelwise {

namespace {

/// A number in an error message: 6 significant digits, as check() streams them (1e-06, 0.001).
std::string num(double v) { return detail::concat(v); }

/// Σ a[0..n) in NumPy's order (its pairwise summation, numpy/_core/src/umath/loops_utils.h: below 8
/// values one by one; up to 128 in eight interleaved partial sums combined as
/// ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7)), then the rest one by one; above, the two halves
/// split at a multiple of 8), so that sums sklearn takes with np.sum have the same bits here.
/// Where NumPy's pairwise summation splits more than 128 values: half, down to a multiple of 8.
std::int64_t numpy_split(std::int64_t n) { return n / 2 - (n / 2) % 8; }

double numpy_sum(const double* a, std::int64_t n) {
  if (n < 8) {
    double r = -0.0;
    for (std::int64_t i = 0; i < n; ++i) r += a[i];
    return r;
  }
  if (n <= 128) {
    double r[8];
    for (int j = 0; j < 8; ++j) r[j] = a[j];
    std::int64_t i = 8;
    for (; i < n - n % 8; i += 8)
      for (int j = 0; j < 8; ++j) r[j] += a[i + j];
    double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res += a[i];
    return res;
  }
  const std::int64_t n2 = numpy_split(n);
  return numpy_sum(a, n2) + numpy_sum(a + n2, n - n2);
}

/// numpy_sum with the two halves of a long array on two threads (NumPy's own split: the same bits).
double numpy_sum_threads(const double* a, std::int64_t n) {
  if (n < (std::int64_t(1) << 20)) return numpy_sum(a, n);
  const std::int64_t n2 = numpy_split(n);
  double half[2] = {0.0, 0.0};
  detail::parallel_for(2, 1, [&](std::int64_t b, std::int64_t e, int) {
    for (std::int64_t h = b; h < e; ++h) half[h] = h == 0 ? numpy_sum(a, n2) : numpy_sum(a + n2, n - n2);
  });
  return half[0] + half[1];
}

/// Row-compressed sparse matrix with float64 weights.
struct Csr {
  std::vector<std::int64_t> ptr, col;
  std::vector<double> val;
};

std::int64_t read_label(const TensorView& v, std::int64_t i) {
  const std::int64_t off = i * v.strides[0];
  if (v.dtype == DType::Int64) return static_cast<const std::int64_t*>(v.data)[off];
  return static_cast<const std::int32_t*>(v.data)[off];
}

std::vector<std::int64_t> load_labels(const TensorView& labels, std::int64_t* C_out) {
  check(labels.device.is_cpu(), ErrorKind::Type, "labels: is on ", labels.device.str(),
        "; this function runs on the CPU only (its CUDA path is not implemented yet): pass CPU arrays");
  check(labels.dtype == DType::Int64 || labels.dtype == DType::Int32, ErrorKind::Type,
        "labels: expected dtype int64 or int32 (-1 = unlabelled), got ", dtype_name(labels.dtype));
  check(labels.ndim == 1, ErrorKind::Value, "labels: expected rank 1 ([N]), got shape ", labels.shape_str());
  check(labels.shape[0] > 0, ErrorKind::Value, "labels: is empty");
  check(labels.data != nullptr, ErrorKind::Value, "labels: data pointer is null");
  const std::int64_t N = labels.shape[0];
  std::vector<std::int64_t> y(N);
  std::int64_t C = 0, n_lab = 0;
  for (std::int64_t i = 0; i < N; ++i) {
    y[i] = read_label(labels, i);
    check(y[i] >= -1, ErrorKind::Value, "labels: entry ", i, " is ", y[i], "; expected a class >= 0 or -1 (unlabelled)");
    // every class 0 .. max needs a labelled item, so a class >= N cannot be complete (and C = y + 1 would
    // overflow for y = INT64_MAX)
    check(y[i] < N, ErrorKind::Value, "labels: entry ", i, " is ", y[i], "; classes are 0 .. max label and each needs "
          "a labelled item, so a class must be < N = ", N, " (renumber the classes)");
    if (y[i] >= 0) {
      ++n_lab;
      C = std::max(C, y[i] + 1);
    }
  }
  check(n_lab > 0, ErrorKind::Value, "labels: no labelled item (every entry is -1); at least one is needed");
  std::vector<char> seen(C, 0);
  for (std::int64_t i = 0; i < N; ++i)
    if (y[i] >= 0) seen[y[i]] = 1;
  for (std::int64_t c = 0; c < C; ++c)
    check(seen[c], ErrorKind::Value, "labels: class ", c, " has no labelled item (classes are 0 .. max label = ",
          C - 1, "; renumber the classes so that each one has at least one labelled item)");
  *C_out = C;
  return y;
}

enum class Kind { Spreading, Propagation };

SpreadingResult run(Kind kind, const TensorView& features, const TensorView& labels, const TensorView& dist,
                    const TensorView& out_labels, const SpreadingOptions& opt) {
  const char* fn = kind == Kind::Spreading ? "label_spreading" : "label_propagation";
  std::int64_t C = 0;
  const std::vector<std::int64_t> y = load_labels(labels, &C);
  const detail::KnnData data = detail::knn_load(features, "features");
  const std::int64_t N = data.N;
  check(static_cast<std::int64_t>(y.size()) == N, ErrorKind::Value, "labels: expected shape [", N,
        "] (one per row of features), got ", labels.shape_str());
  check(N >= 2, ErrorKind::Value, "features: ", fn, " needs at least 2 rows, got shape ", features.shape_str());
  // sklearn counts the point itself among its k neighbours and accepts k = N (the complete graph).
  const bool sk = opt.variant == SpreadingVariant::Sklearn;
  if (sk)
    check(opt.k >= 1 && opt.k <= N, ErrorKind::Value, "k: expected 1 <= k <= N = ", N,
          " (the sklearn variant counts the point itself), got ", opt.k);
  else
    check(opt.k >= 1 && opt.k < N, ErrorKind::Value, "k: expected 1 <= k < N = ", N, ", got ", opt.k);
  if (kind == Kind::Spreading)
    check(opt.alpha > 0.0 && opt.alpha < 1.0, ErrorKind::Value, "alpha: expected a value in (0, 1), got ",
          num(opt.alpha));
  check(opt.max_iter >= 0, ErrorKind::Value, "max_iter: expected >= 1 (or 0: the default), got ", opt.max_iter);
  const std::int64_t max_iter = opt.max_iter > 0 ? opt.max_iter : (kind == Kind::Spreading ? 30 : 1000);
  check(opt.tol >= 0.0, ErrorKind::Value, "tol: expected a value >= 0, got ", num(opt.tol));
  check(dist.device.is_cpu() && out_labels.device.is_cpu(), ErrorKind::Type, "distributions / labels: expected CPU arrays");
  check(dist.dtype == DType::Float64, ErrorKind::Type, "distributions: expected dtype float64, got ",
        dtype_name(dist.dtype));
  check(dist.ndim == 2 && dist.shape[0] == N && dist.shape[1] == C, ErrorKind::Value,
        "distributions: expected shape [", N, ", ", C, "], got ", dist.shape_str());
  check(out_labels.dtype == DType::Int64, ErrorKind::Type, "out_labels: expected dtype int64, got ",
        dtype_name(out_labels.dtype));
  check(out_labels.ndim == 1 && out_labels.shape[0] == N, ErrorKind::Value, "out_labels: expected shape [", N,
        "], got ", out_labels.shape_str());
  check_outputs({{dist, "distributions"}, {out_labels, "out_labels"}}, {{features, "features"}, {labels, "labels"}});

  const std::int64_t k = opt.k;
  std::vector<std::int64_t> nb(static_cast<std::size_t>(N * k));
  if (k == N) {  // sklearn variant: every point is a neighbour of every point (order is not used below)
    for (std::int64_t i = 0; i < N; ++i)
      for (std::int64_t j = 0; j < N; ++j) nb[i * N + j] = j;
  } else {
    std::vector<double> key(static_cast<std::size_t>(N * k));
    detail::knn_search(data, k, DistanceMetric::Euclidean, sk ? detail::KnnRule::Sklearn : detail::KnnRule::Exact,
                       opt.sklearn_threads, nb.data(), key.data());
  }

  // ---- the iteration matrix
  Csr S;
  S.ptr.assign(N + 1, 0);
  if (sk) {
    if (kind == Kind::Spreading) {
      // sklearn: -laplacian(A, normed=True) with its diagonal zeroed (scipy.sparse.csgraph): w_j =
      // in-degree of j without its self-loop, sqrt'ed (isolated: 1); S_ij = A_ij / w_i / w_j, i != j.
      std::vector<double> w(N, 0.0);
      for (std::int64_t i = 0; i < N; ++i)
        for (std::int64_t a = 0; a < k; ++a)
          if (nb[i * k + a] != i) w[nb[i * k + a]] += 1.0;
      for (std::int64_t j = 0; j < N; ++j) w[j] = w[j] == 0.0 ? 1.0 : std::sqrt(w[j]);
      std::vector<std::int64_t> row(static_cast<std::size_t>(k));
      for (std::int64_t i = 0; i < N; ++i) {
        // columns in increasing order, as scipy's CSR form of the graph sums them
        std::copy(nb.begin() + i * k, nb.begin() + (i + 1) * k, row.begin());
        std::sort(row.begin(), row.end());
        for (const std::int64_t j : row) {
          if (j == i) continue;
          S.col.push_back(j);
          S.val.push_back(1.0 / w[i] / w[j]);
        }
        S.ptr[i + 1] = static_cast<std::int64_t>(S.col.size());
      }
    } else {
      // sklearn: connectivity rows divided by their sums (= k; the point itself included), columns
      // in increasing order as in scipy's CSR form.
      for (std::int64_t i = 0; i < N; ++i) {
        S.col.insert(S.col.end(), nb.begin() + i * k, nb.begin() + (i + 1) * k);
        std::sort(S.col.end() - k, S.col.end());
        S.val.insert(S.val.end(), static_cast<std::size_t>(k), 1.0 / static_cast<double>(k));
        S.ptr[i + 1] = static_cast<std::int64_t>(S.col.size());
      }
    }
  } else {
    // symmetrised kNN graph W (no self-loops), degrees d_i >= k: each row's edges i -> j and j -> i
    // (counting sort), then sorted and deduplicated per row
    std::vector<std::int64_t> start(N + 1, 0);
    for (std::int64_t i = 0; i < N; ++i)
      for (std::int64_t a = 0; a < k; ++a) {
        ++start[i + 1];
        ++start[nb[i * k + a] + 1];
      }
    for (std::int64_t i = 0; i < N; ++i) start[i + 1] += start[i];
    std::vector<std::int64_t> adj(static_cast<std::size_t>(start[N])), fill(start.begin(), start.end() - 1);
    for (std::int64_t i = 0; i < N; ++i)
      for (std::int64_t a = 0; a < k; ++a) {
        const std::int64_t j = nb[i * k + a];
        adj[fill[i]++] = j;
        adj[fill[j]++] = i;
      }
    std::vector<double> deg(N);
    detail::parallel_for(N, 1024, [&](std::int64_t b, std::int64_t e, int) {
      for (std::int64_t i = b; i < e; ++i) {
        auto* r0 = adj.data() + start[i];
        auto* r1 = adj.data() + start[i + 1];
        std::sort(r0, r1);
        deg[i] = static_cast<double>(std::unique(r0, r1) - r0);
      }
    });
    for (std::int64_t i = 0; i < N; ++i) S.ptr[i + 1] = S.ptr[i] + static_cast<std::int64_t>(deg[i]);
    S.col.resize(static_cast<std::size_t>(S.ptr[N]));
    S.val.resize(static_cast<std::size_t>(S.ptr[N]));
    detail::parallel_for(N, 1024, [&](std::int64_t b, std::int64_t e, int) {
      for (std::int64_t i = b; i < e; ++i)
        for (std::int64_t p = S.ptr[i], q = start[i]; p < S.ptr[i + 1]; ++p, ++q) {
          const std::int64_t j = adj[q];
          S.col[p] = j;
          S.val[p] = kind == Kind::Spreading ? 1.0 / std::sqrt(deg[i] * deg[j]) : 1.0 / deg[i];
        }
    });
  }

  // ---- iterate (sklearn's BaseLabelPropagation.fit loop)
  const double alpha = opt.alpha;
  std::vector<double> F(static_cast<std::size_t>(N * C), 0.0), Fp(static_cast<std::size_t>(N * C), 0.0),
      Ystat(static_cast<std::size_t>(N * C), 0.0);
  for (std::int64_t i = 0; i < N; ++i)
    if (y[i] >= 0) {
      F[i * C + y[i]] = 1.0;
      Ystat[i * C + y[i]] = kind == Kind::Spreading ? 1.0 * (1.0 - alpha) : 1.0;
    }
  // convergence: sum |F - F_previous| < tol, the |differences| written with each step in parallel,
  // their total in NumPy's order (sklearn's np.abs(...).sum())
  std::vector<double> diff(static_cast<std::size_t>(N * C));
  SpreadingResult R;
  R.n_classes = C;
  R.converged = false;
  std::int64_t it = 0;
  for (std::int64_t e = 0; e < N * C; ++e) diff[e] = std::fabs(F[e] - Fp[e]);
  // Symmetric variant: the items that some label reaches (the labels' connected components). Each
  // step carries label mass one hop further, shrunk by α (spreading), so the total change falls
  // below `tol` long before the mass reaches items a few hops away: the loop does not stop on `tol`
  // while such an item is still all zero (it would get the label -1 although a label reaches it).
  // sklearn's variant keeps sklearn's rule (its unreached rows come out as class 0).
  std::vector<std::uint8_t> reachable;
  std::int64_t unreached = 0;  // reachable items whose row is all zero after the last step
  if (!sk) {
    reachable.assign(static_cast<std::size_t>(N), 0);
    std::vector<std::int64_t> queue;
    for (std::int64_t i = 0; i < N; ++i)
      if (y[i] >= 0) {
        reachable[i] = 1;
        queue.push_back(i);
      }
    const std::size_t labelled = queue.size();
    for (std::size_t h = 0; h < queue.size(); ++h)
      for (std::int64_t p = S.ptr[queue[h]]; p < S.ptr[queue[h] + 1]; ++p)
        if (!reachable[S.col[p]]) {
          reachable[S.col[p]] = 1;
          queue.push_back(S.col[p]);
        }
    unreached = static_cast<std::int64_t>(queue.size() - labelled);
  }
  std::vector<std::int64_t> zero_rows(static_cast<std::size_t>(detail::worker_slots()), 0);
  std::int64_t stalled = 0;  // steps in a row that reached no new item
  for (; it < max_iter; ++it) {
    detail::poll_interrupt();
    if (numpy_sum_threads(diff.data(), N * C) < opt.tol) {
      if (unreached == 0) {
        R.converged = true;
        break;
      }
      // The remaining items' mass underflowed (far along the graph): more steps will not reach them.
      if (stalled >= 3) break;
    }
    const std::int64_t unreached_before = unreached;
    std::swap(F, Fp);  // Fp = previous F; F is overwritten below
    std::fill(zero_rows.begin(), zero_rows.end(), 0);
    detail::parallel_for(N, 512, static_cast<int>(zero_rows.size()), [&](std::int64_t b, std::int64_t e, int w) {
      std::vector<double> acc(C);
      for (std::int64_t i = b; i < e; ++i) {
        std::fill(acc.begin(), acc.end(), 0.0);
        for (std::int64_t p = S.ptr[i]; p < S.ptr[i + 1]; ++p) {
          const double v = S.val[p];
          const double* src = Fp.data() + S.col[p] * C;
          for (std::int64_t c = 0; c < C; ++c) acc[c] += v * src[c];
        }
        double* dst = F.data() + i * C;
        if (kind == Kind::Spreading) {
          for (std::int64_t c = 0; c < C; ++c) dst[c] = alpha * acc[c] + Ystat[i * C + c];
        } else if (y[i] >= 0) {
          for (std::int64_t c = 0; c < C; ++c) dst[c] = Ystat[i * C + c];
        } else {
          double s = numpy_sum(acc.data(), C);
          if (s == 0.0) s = 1.0;
          for (std::int64_t c = 0; c < C; ++c) dst[c] = acc[c] / s;
        }
        bool zero = true;
        for (std::int64_t c = 0; c < C; ++c) {
          diff[i * C + c] = std::fabs(dst[c] - Fp[i * C + c]);
          zero &= dst[c] == 0.0;
        }
        if (!sk && zero && reachable[i]) ++zero_rows[w];
      }
    });
    unreached = 0;
    for (const std::int64_t z : zero_rows) unreached += z;
    stalled = unreached > 0 && unreached == unreached_before ? stalled + 1 : 0;
  }
  R.n_iter = it;
  R.unreached = unreached;

  // ---- normalise, arg-max, write
  auto* L = static_cast<std::int64_t*>(out_labels.data);
  auto* P = static_cast<double*>(dist.data);
  for (std::int64_t i = 0; i < N; ++i) {
    double s = numpy_sum(F.data() + i * C, C);
    const bool zero = s == 0.0;
    if (zero) s = 1.0;
    std::int64_t arg = 0;
    double best = -1.0;
    for (std::int64_t c = 0; c < C; ++c) {
      const double v = F[i * C + c] / s;
      P[i * dist.strides[0] + c * dist.strides[1]] = v;
      if (v > best) {
        best = v;
        arg = c;
      }
    }
    L[i * out_labels.strides[0]] = (zero && !sk) ? -1 : arg;
  }
  return R;
}

}  // namespace

const char* spreading_variant_name(SpreadingVariant v) {
  check(v == SpreadingVariant::Symmetric || v == SpreadingVariant::Sklearn, ErrorKind::Value,
        "variant: unknown spreading variant id ", static_cast<int>(v));
  return v == SpreadingVariant::Sklearn ? "sklearn" : "symmetric";
}

SpreadingVariant spreading_variant_from_name(const std::string& name) {
  if (name == "symmetric") return SpreadingVariant::Symmetric;
  if (name == "sklearn") return SpreadingVariant::Sklearn;
  throw Error(ErrorKind::Value, "variant: expected 'symmetric' or 'sklearn', got '" + name + "'");
}

std::int64_t spreading_num_classes(const TensorView& labels) {
  std::int64_t C = 0;
  load_labels(labels, &C);
  return C;
}

SpreadingResult label_spreading(const TensorView& features, const TensorView& labels, const TensorView& distributions,
                                const TensorView& out_labels, const SpreadingOptions& options) {
  spreading_variant_name(options.variant);  // Error(Value) for an id outside the enum
  return run(Kind::Spreading, features, labels, distributions, out_labels, options);
}

SpreadingResult label_propagation(const TensorView& features, const TensorView& labels,
                                  const TensorView& distributions, const TensorView& out_labels,
                                  const SpreadingOptions& options) {
  spreading_variant_name(options.variant);
  return run(Kind::Propagation, features, labels, distributions, out_labels, options);
}

}  // namespace labelwise
