#!/usr/bin/env python3
"""Label 10% by hand, let the model label the rest with a certified error rate, check against the truth.

The working practice behind labelwise: clinicians label a small part of the data, the model labels the
rest — and the user must know the model's error on what it labelled, not hope for it. This script plays
it through on real data:

1. A random 10% of the items (stratified) is "labelled by hand" and trains a small model
   (scikit-learn LogisticRegression on standardised features).
2. Another part (``--calibration``, default 30%) is also labelled by hand, but only to calibrate:
   the model predicts it, and ``labelwise.propagation.certified_auto_label`` picks the confidence
   threshold whose error rate on auto-labelled items is certified to be at most ``--target-error``
   with probability at least ``1 - --delta`` (Clopper–Pearson bounds in a Learn-then-Test
   fixed-sequence scan; docs/propagation.md).
3. The rest is the pool: items above the threshold are auto-labelled. Their true labels were withheld
   from everything above; the script now reveals them and prints the realised error next to the
   certified bound and the coverage.

``--repeats N`` reruns the whole thing on N random splits and reports how often the realised error
on the pool exceeded the target. (The guarantee is about the expected error rate of an auto-labelled
item; on a pool of a few hundred items the realised rate also scatters binomially around it.)

Data (ships with scikit-learn, BSD-3-Clause; nothing is downloaded): Breast Cancer Wisconsin
(Diagnostic), UCI Machine Learning Repository (W. H. Wolberg, W. N. Street, O. L. Mangasarian;
CC BY 4.0): 569 fine-needle-aspirate images described by 30 features, malignant vs benign.

Usage::

    python examples/python/auto_label_breast_cancer.py
    python examples/python/auto_label_breast_cancer.py --score margin --target-error 0.03
    python examples/python/auto_label_breast_cancer.py --repeats 200
"""

from __future__ import annotations

import argparse
import sys
from typing import Dict, Sequence

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from labelwise import propagation as P


def run_once(seed: int, *, labelled: float, calibration: float, target_error: float, delta: float,
             score: str) -> Dict[str, object]:
    X, y = load_breast_cancer(return_X_y=True)
    idx = np.arange(len(y))
    # two independent 32-bit seeds (scikit-learn takes seeds below 2^32) for the two splits
    train_seed, cal_seed = (int(v) for v in np.random.SeedSequence(seed).generate_state(2))
    train, rest = train_test_split(idx, train_size=labelled, stratify=y, random_state=train_seed)
    cal, pool = train_test_split(rest, train_size=calibration / (1 - labelled), stratify=y[rest],
                                 random_state=cal_seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    model.fit(X[train], y[train])
    calib_probs = model.predict_proba(X[cal])
    pool_probs = model.predict_proba(X[pool])
    r = P.certified_auto_label(pool_probs, calib_probs, y[cal], target_error=target_error, delta=delta,
                               score=None if score == "max_prob" else score)
    truth = y[pool]
    n_acc = int(r.accepted.sum())
    realised = float(np.mean(r.labels[r.accepted] != truth[r.accepted])) if n_acc else float("nan")
    model_error = float(np.mean(pool_probs.argmax(axis=1) != truth))
    return {
        "result": r,
        "n_train": len(train),
        "n_cal": len(cal),
        "n_pool": len(pool),
        "n_accepted": n_acc,
        "realised_error": realised,
        "model_error_all": model_error,
        "wrong_accepted": int(np.sum(r.labels[r.accepted] != truth[r.accepted])),
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--labelled", type=float, default=0.10, help="fraction labelled to train the model (default 0.10)")
    ap.add_argument("--calibration", type=float, default=0.30, help="fraction labelled to calibrate (default 0.30)")
    ap.add_argument("--target-error", type=float, default=0.05)
    ap.add_argument("--delta", type=float, default=0.10)
    ap.add_argument("--score", default="max_prob", choices=P.SCORES, help="confidence score (default max_prob)")
    ap.add_argument("--repeats", type=int, default=0, help="also rerun on this many random splits")
    args = ap.parse_args(argv)
    if not (0 < args.labelled < 1 and 0 < args.calibration < 1 and args.labelled + args.calibration < 1):
        ap.error("--labelled and --calibration must be in (0, 1) and leave a pool")
    if round(args.labelled * 569) < 2:
        ap.error("--labelled: the model needs at least 2 of the 569 items (one per class) to train")
    if not (0 < args.target_error < 1 and 0 < args.delta < 1):
        ap.error("--target-error and --delta must be in (0, 1)")
    if not 0 <= args.seed < 2**32 or not 0 <= args.repeats <= 10**6:
        ap.error("--seed must be in [0, 2^32) and --repeats in [0, 10^6]")
    kw = dict(labelled=args.labelled, calibration=args.calibration, target_error=args.target_error,
              delta=args.delta, score=args.score)

    o = run_once(args.seed, **kw)
    r = o["result"]
    print("Breast Cancer Wisconsin (Diagnostic), 569 items, malignant vs benign")
    print(f"hand-labelled: {o['n_train']} to train (LogisticRegression), {o['n_cal']} to calibrate; "
          f"pool to auto-label: {o['n_pool']}")
    print(f"asked for: error <= {args.target_error:g} among auto-labelled items, with probability >= "
          f"{1 - args.delta:g} (delta = {args.delta:g}); confidence score: {r.score}")
    print(f"model error on the whole pool (no abstention): {o['model_error_all']:.3f}")
    if not r.certified:
        print(f"nothing certified: {r.reason}")
    else:
        print(f"threshold: confidence >= {r.threshold:.6f}  (the {r.n_calibration_accepted} most confident of "
              f"{r.n_calibration} calibration items, {r.calibration_errors} wrong)")
        print()
        print(f"{'':28s}{'error':>8s}")
        print(f"{'certified bound (CP)':28s}{r.bound:8.4f}   <= target {args.target_error:g}")
        print(f"{'realised on the pool':28s}{o['realised_error']:8.4f}   "
              f"({o['wrong_accepted']} wrong of {o['n_accepted']} auto-labelled, withheld truth)")
        print(f"{'coverage':28s}{r.coverage:8.4f}   ({o['n_accepted']} of {o['n_pool']} pool items auto-labelled; "
              f"the rest goes to the clinicians)")

    if args.repeats:
        real, cov, certified = [], [], 0
        for s in range(args.repeats):
            q = run_once(int(np.random.SeedSequence([args.seed, s]).generate_state(1)[0]), **kw)
            if (s + 1) % max(1, args.repeats // 10) == 0:
                print(f"  ... {s + 1} / {args.repeats} splits", flush=True)
            if q["result"].certified:
                certified += 1
                cov.append(q["result"].coverage)
                real.append(q["realised_error"] if q["n_accepted"] else 0.0)
        real = np.array(real)
        over = int(np.sum(real > args.target_error))
        print()
        if not certified:
            print(f"{args.repeats} random splits: none certified")
        else:
            print(f"{args.repeats} random splits: certified in {certified}; realised pool error > "
                  f"{args.target_error:g} in {over} ({over / certified:.3f} of the certified splits; delta = "
                  f"{args.delta:g}); mean realised error {real.mean():.4f}, mean coverage {np.mean(cov):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
