// LibTorch segmentation heads (labelwise/segmentation/heads.hpp): forward semantics, MC samples against
// a float64 reference written from docs/segmentation.md, score == labelwise score of sample, the
// evidential closed form against Monte-Carlo draws, weights files, errors.
// LibTorch first: Debian's LibTorch pulls in glog, whose CHECK macro Catch's must override.
#include "labelwise/core/rng.hpp"
#include "labelwise/segmentation/heads.hpp"

#include <catch2/catch.hpp>
#ifdef LABELWISE_TORCH_CUDA
#include <c10/cuda/CUDAGuard.h>
#endif

#include "reference.hpp"
#include "test_seed.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <set>
#include <random>
#include <string>
#include <unistd.h>

using namespace labelwise;

namespace {


std::string temp_path(const std::string& name) {
  return std::string(std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp") + "/labelwise_heads_" +
         std::to_string(::getpid()) + "_" + name;
}

template <typename F>
void require_error(F&& f, const std::string& fragment, ErrorKind kind = ErrorKind::Value) {
  try {
    f();
    FAIL("no error (expected one mentioning '" << fragment << "')");
  } catch (const Error& e) {
    INFO(e.what());
    CHECK(std::string(e.what()).find(fragment) != std::string::npos);
    CHECK(e.kind() == kind);
  }
}

/// The MC-dropout probabilities [B, K, C, V] of docs/segmentation.md, written plainly: Philox masks,
/// float64 logits (bias first, f ascending), float64 softmax rounded to float32.
at::Tensor reference_samples(const at::Tensor& x /*[B,F,V] float64*/, const at::Tensor& w /*[C,F] f64*/,
                             const at::Tensor& bias /*[C] f64*/, double p, std::int64_t K, std::uint64_t seed) {
  const auto B = x.size(0), F = x.size(1), V = x.size(2), C = w.size(0);
  auto xa = x.accessor<double, 3>();
  auto wa = w.accessor<double, 2>();
  auto ba = bias.accessor<double, 1>();
  const std::uint64_t thr = static_cast<std::uint64_t>(std::ceil(p * 4294967296.0));
  const double scale = 1.0 / (1.0 - p);
  at::Tensor out = at::empty({B, K, C, V}, at::kFloat);
  auto oa = out.accessor<float, 4>();
  std::vector<double> z(C);
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t k = 0; k < K; ++k)
      for (std::int64_t v = 0; v < V; ++v) {
        for (std::int64_t c = 0; c < C; ++c) z[c] = ba[c];
        for (std::int64_t f = 0; f < F; ++f) {
          const rng::Philox4x32 ctr{{static_cast<std::uint32_t>(v), static_cast<std::uint32_t>(f / 4),
                                     static_cast<std::uint32_t>(rng::kStreamDropout << 16 | k),
                                     static_cast<std::uint32_t>(b)}};
          const auto words = rng::philox4x32_10(ctr, static_cast<std::uint32_t>(seed),
                                                static_cast<std::uint32_t>(seed >> 32));
          const bool keep = words.v[f % 4] >= thr;
          const double d = keep ? xa[b][f][v] * scale : 0.0;
          for (std::int64_t c = 0; c < C; ++c) z[c] += wa[c][f] * d;
        }
        double mx = z[0];
        for (auto zc : z) mx = std::max(mx, zc);
        double s = 0;
        for (auto& zc : z) s += (zc = std::exp(zc - mx));
        for (std::int64_t c = 0; c < C; ++c) oa[b][k][c][v] = static_cast<float>(z[c] / s);
      }
  return out;
}

std::vector<std::string> keys(const NamedTensors& t) {
  std::vector<std::string> k;
  for (const auto& kv : t) k.push_back(kv.first);
  return k;
}

}  // namespace

TEST_CASE("heads: parameter names and shapes are Python's", "[torch][heads]") {
  MCDropoutHead mc(6, 3, 0.3, 2);
  CHECK((keys(head_state(*mc)) == std::vector<std::string>{"conv.weight", "conv.bias"}));
  CHECK(mc->weight().sizes() == at::IntArrayRef({3, 6, 1, 1}));
  EvidentialHead ev(6, 3, 3);
  CHECK(ev->weight().sizes() == at::IntArrayRef({3, 6, 1, 1, 1}));
  EnsembleHead en(6, 3, 3, 2);
  CHECK((keys(head_state(*en)) == std::vector<std::string>{"members.0.weight", "members.0.bias", "members.1.weight",
                                                           "members.1.bias", "members.2.weight", "members.2.bias"}));
}

