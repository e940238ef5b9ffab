// labelwise — exact brute-force k-nearest-neighbour graph (CPU, multi-threaded; or CUDA). Details:
// docs/propagation.md ("kNN graph").
//
// Method
//   Candidates by blocked GEMM: the rows are centred (euclidean) or scaled to unit length (cosine),
//   copied to float32, and for every pair of row blocks (I, J), J >= I, of kKnnBlock rows the dot
//   products are computed once and serve the rows of I against J and the rows of J against I (half
//   the flops of the full N^2 D product). Each row keeps its m = k + max(k, 16) nearest candidates by
//   these approximate distances (one list per row and worker thread, merged). With AVX-512 the
//   candidate filter runs inside the GEMM's register tiles (no block of dot products is stored),
//   first in bfloat16 where the processor has AVX512_BF16; otherwise Eigen's float32 GEMM (AVX2 +
//   FMA where available) fills a block that is then scanned. Then the candidates' distances are
//   recomputed exactly in float64 and the k nearest kept. A rigorous bound on the approximation
//   error (float32, or bfloat16 with its own bound) decides whether a non-candidate could still be
//   among the k nearest (or tie with the k-th); such rows get a float32 pass against every row, and
//   where even that cannot certify them (rare: many duplicates, extreme scales) the whole row is
//   redone exactly in float64. The result is therefore exact: the same as a float64 brute force,
//   with ties broken by the lower index. Details: docs/propagation.md ("kNN graph").
//   Memory: O(N * (D + T * (k + 16))) for T threads, plus (Eigen path) one kKnnBlock x kKnnBlock
//   float32 block per thread (4 MiB) and the list of block pairs ((N / kKnnBlock)^2 / 2 entries),
//   never the N^2 distances. Euclidean rows whose largest entries span more than 2^480 are refused
//   (one power-of-two scale cannot serve both ends).
// On CUDA (src/cuda/knn_cuda.cu; its [cuda] tests passed on an NVIDIA H200): the same scaling, method and
//   certification formula (src/knn_bound.hpp) on the device — float64 copy, validated there; centred /
//   unit float32 rows; cuBLAS SGEMM (pedantic float32: no TF32) of 8192-row query blocks against 4096-row
//   chunks; one warp per query row keeps its m candidates; exact float64 refinement (sequential sums,
//   no FMA: the CPU's bits); rows not certified are redone in float64 against every row (stable radix
//   sort: ties by the lower index). Memory O(N * (D + k)) plus one 128 MiB block, never N^2.
//
// Shape contract
//   features  : [N, D] float32 / float64, CPU or CUDA, any strides. N >= 2, D >= 1, finite
//               (CUDA: N, D < 2^31 - 1).
//   k         : 1 <= k < N (the point itself is excluded, so at most N - 1 neighbours exist).
//   indices   : int64 [N, k], any strides (written; on the device of features): the neighbours of each row, nearest first; ties (equal
//               distances, e.g. duplicate points) by the lower index. Never the row itself. distances: any strides too.
//   distances : [N, k] float32 or float64, either whatever the features' dtype (written, same device):
//               euclidean — the euclidean distance ||x_i - x_j|| (not squared);
//               cosine    — 1 - x_i.x_j / (||x_i|| ||x_j||), clamped to [0, 2].
// Errors (labelwise::Error): NaN / Inf features (naming the row), wrong rank / dtype, empty input,
// k < 1 or k >= N, cosine with an all-zero row (its direction is undefined), outputs on another device
// than features; CUDA inputs in a build without CUDA (Runtime: "built without CUDA").
// stream: cudaStream_t for CUDA inputs (nullptr: the default stream); the call returns when the
// result is written (it synchronises that stream).
#pragma once

#include <cstdint>
#include <string>

#include "labelwise/core/distance.hpp"
#include "labelwise/core/tensor_view.hpp"

namespace labelwise {

/// Rows per block of the blocked GEMM: blocks of kKnnBlock x kKnnBlock float32 dot products (4 MiB per
/// thread). Only the blocks on and above the diagonal are computed.
constexpr std::int64_t kKnnBlock = 1024;

/// Exact k nearest neighbours of every row among the other rows (see above).
void knn_graph(const TensorView& features, std::int64_t k, const TensorView& indices, const TensorView& distances,
               DistanceMetric metric = DistanceMetric::Euclidean, void* stream = nullptr);

}  // namespace labelwise
