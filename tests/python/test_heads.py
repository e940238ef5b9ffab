"""Segmentation heads (labelwise.torch): counter-RNG dropout masks, sample/score, closed forms, training."""

import math
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
LT = pytest.importorskip("labelwise.torch")
from labelwise import uncertainty as U  # noqa: E402
from reference import head_sample_torch, philox4x32_10  # noqa: E402

M32 = 0xFFFFFFFF


def words(ctr, key):
    return [int(w) for w in LT.philox4x32_10(ctr, key)]


KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((M32, M32, M32, M32), (M32, M32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,want", KAT)
def test_philox_random123_known_answers(ctr, key, want):
    assert words(ctr, key) == list(want)
    assert philox4x32_10(ctr, key) == list(want)


def test_counter_words_outside_their_ranges_are_named():
    """Sample 2^16 would spill into the stream bits (the mask of another sample), a negative item or a
    voxel >= 2^32 into other words: refused, as are bad types and a key or counter word out of range."""
    ok = LT.dropout_keep_mask(7, 0.5, [0], [0], 8, range(64))
    assert torch.equal(ok, LT.dropout_keep_mask(7, 0.5, torch.tensor([0]), (0,), 8, list(range(64))))
    cases = [
        (lambda: LT.dropout_keep_mask(7, 0.5, [0], [2**16], 8, range(4)), ValueError, r"samples: expected values in \[0, 65536\)"),
        (lambda: LT.dropout_keep_mask(7, 0.5, [-1], [0], 8, range(4)), ValueError, r"items: expected values in \[0, 4294967296\)"),
        (lambda: LT.dropout_keep_mask(7, 0.5, [0], [0], 8, [2**32]), ValueError, "voxels: expected values in"),
        (lambda: LT.dropout_keep_mask(7, 0.5, [0], [0], 8, [2**70]), ValueError, "voxels: expected values in"),
        # a range beyond int64 (torch.arange would overflow), an unsigned tensor beyond int64 (a cast would wrap)
        (lambda: LT.dropout_keep_mask(0, 0.5, range(2**63, 2**63 + 1), [0], 4, [0]), ValueError,
         r"items: expected values in \[0, 4294967296\), got 9223372036854775808 \.\. 9223372036854775808"),
        (lambda: LT.dropout_keep_mask(0, 0.5, torch.tensor([2**64 - 1], dtype=torch.uint64), [0], 4, [0]), ValueError,
         r"items: expected values in \[0, 4294967296\), got 18446744073709551615 \.\. 18446744073709551615"),
        (lambda: LT.dropout_keep_mask(7, 0.5, 3, [0], 8, range(4)), TypeError, "items: expected a sequence of integers, got int"),
        (lambda: LT.dropout_keep_mask(7, 0.5, [0], [True], 8, range(4)), TypeError, "samples: expected integers, got bool"),
        (lambda: LT.dropout_keep_mask(7, 0.5, [0], [0], -1, range(4)), ValueError, "channels: expected an integer in"),
        (lambda: LT.dropout_keep_mask(7, 0.5, [0], [0], 2.5, range(4)), TypeError, "channels: expected an integer"),
        (lambda: LT.philox4x32_10((-1, 0, 0, 0), (0, 0)), ValueError, r"counter\[0\]: expected values in"),
        (lambda: LT.philox4x32_10((0, 0, 0, 0), (2**32, 0)), ValueError, r"key\[0\]: expected an integer in"),
        (lambda: LT.philox4x32_10((0, 0, 0), (0, 0)), ValueError, "counter: expected four words"),
        (lambda: LT.philox4x32_10((torch.tensor([0.5]), 0, 0, 0), (0, 0)), TypeError, r"counter\[0\]: expected integers"),
    ]
    for call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()
    # generators, iterators and numpy arrays of indices are read once, whole (a generator gave an empty mask)
    assert torch.equal(LT.dropout_keep_mask(1, 0.5, (i for i in range(3)), iter([0, 1]), 4, np.arange(5)),
                       LT.dropout_keep_mask(1, 0.5, range(3), range(2), 4, range(5)))
    # nested counters broadcast as tensors do
    got = LT.philox4x32_10(([[1], [2]], 0, np.array([[3, 4]], dtype=np.uint32), 0), (5, 6))
    assert got[0].shape == (2, 2)
    assert int(got[0][1, 0]) == int(LT.philox4x32_10((2, 0, 3, 0), (5, 6))[0])


def test_philox_vectorised_matches_scalar(rng):
    n = 300
    ctr = rng.integers(0, 2**32, size=(4, n), dtype=np.uint64)
    key = [int(k) for k in rng.integers(0, 2**32, size=2, dtype=np.uint64)]
    got = LT.philox4x32_10([torch.tensor(c.astype(np.int64)) for c in ctr], key)
    for i in range(n):
        want = philox4x32_10([int(c[i]) for c in ctr], key)
        assert [int(g[i]) for g in got] == want


# ---- the documented mask layout, naively -----------------------------------------------------------------


def naive_keep(seed, p, B, K, Fch, V):
    """keep[b, k, f, v] from counter (v, f // 4, 3 << 16 | k, b), key (seed lo, seed hi), word f % 4."""
    key = (seed & M32, seed >> 32)
    keep = np.zeros((B, K, Fch, V), dtype=bool)
    for b in range(B):
        for k in range(K):
            for f in range(Fch):
                for v in range(V):
                    w = philox4x32_10((v, f // 4, (3 << 16) | k, b), key)[f % 4]
                    keep[b, k, f, v] = w / 2.0**32 >= p
    return keep


def naive_sample(head, x, K, seed):
    """Per-sample loop with the head's own convolution in float64 on explicitly masked features."""
    B, Fch = x.shape[:2]
    sp = tuple(x.shape[2:])
    V = math.prod(sp)
    keep = torch.from_numpy(naive_keep(seed, head.p, B, K, Fch, V))
    conv = torch.nn.functional.conv2d if head.dims == 2 else torch.nn.functional.conv3d
    w = head.conv.weight.detach().double()
    bias = head.conv.bias.detach().double()
    out = torch.empty((B, K, head.num_classes) + sp, dtype=torch.float64)
    for b in range(B):
        for k in range(K):
            mask = keep[b, k].reshape((Fch,) + sp)
            xm = torch.where(mask, x[b].double() / (1.0 - head.p), torch.zeros((), dtype=torch.float64))
            out[b, k] = torch.softmax(conv(xm[None], w, bias)[0], dim=0)
    return out, keep


def _feat(rng, B, Fch, sp):
    return torch.from_numpy(rng.normal(0, 1, size=(B, Fch) + sp).astype(np.float32))


SPATIAL = {2: (3, 4), 3: (2, 3, 2)}


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1 - 2**-32])  # the last: the largest rate (LT.MAX_DROPOUT)
def test_sample_equals_naive_loop_from_documented_layout(rng, dims, p):
    torch.manual_seed(int(rng.integers(2**31)))
    B, Fch, C, K = 2, 6, 3, 4  # F = 6: a partial group of four channels
    head = LT.MCDropoutHead(Fch, C, p=p, dims=dims)
    x = _feat(rng, B, Fch, SPATIAL[dims])
    seed = int(rng.integers(0, 2**64, dtype=np.uint64))  # exercises both key words
    got = head.sample(x, K=K, seed=seed)
    assert got.shape == (B, K, C) + SPATIAL[dims] and got.dtype == torch.float32
    want, keep = naive_sample(head, x, K, seed)
    V = math.prod(SPATIAL[dims])
    mask = LT.dropout_keep_mask(seed, p, range(B), range(K), Fch, range(V))
    assert torch.equal(mask, keep), "masks differ from the documented counter layout"
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-7)


def test_sample_deterministic_for_a_seed_and_differs_across_seeds(rng):
    head = LT.MCDropoutHead(8, 4, p=0.5)
    x = _feat(rng, 2, 8, (5, 6))
    a = head.sample(x, K=5, seed=7)
    assert torch.equal(a, head.sample(x, K=5, seed=7))
    torch.manual_seed(123)  # torch's RNG plays no part
    assert torch.equal(a, head.sample(x, K=5, seed=7))
    head.train()
    assert torch.equal(a, head.sample(x, K=5, seed=7))
    assert not torch.equal(a, head.sample(x, K=5, seed=8))
    # samples differ from each other, and a prefix of K is the same draws
    assert not torch.equal(a[:, 0], a[:, 1])
    assert torch.equal(a[:, :3], head.sample(x, K=3, seed=7))
    # items are keyed by their batch index: the same features in slot 0 and 1 draw different masks
    x2 = torch.cat([x[:1], x[:1]])
    s2 = head.sample(x2, K=5, seed=7)
    assert torch.equal(s2[0], a[0]) and not torch.equal(s2[1], s2[0])
    # a shard that passes its first item's global index draws the whole batch's masks
    assert torch.equal(head.sample(x[1:], K=5, seed=7, index_offset=1), a[1:])
    _assert_maps_equal(head.score(x[1:], K=5, seed=7, index_offset=1),
                       {k: v[1:] for k, v in head.score(x, K=5, seed=7).items()})


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9])
def test_keep_rate_matches_one_minus_p(p):
    m = LT.dropout_keep_mask(11, p, range(2), range(8), 12, range(2000))
    T = m.numel()
    count = int(m.sum())
    q = 1 - p
    assert abs(count - T * q) <= 5 * math.sqrt(T * q * p) + 1, (count, T * q)
    # per channel position within a Philox block (word 0..3) too
    for j in range(4):
        mj = m[:, :, j::4]
        Tj = mj.numel()
        assert abs(int(mj.sum()) - Tj * q) <= 5 * math.sqrt(Tj * q * p) + 1


