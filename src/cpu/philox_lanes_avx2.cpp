// Philox lanes, avx2 build (flags in CMakeLists.txt).
#include "philox_lanes.inc"
