// The CPU parallel loop's worker cap, and set_num_threads() called from another thread while
// operations with per-worker state run (each call must keep the worker count it sized its state by).
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <functional>
#include <limits>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

#include "labelwise/acquisition/diversity.hpp"
#include "labelwise/acquisition/selection.hpp"
#include "labelwise/core/error.hpp"
#include "labelwise/propagation/knn.hpp"
#include "labelwise/core/parallel.hpp"
#include "labelwise/detail/parallel_for.hpp"
#include "test_seed.hpp"

using namespace labelwise;

namespace {
struct ThreadReset {
  ~ThreadReset() { set_num_threads(0); }
};

/// n x d standard normal features (row-major), from this test's fresh seed.
std::vector<double> normal_pool(std::int64_t n, std::int64_t d) {
  std::mt19937_64 g(fresh_seed());
  std::normal_distribution<double> nd;
  std::vector<double> x(static_cast<std::size_t>(n * d));
  for (double& v : x) v = nd(g);
  return x;
}
}  // namespace

TEST_CASE("a thread count far beyond the work costs neither threads nor memory", "[parallel]") {
  ThreadReset reset;
  set_num_threads(std::numeric_limits<int>::max());
  CHECK(num_threads() == kMaxThreads);  // capped: per-call state is sized by it
  set_num_threads(1000);
  CHECK(num_threads() == 1000);
  // tiny inputs: one kNN block pair, one selection chunk, one core-set chunk start no thread
  std::vector<double> f = {0, 0, 1, 0, 0, 1, 5, 5}, dist(4), s = {1, 5, 3, 3, 2, 0}, radii(2);
  std::vector<std::int64_t> idx(4), top(2), picks(2);
  const std::int64_t before = detail::thread_starts_for_testing();
  knn_graph(TensorView::of(f.data(), {4, 2}), 1, TensorView::of(idx.data(), {4, 1}), TensorView::of(dist.data(), {4, 1}));
  top_k(TensorView::of(s.data(), {6}), 2, TensorView::of(top.data(), {2}));
  coreset(TensorView::of(f.data(), {4, 2}), TensorView(), 2, TensorView::of(picks.data(), {2}),
          TensorView::of(radii.data(), {2}));
  CHECK(detail::thread_starts_for_testing() == before);
  CHECK(idx == std::vector<std::int64_t>{1, 0, 0, 1});
  CHECK(top == std::vector<std::int64_t>{1, 2});
  std::vector<std::int64_t> one(2);
  set_num_threads(1);
  coreset(TensorView::of(f.data(), {4, 2}), TensorView(), 2, TensorView::of(one.data(), {2}),
          TensorView::of(radii.data(), {2}));
  CHECK(picks == one);
}

TEST_CASE("parallel_for never hands out a worker index at or past max_workers", "[parallel]") {
  ThreadReset reset;
  set_num_threads(16);
  for (const int cap : {1, 2, 3, 7}) {
    const std::int64_t n = 10007;
    std::vector<std::atomic<int>> seen(static_cast<std::size_t>(n));
    for (auto& s : seen) s = 0;
    std::atomic<int> top{-1};
    detail::parallel_for(n, 1, cap, [&](std::int64_t b, std::int64_t e, int w) {
      int t = top.load();
      while (w > t && !top.compare_exchange_weak(t, w)) {
      }
      for (std::int64_t i = b; i < e; ++i) ++seen[static_cast<std::size_t>(i)];
    });
    INFO("cap " << cap);
    REQUIRE(top.load() == cap - 1);  // n >> cap: every allowed worker runs
    for (std::int64_t i = 0; i < n; ++i) REQUIRE(seen[static_cast<std::size_t>(i)].load() == 1);
  }
  // The three-argument form follows num_threads().
  set_num_threads(3);
  std::atomic<int> top{-1};
  detail::parallel_for(1000, 1, [&](std::int64_t, std::int64_t, int w) {
    int t = top.load();
    while (w > t && !top.compare_exchange_weak(t, w)) {
    }
  });
  REQUIRE(top.load() == 2);
  REQUIRE(detail::worker_slots() == 3);
}

TEST_CASE("set_num_threads from another thread while core-set / top_k / softrank run", "[parallel]") {
  ThreadReset reset;
  std::mt19937_64 g(fresh_seed());
  const std::int64_t n = 6000, d = 8, b = 12, m = 400000, kb = 50;
  std::vector<float> x(static_cast<std::size_t>(n * d));
  std::normal_distribution<float> nd;
  for (float& v : x) v = nd(g);
  std::vector<std::uint8_t> labeled(static_cast<std::size_t>(n), 0);
  labeled[5] = 1;
  std::vector<float> s(static_cast<std::size_t>(m));
  std::uniform_real_distribution<float> ud(0.f, 1.f);
  for (float& v : s) v = ud(g);

  auto run_all = [&](std::vector<std::int64_t>& picks, std::vector<double>& radii, std::vector<std::int64_t>& top,
                     std::vector<std::int64_t>& drawn) {
    picks.assign(b, -1);
    radii.assign(b, 0.0);
    top.assign(kb, -1);
    drawn.assign(kb, -1);
    coreset(TensorView::of(x.data(), {n, d}), TensorView::of(labeled.data(), {n}), b,
            TensorView::of(picks.data(), {b}), TensorView::of(radii.data(), {b}));
    top_k(TensorView::of(s.data(), {m}), kb, TensorView::of(top.data(), {kb}));
    StochasticOptions so;
    so.mode = StochasticMode::SoftRank;
    so.seed = 11;
    stochastic(TensorView::of(s.data(), {m}), kb, TensorView::of(drawn.data(), {kb}), so);
  };
  set_num_threads(1);
  std::vector<std::int64_t> p0, t0, q0;
  std::vector<double> r0;
  run_all(p0, r0, t0, q0);

  // One thread flips the count between 1 and 48 as fast as it can while this one runs the calls.
  std::atomic<bool> stop{false};
  std::thread flipper([&] {
    for (int i = 0; !stop.load(); ++i) {
      set_num_threads(i % 2 ? 48 : 1);
      std::this_thread::yield();
    }
  });
  bool same = true;
  for (int rep = 0; rep < 12 && same; ++rep) {
    std::vector<std::int64_t> p, t, q;
    std::vector<double> r;
    run_all(p, r, t, q);
    same = p == p0 && r == r0 && t == t0 && q == q0;
  }
  stop = true;
  flipper.join();
  REQUIRE(same);
}