def test_p_zero_keeps_everything_and_threshold_is_exact():
    assert bool(LT.dropout_keep_mask(0, 0.0, range(1), range(3), 5, range(50)).all())
    # u = w / 2^32 >= p exactly: p = w / 2^32 keeps w, p slightly above drops it
    key = (5, 0)
    w = words((0, 0, (3 << 16) | 0, 0), key)[0]
    p_eq = w / 2.0**32
    assert bool(LT.dropout_keep_mask(5, p_eq, [0], [0], 1, [0])[0, 0, 0, 0])
    p_above = np.nextafter(p_eq, 1.0)
    assert not bool(LT.dropout_keep_mask(5, float(p_above), [0], [0], 1, [0])[0, 0, 0, 0])


# ---- score ---------------------------------------------------------------------------------------------


def _assert_maps_equal(a, b):
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, equal_nan=True, msg=k)


def _assert_maps_close(a, b):
    """The fused kernel and labelwise.score run the same metric body, but its vectorised float sums may
    split their lanes differently (instruction set, scratch alignment): equal to the last bits only
    (the float32 entropies of BALD / expected entropy came within 0.64 of 1e-6 over 20 000 runs, hence
    3e-6)."""
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=3e-6, atol=3e-6, equal_nan=True, msg=k)


def _mc_weights(head):
    return head.conv.weight.reshape(1, head.num_classes, head.in_channels), head.conv.bias.reshape(1, -1)


