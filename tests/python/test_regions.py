"""Region acquisition (patches and slices of segmentation maps) against numpy brute force."""

import numpy as np
import pytest

import labelwise
from labelwise import acquisition as A


def brute_patches(m, patch, stride):
    N, *S = m.shape
    grid = [(s - p) // st + 1 for s, p, st in zip(S, patch, stride)]
    out = np.empty((N, *grid))
    for idx in np.ndindex(N, *grid):
        n, g = idx[0], idx[1:]
        sl = tuple(slice(gi * st, gi * st + p) for gi, st, p in zip(g, stride, patch))
        out[idx] = m[(n,) + sl].mean()
    return out


@pytest.mark.parametrize("shape, patch, stride", [((3, 11, 9), (3, 2), (2, 3)), ((2, 5, 6, 7), (2, 3, 3), (1, 2, 2)),
                                                  ((2, 13), (4,), (3,)),
                                                  # stride a multiple of the patch, equal to it, and past it
                                                  ((2, 23, 17), (3, 4), (6, 4)), ((2, 29), (3,), (7,))])
def test_patch_scores_match_brute_force(rng, shape, patch, stride):
    m = rng.random(shape)
    got = A.patch_scores(m, patch, stride)
    np.testing.assert_allclose(got, brute_patches(m, patch, stride), rtol=1e-12, atol=1e-12)
    # float32 keeps float32; a transposed (strided) view gives the same answer
    got32 = A.patch_scores(m.astype(np.float32), patch, stride)
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, got, rtol=1e-5, atol=1e-6)
    mt = np.ascontiguousarray(np.swapaxes(m, 0, -1)).swapaxes(0, -1)
    np.testing.assert_allclose(A.patch_scores(mt, patch, stride), got, rtol=1e-12)


@pytest.mark.parametrize("shape, patch, stride, b", [((2, 12, 10), (3, 3), (1, 1), 6),
                                                     ((2, 12, 10), (3, 3), (2, 2), 6),
                                                     ((2, 13, 11), (4, 3), (3, 1), 5),
                                                     ((2, 9, 8, 7), (3, 2, 4), (2, 1, 3), 7),
                                                     ((1, 40), (5,), (2,), 4)])
def test_top_regions_greedy_non_overlapping(rng, shape, patch, stride, b):
    check_top_regions_against_brute_force(rng.random(shape), patch, stride, b)


