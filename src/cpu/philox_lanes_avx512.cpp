// Philox lanes, avx512 build (flags in CMakeLists.txt).
#include "philox_lanes.inc"
