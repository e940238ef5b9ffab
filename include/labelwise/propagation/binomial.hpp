// labelwise — exact binomial tools behind certified auto-labelling (float64, host).
//
// Contract (every function): plain doubles / integers in, one double out; arguments outside the
// stated domain throw labelwise::Error(Value) naming the argument. Accuracy: typically 1e-14
// relative, at worst about 2e-16 · (a + b) (tested against scipy.special.betainc / betaincinv), and
// about 2.5e-13 relative for a parameter near 1e-3 with x near 1 (against mpmath); hence a + b (and
// n) at most 2^50 = 1125899906842624: from about 2^52 on no digit is right.
// Method: include/labelwise/detail/incomplete_beta.hpp.
#pragma once

#include <cstdint>

namespace labelwise {

/// I_x(a, b): the regularized incomplete beta function, the CDF of Beta(a, b) at x.
///   x in [0, 1]; a > 0, b > 0, a + b <= 2^50.
double regularized_incomplete_beta(double x, double a, double b);

/// The p-quantile of Beta(a, b): the x with I_x(a, b) = p.  p in [0, 1]; a > 0, b > 0, a + b <= 2^50.
double beta_quantile(double p, double a, double b);

/// P(Binomial(n, theta) <= k).  0 <= n <= 2^50, theta in [0, 1]; any k (k < 0 gives 0, k >= n gives 1).
double binomial_cdf(std::int64_t k, std::int64_t n, double theta);

/// Clopper–Pearson (exact) one-sided upper confidence bound on a binomial proportion at level
/// 1 - delta after `errors` failures in n trials: the (1 - delta) quantile of Beta(errors + 1, n - errors),
/// 1 when errors = n or n = 0. For every true proportion theta, P(bound < theta) <= delta.
///   0 <= errors <= n <= 2^50; delta in (0, 1).
double clopper_pearson_upper(std::int64_t errors, std::int64_t n, double delta);

/// The smallest n whose Clopper–Pearson bound after 0 errors is <= target_error at level 1 - delta,
/// ceil(ln delta / ln(1 - target_error)): no calibration set smaller than this can certify anything.
///   target_error, delta in (0, 1); Error(Value) when the answer exceeds 2^50.
std::int64_t min_certifiable_count(double target_error, double delta);

}  // namespace labelwise
