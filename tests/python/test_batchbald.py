"""labelwise.acquisition.batchbald: exact joint entropies by enumeration, brute-force greedy, BALD for
b = 1, the same picks as batchbald-redux in the exact regime, the sampled regime against the exact
value, determinism across thread counts, frameworks and bad inputs."""

import os
import re

import numpy as np
import pytest

import labelwise as lw
from labelwise import acquisition as A
from labelwise import uncertainty as U

os.environ.setdefault("TQDM_DISABLE", "1")


def make_probs(rng, n, k, c, spread=1.5):
    mu = 2.0 * rng.normal(size=(n, 1, c))
    noise = spread * np.abs(rng.normal(size=(n, 1, 1)))
    logits = mu + noise * rng.normal(size=(n, k, c))
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def joint_entropy(p, items):
    """-Σ_y p(y) ln p(y) over every configuration y of `items` (explicit enumeration, the C^m
    configurations as one axis), p(y) = mean_k Π_i p[i, k, y_i]."""
    K = p.shape[1]
    joint = np.ones((K, 1))
    for i in items:
        joint = (joint[:, :, None] * p[i][:, None, :]).reshape(K, -1)
    py = joint.mean(axis=0)
    py = py[py > 0]
    return float(-(py * np.log(py)).sum())


def cond_entropy(p, n):
    q = p[n]
    return -np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0)) / p.shape[1]


def brute_greedy(p, b):
    batch, scores, ce_b = [], [], 0.0
    for _ in range(b):
        vals = [
            -np.inf if n in batch else joint_entropy(p, batch + [n]) - ce_b - cond_entropy(p, n)
            for n in range(p.shape[0])
        ]
        best = int(np.argmax(vals))  # first maximum: ties by the lower index
        batch.append(best)
        scores.append(vals[best])
        ce_b += cond_entropy(p, best)
    return np.array(batch), np.array(scores)


@pytest.mark.parametrize("rep", range(5))
def test_exact_matches_brute_force(rng, rep):
    p = make_probs(rng, 6, 4, 3)
    want_i, want_s = brute_greedy(p, 3)
    idx, sc = A.batchbald(p, 3, num_samples=1000, seed=0)
    assert idx.dtype == np.int64 and sc.dtype == np.float64 and idx.shape == (3,)
    np.testing.assert_array_equal(idx, want_i)
    np.testing.assert_allclose(sc, want_s, rtol=1e-12, atol=1e-12)
    # cumulative joint MI of the picks so far
    for i in range(3):
        items = list(want_i[: i + 1])
        mi = joint_entropy(p, items) - sum(cond_entropy(p, j) for j in items)
        assert sc[i] == pytest.approx(mi, abs=1e-12)


_KERNEL_CHILD = """
import sys
import numpy as np
from labelwise import acquisition as A
d = np.load(sys.argv[1])
out = {}
for name in ("small", "pool"):
    out["i_" + name], out["s_" + name] = A.batchbald(d[name], int(d["b_" + name]), num_samples=int(d["ns"]), seed=3)
np.savez(sys.argv[2], **out)
"""


