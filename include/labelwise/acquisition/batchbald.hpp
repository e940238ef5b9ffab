// labelwise — BatchBALD (Kirsch, van Amersfoort, Gal, NeurIPS 2019), greedy, as the published reference
// (BlackHC/batchbald_redux, get_batchbald_batch) computes it. Definitions: docs/acquisition.md.
//
// Shape contract
//   x        : [N, K, C] (named axes: the sample axis K and the class axis C are given by the options,
//              the remaining axis is the pool), float32 or float64, CPU, any strides (read in place).
//              Probabilities, log-probabilities or logits, validated like the uncertainty metrics
//              (NaN / Inf, negative or unnormalised probabilities name the first bad item). K >= 2, C >= 2.
//   b        : 0 <= b <= N. b = 0 is valid and selects nothing (x is still validated).
//   indices  : int64 [b], CPU, any stride (out): the picks, in the order chosen.
//   scores   : float64 [b], CPU, any stride (out, optional): scores[i] is the (estimated) joint mutual
//              information I(y_{1..i+1}; ω) of the first i + 1 picks — cumulative, as the reference
//              returns it; the marginal gains are scores[i] − scores[i − 1].
//
// Joint entropy of the chosen items plus a candidate: exact while C^m <= num_samples (m = number of
// items already chosen, the reference's rule), from num_samples sampled joint configurations after that
// (K · max(1, num_samples / K) configurations, drawn with Philox(seed) — the same for a seed on every
// thread count). Greedy: at each step the candidate with the largest score, ties by the lower index.
// Float64 throughout. CPU only for now: CUDA input raises ErrorKind::Runtime ("not implemented on CUDA
// yet").
//
// Errors (labelwise::Error): the metrics' input errors, rank != 3, K < 2, b < 0 or b > N, an empty pool,
// num_samples < 1 (or above 2^40), wrong output dtypes / shapes / devices, CUDA input.
#pragma once

#include <cstdint>

#include "labelwise/core/tensor_view.hpp"
#include "labelwise/uncertainty/metrics.hpp"

namespace labelwise {

struct BatchBaldOptions {
  InputKind input = InputKind::Probabilities;
  int sample_axis = 1;  ///< axis of the K MC / ensemble samples (negative counts from the end)
  int class_axis = 2;   ///< axis of the C classes (negative counts from the end)
  /// Budget of joint configurations: exact joint entropies while C^m <= num_samples, then
  /// K · max(1, num_samples / K) sampled configurations. Must be >= 1.
  std::int64_t num_samples = 10000;
  /// Seed of the sampled configurations (unused while every step is exact).
  std::uint64_t seed = 0;
};

/// Greedy BatchBALD: b picks (in order) and, optionally, the cumulative joint mutual information after
/// each pick.
void batchbald(const TensorView& x, std::int64_t b, const TensorView& indices, const BatchBaldOptions& options);
void batchbald(const TensorView& x, std::int64_t b, const TensorView& indices, const TensorView& scores,
               const BatchBaldOptions& options);

}  // namespace labelwise
