// labelwise — uncertainty metrics: one fused pass over MC / ensemble predictions.
//
// Shape contract (all metrics)
//   x        : [*outer, K (sample axis), C (class axis), *outer]  float32 or float64, CPU or CUDA,
//              any strides; float16 / bfloat16 too (widened exactly to a contiguous float32
//              copy first: 4 bytes per element of extra memory on x's device). The sample and class axes are named by ScoreOptions; every other
//              axis ("outer": N and the spatial axes of segmentation outputs) is kept.
//              Without a sample axis (ScoreOptions::sample_axis = std::nullopt) x holds one
//              prediction per item and K = 1.
//   out      : x's shape with the sample and class axes removed, in x's axis order
//              ([N] for classification, [N, H, W] / [N, D, H, W] for segmentation);
//              float32 or float64, same device as x, any strides. The caller owns it.
//   result   : every metric is "higher = more worth labelling", in nats.
//
// Input kinds: probabilities (each sample's class vector must sum to 1 within
// normalization_tolerance(dtype) — 1e-6 float64, 1e-3 float32, 5e-3 float16, 4e-2 bfloat16 — and be
// >= 0), log-probabilities (log-sum-exp within the same tolerance of 0), or logits (softmax applied
// inside, fused; -inf entries allowed — a masked class — but not a sample whose entries are all -inf).
//
// Errors (labelwise::Error; kinds as in core/error.hpp: Type for dtypes, Runtime for a CPU-only
// build, Value otherwise): NaN/+Inf, negative or unnormalised probabilities, a logits /
// log-probabilities sample that is all -inf (each with the first offending item); wrong rank, an
// axis out of range, sample_axis == class_axis; K < 2 (or no sample axis) for metrics that need
// samples; C < 2; K·C > 2^31 - 4097 in one item; empty input; outputs of the wrong shape, dtype or
// device; non-float dtypes; CUDA input in a CPU-only build.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "labelwise/core/tensor_view.hpp"

namespace labelwise {

/// What the numbers in x are.
enum class InputKind : int { Probabilities = 0, LogProbabilities = 1, Logits = 2 };

/// The Python API's name of an input kind: "probs", "log_probs" or "logits"; Error(Value) for an id
/// outside the enum.
const char* input_kind_name(InputKind kind);
/// Inverse of input_kind_name; throws Error(Value) naming the argument `input`.
InputKind input_kind_from_name(const std::string& name);

/// The metrics. With p_kc the probability of class c under sample k, p̄_c = mean_k p_kc:
enum class Metric : int {
  PredictiveEntropy = 0,  ///< H[p̄] = -Σ_c p̄_c ln p̄_c
  ExpectedEntropy,        ///< (1/K) Σ_k H[p_k]   (aleatoric part; needs samples)
  Bald,                   ///< H[p̄] - (1/K) Σ_k H[p_k], clamped at 0 (mutual information; needs samples)
  LeastConfidence,        ///< 1 - max_c p̄_c
  Margin,                 ///< 1 - (p̄_(1) - p̄_(2)): small top-1/top-2 gap scores high
  Ratio,                  ///< p̄_(2) / p̄_(1)
  VariationRatio,         ///< 1 - f_mode / K, f_mode = samples voting the modal class (Gal 2016; needs samples)
  MaxMeanVariationRatio,  ///< 1 - max_c p̄_c (the variation ratio of the mean; same value as LeastConfidence)
  MeanStd,                ///< (1/C) Σ_c std_k(p_kc), ddof = 1 (needs samples)
  BalEntAcq,              ///< balanced entropy acquisition (Woo, ICLR 2023; needs samples), see docs/metrics.md
};
constexpr int kNumMetrics = 10;

/// Snake-case name used by the Python API ("predictive_entropy", "balentacq", ...); Error(Value) for an
/// id outside the enum.
const char* metric_name(Metric m);
/// Inverse of metric_name; throws Error(Value) listing the valid names.
Metric metric_from_name(const std::string& name);
/// True for the metrics that need a sample axis with K >= 2.
bool metric_needs_samples(Metric m);

/// Tolerance on |Σ_c p_c - 1| (or |logsumexp| for log-probabilities): 1e-6 for float64, 1e-3 for
/// float32, 5e-3 for float16, 4e-2 for bfloat16 (1e-3 for any other dtype, which no metric accepts).
double normalization_tolerance(DType dtype);

struct ScoreOptions {
  /// What the values of x are: probabilities (default), log-probabilities or logits.
  InputKind input = InputKind::Probabilities;
  /// Axis of the MC / ensemble samples (negative counts from the end); nullopt = single predictions.
  std::optional<int> sample_axis = 1;
  /// Axis of the classes (negative counts from the end); nullopt = 2 with a sample axis ([N, K, C, ...]),
  /// 1 without ([N, C, ...]).
  std::optional<int> class_axis;
  /// CUDA stream (cudaStream_t) for CUDA inputs; nullptr = the default stream. Ignored on the CPU.
  void* stream = nullptr;
};

/// One requested metric and where to write it.
struct MetricOutput {
  Metric metric;   ///< the metric to compute
  TensorView out;  ///< its map: score_shape(x), float32 or float64, on x's device
};

/// The shape every metric output must have for input x (see the shape contract above). Validates x's
/// dtype, rank, axes and extents with score()'s errors; reads no values (x.data may be null).
std::vector<std::int64_t> score_shape(const TensorView& x, const ScoreOptions& options = {});

/// Computes all requested metrics in one fused pass over x. Each output is float32 or float64 (either,
/// whatever x's dtype), of score_shape(x), any strides, on x's device. Extra errors: no output, a
/// metric requested twice, outputs that overlap x or each other. The values are validated in the same
/// pass that scores them: when a bad value (NaN, a negative or unnormalised row, ...) throws, the
/// outputs of other items may already be written (the arguments themselves are all checked first).
void score(const TensorView& x, const std::vector<MetricOutput>& outputs, const ScoreOptions& options = {});

/// One metric; same contract as score().
void predictive_entropy(const TensorView& x, const TensorView& out, const ScoreOptions& options = {});
void expected_entropy(const TensorView& x, const TensorView& out, const ScoreOptions& options = {});
void bald(const TensorView& x, const TensorView& out, const ScoreOptions& options = {});
void least_confidence(const TensorView& x, const TensorView& out, const ScoreOptions& options = {});
void margin(const TensorView& x, const TensorView& out, const ScoreOptions& options = {});
void ratio(const TensorView& x, const TensorView& out, const ScoreOptions& options = {});
void variation_ratio(const TensorView& x, const TensorView& out, const ScoreOptions& options = {});
void max_mean_variation_ratio(const TensorView& x, const TensorView& out, const ScoreOptions& options = {});
void mean_std(const TensorView& x, const TensorView& out, const ScoreOptions& options = {});
void balentacq(const TensorView& x, const TensorView& out, const ScoreOptions& options = {});

}  // namespace labelwise
