// Internal: greedy BatchBALD's table of joint configurations of the items chosen so far, shared by the
// CPU backend (src/cpu/batchbald_cpu.cpp) and the CUDA backend (src/cuda/batchbald_cuda.cu). Both build
// it on the host the same way, so the sampled configurations — and with them the picks — are the same
// on both devices for a seed. Definitions: docs/acquisition.md, "BatchBALD".
//
// After m picks the table has rows y = (y_1..y_m), sorted lexicographically, each with weights
// A[y, k] >= 0 over the K samples, Ω_y = Σ_k A[y, k] and λ_y:
//   exact regime (C^m <= num_samples): every configuration, A[y, k] = (1/K) Π_i p[i, k, y_i], λ_y = ln Ω_y;
//   sampled regime: R = K · max(1, num_samples / K) configurations drawn from p(y | ω_k) (the same count
//     for every k, as the reference), duplicates merged; A[y, k] = (count_y / R) · π_{y,k} with
//     π_{y,k} = P(y | ω_k) / Σ_k' P(y | ω_k') and λ_y = ln((1/K) Σ_k P(y | ω_k)).
// A candidate n's score is then Σ_k s[n, k] L_k + T(n) − Σ_{i chosen} CE_i − CE_n with
//   s[n, k] = Σ_c p[n, k, c], L_k = −Σ_y A[y, k] λ_y and T(n) = −Σ_y Σ_c Q[y, c] ln(Q[y, c] / Ω_y),
//   Q[y, c] = Σ_k A[y, k] p[n, k, c].
#pragma once

#include <cstdint>
#include <vector>

namespace labelwise {
namespace detail {

struct JointTable {
  int m = 0;                         ///< items chosen so far
  std::int64_t rows = 0;
  std::vector<std::int32_t> labels;  ///< rows × m, lexicographic
  std::vector<double> a;             ///< rows × K
  std::vector<double> omega;         ///< rows: Σ_k A[y, k]
  std::vector<double> log_omega;     ///< rows: ln Ω_y (0 where Ω_y = 0)
  std::vector<double> lambda;        ///< rows
  std::vector<double> L;             ///< K: −Σ_y A[y, k] λ_y
};

/// The table of the chosen items, updated pick by pick: exact while C^m fits in num_samples, then
/// resampled from scratch at every step with Philox(seed) (the reference's rule).
class JointTableBuilder {
 public:
  JointTableBuilder(int k, int c, std::int64_t num_samples, std::uint64_t seed);
  const JointTable& table() const { return table_; }
  /// Adds a pick; p_pick: its dense probabilities [K][C] (float64, host memory).
  void add(const double* p_pick);

 private:
  void extend_exact(const double* p_pick);
  void resample();
  int k_, c_;
  std::int64_t num_samples_;
  std::uint64_t seed_;
  bool exact_ = true;
  std::vector<double> chosen_p_;     // m × K × C: the picks' probabilities, in the order chosen
  std::vector<double> chosen_logp_;  // their logarithms (-inf for 0), for the sampled configurations
  JointTable table_;
};

}  // namespace detail
}  // namespace labelwise
