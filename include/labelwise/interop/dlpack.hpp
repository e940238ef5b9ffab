// labelwise — DLPack adapter: DLTensor <-> TensorView.
// The structs below follow the DLPack ABI (dmlc/dlpack, v0.8 legacy and v1.x versioned);
// they are declared here so that labelwise needs no DLPack header.
#pragma once

#include <cstdint>

#include "labelwise/core/tensor_view.hpp"

namespace labelwise {
namespace dlpack {

enum DeviceType : std::int32_t { kCPU = 1, kCUDA = 2, kCUDAHost = 3, kCUDAManaged = 13 };
enum TypeCode : std::uint8_t { kInt = 0, kUInt = 1, kFloat = 2, kBfloat = 4, kComplex = 5, kBool = 6 };

struct DLDevice {
  std::int32_t device_type;
  std::int32_t device_id;
};
struct DLDataType {
  std::uint8_t code;
  std::uint8_t bits;
  std::uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  std::int32_t ndim;
  DLDataType dtype;
  std::int64_t* shape;
  std::int64_t* strides;  // may be null: C-contiguous
  std::uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};
struct DLPackVersion {
  std::uint32_t major;
  std::uint32_t minor;
};
struct DLManagedTensorVersioned {
  DLPackVersion version;
  void* manager_ctx;
  void (*deleter)(DLManagedTensorVersioned* self);
  std::uint64_t flags;  // bit 0: read-only
  DLTensor dl_tensor;
};
constexpr std::uint64_t kFlagReadOnly = 1;

/// A TensorView over a DLTensor (no copy). `what` names the argument in errors. CUDA-host (pinned)
/// memory becomes a CPU view, CUDA-managed memory a CUDA view. Errors: Type for vector dtypes
/// (lanes != 1), dtypes without a labelwise DType and devices other than CPU / CUDA; Value for a rank
/// above kMaxDims, a null shape, a negative extent, a size that overflows int64. The read-only flag of
/// a versioned tensor is the caller's to check (kFlagReadOnly) before writing through the view.
inline TensorView to_view(const DLTensor& t, const char* what) {
  check(t.dtype.lanes == 1, ErrorKind::Type, what, ": vector dtypes (lanes=", t.dtype.lanes, ") are not supported");
  DType dt;
  const int code = t.dtype.code, bits = t.dtype.bits;
  if (code == kFloat && bits == 32) dt = DType::Float32;
  else if (code == kFloat && bits == 64) dt = DType::Float64;
  else if (code == kFloat && bits == 16) dt = DType::Float16;
  else if (code == kBfloat && bits == 16) dt = DType::BFloat16;
  else if (code == kInt && bits == 32) dt = DType::Int32;
  else if (code == kInt && bits == 64) dt = DType::Int64;
  else if (code == kUInt && bits == 8) dt = DType::UInt8;
  else if ((code == kBool && bits == 8) || (code == kUInt && bits == 1)) dt = DType::Bool;
  else {
    // name the dtype as the frameworks do (complex64, uint16, float8, int8, ...)
    const char* family = code == kFloat ? "float" : code == kInt ? "int" : code == kUInt ? "uint"
                         : code == kBfloat ? "bfloat" : code == kComplex ? "complex" : code == kBool ? "bool" : nullptr;
    if (family != nullptr)
      throw Error(ErrorKind::Type, detail::concat(what, ": unsupported dtype ", family, bits,
                                                  "; expected float32 / float64 (float16 / bfloat16 where "
                                                  "documented) or the integer / bool types an argument names"));
    throw Error(ErrorKind::Type, detail::concat(what, ": unsupported DLPack dtype (code ", code, ", bits ", bits, ")"));
  }
  Device dev;
  if (t.device.device_type == kCPU || t.device.device_type == kCUDAHost) dev = Device::cpu();
  else if (t.device.device_type == kCUDA || t.device.device_type == kCUDAManaged) dev = Device::cuda(t.device.device_id);
  else
    throw Error(ErrorKind::Type,
                detail::concat(what, ": unsupported device type ", t.device.device_type, " (only CPU and CUDA)"));
  check(t.ndim >= 0 && t.ndim <= kMaxDims, ErrorKind::Value, what, ": rank ", t.ndim, " exceeds the maximum of ",
        kMaxDims);
  check(t.ndim == 0 || t.shape != nullptr, ErrorKind::Value, what, ": DLPack tensor of rank ", t.ndim,
        " without a shape");
  for (int d = 0; d < t.ndim; ++d)
    check(t.shape[d] >= 0, ErrorKind::Value, what, ": negative extent ", t.shape[d], " on axis ", d);
  TensorView v;
  v.data = static_cast<char*>(t.data) + t.byte_offset;
  v.ndim = t.ndim;
  v.dtype = dt;
  v.device = dev;
  std::int64_t s = 1;
  for (int d = t.ndim - 1; d >= 0; --d) {
    v.shape[d] = t.shape[d];
    v.strides[d] = t.strides ? t.strides[d] : s;
    check(!__builtin_mul_overflow(s, t.shape[d] > 0 ? t.shape[d] : 1, &s), ErrorKind::Value, what,
          ": shape has more elements than fit in int64");
  }
  return v;
}

}  // namespace dlpack
}  // namespace labelwise
