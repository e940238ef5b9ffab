// CUDA == CPU for top-k, stochastic selection (bit-identical keys) and the shard merge.
// Tagged [cuda]: CPU-only CI excludes it; bench/gpu_check.sh runs it on a GPU machine.
#include <catch2/catch.hpp>
#include <cuda_runtime.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "labelwise/acquisition/selection.hpp"
#include "cuda_test_util.cuh"

using namespace labelwise;
using lw_test::DeviceArray;
using lw_test::require_device;

namespace {


template <typename T>
std::vector<T> tie_heavy(std::mt19937_64& rng, std::size_t n) {
  std::vector<T> s(n);
  std::uniform_int_distribution<int> kind(0, 9), level(-3, 3);
  std::normal_distribution<double> g(0, 1);
  const double inf = std::numeric_limits<double>::infinity();
  for (auto& v : s) {
    const int k = kind(rng);
    v = static_cast<T>(k < 5 ? level(rng) : k == 5 ? inf : k == 6 ? -inf : k == 7 ? -0.0 : g(rng));
  }
  return s;
}

}  // namespace

TEMPLATE_TEST_CASE("CUDA top_k equals the CPU with ties, infinities and maps", "[cuda]", float, double) {
  require_device();
  const std::uint64_t seed = lw_test::fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  for (std::int64_t n : {1, 5, 1000, 100003, 3000000}) {
    const auto s = tie_heavy<TestType>(rng, static_cast<std::size_t>(n));
    DeviceArray<TestType> ds(s);
    std::uniform_int_distribution<std::int64_t> pick(0, n);
    for (std::int64_t b : {std::int64_t(0), std::int64_t(1), std::min<std::int64_t>(n, 1000), n, pick(rng)}) {
      INFO("n " << n << " b " << b);
      std::vector<std::int64_t> ci(b);
      std::vector<TestType> cv(b);
      top_k(TensorView::of(s.data(), {n}), b, TensorView::of(ci.data(), {b}), TensorView::of(cv.data(), {b}));
      DeviceArray<std::int64_t> gi(b);
      DeviceArray<TestType> gv(b);
      top_k(ds.view({n}), b, gi.view({b}), gv.view({b}));
      CHECK(gi.host() == ci);
      const auto g = gv.host();
      CHECK(std::memcmp(g.data(), cv.data(), b * sizeof(TestType)) == 0);
    }
  }
  // A [2, 300, 500] map read through transposed strides on the GPU.
  const std::int64_t N = 2, H = 300, W = 500, b = 777;
  const auto flat = tie_heavy<TestType>(rng, N * H * W);
  std::vector<TestType> t(flat.size());
  for (std::int64_t a = 0; a < N; ++a)
    for (std::int64_t h = 0; h < H; ++h)
      for (std::int64_t w = 0; w < W; ++w) t[(w * H + h) * N + a] = flat[(a * H + h) * W + w];
  DeviceArray<TestType> dt(t);
  std::vector<std::int64_t> ci(b);
  top_k(TensorView::of(flat.data(), {N, H, W}), b, TensorView::of(ci.data(), {b}));
  DeviceArray<std::int64_t> gi(b);
  top_k(TensorView(dt.ptr, dtype_of<TestType>::value, {N, H, W}, {1, N, N * H}, Device::cuda(0)), b, gi.view({b}));
  CHECK(gi.host() == ci);
}

TEST_CASE("CUDA stochastic keys are bit-identical to the CPU; batches equal", "[cuda]") {
  require_device();
  const std::uint64_t seed = lw_test::fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const std::int64_t n = 2000003;
  std::vector<float> s(n);
  std::uniform_int_distribution<int> lvl(0, 1000);
  for (auto& v : s) v = lvl(rng) * 0.01f;  // ties for softrank, zeros for power
  DeviceArray<float> ds(s);
  for (auto mode : {StochasticMode::Power, StochasticMode::Softmax, StochasticMode::SoftRank}) {
    INFO("mode " << stochastic_mode_name(mode));
    StochasticOptions o;
    o.mode = mode;
    o.seed = seed;
    o.temperature = 0.37;
    std::vector<double> ck(n);
    stochastic_keys(TensorView::of(s.data(), {n}), TensorView::of(ck.data(), {n}), o);
    DeviceArray<double> gk(n);
    stochastic_keys(ds.view({n}), gk.view({n}), o);
    const auto g = gk.host();
    CHECK(std::memcmp(g.data(), ck.data(), n * sizeof(double)) == 0);
    for (std::int64_t b : {std::int64_t(1), std::int64_t(100), std::int64_t(50000)}) {
      std::vector<std::int64_t> ci(b);
      std::vector<double> cv(b);
      stochastic(TensorView::of(s.data(), {n}), b, TensorView::of(ci.data(), {b}), TensorView::of(cv.data(), {b}), o);
      DeviceArray<std::int64_t> gi(b);
      DeviceArray<double> gv(b);
      stochastic(ds.view({n}), b, gi.view({b}), gv.view({b}), o);
      CHECK(gi.host() == ci);
      CHECK(gv.host() == cv);
    }
  }
  // SoftRank with given ranks on the GPU.
  std::vector<std::int64_t> ranks(n);
  for (std::int64_t i = 0; i < n; ++i) ranks[i] = 1 + (i * 7919) % n;
  DeviceArray<std::int64_t> dr(ranks);
  StochasticOptions o;
  o.mode = StochasticMode::SoftRank;
  o.seed = seed;
  o.ranks = TensorView::of(ranks.data(), {n});
  std::vector<std::int64_t> ci(64);
  stochastic(TensorView::of(s.data(), {n}), 64, TensorView::of(ci.data(), {64}), o);
  o.ranks = dr.view({n});
  DeviceArray<std::int64_t> gi(64);
  stochastic(ds.view({n}), 64, gi.view({64}), o);
  CHECK(gi.host() == ci);
}

