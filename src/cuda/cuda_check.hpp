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

/// Makes `device` current for the scope and restores the previous device afterwards.
class CudaDeviceGuard {
 public:
  explicit CudaDeviceGuard(int device) {
    LABELWISE_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) LABELWISE_CUDA_CHECK(cudaSetDevice(device));
  }
  ~CudaDeviceGuard() { cudaSetDevice(previous_); }
  CudaDeviceGuard(const CudaDeviceGuard&) = delete;
  CudaDeviceGuard& operator=(const CudaDeviceGuard&) = delete;

 private:
  int previous_ = 0;
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

/// Caps a grid of `blocks` × `block` threads whose every thread owns `per_thread_bytes` of global
/// scratch so that the scratch stays within `budget` bytes (at least one block): kernels with
/// grid-stride loops then take more items per thread instead of failing to allocate for large K · C.
inline int cap_blocks_for_scratch(int blocks, int block, std::size_t per_thread_bytes,
                                  std::size_t budget = std::size_t{1} << 30) {
  const std::size_t per_block = per_thread_bytes * static_cast<std::size_t>(block);
  if (per_block == 0) return blocks;
  const std::size_t fit = budget / per_block;
  return static_cast<int>(std::max<std::size_t>(1, std::min<std::size_t>(static_cast<std::size_t>(blocks), fit)));
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
