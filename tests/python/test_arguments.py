"""Scalar arguments of the public functions: the wrong type or range is a TypeError / ValueError that
names the argument, never a raw pybind11 signature dump, a numpy error from inside the package or a
silent conversion (strings read as numbers, "no" read as True, complex values cut to their real part)."""

import numpy as np
import pytest

import labelwise
from labelwise import acquisition as A
from labelwise import propagation as P
from labelwise import uncertainty as U


@pytest.fixture
def pool(rng):
    p = rng.dirichlet(np.ones(3), size=40)
    labels = p.argmax(1)
    return p, labels


def cases(rng, pool):
    p, labels = pool
    X = rng.normal(size=(30, 4))
    y = np.r_[0, 1, np.full(28, -1)]
    m = rng.random((2, 6, 6))
    auto = dict(pool_probs=p, calib_probs=p, calib_labels=labels, target_error=0.1, delta=0.1)
    return [
        # (call, exception, message pattern)
        (lambda: P.certified_auto_label(**auto, class_axis=1.0), TypeError, "class_axis: expected an integer"),
        (lambda: P.certified_auto_label(**auto, class_axis=None), TypeError, "class_axis: expected an integer"),
        (lambda: P.certified_auto_label(**auto, class_axis=2**40), ValueError, "class_axis: expected an integer in"),
        (lambda: P.certified_auto_label(**{**auto, "target_error": None}), TypeError, "target_error: expected a real"),
        (lambda: P.certified_auto_label(**{**auto, "target_error": "0.1"}), TypeError, "target_error: expected a real"),
        (lambda: P.certified_auto_label(**{**auto, "delta": 0.1j}), TypeError, "delta: expected a real"),
        (lambda: P.certified_auto_label(**auto, per_class="yes"), TypeError, "per_class: expected True or False"),
        (lambda: P.label_spreading(X, y, k=3, sklearn_threads=2**40, variant="sklearn"), ValueError,
         "sklearn_threads: expected an integer in"),
        (lambda: P.label_spreading(X, y, k=3, alpha="0.5"), TypeError, "alpha: expected a real"),
        (lambda: P.label_spreading(X, y, k=3, tol=None), TypeError, "tol: expected a real"),
        (lambda: P.binomial_cdf(1, 2**63, 0.5), ValueError, "n: expected an integer in"),
        (lambda: P.binomial_cdf(1, 10, "0.5"), TypeError, "theta: expected a real"),
        (lambda: labelwise.set_num_threads("2"), TypeError, "n: expected an integer, got str"),
        (lambda: labelwise.set_num_threads(2.0), TypeError, "n: expected an integer, got float"),
        (lambda: labelwise.set_num_threads(True), TypeError, "n: expected an integer, got bool"),
        (lambda: P.binomial_cdf(10**15, 10**16, 0.1), ValueError, r"n: expected at most 2\^50"),
        (lambda: P.regularized_incomplete_beta(0.1, 1e15, 9e15), ValueError, r"a \+ b: expected at most 2\^50"),
        (lambda: P.clopper_pearson_upper(0, 2**63, 0.1), ValueError, "n: expected an integer in"),
        (lambda: P.min_certifiable_count(True, 0.1), TypeError, "target_error: expected a real"),
        (lambda: P.label_issues(p, labels, class_axis=None), TypeError, "class_axis: expected an integer"),
        (lambda: P.label_issues(p, labels, class_axis=1.5), TypeError, "class_axis: expected an integer"),
        (lambda: P.label_issues(p, labels, class_axis=True), TypeError, "class_axis: expected an integer, got bool"),
        (lambda: P.propagate_slices(m, np.zeros(m.shape, np.int64), [0], beta="30"), TypeError, "beta: expected a real"),
        (lambda: A.slice_scores(m, axis=1.0), TypeError, "axis: expected an integer"),
        (lambda: A.slice_scores(m, axis=None), TypeError, "axis: expected an integer"),
        (lambda: A.slice_scores(m, axis=True), TypeError, "axis: expected an integer, got bool"),
        (lambda: A.patch_scores(np.array(1.0), 2), ValueError, r"map: expected \[N, \*spatial\] with 1 to 3"),
        (lambda: A.top_regions(rng.random(5), 1, 2), ValueError, r"map: expected \[N, \*spatial\] with 1 to 3"),
        (lambda: A.badge_uniform(0, 1.0), TypeError, "step: expected an integer"),
        (lambda: A.badge_uniform(0, True), TypeError, "step: expected an integer, got bool"),
        (lambda: A.badge_uniform(0, 2**64), ValueError, "step: expected an integer in"),
        (lambda: A.average_linkage_clusters(X.astype(complex), num_clusters=3), TypeError, "embeddings: expected a real"),
        (lambda: A.average_linkage_clusters(np.array([["a"]]), distance=0.5), TypeError, "embeddings: expected a real"),
        (lambda: A.average_linkage_clusters(X, distance="1"), TypeError, "distance: expected a real"),
        (lambda: A.coreset(X, None, 2, prune="no"), TypeError, "prune: expected True or False"),
        (lambda: A.weighted_kmeans(X, np.ones(30), 2, prefilter=2**63), ValueError, "prefilter: expected an integer in"),
        (lambda: A.weighted_kmeans(X, np.ones(30), 2, max_iter=2**63), ValueError, "max_iter: expected an integer in"),
        (lambda: A.average_linkage_clusters(X, num_clusters=2**63), ValueError, "num_clusters: expected an integer in"),
        (lambda: A.cluster_margin(np.ones(30), np.zeros(30, np.int64), 2, seed=0, candidates=2**63), ValueError,
         "candidates: expected an integer in"),
        (lambda: P.propagate_slices(m, np.zeros(m.shape, np.int64), [0], erode=2**63), ValueError, "erode: expected"),
        (lambda: P.propagate_slices(m, np.zeros(m.shape, np.int64), [0], num_classes=2**63), ValueError,
         "num_classes: expected"),
        (lambda: P.propagate_slices(m, np.zeros(m.shape, np.int64), [2**63]), ValueError, "labelled_slices: expected"),
        (lambda: P.propagate_slices(m, np.zeros(m.shape, np.int64), np.array([1, 0], bool), axis=2.5), TypeError,
         "axis: expected an integer, got float"),
        (lambda: P.label_spreading(X, y, k=2**63), ValueError, "k: expected an integer in"),
        (lambda: P.label_propagation(X, y, max_iter=2**63), ValueError, "max_iter: expected an integer in"),
        (lambda: A.top_k(rng.random(10), 2, return_values="no"), TypeError, "return_values: expected True or False"),
        (lambda: A.stochastic(rng.random(10), 2, seed=0, return_keys="no"), TypeError, "return_keys: expected True"),
        (lambda: A.merge_top_k(rng.random(10), np.arange(10), 2, return_values=None), TypeError, "return_values:"),
        (lambda: A.coreset(X, None, 2, metric=None), ValueError, "metric: expected 'euclidean' or 'cosine', got None"),
        (lambda: P.knn_graph(X, 2, metric="l1"), ValueError, "metric: expected 'euclidean' or 'cosine', got 'l1'"),
        (lambda: A.badge(p, X, 2, seed=0, input=None), TypeError, "input: expected 'probs', 'log_probs' or 'logits'"),
        (lambda: A.badge(p, X, 2, seed=0, input="softmax"), ValueError, "input: expected 'probs'"),
        (lambda: A.batchbald(p[:, None], 2, num_samples=10, seed=0, input=3), TypeError, "input: expected 'probs'"),
        (lambda: A.stochastic(rng.random(10), 2, seed=0, temperature="1"), TypeError, "temperature: expected a real"),
    ]


