"""Slice-to-slice mask propagation: a synthetic volume with a known answer, the bundled MRI, bad input."""

import os

import numpy as np
import pytest

pytest.importorskip("scipy")
from labelwise import data  # noqa: E402
from labelwise import propagation as P  # noqa: E402
from reference import propagate_slices_ref  # noqa: E402


def sphere(rng, Z=20, H=28, W=30):
    zz, yy, xx = np.mgrid[:Z, :H, :W]
    r = np.sqrt((zz - Z / 2) ** 2 + (yy - H / 2) ** 2 + (xx - W / 2) ** 2)
    lab = (r < 7).astype(np.int64) + (r < 3).astype(np.int64)  # background, shell, core
    vol = lab * 1.0 + 0.05 * rng.standard_normal(lab.shape)
    return vol, lab


def test_sphere_is_recovered_from_two_slices_on_any_axis(rng):
    vol, lab = sphere(rng)
    for axis in (0, 1, 2):
        n = lab.shape[axis]
        mask, conf = P.propagate_slices(vol, lab, [n // 3, 2 * n // 3], axis=axis)
        assert mask.shape == lab.shape and conf.shape == lab.shape
        assert (mask == lab).mean() > 0.97, axis
        sl = [slice(None)] * 3
        sl[axis] = n // 3
        assert np.array_equal(mask[tuple(sl)], lab[tuple(sl)]) and np.all(conf[tuple(sl)] == 1)
        assert np.all((conf >= 0) & (conf <= 1))
    # only the annotated slices of `labels` are read
    scrambled = lab.copy()
    keep = np.zeros(lab.shape[0], bool)
    keep[[6, 13]] = True
    scrambled[~keep] = 99
    m1, _ = P.propagate_slices(vol, scrambled, [6, 13], num_classes=3)
    m2, _ = P.propagate_slices(vol, lab, [6, 13], num_classes=3)
    assert np.array_equal(m1, m2)


def test_propagate_slices_does_not_depend_on_the_intensity_units(rng):
    """Intensities are normalised per slice: a volume in other units (tiny, huge, near the float64
    limits) gives the same masks; powers of two the same bits. (Sums of squares of 1e-200 underflowed
    and of 1e307 overflowed, and an absolute 1e-12 guard flattened small units.)"""
    vol, lab = sphere(rng, Z=8, H=14, W=15)
    vol = vol + 0.3 * rng.standard_normal(vol.shape)
    m0, c0 = P.propagate_slices(vol, lab, [3])
    for scale in (2.0 ** -700, 2.0 ** 1000):
        m, c = P.propagate_slices(vol * scale, lab, [3])
        assert np.array_equal(m, m0) and np.array_equal(c, c0), scale
    for scale in (1e-300, 1e-200, 1e-20, 1e20, 1e300, 1e307):
        m, c = P.propagate_slices(vol * scale, lab, [3])
        assert np.array_equal(m, m0), scale
        np.testing.assert_allclose(c, c0, rtol=1e-6, err_msg=str(scale))
    assert np.all(c0 >= 1 / 3 - 1e-12)  # three classes: the chosen one has at least a third of the mass
    # float32 volumes near their own limits
    v32 = vol.astype(np.float32)
    m32, _ = P.propagate_slices(v32, lab, [3])
    for scale in (np.float32(1e-30), np.float32(1e30)):
        m, _ = P.propagate_slices(v32 * scale, lab, [3])
        assert (m == m32).mean() > 0.999, scale


def test_propagate_slices_equals_the_scipy_reference(rng):
    for axis, ann, kw in [(0, [6, 13], {}), (1, [3, 14, 20], {"erode": 3}), (2, [15], {"beta": 5.0, "min_confidence": 0.6}),
                          (-1, [0, 29], {"erode": 1})]:
        vol, lab = sphere(rng)
        vol = vol + 0.3 * rng.standard_normal(vol.shape)  # noisy: the walker has real work to do
        mask, conf = P.propagate_slices(vol.astype(np.float32), lab, ann, axis=axis, **kw)
        ref_m, ref_c = propagate_slices_ref(vol.astype(np.float32).astype(np.float64), lab, ann, axis=axis, **kw)
        same = mask == ref_m
        assert same.mean() > 0.999, (axis, same.mean())  # argmax may differ only on solver-roundoff ties
        # Two direct solvers (Eigen's LDLT, SciPy's factorized) on a Laplacian whose edge weights span
        # ~10 orders of magnitude (beta = 30) agree to ~1e-7 relative: worst 1.9e-7 over 771 seeds,
        # where rtol 1e-7 failed 6 % of runs. 1e-5 still catches any real difference in the walk.
        np.testing.assert_allclose(conf[same], ref_c[same], rtol=1e-5, atol=1e-9)


def test_propagate_slices_strided_and_threads(rng):
    import labelwise as lw

    vol, lab = sphere(rng, Z=16, H=20, W=22)
    vol = vol + 0.3 * rng.standard_normal(vol.shape)
    want = P.propagate_slices(vol, lab, [2, 7, 12])
    got = P.propagate_slices(np.asfortranarray(vol), np.asfortranarray(lab), [12, 2, 7, 7])  # order, repeats
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    try:
        lw.set_num_threads(1)
        one = P.propagate_slices(vol, lab, [2, 7, 12])
    finally:
        lw.set_num_threads(0)
    np.testing.assert_array_equal(one[0], want[0])
    np.testing.assert_array_equal(one[1], want[1])
    assert isinstance(want[0], np.ndarray) and want[0].dtype == np.int64 and want[1].dtype == np.float64
    torch = pytest.importorskip("torch")
    t_mask, t_conf = P.propagate_slices(torch.from_numpy(vol), torch.from_numpy(lab), [2, 7, 12])
    assert isinstance(t_mask, torch.Tensor) and t_mask.dtype == torch.int64 and t_conf.dtype == torch.float64
    np.testing.assert_array_equal(t_mask.numpy(), want[0])
    np.testing.assert_array_equal(t_conf.numpy(), want[1])


@pytest.mark.skipif(not os.path.exists(os.path.join(data.MRICRON_TEMPLATES, "ch2.nii.gz")),
                    reason="Debian's mricron-data is not installed")
def test_colin27_lobes_from_ten_percent_of_slices():
    pytest.importorskip("nibabel")
    t1, lab = data.colin27()
    v = t1.data[::2, ::2, ::2]
    L = lab.data[::2, ::2, ::2].astype(np.int64)
    Z = v.shape[2]
    ann = list(range(4, Z, 10))  # ~10 % of the axial slices annotated
    mask, conf = P.propagate_slices(v, L, ann, axis=2, num_classes=len(data.AAL_LOBES))
    rest = np.ones(Z, bool)
    rest[ann] = False
    m, t, c = mask[:, :, rest], L[:, :, rest], conf[:, :, rest]
    assert (m == t).mean() > 0.88  # measured 0.93
    dice = [2 * ((m == k) & (t == k)).sum() / ((m == k).sum() + (t == k).sum()) for k in range(1, 9)]
    assert np.mean(dice) > 0.55  # measured 0.66
    # the per-voxel confidence tells errors apart: lower on wrong voxels than on right ones
    assert c[m != t].mean() < c[m == t].mean() - 0.15


def test_propagate_slices_errors(rng):
    vol, lab = sphere(rng, Z=6, H=8, W=8)
    with pytest.raises(ValueError, match="at least one annotated"):
        P.propagate_slices(vol, lab, [])
    with pytest.raises(ValueError, match="indices must be in"):
        P.propagate_slices(vol, lab, [6])
    with pytest.raises(ValueError, match="same shape"):
        P.propagate_slices(vol, lab[:3], [1])
    with pytest.raises(TypeError, match="integer"):
        P.propagate_slices(vol, lab.astype(float), [1])
    bad = vol.copy()
    bad[2, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        P.propagate_slices(bad, lab, [1])
    with pytest.raises(ValueError, match="num_classes"):
        P.propagate_slices(vol, lab, [3], num_classes=2)
    with pytest.raises(ValueError, match=r"num_classes: at most 65536 .*got 70000"):
        P.propagate_slices(vol, lab, [3], num_classes=70000)
    for huge in (10**12, 2**63 - 1):  # bad_alloc / an overflowing class count before
        big = lab.copy()
        big[3, 0, 0] = huge
        with pytest.raises(ValueError, match=rf"labels: class {huge} on an annotated slice;.*at most 65536 classes"):
            P.propagate_slices(vol, big, [3])
    u64 = lab.astype(np.uint64)
    u64[3, 0, 0] = 2**64 - 1  # used to wrap to -1 and be reported as class -1
    with pytest.raises(ValueError, match=f"labels: class {2**64 - 1} is beyond the int64 range"):
        P.propagate_slices(vol, u64, [3])
    neg = lab.copy()
    neg[1, 2, 3] = -1
    with pytest.raises(ValueError, match=r"annotated slice 1 holds class -1 at \[2, 3\]"):
        P.propagate_slices(vol, neg, [1])
    P.propagate_slices(vol, neg, [2])  # slices that are not annotated are never read
    with pytest.raises(ValueError, match="beta"):
        P.propagate_slices(vol, lab, [1], beta=0)
    for e in (-1, 0):  # 0 would seed every confident pixel: a copy of the mask with confidence 1
        with pytest.raises(ValueError, match=r"erode: expected an integer in \[1, "):
            P.propagate_slices(vol, lab, [1], erode=e)
    with pytest.raises(ValueError, match="min_confidence"):
        P.propagate_slices(vol, lab, [1], min_confidence=1.5)
    with pytest.raises(ValueError, match="axis"):
        P.propagate_slices(vol, lab, [1], axis=3)
    # an erosion larger than the structures leaves no seed: the boundaries are still decided from the image,
    # so the confidence there is below 1 (a copy of the neighbour's mask reported 1 everywhere)
    big, big_lab = sphere(rng)
    mask, conf = P.propagate_slices(big, big_lab, [6], erode=30)
    assert conf.min() < 0.99 and (mask != big_lab).any()
    assert conf[mask != big_lab].mean() < conf[mask == big_lab].mean()
    # a boolean mask over the slice axis is a set of slices, not the indices 0 and 1
    sel = np.zeros(6, dtype=bool)
    sel[[1, 4]] = True
    for a, b in zip(P.propagate_slices(vol, lab, sel), P.propagate_slices(vol, lab, [1, 4])):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="one entry per slice"):
        P.propagate_slices(vol, lab, sel[:5])
    with pytest.raises(TypeError, match="slice indices"):
        P.propagate_slices(vol, lab, [1.7, 4.2])


def test_thin_structures_and_the_erosion(rng):
    """The documented limit: a bar 4 pixels wide, present on every slice, is kept on every propagated slice
    with erode=1 and vanishes from all of them with erode=2 (2·2 + 1 > 4), between annotated slices too."""
    Z, H, W = 10, 32, 32
    lab = np.zeros((Z, H, W), np.int64)
    lab[:, 8:24, 8:24] = 1
    lab[:, 15:19, 4:28] = 2
    vol = np.where(lab == 2, 3.0, lab * 1.0) + 0.05 * rng.standard_normal((Z, H, W))
    for ann in ([0], [0, 9]):
        bar = {e: (P.propagate_slices(vol, lab, ann, erode=e)[0] == 2).sum(axis=(1, 2)) for e in (1, 2)}
        assert (np.abs(bar[1] - 96) <= 4).all(), (ann, bar[1])  # 4 x 24 voxels; a few boundary ones may differ
        assert (bar[2][[s for s in range(Z) if s not in ann]] == 0).all(), (ann, bar[2])
        ref_m, _ = propagate_slices_ref(vol, lab, ann, erode=1)
        assert (P.propagate_slices(vol, lab, ann, erode=1)[0] == ref_m).mean() > 0.999