def _ens_weights(head):
    C, Fch = head.num_classes, head.in_channels
    return (torch.stack([m.weight.reshape(C, Fch) for m in head.members]),
            torch.stack([m.bias.reshape(C) for m in head.members]))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "float64"])
def test_sample_and_score_equal_the_torch_reference(rng, dims, layout):
    torch.manual_seed(int(rng.integers(2**31)))
    sp = (9, 11) if dims == 2 else (4, 5, 6)
    Fch, C, K = int(rng.integers(1, 12)), int(rng.integers(2, 9)), int(rng.integers(2, 8))
    head = LT.MCDropoutHead(Fch, C, p=float(rng.choice([0.0, 0.2, 0.5])), dims=dims)
    x = _feat(rng, 3, Fch, sp)
    if layout == "channels_last":  # strided features: the kernel reads them in place
        x = x.movedim(1, -1).contiguous().movedim(-1, 1)
        assert Fch == 1 or not x.is_contiguous()
    elif layout == "float64":
        x = x.double()
    seed = int(rng.integers(0, 2**64, dtype=np.uint64))
    probs = head.sample(x, K=K, seed=seed)
    want = head_sample_torch(*_mc_weights(head), x, K, head.p, seed)
    torch.testing.assert_close(probs, want, rtol=0, atol=1e-7)
    metrics = list(U.METRICS)
    got = head.score(x, K=K, metrics=metrics, seed=seed, return_mean=True)
    mean = got.pop("mean")
    _assert_maps_close(got, U.score(want, metrics))
    _assert_maps_close(got, U.score(probs, metrics))
    torch.testing.assert_close(mean, probs.double().mean(1).float(), rtol=0, atol=1e-7)
    # the same seed gives the same maps, with or without the mean
    _assert_maps_equal(head.score(x, K=K, metrics=metrics, seed=seed), got)


@pytest.mark.parametrize("dims", [2, 3])
def test_ensemble_sample_and_score(rng, dims):
    torch.manual_seed(int(rng.integers(2**31)))
    sp = SPATIAL[dims]
    head = LT.EnsembleHead(7, 4, members=3, dims=dims).eval()
    x = _feat(rng, 2, 7, sp)
    s = head.sample(x)
    assert s.shape == (2, 3, 4) + sp
    conv = torch.nn.functional.conv2d if dims == 2 else torch.nn.functional.conv3d
    for m, mem in enumerate(head.members):
        want = torch.softmax(conv(x.double(), mem.weight.double(), mem.bias.double()), dim=1)
        torch.testing.assert_close(s[:, m].double(), want, rtol=0, atol=2e-7)
    torch.testing.assert_close(s, head_sample_torch(*_ens_weights(head), x, 3, 0.0, 0), rtol=0, atol=1e-7)
    _assert_maps_close(head.score(x, metrics=U.METRICS), U.score(s, U.METRICS))
    # eval forward: logits whose softmax is the ensemble mean
    torch.testing.assert_close(torch.softmax(head(x), dim=1), s.double().mean(1).float(), atol=1e-6, rtol=1e-5)
    assert head.forward_members(x).shape == (2, 3, 4) + sp


def test_requires_grad_features_and_half_precision(rng):
    head = LT.MCDropoutHead(5, 3, p=0.3)
    x = _feat(rng, 2, 5, (4, 4)).requires_grad_()
    s = head.sample(x, K=3, seed=1)
    torch.testing.assert_close(s, head_sample_torch(*_mc_weights(head), x, 3, 0.3, 1), rtol=0, atol=1e-7)
    xh = x.detach().half()
    torch.testing.assert_close(head.sample(xh, K=3, seed=1),
                               head_sample_torch(*_mc_weights(head), xh.float(), 3, 0.3, 1), rtol=0, atol=1e-7)


def test_lazily_negated_features(rng):
    """Features that are a lazily negated view (is_neg(), e.g. z.conj().imag) are read with their sign by
    every head: DLPack exports the stored, un-negated values."""
    f = _feat(rng, 2, 4, (5, 5))
    neg = torch.complex(torch.zeros_like(f), -f).conj().imag  # equal to f, stored negated
    assert neg.is_neg() and torch.equal(neg, f)
    for head in (LT.MCDropoutHead(4, 3, p=0.3), LT.EnsembleHead(4, 3, members=3), LT.EvidentialHead(4, 3)):
        a, b = head.score(neg, K=3, seed=2), head.score(f, K=3, seed=2)
        for m in a:
            torch.testing.assert_close(a[m], b[m], rtol=0, atol=0, msg=f"{type(head).__name__} {m}")
        if not isinstance(head, LT.EvidentialHead):
            torch.testing.assert_close(head.sample(neg, K=3, seed=2), head.sample(f, K=3, seed=2), rtol=0, atol=0)


# ---- evidential closed forms ---------------------------------------------------------------------------------


def _entropy(p, dim):
    return -(torch.where(p > 0, p * torch.log(p), torch.zeros_like(p))).sum(dim)


