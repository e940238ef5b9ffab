// labelwise — the CPU parallel loop shared by every operation (static partition,
// so results never depend on the thread count).
#pragma once

#include <cstdint>
#include <functional>

namespace labelwise {
namespace detail {

/// Calls fn(begin, end, worker) over [0, n) split into contiguous chunks of at least
/// `grain` items, on up to max_workers threads (worker < max_workers; max_workers >= 1). Callers
/// that keep per-worker state size it by one worker_slots() value and pass that same value here, so
/// that set_num_threads() from another thread cannot hand fn a worker index past the state.
/// The first exception from fn is re-thrown; once a chunk has thrown, the others stop at their next
/// poll_interrupt().
void parallel_for(std::int64_t n, std::int64_t grain, int max_workers,
                  const std::function<void(std::int64_t, std::int64_t, int)>& fn);

/// The same on up to num_threads() threads, for loops without per-worker state.
void parallel_for(std::int64_t n, std::int64_t grain,
                  const std::function<void(std::int64_t, std::int64_t, int)>& fn);

/// max(1, num_threads()) read once: the size of a call's per-worker state.
int worker_slots();
/// worker_slots(), but no more than the chunks of a loop over n items in chunks of `grain` (at least
/// 1): the workers that parallel_for(n, grain, ...) can use, for state that no idle worker should get.
int worker_slots(std::int64_t n, std::int64_t grain);

/// A step boundary of a long-running call, on its calling thread: asks the interrupt check (at most
/// every 0.2 s) and throws Error(ErrorKind::Interrupted) when it says stop.
void poll_interrupt();

/// Test hook: from now on each parallel_for starts at most n threads besides the caller's (n < 0:
/// no limit); the next start fails as when the system refuses a thread (std::system_error).
void limit_thread_starts_for_testing(int n);

/// Test hook: the threads parallel_for has started in this process so far.
std::int64_t thread_starts_for_testing();

}  // namespace detail
}  // namespace labelwise
