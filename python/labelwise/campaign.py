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
``batchbald``, ``coreset``, ``badge``, ``cluster_margin`` and ``weighted_kmeans`` (the uncertainty-weighted
diversity hybrid: BALD-weighted k-means over the penultimate features of the 10·b most uncertain
candidates) when this build of labelwise provides them.

Segmentation (``--dataset colin27``; :mod:`labelwise.segcampaign`): the Colin27 T1 MRI with its AAL
atlas as 8 lobes + background (9 classes); axial slices are the pool, a small 2D U-Net with a
``labelwise.torch.MCDropoutHead`` is the model, mean foreground Dice on held-out slices the metric and
labels are counted in voxels. Strategies: ``random``, ``entropy``, ``bald``, ``balentacq``,
``powerbald``, ``coreset`` (whole slices, per-voxel maps reduced to slice means) and
``random_regions``, ``bald_regions``, ``balentacq_regions`` (the best non-overlapping patches of any
slice: partial slice labels); auto-labelling is per voxel. The report adds an uncertainty overlay
(``overlay_colin27.png``).

Data (shipped with scikit-learn, BSD-3-Clause; nothing is downloaded): Breast Cancer Wisconsin
(Diagnostic), UCI ML Repository, CC BY 4.0; UCI Optical Recognition of Handwritten Digits, CC BY 4.0;
Colin27 + AAL from Debian's ``mricron-data`` (``apt-get install mricron-data``).
Own data: ``--data FILE.npz`` with arrays ``X`` [N, D] and ``y`` [N] (integer labels), or a volume
with ``image`` and ``labels`` [S, H, W] (axial slices first, label 0 = background) for segmentation.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import acquisition as A
from . import propagation as P
from . import segcampaign as SEG
from . import uncertainty as U

_CLUSTER_CACHE: Dict = {}  # cluster ids of the current run's pool (cluster_margin)

BASE_STRATEGIES = ("random", "entropy", "bald", "balentacq", "powerbald")
OPTIONAL_STRATEGIES = ("batchbald", "coreset", "badge", "cluster_margin", "weighted_kmeans")
CLASSIFICATION_DATASETS = ("breast_cancer", "digits")
SEGMENTATION_DATASETS = ("colin27",)
DEFAULT_DATASETS = ("breast_cancer", "digits")


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
    seg_max_rounds: int = 0  # segmentation: stop after this many rounds (0: the budget decides; --quick: 2)
    # segmentation (colin27 / volumes); labels are counted in voxels
    seg_downsample: int = 4  # in-plane: 4 mm pixels
    seg_slice_stride: int = 2  # every 2nd 1 mm slice with brain
    seg_width: int = 12  # U-Net channels of the first level
    seg_steps: int = 300  # Adam steps per round (one-cycle schedule), from scratch
    seg_batch: int = 4  # slices per step
    seg_lr: float = 1e-2
    seg_init_slices: int = 3  # seed set (grows until every class is present)
    seg_batch_slices: int = 3  # acquired per round (regions: the same number of voxels)
    seg_patch: int = 8  # region side, in pixels
    seg_calib_clicks: int = 4000  # calibration: random labelled voxels of the unlabelled pool
    data_fingerprints: Dict[str, str] = field(default_factory=dict)  # sha256 of each --data file


# Saved runs are resumed only under the same Config and the same version of the run's design; bump it
# when a change alters what a run computes (2: segmentation calibration clicks come from the pool).
STATE_VERSION = 5  # 3: classification calibration drawn from the unlabelled pool at auto-labelling time; 4: seg_max_rounds;
# 5: a random stream per step (segcampaign.stream_seed)


def available_strategies() -> List[str]:
    """Strategies for classification data sets."""
    return list(BASE_STRATEGIES) + [s for s in OPTIONAL_STRATEGIES if hasattr(A, s)]


def segmentation_strategies() -> List[str]:
    """Strategies for segmentation data sets (whole slices, then regions)."""
    return list(SEG.STRATEGIES)


def all_strategies() -> List[str]:
    return available_strategies() + [s for s in segmentation_strategies() if s not in available_strategies()]


def applicable(d, strategy: str) -> bool:
    if getattr(d, "kind", "classification") == "segmentation":
        return strategy in SEG.STRATEGIES
    return strategy in available_strategies()


# ---------------------------------------------------------------------------------------------
# data


@dataclass
class Dataset:
    name: str
    title: str
    X: np.ndarray
    y: np.ndarray
    source: str


def load_dataset(name: str, cfg: Optional[Config] = None):
    """A classification :class:`Dataset`, or a :class:`labelwise.segcampaign.SegDataset` for ``colin27``
    and for .npz files with ``image`` / ``labels`` (prepared with ``cfg``'s segmentation settings)."""
    if cfg is None:
        cfg = Config(datasets=[name], strategies=[], seeds=[0])
    if name == "colin27":
        return SEG.load_colin27(cfg.seg_downsample, cfg.seg_slice_stride, cfg.seg_patch)
    if name.endswith(".npz"):
        if not os.path.exists(name):
            raise FileNotFoundError(f"--data: no such file: {name}")
        try:
            with np.load(name) as f:
                files = set(f.files)
        except (ValueError, OSError, EOFError) as exc:
            raise ValueError(f"--data {name}: not a readable .npz archive ({exc})") from None
        if {"image", "labels"} <= files:
            return SEG.load_npz_volume(name, os.path.basename(name)[:-4], cfg.seg_patch)
        with np.load(name) as f:
            if "X" not in f or "y" not in f:
                raise ValueError(f"--data {name}: expected arrays 'X' [N, D] and 'y' [N] (classification) or "
                                 f"'image' and 'labels' [S, H, W] (segmentation), found {sorted(f.files)}")
            try:
                X, y = np.asarray(f["X"], dtype=np.float64), np.asarray(f["y"])
            except (ValueError, TypeError) as exc:  # object arrays (pickles are not loaded), non-numeric X
                raise ValueError(f"--data {name}: X must be numeric and y numbers or strings ({exc})") from None
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
    raise ValueError(f"unknown data set '{name}'; expected breast_cancer, digits, colin27 or a .npz file")


