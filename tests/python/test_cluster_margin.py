"""Cluster-margin (Citovsky et al. 2021) against its definition, and bad input."""

import numpy as np
import pytest

from labelwise import acquisition as A
from reference import philox_bits64

STREAM_CM = 0x434C4D47  # "CLMG"


def cluster_margin_ref(margins, ids, b, seed, candidates=None, labeled=None):
    """The definition in docs/acquisition.md, written independently (pure Python + its own Philox)."""
    n = len(margins)
    free = [i for i in range(n) if labeled is None or not labeled[i]]
    k = min(len(free), 10 * b) if candidates is None else min(candidates, len(free))
    cand = sorted(free, key=lambda i: (-margins[i], i))[:k]
    groups = {}
    for i in cand:
        groups.setdefault(int(ids[i]), []).append(i)
    order = sorted(groups, key=lambda c: (len(groups[c]), c))
    queues = [sorted(groups[c], key=lambda i: (philox_bits64(seed, STREAM_CM, i), i)) for c in order]
    picks = []
    while len(picks) < b:
        for q in queues:
            if q and len(picks) < b:
                picks.append(q.pop(0))
    return picks


def test_clusters_and_round_robin(rng):
    # three well-separated blobs of sizes 5, 10, 20
    centers = np.array([[0, 0], [10, 0], [0, 10]], dtype=float)
    sizes = [5, 10, 20]
    emb = np.concatenate([c + 0.1 * rng.standard_normal((n, 2)) for c, n in zip(centers, sizes)])
    ids = A.average_linkage_clusters(emb, distance=3.0)
    assert len(np.unique(ids)) == 3
    assert np.array_equal(np.unique(ids[:5]).size, 1) and ids[0] != ids[5] != ids[15]
    assert np.array_equal(A.average_linkage_clusters(emb, num_clusters=3), ids)
    margins = rng.random(35)
    picks = A.cluster_margin(margins, ids, 6, candidates=35, seed=0)
    assert len(set(picks.tolist())) == 6
    # round-robin from the smallest cluster: the first three picks come from three different clusters,
    # in ascending cluster size, and so do the next three
    sizes_of = {c: int((ids == c).sum()) for c in np.unique(ids)}
    first = [sizes_of[ids[p]] for p in picks[:3]]
    assert first == sorted(first) and len(set(ids[picks[:3]])) == 3
    assert len(set(ids[picks[3:]])) == 3
    # same seed, same batch; candidates restrict the pool to the most uncertain items
    assert np.array_equal(picks, A.cluster_margin(margins, ids, 6, candidates=35, seed=0))
    top = set(np.argsort(-margins, kind="stable")[:8].tolist())
    assert set(A.cluster_margin(margins, ids, 8, candidates=8, seed=3).tolist()) == top
    labeled = np.zeros(35, dtype=bool)
    labeled[np.argsort(-margins)[:4]] = True
    assert not labeled[A.cluster_margin(margins, ids, 5, seed=1, labeled=labeled)].any()


