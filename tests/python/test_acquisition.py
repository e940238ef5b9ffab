"""labelwise.acquisition: top-k against a stable argsort, the sampling law of the stochastic modes,
determinism across thread counts, the shard merge, frameworks / devices and every bad input."""

import itertools

import numpy as np
import pytest
from scipy import stats

import labelwise as lw
from labelwise import acquisition as A

MODES = ("power", "softmax", "softrank")


def brute_top(s, b):
    """Stable argsort by value descending (ties by the lower index; -0.0 == +0.0)."""
    return np.argsort(-np.asarray(s, dtype=np.float64).reshape(-1), kind="stable")[:b]


def tie_heavy(rng, n, dtype=np.float64):
    kind = rng.integers(0, 10, n)
    s = rng.normal(size=n)
    s[kind < 5] = rng.integers(-3, 4, (kind < 5).sum())
    s[kind == 5] = np.inf
    s[kind == 6] = -np.inf
    s[kind == 7] = -0.0
    return s.astype(dtype)


def ranks_of(s):
    r = np.empty(len(s), dtype=np.int64)
    r[brute_top(s, len(s))] = np.arange(1, len(s) + 1)
    return r


def weights(s, mode, beta):
    s = np.asarray(s, dtype=np.float64)
    if mode == "power":
        return s**beta
    if mode == "softmax":
        return np.exp(beta * s)
    return ranks_of(s).astype(np.float64) ** -beta


def binomial_consistent(count, trials, p):
    """Per entry: both exact tails of Binomial(trials, p) at the observed count above 1e-10, so a correct
    sampler fails a run's checks with probability below 1e-8 (a normal 5-sigma band is far looser for
    small p, where the binomial tail is heavy)."""
    count = np.asarray(count)
    return (stats.binom.cdf(count, trials, p) > 1e-10) & (stats.binom.sf(count - 1, trials, p) > 1e-10)