def validate_dataset(d: Dataset) -> Tuple[np.ndarray, np.ndarray, int]:
    if getattr(d, "kind", "classification") == "segmentation":
        C = SEG.validate(d)
        return d.image, d.labels, C
    X, y = d.X, d.y
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
        raise ValueError(f"{d.name}: expected X [N, D] and y [N], got X {X.shape} and y {y.shape}")
    if X.shape[1] == 0:
        raise ValueError(f"{d.name}: X has no features (shape {X.shape})")
    if not np.isfinite(X).all():
        raise ValueError(f"{d.name}: X contains NaN or Inf (first at row {int(np.argwhere(~np.isfinite(X))[0, 0])})")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise ValueError(f"{d.name}: y contains NaN or Inf (first at item {int(np.flatnonzero(~np.isfinite(y))[0])})")
    classes, y_idx = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"{d.name}: a campaign needs at least 2 classes, the labels have {len(classes)}")
    return X.astype(np.float32), y_idx.astype(np.int64), len(classes)


# ---------------------------------------------------------------------------------------------
# model


_torch = SEG._torch


def make_model(D: int, C: int, hidden: int, dropout: float, seed: int):
    with SEG.seeded_torch(seed) as torch:
        return torch.nn.Sequential(
            torch.nn.Linear(D, hidden), torch.nn.ReLU(), torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden, C),
        )


def train(model, X, y, epochs: int, seed: int):
    with SEG.seeded_torch(seed) as torch:
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


def penultimate(model, X):
    """The model's penultimate features of X (dropout off): a torch tensor [N, hidden]."""
    torch = _torch()
    model.eval()
    with torch.no_grad():
        return model[:-1](torch.from_numpy(X))


def mc_log_probs(model, X, K: int, seed: int):
    """[N, K, C] log-probabilities from K dropout passes (dropout on at inference)."""
    with SEG.seeded_torch(seed) as torch, torch.no_grad():
        model.train()
        xt = torch.from_numpy(X)
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
    mc_seed, select_seed = SEG.stream_seed(seed, "mc", rnd), SEG.stream_seed(seed, "select", rnd)
    if strategy == "random":
        rng = np.random.default_rng(select_seed)
        return rng.choice(cand, size=b, replace=False)
    if strategy == "cluster_margin":
        # Clusters once per campaign run on the (standardised) input features, as the method prescribes
        # for a fixed embedding; margins from MC-dropout each round.
        key = hashlib.sha1(np.ascontiguousarray(X_pool).tobytes()).hexdigest()
        if _CLUSTER_CACHE.get("key") != key:
            k = max(2, int(round(math.sqrt(len(X_pool) / 2))))
            _CLUSTER_CACHE.update(key=key, ids=A.average_linkage_clusters(X_pool, num_clusters=k))
        logp = mc_log_probs(model, X_pool, K, seed=mc_seed)
        margins = U.margin(logp, input="log_probs").numpy()
        margins[~unlabeled] = -np.inf  # only candidates (not labelled, not calibration) can be picked
        return A.cluster_margin(margins, _CLUSTER_CACHE["ids"], b, seed=select_seed, labeled=~unlabeled)
    if strategy == "coreset":
        feats = penultimate(model, X_pool).numpy()
        # Only the labelled items and the candidates take part (the calibration set is neither).
        sub = np.concatenate([np.flatnonzero(labeled), cand])
        mask = np.zeros(len(sub), dtype=bool)
        mask[: int(labeled.sum())] = True
        picks, _ = A.coreset(feats[sub], mask, b)
        return sub[picks]
    logp = mc_log_probs(model, X_pool[cand], K, seed=mc_seed)
    if strategy == "batchbald":
        picks, _ = A.batchbald(logp, b, num_samples=10000, seed=select_seed, input="log_probs")
        return cand[np.asarray(picks)]
    if strategy == "weighted_kmeans":
        feats = penultimate(model, X_pool[cand]).numpy()
        s = np.maximum(np.asarray(U.bald(logp, input="log_probs")), 0.0)  # scores must be >= 0
        return cand[np.asarray(A.weighted_kmeans(feats, s, b))]
    if strategy == "badge":
        torch = _torch()
        emb = penultimate(model, X_pool[cand])
        with torch.no_grad():
            probs = torch.softmax(model[-1](emb), dim=-1)
        return cand[np.asarray(A.badge(probs, emb, b, seed=select_seed))]
    metric = {"entropy": "predictive_entropy", "bald": "bald", "balentacq": "balentacq", "powerbald": "bald"}[strategy]
    s = U.score(logp, [metric], input="log_probs")[metric]
    if strategy == "powerbald":
        picks = A.stochastic(s, b, mode="power", temperature=1.0, seed=select_seed)
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
    labeled: List[int]  # labelled items (segmentation: voxels) after each round
    accuracy: List[float]  # the test metric after each round: accuracy, or mean foreground Dice (metric="dice")
    full_accuracy: float  # the same metric for the model trained on the whole pool
    pool_size: int  # items (segmentation: voxels) in the acquisition pool
    seconds: float
    autolabel: Dict = field(default_factory=dict)  # after the last round
    autolabel_10: Dict = field(default_factory=dict)  # at the first round with >= 10 % of the pool labelled
    metric: str = "accuracy"
    extra: Dict = field(default_factory=dict)  # segmentation: Dice per class, slices, batch, patch, ...


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


