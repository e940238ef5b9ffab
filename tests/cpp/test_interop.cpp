#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "labelwise/uncertainty/metrics.hpp"
#if LABELWISE_TEST_EIGEN
#include "labelwise/interop/eigen.hpp"
#endif
#if LABELWISE_TEST_XTENSOR
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
#endif