TEST_CASE("heads: forward shapes and train / eval semantics", "[torch][heads]") {
  const std::uint64_t seed = fresh_seed();
  torch::manual_seed(seed);
  INFO("seed " << seed);
  for (int dims : {2, 3}) {
    const auto x = dims == 2 ? torch::randn({2, 5, 7, 6}) : torch::randn({2, 5, 3, 4, 6});
    auto spatial_of = [&](std::vector<std::int64_t> lead) {
      for (std::int64_t d = 2; d < x.dim(); ++d) lead.push_back(x.size(d));
      return lead;
    };
    MCDropoutHead mc(5, 4, 0.5, dims);
    const auto plain = heads_detail::conv(x, mc->weight(), mc->bias(), dims);
    mc->eval();
    CHECK(mc->forward(x).sizes() == at::IntArrayRef(spatial_of({2, 4})));
    CHECK(torch::equal(mc->forward(x), plain));  // eval: no dropout
    mc->train();
    torch::manual_seed(seed + 1);
    const auto y = mc->forward(x);
    torch::manual_seed(seed + 1);
    const auto dropped = at::dropout(x, 0.5, true);  // torch's dropout: same RNG draws
    CHECK(torch::allclose(y, heads_detail::conv(dropped, mc->weight(), mc->bias(), dims), 1e-6, 1e-6));
    CHECK(!torch::allclose(y, plain, 1e-3, 1e-3));

    EnsembleHead en(5, 4, 3, dims);
    const auto zm = en->forward_members(x);
    CHECK(zm.sizes() == at::IntArrayRef(spatial_of({2, 3, 4})));
    en->eval();
    const auto mean_prob = torch::softmax(zm.to(torch::kDouble), 2).mean(1);
    CHECK(torch::allclose(torch::softmax(en->forward(x).to(torch::kDouble), 1), mean_prob, 1e-5, 1e-6));
    CHECK(torch::allclose(en->forward(x).exp().sum(1), torch::ones_like(en->forward(x).select(1, 0)), 1e-5, 1e-5));
    en->train();
    std::set<std::int64_t> drawn;
    for (int t = 0; t < 40; ++t) {
      const auto z = en->forward(x);
      for (std::int64_t m = 0; m < 3; ++m)
        if (torch::equal(z, zm.select(1, m))) drawn.insert(m);
    }
    CHECK(drawn.size() == 3);  // one member per pass, uniformly: all three within 40 passes (1 - 3·(2/3)^40)

    EvidentialHead ev(5, 4, dims);
    CHECK(torch::equal(ev->forward(x), heads_detail::conv(x, ev->weight(), ev->bias(), dims)));
    const auto alpha = ev->concentrations(x);
    CHECK(torch::allclose(alpha, torch::softplus(ev->forward(x)) + 1));
    CHECK(alpha.min().item<float>() >= 1.0f);
  }
}

TEST_CASE("heads: MC-dropout samples follow the documented masks and arithmetic", "[torch][heads]") {
  const std::uint64_t seed = fresh_seed();
  torch::manual_seed(seed);
  INFO("seed " << seed);
  for (double p : {0.0, 0.3, 0.75}) {
    INFO("p " << p);
    MCDropoutHead mc(7, 4, p, 2);
    const auto x = torch::randn({2, 7, 5, 3});
    const std::int64_t K = 6;
    const std::uint64_t mc_seed = seed * 2654435761u + 99;
    const auto s = mc->sample(x, K, mc_seed);
    REQUIRE(s.sizes() == at::IntArrayRef({2, K, 4, 5, 3}));
    REQUIRE(s.scalar_type() == torch::kFloat);
    const auto ref = reference_samples(x.reshape({2, 7, 15}).to(torch::kDouble),
                                       mc->weight().detach().reshape({4, 7}).to(torch::kDouble),
                                       mc->bias().detach().to(torch::kDouble), p, K, mc_seed);
    const auto diff = (s.reshape({2, K, 4, 15}) - ref).abs().max().item<float>();
    CHECK(diff <= 2e-7f);
    // Deterministic, independent of the module's mode and of torch's RNG; another seed, other masks.
    mc->eval();
    torch::manual_seed(1);
    CHECK(torch::equal(mc->sample(x, K, mc_seed), s));
    if (p > 0) CHECK(!torch::equal(mc->sample(x, K, mc_seed + 1), s));
    // A shard with index_offset draws the masks of the whole batch's items.
    CHECK(torch::equal(mc->sample(x.slice(0, 1, 2), K, mc_seed, /*index_offset=*/1), s.slice(0, 1, 2)));
  }
}

