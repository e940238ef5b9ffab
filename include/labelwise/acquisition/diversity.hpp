// labelwise — diversity-based batch acquisition: core-set (k-center greedy), BADGE (k-means++
// seeding on last-layer gradient embeddings) and the uncertainty-weighted k-means hybrid.
// Definitions, first-pick rules and the random numbers: docs/acquisition.md ("Diversity").
//
// Shape contract
//   features / embeddings : [N, D], float32 or float64, any strides (nothing is copied; the inner
//                           axis is fastest when its stride is 1). N >= 1, D >= 1, finite.
//   probs / logits        : [N, C] (one prediction per item, classes on axis 1), float32 / float64,
//                           any strides, C >= 2.
//   indices               : int64 [b] (out), any stride; the caller owns it. Picks in the order chosen.
//   radii                 : float64 [b] (out), any stride; the caller owns it.
//   Devices: coreset, badge and weighted_kmeans run on the CPU (multi-threaded) or on CUDA (every
//   array on the same device, except that coreset's `labeled` may also be a host array);
//   cluster_margin reads CUDA arrays through host copies of its O(N) scalars; average_linkage_clusters
//   is CPU-only (CUDA arrays: ErrorKind::Type). A CPU-only build raises "built without CUDA" for CUDA
//   arrays.
// Scale: Euclidean distances are taken as float64 squared distances. When the largest magnitude of
//   the features (BADGE: of the embeddings) is below 2^-64, they are read times the power of two that
//   brings it to [1/2, 1) (subnormal features: times 2^1023), so that squared distances of tiny
//   features do not underflow (1e-162 squared is below the smallest double); BADGE does the same
//   from above for embeddings beyond 2^400 (its draw sums D² over the pool). The scaling is exact:
//   the picks are those of the unscaled values, and coreset's radii and average_linkage_clusters'
//   distance are scaled to match. Rows more than ~2^447 below the largest row can still have squared
//   differences below the float64 range. Values above ~1e153 are refused (squared norms overflow).
// Ties are broken by the lower index everywhere. Results never depend on the thread count.
// On error nothing is written to the outputs.
#pragma once

#include <cstdint>
#include <string>

#include "labelwise/core/distance.hpp"
#include "labelwise/core/tensor_view.hpp"
#include "labelwise/uncertainty/metrics.hpp"  // InputKind

