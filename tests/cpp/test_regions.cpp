// Region acquisition against brute-force box means on fresh random maps.
#include <catch2/catch.hpp>

#include "test_seed.hpp"

#include <cmath>
#include <random>
#include <vector>

#include "labelwise/acquisition/regions.hpp"

using namespace labelwise;

TEST_CASE("patch scores equal brute-force box means (2D and 3D, strided)", "[regions]") {
  std::mt19937_64 rng(fresh_seed());
  std::uniform_real_distribution<double> u(0, 1);
  const int N = 2, D = 5, H = 7, W = 6;
  std::vector<double> map(N * D * H * W);
  for (double& v : map) v = u(rng);
  const TensorView mv = TensorView::of(map.data(), {N, D, H, W});
  const std::vector<std::int64_t> patch = {2, 3, 2}, stride = {2, 2, 3};
  const std::int64_t g0 = (D - 2) / 2 + 1, g1 = (H - 3) / 2 + 1, g2 = (W - 2) / 3 + 1;
  std::vector<double> out(N * g0 * g1 * g2);
  patch_scores(mv, patch, stride, TensorView::of(out.data(), {N, g0, g1, g2}));
  for (int n = 0; n < N; ++n)
    for (int a = 0; a < g0; ++a)
      for (int b = 0; b < g1; ++b)
        for (int c = 0; c < g2; ++c) {
          double s = 0;
          for (int i = 0; i < 2; ++i)
            for (int j = 0; j < 3; ++j)
              for (int k = 0; k < 2; ++k) s += map[((n * D + a * 2 + i) * H + b * 2 + j) * W + c * 3 + k];
          CHECK(out[((n * g0 + a) * g1 + b) * g2 + c] == Approx(s / 12).epsilon(1e-12));
        }
  // 2D float32 map, slices of a 3D map
  std::vector<float> m2(3 * 4, 0.f);
  m2[5] = 1.f;  // row 1, col 1
  std::vector<float> o2(2 * 3);
  patch_scores(TensorView::of(m2.data(), {1, 3, 4}), {2, 2}, {1, 1}, TensorView::of(o2.data(), {1, 2, 3}));
  CHECK(o2[0] == Approx(0.25f));
  CHECK(o2[5] == 0.f);
  std::vector<double> sl(N * H);
  slice_scores(mv, 2, TensorView::of(sl.data(), {N, H}));
  for (int n = 0; n < N; ++n)
    for (int j = 0; j < H; ++j) {
      double s = 0;
      for (int i = 0; i < D; ++i)
        for (int k = 0; k < W; ++k) s += map[((n * D + i) * H + j) * W + k];
      CHECK(sl[n * H + j] == Approx(s / (D * W)).epsilon(1e-12));
    }
}

TEST_CASE("top regions are the best non-overlapping patches", "[regions]") {
  // One hot spot; the second-best patch must not overlap the first.
  std::vector<double> map(1 * 6 * 6, 0.0);
  map[2 * 6 + 2] = 10.0;
  map[2 * 6 + 3] = 9.0;
  map[5 * 6 + 5] = 1.0;
  std::vector<std::int64_t> corners(3 * 3);
  std::vector<double> scores(3);
  top_regions(TensorView::of(map.data(), {1, 6, 6}), 3, {2, 2}, {1, 1}, TensorView::of(corners.data(), {3, 3}),
              TensorView::of(scores.data(), {3}));
  CHECK(scores[0] == Approx(19.0 / 4));
  CHECK(corners[1] == 1);  // the pair (2,2),(2,3) is covered by the patch at (1|2, 2)
  // No two chosen patches overlap.
  for (int a = 0; a < 3; ++a)
    for (int b = a + 1; b < 3; ++b) {
      const bool ov = std::abs(corners[a * 3 + 1] - corners[b * 3 + 1]) < 2 &&
                      std::abs(corners[a * 3 + 2] - corners[b * 3 + 2]) < 2;
      CHECK(!ov);
    }
  CHECK(scores[0] >= scores[1]);
  CHECK(scores[1] >= scores[2]);
}

TEST_CASE("region acquisition errors", "[regions][errors]") {
  std::vector<double> map(2 * 4 * 4, 0.5);
  const TensorView mv = TensorView::of(map.data(), {2, 4, 4});
  std::vector<double> out(8);
  std::vector<std::int64_t> corners(100);
  std::vector<double> sc(100);
  CHECK_THROWS_WITH(patch_scores(mv, {2}, {2}, TensorView::of(out.data(), {2, 2})), Catch::Contains("expected 2 sizes"));
  CHECK_THROWS_WITH(patch_scores(mv, {5, 2}, {1, 1}, TensorView::of(out.data(), {2, 2})), Catch::Contains("must be in [1, 4]"));
  CHECK_THROWS_WITH(patch_scores(mv, {2, 2}, {0, 1}, TensorView::of(out.data(), {2, 2})), Catch::Contains(">= 1"));
  CHECK_THROWS_WITH(top_regions(mv, 9, {2, 2}, {2, 2}, TensorView::of(corners.data(), {9, 3}), TensorView::of(sc.data(), {9})),
                    Catch::Contains("found only 8"));
  map[17] = NAN;
  CHECK_THROWS_WITH(patch_scores(mv, {2, 2}, {2, 2}, TensorView::of(out.data(), {2, 2, 2})), Catch::Contains("NaN at [1, 0, 1]"));
  std::vector<double> one(3);
  CHECK_THROWS_WITH(patch_scores(TensorView::of(one.data(), {3}), {}, {}, TensorView::of(out.data(), {3})),
                    Catch::Contains("1 to 3 spatial axes"));
}
