"""labelwise.propagation: knn_graph against a numpy float64 brute force (duplicates, cosine, float32,
torch, strides), label_spreading / label_propagation with variant="sklearn" against scikit-learn itself
(random data and the digits with 10% labels, several thread counts), the symmetric variant, and every
bad input."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from labelwise import propagation as P

try:  # torch is optional: the framework checks are skipped without it
    import torch
except ImportError:  # pragma: no cover
    torch = None

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.semi_supervised import LabelPropagation, LabelSpreading  # noqa: E402


def brute_knn(X, k, metric="euclidean"):
    X = np.asarray(X, dtype=np.float64)
    if metric == "euclidean":
        d = np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))
    else:
        n = np.sqrt((X**2).sum(1))
        d = np.clip(1.0 - (X @ X.T) / (n[:, None] * n[None, :]), 0.0, 2.0)
    N = len(X)
    np.fill_diagonal(d, np.inf)
    cols = np.broadcast_to(np.arange(N), d.shape)
    # by distance, ties by the lower index; the vectorised cosine rounds identical pairs differently
    # (matmul), so its ties are made exact by rounding to 12 digits
    key = d if metric == "euclidean" else np.round(d, 12)
    order = np.lexsort((cols, key), axis=1)[:, :k]
    return order, np.take_along_axis(d, order, 1)


def with_duplicates(rng, N, D):
    X = rng.normal(size=(N, D)) + rng.normal(size=D) * 3
    X[1:6] = X[0]  # five copies of row 0
    X[-1] = X[2]
    X[rng.integers(0, N, 10)] = X[7]
    return X


@pytest.mark.parametrize("N,D,k", [(40, 2, 3), (300, 10, 7), (2500, 24, 10)])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_knn_graph_matches_brute_force(rng, N, D, k, metric):
    X = with_duplicates(rng, N, D)
    idx, dist = P.knn_graph(X, k, metric=metric)
    want_i, want_d = brute_knn(X, k, metric)
    assert idx.dtype == np.int64 and dist.dtype == np.float64 and idx.shape == (N, k)
    np.testing.assert_allclose(dist, want_d, rtol=1e-9, atol=1e-12)
    # indices: exact where the reference distances are exact ties (duplicates) or clearly apart
    np.testing.assert_array_equal(idx, want_i)
    assert not (idx == np.arange(N)[:, None]).any()


def test_knn_graph_float32_strided_and_torch(rng):
    X = with_duplicates(rng, 500, 16).astype(np.float32)
    Xt = np.asfortranarray(X)
    idx, dist = P.knn_graph(Xt, 5)
    want_i, want_d = brute_knn(X, 5)
    assert dist.dtype == np.float32
    np.testing.assert_array_equal(idx, want_i)
    np.testing.assert_allclose(dist, want_d, rtol=1e-6, atol=1e-6)
    idx2, _ = P.knn_graph(X[::2], 4)
    np.testing.assert_array_equal(idx2, brute_knn(X[::2], 4)[0])
    torch = pytest.importorskip("torch")
    ti, td = P.knn_graph(torch.from_numpy(X), 5)
    assert isinstance(ti, torch.Tensor) and ti.dtype == torch.int64
    np.testing.assert_array_equal(ti.numpy(), want_i)


@pytest.mark.parametrize("N", [20, 700, 3000])
def test_knn_graph_is_scale_free(rng, N):
    """Far outside [2^-30, 2^31) the float64 squared norms or float32 candidate keys over- or underflow;
    the search then runs on the data scaled by a power of two (exact): the same neighbours, distances
    scaled back (1e200: squared distances beyond float64, distances fine)."""
    X = with_duplicates(rng, N, 6)
    idx, dist = P.knn_graph(X, 5)
    for scale in (2.0**70, 1e19, 1e200, 2.0**-70, 1e-170, 1e-300):
        si, sd = P.knn_graph(X * scale, 5)
        np.testing.assert_array_equal(si, idx, err_msg=f"scale {scale}")
        np.testing.assert_allclose(sd, dist * scale, rtol=1e-12, err_msg=f"scale {scale}")
    # cosine ignores each row's scale: rows from 1e-200 to 1e200 (powers of two, so that the duplicated
    # rows stay exact duplicates) give the unit rows' neighbours
    ci, cd = P.knn_graph(X, 5, metric="cosine")
    rows = 2.0 ** rng.integers(-660, 661, size=(N, 1)).astype(np.float64)
    gi, gd = P.knn_graph(X * rows, 5, metric="cosine")
    np.testing.assert_array_equal(gi, ci)
    np.testing.assert_allclose(gd, cd, rtol=1e-9, atol=1e-15)


def test_knn_graph_rows_of_very_different_magnitudes(rng):
    """One factor cannot scale rows 2^500 apart (the small rows' squared differences underflow once the
    large row fits): refused, naming both rows; a span of ~2^465 still equals the float64 brute force."""
    X = rng.normal(size=(300, 3))
    X[7] *= 1e140
    idx, dist = P.knn_graph(X, 4)
    want_i, want_d = brute_knn(X, 4)
    np.testing.assert_array_equal(idx, want_i)
    np.testing.assert_allclose(dist, want_d, rtol=1e-12)
    X[7] *= 1e10
    with pytest.raises(ValueError, match=r"features: row 7 \(largest \|x\| ~2\^.*\) and row \d+ .* more than 2\^480"):
        P.knn_graph(X, 4)
    with pytest.raises(ValueError, match=r"more than 2\^480"):
        P.label_spreading(X, np.r_[0, 1, np.full(298, -1)], k=4)
    P.knn_graph(X, 4, metric="cosine")  # each row scaled by its own factor: fine
    # Only rows that a downward scaling pushes below the range count, and only two or more of them:
    # one tiny row among rows of 1 (nothing is scaled) keeps the float64 brute-force answer, in
    # knn_graph and in the sklearn variant (which sklearn itself accepts).
    Y = rng.normal(size=(300, 3))
    for v in (1e-160, 5e-324):
        Y[5] = [v, 0.0, 0.0]
        yi, yd = P.knn_graph(Y, 4)
        wi, wd = brute_knn(Y, 4)
        np.testing.assert_array_equal(yi, wi)
        np.testing.assert_allclose(yd, wd, rtol=1e-12)
        P.label_spreading(Y, np.r_[0, 1, np.full(298, -1)], k=4, variant="sklearn")


def test_knn_graph_bad_input():
    X = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(ValueError, match="k"):
        P.knn_graph(X, 20)
    with pytest.raises(ValueError, match="k"):
        P.knn_graph(X, 0)
    bad = X.copy()
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match="row 4"):
        P.knn_graph(bad, 3)
    with pytest.raises(ValueError, match="rank"):
        P.knn_graph(X[:, 0], 3)
    with pytest.raises(ValueError):
        P.knn_graph(np.zeros((0, 3)), 1)
    with pytest.raises(ValueError, match="metric"):
        P.knn_graph(X, 3, metric="manhattan")
    with pytest.raises(TypeError, match="k: expected an integer"):  # was silently truncated to 2
        P.knn_graph(X, 2.7)
    y = np.r_[0, 1, np.full(18, -1)]
    with pytest.raises(TypeError, match="k: expected an integer"):
        P.label_spreading(X, y, k=2.7)
    with pytest.raises(TypeError, match="max_iter: expected an integer"):
        P.label_spreading(X, y, k=3, max_iter=10.5)
    with pytest.raises(ValueError, match=r"sklearn_threads: expected an integer in \[0, 2147483647\]"):
        P.label_spreading(X, y, k=3, variant="sklearn", sklearn_threads=-1)
    z = X.copy()
    z[3] = 0
    with pytest.raises(ValueError, match="row 3"):
        P.knn_graph(z, 3, metric="cosine")
    with pytest.raises(TypeError):
        P.knn_graph(X.astype(np.int64), 3)


_ISA_CHILD = """
import sys
import numpy as np
from labelwise import propagation as P
d = np.load(sys.argv[1])
X, Z, y = d["X"], d["Z"], d["y"]
out = {}
for metric in ("euclidean", "cosine"):
    out["i_" + metric], out["d_" + metric] = P.knn_graph(X, 9, metric=metric)