def check_top_regions_against_brute_force(m, patch, stride, b):
    corners, scores = A.top_regions(m, b, patch, stride)
    assert corners.shape == (b, 1 + len(patch)) and corners.dtype == np.int64
    assert np.all(np.diff(scores) <= 0)
    # brute-force greedy over all patches, overlap tested on voxel boxes (corner = grid index * stride)
    all_s = brute_patches(m, patch, stride)
    order = sorted(np.ndindex(*all_s.shape), key=lambda i: (-all_s[i], i))
    chosen = []
    for i in order:
        if len(chosen) == b:
            break
        box = (i[0], *[g * st for g, st in zip(i[1:], stride)])
        if any(c[0] == box[0] and all(abs(u - v) < p for u, v, p in zip(c[1:], box[1:], patch)) for c in chosen):
            continue
        chosen.append(box)
    np.testing.assert_array_equal(corners, np.array(chosen))
    grid_of = [(c[0], *[v // st for v, st in zip(c[1:], stride)]) for c in chosen]
    np.testing.assert_allclose(scores, [all_s[g] for g in grid_of], rtol=1e-12)


def test_top_regions_when_the_picks_lie_past_the_first_sorted_windows():
    """A smooth bump per image, quantised so that many patches tie: the patches that overlap the two
    best ones (79 x 79 = 6241 each) rank before the third pick, so the greedy reads past the first windows
    of the partial sort (4096 patches, then 4x more: picks at 9747, 20 562, 37 926 in the order); ties
    must still go to the lower index."""
    y, x = np.mgrid[0:200, 0:200]
    bump = np.exp(-((y - 90.0) ** 2 + (x - 110.0) ** 2) / (2 * 45.0**2))
    # multiples of 1/32: every patch sum is exact, so the reference and labelwise see the same ties
    m = np.stack([np.round(bump * 32) / 32, np.round(bump[::-1] * 32) / 32])  # [2, 200, 200]
    check_top_regions_against_brute_force(m, (40, 40), (1, 1), 24)  # the 24th at 44 446 of 51 842
    # as many as fit, then one more: the greedy reads the whole order, through every window
    k = len(A.top_regions(m[:1], 0, (40, 40), (1, 1))[0])
    assert k == 0
    fit = 0
    while True:
        try:
            A.top_regions(m[:1], fit + 1, (40, 40), (1, 1))
        except ValueError as e:
            assert f"found only {fit}" in str(e)
            break
        fit += 1
    check_top_regions_against_brute_force(m[:1], (40, 40), (1, 1), fit)


def test_slice_scores_and_torch(rng):
    m = rng.random((2, 4, 5, 6))
    for axis in (1, 2, 3, -1):
        a = axis % 4
        want = m.mean(axis=tuple(d for d in (1, 2, 3) if d != a))
        np.testing.assert_allclose(A.slice_scores(m, axis), want, rtol=1e-12)
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(m)
    got = A.slice_scores(t, 1)
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), m.mean(axis=(2, 3)), rtol=1e-12)
    c, s = A.top_regions(t, 2, 2)
    assert isinstance(c, torch.Tensor) and c.dtype == torch.int64


def test_region_errors():
    m = np.full((2, 4, 4), 0.5)
    with pytest.raises(ValueError, match="expected 2 values"):
        A.patch_scores(m, (2,))
    with pytest.raises(ValueError, match="need 1 <= patch"):
        A.patch_scores(m, (5, 2))
    with pytest.raises(ValueError, match=r"asked for 9 non-overlapping patches of size \(2, 2\), more than the 8 "
                                         r"whose voxels the maps of shape \(2, 4, 4\) could hold"):
        A.top_regions(m, 9, 2)
    with pytest.raises(ValueError, match="more than the 8 whose voxels"):
        A.top_regions(m, 10**12, 2)  # refused before any allocation
    # within that bound, a b the greedy pass cannot reach gets the core's count (one 3 x 3 patch fits in
    # 5 x 5; the bound said "at most 2 fit")
    with pytest.raises(ValueError, match="found only 1"):
        A.top_regions(np.arange(25.0).reshape(1, 5, 5), 2, 3, 1)
    with pytest.raises(ValueError, match="b: must be >= 0, got -1"):
        A.top_regions(m, -1, 2)
    # a bad patch is named before any [b, ...] output is allocated (a huge b was a MemoryError)
    for patch in ((7, 2), 0, (2, -1)):
        with pytest.raises(ValueError, match="patch: size"):
            A.top_regions(m, 2**40, patch)
    # within the volume bound (9 // 4 = 2) but every 2x2 patch of a 3x3 image overlaps the centre
    with pytest.raises(ValueError, match="found only 1"):
        A.top_regions(np.random.default_rng(0).random((1, 3, 3)), 2, 2, 1)
    # a patch holding both +inf and -inf has no mean: an error naming the patch, whatever the threads
    inf = np.arange(20.0)[None, None] / 20
    inf[0, 0, 10], inf[0, 0, 11] = np.inf, -np.inf
    with pytest.raises(ValueError, match=r"the patch at \[0, 0, 10\] holds both \+inf and -inf"):
        A.top_regions(inf, 4, (1, 2), (1, 2))
    with pytest.raises(ValueError, match=r"the patch at \[0, 0, 10\] holds both"):
        A.patch_scores(inf, (1, 2), (1, 2))
    with pytest.raises(ValueError, match=r"the slice at \[0, 0, 0\] holds both"):  # a whole slice, not a patch
        A.slice_scores(inf, axis=1)
    apart = np.arange(20.0)[None, None] / 20
    apart[0, 0, 10], apart[0, 0, 13] = np.inf, -np.inf
    ok = A.patch_scores(apart, (1, 2), (1, 1))  # patches holding one infinity are fine
    assert ok[0, 0, 9] == np.inf and ok[0, 0, 12] == -np.inf and np.isfinite(ok[0, 0, 11])
    many = np.zeros((8, 4, 4))
    many[0, 1, 2] = many[7, 0, 0] = np.nan
    for threads in (1, 2, 8):
        labelwise.set_num_threads(threads)
        try:
            with pytest.raises(ValueError, match=r"NaN at \[0, 1, 2\]"):
                A.patch_scores(many, 2)
        finally:
            labelwise.set_num_threads(0)
    # half-precision maps (mixed-precision training) are widened exactly to float32
    h = np.random.default_rng(0).uniform(size=(2, 6, 6)).astype(np.float16)
    got = A.patch_scores(h, 3)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, brute_patches(h.astype(np.float64), (3, 3), (3, 3)), rtol=1e-6)
    torch = pytest.importorskip("torch")
    tb = torch.from_numpy(h.astype(np.float32)).to(torch.bfloat16)
    np.testing.assert_allclose(A.patch_scores(tb, 3).numpy(), brute_patches(tb.float().numpy().astype(np.float64), (3, 3), (3, 3)),
                               rtol=1e-6)
    assert A.top_regions(tb, 2, 3)[0].shape == (2, 3)
    # sizes: numpy integers are integers, fractions are an error
    assert A.patch_scores(m, np.int64(2)).shape == (2, 2, 2)  # stride defaults to the patch
    with pytest.raises(TypeError, match="patch: expected an integer or one integer per spatial axis"):
        A.patch_scores(m, (2.7, 2.2))
    bad = m.copy()
    bad[1, 0, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN at \[1, 0, 1\]"):
        A.patch_scores(bad, 2)
    with pytest.raises(ValueError, match="spatial axis"):
        A.slice_scores(m, 0)
    with pytest.raises(TypeError, match="int64"):
        A.patch_scores(np.ones((2, 4, 4), dtype=np.int64), 2)


class _FakeGpu:
    """Claims to live on a CUDA device (DLPack device type 2), from no known framework."""

    shape = (2, 4, 4)

    def __dlpack__(self, **kw):  # pragma: no cover - never reached
        raise AssertionError("must fail before asking for the data")

    def __dlpack_device__(self):
        return (2, 0)


def test_regions_on_gpu_maps(rng):
    with pytest.raises(TypeError, match="pass a torch or cupy array"):
        A.slice_scores(_FakeGpu(), 1)
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    m = rng.random((2, 6, 7, 8))
    g = torch.from_numpy(m).cuda()
    got = A.patch_scores(g, (2, 3, 4), (1, 2, 2))
    assert got.is_cuda
    np.testing.assert_array_equal(got.cpu().numpy(), A.patch_scores(m, (2, 3, 4), (1, 2, 2)))
    c, s = A.top_regions(g, 3, 2)
    wc, ws = A.top_regions(m, 3, 2)
    assert c.is_cuda and s.is_cuda
    np.testing.assert_array_equal(c.cpu().numpy(), wc)
    np.testing.assert_array_equal(s.cpu().numpy(), ws)
    sl = A.slice_scores(g, 2)
    assert sl.is_cuda
    np.testing.assert_array_equal(sl.cpu().numpy(), A.slice_scores(m, 2))


def test_a_huge_score_does_not_swamp_the_neighbouring_patches(rng):
    # masking labelled voxels with -1e30 must leave every other patch's mean intact
    m = rng.random((2, 12, 10, 9))
    m[1, 4:8, 0:5, 3:6] = -1e30
    got = A.patch_scores(m, (4, 5, 3))
    for a in range(3):
        for b in range(2):
            for c in range(3):
                want = m[:, 4 * a:4 * a + 4, 5 * b:5 * b + 5, 3 * c:3 * c + 3].mean(axis=(1, 2, 3))
                np.testing.assert_allclose(got[:, a, b, c], want, rtol=1e-12)
    sl = A.slice_scores(m, 1)
    np.testing.assert_allclose(sl[0], m[0].mean(axis=(1, 2)), rtol=1e-12)
    c, s = A.top_regions(m, 5, (4, 5, 3), (2, 5, 3))
    assert (s > 0).all()  # the masked patch never wins, its neighbours keep their real means


def test_window_sums_of_huge_finite_values_do_not_overflow():
    big = np.finfo(np.float64).max
    m = np.array([[[1e308, 1e308, -1e308, -1e308, 1.0, 1.0]]])
    np.testing.assert_allclose(A.patch_scores(m, (1, 4), (1, 1))[0, 0], [0.0, -2.5e307, -5e307], rtol=1e-15, atol=1e-300)
    assert A.patch_scores(m, (1, 2), (1, 1))[0, 0, 0] == 1e308
    np.testing.assert_array_equal(A.slice_scores(np.full((1, 2, 3), 1e308), 1), [[1e308, 1e308]])  # was +inf
    c, s = A.top_regions(m, 1, (1, 4), (1, 1))
    assert s[0] == 0.0 and c[0].tolist() == [0, 0, 0]
    # +-DBL_MAX in place of the infinities (what the "+inf and -inf" error suggests) gives finite means
    x = np.zeros((1, 1, 8))
    x[0, 0, 2:4], x[0, 0, 4:6] = big, -big
    np.testing.assert_allclose(A.patch_scores(x, (1, 4), (1, 1))[0, 0], [big / 2, big / 4, 0.0, -big / 4, -big / 2],
                               rtol=1e-15)
    y = x.copy()
    y[0, 0, 2:4], y[0, 0, 4:6] = np.inf, -np.inf
    with pytest.raises(ValueError, match=r"holds both \+inf and -inf"):
        A.patch_scores(y, (1, 4), (1, 1))


def test_patch_and_stride_are_integers_within_int64():
    m = np.random.default_rng(1).random((2, 6, 5))
    for bad in (True, [True, 2], np.bool_(True), "ab", 2.0):
        with pytest.raises(TypeError, match="^patch: expected an integer or one integer per spatial axis"):
            A.patch_scores(m, bad)
    with pytest.raises(ValueError, match="^stride: expected an integer in"):
        A.patch_scores(m, 2, 2**63)
    with pytest.raises(ValueError, match="^patch: expected an integer in"):
        A.top_regions(m, 1, 2**63)
    with pytest.raises(ValueError, match=r"^map: empty \(shape \[2, 0, 5\]\)"):
        A.patch_scores(m[:, :0], 1)
