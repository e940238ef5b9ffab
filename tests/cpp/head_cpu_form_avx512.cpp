#include "head_cpu_form.inc"  // LW_HEAD_FORM=head_cpu_form_avx512 (tests/CMakeLists.txt)
