#!/usr/bin/env python3
"""label_issues vs cleanlab (PyPI, benchmark-only) on the same out-of-sample probabilities.

Data: scikit-learn's digits with a fraction of the labels flipped at random (the flips are the truth
to find); out-of-sample probabilities from 5-fold cross-validated logistic regression (computed once,
outside the timing). Both methods get the same (probs, noisy labels). Prints precision / recall of the
flagged items against the flipped ones and the times (best of --repeats), plus a large synthetic case
(N = --n items, C classes) to time the methods where it matters.
"""

from __future__ import annotations

import argparse
import sys

import os

import numpy as np
from _timing import best_time

import labelwise as lw
from labelwise import propagation as P

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "python"))


def prf(flagged, truth):
    flagged, truth = set(map(int, flagged)), set(map(int, truth))
    tp = len(flagged & truth)
    return tp / max(1, len(flagged)), tp / max(1, len(truth)), len(flagged)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flip", type=float, default=0.1)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--c", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--runs", type=int, default=0,
                    help="also: precision / recall over this many independent flips (the setting of "
                         "test_label_issues_on_digits_with_flipped_labels; docs/propagation.md quotes 60)")
    a = ap.parse_args()
    from cleanlab.filter import find_label_issues
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    noisy = y.copy()
    flip = rng.random(len(y)) < a.flip
    noisy[flip] = (y[flip] + rng.integers(1, 10, flip.sum())) % 10
    probs = cross_val_predict(LogisticRegression(max_iter=2000), X / 16.0, noisy, cv=5, method="predict_proba")
    truth = np.flatnonzero(flip)

    ours = P.label_issues(probs, noisy).indices
    theirs_cj = np.flatnonzero(find_label_issues(noisy, probs, filter_by="confident_learning"))
    theirs_pbnr = np.flatnonzero(find_label_issues(noisy, probs, filter_by="prune_by_noise_rate"))
    print(f"digits, {len(y)} items, {flip.sum()} labels flipped ({a.flip:.0%}); 5-fold CV logistic regression\n")
    print("| method | flagged | precision | recall | time (ms) |\n|---|---:|---:|---:|---:|")
    for name, flagged, fn in [
        ("labelwise label_issues (confident joint off-diagonal)", ours, lambda: P.label_issues(probs, noisy)),
        ("cleanlab find_label_issues(filter_by='confident_learning')", theirs_cj,
         lambda: find_label_issues(noisy, probs, filter_by="confident_learning")),
        ("cleanlab find_label_issues(filter_by='prune_by_noise_rate')", theirs_pbnr,
         lambda: find_label_issues(noisy, probs, filter_by="prune_by_noise_rate")),
    ]:
        p, r, n = prf(flagged, truth)
        print(f"| {name} | {n} | {p:.3f} | {r:.3f} | {best_time(fn, a.repeats) * 1e3:.1f} |")
    same = len(set(ours.tolist()) & set(theirs_cj.tolist())) / max(1, len(set(ours.tolist()) | set(theirs_cj.tolist())))
    print(f"\nJaccard overlap of labelwise's and cleanlab's confident-learning sets: {same:.3f}")

    # Large synthetic pool: time, and the two flagged sets compared on this very input.
    N, C = a.n, a.c
    logits = rng.standard_normal((N, C)).astype(np.float32) * 2
    pr = np.exp(logits - logits.max(1, keepdims=True))
    pr /= pr.sum(1, keepdims=True)
    lab = np.where(rng.random(N) < 0.9, pr.argmax(1), rng.integers(0, C, N))
    t_ours = best_time(lambda: P.label_issues(pr, lab), max(1, a.repeats // 2))
    t_cl = best_time(lambda: find_label_issues(lab, pr, filter_by="confident_learning", n_jobs=1), 1)
    ours_big = set(P.label_issues(pr, lab).indices.tolist())
    theirs_big = set(np.flatnonzero(find_label_issues(lab, pr, filter_by="confident_learning", n_jobs=1)).tolist())
    print(f"\nsynthetic N={N}, C={C} float32: labelwise {t_ours * 1e3:.0f} ms (threads {lw.num_threads()}), cleanlab "
          f"(confident_learning, n_jobs=1) {t_cl * 1e3:.0f} ms ({t_cl / t_ours:.1f}x); flagged {len(ours_big)} vs "
          f"{len(theirs_big)}, identical sets: {ours_big == theirs_big} (only labelwise: {len(ours_big - theirs_big)}, "
          f"only cleanlab: {len(theirs_big - ours_big)})")

    if a.runs:
        quality_runs(a.runs, a.flip)


def quality_runs(runs, flip_fraction):
    """The unit test's setting (exactly n // 10 labels flipped, standardised features, C = 0.1) over
    `runs` random flips: labelwise's precision, recall and flipped fraction among the 50 most
    suspicious items, and whether cleanlab's confident-learning set is the same."""
    from cleanlab.filter import find_label_issues
    from reference import flipped_digits_probs  # tests/python: the unit test's own setting

    n = 0
    prec, rec, top, flagged, same = [], [], [], [], 0
    for run in range(runs):
        probs, noisy, flip = flipped_digits_probs(np.random.default_rng(np.random.SeedSequence([2026, run])),
                                                  flip_fraction)
        n = len(noisy)
        r = P.label_issues(probs, noisy)
        is_flipped = np.zeros(n, bool)
        is_flipped[flip] = True
        p, q, k = prf(r.indices, flip)
        prec.append(p)
        rec.append(q)
        flagged.append(k)
        top.append(is_flipped[r.indices[:50]].mean())
        same += set(r.indices.tolist()) == set(np.flatnonzero(find_label_issues(noisy, probs, filter_by="confident_learning")).tolist())
        print(f"\rquality runs: {run + 1}/{runs}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    def stat(v):
        v = np.asarray(v, float)
        return f"{v.mean():.3f} ± {v.std(ddof=1):.3f} (lowest {v.min():.3f})"

    print(f"\ndigits, {int(n * flip_fraction)} of {n} labels flipped, {runs} runs (standardised features, C = 0.1): "
          f"flagged {np.mean(flagged):.0f} on average; precision {stat(prec)}; recall {stat(rec)}; flipped among "
          f"the 50 most suspicious {stat(top)}; cleanlab's confident-learning set identical in {same} of {runs}")


if __name__ == "__main__":
    main()
