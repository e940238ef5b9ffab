// AVX2 + FMA kNN candidate kernel with the candidate filter fused into the GEMM (compiled with
// -mavx2 -mfma; chosen at run time in src/knn.cpp on processors without AVX-512). The same contract
// and method as the AVX-512 kernel (src/cpu/knn_fused_avx512.cpp; knn_backend.hpp, KnnFusedArgs), in
// float32 only (AVX2 has no bfloat16 dot product): a register tile of kMR rows × 16 columns (half a
// panel) of dot products is accumulated over the whole feature dimension by FMAs, turned into
// approximate squared distances a = |y_r|² + |y_c|² − 2 y_r·y_c in registers and compared with the
// rows' (and, off the diagonal, the columns') admission thresholds; only survivors leave the
// registers. Every dot product is a sequential FMA chain over the features, as in the AVX-512 kernel,
// so the float32 error bound of src/knn.cpp (lower32) holds unchanged.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../knn_backend.hpp"

namespace labelwise {
namespace detail {
namespace avx2 {

namespace {

constexpr int kMR = 6;  // rows per register tile (6 x 2 accumulators of 8 floats)

/// Offers (a, j) to a row's candidate list (keys[0 .. S) ascending, +inf where empty; the first m are
/// kept) and lowers its admission threshold *thr to the m-th key. Equal keys: the new entry goes after
/// the ones already there, as in the AVX-512 kernel.
inline void push(float* keys, std::int32_t* idx, std::int64_t S, float* thr, std::int64_t m, float a,
                 std::int32_t j) {
  if (!(a < *thr)) return;
  const std::int64_t pos = std::upper_bound(keys, keys + S, a) - keys;
  if (pos >= S) return;
  for (std::int64_t t = S - 1; t > pos; --t) {
    keys[t] = keys[t - 1];
    idx[t] = idx[t - 1];
  }
  keys[pos] = a;
  idx[pos] = j;
  const float t = keys[m - 1];
  if (t < *thr) *thr = t;
}

/// The select mode (see the AVX-512 kernel's select_row): row q's values a[0 .. nc) (+inf up to the
/// next multiple of 16) are split into 16 · nch >= 2 m groups; the m-th smallest group minimum t has at
/// least m values at or below it, and only those are offered, in index order.
void select_row(const KnnFusedArgs& g, float* a, std::int64_t q, float* gm, std::int64_t S) {
  const std::int64_t m = g.m, nc = g.nc;
  const std::int64_t i = g.qid ? g.qid[q] : g.q0 + q;
  if (g.skip_self && i >= g.c0 && i < g.c0 + nc) a[i - g.c0] = __builtin_inff();
  float t = g.qroot[q];
  const std::int64_t nvec = (nc + 15) / 16;
  const std::int64_t nch = (2 * m + 15) / 16;
  if (nvec >= nch) {
    for (std::int64_t ch = 0; ch < nch; ++ch) {
      const std::int64_t v0 = nvec * ch / nch, v1 = nvec * (ch + 1) / nch;
      __m256 lo = _mm256_loadu_ps(a + 16 * v0), hi = _mm256_loadu_ps(a + 16 * v0 + 8);
      for (std::int64_t v = v0 + 1; v < v1; ++v) {
        lo = _mm256_min_ps(lo, _mm256_loadu_ps(a + 16 * v));
        hi = _mm256_min_ps(hi, _mm256_loadu_ps(a + 16 * v + 8));
      }
      _mm256_storeu_ps(gm + 16 * ch, lo);
      _mm256_storeu_ps(gm + 16 * ch + 8, hi);
    }
    const std::int64_t ng = 16 * nch;
    float best = __builtin_inff();
    for (std::int64_t x = 0; x < ng; ++x) {
      const __m256 xv = _mm256_set1_ps(gm[x]);
      std::int64_t cnt = 0;
      for (std::int64_t e = 0; e < ng; e += 8)
        cnt += __builtin_popcount(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(gm + e), xv, _CMP_LE_OQ)));
      best = (cnt >= m && gm[x] < best) ? gm[x] : best;
    }
    if (best < t) t = best;
  }
  const __m256 tv = _mm256_set1_ps(t);
  float* keys = g.qkeys + q * S;
  std::int32_t* idx = g.qidx + q * S;
  float* thr = g.qroot + q;
  for (std::int64_t c = 0; c < nc; c += 8) {
    std::uint32_t bits = static_cast<std::uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(a + c), tv, _CMP_LE_OQ)));
    if (nc - c < 8) bits &= (1u << (nc - c)) - 1u;
    while (bits) {
      const int b = __builtin_ctz(bits);
      bits &= bits - 1;
      push(keys, idx, S, thr, m, a[c + b], static_cast<std::int32_t>(g.c0 + c + b));
    }
  }
}

