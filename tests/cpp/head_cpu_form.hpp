// Entry points of head_cpu_form.inc (one per instruction-set build; see that file).
#pragma once

#include <cstdint>

#include "labelwise/detail/head_score_impl.hpp"

namespace lw_test {

/// The scratch of head_voxel_probs_cpu (HeadCpuScratch's fields: xs F, d 4·F, u 8·F, z K·Cp float64;
/// words 4·K·G, counter1 / counter2 K·G with G = ceil(F / 4)).
struct HeadFormScratch {
  double* xs;
  double* d;
  double* u;
  double* z;
  std::uint32_t* words;
  const std::uint32_t* counter1;
  const std::uint32_t* counter2;
};

using HeadForm = int (*)(const float*, std::int64_t, const labelwise::detail::HeadParams&, std::uint32_t,
                         std::uint32_t, const HeadFormScratch&, float*);

int head_cpu_form_generic(const float*, std::int64_t, const labelwise::detail::HeadParams&, std::uint32_t,
                          std::uint32_t, const HeadFormScratch&, float*);
#if defined(LABELWISE_TEST_X86_FORMS)
int head_cpu_form_avx2(const float*, std::int64_t, const labelwise::detail::HeadParams&, std::uint32_t,
                       std::uint32_t, const HeadFormScratch&, float*);
int head_cpu_form_avx512(const float*, std::int64_t, const labelwise::detail::HeadParams&, std::uint32_t,
                         std::uint32_t, const HeadFormScratch&, float*);
#endif

}  // namespace lw_test
