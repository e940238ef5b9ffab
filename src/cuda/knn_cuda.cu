// CUDA backend of the exact kNN graph (labelwise/propagation/knn.hpp): the CPU's method on the device.
//   1. The features are copied to a contiguous float64 matrix X and validated there (the lowest row
//      with NaN / Inf, then, for cosine, the lowest all-zero row, as the CPU front door reports them).
//   2. Candidate space: rows centred (euclidean; the column mean by cuBLAS DGEMV) or scaled to unit
//      length (cosine), rounded to float32 (Y), with their squared norms yn in float64.
//   3. For each block of kQueryBlock query rows and each chunk of kChunk rows, cuBLAS SGEMM (float32
//      compute, CUBLAS_PEDANTIC_MATH: no TF32, no emulation) gives the dot products G; one warp per query row scans its
//      row of G, forms a = (yn_i + yn_j) - 2 G_ij and keeps the m = k + max(k, 16) smallest in a sorted
//      list (global memory, one per row of the block; j == i skipped).
//   4. Refinement, one warp per row: the m candidates' keys exactly in float64 (sequential sums,
//      --fmad=false: the same bits as src/knn.cpp's exact_key), ranked by (key, index); the k best are
//      written. Certificate (src/knn_bound.hpp, the CPU's formula): every non-candidate has a >= the
//      list's largest key amax, so if lower(amax) > kth (with the CPU's slack) no non-candidate can be
//      among the k nearest or tie with the k-th; m == N - 1 certifies trivially.
//   5. Rows not certified (or all rows, if the float32 norms are too large for the bound: yn >= 1e30)
//      are redone in float64 against every other row: exact keys, a stable radix sort (CUB) of
//      (key, index) pairs in index order, so ties go to the lower index.
// Memory: X (8 N D bytes), Y (4 N D), O(N) vectors, the candidate lists and refined keys of one query
// block (<= 256 MiB), one G block (kQueryBlock x kChunk float32 = 128 MiB); the fallback 24 N bytes.
// Never N^2. Compiled, not yet run on a GPU.
// cuBLAS is loaded on the first CUDA kNN call (dlopen; see cublas_api() below), not linked: an
// extension built with CUDA imports and runs its CPU paths on machines without libcublas.
#include <cublas_v2.h>
#include <dlfcn.h>

#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "../knn_backend.hpp"
#include "../knn_bound.hpp"
#include "cuda_check.hpp"

