// Average-linkage agglomerative clustering (UPGMA) for cluster-margin's once-per-campaign step
// (labelwise::average_linkage_clusters; docs/acquisition.md, "Cluster-margin").
//
// 1. The condensed matrix of Euclidean distances between rows, d(i, j) = sqrt(Σ_t (x_it − x_jt)²) in
//    float64 (the differences themselves, not |x|² + |y|² − 2 x·y, which cancels for close rows),
//    computed in parallel: thread chunks take row pairs (p, N − 1 − p) so that the work is even.
// 2. The nearest-neighbour chain algorithm (Murtagh 1983; see Müllner 2011, arXiv 1109.2378, for its
//    correctness for the reducible linkages, average linkage among them): follow nearest neighbours
//    from an active cluster until two clusters are each other's nearest (ties: the previous chain
//    element first, then the lower index), merge them at that distance and update the distances to
//    the merged cluster by Lance–Williams, d(k, i ∪ j) = (n_i d(k, i) + n_j d(k, j)) / (n_i + n_j),
//    kept in the higher of the two slots, as SciPy does (the same dendrogram also when distances tie).
//    O(N²) time after the distances, N (N − 1) / 2 doubles of memory.
// 3. Average linkage is monotone (no inversions), so the flat clusters at a cophenetic distance
//    threshold t are the connected components of the merges of height <= t; for a cluster count t,
//    the threshold is the smallest merge height that leaves at most t clusters (all merges of that
//    height are applied), as SciPy's fcluster(criterion="maxclust") chooses it.
// 4. Cluster ids 0, 1, ... in the order of each cluster's lowest member index.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <new>
#include <numeric>
#include <string>
#include <vector>

#include "../diversity_backend.hpp"
#include "scratch_array.hpp"
#include "labelwise/core/error.hpp"
#include "labelwise/detail/parallel_for.hpp"

