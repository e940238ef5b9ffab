// AVX-512 kNN candidate kernel with the candidate filter fused into the GEMM (compiled with
// -mavx512f -mavx512bf16 ...; chosen at run time in src/knn.cpp). See knn_backend.hpp (KnnFusedArgs)
// and docs/propagation.md ("kNN graph", "How it is fast").
//
// One call handles a block of query rows against a block of candidate columns. A register tile of
// kMR rows x 32 columns of dot products is accumulated over the whole feature dimension (float32
// FMAs, or bfloat16 pair products with float32 accumulation by VDPBF16PS: twice the rate), turned into
// approximate squared distances a = |y_r|^2 + |y_c|^2 - 2 y_r.y_c while still in registers, and
// compared with each row's (and, off the diagonal, each column's) current admission threshold: the
// root of its bounded max-heap of m candidates (+inf while the heap is not full). Only survivors
// leave the registers. No block of dot products is ever written to memory.
#include <immintrin.h>

#include <cstdint>

#include "../knn_backend.hpp"

namespace labelwise {
namespace detail {
namespace avx512 {

namespace {

constexpr int kMR = 12;  // rows per register tile (12 x 2 accumulators of 16 floats)

/// Offers (a, j) to a row's candidate list: keys[0 .. 16 nv) ascending (+inf where empty), the
/// indices alongside; the first m are the kept candidates. *thr is the row's admission threshold: the
/// m-th key once m are kept, or a smaller m-th key another worker's list for the same row had (then m
/// candidates at or below it are kept elsewhere, and nothing at or above it is needed here).
/// Branch-free insertion: the lanes from the new key's position on move up by one.
inline void push(float* keys, std::int32_t* idx, int nv, float* thr, std::int64_t m, float a, std::int32_t j) {
  if (!(a < *thr)) return;
  const __m512 av = _mm512_set1_ps(a);
  int pos = 0;
  for (int v = 0; v < nv; ++v)
    pos += __builtin_popcount(_mm512_cmp_ps_mask(_mm512_loadu_ps(keys + 16 * v), av, _CMP_LE_OQ));
  const __m512i jv = _mm512_set1_epi32(j);
  for (int v = nv - 1; v >= 0 && 16 * v + 15 >= pos; --v) {
    const int lo = pos - 16 * v;  // lanes >= lo move up; lane lo takes the new entry
    const __mmask16 ge = lo <= 0 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>(0xFFFFu << lo);
    const __mmask16 eq = (lo >= 0 && lo < 16) ? static_cast<__mmask16>(1u << lo) : static_cast<__mmask16>(0);
    const __m512 k = _mm512_loadu_ps(keys + 16 * v);
    const __m512i x = _mm512_loadu_si512(idx + 16 * v);
    const __m512 kp = v > 0 ? _mm512_loadu_ps(keys + 16 * v - 16) : k;
    const __m512i xp = v > 0 ? _mm512_loadu_si512(idx + 16 * v - 16) : x;
    __m512 kn = _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(k), _mm512_castps_si512(kp), 15));
    __m512i xn = _mm512_alignr_epi32(x, xp, 15);
    kn = _mm512_mask_mov_ps(_mm512_mask_mov_ps(k, ge, kn), eq, av);
    xn = _mm512_mask_mov_epi32(_mm512_mask_mov_epi32(x, ge, xn), eq, jv);
    _mm512_storeu_ps(keys + 16 * v, kn);
    _mm512_storeu_si512(idx + 16 * v, xn);
  }
  const float t = keys[m - 1];
  if (t < *thr) *thr = t;
}

/// The select mode (a diagonal block, every candidate list still empty or loose): row q's values
/// a[0 .. nc) (+inf up to the next multiple of 16) are all at hand. They are split into ng >= 2 m
/// groups (lane l of a run of consecutive vectors); t = the m-th smallest of the group minima has at
/// least m values at or below it (one per group), and only about 1.3 m on average: those alone are
/// offered to the candidate list, instead of the m (1 + ln(nc / m)) running records of a scan.
/// Branch-free: the rank of each minimum is counted with vector compares.
void select_row(const KnnFusedArgs& g, float* a, std::int64_t q, float* gm, int nv, std::int64_t S) {
  const std::int64_t m = g.m, nc = g.nc;
  const std::int64_t i = g.qid ? g.qid[q] : g.q0 + q;
  if (g.skip_self && i >= g.c0 && i < g.c0 + nc) a[i - g.c0] = __builtin_inff();
  float t = g.qroot[q];
  const std::int64_t nvec = (nc + 15) / 16;
  const std::int64_t nch = (2 * m + 15) / 16;  // runs of vectors: ng = 16 nch groups
  if (nvec >= nch) {
    for (std::int64_t ch = 0; ch < nch; ++ch) {
      const std::int64_t v0 = nvec * ch / nch, v1 = nvec * (ch + 1) / nch;
      __m512 mn = _mm512_loadu_ps(a + 16 * v0);
      for (std::int64_t v = v0 + 1; v < v1; ++v) mn = _mm512_min_ps(mn, _mm512_loadu_ps(a + 16 * v));
      _mm512_storeu_ps(gm + 16 * ch, mn);
    }
    const std::int64_t ng = 16 * nch;
    float best = __builtin_inff();
    for (std::int64_t x = 0; x < ng; ++x) {
      const __m512 xv = _mm512_set1_ps(gm[x]);
      std::int64_t cnt = 0;
      for (std::int64_t ch = 0; ch < nch; ++ch)
        cnt += __builtin_popcount(_mm512_cmp_ps_mask(_mm512_loadu_ps(gm + 16 * ch), xv, _CMP_LE_OQ));
      best = (cnt >= m && gm[x] < best) ? gm[x] : best;
    }
    if (best < t) t = best;
  }
  // every value <= t, in index order
  const __m512 tv = _mm512_set1_ps(t);
  float* keys = g.qkeys + q * S;
  std::int32_t* idx = g.qidx + q * S;
  float* thr = g.qroot + q;
  for (std::int64_t c = 0; c < nc; c += 16) {
    __mmask16 k = _mm512_cmp_ps_mask(_mm512_loadu_ps(a + c), tv, _CMP_LE_OQ);
    if (nc - c < 16) k &= static_cast<__mmask16>((1u << (nc - c)) - 1u);
    std::uint32_t bits = k;
    while (bits) {
      const int b = __builtin_ctz(bits);
      bits &= bits - 1;
      push(keys, idx, nv, thr, m, a[c + b], static_cast<std::int32_t>(g.c0 + c + b));
    }
  }
}

template <bool BF16>
inline __m512 step(__m512 acc, const std::uint32_t* a, __m512 b) {
  if constexpr (BF16) {
    return _mm512_dpbf16_ps(acc, (__m512bh)_mm512_set1_epi32(static_cast<int>(*a)), (__m512bh)b);
  } else {
    float f;
    __builtin_memcpy(&f, a, sizeof f);
    return _mm512_fmadd_ps(_mm512_set1_ps(f), b, acc);
  }
}

/// MODE 0: rows only; 1: rows and columns (off-diagonal symmetric block); 2: select (see select_row).
template <bool BF16, int MODE>
void fused(const KnnFusedArgs& g) {
  constexpr bool kCols = MODE == 1, kSelect = MODE == 2;
  const std::int64_t K = g.ksteps, m = g.m;
  const int nv = static_cast<int>((m + 15) / 16);
  const std::int64_t S = 16 * nv;
  const std::int64_t npan = (g.nc + 31) / 32;
  const __m512 two = _mm512_set1_ps(2.0f);
  const __m512 inf = _mm512_set1_ps(__builtin_inff());
  alignas(64) float buf[32];
  const std::int64_t ncp = npan * 32;
  float* sel = kSelect ? new float[static_cast<std::size_t>(kMR * ncp)] : nullptr;
  float* smp = kSelect ? new float[static_cast<std::size_t>(16 * ((2 * m + 15) / 16))] : nullptr;
  for (std::int64_t r0 = 0; r0 < g.nq; r0 += kMR) {
    const std::uint32_t* arow[kMR];
    const float* qr[kMR];
    float yq[kMR];
    for (int r = 0; r < kMR; ++r) {
      const std::int64_t rr = r0 + r < g.nq ? r0 + r : g.nq - 1;
      arow[r] = g.A + rr * g.lda;
      qr[r] = g.qroot + rr;
      yq[r] = r0 + r < g.nq ? g.yq[r0 + r] : __builtin_inff();  // a = +inf: never admitted
    }
    for (std::int64_t p = 0; p < npan; ++p) {
      const std::uint32_t* bp = g.Bp + p * K * 32;
      __m512 acc[kMR][2];
#pragma GCC unroll 12
      for (int r = 0; r < kMR; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
      for (std::int64_t s = 0; s < K; ++s) {
        const __m512 b0 = _mm512_load_ps(reinterpret_cast<const float*>(bp + s * 32));
        const __m512 b1 = _mm512_load_ps(reinterpret_cast<const float*>(bp + s * 32 + 16));
#pragma GCC unroll 12
        for (int r = 0; r < kMR; ++r) {
          acc[r][0] = step<BF16>(acc[r][0], arow[r] + s, b0);
          acc[r][1] = step<BF16>(acc[r][1], arow[r] + s, b1);
        }
      }
      const std::int64_t c = p * 32;
      const __m512 yc0 = _mm512_loadu_ps(g.yc + c), yc1 = _mm512_loadu_ps(g.yc + c + 16);
      __m512 cr0 = inf, cr1 = inf;
      if (kCols) {
        cr0 = _mm512_loadu_ps(g.croot + c);
        cr1 = _mm512_loadu_ps(g.croot + c + 16);
      }
#pragma GCC unroll 12
      for (int r = 0; r < kMR; ++r) {
        const __m512 y = _mm512_set1_ps(yq[r]);
        const __m512 a0 = _mm512_fnmadd_ps(two, acc[r][0], _mm512_add_ps(y, yc0));
        const __m512 a1 = _mm512_fnmadd_ps(two, acc[r][1], _mm512_add_ps(y, yc1));
        if (kSelect) {  // keep the whole row of the block for the selection below
          _mm512_storeu_ps(sel + r * ncp + c, a0);
          _mm512_storeu_ps(sel + r * ncp + c + 16, a1);
          continue;
        }
        const __m512 rt = _mm512_set1_ps(*qr[r]);
        __m512 t0 = rt, t1 = rt;
        if (kCols) {
          t0 = _mm512_max_ps(rt, cr0);
          t1 = _mm512_max_ps(rt, cr1);
        }
        const __mmask16 k0 = _mm512_cmp_ps_mask(a0, t0, _CMP_LT_OQ);
        const __mmask16 k1 = _mm512_cmp_ps_mask(a1, t1, _CMP_LT_OQ);
        std::uint32_t bits = static_cast<std::uint32_t>(k0) | (static_cast<std::uint32_t>(k1) << 16);
        if (__builtin_expect(bits == 0, 1)) continue;
        // survivors: offer each to the row's heap and (off the diagonal) to the column's heap
        _mm512_store_ps(buf, a0);
        _mm512_store_ps(buf + 16, a1);
        knn_offer_survivors<kCols>(g, buf, bits, c, r0 + r, S,
                                   [&](float* keys, std::int32_t* idx, float* thr, float a, std::int32_t j) {
                                     push(keys, idx, nv, thr, m, a, j);
                                   });
      }
    }
    if (kSelect)
      for (int r = 0; r < kMR && r0 + r < g.nq; ++r) select_row(g, sel + r * ncp, r0 + r, smp, nv, S);
  }
  delete[] sel;
  delete[] smp;
}

}  // namespace

void knn_fused_block(const KnnFusedArgs& args) {
  const int mode = args.select ? 2 : args.cols ? 1 : 0;
  if (args.bf16) {
    if (mode == 0) fused<true, 0>(args);
    else if (mode == 1) fused<true, 1>(args);
    else fused<true, 2>(args);
  } else {
    if (mode == 0) fused<false, 0>(args);
    else if (mode == 1) fused<false, 1>(args);
    else fused<false, 2>(args);
  }
}

#include "knn_exact_keys.inc"

}  // namespace avx512
}  // namespace detail
}  // namespace labelwise