#define LABELWISE_CUBLAS_CHECK(expr)                                                                     \
  do {                                                                                                   \
    const cublasStatus_t lw_st_ = (expr);                                                                \
    if (lw_st_ != CUBLAS_STATUS_SUCCESS)                                                                 \
      throw ::labelwise::Error(::labelwise::ErrorKind::Runtime,                                          \
                               std::string("cuBLAS error in ") + #expr + ": status " + std::to_string(static_cast<int>(lw_st_))); \
  } while (0)

namespace labelwise {
namespace detail {
namespace {

using i64 = std::int64_t;
using u64 = unsigned long long;
constexpr u64 kNone = ~0ull;
constexpr int kWarp = 32;
constexpr int kBlock = 256;
constexpr int kWarpsPerBlock = kBlock / kWarp;
constexpr unsigned kFull = 0xffffffffu;
constexpr i64 kQueryBlock = 8192;  // query rows per block (one warp each)
constexpr i64 kChunk = 4096;       // candidate rows per GEMM
constexpr std::size_t kListBudget = std::size_t{256} << 20;  // candidate lists + refined keys per block

void launch_check() { LABELWISE_CUDA_CHECK(cudaGetLastError()); }

// ---- validation and candidate space -----------------------------------------------------------------

/// X[i, t] = x[i rs + t cs] in float64; the lowest row with NaN / Inf into *bad.
__global__ void load_rows(const void* x, int is64, i64 N, i64 D, i64 rs, i64 cs, double* X, u64* bad) {
  const i64 total = N * D;
  for (i64 e = blockIdx.x * static_cast<i64>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<i64>(gridDim.x) * blockDim.x) {
    const i64 i = e / D, t = e - i * D;
    const double v = is64 ? static_cast<const double*>(x)[i * rs + t * cs]
                          : static_cast<double>(static_cast<const float*>(x)[i * rs + t * cs]);
    X[e] = v;
    if (!isfinite(v)) atomicMin(bad, static_cast<u64>(i));
  }
}

/// rexp[i] = ilogb of row i's largest |x| (INT_MIN for an all-zero row), as knn_load records it on the
/// CPU: the input of knn_scaling.
__global__ void row_exponents(const double* X, i64 N, i64 D, int* rexp) {
  for (i64 i = blockIdx.x * static_cast<i64>(blockDim.x) + threadIdx.x; i < N;
       i += static_cast<i64>(gridDim.x) * blockDim.x) {
    double mx = 0.0;
    for (i64 t = 0; t < D; ++t) mx = fmax(mx, fabs(X[i * D + t]));
    rexp[i] = mx > 0.0 ? ilogb(mx) : INT_MIN;
  }
}

/// knn_scaling's plan applied to X in place (exact: powers of two): every value times 2^-shift
/// (euclidean), or each row that KnnScaling::row_outside flags times 2^-(its exponent) (cosine).
__global__ void scale_rows(double* X, i64 N, i64 D, int shift, const int* rexp, int per_row) {
  const i64 total = N * D;
  for (i64 e = blockIdx.x * static_cast<i64>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<i64>(gridDim.x) * blockDim.x) {
    int s = shift;
    if (per_row) {
      const int r = rexp[e / D];
      s = KnnScaling::row_outside(r) ? r : 0;
    }
    if (s != 0) X[e] = scalbn(X[e], -s);
  }
}

/// rawsq[i] = x_i . x_i (the CPU's order); cosine: the lowest all-zero row into *zero, then ||x_i||.
__global__ void row_norms(const double* X, i64 N, i64 D, int cosine, double* rawsq, u64* zero) {
  for (i64 i = blockIdx.x * static_cast<i64>(blockDim.x) + threadIdx.x; i < N;
       i += static_cast<i64>(gridDim.x) * blockDim.x) {
    const double* a = X + i * D;
    double s = 0.0;
    for (i64 t = 0; t < D; ++t) s += a[t] * a[t];
    if (cosine) {
      if (!(s > 0.0)) atomicMin(zero, static_cast<u64>(i));
      s = sqrt(s);
    }
    rawsq[i] = s;
  }
}

__global__ void fill_ones(double* v, i64 n) {
  for (i64 i = blockIdx.x * static_cast<i64>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<i64>(gridDim.x) * blockDim.x)
    v[i] = 1.0;
}

/// Y = float32 candidate-space rows, yn = ||y_i||^2 in float64 (ynf: as float), the largest yn's bits
/// into *yn_max_bits (yn >= 0: the bits order as the values).
__global__ void make_candidate_rows(const double* X, const double* rawsq, const double* colsum, i64 N, i64 D,
                                    int cosine, float* Y, double* yn, float* ynf, u64* yn_max_bits) {
  const double inv_n = 1.0 / static_cast<double>(N);
  for (i64 i = blockIdx.x * static_cast<i64>(blockDim.x) + threadIdx.x; i < N;
       i += static_cast<i64>(gridDim.x) * blockDim.x) {
    double s = 0.0;
    for (i64 t = 0; t < D; ++t) {
      const double x = X[i * D + t];
      const double u = cosine ? x / rawsq[i] : x - colsum[t] * inv_n;
      const float f = static_cast<float>(u);
      Y[i * D + t] = f;
      s += static_cast<double>(f) * static_cast<double>(f);
    }
    yn[i] = s;
    ynf[i] = static_cast<float>(s);
    atomicMax(yn_max_bits, static_cast<u64>(__double_as_longlong(s)));
  }
}

// ---- candidates --------------------------------------------------------------------------------------

__global__ void init_lists(float* keys, int* idx, i64 n) {
  for (i64 e = blockIdx.x * static_cast<i64>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<i64>(gridDim.x) * blockDim.x) {
    keys[e] = INFINITY;
    idx[e] = -1;
  }
}

/// Inserts (av, jv) into the warp's sorted list lk / li of m entries (av < lk[m - 1]; the last entry
/// drops out). Called by all 32 lanes with the same arguments.
__device__ inline void warp_insert(float* lk, int* li, i64 m, float av, int jv, int lane) {
  // position: the number of entries <= av (the list is ascending; stop at the first segment that
  // is not all <= av)
  i64 pos = 0;
  for (i64 b = 0; b < m; b += kWarp) {
    const i64 t = b + lane;
    const unsigned le = __ballot_sync(kFull, t < m && lk[t] <= av);
    pos += __popc(le);
    if (le != kFull) break;
  }
  // shift [pos, m - 1) up by one, top segment first (each segment reads before the one below writes)
  for (i64 b = ((m - 1) / kWarp) * kWarp; b + (kWarp - 1) > pos; b -= kWarp) {
    const i64 t = b + lane;
    const bool mv = t > pos && t < m;
    float kv = 0.0f;
    int iv = 0;
    if (mv) {
      kv = lk[t - 1];
      iv = li[t - 1];
    }
    __syncwarp();
    if (mv) {
      lk[t] = kv;
      li[t] = iv;
    }
    __syncwarp();
  }
  if (lane == 0) {
    lk[pos] = av;
    li[pos] = jv;
  }
  __syncwarp();
}

/// One warp per query row r (global row q0 + r): its row of G (ldg) against columns c0 .. c0 + nc.
__global__ void scan_block(const float* G, i64 ldg, i64 nq, i64 nc, i64 q0, i64 c0, const float* ynf, i64 m,
                           float* keys, int* idx) {
  const int lane = threadIdx.x % kWarp;
  const i64 warps = static_cast<i64>(gridDim.x) * kWarpsPerBlock;
  for (i64 r = blockIdx.x * static_cast<i64>(kWarpsPerBlock) + threadIdx.x / kWarp; r < nq; r += warps) {
    const i64 i = q0 + r;
    float* lk = keys + r * m;
    int* li = idx + r * m;
    const float yq = ynf[i];
    const float* g = G + r * ldg;
    float thr = lk[m - 1];
    for (i64 cb = 0; cb < nc; cb += kWarp) {
      const i64 c = cb + lane;
      const i64 j = c0 + c;
      float a = INFINITY;
      if (c < nc) a = (yq + ynf[j]) - 2.0f * g[c];
      const bool pass = c < nc && j != i && a < thr;
      unsigned mask = __ballot_sync(kFull, pass);
      while (mask) {
        const int src = __ffs(mask) - 1;
        mask &= mask - 1;
        const float av = __shfl_sync(kFull, a, src);
        const int jv = __shfl_sync(kFull, static_cast<int>(j), src);
        if (av < thr) {
          warp_insert(lk, li, m, av, jv, lane);
          thr = lk[m - 1];
        }
      }
    }
  }
}

// ---- exact keys, refinement, fallback ----------------------------------------------------------------

/// The CPU's exact_key (src/knn.cpp), operation for operation (this file is built with --fmad=false).
__device__ inline double exact_key(const double* X, const double* rawsq, i64 D, int cosine, i64 i, i64 j) {
  const double* a = X + i * D;
  const double* b = X + j * D;
  double s = 0.0;
  if (cosine) {
    for (i64 t = 0; t < D; ++t) s += a[t] * b[t];
    const double v = 1.0 - s / (rawsq[i] * rawsq[j]);
    const double w = (0.0 < v) ? v : 0.0;  // std::max(0.0, v)
    return (w < 2.0) ? w : 2.0;            // std::min(2.0, w)
  }
  for (i64 t = 0; t < D; ++t) {
    const double u = a[t] - b[t];
    s += u * u;
  }
  return s;
}

struct Out {
  std::int64_t* index;
  i64 is0, is1;
  void* dist;
  int dist64;
  i64 ds0, ds1;
  int cosine;
  int shift;  // euclidean: the keys are of the data times 2^-shift (knn_scaling)
};

__device__ inline void put(const Out& o, i64 i, i64 a, i64 j, double key) {
  o.index[i * o.is0 + a * o.is1] = j;
  // euclidean keys of the data scaled by 2^-shift: sqrt, then the power of two (both exact), as the CPU
  const double d = o.cosine ? key : scalbn(sqrt(key), o.shift);
  const i64 off = i * o.ds0 + a * o.ds1;
  if (o.dist64) static_cast<double*>(o.dist)[off] = d;
  else static_cast<float*>(o.dist)[off] = static_cast<float>(d);
}

/// One warp per row of the query block: exact keys of the m candidates, the k best by (key, index)
/// written, the row certified or appended to `failed`.
__global__ void refine_block(const double* X, const double* rawsq, i64 D, i64 q0, i64 nq, i64 k, i64 m,
                             const float* keys, const int* idx, double* rkey, const double* yn, double yn_max,
                             int all_candidates, Out o, int* failed, unsigned* n_failed) {
  const int lane = threadIdx.x % kWarp;
  const double unit = o.cosine ? 2.0 : 1.0;
  const i64 warps = static_cast<i64>(gridDim.x) * kWarpsPerBlock;
  for (i64 r = blockIdx.x * static_cast<i64>(kWarpsPerBlock) + threadIdx.x / kWarp; r < nq; r += warps) {
    const i64 i = q0 + r;
    const float* lk = keys + r * m;
    const int* li = idx + r * m;
    double* rk = rkey + r * m;
    bool full = true;
    for (i64 t = lane; t < m; t += kWarp) {
      const int j = li[t];
      if (j < 0) full = false;
      else rk[t] = exact_key(X, rawsq, D, o.cosine, i, j);
    }
    if (!__all_sync(kFull, full)) {  // cannot happen with finite keys; redo the row
      if (lane == 0) failed[atomicAdd(n_failed, 1u)] = static_cast<int>(i);
      continue;
    }
    __syncwarp();
    double kth = -INFINITY;
    for (i64 t = lane; t < m; t += kWarp) {
      const double kv = rk[t];
      const int jv = li[t];
      i64 rank = 0;
      for (i64 u = 0; u < m; ++u) {
        const double ku = rk[u];
        rank += (ku < kv || (ku == kv && li[u] < jv)) ? 1 : 0;
      }
      if (rank < k) put(o, i, rank, jv, kv);
      if (rank == k - 1) kth = kv;
    }
    for (int s = kWarp / 2; s > 0; s >>= 1) kth = fmax(kth, __shfl_xor_sync(kFull, kth, s));
    // The bound's error model is relative; rows far below the largest (euclidean: one scale for the
    // whole matrix) can still have float32 products that are subnormal or flushed to 0, an absolute
    // error of up to FLT_MIN per operation: added to the bound (negligible for features of normal
    // size), so that such rows fail certification and take the exact path instead of being certified
    // with a dropped neighbour.
    const double subnormal_slack = (2.0 * static_cast<double>(D) + 8.0) * 2.0 * 1.1754943508222875e-38;
    const bool certain = all_candidates ||
                         knn_lower_bound32(lk[m - 1], yn[i], yn_max, D, unit, subnormal_slack) > knn_kth_slack(kth);
    if (!certain && lane == 0) failed[atomicAdd(n_failed, 1u)] = static_cast<int>(i);
    __syncwarp();
  }
}

/// Exact keys of row i against every other row j, in index order (j > i at position j - 1).
__global__ void full_row_keys(const double* X, const double* rawsq, i64 N, i64 D, int cosine, i64 i, double* key,
                              int* val) {
  for (i64 j = blockIdx.x * static_cast<i64>(blockDim.x) + threadIdx.x; j < N;
       j += static_cast<i64>(gridDim.x) * blockDim.x) {
    if (j == i) continue;
    const i64 p = j < i ? j : j - 1;
    key[p] = exact_key(X, rawsq, D, cosine, i, j);
    val[p] = static_cast<int>(j);
  }
}

__global__ void write_row(const double* key, const int* val, i64 i, i64 k, Out o) {
  for (i64 a = blockIdx.x * static_cast<i64>(blockDim.x) + threadIdx.x; a < k;
       a += static_cast<i64>(gridDim.x) * blockDim.x)
    put(o, i, a, val[a], key[a]);
}

/// The five cuBLAS entry points the kNN graph uses, resolved from libcublas.so.<major> on first use
/// (the major version of the toolkit this was built with). Search order: the loader's own (an already
/// loaded copy — torch's or cupy's —, LD_LIBRARY_PATH, ld.so.cache), then next to this library in a
/// Python environment (site-packages/nvidia/cu<major>/lib and site-packages/nvidia/cublas/lib, where
/// the nvidia-cublas wheels put it), then $CUDA_HOME/lib64 and /usr/local/cuda/lib64.
struct CublasApi {
  decltype(&cublasCreate_v2) create = nullptr;
  decltype(&cublasDestroy_v2) destroy = nullptr;
  decltype(&cublasSetMathMode) set_math_mode = nullptr;
  decltype(&cublasSetStream_v2) set_stream = nullptr;
  decltype(&cublasDgemv_v2) dgemv = nullptr;
  decltype(&cublasSgemm_v2) sgemm = nullptr;
  std::string error;  // empty when loaded
};

#define LABELWISE_STR2(x) #x
#define LABELWISE_STR(x) LABELWISE_STR2(x)

const CublasApi& cublas_loaded() {
  static const CublasApi api = [] {
    CublasApi a;
    const std::string soname = "libcublas.so." LABELWISE_STR(CUBLAS_VER_MAJOR);
    std::vector<std::string> tried{soname};
    void* lib = dlopen(soname.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      std::vector<std::string> dirs;
      Dl_info info;
      if (dladdr(reinterpret_cast<const void*>(&cublas_loaded), &info) != 0 && info.dli_fname != nullptr) {
        std::string self = info.dli_fname;
        const std::size_t slash = self.rfind('/');
        const std::string here = slash == std::string::npos ? "." : self.substr(0, slash);
        dirs.push_back(here + "/../nvidia/cu" LABELWISE_STR(CUBLAS_VER_MAJOR) "/lib");
        dirs.push_back(here + "/../nvidia/cublas/lib");
      }
      if (const char* home = std::getenv("CUDA_HOME")) dirs.push_back(std::string(home) + "/lib64");
      dirs.push_back("/usr/local/cuda/lib64");
      for (const std::string& d : dirs) {
        const std::string path = d + "/" + soname;
        tried.push_back(path);
        lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (lib != nullptr) break;
      }
    }
    if (lib == nullptr) {
      a.error = "the CUDA kNN graph needs cuBLAS (" + soname + "), which was not found (tried";
      for (const std::string& t : tried) a.error += " " + t;
      a.error += "); install the CUDA toolkit's cuBLAS or the nvidia-cublas wheel, or put its directory on "
                 "LD_LIBRARY_PATH";
      return a;
    }
    auto sym = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
      if (fn == nullptr && a.error.empty()) a.error = std::string("cuBLAS (") + soname + ") has no symbol " + name;
    };
    sym(a.create, "cublasCreate_v2");
    sym(a.destroy, "cublasDestroy_v2");
    sym(a.set_math_mode, "cublasSetMathMode");
    sym(a.set_stream, "cublasSetStream_v2");
    sym(a.dgemv, "cublasDgemv_v2");
    sym(a.sgemm, "cublasSgemm_v2");
    return a;  // the library stays loaded for the life of the process
  }();
  return api;
}

const CublasApi& cublas_api() {
  const CublasApi& api = cublas_loaded();
  check(api.error.empty(), ErrorKind::Runtime, api.error);
  return api;
}

/// cuBLAS handles for the kNN graph, per device, shared by the process: a call leases one (an idle
/// handle of its device, or a new one) and gives it back when it returns, so there are as many
/// handles as concurrent calls ever were, whichever host threads made them (a handle per thread leaked
/// its device workspace with every exited thread; a handle is used by one thread at a time). Handles
/// live as long as the process. The pool is keyed by device number: a handle belongs to the context
/// it was created in, which is the device's primary context for callers of the runtime API (torch,
/// cupy); callers that make their own driver-API contexts current get handles of the first such context.
/// CUBLAS_PEDANTIC_MATH: the float32 GEMMs use standard float32 arithmetic (compute type
/// CUBLAS_COMPUTE_32F_PEDANTIC) — never TF32, never the BF16x9 emulation that the default compute type
/// may be switched to (math mode or environment) — so the certificate's error bound holds.
class CublasLease {
 public:
  /// Call with `device` current (the handle binds to it).
  explicit CublasLease(int device) : device_(device) {
    {
      std::lock_guard<std::mutex> lock(pool().mutex);
      std::vector<cublasHandle_t>& idle = pool().idle[device];
      if (!idle.empty()) {
        handle_ = idle.back();
        idle.pop_back();
        return;
      }
    }
    const CublasApi& api = cublas_api();
    cublasHandle_t h = nullptr;
    LABELWISE_CUBLAS_CHECK(api.create(&h));
    const cublasStatus_t st = api.set_math_mode(h, CUBLAS_PEDANTIC_MATH);
    if (st != CUBLAS_STATUS_SUCCESS) {
      api.destroy(h);
      LABELWISE_CUBLAS_CHECK(st);
    }
    handle_ = h;
  }
  /// Points the handle at `stream` (the stream the lease's work is queued on).
  void bind(cudaStream_t stream, const CublasApi& api) {
    LABELWISE_CUBLAS_CHECK(api.set_stream(handle_, stream));
    stream_ = stream;
    bound_ = true;
  }
  ~CublasLease() {
    // Work may still be queued on the handle (a call that threw mid-way): it finishes before another
    // thread can lease the handle and its workspace. Errors are ignored (the handle is still valid).
    if (bound_) cudaStreamSynchronize(stream_);
    try {
      std::lock_guard<std::mutex> lock(pool().mutex);
      pool().idle[device_].push_back(handle_);
    } catch (...) {  // no memory to keep it: the handle is dropped (a leak, not a crash)
    }
  }
  CublasLease(const CublasLease&) = delete;
  CublasLease& operator=(const CublasLease&) = delete;
  cublasHandle_t get() const { return handle_; }

 private:
  struct Pool {
    std::mutex mutex;
    std::map<int, std::vector<cublasHandle_t>> idle;
  };
  static Pool& pool() {
    static Pool* p = new Pool;  // never destroyed: handles outlive static destruction order
    return *p;
  }
  int device_;
  cublasHandle_t handle_ = nullptr;
  cudaStream_t stream_ = nullptr;
  bool bound_ = false;
};

}  // namespace

std::string cublas_load_error() { return cublas_loaded().error; }

KnnCudaFailure knn_cuda(const KnnCudaJob& job) {
  CudaDeviceGuard guard(job.device_index);
  auto stream = static_cast<cudaStream_t>(job.stream);
  const i64 N = job.N, D = job.D, k = job.k;
  const int cosine = job.metric == DistanceMetric::Cosine ? 1 : 0;
  const int sms = multiprocessor_count(job.device_index);

  const i64 m = std::min(N - 1, k + std::max<i64>(k, 16));
  // query rows per block: the lists (float key + int index) and refined keys (double) within budget
  i64 Qb = std::min<i64>(kQueryBlock, static_cast<i64>(kListBudget / (static_cast<std::size_t>(m) * 16)));
  Qb = std::max<i64>(32, Qb / 32 * 32);
  Qb = std::min(Qb, N);
  const i64 Cb = std::min(kChunk, N);

  using W = Workspace;
  const std::size_t n = static_cast<std::size_t>(N), nd = static_cast<std::size_t>(N * D);
  const std::size_t lists = static_cast<std::size_t>(Qb * m);
  const std::size_t bytes = W::align(nd * 8) + W::align(nd * 4) + 3 * W::align(n * 8) + W::align(n * 4) +
                            W::align(static_cast<std::size_t>(D) * 8) + W::align(3 * 8) + W::align(lists * 4) +
                            W::align(lists * 4) + W::align(lists * 8) + W::align(static_cast<std::size_t>(Qb * Cb) * 4) +
                            W::align(n * 4) + W::align(4) + 256;
  Workspace ws(bytes, stream);
  double* X = ws.take<double>(nd);
  float* Y = ws.take<float>(nd);
  double* rawsq = ws.take<double>(n);
  double* yn = ws.take<double>(n);
  double* ones = ws.take<double>(n);
  float* ynf = ws.take<float>(n);
  double* colsum = ws.take<double>(static_cast<std::size_t>(D));
  u64* flags = ws.take<u64>(3);  // bad row, zero row, bits of max yn
  float* lkeys = ws.take<float>(lists);
  int* lidx = ws.take<int>(lists);
  double* rkey = ws.take<double>(lists);
  float* G = ws.take<float>(static_cast<std::size_t>(Qb * Cb));
  int* failed = ws.take<int>(n);
  unsigned* n_failed = ws.take<unsigned>(1);

  // ---- 1. load and validate
  LABELWISE_CUDA_CHECK(cudaMemsetAsync(flags, 0xff, 2 * sizeof(u64), stream));
  LABELWISE_CUDA_CHECK(cudaMemsetAsync(flags + 2, 0, sizeof(u64), stream));
  LABELWISE_CUDA_CHECK(cudaMemsetAsync(n_failed, 0, sizeof(unsigned), stream));
  load_rows<<<grid_blocks(N * D, kBlock, sms, 8), kBlock, 0, stream>>>(job.x, job.dtype == DType::Float64 ? 1 : 0, N,
                                                                      D, job.rs, job.cs, X, flags);
  launch_check();
  // Each row's scale (in `failed`, unused until step 4) for the power-of-two scaling the CPU applies:
  // the same plan (knn_scaling, including its error for rows too far apart), the same keys.
  row_exponents<<<grid_blocks(N, kBlock, sms, 8), kBlock, 0, stream>>>(X, N, D, failed);
  launch_check();
  u64 hf[3] = {0, 0, 0};
  std::vector<int> row_exp(n);
  LABELWISE_CUDA_CHECK(cudaMemcpyAsync(hf, flags, sizeof(u64), cudaMemcpyDeviceToHost, stream));
  LABELWISE_CUDA_CHECK(cudaMemcpyAsync(row_exp.data(), failed, n * sizeof(int), cudaMemcpyDeviceToHost, stream));
  LABELWISE_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (hf[0] != kNone) return {kKnnNonFinite, static_cast<i64>(hf[0])};
  const KnnScaling scaling = knn_scaling(row_exp, cosine != 0);
  if (scaling.shift != 0 || scaling.any_row_scaled) {
    scale_rows<<<grid_blocks(N * D, kBlock, sms, 8), kBlock, 0, stream>>>(X, N, D, scaling.shift, failed,
                                                                        scaling.any_row_scaled ? 1 : 0);
    launch_check();
  }
  const Out out{job.out_index, job.is0, job.is1, job.out_dist, job.dist_dtype == DType::Float64 ? 1 : 0,
                job.ds0, job.ds1, cosine, scaling.shift};
  row_norms<<<grid_blocks(N, kBlock, sms, 8), kBlock, 0, stream>>>(X, N, D, cosine, rawsq, flags + 1);
  launch_check();
  LABELWISE_CUDA_CHECK(cudaMemcpyAsync(hf + 1, flags + 1, sizeof(u64), cudaMemcpyDeviceToHost, stream));
  LABELWISE_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (cosine && hf[1] != kNone) return {kKnnZeroRow, static_cast<i64>(hf[1])};

  // ---- 2. candidate space
  CublasLease lease(job.device_index);
  const cublasHandle_t h = lease.get();
  const CublasApi& blas = cublas_api();
  lease.bind(stream, blas);
  if (!cosine) {
    fill_ones<<<grid_blocks(N, kBlock, sms, 4), kBlock, 0, stream>>>(ones, N);
    launch_check();
    // colsum = X^T 1 (X row-major [N, D] is column-major [D, N])
    const double one = 1.0, zero = 0.0;
    LABELWISE_CUBLAS_CHECK(blas.dgemv(h, CUBLAS_OP_N, static_cast<int>(D), static_cast<int>(N), &one, X,
                                       static_cast<int>(D), ones, 1, &zero, colsum, 1));
  }
  make_candidate_rows<<<grid_blocks(N, kBlock, sms, 8), kBlock, 0, stream>>>(X, rawsq, colsum, N, D, cosine, Y, yn,
                                                                            ynf, flags + 2);
  launch_check();
  LABELWISE_CUDA_CHECK(cudaMemcpyAsync(hf + 2, flags + 2, sizeof(u64), cudaMemcpyDeviceToHost, stream));
  LABELWISE_CUDA_CHECK(cudaStreamSynchronize(stream));
  double yn_max = 0.0;
  {
    const long long bits = static_cast<long long>(hf[2]);
    std::memcpy(&yn_max, &bits, sizeof yn_max);
  }

  std::vector<int> redo;
  // Long candidate lists (m = 2k > 1024: k above 512) cost O(m) per insertion and O(m^2) per row to rank: hours at
  // k ~ N / 2 on 10^5 rows; those searches take the exact per-row path below instead, O(N log N) a row.
  constexpr i64 kMaxListLength = 1024;
  if (yn_max < 1e30 && m <= kMaxListLength) {
    // ---- 3 + 4. candidates by blocks, refinement and certificate
    const int all_candidates = m == N - 1 ? 1 : 0;
    const float fone = 1.0f, fzero = 0.0f;
    for (i64 q0 = 0; q0 < N; q0 += Qb) {
      const i64 nq = std::min(Qb, N - q0);
      const int warp_blocks = static_cast<int>((nq + kWarpsPerBlock - 1) / kWarpsPerBlock);
      init_lists<<<grid_blocks(nq * m, kBlock, sms, 8), kBlock, 0, stream>>>(lkeys, lidx, nq * m);
      launch_check();
      for (i64 c0 = 0; c0 < N; c0 += Cb) {
        const i64 nc = std::min(Cb, N - c0);
        // G' (column-major [nc, nq], ld Cb) = Yc^T Yq: row r of G (row-major) holds y_{q0+r} . y_{c0+c}
        LABELWISE_CUBLAS_CHECK(blas.sgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(nc), static_cast<int>(nq),
                                           static_cast<int>(D), &fone, Y + c0 * D, static_cast<int>(D), Y + q0 * D,
                                           static_cast<int>(D), &fzero, G, static_cast<int>(Cb)));
        scan_block<<<warp_blocks, kBlock, 0, stream>>>(G, Cb, nq, nc, q0, c0, ynf, m, lkeys, lidx);
        launch_check();
      }
      refine_block<<<warp_blocks, kBlock, 0, stream>>>(X, rawsq, D, q0, nq, k, m, lkeys, lidx, rkey, yn, yn_max,
                                                       all_candidates, out, failed, n_failed);
      launch_check();
    }
    unsigned nf = 0;
    LABELWISE_CUDA_CHECK(cudaMemcpyAsync(&nf, n_failed, sizeof nf, cudaMemcpyDeviceToHost, stream));
    LABELWISE_CUDA_CHECK(cudaStreamSynchronize(stream));
    redo.resize(nf);
    if (nf > 0) {
      LABELWISE_CUDA_CHECK(
          cudaMemcpyAsync(redo.data(), failed, nf * sizeof(int), cudaMemcpyDeviceToHost, stream));
      LABELWISE_CUDA_CHECK(cudaStreamSynchronize(stream));
      std::sort(redo.begin(), redo.end());
    }
  } else {
    // float32 candidate keys would overflow, the bound would be void, or the lists would be too long:
    // every row exactly
    redo.resize(n);
    for (i64 i = 0; i < N; ++i) redo[i] = static_cast<int>(i);
  }

  // ---- 5. exact fallback: each row against every other row, stable radix sort by key
  if (!redo.empty()) {
    const int items = static_cast<int>(N - 1);
    std::size_t temp_bytes = 0;
    LABELWISE_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, static_cast<const double*>(nullptr),
                                                         static_cast<double*>(nullptr), static_cast<const int*>(nullptr),
                                                         static_cast<int*>(nullptr), items, 0, 64, stream));
    const std::size_t ni = static_cast<std::size_t>(items);
    Workspace fw(2 * W::align(ni * 8) + 2 * W::align(ni * 4) + W::align(temp_bytes) + 256, stream);
    double* kin = fw.take<double>(ni);
    double* kout = fw.take<double>(ni);
    int* vin = fw.take<int>(ni);
    int* vout = fw.take<int>(ni);
    void* temp = fw.take<char>(std::max<std::size_t>(temp_bytes, 1));
    for (const int row : redo) {
      full_row_keys<<<grid_blocks(N, kBlock, sms, 8), kBlock, 0, stream>>>(X, rawsq, N, D, cosine, row, kin, vin);
      launch_check();
      std::size_t tb = temp_bytes;
      LABELWISE_CUDA_CHECK(
          cub::DeviceRadixSort::SortPairs(temp, tb, kin, kout, vin, vout, items, 0, 64, stream));
      write_row<<<grid_blocks(k, kBlock, sms, 1), kBlock, 0, stream>>>(kout, vout, row, k, out);
      launch_check();
    }
  }
  LABELWISE_CUDA_CHECK(cudaStreamSynchronize(stream));
  return {};
}

}  // namespace detail
}  // namespace labelwise
