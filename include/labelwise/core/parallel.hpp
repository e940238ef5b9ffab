// labelwise — CPU thread count used by every parallel loop of the library.
#pragma once

namespace labelwise {

/// Number of CPU threads labelwise uses (default: LABELWISE_NUM_THREADS, read once at the first call,
/// else all cores).
int num_threads();
/// The most CPU threads labelwise uses: larger counts (set_num_threads, LABELWISE_NUM_THREADS) mean
/// this many. Every parallel call keeps some state per thread, and a count far beyond the cores only
/// costs thread starts and memory.
constexpr int kMaxThreads = 1024;
/// Sets the CPU thread count; n <= 0 restores the default. Results never depend on it. Process-wide,
/// and safe to call from any thread at any time: calls already running finish with the count each of
/// their parallel stages started with.
void set_num_threads(int n);

/// Installs the function that long-running calls ask, every 0.2 s or so between their steps and on the
/// thread that called them, whether to stop; when it returns true the call throws
/// Error(ErrorKind::Interrupted). The steps are the iterations of the iterative algorithms (core-set /
/// BADGE / k-means picks, BatchBALD steps, label spreading iterations, linkage merges, slice
/// propagation's slices), the kNN search's block pairs and rows, and the fused head's voxel blocks.
/// The Python module installs one that turns
/// Ctrl-C into KeyboardInterrupt. nullptr (the default): never interrupted. Process-wide; set it
/// before calls begin.
void set_interrupt_check(bool (*check)());

/// True when this build of labelwise contains the CUDA kernels.
bool built_with_cuda();

}  // namespace labelwise