def test_bad_scalar_arguments_are_named(rng, pool):
    for i, (call, exc, pattern) in enumerate(cases(rng, pool)):
        with pytest.raises(exc, match=pattern):
            call()


def test_good_scalar_arguments_of_every_numeric_kind(rng, pool):
    """numpy scalars and 0-d arrays are accepted wherever Python numbers are."""
    p, labels = pool
    a = P.certified_auto_label(p, p, labels, target_error=np.float32(0.2), delta=np.array(0.1), class_axis=np.int64(1))
    b = P.certified_auto_label(p, p, labels, target_error=0.2, delta=0.1)
    assert np.array_equal(a.accepted, b.accepted) and a.threshold == b.threshold
    assert P.binomial_cdf(np.int32(3), np.uint8(10), np.float16(0.5)) == P.binomial_cdf(3, 10, 0.5)
    assert A.badge_uniform(0, np.uint64(2**64 - 1)) == A.badge_uniform(0, 2**64 - 1)
    m = rng.random((2, 6, 6))
    assert np.array_equal(A.slice_scores(m, axis=np.int8(2)), A.slice_scores(m, axis=2))


def test_sparse_torch_tensors_are_refused_by_name():
    torch = pytest.importorskip("torch")
    x = torch.rand(4, 3, 5).to_sparse()
    with pytest.raises(TypeError, match="x: a torch tensor with layout sparse_coo"):
        U.predictive_entropy(x)


def test_heads_name_bad_sizes_and_devices():
    pytest.importorskip("torch")
    import torch

    from labelwise.torch import EvidentialHead, MCDropoutHead

    with pytest.raises(ValueError, match="num_classes: expected an integer in"):
        EvidentialHead(4, 2**62)
    head = MCDropoutHead(4, 3).to("meta")
    with pytest.raises(TypeError, match="on device 'meta'"):
        head.score(torch.rand(1, 4, 5, 5))
    with pytest.raises(ValueError, match=r"K: K · num_classes = 16781312 .* \(2\^24\)"):
        MCDropoutHead(4, 4096).score(torch.rand(1, 4, 3, 3), K=4097)  # named as the Python argument
    for run in (MCDropoutHead(4, 3).score, MCDropoutHead(4, 3).sample):  # features there: named too
        with pytest.raises(TypeError, match="features: a torch tensor on device 'meta'"):
            run(torch.rand(1, 4, 5, 5, device="meta"), 2)
    with pytest.raises(TypeError, match="return_mean: expected True or False"):
        MCDropoutHead(4, 3).score(torch.rand(1, 4, 5, 5), K=2, return_mean="yes")