TEST_CASE("heads: score equals labelwise::score of sample, mean equals the samples' mean", "[torch][heads]") {
  const std::uint64_t seed = fresh_seed();
  torch::manual_seed(seed);
  INFO("seed " << seed);
  const std::vector<Metric> metrics{Metric::PredictiveEntropy, Metric::ExpectedEntropy, Metric::Bald,
                                    Metric::Margin,            Metric::VariationRatio,  Metric::MeanStd,
                                    Metric::BalEntAcq};
  for (int dims : {2, 3}) {
    const auto x = dims == 2 ? torch::randn({3, 8, 9, 7}) : torch::randn({2, 8, 3, 5, 4});
    MCDropoutHead mc(8, 5, 0.4, dims);
    EnsembleHead en(8, 5, 4, dims);
    at::Tensor mean_mc, mean_en;
    const auto a = mc->score(x, 12, metrics, 7, &mean_mc);
    const auto b = en->score(x, std::nullopt, metrics, 0, &mean_en);
    const auto sa = mc->sample(x, 12, 7);
    const auto sb = en->sample(x);
    REQUIRE(sb.size(1) == 4);
    const auto ra = torch_interop::score(sa, metrics);
    const auto rb = torch_interop::score(sb, metrics);
    for (Metric m : metrics) {
      INFO(metric_name(m) << " dims " << dims);
      REQUIRE(a.at(m).sizes() == ra.at(m).sizes());
      // The same float32 probabilities; the fused kernel evaluates the metrics per voxel while
      // labelwise::score takes its block path (other summation orders, vector logs per instruction
      // set), so entropy-based maps differ by a few float32 ulps (up to ~6e-7 seen; 2e-6 allowed).
      const auto rel = [](const at::Tensor& x, const at::Tensor& y) {
        return ((x.to(torch::kDouble) - y.to(torch::kDouble)).abs() / (1 + y.to(torch::kDouble).abs())).max().item<double>();
      };
      const double da = rel(a.at(m), ra.at(m)), db = rel(b.at(m), rb.at(m));
      UNSCOPED_INFO("max relative difference " << da << " (MC dropout), " << db << " (ensemble)");
      CHECK(da <= 2e-6);
      CHECK(db <= 2e-6);
      CHECK(a.at(m).scalar_type() == torch::kFloat);
    }
    CHECK(torch::allclose(mean_mc, sa.to(torch::kDouble).mean(1).to(torch::kFloat), 1e-6, 1e-7));
    CHECK(torch::allclose(mean_en, sb.to(torch::kDouble).mean(1).to(torch::kFloat), 1e-6, 1e-7));
    // The ensemble's samples are the members' softmax, its eval forward their log mean.
    en->eval();
    CHECK(torch::allclose(sb, torch::softmax(en->forward_members(x).to(torch::kDouble), 2).to(torch::kFloat), 1e-6,
                          1e-7));
    CHECK(torch::allclose(mean_en, torch::softmax(en->forward(x), 1), 1e-5, 1e-6));
  }
}

TEST_CASE("heads: float16 / bfloat16 heads score and sample like their weights widened to float64",
          "[torch][heads]") {
  torch::manual_seed(fresh_seed());
  const auto x = torch::randn({2, 6, 5, 4});
  for (auto dt : {torch::kHalf, torch::kBFloat16}) {
    MCDropoutHead half(6, 3, 0.3);
    half->to(dt);
    MCDropoutHead wide(6, 3, 0.3);
    {
      torch::NoGradGuard no_grad;
      wide->to(torch::kDouble);
      wide->weight().copy_(half->weight());
      wide->bias().copy_(half->bias());
    }
    CHECK(torch::equal(half->sample(x.to(dt), 4, 11), wide->sample(x.to(dt), 4, 11)));
    const auto a = half->score(x, 4, {Metric::Bald}, 11).at(Metric::Bald);
    const auto b = wide->score(x, 4, {Metric::Bald}, 11).at(Metric::Bald);
    CHECK(torch::equal(a, b));
  }
}

