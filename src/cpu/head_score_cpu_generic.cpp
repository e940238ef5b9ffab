// The fused head CPU backend built for one instruction set (flags set in CMakeLists.txt).
#define LABELWISE_CPU_VARIANT head_generic
#include "head_score_cpu.inc"
