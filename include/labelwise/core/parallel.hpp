// labelwise — CPU thread count used by every parallel loop of the library.
#pragma once

namespace labelwise {

/// Number of CPU threads labelwise uses (default: LABELWISE_NUM_THREADS, read once at the first call,
/// else all cores).
int num_threads();
/// Sets the CPU thread count; n <= 0 restores the default. Results never depend on it. Process-wide,
/// and safe to call from any thread at any time: calls already running finish with the count each of
/// their parallel stages started with.
void set_num_threads(int n);

/// True when this build of labelwise contains the CUDA kernels.
bool built_with_cuda();

}  // namespace labelwise
