#!/usr/bin/env python3
"""Exact kNN graph on the GPU (labelwise.propagation.knn_graph on torch CUDA tensors), the issue's size:
N = 10^6, D = 128, k = 10, euclidean, float32 features.

    python bench/knn_gpu.py              # needs a CUDA build of labelwise and torch with CUDA
    python bench/knn_gpu.py --n 200000   # another N
    python bench/knn_gpu.py --budget 60  # shrink N so that the main run should take <= 60 s

Time: CUDA events around one labelwise call (after a warm-up on a small input: cuBLAS handle, CUB).
A pilot at N = 100000 predicts the main run (the work grows as N^2); when the prediction exceeds
--budget seconds, N is shrunk to fit and the table says so.
Floor: the candidate GEMM, 2 N^2 D flop (every query row against every row; no symmetry used) over
the float32 GEMM rate measured here (torch.matmul, TF32 off, 8192 x 8192 x 8192).
Checks: CPU == GPU (indices equal, distances within 1e-12 relative) on a 20000-row subset (cosine and
euclidean), and at the main size 64 rows against a float64 brute force on the device (torch).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--budget", type=float, default=75.0, help="seconds allowed for the main run")
    a = ap.parse_args()
    import torch

    from labelwise import propagation as P

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(0)
    rng = np.random.default_rng(0)

    def gpu_time(fn):
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        out = fn()
        e.record()
        torch.cuda.synchronize()
        return s.elapsed_time(e) / 1e3, out

    # ---- float32 GEMM rate
    A = torch.randn(8192, 8192, device=dev)
    B = torch.randn(8192, 8192, device=dev)
    A @ B
    best = float("inf")
    for _ in range(3):
        t, _ = gpu_time(lambda: A @ B)
        best = min(best, t)
    peak = 2 * 8192**3 / best
    del A, B

    # ---- CPU == GPU on a 20000-row subset
    d, k = a.d, a.k
    checks = []
    xs = (rng.normal(size=(20000, d)) + rng.normal(size=d) * 2).astype(np.float32)
    xs[100:110] = xs[5]  # duplicates: ties by the lower index
    xs_g = torch.from_numpy(xs).to(dev)
    P.knn_graph(xs_g[:2000], k)  # warm-up: cuBLAS handle, CUB, kernels loaded
    for metric in ("euclidean", "cosine"):
        t0 = time.perf_counter()
        ci, cd = P.knn_graph(xs, k, metric=metric)
        t_cpu = time.perf_counter() - t0
        t_gpu, (gi, gd) = gpu_time(lambda: P.knn_graph(xs_g, k, metric=metric))
        same_i = bool(np.array_equal(gi.cpu().numpy(), ci))
        # float64 before the floor: in float32, 1e-300 is 0 and equal zero distances (the duplicates) gave 0/0
        cd64, gd64 = cd.astype(np.float64), gd.cpu().numpy().astype(np.float64)
        rel = float(np.max(np.abs(gd64 - cd64) / np.maximum(np.abs(cd64), 1e-300)))
        checks.append((metric, t_cpu, t_gpu, same_i, rel))

    # ---- pilot and size
    n = a.n
    pilot_n = min(100_000, n)
    xp = torch.randn(pilot_n, d, device=dev)
    t_pilot, _ = gpu_time(lambda: P.knn_graph(xp, k))
    del xp
    predicted = t_pilot * (n / pilot_n) ** 2
    shrunk = ""
    if predicted > a.budget:
        n_new = int(pilot_n * math.sqrt(a.budget / t_pilot))
        n_new = max(pilot_n, n_new // 1000 * 1000)
        shrunk = f" (shrunk from N = {n}: the pilot predicted {predicted:.0f} s > budget {a.budget:.0f} s)"
        n = n_new

    # ---- main run
    x = torch.randn(n, d, device=dev, dtype=torch.float32)
    t_main, (gi, gd) = gpu_time(lambda: P.knn_graph(x, k))
    floor = 2.0 * n * n * d / peak
    # spot check: 64 rows against a float64 brute force on the device (ties: stable sort by index)
    xd = x.double()
    rows = torch.randint(0, n, (64,), generator=torch.Generator().manual_seed(1)).tolist()
    idx_ok, max_rel = 0, 0.0
    for i in rows:
        dist = ((xd - xd[i]) ** 2).sum(1)
        dist[i] = float("inf")
        order = torch.sort(dist, stable=True).indices[:k]
        want = dist[order].sqrt()
        idx_ok += int(torch.equal(order, gi[i]))
        max_rel = max(max_rel, float(((gd[i].double() - want).abs() / want.clamp_min(1e-300)).max()))
    del xd

    print(f"## kNN graph on CUDA — {name}\n")
    print(f"float32 GEMM rate (torch.matmul, TF32 off): {peak / 1e12:.1f} TFLOP/s\n")
    print("| case | N | D | k | GPU time (s) | GEMM floor (s) | time / floor | check |")
    print("|---|---|---|---|---|---|---|---|")
    for metric, t_cpu, t_gpu, same_i, rel in checks:
        ok = "indices equal" if same_i else "INDICES DIFFER"
        print(f"| subset, {metric} | 20000 | {d} | {k} | {t_gpu:.3f} (CPU {t_cpu:.3f}) | "
              f"{2.0 * 20000**2 * d / peak:.4f} | {t_gpu / (2.0 * 20000**2 * d / peak):.1f} | "
              f"CPU == GPU: {ok}, max rel. distance diff {rel:.1e} |")
    print(f"| pilot, euclidean | {pilot_n} | {d} | {k} | {t_pilot:.3f} | {2.0 * pilot_n**2 * d / peak:.3f} | "
          f"{t_pilot / (2.0 * pilot_n**2 * d / peak):.1f} | |")
    print(f"| main, euclidean{shrunk} | {n} | {d} | {k} | {t_main:.2f} | {floor:.2f} | {t_main / floor:.1f} | "
          f"float64 brute force on 64 rows: {idx_ok}/64 index rows equal, max rel. distance diff {max_rel:.1e} |")
    ok = all(c[3] and c[4] <= 1e-12 for c in checks) and idx_ok == 64
    print("\nresult:", "OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
