// The fused head CPU backend built for one instruction set (flags set in CMakeLists.txt).
#define LABELWISE_CPU_VARIANT head_avx512
#include "head_score_cpu.inc"