TEST_CASE("heads: evidential closed form against Dirichlet draws", "[torch][heads]") {
  const std::uint64_t seed = fresh_seed();
  torch::manual_seed(seed);
  INFO("seed " << seed);
  EvidentialHead ev(4, 3, 2);
  const auto x = torch::randn({1, 4, 2, 3}) * 2;
  const auto u = ev->uncertainty(x);
  const auto all = ev->score(x, std::nullopt,
                             {Metric::PredictiveEntropy, Metric::ExpectedEntropy, Metric::Bald, Metric::MeanStd,
                              Metric::BalEntAcq, Metric::LeastConfidence, Metric::Margin, Metric::Ratio});
  const auto alpha = ev->concentrations(x).to(torch::kDouble);  // [1, 3, 2, 3]
  const auto S = alpha.sum(1);
  CHECK(torch::allclose(u.vacuity.to(torch::kDouble), 3.0 / S, 1e-6, 1e-7));
  CHECK(torch::allclose(u.probs.to(torch::kDouble), alpha / S.unsqueeze(1), 1e-6, 1e-7));
  CHECK(torch::equal(u.bald, all.at(Metric::Bald)));
  CHECK(torch::allclose(all.at(Metric::Bald), (u.predictive_entropy - u.expected_entropy).clamp_min(0), 1e-6, 1e-6));
  // Monte Carlo: N Dirichlet draws per voxel (normalised Gammas), scored by labelwise::score as samples.
  const std::int64_t N = 100000;
  const auto a = alpha.permute({0, 2, 3, 1}).reshape({6, 1, 3}).expand({6, N, 3}).contiguous();
  const auto g = at::_standard_gamma(a);
  const auto draws = g / g.sum(2, true);  // [6, N, 3]
  const auto mc = torch_interop::score(draws, {Metric::PredictiveEntropy, Metric::ExpectedEntropy, Metric::Bald,
                                               Metric::MeanStd, Metric::BalEntAcq});
  auto flat = [](const at::Tensor& t) { return t.reshape({6}).to(torch::kDouble); };
  // expected entropy: within 5 standard errors of the per-draw entropies
  const auto h = -(draws * draws.log()).sum(2);
  const auto se = h.std(1) / std::sqrt(double(N));
  CHECK(((flat(all.at(Metric::ExpectedEntropy)) - h.mean(1)).abs() <= 5 * se + 1e-6).all().item<bool>());
  // predictive entropy: exactly H(alpha / S); the draws' estimate of it within 6 of its standard errors
  // (to first order the mean of -sum_c (ln pbar_c + 1) p_c over the draws) plus its O(C / N) bias
  const auto pbar = (alpha / S.unsqueeze(1)).permute({0, 2, 3, 1}).reshape({6, 3});
  const auto h_exact = -(pbar * pbar.log()).sum(1);
  CHECK(torch::allclose(flat(all.at(Metric::PredictiveEntropy)), h_exact, 1e-6, 1e-6));
  const auto lin = -((pbar.log() + 1).unsqueeze(1) * draws).sum(2);  // [6, N]
  const auto se_h = lin.std(1) / std::sqrt(double(N));
  CHECK(((mc.at(Metric::PredictiveEntropy).to(torch::kDouble) - h_exact).abs() <= 6 * se_h + 1e-4).all().item<bool>());
  CHECK(torch::allclose(flat(all.at(Metric::Bald)), mc.at(Metric::Bald), 0, 5e-3));
  CHECK(torch::allclose(flat(all.at(Metric::MeanStd)), mc.at(Metric::MeanStd), 0, 2e-3));
  // BalEntAcq: the sample metric's moment-matched Betas converge to the exact marginals.
  CHECK(torch::allclose(flat(all.at(Metric::BalEntAcq)), mc.at(Metric::BalEntAcq), 2e-2, 1e-2));
  // top-2 metrics on alpha / S
  const auto top = std::get<0>(torch::topk(alpha / S.unsqueeze(1), 2, 1));
  CHECK(torch::allclose(all.at(Metric::Margin).to(torch::kDouble), 1 - (top.select(1, 0) - top.select(1, 1)), 1e-6));
  CHECK(torch::allclose(all.at(Metric::Ratio).to(torch::kDouble), top.select(1, 1) / top.select(1, 0), 1e-6));
  // evidential_loss: psi(S) - psi(alpha_y), averaged
  const auto target = torch::randint(3, {1, 2, 3}, torch::kLong);
  const auto logits = ev->forward(x);
  const auto al = torch::softplus(logits.to(torch::kDouble)) + 1;
  const auto want = (torch::digamma(al.sum(1)) - torch::digamma(al.gather(1, target.unsqueeze(1)).squeeze(1))).mean();
  CHECK(std::abs(evidential_loss(logits, target).item<double>() - want.item<double>()) < 1e-5);
  // ignore_index: those voxels leave both means; other labels outside [0, C) are named
  auto partial = target.clone();
  partial[0][1][2] = 255;
  partial[0][0][0] = 255;
  const auto keep = partial != 255;
  const auto per = torch::digamma(al.sum(1)) - torch::digamma(al.gather(1, target.unsqueeze(1)).squeeze(1));
  const double want_partial = per.masked_select(keep).mean().item<double>();
  CHECK(std::abs(evidential_loss(logits, partial, 0.0, 255).item<double>() - want_partial) < 1e-5);
  require_error([&] { evidential_loss(logits, partial); }, "target: voxel [0, 0, 0] has label 255, outside [0, 3)");
  // the Python function's rules: float logits, a finite kl_weight >= 0, no voxel at all is 0
  require_error([&] { evidential_loss(logits.to(torch::kLong), target); }, "logits: expected a floating-point tensor",
                ErrorKind::Type);
  require_error([&] { evidential_loss(logits, target, -0.5); }, "kl_weight: expected a finite value >= 0");
  require_error([&] { evidential_loss(logits, target, std::nan("")); }, "kl_weight: expected a finite value >= 0");
  const auto empty = evidential_loss(torch::zeros({0, 3, 2, 2}), torch::zeros({0, 2, 2}, torch::kLong), 0.1);
  CHECK(empty.dim() == 0);
  CHECK(empty.item<double>() == 0.0);
  CHECK(evidential_loss(logits, torch::full({1, 2, 3}, 255, torch::kLong), 0.1, 255).item<double>() == 0.0);
  // compared as integers: -100 is not the uint8 label 156
  auto u8 = torch::zeros({1, 2, 3}, torch::kUInt8);
  u8[0][1][1] = 156;
  require_error([&] { evidential_loss(logits, u8, 0.0, -100); }, "target: voxel [0, 1, 1] has label 156");
}

TEST_CASE("heads: the evidential closed form in chunks equals one pass", "[torch][heads]") {
  const std::uint64_t seed = fresh_seed();
  torch::manual_seed(seed);
  INFO("seed " << seed);
  EvidentialHead ev(5, 4, 3);
  const auto x = torch::randn({2, 5, 3, 4, 7});
  const std::vector<Metric> ms{Metric::PredictiveEntropy, Metric::Bald, Metric::BalEntAcq, Metric::Margin, Metric::MeanStd};
  at::Tensor mean_whole, mean_parts;
  const auto whole = ev->score(x, std::nullopt, ms, 0, &mean_whole);
  const auto u_whole = ev->uncertainty(x);
  ev->chunk_values = 2 * 5 * 3 * 4 * 2;  // two indices of the last axis per chunk (the last chunk: one)
  const auto parts = ev->score(x, std::nullopt, ms, 0, &mean_parts);
  const auto u_parts = ev->uncertainty(x);
  for (Metric m : ms) CHECK(torch::allclose(parts.at(m), whole.at(m), 1e-6, 1e-7));
  CHECK(torch::allclose(mean_parts, mean_whole, 1e-6, 1e-7));
  CHECK(torch::allclose(u_parts.probs, u_whole.probs, 1e-6, 1e-7));
  CHECK(torch::allclose(u_parts.vacuity, u_whole.vacuity, 1e-6, 1e-7));
  CHECK(torch::allclose(u_parts.bald, u_whole.bald, 1e-6, 1e-7));
  auto big = x.to(torch::kDouble);
  big.index_put_({1, torch::indexing::Slice(), 2, 3, 5}, 1e308);  // in the third chunk: 5 x 1e308 overflows
  {
    torch::NoGradGuard no_grad;
    ev->weight().fill_(1.0);
  }
  require_error([&] { ev->score(big); }, "features: voxel [1, 2, 3, 5] gives concentrations that overflow");
}

