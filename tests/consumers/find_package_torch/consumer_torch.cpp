// A downstream LibTorch program: scores a torch::Tensor through labelwise::torch and checks the answer.
#include <labelwise/interop/torch.hpp>

#include <cmath>
#include <cstdio>

int main() {
  // Two items, K = 2 samples, C = 2 classes: the samples disagree on item 0 and agree on item 1.
  const auto x = torch::tensor({1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0}, torch::kFloat64).reshape({2, 2, 2});
  const auto out = labelwise::torch_interop::score(x, labelwise::Metric::Bald);
  const double b0 = out[0].item<double>(), b1 = out[1].item<double>();
  const bool ok = std::fabs(b0 - std::log(2.0)) < 1e-12 && b1 == 0.0;
  std::printf("torch consumer: bald = [%g, %g] -> %s\n", b0, b1, ok ? "ok" : "WRONG");
  return ok ? 0 : 1;
}
