#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "labelwise/uncertainty/metrics.hpp"
#if LABELWISE_TEST_EIGEN
#include "labelwise/interop/eigen.hpp"
#endif
#if LABELWISE_TEST_XTENSOR
#include <xtensor/xtensor.hpp>
#include <xtensor/xview.hpp>

#include "labelwise/interop/xtensor.hpp"
#endif

using namespace labelwise;

#if LABELWISE_TEST_EIGEN
TEST_CASE("Eigen adapter: row- and column-major matrices give the same scores", "[interop]") {
  Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> rm(3, 4);
  rm << 0.1, 0.2, 0.3, 0.4, 0.25, 0.25, 0.25, 0.25, 0.97, 0.01, 0.01, 0.01;
  Eigen::MatrixXd cm = rm;  // column-major copy
  const Eigen::VectorXd a = eigen::score(rm, Metric::PredictiveEntropy);
  const Eigen::VectorXd b = eigen::score(cm, Metric::PredictiveEntropy);
  for (int i = 0; i < 3; ++i) {
    double h = 0;
    for (int c = 0; c < 4; ++c) h -= rm(i, c) * std::log(rm(i, c));
    CHECK(a(i) == Approx(h).epsilon(1e-12));
    CHECK(b(i) == a(i));
  }
  // A block (non-unit outer stride) works too.
  const Eigen::VectorXd blk = eigen::score(cm.block(1, 0, 2, 4), Metric::Margin);
  CHECK(blk(0) == Approx(1.0));
  CHECK(blk(1) == Approx(1.0 - 0.96));
  // vector_view: rank 1, with the inner stride of a strided Map or a matrix row, as an output [N]
  Eigen::VectorXd buf = Eigen::VectorXd::Zero(6);
  Eigen::Map<Eigen::VectorXd, 0, Eigen::InnerStride<2>> every_other(buf.data(), 3);
  const TensorView ov = eigen::vector_view(every_other);
  REQUIRE(ov.ndim == 1);
  CHECK(ov.shape[0] == 3);
  CHECK(ov.strides[0] == 2);
  score(eigen::view(rm), {{Metric::PredictiveEntropy, ov}}, [] {
    ScoreOptions o;
    o.sample_axis = std::nullopt;
    o.class_axis = 1;
    return o;
  }());
  for (int i = 0; i < 3; ++i) {
    CHECK(buf(2 * i) == a(i));
    CHECK(buf(2 * i + 1) == 0.0);
  }
  Eigen::MatrixXd cols = Eigen::MatrixXd::Zero(3, 3);  // column-major: a row has stride 3
  const TensorView rv = eigen::vector_view(cols.row(1));
  CHECK(rv.strides[0] == 3);
}
#endif

#if LABELWISE_TEST_XTENSOR
TEST_CASE("xtensor adapter returns [N] scores of a [N, K, C] array", "[interop]") {
  xt::xarray<float> x = xt::xarray<float>::from_shape({2, 2, 2});
  // item 0: samples disagree completely; item 1: samples agree
  x(0, 0, 0) = 1; x(0, 0, 1) = 0; x(0, 1, 0) = 0; x(0, 1, 1) = 1;
  x(1, 0, 0) = 1; x(1, 0, 1) = 0; x(1, 1, 0) = 1; x(1, 1, 1) = 0;
  const xt::xarray<float> b = xtensor::score(x, Metric::Bald);
  REQUIRE(b.shape().size() == 1);
  CHECK(b(0) == Approx(std::log(2.0)));
  CHECK(b(1) == Approx(0.0));
}

TEST_CASE("xtensor adapter takes xtensor containers, column-major arrays and strided views", "[interop]") {
  // [N, K, C] = [3, 2, 4] probabilities, read through each kind of expression; the reference is the
  // same values in a plain row-major xarray.
  xt::xtensor<double, 3> t = xt::xtensor<double, 3>::from_shape({3, 2, 4});
  for (std::size_t i = 0; i < 3; ++i)
    for (std::size_t k = 0; k < 2; ++k) {
      double z = 0;
      for (std::size_t c = 0; c < 4; ++c) z += (t(i, k, c) = 1.0 + static_cast<double>((i * 7 + k * 3 + c * 5) % 11));
      for (std::size_t c = 0; c < 4; ++c) t(i, k, c) /= z;
    }
  const xt::xarray<double> ref_in = t;
  const xt::xarray<double> want = xtensor::score(ref_in, Metric::Bald);
  const xt::xarray<double> from_fixed = xtensor::score(t, Metric::Bald);
  xt::xarray<double, xt::layout_type::column_major> cm = t;
  const xt::xarray<double> from_cm = xtensor::score(cm, Metric::Bald);
  // a strided view (every second item of a 6-item array), passed as a temporary to view()
  xt::xtensor<double, 3> wide = xt::zeros<double>({6, 2, 4});
  xt::view(wide, xt::range(0, 6, 2), xt::all(), xt::all()) = t;
  xt::xarray<double> out = xt::zeros<double>({3});
  labelwise::score(xtensor::view(xt::view(wide, xt::range(0, 6, 2), xt::all(), xt::all())),
                   {{Metric::Bald, xtensor::view(out)}});
  for (std::size_t i = 0; i < 3; ++i) {
    CHECK(from_fixed(i) == want(i));
    CHECK(from_cm(i) == Approx(want(i)).epsilon(1e-14));
    CHECK(out(i) == Approx(want(i)).epsilon(1e-14));
  }
}
#endif
