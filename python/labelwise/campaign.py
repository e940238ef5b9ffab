"""Simulated pool-based active-learning campaigns on real data: ``python -m labelwise.campaign``.

For every data set, strategy and seed: start from a small labelled seed set (stratified, every class
present), train a small MLP with dropout, score the unlabelled pool with MC dropout through
``labelwise.uncertainty``, acquire a batch with ``labelwise.acquisition``, reveal its labels, and
repeat until the label budget is spent. Test accuracy is recorded after every round, next to the
accuracy of the same model trained on the whole pool (the "full-data" reference).

Outputs in ``--out`` (default ``campaign-out/``):

* ``report.md`` — what was run, the learning curves, the labelled fraction each strategy needs to
  reach 95 % of the full-data accuracy, and the labels saved against random selection;
* ``curves_<dataset>.png`` — accuracy against labelled fraction, mean ± std over seeds;
* ``results.json`` — every number behind the report;
* ``state.json`` — finished runs; an interrupted campaign resumes from it (``--fresh`` ignores it).

Strategies: ``random``, ``entropy`` (predictive entropy, top-b), ``bald`` (top-b), ``balentacq``
(top-b), ``powerbald`` (stochastic power acquisition on BALD, Kirsch et al. 2023), plus
``batchbald``, ``coreset``, ``badge`` and ``cluster_margin`` when this build of labelwise provides them.

Data (shipped with scikit-learn, BSD-3-Clause; nothing is downloaded): Breast Cancer Wisconsin
(Diagnostic), UCI ML Repository, CC BY 4.0; UCI Optical Recognition of Handwritten Digits, CC BY 4.0.
Own data: ``--data FILE.npz`` with arrays ``X`` [N, D] and ``y`` [N] (integer labels).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import acquisition as A
from . import propagation as P
from . import uncertainty as U

_CLUSTER_CACHE: Dict = {}  # cluster ids of the current run's pool (cluster_margin)

BASE_STRATEGIES = ("random", "entropy", "bald", "balentacq", "powerbald")
OPTIONAL_STRATEGIES = ("batchbald", "coreset", "badge", "cluster_margin")


# ---------------------------------------------------------------------------------------------
# configuration


@dataclass
class Config:
    datasets: List[str]
    strategies: List[str]
    seeds: List[int]
    samples: int = 20  # MC-dropout passes
    epochs: int = 300  # full-batch Adam steps per round
    hidden: int = 64
    dropout: float = 0.3
    init_per_class: int = 2
    batch: Dict[str, int] = field(default_factory=dict)
    budget_fraction: float = 0.3  # labels to acquire, as a fraction of the pool
    test_fraction: float = 0.25
    calib_fraction: float = 0.2  # of the pool: a random, human-labelled calibration set for auto-labelling
    target_error: float = 0.05
    delta: float = 0.1
    quick: bool = False


def available_strategies() -> List[str]:
    return list(BASE_STRATEGIES) + [s for s in OPTIONAL_STRATEGIES if hasattr(A, s)]


# ---------------------------------------------------------------------------------------------
# data


@dataclass
class Dataset:
    name: str
    title: str
    X: np.ndarray
    y: np.ndarray
    source: str


def load_dataset(name: str) -> Dataset:
    if name.endswith(".npz"):
        if not os.path.exists(name):
            raise FileNotFoundError(f"--data: no such file: {name}")
        with np.load(name) as f:
            if "X" not in f or "y" not in f:
                raise ValueError(f"--data {name}: expected arrays 'X' [N, D] and 'y' [N], found {sorted(f.files)}")
            X, y = np.asarray(f["X"], dtype=np.float64), np.asarray(f["y"])
        return Dataset(os.path.basename(name)[:-4], name, X.reshape(len(X), -1), y, f"user file {name}")
    from sklearn import datasets

    if name == "breast_cancer":
        d = datasets.load_breast_cancer()
        return Dataset(name, "Breast Cancer Wisconsin (Diagnostic)", d.data, d.target,
                       "UCI ML Repository via scikit-learn (CC BY 4.0)")
    if name == "digits":
        d = datasets.load_digits()
        return Dataset(name, "UCI Optical Recognition of Handwritten Digits", d.data, d.target,
                       "UCI ML Repository via scikit-learn (CC BY 4.0)")
    raise ValueError(f"unknown data set '{name}'; expected breast_cancer, digits or a .npz file")


def validate_dataset(d: Dataset) -> Tuple[np.ndarray, np.ndarray, int]:
    X, y = d.X, d.y
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
        raise ValueError(f"{d.name}: expected X [N, D] and y [N], got X {X.shape} and y {y.shape}")
    if not np.isfinite(X).all():
        raise ValueError(f"{d.name}: X contains NaN or Inf (first at row {int(np.argwhere(~np.isfinite(X))[0, 0])})")
    classes, y_idx = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"{d.name}: a campaign needs at least 2 classes, the labels have {len(classes)}")
    return X.astype(np.float32), y_idx.astype(np.int64), len(classes)


# ---------------------------------------------------------------------------------------------
# model


def _torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised only without torch
        raise RuntimeError("labelwise.campaign needs PyTorch (pip install torch)") from exc
    return torch


def make_model(D: int, C: int, hidden: int, dropout: float, seed: int):
    torch = _torch()
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(D, hidden), torch.nn.ReLU(), torch.nn.Dropout(dropout),
        torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Dropout(dropout),
        torch.nn.Linear(hidden, C),
    )


def train(model, X, y, epochs: int, seed: int):
    torch = _torch()
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
    xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
    if not torch.isfinite(loss):
        raise FloatingPointError("training diverged: the loss is NaN or Inf")
    return model


def mc_log_probs(model, X, K: int, seed: int):
    """[N, K, C] log-probabilities from K dropout passes (dropout on at inference)."""
    torch = _torch()
    torch.manual_seed(seed)
    model.train()
    xt = torch.from_numpy(X)
    with torch.no_grad():
        out = torch.stack([torch.log_softmax(model(xt), dim=-1) for _ in range(K)], dim=1)
    if not torch.isfinite(out).all():
        raise FloatingPointError("the model produced NaN or Inf log-probabilities")
    return out


def accuracy(model, X, y) -> float:
    torch = _torch()
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(X)).argmax(dim=-1).numpy()
    return float((pred == y).mean())


# ---------------------------------------------------------------------------------------------
# acquisition


def acquire(strategy: str, model, X_pool: np.ndarray, unlabeled: np.ndarray, labeled: np.ndarray, b: int,
            K: int, seed: int, rnd: int) -> np.ndarray:
    """Indices (into the pool) of the next b items to label."""
    cand = np.flatnonzero(unlabeled)
    if strategy == "random":
        rng = np.random.default_rng([seed, rnd])
        return rng.choice(cand, size=b, replace=False)
    if strategy == "cluster_margin":
        # Clusters once per campaign run on the (standardised) input features, as the method prescribes
        # for a fixed embedding; margins from MC-dropout each round.
        key = hashlib.sha1(np.ascontiguousarray(X_pool).tobytes()).hexdigest()
        if _CLUSTER_CACHE.get("key") != key:
            k = max(2, int(round(math.sqrt(len(X_pool) / 2))))
            _CLUSTER_CACHE.update(key=key, ids=A.cluster_margin_clusters(X_pool, num_clusters=k))
        logp = mc_log_probs(model, X_pool, K, seed=seed * 1000 + rnd)
        margins = U.margin(logp, input="log_probs").numpy()
        margins[~unlabeled] = -np.inf  # only candidates (not labelled, not calibration) can be picked
        return A.cluster_margin(margins, _CLUSTER_CACHE["ids"], b, seed=seed * 1000 + rnd, labeled=~unlabeled)
    if strategy == "coreset":
        torch = _torch()
        model.eval()
        with torch.no_grad():
            feats = model[:-1](torch.from_numpy(X_pool)).numpy()  # penultimate features
        # Only the labelled items and the candidates take part (the calibration set is neither).
        sub = np.concatenate([np.flatnonzero(labeled), cand])
        mask = np.zeros(len(sub), dtype=bool)
        mask[: int(labeled.sum())] = True
        picks = A.coreset(feats[sub], mask, b)
        picks = np.asarray(picks[0] if isinstance(picks, tuple) else picks)
        return sub[picks]
    logp = mc_log_probs(model, X_pool[cand], K, seed=seed * 1000 + rnd)
    if strategy == "batchbald":
        picks = A.batchbald(logp, b, num_samples=10000, seed=seed, input="log_probs")
        picks = picks[0] if isinstance(picks, tuple) else picks
        return cand[np.asarray(picks)]
    if strategy == "badge":
        torch = _torch()
        model.eval()
        with torch.no_grad():
            xt = torch.from_numpy(X_pool[cand])
            emb = model[:-1](xt)
            probs = torch.softmax(model[-1](emb), dim=-1)
        return cand[np.asarray(A.badge(probs, emb, b, seed=seed * 1000 + rnd))]
    metric = {"entropy": "predictive_entropy", "bald": "bald", "balentacq": "balentacq", "powerbald": "bald"}[strategy]
    s = U.score(logp, [metric], input="log_probs")[metric]
    if strategy == "powerbald":
        picks = A.stochastic(s, b, mode="power", temperature=1.0, seed=seed * 1000 + rnd)
    else:
        picks = A.top_k(s, b)
    return cand[np.asarray(picks)]


# ---------------------------------------------------------------------------------------------
# one run


@dataclass
class RunResult:
    dataset: str
    strategy: str
    seed: int
    labeled: List[int]
    accuracy: List[float]
    full_accuracy: float
    pool_size: int
    seconds: float
    autolabel: Dict = field(default_factory=dict)  # after the last round
    autolabel_10: Dict = field(default_factory=dict)  # at the first round with >= 10 % of the pool labelled


def split(X, y, C, cfg: Config, seed: int):
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    counts = np.bincount(y, minlength=C)
    need = cfg.init_per_class + 2  # the seed set, one test item, one pool item to acquire
    if counts.min() < need:
        c = int(np.argmin(counts))
        raise ValueError(f"class {c} has only {counts[c]} items; the seed set needs {cfg.init_per_class} per class "
                         f"plus one test and one pool item ({need} in all)")
    idx = np.arange(len(y))
    pool_idx, test_idx = train_test_split(idx, test_size=cfg.test_fraction, stratify=y, random_state=seed)
    scaler = StandardScaler().fit(X[pool_idx])
    Xp, Xt = scaler.transform(X[pool_idx]).astype(np.float32), scaler.transform(X[test_idx]).astype(np.float32)
    yp, yt = y[pool_idx], y[test_idx]
    rng = np.random.default_rng(seed)
    # A random calibration set, labelled by the humans, never trained on nor acquired.
    calib_mask = np.zeros(len(yp), dtype=bool)
    calib_mask[rng.choice(len(yp), size=int(round(cfg.calib_fraction * len(yp))), replace=False)] = True
    init = []
    for c in range(C):
        members = np.flatnonzero((yp == c) & ~calib_mask)
        if len(members) < cfg.init_per_class:
            raise ValueError(f"class {c} has only {len(members)} pool items; the seed set needs {cfg.init_per_class} per class")
        init.extend(rng.choice(members, size=cfg.init_per_class, replace=False).tolist())
    return Xp, yp, Xt, yt, np.asarray(init), calib_mask


def run_one(d: Dataset, strategy: str, seed: int, cfg: Config, progress=None) -> RunResult:
    X, y, C = validate_dataset(d)
    Xp, yp, Xt, yt, init, calib = split(X, y, C, cfg, seed)
    N = int((~calib).sum())  # the acquisition pool: everything but the calibration set
    b = cfg.batch.get(d.name, max(C, N // 50))
    budget = int(round(cfg.budget_fraction * N))
    if budget > N - len(init):
        raise ValueError(f"{d.name}: budget {budget} is larger than the unlabelled pool ({N - len(init)})")
    if b < 1 or b > budget:
        raise ValueError(f"{d.name}: batch size {b} must be in [1, budget={budget}]")
    t0 = time.perf_counter()
    labeled = np.zeros(len(yp), dtype=bool)
    labeled[init] = True
    counts, accs = [], []
    auto10: Dict = {}
    rounds = math.ceil(budget / b)
    for rnd in range(rounds + 1):
        model = train(make_model(Xp.shape[1], C, cfg.hidden, cfg.dropout, seed), Xp[labeled], yp[labeled],
                      cfg.epochs, seed + rnd)
        counts.append(int(labeled.sum()))
        accs.append(accuracy(model, Xt, yt))
        if not auto10 and counts[-1] >= 0.1 * N:
            auto10 = autolabel_rest(model, Xp, yp, labeled, calib, cfg, seed)
            auto10["labeled_fraction"] = counts[-1] / N
        if progress is not None:
            progress.update(1)
        if rnd == rounds:
            break
        take = min(b, budget - (counts[-1] - len(init)))
        picks = acquire(strategy, model, Xp, ~labeled & ~calib, labeled, take, cfg.samples, seed, rnd)
        if labeled[picks].any() or calib[picks].any() or len(np.unique(picks)) != len(picks):
            raise RuntimeError(f"{strategy}: acquired an already labelled or duplicate item")
        labeled[picks] = True
    auto = autolabel_rest(model, Xp, yp, labeled, calib, cfg, seed)
    full = train(make_model(Xp.shape[1], C, cfg.hidden, cfg.dropout, seed), Xp[~calib], yp[~calib], cfg.epochs, seed)
    return RunResult(d.name, strategy, seed, counts, accs, accuracy(full, Xt, yt), N, time.perf_counter() - t0, auto,
                     auto10)


def autolabel_rest(model, Xp, yp, labeled, calib, cfg: Config, seed: int) -> Dict:
    """Certified auto-labelling of the still-unlabelled pool with the final model (MC-mean probabilities),
    calibrated on the human-labelled calibration set; the realised error uses the withheld truth."""
    rest = ~labeled & ~calib
    probs_rest = mc_log_probs(model, Xp[rest], cfg.samples, seed=seed + 7).exp().mean(dim=1)
    probs_cal = mc_log_probs(model, Xp[calib], cfg.samples, seed=seed + 8).exp().mean(dim=1)
    r = P.certified_auto_label(probs_rest.numpy(), probs_cal.numpy(), yp[calib], target_error=cfg.target_error,
                               delta=cfg.delta)
    acc = np.asarray(r.accepted)
    labels = np.asarray(r.labels)
    truth = yp[rest]
    n_acc = int(acc.sum())
    return {
        "certified": bool(r.certified),
        "reason": r.reason,
        "threshold": float(r.threshold),
        "bound": float(r.bound),
        "coverage": float(r.coverage),
        "n_rest": int(rest.sum()),
        "n_accepted": n_acc,
        "realised_error": float((labels[acc] != truth[acc]).mean()) if n_acc else None,
        "n_calibration": int(calib.sum()),
    }


# ---------------------------------------------------------------------------------------------
# report


def fraction_to_reach(r: RunResult, level: float = 0.95) -> Optional[float]:
    target = level * r.full_accuracy
    for n, a in zip(r.labeled, r.accuracy):
        if a >= target:
            return n / r.pool_size
    return None


def summarise(results: List[RunResult]) -> Dict:
    out: Dict = {}
    for r in results:
        out.setdefault(r.dataset, {}).setdefault(r.strategy, []).append(r)
    summary: Dict = {}
    for ds, by in out.items():
        summary[ds] = {}
        for st, runs in by.items():
            accs = np.array([r.accuracy for r in runs])
            fr = [fraction_to_reach(r) for r in runs]
            reached = [f for f in fr if f is not None]
            summary[ds][st] = {
                "labeled_fraction": (np.array(runs[0].labeled) / runs[0].pool_size).tolist(),
                "accuracy_mean": accs.mean(axis=0).tolist(),
                "accuracy_std": accs.std(axis=0).tolist(),
                "full_accuracy_mean": float(np.mean([r.full_accuracy for r in runs])),
                "fraction_to_95": float(np.mean(reached)) if len(reached) == len(runs) else None,
                "runs_reaching_95": len(reached),
                "seeds": [r.seed for r in runs],
                "pool_size": runs[0].pool_size,
                "autolabel": [r.autolabel for r in runs],
                "autolabel_10": [r.autolabel_10 for r in runs],
                "n_calibration": runs[0].autolabel.get("n_calibration", 0),
                "labeled": runs[0].labeled,
            }
    return summary


def plot(summary: Dict, out: str) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for ds, by in summary.items():
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for st, s in sorted(by.items()):
            x = np.array(s["labeled_fraction"]) * 100
            m, sd = np.array(s["accuracy_mean"]), np.array(s["accuracy_std"])
            ax.plot(x, m, marker="o", ms=3, label=st, lw=2.2 if st == "balentacq" else 1.4)
            ax.fill_between(x, m - sd, m + sd, alpha=0.12)
        full = np.mean([s["full_accuracy_mean"] for s in by.values()])
        ax.axhline(full, color="k", ls="--", lw=1, label="full data")
        ax.axhline(0.95 * full, color="k", ls=":", lw=1, label="95 % of full")
        ax.set_xlabel("labelled fraction of the pool (%)")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{ds}: mean ± std over {len(next(iter(by.values()))['seeds'])} seeds")
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        name = f"curves_{ds}.png"
        fig.savefig(os.path.join(out, name), dpi=110)
        plt.close(fig)
        files.append(name)
    return files


def write_report(summary: Dict, cfg: Config, datasets: Dict[str, Dataset], plots: List[str], out: str,
                 seconds: float) -> str:
    lines = ["# Active-learning campaign report", ""]
    lines.append(f"Strategies: {', '.join(cfg.strategies)}; seeds: {cfg.seeds}; MC-dropout samples K = {cfg.samples}; "
                 f"{'quick mode; ' if cfg.quick else ''}wall time {seconds:.0f} s.")
    lines.append("")
    for ds, by in summary.items():
        d = datasets[ds]
        first = next(iter(by.values()))
        pool = first["pool_size"]
        lines += [f"## {d.title} (`{ds}`)", "",
                  f"Source: {d.source}. {len(d.y)} items: acquisition pool {pool}, calibration "
                  f"{first['n_calibration']}, test {len(d.y) - pool - first['n_calibration']}; seed set "
                  f"{first['labeled'][0]} labels ({100 * first['labeled_fraction'][0]:.1f} % of the pool), "
                  f"batches of {first['labeled'][1] - first['labeled'][0] if len(first['labeled']) > 1 else 0}.", ""]
        lines.append(f"![learning curves](curves_{ds}.png)")
        lines.append("")
        lines.append("| strategy | final accuracy (mean ± std) | labelled fraction to reach 95 % of full-data accuracy | runs reaching it |")
        lines.append("|---|---|---|---|")
        rand = by.get("random", {}).get("fraction_to_95")
        for st, s in sorted(by.items(), key=lambda kv: (kv[1]["fraction_to_95"] is None, kv[1]["fraction_to_95"] or 0)):
            f = s["fraction_to_95"]
            fs = "not reached within the budget" if f is None else f"{100 * f:.1f} %"
            if f is not None and rand is not None and st != "random":
                if f < rand:
                    fs += f" ({100 * (1 - f / rand):.0f} % fewer labels than random)"
                elif f == rand:
                    fs += " (as many labels as random)"
                else:
                    fs += f" ({100 * (f / rand - 1):.0f} % more labels than random)"
            lines.append(f"| {st} | {s['accuracy_mean'][-1]:.3f} ± {s['accuracy_std'][-1]:.3f} | {fs} | "
                         f"{s['runs_reaching_95']} / {len(s['seeds'])} |")
        full = np.mean([s["full_accuracy_mean"] for s in by.values()])
        lines += ["", f"Full-data accuracy (same model trained on the whole pool): {full:.3f}.", ""]
        for key, when in (("autolabel_10", "at the first round with at least 10 % of the pool labelled"),
                          ("autolabel", "after the last round")):
            lines += [f"**Certified auto-labelling of the rest of the pool** {when} (target error "
                      f"{cfg.target_error:.0%} with probability ≥ {1 - cfg.delta:.0%}, calibrated on a random "
                      f"human-labelled calibration set of {first['n_calibration']} items; realised error measured "
                      "against the withheld truth):", "",
                      "| strategy | certified runs | coverage of the rest (mean) | realised error (mean, max) | certified bound (mean) |",
                      "|---|---|---|---|---|"]
            for st, s in sorted(by.items()):
                al = [a for a in s[key] if a]
                if not al:
                    continue
                cert = [a for a in al if a["certified"]]
                errs = [a["realised_error"] for a in cert if a["realised_error"] is not None]
                lines.append(f"| {st} | {len(cert)} / {len(al)} | "
                             f"{np.mean([a['coverage'] for a in al]):.2f} | "
                             + (f"{np.mean(errs):.3f}, {np.max(errs):.3f} | " if errs else "— | ")
                             + (f"{np.mean([a['bound'] for a in cert]):.3f} |" if cert else "— |"))
            lines.append("")
        worse = [st for st, s in by.items() if st != "random" and rand is not None and
                 (s["fraction_to_95"] is None or s["fraction_to_95"] > rand)]
        if worse:
            lines.append(f"Honest note: on this data set {', '.join(sorted(worse))} did not beat random selection "
                         "at reaching 95 % of the full-data accuracy.")
            lines.append("")
    lines += ["Numbers behind this report: `results.json`.", ""]
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


# ---------------------------------------------------------------------------------------------
# driver


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m labelwise.campaign", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", action="append", help="breast_cancer, digits (default: both); repeatable")
    p.add_argument("--data", help="your own data: a .npz file with X [N, D] and y [N]")
    p.add_argument("--strategies", default=",".join(available_strategies()),
                   help=f"comma-separated, from: {', '.join(available_strategies())}")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    p.add_argument("--samples", type=int, default=20, help="MC-dropout samples K (default 20)")
    p.add_argument("--budget", type=float, default=0.3, help="labels to acquire, fraction of the pool (default 0.3)")
    p.add_argument("--batch", type=int, help="acquisition batch size (default: about 2 %% of the pool)")
    p.add_argument("--out", default="campaign-out", help="output folder (default campaign-out/)")
    p.add_argument("--quick", action="store_true", help="small, fast settings for CI")
    p.add_argument("--fresh", action="store_true", help="ignore saved state and start over")
    return p.parse_args(argv)


def build_config(a: argparse.Namespace) -> Config:
    names = a.dataset or ([] if a.data else ["breast_cancer", "digits"])
    if a.data:
        names.append(a.data)
    strategies = [s.strip() for s in a.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in available_strategies()]
    if unknown:
        raise SystemExit(f"--strategies: unknown or unavailable {unknown}; available: {available_strategies()}")
    if a.seeds < 1:
        raise SystemExit("--seeds must be >= 1")
    if a.samples < 2:
        raise SystemExit("--samples must be >= 2 (MC dropout needs several passes)")
    if not 0 < a.budget < 1:
        raise SystemExit("--budget must be a fraction in (0, 1)")
    cfg = Config(datasets=names, strategies=strategies, seeds=list(range(a.seeds)), samples=a.samples,
                 budget_fraction=a.budget, quick=a.quick)
    if a.batch is not None:
        if a.batch < 1:
            raise SystemExit("--batch must be >= 1")
        cfg.batch = {n: a.batch for n in ["breast_cancer", "digits"] + [os.path.basename(n)[:-4] for n in names]}
    if a.quick:
        cfg.seeds = cfg.seeds[:1] if a.seeds == 3 else cfg.seeds
        cfg.epochs, cfg.samples, cfg.budget_fraction = 120, min(cfg.samples, 8), min(cfg.budget_fraction, 0.12)
    return cfg


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    a = parse_args(argv)
    cfg = build_config(a)
    os.makedirs(a.out, exist_ok=True)
    torch = _torch()
    torch.set_num_threads(1)  # small models: one thread is faster and deterministic
    datasets = {}
    for n in cfg.datasets:
        d = load_dataset(n)
        validate_dataset(d)
        datasets[d.name] = d
    state_path = os.path.join(a.out, "state.json")
    done: Dict[str, Dict] = {}
    if os.path.exists(state_path) and not a.fresh:
        with open(state_path) as f:
            saved = json.load(f)
        if saved.get("config") == asdict(cfg):
            done = saved.get("runs", {})
            print(f"[campaign] resuming: {len(done)} finished runs found in {state_path}")
        else:
            print(f"[campaign] {state_path} is from other settings; starting over")
    jobs = [(ds, st, sd) for ds in datasets for st in cfg.strategies for sd in cfg.seeds]
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    t0 = time.perf_counter()
    results: List[RunResult] = []
    bar = tqdm(total=len(jobs), desc="campaign runs", unit="run") if tqdm else None
    for ds, st, sd in jobs:
        key = f"{ds}/{st}/{sd}"
        if key in done:
            results.append(RunResult(**done[key]))
        else:
            if bar is not None:
                bar.set_postfix_str(key)
            r = run_one(datasets[ds], st, sd, cfg)
            results.append(r)
            done[key] = asdict(r)
            tmp = state_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"config": asdict(cfg), "runs": done}, f)
            os.replace(tmp, state_path)  # atomic: an interrupted write never corrupts the state
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    summary = summarise(results)
    plots = plot(summary, a.out)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"config": asdict(cfg), "summary": summary, "runs": [asdict(r) for r in results]}, f, indent=1)
    report = write_report(summary, cfg, datasets, plots, a.out, time.perf_counter() - t0)
    print(f"[campaign] report: {report}")
    for ds, by in summary.items():
        print(f"[campaign] {ds}: labelled fraction to reach 95 % of full-data accuracy")
        for st, s in sorted(by.items()):
            f = s["fraction_to_95"]
            print(f"    {st:12s} {'not reached' if f is None else f'{100 * f:5.1f} %'}   final acc {s['accuracy_mean'][-1]:.3f}")
    return summary


def cli() -> int:
    """Console entry point (``labelwise-campaign``): exit status 0 on success."""
    main()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
