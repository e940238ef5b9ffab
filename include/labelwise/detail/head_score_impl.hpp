// labelwise — the one loop body of the fused head sample-and-score (segmentation/head_score.hpp),
// compiled by g++ for the CPU (src/cpu/head_score_cpu_*.cpp, with -ffp-contract=off, once per
// instruction set) and by nvcc for CUDA (src/cuda/head_score_cuda.cu, with --fmad=false and the
// explicit __d*_rn intrinsics of rng.hpp). It computes the K x C float32 probabilities of one voxel of
// one item; the caller then hands them to the metrics of labelwise::score (the block path on the CPU,
// detail::score_item on CUDA) or writes them out (head_sample).
//
// Every floating-point operation below is an IEEE-754 +, -, * or / in round-to-nearest, so the CPU
// (any instruction set) and CUDA produce the same bits. That includes the exponential of the softmax:
// det_exp_nonpositive() is written here from those operations, because the C library's exp and CUDA's
// differ in the last bit.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>
#if defined(__AVX512F__) && !defined(__CUDACC__)
#include <immintrin.h>
#endif

#include "labelwise/core/config.hpp"
#include "labelwise/core/rng.hpp"
#include "labelwise/detail/philox_lanes.hpp"
#include "labelwise/detail/uncertainty_impl.hpp"

