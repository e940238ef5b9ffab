import numpy as np
import pytest

import labelwise as lw
from labelwise import uncertainty as U

from reference import metrics as ref_metrics, random_probs

ALL = U.METRICS
TOL = {np.float32: 3e-4, np.float64: 1e-9}


def _close(got, want, tol, name):
    got = np.asarray(got, dtype=np.float64)
    ok = np.isclose(got, want, rtol=tol, atol=tol) | ((got == want) & np.isinf(want))
    if name == "balentacq":
        # The pole: an item certain to within rounding (top mean within ~1e-12 of 1). The kernel's and
        # the reference's float64 means may differ in the last ulp with one of them exactly 1, which is
        # then certain (-inf) while the other gives s > 1e12: both are the documented behaviour.
        ok |= ((got == -np.inf) & (want > 1e12)) | ((want == -np.inf) & (got > 1e12))
        # Likewise at the Bernoulli bound: top mean p with p(1 - p) at the 1e-9 variance floor is -inf on
        # one side and about -1e9 (the pole) on the other.
        ok |= ((got == -np.inf) & (want < -1e6)) | ((want == -np.inf) & (got < -1e6))
    assert ok.all(), f"{name}: max err {np.max(np.abs(got - want)[~ok])} at {np.flatnonzero(~ok)[:5]}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("input_kind", ["probs", "log_probs", "logits"])
def test_all_metrics_match_float64_reference(rng, dtype, input_kind):
    N, K, C = 400, 9, 6
    p = random_probs(rng, (N, K, C)).astype(dtype)
    if input_kind == "probs":
        x = p
    elif input_kind == "log_probs":
        with np.errstate(divide="ignore"):
            x = np.log(p)
    else:
        with np.errstate(divide="ignore"):
            x = (np.log(p) + rng.normal(0, 3, size=(N, K, 1))).astype(dtype)
    res = U.score(x, input=input_kind)
    assert set(res) == set(ALL)
    # The reference sees the probabilities the kernel sees, in float64.
    x64 = x.astype(np.float64)
    if input_kind == "probs":
        p64 = x64
    elif input_kind == "log_probs":
        p64 = np.exp(x64)
    else:
        e = np.exp(x64 - x64.max(axis=2, keepdims=True))
        p64 = e / e.sum(axis=2, keepdims=True)
    want = ref_metrics(p64)
    for name in ALL:
        assert res[name].dtype == dtype and res[name].shape == (N,)
        if name == "balentacq" and dtype == np.float32:
            # s = (H + ln 2) / (MJEnt + H) is ill-conditioned where the denominator nears 0: a relative
            # error e in the float32 probabilities moves s by about e·s²/(H + ln 2). So the tolerance
            # grows with |s| (s ~ 1 for most items; the rare items with |s| in the thousands get more).
            s_abs = np.abs(np.where(np.isfinite(want[name]), want[name], 0.0))
            tol = 3e-3 + 2e-6 * s_abs
            got = np.asarray(res[name], dtype=np.float64)
            ok = np.isclose(got, want[name], rtol=tol, atol=3e-3) | ((got == want[name]) & np.isinf(want[name]))
            assert ok.all(), f"balentacq: {got[~ok][:5]} vs {want[name][~ok][:5]}"
            continue
        if name == "balentacq":
            # float64 too: near its pole (|s| ~ 1e5) the rounding of float64 sums moves s by more
            # than 1e-9 relative (2 runs in 11 000 failed a flat 1e-9); the same |s|-scaled bound as
            # test_logs_around_the_vector_width.
            _close(res[name], want[name], 1e-9 + 1e-12 * np.abs(np.where(np.isfinite(want[name]), want[name], 0)), name)
            continue
        _close(res[name], want[name], TOL[dtype], name)


def test_single_functions_equal_fused_score(rng):
    x = random_probs(rng, (50, 4, 3))
    fused = U.score(x)
    for name in ALL:
        np.testing.assert_array_equal(getattr(U, name)(x), fused[name])


