"""BatchBALD on CUDA against the CPU backend, same inputs, same run (bench/gpu_check.sh runs it).

    python3 bench/batchbald_gpu.py            # the issue's size N=5000, K=20, C=10, b=10, num_samples=10000
    python3 bench/batchbald_gpu.py --n 50000  # a larger pool

Inputs as in bench/compare_batchbald.py (float32 log-probabilities; spread 0.3 = a fairly confident
model, 1.5 = strongly disagreeing samples). The GPU evaluates every candidate at every step; the CPU
prunes with a cascade of coarser tables. Both build the same table of joint configurations on the
host, so every pick (exact and sampled regime) must agree. Floor per step (GPU): N · rows · K · C
float64 multiply-adds over the device's float64 rate, measured here (cuBLAS DGEMM, which uses the
float64 tensor cores where the card has them; the kernel's scalar FMAs peak at half that on Hopper,
so both floors are printed).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from compare_batchbald import add_problem_args, make_probs  # the same problem and inputs


def main():
    ap = argparse.ArgumentParser()
    add_problem_args(ap)
    args = ap.parse_args()

    import torch

    from labelwise import acquisition as A

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    print(f"device: {torch.cuda.get_device_name(0)}; N={args.n}, K={args.k}, C={args.c}, b={args.b}, "
          f"num_samples={args.num_samples}")
    print("| spread | CPU (s) | GPU (s) | GPU per step (ms) | same picks | max |Δscore| rel |")
    print("|---:|---:|---:|---:|:---:|---:|")
    for spread in (0.3, 1.5):
        # each spread from its own generator seeded as in compare_batchbald.py: the same inputs
        x = make_probs(np.random.default_rng(args.seed), args.n, args.k, args.c, spread).astype(np.float32)
        xg = torch.from_numpy(x).cuda()
        A.batchbald(xg, 2, num_samples=args.num_samples, seed=0, input="log_probs")  # warm-ups, each side alike
        A.batchbald(x, 2, num_samples=args.num_samples, seed=0, input="log_probs")
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        gi, gs = A.batchbald(xg, args.b, num_samples=args.num_samples, seed=0, input="log_probs")
        torch.cuda.synchronize()
        tg = time.perf_counter() - t0
        t0 = time.perf_counter()
        ci, cs = A.batchbald(x, args.b, num_samples=args.num_samples, seed=0, input="log_probs")
        tc = time.perf_counter() - t0
        gi, gs = gi.cpu().numpy(), gs.cpu().numpy()
        same = bool(np.array_equal(gi, ci))
        rel = float(np.max(np.abs(gs - cs) / np.maximum(np.abs(cs), 1e-12)))
        print(f"| {spread} | {tc:.3f} | {tg:.3f} | {1e3 * tg / args.b:.1f} | {'yes' if same else 'NO'} | {rel:.1e} |")
    n = 8192
    a = torch.randn(n, n, dtype=torch.float64, device="cuda")
    a @ a
    best = float("inf")
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ a
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    tflops = 2 * n**3 / best / 1e12
    rows = args.num_samples  # the table's size once the exact regime is full (at most num_samples rows)
    floor = args.n * rows * args.k * args.c * 2 / (tflops * 1e12)
    print(f"\nfloor per step at {rows} table rows: {args.n}·{rows}·{args.k}·{args.c} float64 multiply-adds "
          f"= {1e3 * floor:.2f} ms at the measured DGEMM rate {tflops:.1f} TFLOP/s, {2e3 * floor:.2f} ms at half "
          f"of it (scalar FMAs, no tensor cores) (plus N·rows·C logarithms)")


if __name__ == "__main__":
    main()
