// labelwise — BatchBALD (Kirsch, van Amersfoort, Gal, NeurIPS 2019), greedy, as the published reference
// (BlackHC/batchbald_redux, get_batchbald_batch) computes it. Definitions: docs/acquisition.md.
//
// Shape contract
//   x        : [N, K, C] (named axes: the sample axis K and the class axis C are given by the options,
//              the remaining axis is the pool), float32 or float64, CPU or CUDA, any strides (read in
//              place).
//              Probabilities, log-probabilities or logits, validated like the uncertainty metrics
//              (NaN / Inf, negative or unnormalised probabilities name the first bad item). K >= 2, C >= 2.
//   b        : 0 <= b <= N. b = 0 is valid and selects nothing (x is still validated).
//   indices  : int64 [b], on x's device, any stride (out): the picks, in the order chosen.
//   scores   : float64 [b], on x's device, any stride (out, optional): scores[i] is the (estimated) joint mutual
//              information I(y_{1..i+1}; ω) of the first i + 1 picks — cumulative, as the reference
//              returns it; the marginal gains are scores[i] − scores[i − 1].
//
// Joint entropy of the chosen items plus a candidate: exact while C^m <= num_samples (m = number of
// items already chosen, the reference's rule), from num_samples sampled joint configurations after that
// (K · max(1, num_samples / K) configurations, drawn with Philox(seed) — the same for a seed on every
// thread count). Greedy: at each step the candidate with the largest score, ties by the lower index.
// Float64 throughout. On CUDA every candidate is scored on the device at every step (the CPU prunes
// them with a cascade of coarser tables); the table of joint configurations is built on the host by
// the same code, so both devices pick the same items for a seed, unless two candidates' scores are
// within the rounding of their sums (about 1e-12 relative). The CUDA backend needs 4 · K · C doubles of
// shared memory per block (K · C up to about 7000 on an H100) and 8 · N · K · C bytes of device memory.
//
// Errors (labelwise::Error): the metrics' input errors, rank != 3, an axis out of range,
// sample_axis == class_axis, K < 2, C < 2, K or C above 2^20, N · K · C above int64,
// b < 0 or b > N, an empty pool, num_samples < 1 (or above 2^31), wrong output dtypes / shapes /
// devices, CUDA input to a build without CUDA, K · C too large for the device's shared memory; a host
// allocation that fails (the table grows to about num_samples · K doubles) as a Runtime error with
// the sizes.
#pragma once

#include <cstdint>

#include "labelwise/core/tensor_view.hpp"
#include "labelwise/uncertainty/metrics.hpp"

namespace labelwise {

struct BatchBaldOptions {
  /// What the values of x are: probabilities (default), log-probabilities or logits.
  InputKind input = InputKind::Probabilities;
  /// Axis of the K MC / ensemble samples, in [-3, 3) (negative counts from the end).
  int sample_axis = 1;
  /// Axis of the C classes, in [-3, 3), not the sample axis; the remaining axis is the pool.
  int class_axis = 2;
  /// Budget of joint configurations: exact joint entropies while C^m <= num_samples, then
  /// K · max(1, num_samples / K) sampled configurations. Must be >= 1.
  std::int64_t num_samples = 10000;
  /// Seed of the sampled configurations (unused while every step is exact).
  std::uint64_t seed = 0;
  /// CUDA stream (cudaStream_t) for CUDA inputs; nullptr = the default stream. Ignored on the CPU.
  void* stream = nullptr;
};

/// Greedy BatchBALD: b picks (in order) into `indices` (int64 [b]) and, optionally, the cumulative joint
/// mutual information after each pick into `scores` (float64 [b]); x, b and the errors as above.
void batchbald(const TensorView& x, std::int64_t b, const TensorView& indices, const BatchBaldOptions& options);
void batchbald(const TensorView& x, std::int64_t b, const TensorView& indices, const TensorView& scores,
               const BatchBaldOptions& options);

}  // namespace labelwise