out["i_f32"], _ = P.knn_graph(X.astype(np.float32), 9)
out["dist"], out["lab"] = P.label_spreading(Z, y, k=7, variant="sklearn")
np.savez(sys.argv[2], **out)
"""


@pytest.mark.parametrize("isa,bf16", [("generic", "1"), ("avx2", "1"), ("", "0"), ("", "1")])
def test_knn_every_cpu_kernel_matches_brute_force_and_sklearn(rng, tmp_path, isa, bf16):
    """The candidate kernel is chosen once per process (AVX-512 with or without the bfloat16 pass, AVX2,
    or the Eigen GEMM): each one, forced in a child process, gives the brute-force neighbours and
    scikit-learn's spreading, over several 1024-row blocks (duplicates for the graph; none for sklearn,
    whose BLAS distances of two identical rows in this brute-force regime can differ in the last bit)."""
    X = with_duplicates(rng, 2300, 20)
    Z = rng.normal(size=X.shape) + rng.normal(size=20) * 3
    y = np.full(len(X), -1)
    lab = rng.choice(len(X), 200, replace=False)
    y[lab] = rng.integers(0, 3, 200)
    np.savez(tmp_path / "in.npz", X=X, Z=Z, y=y)
    env = dict(os.environ, LABELWISE_KNN_BF16=bf16)
    env.pop("LABELWISE_CPU_ISA", None)
    if isa:
        env["LABELWISE_CPU_ISA"] = isa
    subprocess.run([sys.executable, "-c", _ISA_CHILD, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                   env=env, check=True, timeout=300)
    got = np.load(tmp_path / "out.npz")
    for metric in ("euclidean", "cosine"):
        want_i, want_d = brute_knn(X, 9, metric)
        np.testing.assert_array_equal(got["i_" + metric], want_i, err_msg=metric)
        np.testing.assert_allclose(got["d_" + metric], want_d, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(got["i_f32"], brute_knn(X.astype(np.float32), 9)[0])
    sk = LabelSpreading(kernel="knn", n_neighbors=7).fit(Z, y)
    np.testing.assert_array_equal(got["lab"], sk.transduction_)
    np.testing.assert_allclose(got["dist"], sk.label_distributions_, rtol=0, atol=1e-12)


def test_knn_graph_on_cuda_equals_cpu(rng):
    """CUDA (torch) == CPU: the same indices, distances within 1e-12 relative, results on the device
    in torch; the errors of the CPU path. Skipped without a CUDA build and a GPU."""
    import labelwise as lw

    torch = pytest.importorskip("torch")
    if not lw.built_with_cuda() or not torch.cuda.is_available():
        pytest.skip("needs a CUDA build and a GPU")
    for dtype in (np.float64, np.float32):
        X = with_duplicates(rng, 9001, 20).astype(dtype)
        for metric in ("euclidean", "cosine"):
            for k in (1, 10, 40):
                ci, cd = P.knn_graph(X, k, metric=metric)
                gi, gd = P.knn_graph(torch.from_numpy(X).cuda(), k, metric=metric)
                assert gi.is_cuda and gd.is_cuda and gi.dtype == torch.int64
                assert gd.dtype == (torch.float64 if dtype == np.float64 else torch.float32)
                np.testing.assert_array_equal(gi.cpu().numpy(), ci)
                np.testing.assert_allclose(gd.cpu().numpy(), cd, rtol=1e-12, atol=0)
    bad = torch.from_numpy(rng.normal(size=(30, 3))).cuda()
    bad[4, 1] = float("nan")
    bad[9, 0] = float("inf")
    with pytest.raises(ValueError, match="row 4"):
        P.knn_graph(bad, 3)
    z = torch.from_numpy(rng.normal(size=(30, 3))).cuda()
    z[3] = 0
    with pytest.raises(ValueError, match="row 3"):
        P.knn_graph(z, 3, metric="cosine")


# ---------------------------------------------------------------------------------------------------
# the sklearn variant against sklearn


def sk_fit(cls, X, y, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(kernel="knn", **kw).fit(X, y)


def ours(fn, X, y, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(X, y, variant="sklearn", **kw)


def assert_both_equal_sklearn(X, lab, k, alphas):
    """Spreading (each alpha, 30 steps) and propagation (1000 steps) in the sklearn variant: the same
    distributions and labels as sklearn's, bit for bit."""
    for alpha in alphas:
        s = sk_fit(LabelSpreading, X, lab, n_neighbors=k, alpha=alpha, max_iter=30, tol=1e-3)
        d, l = ours(P.label_spreading, X, lab, k=k, alpha=alpha, max_iter=30, tol=1e-3)
        np.testing.assert_array_equal(d, s.label_distributions_)
        np.testing.assert_array_equal(l, s.transduction_)
    s = sk_fit(LabelPropagation, X, lab, n_neighbors=k, max_iter=1000, tol=1e-3)
    d, l = ours(P.label_propagation, X, lab, k=k, max_iter=1000, tol=1e-3)
    np.testing.assert_array_equal(d, s.label_distributions_)
    np.testing.assert_array_equal(l, s.transduction_)


