"""BatchBALD: labelwise.acquisition.batchbald against the published reference, batchbald-redux
(BlackHC/batchbald_redux, `get_batchbald_batch` on CPU torch tensors), in the same run, same inputs.

    .venv/bin/python bench/compare_batchbald.py                # N=5000, K=20, C=10, b=10, num_samples=10000
    .venv/bin/python bench/compare_batchbald.py --ref-b 4      # time the reference at b=4 only

Inputs: synthetic MC-dropout-like predictions [N, K, C]: per item a mean logit vector (2·z) plus
per-sample noise of scale `spread · |z|`; softmax. `spread` sets how much the K samples disagree:
0.3 = a fairly confident model, where the batch's joint MI keeps growing over 10 picks; 1.5 = samples
that disagree strongly, where the joint MI of a few picks saturates near ln K (every later candidate's
gain is nearly 0 and nearly tied, so no pruning is possible: the worst case for labelwise).

Both get the same float32 log-probabilities (labelwise: input="log_probs"). The picks made in the
exact regime (C^m <= num_samples; here the first 5) must be the same; later picks use sampled joint
configurations with different random numbers, so they are compared only for information.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np


def make_probs(rng, n, k, c, spread):
    mu = 2.0 * rng.normal(size=(n, 1, c))
    noise = spread * np.abs(rng.normal(size=(n, 1, 1)))
    logits = mu + noise * rng.normal(size=(n, k, c))
    logits -= logits.max(-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))  # log-probabilities


def exact_steps(c, b, num_samples):
    m = 0
    while m < b and c**m <= num_samples:
        m += 1
    return m  # picks 0..m-1 are made with exact joint entropies


def add_problem_args(ap):
    """The problem's size (the issue's: N=5000, K=20, C=10, b=10, num_samples=10000)."""
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--c", type=int, default=10)
    ap.add_argument("--b", type=int, default=10)
    ap.add_argument("--num-samples", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0, help="the inputs' generator seed (one generator per spread)")


def main():
    ap = argparse.ArgumentParser()
    add_problem_args(ap)
    ap.add_argument("--spread", type=float, nargs="+", default=[0.3, 1.5])
    ap.add_argument("--ref-b", type=int, default=None, help="batch size for the reference (default: --b)")
    ap.add_argument("--skip-ref", action="store_true")
    ap.add_argument("--repeat", type=int, default=3, help="labelwise timing: best of this many runs")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import labelwise as lw
    from labelwise import acquisition as A

    ref = None
    if not args.skip_ref:
        try:
            import torch
            from batchbald_redux.batchbald import get_batchbald_batch

            ref = (torch, get_batchbald_batch)
        except ImportError:
            print("batchbald-redux not installed: labelwise only (pip install batchbald-redux)")

    N, K, C, b, ns = args.n, args.k, args.c, args.b, args.num_samples
    ref_b = args.ref_b or b
    n_exact = exact_steps(C, b, ns)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"labelwise threads: {lw.num_threads()}")
    print(f"N={N} K={K} C={C} b={b} num_samples={ns}: picks 1..{n_exact} exact, the rest sampled")
    rows = []
    for spread in args.spread:
        lp = make_probs(np.random.default_rng(args.seed), N, K, C, spread).astype(np.float32)
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            idx, sc = A.batchbald(lp, b, num_samples=ns, seed=0, input="log_probs")
            times.append(time.perf_counter() - t0)
        t_lw = min(times)
        row = dict(spread=spread, labelwise_s=t_lw, labelwise_indices=idx.tolist(), labelwise_scores=sc.tolist())
        print(f"\nspread={spread}: labelwise {t_lw:.3f} s (best of {args.repeat}; all: "
              + ", ".join(f"{t:.3f}" for t in times) + ")")
        print(f"  labelwise picks {idx.tolist()}")
        print(f"  labelwise scores (cumulative joint MI) {np.round(sc, 4).tolist()}")
        if ref is not None:
            torch, get_batchbald_batch = ref
            torch.set_num_threads(os.cpu_count() or 1)
            x = torch.from_numpy(lp)
            t0 = time.perf_counter()
            r = get_batchbald_batch(x, ref_b, ns)
            t_ref = time.perf_counter() - t0
            m = min(n_exact, ref_b)
            same = list(r.indices[:m]) == idx.tolist()[:m]
            row.update(ref_b=ref_b, reference_s=t_ref, reference_indices=list(r.indices),
                       reference_scores=list(r.scores), exact_picks_compared=m, same_exact_picks=same)
            # labelwise time for the reference's b, for a like-for-like ratio
            if ref_b != b:
                t0 = time.perf_counter()
                A.batchbald(lp, ref_b, num_samples=ns, seed=0, input="log_probs")
                row["labelwise_s_at_ref_b"] = time.perf_counter() - t0
            t_cmp = row.get("labelwise_s_at_ref_b", t_lw)
            print(f"  batchbald-redux (b={ref_b}) {t_ref:.2f} s -> labelwise is {t_ref / t_cmp:.0f}x faster")
            print(f"  reference picks {list(r.indices)}")
            print(f"  reference scores {np.round(r.scores, 4).tolist()}")
            print(f"  exact-regime picks (first {m}) identical: {same}")
        rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(N=N, K=K, C=C, b=b, num_samples=ns, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
