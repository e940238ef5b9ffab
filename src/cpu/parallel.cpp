#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>
#if defined(__GLIBCXX__)
#include <cxxabi.h>  // abi::__forced_unwind
#endif

#include "labelwise/core/error.hpp"
#include "labelwise/core/parallel.hpp"
#include "labelwise/detail/parallel_for.hpp"

namespace labelwise {
namespace {
std::atomic<int> g_threads{0};
std::atomic<int> g_thread_start_budget{-1};  // limit_thread_starts_for_testing
std::atomic<std::int64_t> g_thread_starts{0};  // thread_starts_for_testing
std::atomic<bool (*)()> g_interrupt_check{nullptr};
thread_local bool t_pool_thread = false;                   // a thread parallel_for started
thread_local const std::atomic<bool>* t_stop = nullptr;    // the stop flag of the loop whose chunk runs here

/// LABELWISE_NUM_THREADS, else the cores; read once, at the first call (getenv is not safe against a
/// concurrent setenv, and num_threads() runs in every parallel loop, without the GIL in Python).
int default_threads() {
  static const int n = [] {
    if (const char* env = std::getenv("LABELWISE_NUM_THREADS")) {
      const int v = std::atoi(env);
      if (v > 0) return std::min(v, kMaxThreads);
    }
    const unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : static_cast<int>(std::min<unsigned>(hw, kMaxThreads));
  }();
  return n;
}
}  // namespace

int num_threads() {
  const int n = g_threads.load();
  return n > 0 ? n : default_threads();
}

void set_num_threads(int n) { g_threads.store(n > 0 ? std::min(n, kMaxThreads) : 0); }

void set_interrupt_check(bool (*check)()) { g_interrupt_check.store(check); }

namespace detail {
namespace {
/// The unwind that pthread_exit / pthread_cancel start (e.g. Python < 3.14 ends a thread that asks for
/// the GIL while the interpreter shuts down). It must not be swallowed, or glibc aborts the process.
#if defined(__GLIBCXX__)
using ForcedUnwind = abi::__forced_unwind;
#else
struct ForcedUnwind {};  // no such unwind outside libstdc++: never thrown
#endif
}  // namespace

int worker_slots() { return std::max(1, num_threads()); }

int worker_slots(std::int64_t n, std::int64_t grain) {
  grain = std::max<std::int64_t>(grain, 1);
  const std::int64_t chunks = std::max<std::int64_t>(1, (n + grain - 1) / grain);
  return static_cast<int>(std::min<std::int64_t>(worker_slots(), chunks));
}

void poll_interrupt() {
  // Another chunk of the same parallel loop failed or was interrupted: stop this one too.
  if (t_stop != nullptr && t_stop->load(std::memory_order_relaxed)) throw Error(ErrorKind::Interrupted, "interrupted");
  bool (*check)() = g_interrupt_check.load();
  if (check == nullptr || t_pool_thread) return;  // the check runs on the calling thread only
  // At most every 0.2 s per thread: the check may take a lock (Python's GIL).
  thread_local std::chrono::steady_clock::time_point last{};
  const auto now = std::chrono::steady_clock::now();
  if (now - last < std::chrono::milliseconds(200)) return;
  last = now;
  if (check()) throw Error(ErrorKind::Interrupted, "interrupted");
}

void limit_thread_starts_for_testing(int n) { g_thread_start_budget.store(n < 0 ? -1 : n); }

std::int64_t thread_starts_for_testing() { return g_thread_starts.load(); }

void parallel_for(std::int64_t n, std::int64_t grain,
                  const std::function<void(std::int64_t, std::int64_t, int)>& fn) {
  parallel_for(n, grain, worker_slots(), fn);
}

void parallel_for(std::int64_t n, std::int64_t grain, int max_workers,
                  const std::function<void(std::int64_t, std::int64_t, int)>& fn) {
  if (n <= 0) return;
  grain = std::max<std::int64_t>(grain, 1);
  const std::int64_t max_chunks = (n + grain - 1) / grain;
  const int workers = static_cast<int>(std::min<std::int64_t>(std::max(1, max_workers), max_chunks));
  if (workers <= 1) {
    fn(0, n, 0);
    return;
  }
  std::exception_ptr error;
  std::mutex error_mutex;
  std::atomic<bool> stop{false};  // set once a chunk fails: the others stop at their next poll_interrupt
  auto run = [&](int w) {
    const std::int64_t begin = n * w / workers;
    const std::int64_t end = n * (w + 1) / workers;
    const std::atomic<bool>* outer = t_stop;
    t_stop = &stop;
    try {
      fn(begin, end, w);
    } catch (ForcedUnwind&) {  // the thread is being ended: let it go; the other chunks stop at their next poll
      stop.store(true);
      t_stop = outer;
      throw;
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();  // the first error: later chunks only echo the stop
      stop.store(true);
    }
    t_stop = outer;
  };
  // Where the system refuses a thread (process limits, many concurrent calls), the chunks that got
  // none run here, one after another: same chunks, same results. An exception escaping with threads
  // still joinable would terminate the process.
  std::vector<std::thread> pool;
  int started = 1;
  try {
    pool.reserve(static_cast<std::size_t>(workers - 1));
    for (; started < workers; ++started) {
      const int budget = g_thread_start_budget.load();
      if (budget >= 0 && started > budget) throw std::system_error(std::make_error_code(std::errc::resource_unavailable_try_again));
      pool.emplace_back([&run, w = started] {
        t_pool_thread = true;
        run(w);
      });
      g_thread_starts.fetch_add(1, std::memory_order_relaxed);
    }
  } catch (...) {
  }
  try {
    run(0);
    for (int w = started; w < workers; ++w) run(w);
  } catch (ForcedUnwind&) {
    for (auto& t : pool) t.join();  // they stop at their next poll; a joinable thread left behind terminates
    throw;
  }
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace detail
}  // namespace labelwise