@pytest.mark.parametrize("env", [{"LABELWISE_BATCHBALD_SCALAR": "1"}, {"LABELWISE_CPU_ISA": "avx2"}, {}])
def test_every_cpu_kernel_matches_brute_force(rng, tmp_path, env):
    """The row kernel is chosen once per process (AVX-512, AVX2 + FMA or the portable loop): each one,
    forced in a child process, gives the brute-force greedy picks and scores (C^m rows up to 1000 rows,
    the cascade's coarse levels, candidate groups of 16 and the padding of 4- and 8-row blocks)."""
    import subprocess
    import sys

    small = make_probs(rng, 7, 5, 3)
    pool = make_probs(rng, 60, 6, 10, spread=rng.choice([0.3, 1.5]))
    np.savez(tmp_path / "in.npz", small=small, pool=pool, b_small=4, b_pool=4, ns=1000)
    subprocess.run([sys.executable, "-c", _KERNEL_CHILD, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                   env=dict({k: v for k, v in os.environ.items()
                             if k not in ("LABELWISE_CPU_ISA", "LABELWISE_BATCHBALD_SCALAR")}, **env),
                   check=True, timeout=300)
    got = np.load(tmp_path / "out.npz")
    for name, p, b in (("small", small, 4), ("pool", pool, 4)):
        want_i, want_s = brute_greedy(p, b)
        np.testing.assert_array_equal(got["i_" + name], want_i, err_msg=name)
        np.testing.assert_allclose(got["s_" + name], want_s, rtol=1e-11, atol=1e-12, err_msg=name)


_FULL_CHILD = """
import sys
import numpy as np
from labelwise import acquisition as A
d = np.load(sys.argv[1])
i, s = A.batchbald(d["p"], int(d["b"]), num_samples=int(d["ns"]), seed=int(d["seed"]))
np.savez(sys.argv[2], i=i, s=s)
"""


@pytest.mark.parametrize("spread", [0.3, 1.5])
def test_pruned_search_equals_evaluating_every_candidate_in_the_sampled_regime(rng, tmp_path, spread):
    """In the sampled regime no brute force applies, but LABELWISE_BATCHBALD_FULL (read per call) evaluates
    every candidate on the same sampled table: the cascade's bounds (prefix, truncated and posterior
    levels) must give the same picks and the same score bits."""
    import subprocess
    import sys

    p = make_probs(rng, 300, 20, 10, spread=spread)
    np.savez(tmp_path / "in.npz", p=p, b=8, ns=2000, seed=int(rng.integers(2**62)))  # picks 5..8 sampled
    out = {}
    for name, extra in (("pruned", {}), ("full", {"LABELWISE_BATCHBALD_FULL": "1"})):
        env = {k: v for k, v in os.environ.items() if k != "LABELWISE_BATCHBALD_FULL"}
        subprocess.run([sys.executable, "-c", _FULL_CHILD, str(tmp_path / "in.npz"), str(tmp_path / f"{name}.npz")],
                       env=dict(env, **extra), check=True, timeout=300)
        out[name] = np.load(tmp_path / f"{name}.npz")
    np.testing.assert_array_equal(out["pruned"]["i"], out["full"]["i"])
    np.testing.assert_array_equal(out["pruned"]["s"], out["full"]["s"])


@pytest.mark.parametrize("case", ["growing", "saturated", "float32", "zeros"])
def test_every_cascade_level_bounds_every_candidate(rng, monkeypatch, case):
    """The search rarely shows a wrong bound (its probes often settle a step), so a test hook evaluates
    every level of the cascade (prefix, truncated, posterior) for every candidate at every step, exact
    and sampled, and raises if one falls below the candidate's exact value. A mutation that scaled the
    posterior levels' weights by 0.999 was caught here and not by the pick comparisons."""
    monkeypatch.setenv("LABELWISE_BATCHBALD_CHECK_BOUNDS", "1")
    p = make_probs(rng, 300, 20, 10, spread=0.3 if case == "growing" else 1.5)
    if case == "float32":  # rows normalised only to float32 (sums 1 +- ~1e-7), and perturbed within 1e-4
        p = (p * (1 + 1e-4 * rng.uniform(-1, 1, p.shape))).astype(np.float32)
        p /= p.sum(-1, keepdims=True)
    if case == "zeros":  # exact zeros and one-hot samples
        p[rng.random(p.shape[:2]) < 0.2] = np.eye(10)[0]
    idx, _ = A.batchbald(p, 8, num_samples=2000, seed=int(rng.integers(2**62)))  # picks 5..8 sampled
    assert len(set(idx.tolist())) == 8


def test_saturated_pool_matches_brute_force(rng):
    """Samples that disagree strongly: the joint MI saturates after a few picks, every candidate's gain is
    nearly 0, and the cascade must use its truncated levels (the heaviest of the 6^m table rows kept, the
    rest merged) to prune; the picks and scores still equal evaluating every candidate exactly."""
    p = make_probs(rng, 150, 20, 6, spread=1.5)
    want_i, want_s = brute_greedy(p, 5)
    idx, sc = A.batchbald(p, 5, num_samples=10000, seed=0)
    np.testing.assert_array_equal(idx, want_i)
    np.testing.assert_allclose(sc, want_s, rtol=1e-11, atol=1e-12)
    # The pruning cascade (built from 65 candidates on) in the sampled regime: the same bits on 1-3
    # threads (the small pools of the other thread tests never build it).
    got = []
    try:
        for t in (1, 2, 3):
            lw.set_num_threads(t)
            got.append(A.batchbald(p, 6, num_samples=300, seed=5))
    finally:
        lw.set_num_threads(0)
    for i2, s2 in got[1:]:
        np.testing.assert_array_equal(i2, got[0][0])
        np.testing.assert_array_equal(s2, got[0][1])


def test_b1_is_bald_argmax(rng):
    p = make_probs(rng, 300, 8, 6)
    idx, sc = A.batchbald(p, 1, num_samples=10, seed=0)
    bald = U.bald(p)
    assert idx[0] == int(np.argmax(bald))
    assert sc[0] == pytest.approx(bald[idx[0]], abs=1e-12)


def test_sampled_regime_close_to_exact_and_deterministic(rng):
    p = make_probs(rng, 10, 4, 8, spread=1.0)
    b = 7
    # Exact while 8^m <= 100000 (m <= 5: the first six scores, each adding one item to an exact joint),
    # then the 7th from 100000 sampled configurations of the first six. Its error over 200 random pools
    # (make_probs, spread 1): standard deviation 0.0067, largest 0.022; the bound 0.05 is 7.5 sigma.
    idx, sc = A.batchbald(p, b, num_samples=100_000, seed=3)
    for i in range(b):
        items = list(idx[: i + 1])
        mi = joint_entropy(p, items) - sum(cond_entropy(p, j) for j in items)
        assert sc[i] == pytest.approx(mi, abs=1e-10 if i <= 5 else 0.05)
    try:
        for t in (1, 2, 3):
            lw.set_num_threads(t)
            i2, s2 = A.batchbald(p, b, num_samples=100_000, seed=3)
            np.testing.assert_array_equal(i2, idx)
            np.testing.assert_array_equal(s2, sc)  # same bits
    finally:
        lw.set_num_threads(0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_same_picks_as_batchbald_redux_exact_regime(seed):
    bb = pytest.importorskip("batchbald_redux.batchbald")
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1000 + seed)
    N, K, C, b = 150, 10, 4, 6
    p = make_probs(rng, N, K, C, spread=[0.3, 1.0, 2.0, 1.5, 0.7][seed])
    ns = C ** (b - 1)  # every step exact (C^m <= num_samples for m <= b - 1)
    ref = bb.get_batchbald_batch(torch.from_numpy(np.log(p)), b, ns, dtype=torch.double)
    idx, sc = A.batchbald(p, b, num_samples=ns, seed=0)
    np.testing.assert_array_equal(idx, np.array(ref.indices))
    np.testing.assert_allclose(sc, np.array(ref.scores), rtol=1e-9, atol=1e-9)
    # the same through torch (results come back as torch tensors) and log-probabilities
    ti, ts = A.batchbald(torch.from_numpy(np.log(p)), b, num_samples=ns, seed=0, input="log_probs")
    assert isinstance(ti, torch.Tensor) and ti.dtype == torch.int64 and ts.dtype == torch.float64
    np.testing.assert_array_equal(ti.numpy(), idx)


def test_layouts_and_float32(rng):
    p = make_probs(rng, 40, 6, 5)
    idx, sc = A.batchbald(p, 4, num_samples=200, seed=0)
    knc = np.ascontiguousarray(p.transpose(1, 0, 2))
    i2, s2 = A.batchbald(knc, 4, num_samples=200, seed=0, sample_axis=0, class_axis=-1)
    np.testing.assert_array_equal(i2, idx)
    np.testing.assert_allclose(s2, sc, rtol=1e-12)
    baal = p.transpose(0, 2, 1)  # BaaL [N, C, K], read in place
    i3, _ = A.batchbald(baal, 4, num_samples=200, seed=0, sample_axis=-1, class_axis=1)
    np.testing.assert_array_equal(i3, idx)
    # float32: the picks and scores of the brute force over the float32-rounded probabilities (read as
    # given, widened exactly); 5^3 <= 200, so every step is exact
    p32 = p.astype(np.float32)
    want_i, want_s = brute_greedy(p32.astype(np.float64), 4)
    i4, s4 = A.batchbald(p32, 4, num_samples=200, seed=0)
    assert i4.dtype == np.int64 and s4.dtype == np.float64
    np.testing.assert_array_equal(i4, want_i)
    np.testing.assert_allclose(s4, want_s, rtol=1e-10, atol=1e-12)
    # the same through float32 logits (softmax in float64 of the float32 values)
    z32 = (np.log(p) + 2.0).astype(np.float32)
    z = z32.astype(np.float64)
    pz = np.exp(z - z.max(-1, keepdims=True))
    pz /= pz.sum(-1, keepdims=True)
    want_i, want_s = brute_greedy(pz, 4)
    i5, s5 = A.batchbald(z32, 4, num_samples=200, seed=0, input="logits")
    np.testing.assert_array_equal(i5, want_i)
    np.testing.assert_allclose(s5, want_s, rtol=1e-10, atol=1e-12)


def test_bad_inputs(rng):
    p = make_probs(rng, 5, 3, 3)
    with pytest.raises(ValueError, match="b: expected"):
        A.batchbald(p, 6, num_samples=10, seed=0)
    i, s = A.batchbald(p, 0, num_samples=10, seed=0)
    assert i.shape == (0,) and s.shape == (0,)
    i, _ = A.batchbald(p, 5, num_samples=10, seed=0)
    assert sorted(i.tolist()) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="num_samples"):
        A.batchbald(p, 2, num_samples=0, seed=0)
    with pytest.raises(ValueError, match="at least 2 samples"):
        A.batchbald(p[:, :1], 1, num_samples=10, seed=0)
    with pytest.raises(ValueError, match="empty"):
        A.batchbald(p[:0], 0, num_samples=10, seed=0)
    with pytest.raises(ValueError, match="rank 3"):
        A.batchbald(p[:, 0], 1, num_samples=10, seed=0)
    bad = p.copy()
    bad[2, 1, 0] = np.nan
    with pytest.raises(ValueError, match=re.escape("x: item [2] of x contains NaN or Inf (input=probabilities)")):
        A.batchbald(bad, 1, num_samples=10, seed=0)
    bad = p.copy()
    bad[2, 1, 0] += 0.2
    with pytest.raises(ValueError, match=re.escape("x: item [2] of x has probabilities that do not sum to 1")):
        A.batchbald(bad, 1, num_samples=10, seed=0)
    with pytest.raises(TypeError, match="x: expected dtype float32 or float64, got int64"):
        A.batchbald(p.astype(np.int64), 1, num_samples=10, seed=0)
    with pytest.raises(ValueError, match="input: expected 'probs', 'log_probs' or 'logits', got 'nope'"):
        A.batchbald(p, 1, num_samples=10, seed=0, input="nope")
    with pytest.raises(ValueError, match=re.escape("seed: expected 0 <= seed < 2**64, got -1")):
        A.batchbald(p, 1, num_samples=10, seed=-1)
    with pytest.raises(ValueError, match=re.escape("num_samples: expected 1 <= num_samples <= 2^31, got 2147483649")):
        A.batchbald(p, 1, num_samples=2**31 + 1, seed=0)


def test_cuda_equals_cpu():
    """torch CUDA input: the GPU backend picks what the CPU picks (exact then sampled regime), the scores
    agree to rounding, and the results stay on the device."""
    torch = pytest.importorskip("torch")
    if not lw.built_with_cuda() or not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    rng = np.random.default_rng()
    p = make_probs(rng, 300, 12, 4)
    for input_kind, x in (("probs", p), ("log_probs", np.log(p)), ("logits", np.log(p) + 1.5)):
        ci, cs = A.batchbald(x, 6, num_samples=100, seed=7, input=input_kind)
        gi, gs = A.batchbald(torch.from_numpy(x).cuda(), 6, num_samples=100, seed=7, input=input_kind)
        assert gi.is_cuda and gs.is_cuda
        np.testing.assert_array_equal(gi.cpu().numpy(), ci)
        np.testing.assert_allclose(gs.cpu().numpy(), cs, rtol=1e-9, atol=1e-12)
    bad = p.copy()
    bad[4, 2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        A.batchbald(torch.from_numpy(bad).cuda(), 2, num_samples=100, seed=0)