def _first_appearance(ids):
    """Relabels cluster ids 0, 1, ... in the order of each cluster's lowest index."""
    seen = {}
    return np.array([seen.setdefault(int(c), len(seen)) for c in ids], dtype=np.int64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_clusters_equal_scipy(rng, dtype):
    """The C++ average linkage gives SciPy's partitions (linkage(method="average") + fcluster), ids
    numbered by first appearance, for distance and cluster-count cuts on blobs and on plain noise."""
    pytest.importorskip("scipy")
    from scipy.cluster.hierarchy import fcluster, linkage

    for n, d in ((60, 2), (300, 8), (500, 32)):
        centres = 3.0 * rng.standard_normal((6, d))
        emb = (centres[rng.integers(0, 6, n)] + rng.standard_normal((n, d)) * rng.uniform(0.2, 1.0, (n, 1)))
        emb = emb.astype(dtype)
        Z = linkage(emb.astype(np.float64), method="average")
        heights = np.sort(Z[:, 2])
        for k in (1, 2, 6, 17, n // 2, n):
            ours = A.average_linkage_clusters(emb, num_clusters=k)
            assert np.array_equal(ours, _first_appearance(fcluster(Z, t=k, criterion="maxclust"))), (n, d, k)
        for q in (0.1, 0.5, 0.9, 0.99):
            # a threshold between two merge heights, away from both
            i = int(q * (n - 1))
            t = 0.5 * (heights[i - 1] + heights[i]) if i > 0 else 0.5 * heights[0]
            ours = A.average_linkage_clusters(emb, distance=t)
            assert np.array_equal(ours, _first_appearance(fcluster(Z, t=t, criterion="distance"))), (n, d, q)
    # exact ties: duplicated rows and points on an integer lattice (the merge order then decides)
    for emb in (np.repeat(rng.standard_normal((40, 3)), 3, axis=0)[rng.permutation(120)],
                rng.integers(0, 4, size=(150, 2)).astype(np.float64),
                rng.integers(0, 3, size=(200, 5)).astype(np.float32)):
        n = len(emb)
        Z = linkage(emb.astype(np.float64), method="average")
        for k in (1, 2, 3, 7, n // 3, n - 1, n):
            ours = A.average_linkage_clusters(emb, num_clusters=k)
            assert np.array_equal(ours, _first_appearance(fcluster(Z, t=k, criterion="maxclust"))), (n, k)
        for t in (0.5, 1.2, 2.05):
            ours = A.average_linkage_clusters(emb, distance=t)
            assert np.array_equal(ours, _first_appearance(fcluster(Z, t=t, criterion="distance"))), (n, t)
    # a strided view (every other row of a wider array) is read in place: the same clusters
    wide = rng.standard_normal((80, 4))
    assert np.array_equal(A.average_linkage_clusters(wide[::2, 1:3], num_clusters=5),
                          A.average_linkage_clusters(np.ascontiguousarray(wide[::2, 1:3]), num_clusters=5))


def test_cluster_margin_errors():
    emb = np.random.rand(10, 3)
    with pytest.raises(ValueError, match="exactly one"):
        A.average_linkage_clusters(emb)
    with pytest.raises(ValueError, match="max_items"):
        A.average_linkage_clusters(emb, num_clusters=2, max_items=5)
    bad = emb.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"row \[3\] contains NaN"):
        A.average_linkage_clusters(bad, num_clusters=2)
    bad = emb.copy()
    bad[5] = 1e300
    with pytest.raises(ValueError, match=r"embeddings: row \[5\] is too large"):
        A.average_linkage_clusters(bad, num_clusters=2)
    with pytest.raises(ValueError, match="distance"):
        A.average_linkage_clusters(emb, distance=-1.0)
    with pytest.raises(ValueError, match="num_clusters"):
        A.average_linkage_clusters(emb, num_clusters=0)
    # more clusters than rows: every row its own, as SciPy's fcluster(criterion="maxclust")
    np.testing.assert_array_equal(A.average_linkage_clusters(emb, num_clusters=11), np.arange(10))
    with pytest.raises(ValueError, match="rank 2"):
        A.average_linkage_clusters(emb[0], num_clusters=1)
    ids = np.zeros(10, dtype=int)
    with pytest.raises(ValueError, match=r"b: expected 0 <= b <= 10"):
        A.cluster_margin(np.random.rand(10), ids, 11, seed=0)
    with pytest.raises(ValueError, match=r"clusters: expected shape \[10\]"):
        A.cluster_margin(np.random.rand(10), ids[:5], 2, seed=0)
    with pytest.raises(TypeError, match="seed"):
        A.cluster_margin(np.random.rand(10), ids, 2, seed=1.5)
    m = np.random.rand(10)
    m[2] = np.nan
    with pytest.raises(ValueError, match=r"NaN at item \[2\]"):
        A.cluster_margin(m, ids, 2, seed=0)
    # every item labelled: an error whatever b, as for coreset
    for b in (0, 1):
        with pytest.raises(ValueError, match="every one of the 10 items is labelled"):
            A.cluster_margin(np.random.rand(10), ids, b, seed=0, labeled=np.ones(10, bool))
    # margins are float32 / float64 in every framework, as top_k's scores (integers are not margin scores)
    with pytest.raises(TypeError, match="margins: expected dtype float32 or float64"):
        A.cluster_margin(np.arange(10), ids, 2, seed=0)


def test_cluster_margin_matches_reference(rng):
    for n, n_clusters, b in [(50, 4, 7), (400, 13, 30), (1000, 60, 100), (30, 3, 30)]:
        margins = rng.random(n).astype(rng.choice([np.float32, np.float64]))
        margins[rng.integers(0, n, n // 10)] = 0.5  # ties
        ids = rng.integers(-5, n_clusters, n)
        seed = int(rng.integers(0, 2**63))
        labeled = rng.random(n) < 0.1
        b = min(b, int((~labeled).sum()))
        for cands in (None, b, 3 * b):
            got = A.cluster_margin(margins, ids, b, seed=seed, candidates=cands, labeled=labeled)
            assert got.tolist() == cluster_margin_ref(margins, ids, b, seed, cands, labeled)
        # labelled as indices, and int32 ids, give the same batch
        np.testing.assert_array_equal(
            A.cluster_margin(margins, ids.astype(np.int32), b, seed=seed, labeled=np.flatnonzero(labeled)),
            cluster_margin_ref(margins, ids, b, seed, None, labeled))
    assert not np.array_equal(A.cluster_margin(margins, ids, 20, seed=1), A.cluster_margin(margins, ids, 20, seed=2))


def test_cluster_margin_answers_in_the_callers_framework(rng):
    torch = pytest.importorskip("torch")
    margins = rng.random(300)
    ids = rng.integers(0, 9, 300)
    want = A.cluster_margin(margins, ids, 25, seed=4)
    assert isinstance(want, np.ndarray) and want.dtype == np.int64
    got = A.cluster_margin(torch.from_numpy(margins), torch.from_numpy(ids.astype(np.int16)), 25, seed=4,
                           labeled=torch.zeros(300, dtype=torch.bool))
    assert isinstance(got, torch.Tensor) and got.dtype == torch.int64
    np.testing.assert_array_equal(got.numpy(), want)
    # the clusters come back in the embeddings' framework, ready for cluster_margin there
    emb = rng.normal(size=(60, 3))
    t_ids = A.average_linkage_clusters(torch.from_numpy(emb), num_clusters=4)
    assert isinstance(t_ids, torch.Tensor) and t_ids.dtype == torch.int64
    np.testing.assert_array_equal(t_ids.numpy(), A.average_linkage_clusters(emb, num_clusters=4))
    assert isinstance(A.cluster_margin(torch.from_numpy(margins[:60]), t_ids, 5, seed=1), torch.Tensor)
    b_ids = A.average_linkage_clusters(torch.from_numpy(emb).bfloat16(), num_clusters=4)  # widened on the host
    np.testing.assert_array_equal(b_ids.numpy(), A.average_linkage_clusters(
        torch.from_numpy(emb).bfloat16().float().numpy(), num_clusters=4))
    # strided inputs read in place
    wide = np.stack([margins, margins], axis=1)
    np.testing.assert_array_equal(A.cluster_margin(wide[:, 1], ids, 25, seed=4), want)
    with pytest.raises(TypeError, match="clusters: expected integer cluster ids"):
        A.cluster_margin(margins, ids.astype(np.float64), 25, seed=4)
