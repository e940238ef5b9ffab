// labelwise — checked CUDA runtime calls for the .cu backends.
#pragma once

#include <cuda_runtime.h>

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

}  // namespace detail
}  // namespace labelwise
