// labelwise — fused sample-and-score of a 1x1(x1) segmentation head (MC dropout or ensemble).
//
// The head maps a feature map to class logits voxel by voxel: z_c = bias_c + Σ_f w[c, f] · d_f, with
// d = the (dropped-out, rescaled) features of the voxel. For every voxel the K samples are drawn,
// pushed through the head and the softmax, and reduced to the requested metrics on the spot: the
// [B, K, C, *spatial] probabilities are never materialised (memory O(voxels · outputs), not
// O(K · voxels · C)). head_sample() materialises exactly the probabilities that head_score() used.
//
// Shape contract
//   features : [B, F, *spatial] with 0 to 3 spatial axes, float32 or float64, CPU or CUDA, any strides.
//              No NaN / Inf. B · F · voxels must fit int64; at most 2^32 - 1 voxels per item and
//              index_offset + B <= 2^32 (Philox counter words).
//   weight   : [M, C, F], bias : [M, C]; float32 or float64 (any mix with features), same device as
//              features, any strides. M = 1: MC dropout (K samples, one mask each, rate `dropout`);
//              M > 1: an ensemble of M members, the samples are the members (K must equal M and
//              dropout must be 0). C >= 2, F >= 1.
//   outputs  : MetricOutput{metric, out [B, *spatial]} float32 or float64, features' device.
//   mean     : optional [B, C, *spatial] float32 / float64: the mean probabilities over the K samples.
//   samples  : (head_sample) [B, K, C, *spatial] float32: the probabilities of every sample.
//
// Arithmetic (identical on CPU and CUDA, and to labelwise.torch's reference; docs/segmentation.md):
//   mask of sample k, item b (global index index_offset + b), channel f, voxel v (C-order flat index
//   over the spatial axes): Philox-4x32-10 with key (seed lo, seed hi), counter
//   (v, f / 4, rng::kStreamDropout << 16 | k, b); word f % 4 >= ceil(p · 2^32) keeps the channel.
//   d_f = kept ? x_f · (1 / (1 - p)) : 0 in float64; z accumulated in float64 from the bias, f
//   ascending, every multiply and add rounded (no FMA); softmax in float64 (max subtracted; exp by
//   detail::det_exp_nonpositive, within 1 ulp and the same bits on every CPU and on CUDA) rounded once
//   to float32. So head_sample() gives the same bits on every instruction set and device. The metrics
//   then see those float32 probabilities as labelwise::score would (the same metric body; equal to the
//   last bits of its vectorised sums).
//
// Memory: the outputs, plus per CPU thread a scratch of 13·F + K·Cp float64 values (Cp: C rounded up
// to a multiple of 8), up to 256 KiB of
// float32 probabilities, and every sample's dropout words for the features, 6·K·F bytes (7.5 KiB at
// F = 64, K = 20; but 1.5 GiB at F = 2^16, K = 4000); per CUDA thread O(F + K · C) values. The
// [B, K, C, *spatial] samples exist only where head_sample() is asked for them.
//
// Errors (labelwise::Error): wrong ranks or sizes (naming the argument and both shapes), K < 1, K < 2
// for a metric that needs samples, K >= 2^16, K * C > 2^24, C > 4096, F >= 2^28, M >= 2^16, dropout
// outside [0, 1 - 2^-32], dropout != 0 or K != M for an ensemble, NaN / Inf features (naming the item
// and voxel), NaN / Inf weights or biases (naming the entry), logits that overflow float64, a metric
// requested twice, no output at all, index_offset + B > 2^32, mismatched devices, non-float dtypes
// (samples: float32 only), CUDA work in a CPU-only build.
#pragma once

#include <cstdint>
#include <vector>

#include "labelwise/core/tensor_view.hpp"
#include "labelwise/uncertainty/metrics.hpp"

namespace labelwise {

/// The largest dropout rate: a channel is kept when its 32-bit random word u has u / 2^32 >= p, which
/// drops every channel of a rate above 1 - 2^-32 (and 1 / (1 - p) would exceed 2^32).
constexpr double kMaxDropout = 1.0 - 1.0 / 4294967296.0;

struct HeadScoreOptions {
  /// K: MC-dropout samples (M = 1) or the member count (M > 1); 1 <= K < 2^16, K · C <= 2^24.
  std::int64_t samples = 20;
  /// Dropout rate p in [0, kMaxDropout]; must be 0 for ensembles.
  double dropout = 0.0;
  /// The Philox key of the dropout masks (low word, high word): the masks are a pure function of
  /// (seed, voxel, channel, sample, global item), the same on every CPU and on CUDA.
  std::uint64_t seed = 0;
  /// Global index of features' first item (a shard of a batch passes its first item's index);
  /// index_offset + B <= 2^32.
  std::uint64_t index_offset = 0;
  /// CUDA stream (cudaStream_t) for CUDA inputs; nullptr = the default stream. Ignored on the CPU.
  void* stream = nullptr;
};

/// Per-voxel metric maps (and optionally the mean prediction) of the head's K samples, in one pass.
/// `mean` may be nullptr. Features are validated in the same pass: when a NaN / Inf feature or an
/// overflowing logit throws, the outputs of other voxels may already be written (arguments, weights
/// and biases are all checked before anything is written).
void head_score(const TensorView& features, const TensorView& weight, const TensorView& bias,
                const std::vector<MetricOutput>& outputs, const TensorView* mean,
                const HeadScoreOptions& options);

/// The probabilities [B, K, C, *spatial] (float32) of the K samples head_score() reduces.
void head_sample(const TensorView& features, const TensorView& weight, const TensorView& bias,
                 const TensorView& samples, const HeadScoreOptions& options);

}  // namespace labelwise
