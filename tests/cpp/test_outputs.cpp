// Output views: self-overlap and overlap with other arguments (tensor_view.hpp check_outputs), the
// predicates against brute-force address sets, and the errors of the functions that take outputs.
#include <catch2/catch.hpp>

#include "test_seed.hpp"

#include <algorithm>
#include <cstdint>
#include <random>
#include <set>
#include <vector>

#include "labelwise/acquisition/diversity.hpp"
#include "labelwise/acquisition/selection.hpp"
#include "labelwise/propagation/certified.hpp"
#include "labelwise/propagation/knn.hpp"
#include "labelwise/propagation/spreading.hpp"
#include "labelwise/uncertainty/metrics.hpp"

using namespace labelwise;

namespace {

/// Every element's byte offset from the view's data pointer (brute force).
std::vector<std::int64_t> element_offsets(const TensorView& v) {
  std::vector<std::int64_t> out;
  const std::int64_t n = v.numel();
  for (std::int64_t i = 0; i < n; ++i) {
    std::int64_t r = i, off = 0;
    for (int d = v.ndim - 1; d >= 0; --d) {
      off += (r % v.shape[d]) * v.strides[d];
      r /= v.shape[d];
    }
    out.push_back(off * dtype_size(v.dtype));
  }
  return out;
}

/// True when two elements (of w bytes each, at the offsets given) share a byte.
bool bytes_collide(const std::vector<std::int64_t>& a, const std::vector<std::int64_t>& b, int w) {
  for (std::int64_t x : a)
    for (std::int64_t y : b)
      if (x < y + w && y < x + w) return true;
  return false;
}

/// A view of `base` (contiguous, shape `shape`) with its axes permuted, reversed and strided at random:
/// the kind of view slicing and transposing make. Its first element is at base + returned offset.
TensorView random_slice_view(float* base, const std::vector<std::int64_t>& shape, std::mt19937_64& rng) {
  const int nd = static_cast<int>(shape.size());
  std::vector<std::int64_t> contiguous(nd);
  std::int64_t s = 1;
  for (int d = nd - 1; d >= 0; --d) {
    contiguous[d] = s;
    s *= shape[d];
  }
  std::vector<int> perm(nd);
  for (int d = 0; d < nd; ++d) perm[d] = d;
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<std::int64_t> shp(nd), str(nd);
  std::int64_t offset = 0;
  for (int d = 0; d < nd; ++d) {
    const int a = perm[d];
    const std::int64_t step = 1 + static_cast<std::int64_t>(rng() % 2);  // every element or every other one
    shp[d] = (shape[a] + step - 1) / step;
    str[d] = contiguous[a] * step;
    if (rng() % 2) {  // reversed axis
      offset += (shp[d] - 1) * str[d];
      str[d] = -str[d];
    }
  }
  return TensorView::of(base + offset, shp, str);
}

}  // namespace