namespace labelwise {

struct CoresetOptions {
  DistanceMetric metric = DistanceMetric::Euclidean;  ///< cosine computed as ½·||x/|x| - y/|y|||² (exactly 0 for identical rows)
  /// Skip the rows whose distance to the chosen set the new centre provably cannot lower (triangle
  /// inequality with a safety margin): the result is the same bits either way; false only to
  /// measure the plain one-pass-per-pick cost. (CUDA: no pruning; one pass per pick on the device.)
  bool prune = true;
  /// CUDA stream (cudaStream_t) for CUDA inputs; nullptr = the default stream. Ignored on the CPU.
  void* stream = nullptr;
};

/// Core-set acquisition by k-center greedy (Sener & Savarese, ICLR 2018): keeps every item's
/// distance to the nearest labelled-or-chosen item and picks, b times, the unlabelled item farthest
/// from that set (ties: lower index), updating the distances with one pass over the pool per pick
/// (rows that the new centre provably cannot reach are skipped, see CoresetOptions::prune).
///   features: [N, D] float32 / float64 (finite; cosine: no all-zero row)
///   labeled : which rows are labelled, either a mask bool / uint8 [N] (nonzero = labelled) or an
///             int64 index array [M] (0 <= index < N; repeats allowed). A default-constructed view
///             (data == nullptr, ndim == 0) means no item is labelled.
///   b       : 0 <= b <= number of unlabelled items (b = 0: valid, nothing selected, inputs validated)
///   indices : int64 [b] (out): the picks, in the order chosen
///   radii   : float64 [b] (out): the covering radius after each pick, max over all items of the
///             distance to the nearest labelled-or-chosen item (0 once every item is covered)
/// With no labelled item, the first pick is the item farthest from the mean of the features (cosine:
/// from the mean of the unit-normalised rows; if that mean is the zero vector, item 0).
/// Duplicates: distances are exactly 0, so once only duplicates of covered items remain the radius
/// is 0 and the picks are the remaining unlabelled items by lower index.
/// Errors: empty pool, D = 0, wrong rank, NaN / Inf features (naming the first bad row), a squared
/// row norm float64 cannot hold (Euclidean: above 2.2e307; cosine: a zero row, or a nonzero one whose
/// squared norm is not a normal double), mask of the wrong length, index out of range, every item labelled, b < 0 or b > the
/// number of unlabelled items, wrong dtypes / output shapes, mismatched devices.
void coreset(const TensorView& features, const TensorView& labeled, std::int64_t b, const TensorView& indices,
             const TensorView& radii, const CoresetOptions& options = {});

struct BadgeOptions {
  /// Probabilities (rows must be >= 0 and sum to 1 within normalization_tolerance) or Logits
  /// (softmax inside). LogProbabilities is accepted too (exp inside).
  InputKind input = InputKind::Probabilities;
  /// The batch is a pure function of (inputs, b, seed): the same on every run and thread count.
  std::uint64_t seed = 0;
  /// CUDA stream (cudaStream_t) for CUDA inputs; nullptr = the default stream. Ignored on the CPU.
  void* stream = nullptr;
};

/// BADGE (Ash, Zhang, Krishnamurthy, Langford, Agarwal, ICLR 2020). The gradient embedding of item n
/// is g_n = a_n ⊗ h_n with a_n = p_n − onehot(argmax p_n) (argmax ties: lower class) and h_n its
/// embedding row; k-means++ seeding in that C·D-dimensional space, never materialised:
/// ||a⊗h − a'⊗h'||² = ||a||²||h||² + ||a'||²||h'||² − 2 (a·a')(h·h').
/// First centre: the item of largest ||g|| (ties: lower index), as in the reference implementation.
/// Step t = 1 .. b−1: every item's D²(n) = squared distance to its nearest centre (centres: 0);
/// u_t = badge_uniform(seed, t); the pick is the first item n (in index order) whose running sum of
/// D² exceeds u_t · Σ D². If Σ D² = 0 (every remaining item coincides with a centre), the pick is
/// the lowest-index item not yet chosen. Factorised distances below 1e-12·(||g_n||² + ||g_c||²)
/// (pure cancellation error) count as 0.
///   x         : [N, C] probabilities / logits
///   embeddings: [N, D] penultimate-layer features
///   indices   : int64 [b] (out), picks in the order chosen; 0 <= b <= N
/// Errors: as the shape contract; NaN / Inf, negative or unnormalised probabilities, a logits row that
/// is -inf everywhere (each naming the first bad item), C < 2, N mismatch, b outside [0, N],
/// mismatched devices.
void badge(const TensorView& x, const TensorView& embeddings, std::int64_t b, const TensorView& indices,
           const BadgeOptions& options = {});

struct WeightedKmeansOptions {
  /// Candidates: the min(N, prefilter · b) highest-scoring items (Zhdanov's β; 10 in the paper).
  /// Must be >= 1.
  std::int64_t prefilter = 10;
  /// Lloyd iterations at most (stops earlier when no assignment changes). Must be >= 0.
  std::int64_t max_iter = 100;
  /// CUDA stream (cudaStream_t) for CUDA inputs; nullptr = the default stream. Ignored on the CPU.
  void* stream = nullptr;
};

/// Uncertainty-weighted diversity hybrid: "Diverse mini-batch active learning" (Zhdanov, 2019,
/// arXiv 1901.05954). Keep the M = min(N, prefilter·b) items of highest score, cluster them into b
/// clusters by k-means weighted by the scores, and pick from each cluster the item nearest its
/// centroid: a batch that is both uncertain (only top-scored items qualify, and they pull the
/// centroids) and diverse (one item per cluster). Deterministic (no seed): the centres start from a
/// weighted farthest-first traversal — the highest-scoring candidate, then repeatedly the candidate
/// maximising score · (squared distance to its nearest centre) — the deterministic counterpart of
/// weighted k-means++ seeding; then Lloyd iterations: assign every candidate to its nearest centre
/// (ties: lower centre), move each centre to the score-weighted mean of its members (the plain
/// mean when their scores are all 0; an empty cluster keeps its centre). Distances are Euclidean, in
/// float64. Details, including the order of the picks, in docs/acquisition.md ("Hybrid").
///   features: [N, D] float32 / float64, finite (the unlabelled pool: embeddings or features)
///   scores  : [N] float32 / float64, finite, >= 0 (any "higher = more informative" metric; only
///             their ratios matter: they are used times the power of two that brings the largest
///             candidate's to [1/2, 1), exact unless two scores lie more than ~2^1000 apart)
///   b       : 0 <= b <= N
///   indices : int64 [b] (out): one item per cluster, clusters in decreasing total score (ties: the
///             lower cluster); clusters left empty are filled with the best-scoring candidates not yet
///             picked, after the others. With M = b (prefilter = 1, or b = N) this is the top-b by score.
/// Ties between equal scores or distances: lower index. The result never depends on the thread count.
/// On CUDA, the features are validated and the M candidates' rows gathered on the device; the scores
/// (N values) and the M x D candidate rows are copied to the host, where the clustering runs as on
/// the CPU (O(M·b·D) per iteration, small for the batch sizes meant here): the same picks as the CPU.
/// Errors: as the shape contract; NaN / Inf features or a squared row norm above 2.2e307 (naming the
/// first row); NaN / Inf or negative scores (naming the first), prefilter < 1, max_iter < 0, N
/// mismatch, wrong output shape / dtype / device.
void weighted_kmeans(const TensorView& features, const TensorView& scores, std::int64_t b, const TensorView& indices,
                     const WeightedKmeansOptions& options = {});

struct AverageLinkageOptions {
  /// Cut where clusters are farther apart than this (cophenetic distance > distance); 0 = unset.
  double distance = 0.0;
  /// Or: cut into at most this many clusters (the lowest cut that gives at most that many; above N,
  /// every row its own cluster); 0 = unset.
  std::int64_t num_clusters = 0;
};

/// Average-linkage (UPGMA) agglomerative clustering of the rows by Euclidean distance, cut into flat
/// clusters — cluster-margin's once-per-campaign step (Citovsky et al. cluster the pool's embeddings
/// this way). Nearest-neighbour chain algorithm, O(N²) time and N (N − 1) / 2 doubles of memory
/// (N = 20000: 1.6 GB); the same partitions as SciPy's linkage(method="average") + fcluster with
/// criterion "distance" (merges of height <= distance) or "maxclust", also with exactly tied distances
/// (duplicate rows, integer features: merged clusters keep the higher slot, as SciPy's algorithm does).
///   embeddings: [N, D] float32 / float64, finite, CPU, any strides (N >= 1)
///   clusters  : int64 [N] (out), CPU, any stride: ids 0, 1, ... numbered in the order of each
///               cluster's lowest row index
///   options   : exactly one of distance > 0 and num_clusters >= 1 (above N: every row its own
///               cluster, as SciPy's fcluster "maxclust")
/// Errors: as the shape contract; NaN / Inf embeddings or a squared row norm above 2.2e307 (first bad
/// row), both or neither option set,
/// the pairwise distances do not fit in memory, CUDA input.
void average_linkage_clusters(const TensorView& embeddings, const TensorView& clusters,
                              const AverageLinkageOptions& options);

struct ClusterMarginOptions {
  /// Candidates: the `candidates` most uncertain unlabelled items (0: min(10·b, unlabelled items)).
  /// Must be >= 0; a value above the number of unlabelled items means all of them; must be >= b.
  std::int64_t candidates = 0;
  /// The order within each cluster is a pure function of (seed, item index).
  std::uint64_t seed = 0;
  /// CUDA stream (cudaStream_t) for CUDA inputs; nullptr = the default stream. Ignored on the CPU.
  void* stream = nullptr;
};

/// Cluster-margin (Citovsky, DeSalvo, Gentile, Karydas, Rajagopalan, Rostamizadeh, Kumar, NeurIPS
/// 2021): take the `candidates` unlabelled items with the highest margin scores (ties: lower index),
/// group them by cluster, sort the groups by size (smallest first; ties: lower cluster id) and pick
/// round-robin, one item per group per round, until b are chosen. Within a group the items go in
/// the order of their keys rng::bits64(seed, rng::kStreamClusterMargin, item) (ties: lower index) — a
/// random order that is the same on every run and does not depend on the other items.
///   margins  : [N] float32 / float64 (labelwise's margin metric: higher = more uncertain; any score
///              works), no NaN, any stride
///   clusters : int64 [N] cluster ids (any values; e.g. average-linkage clusters of the embeddings,
///              computed once per campaign as the paper does), any stride, on the margins' device
///   labeled  : bool / uint8 mask [N] or int64 indices, or a default view (nothing labelled); on the
///              margins' device or the host
///   indices  : int64 [b] (out): the picks in the order chosen; 0 <= b <= unlabelled items; on the
///              margins' device
/// The work is O(N log N) on N scalars and runs on the host: CUDA arrays are copied there (on
/// options.stream) and the picks copied back.
/// Errors: NaN margins (first bad item), N mismatch, labelled index out of range, b outside
/// [0, unlabelled], candidates < b (when given), wrong dtypes / output shape, arrays on different
/// devices, CUDA input to a CPU-only build.
void cluster_margin(const TensorView& margins, const TensorView& clusters, const TensorView& labeled, std::int64_t b,
                    const TensorView& indices, const ClusterMarginOptions& options = {});

/// The uniform draw of BADGE step t under `seed`, in (0, 1): rng::uniform_open of the Philox bits of
/// (seed, BADGE's stream "BADG", t) (docs/acquisition.md). Exposed so that tests and users can replay
/// the sampling.
double badge_uniform(std::uint64_t seed, std::uint64_t step);

/// The rows of an n-item pool that `labeled` leaves unlabelled, ascending: the pool that coreset()
/// and cluster_margin() pick from. For running badge() / weighted_kmeans() (which take the pool
/// they pick from) on the unlabelled rows only, as Python's `labeled=` of those functions does.
///   labeled : as in coreset(): a bool / uint8 mask [n] or int64 indices [M] (repeats allowed), host
///             or CUDA memory (read through a host copy on `stream`); a default-constructed view
///             means nothing is labelled.
///   n       : the pool size, >= 1.
///   rows    : int64 [n] (out, host, any stride): the first (returned) count entries are written.
/// Returns that count (>= 1). Errors as coreset()'s `labeled`, including a set that covers every item;
/// n < 1; `rows` not on the host.
std::int64_t unlabeled_rows(const TensorView& labeled, std::int64_t n, const TensorView& rows, void* stream = nullptr);

}  // namespace labelwise
