// labelwise — LibTorch adapter (component labelwise::torch).
#pragma once

#include <torch/torch.h>

#ifdef LABELWISE_TORCH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

#include <map>

#include "labelwise/uncertainty/metrics.hpp"

namespace labelwise {
namespace torch_interop {

/// A view of a strided torch::Tensor (CPU or CUDA), no copy: its shape, strides, dtype and device.
/// Errors: Type for a non-strided (sparse) tensor, a dtype without a labelwise DType (float32/64,
/// float16, bfloat16, int32/64, uint8, bool are supported) or a device other than CPU / CUDA; Value
/// for an undefined tensor or a lazily negated one (is_neg()).
inline TensorView view(const at::Tensor& t) {
  check(t.defined(), ErrorKind::Value, "tensor: is an undefined tensor");
  check(t.layout() == at::kStrided, ErrorKind::Type, "tensor: only strided (dense) tensors are supported");
  DType dt;
  switch (t.scalar_type()) {
    case at::kFloat: dt = DType::Float32; break;
    case at::kDouble: dt = DType::Float64; break;
    case at::kHalf: dt = DType::Float16; break;
    case at::kBFloat16: dt = DType::BFloat16; break;
    case at::kInt: dt = DType::Int32; break;
    case at::kLong: dt = DType::Int64; break;
    case at::kByte: dt = DType::UInt8; break;
    case at::kBool: dt = DType::Bool; break;
    default: throw Error(ErrorKind::Type, std::string("tensor: unsupported dtype ") + c10::toString(t.scalar_type()));
  }
  const Device dev = t.is_cuda() ? Device::cuda(t.get_device()) : Device::cpu();
  check(t.is_cpu() || t.is_cuda(), ErrorKind::Type, "tensor: only CPU and CUDA tensors are supported");
  // a lazily negated view (z.conj().imag) stores the un-negated values: a view would read the wrong sign
  check(!t.is_neg(), ErrorKind::Value,
        "tensor: a lazily negated tensor (is_neg()); pass t.resolve_neg() (score() does this itself)");
  return TensorView(t.data_ptr(), dt, t.sizes().vec(), t.strides().vec(), dev);
}

/// Torch's current CUDA stream on x's device (the stream x's producer ran on, unless the caller
/// synchronised); nullptr (the legacy default stream) for CPU tensors or builds without torch CUDA.
inline void* current_stream(const at::Tensor& x) {
#ifdef LABELWISE_TORCH_CUDA
  if (x.is_cuda()) return c10::cuda::getCurrentCUDAStream(x.get_device()).stream();
#endif
  (void)x;
  return nullptr;
}

/// Several metrics in one pass; each result has shape score_shape(x, options), x's dtype (float32 for
/// float16 / bfloat16 x) and x's device. CUDA: options.stream == nullptr means torch's current stream
/// on x's device (current_stream()). Errors: view()'s and labelwise::score()'s (no metric, a metric
/// named twice, ...).
inline std::map<Metric, at::Tensor> score(const at::Tensor& input, const std::vector<Metric>& metrics,
                                          const ScoreOptions& options = {}) {
  const at::Tensor x = input.resolve_neg();
  const TensorView xv = view(x);
  ScoreOptions opt = options;
  if (opt.stream == nullptr) opt.stream = current_stream(x);
  const std::vector<std::int64_t> shape = score_shape(xv, opt);
  std::map<Metric, at::Tensor> results;
  std::vector<MetricOutput> outs;
  for (Metric m : metrics) {
    // float16 / bfloat16 input gives float32 results (the metrics widen it exactly)
    const bool half = x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16;
    at::Tensor o = at::empty(shape, half ? x.options().dtype(at::kFloat) : x.options());
    outs.push_back({m, view(o)});
    results.emplace(m, o);
  }
  labelwise::score(xv, outs, opt);
  return results;
}

/// One metric; the result has x's dtype (float32 for float16 / bfloat16 x) and device.
inline at::Tensor score(const at::Tensor& x, Metric metric, const ScoreOptions& options = {}) {
  return score(x, std::vector<Metric>{metric}, options).at(metric);
}

}  // namespace torch_interop
}  // namespace labelwise
