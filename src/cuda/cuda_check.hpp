// labelwise — checked CUDA runtime calls for the .cu backends.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>

#include "labelwise/core/error.hpp"

#define LABELWISE_CUDA_CHECK(expr)                                                                        \
  do {                                                                                                    \
    const cudaError_t lw_err_ = (expr);                                                                   \
    if (lw_err_ != cudaSuccess)                                                                           \
      throw ::labelwise::Error(::labelwise::ErrorKind::Runtime,                                           \
                               std::string("CUDA error in ") + #expr + ": " + cudaGetErrorString(lw_err_)); \
  } while (0)

namespace labelwise {
namespace detail {

/// True unless the calling host thread is known to have no current CUDA context (cuCtxGetCurrent,
/// reached through the runtime's driver entry points: no link to libcuda). A thread that never used
/// CUDA reports device 0 from cudaGetDevice; setting device 0 back on it would create device 0's
/// primary context (hundreds of MiB on a GPU the caller may not use), so guards leave such threads
/// on the device they switched to, as PyTorch's device guards do.
inline bool thread_has_cuda_context() {
  using CtxGetCurrent = int (*)(void**);  // CUresult cuCtxGetCurrent(CUcontext*)
  static const CtxGetCurrent fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuCtxGetCurrent", &p, 12000, cudaEnableDefault, &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess)
      return CtxGetCurrent{nullptr};
    return reinterpret_cast<CtxGetCurrent>(p);
  }();
  if (fn == nullptr) return true;  // unknown: restore as before
  void* ctx = nullptr;
  return fn(&ctx) == 0 && ctx != nullptr;
}

/// Makes `device` current for the scope and restores the previous device afterwards (when the thread
/// had a current context before: see thread_has_cuda_context).
class CudaDeviceGuard {
 public:
  explicit CudaDeviceGuard(int device) {
    const bool had_context = thread_has_cuda_context();
    LABELWISE_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) {
      LABELWISE_CUDA_CHECK(cudaSetDevice(device));
      restore_ = had_context;
    }
  }
  ~CudaDeviceGuard() {
    if (restore_) cudaSetDevice(previous_);
  }
  CudaDeviceGuard(const CudaDeviceGuard&) = delete;
  CudaDeviceGuard& operator=(const CudaDeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool restore_ = false;
};

/// Number of streaming multiprocessors of `device`.
inline int multiprocessor_count(int device) {
  int sms = 0;
  LABELWISE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms;
}

/// Blocks for a grid-stride loop over `items` work items, `per_block` of them per block: enough to
/// cover them, at most `per_sm` blocks per multiprocessor, at least one.
inline int grid_blocks(std::int64_t items, std::int64_t per_block, int sms, int per_sm) {
  const std::int64_t want = (items + per_block - 1) / per_block;
  return static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>(want, static_cast<std::int64_t>(sms) * per_sm)));
}

/// A launch shape: `blocks` blocks of `threads` threads.
struct ScratchGrid {
  int blocks = 1;
  int threads = 1;
};

/// Shrinks a grid of `blocks` × `block` threads whose every thread owns `per_thread_bytes` of global
/// scratch until the scratch fits in `budget` bytes: fewer blocks first, then smaller blocks (halving,
/// down to one thread, whose own scratch is the floor). Kernels with grid-stride loops (any blockDim)
/// then take more items per thread instead of failing to allocate for large K · C.
inline ScratchGrid scratch_grid(int blocks, int block, std::size_t per_thread_bytes,
                                std::size_t budget = std::size_t{1} << 30) {
  if (per_thread_bytes == 0) return {blocks, block};
  const std::size_t fit = std::max<std::size_t>(1, budget / per_thread_bytes);  // threads that fit
  if (static_cast<std::size_t>(blocks) * static_cast<std::size_t>(block) <= fit) return {blocks, block};
  if (fit >= static_cast<std::size_t>(block)) return {static_cast<int>(fit / static_cast<std::size_t>(block)), block};
  int threads = block;
  while (threads > 1 && static_cast<std::size_t>(threads) > fit) threads /= 2;
  return {1, threads};
}

/// A stream-ordered workspace carved into aligned pieces; freed (stream-ordered) on scope exit.
class Workspace {
 public:
  Workspace(std::size_t bytes, cudaStream_t stream) : stream_(stream) {
    LABELWISE_CUDA_CHECK(cudaMallocAsync(&base_, bytes, stream));
  }
  ~Workspace() { cudaFreeAsync(base_, stream_); }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  template <typename T>
  T* take(std::size_t count) {
    T* p = reinterpret_cast<T*>(static_cast<char*>(base_) + used_);
    used_ += align(count * sizeof(T));
    return p;
  }
  static std::size_t align(std::size_t bytes) { return (bytes + 255) & ~std::size_t(255); }

 private:
  void* base_ = nullptr;
  std::size_t used_ = 0;
  cudaStream_t stream_;
};

}  // namespace detail
}  // namespace labelwise