TEST_CASE("CUDA merge_top_k equals the CPU and reports duplicates", "[cuda]") {
  require_device();
  const std::uint64_t seed = lw_test::fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const std::int64_t m = 40000, b = 3000;
  auto v = tie_heavy<double>(rng, m);
  std::vector<std::int64_t> ids(m);
  for (std::int64_t i = 0; i < m; ++i) ids[i] = (i * 104729) % 1000003;  // distinct, unordered
  DeviceArray<double> dv(v);
  DeviceArray<std::int64_t> di(ids);
  std::vector<std::int64_t> ci(b);
  merge_top_k(TensorView::of(v.data(), {m}), TensorView::of(ids.data(), {m}), b, TensorView::of(ci.data(), {b}));
  DeviceArray<std::int64_t> gi(b);
  merge_top_k(dv.view({m}), di.view({m}), b, gi.view({b}));
  CHECK(gi.host() == ci);
  // A duplicated global index among the winners (b = m: everything wins).
  std::vector<std::int64_t> dup = ids;
  dup[1] = dup[0];
  DeviceArray<std::int64_t> dd(dup), all(m);
  CHECK_THROWS_WITH(merge_top_k(dv.view({m}), dd.view({m}), m, all.view({m})),
                    Catch::Contains("appears more than once"));
  // The same (value, id) pair twice (a shard merged twice), straddling the cut: one copy wins, as on
  // the CPU; both copies inside the batch: the duplicate error.
  std::vector<double> rv = {1.0, 1.0, 0.5, 0.25};
  std::vector<std::int64_t> rid = {5, 5, 7, 9}, one(1);
  DeviceArray<double> drv(rv);
  DeviceArray<std::int64_t> drid(rid), gone(1), gtwo(2);
  merge_top_k(drv.view({4}), drid.view({4}), 1, gone.view({1}));
  merge_top_k(TensorView::of(rv.data(), {4}), TensorView::of(rid.data(), {4}), 1, TensorView::of(one.data(), {1}));
  CHECK(gone.host() == one);
  CHECK_THROWS_WITH(merge_top_k(drv.view({4}), drid.view({4}), 2, gtwo.view({2})),
                    Catch::Contains("global index 5 appears more than once"));
  // Ids validated whatever b, the first bad entry in index order (as on the CPU).
  rid[1] = -3;
  rv[2] = NAN;
  DeviceArray<double> dbad(rv);
  DeviceArray<std::int64_t> dneg(rid), gnone(1);
  CHECK_THROWS_WITH(merge_top_k(dbad.view({4}), dneg.view({4}), 0, gnone.view({0})),
                    Catch::Contains("indices: entry [1] is negative"));
}

TEST_CASE("CUDA selection reports the first bad item and writes nothing", "[cuda]") {
  require_device();
  std::vector<float> s(100000, 1.0f);
  s[57123] = NAN;
  s[90000] = NAN;
  DeviceArray<float> ds(s);
  std::vector<std::int64_t> minus(10, -1);
  DeviceArray<std::int64_t> gi(minus);
  CHECK_THROWS_WITH(top_k(ds.view({100000}), 10, gi.view({10})), Catch::Contains("item [57123] is NaN"));
  CHECK(gi.host() == minus);
  s[57123] = -2.0f;
  s[90000] = 1.0f;
  DeviceArray<float> dneg(s);
  StochasticOptions o;
  CHECK_THROWS_WITH(stochastic(dneg.view({100000}), 10, gi.view({10}), o), Catch::Contains("item [57123] is negative"));
  CHECK(gi.host() == minus);
  // stochastic_keys writes no key on invalid input, in any mode.
  s[57123] = NAN;
  DeviceArray<float> dnan(s);
  const std::vector<double> sentinel(100000, -7.0);
  DeviceArray<double> keys(sentinel);
  for (auto mode : {StochasticMode::Power, StochasticMode::Softmax, StochasticMode::SoftRank}) {
    StochasticOptions om;
    om.mode = mode;
    CHECK_THROWS_WITH(stochastic_keys(dnan.view({100000}), keys.view({100000}), om), Catch::Contains("item [57123] is NaN"));
    CHECK(keys.host() == sentinel);
  }
}
