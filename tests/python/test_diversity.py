"""labelwise.acquisition.coreset / badge: brute-force float64 references (k-center greedy; k-means++
on explicit gradient embeddings with the same uniform draws), the factorised distance, determinism
across thread counts, frameworks and every bad input."""

import numpy as np
import pytest

import labelwise as lw
from labelwise import acquisition as A
from reference import philox_bits64

try:  # torch is optional: the framework checks are skipped without it
    import torch
except ImportError:  # pragma: no cover
    torch = None


# ---- references -----------------------------------------------------------------------------------


def coreset_ref(x, labeled_mask, b, metric):
    """k-center greedy from the paper, float64, explicit distances (squared; cosine on unit rows)."""
    u = np.asarray(x, dtype=np.float64)
    if metric == "cosine":
        u = u * (1.0 / np.sqrt((u * u).sum(1)))[:, None]
    n = len(u)
    taken = np.array(labeled_mask, dtype=bool)
    sq = lambda c: ((u - c) ** 2).sum(1)  # noqa: E731
    mins = np.full(n, np.inf)
    for j in np.flatnonzero(taken):
        mins = np.minimum(mins, sq(u[j]))

    def argmax(v):
        v = np.where(taken, -1.0, v)
        return int(np.argmax(v))  # first maximum: lower index

    pick = argmax(mins) if taken.any() else argmax(sq(u.mean(0)))
    picks, radii = [], []
    for _ in range(b):
        picks.append(pick)
        taken[pick] = True
        mins = np.minimum(mins, sq(u[pick]))
        if taken.all():
            m, pick = 0.0, -1
        else:
            pick = argmax(mins)
            m = mins[pick]
        radii.append(0.5 * m if metric == "cosine" else np.sqrt(m))
    return np.array(picks, dtype=np.int64), np.array(radii)


def gradients(p, h):
    """Explicit gradient embeddings [N, C*D], float64."""
    p = np.asarray(p, dtype=np.float64)
    a = p.copy()
    a[np.arange(len(p)), p.argmax(1)] -= 1.0
    return (a[:, :, None] * np.asarray(h, dtype=np.float64)[:, None, :]).reshape(len(p), -1)


STREAM_BADGE = int.from_bytes(b"BADG", "big")  # 0x42414447, docs/acquisition.md


def badge_uniform_ref(seed, t):
    """The documented draw of BADGE step t, from an independent Philox (reference.philox_bits64):
    U = (2k + 1) / 2^53 with k the top 52 of the 64 bits (exact in float64)."""
    k = philox_bits64(seed, STREAM_BADGE, t) >> 12
    return (2 * k + 1) / 2.0**53


def badge_ref(p, h, b, seed):
    """k-means++ seeding on explicit gradient embeddings, with the documented uniform draws (computed
    here, not by the library)."""
    g = gradients(p, h)
    n = len(g)
    pick = int(np.argmax((g * g).sum(1)))
    picks = [pick]
    d2 = np.full(n, np.inf)
    chosen = np.zeros(n, dtype=bool)
    chosen[pick] = True
    while len(picks) < b:
        d2 = np.minimum(d2, ((g - g[pick]) ** 2).sum(1))
        d2[chosen] = 0.0
        total = d2.sum()
        if total == 0:
            pick = int(np.flatnonzero(~chosen)[0])
        else:
            target = badge_uniform_ref(seed, len(picks)) * total
            run = np.cumsum(d2)
            pick = int(np.flatnonzero((run > target) & (d2 > 0))[0])
        picks.append(pick)
        chosen[pick] = True
    return np.array(picks, dtype=np.int64)


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


# ---- core-set -------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("labelled", ["none", "mask", "indices", "list", "int32"])
def test_coreset_matches_brute_force(rng, metric, dtype, labelled):
    for n, d in [(7, 1), (60, 3), (211, 17)]:
        x = rng.normal(size=(n, d)).astype(dtype)
        mask = np.zeros(n, dtype=bool)
        if labelled != "none":
            mask[rng.choice(n, size=min(4, n - 2), replace=False)] = True
        lab = {
            "none": None,
            "mask": mask,
            "indices": np.flatnonzero(mask).astype(np.int64),
            "list": np.flatnonzero(mask).tolist(),
            "int32": np.flatnonzero(mask).astype(np.int32),
        }[labelled]
        b = min(n - int(mask.sum()), 25)
        want_i, want_r = coreset_ref(x, mask, b, metric)
        idx, radii = A.coreset(x, lab, b, metric=metric)
        assert idx.dtype == np.int64 and idx.shape == (b,)
        assert radii.dtype == np.float64 and radii.shape == (b,)
        np.testing.assert_array_equal(idx, want_i)
        np.testing.assert_allclose(radii, want_r, rtol=1e-9, atol=1e-12)
        assert np.all(np.diff(radii) <= 0)
        assert not mask[idx].any() and len(set(idx.tolist())) == b