def test_evidential_closed_forms_match_dirichlet_monte_carlo(rng):
    torch.manual_seed(int(rng.integers(2**31)))
    C = 4
    head = LT.EvidentialHead(5, C)
    with torch.no_grad():
        head.conv.weight.mul_(3)
    x = _feat(rng, 1, 5, (2, 3))
    u = head.uncertainty(x)
    sc = head.score(x, metrics=LT.EVIDENTIAL_METRICS)
    alpha = head.concentrations(x).detach().double()  # [1, C, 2, 3]
    S = alpha.sum(1)
    torch.testing.assert_close(u["probs"].double(), alpha / S[:, None], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(u["vacuity"].double(), C / S, rtol=1e-6, atol=1e-7)
    N = 200_000
    for i in range(2):
        for j in range(3):
            a = alpha[0, :, i, j]
            p = torch.distributions.Dirichlet(a).sample((N,))  # [N, C]
            h = _entropy(p, 1)
            eh, se = h.mean().item(), h.std().item() / math.sqrt(N)
            # 6 standard errors: 5 failed about 4e-6 of runs over the six pixels (measured over 1800)
            assert abs(u["expected_entropy"][0, i, j].item() - eh) < 6 * se + 1e-5
            mi = _entropy(p.mean(0), 0).item() - eh
            assert abs(u["bald"][0, i, j].item() - mi) < 5 * se + 1e-4
            assert abs(sc["bald"][0, i, j].item() - mi) < 5 * se + 1e-4
            std = p.std(0).mean().item()
            assert abs(sc["mean_std"][0, i, j].item() - std) < 0.01 * std
            # BalEntAcq with the exact Beta marginals = the sample metric's limit for many samples
            bal_mc = U.balentacq(p.float()[None]).item()
            assert abs(sc["balentacq"][0, i, j].item() - bal_mc) < 0.02 * abs(bal_mc) + 1e-3, (sc["balentacq"][0, i, j], bal_mc)
            mean = alpha[0, :, i, j] / alpha[0, :, i, j].sum()
            assert abs(sc["predictive_entropy"][0, i, j].item() - _entropy(mean, 0).item()) < 1e-6
            top = torch.sort(mean, descending=True).values
            assert abs(sc["margin"][0, i, j].item() - (1 - (top[0] - top[1]).item())) < 1e-6


def test_evidential_balentacq_is_the_sample_limit_for_confident_voxels(rng):
    """Concentrations (a0, 1, 1): from a0 ~ 3e4 the Dirichlet's marginal variance falls below the sample
    metric's 1e-9 floor; the closed form applies the same floor, so it still equals the metric on many
    draws (unfloored it gave -17.7 at a0 = 1e6 against the samples' -364). From a0 ~ 2e9 the top
    class's Bernoulli variance is below the floor: a certain voxel, -inf in both (the formula gave
    +7e7 .. +4.7e13 there, ranking such voxels first)."""
    torch.manual_seed(int(rng.integers(2**31)))
    head = LT.EvidentialHead(1, 3).double()
    x = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    got = {}
    for a0 in (2.0, 1e4, 1e6, 1e10, 1e16):
        with torch.no_grad():
            head.conv.weight.zero_()
            head.conv.bias.copy_(torch.tensor([a0 - 1.0 if a0 > 30 else math.log(math.expm1(a0 - 1.0)), -60.0, -60.0]))
        got[a0] = head.score(x, metrics=("balentacq",))["balentacq"].item()
        p = torch.distributions.Dirichlet(torch.tensor([a0, 1.0, 1.0], dtype=torch.float64)).sample((200_000,))
        want = U.balentacq(p[None]).item()
        if a0 <= 1e6:
            assert abs(got[a0] - want) < 0.02 * abs(want) + 1e-3, (a0, got[a0], want)
        else:
            assert got[a0] == -math.inf and want == -math.inf, (a0, got[a0], want)


def test_evidential_closed_form_in_chunks_equals_one_pass(rng):
    """The closed form runs over chunks of the last spatial axis (float64 copies of a whole volume
    would not fit); any chunking gives the same maps, and an overflow is named at its voxel."""
    torch.manual_seed(int(rng.integers(2**31)))
    head = LT.EvidentialHead(5, 4, dims=3)
    x = _feat(rng, 2, 5, (3, 4, 7))
    whole = head.score(x, metrics=LT.EVIDENTIAL_METRICS, return_mean=True)
    unc = head.uncertainty(x)
    head._CHUNK_VALUES = 2 * 5 * 3 * 4 * 2  # two indices of the last axis per chunk (the last chunk: one)
    parts = head.score(x, metrics=LT.EVIDENTIAL_METRICS, return_mean=True)
    for k in whole:
        torch.testing.assert_close(parts[k], whole[k], rtol=1e-6, atol=1e-7)
    for k, v in head.uncertainty(x).items():
        torch.testing.assert_close(v, unc[k], rtol=1e-6, atol=1e-7)
    big = x.double()
    big[1, :, 2, 3, 5] = 1e308  # in the third chunk: 5 x 1e308 overflows
    with torch.no_grad():
        head.conv.weight.fill_(1.0)
    with pytest.raises(ValueError, match=r"^features: voxel \[1, 2, 3, 5\] gives concentrations that overflow"):
        head.score(big)


def test_evidential_concentrations_that_overflow_are_an_error():
    # finite float64 features whose logits overflow: alpha = inf would read as a certain voxel (bald 0)
    ev = LT.EvidentialHead(4, 3).double()
    x = torch.zeros((1, 4, 2, 2), dtype=torch.float64)
    x[0, :, 1, 0] = 1e308
    with torch.no_grad():
        ev.conv.weight.fill_(10.0)
    for call in (lambda: ev.score(x), lambda: ev.uncertainty(x)):
        with pytest.raises(ValueError, match=r"features: voxel \[0, 1, 0\] gives concentrations that overflow"):
            call()


def test_evidential_3d_shapes():
    head = LT.EvidentialHead(3, 5, dims=3)
    x = torch.randn(2, 3, 4, 5, 6)
    u = head.uncertainty(x)
    assert u["probs"].shape == (2, 5, 4, 5, 6) and u["bald"].shape == (2, 4, 5, 6)
    s = head.score(x, K=20, metrics=("bald", "balentacq", "vacuity"), seed=0, return_mean=True)
    assert s["balentacq"].shape == (2, 4, 5, 6) and s["mean"].shape == (2, 5, 4, 5, 6)
    assert head(x).shape == (2, 5, 4, 5, 6)


# ---- training ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mc", "ensemble", "evidential"])
@pytest.mark.parametrize("dims", [2, 3])
def test_training_lowers_the_loss(kind, dims):
    torch.manual_seed(0)
    Fch, C = 6, 3
    sp = (8, 8) if dims == 2 else (4, 4, 4)
    x = torch.randn((4, Fch) + sp)
    target = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()  # 3 classes, a function of the features
    head = {"mc": lambda: LT.MCDropoutHead(Fch, C, p=0.2, dims=dims),
            "ensemble": lambda: LT.EnsembleHead(Fch, C, members=3, dims=dims),
            "evidential": lambda: LT.EvidentialHead(Fch, C, dims=dims)}[kind]()
    head.train()
    opt = torch.optim.Adam(head.parameters(), lr=0.05)

    def loss_fn():
        if kind == "evidential":
            return LT.evidential_loss(head(x), target, kl_weight=0.01)
        if kind == "ensemble":
            z = head.forward_members(x)
            return sum(torch.nn.functional.cross_entropy(z[:, m], target) for m in range(z.shape[1]))
        return torch.nn.functional.cross_entropy(head(x), target)

    with torch.no_grad():
        head.eval()
        before = loss_fn().item()
        head.train()
    for _ in range(40):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    with torch.no_grad():
        head.eval()
        after = loss_fn().item()
    assert after < 0.8 * before, (before, after)
    out = head.train()(x)
    assert out.shape == (4, C) + sp


def test_mc_forward_modes():
    head = LT.MCDropoutHead(4, 3, p=0.5)
    x = torch.randn(2, 4, 5, 5)
    head.eval()
    torch.testing.assert_close(head(x), head.conv(x))
    head.train()
    torch.manual_seed(0)
    a = head(x)
    assert a.shape == (2, 3, 5, 5) and not torch.allclose(a, head.conv(x))


# ---- parameter names -------------------------------------------------------------------------------------------


def test_state_dict_names_and_shapes():
    mc = LT.MCDropoutHead(16, 9, p=0.1)
    assert {k: tuple(v.shape) for k, v in mc.state_dict().items()} == {"conv.weight": (9, 16, 1, 1), "conv.bias": (9,)}
    ev = LT.EvidentialHead(16, 9, dims=3)
    assert {k: tuple(v.shape) for k, v in ev.state_dict().items()} == {"conv.weight": (9, 16, 1, 1, 1), "conv.bias": (9,)}
    en = LT.EnsembleHead(16, 9, members=3)
    want = {}
    for m in range(3):
        want[f"members.{m}.weight"] = (9, 16, 1, 1)
        want[f"members.{m}.bias"] = (9,)
    assert {k: tuple(v.shape) for k, v in en.state_dict().items()} == want
    # weights move between heads of the same shape (MC <-> evidential share the layout)
    other = LT.MCDropoutHead(16, 9, p=0.5)
    other.load_state_dict(mc.state_dict())
    assert torch.equal(other.conv.weight, mc.conv.weight)
    ev2 = LT.EvidentialHead(16, 9)
    ev2.load_state_dict(mc.state_dict())
    # another head shape: a clear error naming the parameter
    with pytest.raises(RuntimeError, match="conv.weight"):
        LT.MCDropoutHead(16, 8).load_state_dict(mc.state_dict())
    with pytest.raises(RuntimeError, match="conv.weight"):
        LT.MCDropoutHead(16, 9, dims=3).load_state_dict(mc.state_dict())
    with pytest.raises(RuntimeError, match="members.3"):
        LT.EnsembleHead(16, 9, members=4).load_state_dict(en.state_dict())



def test_weights_files_round_trip_and_errors(tmp_path):
    torch.manual_seed(7)
    en = LT.EnsembleHead(5, 3, members=2, dims=3)
    path = tmp_path / "en.pt"
    LT.save_head_weights(en, path)
    # the file is a plain {name: tensor} dict (what LibTorch's unpickler reads), CPU and contiguous
    state = torch.load(path, weights_only=True)
    assert type(state) is dict and set(state) == set(en.state_dict())
    assert all(v.is_contiguous() and v.device.type == "cpu" for v in state.values())
    back = LT.load_head_weights(LT.EnsembleHead(5, 3, members=2, dims=3), path)
    for k, v in en.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    with pytest.raises(RuntimeError, match="members.0.weight"):
        LT.load_head_weights(LT.EnsembleHead(5, 4, members=2, dims=3), path)
    with pytest.raises(TypeError, match="^module: expected a torch.nn.Module, got dict"):
        LT.save_head_weights(dict(en.state_dict()), tmp_path / "x.pt")
    with pytest.raises(TypeError, match="^module:"):
        LT.load_head_weights("en", path)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"does not hold a \{name: tensor\} dict"):
        LT.load_head_weights(en, tmp_path / "list.pt")

