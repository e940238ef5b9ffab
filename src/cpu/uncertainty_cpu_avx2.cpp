// The uncertainty CPU backend built for one instruction set (flags set in CMakeLists.txt).
#define LABELWISE_CPU_VARIANT avx2
#include "uncertainty_cpu_impl.inc"
