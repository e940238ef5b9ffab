#!/usr/bin/env python3
"""labelwise vs the plain PyTorch formulation of the ten metrics on the same device tensors.

Run by bench/gpu_check.sh on the GPU machine (``--device cuda``, default size [1310720, 20, 10] float32 =
1.05 GB); ``--device cpu --n 20000`` is a smoke test anywhere. Times with CUDA events (or perf_counter on
the CPU), best of ``--repeats``; checks that every labelwise result matches the torch result; prints a
Markdown table with the copy-bandwidth floor (device-to-device copy of the input, bytes read + written
per second; the floor is one read of the input at that rate).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import labelwise
import labelwise.uncertainty as U


def torch_metrics(p: torch.Tensor) -> dict:
    """The straightforward formulation on [N, K, C] probabilities (float32 in, float32 out)."""
    K = p.shape[1]
    mean = p.mean(1)
    xlogx = lambda q: torch.where(q > 0, q * torch.log(q.clamp_min(1e-38)), torch.zeros_like(q))  # noqa: E731
    H = -xlogx(mean).sum(-1)
    EH = -xlogx(p).sum(-1).mean(1)
    top2 = mean.topk(2, dim=-1).values
    votes = torch.nn.functional.one_hot(p.argmax(-1), p.shape[-1]).sum(1)
    std = p.std(1, unbiased=True)
    return {
        "predictive_entropy": H,
        "expected_entropy": EH,
        "bald": (H - EH).clamp_min(0),
        "least_confidence": 1 - top2[:, 0],
        "margin": 1 - (top2[:, 0] - top2[:, 1]),
        "ratio": top2[:, 1] / top2[:, 0],
        "variation_ratio": 1 - votes.max(-1).values / K,
        "max_mean_variation_ratio": 1 - top2[:, 0],
        "mean_std": std.mean(-1),
    }


def timed(fn, device: str, repeats: int) -> float:
    fn()
    best = math.inf
    for _ in range(repeats):
        if device == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            best = min(best, a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--n", type=int, default=1310720)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--c", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device (use --device cpu for a smoke test)")
    if a.device == "cuda" and not labelwise.built_with_cuda():
        raise SystemExit("this labelwise was built without CUDA")
    g = torch.Generator(device=a.device).manual_seed(0)
    x = torch.rand(a.n, a.k, a.c, device=a.device, generator=g) ** 4 + 1e-6
    x /= x.sum(-1, keepdim=True)
    nbytes = x.numel() * 4
    name = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    print(f"device: {name}; input [{a.n}, {a.k}, {a.c}] float32 = {nbytes / 1e9:.2f} GB")

    copy = torch.empty_like(x)
    t_copy = timed(lambda: copy.copy_(x), a.device, a.repeats)
    bw = 2 * nbytes / t_copy
    # The target is against the copy bandwidth (bytes read + written per second): one read of
    # the input at that rate is nbytes / bw, half the copy's time (a read-only kernel, bench_cuda's
    # BM-style read floor, gets about that).
    print(f"copy bandwidth (read + write): {bw / 1e9:.0f} GB/s; one read of the input at that rate: "
          f"{nbytes / bw * 1e3:.3f} ms")

    ours = U.score(x)
    ref = torch_metrics(x)
    worst, failed = 0.0, []
    for k, v in ref.items():
        mine, theirs = ours[k].double(), v.double()
        d = torch.where(mine == theirs, 0.0, (mine - theirs).abs()).max().item()  # equal infinities differ by 0
        worst = d if math.isnan(d) else max(worst, d)
        if not d < 1e-4:
            failed.append(f"{k} (max |diff| {d:.2e})")
    print(f"check: labelwise == torch formulation for 9 metrics (max |diff| {worst:.1e}); BalEntAcq has no torch twin here")
    if failed:  # timed anyway (the GPU's time is scarce); the exit status says it failed
        print("CHECK FAILED, labelwise and torch differ by more than 1e-4:", ", ".join(failed))

    rows = [("all ten, fused (labelwise)", timed(lambda: U.score(x), a.device, a.repeats)),
            ("all nine, torch formulation", timed(lambda: torch_metrics(x), a.device, a.repeats)),
            ("bald (labelwise)", timed(lambda: U.bald(x), a.device, a.repeats)),
            ("balentacq (labelwise)", timed(lambda: U.balentacq(x), a.device, a.repeats))]
    floor = nbytes / bw  # one read of the input at the copy bandwidth (the 80 % target)
    print("\n| case | time (ms) | input GB/s | % of copy bandwidth |\n|---|---:|---:|---:|")
    for label, t in rows:
        print(f"| {label} | {t * 1e3:.3f} | {nbytes / t / 1e9:.0f} | {100 * floor / t:.0f} |")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
