// Runtime choice of the uncertainty CPU backend: the widest vector instruction set the processor
// has (AVX-512, AVX2 + FMA, or baseline x86-64 / any other architecture). LABELWISE_CPU_ISA=generic
// (or avx2 / avx512) forces a variant, for testing and for comparing them.
#include <cstdlib>
#include <cstring>

#include "../cpu_variant.hpp"
#include "../uncertainty_backend.hpp"

namespace labelwise {
namespace detail {
namespace generic { ScoreFailure score_cpu(const ScoreJob& job); }
#if defined(__x86_64__)
namespace avx2 { ScoreFailure score_cpu(const ScoreJob& job); }
namespace avx512 { ScoreFailure score_cpu(const ScoreJob& job); }
#endif

CpuIsa cpu_isa() {
#if defined(__x86_64__)
  const char* forced = std::getenv("LABELWISE_CPU_ISA");
  const bool has512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  const bool has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (forced && std::strcmp(forced, "generic") == 0) return CpuIsa::Generic;
  if (forced && std::strcmp(forced, "avx2") == 0 && has2) return CpuIsa::Avx2;
  if (has512 && !(forced && std::strcmp(forced, "avx2") == 0)) return CpuIsa::Avx512;
  if (has2) return CpuIsa::Avx2;
#endif
  return CpuIsa::Generic;
}

ScoreFailure score_cpu(const ScoreJob& job) {
#if defined(__x86_64__)
  const CpuIsa isa = cpu_isa();
  if (isa == CpuIsa::Avx512) return avx512::score_cpu(job);
  if (isa == CpuIsa::Avx2) return avx2::score_cpu(job);
#endif
  return generic::score_cpu(job);
}

}  // namespace detail
}  // namespace labelwise
