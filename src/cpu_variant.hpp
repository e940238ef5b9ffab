// labelwise — the CPU instruction-set variant this process uses, one choice for every vectorised backend.
#pragma once

namespace labelwise {
namespace detail {

/// "avx512", "avx2" (with FMA) or "generic": the widest the processor has, or the one LABELWISE_CPU_ISA
/// forces (generic / avx2 / avx512; a forced level the processor lacks falls back to the next one).
/// Defined in src/cpu/uncertainty_cpu.cpp.
const char* cpu_variant();

}  // namespace detail
}  // namespace labelwise
