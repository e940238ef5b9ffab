#include <catch2/catch.hpp>

#include <cmath>

#include "labelwise/detail/special_functions.hpp"

using labelwise::detail::digamma;

TEST_CASE("digamma matches closed forms", "[special]") {
  const double euler = 0.57721566490153286061;
  CHECK(digamma(1.0) == Approx(-euler).epsilon(1e-14));
  CHECK(digamma(0.5) == Approx(-euler - 2 * std::log(2.0)).epsilon(1e-14));
  // ψ(n + 1) = H_n - γ
  double harmonic = 0;
  for (int n = 1; n <= 40; ++n) {
    harmonic += 1.0 / n;
    CHECK(digamma(n + 1.0) == Approx(harmonic - euler).epsilon(1e-13));
  }
  // ψ(1/4) = -γ - π/2 - 3 ln 2 ; reflection: ψ(-1/2) = ψ(3/2) = 2 - γ - 2 ln 2 (since ψ(1-x) - ψ(x) = π cot πx)
  CHECK(digamma(0.25) == Approx(-euler - M_PI / 2 - 3 * std::log(2.0)).epsilon(1e-13));
  CHECK(digamma(-0.5) == Approx(2 - euler - 2 * std::log(2.0)).epsilon(1e-13));
  // Large argument: ψ(x) ~ ln x - 1/(2x)
  CHECK(digamma(1e8) == Approx(std::log(1e8) - 0.5e-8).epsilon(1e-15));
  CHECK(std::isnan(digamma(0.0)));
  CHECK(std::isnan(digamma(-3.0)));
  // ψ(x + 1) = ψ(x) + 1/x on a grid, including negative non-integers
  for (double x = -4.75; x < 30; x += 0.37) CHECK(digamma(x + 1) == Approx(digamma(x) + 1 / x).margin(1e-11));
}
