"""Independent float64 references for the metrics, written from their definitions (numpy + scipy)."""

import numpy as np
from scipy.special import digamma, gammaln


def _entropy(p, axis):
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return t.sum(axis=axis)


def metrics(p):
    """p: float64 [N, K, C] probabilities -> dict of [N] float64 references."""
    p = np.asarray(p, dtype=np.float64)
    N, K, C = p.shape
    mean = p.mean(axis=1)
    H = _entropy(mean, 1)
    EH = _entropy(p, 2).mean(axis=1)
    srt = -np.sort(-mean, axis=1)
    votes = np.zeros((N, C))
    am = p.argmax(axis=2)
    for c in range(C):
        votes[:, c] = (am == c).sum(axis=1)
    out = {
        "predictive_entropy": H,
        "expected_entropy": EH,
        "bald": np.maximum(H - EH, 0.0),
        "least_confidence": 1 - srt[:, 0],
        "margin": 1 - (srt[:, 0] - srt[:, 1]),
        "ratio": srt[:, 1] / srt[:, 0],
        "variation_ratio": 1 - votes.max(axis=1) / K,
        "max_mean_variation_ratio": 1 - srt[:, 0],
    }
    if K >= 2:
        var = p.var(axis=1, ddof=1)
        out["mean_std"] = np.sqrt(var).mean(axis=1)
        mu = np.maximum(mean, 1e-9)
        v = np.maximum(var, 1e-9)
        a = mu * mu * (1 - mu) / v - mu
        b = (1 / mu - 1) * a
        with np.errstate(all="ignore"):
            lnB = gammaln(a + 1) + gammaln(b) - gammaln(a + b + 1)
            lnB_ref = np.logaddexp(lnB, np.log(1e-32))  # log(B + 1e-32), as the reference evaluates it
            h = lnB_ref - a * digamma(a + 1) - (b - 1) * digamma(b) + (a + b - 1) * digamma(a + b + 1)
            t = mu * h
        t = np.where(np.isfinite(t), t, 0.0)
        t = np.minimum(t, 0.0)
        with np.errstate(divide="ignore"):
            s = (H + np.log(2)) / (t.sum(axis=1) + 2 * H)
            s = np.where(s < 0, 1 / s, s)
        # certain item (top mean 1, or its Bernoulli variance below the 1e-9 floor): bottom of the ranking
        certain = (H == 0) | (srt[:, 0] >= 1.0) | (srt[:, 0] * (1 - srt[:, 0]) < 1e-9)
        out["balentacq"] = np.where(certain, -np.inf, s)
    return out


def random_probs(rng, shape, kind="mixed"):
    """Random probability vectors along the last axis: spread, near one-hot, uniform and tiny entries mixed."""
    *lead, C = shape
    n = int(np.prod(lead)) if lead else 1
    alpha = rng.choice([0.1, 1.0, 50.0], size=n)[:, None]
    p = rng.gamma(alpha, size=(n, C)) + 1e-12
    if kind == "mixed":
        rows = rng.random(n)
        onehot = rows < 0.15
        p[onehot] = 1e-5 * p[onehot]
        p[onehot, rng.integers(0, C, onehot.sum())] = 1.0
        p[(rows >= 0.15) & (rows < 0.25)] = 1.0  # uniform
        tiny = (rows >= 0.25) & (rows < 0.3)
        p[tiny] = 1e-30 * p[tiny]
        p[tiny, 0] = 1.0
    p /= p.sum(axis=1, keepdims=True)
    return p.reshape(shape)


def head_sample_torch(weight, bias, x, K, p, seed, index_offset=0):
    """The pure-torch reference of the fused head kernel (docs/segmentation.md), vectorised over voxels:
    weight [M, C, F], bias [M, C] (any float dtype; taken as float64), x [B, F, *spatial] torch tensor.
    M = 1: K MC-dropout samples with the masks of labelwise.torch.dropout_keep_mask; M > 1: sample k is
    member k (K = M, p = 0). Logits in float64 from the bias, f ascending, each multiply and add rounded
    separately (torch never fuses them); softmax in float64 (max subtracted), rounded once to float32.
    Returns the probabilities [B, K, C, *spatial] float32 on x's device."""
    import math

    import torch

    from labelwise.torch import dropout_keep_mask

    B, Fch = x.shape[:2]
    sp = tuple(x.shape[2:])
    V = math.prod(sp)
    dev = x.device
    w = weight.detach().to(device=dev, dtype=torch.float64)
    b = bias.detach().to(device=dev, dtype=torch.float64)
    M, C = w.shape[:2]
    xf = x.detach().reshape(B, Fch, V).to(torch.float64)
    if M == 1:
        keep = dropout_keep_mask(seed, p, range(index_offset, index_offset + B), range(K), Fch, range(V), device=dev)
        d = torch.where(keep, xf.unsqueeze(1) * (1.0 / (1.0 - p)), torch.zeros((), dtype=torch.float64, device=dev))
    else:
        assert K == M and p == 0.0
        d = xf.unsqueeze(1).expand(B, K, Fch, V)
    m = torch.arange(K, device=dev) if M > 1 else torch.zeros(K, dtype=torch.int64, device=dev)
    z = b[m].view(1, K, C, 1).expand(B, K, C, V).clone()  # [B, K, C, V]
    for f in range(Fch):
        z.add_(w[m, :, f].view(1, K, C, 1) * d[:, :, f : f + 1, :])
    z = z - z.amax(dim=2, keepdim=True)
    e = torch.exp(z)
    probs = (e / e.sum(dim=2, keepdim=True)).to(torch.float32)
    return probs.view((B, K, C) + sp)


