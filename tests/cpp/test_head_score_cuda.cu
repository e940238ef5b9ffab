// CPU == CUDA for the fused head sample-and-score: samples bit for bit, metrics and mean within 1e-6.
// Tagged [cuda]: CPU-only CI excludes it (catch_discover_tests TEST_SPEC "~[cuda]"); bench/gpu_check.sh
// runs it on a GPU machine.
#include <catch2/catch.hpp>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "labelwise/segmentation/head_score.hpp"
#include "labelwise/uncertainty/metrics.hpp"
#include "cuda_test_util.cuh"
#include "reference.hpp"

using namespace labelwise;
using lw_test::DeviceArray;

namespace {


TensorView on_device(TensorView v, void* ptr) {
  v.data = ptr;
  v.device = Device::cuda(0);
  return v;
}

template <typename T>
void compare(int B, int F, int C, int M, int K, double p, std::vector<std::int64_t> spatial, bool channels_last,
             std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> n01(0.0, 1.0);
  std::int64_t V = 1;
  for (auto s : spatial) V *= s;
  std::vector<T> x(static_cast<std::size_t>(B) * F * V);
  for (T& v : x) v = static_cast<T>(n01(rng));
  std::vector<float> w(static_cast<std::size_t>(M) * C * F), bias(static_cast<std::size_t>(M) * C);
  for (float& v : w) v = static_cast<float>(0.7 * n01(rng));
  for (float& v : bias) v = static_cast<float>(0.7 * n01(rng));
  // features as [B, F, *spatial] (C-order) or stored channels-last and viewed through strides
  std::vector<std::int64_t> shape{B, F};
  shape.insert(shape.end(), spatial.begin(), spatial.end());
  const TensorView xv = TensorView::of(x.data(), shape, ref::feature_strides(F, spatial, channels_last));
  const TensorView wv = TensorView::of(w.data(), {M, C, F}), bv = TensorView::of(bias.data(), {M, C});
  std::vector<std::int64_t> grid{B}, sshape{B, K, C}, mshape{B, C};
  for (auto v : spatial) grid.push_back(v), sshape.push_back(v), mshape.push_back(v);
  const std::size_t nvox = static_cast<std::size_t>(B) * V;

  HeadScoreOptions opt;
  opt.samples = K;
  opt.dropout = p;
  opt.seed = seed * 0x9E3779B97F4A7C15ull;
  opt.index_offset = 3;

  std::vector<float> samples(nvox * K * C);
  head_sample(xv, wv, bv, TensorView::of(samples.data(), sshape), opt);
  const std::vector<Metric> metrics = {Metric::PredictiveEntropy, Metric::ExpectedEntropy, Metric::Bald,
                                       Metric::LeastConfidence,   Metric::Margin,          Metric::Ratio,
                                       Metric::VariationRatio,    Metric::MaxMeanVariationRatio, Metric::MeanStd,
                                       Metric::BalEntAcq};
  std::vector<std::vector<double>> cpu(metrics.size(), std::vector<double>(nvox));
  std::vector<MetricOutput> cpu_out;
  for (std::size_t i = 0; i < metrics.size(); ++i) cpu_out.push_back({metrics[i], TensorView::of(cpu[i].data(), grid)});
  std::vector<float> mean(nvox * C);
  const TensorView mv = TensorView::of(mean.data(), mshape);
  head_score(xv, wv, bv, cpu_out, &mv, opt);

  DeviceArray<T> dx(x);
  DeviceArray<float> dw(w), db(bias), dsamples(samples.size()), dmean(mean.size());
  head_sample(on_device(xv, dx.ptr), on_device(wv, dw.ptr), on_device(bv, db.ptr),
              on_device(TensorView::of(samples.data(), sshape), dsamples.ptr), opt);
  const std::vector<float> gpu_samples = dsamples.host();
  CHECK(std::memcmp(gpu_samples.data(), samples.data(), samples.size() * sizeof(float)) == 0);

  std::vector<DeviceArray<double>*> douts;
  std::vector<MetricOutput> gpu_out;
  for (std::size_t i = 0; i < metrics.size(); ++i) {
    douts.push_back(new DeviceArray<double>(nvox));
    gpu_out.push_back({metrics[i], on_device(TensorView::of(cpu[i].data(), grid), douts.back()->ptr)});
  }
  const TensorView dmv = on_device(mv, dmean.ptr);
  head_score(on_device(xv, dx.ptr), on_device(wv, dw.ptr), on_device(bv, db.ptr), gpu_out, &dmv, opt);
  for (std::size_t i = 0; i < metrics.size(); ++i) {
    const std::vector<double> g = douts[i]->host();
    std::size_t bad = 0, first = 0;
    for (std::size_t j = 0; j < nvox; ++j) {
      const double a = cpu[i][j];
      if (!ref::backends_agree(a, g[j], 1e-6, metrics[i] == Metric::BalEntAcq))
        if (bad++ == 0) first = j;
    }
    INFO(metric_name(metrics[i]) << ": " << bad << " of " << nvox << " voxels differ; first " << first << " cpu "
                                 << cpu[i][first] << " gpu " << g[first]);
    CHECK(bad == 0);
    delete douts[i];
  }
  const std::vector<float> gm = dmean.host();
  float worst = 0.0f;
  for (std::size_t j = 0; j < gm.size(); ++j) worst = std::max(worst, std::abs(gm[j] - mean[j]));
  CHECK(worst <= 1e-6f);
}

}  // namespace

