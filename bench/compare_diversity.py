#!/usr/bin/env python3
"""labelwise core-set (k-center greedy) and BADGE vs. the straightforward NumPy / PyTorch formulations
and scikit-activeml's CoreSet, same inputs, one run, on the CPU.

    python bench/compare_diversity.py                  # core-set N=100000, D=512, b=1000; BADGE N=50000, C=10, D=512, b=100
    python bench/compare_diversity.py --quick          # small sizes, a few seconds
    python bench/compare_diversity.py --json out.json  # also save the raw numbers

What is timed (time.perf_counter; labelwise after one small warm-up call, the references without one;
the extrapolated references scale their one-off setup too, which overstates them by up to ~8 %):
  * labelwise: acquisition.coreset(X, labelled, b) (default: rows that the new centre provably cannot
    reach are skipped; also prune=False, one full pass per pick, and both on i.i.d. Gaussian features
    where nothing can be pruned) and acquisition.badge(P, H, b, seed=...) at the full b;
  * core-set, NumPy: (a) the explicit difference ((X - c)**2).sum(1) per pick, (b) the norm expansion
    |x|^2 + |c|^2 - 2 X @ c (BLAS matvec, float32); PyTorch: the norm expansion (torch.mv), float32;
    scikit-activeml CoreSet.query (if importable; sklearn pairwise_distances_argmin_min per pick);
  * BADGE, PyTorch: the gradient embeddings materialised (N x C*D float32), then k-means++ with the
    norm expansion (torch.mv) and labelwise's own uniform draws (so the picks can be compared);
    NumPy: the reference implementation's init_centers (JordanAsh/badge: sklearn pairwise_distances
    on the materialised embeddings, scipy.stats.rv_discrete sampling); NumPy with the same factorised
    distance as labelwise (BLAS matvec on the embeddings, float32);
  * the floor: every pick reads the pool once (core-set: N*D*4 bytes per pick; BADGE: N*D*4 per
    k-means++ step, b-1 steps) at this machine's read bandwidth, measured here (np.add.reduce on one
    thread and torch.sum on all torch threads over the same features, best of 5; the faster counts).
The naive versions are timed at a smaller b (--small-b) and extrapolated linearly to the full b
(the per-pick cost is constant: each pick is one pass); the table says which figures are extrapolated.
Core-set starts from 10 labelled items so that every implementation is deterministic (scikit-activeml
breaks ties at random and picks the first item at random when nothing is labelled). Picks are compared
with labelwise's over the steps each naive version ran.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time

import numpy as np
import torch

import labelwise
from labelwise import acquisition as A


def now():
    return time.perf_counter()


def load():
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover
        return float("nan")


# ---- read floor -------------------------------------------------------------------------------------
def read_bandwidth(x: np.ndarray, reps: int = 5) -> dict:
    t = torch.from_numpy(x)
    best_np = best_t = float("inf")
    for _ in range(reps):
        s = now()
        np.add.reduce(x, axis=None)
        best_np = min(best_np, now() - s)
        s = now()
        t.sum()
        best_t = min(best_t, now() - s)
    return {"numpy_1thread_GBs": x.nbytes / best_np / 1e9, "torch_GBs": x.nbytes / best_t / 1e9,
            "best_GBs": x.nbytes / min(best_np, best_t) / 1e9}


# ---- core-set: straightforward formulations ------------------------------------------------------------
def np_coreset_diff(x, labelled, b):
    t0 = now()
    mins = np.full(len(x), np.inf)
    for j in labelled:
        mins = np.minimum(mins, ((x - x[j]) ** 2).sum(1))
    mins[labelled] = -1
    setup = now() - t0
    picks = []
    for _ in range(b):
        p = int(np.argmax(mins))
        picks.append(p)
        mins = np.minimum(mins, ((x - x[p]) ** 2).sum(1))
        mins[picks] = -1
        mins[labelled] = -1
    return np.array(picks), setup


def np_coreset_blas(x, labelled, b):
    t0 = now()
    sq = np.einsum("ij,ij->i", x, x)
    mins = np.full(len(x), np.inf, dtype=np.float32)
    for j in labelled:
        mins = np.minimum(mins, sq + sq[j] - 2 * (x @ x[j]))
    taken = np.zeros(len(x), bool)
    taken[labelled] = True
    setup = now() - t0
    picks = []
    for _ in range(b):
        p = int(np.argmax(np.where(taken, -np.inf, mins)))
        picks.append(p)
        taken[p] = True
        mins = np.minimum(mins, sq + sq[p] - 2 * (x @ x[p]))
    return np.array(picks), setup


def torch_coreset(x, labelled, b):
    t0 = now()
    sq = (x * x).sum(1)
    mins = torch.full((len(x),), float("inf"))
    for j in labelled:
        mins = torch.minimum(mins, sq + sq[j] - 2 * torch.mv(x, x[j]))
    taken = torch.zeros(len(x), dtype=torch.bool)
    taken[labelled] = True
    setup = now() - t0
    picks = []
    for _ in range(b):
        p = int(torch.argmax(torch.where(taken, -float("inf"), mins)))
        picks.append(p)
        taken[p] = True
        mins = torch.minimum(mins, sq + sq[p] - 2 * torch.mv(x, x[p]))
    return np.array(picks), setup


def skactiveml_coreset(x, labelled, b):
    from skactiveml.pool import CoreSet

    y = np.full(len(x), np.nan)
    y[labelled] = 0
    return np.asarray(CoreSet(random_state=0).query(x, y, batch_size=b)), 0.0  # one call: no separate setup


# ---- BADGE: straightforward formulations ------------------------------------------------------------------
def residuals(p):
    a = p.astype(np.float32).copy()
    a[np.arange(len(p)), p.argmax(1)] -= 1
    return a


def torch_badge_materialised(p, h, b, seed):
    t0 = now()
    a = torch.from_numpy(residuals(p))
    g = (a[:, :, None] * torch.from_numpy(h)[:, None, :]).reshape(len(p), -1)  # N x C*D
    gn = (g * g).sum(1)
    pick = int(torch.argmax(gn))
    picks = [pick]
    d2 = torch.full((len(p),), float("inf"), dtype=torch.float64)
    chosen = torch.zeros(len(p), dtype=torch.bool)
    chosen[pick] = True
    setup = now() - t0
    while len(picks) < b:
        d = (gn + gn[pick] - 2 * torch.mv(g, g[pick])).clamp_min(0).double()
        d2 = torch.minimum(d2, d)
        d2[chosen] = 0
        cs = torch.cumsum(d2, 0)
        target = A.badge_uniform(seed, len(picks)) * float(cs[-1])
        pick = int(torch.searchsorted(cs, torch.tensor([target], dtype=torch.float64), right=True)[0])
        pick = min(pick, len(p) - 1)
        picks.append(pick)
        chosen[pick] = True
    return np.array(picks), setup


def np_badge_reference(p, h, b, seed):
    """init_centers of JordanAsh/badge (query_strategies/badge_sampling.py), on materialised embeddings."""
    from scipy import stats
    from sklearn.metrics import pairwise_distances

    t0 = now()
    a = residuals(p)
    X = (a[:, :, None] * h[:, None, :]).reshape(len(p), -1)
    setup = now() - t0
    ind = int(np.argmax([np.linalg.norm(s, 2) for s in X]))
    mu = [X[ind]]
    inds_all = [ind]
    rs = np.random.RandomState(seed % 2**32)
    while len(mu) < b:
        if len(mu) == 1:
            D2 = pairwise_distances(X, mu).ravel().astype(float)
        else:
            newD = pairwise_distances(X, [mu[-1]]).ravel().astype(float)
            D2 = np.minimum(D2, newD)
        Ddist = (D2**2) / np.sum(D2**2)
        custom = stats.rv_discrete(name="custm", values=(np.arange(len(D2)), Ddist), seed=rs)
        ind = custom.rvs(size=1)[0]
        while ind in inds_all:
            ind = custom.rvs(size=1)[0]
        mu.append(X[ind])
        inds_all.append(int(ind))
    return np.array(inds_all), setup


def np_badge_factorised(p, h, b, seed):
    t0 = now()
    a = residuals(p).astype(np.float64)
    na = (a * a).sum(1)
    nh = np.einsum("ij,ij->i", h, h).astype(np.float64)
    g2 = na * nh
    pick = int(np.argmax(g2))
    picks = [pick]
    d2 = np.full(len(p), np.inf)
    chosen = np.zeros(len(p), bool)
    chosen[pick] = True
    setup = now() - t0
    while len(picks) < b:
        d = g2 + g2[pick] - 2 * (a @ a[pick]) * (h @ h[pick]).astype(np.float64)
        d2 = np.minimum(d2, np.maximum(d, 0))
        d2[chosen] = 0
        cs = np.cumsum(d2)
        pick = int(np.searchsorted(cs, A.badge_uniform(seed, len(picks)) * cs[-1], side="right"))
        pick = min(pick, len(p) - 1)
        picks.append(pick)
        chosen[pick] = True
    return np.array(picks), setup


# ---- driver ---------------------------------------------------------------------------------------------------
def timed(fn, *args, **kwargs):
    s = now()
    out = fn(*args, **kwargs)
    return now() - s, out


def agree(a, b):
    n = min(len(a), len(b))
    k = 0
    while k < n and a[k] == b[k]:
        k += 1
    return k


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--small-b", type=int, default=20, help="b at which the naive versions are timed")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.quick:
        cn, cd, cb, bn, bc, bd, bb, small = 5000, 64, 50, 3000, 10, 64, 20, 10
    else:
        cn, cd, cb, bn, bc, bd, bb, small = 100_000, 512, 1000, 50_000, 10, 512, 100, args.small_b
    rng = np.random.default_rng(1)
    res = {"date": datetime.datetime.utcnow().isoformat(timespec="seconds") + "Z", "machine": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "labelwise_threads": labelwise.num_threads(),
           "torch": torch.__version__, "numpy": np.__version__}
    print(f"# {res['date']}  cpus={res['cpus']} torch threads={res['torch_threads']} labelwise threads={res['labelwise_threads']}")

    # ---------------- core-set ----------------
    # Clustered features (a mixture of 100 Gaussians), float32, like penultimate-layer embeddings.
    centres = rng.normal(size=(100, cd)).astype(np.float32) * 3
    x = (centres[rng.integers(0, 100, cn)] + rng.normal(size=(cn, cd)).astype(np.float32))
    labelled = np.sort(rng.choice(cn, 10, replace=False))
    bw = read_bandwidth(x)
    res["read_bandwidth"] = bw
    floor_pick = x.nbytes / (bw["best_GBs"] * 1e9)
    print(f"read bandwidth: numpy 1 thread {bw['numpy_1thread_GBs']:.1f} GB/s, torch {bw['torch_GBs']:.1f} GB/s")
    rows = []
    A.coreset(x[:2000], labelled[labelled < 2000], 5)  # warm-up
    la0 = load()
    t, (lw_idx, lw_rad) = timed(A.coreset, x, labelled, cb)
    rows.append(("labelwise coreset (pruning on, default)", t, cb, False, cb, load()))
    print(f"core-set N={cn} D={cd} b={cb}: labelwise {t:.2f} s ({t / cb * 1e3:.2f} ms/pick; load {la0:.2f})")
    t, (np_idx, np_rad) = timed(A.coreset, x, labelled, cb, prune=False)
    rows.append(("labelwise coreset, prune=False (one full pass per pick)", t, cb, False, agree(np_idx, lw_idx), load()))
    print(f"  labelwise prune=False {t:.2f} s ({t / cb * 1e3:.2f} ms/pick); same picks: {np.array_equal(np_idx, lw_idx)}, "
          f"same radii: {np.array_equal(np_rad, lw_rad)}")
    # Unstructured features (i.i.d. Gaussian): the triangle inequality prunes nothing there.
    xi = rng.normal(size=(cn, cd)).astype(np.float32)
    bi = max(10, cb // 10)
    for prune in (True, False):
        t, _ = timed(A.coreset, xi, labelled, bi, prune=prune)
        rows.append((f"labelwise coreset, i.i.d. Gaussian features, b={bi}, prune={prune}", t, bi, False, -1, load()))
        print(f"  i.i.d. Gaussian features, b={bi}, prune={prune}: {t:.2f} s ({t / bi * 1e3:.2f} ms/pick)")
    del xi
    xt = torch.from_numpy(x)
    cases = [("NumPy explicit (X - c)**2", np_coreset_diff, x), ("NumPy norm expansion + BLAS matvec", np_coreset_blas, x),
             ("PyTorch norm expansion (torch.mv)", torch_coreset, xt)]
    try:
        import skactiveml  # noqa: F401

        cases.append((f"scikit-activeml {skactiveml.__version__} CoreSet", skactiveml_coreset, x))
    except ImportError:
        print("scikit-activeml not importable: skipped")
    for name, fn, arr in cases:
        t, (picks, setup) = timed(fn, arr, labelled, small)
        full = setup + (t - setup) * cb / small
        rows.append((name, full, small, True, agree(picks, lw_idx), load(), t, setup))
        print(f"  {name}: {t:.3g} s for b={small} (setup {setup:.2f} s) -> {full:.3g} s at b={cb} (extrapolated); "
              f"first {agree(picks, lw_idx)}/{small} picks equal labelwise's")
    floor = cb * floor_pick
    res["coreset"] = {"N": cn, "D": cd, "b": cb, "floor_s": floor, "rows": rows, "radius_last": float(lw_rad[-1])}
    print(f"  floor: {cb} x {x.nbytes / 1e6:.1f} MB at {bw['best_GBs']:.1f} GB/s = {floor:.2f} s")
    del xt

    # ---------------- BADGE ----------------
    logits = rng.normal(size=(bn, bc)).astype(np.float32) * 2.5
    e = np.exp(logits - logits.max(1, keepdims=True))
    p = (e / e.sum(1, keepdims=True)).astype(np.float32)
    h = np.maximum(rng.normal(size=(bn, bd)).astype(np.float32), 0)  # ReLU features
    seed = 2024
    A.badge(p[:2000], h[:2000], 5, seed=seed)  # warm-up
    la0 = load()
    t, lw_b = timed(A.badge, p, h, bb, seed=seed)
    brows = [("labelwise badge", t, bb, False, bb, load())]
    print(f"BADGE N={bn} C={bc} D={bd} b={bb}: labelwise {t:.3f} s (load {la0:.2f})")
    for name, fn, nb in [("PyTorch materialised g + torch.mv, same draws", torch_badge_materialised, small),
                         ("NumPy factorised (BLAS matvec), same draws", np_badge_factorised, small),
                         ("NumPy reference init_centers (sklearn + rv_discrete)", np_badge_reference, max(3, small // 2))]:
        t, (picks, setup) = timed(fn, p, h, nb, seed)
        full = setup + (t - setup) * (bb - 1) / (nb - 1)
        brows.append((name, full, nb, True, agree(picks, lw_b), load(), t, setup))
        print(f"  {name}: {t:.3g} s for b={nb} (setup {setup:.2f} s) -> {full:.3g} s at b={bb} (setup + "
              f"extrapolated steps); first {agree(picks, lw_b)}/{nb} picks equal labelwise's")
    bfloor = (bb - 1) * h.nbytes / (bw["best_GBs"] * 1e9)
    res["badge"] = {"N": bn, "C": bc, "D": bd, "b": bb, "floor_s": bfloor, "rows": brows}
    print(f"  floor: {bb - 1} x {h.nbytes / 1e6:.1f} MB at {bw['best_GBs']:.1f} GB/s = {bfloor:.2f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