TEST_CASE("may_overlap_itself and may_overlap agree with brute-force address sets", "[core][outputs]") {
  std::mt19937_64 rng(fresh_seed());
  std::vector<float> buf(4096);
  int self_found = 0, pair_found = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    // Arbitrary small views (zero and negative strides included): never "no overlap" when two
    // elements collide.
    const int nd = 1 + static_cast<int>(rng() % 3);
    std::vector<std::int64_t> shp(nd), str(nd);
    for (int d = 0; d < nd; ++d) {
      shp[d] = 1 + static_cast<std::int64_t>(rng() % 4);
      str[d] = static_cast<std::int64_t>(rng() % 9) - 4;
    }
    const TensorView v = TensorView::of(buf.data() + 1024, shp, str);
    const std::vector<std::int64_t> off = element_offsets(v);
    const bool dup = std::set<std::int64_t>(off.begin(), off.end()).size() < off.size();
    if (dup) {
      ++self_found;
      CHECK(may_overlap_itself(v));
    }
    // A second view at a random distance: any shared byte must be reported.
    std::vector<std::int64_t> str2 = str;
    if (rng() % 2)
      for (auto& x : str2) x = static_cast<std::int64_t>(rng() % 9) - 4;
    const std::int64_t shift = static_cast<std::int64_t>(rng() % 41) - 20;
    const TensorView u = TensorView::of(buf.data() + 1024 + shift, shp, str2);
    std::vector<std::int64_t> off_u = element_offsets(u);
    for (auto& o : off_u) o += shift * 4;  // relative to v's data pointer
    if (bytes_collide(off, off_u, 4)) {
      ++pair_found;
      CHECK(may_overlap(v, u));
      CHECK(may_overlap(u, v));
    }
  }
  CHECK(self_found > 100);
  CHECK(pair_found > 100);
  // Views made by slicing / transposing a contiguous array never overlap themselves, and the
  // halves of one such array (same shape and strides) never overlap each other.
  for (int trial = 0; trial < 500; ++trial) {
    const std::vector<std::int64_t> shape{1 + static_cast<std::int64_t>(rng() % 5), 1 + static_cast<std::int64_t>(rng() % 5),
                                          2 * (1 + static_cast<std::int64_t>(rng() % 3))};
    const TensorView v = random_slice_view(buf.data() + 512, shape, rng);
    CHECK_FALSE(may_overlap_itself(v));
  }
  for (std::int64_t cols = 2; cols <= 10; ++cols) {
    const TensorView c0 = TensorView::of(buf.data(), {50}, {cols}), c1 = TensorView::of(buf.data() + 1, {50}, {cols});
    CHECK_FALSE(may_overlap(c0, c1));                                               // two columns of [50, cols]
    CHECK(may_overlap(c0, TensorView::of(buf.data() + cols, {50}, {cols})));        // the same column, one row on
    CHECK(may_overlap(c0, TensorView::of(buf.data() + 1, {50}, {cols + 1})));       // crossing strides
  }
  // The documented false positive: distinct elements, but not nested strides.
  CHECK(may_overlap_itself(TensorView::of(buf.data(), {3, 3}, {2, 3})));
  // Other devices and empty views never overlap.
  TensorView gpu = TensorView::of(buf.data(), {10});
  gpu.device = Device::cuda(0);
  CHECK_FALSE(may_overlap(gpu, TensorView::of(buf.data(), {10})));
  CHECK_FALSE(may_overlap(TensorView::of(buf.data(), {0}), TensorView::of(buf.data(), {10})));
}