def plan(d: Dataset, cfg: Config, seed: int):
    """A classification run's split and sizes, every check a run makes before it trains:
    (Xp, yp, Xt, yt, init, calib, C, N, b, budget). Errors as CampaignError / ValueError."""
    X, y, C = validate_dataset(d)
    Xp, yp, Xt, yt, init, calib = split(X, y, C, cfg, seed)
    N = int((~calib).sum())  # the acquisition pool: everything but the calibration set
    budget = SEG.budget_count(d.name, cfg.budget_fraction, N, "item")
    b = cfg.batch.get(d.name, min(max(C, N // 50), budget))  # the default never exceeds a small budget
    if budget > N - len(init):
        raise ValueError(f"{d.name}: budget {budget} is larger than the unlabelled pool ({N - len(init)})")
    if b < 1 or b > budget:
        raise ValueError(f"{d.name}: batch size {b} must be in [1, budget={budget}]")
    return Xp, yp, Xt, yt, init, calib, C, N, b, budget


def check_before_runs(d, cfg: Config) -> None:
    """Every data set's split, budget and batch checked for every seed before the first run, so that a
    bad setting for one data set or seed does not surface after the runs of the others."""
    for seed in cfg.seeds:
        if getattr(d, "kind", "classification") == "segmentation":
            SEG.budget_and_batch(d, SEG.split(d, cfg, seed), cfg)
        else:
            plan(d, cfg, seed)


def run_one(d: Dataset, strategy: str, seed: int, cfg: Config, progress=None) -> RunResult:
    if getattr(d, "kind", "classification") == "segmentation":
        return SEG.run_one(d, strategy, seed, cfg, RunResult)
    Xp, yp, Xt, yt, init, calib, C, N, b, budget = plan(d, cfg, seed)
    t0 = time.perf_counter()
    labeled = np.zeros(len(yp), dtype=bool)
    labeled[init] = True
    counts, accs = [], []
    auto10: Dict = {}
    rounds = math.ceil(budget / b)
    init_seed = SEG.stream_seed(seed, "init")  # every round's model, and the full-data one, start alike
    for rnd in range(rounds + 1):
        model = train(make_model(Xp.shape[1], C, cfg.hidden, cfg.dropout, init_seed), Xp[labeled], yp[labeled],
                      cfg.epochs, SEG.stream_seed(seed, "train", rnd))
        counts.append(int(labeled.sum()))
        accs.append(accuracy(model, Xt, yt))
        if not auto10 and counts[-1] >= 0.1 * N:
            auto10 = autolabel_rest(model, Xp, yp, labeled, int(calib.sum()), cfg, seed, draw=rnd)
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
    auto = autolabel_rest(model, Xp, yp, labeled, int(calib.sum()), cfg, seed, draw=rounds + 1)
    full = train(make_model(Xp.shape[1], C, cfg.hidden, cfg.dropout, init_seed), Xp[~calib], yp[~calib], cfg.epochs,
                 SEG.stream_seed(seed, "train_full"))
    return RunResult(d.name, strategy, seed, counts, accs, accuracy(full, Xt, yt), N, time.perf_counter() - t0, auto,
                     auto10)


def autolabel_rest(model, Xp, yp, labeled, n_calibration: int, cfg: Config, seed: int, draw: int) -> Dict:
    """Certified auto-labelling of the still-unlabelled pool with the current model (MC-mean
    probabilities). Design-based calibration: at this moment the humans label `n_calibration` items drawn
    uniformly at random from the unlabelled items (the items set aside from acquisition included), and
    the model labels the others — calibration and auto-labelled items are a random split of one set,
    which is the certificate's assumption (i), whatever the strategy removed from the pool before (a
    calibration set drawn once at the start is not exchangeable with what the strategy leaves behind).
    The realised error uses the withheld truth."""
    unl = np.flatnonzero(~labeled)
    rng = np.random.default_rng(SEG.stream_seed(seed, "calibration", draw))
    cal = np.zeros(len(yp), dtype=bool)
    cal[rng.choice(unl, size=min(n_calibration, len(unl) - 1), replace=False)] = True
    rest = ~labeled & ~cal
    logp = mc_log_probs(model, Xp[~labeled], cfg.samples, seed=SEG.stream_seed(seed, "autolabel_mc", draw))
    probs = logp.exp().mean(dim=1).numpy()
    in_cal = cal[~labeled]
    r = P.certified_auto_label(probs[~in_cal], probs[in_cal], yp[cal], target_error=cfg.target_error,
                               delta=cfg.delta)
    return SEG.autolabel_summary(r, yp[rest], n_calibration=int(cal.sum()))


# ---------------------------------------------------------------------------------------------
# report


def fraction_to_reach(r: RunResult, level: float = 0.95) -> Optional[float]:
    target = level * r.full_accuracy
    for n, a in zip(r.labeled, r.accuracy):
        if a >= target:
            return n / r.pool_size
    return None


def percent_vs_random(fraction: float, random_fraction: float) -> int:
    """The labels a strategy needed to reach a level, in % more (> 0) or fewer (< 0) than random's,
    rounded as the report prints it: means over seeds of the same labelled fractions can differ in
    their last bits, and such a difference is 0."""
    return round(100 * (fraction / random_fraction - 1))


def versus_random(fraction: float, random_fraction: float) -> str:
    """``percent_vs_random`` in words, as the report's table writes it."""
    pct = percent_vs_random(fraction, random_fraction)
    if pct == 0:
        return "as many labels as random"
    return f"{-pct} % fewer labels than random" if pct < 0 else f"{pct} % more labels than random"


def summarise(results: List[RunResult]) -> Dict:
    out: Dict = {}
    for r in results:
        out.setdefault(r.dataset, {}).setdefault(r.strategy, []).append(r)
    summary: Dict = {}
    for ds, by in out.items():
        summary[ds] = {}
        for st, runs in by.items():
            m = runs[0].metric  # "accuracy" or "dice": the summary keys say which
            # Seeds can differ in their round count (a segmentation pool's size depends on its random
            # split): the curves cover the rounds every seed reached.
            L = min(len(r.accuracy) for r in runs)
            accs = np.array([r.accuracy[:L] for r in runs])
            fr = [fraction_to_reach(r) for r in runs]
            reached = [f for f in fr if f is not None]
            summary[ds][st] = {
                "metric": m,
                "labeled_fraction": np.mean([np.array(r.labeled[:L]) / r.pool_size for r in runs], axis=0).tolist(),
                f"{m}_mean": accs.mean(axis=0).tolist(),
                f"{m}_std": accs.std(axis=0).tolist(),
                # each seed's own last round (the curves above stop at the rounds all seeds reached)
                f"final_{m}_mean": float(np.mean([r.accuracy[-1] for r in runs])),
                f"final_{m}_std": float(np.std([r.accuracy[-1] for r in runs])),
                "rounds": [len(r.accuracy) - 1 for r in runs],
                f"full_{m}_mean": float(np.mean([r.full_accuracy for r in runs])),
                # the area under the learning curve over the common rounds: less noisy than the one round
                # where a curve first crosses 95 %
                f"{m}_mean_over_rounds": float(accs.mean()),
                f"{m}_mean_over_rounds_std": float(accs.mean(axis=1).std()),
                "fraction_to_95": float(np.mean(reached)) if len(reached) == len(runs) else None,
                "fraction_to_95_per_seed": fr,
                "runs_reaching_95": len(reached),
                "seeds": [r.seed for r in runs],
                "pool_size": runs[0].pool_size,
                "autolabel": [r.autolabel for r in runs],
                "autolabel_10": [r.autolabel_10 for r in runs],
                "n_calibration": runs[0].autolabel.get("n_calibration", 0),
                "labeled": runs[0].labeled[:L],
                "seconds_mean": float(np.mean([r.seconds for r in runs])),
            }
            if m == "dice":
                fr90 = [fraction_to_reach(r, 0.9) for r in runs]
                summary[ds][st]["fraction_to_90"] = (float(np.mean(fr90)) if all(f is not None for f in fr90)
                                                     else None)
                summary[ds][st]["runs_reaching_90"] = sum(f is not None for f in fr90)
                pcs = np.array([[np.nan if v is None else v for v in r.extra["dice_per_class"][-1]] for r in runs])
                summary[ds][st]["dice_per_class_final_mean"] = [None if not np.isfinite(v) else float(v)
                                                                for v in np.nanmean(pcs, axis=0)]
                summary[ds][st]["setup"] = {k: v for k, v in runs[0].extra.items()
                                            if k not in ("dice_per_class", "slices_touched")}
                summary[ds][st]["slices_touched_final_mean"] = float(np.mean([r.extra["slices_touched"][-1]
                                                                             for r in runs]))
    return summary


def plot(summary: Dict, out: str) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for ds, by in summary.items():
        metric = next(iter(by.values()))["metric"]
        fig, ax = plt.subplots(figsize=(6.4, 4.2) if metric == "accuracy" else (7.2, 4.8))
        for st, s in sorted(by.items()):
            x = np.array(s["labeled_fraction"]) * 100
            m, sd = np.array(s[f"{metric}_mean"]), np.array(s[f"{metric}_std"])
            ax.plot(x, m, marker="o", ms=3, label=st, lw=2.2 if st.startswith("balentacq") else 1.4,
                    ls="--" if st.endswith("_regions") else "-")
            ax.fill_between(x, m - sd, m + sd, alpha=0.12)
        full = np.mean([s[f"full_{metric}_mean"] for s in by.values()])
        ax.axhline(full, color="k", ls="--", lw=1, label="full data")
        ax.axhline(0.95 * full, color="k", ls=":", lw=1, label="95 % of full")
        if metric == "dice":
            ax.set_xlabel("labelled fraction of the pool's voxels (%)")
            ax.set_ylabel("mean foreground Dice (test slices)")
        else:
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


def _seg_columns(cert: List[Dict]) -> str:
    """The segmentation columns of an auto-labelling row: foreground error, worst predicted class."""
    fg = [a["realised_error_foreground"] for a in cert if a.get("realised_error_foreground") is not None]
    n_fg = [a.get("n_foreground_accepted", 0) for a in cert]
    worst = [a["worst_class_error"] for a in cert if a.get("worst_class_error") is not None]
    return ((f" {np.mean(fg):.3f} ({np.mean(n_fg):.0f} voxels) |" if fg else " — (none auto-labelled) |")
            + (f" {np.mean(worst):.3f}, {np.max(worst):.3f} |" if worst else " — |"))


def _per_class_table(by: Dict, key: str, cfg: Config) -> List[str]:
    """The same auto-labelling with one certified threshold per predicted class (per_class=True)."""
    lines = ["The same clicks with one threshold per predicted class (`per_class=True`: each class certified "
             "on its own at δ / C' for the C' classes the pool predicts, so that every class's error among its "
             "auto-labelled voxels is below the target, not just the total):", "",
             "| strategy | certified runs | classes certified (mean) | coverage of the rest (mean) | "
             "realised error (mean, max) | realised error on foreground voxels (mean) | worst predicted "
             "class's realised error (mean, max) |",
             "|---|---|---|---|---|---|---|"]
    every = []
    for st, s in sorted(by.items()):
        al = [a["per_class"] for a in s[key] if a and "per_class" in a]
        if not al:
            continue
        cert = [a for a in al if a["certified"]]
        every += cert
        errs = [a["realised_error"] for a in cert if a["realised_error"] is not None]
        lines.append(f"| {st} | {len(cert)} / {len(al)} | {np.mean([a['classes_certified'] for a in al]):.1f} | "
                     f"{np.mean([a['coverage'] for a in al]):.2f} | "
                     + (f"{np.mean(errs):.3f}, {np.max(errs):.3f} |" if errs else "— |") + _seg_columns(cert))
    worst = [a["worst_class_error"] for a in every if a.get("worst_class_error") is not None]
    over = [w for w in worst if w > cfg.target_error]
    return lines + ["", f"A predicted class's realised error above the {cfg.target_error:.0%} target in {len(over)} "
                    f"of {len(every)} certified runs" + (f" (up to {max(over):.3f})" if over else "")
                    + " (classes with at least 100 auto-labelled voxels).", ""]


def _dataset_intro(d, ds: str, first: Dict) -> List[str]:
    if first["metric"] == "dice":
        st = first["setup"]
        H, W = st["slice_shape"]
        n_slices = st["pool_slices"] + st["test_slices"]
        return [f"## {d.title} (`{ds}`)", "",
                f"Source: {d.source}. {n_slices} axial slices of {H} x {W} pixels, {len(st['class_names'])} "
                f"classes ({', '.join(st['class_names'])}): acquisition pool {st['pool_slices']} slices "
                f"({first['pool_size']} voxels), test {st['test_slices']} slices (one random slice of every 4); "
                f"calibration: {first['n_calibration']} random labelled voxels (clicks) of the unlabelled pool, at most "
                f"5 % of it (not counted in the labelled fractions); "
                f"seed set {st['seed_slices']} whole slices ({100 * first['labeled_fraction'][0]:.1f} % "
                f"of the pool's voxels; every class present); then {st['batch_slices']} slice(s) per round, or "
                f"the same number of voxels as {st['patch']} x {st['patch']} regions, up to "
                f"{st['budget_slices']} slices' worth. Model: 2D U-Net (width {st['width']}) + "
                f"`labelwise.torch.MCDropoutHead`, retrained from scratch every round ({st['steps']} Adam steps) "
                "on the labelled voxels (unlabelled voxels ignored). Metric: mean Dice over the foreground classes on the test slices.",
                ""]
    pool = first["pool_size"]
    return [f"## {d.title} (`{ds}`)", "",
            f"Source: {d.source}. {len(d.y)} items: acquisition pool {pool}, calibration "
            f"{first['n_calibration']}, test {len(d.y) - pool - first['n_calibration']}; seed set "
            f"{first['labeled'][0]} labels ({100 * first['labeled_fraction'][0]:.1f} % of the pool), "
            f"batches of {first['labeled'][1] - first['labeled'][0] if len(first['labeled']) > 1 else 0}.", ""]


def write_report(summary: Dict, cfg: Config, datasets: Dict, plots: List[str], out: str,
                 seconds: float, overlays: Optional[Dict[str, str]] = None) -> str:
    lines = ["# Active-learning campaign report", ""]
    ran = [s for s in cfg.strategies if any(s in by for by in summary.values())]  # the applicable ones
    lines.append(f"Strategies: {', '.join(ran)}; seeds: {cfg.seeds}; MC-dropout samples K = {cfg.samples}; "
                 f"{'quick mode; ' if cfg.quick else ''}compute time of the runs {seconds:.0f} s.")
    lines.append("")
    for ds, by in summary.items():
        d = datasets[ds]
        first = next(iter(by.values()))
        metric = first["metric"]
        seg = metric == "dice"
        mname = "mean Dice" if seg else "accuracy"
        lines += _dataset_intro(d, ds, first)
        lines.append(f"![learning curves](<curves_{ds}.png>)")  # <...>: file names with spaces
        lines.append("")
        unit = "labelled fraction of the pool's voxels" if seg else "labelled fraction"
        over = "" if seg else f" mean {mname} over the rounds (± std over seeds) |"
        lines.append(f"| strategy | final {mname} (mean ± std) |{over} {unit} to reach 95 % of full-data {mname} | "
                     "runs reaching it |")
        lines.append("|---|---|---|---|" + ("" if seg else "---|"))
        lines.insert(len(lines) - 2, f"(± std: the standard deviation over the seeds with ddof = 0, the spread of "
                                     "these seeds, not an estimate of the population's; with 3 seeds the sample "
                                     "estimate (ddof = 1) is 1.22 times larger. "
                                     f"The labelled fraction at the first round whose {mname} reaches 95 % of the "
                                     "full-data score, averaged over the seeds when every seed reaches it; the curve can dip "
                                     "below later. " + ("" if seg else f"The mean {mname} over the rounds, the area under "
                                     "the learning curve, is the steadier comparison: one crossing of the 95 % line "
                                     "moves with a seed's luck in a single round.") + ")")
        lines.insert(len(lines) - 2, "")
        rand = by.get("random", {}).get("fraction_to_95")
        # ordered by the fraction as printed (0.1 %), then by name: last bits do not reorder ties
        for st, s in sorted(by.items(), key=lambda kv: (kv[1]["fraction_to_95"] is None,
                                                       round(100 * (kv[1]["fraction_to_95"] or 0), 1), kv[0])):
            f = s["fraction_to_95"]
            fs = (("not reached within the budget" if s["runs_reaching_95"] == 0 else "not reached by every seed")
                  if f is None else f"{100 * f:.1f} %")
            if f is not None and rand is not None and st != "random":
                fs += f" ({versus_random(f, rand)})"
            over = ("" if seg else f" {s[f'{metric}_mean_over_rounds']:.3f} ± "
                                     f"{s[f'{metric}_mean_over_rounds_std']:.3f} |")
            lines.append(f"| {st} | {s[f'final_{metric}_mean']:.3f} ± {s[f'final_{metric}_std']:.3f} |{over} {fs} | "
                         f"{s['runs_reaching_95']} / {len(s['seeds'])} |")
        full = np.mean([s[f"full_{metric}_mean"] for s in by.values()])
        rounds = sorted({n for s in by.values() for n in s["rounds"]})
        if len(rounds) > 1:
            lines += ["", f"The seeds ran {rounds[0]}–{rounds[-1]} rounds (their pools differ in size): the curves "
                      f"cover the first {rounds[0]}, the final {mname} is each seed's own last round."]
        lines += ["", (f"Full-data {mname} (same model trained on the whole pool): {full:.3f}." if not seg else
                       f"Full-data {mname}: {full:.3f} (the same U-Net trained on every pool voxel, with twice the "
                       f"steps and twice the slices per step, so that it is a ceiling rather than a peer). Random's "
                       "fraction is the baseline of the 'fewer labels' column."), ""]
        if seg:
            lines += [f"The same at 90 % of the full-data {mname}, with the {mname} averaged over all rounds (an "
                      "area under the learning curve; it ranks strategies even when few reach the thresholds):", "",
                      "| strategy | labelled fraction to reach 90 % | runs reaching it | mean Dice over rounds "
                      "(mean over seeds) |", "|---|---|---|---|"]
            for st, s in sorted(by.items(), key=lambda kv: -kv[1]["dice_mean_over_rounds"]):
                f = s["fraction_to_90"]
                lines.append(f"| {st} | {'not reached' if f is None else f'{100 * f:.1f} %'} | "
                             f"{s['runs_reaching_90']} / {len(s['seeds'])} | {s['dice_mean_over_rounds']:.3f} |")
            lines.append("")
            names = first["setup"]["class_names"][1:]
            lines += ["Final Dice per class (mean over seeds):", "",
                      "| strategy | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
            for st, s in sorted(by.items()):
                lines.append(f"| {st} | " + " | ".join("—" if v is None else f"{v:.2f}"
                                                       for v in s["dice_per_class_final_mean"]) + " |")
            touched = [f"{st} {s['slices_touched_final_mean']:.0f}" for st, s in sorted(by.items())
                       if st.endswith("_regions")]
            lines.append("")
            if touched:
                lines += ["Region strategies label parts of slices: at the end they had touched " + ", ".join(touched)
                          + f" of {first['setup']['pool_slices']} pool slices (whole-slice strategies touch exactly "
                          "the slices they label).", ""]
            if overlays and ds in overlays:
                lines += [f"![uncertainty overlay]({overlays[ds]})", "",
                          "Uncertainty overlay: one pool slice after training on the seed set (seed "
                          f"{cfg.seeds[0]}): image, truth, prediction (MC mean), BALD, BalEntAcq (-inf on certain "
                          "pixels, drawn between its 2nd and 98th percentiles) and the regions `bald_regions` "
                          "chooses there in its first round.", ""]
            skipped = [st for st in cfg.strategies if st in SEG.NOT_APPLICABLE]
            if skipped:
                lines += ["Not run on this data set: " + "; ".join(f"`{st}` — {SEG.NOT_APPLICABLE[st]}" for st in skipped)
                          + ". Core-set runs on per-slice features (the U-Net's feature map averaged over the "
                            "slice) instead.", ""]
        what = "voxels" if seg else "items"
        for key, when in (("autolabel_10", "at the first round with at least 10 % of the pool labelled"),
                          ("autolabel", "after the last round")):
            if not any(a for s in by.values() for a in s[key]):
                lines += [f"**Certified auto-labelling of the rest of the pool** {when}: did not apply (no run "
                          "reached that point within its budget).", ""]
                continue
            lines += [f"**Certified auto-labelling of the rest of the pool** {when} (target error "
                      f"{cfg.target_error:.0%} with probability ≥ {1 - cfg.delta:.0%}, calibrated on "
                      f"{_calibration_sizes(by, key)} {what} drawn at random from the unlabelled pool at that moment and "
                      "labelled by the humans; realised error measured against the withheld truth"
                      + ("; per voxel — the calibration voxels are clicks drawn uniformly at random from the "
                         "unlabelled pool voxels themselves, so the bound is about this pool however "
                         "neighbouring voxels' errors are correlated; the clicked voxels are not auto-labelled"
                         if seg else "") + "):", "",
                      "| strategy | certified runs | coverage of the rest (mean) | realised error (mean, max) | "
                      "Clopper–Pearson bound at the chosen threshold (mean) |" + (" realised error on foreground voxels (mean) | worst predicted "
                                                    "class's realised error (mean, max) |" if seg else ""),
                      "|---|---|---|---|---|" + ("---|---|" if seg else "")]
            for st, s in sorted(by.items()):
                al = [a for a in s[key] if a]
                if not al:
                    continue
                cert = [a for a in al if a["certified"]]
                errs = [a["realised_error"] for a in cert if a["realised_error"] is not None]
                row = (f"| {st} | {len(cert)} / {len(al)} | "
                       f"{np.mean([a['coverage'] for a in al]):.2f} | "
                       + (f"{np.mean(errs):.3f}, {np.max(errs):.3f} | " if errs else "— | ")
                       + (f"{np.mean([a['bound'] for a in cert]):.3f} |" if cert else "— |"))
                if seg:
                    row += _seg_columns(cert)
                lines.append(row)
            lines.append("")
            cert = [a for s in by.values() for a in s[key] if a and a["certified"]]
            over = [a["realised_error"] for a in cert if a["realised_error"] is not None
                    and a["realised_error"] > cfg.target_error]
            runs = sum(1 for s in by.values() for a in s[key] if a)
            lines += [f"Realised {'voxel ' if seg else ''}error above the {cfg.target_error:.0%} target in {len(over)} "
                      f"of {len(cert)} certified runs" + (f" (up to {max(over):.3f})" if over else "")
                      + f"; the promise allows it in at most about δ = {cfg.delta:.0%} of all {runs} runs. The runs "
                      "are not independent trials: the strategies of one seed share its split, seed set and random "
                      "streams, so at a round every strategy reaches with the same labels (the seed set) they are "
                      "the same run counted once per strategy. (The "
                      "bound column is the Clopper–Pearson bound at the threshold the scan chose; having been "
                      "selected, it is not by itself a 1 − δ bound — the target is the promise.)", ""]
            if seg:
                lines += _per_class_table(by, key, cfg)
        # as the table prints it: "as many labels as random" did not beat it either
        worse = [st for st, s in by.items() if st != "random" and rand is not None and
                 (s["fraction_to_95"] is None or percent_vs_random(s["fraction_to_95"], rand) >= 0)]
        if worse:
            lines.append(f"Honest note: on this data set {', '.join(sorted(worse))} did not need fewer labels than "
                         f"random selection to reach 95 % of the full-data {mname}.")
            lines.append("")
        elif rand is None and "random" in by:
            lines.append(f"Honest note: random selection did not reach 95 % of the full-data {mname} within the "
                         "budget; the labels-saved column has no baseline.")
            lines.append("")
    lines += ["Numbers behind this report: `results.json`.", ""]
    path = os.path.join(out, "report.md")
    _write_atomically(path, "\n".join(lines))
    return path


def _write_atomically(path: str, text: str) -> None:
    """path's new contents, or its old ones after a crash or power loss mid-write: written to a temporary
    file, flushed to disk, then renamed over path."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            try:
                os.fsync(f.fileno())
            except OSError as e:  # a file system without fsync (some FUSE / network mounts): rename anyway
                if e.errno not in (errno.EINVAL, errno.ENOTSUP):
                    raise
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# ---------------------------------------------------------------------------------------------
# driver


CampaignError = SEG.CampaignError  # a bad argument, data file or output folder: cli() exits with 2


def _calibration_sizes(by: Dict, key: str) -> str:
    """The calibration set size(s) behind the `key` ("autolabel" / "autolabel_10") results of every
    strategy and run: one number, or the range when they differ (segmentation clicks: 5 % of the rest)."""
    sizes = sorted({int(a["n_calibration"]) for s in by.values() for a in s[key] if a and "n_calibration" in a})
    if not sizes:
        return "0"
    return str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}–{sizes[-1]}"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m labelwise.campaign", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", action="append",
                   help=f"{', '.join(CLASSIFICATION_DATASETS + SEGMENTATION_DATASETS)} (default: "
                        f"{', '.join(DEFAULT_DATASETS)}); repeatable")
    p.add_argument("--data", help="your own data: a .npz file with X [N, D] and y [N] (classification) or "
                                  "image and labels [S, H, W] (segmentation)")
    p.add_argument("--strategies", default=",".join(all_strategies()),
                   help=f"comma-separated; each data set runs those that apply to it. Classification: "
                        f"{', '.join(available_strategies())}; segmentation: {', '.join(segmentation_strategies())}")
    p.add_argument("--seeds", type=int, help="number of seeds (default 3; --quick: 1)")
    p.add_argument("--samples", type=int, help="MC-dropout samples K (default 20; --quick: 8)")
    p.add_argument("--budget", type=float, help="labels to acquire, fraction of the pool (default 0.3; --quick: 0.12)")
    p.add_argument("--batch", type=int, help="acquisition batch size (default: about 2 %% of the pool; "
                                             "segmentation: slices per round, default 3)")
    p.add_argument("--out", default="campaign-out", help="output folder (default campaign-out/)")
    p.add_argument("--quick", action="store_true",
                   help="small, fast settings for CI: 1 seed, K = 8, budget 0.12, 120 training epochs, tiny "
                        "segmentation settings (flags given explicitly are kept)")
    p.add_argument("--fresh", action="store_true", help="ignore saved state and start over")
    return p.parse_args(argv)


def build_config(a: argparse.Namespace) -> Config:
    names = list(a.dataset or ([] if a.data else list(DEFAULT_DATASETS)))
    if a.data:
        names.append(a.data)
    strategies = list(dict.fromkeys(s.strip() for s in a.strategies.split(",") if s.strip()))  # no repeats
    if a.data and not a.data.endswith(".npz"):
        raise CampaignError(f"--data {a.data}: expected a .npz file (arrays X [N, D] and y [N])")
    bad = [n for n in names if n not in CLASSIFICATION_DATASETS + SEGMENTATION_DATASETS and not n.endswith(".npz")]
    if bad:
        raise CampaignError(f"--dataset: unknown {bad}; choose from {list(CLASSIFICATION_DATASETS + SEGMENTATION_DATASETS)} "
                         "or pass your own file with --data FILE.npz")
    short = [os.path.basename(n)[:-4] if n.endswith(".npz") else n for n in names]
    clash = sorted({s for s in short if short.count(s) > 1})
    if clash:  # the report, curves and state are keyed by these names
        raise CampaignError(f"data sets named alike: {clash} (a --data file named like a built-in data set, or given "
                         "twice); rename the file")
    seeds = a.seeds if a.seeds is not None else (1 if a.quick else 3)
    samples = a.samples if a.samples is not None else (8 if a.quick else 20)
    budget = a.budget if a.budget is not None else (0.12 if a.quick else 0.3)
    unknown = [s for s in strategies if s not in all_strategies()]
    if unknown:
        raise CampaignError(f"--strategies: unknown or unavailable {unknown}; available: {all_strategies()}")
    if not 1 <= seeds <= 10_000:
        raise CampaignError(f"--seeds must be in [1, 10000], got {seeds}")
    if not 2 <= samples <= 10_000:
        raise CampaignError(f"--samples must be in [2, 10000] (MC dropout needs several passes), got {samples}")
    if not 0 < budget < 1:
        raise CampaignError("--budget must be a fraction in (0, 1)")
    cfg = Config(datasets=names, strategies=strategies, seeds=list(range(seeds)), samples=samples,
                 budget_fraction=budget, quick=a.quick)
    # resume only on the same data: a --data file's contents, not just its name
    for n in names:
        if n.endswith(".npz") and os.path.exists(n):
            with open(n, "rb") as f:
                cfg.data_fingerprints[n] = hashlib.sha256(f.read()).hexdigest()
    if a.batch is not None:
        if not 1 <= a.batch <= 2**31 - 1:
            raise CampaignError(f"--batch must be in [1, 2^31 - 1], got {a.batch}")
        cfg.batch = {(os.path.basename(n)[:-4] if n.endswith(".npz") else n): a.batch
                     for n in list(CLASSIFICATION_DATASETS) + list(SEGMENTATION_DATASETS) + names}
    if a.quick:
        cfg.epochs = 120
        if a.budget is None:  # an explicit --budget is kept (segmentation otherwise stops after 2 rounds)
            cfg.seg_max_rounds = 2
        # segmentation: 8 mm pixels, every 6th slice, a narrow U-Net, 2 rounds of one slice
        cfg.seg_downsample, cfg.seg_slice_stride, cfg.seg_width, cfg.seg_steps = 8, 6, 8, 40
        cfg.seg_init_slices, cfg.seg_batch_slices, cfg.seg_patch, cfg.seg_calib_clicks = 2, 1, 4, 1500
    return cfg


def _check_dependencies(cfg: Config) -> None:
    """The campaign's own dependencies (not the library's), checked before any run starts."""
    missing = []
    need = [("torch", "torch"), ("sklearn", "scikit-learn"), ("matplotlib", "matplotlib")]
    if any(n in SEGMENTATION_DATASETS for n in cfg.datasets):
        need.append(("nibabel", "nibabel"))  # the Colin27 NIfTI files
    for mod, pkg in need:
        try:
            __import__(mod)
        except ImportError:
            missing.append(pkg)
    if missing:
        raise CampaignError(f"the campaign needs {', '.join(missing)}: pip install 'labelwise[campaign]' "
                         f"(or pip install {' '.join(missing)})")


def _run_jobs(jobs, done: Dict[str, Dict], results: List, datasets: Dict, cfg: Config, state_path: str, bar,
              code: str) -> None:
    """Runs the jobs not yet in `done`, saving the state (with the code fingerprint) after each (a rerun
    resumes from there). Progress: the bar, or a line per run without tqdm."""
    for j, (ds, st, sd) in enumerate(jobs):
        key = f"{ds}/{st}/{sd}"
        if key in done:
            results.append(RunResult(**done[key]))
        else:
            if bar is not None:
                bar.set_postfix_str(key)
            r = run_one(datasets[ds], st, sd, cfg)
            if bar is None:
                print(f"[campaign] run {j + 1}/{len(jobs)}: {key} ({r.seconds:.1f} s)", flush=True)
            results.append(r)
            done[key] = asdict(r)
            # atomic: an interrupted write never corrupts the state
            _write_atomically(state_path, json.dumps({"config": asdict(cfg), "version": STATE_VERSION,
                                                      "code": code, "runs": done}))
        if bar is not None:
            bar.update(1)


def code_fingerprint() -> str:
    """sha256 of what computes a run: the installed labelwise package (its .py files and compiled
    extension) and the versions of numpy, torch and scikit-learn. Saved runs are resumed only under the
    same fingerprint: a rebuilt library (scripts/run.sh reinstalls after every change) could otherwise
    mix its runs with older ones in one report."""
    import importlib.metadata as md

    from . import _core

    h = hashlib.sha256()
    pkg = os.path.dirname(os.path.abspath(__file__))
    # the package's modules (regular files named like modules: not an editor's lock or backup file) and
    # the extension actually loaded (an editable install keeps it outside the package folder)
    files = [os.path.join(pkg, n) for n in sorted(os.listdir(pkg))
             if n.endswith(".py") and n[:-3].isidentifier() and os.path.isfile(os.path.join(pkg, n))]
    for path in files + [os.path.abspath(_core.__file__)]:
        h.update(os.path.basename(path).encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    for dist in ("numpy", "torch", "scikit-learn"):
        try:
            h.update(f"{dist}={md.version(dist)}".encode())
        except md.PackageNotFoundError:
            h.update(f"{dist}=none".encode())
    return h.hexdigest()


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    a = parse_args(argv)
    cfg = build_config(a)
    _check_dependencies(cfg)
    if os.path.exists(a.out) and not os.path.isdir(a.out):
        raise CampaignError(f"--out {a.out}: exists and is not a folder")
    torch = _torch()
    torch.set_num_threads(1)  # small models: one thread is faster and deterministic
    datasets = {}
    for n in cfg.datasets:
        d = load_dataset(n, cfg)
        validate_dataset(d)
        check_before_runs(d, cfg)
        datasets[d.name] = d
        if not any(applicable(d, st) for st in cfg.strategies):
            kind = getattr(d, "kind", "classification")
            raise CampaignError(f"--strategies: none of {cfg.strategies} applies to the {kind} data set {d.name}; "
                             f"choose from {segmentation_strategies() if kind == 'segmentation' else available_strategies()}")
    # The folder is made, and proved writable, only now that the arguments and data are valid, and
    # before any run: a run's work is never lost to an output folder that cannot take its state.
    from .data import make_output_folder

    make_output_folder(a.out)
    state_path = os.path.join(a.out, "state.json")
    code = code_fingerprint()
    done: Dict[str, Dict] = {}
    if os.path.exists(state_path) and not a.fresh:
        try:
            with open(state_path) as f:
                saved = json.load(f)
        except ValueError as e:
            raise CampaignError(f"{state_path} is not valid JSON ({e}); pass --fresh to start over") from None
        if not isinstance(saved, dict):
            raise CampaignError(f"{state_path} does not hold a campaign state; pass --fresh to start over")
        if (saved.get("config") == asdict(cfg) and saved.get("version") == STATE_VERSION
                and saved.get("code") != code and saved.get("runs")):
            why = ("were saved before code fingerprints were recorded" if "code" not in saved else
                   "were made by another build of labelwise or of numpy / torch / scikit-learn (the code fingerprint "
                   "differs)")
            raise CampaignError(f"{state_path} holds {len(saved['runs'])} finished runs that {why}, which one report "
                                "must not mix with new ones; pass --fresh to start over, or choose another --out")
        if saved.get("config") == asdict(cfg) and saved.get("version") == STATE_VERSION:
            done = saved.get("runs", {})
            print(f"[campaign] resuming: {len(done)} finished runs found in {state_path}")
        elif saved.get("version") != STATE_VERSION:  # runs of an older design cannot be reused anyway
            print(f"[campaign] {state_path} is from an older version of the campaign; starting over")
        elif saved.get("runs"):
            raise CampaignError(f"{state_path} holds {len(saved['runs'])} finished runs of other settings; pass "
                             "--fresh to discard them, or choose another --out")
    if not done and os.path.exists(state_path):  # a fresh start in a campaign folder: no report, curves or
        # overlays of an earlier configuration stay behind
        for f in os.listdir(a.out):
            if f in ("report.md", "results.json") or (f.endswith(".png") and f.startswith(("curves_", "overlay_"))):
                os.remove(os.path.join(a.out, f))
    jobs = [(ds, st, sd) for ds in datasets for st in cfg.strategies if applicable(datasets[ds], st)
            for sd in cfg.seeds]
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    results: List[RunResult] = []
    bar = tqdm(total=len(jobs), desc="campaign runs", unit="run") if tqdm else None
    try:
        try:
            _run_jobs(jobs, done, results, datasets, cfg, state_path, bar, code)
        finally:
            if bar is not None:
                bar.close()  # an error message then starts on a line of its own
        summary = summarise(results)
        results_path = os.path.join(a.out, "results.json")
        numbers = {"config": asdict(cfg), "summary": summary, "runs": [asdict(r) for r in results]}
        _write_atomically(results_path, json.dumps(numbers, indent=1))  # the numbers first, whatever the plots do
        plots = plot(summary, a.out)
        overlays = {ds: SEG.overlay(d, cfg, cfg.seeds[0], a.out) for ds, d in datasets.items()
                    if getattr(d, "kind", "") == "segmentation"}
        numbers["overlays"] = overlays
        _write_atomically(results_path, json.dumps(numbers, indent=1))
        # the runs' own compute time (a resumed campaign's elapsed time would count only the resumed part)
        report = write_report(summary, cfg, datasets, plots, a.out, sum(r.seconds for r in results), overlays)
    except (ValueError, OSError) as e:  # every argument and data check ran before the runs: not usage
        raise RuntimeError(f"the campaign failed after its runs started: {type(e).__name__}: {e}") from e
    print(f"[campaign] report: {report}")
    for ds, by in summary.items():
        metric = next(iter(by.values()))["metric"]
        print(f"[campaign] {ds}: labelled fraction to reach 95 % of full-data {metric}")
        for st, s in sorted(by.items()):
            f = s["fraction_to_95"]
            print(f"    {st:17s} {'not reached' if f is None else f'{100 * f:5.1f} %'}   final {metric} "
                  f"{s[f'final_{metric}_mean']:.3f}")
    return summary


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point (``labelwise-campaign``): exit status 0 on success; 2 with a one-line message
    for bad arguments or data (a missing or malformed file, a batch larger than the budget, ...), all
    found before the first run; a failure after the runs started keeps its traceback."""
    try:
        main(argv)
    except (ValueError, OSError) as e:  # CampaignError included
        print(f"labelwise-campaign: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("labelwise-campaign: interrupted; the finished runs are saved in the --out folder's state.json: "
              "run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(cli())
