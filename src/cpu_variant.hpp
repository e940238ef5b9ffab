// labelwise — the CPU instruction-set variant this process uses, one choice for every vectorised backend.
#pragma once

namespace labelwise {
namespace detail {

enum class CpuIsa { Generic, Avx2, Avx512 };

/// AVX-512, AVX2 (with FMA) or generic: the widest the processor has, or the one LABELWISE_CPU_ISA
/// forces (generic / avx2 / avx512; a forced level the processor lacks falls back to the next one).
/// Read at each call (tests switch it with setenv). Defined in src/cpu/uncertainty_cpu.cpp.
CpuIsa cpu_isa();

}  // namespace detail
}  // namespace labelwise

/// A small hot function compiled for several x86 instruction sets by GCC's function multi-versioning
/// (target_clones: the widest the processor supports is picked once per process, whatever
/// LABELWISE_CPU_ISA says), for files that are otherwise built for the baseline only.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define LABELWISE_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LABELWISE_CPU_CLONES
#endif