TEST_CASE("heads: weights files round-trip and are refused for another head shape", "[torch][heads]") {
  torch::manual_seed(fresh_seed());
  const std::string path = temp_path("w.pt");
  EnsembleHead en(6, 3, 4, 3);
  save_head_weights(*en, path);
  EnsembleHead back(6, 3, 4, 3);
  load_head_weights(*back, path);
  for (std::int64_t m = 0; m < 4; ++m) {
    CHECK(torch::equal(back->weight(m), en->weight(m)));
    CHECK(torch::equal(back->bias(m), en->bias(m)));
  }
  const auto x = torch::randn({1, 6, 2, 3, 2});
  CHECK(torch::equal(back->sample(x), en->sample(x)));

  EnsembleHead five(6, 3, 5, 3);
  require_error([&] { load_head_weights(*five, path); }, "missing key 'members.4.weight'");
  EnsembleHead three(6, 3, 3, 3);
  require_error([&] { load_head_weights(*three, path); }, "unexpected key(s) 'members.3.bias', 'members.3.weight'");
  EnsembleHead two_d(6, 3, 4, 2);
  require_error([&] { load_head_weights(*two_d, path); }, "size mismatch for 'members.0.weight'");

  MCDropoutHead mc(6, 3, 0.2, 2);
  save_head_weights(*mc, path);
  EvidentialHead ev(6, 3, 2);  // same layout: one initialises the other
  load_head_weights(*ev, path);
  CHECK(torch::equal(ev->weight(), mc->weight()));
  MCDropoutHead wider(6, 4, 0.2, 2);
  const auto before = wider->weight().clone();
  require_error([&] { load_head_weights(*wider, path); }, "size mismatch for 'conv.weight': expected shape [4, 6, 1, 1], got [3, 6, 1, 1]");
  CHECK(torch::equal(wider->weight(), before));  // nothing half-loaded
  // a right-shaped value that copy_ cannot take (sparse, on the meta device) is refused before any copy:
  // the weight that passed must not have been overwritten
  for (int kind = 0; kind < 2; ++kind) {
    MCDropoutHead target(6, 3, 0.2, 2);
    const auto kept = target->weight().clone();
    NamedTensors state{{"conv.weight", mc->weight().detach().clone()},
                       {"conv.bias", kind == 0 ? mc->bias().detach().to_sparse() : torch::empty({3}, torch::kMeta)}};
    require_error([&] { load_head_state(*target, state, "state"); },
                  kind == 0 ? "state: 'conv.bias' is not a dense (strided) tensor" : "state: 'conv.bias' is on device meta",
                  ErrorKind::Type);
    CHECK(torch::equal(target->weight(), kept));
  }
  require_error([&] { load_tensors(path + ".missing"); }, "cannot open");
  {
    std::ofstream junk(path, std::ios::binary);
    junk << "not a zip archive";
  }
  require_error([&] { load_head_weights(*mc, path); }, "is not a torch.save archive");
  std::remove(path.c_str());
}

namespace {
// A parent that follows LibTorch's Cloneable rules: its children registered in reset().
struct ClonedNet : torch::nn::Cloneable<ClonedNet> {
  torch::nn::Conv2d stem{nullptr};
  EnsembleHead head{nullptr};
  ClonedNet() { reset(); }
  void reset() override {
    stem = register_module("stem", torch::nn::Conv2d(torch::nn::Conv2dOptions(2, 4, 1)));
    head = register_module("head", EnsembleHead(4, 3, 3, 2));
  }
};

template <typename Head>
void check_deep_copy(const Head& original, const std::shared_ptr<torch::nn::Module>& copy) {
  const NamedTensors a = head_state(*original), b = head_state(*copy);
  REQUIRE(keys(a) == keys(b));
  for (std::size_t i = 0; i < a.size(); ++i) {
    CHECK(torch::equal(a[i].second, b[i].second));
    CHECK(a[i].second.data_ptr() != b[i].second.data_ptr());  // copies, not shared storage
    CHECK(b[i].second.requires_grad());
  }
  CHECK(copy->is_training() == original->is_training());
}
}  // namespace

