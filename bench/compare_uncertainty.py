#!/usr/bin/env python3
"""labelwise uncertainty metrics vs. straightforward NumPy / PyTorch (CPU) and BaaL, same inputs, one run.

    python bench/compare_uncertainty.py                 # [N, K, C] = [100000, 20, 10], float32
    python bench/compare_uncertainty.py --quick         # tiny size, a few seconds
    python bench/compare_uncertainty.py --json out.json # also save the raw numbers

What is timed (best of several repeats after one warm-up call, time.perf_counter):
  * labelwise: uncertainty.score(x) (all ten metrics, one fused pass) and each single-metric function;
  * NumPy: the textbook formulation of each metric (float32 in, float32 arithmetic as a user would
    write it; BalEntAcq's special functions in float64 via scipy.special), and an "all ten" function
    that shares the obvious intermediates (mean prediction, sample entropies, variances);
  * PyTorch (CPU, torch.get_num_threads() threads): the same formulations with torch ops;
  * BaaL (if importable): compute_score of its heuristics that match ours, on BaaL's layout [N, C, K]
    (a transposed contiguous copy made once, outside the timing);
  * the memory-read floor: N*K*C*4 bytes over this machine's read bandwidth, measured here on the
    same buffer (np.add.reduce, one thread, and torch.sum, all torch threads; the faster one counts).

Every NumPy / PyTorch / BaaL result is checked against labelwise (max |diff| printed). Needs numpy,
scipy, torch; baal is optional (pip install 'labelwise[bench]').
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import sys
import time
import warnings

import numpy as np
import scipy
import scipy.special as sps
import torch

import labelwise
from labelwise import uncertainty as U

METRICS = list(U.METRICS)
LN2 = math.log(2.0)
LOG_1E_32 = math.log(1e-32)  # the reference BalEntAcq evaluates ln B as log(B + 1e-32)


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def make_probs(n: int, k: int, c: int, seed: int = 1) -> np.ndarray:
    """Peaky Dirichlet-like probabilities (Gamma(0.5) draws + 1e-6, normalised), float32 [N, K, C].
    Same recipe as bench/bench_uncertainty.cpp (different RNG, so not bit-identical)."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, k, c), dtype=np.float32)
    step = max(1, (1 << 22) // (k * c))  # fill in blocks to bound the float64 temporaries
    for i in range(0, n, step):
        g = rng.gamma(0.5, size=(min(step, n - i), k, c)) + 1e-6
        g /= g.sum(axis=-1, keepdims=True)
        x[i : i + step] = g
    return x


# --------------------------------------------------------------------------------------------
# NumPy: the straightforward formulation, from the definitions in labelwise.uncertainty
# --------------------------------------------------------------------------------------------
def _np_entropy_of_mean(pbar):
    return -sps.xlogy(pbar, pbar).sum(axis=-1)


def _np_sample_entropy(x):
    return -sps.xlogy(x, x).sum(axis=-1).mean(axis=-1)


def _np_top2(pbar):
    part = np.partition(pbar, -2, axis=-1)
    return part[:, -1], part[:, -2]


def _np_variation_ratio(x):
    k, c = x.shape[1], x.shape[2]
    votes = x.argmax(axis=-1)  # [N, K]
    counts = (votes[:, :, None] == np.arange(c)).sum(axis=1)  # one-hot, summed over samples: [N, C]
    return 1.0 - counts.max(axis=-1) / k


def np_balentacq_from(mean, var, h_mean):
    """BalEntAcq as in include/labelwise/detail/uncertainty_impl.hpp (the reference implementation's
    formula), special functions in float64."""
    mu = np.maximum(mean.astype(np.float64), 1e-9)
    v = np.maximum(var.astype(np.float64), 1e-9)
    alpha = mu * mu * (1.0 - mu) / v - mu
    beta = (1.0 / mu - 1.0) * alpha
    with np.errstate(all="ignore"):
        log_b = sps.gammaln(alpha + 1.0) + sps.gammaln(beta) - sps.gammaln(alpha + beta + 1.0)
        log_b = np.logaddexp(log_b, LOG_1E_32)
        h = (
            log_b
            - alpha * sps.digamma(alpha + 1.0)
            - (beta - 1.0) * sps.digamma(beta)
            + (alpha + beta - 1.0) * sps.digamma(alpha + beta + 1.0)
        )
        t = mu * h
    t = np.where(np.isfinite(t), np.minimum(t, 0.0), 0.0)
    H = h_mean.astype(np.float64)
    mjent = t.sum(axis=-1) + H
    s = (H + LN2) / (mjent + H)
    return np.where(s < 0.0, 1.0 / s, s)


def np_predictive_entropy(x):
    return _np_entropy_of_mean(x.mean(axis=1))


def np_expected_entropy(x):
    return _np_sample_entropy(x)


def np_bald(x):
    return np.maximum(_np_entropy_of_mean(x.mean(axis=1)) - _np_sample_entropy(x), 0.0)


def np_least_confidence(x):
    return 1.0 - x.mean(axis=1).max(axis=-1)


def np_margin(x):
    t1, t2 = _np_top2(x.mean(axis=1))
    return 1.0 - (t1 - t2)


def np_ratio(x):
    t1, t2 = _np_top2(x.mean(axis=1))
    return t2 / t1


def np_variation_ratio(x):
    return _np_variation_ratio(x)


def np_max_mean_variation_ratio(x):
    return 1.0 - x.mean(axis=1).max(axis=-1)


def np_mean_std(x):
    return x.std(axis=1, ddof=1).mean(axis=-1)


def np_balentacq(x):
    pbar = x.mean(axis=1)
    return np_balentacq_from(pbar, x.var(axis=1, ddof=1), _np_entropy_of_mean(pbar))


def np_all(x):
    """All ten, sharing the obvious intermediates (what a careful user would write)."""
    k = x.shape[1]
    pbar = x.mean(axis=1)
    pe = _np_entropy_of_mean(pbar)
    ee = _np_sample_entropy(x)
    t1, t2 = _np_top2(pbar)
    var = x.var(axis=1, ddof=1)
    lc = 1.0 - t1
    return {
        "predictive_entropy": pe,
        "expected_entropy": ee,
        "bald": np.maximum(pe - ee, 0.0),
        "least_confidence": lc,
        "margin": 1.0 - (t1 - t2),
        "ratio": t2 / t1,
        "variation_ratio": _np_variation_ratio(x),
        "max_mean_variation_ratio": lc,
        "mean_std": np.sqrt(var).mean(axis=-1),
        "balentacq": np_balentacq_from(pbar, var, pe),
    }


NUMPY = {m: globals()["np_" + m] for m in METRICS}


# --------------------------------------------------------------------------------------------
# PyTorch (CPU): the same formulations with torch ops
# --------------------------------------------------------------------------------------------
def _t_entropy_of_mean(pbar):
    return torch.special.entr(pbar).sum(dim=-1)


def _t_sample_entropy(x):
    return torch.special.entr(x).sum(dim=-1).mean(dim=-1)


def _t_variation_ratio(x):
    k, c = x.shape[1], x.shape[2]
    votes = x.argmax(dim=-1)  # [N, K]
    counts = torch.nn.functional.one_hot(votes, c).sum(dim=1)  # [N, C]
    return 1.0 - counts.amax(dim=-1).to(x.dtype) / k


def t_balentacq_from(mean, var, h_mean):
    mu = mean.double().clamp_min(1e-9)
    v = var.double().clamp_min(1e-9)
    alpha = mu * mu * (1.0 - mu) / v - mu
    beta = (1.0 / mu - 1.0) * alpha
    log_b = torch.lgamma(alpha + 1.0) + torch.lgamma(beta) - torch.lgamma(alpha + beta + 1.0)
    log_b = torch.logaddexp(log_b, torch.full_like(log_b, LOG_1E_32))
    h = (
        log_b
        - alpha * torch.digamma(alpha + 1.0)
        - (beta - 1.0) * torch.digamma(beta)
        + (alpha + beta - 1.0) * torch.digamma(alpha + beta + 1.0)
    )
    t = mu * h
    t = torch.where(torch.isfinite(t), t.clamp_max(0.0), torch.zeros_like(t))
    H = h_mean.double()
    s = (H + LN2) / (t.sum(dim=-1) + 2.0 * H)
    return torch.where(s < 0.0, 1.0 / s, s)


def t_predictive_entropy(x):
    return _t_entropy_of_mean(x.mean(dim=1))


def t_expected_entropy(x):
    return _t_sample_entropy(x)


def t_bald(x):
    return (_t_entropy_of_mean(x.mean(dim=1)) - _t_sample_entropy(x)).clamp_min(0.0)


def t_least_confidence(x):
    return 1.0 - x.mean(dim=1).amax(dim=-1)


def t_margin(x):
    top = x.mean(dim=1).topk(2, dim=-1).values
    return 1.0 - (top[:, 0] - top[:, 1])


def t_ratio(x):
    top = x.mean(dim=1).topk(2, dim=-1).values
    return top[:, 1] / top[:, 0]


def t_variation_ratio(x):
    return _t_variation_ratio(x)


def t_max_mean_variation_ratio(x):
    return 1.0 - x.mean(dim=1).amax(dim=-1)


def t_mean_std(x):
    return x.std(dim=1, correction=1).mean(dim=-1)


def t_balentacq(x):
    pbar = x.mean(dim=1)
    return t_balentacq_from(pbar, x.var(dim=1, correction=1), _t_entropy_of_mean(pbar))


def t_all(x):
    pbar = x.mean(dim=1)
    pe = _t_entropy_of_mean(pbar)
    ee = _t_sample_entropy(x)
    top = pbar.topk(2, dim=-1).values
    var = x.var(dim=1, correction=1)
    lc = 1.0 - top[:, 0]
    return {
        "predictive_entropy": pe,
        "expected_entropy": ee,
        "bald": (pe - ee).clamp_min(0.0),
        "least_confidence": lc,
        "margin": 1.0 - (top[:, 0] - top[:, 1]),
        "ratio": top[:, 1] / top[:, 0],
        "variation_ratio": _t_variation_ratio(x),
        "max_mean_variation_ratio": lc,
        "mean_std": var.sqrt().mean(dim=-1),
        "balentacq": t_balentacq_from(pbar, var, pe),
    }


TORCH = {m: globals()["t_" + m] for m in METRICS}


# --------------------------------------------------------------------------------------------
# BaaL: heuristics that correspond to ours, on BaaL's layout [N, C, K]
# --------------------------------------------------------------------------------------------
def baal_cases():
    """metric -> (label, heuristic, to_ours, note). `to_ours` maps BaaL's compute_score output to our
    metric's value (BaaL ranks Margin / Certainty ascending, we score descending)."""
    try:
        import baal
        from baal.active import heuristics as H
    except Exception as e:  # pragma: no cover - optional dependency
        return None, f"baal not importable ({type(e).__name__}: {e})"
    cases = {
        "predictive_entropy": ("Entropy", H.Entropy(), lambda s: s, "same formula (scipy.stats.entropy of the mean)"),
        "bald": ("BALD", H.BALD(), lambda s: s, "same formula, but not clamped at 0"),
        "least_confidence": ("Certainty", H.Certainty(), lambda s: 1.0 - s, "BaaL returns max p̄ (ours = 1 - it)"),
        "margin": ("Margin", H.Margin(), lambda s: 1.0 - s, "BaaL returns p̄(1) - p̄(2) (ours = 1 - it)"),
    }
    if hasattr(H, "Variance"):
        v = H.Variance()  # reduction='mean' over classes; compute_score returns [N, C]
        cases["mean_std"] = (
            "Variance",
            v,
            None,
            "different quantity: mean over classes of the variance (ddof=0), ours is the mean std (ddof=1); "
            "timed as compute_score + its 'mean' reduction, checked against NumPy's mean variance",
        )
    for name in ("VariationRatio", "VarRatio"):
        if hasattr(H, name):  # not in baal 2.1.0; kept in case a later version adds it
            cases["variation_ratio"] = (name, getattr(H, name)(), lambda s: s, "")
    try:
        from importlib.metadata import version

        ver = version("baal")
    except Exception:
        ver = getattr(baal, "__version__", "?")
    return cases, f"baal {ver}"


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------
def timeit(fn, repeats: int, budget_s: float, min_repeats: int = 3):
    """One warm-up call (its result is returned for the correctness check), then up to `repeats`
    timed calls, stopping early once `min_repeats` are done and `budget_s` is spent."""
    gc.collect()
    out = fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeats:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= min_repeats and time.perf_counter() - start > budget_s:
            break
    return out, times


def read_bandwidth(x: np.ndarray, repeats: int):
    """Bytes/s of a plain reduction over x: NumPy (one thread) and torch.sum (all torch threads)."""
    flat = x.reshape(-1)
    tflat = torch.from_numpy(flat)
    res = {}
    for name, fn in (("np.add.reduce", lambda: np.add.reduce(flat)), ("torch.sum", lambda: torch.sum(tflat))):
        _, times = timeit(fn, max(repeats, 10), budget_s=2.0, min_repeats=10)
        res[name] = {"best_s": min(times), "GBps": flat.nbytes / min(times) / 1e9, "times_s": times}
    return res


def as_np(v):
    if isinstance(v, torch.Tensor):
        v = v.numpy()
    return np.asarray(v, dtype=np.float64)


def max_abs_diff(a, b):
    return float(np.max(np.abs(as_np(a) - as_np(b))))


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------
def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def fmt_ms(t):
    if t is None:
        return "—"
    ms = t * 1e3
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def fmt_x(num, den):
    if num is None or den is None:
        return "—"
    r = num / den
    return f"{r:.0f}×" if r >= 100 else f"{r:.1f}×"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--c", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="tiny size (N=2000), a few seconds")
    ap.add_argument("--repeats", type=int, default=7, help="max timed repeats per cell (best is kept)")
    ap.add_argument("--budget", type=float, default=3.0, help="seconds per cell after which repeats stop (min 3)")
    ap.add_argument("--no-baal", action="store_true")
    ap.add_argument("--json", metavar="PATH", help="save raw numbers here")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.repeats, args.budget = 2000, 5, 0.5
    N, K, C = args.n, args.k, args.c

    t_gen = time.perf_counter()
    x = make_probs(N, K, C)
    t_gen = time.perf_counter() - t_gen
    xt = torch.from_numpy(x)  # zero-copy view of the same buffer
    nbytes = x.nbytes

    cases, baal_info = (None, "baal skipped (--no-baal)") if args.no_baal else baal_cases()
    xb = np.ascontiguousarray(x.transpose(0, 2, 1)) if cases else None  # BaaL layout [N, C, K], made once

    machine = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "labelwise_threads": labelwise.num_threads(),
        "torch_threads": torch.get_num_threads(),
        "numpy_threads": 1,
        "loadavg_before": os.getloadavg(),
        "python": platform.python_version(),
        "versions": {
            "labelwise": labelwise.__version__,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "torch": torch.__version__,
            "baal": baal_info,
        },
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
    }

    print(f"# labelwise uncertainty metrics vs peers — [N, K, C] = [{N}, {K}, {C}] float32 probabilities", flush=True)
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores; threads: labelwise {machine['labelwise_threads']}, "
        f"torch {machine['torch_threads']}, numpy 1; load avg {machine['loadavg_before'][0]:.2f}",
        file=sys.stderr,
    )
    print(f"input generated in {t_gen:.1f} s; {baal_info}", file=sys.stderr)

    # ---- floor
    bw = read_bandwidth(x, args.repeats)
    best_bw = max(v["GBps"] for v in bw.values()) * 1e9
    floor_s = nbytes / best_bw

    R = {"labelwise": {}, "numpy": {}, "torch": {}, "baal": {}}  # metric -> times
    OUT = {"labelwise": {}, "numpy": {}, "torch": {}, "baal": {}}

    def run(impl, key, fn):
        out, times = timeit(fn, args.repeats, args.budget)
        R[impl][key] = times
        OUT[impl][key] = out
        print(f"  {impl:9s} {key:26s} {fmt_ms(min(times)):>9s} ms  ({len(times)} runs)", file=sys.stderr)

    run("labelwise", "all", lambda: U.score(x))
    run("labelwise", "all_baal_layout", lambda: U.score(xb if xb is not None else x.transpose(0, 2, 1),
                                                        sample_axis=-1, class_axis=1))
    for m in METRICS:
        run("labelwise", m, lambda m=m: getattr(U, m)(x))
    run("numpy", "all", lambda: np_all(x))
    for m in METRICS:
        run("numpy", m, lambda m=m: NUMPY[m](x))
    with torch.inference_mode():
        run("torch", "all", lambda: t_all(xt))
        for m in METRICS:
            run("torch", m, lambda m=m: TORCH[m](xt))
    if cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for m, (label, h, _, _) in cases.items():
                if m == "mean_std":
                    run("baal", m, lambda h=h: h.reduction(h.compute_score(xb)))
                else:
                    run("baal", m, lambda h=h: h.compute_score(xb))
    loadavg_after = os.getloadavg()

    # ---- correctness
    ref = OUT["labelwise"]["all"]
    checks = {}
    ok_all = True

    def check(impl, m, got, want, atol, rtol, note=""):
        nonlocal ok_all
        g, w = as_np(got), as_np(want)
        d = np.abs(g - w)
        bad = int(np.sum(d > atol + rtol * np.abs(w)))
        checks.setdefault(m, {})[impl] = {"max_abs_diff": float(d.max()), "n_outside_tol": bad, "note": note}
        ok_all &= bad == 0

    # float32 inputs, float32 arithmetic in the NumPy/torch formulations, float64 sums in labelwise:
    # differences of a few float32 ulps of the values (entropies up to ln C).
    atol, rtol = 2e-5, 1e-4
    for m in METRICS:
        # BalEntAcq = (H + ln 2) / (MJEnt + H) has a pole where MJEnt + H crosses 0; near it the float32
        # rounding of the mean/variance is amplified, so it is checked relative to its own size.
        a, r = (atol, 1e-3) if m == "balentacq" else (atol, rtol)
        check("labelwise:single", m, OUT["labelwise"][m], ref[m], 0.0, 0.0)
        check("labelwise:baal_layout", m, OUT["labelwise"]["all_baal_layout"][m], ref[m], 0.0, 0.0)
        check("numpy", m, OUT["numpy"][m], ref[m], a, r)
        check("numpy:all", m, OUT["numpy"]["all"][m], ref[m], a, r)
        check("torch", m, OUT["torch"][m], ref[m], a, r)
        check("torch:all", m, OUT["torch"]["all"][m], ref[m], a, r)
    if cases:
        for m, (label, h, to_ours, note) in cases.items():
            got = OUT["baal"][m]
            if m == "mean_std":  # different quantity: check against NumPy's mean variance (ddof=0)
                want = x.astype(np.float64).var(axis=1).mean(axis=-1)
                check("baal", m, got, want, 1e-6, 1e-4, note)
            else:
                check("baal", m, to_ours(as_np(got)), ref[m], atol, rtol, note)
        if "bald" in cases:
            raw = as_np(OUT["baal"]["bald"])
            checks["bald"]["baal"]["n_negative"] = int(np.sum(raw < 0))
            checks["bald"]["baal"]["min"] = float(raw.min())

    # ---- report
    lw = {k: min(v) for k, v in R["labelwise"].items()}
    nb = {k: min(v) for k, v in R["numpy"].items()}
    tb = {k: min(v) for k, v in R["torch"].items()}
    bb = {k: min(v) for k, v in R["baal"].items()}
    print()
    print(
        f"Machine: {machine['cpu']}, {machine['cores']} cores; threads: labelwise {machine['labelwise_threads']}, "
        f"torch {machine['torch_threads']}, NumPy 1. Load average {machine['loadavg_before'][0]:.2f} before, "
        f"{loadavg_after[0]:.2f} after."
    )
    print(
        f"Versions: labelwise {labelwise.__version__}, NumPy {np.__version__}, SciPy {scipy.__version__}, "
        f"torch {torch.__version__}, {baal_info}; Python {platform.python_version()}."
    )
    print(f"Input: x float32 [N, K, C] = [{N}, {K}, {C}] = {nbytes / 1e6:.0f} MB; date {machine['date']}.")
    bwtxt = ", ".join(f"{k} {v['GBps']:.1f} GB/s" for k, v in bw.items())
    print(f"Read floor: {nbytes / 1e6:.0f} MB / {best_bw / 1e9:.1f} GB/s = **{floor_s * 1e3:.1f} ms** ({bwtxt}; best of runs).")
    print("Times: best of up to", args.repeats, "runs after a warm-up, ms. Speed-up = peer time / labelwise time.")
    print()
    print("| metric | labelwise ms | × floor | NumPy ms | torch ms | BaaL ms (heuristic) | NumPy / lw | torch / lw | BaaL / lw |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")

    def row(name, key, baal_label=None):
        b = bb.get(key)
        bl = f"{fmt_ms(b)} ({baal_label})" if b is not None else "—"
        print(
            f"| {name} | {fmt_ms(lw[key])} | {lw[key] / floor_s:.1f} | {fmt_ms(nb.get(key))} | {fmt_ms(tb.get(key))} | "
            f"{bl} | {fmt_x(nb.get(key), lw[key])} | {fmt_x(tb.get(key), lw[key])} | {fmt_x(b, lw[key])} |"
        )

    row("**all ten, fused** (`score`)", "all")
    for m in METRICS:
        label = cases[m][0] + ("¹" if m == "mean_std" else "") if cases and m in cases else None
        row(f"`{m}`", m, label)
    print(
        f"| all ten, BaaL layout [N, C, K] (`sample_axis=-1, class_axis=1`) | {fmt_ms(lw['all_baal_layout'])} | "
        f"{lw['all_baal_layout'] / floor_s:.1f} | | | | | | |"
    )
    if cases:
        tot = sum(bb.values())
        print(
            f"\nBaaL's {len(bb)} matching heuristics together: {fmt_ms(tot)} ms, "
            f"{fmt_x(tot, lw['all'])} the fused labelwise pass computing all ten."
        )
        if "mean_std" in cases:
            print("¹ " + cases["mean_std"][3] + ".")
    print("\nCorrectness (max |diff| vs labelwise `score`, float32 outputs):\n")
    print("| metric | lw single / BaaL layout | NumPy | NumPy all | torch | torch all | BaaL | within tol |")
    print("|---|---|---|---|---|---|---|---|")
    for m in METRICS:
        c = checks[m]
        f = lambda k: f"{c[k]['max_abs_diff']:.1e}" if k in c else "—"
        lwcell = f"{c['labelwise:single']['max_abs_diff']:.0e} / {c['labelwise:baal_layout']['max_abs_diff']:.0e}"
        ok = all(v["n_outside_tol"] == 0 for v in c.values())
        bad = ", ".join(f"{k}: {v['n_outside_tol']}" for k, v in c.items() if v["n_outside_tol"])
        print(f"| `{m}` | {lwcell} | {f('numpy')} | {f('numpy:all')} | {f('torch')} | {f('torch:all')} | {f('baal')} | "
              f"{'yes' if ok else 'NO (' + bad + ')'} |")
    print(f"\nTolerance: |diff| <= {atol:g} + {rtol:g}·|ref| (BalEntAcq: rtol 1e-3); labelwise single-metric calls "
          "and the BaaL layout must match `score` bit for bit.")
    if cases and "bald" in cases:
        bc = checks["bald"]["baal"]
        print(f"BaaL BALD is not clamped at 0: {bc['n_negative']} of {N} scores negative (min {bc['min']:.1e}); "
              "labelwise clamps them to 0.")
    print("All checks passed." if ok_all else "SOME CHECKS FAILED (see table).")

    if args.json:
        data = {
            "shape": {"N": N, "K": K, "C": C, "dtype": "float32", "bytes": nbytes},
            "machine": machine,
            "loadavg_after": loadavg_after,
            "read_bandwidth": bw,
            "floor_s": floor_s,
            "times_s": R,
            "best_s": {"labelwise": lw, "numpy": nb, "torch": tb, "baal": bb},
            "baal_cases": {m: {"heuristic": v[0], "note": v[3]} for m, v in (cases or {}).items()},
            "checks": checks,
            "all_checks_passed": bool(ok_all),
        }
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1)
        print(f"raw numbers saved to {args.json}", file=sys.stderr)
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
