// Shared helpers of the [cuda] tests: a device buffer that owns its memory, and a fresh seed.
#pragma once

#include <catch2/catch.hpp>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "labelwise/core/tensor_view.hpp"
#include "test_seed.hpp"

namespace lw_test {

/// n elements of T on CUDA device 0 (freed on scope exit), optionally filled from a host vector.
template <typename T>
struct DeviceArray {
  T* ptr = nullptr;
  std::size_t n = 0;
  explicit DeviceArray(std::size_t count) : n(count) {
    REQUIRE(cudaMalloc(&ptr, std::max<std::size_t>(1, n) * sizeof(T)) == cudaSuccess);
  }
  explicit DeviceArray(const std::vector<T>& host) : DeviceArray(host.size()) {
    REQUIRE(cudaMemcpy(ptr, host.data(), n * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
  }
  ~DeviceArray() { cudaFree(ptr); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  std::vector<T> host() const {
    std::vector<T> h(n);
    REQUIRE(cudaMemcpy(h.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
    return h;
  }
  /// A contiguous view of the buffer with this shape, on cuda:0.
  labelwise::TensorView view(const std::vector<std::int64_t>& shape) const {
    return labelwise::TensorView(ptr, labelwise::dtype_of<T>::value, shape, labelwise::Device::cuda(0));
  }
};

/// Fails the test unless a CUDA device is there (a [cuda] test must never pass on a machine without one).
inline void require_device() {
  int devices = 0;
  REQUIRE(cudaGetDeviceCount(&devices) == cudaSuccess);
  REQUIRE(devices > 0);
}

using ::fresh_seed;

}  // namespace lw_test
