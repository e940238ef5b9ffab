// labelwise — build-wide macros. Every header outside src/cuda builds with plain g++:
// the host/device qualifiers below expand to nothing unless nvcc compiles the file.
#pragma once

#define LABELWISE_VERSION_MAJOR 0
#define LABELWISE_VERSION_MINOR 1
#define LABELWISE_VERSION_PATCH 0

#if defined(__CUDACC__)
#define LABELWISE_HD __host__ __device__
#define LABELWISE_DEVICE __device__
#else
#define LABELWISE_HD
#define LABELWISE_DEVICE
#endif

// Full unrolling of a loop with a compile-time trip count (register arrays), in device code only (the
// host compiler of a .cu file would warn about an unknown pragma); g++ decides on its own.
#if defined(__CUDA_ARCH__)
#define LABELWISE_UNROLL _Pragma("unroll")
#else
#define LABELWISE_UNROLL
#endif

#if defined(__CUDA_ARCH__)
#define LABELWISE_ON_DEVICE 1
#else
#define LABELWISE_ON_DEVICE 0
#endif

// Kernel code (include/labelwise/detail/*_impl.hpp, special_functions.hpp) lives in an inline
// namespace named after the instruction set it is compiled for, so that the AVX2 / AVX-512 builds
// of the same inline functions in the CPU backends never merge with the baseline ones at link time.
#ifndef LABELWISE_ISA_NAMESPACE
#define LABELWISE_ISA_NAMESPACE isa_base
#endif

namespace labelwise {
/// Largest tensor rank accepted by TensorView (N, K, C and up to 5 spatial axes).
constexpr int kMaxDims = 8;
}  // namespace labelwise
