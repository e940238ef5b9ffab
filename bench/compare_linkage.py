"""Average-linkage clusters (cluster-margin's once-per-campaign step): labelwise against SciPy's
linkage(method="average") + fcluster(criterion="maxclust"), same inputs, same run.

    .venv/bin/python bench/compare_linkage.py                 # N = 5000 and 20000, D = 64, 50 clusters

Inputs: 50 Gaussian blobs (centres 3·z, unit noise) in D = 64. Both must give the same partition
(labelwise numbers clusters by their lowest row; SciPy's ids are renumbered the same way before the
comparison). Memory of both: the condensed distance matrix, N (N − 1) / 2 doubles.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def first_appearance(ids):
    seen = {}
    return np.array([seen.setdefault(int(c), len(seen)) for c in ids], dtype=np.int64)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[5000, 20000])
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--clusters", type=int, default=50)
    args = ap.parse_args()
    from scipy.cluster.hierarchy import fcluster, linkage

    from labelwise import acquisition as A

    print(f"load average {os.getloadavg()[0]:.2f}; D={args.d}, {args.clusters} clusters")
    print("| N | labelwise (s) | SciPy (s) | speed-up | same partition | distance matrix |")
    print("|---:|---:|---:|---:|:---:|---:|")
    rng = np.random.default_rng(0)
    for n in args.n:
        centres = 3.0 * rng.standard_normal((50, args.d))
        e = centres[rng.integers(0, 50, n)] + rng.standard_normal((n, args.d))
        t0 = time.perf_counter()
        ours = A.average_linkage_clusters(e, num_clusters=args.clusters, max_items=n)
        t_lw = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = fcluster(linkage(e, method="average"), t=args.clusters, criterion="maxclust")
        t_sp = time.perf_counter() - t0
        same = np.array_equal(ours, first_appearance(ref))
        print(f"| {n} | {t_lw:.2f} | {t_sp:.2f} | {t_sp / t_lw:.1f}× | {'yes' if same else 'NO'} | "
              f"{n * (n - 1) * 4 / 2**30:.2f} GiB |")


if __name__ == "__main__":
    main()