TEST_CASE("functions that write outputs reject outputs that share memory", "[core][outputs]") {
  std::mt19937_64 rng(fresh_seed());
  std::gamma_distribution<double> g(0.7);
  const std::int64_t N = 40, K = 4, C = 3;
  std::vector<double> x(static_cast<std::size_t>(N * K * C));
  for (std::int64_t r = 0; r < N * K; ++r) {
    double t = 0;
    for (std::int64_t c = 0; c < C; ++c) t += x[r * C + c] = g(rng) + 1e-3;
    for (std::int64_t c = 0; c < C; ++c) x[r * C + c] /= t;
  }
  const TensorView xv = TensorView::of(x.data(), {N, K, C});
  ScoreOptions so;
  so.sample_axis = 1;
  so.class_axis = 2;

  SECTION("metrics") {
    // Two metrics into two columns of one [N, 2] array: allowed, and equal to separate arrays.
    std::vector<double> both(2 * N), bald_alone(N), ent_alone(N);
    score(xv, {{Metric::Bald, TensorView::of(both.data(), {N}, {2})},
               {Metric::PredictiveEntropy, TensorView::of(both.data() + 1, {N}, {2})}},
          so);
    bald(xv, TensorView::of(bald_alone.data(), {N}), so);
    predictive_entropy(xv, TensorView::of(ent_alone.data(), {N}), so);
    for (std::int64_t i = 0; i < N; ++i) {
      CHECK(both[2 * i] == bald_alone[i]);
      CHECK(both[2 * i + 1] == ent_alone[i]);
    }
    std::vector<double> out(N);
    REQUIRE_THROWS_WITH(bald(xv, TensorView::of(out.data(), {N}, {0}), so),
                        Catch::Contains("bald output: the output view (shape [40], strides [0]) has elements that "
                                        "share memory"));
    // strides no memory can have: said so (it used to be reported as elements sharing memory)
    REQUIRE_THROWS_WITH(bald(xv, TensorView::of(out.data(), {N}, {std::int64_t{1} << 60}), so),
                        Catch::Contains("bald output: the output view (shape [40], strides [1152921504606846976]) "
                                        "reaches beyond the address space"));
    REQUIRE_THROWS_WITH(score(xv, {{Metric::Bald, TensorView::of(out.data(), {N})},
                                  {Metric::Margin, TensorView::of(out.data(), {N})}},
                              so),
                        Catch::Contains("margin output and bald output share memory"));
    REQUIRE_THROWS_WITH(bald(xv, TensorView::of(x.data() + 5, {N}), so),
                        Catch::Contains("bald output shares memory with the input x"));
  }
  SECTION("top_k and core-set") {
    std::vector<double> s(static_cast<std::size_t>(N));
    for (auto& v : s) v = g(rng);
    std::vector<std::int64_t> idx(5);
    std::vector<double> vals(5);
    REQUIRE_THROWS_WITH(top_k(TensorView::of(s.data(), {N}), 5, TensorView::of(idx.data(), {5}, {0})),
                        Catch::Contains("indices: the output view"));
    REQUIRE_THROWS_WITH(
        top_k(TensorView::of(s.data(), {N}), 5, TensorView::of(idx.data(), {5}), TensorView::of(s.data() + 3, {5})),
        Catch::Contains("values shares memory with the input scores"));
    // int64 indices and float64 radii on the same bytes
    std::vector<double> feats(static_cast<std::size_t>(N * 2));
    for (auto& v : feats) v = g(rng);
    REQUIRE_THROWS_WITH(coreset(TensorView::of(feats.data(), {N, 2}), TensorView(), 5,
                                TensorView::of(idx.data(), {5}),
                                TensorView(idx.data(), DType::Float64, {5})),
                        Catch::Contains("radii and indices share memory"));
    std::vector<std::int64_t> ids(static_cast<std::size_t>(N));
    AverageLinkageOptions lo;
    lo.num_clusters = 3;
    REQUIRE_THROWS_WITH(average_linkage_clusters(TensorView::of(feats.data(), {N, 2}), TensorView::of(ids.data(), {N}, {0}), lo),
                        Catch::Contains("clusters: the output view"));
    REQUIRE_THROWS_WITH(average_linkage_clusters(TensorView::of(feats.data(), {N, 2}),
                                                 TensorView(feats.data() + 1, DType::Int64, {N}), lo),
                        Catch::Contains("clusters shares memory with the input embeddings"));
  }
  SECTION("knn_graph and label_spreading") {
    std::vector<double> feats(static_cast<std::size_t>(N * 2));
    for (auto& v : feats) v = g(rng);
    std::vector<std::int64_t> I(static_cast<std::size_t>(N * 3));
    REQUIRE_THROWS_WITH(knn_graph(TensorView::of(feats.data(), {N, 2}), 3, TensorView::of(I.data(), {N, 3}),
                                  TensorView(I.data(), DType::Float64, {N, 3})),
                        Catch::Contains("distances and indices share memory"));
    std::vector<std::int64_t> labels(static_cast<std::size_t>(N), -1);
    labels[0] = 0;
    labels[1] = 1;
    std::vector<double> dist(static_cast<std::size_t>(N * 2));
    REQUIRE_THROWS_WITH(label_spreading(TensorView::of(feats.data(), {N, 2}), TensorView::of(labels.data(), {N}),
                                        TensorView::of(dist.data(), {N, 2}), TensorView::of(labels.data(), {N})),
                        Catch::Contains("out_labels shares memory with the input labels"));
  }
}