def test_layouts_are_zero_copy_views_with_named_axes(rng):
    N, K, C = 40, 5, 4
    x = random_probs(rng, (N, K, C))
    base = U.score(x)
    # [K, N, C] (batchbald-style transposed) and [N, C, K] (BaaL's layout), as strided views.
    kn = np.ascontiguousarray(x.transpose(1, 0, 2)).transpose(1, 0, 2)  # same logical array, other strides
    baal = np.ascontiguousarray(x.transpose(0, 2, 1))
    for name in ALL:
        # Other strides take other (non-vectorised) loops: equal to rounding, not bit for bit.
        same = dict(rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(U.score(kn)[name], base[name], **same)
        np.testing.assert_allclose(getattr(U, name)(baal, sample_axis=-1, class_axis=1), base[name], **same)
        np.testing.assert_allclose(getattr(U, name)(x.transpose(1, 0, 2), sample_axis=0, class_axis=2), base[name], **same)
    # Negative strides and read-only memory.
    rev = x[::-1]
    rev.setflags(write=False)
    np.testing.assert_allclose(U.bald(rev), base["bald"][::-1], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("spatial", [(7, 9), (3, 4, 5)])
def test_segmentation_maps_equal_per_pixel(rng, spatial):
    B, K, C = 2, 4, 3
    pix = random_probs(rng, (B, *spatial, K, C)).astype(np.float32)  # per-pixel samples
    axes = list(range(pix.ndim))
    vol = np.ascontiguousarray(np.moveaxis(pix, [-2, -1], [1, 2]))  # [B, K, C, *spatial]
    maps = U.score(vol)
    flat = U.score(pix.reshape(-1, K, C))
    for name in ALL:
        assert maps[name].shape == (B, *spatial)
        np.testing.assert_allclose(maps[name].reshape(-1), flat[name], rtol=2e-5, atol=2e-5)
    del axes


def test_single_predictions(rng):
    p = random_probs(rng, (30, 5))
    res = U.score(p, sample_axis=None, class_axis=1)
    assert set(res) == {m for m in ALL if not lw._core.metric_needs_samples(m)}
    want = ref_metrics(p[:, None, :])
    for name, got in res.items():
        _close(got, want[name], 1e-9, name)
    with pytest.raises(ValueError, match="no sample axis"):
        U.bald(p, sample_axis=None, class_axis=1)


def test_limits_at_exact_zeros_are_finite():
    x = np.array([[[1, 0, 0]] * 3, [[0.5, 0.5, 0], [0, 1, 0], [1, 0, 0]]], dtype=np.float64)
    res = U.score(x)
    for name, v in res.items():
        assert not np.isnan(v).any(), name
    assert res["bald"][0] == 0 and res["predictive_entropy"][0] == 0
    assert np.isneginf(res["balentacq"][0])  # certain item: bottom of the ranking (reference: NaN sentinel)
    _close(res["balentacq"][1:], ref_metrics(x)["balentacq"][1:], 1e-9, "balentacq")
    # float32 softmax saturates: the top class is exactly 1 while the others are tiny but not 0.
    sat = np.array([[[1.0, 1e-20, 1e-25]] * 4], dtype=np.float32)
    assert np.isneginf(U.balentacq(sat)[0])
    assert U.predictive_entropy(sat)[0] > 0
    # float64 predictions closer to 1 than the variance floor allows (p(1 - p) < 1e-9): every moment-
    # matched Beta is invalid and the formula jumps to about +ln 2 / (2H) (ranked first); certain, -inf.
    # Just above the bound the pole gives very low scores.
    for gap, certain in ((1e-10, True), (5e-10, True), (2e-9, False), (1e-7, False)):
        near = np.array([[[1 - gap, gap * 0.6, gap * 0.4], [1 - gap * 1.1, gap * 0.7, gap * 0.4],
                          [1 - gap * 0.9, gap * 0.5, gap * 0.4]]])
        v = U.balentacq(near)[0]
        assert np.isneginf(v) == certain and (certain or v < -1e3), (gap, v)
        assert np.isneginf(ref_metrics(near)["balentacq"][0]) == certain


def test_torch_in_torch_out(rng):
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(random_probs(rng, (20, 6, 4)))
    res = U.score(x, ["bald", "mean_std"])
    assert isinstance(res["bald"], torch.Tensor) and res["bald"].dtype == torch.float64
    np.testing.assert_array_equal(res["bald"].numpy(), U.bald(x.numpy()))
    # Non-contiguous torch view (permute) is read in place.
    xt = x.permute(1, 2, 0)  # [K, C, N]
    np.testing.assert_allclose(U.bald(xt, sample_axis=0, class_axis=1).numpy(), res["bald"].numpy(), rtol=1e-12, atol=1e-14)
    logits = torch.randn(8, 5, 3, dtype=torch.float32)
    want = U.bald(torch.softmax(logits, dim=-1))
    got = U.bald(logits, input="logits")
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not lw.built_with_cuda(), reason="built without CUDA")
def test_torch_cuda_equals_cpu(rng):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x = torch.from_numpy(random_probs(rng, (1000, 10, 7)).astype(np.float32))
    cpu = U.score(x)
    gpu = U.score(x.cuda())
    for name in ALL:
        assert gpu[name].is_cuda
        np.testing.assert_allclose(gpu[name].cpu().numpy(), cpu[name].numpy(), rtol=1e-4, atol=1e-5)


def test_cupy_if_available(rng):
    cupy = pytest.importorskip("cupy")
    try:
        cupy.cuda.runtime.getDeviceCount()
    except Exception:
        pytest.skip("no CUDA device")
    x = random_probs(rng, (100, 4, 3)).astype(np.float32)
    got = U.bald(cupy.asarray(x))
    assert isinstance(got, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(got), U.bald(x), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "mutate, kind, match",
    [
        (lambda x: x.__setitem__((1, 0, 0), np.nan), "probs", r"item \[1\].*NaN"),
        (lambda x: x.__setitem__((0, 1, 2), np.inf), "probs", r"item \[0\].*Inf"),
        (lambda x: (x.__setitem__((2, 0, 0), -0.1), x.__setitem__((2, 0, 1), 0.6)), "probs", "negative"),
        (lambda x: x.__setitem__((3, 2, 1), 0.9), "probs", r"do not sum to 1 over the class axis \(tolerance 1e-06\)"),
        (lambda x: None, "log_probs", "log-probabilities that do not sum to 1"),
        (lambda x: x.__setitem__((0, 0, slice(None)), -np.inf), "logits", "all -inf"),
    ],
)
def test_bad_values_raise_value_error(mutate, kind, match):
    x = np.full((4, 3, 4), 0.25)
    mutate(x)
    with pytest.raises(ValueError, match=match):
        U.bald(x, input=kind)


def test_bad_shapes_and_types():
    x = np.full((4, 3, 4), 0.25)
    for dt in ("uint16", "int8"):  # named as the frameworks name them, not by DLPack type code
        with pytest.raises(TypeError, match=rf"x: unsupported dtype {dt}; expected float32 / float64"):
            U.bald(np.ones((2, 3, 4), dt))
    with pytest.raises(ValueError, match="expected rank >= 2"):
        U.bald(np.full(4, 0.25))
    with pytest.raises(ValueError, match="at least 2 samples"):
        U.bald(np.full((4, 1, 4), 0.25))
    with pytest.raises(ValueError, match="at least 2 classes"):
        U.predictive_entropy(np.ones((4, 3, 1)))
    with pytest.raises(ValueError, match="empty"):
        U.bald(np.full((0, 3, 4), 0.25))
    with pytest.raises(ValueError, match=r"both name axis 2 .*for the samples last, as \[N, C, \.\.\., K\], pass class_axis=1"):
        U.bald(x, sample_axis=-1)  # class_axis keeps its default, 2
    with pytest.raises(ValueError, match="out of range"):
        U.bald(x, class_axis=3)
    with pytest.raises(ValueError, match=r"shape \[4, 3\] has no axis 2 .* sample_axis=None"):
        U.predictive_entropy(np.full((4, 3), 1 / 3))  # single predictions with the default axes
    with pytest.raises(TypeError, match="int64"):
        U.bald(np.ones((4, 3, 4), dtype=np.int64))
    with pytest.raises(TypeError, match="expected dtype float16, bfloat16, float32 or float64, got uint8"):
        U.bald(x.astype(np.uint8))
    with pytest.raises(ValueError, match="unknown metric 'entropy'"):
        U.score(x, ["entropy"])
    with pytest.raises(ValueError, match="input: expected"):
        U.bald(x, input="softmax")
    # arguments of the wrong kind are named
    for bad in (None, "abc", {}):
        with pytest.raises(TypeError, match="x: expected a real numeric array"):
            U.margin(bad)
    for dt in (np.longdouble, np.complex128):
        with pytest.raises(TypeError, match="x: expected a real numeric array"):
            U.margin(np.full((2, 2), 0.5, dtype=dt), sample_axis=None, class_axis=1)
    for kw, match in (({"class_axis": 1.5}, "class_axis: expected an integer, got float"),
                      ({"sample_axis": 1.0}, "sample_axis: expected an integer, got float"),
                      ({"sample_axis": True}, "sample_axis: expected an integer, got bool"),
                      ({"sample_axis": 2**40},
                       r"sample_axis: expected an integer in \[-2147483648, 2147483647\], got 1099511627776"),
                      ({"input": None}, "input: expected 'probs'")):
        with pytest.raises((TypeError, ValueError), match=match):
            U.bald(x, **kw)
    with pytest.raises(ValueError, match="'bald' is requested twice"):
        U.score(x, ["bald", "bald"])
    with pytest.raises(TypeError, match="metrics: expected metric names"):
        U.score(x, ["bald", 3])
    # the same rules and messages as the heads' metrics= (one check serves both)
    with pytest.raises(TypeError, match="metrics: expected a metric name or a sequence of names, got int"):
        U.score(x, 5)
    with pytest.raises(ValueError, match="metrics: expected at least one metric name"):
        U.score(x, [])
    assert list(U.score(x, "bald")) == ["bald"]
    # all ten named explicitly need samples; the default (None) drops those that do
    with pytest.raises(ValueError):
        U.score(x[:, 0], U.METRICS, sample_axis=None, class_axis=1)
    assert "bald" not in U.score(x[:, 0], sample_axis=None, class_axis=1)
    # a masked array would be read as if unmasked: an error when anything is masked
    masked = np.ma.masked_array(x, mask=np.zeros(x.shape, bool))
    np.testing.assert_array_equal(U.bald(masked), U.bald(x))
    masked[0, 0, 0] = np.ma.masked
    with pytest.raises(ValueError, match="x: a masked array with masked entries"):
        U.bald(masked)
    # non-native byte order is read through a native copy; results are native
    be = U.margin(x[:, 0].astype(">f8"), sample_axis=None, class_axis=1)
    assert be.dtype == np.float64 and be.dtype.isnative
    np.testing.assert_array_equal(be, U.margin(x[:, 0], sample_axis=None, class_axis=1))


def test_torch_autograd_tensors_and_subclasses(rng):
    """Model outputs that require grad, and torch subclasses (MONAI's MetaTensor), are read in place and
    the results come back as torch tensors."""
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(random_probs(rng, (6, 5, 3))).requires_grad_()
    got = U.bald(x)
    assert isinstance(got, torch.Tensor) and not got.requires_grad
    np.testing.assert_array_equal(got.numpy(), U.bald(x.detach().numpy()))

    class MetaLike(torch.Tensor):  # a subclass from another package
        pass

    MetaLike.__module__ = "monai.data.meta_tensor"
    sub = x.detach().as_subclass(MetaLike)
    res = U.bald(sub)
    assert isinstance(res, torch.Tensor)
    np.testing.assert_array_equal(res.numpy(), got.numpy())


def test_torch_lazy_negation_complex_and_meta(rng):
    """A lazily negated torch view (z.conj().imag) is read with its sign (DLPack exports the stored values);
    complex and meta tensors are refused by name."""
    torch = pytest.importorskip("torch")
    z = torch.complex(torch.from_numpy(rng.normal(size=(4, 3, 5))), torch.from_numpy(rng.normal(size=(4, 3, 5))))
    neg = z.conj().imag
    assert neg.is_neg()
    expect = ref_metrics(torch.softmax(-z.imag, dim=2).numpy())["predictive_entropy"]
    np.testing.assert_allclose(U.predictive_entropy(neg, input="logits").numpy(), expect, rtol=1e-12)
    with pytest.raises(TypeError, match="x: expected a real numeric tensor, got dtype complex128"):
        U.predictive_entropy(z)
    with pytest.raises(TypeError, match="x: a torch tensor on device 'meta'"):
        U.predictive_entropy(torch.empty(2, 3, 4, device="meta"))


def test_producers_without_versioned_dlpack(rng):
    """numpy < 2.1 has no __dlpack__(max_version=...) and refuses read-only arrays: the legacy call, then a
    copy, must be reached (a nested handler used to leak a bare BufferError)."""

    class OldNumpy(np.ndarray):
        def __dlpack__(self, *, stream=None, max_version=None, **kw):
            if max_version is not None:
                raise TypeError("__dlpack__() got an unexpected keyword argument 'max_version'")
            if not self.flags.writeable:
                raise BufferError("Cannot export readonly array since signalling readonly is unsupported")
            return np.asarray(self).__dlpack__()

    x = random_probs(rng, (5, 4, 3))
    old = x.view(OldNumpy)
    old.flags.writeable = False
    np.testing.assert_allclose(U.bald(old), ref_metrics(x)["bald"], rtol=1e-12, atol=1e-15)


def test_list_input_and_thread_invariance(rng):
    x = random_probs(rng, (3000, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(U.bald(x.tolist()), U.bald(x.astype(np.float64)))
    lw.set_num_threads(1)
    one = U.score(x)
    lw.set_num_threads(3)
    three = U.score(x)
    lw.set_num_threads(0)
    for name in ALL:
        np.testing.assert_array_equal(one[name], three[name])


def test_against_baal_bald_if_installed(rng):
    baal = pytest.importorskip("baal.active.heuristics")
    x = random_probs(rng, (64, 10, 4))  # [N, K, C]
    # BaaL takes [N, C, K] probabilities and returns BALD scores (its own formula, with an epsilon).
    want = baal.BALD().compute_score(np.ascontiguousarray(x.transpose(0, 2, 1)))
    np.testing.assert_allclose(U.bald(x), want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("input_kind", ["log_probs", "logits"])
@pytest.mark.parametrize("C", [2, 10, 16, 17])
def test_logs_around_the_vector_width(rng, dtype, input_kind, C):
    # C <= 16: softmax fused into the CPU block path; C = 17: the per-item path. Both against float64,
    # also in BaaL's layout [N, C, K] (gathered into blocks), with -inf entries (exact zeros).
    N, K = 77, 20
    p = random_probs(rng, (N, K, C))
    with np.errstate(divide="ignore"):
        x = np.log(p) + (rng.normal(0, 3, size=(N, K, 1)) if input_kind == "logits" else 0.0)
    x = x.astype(dtype)
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(axis=2, keepdims=True))
    p64 = np.exp(x64) if input_kind == "log_probs" else e / e.sum(axis=2, keepdims=True)
    want = ref_metrics(p64)
    # Nearly certain samples: 1 - p carries float32 rounding that BalEntAcq amplifies (C++ tests).
    certain = (p64 > 1 - 1e-3).any(axis=(1, 2))
    for res in (U.score(x, input=input_kind),
                U.score(np.ascontiguousarray(x.transpose(0, 2, 1)), input=input_kind, sample_axis=-1, class_axis=1)):
        for name in ALL:
            if name == "balentacq" and dtype == np.float32:
                got = np.asarray(res[name], dtype=np.float64)[~certain]
                w = want[name][~certain]
                tol = 1e-5 + 1e-6 * np.abs(w)  # measured: |error| <= 1.1e-7 (1 + |w|) over 300 seeds
                # near the pole (s = 1/s' small) float32 rounding gives up to ~3e-3 relative error (C++ test)
                assert ((np.abs(got - w) <= tol * (1 + np.abs(w))) | (np.abs(got - w) <= 5e-3 * np.abs(w))).all(), name
                continue
            tol = TOL[dtype] if name != "balentacq" else 1e-9 + 1e-12 * np.abs(np.where(np.isfinite(want[name]), want[name], 0))
            _close(res[name], want[name], tol, name)


def test_items_too_large_for_int_offsets():
    """K·C values per item are addressed with int offsets: an item beyond 2^31 - 4097 values is an error
    naming x, raised before anything is read (a broadcast view: no memory behind it)."""
    x = np.broadcast_to(np.float32(0.5), (1, 3, 10**9))
    with pytest.raises(ValueError, match=r"x: one item holds K·C = 3000000000 values \(K = 3, C = 1000000000\)"):
        U.bald(x)


@pytest.mark.parametrize("C", [2, 10, 16, 17])
def test_logs_errors_name_the_first_bad_item(C):
    x = np.full((77, 3, C), -np.log(C))
    x[40, 2, :] = -np.inf  # a sample all -inf
    x[60, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"item \[40\].*whose logits are all -inf"):
        U.score(x, input="logits")
    with pytest.raises(ValueError, match=r"item \[40\].*whose log-probabilities are all -inf \(probabilities summing to 0"):
        U.score(x, input="log_probs")
    x[40, 0, 1] = np.inf  # NaN / +Inf anywhere in the item come first
    with pytest.raises(ValueError, match=r"item \[40\].*NaN or Inf"):
        U.score(x, input="log_probs")
    x[40] = -np.log(C)
    x[9, 1, :] += 0.01
    with pytest.raises(ValueError, match=r"item \[9\].*log-probabilities that do not sum to 1"):
        U.score(x, input="log_probs")
    with pytest.raises(ValueError, match=r"item \[60\].*NaN or Inf"):
        U.score(x, input="logits")


@pytest.mark.parametrize("C", [2, 10, 17])
def test_log_probs_with_a_positive_maximum(C):
    # Log-probabilities within the tolerance above 0 (float32: 1e-3) are accepted and used as given;
    # beyond it, or far above (exp overflows), they are unnormalised.
    x = np.full((40, 3, C), -np.inf, dtype=np.float32)
    x[:, :, 0] = 5e-4
    res = U.score(x, input="log_probs")
    np.testing.assert_allclose(res["least_confidence"], 1.0 - np.exp(5e-4), rtol=0, atol=3e-7)
    for bad in (2e-3, 100.0, 1e30):
        y = x.copy()
        y[33, 1, 0] = bad
        with pytest.raises(ValueError, match=r"item \[33\].*log-probabilities that do not sum to 1"):
            U.score(y, input="log_probs")


def test_half_precision_inputs(rng):
    """float16 / bfloat16 (numpy float16, torch CPU half and bfloat16): widened exactly, results in
    float32 equal to the float32 pass over the same values (logits; probabilities where float32's
    tolerance accepts them) and to the float64 definitions; errors name the item."""
    torch = pytest.importorskip("torch")
    p = random_probs(rng, (120, 8, 6)).astype(np.float32)
    logits = np.log(p) + 1.0
    for tdtype in (torch.float16, torch.bfloat16):
        xl = torch.from_numpy(logits).to(tdtype)
        got = U.score(xl, input="logits")
        want = U.score(xl.float(), input="logits")
        for m in U.METRICS:
            assert got[m].dtype == torch.float32
            np.testing.assert_array_equal(got[m].numpy(), want[m].numpy())
        xp = torch.from_numpy(p).to(tdtype)  # rounded probabilities: within the half format's tolerance
        got = U.score(xp, input="probs")
        ref = ref_metrics(xp.double().numpy())
        for m in ("predictive_entropy", "bald", "mean_std", "margin"):
            np.testing.assert_allclose(got[m].numpy(), ref[m], rtol=2e-4, atol=2e-5)
        bad = xp.clone()
        bad[7, 3, 2] = float("nan")
        with pytest.raises(ValueError, match=r"item \[7\].*NaN"):
            U.bald(bad)
    xn = p.astype(np.float16)  # numpy float16
    out = U.bald(xn)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref_metrics(xn.astype(np.float64))["bald"], rtol=2e-4, atol=2e-5)
    # a strided half view (BaaL's [N, C, K] layout) equals the contiguous one
    xt = torch.from_numpy(np.ascontiguousarray(p.transpose(0, 2, 1))).half()
    np.testing.assert_array_equal(U.bald(xt, sample_axis=-1, class_axis=1).numpy(),
                                  U.bald(xt.transpose(1, 2).contiguous()).numpy())


def test_half_precision_views_in_any_layout_equal_a_float32_copy(rng):
    """The float16 widening reads the trailing axes that lie contiguously as one row and walks the
    others (its merge rule compares strides): negative strides on each axis, broadcast (stride 0)
    items, samples and classes, extent-1 axes with any stride, and a row longer than its 2^16-value
    pieces must all give exactly the metrics of a contiguous float32 copy of the same values."""
    base = rng.dirichlet(np.ones(7), size=(40, 6)).astype(np.float16)  # [N, K, C]
    one = rng.dirichlet(np.ones(7), size=(1, 6)).astype(np.float16)
    long_row = rng.dirichlet(np.ones(10), size=(800, 10)).astype(np.float16)  # 80 000 values
    views = {
        "items reversed": base[::-1],
        "samples reversed": base[:, ::-1],
        "classes reversed": base[:, :, ::-1],
        "items broadcast": np.broadcast_to(base[:1], base.shape),
        "samples broadcast": np.broadcast_to(base[:, :1], base.shape),
        "one item, extent-1 axis with a large stride": np.lib.stride_tricks.as_strided(
            one, shape=(1, 6, 7), strides=(123456, one.strides[1], one.strides[2])),
        "every other item and sample": np.ascontiguousarray(np.repeat(np.repeat(base, 2, 0), 2, 1))[::2, ::2],
        "one block of 80 000 values": long_row,
    }
    for what, v in views.items():
        got = U.score(v, U.METRICS)
        want = U.score(np.ascontiguousarray(v.astype(np.float32)), U.METRICS)
        for m in U.METRICS:
            np.testing.assert_array_equal(np.asarray(got[m]), np.asarray(want[m]), err_msg=f"{what}: {m}")


@pytest.mark.skipif(not lw.built_with_cuda(), reason="built without CUDA")
def test_half_on_cuda_equals_cpu(rng):
    """float16 / bfloat16 CUDA tensors (the device widening kernel): the CPU's results, in float32, on
    the device; a NaN is reported with its item."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    p = random_probs(rng, (64, 6, 5, 3, 4)).astype(np.float32)  # [N, K, C, H, W] after the move below
    p = np.ascontiguousarray(np.moveaxis(p, -1, 2))
    for tdtype in (torch.float16, torch.bfloat16):
        for kind, x in (("probs", p), ("logits", np.log(p) + 0.5)):
            xc = torch.from_numpy(x).to(tdtype)
            cpu = U.score(xc, input=kind)
            gpu = U.score(xc.cuda(), input=kind)
            for m in U.METRICS:
                assert gpu[m].is_cuda and gpu[m].dtype == torch.float32
                g, c = gpu[m].cpu().numpy().astype(np.float64), cpu[m].numpy().astype(np.float64)
                if m == "balentacq":
                    # float32 arithmetic on both sides, rounded differently (CUDA's expf / logf against
                    # the CPU's): s = (H + ln 2)/(MJEnt + H) amplifies that (the C++ rule, test_cuda.cu:
                    # 1e-2 + 4e-6 |s| relative, same sign; only "a number" where the top mean is within
                    # 1e-2 of 1). Measured on an H200: up to 1.9e-4 relative at |s| ~ 390.
                    certain = cpu["least_confidence"].numpy() < 1e-2
                    rel = (1e-2 + 4e-6 * np.abs(c)) * np.abs(c)
                    ok = ((g == c) & np.isinf(c)) | (np.isfinite(g) & np.isfinite(c) & ((g > 0) == (c > 0)) &
                                                     (np.abs(g - c) <= rel)) | (certain & ~np.isnan(g) & ~np.isnan(c))
                    assert ok.all(), f"balentacq: {g[~ok][:5]} vs {c[~ok][:5]}"
                    continue
                np.testing.assert_allclose(g, c, rtol=1e-5, atol=1e-6)
    bad = torch.from_numpy(p).half()
    bad[9, 1, 2, 0, 1] = float("nan")
    with pytest.raises(ValueError, match=r"item \[9, 0, 1\].*NaN"):
        U.bald(bad.cuda())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_certain_items_score_positive_zero(dtype):
    """One-hot samples that agree: every entropy-like metric is +0, not -0 (printed and sign-tested output)."""
    x = np.zeros((40, 3, 4), dtype)
    x[:, :, 1] = 1
    with np.errstate(divide="ignore"):
        for inp, xx in (("probs", x), ("log_probs", np.log(x))):
            res = U.score(xx, input=inp)
            for name, v in res.items():
                if name != "balentacq":  # -inf for certain items, by definition
                    assert not np.signbit(v).any(), (inp, name)


def test_single_prediction_class_axis_default(rng):
    """sample_axis=None: the class axis defaults to 1 ([N, C, *spatial]); it used to stay 2, so
    segmentation logits [N, C, H, W] were silently read with H as the classes."""
    logits = rng.normal(size=(2, 3, 4, 5))
    got = U.predictive_entropy(logits, input="logits", sample_axis=None)
    assert got.shape == (2, 4, 5)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(got, -(p * np.log(p)).sum(1), rtol=1e-12)
    np.testing.assert_array_equal(got, U.predictive_entropy(logits, input="logits", sample_axis=None, class_axis=1))
    # with a sample axis the default stays 2
    np.testing.assert_array_equal(U.bald(p[:, None].repeat(2, 1)), U.bald(p[:, None].repeat(2, 1), class_axis=2))


def test_default_metric_set_with_one_sample_names_the_problem(rng):
    x = random_probs(rng, (5, 1, 3))
    with pytest.raises(ValueError, match=r"x: the sample axis \(axis 1\) holds one sample; the default metric set "
                                         r"includes expected_entropy, bald"):
        U.score(x)
    assert set(U.score(x[:, 0], sample_axis=None)) == {m for m in U.METRICS if m not in
                                                      ("expected_entropy", "bald", "variation_ratio", "mean_std", "balentacq")}


def test_misaligned_numpy_input_is_copied_not_refused(rng):
    """The core refuses data pointers that are not aligned to their element size (undefined behaviour to
    read); numpy arrays at odd byte offsets are copied into aligned memory on the way in."""
    x = rng.dirichlet(np.ones(4), size=(3, 5))
    buf = bytearray(x.nbytes + 1)
    odd = np.ndarray(x.shape, dtype=np.float64, buffer=buf, offset=1)
    odd[...] = x
    assert not odd.flags.aligned
    np.testing.assert_array_equal(U.bald(odd), U.bald(x))
    torch = pytest.importorskip("torch")
    t = torch.frombuffer(bytearray(x.nbytes + 1), dtype=torch.float64, offset=1, count=x.size).reshape(x.shape)
    t.copy_(torch.from_numpy(x))
    assert t.data_ptr() % 8 != 0
    assert torch.equal(U.bald(t), torch.from_numpy(U.bald(x)))
