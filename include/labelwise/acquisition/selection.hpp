// labelwise — batch selection from per-item scores: top-k and stochastic (Gumbel-top-k) acquisition,
// and the merge of per-shard selections. Definitions and the merge protocol: docs/acquisition.md.
//
// Shape contract (every function)
//   scores   : [N] or a map [N, *spatial] (e.g. per-voxel uncertainty [N, D, H, W]); float32 or float64,
//              CPU or CUDA, any strides (nothing is copied). A map is a pool of numel items: item i is
//              element i in row-major (C) order of the *logical* shape, whatever the strides
//              (np.unravel_index(i, shape) gives its coordinates). Rank >= 1, numel >= 1.
//   b        : 0 <= b <= numel. b = 0 is valid and selects nothing (the scores are still validated).
//   indices  : int64 [b], same device as scores, any stride; the caller owns it. Written in selection
//              order (best first); every index is item index + options.index_offset.
//   values / keys (optional): [b], same device, any stride; the caller owns it.
//   Ties are broken by the lower index; -0.0 and +0.0 are equal; +inf and -inf are ordinary values.
//
// Errors (labelwise::Error): NaN scores (naming the first bad item), wrong rank, empty pool, b < 0 or
// b > numel, non-float dtypes, non-int64 indices, wrong output shapes, mismatched devices, a negative
// index_offset or one that overflows int64, CUDA work in a CPU-only build, and per function below.
// On error nothing is written to the outputs (except by stochastic_keys, see there).
#pragma once

#include <cstdint>
#include <string>

#include "labelwise/core/tensor_view.hpp"

namespace labelwise {

struct SelectOptions {
  /// Added to every returned index: the global index of this view's item 0 when the pool is split
  /// into shards (see merge_top_k). Must be >= 0.
  std::int64_t index_offset = 0;
  /// CUDA stream (cudaStream_t) for CUDA inputs; nullptr = the default stream. Ignored on the CPU.
  void* stream = nullptr;
};

/// The b highest-scoring items, best first, ties broken by the lower index.
/// O(N) selection (no full sort of the pool), then a sort of the b winners.
///   scores : [N] or [N, *spatial], float32 / float64
///   indices: int64 [b] (out)
///   values : [b] float32 / float64 (out, optional): the selected scores (float64 scores written to a
///            float32 view are rounded, beyond 3.4e38 to inf: pass float64 values to merge_top_k)
void top_k(const TensorView& scores, std::int64_t b, const TensorView& indices, const SelectOptions& options = {});
void top_k(const TensorView& scores, std::int64_t b, const TensorView& indices, const TensorView& values,
           const SelectOptions& options = {});

/// How stochastic acquisition turns a score s_i into a sampling weight w_i (β = 1 / temperature).
enum class StochasticMode : int {
  Power = 0,    ///< w = s^β; needs s >= 0 (s = 0 gets weight 0)
  Softmax = 1,  ///< w = exp(β s)
  SoftRank = 2, ///< w = r^-β, r = 1-based rank of s in the pool (1 = highest, ties by lower index)
};

/// "power", "softmax", "softrank".
const char* stochastic_mode_name(StochasticMode mode);
/// Inverse of stochastic_mode_name; throws Error(Value) listing the valid names.
StochasticMode stochastic_mode_from_name(const std::string& name);

struct StochasticOptions {
  /// The weight of each item: score^β (Power, scores >= 0), exp(β·score) (Softmax) or rank^-β
  /// (SoftRank); docs/acquisition.md.
  StochasticMode mode = StochasticMode::Power;
  /// β = 1 / temperature; must be finite and > 0 (and 1 / temperature finite).
  double temperature = 1.0;
  /// The batch is a pure function of (scores, b, mode, temperature, seed, index_offset[, ranks]):
  /// the same on every run, thread count and device.
  std::uint64_t seed = 0;
  /// Global index of item 0 of this view (shards, see merge_top_k); it also keys the random numbers,
  /// so item g gets the same noise on whichever shard it lives. Must be >= 0.
  std::int64_t index_offset = 0;
  /// SoftRank only, optional: int64 view of the scores' shape (any strides, same device) holding each
  /// item's 1-based rank in the *whole* pool. Soft-rank weights depend on the whole pool, so a shard
  /// must pass the global ranks; without ranks, the ranks are computed from these scores (correct
  /// when they are the whole pool). SoftRank with index_offset != 0 and no ranks is an error.
  /// Default-constructed (data == nullptr) = not given.
  TensorView ranks;
  /// CUDA stream (cudaStream_t) for CUDA inputs; nullptr = the default stream.
  void* stream = nullptr;
};

/// Stochastic batch acquisition (Kirsch et al., TMLR 2023): b items drawn without replacement with
/// probability proportional to w_i (Plackett-Luce), via Gumbel-top-k: key_i = ln w_i + G_i with
/// G_i standard Gumbel noise from Philox(seed, index_offset + i); the b largest keys, in order.
/// Items of weight 0 get key -inf and come after every item of positive weight (ties: lower index);
/// items of infinite weight (s = +inf in power / softmax mode) come first.
///   scores : [N] or [N, *spatial], float32 / float64 (power: every score >= 0; no NaN in any mode)
///   indices: int64 [b] (out), global indices (item index + index_offset), best key first
///   keys   : float64 [b] (out, optional): the selected keys, for merge_top_k
/// Extra errors: negative scores in power mode, a finite score whose score / temperature (softmax)
/// or ln(score) / temperature (power) overflows to +inf (to -inf is weight 0), temperature <= 0 or
/// not finite, ranks < 1 or of
/// the wrong shape / dtype / device, ranks given for a mode other than SoftRank.
void stochastic(const TensorView& scores, std::int64_t b, const TensorView& indices,
                const StochasticOptions& options);
void stochastic(const TensorView& scores, std::int64_t b, const TensorView& indices, const TensorView& keys,
                const StochasticOptions& options);

/// The Gumbel-top-k key of every item (same definition and errors as stochastic):
///   keys : float64, the scores' shape, any strides, same device (out)
/// top_k(keys, b) gives exactly stochastic(scores, b). Unlike the other functions, keys may be
/// partly written when an error is raised (the keys are made in the validating pass).
void stochastic_keys(const TensorView& scores, const TensorView& keys, const StochasticOptions& options);

/// Top-b of (value, global index) pairs, best first: value descending, ties by the lower index.
/// The merge step of sharded selection: run top_k or stochastic on every shard with its
/// index_offset and the same b (min(b, shard size) for a small shard), keeping the values / keys;
/// concatenate all shards' (values, indices); merge_top_k gives exactly the batch one machine would
/// have selected from the whole pool (docs/acquisition.md).
///   values     : [M] float32 / float64, no NaN (M = 0 only with b = 0: an empty batch)
///   indices    : int64 [M], >= 0, same device as values
///   out_indices: int64 [b] (out); out_values: [b] float32 / float64 (out, optional)
/// Extra errors: b > M; values and indices of different lengths; negative indices; the same index
/// twice among the winners (a shard merged twice).
///   stream     : CUDA stream for CUDA inputs (nullptr = default stream)
void merge_top_k(const TensorView& values, const TensorView& indices, std::int64_t b, const TensorView& out_indices,
                 void* stream = nullptr);
void merge_top_k(const TensorView& values, const TensorView& indices, std::int64_t b, const TensorView& out_indices,
                 const TensorView& out_values, void* stream = nullptr);

}  // namespace labelwise