def test_import_labelwise_does_not_import_torch():
    code = "import sys, labelwise, labelwise.uncertainty; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- bad input -----------------------------------------------------------------------------------------------


def test_bad_constructor_arguments():
    # rates in (1 - 2^-32, 1) would drop every channel (masks compare 32-bit words): errors too
    for bad in (-0.1, 1.0, 1.5, float("nan"), math.nextafter(1.0, 0.0), 1 - 2**-33):
        with pytest.raises(ValueError, match="^p:"):
            LT.MCDropoutHead(4, 3, p=bad)
    assert LT.MCDropoutHead(4, 3, p=LT.MAX_DROPOUT).p == LT.MAX_DROPOUT
    with pytest.raises(TypeError, match="^p:"):
        LT.MCDropoutHead(4, 3, p="0.5")
    with pytest.raises(ValueError, match="^dims:"):
        LT.MCDropoutHead(4, 3, dims=1)
    with pytest.raises(ValueError, match="^dims:"):
        LT.EvidentialHead(4, 3, dims=4)
    with pytest.raises(ValueError, match="^in_channels:"):
        LT.EnsembleHead(0, 3)
    with pytest.raises(ValueError, match="^num_classes:"):
        LT.MCDropoutHead(4, 1)
    with pytest.raises(TypeError, match="^num_classes:"):
        LT.MCDropoutHead(4, 2.5)
    with pytest.raises(ValueError, match="^members:"):
        LT.EnsembleHead(4, 3, members=0)
    # the fused kernel's limits, at construction (not at the first score, after training)
    with pytest.raises(ValueError, match="^num_classes: at most 4096"):
        LT.MCDropoutHead(2, 5000)
    with pytest.raises(ValueError, match="^members: at most 65535"):
        LT.EnsembleHead(1, 2, members=65536)
    with pytest.raises(ValueError, match=r"^members: M · num_classes = 16781312"):  # M · C > 2^24
        LT.EnsembleHead(1, 4096, members=4097)
    assert LT.EvidentialHead(2, 5000).num_classes == 5000  # closed form: no kernel limit
    # p is checked whenever it is set
    mc = LT.MCDropoutHead(4, 3, p=0.5)
    with pytest.raises(ValueError, match="^p:"):
        mc.p = 1.0
    mc.p = 0.25
    assert mc.p == 0.25 and "p=0.25" in repr(mc)