TEST_CASE("parallel_for runs the chunks of threads the system refuses on the calling thread", "[parallel]") {
  ThreadReset reset;
  struct HookReset {
    ~HookReset() { detail::limit_thread_starts_for_testing(-1); }
  } hook_reset;
  set_num_threads(8);
  for (const int budget : {0, 1, 3, 7}) {
    detail::limit_thread_starts_for_testing(budget);
    const std::int64_t n = 5003;
    std::vector<std::atomic<int>> seen(static_cast<std::size_t>(n));
    for (auto& s : seen) s = 0;
    std::vector<std::atomic<int>> chunks(8);
    for (auto& c : chunks) c = 0;
    detail::parallel_for(n, 1, [&](std::int64_t b, std::int64_t e, int w) {
      ++chunks[static_cast<std::size_t>(w)];
      for (std::int64_t i = b; i < e; ++i) ++seen[static_cast<std::size_t>(i)];
    });
    INFO("budget " << budget);
    for (const auto& c : chunks) REQUIRE(c.load() == 1);  // every worker index once, threads or not
    for (std::int64_t i = 0; i < n; ++i) REQUIRE(seen[static_cast<std::size_t>(i)].load() == 1);
    // An exception from a chunk that runs on the calling thread still reaches the caller.
    REQUIRE_THROWS_WITH(detail::parallel_for(n, 1,
                                             [&](std::int64_t, std::int64_t, int w) {
                                               if (w == 7) throw std::runtime_error("chunk 7");
                                             }),
                        "chunk 7");
  }
  // A public operation gives the same batch with every thread refused.
  const std::int64_t n = 3000, d = 6, b = 10;
  const std::vector<double> x = normal_pool(n, d);
  std::vector<std::int64_t> p1(b), p2(b);
  std::vector<double> r1(b), r2(b);
  detail::limit_thread_starts_for_testing(-1);
  coreset(TensorView::of(x.data(), {n, d}), TensorView(), b, TensorView::of(p1.data(), {b}), TensorView::of(r1.data(), {b}));
  detail::limit_thread_starts_for_testing(0);
  coreset(TensorView::of(x.data(), {n, d}), TensorView(), b, TensorView::of(p2.data(), {b}), TensorView::of(r2.data(), {b}));
  REQUIRE(p1 == p2);
  REQUIRE(r1 == r2);
}

TEST_CASE("set_interrupt_check stops long calls with ErrorKind::Interrupted, only when it says so", "[parallel]") {
  struct Reset {
    ~Reset() { set_interrupt_check(nullptr); }
  } reset;
  const std::int64_t n = 4000, d = 8, b = 40;
  std::vector<double> x = normal_pool(n, d);
  std::vector<std::int64_t> p0(b), p1(b);
  std::vector<double> r0(b), r1(b);
  auto run_coreset = [&](std::vector<std::int64_t>& p, std::vector<double>& r) {
    coreset(TensorView::of(x.data(), {n, d}), TensorView(), b, TensorView::of(p.data(), {b}), TensorView::of(r.data(), {b}));
  };
  run_coreset(p0, r0);
  auto kind_of = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const Error& e) {
      return static_cast<int>(e.kind());
    }
    return -1;
  };
  static std::atomic<int> asked{0};
  set_interrupt_check(+[] {
    ++asked;
    return true;
  });
  // The check runs at most every 0.2 s on a thread: wait out any earlier poll of this one.
  std::this_thread::sleep_for(std::chrono::milliseconds(250));
  CHECK(kind_of([&] { run_coreset(p1, r1); }) == static_cast<int>(ErrorKind::Interrupted));
  CHECK(asked.load() == 1);
  // A parallel stage (the kNN search's block pairs): the calling thread's chunk stops, and the other
  // workers stop at their next step instead of finishing theirs.
  set_num_threads(2);
  std::vector<std::int64_t> ki(static_cast<std::size_t>(n * 5));
  std::vector<double> kd(ki.size());
  std::this_thread::sleep_for(std::chrono::milliseconds(250));
  CHECK(kind_of([&] {
          knn_graph(TensorView::of(x.data(), {n, d}), 5, TensorView::of(ki.data(), {n, 5}),
                    TensorView::of(kd.data(), {n, 5}));
        }) == static_cast<int>(ErrorKind::Interrupted));
  set_num_threads(0);
  // A check that never says stop changes nothing.
  set_interrupt_check(+[] { return false; });
  std::this_thread::sleep_for(std::chrono::milliseconds(250));
  run_coreset(p1, r1);
  CHECK(p1 == p0);
  CHECK(r1 == r0);
}
