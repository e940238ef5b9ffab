#!/usr/bin/env python3
"""labelwise uncertainty metrics vs. straightforward NumPy / PyTorch (CPU) and BaaL, same inputs, one run.

    python bench/compare_uncertainty.py                 # [N, K, C] = [100000, 20, 10], float32
    python bench/compare_uncertainty.py --quick         # tiny size, a few seconds
    python bench/compare_uncertainty.py --json out.json # also save the raw numbers

What is timed (time.perf_counter; one warm-up call per cell, then round-robin rounds that time every cell
once, best per cell kept, so that a burst of foreign load spoils one round of all cells rather than every
repeat of one cell; where a round switches from one implementation to the next, one untimed call of the
next cell comes first, so that the previous framework's spinning worker threads are not timed):
  * labelwise: uncertainty.score(x) (all ten metrics, one fused pass) and each single-metric function;
  * NumPy: the textbook formulation of each metric (float32 in, float32 arithmetic as a user would
    write it; BalEntAcq's special functions in float64 via scipy.special), and an "all ten" function
    that shares the obvious intermediates (mean prediction, sample entropies, variances);
  * PyTorch (CPU, torch.get_num_threads() threads): the same formulations with torch ops;
  * BaaL (if importable): compute_score of its heuristics that match ours, on BaaL's layout [N, C, K]
    (a transposed contiguous copy made once, outside the timing);
  * the memory-read floor: N*K*C*4 bytes over this machine's read bandwidth, measured here on the
    same buffer (np.add.reduce, one thread, and torch.sum, all torch threads; the faster one counts),
    timed in the same rounds.

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
    """BalEntAcq as in include/labelwise/detail/uncertainty_impl.hpp and docs/metrics.md (the reference
    implementation's formula; a certain item, max p̄ = 1 or H = 0, scores -inf), special functions in
    float64."""
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
    with np.errstate(divide="ignore"):
        s = (H + LN2) / (mjent + H)
        s = np.where(s < 0.0, 1.0 / s, s)
    certain = (H <= 0.0) | (mean.max(axis=-1) >= 1.0)
    return np.where(certain, -np.inf, s)


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
    s = torch.where(s < 0.0, 1.0 / s, s)
    certain = (H <= 0.0) | (mean.amax(dim=-1) >= 1.0)
    return torch.where(certain, torch.full_like(s, -math.inf), s)


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
def as_np(v):
    if isinstance(v, torch.Tensor):
        v = v.numpy()
    return np.asarray(v, dtype=np.float64)


def max_abs_diff(a, b):
    return float(np.max(np.abs(as_np(a) - as_np(b))))


# --------------------------------------------------------------------------------------------
# Correctness
# --------------------------------------------------------------------------------------------
# float32 inputs, float32 arithmetic in the NumPy / torch formulations, float64 sums in labelwise:
# differences of a few float32 ulps of the values (entropies are up to ln C).
ATOL, RTOL = 2e-5, 1e-4
# BalEntAcq = (H + ln 2) / (MJEnt + H) has a pole where MJEnt + H crosses 0; near it the float32 rounding of
# the mean / variance is amplified, so it is checked relative to its own size.
RTOL_BALENTACQ = 1e-3


def make_low_disagreement(n: int, k: int, c: int, seed: int = 2) -> np.ndarray:
    """Samples that (nearly) agree: one base prediction per item, multiplied per sample by exp(noise) with
    noise scale 0, 1e-6, 1e-3 or 1e-1 per item; every 50th item is one-hot in all samples (a certain
    item: exact zeros, p̄ = 1). Exercises BALD ~ 0 (rounding makes it negative unless clamped), zero /
    tiny variances (mean_std, BalEntAcq's 1e-9 floors), 0·log 0 and BalEntAcq's certain items."""
    rng = np.random.default_rng(seed)
    base = rng.gamma(0.5, size=(n, 1, c)) + 1e-6
    scale = rng.choice([0.0, 1e-6, 1e-3, 1e-1], size=(n, 1, 1))
    g = base * np.exp(rng.normal(size=(n, k, c)) * scale)
    g /= g.sum(axis=-1, keepdims=True)
    certain = np.arange(0, n, 50)
    g[certain] = 0.0
    g[certain, :, rng.integers(0, c, size=certain.size)] = 1.0
    return g.astype(np.float32)


def outputs_once(x, xb, cases):
    """Every implementation's result on x (no timing), in the layout run_checks expects."""
    out = {"labelwise": {"all": U.score(x)}, "numpy": {"all": np_all(x)}, "baal": {}}
    if xb is not None:
        out["labelwise"]["all_baal_layout"] = U.score(xb, sample_axis=-1, class_axis=1)
    for m in METRICS:
        out["labelwise"][m] = getattr(U, m)(x)
        out["numpy"][m] = NUMPY[m](x)
    with torch.inference_mode():
        xt = torch.from_numpy(x)
        out["torch"] = {"all": t_all(xt), **{m: TORCH[m](xt) for m in METRICS}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for m, (label, h, _, _) in (cases or {}).items():
            out["baal"][m] = h.reduction(h.compute_score(xb)) if m == "mean_std" else h.compute_score(xb)
    return out


def run_checks(x, out, cases):
    """Max |diff| of every implementation against labelwise.uncertainty.score(x); returns (checks, ok)."""
    ref = out["labelwise"]["all"]
    checks = {}

    def check(impl, m, got, want, atol, rtol, note=""):
        g, w = as_np(got), as_np(want)
        with np.errstate(invalid="ignore"):
            d = np.where(g == w, 0.0, np.abs(g - w))  # equal infinities (certain items' -inf) match
            bad = int(np.sum(~((d <= atol) | (d <= atol + rtol * np.abs(w)))))  # NaN counts as bad
        checks.setdefault(m, {})[impl] = {"max_abs_diff": float(np.max(d)), "n_outside_tol": bad, "note": note}

    for m in METRICS:
        a, r = (ATOL, RTOL_BALENTACQ) if m == "balentacq" else (ATOL, RTOL)
        # labelwise against itself: the single-metric calls and the strided BaaL layout may take other code
        # paths than the contiguous fused call (e.g. a vectorised flat pass), so float32 tolerance here too.
        check("labelwise:single", m, out["labelwise"][m], ref[m], a, r)
        if "all_baal_layout" in out["labelwise"]:
            check("labelwise:baal_layout", m, out["labelwise"]["all_baal_layout"][m], ref[m], a, r)
        check("numpy", m, out["numpy"][m], ref[m], a, r)
        check("numpy:all", m, out["numpy"]["all"][m], ref[m], a, r)
        check("torch", m, out["torch"][m], ref[m], a, r)
        check("torch:all", m, out["torch"]["all"][m], ref[m], a, r)
    for m, (label, h, to_ours, note) in (cases or {}).items():
        got = out["baal"][m]
        if m == "mean_std":  # different quantity: checked against NumPy's float64 mean variance (ddof=0)
            check("baal", m, got, x.astype(np.float64).var(axis=1).mean(axis=-1), 1e-6, 1e-4, note)
        else:
            check("baal", m, to_ours(as_np(got)), ref[m], ATOL, RTOL, note)
    if cases and "bald" in cases:
        raw = as_np(out["baal"]["bald"])
        checks["bald"]["baal"]["n_negative"] = int(np.sum(raw < 0))
        checks["bald"]["baal"]["min"] = float(raw.min())
    ok = all(v["n_outside_tol"] == 0 for c in checks.values() for v in c.values())
    return checks, ok


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


def core_build():
    """Which compiled labelwise is measured: the _core extension's path and modification time."""
    from labelwise import _core

    path = getattr(_core, "__file__", "?")
    try:
        mtime = datetime.datetime.fromtimestamp(os.path.getmtime(path)).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    except OSError:
        mtime = "?"
    return {"path": path, "mtime": mtime}


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


def print_checks(title, checks, n):
    print("\n" + title + "\n")
    print("| metric | lw single / BaaL layout | NumPy | NumPy all | torch | torch all | BaaL | within tol |")
    print("|---|---|---|---|---|---|---|---|")
    for m in METRICS:
        c = checks[m]
        f = lambda k: f"{c[k]['max_abs_diff']:.1e}" if k in c else "—"
        lwcell = f"{c['labelwise:single']['max_abs_diff']:.0e}"
        if "labelwise:baal_layout" in c:
            lwcell += f" / {c['labelwise:baal_layout']['max_abs_diff']:.0e}"
        ok = all(v["n_outside_tol"] == 0 for v in c.values())
        bad = ", ".join(f"{k}: {v['n_outside_tol']}" for k, v in c.items() if v["n_outside_tol"])
        print(f"| `{m}` | {lwcell} | {f('numpy')} | {f('numpy:all')} | {f('torch')} | {f('torch:all')} | {f('baal')} | "
              f"{'yes' if ok else 'NO (' + bad + ')'} |")
    bc = checks.get("bald", {}).get("baal")
    if bc is not None:
        print(f"\nBaaL BALD is not clamped at 0: {bc['n_negative']} of {n} scores negative (min {bc['min']:.1e}); "
              "labelwise clamps them to 0 (the diff above includes this).")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--c", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="tiny size (N=2000), a few seconds")
    ap.add_argument("--repeats", type=int, default=7, help="max timed rounds (each times every cell once; best kept)")
    ap.add_argument("--budget", type=float, default=120.0, help="seconds after which rounds stop (at least 3 rounds)")
    ap.add_argument("--no-baal", action="store_true")
    ap.add_argument("--json", metavar="PATH", help="save raw numbers here")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.repeats, args.budget = 2000, 5, 5.0
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
        "labelwise_core": core_build(),
    }

    print(f"# labelwise uncertainty metrics vs peers — [N, K, C] = [{N}, {K}, {C}] float32 probabilities", flush=True)
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores; threads: labelwise {machine['labelwise_threads']}, "
        f"torch {machine['torch_threads']}, numpy 1; load avg {machine['loadavg_before'][0]:.2f}",
        file=sys.stderr,
    )
    print(f"input generated in {t_gen:.1f} s; {baal_info}", file=sys.stderr)

    # ---- cells: (implementation, key, fn). Timed round-robin: every round times every cell once and
    # the best per cell is kept, so a burst of foreign load on this small machine spoils one round of
    # every cell rather than all repeats of one cell.
    cells = [("labelwise", "all", lambda: U.score(x))]
    if xb is not None:
        cells.append(("labelwise", "all_baal_layout", lambda: U.score(xb, sample_axis=-1, class_axis=1)))
    cells += [("labelwise", m, lambda m=m: getattr(U, m)(x)) for m in METRICS]
    cells.append(("numpy", "all", lambda: np_all(x)))
    cells += [("numpy", m, lambda m=m: NUMPY[m](x)) for m in METRICS]
    cells.append(("torch", "all", lambda: t_all(xt)))
    cells += [("torch", m, lambda m=m: TORCH[m](xt)) for m in METRICS]
    for m, (label, h, _, _) in (cases or {}).items():
        if m == "mean_std":  # compute_score returns [N, C]; its own 'mean' reduction makes it per item
            cells.append(("baal", m, lambda h=h: h.reduction(h.compute_score(xb))))
        else:
            cells.append(("baal", m, lambda h=h: h.compute_score(xb)))

    # The read floor: a plain reduction over the same buffer, NumPy (one thread) and torch.sum (all torch
    # threads), timed in the same rounds (several calls per round: each is only a few ms).
    flat = x.reshape(-1)
    tflat = torch.from_numpy(flat)
    floor_cells = [("np.add.reduce", lambda: np.add.reduce(flat)), ("torch.sum", lambda: torch.sum(tflat))]
    floor_times = {name: [] for name, _ in floor_cells}

    R = {"labelwise": {}, "numpy": {}, "torch": {}, "baal": {}}  # impl -> key -> times (s)
    OUT = {"labelwise": {}, "numpy": {}, "torch": {}, "baal": {}}  # impl -> key -> warm-up result
    round_load = []
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for impl, key, fn in cells:  # warm-up; its result is the one checked
            OUT[impl][key] = fn()
            R[impl][key] = []
        for _, fn in floor_cells:
            fn()
        start = time.perf_counter()
        for r in range(args.repeats):
            gc.collect()
            for name, fn in floor_cells:
                for _ in range(5):
                    t0 = time.perf_counter()
                    fn()
                    floor_times[name].append(time.perf_counter() - t0)
            prev = "floor"  # the floor cells end with torch.sum
            for impl, key, fn in cells:
                if impl != prev:
                    # Switching implementation: one untimed call first. The previous framework's idle
                    # workers (torch's OpenMP threads spin-wait for several ms after a parallel region)
                    # would otherwise hold a core during the first call: on 2 cores that cost
                    # labelwise's first cell ~7 ms (32 ms instead of 25 ms).
                    fn()
                    prev = impl
                t0 = time.perf_counter()
                fn()
                R[impl][key].append(time.perf_counter() - t0)
            round_load.append(os.getloadavg()[0])
            print(f"  round {r + 1}: {time.perf_counter() - start:.1f} s, load {round_load[-1]:.2f}", file=sys.stderr)
            if r + 1 >= 3 and time.perf_counter() - start > args.budget:
                break
    loadavg_after = os.getloadavg()
    bw = {k: {"best_s": min(v), "GBps": nbytes / min(v) / 1e9, "times_s": v} for k, v in floor_times.items()}
    best_bw = max(v["GBps"] for v in bw.values()) * 1e9
    floor_s = nbytes / best_bw

    # ---- correctness: the benchmark input (warm-up results above), and a low-disagreement input
    checks, ok_all = run_checks(x, OUT, cases)
    x2 = make_low_disagreement(min(N, 20_000), K, C)
    xb2 = np.ascontiguousarray(x2.transpose(0, 2, 1)) if cases else None
    checks2, ok2 = run_checks(x2, outputs_once(x2, xb2, cases), cases)
    ok_all &= ok2

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
    print(f"labelwise build measured: {machine['labelwise_core']['path']} (built {machine['labelwise_core']['mtime']}).")
    print(f"Input: x float32 [N, K, C] = [{N}, {K}, {C}] = {nbytes / 1e6:.0f} MB; date {machine['date']}.")
    bwtxt = ", ".join(f"{k} {v['GBps']:.1f} GB/s" for k, v in bw.items())
    print(f"Read floor: {nbytes / 1e6:.0f} MB / {best_bw / 1e9:.1f} GB/s = **{fmt_ms(floor_s)} ms** ({bwtxt}; best of all rounds).")
    nrounds = len(round_load)
    print(f"Times: ms, best of {nrounds} round-robin rounds after a warm-up (load avg per round "
          f"{min(round_load):.2f}–{max(round_load):.2f}). Speed-up = peer time / labelwise time.")
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
    if "all_baal_layout" in lw:
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
    print_checks("Correctness on the benchmark input (max |diff| vs labelwise `score`, float32 outputs):", checks, N)
    print_checks(
        f"Correctness on a low-disagreement input ([{x2.shape[0]}, {K}, {C}]: samples = one base prediction "
        "× exp(noise of scale 0 / 1e-6 / 1e-3 / 1e-1), every 50th item one-hot (certain: BalEntAcq -inf); "
        "BALD ≈ 0, tiny variances):",
        checks2,
        x2.shape[0],
    )
    print(f"\nTolerance: |diff| <= {ATOL:g} + {RTOL:g}·|ref| (BalEntAcq: rtol {RTOL_BALENTACQ:g}), also for labelwise's "
          "single-metric calls and the strided BaaL layout against the contiguous fused `score` (other code paths).")
    print("All checks passed." if ok_all else "SOME CHECKS FAILED (see table).")

    if args.json:
        data = {
            "shape": {"N": N, "K": K, "C": C, "dtype": "float32", "bytes": nbytes},
            "machine": machine,
            "loadavg_after": loadavg_after,
            "loadavg_per_round": round_load,
            "read_bandwidth": bw,
            "floor_s": floor_s,
            "times_s": R,
            "best_s": {"labelwise": lw, "numpy": nb, "torch": tb, "baal": bb},
            "baal_cases": {m: {"heuristic": v[0], "note": v[3]} for m, v in (cases or {}).items()},
            "checks": checks,
            "checks_low_disagreement": checks2,
            "all_checks_passed": bool(ok_all),
        }
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1)
        print(f"raw numbers saved to {args.json}", file=sys.stderr)
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