def test_bad_features_and_call_arguments():
    mc = LT.MCDropoutHead(4, 3, p=0.5)
    ev = LT.EvidentialHead(4, 3)
    en = LT.EnsembleHead(4, 3, members=2)
    x = torch.randn(2, 4, 5, 6)
    for head in (mc, ev, en):
        calls = [head.forward, head.score] + ([head.sample] if hasattr(head, "sample") else [])
        for fn in calls:
            with pytest.raises(ValueError, match="^features:.*rank 4"):
                fn(torch.randn(2, 4, 5))
            with pytest.raises(ValueError, match="^features:.*rank 4"):
                fn(torch.randn(2, 4, 5, 6, 7))
            with pytest.raises(ValueError, match="^features:.*4 channels"):
                fn(torch.randn(2, 5, 5, 6))
            with pytest.raises(TypeError, match="^features:"):
                fn(x.numpy())
            with pytest.raises(TypeError, match="^features:"):
                fn(torch.ones(2, 4, 5, 6, dtype=torch.int64))
            with pytest.raises(TypeError, match=r"^features: expected a dense \(strided\) tensor"):
                fn(x.to_sparse())
    for fn in (mc.score, mc.sample, ev.score, ev.uncertainty, en.score):  # forward() runs on meta; scoring not
        with pytest.raises(TypeError, match="^features: a torch tensor on device 'meta'"):
            fn(x.to("meta"))
    with pytest.raises(ValueError, match="^features:.*rank 5"):
        LT.MCDropoutHead(4, 3, dims=3).sample(x)
    bad = x.clone()
    bad[1, 1, 2, 3] = float("nan")
    for fn in (mc.sample, mc.score, ev.score, ev.uncertainty, en.score):  # every head names the same place
        with pytest.raises(ValueError, match=r"^features: item 1, voxel \[2, 3\] contains NaN or Inf"):
            fn(bad)
    # K
    for m in ("bald", "balentacq", "expected_entropy", "variation_ratio", "mean_std"):
        with pytest.raises(ValueError, match="^K:.*K >= 2"):
            mc.score(x, K=1, metrics=(m,))
    assert mc.score(x, K=1, metrics=("predictive_entropy",))["predictive_entropy"].shape == (2, 5, 6)
    for bad_k in (0, -3):
        with pytest.raises(ValueError, match="^K:"):
            mc.sample(x, K=bad_k)
    with pytest.raises(TypeError, match="^K:"):
        mc.sample(x, K=2.0)
    with pytest.raises(ValueError, match="^K:"):
        en.sample(x, K=5)
    with pytest.raises(ValueError, match="^metrics: bald, balentacq need at least 2 samples.*members=1"):
        LT.EnsembleHead(4, 3, members=1).score(x)
    # seed
    for bad_seed, exc in ((1.5, TypeError), ("0", TypeError), (True, TypeError), (None, TypeError),
                          (-1, ValueError), (2**64, ValueError)):
        with pytest.raises(exc, match="^seed:"):
            mc.sample(x, K=2, seed=bad_seed)
        with pytest.raises(exc, match="^seed:"):
            mc.score(x, K=2, seed=bad_seed)
    assert mc.sample(x, K=2, seed=np.int64(3)).shape == (2, 2, 3, 5, 6)
    # metrics
    with pytest.raises(ValueError, match="^metrics:.*nonsense"):
        mc.score(x, metrics=("bald", "nonsense"))
    # any iterable of names, as for the sampled heads (a generator is read once)
    assert set(ev.score(x, metrics=(m for m in ("bald", "vacuity") if m != "vacuity"))) == {"bald"}
    with pytest.raises(TypeError, match="^metrics: expected a metric name"):
        ev.score(x, metrics=5)
    for head in (mc, ev):
        with pytest.raises(ValueError, match="^metrics: 'bald' is requested twice"):
            head.score(x, metrics=("bald", "margin", "bald"))
    with pytest.raises(ValueError, match="^metrics: variation_ratio has no closed form"):
        ev.score(x, metrics=("variation_ratio",))
    with pytest.raises(ValueError, match="^index_offset:"):
        mc.sample(x, K=2, index_offset=-1)
    with pytest.raises(ValueError, match="^index_offset:"):
        mc.score(x, K=2, index_offset=2**32 - 1)
    # one call serves every head: the evidential head checks and ignores index_offset
    for head in (mc, en, ev):
        assert set(head.score(x, metrics=("bald",), index_offset=3)) == {"bald"}
        with pytest.raises(ValueError, match="^index_offset:"):
            head.score(x, metrics=("bald",), index_offset=-1)
    # non-finite parameters are named, in the parameter's own coordinates
    for head, param, where in ((mc, "conv.weight", (1, 1, 0, 0)), (ev, "conv.bias", (2,)),
                               (en, "members.1.weight", (0, 3, 0, 0))):
        t = dict(head.named_parameters())[param]
        keep = t.detach()[where].item()
        with torch.no_grad():
            t[where] = float("nan")
        try:
            calls = (head.score, head.uncertainty) if head is ev else (head.score, head.sample)
            for fn in calls:
                with pytest.raises(ValueError, match=rf"^{param}\[{', '.join(map(str, where))}\] is NaN or Inf \(nan\)"):
                    fn(x)
        finally:
            with torch.no_grad():
                t[where] = keep
    with pytest.raises(ValueError, match="^target:"):
        LT.evidential_loss(ev(x), torch.zeros(2, 5, dtype=torch.long))
    # labels outside [0, C): named (gather failed with an index error before); ignore_index leaves voxels out
    logits = ev(x)
    target = torch.randint(3, (2, 5, 6))
    target[1, 2, 3] = 255
    with pytest.raises(ValueError, match=r"^target: voxel \[1, 2, 3\] has label 255, outside \[0, 3\) \(pass ignore_index"):
        LT.evidential_loss(logits, target)
    keep = target != 255
    for kl in (0.0, 0.3):
        got = LT.evidential_loss(logits, target, kl_weight=kl, ignore_index=255)
        per = [LT.evidential_loss(logits[b:b + 1, :, i:i + 1, j:j + 1], target[b:b + 1, i:i + 1, j:j + 1], kl_weight=kl)
               for b in range(2) for i in range(5) for j in range(6) if keep[b, i, j]]
        torch.testing.assert_close(got, torch.stack(per).mean(), rtol=1e-5, atol=1e-6)
    got.backward()  # differentiable
    assert LT.evidential_loss(ev(x), torch.full((2, 5, 6), -100), ignore_index=-100).item() == 0.0
    empty = LT.evidential_loss(logits[:0], target[:0])  # no voxel at all: 0 as well, still differentiable
    assert empty.item() == 0.0 and empty.requires_grad
    with pytest.raises(TypeError, match="^logits: expected a floating-point tensor"):
        LT.evidential_loss(logits.detach().long(), target.clamp(max=2))
    for bad in (float("nan"), float("inf"), -0.5):
        with pytest.raises(ValueError, match="^kl_weight: expected a finite value >= 0"):
            LT.evidential_loss(logits, target.clamp(max=2), kl_weight=bad)
    # ignore_index is compared as an integer, not in the target's dtype: -100 is not uint8 156
    u8 = torch.zeros(2, 5, 6, dtype=torch.uint8)
    u8[0, 1, 1] = 156
    with pytest.raises(ValueError, match=r"^target: voxel \[0, 1, 1\] has label 156"):
        LT.evidential_loss(logits, u8, ignore_index=-100)
    u8[0, 1, 1] = 255
    torch.testing.assert_close(LT.evidential_loss(logits, u8, ignore_index=255),
                               LT.evidential_loss(logits, u8.long(), ignore_index=255))
    # half logits over more than 65504 voxels: the masked means do not overflow; non-finite logits at
    # ignored voxels neither poison the loss nor its gradient
    big = torch.randn(1, 3, 300, 300, dtype=torch.float16, requires_grad=True)
    tb = torch.randint(3, (1, 300, 300))
    tb[0, 0, 0] = 255
    half = LT.evidential_loss(big, tb, ignore_index=255)
    full = LT.evidential_loss(big.detach().float(), tb, ignore_index=255)
    assert half.dtype == torch.float16 and torch.isfinite(half)
    assert abs(half.item() - full.item()) < 1e-2
    bad = big.detach().clone()
    bad[0, :, 0, 0] = float("inf")
    bad.requires_grad_(True)
    lb = LT.evidential_loss(bad, tb, kl_weight=0.1, ignore_index=255)
    lb.backward()
    assert torch.isfinite(lb) and torch.isfinite(bad.grad).all()
    with pytest.raises(TypeError, match="^target: expected integer"):
        LT.evidential_loss(ev(x), torch.zeros(2, 5, 6))


