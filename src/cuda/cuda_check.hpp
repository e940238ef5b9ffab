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

/// Driver entry points reached through the runtime (no link to libcuda); null where unavailable.
template <typename Fn>
inline Fn cuda_driver_entry(const char* name) {
  void* p = nullptr;
  cudaDriverEntryPointQueryResult found{};
#if CUDART_VERSION >= 12050
  const cudaError_t err = cudaGetDriverEntryPointByVersion(name, &p, 12000, cudaEnableDefault, &found);
#else  // toolkits 12.0 - 12.4
  const cudaError_t err = cudaGetDriverEntryPoint(name, &p, cudaEnableDefault, &found);
#endif
  if (err != cudaSuccess || found != cudaDriverEntryPointSuccess) return nullptr;
  return reinterpret_cast<Fn>(p);
}

/// Whether setting `device` current again would not create a context: the calling thread has a
/// current context, or the device's primary context is already active in the process. A thread that
/// never used CUDA reports device 0 from cudaGetDevice; switching such a thread back to device 0 when
/// the process never used it would create device 0's primary context (hundreds of MiB on a GPU the
/// caller may not use), so guards then leave the thread on the device they switched to. True when the
/// driver entry points are unavailable (restore, as before).
inline bool restoring_is_free(int device) {
  using CtxGetCurrent = int (*)(void**);                     // CUresult cuCtxGetCurrent(CUcontext*)
  using DeviceGet = int (*)(int*, int);                      // CUresult cuDeviceGet(CUdevice*, int)
  using PrimaryCtxGetState = int (*)(int, unsigned*, int*);  // CUresult cuDevicePrimaryCtxGetState(...)
  static const CtxGetCurrent ctx_get_current = cuda_driver_entry<CtxGetCurrent>("cuCtxGetCurrent");
  static const DeviceGet device_get = cuda_driver_entry<DeviceGet>("cuDeviceGet");
  static const PrimaryCtxGetState primary_state = cuda_driver_entry<PrimaryCtxGetState>("cuDevicePrimaryCtxGetState");
  if (!ctx_get_current || !device_get || !primary_state) return true;
  void* ctx = nullptr;
  if (ctx_get_current(&ctx) == 0 && ctx != nullptr) return true;
  int dev = 0, active = 0;
  unsigned flags = 0;
  return device_get(&dev, device) == 0 && primary_state(dev, &flags, &active) == 0 && active != 0;
}

/// Makes `device` current for the scope and restores the previous device afterwards, unless that would
/// create a context the process does not have (restoring_is_free).
class CudaDeviceGuard {
 public:
  explicit CudaDeviceGuard(int device) {
    LABELWISE_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) {
      restore_ = restoring_is_free(previous_);
      LABELWISE_CUDA_CHECK(cudaSetDevice(device));
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

constexpr std::size_t kScratchFloor = std::size_t{1} << 30;  // 1 GiB

/// The global scratch a kernel launch may take on the current device: a quarter of the free memory,
/// between kScratchFloor and 16 GiB (the floor when the query fails). Items of huge K · C (tens of MB
/// of scratch per thread) then still run on hundreds of threads instead of the floor's few.
inline std::size_t scratch_budget() {
  std::size_t free_bytes = 0, total_bytes = 0;
  if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) {
    cudaGetLastError();  // not sticky: clear it
    return kScratchFloor;
  }
  return std::min(16 * kScratchFloor, std::max(kScratchFloor, free_bytes / 4));
}

/// Shrinks a grid of `blocks` × `block` threads whose every thread owns `per_thread_bytes` of global
/// scratch until the scratch fits in scratch_budget(): fewer blocks first, then smaller blocks
/// (halving, down to one thread, whose own scratch is the floor). Kernels with grid-stride loops (any
/// blockDim) then take more items per thread instead of failing to allocate for large K · C. The
/// device is asked for its free memory only when the grid needs more than kScratchFloor (the budget
/// is never below it).
inline ScratchGrid scratch_grid(int blocks, int block, std::size_t per_thread_bytes) {
  const std::size_t threads_wanted = static_cast<std::size_t>(blocks) * static_cast<std::size_t>(block);
  if (per_thread_bytes == 0 || threads_wanted <= kScratchFloor / per_thread_bytes) return {blocks, block};
  const std::size_t fit = std::max<std::size_t>(1, scratch_budget() / per_thread_bytes);  // threads that fit
  if (threads_wanted <= fit) return {blocks, block};
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