# ---- top_k -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 2, 9, 1000, 100_003])
def test_top_k_equals_stable_argsort(rng, dtype, n):
    s = tie_heavy(rng, n, dtype)
    for b in {0, 1, n // 2, n, int(rng.integers(0, n + 1))}:
        idx, val = A.top_k(s, b, return_values=True)
        assert idx.dtype == np.int64 and idx.shape == (b,)
        assert val.dtype == dtype
        np.testing.assert_array_equal(idx, brute_top(s, b))
        np.testing.assert_array_equal(val, s[idx])


def test_top_k_maps_strides_and_offset(rng):
    seg = tie_heavy(rng, 2 * 13 * 17).reshape(2, 13, 17)  # a per-pixel map [N, H, W]
    want = brute_top(seg, 50)
    np.testing.assert_array_equal(A.top_k(seg, 50), want)
    # The same logical map stored transposed, read in place through its strides.
    t = np.ascontiguousarray(seg.transpose(2, 1, 0)).transpose(2, 1, 0)
    assert not t.flags.c_contiguous
    np.testing.assert_array_equal(A.top_k(t, 50), want)
    coords = np.unravel_index(want, seg.shape)
    np.testing.assert_array_equal(seg[coords], np.sort(seg.reshape(-1))[::-1][:50])
    # Reversed and every-other views, read-only memory, lists.
    flat = seg.reshape(-1)
    rev = flat[::-1]
    rev.setflags(write=False)
    np.testing.assert_array_equal(A.top_k(rev, 20), brute_top(rev, 20))
    np.testing.assert_array_equal(A.top_k(flat[::3], 20), brute_top(flat[::3], 20))
    np.testing.assert_array_equal(A.top_k(flat.tolist(), 20), brute_top(flat, 20))
    np.testing.assert_array_equal(A.top_k(flat, 20, index_offset=1000), brute_top(flat, 20) + 1000)


# ---- stochastic ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_stochastic_same_seed_same_batch_on_any_thread_count(rng, mode):
    s = rng.uniform(0, 4, 250_000)
    seed = int(rng.integers(0, 2**63))
    batches = []
    try:
        for threads in (1, 2, 5):
            lw.set_num_threads(threads)
            batches.append(A.stochastic(s, 500, mode=mode, temperature=0.6, seed=seed))
    finally:
        lw.set_num_threads(0)
    for other in batches[1:]:
        np.testing.assert_array_equal(other, batches[0])
    assert len(np.unique(batches[0])) == 500
    assert not np.array_equal(A.stochastic(s, 500, mode=mode, temperature=0.6, seed=seed + 1), batches[0])


@pytest.mark.parametrize("mode", MODES)
def test_stochastic_is_top_k_of_the_keys(rng, mode):
    s = rng.uniform(0, 3, 5000)
    s[7] = 0.0
    seed = int(rng.integers(0, 2**64, dtype=np.uint64))
    keys = A.stochastic_keys(s, mode=mode, temperature=0.8, seed=seed)
    assert keys.dtype == np.float64 and keys.shape == s.shape
    idx, k = A.stochastic(s, 80, mode=mode, temperature=0.8, seed=seed, return_keys=True)
    np.testing.assert_array_equal(idx, brute_top(keys, 80))
    np.testing.assert_array_equal(k, keys[idx])
    # The keys are ln w + Gumbel noise: the noise is independent of the mode.
    beta = 1 / 0.8
    with np.errstate(divide="ignore"):
        log_w = np.log(weights(s, mode, beta))
    other = A.stochastic_keys(s, mode="softmax", temperature=0.8, seed=seed) - beta * s
    fin = np.isfinite(log_w)
    np.testing.assert_allclose(keys[fin] - log_w[fin], other[fin], rtol=0, atol=1e-12)
    assert np.all(keys[~fin] == -np.inf)


@pytest.mark.parametrize("mode,temperature", [(m, t) for m in MODES for t in (1.0, 0.5)])
def test_first_pick_frequencies_match_the_weights(rng, mode, temperature):
    s = np.array([0.1, 0.4, 0.4, 1.0, 0.0, 2.5])
    trials = 10000
    base = int(rng.integers(0, 2**62))
    first = np.array([A.stochastic(s, 1, mode=mode, temperature=temperature, seed=base + t)[0] for t in range(trials)])
    w = weights(s, mode, 1 / temperature)
    p = w / w.sum()
    count = np.bincount(first, minlength=len(s))
    assert binomial_consistent(count, trials, p).all(), (count, trials * p)


@pytest.mark.parametrize("mode", MODES)
def test_inclusion_frequencies_follow_plackett_luce(rng, mode):
    s = np.array([0.3, 1.0, 1.7, 0.6])
    w = weights(s, mode, 1.0)
    W = w.sum()
    incl = np.zeros(4)
    for a, c in itertools.permutations(range(4), 2):  # exact law by enumeration of ordered pairs
        p = w[a] / W * w[c] / (W - w[a])
        incl[a] += p
        incl[c] += p
    assert np.isclose(incl.sum(), 2.0)
    trials = 10000
    base = int(rng.integers(0, 2**62))
    count = np.zeros(4)
    for t in range(trials):
        count[A.stochastic(s, 2, mode=mode, seed=base + 7919 * t)] += 1
    assert binomial_consistent(count, trials, incl).all(), (count, trials * incl)


def test_zero_weight_last_infinite_weight_first():
    s = np.array([0.0, 1.0, 0.0, 2.0, 0.0])
    for seed in range(30):
        np.testing.assert_array_equal(A.stochastic(s, 5, seed=seed)[2:], [0, 2, 4])
    np.testing.assert_array_equal(A.stochastic([1.0, np.inf, 3.0, np.inf], 2, seed=1), [1, 3])
    np.testing.assert_array_equal(A.stochastic([-np.inf, -1.0, -np.inf], 3, mode="softmax", seed=1), [1, 0, 2])


# ---- shard merge ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES + ("top_k",))
def test_shard_merge_equals_one_machine(rng, mode):
    n, b = 5003, 100
    s = rng.integers(0, 60, n) * 0.1  # ties across shards
    cuts = [0, 37, 1800, 3000, n]  # uneven, the first shard smaller than b
    seed = int(rng.integers(0, 2**63))
    g_ranks = ranks_of(s)
    vals, ids = [], []
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        bs = min(b, hi - lo)
        if mode == "top_k":
            i, v = A.top_k(s[lo:hi], bs, index_offset=lo, return_values=True)
        else:
            ranks = g_ranks[lo:hi] if mode == "softrank" else None
            i, v = A.stochastic(
                s[lo:hi], bs, mode=mode, temperature=0.4, seed=seed, index_offset=lo, ranks=ranks, return_keys=True
            )
        vals.append(v)
        ids.append(i)
    merged = A.merge_top_k(vals, ids, b)
    whole = A.top_k(s, b) if mode == "top_k" else A.stochastic(s, b, mode=mode, temperature=0.4, seed=seed)
    np.testing.assert_array_equal(merged, whole)
    merged2, mv = A.merge_top_k(np.concatenate(vals), np.concatenate(ids), b, return_values=True)
    np.testing.assert_array_equal(merged2, whole)
    assert np.all(np.diff(mv) <= 0)


def test_merge_rejects_duplicates_and_negative_indices():
    v = np.array([1.0, 3.0, 3.0, 2.0])
    np.testing.assert_array_equal(A.merge_top_k(v, np.array([40, 12, 7, 99]), 3), [7, 12, 99])
    with pytest.raises(ValueError, match="global index 12 appears more than once"):
        A.merge_top_k(v, np.array([40, 12, 12, 99]), 3)
    with pytest.raises(ValueError, match=r"indices: entry \[3\] is negative"):
        A.merge_top_k(v, np.array([40, 12, 7, -1]), 3)
    with pytest.raises(ValueError, match="values: expected rank 1"):
        A.merge_top_k(v.reshape(2, 2), np.arange(4).reshape(2, 2), 1)
    # any integer dtype is read as int64 (a hand-made concatenation is often int32); floats are refused
    for dt in (np.int8, np.int16, np.int32, np.uint16, np.uint32, np.uint64):
        np.testing.assert_array_equal(A.merge_top_k(v, np.array([40, 12, 7, 99], dtype=dt), 3), [7, 12, 99])
    with pytest.raises(TypeError, match="indices: expected dtype int64"):
        A.merge_top_k(v, np.arange(4, dtype=np.float64), 1)
    with pytest.raises(ValueError, match="indices: index 18446744073709551615 is beyond the int64 range"):
        A.merge_top_k(v, np.array([0, 1, 2, 2**64 - 1], dtype=np.uint64), 1)
    # b = 0: every shard asked for none, so the union is empty; the merge is the empty batch, as top_k(s, 0)
    parts = [A.top_k(v[:2], 0, return_values=True), A.top_k(v[2:], 0, index_offset=2, return_values=True)]
    out, out_v = A.merge_top_k([p[1] for p in parts], [p[0] for p in parts], 0, return_values=True)
    assert out.shape == (0,) and out.dtype == np.int64 and out_v.shape == (0,)
    with pytest.raises(ValueError, match="values: the pool is empty .*only b = 0"):
        A.merge_top_k(v[:0], np.zeros(0, np.int64), 1)


# ---- frameworks and devices ------------------------------------------------------------------------


def test_torch_in_torch_out(rng):
    torch = pytest.importorskip("torch")
    s = torch.from_numpy(tie_heavy(rng, 3000).astype(np.float32))
    idx, val = A.top_k(s, 40, return_values=True)
    assert isinstance(idx, torch.Tensor) and idx.dtype == torch.int64 and val.dtype == torch.float32
    np.testing.assert_array_equal(idx.numpy(), brute_top(s.numpy(), 40))
    pos = torch.rand(3000, dtype=torch.float64)
    t = A.stochastic(pos, 30, seed=11)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.int64
    np.testing.assert_array_equal(t.numpy(), A.stochastic(pos.numpy(), 30, seed=11))
    k = A.stochastic_keys(pos[::2], seed=3, mode="softrank")  # non-contiguous view
    assert isinstance(k, torch.Tensor) and k.dtype == torch.float64
    np.testing.assert_array_equal(k.numpy(), A.stochastic_keys(pos.numpy()[::2], seed=3, mode="softrank"))


def _cuda_torch():
    torch = pytest.importorskip("torch")
    if not lw.built_with_cuda():
        pytest.skip("built without CUDA")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch


def test_torch_cuda_equals_cpu(rng):
    torch = _cuda_torch()
    s = tie_heavy(rng, 1_000_003, np.float32)
    idx = A.top_k(torch.from_numpy(s).cuda(), 1000)
    assert idx.is_cuda and idx.dtype == torch.int64
    np.testing.assert_array_equal(idx.cpu().numpy(), A.top_k(s, 1000))
    pos = np.abs(s)
    pos[~np.isfinite(pos)] = 1.0
    for mode in MODES:
        g, gk = A.stochastic(torch.from_numpy(pos).cuda(), 500, mode=mode, seed=9, return_keys=True)
        c, ck = A.stochastic(pos, 500, mode=mode, seed=9, return_keys=True)
        np.testing.assert_array_equal(g.cpu().numpy(), c)
        np.testing.assert_array_equal(gk.cpu().numpy(), ck)  # bit-identical keys
        keys = A.stochastic_keys(torch.from_numpy(pos).cuda(), mode=mode, seed=9)
        np.testing.assert_array_equal(keys.cpu().numpy(), A.stochastic_keys(pos, mode=mode, seed=9))


def test_cupy_if_available(rng):
    cupy = pytest.importorskip("cupy")
    try:
        cupy.cuda.runtime.getDeviceCount()
    except Exception:
        pytest.skip("no CUDA device")
    s = rng.uniform(0, 1, 10000)
    got = A.stochastic(cupy.asarray(s), 50, seed=4)
    assert isinstance(got, cupy.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(got), A.stochastic(s, 50, seed=4))


# ---- bad input --------------------------------------------------------------------------------------


def test_bad_input_errors():
    s = np.array([0.5, 0.1, 0.9, 0.3])
    with pytest.raises(ValueError, match=r"b: expected 0 <= b <= 4.*b = 5"):
        A.top_k(s, 5)
    with pytest.raises(ValueError, match=r"b = 5"):
        A.stochastic(s, 5, seed=0)
    with pytest.raises(ValueError, match=r"b = -1"):
        A.top_k(s, -1)
    assert A.top_k(s, 0).shape == (0,) and A.stochastic(s, 0, seed=1).shape == (0,)  # documented: empty batch
    with pytest.raises(ValueError, match="the pool is empty"):
        A.top_k(np.zeros(0), 0)
    with pytest.raises(ValueError, match="the pool is empty"):
        A.stochastic(np.zeros(0), 0, seed=1)
    bad = s.copy()
    bad[[1, 3]] = np.nan
    for call in (lambda: A.top_k(bad, 2), lambda: A.top_k(bad, 0)):
        with pytest.raises(ValueError, match=r"scores: item \[1\] is NaN"):
            call()
    for mode in MODES:
        with pytest.raises(ValueError, match=r"item \[1\] is NaN"):
            A.stochastic(bad, 2, mode=mode, seed=0)
    seg = np.ones((2, 3, 4), dtype=np.float32)
    seg[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"item \[23\] \(at \[1, 2, 3\]"):
        A.top_k(seg, 1)
    with pytest.raises(ValueError, match=r"item \[2\] is negative.*power"):
        A.stochastic(np.array([1.0, 2.0, -0.5]), 1, seed=0)
    A.stochastic(np.array([1.0, 2.0, -0.5]), 1, mode="softmax", seed=0)  # fine in softmax mode
    # softmax: a finite score whose score / temperature overflows would get an infinite weight (ordered by
    # index, not by score); +inf itself is a documented infinite weight
    with pytest.raises(ValueError, match=r"scores: item \[1\] times 1 / temperature overflows a double"):
        A.stochastic(np.array([1.0, 1e300, 2.0]), 2, mode="softmax", temperature=1e-10, seed=1)
    assert A.stochastic(np.array([1.0, np.inf, 2.0]), 1, mode="softmax", seed=1)[0] == 1
    # power: beta * ln s overflows at temperatures below about 4e-306 (both keys were +inf, ordered by index)
    with pytest.raises(ValueError, match=r"scores: item \[1\]'s logarithm times 1 / temperature overflows a double "
                                         r"\(mode=\"power\"\)"):
        A.stochastic(np.array([1.0, 1e308]), 2, temperature=1e-308, seed=0)
    assert A.stochastic(np.array([1.0, np.inf, 2.0]), 1, seed=1)[0] == 1  # +inf: an infinite weight
    # overflowing downwards is weight 0 (the limit, as for -inf): last, not an error
    assert A.stochastic(np.array([1.0, -1e300, 2.0]), 3, mode="softmax", temperature=1e-10, seed=1)[2] == 1
    for t in (0.0, -1.0, np.inf, np.nan):
        with pytest.raises(ValueError, match="temperature: expected a finite value > 0"):
            A.stochastic(s, 1, temperature=t, seed=0)
    with pytest.raises(ValueError, match="expected rank >= 1"):
        A.top_k(np.float64(3.0), 1)
    with pytest.raises(ValueError, match="expected rank >= 1"):
        A.stochastic(np.array(3.0), 1, seed=0)
    with pytest.raises(TypeError, match="scores: expected dtype float32 or float64, got int64"):
        A.top_k(np.arange(4), 1)
    with pytest.raises(TypeError, match="float16"):
        A.stochastic(s.astype(np.float16), 1, seed=0)
    with pytest.raises(ValueError, match="mode: expected"):
        A.stochastic(s, 1, mode="gumbel", seed=0)
    with pytest.raises(TypeError):
        A.stochastic(s, 1)  # seed is required, keyword-only
    with pytest.raises(TypeError):
        A.stochastic(s, 1, "power", 1.0, 3)
    with pytest.raises(TypeError, match="seed: expected an integer"):
        A.stochastic(s, 1, seed=1.5)
    with pytest.raises(ValueError, match="seed: expected 0 <= seed < 2\\*\\*64"):
        A.stochastic(s, 1, seed=-1)
    with pytest.raises(ValueError, match="index_offset: expected >= 0"):
        A.top_k(s, 1, index_offset=-1)
    with pytest.raises(ValueError, match="needs the items' global ranks"):
        A.stochastic(s, 1, mode="softrank", seed=0, index_offset=10)
    with pytest.raises(ValueError, match=r"ranks: only used by mode=\"softrank\""):
        A.stochastic(s, 1, seed=0, ranks=np.arange(1, 5))
    with pytest.raises(ValueError, match=r"ranks: item \[0\] is below 1"):
        A.stochastic(s, 1, mode="softrank", seed=0, ranks=np.arange(4))
    with pytest.raises(TypeError, match="ranks: expected dtype int64"):
        A.stochastic(s, 1, mode="softrank", seed=0, ranks=np.arange(1, 5, dtype=np.int32))


def test_front_door_argument_kinds(rng):
    """Arguments of the wrong kind are named errors, consistently across the front doors."""
    s = rng.random(10)
    x = rng.random((10, 4))
    with pytest.raises(TypeError, match="b: expected an integer, got bool"):
        A.top_k(s, True)
    with pytest.raises(TypeError, match="b: expected an integer, got bool"):
        A.top_k(s, np.bool_(True))
    assert A.top_k(s, np.int64(2)).shape == (2,)
    with pytest.raises(TypeError, match="index_offset: expected an integer, got bool"):
        A.top_k(s, 1, index_offset=True)
    int64 = r"expected an integer in \[-9223372036854775808, 9223372036854775807\]"
    with pytest.raises(ValueError, match=rf"index_offset: {int64}, got 9223372036854775808"):
        A.top_k(s, 1, index_offset=2**63)
    with pytest.raises(ValueError, match=rf"b: {int64}, got 1180591620717411303424"):
        A.top_k(s, 2**70)
    with pytest.raises(TypeError, match="temperature: expected a real number, got str"):
        A.stochastic(s, 2, seed=0, temperature="2")
    p = np.full((4, 3, 2), 0.5)
    with pytest.raises(TypeError, match="sample_axis: expected an integer, got float"):
        A.batchbald(p, 2, num_samples=100, seed=0, sample_axis=1.5)
    with pytest.raises(TypeError, match="num_samples: expected an integer, got bool"):
        A.batchbald(p, 2, num_samples=True, seed=0)
    # an integer 0/1 mask would read as the indices 0 and 1: an error, not a wrong pick
    mask = np.zeros(10, bool)
    mask[[1, 3]] = True
    picks = A.coreset(x, mask, 3)[0]
    assert not set(picks.tolist()) & {1, 3}
    np.testing.assert_array_equal(A.coreset(x, np.flatnonzero(mask), 3)[0], picks)
    for bad in (mask.astype(int), mask.astype(np.int32)):
        with pytest.raises(ValueError, match="labeled: an integer 0/1 vector of length N = 10"):
            A.coreset(x, bad, 3)
        with pytest.raises(ValueError, match="labeled: an integer 0/1 vector"):
            A.cluster_margin(s, np.arange(10) % 3, 2, seed=0, labeled=bad)
    for n in (1, 2):  # also for the smallest pools (they were read as indices)
        with pytest.raises(ValueError, match=f"labeled: an integer 0/1 vector of length N = {n}"):
            A.coreset(x[:n], np.zeros(n, np.int64), 1)
    # b far beyond the pool: the core's error, without allocating b outputs first
    with pytest.raises(ValueError, match="b: expected 0 <= b <= 10"):
        A.cluster_margin(s, np.arange(10) % 3, 2**40, seed=0)
    # merge_top_k: shard lists must be non-empty and of one framework
    with pytest.raises(ValueError, match="values: an empty list of shards"):
        A.merge_top_k([], [], 0)
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="values: the shards mix frameworks"):
        A.merge_top_k([s[:5], torch.from_numpy(s[5:])], [np.arange(5), np.arange(5, 10)], 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_top_k_block_skip_keeps_ties_and_late_nans(rng, dtype):
    """Blocks are skipped once a worker holds b candidates and none of the block reaches its threshold:
    equal scores later in the pool (ties go to the lower index), -0.0 against +0.0, and a NaN far behind
    a full heap must all still be seen."""
    for _ in range(20):
        n = int(rng.integers(5000, 60000))
        s = rng.integers(-3, 4, size=n).astype(dtype)  # heavy ties
        s[rng.random(n) < 0.1] = -0.0
        b = int(rng.integers(1, 50))
        want = np.lexsort((np.arange(n), -s.astype(np.float64)))[:b]
        np.testing.assert_array_equal(A.top_k(s, b), want)
        late = s.copy()
        j = int(rng.integers(n // 2, n))
        late[j] = np.nan
        with pytest.raises(ValueError, match=rf"scores: item \[{j}\] is NaN"):
            A.top_k(late, b)
