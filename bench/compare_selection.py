#!/usr/bin/env python3
"""top_k and stochastic acquisition vs BaaL (PyPI, benchmark-only), NumPy and PyTorch, on the same scores.

Scores: N float32 values from a gamma(2) law (positive, long-tailed like uncertainty scores), made once.
In one run, best of --repeats each (BaaL: --baal-repeats):

* top_k(scores, b): labelwise; NumPy ``argpartition`` then the b sorted; ``torch.topk`` (sorted).
* stochastic(scores, b, mode): labelwise (Gumbel-top-k, exact law p ∝ w without replacement); the
  straightforward NumPy Gumbel-top-k (log-weights + ``rng.gumbel``, ``argpartition``; softrank ranks by
  ``argsort``); BaaL 2.x's ``PowerSampling`` / ``GibbsSampling`` / ``RankBasedSampling`` (weights, then
  ``np.random.choice(N, b, replace=False, p=...)``; its ranks average ties).
* floor: one read of the N scores (``torch.sum``, 2 threads, best of the run).

Checks (printed, and the script fails on a mismatch): top_k picks the same values as NumPy and torch,
in order; labelwise's stochastic batch is NumPy's top-b of labelwise's own keys (``stochastic_keys``),
i.e. the NumPy formulation with the same noise picks the same items. Usage:
``python bench/compare_selection.py [--n 10000000] [--b 10000] [--threads 2]``.
"""

from __future__ import annotations

import argparse

import numpy as np
from _timing import best_time


def numpy_top(keys, b):
    """The b largest, best first (argpartition, then a lexsort of the b: ties to the lower index
    among them; which of several items tied at the b-th value argpartition keeps is not promised)."""
    part = np.argpartition(-keys, b - 1)[:b]
    return part[np.lexsort((part, -keys[part]))]


def numpy_ranks(s):
    """1-based ranks, score descending, ties to the lower index (a stable argsort)."""
    order = np.argsort(-s, kind="stable")
    r = np.empty(len(s), dtype=np.float64)
    r[order] = np.arange(1, len(s) + 1)
    return r


def numpy_stochastic(s, b, mode, temperature, rng):
    beta = 1.0 / temperature
    s64 = s.astype(np.float64)
    if mode == "power":
        with np.errstate(divide="ignore"):
            log_w = beta * np.log(s64)
    elif mode == "softmax":
        log_w = beta * s64
    else:
        log_w = -beta * np.log(numpy_ranks(s64))
    return numpy_top(log_w + rng.gumbel(size=len(s)), b)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--b", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--baal-repeats", type=int, default=2)
    a = ap.parse_args()
    import torch
    from baal.active.heuristics.heuristics import AbstractHeuristic
    from baal.active.heuristics.stochastics import GibbsSampling, PowerSampling, RankBasedSampling

    import labelwise as lw
    from labelwise import acquisition as A

    lw.set_num_threads(a.threads)
    torch.set_num_threads(a.threads)
    n, b = a.n, a.b
    s = np.random.default_rng(0).gamma(2.0, size=n).astype(np.float32)
    t = torch.from_numpy(s)
    rng = np.random.default_rng(1)
    failures = []

    class GivenScores(AbstractHeuristic):
        """BaaL heuristic that returns the scores it is given (the acquisition step alone is timed)."""

        def compute_score(self, predictions, target_predictions=None):
            return predictions

    floor = best_time(lambda: t.sum(), a.repeats * 4)
    print(f"N = {n} float32 scores (gamma(2)), b = {b}; labelwise and torch {a.threads} threads, NumPy / BaaL 1")
    print(f"read floor (torch.sum of the {s.nbytes / 1e6:.0f} MB, best of {a.repeats * 4}): {floor * 1e3:.2f} ms "
          f"({s.nbytes / floor / 1e9:.1f} GB/s)\n")
    print("| operation | labelwise (ms) | × floor | NumPy (ms) | × | PyTorch / BaaL (ms) | × |\n|---|---:|---:|---:|---:|---:|---:|")

    ours = A.top_k(s, b)
    ref = numpy_top(s, b)
    tv = torch.topk(t, b).values.numpy()
    if not (np.array_equal(s[ours], s[ref]) and np.array_equal(s[ours], tv)):
        failures.append("top_k values differ from NumPy / torch")
    t_ours = best_time(lambda: A.top_k(s, b), a.repeats)
    t_np = best_time(lambda: numpy_top(s, b), a.repeats)
    t_torch = best_time(lambda: torch.topk(t, b), a.repeats)
    print(f"| top_k | {t_ours * 1e3:.2f} | {t_ours / floor:.1f} | {t_np * 1e3:.1f} | {t_np / t_ours:.0f} | "
          f"torch.topk {t_torch * 1e3:.1f} | {t_torch / t_ours:.1f} |")

    baal = {"power": PowerSampling, "softmax": GibbsSampling, "softrank": RankBasedSampling}
    for mode in ("power", "softmax", "softrank"):
        batch = A.stochastic(s, b, mode=mode, seed=7)
        keys = A.stochastic_keys(s, mode=mode, seed=7)
        if not np.array_equal(batch, numpy_top(keys, b)):
            failures.append(f"stochastic {mode}: not the top-b of its own keys")
        t_ours = best_time(lambda: A.stochastic(s, b, mode=mode, seed=7), a.repeats)
        t_np = best_time(lambda: numpy_stochastic(s, b, mode, 1.0, rng), max(1, a.repeats // 2))
        heuristic = baal[mode](GivenScores(), query_size=b, temperature=1.0)
        picked, _ = heuristic.get_ranks(s.astype(np.float64))
        if len(np.unique(picked)) != b:
            failures.append(f"BaaL {mode}: {len(np.unique(picked))} distinct items, not {b}")
        # a fresh float64 copy per call (GibbsSampling divides its input in place), made before the
        # clock starts: the conversion is not BaaL's work (it was ~15 ms of each timed call)
        copies = iter([s.astype(np.float64) for _ in range(a.baal_repeats + 1)])  # + best_time's warm-up
        t_baal = best_time(lambda: heuristic.get_ranks(next(copies)), a.baal_repeats)
        print(f"| stochastic {mode} | {t_ours * 1e3:.1f} | {t_ours / floor:.0f} | {t_np * 1e3:.0f} | "
              f"{t_np / t_ours:.1f} | BaaL {baal[mode].__name__} {t_baal * 1e3:.0f} | {t_baal / t_ours:.1f} |")

    print("\nchecks: " + ("all passed" if not failures else "FAILED: " + "; ".join(failures)))
    if failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