TEST_CASE("heads: clone() is a deep copy, alone, in a Sequential and in a Cloneable parent", "[torch][heads]") {
  torch::manual_seed(fresh_seed());
  MCDropoutHead mc(4, 3, 0.3, 2);
  EnsembleHead en(4, 3, 3, 3);
  EvidentialHead ev(4, 3, 2);
  mc->eval();
  const auto mc2 = std::dynamic_pointer_cast<MCDropoutHeadImpl>(mc->clone());
  REQUIRE(mc2);
  check_deep_copy(mc, mc2);
  CHECK(mc2->p() == mc->p());
  check_deep_copy(en, en->clone());
  check_deep_copy(ev, ev->clone());
  const auto x = torch::randn({2, 4, 5, 5});
  CHECK(torch::equal(mc2->score(x, 6, {Metric::Bald}, 3).at(Metric::Bald), mc->score(x, 6, {Metric::Bald}, 3).at(Metric::Bald)));
  {
    torch::NoGradGuard no_grad;
    mc2->weight().add_(1.0);  // the copy is independent
  }
  CHECK(!torch::equal(mc2->weight(), mc->weight()));

  torch::nn::Sequential net(torch::nn::Conv2d(torch::nn::Conv2dOptions(2, 4, 1)), MCDropoutHead(4, 3, 0.3, 2));
  net->eval();
  const auto net2 = std::dynamic_pointer_cast<torch::nn::SequentialImpl>(net->clone());
  REQUIRE(net2);
  const auto y = torch::randn({1, 2, 3, 3});
  CHECK(torch::equal(net2->forward(y), net->forward(y)));
  CHECK(net2->ptr(1)->parameters()[0].data_ptr() != net->ptr(1)->parameters()[0].data_ptr());

  const auto parent = std::make_shared<ClonedNet>();
  const auto parent2 = std::dynamic_pointer_cast<ClonedNet>(parent->clone());
  REQUIRE(parent2);
  check_deep_copy(parent->head, parent2->head.ptr());  // the child's weights, not its reset()'s fresh ones
}

TEST_CASE("heads: bad arguments are labelwise::Errors naming the argument", "[torch][heads]") {
  require_error([] { MCDropoutHead(4, 3, 1.0); }, "p: the dropout rate must be in [0, 1)");
  require_error([] { MCDropoutHead(4, 3, -0.1); }, "p: the dropout rate");
  require_error([] { MCDropoutHead(4, 3, std::nan("")); }, "p: the dropout rate");
  require_error([] { MCDropoutHead(4, 3, std::nextafter(1.0, 0.0)); }, "at most 1 - 2^-32");
  CHECK(MCDropoutHead(4, 3, kMaxDropout)->p() == kMaxDropout);
  require_error([] { EvidentialHead(4, 1); }, "num_classes");
  require_error([] { EvidentialHead(4, 3, 4); }, "dims");
  require_error([] { EnsembleHead(4, 3, 0); }, "members");
  MCDropoutHead mc(4, 3, 0.5, 2);
  EnsembleHead en(4, 3, 3, 2);
  EvidentialHead ev(4, 3, 2);
  const auto x = torch::randn({2, 4, 5, 5});
  require_error([&] { mc->forward(torch::randn({2, 4, 5})); }, "features: expected [B, F, H, W] (rank 4)");
  require_error([&] { mc->score(torch::randn({2, 4, 5, 5, 5})); }, "features: expected [B, F, H, W] (rank 4)");
  require_error([&] { en->forward(torch::randn({2, 3, 5, 5})); }, "expected 4 channels (in_channels) on axis 1, got 3");
  require_error([&] { ev->score(torch::randn({2, 5, 5, 5})); }, "expected 4 channels");
  require_error([&] { mc->sample(x.to(torch::kLong)); }, "features: expected a floating-point tensor", ErrorKind::Type);
  for (auto* call : {+[](MCDropoutHead& h, const at::Tensor& t) { h->score(t); },
                     +[](MCDropoutHead& h, const at::Tensor& t) { h->sample(t); }})
    require_error([&] { call(mc, x.to_sparse()); }, "features: expected a dense (strided) tensor", ErrorKind::Type);
  require_error([&] { ev->score(x.to_sparse()); }, "features: expected a dense (strided) tensor", ErrorKind::Type);
  // a device the closed form cannot score on: named as such, not as an aten kernel missing for it
  require_error([&] { ev->score(torch::empty({2, 4, 5, 5}, torch::kMeta)); },
                "features: a torch tensor on device meta; expected a CPU or CUDA tensor", ErrorKind::Type);
  require_error([&] { mc->score(x, 1, {Metric::Bald}); }, "K: the metric bald needs K >= 2");
  require_error([&] { mc->sample(x, 0); }, "K:");
  require_error([&] { en->score(x, 5); }, "K: an EnsembleHead has exactly 3 samples");
  require_error([&] { ev->score(x, std::nullopt, {Metric::VariationRatio}); }, "variation_ratio");
  auto bad = x.clone();
  bad[0][1][2][3] = std::nan("");
  require_error([&] { mc->score(bad); }, "features");
  require_error([&] { ev->score(bad); }, "features: contains NaN or Inf");
  // K = 1 is fine for metrics that need no samples.
  CHECK(mc->score(x, 1, {Metric::PredictiveEntropy}).at(Metric::PredictiveEntropy).sizes() == at::IntArrayRef({2, 5, 5}));
  // The fused kernel's limits, at construction; the closed-form head has none.
  require_error([] { MCDropoutHead(2, 5000); }, "num_classes: at most 4096");
  require_error([] { EnsembleHead(1, 2, 65536); }, "members: at most 65535");
  CHECK(EvidentialHead(2, 5000)->num_classes() == 5000);
  // A non-finite parameter of the evidential head is named, not blamed on the features.
  {
    torch::NoGradGuard no_grad;
    ev->bias()[2] = std::numeric_limits<double>::infinity();
  }
  require_error([&] { ev->score(x); }, "conv.bias[2] is NaN or Inf");
  // ... and so is one of a sampled head's (not in the kernel's [M, C, F] coordinates)
  {
    torch::NoGradGuard no_grad;
    en->weight(1)[2][3][0][0] = std::nan("");
  }
  require_error([&] { en->score(x); }, "members.1.weight[2, 3, 0, 0] is NaN or Inf");
  require_error([&] { en->sample(x); }, "members.1.weight[2, 3, 0, 0] is NaN or Inf");
}