# ---- the example ------------------------------------------------------------------------------------------------


def test_mri_example_quick_writes_the_overlays(tmp_path):
    import importlib.util
    import os
    from pathlib import Path

    pytest.importorskip("matplotlib")
    pytest.importorskip("nibabel")
    from labelwise.data import MRICRON_TEMPLATES

    if not os.path.exists(os.path.join(MRICRON_TEMPLATES, "ch2.nii.gz")):
        pytest.skip("mricron-data is not installed")
    script = Path(__file__).resolve().parents[2] / "examples" / "python" / "mri_uncertainty.py"
    spec = importlib.util.spec_from_file_location("mri_uncertainty", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--quick", "--steps", "3", "--samples", "4", "--out", str(tmp_path)]) == 0
    for name in ("image", "ground_truth", "prediction", "bald", "balentacq", "overview"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_sample_equals_cpu(rng):
    import labelwise as lw

    if not lw.built_with_cuda():
        pytest.skip("labelwise was built without CUDA")
    head = LT.MCDropoutHead(9, 4, p=0.4, dims=3)
    x = _feat(rng, 2, 9, (3, 4, 5))
    seed = 2**40 + 3
    cpu = head.sample(x, K=5, seed=seed)
    mask_cpu = LT.dropout_keep_mask(seed, 0.4, range(2), range(5), 9, range(60))
    mask_gpu = LT.dropout_keep_mask(seed, 0.4, range(2), range(5), 9, range(60), device="cuda")
    assert torch.equal(mask_gpu.cpu(), mask_cpu)
    head = head.cuda()
    gpu = head.sample(x.cuda(), K=5, seed=seed)
    assert gpu.is_cuda
    assert torch.equal(gpu.cpu(), cpu)
    torch.testing.assert_close(head_sample_torch(*_mc_weights(head), x.cuda(), 5, 0.4, seed).cpu(), cpu,
                               rtol=0, atol=1e-7)
    res = head.score(x.cuda(), K=5, metrics=U.METRICS, seed=seed, return_mean=True)
    want = head.cpu().score(x, K=5, metrics=U.METRICS, seed=seed, return_mean=True)
    for k in want:
        assert res[k].is_cuda
        torch.testing.assert_close(res[k].cpu(), want[k], rtol=1e-6, atol=1e-6)
    ens = LT.EnsembleHead(9, 4, members=3, dims=3)
    torch.testing.assert_close(ens.cuda().sample(x.cuda()).cpu(), ens.cpu().sample(x), rtol=0, atol=0)


def test_load_head_weights_names_a_foreign_file(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a torch archive " * 4)
    with pytest.raises(ValueError, match="path: .*junk.bin is not a weights file"):
        LT.load_head_weights(LT.MCDropoutHead(4, 3), junk)
    with pytest.raises(FileNotFoundError):
        LT.load_head_weights(LT.MCDropoutHead(4, 3), tmp_path / "missing.pt")


def test_sample_reads_weights_that_the_deprecated_weight_norm_hook_has_not_refreshed(rng):
    """torch.nn.utils.weight_norm (hook form) recomputes conv.weight only in a forward pre-hook: after
    weight_g changes (an optimiser step), sample / score must still use the current weights."""
    import warnings

    x = torch.as_tensor(rng.normal(size=(1, 4, 5, 6)), dtype=torch.float32)
    h = LT.MCDropoutHead(4, 3, p=0.5)
    hw = LT.MCDropoutHead(4, 3, p=0.5)
    hw.load_state_dict(h.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation warning
        torch.nn.utils.weight_norm(hw.conv)
    with torch.no_grad():
        hw.conv.weight_g.mul_(2)
        h.conv.weight.mul_(2)
    assert torch.equal(hw.sample(x, 3, seed=1), h.sample(x, 3, seed=1))
    assert torch.equal(hw.score(x, 3, ("bald",), seed=1)["bald"], h.score(x, 3, ("bald",), seed=1)["bald"])


def test_evidential_loss_tensor_weight_equals_the_number():
    """A one-element tensor kl_weight (never read on the host) gives the loss of the same number,
    0 included."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 4, 5), generator=g)
    for w in (0.0, 0.3):
        assert torch.allclose(LT.evidential_loss(logits, target, kl_weight=torch.tensor(w, dtype=torch.float64)),
                              LT.evidential_loss(logits, target, kl_weight=w), rtol=1e-12, atol=0)



def test_with_coords_channels_and_errors():
    """labelwise.models.with_coords: image, row, column and slice-position channels; a position list
    of another length or a masked image with masked entries is a ValueError naming the argument."""
    from labelwise.models import with_coords

    img = np.arange(2 * 1 * 4 * 8, dtype=np.float32).reshape(2, 1, 4, 8)
    out = with_coords(img, [-0.5, 0.5])
    assert out.shape == (2, 4, 4, 8) and out.dtype == torch.float32
    assert torch.equal(out[:, 0], torch.as_tensor(img[:, 0]))
    assert torch.equal(out[0, 1, :, 0], torch.linspace(-1, 1, 4)) and torch.equal(out[1, 2, 0], torch.linspace(-1, 1, 8))
    assert torch.equal(out[:, 3, 0, 0], torch.tensor([-0.5, 0.5]))
    with pytest.raises(ValueError, match=r"z: expected one slice position per image, shape \(2,\), got \(3,\)"):
        with_coords(img, [0.0, 0.5, 1.0])
    masked = np.ma.masked_array(img, mask=np.zeros(img.shape, bool))
    masked[0, 0, 0, 0] = np.ma.masked
    with pytest.raises(ValueError, match="img: a masked array with masked entries"):
        with_coords(masked, [0.0, 0.5])
