// labelwise — TensorView: a non-owning, DLPack-shaped view (pointer, shape, strides
// in elements, dtype, device). Every kernel takes views; frameworks are adapters.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <vector>

#include "labelwise/core/config.hpp"
#include "labelwise/core/error.hpp"

namespace labelwise {

enum class DType : std::uint8_t { Float16, BFloat16, Float32, Float64, Int32, Int64, UInt8, Bool };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Int32: return "int32";
    case DType::Int64: return "int64";
    case DType::UInt8: return "uint8";
    case DType::Bool: return "bool";
  }
  return "unknown";
}

inline int dtype_size(DType t) {
  switch (t) {
    case DType::Float16:
    case DType::BFloat16: return 2;
    case DType::Float32:
    case DType::Int32: return 4;
    case DType::Float64:
    case DType::Int64: return 8;
    case DType::UInt8:
    case DType::Bool: return 1;
  }
  return 0;
}

template <typename T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::Float32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::Float64; };
template <> struct dtype_of<std::int32_t> { static constexpr DType value = DType::Int32; };
template <> struct dtype_of<std::int64_t> { static constexpr DType value = DType::Int64; };
template <> struct dtype_of<std::uint8_t> { static constexpr DType value = DType::UInt8; };
template <> struct dtype_of<bool> { static constexpr DType value = DType::Bool; };

/// Where the memory lives. `index` is the CUDA ordinal (0 for the CPU).
struct Device {
  enum class Kind : std::uint8_t { CPU, CUDA };
  Kind kind = Kind::CPU;
  int index = 0;

  static Device cpu() { return {Kind::CPU, 0}; }
  static Device cuda(int i = 0) { return {Kind::CUDA, i}; }
  bool is_cpu() const { return kind == Kind::CPU; }
  bool is_cuda() const { return kind == Kind::CUDA; }
  bool operator==(const Device& o) const { return kind == o.kind && (kind == Kind::CPU || index == o.index); }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const { return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(index); }
};

/// A strided view of memory owned by somebody else.
/// shape[d] >= 0; strides are in elements and may be zero or negative.
struct TensorView {
  void* data = nullptr;
  int ndim = 0;
  std::int64_t shape[kMaxDims] = {};
  std::int64_t strides[kMaxDims] = {};
  DType dtype = DType::Float32;
  Device device = Device::cpu();

  TensorView() = default;

  /// A view with explicit strides (in elements).
  TensorView(void* ptr, DType type, const std::vector<std::int64_t>& shp, const std::vector<std::int64_t>& str,
             Device dev = Device::cpu())
      : data(ptr), dtype(type), device(dev) {
    check(shp.size() == str.size(), ErrorKind::Value, "TensorView: shape has ", shp.size(), " axes but strides has ",
          str.size());
    set_shape(shp);
    for (int d = 0; d < ndim; ++d) strides[d] = str[d];
  }

  /// A C-contiguous (row-major) view.
  TensorView(void* ptr, DType type, const std::vector<std::int64_t>& shp, Device dev = Device::cpu())
      : data(ptr), dtype(type), device(dev) {
    set_shape(shp);
    std::int64_t s = 1;
    for (int d = ndim - 1; d >= 0; --d) {
      strides[d] = s;
      check(!__builtin_mul_overflow(s, shape[d] > 0 ? shape[d] : 1, &s), ErrorKind::Value, "TensorView: shape ",
            shape_str(), " has more elements than fit in int64");
    }
  }

  /// Typed convenience constructors for host memory.
  template <typename T>
  static TensorView of(T* ptr, const std::vector<std::int64_t>& shp) {
    return TensorView(const_cast<void*>(static_cast<const void*>(ptr)), dtype_of<std::remove_const_t<T>>::value, shp);
  }
  template <typename T>
  static TensorView of(T* ptr, const std::vector<std::int64_t>& shp, const std::vector<std::int64_t>& str) {
    return TensorView(const_cast<void*>(static_cast<const void*>(ptr)), dtype_of<std::remove_const_t<T>>::value, shp,
                      str);
  }

  /// Number of elements; 0 if any axis is empty.
  std::int64_t numel() const {
    std::int64_t n = 1;
    for (int d = 0; d < ndim; ++d) n *= shape[d];
    return n;
  }

  /// Number of elements, or Error(Value) naming `what` when the product overflows int64.
  std::int64_t checked_numel(const char* what) const {
    std::int64_t n = 1;
    for (int d = 0; d < ndim; ++d)
      check(!__builtin_mul_overflow(n, shape[d], &n), ErrorKind::Value, what, ": shape ", shape_str(),
            " has more elements than fit in int64");
    return n;
  }

  std::vector<std::int64_t> sizes() const { return std::vector<std::int64_t>(shape, shape + ndim); }

  bool is_contiguous() const {
    std::int64_t s = 1;
    for (int d = ndim - 1; d >= 0; --d) {
      if (shape[d] != 1 && strides[d] != s) return false;
      s *= shape[d];
    }
    return true;
  }

  std::string shape_str() const {
    std::string s = "[";
    for (int d = 0; d < ndim; ++d) s += (d ? ", " : "") + std::to_string(shape[d]);
    return s + "]";
  }

 private:
  void set_shape(const std::vector<std::int64_t>& shp) {
    check(static_cast<int>(shp.size()) <= kMaxDims, ErrorKind::Value, "TensorView: rank ", shp.size(),
          " exceeds the maximum of ", kMaxDims);
    ndim = static_cast<int>(shp.size());
    for (int d = 0; d < ndim; ++d) {
      check(shp[d] >= 0, ErrorKind::Value, "TensorView: negative extent ", shp[d], " on axis ", d);
      shape[d] = shp[d];
    }
  }
};

}  // namespace labelwise