def test_scalars_from_every_framework_and_integer_flags(rng, pool):
    """0-d torch tensors are real numbers as 0-d numpy arrays are; flags take 0 / 1 and 0-d bools."""
    torch = pytest.importorskip("torch")
    p, labels = pool
    a = P.certified_auto_label(p, p, labels, target_error=torch.tensor(0.2), delta=torch.tensor(0.1, dtype=torch.float64))
    b = P.certified_auto_label(p, p, labels, target_error=0.2, delta=0.1)
    assert np.array_equal(a.accepted, b.accepted) and a.threshold == b.threshold
    for bad in (torch.tensor(0.5j), torch.tensor(True), torch.tensor([0.2])):
        with pytest.raises(TypeError, match="target_error: expected a real"):
            P.certified_auto_label(p, p, labels, target_error=bad, delta=0.1)
    X = rng.normal(size=(50, 3))
    for flag in (0, 1, np.int8(1), np.array(False), torch.tensor(True)):
        picks = A.coreset(X, None, 3, prune=flag)
        assert np.array_equal(picks, A.coreset(X, None, 3))
    for bad in (2, -1, 0.0, None, "True"):
        with pytest.raises(TypeError, match="prune: expected True or False"):
            A.coreset(X, None, 3, prune=bad)


def test_tensor_kl_weight_keeps_the_loss_dtype():
    torch = pytest.importorskip("torch")
    from labelwise.torch import evidential_loss

    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    plain = evidential_loss(logits, target, kl_weight=0.5)
    tensor = evidential_loss(logits, target, kl_weight=torch.tensor(0.5, dtype=torch.float64))
    assert tensor.dtype == logits.dtype and torch.equal(plain, tensor)
    for bad in (torch.tensor(0.5j), torch.tensor([0.5, 0.5]), torch.tensor(True)):
        with pytest.raises(TypeError, match="kl_weight"):
            evidential_loss(logits, target, kl_weight=bad)
    with pytest.raises(TypeError, match="kl_weight: expected a real"):
        evidential_loss(logits, target, kl_weight="0.5")
    for low in (torch.zeros(3), torch.zeros(())):  # no class axis: named, not an IndexError
        with pytest.raises(ValueError, match=r"logits: expected \[B, C, \*spatial\]"):
            evidential_loss(low, torch.zeros(3, dtype=torch.long))


def test_a_failed_host_allocation_says_so():
    """A broadcast view of a huge shape needs scratch of its full size: a MemoryError that says what
    happened (pybind11 alone says "std::bad_alloc")."""
    huge = np.broadcast_to(1.0, (1, 2**20, 2**20))
    with pytest.raises(MemoryError, match="labelwise: out of host memory"):
        A.slice_scores(huge, 1)


def test_set_num_threads_clamps_to_1024_and_restores():
    try:
        labelwise.set_num_threads(2**31)  # beyond a C int: the most labelwise uses
        assert labelwise.num_threads() == 1024
        labelwise.set_num_threads(np.int64(3))
        assert labelwise.num_threads() == 3
    finally:
        labelwise.set_num_threads(0)
    assert labelwise.num_threads() >= 1


def test_masked_arrays_are_refused_where_numpy_reads_them(rng):
    """Functions that read an input through np.asarray (host-side clustering, slice propagation, the
    shards of merge_top_k) refuse a masked array with masked entries as the DLPack path does: the
    hidden values would otherwise be read as data. An all-unmasked one is read like its data."""
    def masked(a):
        m = np.ma.masked_array(a, mask=np.zeros(a.shape, bool))
        m[(0,) * a.ndim] = np.ma.masked
        return m

    emb = rng.normal(size=(12, 3))
    with pytest.raises(ValueError, match="embeddings: a masked array with masked entries"):
        A.average_linkage_clusters(masked(emb), num_clusters=2)
    np.testing.assert_array_equal(A.average_linkage_clusters(np.ma.masked_array(emb), num_clusters=2),
                                  A.average_linkage_clusters(emb, num_clusters=2))
    vol, lab = rng.random((3, 5, 5)), np.zeros((3, 5, 5), np.int64)
    with pytest.raises(ValueError, match="volume: a masked array with masked entries"):
        P.propagate_slices(masked(vol), lab, [0])
    with pytest.raises(ValueError, match="labels: a masked array with masked entries"):
        P.propagate_slices(vol, masked(lab), [0])
    vals, ids = rng.random(6), np.arange(6)
    with pytest.raises(ValueError, match="a masked array with masked entries"):
        A.merge_top_k([masked(vals[:3]), vals[3:]], [ids[:3], ids[3:]], 2)
    with pytest.raises(ValueError, match="a masked array with masked entries"):
        A.merge_top_k([vals[:3], vals[3:]], [masked(ids[:3]), ids[3:]], 2)
