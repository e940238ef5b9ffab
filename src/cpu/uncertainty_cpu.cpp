// CPU backend of the uncertainty metrics: the shared body over a static thread partition.
#include <algorithm>
#include <limits>
#include <vector>

#include "../uncertainty_backend.hpp"
#include "labelwise/core/parallel.hpp"
#include "labelwise/detail/parallel_for.hpp"

namespace labelwise {
namespace detail {
namespace {

template <typename T>
ScoreFailure run(const ScoreJob& job) {
  const T* x = static_cast<const T*>(job.x);
  const std::int64_t items = job.grid.count;
  const std::int64_t per_item = static_cast<std::int64_t>(job.K) * job.C;
  const std::int64_t grain = std::max<std::int64_t>(1, 65536 / std::max<std::int64_t>(per_item, 1));
  std::vector<ScoreFailure> failures(static_cast<std::size_t>(std::max(1, num_threads())));
  parallel_for(items, grain, [&](std::int64_t begin, std::int64_t end, int worker) {
    std::vector<double> buf(4 * static_cast<std::size_t>(job.C));
    std::vector<int> votes(job.C);
    ItemScratch s{buf.data(), buf.data() + job.C, buf.data() + 2 * job.C, buf.data() + 3 * job.C, votes.data()};
    double res[kNumMetrics] = {};
    for (std::int64_t i = begin; i < end; ++i) {
      const std::int64_t off = item_offset(job.grid, job.grid.in_stride, i);
      const int st = score_item<T>(x + off, job.sample_stride, job.class_stride, job.K, job.C, job.input_kind,
                                   job.mask, job.tol, s, res);
      if (st != kItemOk) {
        failures[worker] = {st, i};
        return;
      }
      for (int m = 0; m < kNumMetrics; ++m) {
        if (!(job.mask & (1u << m))) continue;
        const std::int64_t o = item_offset(job.grid, job.out_stride[m], i);
        if (job.out_dtype[m] == DType::Float32)
          static_cast<float*>(job.out[m])[o] = static_cast<float>(res[m]);
        else
          static_cast<double*>(job.out[m])[o] = res[m];
      }
    }
  });
  ScoreFailure worst;
  for (const auto& f : failures)
    if (f.status != 0 && (worst.status == 0 || f.item < worst.item)) worst = f;
  return worst;
}

}  // namespace

ScoreFailure score_cpu(const ScoreJob& job) {
  return job.dtype == DType::Float32 ? run<float>(job) : run<double>(job);
}

}  // namespace detail
}  // namespace labelwise