/// MODE 0: rows only; 1: rows and columns (off-diagonal symmetric block); 2: select.
template <int MODE>
void fused(const KnnFusedArgs& g) {
  constexpr bool kCols = MODE == 1, kSelect = MODE == 2;
  const std::int64_t K = g.ksteps, m = g.m;
  const std::int64_t S = (m + 15) / 16 * 16;
  const std::int64_t npan = (g.nc + 31) / 32;
  const __m256 two = _mm256_set1_ps(2.0f);
  const __m256 inf = _mm256_set1_ps(__builtin_inff());
  alignas(32) float buf[16];
  const std::int64_t ncp = npan * 32;
  std::vector<float> sel(kSelect ? static_cast<std::size_t>(kMR * ncp) : 0);
  std::vector<float> smp(kSelect ? static_cast<std::size_t>(16 * ((2 * m + 15) / 16)) : 0);
  for (std::int64_t r0 = 0; r0 < g.nq; r0 += kMR) {
    const float* arow[kMR];
    const float* qr[kMR];
    float yq[kMR];
    for (int r = 0; r < kMR; ++r) {
      const std::int64_t rr = r0 + r < g.nq ? r0 + r : g.nq - 1;
      arow[r] = reinterpret_cast<const float*>(g.A + rr * g.lda);
      qr[r] = g.qroot + rr;
      yq[r] = r0 + r < g.nq ? g.yq[r0 + r] : __builtin_inff();  // a = +inf: never admitted
    }
    for (std::int64_t p = 0; p < npan; ++p) {
      for (int h = 0; h < 2; ++h) {  // the two halves of the 32-column panel
        const float* bp = reinterpret_cast<const float*>(g.Bp + p * K * 32) + 16 * h;
        __m256 acc[kMR][2];
#pragma GCC unroll 6
        for (int r = 0; r < kMR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
        for (std::int64_t s = 0; s < K; ++s) {
          const __m256 b0 = _mm256_load_ps(bp + s * 32);
          const __m256 b1 = _mm256_load_ps(bp + s * 32 + 8);
#pragma GCC unroll 6
          for (int r = 0; r < kMR; ++r) {
            const __m256 av = _mm256_broadcast_ss(arow[r] + s);
            acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
          }
        }
        const std::int64_t c = p * 32 + 16 * h;
        const __m256 yc0 = _mm256_loadu_ps(g.yc + c), yc1 = _mm256_loadu_ps(g.yc + c + 8);
        __m256 cr0 = inf, cr1 = inf;
        if (kCols) {
          cr0 = _mm256_loadu_ps(g.croot + c);
          cr1 = _mm256_loadu_ps(g.croot + c + 8);
        }
#pragma GCC unroll 6
        for (int r = 0; r < kMR; ++r) {
          const __m256 y = _mm256_set1_ps(yq[r]);
          const __m256 a0 = _mm256_fnmadd_ps(two, acc[r][0], _mm256_add_ps(y, yc0));
          const __m256 a1 = _mm256_fnmadd_ps(two, acc[r][1], _mm256_add_ps(y, yc1));
          if (kSelect) {  // keep the whole row of the block for the selection below
            _mm256_storeu_ps(sel.data() + r * ncp + c, a0);
            _mm256_storeu_ps(sel.data() + r * ncp + c + 8, a1);
            continue;
          }
          const __m256 rt = _mm256_set1_ps(*qr[r]);
          __m256 t0 = rt, t1 = rt;
          if (kCols) {
            t0 = _mm256_max_ps(rt, cr0);
            t1 = _mm256_max_ps(rt, cr1);
          }
          std::uint32_t bits = static_cast<std::uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(a0, t0, _CMP_LT_OQ))) |
                               (static_cast<std::uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(a1, t1, _CMP_LT_OQ))) << 8);
          if (__builtin_expect(bits == 0, 1)) continue;
          _mm256_store_ps(buf, a0);
          _mm256_store_ps(buf + 8, a1);
          knn_offer_survivors<kCols>(g, buf, bits, c, r0 + r, S,
                                     [&](float* keys, std::int32_t* idx, float* thr, float a, std::int32_t j) {
                                       push(keys, idx, S, thr, m, a, j);
                                     });
        }
      }
    }
    if (kSelect)
      for (int r = 0; r < kMR && r0 + r < g.nq; ++r) select_row(g, sel.data() + r * ncp, r0 + r, smp.data(), S);
  }
}

}  // namespace

void knn_fused_block(const KnnFusedArgs& args) {
  if (args.select)
    fused<2>(args);
  else if (args.cols)
    fused<1>(args);
  else
    fused<0>(args);
}

#include "knn_exact_keys.inc"

}  // namespace avx2
}  // namespace detail
}  // namespace labelwise
