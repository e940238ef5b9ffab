// Philox lanes, generic build (flags in CMakeLists.txt).
#include "philox_lanes.inc"
