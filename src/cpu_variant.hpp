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