def philox4x32_10(ctr, key):
    """Philox-4x32-10 (Salmon et al., SC'11) in Python integers, written from the paper: counter of four
    32-bit words, key of two; returns the four output words."""
    M = 0xFFFFFFFF
    c = list(ctr)
    k0, k1 = key
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [((p1 >> 32) ^ c[1] ^ k0) & M, p1 & M, ((p0 >> 32) ^ c[3] ^ k1) & M, p0 & M]
        k0, k1 = (k0 + 0x9E3779B9) & M, (k1 + 0xBB67AE85) & M
    return c


def philox_bits64(seed, stream, index):
    """labelwise's rng::bits64: key (seed lo, seed hi), counter (index lo, index hi, stream, 0); the first
    two output words, low first."""
    M = 0xFFFFFFFF
    c = philox4x32_10([index & M, (index >> 32) & M, stream & M, 0], (seed & M, (seed >> 32) & M))
    return c[0] | (c[1] << 32)


# ---- slice-to-slice random walker (reference of propagation.propagate_slices) ----------------------------


def _random_walker_slice(image, seeds, num_classes, beta):
    """Grady's random walker (IEEE TPAMI 2006) on one 2D slice: 4-neighbour graph with edge weights
    exp(-beta·(g_i - g_j)²) on the intensity scaled to unit variance; `seeds` holds a class per seeded
    pixel and -1 elsewhere. Returns the probabilities [C, H, W] (seeded pixels one-hot)."""
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    H, W = image.shape
    g = image.astype(np.float64)
    # unit variance; the guard is relative to the largest |intensity| (independent of the units)
    top = np.abs(g).max()
    if top > 0:
        g = np.ldexp(g, -int(np.frexp(top)[1] - 1))  # a power of two: exact, keeps the sums in range
    spread = g.std() + 1e-12 * np.abs(g).max()
    g = (g - g.mean()) / (spread if spread > 0 else 1.0)
    idx = np.arange(H * W).reshape(H, W)
    rows, cols, wts = [], [], []
    for a, b, da in ((idx[:, :-1], idx[:, 1:], g[:, :-1] - g[:, 1:]), (idx[:-1, :], idx[1:, :], g[:-1, :] - g[1:, :])):
        w = np.exp(-beta * da.ravel() ** 2) + 1e-10  # never 0: the graph stays connected
        rows += [a.ravel(), b.ravel()]
        cols += [b.ravel(), a.ravel()]
        wts += [w, w]
    Wm = sp.csr_matrix((np.concatenate(wts), (np.concatenate(rows), np.concatenate(cols))), shape=(H * W, H * W))
    L = sp.diags(np.asarray(Wm.sum(axis=1)).ravel()) - Wm
    s = seeds.ravel()
    seeded = s >= 0
    probs = np.zeros((num_classes, H * W))
    probs[s[seeded], np.flatnonzero(seeded)] = 1.0
    if (~seeded).any():
        U = np.flatnonzero(~seeded)
        S = np.flatnonzero(seeded)
        Luu = L[U][:, U].tocsc()
        rhs = -(L[U][:, S] @ probs[:, S].T)  # [U, C]
        solve = spla.factorized(Luu)
        for c in range(num_classes):
            if probs[c, S].any():
                probs[c, U] = solve(np.ascontiguousarray(rhs[:, c]))
        probs[:, U] = np.clip(probs[:, U], 0.0, 1.0)
        tot = probs[:, U].sum(axis=0)
        probs[:, U] /= np.where(tot > 0, tot, 1.0)
    return probs.reshape(num_classes, H, W)


def _seeds_from(labels2d, confidence2d, erode, min_confidence):
    """Seeds for the next slice: pixels whose label holds in their whole (2·erode+1)² neighbourhood
    (away from boundaries, where slices change) and whose confidence is at least min_confidence."""
    H, W = labels2d.shape
    keep = confidence2d >= min_confidence
    if erode > 0:
        pad = np.pad(labels2d, erode, mode="edge")
        for dy in range(-erode, erode + 1):
            for dx in range(-erode, erode + 1):
                keep &= pad[erode + dy:erode + dy + H, erode + dx:erode + dx + W] == labels2d
    return np.where(keep, labels2d, -1)


