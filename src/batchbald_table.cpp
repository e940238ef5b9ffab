// Greedy BatchBALD's joint-configuration table (src/batchbald_table.hpp), built on the host for the CPU
// and the CUDA backends alike.
#include "batchbald_table.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include "labelwise/core/rng.hpp"
#include "labelwise/detail/parallel_for.hpp"

namespace labelwise {
namespace detail {
namespace {

/// Ω, ln Ω and L from the rows' weights and λ.
void finish(JointTable& t, int K) {
  t.omega.assign(t.rows, 0.0);
  t.log_omega.assign(t.rows, 0.0);
  t.L.assign(K, 0.0);
  for (std::int64_t r = 0; r < t.rows; ++r) {
    double s = 0.0;
    for (int k = 0; k < K; ++k) s += t.a[r * K + k];
    t.omega[r] = s;
    t.log_omega[r] = s > 0.0 ? std::log(s) : 0.0;
  }
  if (t.lambda.empty()) t.lambda = t.log_omega;
  for (std::int64_t r = 0; r < t.rows; ++r)
    for (int k = 0; k < K; ++k) t.L[k] -= t.a[r * K + k] * t.lambda[r];
}

bool exact_fits(int C, int m, std::int64_t num_samples) {
  std::int64_t v = 1;
  for (int i = 0; i < m; ++i) {
    if (v > num_samples / C) return false;
    v *= C;
  }
  return v <= num_samples;
}

}  // namespace

JointTableBuilder::JointTableBuilder(int k, int c, std::int64_t num_samples, std::uint64_t seed)
    : k_(k), c_(c), num_samples_(num_samples), seed_(seed) {
  table_.m = 0;
  table_.rows = 1;
  table_.a.assign(k_, 1.0 / k_);
  table_.lambda.assign(1, 0.0);
  finish(table_, k_);
}

void JointTableBuilder::add(const double* p_pick) {
  const std::size_t kc = static_cast<std::size_t>(k_) * c_;
  chosen_p_.insert(chosen_p_.end(), p_pick, p_pick + kc);
  for (std::size_t j = 0; j < kc; ++j)
    chosen_logp_.push_back(p_pick[j] > 0.0 ? std::log(p_pick[j]) : -std::numeric_limits<double>::infinity());
  if (exact_ && exact_fits(c_, table_.m + 1, num_samples_)) {
    extend_exact(p_pick);
  } else {
    exact_ = false;
    resample();
  }
}

void JointTableBuilder::extend_exact(const double* pi) {
  const int K = k_, C = c_;
  const JointTable& tb = table_;
  const std::int64_t R = tb.rows;
  const int m = tb.m;
  JointTable nt;
  nt.m = m + 1;
  nt.rows = R * C;
  nt.labels.resize(nt.rows * nt.m);
  nt.a.resize(nt.rows * K);
  for (std::int64_t r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) {
      const std::int64_t nr = r * C + c;
      std::copy(tb.labels.begin() + r * m, tb.labels.begin() + (r + 1) * m, nt.labels.begin() + nr * nt.m);
      nt.labels[nr * nt.m + m] = c;
      for (int k = 0; k < K; ++k) nt.a[nr * K + k] = tb.a[r * K + k] * pi[k * C + c];
    }
  finish(nt, K);  // λ = ln Ω
  table_ = std::move(nt);
}

void JointTableBuilder::resample() {
  const int K = k_, C = c_;
  const int m = static_cast<int>(chosen_p_.size() / (static_cast<std::size_t>(K) * C));
  const std::int64_t S = std::max<std::int64_t>(1, num_samples_ / K);
  const std::int64_t R = S * K;
  const double* p = chosen_p_.data();
  const std::vector<double>& logp = chosen_logp_;
  std::vector<std::int32_t> lab(R * m);
  std::vector<double> pi(R * K), lam(R);
  parallel_for(R, 256, [&](std::int64_t begin, std::int64_t end, int) {
    std::vector<double> lp(K);
    for (std::int64_t r = begin; r < end; ++r) {
      const int k = static_cast<int>(r / S);
      for (int i = 0; i < m; ++i) {
        const rng::Philox4x32 ctr{{static_cast<std::uint32_t>(r), static_cast<std::uint32_t>(i),
                                   rng::kStreamBatchBald, static_cast<std::uint32_t>(m)}};
        const rng::Philox4x32 out =
            rng::philox4x32_10(ctr, static_cast<std::uint32_t>(seed_), static_cast<std::uint32_t>(seed_ >> 32));
        const double u = rng::uniform_open(static_cast<std::uint64_t>(out.v[0]) |
                                           (static_cast<std::uint64_t>(out.v[1]) << 32));
        const double* pk = p + (static_cast<std::size_t>(i) * K + k) * C;
        double tot = 0.0;
        for (int c = 0; c < C; ++c) tot += pk[c];
        const double target = u * tot;
        double cum = 0.0;
        int y = -1, last_pos = 0;
        for (int c = 0; c < C; ++c) {
          if (pk[c] > 0.0) last_pos = c;
          cum += pk[c];
          if (y < 0 && target < cum && pk[c] > 0.0) y = c;
        }
        lab[r * m + i] = y < 0 ? last_pos : y;
      }
      double mx = -std::numeric_limits<double>::infinity();
      for (int kk = 0; kk < K; ++kk) {
        double s = 0.0;
        for (int i = 0; i < m; ++i) s += logp[(static_cast<std::size_t>(i) * K + kk) * C + lab[r * m + i]];
        lp[kk] = s;
        mx = std::max(mx, s);
      }
      double w = 0.0;
      for (int kk = 0; kk < K; ++kk) w += lp[kk] = std::exp(lp[kk] - mx);
      for (int kk = 0; kk < K; ++kk) pi[r * K + kk] = lp[kk] / w;
      lam[r] = mx + std::log(w / static_cast<double>(K));
    }
  });
  std::vector<std::int64_t> order(R);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](std::int64_t x, std::int64_t y) {
    const std::int32_t* a = lab.data() + x * m;
    const std::int32_t* b = lab.data() + y * m;
    for (int i = 0; i < m; ++i)
      if (a[i] != b[i]) return a[i] < b[i];
    return x < y;
  });
  std::vector<std::int64_t> start;
  for (std::int64_t j = 0; j < R; ++j)
    if (j == 0 || std::memcmp(lab.data() + order[j] * m, lab.data() + order[j - 1] * m, sizeof(std::int32_t) * m) != 0)
      start.push_back(j);
  start.push_back(R);
  JointTable nt;
  nt.m = m;
  nt.rows = static_cast<std::int64_t>(start.size()) - 1;
  nt.labels.resize(nt.rows * m);
  nt.a.resize(nt.rows * K);
  nt.lambda.resize(nt.rows);
  for (std::int64_t g = 0; g < nt.rows; ++g) {
    const std::int64_t r0 = order[start[g]];
    const double weight = static_cast<double>(start[g + 1] - start[g]) / static_cast<double>(R);
    std::copy(lab.begin() + r0 * m, lab.begin() + (r0 + 1) * m, nt.labels.begin() + g * m);
    for (int k = 0; k < K; ++k) nt.a[g * K + k] = weight * pi[r0 * K + k];
    nt.lambda[g] = lam[r0];
  }
  finish(nt, K);
  table_ = std::move(nt);
}

}  // namespace detail
}  // namespace labelwise
