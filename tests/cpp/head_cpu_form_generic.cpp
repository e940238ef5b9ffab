#include "head_cpu_form.inc"  // LW_HEAD_FORM=head_cpu_form_generic (tests/CMakeLists.txt)
