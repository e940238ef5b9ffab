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

const char* cpu_variant() {
#if defined(__x86_64__)
  const char* forced = std::getenv("LABELWISE_CPU_ISA");
  const bool has512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  const bool has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (forced && std::strcmp(forced, "generic") == 0) return "generic";
  if (forced && std::strcmp(forced, "avx2") == 0 && has2) return "avx2";
  if (has512 && !(forced && std::strcmp(forced, "avx2") == 0)) return "avx512";
  if (has2) return "avx2";
#endif
  return "generic";
}

ScoreFailure score_cpu(const ScoreJob& job) {
#if defined(__x86_64__)
  const char* v = cpu_variant();
  if (v[0] == 'a' && v[3] == '5') return avx512::score_cpu(job);
  if (v[0] == 'a') return avx2::score_cpu(job);
#endif
  return generic::score_cpu(job);
}

}  // namespace detail
}  // namespace labelwise
