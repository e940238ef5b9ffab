// labelwise — the CPU parallel loop shared by every operation (static partition,
// so results never depend on the thread count).
#pragma once

#include <cstdint>
#include <functional>

namespace labelwise {
namespace detail {

/// Calls fn(begin, end, worker) over [0, n) split into contiguous chunks of at least
/// `grain` items, on up to num_threads() threads. Exceptions from fn are re-thrown.
void parallel_for(std::int64_t n, std::int64_t grain,
                  const std::function<void(std::int64_t, std::int64_t, int)>& fn);

}  // namespace detail
}  // namespace labelwise