def propagate_slices_ref(vol, lab, labelled_slices, *, axis=0, num_classes=None, beta=30.0, erode=2, min_confidence=0.9):
    """The slice-to-slice random walker in NumPy / SciPy (SuperLU), written before the C++ one:
    the independent reference of labelwise.propagation.propagate_slices.

    volume [Z, H, W] (any real dtype; ``axis`` names the slice axis), labels: same shape, integer classes
    >= 0, read only on ``labelled_slices`` (a list of slice indices along ``axis``). Every other slice
    is segmented from its neighbour towards the nearest annotated slice: the neighbour's labels, eroded
    by ``erode`` pixels and kept where its confidence is >= ``min_confidence``, seed Grady's random
    walker on this slice's intensities (edge weights exp(-beta·Δg²) on unit-variance intensities).
    A slice between two annotated slices gets the distance-weighted mean of the probabilities
    propagated from both sides. Returns ``(mask, confidence)``: int64 [Z, H, W] and float64 [Z, H, W]
    (the probability of the chosen class; 1 on annotated slices), as numpy arrays.
    """
    vol = np.asarray(vol)
    lab = np.asarray(lab)
    if vol.ndim != 3 or lab.shape != vol.shape:
        raise ValueError(f"volume / labels: expected two [Z, H, W] volumes of the same shape, got {vol.shape} and {lab.shape}")
    if not np.isfinite(vol).all():
        raise ValueError("volume: contains NaN or Inf")
    if not -3 <= axis < 3:
        raise ValueError(f"axis: must be in [-3, 3), got {axis}")
    vol = np.moveaxis(vol, axis, 0)
    lab = np.moveaxis(lab, axis, 0)
    Z = vol.shape[0]
    ann = sorted({int(s) for s in np.asarray(labelled_slices).reshape(-1)})
    if not ann:
        raise ValueError("labelled_slices: at least one annotated slice is needed")
    if ann[0] < 0 or ann[-1] >= Z:
        raise ValueError(f"labelled_slices: indices must be in [0, {Z}), got {ann[0]}..{ann[-1]}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise TypeError(f"labels: expected an integer dtype, got {lab.dtype}")
    lab_ann = lab[ann]
    if lab_ann.min() < 0:
        raise ValueError("labels: annotated slices must hold classes >= 0")
    C = int(lab_ann.max()) + 1 if num_classes is None else int(num_classes)
    if lab_ann.max() >= C:
        raise ValueError(f"labels: class {int(lab_ann.max())} >= num_classes {C}")
    if not 0.0 <= min_confidence <= 1.0 or erode < 1 or beta <= 0:
        raise ValueError("min_confidence must be in [0, 1], erode >= 1 and beta > 0")

    probs = np.zeros((Z, C) + vol.shape[1:])
    weight = np.zeros(Z)

    def sweep(start, stop, step, weight_of):
        prev_lab, prev_conf = lab[start], np.ones(vol.shape[1:])
        for z in range(start + step, stop, step):
            seeds = _seeds_from(prev_lab, prev_conf, erode, min_confidence)
            if not (seeds >= 0).any():  # nothing survived: erosion 1, no threshold (boundaries unseeded)
                seeds = _seeds_from(prev_lab, prev_conf, 1, 0.0)
            if not (seeds >= 0).any():
                seeds = prev_lab.copy()  # still nothing: seed with the whole neighbour mask
            p = _random_walker_slice(vol[z], seeds, C, beta)
            w = weight_of(z)
            probs[z] += w * p
            weight[z] += w
            prev_lab, prev_conf = p.argmax(axis=0), p.max(axis=0)

    for i, s in enumerate(ann):
        nxt = ann[i + 1] if i + 1 < len(ann) else None
        prv = ann[i - 1] if i > 0 else None
        # Upwards to the next annotated slice (or the end of the volume) and downwards to the previous
        # one (or the start); between two annotated slices the weights fall linearly with the distance.
        sweep(s, Z if nxt is None else nxt, 1, lambda z, s=s, nxt=nxt: 1.0 if nxt is None else (nxt - z) / (nxt - s))
        sweep(s, -1 if prv is None else prv, -1, lambda z, s=s, prv=prv: 1.0 if prv is None else (z - prv) / (s - prv))
    mask = np.empty(vol.shape, dtype=np.int64)
    conf = np.empty(vol.shape, dtype=np.float64)
    for z in range(Z):
        if z in ann:
            mask[z], conf[z] = lab[z], 1.0
        else:
            p = probs[z] / max(weight[z], 1e-12)
            mask[z], conf[z] = p.argmax(axis=0), p.max(axis=0)
    return np.moveaxis(mask, 0, axis), np.moveaxis(conf, 0, axis)


def flipped_digits_probs(rng, flip_fraction=0.1):
    """scikit-learn's digits with int(n * flip_fraction) labels flipped to a random other class, and
    5-fold out-of-sample probabilities of a standardised logistic regression (C = 0.1): the setting of
    test_label_issues_on_digits_with_flipped_labels and of bench/compare_label_issues.py --runs.
    Returns (probs [n, 10], noisy labels [n], flipped item indices)."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = load_digits(return_X_y=True)
    n = len(y)
    flip = rng.choice(n, size=int(n * flip_fraction), replace=False)
    noisy = y.copy()
    noisy[flip] = (y[flip] + rng.integers(1, 10, size=len(flip))) % 10
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    return cross_val_predict(model, X, noisy, cv=5, method="predict_proba"), noisy, flip

