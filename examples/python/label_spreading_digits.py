#!/usr/bin/env python3
"""Label 10% of the digits by hand, spread the labels to the rest over a kNN graph, check the truth.

1. A random 10% of sklearn's digits (1 797 8x8 images, 64 pixel features; at least one per class) keep
   their labels; the other 90% are treated as unlabelled (-1).
2. ``labelwise.propagation.label_spreading`` (Zhou et al. 2004) spreads the labels over the k-nearest-
   neighbour graph of the pixel vectors — labelwise's default symmetric graph and, for comparison,
   ``variant="sklearn"`` (which reproduces ``sklearn.semi_supervised.LabelSpreading(kernel="knn")``
   exactly) — and ``label_propagation`` (Zhu & Ghahramani 2002) does the same with hard clamping.
3. The withheld labels are revealed: the accuracy on the unlabelled 90% is printed, with the accuracy
   among the items whose spread distribution is most confident (max probability >= --confident).

``--repeats N`` reruns it on N random label draws and prints mean and range.

Data (ships with scikit-learn, BSD-3-Clause; nothing is downloaded): Optical Recognition of Handwritten
Digits, E. Alpaydin, C. Kaynak (UCI Machine Learning Repository, CC BY 4.0).

Usage::

    python examples/python/label_spreading_digits.py
    python examples/python/label_spreading_digits.py --k 10 --alpha 0.5 --repeats 20
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from sklearn.datasets import load_digits

from labelwise import propagation as P


def draw_labels(y, frac, rng):
    lab = np.full(len(y), -1, dtype=np.int64)
    keep = rng.random(len(y)) < frac
    for c in np.unique(y):
        keep[rng.choice(np.flatnonzero(y == c))] = True
    lab[keep] = y[keep]
    return lab


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fraction", type=float, default=0.1, help="fraction of labelled items (default 0.1)")
    ap.add_argument("--k", type=int, default=7)
    ap.add_argument("--alpha", type=float, default=0.2)
    ap.add_argument("--confident", type=float, default=0.9)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not 0 < args.fraction < 1:
        ap.error("--fraction must be in (0, 1): some items labelled, some left to label")
    if not 1 <= args.k < 1797 or not 0 < args.alpha < 1 or not 0 <= args.confident <= 1:
        ap.error("--k must be in [1, 1797), --alpha in (0, 1), --confident in [0, 1]")
    if not 1 <= args.repeats <= 10**6 or args.seed < 0:
        ap.error("--repeats must be in [1, 10^6] and --seed >= 0")

    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(args.seed)
    methods = {
        "label_spreading (symmetric)": lambda lab: P.label_spreading(X, lab, k=args.k, alpha=args.alpha),
        "label_spreading (sklearn)": lambda lab: P.label_spreading(X, lab, k=args.k, alpha=args.alpha,
                                                                   variant="sklearn"),
        "label_propagation (symmetric)": lambda lab: P.label_propagation(X, lab, k=args.k),
        "label_propagation (sklearn)": lambda lab: P.label_propagation(X, lab, k=args.k, variant="sklearn"),
    }
    acc = {m: [] for m in methods}
    conf = {m: [] for m in methods}
    for r in range(args.repeats):
        lab = draw_labels(y, args.fraction, rng)
        unl = lab < 0
        for name, fn in methods.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dist, pred = fn(lab)
            acc[name].append(float((pred[unl] == y[unl]).mean()))
            sure = unl & (dist.max(1) >= args.confident)
            conf[name].append((float((pred[sure] == y[sure]).mean()) if sure.any() else float("nan"),
                               float(sure.sum() / unl.sum())))
        if r == 0:
            print(f"digits: {len(y)} images, {int((~unl).sum())} labelled ({args.fraction:.0%}), "
                  f"{int(unl.sum())} to label; k={args.k}, alpha={args.alpha}")
    print(f"{'method':32s} {'accuracy on the unlabelled':>28s} {'accuracy / share at max p >= ' + str(args.confident):>36s}")
    for name in methods:
        a = np.array(acc[name])
        c = np.array([x[0] for x in conf[name]])
        s = np.array([x[1] for x in conf[name]])
        rng_txt = f" ({a.min():.4f}-{a.max():.4f})" if len(a) > 1 else ""
        print(f"{name:32s} {a.mean():>12.4f}{rng_txt:>16s} {np.nanmean(c):>22.4f} / {s.mean():.2f}")


if __name__ == "__main__":
    main()