def test_coreset_every_item_and_duplicates(rng):
    base = rng.normal(size=(10, 4))
    x = np.concatenate([base, base[::-1], base[:3]])  # 23 rows, 13 duplicates
    for metric in ("euclidean", "cosine"):
        idx, radii = A.coreset(x, None, 23, metric=metric)
        want_i, want_r = coreset_ref(x, np.zeros(23, bool), 23, metric)
        np.testing.assert_array_equal(idx, want_i)
        np.testing.assert_allclose(radii, want_r, rtol=1e-9, atol=1e-12)
        # The 10 distinct points come first; then radius 0 and the duplicates by lower index.
        assert len({tuple(x[i]) for i in idx[:10]}) == 10
        assert radii[9] == 0.0 and np.all(radii[9:] == 0.0)
        np.testing.assert_array_equal(idx[10:], np.sort(idx[10:]))


def test_coreset_strides_readonly_and_torch(rng):
    x = rng.normal(size=(300, 12))
    mask = rng.random(300) < 0.1
    want = A.coreset(x, mask, 30)
    t = np.asfortranarray(x)
    t.setflags(write=False)
    got = A.coreset(t, mask, 30)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-12)
    if torch is not None:
        ti, tr = A.coreset(torch.from_numpy(x), torch.from_numpy(mask), 30, metric="euclidean")
        assert isinstance(ti, torch.Tensor) and ti.dtype == torch.int64 and tr.dtype == torch.float64
        np.testing.assert_array_equal(ti.numpy(), want[0])
        ti2, _ = A.coreset(torch.from_numpy(x), torch.from_numpy(np.flatnonzero(mask)).to(torch.int32), 30)
        np.testing.assert_array_equal(ti2.numpy(), want[0])


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_coreset_pruning_is_exact_on_clustered_features(rng, metric):
    centres = 20 * rng.normal(size=(30, 6))
    x = (centres[rng.integers(0, 30, 4000)] + rng.normal(size=(4000, 6))).astype(np.float32)
    for lab in (None, [3, 999, 2500]):
        on = A.coreset(x, lab, 200, metric=metric)
        off = A.coreset(x, lab, 200, metric=metric, prune=False)
        np.testing.assert_array_equal(on[0], off[0])
        np.testing.assert_array_equal(on[1], off[1])
        mask = np.zeros(len(x), bool)
        if lab is not None:
            mask[lab] = True
        want_i, want_r = coreset_ref(x, mask, 200, metric)
        np.testing.assert_array_equal(on[0], want_i)
        np.testing.assert_allclose(on[1], want_r, rtol=1e-9, atol=1e-12)


def test_coreset_b_zero_is_empty(rng):
    idx, radii = A.coreset(rng.normal(size=(5, 2)), None, 0)
    assert idx.shape == (0,) and radii.shape == (0,)


# ---- BADGE ----------------------------------------------------------------------------------------