TEST_CASE("heads: limits checked before allocating, one rule for every head, outputs untouched on failure",
          "[torch][heads]") {
  // K · C > 2^24: named as K before the [B, K, C, *spatial] sample output is allocated (4 TB here)
  MCDropoutHead wide(2, 4096);
  require_error([&] { wide->sample(torch::randn({1, 2, 64, 64}), 65535); }, "K: K · C = 268431360");
  require_error([&] { wide->score(torch::randn({1, 2, 4, 4}), 4097); }, "K: K · C = 16781312");
  // 2^32 voxels per item (a stride-0 view: no memory), refused before a 17 GB map or a 68 GB sample is
  // allocated, by every head (as in Python)
  const auto huge = torch::zeros({1, 2, 1, 1}).expand({1, 2, 65536, 65537});
  MCDropoutHead two(2, 2);
  require_error([&] { two->score(huge, 4, {Metric::Bald}); }, "features: at most 2^32 - 1 voxels per item, got 4295032832");
  require_error([&] { two->sample(huge, 2); }, "features: at most 2^32 - 1 voxels per item");
  require_error([&] { EvidentialHead(2, 2)->score(huge); }, "features: at most 2^32 - 1 voxels per item");
  // the evidential head ignores K, seed and index_offset but checks them like the sampled heads
  EvidentialHead ev(4, 3, 2);
  MCDropoutHead mc(4, 3, 0.5, 2);
  const auto x = torch::randn({2, 4, 3, 3});
  require_error([&] { ev->score(x, 65536); }, "K: expected an integer in [1, 65535], got 65536");
  require_error([&] { ev->score(x, std::nullopt, {Metric::Bald}, 0, nullptr, ~std::uint64_t{0}); },
                "index_offset: items must have global indices below 2^32");
  // a metric requested twice is an error on every head (it was dropped silently by the sampled ones)
  require_error([&] { mc->score(x, 4, {Metric::Bald, Metric::Bald}); }, "metrics: bald requested twice");
  require_error([&] { ev->score(x, std::nullopt, {Metric::Bald, Metric::Bald}); }, "metrics: bald requested twice");
  // `mean` may be the features themselves (the evidential head read it after overwriting it)
  at::Tensor same = x.clone();
  at::Tensor probs;
  const auto want = ev->score(x, std::nullopt, {Metric::Bald}, 0, &probs).at(Metric::Bald);
  const auto got = ev->score(same, std::nullopt, {Metric::Bald}, 0, &same).at(Metric::Bald);
  CHECK(torch::equal(got, want));
  CHECK(torch::equal(same, probs));
  // a failed call leaves the caller's mean as it was
  at::Tensor mean = torch::zeros({1});
  auto bad = x.clone();
  bad[0][1][1][1] = std::nan("");
  require_error([&] { mc->score(bad, 4, {Metric::Bald}, 0, &mean); }, "features");
  require_error([&] { ev->score(bad, std::nullopt, {Metric::Bald}, 0, &mean); }, "features");
  CHECK(mean.sizes() == at::IntArrayRef({1}));
  // float16 logits in evidential_loss on the CPU (no half softplus there): computed in float32
  const auto logits = torch::randn({1, 3, 2, 2});
  const auto target = torch::randint(3, {1, 2, 2});
  const at::Tensor half = evidential_loss(logits.to(torch::kHalf), target, 0.1);
  CHECK(half.scalar_type() == torch::kHalf);
  CHECK(std::abs(half.item<double>() - evidential_loss(logits.to(torch::kHalf).to(torch::kFloat), target, 0.1).item<double>()) <= 1e-2);
}

TEST_CASE("heads: weights files that cannot be written or read are errors", "[torch][heads]") {
  // a full device: an Error, not std::terminate (LibTorch's writer threw again from its destructor)
  // and not a silently truncated file
  if (std::ifstream("/dev/full").good()) {
    try {
      save_head_weights(*MCDropoutHead(16, 4), "/dev/full");
      FAIL("no error writing to /dev/full");
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::Runtime);
      CHECK(std::string(e.what()).find("save_tensors: writing '/dev/full' failed") != std::string::npos);
    }
  }
  // a folder: an Error naming it, not std::ios_base::failure
  require_error([] { load_tensors("/tmp"); }, "load_tensors: cannot read '/tmp'");
  // a key given twice is refused (the last one used to win silently)
  MCDropoutHead mc(4, 3);
  NamedTensors twice = head_state(*mc);
  twice.push_back(twice.front());
  require_error([&] { load_head_state(*mc, twice, "state"); }, "state: key 'conv.weight' given twice");
}