namespace labelwise {
namespace detail {

/// Status of a voxel whose logits overflow float64 (finite features and weights, non-finite z).
constexpr int kHeadNonFiniteLogits = 5;

/// The head's constants, shared by every voxel. Weights are packed by the backend into float64
/// `wt[m][f][Cp]` (class fastest, padded with zeros to Cp = padded_classes(C)), biases `bias[m][C]`.
struct HeadParams {
  int F = 0;
  int C = 0;
  int Cp = 0;
  int K = 0;
  int M = 1;                 // 1: MC dropout (every sample uses member 0); > 1: sample k is member k
  const double* wt = nullptr;
  const double* bias = nullptr;
  bool dropout = false;      // p > 0: draw masks (p = 0 keeps every channel: d = x · 1.0 = x exactly)
  std::uint32_t keep_threshold = 0;  // keep iff word >= ceil(p · 2^32) (<= 2^32 - 1 for p < 1)
  double scale = 1.0;        // 1 / (1 - p)
  std::uint32_t key0 = 0, key1 = 0;  // seed low / high word
};

inline namespace LABELWISE_ISA_NAMESPACE {

/// exp(x) for x <= 0 (and -inf), within 1 ulp, from IEEE-rounded operations only: the same bits on
/// every CPU instruction set and on CUDA. x = n·ln2 + r with n = round(x / ln2) (by the 1.5·2^52 shift)
/// and r = (x − n·ln2_hi) − n·ln2_lo (Cody–Waite: ln2_hi has 32 significant bits, so n·ln2_hi and the
/// subtraction are exact); exp(r) by its Taylor series to r^13/13! (|r| <= 0.347: the first omitted term
/// is below 2^-57 relative) in Horner form; times 2^n built from the exponent bits. Below −708 the
/// result is 0 (the exact value is < 2^-1021, which the softmax's float32 rounding sends to 0 anyway).
LABELWISE_HD inline double det_exp_nonpositive(double x) {
  const bool tiny = !(x >= -708.0);
  const double xs = tiny ? 0.0 : x;
  constexpr double kShift = 6755399441055744.0;  // 1.5 · 2^52
  constexpr double kLog2e = 1.4426950408889634;
  constexpr double kLn2Hi = 6.93147180369123816490e-01;  // 0x3FE62E42FEE00000
  constexpr double kLn2Lo = 1.90821492927058770002e-10;
  const double t = rng::add_rn(rng::mul_rn(xs, kLog2e), kShift);
  const double n = rng::sub_rn(t, kShift);
  const double r = rng::sub_rn(rng::sub_rn(xs, rng::mul_rn(n, kLn2Hi)), rng::mul_rn(n, kLn2Lo));
  double p = 1.0 / 6227020800.0;                 // 1/13!
  p = rng::add_rn(rng::mul_rn(p, r), 1.0 / 479001600.0);  // 1/12!
  p = rng::add_rn(rng::mul_rn(p, r), 1.0 / 39916800.0);
  p = rng::add_rn(rng::mul_rn(p, r), 1.0 / 3628800.0);
  p = rng::add_rn(rng::mul_rn(p, r), 1.0 / 362880.0);
  p = rng::add_rn(rng::mul_rn(p, r), 1.0 / 40320.0);
  p = rng::add_rn(rng::mul_rn(p, r), 1.0 / 5040.0);
  p = rng::add_rn(rng::mul_rn(p, r), 1.0 / 720.0);
  p = rng::add_rn(rng::mul_rn(p, r), 1.0 / 120.0);
  p = rng::add_rn(rng::mul_rn(p, r), 1.0 / 24.0);
  p = rng::add_rn(rng::mul_rn(p, r), 1.0 / 6.0);
  p = rng::add_rn(rng::mul_rn(p, r), 0.5);
  p = rng::add_rn(rng::mul_rn(p, r), 1.0);
  p = rng::add_rn(rng::mul_rn(p, r), 1.0);
  // n in [-1022, 0]: t's low bits hold n (two's complement), so 2^n = bits((n + 1023) << 52).
  const std::int64_t ni = static_cast<std::int64_t>(rng::double_bits(t) - rng::double_bits(kShift));
  const double scale = rng::bits_double(static_cast<std::uint64_t>(ni + 1023) << 52);
  const double e = rng::mul_rn(p, scale);
  return tiny ? 0.0 : e;
}

/// The Philox word that decides channel f of sample k (counter (v, f/4, kStreamDropout << 16 | k, b)).
LABELWISE_HD inline rng::Philox4x32 head_mask_block(const HeadParams& hp, std::uint32_t v, int g, int k,
                                                    std::uint32_t b) {
  const rng::Philox4x32 ctr{{v, static_cast<std::uint32_t>(g),
                             (static_cast<std::uint32_t>(rng::kStreamDropout) << 16) | static_cast<std::uint32_t>(k),
                             b}};
  return rng::philox4x32_10(ctr, hp.key0, hp.key1);
}

/// Softmax of one sample's logits z (C entries, stride ts) into probs (float32, stride ts):
/// maximum subtracted, det_exp_nonpositive, the sum over c ascending, one division, one rounding.
/// Returns kItemOk or kHeadNonFiniteLogits.
LABELWISE_HD inline int head_softmax(double* z, std::int64_t ts, int C, float* probs) {
  double mx = z[0];
  int overflow = 0;
  for (int c = 0; c < C; ++c) {
    const double zc = z[c * ts];
    overflow |= (zc - zc == 0.0) ? 0 : 1;  // ±Inf (or NaN from Inf - Inf)
    mx = zc > mx ? zc : mx;
  }
  if (overflow) return kHeadNonFiniteLogits;
  double sum = 0.0;
  for (int c = 0; c < C; ++c) {
    const double e = det_exp_nonpositive(rng::sub_rn(z[c * ts], mx));
    z[c * ts] = e;
    sum = rng::add_rn(sum, e);
  }
  for (int c = 0; c < C; ++c) probs[c * ts] = static_cast<float>(rng::div_rn(z[c * ts], sum));
  return kItemOk;
}

/// Calls f(std::integral_constant<int, kRegs>{}) with the register count head_voxel_probs takes for C
/// classes: 8, 16 or 32 (C <= 32), else 0 (the logits in scratch). The CUDA launch and its host test
/// both choose the form through it.
template <typename F>
inline void with_logit_registers(int C, F&& f) {
  if (C <= 8)
    f(std::integral_constant<int, 8>{});
  else if (C <= 16)
    f(std::integral_constant<int, 16>{});
  else if (C <= 32)
    f(std::integral_constant<int, 32>{});
  else
    f(std::integral_constant<int, 0>{});
}

/// The K x C probabilities of one voxel, one thread per voxel (the CUDA path; also a plain scalar
/// reference of the arithmetic): `x` points at feature 0 of the voxel, `fs` is the feature stride
/// (elements), `v` the voxel's C-order flat index within its item, `b` the item's global index.
/// Scratch: xs[F · ts] float64 features, z[C · ts] float64 logits; probabilities go to
/// probs[(k · C + c) · ts]. `ts` interleaves the scratch of the threads of a launch so that their
/// accesses coalesce. Returns kItemOk, kItemNonFinite (NaN / Inf feature) or kHeadNonFiniteLogits.
///
/// Arithmetic (docs/segmentation.md): d_f = kept ? x_f · s : 0; z_c = bias_c, then z_c = z_c + W_cf · d_f
/// for f ascending, each operation rounded (mul_rn / add_rn); softmax as head_softmax. A dropped
/// channel is skipped: its term W_cf · 0 is ±0, which leaves z_c unchanged except for the sign of a
/// zero z_c, and the softmax does not see that sign (the backends check weights and biases are finite).
///
/// kRegs > 0 (at least C): a sample's logits are accumulated in a register array of kRegs entries and
/// stored to z once, instead of a read-modify-write of z[c · ts] (global memory on CUDA) for every
/// feature and class; the same operations in the same order, so the same bits (tests/cpp/
/// test_head_score.cpp compares both on the host).
template <typename T, int kRegs = 0>
LABELWISE_HD int head_voxel_probs(const T* x, std::int64_t fs, const HeadParams& hp, std::uint32_t v, std::uint32_t b,
                                  double* xs, double* z, float* probs, std::int64_t ts) {
  const int F = hp.F, C = hp.C;
  int bad = 0;
  for (int f = 0; f < F; ++f) {
    const double xv = static_cast<double>(x[f * fs]);
    bad |= (xv - xv == 0.0) ? 0 : 1;  // NaN or ±Inf
    xs[f * ts] = xv;
  }
  if (bad) return kItemNonFinite;
  const int groups = (F + 3) / 4;
  for (int k = 0; k < hp.K; ++k) {
    const int m = hp.M > 1 ? k : 0;
    const double* w = hp.wt + static_cast<std::int64_t>(m) * F * hp.Cp;
    const double* bias = hp.bias + static_cast<std::int64_t>(m) * C;
    [[maybe_unused]] double acc[kRegs > 0 ? kRegs : 1];
    if constexpr (kRegs > 0) {
      LABELWISE_UNROLL
      for (int c = 0; c < kRegs; ++c) acc[c] = c < C ? bias[c] : 0.0;
    } else {
      for (int c = 0; c < C; ++c) z[c * ts] = bias[c];
    }
    for (int g = 0; g < groups; ++g) {
      rng::Philox4x32 word{{0u, 0u, 0u, 0u}};
      if (hp.dropout) word = head_mask_block(hp, v, g, k, b);
      const int f_end = 4 * g + 4 < F ? 4 * g + 4 : F;
      for (int f = 4 * g; f < f_end; ++f) {
        if (hp.dropout && word.v[f - 4 * g] < hp.keep_threshold) continue;  // dropped
        const double d = rng::mul_rn(xs[f * ts], hp.scale);  // scale = 1 (exact) without dropout
        const double* wf = w + static_cast<std::int64_t>(f) * hp.Cp;
        if constexpr (kRegs > 0) {
          LABELWISE_UNROLL
          for (int c = 0; c < kRegs; ++c)
            if (c < C) acc[c] = rng::add_rn(acc[c], rng::mul_rn(wf[c], d));
        } else {
          for (int c = 0; c < C; ++c) z[c * ts] = rng::add_rn(z[c * ts], rng::mul_rn(wf[c], d));
        }
      }
    }
    if constexpr (kRegs > 0) {
      LABELWISE_UNROLL
      for (int c = 0; c < kRegs; ++c)
        if (c < C) z[c * ts] = acc[c];
    }
    const int st = head_softmax(z, ts, C, probs + static_cast<std::int64_t>(k) * C * ts);
    if (st != kItemOk) return st;
  }
  return kItemOk;
}

// ---- CPU: the same arithmetic, restructured so that the compiler vectorises it ----------------------

#if defined(LABELWISE_CPU_SIMD) && !defined(__CUDACC__)
#define LABELWISE_SIMD_HEAD _Pragma("omp simd")
#define LABELWISE_SIMD_HEAD_NONFINITE _Pragma("omp simd reduction(+ : nonfinite)")  // Σ v · 0 checks
#else
#define LABELWISE_SIMD_HEAD
#define LABELWISE_SIMD_HEAD_NONFINITE
#endif

/// Per-thread scratch of head_voxel_probs_cpu (caller-owned; sizes in entries).
struct HeadCpuScratch {
  double* xs;             // F
  double* d;              // 4 · F: the gates or the masked, scaled features of 4 samples
  double* u;              // 8 · F: the shared products of one class block (MC dropout)
  double* z;              // K · Cp logits, then exponentials
  std::uint32_t* words;   // K · G · 4 Philox words (G = ceil(F / 4)), only with dropout
  const std::uint32_t* counter1;  // K · G: g of block j = k · G + g (precomputed by the caller)
  const std::uint32_t* counter2;  // K · G: kStreamDropout << 16 | k of block j
};

/// Philox blocks j in [0, n) for voxel v, item b, kLanes blocks at a time so that the rounds vectorise
/// (the generic and AVX2 builds; AVX-512 has head_philox_blocks_avx512 below).
/// words[4j + w] = word w of block j.
template <int kLanes = 16>
inline void head_philox_blocks(const HeadParams& hp, std::uint32_t v, std::uint32_t b, const std::uint32_t* c1_in,
                               const std::uint32_t* c2_in, std::int64_t n, std::uint32_t* words) {
  for (std::int64_t j0 = 0; j0 < n; j0 += kLanes) {
    std::uint32_t c0[kLanes], c1[kLanes], c2[kLanes], c3[kLanes];
    LABELWISE_SIMD_HEAD
    for (int l = 0; l < kLanes; ++l) {
      const std::int64_t j = j0 + l < n ? j0 + l : n - 1;
      c0[l] = v;
      c1[l] = c1_in[j];
      c2[l] = c2_in[j];
      c3[l] = b;
    }
    philox_rounds_lanes<kLanes>(c0, c1, c2, c3, hp.key0, hp.key1);
    const int lanes = n - j0 < kLanes ? static_cast<int>(n - j0) : kLanes;
    for (int l = 0; l < lanes; ++l) {
      std::uint32_t* wj = words + 4 * static_cast<std::int64_t>(j0 + l);
      wj[0] = static_cast<std::uint32_t>(c0[l]);
      wj[1] = static_cast<std::uint32_t>(c1[l]);
      wj[2] = static_cast<std::uint32_t>(c2[l]);
      wj[3] = static_cast<std::uint32_t>(c3[l]);
    }
  }
}

#if defined(__AVX512F__) && !defined(__CUDACC__)
// (GCC 12: see the note on -Wmaybe-uninitialized in philox_lanes.hpp)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
/// The same blocks with AVX-512 intrinsics, 16 blocks per iteration in the 32-bit lanes of one vector
/// per counter word (philox_rounds_avx512), and the 4 x 16 words transposed in registers into the
/// interleaved layout (words[4j + w]) by unpacks and 128-bit shuffles instead of 64 scalar stores.
inline void head_philox_blocks_avx512(const HeadParams& hp, std::uint32_t v, std::uint32_t b,
                                      const std::uint32_t* c1_in, const std::uint32_t* c2_in, std::int64_t n,
                                      std::uint32_t* words) {
  for (std::int64_t j0 = 0; j0 < n; j0 += 16) {
    const int lanes = n - j0 < 16 ? static_cast<int>(n - j0) : 16;
    const __mmask16 live = static_cast<__mmask16>(lanes == 16 ? 0xFFFFu : (1u << lanes) - 1u);
    __m512i c0 = _mm512_set1_epi32(static_cast<int>(v));
    __m512i c1 = _mm512_maskz_loadu_epi32(live, c1_in + j0);
    __m512i c2 = _mm512_maskz_loadu_epi32(live, c2_in + j0);
    __m512i c3 = _mm512_set1_epi32(static_cast<int>(b));
    philox_rounds_avx512(c0, c1, c2, c3, hp.key0, hp.key1);
    // Per 128-bit lane i, u_r holds block 4i + r's four words; then a 4 x 4 transpose of the lanes.
    const __m512i t0 = _mm512_unpacklo_epi32(c0, c1), t1 = _mm512_unpackhi_epi32(c0, c1);
    const __m512i t2 = _mm512_unpacklo_epi32(c2, c3), t3 = _mm512_unpackhi_epi32(c2, c3);
    const __m512i u0 = _mm512_unpacklo_epi64(t0, t2), u1 = _mm512_unpackhi_epi64(t0, t2);
    const __m512i u2 = _mm512_unpacklo_epi64(t1, t3), u3 = _mm512_unpackhi_epi64(t1, t3);
    const __m512i v0 = _mm512_shuffle_i32x4(u0, u1, 0x44), v1 = _mm512_shuffle_i32x4(u0, u1, 0xEE);
    const __m512i v2 = _mm512_shuffle_i32x4(u2, u3, 0x44), v3 = _mm512_shuffle_i32x4(u2, u3, 0xEE);
    const __m512i out[4] = {_mm512_shuffle_i32x4(v0, v2, 0x88), _mm512_shuffle_i32x4(v0, v2, 0xDD),
                            _mm512_shuffle_i32x4(v1, v3, 0x88), _mm512_shuffle_i32x4(v1, v3, 0xDD)};
    std::uint32_t* w = words + 4 * static_cast<std::int64_t>(j0);
    for (int q = 0; q < 4; ++q) {  // out[q] = blocks 4q .. 4q + 3
      const int have = lanes - 4 * q;
      if (have <= 0) break;
      const __mmask16 m = static_cast<__mmask16>(have >= 4 ? 0xFFFFu : (1u << (4 * have)) - 1u);
      _mm512_mask_storeu_epi32(w + 16 * q, m, out[q]);
    }
  }
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

/// head_voxel_probs for the CPU: the same bits, with the masks of all K samples drawn in one vectorised
/// batch, every channel's term added (a dropped one adds W_cf · 0 = ±0: branch-free, and the softmax
/// cannot tell), the class loops over whole blocks of Cp and the exponentials over all K · Cp logits at
/// once. probs: K · C contiguous.
template <typename T>
inline int head_voxel_probs_cpu(const T* x, std::int64_t fs, const HeadParams& hp, std::uint32_t v, std::uint32_t b,
                                const HeadCpuScratch& s, float* probs) {
  const int F = hp.F, C = hp.C, Cp = hp.Cp, K = hp.K, G = (F + 3) / 4;
  double* __restrict__ xs = s.xs;
  int bad = 0;
  for (int f = 0; f < F; ++f) {
    const double xv = static_cast<double>(x[f * fs]);
    bad |= (xv - xv == 0.0) ? 0 : 1;
    xs[f] = xv;
  }
  if (bad) return kItemNonFinite;
#if defined(__AVX512F__) && !defined(__CUDACC__)
  if (hp.dropout) head_philox_blocks_avx512(hp, v, b, s.counter1, s.counter2, static_cast<std::int64_t>(K) * G, s.words);
#else
  if (hp.dropout) head_philox_blocks(hp, v, b, s.counter1, s.counter2, static_cast<std::int64_t>(K) * G, s.words);
#endif
  // Logits by blocks of 8 classes, 4 samples at a time: 4 independent accumulator vectors that stay in
  // registers over the f loop (one sample at a time would be a chain of dependent adds through memory).
  //
  // MC dropout (one head) shares the products between samples: a kept channel adds the same rounded
  // u_cf = W_cf · (x_f · s) in every sample, so u is formed once per voxel and class block and each
  // sample adds u_cf · g_kf with a gate g in {0, 1}. That product is exact, so fma(u, g, acc) is the
  // one rounding of acc + u_cf (kept) or acc + (±0) (dropped): the bits of mul-then-add, for one
  // instruction instead of two (builds without FMA multiply and add: the same bits). u is formed for
  // every channel, dropped or not, and the padding classes: a non-finite u_cf (a product that overflows
  // float64) would turn a dropped channel's 0 · inf into NaN, so such a class block takes the masked
  // features instead.
  constexpr int kS = 4;
  double* __restrict__ d = s.d;  // kS · F gates (shared products) or masked, scaled features
  double* __restrict__ u = s.u;  // F · kClassBlock: u_cf of one class block
  const double sc = hp.dropout ? hp.scale : 1.0;
  for (int cb = 0; cb < Cp; cb += kClassBlock) {
    bool shared = hp.M == 1 && hp.dropout;
    if (shared) {
      for (int f = 0; f < F; ++f) {
        const double df = xs[f] * sc;
        const double* __restrict__ wf = hp.wt + static_cast<std::int64_t>(f) * Cp + cb;
        double* __restrict__ uf = u + static_cast<std::int64_t>(f) * kClassBlock;
        LABELWISE_SIMD_HEAD
        for (int j = 0; j < kClassBlock; ++j) uf[j] = wf[j] * df;
      }
      double nonfinite = 0.0;  // Σ u · 0: NaN iff a product is ±Inf or NaN (0 · Inf when x · s overflows)
      const std::int64_t fu = static_cast<std::int64_t>(F) * kClassBlock;
      LABELWISE_SIMD_HEAD_NONFINITE
      for (std::int64_t i = 0; i < fu; ++i) nonfinite += u[i] * 0.0;
      shared = nonfinite == 0.0;
    }
    for (int k0 = 0; k0 < K; k0 += kS) {
      const int kn = K - k0 < kS ? K - k0 : kS;
      const double* wk[kS];
      const double* bk[kS];
      for (int kk = 0; kk < kS; ++kk) {
        const int k = kk < kn ? k0 + kk : k0;
        const int m = hp.M > 1 ? k : 0;
        wk[kk] = hp.wt + static_cast<std::int64_t>(m) * F * Cp;
        bk[kk] = hp.bias + static_cast<std::int64_t>(m) * C;
        double* __restrict__ dk = d + static_cast<std::int64_t>(kk) * F;
        if (kk >= kn) {
          for (int f = 0; f < F; ++f) dk[f] = 0.0;
        } else if (hp.dropout) {
          const std::uint32_t* __restrict__ wd = s.words + 4 * static_cast<std::int64_t>(k) * G;
          const std::uint32_t thr = hp.keep_threshold;
          if (shared) {
            LABELWISE_SIMD_HEAD
            for (int f = 0; f < F; ++f) dk[f] = wd[f] >= thr ? 1.0 : 0.0;
          } else {
            LABELWISE_SIMD_HEAD
            for (int f = 0; f < F; ++f) dk[f] = wd[f] >= thr ? xs[f] * sc : 0.0;
          }
        } else {
          for (int f = 0; f < F; ++f) dk[f] = xs[f];
        }
      }
      double acc[kS][kClassBlock];
      for (int kk = 0; kk < kS; ++kk) {
        LABELWISE_SIMD_HEAD
        for (int j = 0; j < kClassBlock; ++j) acc[kk][j] = cb + j < C ? bk[kk][cb + j] : 0.0;
      }
      if (shared) {
        for (int f = 0; f < F; ++f) {
          const double* __restrict__ uf = u + static_cast<std::int64_t>(f) * kClassBlock;
          for (int kk = 0; kk < kS; ++kk) {
            const double g = d[static_cast<std::int64_t>(kk) * F + f];
            LABELWISE_SIMD_HEAD
            for (int j = 0; j < kClassBlock; ++j) {
#if defined(__FMA__)
              acc[kk][j] = std::fma(uf[j], g, acc[kk][j]);
#else
              acc[kk][j] = acc[kk][j] + uf[j] * g;  // the same single rounding: u · g is exact
#endif
            }
          }
        }
      } else if (hp.M == 1) {
        // One head: the samples share the weight row, loaded once per feature for all kS of them.
        for (int f = 0; f < F; ++f) {
          const double* __restrict__ wf = wk[0] + static_cast<std::int64_t>(f) * Cp + cb;
          double w[kClassBlock];
          LABELWISE_SIMD_HEAD
          for (int j = 0; j < kClassBlock; ++j) w[j] = wf[j];
          for (int kk = 0; kk < kS; ++kk) {
            const double df = d[static_cast<std::int64_t>(kk) * F + f];
            LABELWISE_SIMD_HEAD
            for (int j = 0; j < kClassBlock; ++j) acc[kk][j] = acc[kk][j] + w[j] * df;
          }
        }
      } else {
        for (int f = 0; f < F; ++f) {
          for (int kk = 0; kk < kS; ++kk) {
            const double df = d[static_cast<std::int64_t>(kk) * F + f];
            const double* __restrict__ wf = wk[kk] + static_cast<std::int64_t>(f) * Cp + cb;
            LABELWISE_SIMD_HEAD
            for (int j = 0; j < kClassBlock; ++j) acc[kk][j] = acc[kk][j] + wf[j] * df;
          }
        }
      }
      for (int kk = 0; kk < kn; ++kk) {
        double* __restrict__ zk = s.z + static_cast<std::int64_t>(k0 + kk) * Cp + cb;
        LABELWISE_SIMD_HEAD
        for (int j = 0; j < kClassBlock; ++j) zk[j] = acc[kk][j];
      }
    }
  }
  // Softmax of every sample: its maximum subtracted (pads set to -inf), then the exponentials of all
  // K · Cp logits in one vector loop, then the sums in class order and the divisions. The maximum is
  // taken over class blocks lane by lane, then over the lanes as a tree (exact in any order; a zero
  // maximum's sign can only change the sign of a zero z − max, whose exponential is 1 either way).
  double* __restrict__ z = s.z;
  const std::int64_t kc = static_cast<std::int64_t>(K) * Cp;
  double nonfinite = 0.0;  // Σ z · 0: NaN iff a logit is ±Inf or NaN (pads are 0)
  LABELWISE_SIMD_HEAD_NONFINITE
  for (std::int64_t i = 0; i < kc; ++i) nonfinite += z[i] * 0.0;
  if (!(nonfinite == 0.0)) return kHeadNonFiniteLogits;
  for (int k = 0; k < K; ++k) {
    double* __restrict__ zk = z + static_cast<std::int64_t>(k) * Cp;
    double m[kClassBlock];
    LABELWISE_SIMD_HEAD
    for (int j = 0; j < kClassBlock; ++j) m[j] = j < C ? zk[j] : -INFINITY;
    for (int cb = kClassBlock; cb < Cp; cb += kClassBlock) {
      LABELWISE_SIMD_HEAD
      for (int j = 0; j < kClassBlock; ++j) m[j] = cb + j < C && zk[cb + j] > m[j] ? zk[cb + j] : m[j];
    }
    static_assert(kClassBlock == 8, "the tree below takes 8 lanes");
    for (int j = 0; j < 4; ++j) m[j] = m[j + 4] > m[j] ? m[j + 4] : m[j];
    for (int j = 0; j < 2; ++j) m[j] = m[j + 2] > m[j] ? m[j + 2] : m[j];
    const double mx = m[1] > m[0] ? m[1] : m[0];
    LABELWISE_SIMD_HEAD
    for (int c = 0; c < Cp; ++c) zk[c] = c < C ? zk[c] - mx : -INFINITY;
  }
  LABELWISE_SIMD_HEAD
  for (std::int64_t i = 0; i < kc; ++i) z[i] = det_exp_nonpositive(z[i]);
  for (int k = 0; k < K; ++k) {
    const double* __restrict__ zk = z + static_cast<std::int64_t>(k) * Cp;
    double sum = 0.0;
    for (int c = 0; c < C; ++c) sum += zk[c];
    float* __restrict__ pk = probs + static_cast<std::int64_t>(k) * C;
    LABELWISE_SIMD_HEAD
    for (int c = 0; c < C; ++c) pk[c] = static_cast<float>(zk[c] / sum);
  }
  return kItemOk;
}

}  // namespace LABELWISE_ISA_NAMESPACE
}  // namespace detail
}  // namespace labelwise