namespace labelwise {
namespace detail {
namespace {

struct Merge {
  std::int64_t a, b;  // a member of each cluster
  double height;
};

/// Index of (i, j), i < j, in the condensed upper triangle of an n × n matrix.
inline std::size_t tri(std::int64_t n, std::int64_t i, std::int64_t j) {
  return static_cast<std::size_t>(i) * static_cast<std::size_t>(2 * n - i - 1) / 2 + static_cast<std::size_t>(j - i - 1);
}

/// The condensed distances of the rows read times 2^shift.
template <typename T>
void distances(const Matrix& x, int shift, double* d) {
  const std::int64_t n = x.rows, dim = x.cols;
  // Rows in float64, contiguous (the input may be strided or float32).
  std::vector<double> rows(static_cast<std::size_t>(n * dim));
  const T* base = static_cast<const T*>(x.data);
  const double unit = std::ldexp(1.0, shift);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t t = 0; t < dim; ++t)
      rows[i * dim + t] = static_cast<double>(base[i * x.row_stride + t * x.col_stride]) * unit;
  auto row = [&](std::int64_t i) {
    const double* xi = rows.data() + i * dim;
    for (std::int64_t j = i + 1; j < n; ++j)
      d[tri(n, i, j)] = std::sqrt(contiguous_sq_dist(rows.data() + j * dim, xi, dim));
  };
  parallel_for((n + 1) / 2, 16, [&](std::int64_t begin, std::int64_t end, int) {
    for (std::int64_t p = begin; p < end; ++p) {
      row(p);
      if (n - 1 - p != p) row(n - 1 - p);
    }
  });
}

/// The N − 1 merges of average linkage, in the order the chain makes them.
std::vector<Merge> nn_chain(std::int64_t n, double* d) {
  auto at = [&](std::int64_t i, std::int64_t j) -> double& { return i < j ? d[tri(n, i, j)] : d[tri(n, j, i)]; };
  std::vector<std::int64_t> size(static_cast<std::size_t>(n), 1);
  std::vector<std::int64_t> active(static_cast<std::size_t>(n));  // active cluster slots, ascending
  std::iota(active.begin(), active.end(), 0);
  std::vector<char> alive(static_cast<std::size_t>(n), 1);
  std::vector<std::int64_t> chain;
  std::vector<Merge> merges;
  merges.reserve(static_cast<std::size_t>(n - 1));
  while (static_cast<std::int64_t>(merges.size()) < n - 1) {
    poll_interrupt();
    if (chain.empty()) chain.push_back(active.front());
    const std::int64_t a = chain.back();
    const std::int64_t prev = chain.size() >= 2 ? chain[chain.size() - 2] : -1;
    std::int64_t best = prev;
    double best_d = prev >= 0 ? at(a, prev) : std::numeric_limits<double>::infinity();
    for (const std::int64_t c : active) {
      if (c == a) continue;
      const double v = at(a, c);
      if (v < best_d || (best < 0 && v == best_d)) {
        best_d = v;
        best = c;
      }
    }
    if (best != prev) {
      chain.push_back(best);
      continue;
    }
    chain.pop_back();
    chain.pop_back();
    // Merge a and prev into the higher slot, the other slot retires (as SciPy's and fastcluster's
    // nn_chain do: with exactly tied distances — duplicate rows, integer features — the slot decides
    // which ties the later searches meet first, and so the dendrogram).
    const std::int64_t keep = std::max(a, prev), gone = std::min(a, prev);
    merges.push_back({keep, gone, best_d});
    const double na = static_cast<double>(size[keep]), nb = static_cast<double>(size[gone]);
    alive[gone] = 0;
    active.erase(std::lower_bound(active.begin(), active.end(), gone));
    for (const std::int64_t k : active) {
      if (k == keep) continue;
      at(k, keep) = (na * at(k, keep) + nb * at(k, gone)) / (na + nb);
    }
    size[keep] += size[gone];
  }
  return merges;
}

std::int64_t find(std::vector<std::int64_t>& parent, std::int64_t i) {
  while (parent[i] != i) i = parent[i] = parent[parent[i]];
  return i;
}

}  // namespace

void average_linkage_cpu(const LinkageJob& job) {
  const std::int64_t n = job.x.rows;
  std::vector<Merge> merges;
  if (n > 1) {
    const double bytes = 8.0 * static_cast<double>(n) * static_cast<double>(n - 1) / 2.0;
    // every entry is written by distances() before it is read (not value-initialised: zeroing 1.6 GB
    // at N = 20 000 was a pass of its own)
    ScratchArray<double> dp;
    try {
      dp = scratch_array<double>(static_cast<std::size_t>(n) * static_cast<std::size_t>(n - 1) / 2);
    } catch (const std::bad_alloc&) {
      throw Error(ErrorKind::Value, "embeddings: average linkage of " + std::to_string(n) + " rows needs " +
                                        std::to_string(bytes / (1 << 30)) +
                                        " GiB for the pairwise distances, which could not be allocated; "
                                        "cluster a subsample");
    }
    double* d = dp.get();
    if (job.x.dtype == DType::Float32)
      distances<float>(job.x, job.shift, d);
    else
      distances<double>(job.x, job.shift, d);
    merges = nn_chain(n, d);
  }
  std::stable_sort(merges.begin(), merges.end(), [](const Merge& u, const Merge& v) { return u.height < v.height; });
  double threshold = std::ldexp(job.distance, job.shift);  // the heights are of the scaled rows (inf past DBL_MAX)
  if (job.num_clusters > 0)  // the smallest merge height leaving at most num_clusters clusters
    threshold = job.num_clusters >= n ? -std::numeric_limits<double>::infinity()
                                      : merges[static_cast<std::size_t>(n - job.num_clusters - 1)].height;
  std::vector<std::int64_t> parent(static_cast<std::size_t>(n));
  std::iota(parent.begin(), parent.end(), 0);
  for (const Merge& m : merges) {
    if (!(m.height <= threshold)) break;
    const std::int64_t ra = find(parent, m.a), rb = find(parent, m.b);
    if (ra != rb) parent[std::max(ra, rb)] = std::min(ra, rb);
  }
  std::vector<std::int64_t> id(static_cast<std::size_t>(n), -1);
  std::int64_t next = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t r = find(parent, i);
    if (id[r] < 0) id[r] = next++;
    job.out[i * job.out_stride] = id[r];
  }
}

}  // namespace detail
}  // namespace labelwise