TEST_CASE("heads: sizes and member indices out of range are labelwise::Errors", "[torch][heads]") {
  require_error([] { EvidentialHead(std::int64_t(1) << 40, 2); }, "in_channels");
  require_error([] { EvidentialHead(2, INT64_MAX); }, "num_classes");
  EnsembleHead en(4, 3, 2);
  require_error([&] { en->weight(2); }, "m: member index 2 outside [0, 2)");
  require_error([&] { en->bias(-1); }, "m: member index -1 outside [0, 2)");
  // an ensemble's K is its member count: M · C beyond the fused kernels' 2^24 names the members, when
  // the head is built (before any training), not at its first score
  require_error([] { EnsembleHead(1, 4096, 4097); }, "members: M · C = 16781312");
  EnsembleHead at_limit(1, 4096, 4096);
  CHECK(at_limit->num_members() == 4096);
  // undefined tensors and unreadable devices are named (they gave "unsupported dtype UNKNOWN_SCALAR",
  // "got shape [0]" and c10 errors)
  require_error([] { evidential_loss(at::Tensor(), torch::zeros({1}, torch::kLong)); }, "logits: is an undefined tensor");
  require_error([] { torch_interop::view(at::Tensor()); }, "tensor: is an undefined tensor");
  require_error([] { save_tensors("/tmp/unused.pt", {{"a", torch::zeros({2}, torch::TensorOptions().device(torch::kMeta))}}); },
                "save_tensors: tensor 'a' is on device meta");
}

namespace {

/// CPU / CUDA agreement of one metric map: ref::backends_agree at relative `tol`.
void check_maps_agree(const at::Tensor& cpu, const at::Tensor& gpu, Metric m, double tol) {
  REQUIRE(gpu.is_cuda());
  REQUIRE(cpu.sizes() == gpu.sizes());
  const auto a = cpu.to(torch::kDouble).contiguous().flatten();
  const auto g = gpu.cpu().to(torch::kDouble).contiguous().flatten();
  const double* pa = a.data_ptr<double>();
  const double* pg = g.data_ptr<double>();
  std::int64_t bad = 0, first = -1;
  for (std::int64_t j = 0; j < a.numel(); ++j) {
    if (!ref::backends_agree(pa[j], pg[j], tol, m == Metric::BalEntAcq))
      if (bad++ == 0) first = j;
  }
  INFO(metric_name(m) << ": " << bad << " of " << a.numel() << " values differ; first " << first
                      << (first >= 0 ? " cpu " + std::to_string(pa[first]) + " gpu " + std::to_string(pg[first]) : ""));
  CHECK(bad == 0);
}

}  // namespace

TEST_CASE("heads and the torch adapter on CUDA tensors equal the CPU, on torch's current stream",
          "[torch][heads][cuda]") {
  if (!torch::cuda::is_available()) {
    WARN("no CUDA device: the LibTorch component's CUDA path is not checked here");
    return;
  }
  const std::uint64_t seed = fresh_seed();
  torch::manual_seed(seed);
  INFO("seed " << seed);
#ifdef LABELWISE_TORCH_CUDA
  // A stream of torch's pool, not the default one: the kernels must run on torch's current stream.
  c10::cuda::CUDAStreamGuard on_stream(c10::cuda::getStreamFromPool());
#endif
  const std::vector<Metric> metrics{Metric::PredictiveEntropy, Metric::Bald, Metric::VariationRatio, Metric::MeanStd,
                                    Metric::BalEntAcq};
  for (int dims : {2, 3}) {
    INFO("dims " << dims);
    const auto x = dims == 2 ? torch::randn({2, 8, 9, 7}) : torch::randn({2, 8, 3, 5, 4});
    const auto xg = x.cuda();
    MCDropoutHead mc(8, 5, 0.4, dims);
    EnsembleHead en(8, 5, 4, dims);
    at::Tensor mean_cpu, mean_gpu;
    const auto mc_cpu = mc->score(x, 12, metrics, seed, &mean_cpu);
    const auto mc_samples = mc->sample(x, 12, seed);
    const auto en_cpu = en->score(x, std::nullopt, metrics, 0);
    mc->to(torch::kCUDA);
    en->to(torch::kCUDA);
    const auto mc_gpu = mc->score(xg, 12, metrics, seed, &mean_gpu);
    const auto en_gpu = en->score(xg, std::nullopt, metrics, 0);
    const auto mc_samples_gpu = mc->sample(xg, 12, seed);
    // the same dropout masks and float32 probabilities on both devices, bit for bit
    REQUIRE(mc_samples_gpu.is_cuda());
    CHECK(torch::equal(mc_samples_gpu.cpu(), mc_samples));
    for (Metric m : metrics) {
      check_maps_agree(mc_cpu.at(m), mc_gpu.at(m), m, 1e-6);
      check_maps_agree(en_cpu.at(m), en_gpu.at(m), m, 1e-6);
    }
    REQUIRE(mean_gpu.is_cuda());
    CHECK(torch::allclose(mean_gpu.cpu(), mean_cpu, 0, 1e-6));
    // the adapter: float64 samples on the device give the CPU's maps, on the device
    const auto p = mc_samples.to(torch::kDouble);
    const auto cpu = torch_interop::score(p, metrics);
    const auto gpu = torch_interop::score(p.cuda(), metrics);
    for (Metric m : metrics) {
      CHECK(gpu.at(m).scalar_type() == torch::kDouble);
      check_maps_agree(cpu.at(m), gpu.at(m), m, 1e-10);
    }
  }
}
