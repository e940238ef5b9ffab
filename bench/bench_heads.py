"""Fused MC-dropout head sample-and-score (labelwise.torch.MCDropoutHead.score, the C++ kernel) against
the straightforward PyTorch path, on a 128^3 volume with F = 32 features, C = 8 classes, K = 20 samples.

* fused: ``head.score(features, K, metrics=("bald", "balentacq"))`` — every sample drawn, pushed through
  the head and reduced voxel by voxel; nothing of size K x C x voxels is ever allocated.
* naive: what one writes in PyTorch — K passes of dropout + 1x1x1 convolution + softmax (torch's own
  dropout RNG), the K probability maps stacked ``[K, C, *spatial]`` (float32), then BALD and BalEntAcq
  from them with torch ops (the formulas of docs/metrics.md).
* floor: K·C·F multiply-adds per voxel (the head's arithmetic; Philox, exp and the metrics come on top)
  over the machine's measured float64 multiply-add rate (a timed 2048^3 float64 matmul, FMA).
  With dropout the CPU kernel adds each sample's term as one FMA with an exact 0 / 1 gate
  (docs/segmentation.md; AVX2 / AVX-512 builds), so this is its floor too; without dropout, for
  ensembles, in the baseline build and on CUDA multiply and add are rounded separately (twice that).

Each path runs in its own subprocess; peak memory is that process's max RSS (``resource.getrusage``)
minus its RSS after the inputs were allocated. Usage: ``python bench/bench_heads.py [--size 128]``
(``--size 64`` for a quick run; ``--threads`` sets torch's and labelwise's thread count).
``--device cuda`` times the fused kernel on the GPU instead: 512 x 512 x 300, F = 64, C = 14, K = 20
(bench/gpu_check.sh runs it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

F_DEFAULT, C_DEFAULT, K_DEFAULT, P_DEFAULT = 32, 8, 20, 0.5


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _setup(args):
    import torch

    import labelwise
    from labelwise.torch import MCDropoutHead

    torch.set_num_threads(args.threads)
    labelwise.set_num_threads(args.threads)
    torch.manual_seed(0)
    head = MCDropoutHead(args.features, args.classes, p=P_DEFAULT, dims=3).eval()
    x = torch.randn(1, args.features, args.size, args.size, args.size)
    return torch, head, x


def child_fused(args) -> dict:
    torch, head, x = _setup(args)
    head.score(x[..., :4, :4, :4], K=args.samples, seed=0)  # warm-up (tiny)
    base = _rss_mib()
    t0 = time.perf_counter()
    res = head.score(x, K=args.samples, metrics=("bald", "balentacq"), seed=0)
    dt = time.perf_counter() - t0
    return {"time_s": dt, "peak_mib": _peak_mib() - base, "bald_mean": float(res["bald"].mean())}


def _naive_metrics(torch, probs, dtype="float32"):
    """BALD and BalEntAcq of probs [K, C, *spatial] with torch ops (docs/metrics.md), in `dtype`
    (float32: what a straightforward torch script does; float64 doubles the K·C·V temporaries)."""
    p64 = probs.double() if dtype == "float64" else probs
    mean = p64.mean(0)

    def ent(q, dim):
        return -(torch.where(q > 0, q * torch.log(q), torch.zeros((), dtype=q.dtype))).sum(dim)

    H = ent(mean, 0)
    EH = ent(p64, 1).mean(0)
    bald = torch.clamp(H - EH, min=0)
    var = p64.var(0, unbiased=True)
    mu = mean.clamp(min=1e-9)
    v = var.clamp(min=1e-9)
    a = mu * mu * (1 - mu) / v - mu
    b = (1 / mu - 1) * a
    lnB = torch.lgamma(a + 1) + torch.lgamma(b) - torch.lgamma(a + b + 1)
    lnB = torch.logaddexp(lnB, torch.full_like(lnB, math.log(1e-32)))
    h = lnB - a * torch.digamma(a + 1) - (b - 1) * torch.digamma(b) + (a + b - 1) * torch.digamma(a + b + 1)
    t = mu * h
    t = torch.where(torch.isfinite(t), t, torch.zeros_like(t)).clamp(max=0).sum(0)
    s = (H + math.log(2)) / (t + 2 * H)
    bal = torch.where(s < 0, 1 / s, s)
    return bald.float(), bal.float()


def child_naive(args) -> dict:
    torch, head, x = _setup(args)
    F = torch.nn.functional
    w, bias = head.conv.weight.detach(), head.conv.bias.detach()
    base = _rss_mib()
    t0 = time.perf_counter()
    with torch.no_grad():
        probs = torch.stack([torch.softmax(F.conv3d(F.dropout(x, P_DEFAULT, training=True), w, bias)[0], dim=0)
                             for _ in range(args.samples)])  # [K, C, D, H, W] float32
        bald, bal = _naive_metrics(torch, probs, args.naive_dtype)
    dt = time.perf_counter() - t0
    return {"time_s": dt, "peak_mib": _peak_mib() - base, "bald_mean": float(bald.mean())}


def child_floor(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    n = 2048
    a = torch.randn(n, n, dtype=torch.float64)
    b = torch.randn(n, n, dtype=torch.float64)
    a @ b
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return {"madd_per_s": n**3 / best}


def cuda_fused(args) -> int:
    """The fused kernel on the GPU: 512 x 512 x 300 by default (F = 64, C = 14, K = 20), CUDA events,
    best of 3 after a warm-up; the floor is K·C·F float64 multiply-adds over the card's measured float64
    matmul rate; a 32^3 crop is checked against the CPU path first."""
    import torch

    import labelwise
    from labelwise.torch import MCDropoutHead

    if not torch.cuda.is_available() or not labelwise.built_with_cuda():
        print("--device cuda: no CUDA device, or labelwise built without CUDA", file=sys.stderr)
        return 2
    D, H, W = args.cuda_shape
    Fch, C, K = args.cuda_features, args.cuda_classes, args.samples
    torch.manual_seed(0)
    head = MCDropoutHead(Fch, C, p=P_DEFAULT, dims=3)
    crop = torch.randn(1, Fch, 32, 32, 32)
    cpu = head.score(crop, K=K, metrics=("bald", "balentacq"), seed=1)
    gpu = head.cuda().score(crop.cuda(), K=K, metrics=("bald", "balentacq"), seed=1)
    # equal values (BalEntAcq's -inf on certain voxels included) differ by 0; a NaN difference stays NaN
    err = max(float(torch.where(gpu[m].cpu() == cpu[m], 0.0, (gpu[m].cpu() - cpu[m]).abs()).max()) for m in cpu)
    same = torch.equal(head.sample(crop.cuda(), K=K, seed=1).cpu(), head.cpu().sample(crop, K=K, seed=1))
    head = head.cuda()
    x = torch.randn(1, Fch, D, H, W, device="cuda")
    head.score(x[..., :8, :8, :8], K=K, seed=0)
    best = float("inf")
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        head.score(x, K=K, metrics=("bald", "balentacq"), seed=0)
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    n = 8192
    a = torch.randn(n, n, dtype=torch.float64, device="cuda")
    a @ a
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    a @ a
    end.record()
    torch.cuda.synchronize()
    rate = n**3 / (start.elapsed_time(end) / 1e3)
    V = D * H * W
    madds = K * C * Fch * V
    print(f"{torch.cuda.get_device_name()}: MCDropoutHead.score {D}x{H}x{W} ({V} voxels), F={Fch}, C={C}, K={K}, "
          f"p={P_DEFAULT}, bald + balentacq")
    print(f"32^3 crop: CUDA samples == CPU samples bit for bit: {same}; max |metric difference| {err:.2e}")
    print(f"fused: {best * 1e3:.1f} ms (best of 3, CUDA events) = {V / best / 1e6:.0f} M voxels/s; "
          f"peak CUDA memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB (features {x.numel() * 4 / 2**30:.1f} GiB)")
    print(f"floor: {madds / 1e12:.2f} T multiply-adds at {rate / 1e12:.1f} T/s (cuBLAS float64 matmul, tensor cores "
          f"where the card has them: a lower bound for the kernel's scalar FMAs) = "
          f"{madds / rate * 1e3:.1f} ms; without FMA {2 * madds / rate * 1e3:.1f} ms")
    # the timing is printed either way; a mismatch with the CPU path fails the run (exit status 1)
    if not same or not err <= 1e-5:
        print(f"CHECK FAILED: CUDA samples equal the CPU's: {same}; max |metric difference| {err:.2e} (allowed 1e-5)")
        return 1
    return 0


def run_child(mode: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--size", str(args.size), "--threads", str(args.threads),
           "--features", str(args.features), "--classes", str(args.classes), "--samples", str(args.samples),
           "--naive-dtype", args.naive_dtype]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=128, help="edge of the cubic volume (voxels)")
    ap.add_argument("--features", type=int, default=F_DEFAULT)
    ap.add_argument("--classes", type=int, default=C_DEFAULT)
    ap.add_argument("--samples", type=int, default=K_DEFAULT)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--skip-naive", action="store_true", help="only the fused path and the floor")
    ap.add_argument("--naive-dtype", choices=["float32", "float64"], default="float32",
                    help="arithmetic of the naive path's metrics (default float32, as a plain torch script)")
    ap.add_argument("--naive-size", type=int, default=None,
                    help="edge of the naive path's volume (default --size; smaller when its ~10 GiB at 128^3 do not fit)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: time the fused kernel on the GPU (--cuda-shape, --cuda-features, --cuda-classes)")
    ap.add_argument("--cuda-shape", type=int, nargs=3, default=[300, 512, 512], metavar=("D", "H", "W"))
    ap.add_argument("--cuda-features", type=int, default=64)
    ap.add_argument("--cuda-classes", type=int, default=14)
    ap.add_argument("--child", choices=["fused", "naive", "floor"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.device == "cuda":
        return cuda_fused(args)
    if args.child:
        fn = {"fused": child_fused, "naive": child_naive, "floor": child_floor}[args.child]
        print(json.dumps(fn(args)))
        return 0
    V = args.size**3
    K, C, Fch = args.samples, args.classes, args.features
    floor = run_child("floor", args)
    fused = run_child("fused", args)
    naive_size = args.naive_size or args.size
    naive = None
    if not args.skip_naive:
        naive = run_child("naive", argparse.Namespace(**{**vars(args), "size": naive_size}))
    madds = K * C * Fch * V
    floor_s = madds / floor["madd_per_s"]
    print(f"MCDropoutHead.score, {args.size}^3 volume ({V} voxels), F={Fch}, C={C}, K={K}, p={P_DEFAULT}, "
          f"metrics bald + balentacq, {args.threads} threads")
    print(f"probabilities the naive path materialises: K*C*V float32 = {K * C * V * 4 / 2**20:.0f} MiB")
    print("| path | time (s) | peak memory above inputs (MiB) |")
    print("| --- | ---: | ---: |")
    print(f"| fused (labelwise) | {fused['time_s']:.2f} | {fused['peak_mib']:.0f} |")
    if naive and naive_size == args.size:
        print(f"| naive PyTorch ({args.naive_dtype} metrics) | {naive['time_s']:.2f} | {naive['peak_mib']:.0f} |")
    elif naive:
        scale = args.size**3 / naive_size**3
        print(f"| naive PyTorch on {naive_size}^3 (shrunk to fit memory) | {naive['time_s']:.2f} | "
              f"{naive['peak_mib']:.0f} |")
        print(f"| naive PyTorch, scaled x{scale:.2f} to {args.size}^3 (linear in voxels) | "
              f"{naive['time_s'] * scale:.2f} | {naive['peak_mib'] * scale:.0f} |")
    print(f"floor: {madds / 1e9:.1f} G multiply-adds at {floor['madd_per_s'] / 1e9:.1f} G/s "
          f"(float64 matmul, FMA) = {floor_s:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