def partial_labels(rng, y, frac):
    lab = np.full(len(y), -1, dtype=np.int64)
    m = rng.random(len(y)) < frac
    for c in np.unique(y):  # every class at least once
        m[np.flatnonzero(y == c)[0]] = True
    lab[m] = y[m]
    return lab


@pytest.mark.parametrize("N,D", [(9, 3), (40, 20)])
def test_sklearn_variant_takes_k_equal_to_n_like_sklearn(rng, N, D):
    """sklearn counts the point itself among its n_neighbors and accepts n_neighbors = N (the complete
    graph); the sklearn variant does too, and k = N + 1 is refused by both."""
    X = rng.normal(size=(N, D))
    lab = np.full(N, -1, dtype=np.int64)
    lab[:3] = [0, 1, 2]
    assert_both_equal_sklearn(X, lab, N, (0.2, 0.9))
    with pytest.raises(ValueError):
        sk_fit(LabelSpreading, X, lab, n_neighbors=N + 1)
    with pytest.raises(ValueError, match=rf"1 <= k <= N = {N} \(the sklearn variant counts the point itself\)"):
        ours(P.label_spreading, X, lab, k=N + 1)
    with pytest.raises(ValueError, match=rf"1 <= k < N = {N}, got {N}"):
        P.label_spreading(X, lab, k=N)  # the symmetric graph excludes the point itself


