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
        out["balentacq"] = np.where((H == 0) | (srt[:, 0] >= 1.0), -np.inf, s)  # certain item: bottom of the ranking
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


def philox_bits64(seed, stream, index):
    """Philox-4x32-10 (Salmon et al., SC'11) in Python integers: key (seed lo, seed hi), counter
    (index lo, index hi, stream, 0); the first two output words, low first — labelwise's rng::bits64."""
    M = 0xFFFFFFFF
    c = [index & M, (index >> 32) & M, stream & M, 0]
    k0, k1 = seed & M, (seed >> 32) & M
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [((p1 >> 32) ^ c[1] ^ k0) & M, p1 & M, ((p0 >> 32) ^ c[3] ^ k1) & M, p0 & M]
        k0, k1 = (k0 + 0x9E3779B9) & M, (k1 + 0xBB67AE85) & M
    return c[0] | (c[1] << 32)
