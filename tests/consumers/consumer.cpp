// A downstream program: scores two items and checks the answer, so a broken link or header fails.
#include <cmath>
#include <cstdio>
#include <vector>

#include <labelwise/labelwise.hpp>

int main() {
  // Two items, K = 2 samples, C = 2 classes: the samples disagree on item 0 and agree on item 1.
  std::vector<double> x = {1, 0, 0, 1, 1, 0, 1, 0};
  std::vector<double> out(2);
  labelwise::bald(labelwise::TensorView::of(x.data(), {2, 2, 2}), labelwise::TensorView::of(out.data(), {2}));
  const bool ok = std::fabs(out[0] - std::log(2.0)) < 1e-12 && out[1] == 0.0;
  std::printf("consumer: bald = [%g, %g] cuda=%d -> %s\n", out[0], out[1], labelwise::built_with_cuda(),
              ok ? "ok" : "WRONG");
  return ok ? 0 : 1;
}
