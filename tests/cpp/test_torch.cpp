// LibTorch adapter: torch::Tensor in, torch::Tensor out, compared with a formula written in torch ops.
// LibTorch first: Debian's LibTorch pulls in glog, whose CHECK macro (abort on failure) Catch's must override.
#include "labelwise/interop/torch.hpp"

#include <catch2/catch.hpp>

#include "test_seed.hpp"

using namespace labelwise;

TEST_CASE("torch adapter: scores equal a float64 torch formulation, any strides", "[torch]") {
  torch::manual_seed(fresh_seed());
  const auto logits = torch::randn({64, 8, 5}, torch::kFloat64);
  const auto p = torch::softmax(logits, -1);
  const auto mean = p.mean(1);
  const auto H = -(mean * mean.log()).sum(-1);
  const auto EH = -(p * p.log()).sum(-1).mean(1);
  const auto results = torch_interop::score(p, {Metric::PredictiveEntropy, Metric::Bald, Metric::MeanStd});
  CHECK(torch::allclose(results.at(Metric::PredictiveEntropy), H, 1e-10, 1e-12));
  CHECK(torch::allclose(results.at(Metric::Bald), (H - EH).clamp_min(0), 1e-10, 1e-12));
  CHECK(torch::allclose(results.at(Metric::MeanStd), p.std(1, /*unbiased=*/true).mean(-1), 1e-10, 1e-12));

  // A permuted (non-contiguous) [C, N, K] view with named axes gives the same answer without a copy.
  const auto perm = p.permute({2, 0, 1});
  REQUIRE(!perm.is_contiguous());
  ScoreOptions opt;
  opt.sample_axis = 2;
  opt.class_axis = 0;
  CHECK(torch::equal(torch_interop::score(perm, Metric::Bald, opt), results.at(Metric::Bald)));

  // Logits input in float32 keeps float32.
  ScoreOptions lopt;
  lopt.input = InputKind::Logits;
  const auto b32 = torch_interop::score(logits.to(torch::kFloat32), Metric::Bald, lopt);
  CHECK(b32.scalar_type() == torch::kFloat32);
  CHECK(torch::allclose(b32.to(torch::kFloat64), results.at(Metric::Bald), 1e-4, 1e-5));
  // float16 / bfloat16 logits: float32 results equal to the float32 pass over the widened values
  for (const auto half : {torch::kHalf, torch::kBFloat16}) {
    const auto lh = logits.to(half);
    const auto bh = torch_interop::score(lh, Metric::Bald, lopt);
    CHECK(bh.scalar_type() == torch::kFloat32);
    CHECK(torch::equal(bh, torch_interop::score(lh.to(torch::kFloat32), Metric::Bald, lopt)));
  }
}

TEST_CASE("torch adapter: unsupported dtypes are a TypeError-kind Error", "[torch]") {
  const auto x = torch::ones({2, 3, 4}, torch::kInt64);
  try {
    torch_interop::score(x, Metric::Bald);
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::Type);
  }
}

TEST_CASE("torch adapter: a lazily negated tensor is read with its sign", "[torch]") {
  torch::manual_seed(fresh_seed());
  const auto z = torch::complex(torch::randn({16, 4, 5}, torch::kFloat64), torch::randn({16, 4, 5}, torch::kFloat64));
  const auto neg = torch::imag(z.conj());  // is_neg(): the storage holds +imag
  REQUIRE(neg.is_neg());
  ScoreOptions lopt;
  lopt.input = InputKind::Logits;
  const auto expect = torch_interop::score(neg.resolve_neg(), Metric::PredictiveEntropy, lopt);
  CHECK(torch::equal(torch_interop::score(neg, Metric::PredictiveEntropy, lopt), expect));
  const auto p = torch::softmax(-torch::imag(z), -1).mean(1);
  CHECK(torch::allclose(expect, -(p * p.log()).sum(-1), 1e-12, 1e-14));
  CHECK_THROWS_WITH(torch_interop::view(neg), Catch::Contains("lazily negated"));
}