TEST_CASE("inputs that reach beyond the address space or are not aligned, bad enum ids, overflowing views",
          "[core][outputs]") {
  std::vector<double> x(24, 0.25), out(2);
  const TensorView ov = TensorView::of(out.data(), {2});
  // an input whose strides reach outside the address space is named as the input, not as an overlap
  CHECK_THROWS_WITH(predictive_entropy(TensorView::of(x.data(), {2, 3, 2}, {INT64_MIN, 2, 1}), ov),
                    Catch::Contains("x: the view (shape [2, 3, 2]) reaches beyond the address space"));
  // an input or output pointer that is not aligned to its element size (undefined behaviour to read)
  std::vector<unsigned char> bytes(24 * 8 + 8);
  auto* odd = bytes.data() + 1;
  CHECK_THROWS_WITH(predictive_entropy(TensorView(odd, DType::Float64, {2, 3, 4}), ov),
                    Catch::Contains("x: data pointer is not aligned to its 8-byte elements"));
  CHECK_THROWS_WITH(predictive_entropy(TensorView::of(x.data(), {2, 3, 4}), TensorView(odd, DType::Float64, {2})),
                    Catch::Contains("predictive_entropy output: data pointer is not aligned"));
  // a view with explicit strides whose element count overflows int64 is refused when made
  CHECK_THROWS_WITH(TensorView::of(x.data(), {INT64_MAX, 3}, {0, 0}), Catch::Contains("more elements than fit in int64"));
  TensorView bad;
  bad.ndim = 100;  // hand-set: shows as such in messages instead of reading past the shape array
  CHECK(bad.shape_str() == "[invalid rank 100]");
  // ... and is refused by every function that counts its elements (it was read as "empty"), as is a
  // hand-set negative extent
  {
    TensorView neg = TensorView::of(x.data(), {2, 3, 4});
    neg.shape[0] = -5;
    CHECK_THROWS_WITH(predictive_entropy(neg, ov), Catch::Contains("TensorView: extent -5 of axis 0 is negative"));
  }
  for (int nd : {9, 100}) {
    TensorView hand = TensorView::of(x.data(), {2, 3, 4});
    hand.ndim = nd;
    CHECK_THROWS_WITH(hand.numel(), Catch::Contains("TensorView: rank " + std::to_string(nd) + " is outside [0, 8]"));
    CHECK_THROWS_WITH(predictive_entropy(hand, ov), Catch::Contains("is outside [0, 8]"));
    std::vector<std::int64_t> picks(1);
    CHECK_THROWS_WITH(top_k(hand, 1, TensorView::of(picks.data(), {1})), Catch::Contains("is outside [0, 8]"));
    // propagation had its own element count (ndim >= 10 then wrote past its layout's arrays)
    std::vector<double> conf(24, 0.9);
    std::vector<std::int64_t> errs(24, 0);
    TensorView pool = TensorView::of(conf.data(), {24});
    pool.ndim = nd;
    CHECK_THROWS_WITH(certify_threshold(TensorView::of(conf.data(), {24}), TensorView::of(errs.data(), {24}), pool, 0.1,
                                        0.1),
                      Catch::Contains("is outside [0, 8]"));
    CertifyOptions certify;
    certify.target_error = 0.1;
    certify.delta = 0.1;
    std::vector<std::uint8_t> accepted(2);
    std::vector<std::int64_t> labels(2), calib_labels(2);
    CHECK_THROWS_WITH(certified_auto_label(hand, TensorView::of(x.data(), {2, 12}), TensorView::of(calib_labels.data(), {2}),
                                           TensorView::of(accepted.data(), {2}), TensorView::of(labels.data(), {2}),
                                           certify),
                      Catch::Contains("is outside [0, 8]"));
  }
  // enum values outside their enums (cast integers) are errors wherever they are taken
  std::vector<double> f = {0, 0, 1, 0, 0, 3, 5, 5};
  std::vector<std::int64_t> idx(4);
  std::vector<double> dist(4);
  CHECK_THROWS_WITH(knn_graph(TensorView::of(f.data(), {4, 2}), 1, TensorView::of(idx.data(), {4, 1}),
                              TensorView::of(dist.data(), {4, 1}), static_cast<DistanceMetric>(2)),
                    Catch::Contains("metric: unknown distance metric id 2"));
  CHECK_THROWS_WITH(spreading_variant_name(static_cast<SpreadingVariant>(9)),
                    Catch::Contains("variant: unknown spreading variant id 9"));
  SpreadingOptions so;
  so.k = 1;
  so.variant = static_cast<SpreadingVariant>(9);
  std::vector<std::int64_t> labels = {0, -1, 1, -1}, out_labels(4);
  std::vector<double> distributions(8);
  CHECK_THROWS_WITH(label_spreading(TensorView::of(f.data(), {4, 2}), TensorView::of(labels.data(), {4}),
                                    TensorView::of(distributions.data(), {4, 2}), TensorView::of(out_labels.data(), {4}), so),
                    Catch::Contains("variant: unknown spreading variant id 9"));
  CHECK_THROWS_WITH(metric_needs_samples(static_cast<Metric>(99)), Catch::Contains("metric: unknown metric id 99"));
  // unlabeled_rows checks its output like every other writer
  std::vector<std::uint8_t> mask = {1, 0, 0, 0};
  std::vector<std::int64_t> rows(4);
  CHECK_THROWS_WITH(unlabeled_rows(TensorView::of(mask.data(), {4}), 4, TensorView::of(rows.data(), {4}, {0})),
                    Catch::Contains("rows: the output view") && Catch::Contains("share memory"));
  CHECK(unlabeled_rows(TensorView::of(mask.data(), {4}), 4, TensorView::of(rows.data(), {4})) == 3);
  CHECK(rows[0] == 1);
  CHECK(rows[2] == 3);
}