@pytest.mark.parametrize("N,D,C,k", [(200, 5, 3, 7), (700, 20, 4, 10), (1500, 32, 6, 5)])
def test_sklearn_variant_equals_sklearn_on_random_data(rng, N, D, C, k):
    X = rng.normal(size=(N, D))
    y = rng.integers(0, C, N)
    lab = partial_labels(rng, y, 0.1)
    assert_both_equal_sklearn(X, lab, k, (0.2, 0.7))
    # float32 features: sklearn computes its distances in float64 from them, and so do we
    X32 = X.astype(np.float32)
    s = sk_fit(LabelSpreading, X32, lab, n_neighbors=k)
    d, l = ours(P.label_spreading, X32, lab, k=k)
    np.testing.assert_array_equal(d, s.label_distributions_)
    np.testing.assert_array_equal(l, s.transduction_)


@pytest.mark.parametrize("k", [7, 10])
def test_sklearn_variant_equals_sklearn_on_digits(rng, k):
    """Integer pixel values: many equidistant neighbours, so sklearn's heap tie rule matters."""
    X, y = load_digits(return_X_y=True)
    lab = partial_labels(rng, y, 0.1)
    s = sk_fit(LabelSpreading, X, lab, n_neighbors=k, alpha=0.2, max_iter=30, tol=1e-3)
    d, l = ours(P.label_spreading, X, lab, k=k)
    np.testing.assert_array_equal(d, s.label_distributions_)
    np.testing.assert_array_equal(l, s.transduction_)
    s = sk_fit(LabelPropagation, X, lab, n_neighbors=k)
    d, l = ours(P.label_propagation, X, lab, k=k)
    np.testing.assert_array_equal(d, s.label_distributions_)
    np.testing.assert_array_equal(l, s.transduction_)
    assert (l[lab < 0] == y[lab < 0]).mean() > 0.85