TEST_CASE("head_score / head_sample: CUDA equals CPU (MC dropout and ensembles, 2D and 3D)", "[cuda][head_score]") {
  lw_test::require_device();
  compare<float>(2, 13, 5, 1, 7, 0.4, {17, 23}, false, 1);
  compare<double>(2, 9, 4, 1, 6, 0.25, {5, 6, 7}, true, 2);
  compare<float>(1, 32, 8, 1, 20, 0.5, {9, 10, 11}, false, 3);
  compare<float>(3, 6, 3, 4, 4, 0.0, {12, 13}, true, 4);   // ensemble of 4
  compare<double>(2, 5, 14, 1, 3, 0.0, {300}, false, 5);    // p = 0
  // more voxels than the grid has threads: each thread loops over many voxels, reusing its scratch
  compare<float>(1, 3, 3, 1, 2, 0.3, {300, 1000}, false, 6);
  // every logits form of the kernel: registers of 16 and 32 (C = 16, 17, 32) and the scratch beyond 32
  compare<float>(1, 12, 16, 1, 5, 0.5, {7, 9}, false, 7);
  compare<double>(1, 10, 17, 3, 3, 0.0, {6, 5}, true, 8);  // ensemble of 3
  compare<float>(2, 9, 32, 1, 4, 0.3, {5, 7}, false, 9);
  compare<float>(1, 7, 40, 1, 3, 0.2, {4, 6}, false, 10);
  // NaN features: the same error on the device
  std::vector<float> x(2 * 3 * 4, 1.0f), w(2 * 3, 0.5f), b(2, 0.0f);
  x[13] = NAN;
  DeviceArray<float> dx(x), dw(w), db(b), dout(8);
  HeadScoreOptions opt;
  opt.samples = 2;
  TensorView xv = on_device(TensorView::of(x.data(), {2, 3, 4}), dx.ptr);
  TensorView wv = on_device(TensorView::of(w.data(), {1, 2, 3}), dw.ptr);
  TensorView bv = on_device(TensorView::of(b.data(), {1, 2}), db.ptr);
  TensorView ov = on_device(TensorView::of(x.data(), {2, 4}), dout.ptr);
  CHECK_THROWS_WITH(head_score(xv, wv, bv, {{Metric::Bald, ov}}, nullptr, opt),
                    Catch::Contains("features: item 1, voxel [1] contains NaN or Inf"));
}
