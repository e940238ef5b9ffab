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

/// Element types a TensorView can describe (each function says which it accepts).
enum class DType : std::uint8_t { Float16, BFloat16, Float32, Float64, Int32, Int64, UInt8, Bool };

/// "float16", "bfloat16", "float32", "float64", "int32", "int64", "uint8", "bool" (numpy's names).
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

/// Bytes per element.
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

  /// A view with explicit strides (in elements). Error(Value): shape and strides of different lengths,
  /// rank above kMaxDims, a negative extent, a size that overflows int64.
  TensorView(void* ptr, DType type, const std::vector<std::int64_t>& shp, const std::vector<std::int64_t>& str,
             Device dev = Device::cpu())
      : data(ptr), dtype(type), device(dev) {
    check(shp.size() == str.size(), ErrorKind::Value, "TensorView: shape has ", shp.size(), " axes but strides has ",
          str.size());
    set_shape(shp);
    for (int d = 0; d < ndim; ++d) strides[d] = str[d];
  }

  /// A C-contiguous (row-major) view. Error(Value): rank above kMaxDims, a negative extent, a size
  /// that overflows int64.
  TensorView(void* ptr, DType type, const std::vector<std::int64_t>& shp, Device dev = Device::cpu())
      : data(ptr), dtype(type), device(dev) {
    set_shape(shp);
    std::int64_t s = 1;
    for (int d = ndim - 1; d >= 0; --d) {
      strides[d] = s;
      s *= shape[d] > 0 ? shape[d] : 1;  // cannot overflow: set_shape checked the product
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

  /// Error(Value) for a hand-set ndim outside [0, kMaxDims] or a hand-set negative extent (the
  /// constructors never make either): every loop over the axes below would read past shape[] /
  /// strides[], and a negative extent would count as an empty view.
  void check_rank() const {
    check(ndim >= 0 && ndim <= kMaxDims, ErrorKind::Value, "TensorView: rank ", ndim, " is outside [0, ", kMaxDims,
          "] (ndim set by hand?)");
    for (int d = 0; d < ndim; ++d)
      check(shape[d] >= 0, ErrorKind::Value, "TensorView: extent ", shape[d], " of axis ", d,
            " is negative (shape set by hand?)");
  }

  /// Number of elements; 0 if any axis is empty. Error(Value) for an invalid rank (check_rank).
  std::int64_t numel() const {
    check_rank();
    std::int64_t n = 1;
    for (int d = 0; d < ndim; ++d) n *= shape[d];
    return n;
  }

  /// Number of elements, or Error(Value) naming `what` when the product overflows int64 (or for an
  /// invalid rank).
  std::int64_t checked_numel(const char* what) const {
    check_rank();
    std::int64_t n = 1;
    for (int d = 0; d < ndim; ++d)
      check(!__builtin_mul_overflow(n, shape[d], &n), ErrorKind::Value, what, ": shape ", shape_str(),
            " has more elements than fit in int64");
    return n;
  }

  /// The shape as a vector.
  std::vector<std::int64_t> sizes() const {
    check_rank();
    return std::vector<std::int64_t>(shape, shape + ndim);
  }

  bool is_contiguous() const {
    check_rank();
    std::int64_t s = 1;
    for (int d = ndim - 1; d >= 0; --d) {
      if (shape[d] != 1 && strides[d] != s) return false;
      s *= shape[d];
    }
    return true;
  }

  /// The shape as "[2, 3, 4]", for messages (a hand-set ndim outside [0, kMaxDims] shows as such).
  std::string shape_str() const {
    if (ndim < 0 || ndim > kMaxDims) return "[invalid rank " + std::to_string(ndim) + "]";
    std::string s = "[";
    for (int d = 0; d < ndim; ++d) s += (d ? ", " : "") + std::to_string(shape[d]);
    return s + "]";
  }

 private:
  /// The extents, checked: rank at most kMaxDims, no negative extent, a product within int64 (the
  /// product of the non-zero extents, so that strides over them cannot overflow either).
  void set_shape(const std::vector<std::int64_t>& shp) {
    check(static_cast<int>(shp.size()) <= kMaxDims, ErrorKind::Value, "TensorView: rank ", shp.size(),
          " exceeds the maximum of ", kMaxDims);
    ndim = static_cast<int>(shp.size());
    std::int64_t n = 1;
    for (int d = 0; d < ndim; ++d) {
      check(shp[d] >= 0, ErrorKind::Value, "TensorView: negative extent ", shp[d], " on axis ", d);
      shape[d] = shp[d];
    }
    for (int d = 0; d < ndim; ++d)
      check(!__builtin_mul_overflow(n, shape[d] > 0 ? shape[d] : 1, &n), ErrorKind::Value, "TensorView: shape ",
            shape_str(), " has more elements than fit in int64");
  }
};

/// Output views are checked by the functions that take them: no two elements of one output may
/// share an address, and an output may not overlap an input of the same call or another output.
/// Self-overlap is decided by the usual sufficient condition: with the axes of extent > 1 sorted by
/// |stride|, each |stride| exceeds the reach of the smaller ones, Σ (extent - 1)·|stride|. Every view
/// made by slicing, transposing or permuting an array passes; a view with a zero stride on an axis
/// of extent > 1 (a broadcast) fails, and so would an exotic interleaving such as shape [3, 3] with
/// strides [2, 3], which is rejected although its elements happen to be distinct.
inline bool may_overlap_itself(const TensorView& v) {
  std::int64_t abs_stride[kMaxDims], extent[kMaxDims];
  int n = 0;
  for (int d = 0; d < v.ndim; ++d) {
    if (v.shape[d] <= 1) continue;
    if (v.strides[d] == INT64_MIN) return true;  // no element of real memory is that far away
    int j = n++;
    const std::int64_t s = v.strides[d] < 0 ? -v.strides[d] : v.strides[d];
    for (; j > 0 && abs_stride[j - 1] > s; --j) {
      abs_stride[j] = abs_stride[j - 1];
      extent[j] = extent[j - 1];
    }
    abs_stride[j] = s;
    extent[j] = v.shape[d];
  }
  std::int64_t reach = 0;  // the largest offset the smaller axes reach (in elements)
  for (int j = 0; j < n; ++j) {
    if (abs_stride[j] <= reach) return true;
    if (__builtin_mul_overflow(extent[j] - 1, abs_stride[j], &extent[j]) || __builtin_add_overflow(reach, extent[j], &reach))
      return true;
  }
  return false;
}

/// The bytes [lo, hi) that v's elements occupy (lo == hi for an empty view); false when they do not
/// fit in the address space (a view of no real memory).
inline bool byte_range(const TensorView& v, std::intptr_t& lo, std::intptr_t& hi) {
  lo = hi = reinterpret_cast<std::intptr_t>(v.data);
  if (v.numel() == 0) return true;
  std::int64_t below = 0, above = 0, span = 0;
  for (int d = 0; d < v.ndim; ++d) {
    if (__builtin_mul_overflow(v.shape[d] - 1, v.strides[d], &span) ||
        __builtin_add_overflow(span < 0 ? below : above, span, span < 0 ? &below : &above))
      return false;
  }
  const std::int64_t w = dtype_size(v.dtype);
  return !__builtin_mul_overflow(below, w, &below) && !__builtin_mul_overflow(above, w, &above) &&
         !__builtin_add_overflow(lo, static_cast<std::intptr_t>(below), &lo) &&
         !__builtin_add_overflow(hi, static_cast<std::intptr_t>(above) + static_cast<std::intptr_t>(w), &hi);
}

/// True when `a` and `b` (on one device) may share an element's memory: their address ranges
/// intersect, unless they are the same dtype, shape and strides a whole number of elements apart
/// (two columns of one array, say) and the two together form a view that does not overlap itself.
inline bool may_overlap(const TensorView& a, const TensorView& b) {
  if (a.device != b.device) return false;
  std::intptr_t a0, a1, b0, b1;
  if (!byte_range(a, a0, a1) || !byte_range(b, b0, b1)) return true;
  if (a1 <= b0 || b1 <= a0 || a0 == a1 || b0 == b1) return false;
  const std::intptr_t gap = reinterpret_cast<std::intptr_t>(b.data) - reinterpret_cast<std::intptr_t>(a.data);
  const int w = dtype_size(a.dtype);
  bool same_layout = a.dtype == b.dtype && a.ndim == b.ndim && a.ndim < kMaxDims && gap % w == 0;
  for (int d = 0; same_layout && d < a.ndim; ++d) same_layout = a.shape[d] == b.shape[d] && a.strides[d] == b.strides[d];
  if (!same_layout) return true;
  TensorView both = a;  // a with one more axis of extent 2 whose step leads to b
  both.shape[both.ndim] = 2;
  both.strides[both.ndim] = static_cast<std::int64_t>(gap / w);
  ++both.ndim;
  return may_overlap_itself(both);
}

/// True when v's data pointer is a multiple of its element size (reading it is defined behaviour).
inline bool is_aligned(const TensorView& v) {
  return reinterpret_cast<std::uintptr_t>(v.data) % static_cast<std::uintptr_t>(dtype_size(v.dtype)) == 0;
}

/// False for a default-constructed view (data == nullptr, ndim == 0): how an optional array argument is
/// left out (coreset's `labeled`, stochastic's `ranks`, ...).
inline bool is_given(const TensorView& v) { return v.data != nullptr || v.ndim != 0; }

/// A view with the name that errors give it ("indices", "bald output", ...).
struct NamedView {
  TensorView view;  // a copy (a few hundred bytes): a NamedView made from a temporary cannot dangle
  std::string name;
};

/// The output checks of every function that writes into caller-supplied views, after their shapes,
/// dtypes and devices are checked: Error(Value) naming the input whose elements reach beyond the
/// address space or whose data pointer is not aligned to its element size, or the output that has a
/// null or unaligned pointer or may overlap itself, another output (may_overlap: columns of one array
/// are fine) or an input of the same call.
inline void check_outputs(const std::vector<NamedView>& outputs, const std::vector<NamedView>& inputs) {
  for (const NamedView& in : inputs) {
    if (in.view.numel() == 0 || in.view.data == nullptr) continue;  // the callers name these themselves
    std::intptr_t lo = 0, hi = 0;
    check(byte_range(in.view, lo, hi), ErrorKind::Value, in.name, ": the view (shape ", in.view.shape_str(),
          ") reaches beyond the address space");
    check(is_aligned(in.view), ErrorKind::Value, in.name, ": data pointer is not aligned to its ", dtype_size(in.view.dtype),
          "-byte elements (copy it into an aligned array)");
  }
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    const TensorView& o = outputs[i].view;
    const std::string& name = outputs[i].name;
    if (o.numel() == 0) continue;
    check(o.data != nullptr, ErrorKind::Value, name, ": data pointer is null");
    const auto layout = [&] {
      std::string t = "(shape " + o.shape_str() + ", strides [";
      for (int d = 0; d < o.ndim; ++d) t += (d ? ", " : "") + std::to_string(o.strides[d]);
      return t + "])";
    };
    std::intptr_t lo = 0, hi = 0;
    check(byte_range(o, lo, hi), ErrorKind::Value, name, ": the output view ", layout(),
          " reaches beyond the address space; pass a writable array with memory of its own for each element");
    check(!may_overlap_itself(o), ErrorKind::Value, name, ": the output view ", layout(),
          " has elements that share memory; pass a writable array with memory of its own for each element");
    for (std::size_t j = 0; j < i; ++j)
      check(!may_overlap(o, outputs[j].view), ErrorKind::Value, name, " and ", outputs[j].name,
            " share memory; pass separate arrays (or separate columns of one array)");
    check(is_aligned(o), ErrorKind::Value, name, ": data pointer is not aligned to its ", dtype_size(o.dtype), "-byte elements");
    for (const NamedView& in : inputs)
      check(!may_overlap(o, in.view), ErrorKind::Value, name, " shares memory with the input ", in.name,
            "; pass an output array of its own");
  }
}

}  // namespace labelwise
