#!/usr/bin/env python3
"""Core-set, BADGE and weighted k-means on the GPU against the CPU path, same inputs, one run (the
issue's sizes): core-set N=100000, D=512, b=1000 (10 labelled items); BADGE N=50000, C=10, D=512,
b=100; weighted k-means on BADGE's embeddings, b=100 (its floor: one read of the features; the
clustering itself runs on the host).

    python bench/diversity_gpu.py            # needs a CUDA build of labelwise and torch with CUDA
    python bench/diversity_gpu.py --quick    # small sizes

Times: CUDA events around the labelwise call on torch CUDA tensors (best of 3 after a warm-up), and
time.perf_counter for the CPU call (once). The floor: every pick (step) reads the pool once, N*D*4
bytes, at the device's copy bandwidth measured here (a device-to-device copy of the features).
Prints a Markdown table and whether the GPU picks equal the CPU picks.
"""

from __future__ import annotations

import argparse

import numpy as np
from _timing import best_of


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    import torch

    from labelwise import acquisition as A

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 0
    rng = np.random.default_rng(0)
    n_c, d, b_c = (20000, 128, 100) if a.quick else (100_000, 512, 1000)
    n_b, c, b_b = (10000, 10, 20) if a.quick else (50_000, 10, 100)
    x = rng.normal(size=(n_c, d)).astype(np.float32)
    lab = np.zeros(n_c, bool)
    lab[rng.choice(n_c, 10, replace=False)] = True
    logits = rng.normal(size=(n_b, c)).astype(np.float32)
    h = rng.normal(size=(n_b, d)).astype(np.float32)
    xg, labg = torch.from_numpy(x).cuda(), torch.from_numpy(lab).cuda()
    lg, hg = torch.from_numpy(logits).cuda(), torch.from_numpy(h).cuda()

    def gpu_time(fn, reps=3):
        fn()
        torch.cuda.synchronize()
        best = float("inf")
        for _ in range(reps):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            out = fn()
            e.record()
            torch.cuda.synchronize()
            best = min(best, s.elapsed_time(e) / 1e3)
        return best, out

    def cpu_time(fn):
        # best of 2, as the GPU side is timed after a warm-up: the first CPU call pays one-off costs
        # (page faults of fresh outputs and scratch, the allocator's growth)
        return best_of(fn, 2)

    copy_s, _ = gpu_time(lambda: xg.clone())
    bw = 2 * xg.numel() * 4 / copy_s  # read + write bytes per second
    rows = []
    tg, (gi, _) = gpu_time(lambda: A.coreset(xg, labg, b_c))
    tc, (ci, _) = cpu_time(lambda: A.coreset(x, lab, b_c))
    floor = b_c * n_c * d * 4 / bw
    rows.append(("coreset", f"N={n_c}, D={d}, b={b_c}", tg, tc, floor, np.array_equal(gi.cpu().numpy(), ci)))
    tg, gb = gpu_time(lambda: A.badge(lg, hg, b_b, seed=1, input="logits"))
    tc, cb = cpu_time(lambda: A.badge(logits, h, b_b, seed=1, input="logits"))
    floor = (b_b - 1) * n_b * d * 4 / bw
    rows.append(("badge", f"N={n_b}, C={c}, D={d}, b={b_b}", tg, tc, floor, np.array_equal(gb.cpu().numpy(), cb)))
    # The weighted k-means hybrid: one device pass (validation, candidates' rows), then the host.
    w = rng.random(n_b)
    wg = torch.from_numpy(w).cuda()
    tg, gw = gpu_time(lambda: A.weighted_kmeans(hg, wg, b_b))
    tc, cw = cpu_time(lambda: A.weighted_kmeans(h, w, b_b))
    floor = n_b * d * 4 / bw
    rows.append(("weighted_kmeans", f"N={n_b}, D={d}, b={b_b}, prefilter=10", tg, tc, floor,
                 np.array_equal(gw.cpu().numpy(), cw)))
    print(f"device: {torch.cuda.get_device_name()}; copy bandwidth {bw / 1e9:.0f} GB/s (device-to-device clone)")
    print("| function | size | GPU (s) | CPU (s) | floor (s) | GPU picks == CPU picks |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for name, size, g, cpu, fl, same in rows:
        print(f"| {name} | {size} | {g:.4f} | {cpu:.3f} | {fl:.4f} | {same} |")
    return 0 if all(r[-1] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