@pytest.mark.parametrize("D,kind", [(1, "ints"), (3, "binary"), (6, "binary"), (12, "binary"), (15, "ints"), (4, "dup")])
def test_sklearn_variant_replays_sklearns_kd_tree(rng, D, kind):
    """With at most 15 features sklearn searches with a KD-tree, which keeps the tied neighbours its
    traversal meets first: the sklearn variant replays that traversal (exact ties everywhere here)."""
    N, C = int(rng.integers(200, 1500)), 3
    if kind == "ints":
        X = rng.integers(0, 5, size=(N, D)).astype(np.float64)
    elif kind == "binary":
        X = rng.integers(0, 2, size=(N, D)).astype(np.float64)
    else:
        X = np.repeat(rng.normal(size=(N // 5 + 1, D)), 5, axis=0)[:N]
    lab = partial_labels(rng, rng.integers(0, C, N), 0.15)
    for k in (1, 5, 10):
        for cls, fn, kw in ((LabelSpreading, P.label_spreading, dict(alpha=0.2, max_iter=30, tol=1e-3)),
                            (LabelPropagation, P.label_propagation, dict(max_iter=1000, tol=1e-3))):
            s = sk_fit(cls, X, lab, n_neighbors=k, **kw)
            assert s.nn_fit._fit_method == "kd_tree"
            d, l = ours(fn, X, lab, k=k, **kw)
            np.testing.assert_array_equal(d, s.label_distributions_)
            np.testing.assert_array_equal(l, s.transduction_)


def test_many_exact_ties_take_the_exact_path(rng):
    """Binary features: the k-th neighbour ties with many others, so rows are redone exactly over all
    columns (full_rows in src/knn.cpp). In 16 dimensions sklearn searches by brute force, and the
    sklearn variant follows its tie rule exactly; in 6 (64 distinct points, ~16 copies of each) every
    row ties, checked against a brute force."""
    N, C, k = 1000, 3, 7
    X16 = rng.integers(0, 2, size=(N, 16)).astype(np.float64)
    lab = partial_labels(rng, rng.integers(0, C, N), 0.1)
    s = sk_fit(LabelSpreading, X16, lab, n_neighbors=k, alpha=0.2, max_iter=30, tol=1e-3)
    assert s.nn_fit._fit_method == "brute"
    d, l = ours(P.label_spreading, X16, lab, k=k, alpha=0.2, max_iter=30, tol=1e-3)
    np.testing.assert_array_equal(d, s.label_distributions_)
    np.testing.assert_array_equal(l, s.transduction_)
    X = rng.integers(0, 2, size=(N, 6)).astype(np.float64)
    # euclidean: squared distances of small integers are exact, so the brute force (the point itself
    # excluded, ties by the lower index) is the same set in the same order
    I, dist = P.knn_graph(X, k)
    sq = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(sq, np.inf)
    want = np.argsort(sq, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(I, want)
    np.testing.assert_array_equal(dist, np.sqrt(np.take_along_axis(sq, want, 1)))
    # cosine (rows shifted off zero): the k nearest distances, whichever of the tied rows are taken
    Xc = X + 0.5
    Ic, dc = P.knn_graph(Xc, k, metric="cosine")
    nrm = np.linalg.norm(Xc, axis=1)
    cd = 1.0 - (Xc @ Xc.T) / np.outer(nrm, nrm)
    np.fill_diagonal(cd, np.inf)
    np.testing.assert_allclose(dc, np.sort(cd, axis=1)[:, :k], rtol=0, atol=1e-12)
    assert (Ic != np.arange(N)[:, None]).all()


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_sklearn_variant_follows_sklearns_thread_count(threads):
    """sklearn's own neighbours on the digits depend on its OpenMP thread count; we follow it."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    X, y = load_digits(return_X_y=True)
    lab = partial_labels(np.random.default_rng(1), y, 0.1)
    with threadpoolctl.threadpool_limits(threads, user_api="openmp"):
        s = sk_fit(LabelSpreading, X, lab, n_neighbors=7)
        d, l = ours(P.label_spreading, X, lab, k=7)
    np.testing.assert_array_equal(d, s.label_distributions_)
    np.testing.assert_array_equal(l, s.transduction_)


def test_symmetric_variant(rng):
    X, y = load_digits(return_X_y=True)
    lab = partial_labels(rng, y, 0.1)
    d, l = P.label_spreading(X, lab)  # default: symmetric
    assert d.shape == (len(y), 10) and d.dtype == np.float64 and l.dtype == np.int64
    np.testing.assert_allclose(d.sum(1)[l >= 0], 1.0)
    # 0.955 on average over random 10 % label draws, lowest 0.917 in 300 draws: 0.85 is far in the tail,
    # and still far above what a broken propagation gives (about 0.1)
    assert (l[lab < 0] == y[lab < 0]).mean() > 0.85
    np.testing.assert_array_equal(l[lab >= 0], lab[lab >= 0])
    d2, l2 = P.label_propagation(X, lab)
    assert (l2[lab < 0] == y[lab < 0]).mean() > 0.85
    np.testing.assert_array_equal(l2[lab >= 0], lab[lab >= 0])


def test_spreading_takes_every_integer_label_dtype(rng):
    """uint8 (the usual mask dtype), int8, int16, uint16, uint32, uint64 and torch uint8 labels give
    the int64 result (unsigned labels cannot mark an item unlabelled: every item is labelled)."""
    X = rng.normal(size=(40, 3))
    y = rng.integers(0, 3, size=40)
    y[:3] = [0, 1, 2]
    ref = P.label_spreading(X, y, k=4)
    signed = y.copy()
    signed[10:20] = -1
    ref_signed = P.label_propagation(X, signed, k=4)
    for dt in (np.uint8, np.int8, np.int16, np.uint16, np.uint32, np.uint64):
        got = P.label_spreading(X, y.astype(dt), k=4)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])
    for dt in (np.int8, np.int16):
        got = P.label_propagation(X, signed.astype(dt), k=4)
        np.testing.assert_array_equal(got[1], ref_signed[1])
    if torch is not None:
        np.testing.assert_array_equal(P.label_spreading(X, torch.from_numpy(y.astype(np.uint8)), k=4)[1], ref[1])


def symmetric_reference(X, labels, k, alpha, max_iter, tol, propagation):
    """The documented symmetric variant, dense and in float64: W = the kNN graph (brute force, ties by
    the lower index) or its transpose, S = D^-1/2 W D^-1/2 (spreading) or T = D^-1 W (propagation),
    the stop rule sum |F - F_prev| < tol checked before each step (F_prev = 0 at first) and not taken
    while an item that a label reaches (the labels' connected components, by breadth-first search) is
    still all zero; propagation divides each row by its sum after each step (0 stays 0) and resets the
    labelled rows."""
    N = len(X)
    idx, _ = brute_knn(X, k)
    W = np.zeros((N, N))
    W[np.repeat(np.arange(N), k), idx.ravel()] = 1.0
    W = np.maximum(W, W.T)
    deg = W.sum(1)
    C = labels.max() + 1
    Y = np.zeros((N, C))
    lab = labels >= 0
    Y[np.flatnonzero(lab), labels[lab]] = 1.0
    M = W / deg[:, None] if propagation else W / np.sqrt(np.outer(deg, deg))
    reach = lab.copy()
    frontier = lab.copy()
    while frontier.any():
        new = (W[frontier].sum(0) > 0) & ~reach
        reach |= new
        frontier = new

    def unreached(F):
        return int((reach & (F.sum(1) == 0)).sum())

    F, prev, n_iter = Y.copy(), np.zeros_like(Y), 0
    while n_iter < max_iter and (np.abs(F - prev).sum() >= tol or unreached(F) > 0):
        prev = F
        if propagation:
            F = M @ F
            t = F.sum(1, keepdims=True)
            F = np.divide(F, t, out=np.zeros_like(F), where=t > 0)
            F[lab] = Y[lab]
        else:
            F = alpha * (M @ F) + (1 - alpha) * Y
        n_iter += 1
    converged = np.abs(F - prev).sum() < tol and unreached(F) == 0
    s = F.sum(1, keepdims=True)
    D = np.divide(F, s, out=np.zeros_like(F), where=s > 0)
    out = np.where(s[:, 0] > 0, D.argmax(1), -1)
    return D, out, n_iter, converged


@pytest.mark.parametrize("propagation", [False, True])
def test_symmetric_variant_matches_dense_reference(rng, propagation):
    """Distributions, labels and the convergence warning against a dense float64 reference, on data with
    a second connected component that no label reaches (label -1, zero row)."""
    N1, N2, D, k = int(rng.integers(60, 200)), 12, int(rng.integers(2, 20)), int(rng.integers(3, 9))
    X = np.vstack([rng.normal(size=(N1, D)), rng.normal(size=(N2, D)) + 1e3])  # far away: own component
    C = int(rng.integers(2, 5))
    labels = np.full(N1 + N2, -1)
    pick = rng.choice(N1, size=3 * C, replace=False)
    labels[pick] = np.arange(3 * C) % C
    alpha = float(rng.uniform(0.05, 0.95))
    fn = P.label_propagation if propagation else P.label_spreading
    kw = {} if propagation else {"alpha": alpha}
    for max_iter, tol in ((1000, 1e-9), (2, 1e-12)):
        ref_d, ref_l, n_iter, converged = symmetric_reference(X, labels, k, alpha, max_iter, tol, propagation)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            d, l = fn(X, labels, k=k, max_iter=max_iter, tol=tol, **kw)
        np.testing.assert_allclose(d, ref_d, rtol=0, atol=1e-12)
        # labels where the top two classes are apart (exact ties, e.g. [0, .5, 0, .5], may round either way)
        top2 = np.sort(ref_d, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0] > 1e-12) | (ref_l < 0)
        np.testing.assert_array_equal(l[clear], ref_l[clear])
        assert (l[N1:] == -1).all() and (d[N1:] == 0).all()
        warned = [w for w in caught if issubclass(w.category, RuntimeWarning) and "max_iter" in str(w.message)]
        assert len(warned) == (0 if converged else 1), (max_iter, n_iter, converged)
        if max_iter == 2:
            assert not converged  # tol 1e-12 is not reached in two steps


def test_symmetric_spreading_reaches_every_item_a_label_reaches():
    """A chain of 300 points labelled at both ends: label mass h hops out is ~alpha^h, so the total
    change per step falls below tol after a few steps. The symmetric variant must not stop there while
    items connected to a label are still all zero (they came out -1: 260 of 300 did before)."""
    X = np.arange(300.0)[:, None]
    y = np.full(300, -1)
    y[0], y[299] = 0, 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converges, no warning
        d, lab = P.label_spreading(X, y, max_iter=1000)
    assert (lab != -1).all() and (d.sum(1) > 0).all()
    assert (lab[:140] == 0).all() and (lab[160:] == 1).all()
    # Too few iterations to reach the middle: the unreached items keep -1, and the call says so.
    with pytest.warns(RuntimeWarning, match="items that a label reaches in the graph got no label mass .it shrinks by "
                      "about alpha"):
        _, lab = P.label_spreading(X, y, max_iter=30)
    assert (lab == -1).sum() > 0 and (lab[:20] == 0).all() and (lab[-20:] == 1).all()
    # label propagation has no alpha: its warning does not name one
    with pytest.warns(RuntimeWarning, match="got no label mass .it shrinks with every hop of the graph") as w:
        P.label_propagation(X, y, max_iter=5)
    assert not any("alpha" in str(m.message) for m in w)


def test_spreading_bad_input():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 4))
    y = np.full(30, -1)
    y[:3] = [0, 1, 2]
    P.label_spreading(X, y, k=3)
    with pytest.raises(ValueError, match="no labelled item"):
        P.label_spreading(X, np.full(30, -1), k=3)
    gap = y.copy()
    gap[1] = 3  # class 1 has no labelled item
    with pytest.raises(ValueError, match="class 1"):
        P.label_spreading(X, gap, k=3)
    for huge in (30, 2**40, 2**63 - 1):  # a class >= N cannot have all classes below it labelled
        big = y.copy()
        big[4] = huge
        with pytest.raises(ValueError, match="entry 4 is .*must be < N = 30"):
            P.label_spreading(X, big, k=3)
    low = y.copy()
    low[5] = -2
    with pytest.raises(ValueError, match="entry 5"):
        P.label_spreading(X, low, k=3)
    bad = X.copy()
    bad[7, 0] = np.inf
    with pytest.raises(ValueError, match="row 7"):
        P.label_spreading(bad, y, k=3)
    bad[7, 0] = np.nan
    with pytest.raises(ValueError, match="row 7"):
        P.label_propagation(bad, y, k=3)
    for k in (0, 30, 31):
        with pytest.raises(ValueError, match="k"):
            P.label_spreading(X, y, k=k)
    for alpha in (0.0, 1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            P.label_spreading(X, y, k=3, alpha=alpha)
    with pytest.raises(ValueError, match="variant"):
        P.label_spreading(X, y, variant="rbf")
    with pytest.raises(ValueError, match="labels"):
        P.label_spreading(X, y[:-1], k=3)
    with pytest.raises(TypeError):
        P.label_spreading(X, y.astype(np.float64), k=3)
    with pytest.raises(ValueError, match="max_iter"):
        P.label_propagation(X, y, k=3, max_iter=0)