def test_factorised_distance_equals_explicit(rng):
    for _ in range(50):
        c, d = int(rng.integers(2, 12)), int(rng.integers(1, 40))
        p = softmax(3 * rng.normal(size=(2, c)))
        h = rng.normal(size=(2, d))
        g = gradients(p, h)
        a = p.copy()
        a[np.arange(2), p.argmax(1)] -= 1
        na, nh = (a * a).sum(1), (h * h).sum(1)
        fact = na[0] * nh[0] + na[1] * nh[1] - 2 * (a[0] @ a[1]) * (h[0] @ h[1])
        np.testing.assert_allclose(fact, ((g[0] - g[1]) ** 2).sum(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_badge_matches_bruteforce_kmeanspp(rng, dtype):
    for n, c, d in [(40, 2, 1), (120, 5, 7), (257, 10, 16)]:
        p = softmax(2 * rng.normal(size=(n, c)))
        p[::9] = np.eye(c)[1]  # confident items: g = 0
        p = p.astype(dtype)
        h = rng.normal(size=(n, d)).astype(dtype)
        seed = int(rng.integers(0, 2**63))
        b = min(n, 30)
        want = badge_ref(p, h, b, seed)
        got = A.badge(p, h, b, seed=seed)
        assert got.dtype == np.int64 and got.shape == (b,)
        np.testing.assert_array_equal(got, want)
        z = np.log(p.astype(np.float64) + 1e-30) + 0.7  # logits whose softmax is p
        np.testing.assert_array_equal(A.badge(z, h, b, seed=seed, input="logits"), badge_ref(softmax(z), h, b, seed))


def test_badge_degenerate_and_full():
    p = np.eye(3)[[0, 1, 2, 0, 1]]  # every prediction one-hot: all g = 0
    np.testing.assert_array_equal(A.badge(p, np.ones((5, 2)), 4, seed=3), [0, 1, 2, 3])
    rng = np.random.default_rng(0)
    q = softmax(rng.normal(size=(20, 4)))
    e = rng.normal(size=(20, 3))
    np.testing.assert_array_equal(np.sort(A.badge(q, e, 20, seed=5)), np.arange(20))
    assert A.badge(q, e, 0, seed=5).shape == (0,)
    u = [A.badge_uniform(5, t) for t in range(1, 200)]
    assert all(0 < v < 1 for v in u) and len(set(u)) == len(u)
    assert 0.4 < np.mean(u) < 0.6


def test_badge_uniform_bit_for_bit_against_the_documented_draw(rng):
    # the reference Philox against the Random123 known answer it can express (counter word 3 = 0)
    assert philox_bits64(0, 0, 0) == 0xE169C58D6627E8D5
    assert STREAM_BADGE == 0x42414447
    seeds = [0, 1, 5, 2**32 - 1, 2**32, 2**64 - 1] + [int(s) for s in rng.integers(0, 2**63, size=10)]
    steps = [0, 1, 2, 3, 1000, 2**32 - 1, 2**32, 2**64 - 1] + [int(t) for t in rng.integers(0, 2**62, size=10)]
    for seed in seeds:
        for t in steps:
            got, want = A.badge_uniform(seed, t), badge_uniform_ref(seed, t)
            assert np.float64(got).tobytes() == np.float64(want).tobytes(), (seed, t, got, want)
            assert 0.0 < got < 1.0


def test_same_seed_same_batch_on_any_thread_count(rng):
    x = rng.normal(size=(60_000, 24)).astype(np.float32)  # several chunks per thread count
    p = softmax(rng.normal(size=(60_000, 6)))
    seed = int(rng.integers(0, 2**63))
    out = []
    try:
        for threads in (1, 2, 5):
            lw.set_num_threads(threads)
            out.append((A.coreset(x, None, 40, metric="cosine"), A.badge(p, x, 40, seed=seed)))
    finally:
        lw.set_num_threads(0)
    for (ci, cr), bi in out[1:]:
        np.testing.assert_array_equal(ci, out[0][0][0])
        np.testing.assert_array_equal(cr, out[0][0][1])
        np.testing.assert_array_equal(bi, out[0][1])
    assert not np.array_equal(A.badge(p, x, 40, seed=seed + 1), out[0][1])
    if torch is not None:
        got = A.badge(torch.from_numpy(p), torch.from_numpy(x), 40, seed=seed)
        np.testing.assert_array_equal(got.numpy(), out[0][1])


# ---- errors ---------------------------------------------------------------------------------------


class FakeCuda:
    """Claims to live on a CUDA device (DLPack device type 2)."""

    shape = (4, 3)

    def __dlpack__(self, **kw):  # pragma: no cover - never reached
        raise AssertionError("must fail before asking for the data")

    def __dlpack_device__(self):
        return (2, 0)


def test_coreset_bad_inputs(rng):
    x = rng.normal(size=(6, 3))
    with pytest.raises(ValueError, match=r"b: expected 0 <= b <= 6"):
        A.coreset(x, None, 7)
    with pytest.raises(ValueError, match=r"b: expected 0 <= b <= 4"):
        A.coreset(x, [0, 5], 5)
    with pytest.raises(ValueError, match="b: expected"):
        A.coreset(x, None, -1)
    with pytest.raises(ValueError, match="every one of the 6 items is labelled"):
        A.coreset(x, np.ones(6, bool), 0)
    with pytest.raises(ValueError, match="empty"):
        A.coreset(np.zeros((0, 3)), None, 0)
    with pytest.raises(ValueError, match="at least one column"):
        A.coreset(np.zeros((4, 0)), None, 1)
    with pytest.raises(ValueError, match="expected rank 2"):
        A.coreset(np.zeros(6), None, 1)
    with pytest.raises(ValueError, match=r"expected shape \[6\]"):
        A.coreset(x, np.zeros(5, bool), 1)
    with pytest.raises(ValueError, match=r"outside \[0, 6\)"):
        A.coreset(x, [6], 1)
    with pytest.raises(ValueError, match=r"outside \[0, 6\)"):
        A.coreset(x, [-1], 1)
    with pytest.raises(TypeError, match="labeled: expected dtype"):
        A.coreset(x, np.zeros(6, np.float32), 1)
    y = x.copy()
    y[4, 1] = np.nan
    with pytest.raises(ValueError, match=r"row \[4\] contains NaN or Inf"):
        A.coreset(y, None, 1)
    y[4, 1] = np.inf
    with pytest.raises(ValueError, match=r"row \[4\] contains NaN or Inf"):
        A.coreset(y, None, 0)
    y = x.copy()
    y[2] = 0
    with pytest.raises(ValueError, match=r"row \[2\] is all zeros"):
        A.coreset(y, None, 1, metric="cosine")
    A.coreset(y, None, 1)  # fine for Euclidean
    # Norms float64 cannot hold: Euclidean squared distances would overflow (every pick a tie at +inf);
    # cosine rows would be normalised by an underflowed / overflowed norm (a row of 1e-190s is not zero).
    big = x.copy()
    big[3] *= 1e200
    with pytest.raises(ValueError, match=r"features: row \[3\] is too large: its squared norm exceeds 2.2e307"):
        A.coreset(big, None, 2)
    # At the bound (squared norm 2^1021) the distances stay finite; just above it (a pair whose distance
    # overflowed to +inf under the former bound DBL_MAX / 4) the row is refused.
    edge2 = np.array([[2.0**510, 2.0**510], [-(2.0**510), -(2.0**510)]])
    idx, radii = A.coreset(edge2, None, 2)
    assert np.isfinite(radii).all() and radii[0] == np.sqrt(2.0**1023)
    np.testing.assert_array_equal(A.average_linkage_clusters(edge2, distance=1e300), [0, 0])
    v = np.array([float.fromhex("0x1.63ce9837d954ep+510"), float.fromhex("0x1.702a34ebf4583p+510")])
    for fn in (lambda z: A.coreset(z, None, 2), lambda z: A.average_linkage_clusters(z, distance=1e300),
               lambda z: A.weighted_kmeans(z, np.ones(2), 1, prefilter=2)):
        with pytest.raises(ValueError, match=r"features: row \[0\] is too large|embeddings: row \[0\] is too large"):
            fn(np.stack([v, -v]))
    for scale in (1e-190, 1e200):
        odd = x.copy()
        odd[1] = scale * np.array([1.0, 0.5, 0.25])
        with pytest.raises(ValueError, match=r"features: row \[1\] has a squared norm outside the normal float64 range"):
            A.coreset(odd, None, 2, metric="cosine")
    # Just inside both ranges: accepted, and cosine picks equal those of the rescaled rows.
    edge = x.copy()
    edge[0] *= 1e150
    A.coreset(edge, None, 3)
    small, ref = A.coreset(x * 1e-150, None, 4, metric="cosine"), A.coreset(x, None, 4, metric="cosine")
    np.testing.assert_array_equal(small[0], ref[0])
    np.testing.assert_allclose(small[1], ref[1], rtol=1e-12)
    with pytest.raises(ValueError, match="metric"):
        A.coreset(x, None, 1, metric="manhattan")
    with pytest.raises(TypeError, match="dtype float32 or float64"):
        A.coreset(np.ones((4, 3), np.int64), None, 1)
    with pytest.raises(TypeError, match="b: expected an integer"):
        A.coreset(x, None, 1.5)
    with pytest.raises(TypeError, match="cannot allocate results"):  # a GPU array of an unknown framework
        A.coreset(FakeCuda(), None, 1)


@pytest.mark.parametrize("exponent", [-1, -258, -600, -1000, -1060])
def test_euclidean_picks_do_not_depend_on_a_power_of_two_scale(rng, exponent):
    """Features of any scale give the picks of the same values brought back to ~1: below 2^-64 (tiny
    ones' squared distances underflow float64 below ~1e-154; -1060: subnormal) every Euclidean method
    reads them times a power of two (exact); -1 is read as given."""
    x = rng.normal(size=(300, 6))
    x[:, 0] += 3.0 * (np.arange(300) % 4)  # a few clusters, so the picks are well separated
    x *= 0.75 / np.abs(x).max()  # largest magnitude 0.75: read unscaled
    tiny = np.ldexp(x, exponent)  # rounded where subnormal (-1060) ...
    ref_x = np.ldexp(tiny, -exponent)  # ... so the reference is the tiny values brought back (exact)
    assert np.abs(ref_x).max() >= 0.5

    def same_radii(got, ref):
        if exponent > -1000:
            np.testing.assert_array_equal(np.ldexp(got, -exponent), ref)  # scaled back exactly
        else:  # subnormal radii hold fewer bits
            np.testing.assert_allclose(np.ldexp(got, -exponent), ref, rtol=2.0**-10)

    lab = np.zeros(300, bool)
    lab[[5, 77]] = True
    for labeled in (None, lab):
        ref = A.coreset(ref_x, labeled, 12)
        got = A.coreset(tiny, labeled, 12)
        np.testing.assert_array_equal(got[0], ref[0])
        same_radii(got[1], ref[1])
    p = softmax(rng.normal(size=(300, 4)))
    np.testing.assert_array_equal(A.badge(p, tiny, 15, seed=3), A.badge(p, ref_x, 15, seed=3))
    scores = rng.gamma(2.0, size=300)
    np.testing.assert_array_equal(A.weighted_kmeans(tiny, scores, 8), A.weighted_kmeans(ref_x, scores, 8))
    sub, sub_ref = tiny[:60], ref_x[:60]
    for kw, kw_scaled in (({"num_clusters": 5}, {"num_clusters": 5}),
                          ({"distance": 0.2}, {"distance": float(np.ldexp(0.2, exponent))})):
        np.testing.assert_array_equal(A.average_linkage_clusters(sub, **kw_scaled),
                                      A.average_linkage_clusters(sub_ref, **kw))
    # Strided input, and a threshold past float64's range once scaled up (every merge applies).
    np.testing.assert_array_equal(A.coreset(np.asfortranarray(tiny), None, 5)[0], A.coreset(ref_x, None, 5)[0])
    np.testing.assert_array_equal(A.average_linkage_clusters(sub, distance=1e300), np.zeros(60, np.int64))


def test_weighted_kmeans_depends_on_the_ratios_of_the_scores_only(rng):
    """Scores times 2^1022 (their sums and score x distance products overflowed float64) or 2^-1000
    give the same picks."""
    X = rng.normal(size=(400, 3))
    X[:, 0] += 4.0 * (np.arange(400) % 5)
    s = rng.random(400) + 0.5
    ref = A.weighted_kmeans(X, s, 6, prefilter=5)
    for e in (1022, -1000):
        np.testing.assert_array_equal(A.weighted_kmeans(X, np.ldexp(s, e), 6, prefilter=5), ref)
    blobs = np.r_[rng.normal(size=(5, 2)) * 0.01, rng.normal(size=(5, 2)) * 0.01 + 0.5]
    picks = A.weighted_kmeans(blobs, np.full(10, 1e308), 2, prefilter=5)
    assert sorted(p // 5 for p in picks) == [0, 1]  # one pick per blob


def test_badge_picks_near_the_embedding_norm_bound(rng):
    """Rows of norm 2^510 (squared norm 2^1020, under the 2^1021 bound): BADGE's sum of D² over the pool
    overflowed to +inf, so every seed drew the same last items; embeddings beyond 2^400 are now read
    scaled down to [1/2, 1), and give the picks of the same rows scaled down exactly."""
    h = rng.normal(size=(50, 4))
    h /= np.linalg.norm(h, axis=1, keepdims=True)
    big = np.ldexp(h, 510)
    assert (np.einsum("ij,ij->i", big, big) <= 2.0**1021).all()
    p = softmax(rng.normal(size=(50, 3)))
    picks = [tuple(A.badge(p, big, 3, seed=s)) for s in range(8)]
    assert len(set(picks)) > 1
    for s in range(8):
        np.testing.assert_array_equal(A.badge(p, big, 3, seed=s), A.badge(p, h, 3, seed=s))


def test_euclidean_picks_with_one_row_far_above_the_others(rng):
    """The scaling follows the largest row: rows 2^300 below it keep their distances (unscaled, at
    2^-400 · 2^-300 their squared differences would underflow)."""
    x = rng.normal(size=(200, 5))
    x *= 0.75 / np.abs(x).max()
    x[1:] = np.ldexp(x[1:], -300)
    x[0] = 0.75
    tiny = np.ldexp(x, -400)
    p = softmax(rng.normal(size=(200, 3)))
    np.testing.assert_array_equal(A.coreset(tiny, None, 10)[0], A.coreset(x, None, 10)[0])
    np.testing.assert_array_equal(A.badge(p, tiny, 10, seed=1), A.badge(p, x, 10, seed=1))
    w = rng.gamma(2.0, size=200)
    np.testing.assert_array_equal(A.weighted_kmeans(tiny, w, 6), A.weighted_kmeans(x, w, 6))
    np.testing.assert_array_equal(A.average_linkage_clusters(tiny[:50], num_clusters=4),
                                  A.average_linkage_clusters(x[:50], num_clusters=4))


def test_badge_bad_inputs(rng):
    p = softmax(rng.normal(size=(6, 3)))
    h = rng.normal(size=(6, 4))
    with pytest.raises(ValueError, match=r"b: expected 0 <= b <= 6"):
        A.badge(p, h, 7, seed=0)
    with pytest.raises(ValueError, match="embeddings: expected 6 rows"):
        A.badge(p, h[:5], 1, seed=0)
    with pytest.raises(ValueError, match="at least 2 classes"):
        A.badge(np.ones((6, 1)), h, 1, seed=0)
    with pytest.raises(ValueError, match="expected rank 2"):
        A.badge(p.reshape(-1), h, 1, seed=0)
    with pytest.raises(ValueError, match="empty"):
        A.badge(np.zeros((0, 3)), np.zeros((0, 4)), 0, seed=0)
    q = p.copy()
    q[3, 0] = np.nan
    with pytest.raises(ValueError, match=r"x: row \[3\] contains NaN"):
        A.badge(q, h, 1, seed=0)
    q = p.copy()
    q[2] = [1.2, -0.1, -0.1]
    with pytest.raises(ValueError, match=r"row \[2\] has a negative probability"):
        A.badge(q, h, 1, seed=0)
    q = p * 0.9
    with pytest.raises(ValueError, match=r"row \[0\] does not sum to 1"):
        A.badge(q, h, 1, seed=0)
    A.badge(q, h, 1, seed=0, input="logits")
    g = h.copy()
    g[5, 2] = np.inf
    with pytest.raises(ValueError, match=r"embeddings: row \[5\] contains NaN or Inf"):
        A.badge(p, g, 1, seed=0)
    with pytest.raises(ValueError, match="input"):
        A.badge(p, h, 1, seed=0, input="probabilities")
    with pytest.raises(TypeError, match="seed"):
        A.badge(p, h, 1, seed=1.5)
    with pytest.raises(ValueError, match="seed"):
        A.badge(p, h, 1, seed=-1)
    with pytest.raises(TypeError):
        A.badge(p, h, 1)  # seed is required
    with pytest.raises(TypeError, match="cannot allocate results"):
        A.badge(FakeCuda(), h, 1, seed=0)


# ---- CUDA (skipped without a GPU) --------------------------------------------------------------------


def _cuda_torch():
    if torch is None or not lw.built_with_cuda() or not torch.cuda.is_available():
        pytest.skip("needs a CUDA build and a GPU")
    return torch


def test_coreset_and_badge_on_cuda_equal_cpu(rng):
    t = _cuda_torch()
    x = rng.normal(size=(20_000, 48)).astype(np.float32)
    mask = np.zeros(20_000, bool)
    mask[::101] = True
    for metric in ("euclidean", "cosine"):
        for lab in (None, mask):
            ci, cr = A.coreset(x, lab, 30, metric=metric)
            gl = None if lab is None else t.from_numpy(lab).cuda()
            gi, gr = A.coreset(t.from_numpy(x).cuda(), gl, 30, metric=metric)
            assert gi.is_cuda and gr.is_cuda
            np.testing.assert_array_equal(gi.cpu().numpy(), ci)
            np.testing.assert_allclose(gr.cpu().numpy(), cr, rtol=1e-9)
    p = softmax(rng.normal(size=(20_000, 6)))
    want = A.badge(p, x, 40, seed=5)
    got = A.badge(t.from_numpy(p).cuda(), t.from_numpy(x).cuda(), 40, seed=5)
    assert got.is_cuda
    np.testing.assert_array_equal(got.cpu().numpy(), want)


def test_weighted_kmeans_and_cluster_margin_on_cuda_equal_cpu(rng):
    t = _cuda_torch()
    x = rng.normal(size=(8000, 40)).astype(np.float32)
    w = rng.random(8000)
    for prefilter in (1, 10):
        want = A.weighted_kmeans(x, w, 50, prefilter=prefilter)
        got = A.weighted_kmeans(t.from_numpy(x).cuda(), t.from_numpy(w).cuda(), 50, prefilter=prefilter)
        assert got.is_cuda
        np.testing.assert_array_equal(got.cpu().numpy(), want)
    ids = rng.integers(0, 17, 8000)
    lab = rng.random(8000) < 0.1
    want = A.cluster_margin(w, ids, 60, seed=9, labeled=lab)
    got = A.cluster_margin(t.from_numpy(w).cuda(), t.from_numpy(ids.astype(np.int32)).cuda(), 60, seed=9,
                           labeled=t.from_numpy(lab).cuda())
    assert got.is_cuda
    np.testing.assert_array_equal(got.cpu().numpy(), want)


# ---- weighted k-means hybrid (Zhdanov 2019) --------------------------------------------------------


def weighted_kmeans_ref(x, w, b, prefilter=10, max_iter=100):
    """The four steps of docs/acquisition.md ("Hybrid"), in float64 NumPy with explicit distances."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n = len(x)
    order = np.lexsort((np.arange(n), -w))  # score descending, then index
    m = min(n, prefilter * b)
    cand = order[:m]
    if m == b:
        return cand
    X, wc = x[cand], w[cand]
    sq = lambda a, c: ((a - c) ** 2).sum(axis=-1)  # noqa: E731
    centres = [0]
    d2 = sq(X, X[0])
    while len(centres) < b:
        val = wc * d2
        val[centres] = -1.0
        free = np.setdiff1d(np.arange(m), centres)
        if val[free].max() > 0:
            best = val[free].max()
            ties = free[val[free] == best]
            j = ties[np.argmin(cand[ties])]
        else:
            j = free.min()  # rank order
        centres.append(j)
        d2 = np.minimum(d2, sq(X, X[j]))
    C = X[centres].copy()
    dist = ((X[:, None, :] - C[None, :, :]) ** 2).sum(-1)
    assign = dist.argmin(axis=1)
    for _ in range(max_iter):
        for c in range(b):
            mem = assign == c
            if not mem.any():
                continue
            acc, plain, ws = np.zeros(X.shape[1]), np.zeros(X.shape[1]), 0.0
            for j in np.flatnonzero(mem):  # sequential sums in rank order, as documented
                acc += wc[j] * X[j]
                plain += X[j]
                ws += wc[j]
            C[c] = acc / ws if ws > 0 else plain / mem.sum()
        new = ((X[:, None, :] - C[None, :, :]) ** 2).sum(-1).argmin(axis=1)
        if np.array_equal(new, assign):
            break
        assign = new
    dist = ((X - C[assign]) ** 2).sum(-1)
    reps, weights = [], []
    for c in range(b):
        mem = np.flatnonzero(assign == c)
        if len(mem) == 0:
            continue
        dm = dist[mem]
        ties = mem[dm == dm.min()]
        reps.append(ties[np.argmin(cand[ties])])
        weights.append(wc[mem].sum())
    picked = [reps[i] for i in sorted(range(len(reps)), key=lambda i: (-weights[i], i))]
    rest = [j for j in range(m) if j not in set(picked)]
    return cand[np.array((picked + rest)[:b], dtype=np.int64)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weighted_kmeans_matches_reference(rng, dtype):
    for n, d, b, pre in [(50, 3, 4, 10), (300, 8, 12, 5), (400, 16, 30, 3), (20, 2, 20, 10)]:
        x = rng.normal(size=(n, d)).astype(dtype)
        w = rng.random(n).astype(dtype)
        got = A.weighted_kmeans(x, w, b, prefilter=pre)
        np.testing.assert_array_equal(got, weighted_kmeans_ref(x, w, b, pre), err_msg=f"n={n} d={d} b={b}")
        xf = np.asfortranarray(x)  # strided
        np.testing.assert_array_equal(A.weighted_kmeans(xf, w[::1], b, prefilter=pre), got)
        for it in (0, 1):
            np.testing.assert_array_equal(A.weighted_kmeans(x, w, b, prefilter=pre, max_iter=it),
                                          weighted_kmeans_ref(x, w, b, pre, it))


def test_weighted_kmeans_one_pick_per_blob_from_its_uncertain_side(rng):
    centres = np.array([[0, 0], [20, 0], [0, 20], [20, 20]], float)
    x = np.concatenate([c + rng.normal(size=(50, 2)) for c in centres])
    left = x[:, 0] < np.repeat(centres[:, 0], 50)
    w = np.where(left, 1.0, 0.05) * np.repeat([2.0, 1.0, 1.0, 1.0], 50) + rng.random(200) * 0.01
    got = A.weighted_kmeans(x, w, 4, prefilter=50)
    assert sorted(int(i) // 50 for i in got) == [0, 1, 2, 3]  # one pick per blob
    # weighted centroids sit ~0.7 sigma on the uncertain side: their nearest members almost always too
    assert sum(left[int(i)] for i in got) >= 3
    assert all(x[int(i), 0] < centres[int(i) // 50, 0] + 0.5 for i in got)
    assert {int(i) // 50 for i in A.top_k(w, 4)} == {0}  # uncertainty alone: four from one blob


def test_weighted_kmeans_degenerate(rng):
    x = rng.normal(size=(30, 4))
    w = rng.random(30)
    np.testing.assert_array_equal(A.weighted_kmeans(x, w, 7, prefilter=1), A.top_k(w, 7))
    np.testing.assert_array_equal(np.sort(A.weighted_kmeans(x, w, 30)), np.arange(30))
    assert A.weighted_kmeans(x, w, 0).shape == (0,)
    dup = np.repeat(x[:3], 10, axis=0)  # only 3 distinct points, 5 picks
    got = A.weighted_kmeans(dup, np.ones(30), 5)
    assert len(set(got.tolist())) == 5
    assert len({tuple(dup[i]) for i in got[:3]}) == 3  # the three distinct points come first
    np.testing.assert_array_equal(got, weighted_kmeans_ref(dup, np.ones(30), 5))
    zero = A.weighted_kmeans(x, np.zeros(30), 5)  # zero weights: plain k-means, index order ranks
    np.testing.assert_array_equal(zero, weighted_kmeans_ref(x, np.zeros(30), 5))


def test_weighted_kmeans_threads_and_torch(rng):
    x = rng.normal(size=(5000, 32)).astype(np.float32)
    w = rng.random(5000).astype(np.float32)
    out = []
    try:
        for threads in (1, 2, 3):
            lw.set_num_threads(threads)
            out.append(A.weighted_kmeans(x, w, 40))
    finally:
        lw.set_num_threads(0)
    for o in out[1:]:
        np.testing.assert_array_equal(o, out[0])
    if torch is not None:
        got = A.weighted_kmeans(torch.from_numpy(x), torch.from_numpy(w), 40)
        assert isinstance(got, torch.Tensor)
        np.testing.assert_array_equal(got.numpy(), out[0])


def test_weighted_kmeans_bad_inputs(rng):
    x = rng.normal(size=(6, 3))
    w = rng.random(6)
    with pytest.raises(ValueError, match=r"b: expected 0 <= b <= 6"):
        A.weighted_kmeans(x, w, 7)
    with pytest.raises(ValueError, match=r"scores: expected shape \[6\]"):
        A.weighted_kmeans(x, w[:5], 2)
    bad = w.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match=r"scores: \[3\] is nan"):
        A.weighted_kmeans(x, bad, 2)
    bad[3] = -0.5
    with pytest.raises(ValueError, match=r"scores: \[3\] = -0.5 is negative"):
        A.weighted_kmeans(x, bad, 2)
    y = x.copy()
    y[2, 0] = np.inf
    with pytest.raises(ValueError, match=r"features: row \[2\] contains NaN or Inf"):
        A.weighted_kmeans(y, w, 2)
    y = x.copy()
    y[4] = 1e300  # distances to it overflow (a nearest centre at +inf read out of bounds before)
    with pytest.raises(ValueError, match=r"features: row \[4\] is too large: its squared norm exceeds 2.2e307"):
        A.weighted_kmeans(y, w, 2)
    with pytest.raises(ValueError, match=r"prefilter: expected an integer in \[1, "):
        A.weighted_kmeans(x, w, 2, prefilter=0)
    with pytest.raises(ValueError, match=r"max_iter: expected an integer in \[0, "):
        A.weighted_kmeans(x, w, 2, max_iter=-1)
    with pytest.raises(TypeError, match="prefilter: expected an integer"):
        A.weighted_kmeans(x, w, 2, prefilter=2.5)
    with pytest.raises(TypeError, match="scores: expected dtype float32 or float64"):
        A.weighted_kmeans(x, np.ones(6, np.int64), 2)
    with pytest.raises(ValueError, match="expected rank 2"):
        A.weighted_kmeans(np.zeros(6), w, 1)
    with pytest.raises(TypeError, match="cannot allocate results"):  # a GPU array of an unknown framework
        A.weighted_kmeans(FakeCuda(), w, 1)


@pytest.mark.parametrize("form", ["mask", "indices", "list"])
def test_badge_and_weighted_kmeans_skip_labelled_items(rng, form):
    n, c, d, b = 90, 4, 5, 12
    p = softmax(2 * rng.normal(size=(n, c)))
    h = rng.normal(size=(n, d))
    w = rng.random(n)
    taken = rng.random(n) < 0.4
    lab = {"mask": taken, "indices": np.flatnonzero(taken), "list": np.flatnonzero(taken).tolist()}[form]
    rows = np.flatnonzero(~taken)
    seed = int(rng.integers(0, 2**63))
    # the references on the unlabelled rows, mapped back to pool indices
    got = A.badge(p, h, b, seed=seed, labeled=lab)
    np.testing.assert_array_equal(got, rows[badge_ref(p[rows], h[rows], b, seed)])
    assert not taken[got].any()
    got = A.weighted_kmeans(h, w, b, prefilter=3, labeled=lab)
    np.testing.assert_array_equal(got, rows[weighted_kmeans_ref(h[rows], w[rows], b, 3)])
    assert not taken[got].any()
    # b counts the unlabelled items; an all-labelled pool and bad indices are named
    u = int((~taken).sum())
    assert np.array_equal(np.sort(A.badge(p, h, u, seed=1, labeled=lab)), rows)
    with pytest.raises(ValueError, match=rf"b: expected 0 <= b <= {u} \(the number of unlabelled items\)"):
        A.badge(p, h, u + 1, seed=1, labeled=lab)
    with pytest.raises(ValueError, match=rf"b: expected 0 <= b <= {u} \(the number of unlabelled items\)"):
        A.weighted_kmeans(h, w, u + 1, labeled=lab)
    with pytest.raises(ValueError, match=f"labeled: every one of the {n} items is labelled"):
        A.badge(p, h, 1, seed=1, labeled=np.ones(n, bool))
    with pytest.raises(ValueError, match=rf"labeled: index \[1\] = {n} is outside \[0, {n}\)"):
        A.weighted_kmeans(h, w, 1, labeled=np.array([0, n]))
    with pytest.raises(ValueError, match=r"labeled: a mask must have one entry per row"):
        A.badge(p, h, 1, seed=1, labeled=np.zeros(n - 1, bool))
    # a fault is reported in the caller's rows and shapes, not the unlabelled subset's
    bad_row = int(rows[-1])
    q = p.copy()
    q[bad_row] = np.nan
    with pytest.raises(ValueError, match=rf"x: row \[{bad_row}\] contains NaN or Inf"):
        A.badge(q, h, 2, seed=1, labeled=lab)
    ws = w.copy()
    ws[bad_row] = -1.0
    with pytest.raises(ValueError, match=rf"scores: \[{bad_row}\] = -1 is negative"):
        A.weighted_kmeans(h, ws, 2, labeled=lab)
    with pytest.raises(ValueError, match=rf"scores: expected shape \[{n}\]"):
        A.weighted_kmeans(h, w[:, None], 2, labeled=lab)
    # an empty pool is named as without labeled=; empty sets of any dtype mean nothing labelled
    with pytest.raises(ValueError, match=r"x: the pool is empty"):
        A.badge(p[:0], h[:0], 0, seed=1, labeled=[])
    for empty in ([], np.array([]), np.zeros(0, bool)):
        np.testing.assert_array_equal(A.weighted_kmeans(h, w, 3, labeled=empty), A.weighted_kmeans(h, w, 3))
    with pytest.raises(ValueError, match="labeled: index 9223372036854775808 is beyond the int64 range"):
        A.weighted_kmeans(h, w, 3, labeled=np.array([2**63], np.uint64))
    if torch is not None:
        np.testing.assert_array_equal(A.weighted_kmeans(h, w, 3, labeled=torch.tensor([])), A.weighted_kmeans(h, w, 3))
        tl = torch.from_numpy(taken) if form == "mask" else torch.from_numpy(np.flatnonzero(taken))
        got = A.badge(torch.from_numpy(p), torch.from_numpy(h), b, seed=seed, labeled=tl)
        assert isinstance(got, torch.Tensor)
        np.testing.assert_array_equal(got.numpy(), A.badge(p, h, b, seed=seed, labeled=lab))
