#!/usr/bin/env python3
"""Which items should a clinician label next? One active-learning round on real data.

The script splits a real tabular data set into a small labelled seed set (about 10 % of the
items, stratified), an unlabelled pool and a held-out test set; trains a small PyTorch MLP with
dropout on the seed set; runs MC dropout (dropout kept on at inference, ``--samples`` passes) on
the pool; scores the resulting ``[N, K, C]`` log-probabilities with all ten
``labelwise.uncertainty`` metrics in one fused call, directly on the torch tensor; and prints the
``--batch`` pool items to label next, ranked by ``--metric`` (BalEntAcq by default), together with
the overlap of the top-b sets chosen by BalEntAcq, BALD and predictive entropy. ``--out DIR``
also writes ``scores.csv`` (every metric for every pool item) and ``bald_vs_balentacq.png``.

Everything runs on the CPU in a few seconds and is deterministic for a given ``--seed``.

Usage::

    python examples/python/next_to_label.py                       # breast cancer, BalEntAcq
    python examples/python/next_to_label.py --dataset digits --metric bald --batch 20 --out out/

Data (shipped with scikit-learn, which is BSD-3-Clause; nothing is downloaded):

* ``breast_cancer`` (default): the Breast Cancer Wisconsin (Diagnostic) data set, UCI Machine
  Learning Repository (W. H. Wolberg, W. N. Street, O. L. Mangasarian), 569 fine-needle-aspirate
  images described by 30 features, malignant vs benign. Licensed CC BY 4.0 on UCI.
* ``digits``: the UCI Optical Recognition of Handwritten Digits data (test part, 1,797 8x8
  images, 10 classes). Licensed CC BY 4.0 on UCI.

The true labels of the pool are hidden from the learner; the table shows them only for the demo.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from sklearn import datasets
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from labelwise import uncertainty as U
from labelwise.data import make_output_folder_or_exit

DATASETS = {
    "breast_cancer": ("Breast Cancer Wisconsin (Diagnostic)", datasets.load_breast_cancer),
    "digits": ("UCI Optical Recognition of Handwritten Digits", datasets.load_digits),
}

# Columns always shown in the table (the ranking metric is added when it is not among them).
TABLE_METRICS = ("bald", "predictive_entropy", "balentacq", "margin")
SHORT = {
    "predictive_entropy": "pred_ent",
    "expected_entropy": "exp_ent",
    "least_confidence": "least_conf",
    "variation_ratio": "var_ratio",
    "max_mean_variation_ratio": "mmvr",
}
OVERLAP_METRICS = ("balentacq", "bald", "predictive_entropy")


# --------------------------------------------------------------------------- arguments


def _int_at_least(lo: int, what: str, hi: int = 2**31 - 1):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
        if value > hi:
            raise argparse.ArgumentTypeError(f"must be at most {hi}, got {value}")
        return value

    return parse


def _float_in_open_interval(lo: float, hi: float):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not lo < value < hi:
            raise argparse.ArgumentTypeError(f"must be strictly between {lo:g} and {hi:g}, got {value:g}")
        return value

    return parse


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value >= 0 and np.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="One active-learning round: train a dropout MLP on a small labelled seed set, "
        "score the unlabelled pool with MC dropout + labelwise, and list the items to label next.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", choices=sorted(DATASETS), default="breast_cancer", help="data set shipped with scikit-learn")
    p.add_argument("--metric", choices=U.METRICS, default="balentacq", help="acquisition metric used for the ranking")
    p.add_argument("--batch", type=_int_at_least(1, "a positive integer"), default=10, help="number of pool items to label next")
    p.add_argument(
        "--samples",
        type=_int_at_least(2, "at least 2 (BALD, BalEntAcq and the other sample-based metrics need K >= 2)"),
        default=20,
        help="MC-dropout forward passes K per pool item",
    )
    p.add_argument("--seed", type=_int_at_least(0, "a non-negative integer", 2**32 - 1), default=0, help="seed for the split, the initialisation and dropout")
    p.add_argument("--steps", type=_int_at_least(1, "a positive integer"), default=300, help="full-batch Adam steps on the seed set")
    p.add_argument("--hidden", type=_int_at_least(1, "a positive integer"), default=64, help="width of the two hidden layers")
    p.add_argument("--dropout", type=_float_in_open_interval(0.0, 1.0), default=0.5, help="dropout probability (training and MC inference)")
    p.add_argument("--lr", type=_float_in_open_interval(0.0, float("inf")), default=3e-3, help="Adam learning rate")
    p.add_argument(
        "--weight-decay",
        type=_non_negative_float,
        default=1e-2,
        help="L2 penalty; keeps the seed model from saturating (near one-hot predictions carry no uncertainty signal)",
    )
    p.add_argument("--seed-frac", type=_float_in_open_interval(0.0, 1.0), default=0.10, help="fraction of all items in the labelled seed set")
    p.add_argument("--test-frac", type=_float_in_open_interval(0.0, 1.0), default=0.20, help="fraction of all items held out for testing")
    p.add_argument("--out", metavar="DIR", default=None, help="write scores.csv and bald_vs_balentacq.png into DIR")
    p.add_argument("--no-progress", action="store_true", help="hide the training progress bar")
    return p


# --------------------------------------------------------------------------- data and model


@dataclass
class Split:
    name: str
    X: np.ndarray  # [n, d] raw features
    y: np.ndarray  # [n] integer labels
    class_names: List[str]
    seed_idx: np.ndarray  # original row indices of the labelled seed set
    pool_idx: np.ndarray  # ... of the unlabelled pool
    test_idx: np.ndarray  # ... of the held-out test set


def load_and_split(dataset: str, seed: int, seed_frac: float, test_frac: float) -> Split:
    """Stratified three-way split; every index is a row of the original data set."""
    title, loader = DATASETS[dataset]
    bunch = loader()
    X = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    class_names = [str(c) for c in bunch.target_names]
    n, n_classes = len(y), len(class_names)
    n_test = int(round(test_frac * n))
    n_seed = int(round(seed_frac * n))
    if n_seed < n_classes or n_test < n_classes or n - n_test - n_seed < 1:
        raise ValueError(
            f"--seed-frac {seed_frac:g} and --test-frac {test_frac:g} give seed={n_seed}, test={n_test}, "
            f"pool={n - n_test - n_seed} for {n} items: need at least {n_classes} (one per class) in the "
            "seed and test sets and a non-empty pool"
        )
    rows = np.arange(n)
    rest, test_idx = train_test_split(rows, test_size=n_test, stratify=y, random_state=seed)
    pool_idx, seed_idx = train_test_split(rest, test_size=n_seed, stratify=y[rest], random_state=seed)
    return Split(title, X, y, class_names, np.sort(seed_idx), np.sort(pool_idx), np.sort(test_idx))


def make_mlp(d_in: int, hidden: int, n_classes: int, dropout: float) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(d_in, hidden),
        torch.nn.ReLU(),
        torch.nn.Dropout(dropout),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Dropout(dropout),
        torch.nn.Linear(hidden, n_classes),
    )


def train(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, steps: int, lr: float, weight_decay: float, progress: bool) -> float:
    """Full-batch Adam (L2 penalty) with cross-entropy; returns the final training loss."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    bar = tqdm(range(steps), desc="training on seed set", disable=not progress, leave=False, file=sys.stderr)
    loss_value = float("nan")
    for step in bar:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(X), y)
        loss.backward()
        opt.step()
        loss_value = loss.item()
        if step % 25 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{loss_value:.4f}")
    bar.close()
    return loss_value


@torch.no_grad()
def mc_dropout_log_probs(model: torch.nn.Module, X: torch.Tensor, samples: int) -> torch.Tensor:
    """[N, D] -> [N, K, C] log-probabilities with dropout kept on (independent masks per pass)."""
    model.train()  # dropout on; the MLP has no batch norm, so nothing else changes
    xk = X.unsqueeze(1).expand(-1, samples, -1)  # [N, K, D], a view: dropout draws a mask per (n, k)
    return torch.log_softmax(model(xk), dim=-1)


# --------------------------------------------------------------------------- ranking and output


def rank_by(scores: torch.Tensor) -> torch.Tensor:
    """Pool positions in decreasing score order (NaN last, ties by pool position)."""
    s = torch.nan_to_num(scores.double(), nan=float("-inf"))
    return torch.sort(s, descending=True, stable=True).indices


def _col(name: str) -> str:
    return SHORT.get(name, name)


def _num(v: float) -> str:
    if v != 0 and np.isfinite(v) and not 1e-4 <= abs(v) < 1e5:
        return f"{v:.3e}"
    return f"{v:.4f}"


def format_table(rows: List[Dict[str, object]], metric_cols: Sequence[str]) -> List[str]:
    label_w = max([len("true")] + [len(str(r["true"])) for r in rows] + [len(str(r["pred"])) for r in rows])
    head = f"{'rank':>4}  {'row':>5}  {'true':<{label_w}}  {'pred':<{label_w}}" + "".join(
        f"  {_col(m):>10}" for m in metric_cols
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        line = f"{r['rank']:>4}  {r['row']:>5}  {r['true']:<{label_w}}  {r['pred']:<{label_w}}"
        line += "".join(f"  {_num(r[m]):>10}" for m in metric_cols)
        lines.append(line)
    return lines


def write_outputs(out_dir: str, split: Split, scores: Dict[str, np.ndarray], order: np.ndarray, pred: np.ndarray, batch: int, metric: str) -> List[str]:
    os.makedirs(out_dir, exist_ok=True)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    csv_path = os.path.join(out_dir, "scores.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", "row", "true_label", "predicted", "selected"] + list(U.METRICS))
        for pos in order:
            w.writerow(
                [rank[pos], split.pool_idx[pos], split.class_names[split.y[split.pool_idx[pos]]], split.class_names[pred[pos]], int(rank[pos] <= batch)]
                + [f"{scores[m][pos]:.9g}" for m in U.METRICS]
            )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png_path = os.path.join(out_dir, "bald_vs_balentacq.png")
    bald, bea = scores["bald"], scores["balentacq"]
    finite = np.isfinite(bald) & np.isfinite(bea)
    chosen = np.zeros(len(order), dtype=bool)
    chosen[order[:batch]] = True
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    ax.scatter(bald[finite & ~chosen], bea[finite & ~chosen], s=12, c="tab:gray", alpha=0.6, label="pool")
    ax.scatter(bald[finite & chosen], bea[finite & chosen], s=40, c="tab:red", edgecolors="k", linewidths=0.5, label=f"top {batch} by {metric}")
    for pos in np.flatnonzero(finite & chosen):
        ax.annotate(str(split.pool_idx[pos]), (bald[pos], bea[pos]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("BALD (nats)")
    ax.set_ylabel("BalEntAcq (symlog scale)")
    ax.set_yscale("symlog", linthresh=1.0)  # BalEntAcq is heavy-tailed (a ratio whose denominator crosses 0)
    ax.grid(True, which="major", alpha=0.3)
    ax.set_title(f"{split.name}: pool of {len(order)}, MC dropout")
    ax.legend(loc="best", fontsize=8)
    if (~finite).any():
        ax.text(0.01, 0.01, f"{int((~finite).sum())} non-finite points not shown", transform=ax.transAxes, fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return [csv_path, png_path]


# --------------------------------------------------------------------------- main


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Runs one round and prints the report; returns what it computed (for tests and notebooks)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.seed_frac + args.test_frac >= 1.0:
        parser.error(f"--seed-frac + --test-frac must be below 1 (got {args.seed_frac:g} + {args.test_frac:g})")
    if args.out:  # made, and proved writable, before any training
        make_output_folder_or_exit(parser, args.out)
    try:
        split = load_and_split(args.dataset, args.seed, args.seed_frac, args.test_frac)
    except ValueError as e:
        parser.error(str(e))
    n_pool = len(split.pool_idx)
    if args.batch > n_pool:
        parser.error(f"--batch {args.batch} is larger than the unlabelled pool ({n_pool} items for {args.dataset} with these fractions)")

    # The matrices are tiny: one torch thread is the fastest here and keeps the sums' order fixed.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_round(args, split)
    finally:
        torch.set_num_threads(threads)


def run_round(args: argparse.Namespace, split: Split) -> dict:
    """Train on the seed set, score the pool with MC dropout + labelwise, print the report."""
    n_pool = len(split.pool_idx)
    # Standardise with statistics of the features the learner can see (seed + pool, no test labels or features).
    scaler = StandardScaler().fit(split.X[np.concatenate([split.seed_idx, split.pool_idx])])

    def features(idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(scaler.transform(split.X[idx])).float()

    X_seed, y_seed = features(split.seed_idx), torch.from_numpy(split.y[split.seed_idx])
    X_pool, X_test = features(split.pool_idx), features(split.test_idx)
    y_test = split.y[split.test_idx]
    n_classes = len(split.class_names)

    torch.manual_seed(args.seed)
    model = make_mlp(X_seed.shape[1], args.hidden, n_classes, args.dropout)
    loss = train(model, X_seed, y_seed, args.steps, args.lr, args.weight_decay, progress=not args.no_progress)

    model.eval()
    with torch.no_grad():
        test_acc = float((model(X_test).argmax(dim=1).numpy() == y_test).mean())

    torch.manual_seed(args.seed + 1)
    log_probs = mc_dropout_log_probs(model, X_pool, args.samples)  # torch [N, K, C]
    scores_t = U.score(log_probs, U.METRICS, input="log_probs")  # dict of torch [N], one fused pass
    order_t = rank_by(scores_t[args.metric])
    pred = log_probs.exp().mean(dim=1).argmax(dim=1).numpy()  # class of the MC-mean prediction

    scores = {m: v.numpy() for m, v in scores_t.items()}
    order = order_t.numpy()
    top = order[: args.batch]

    print(f"data set : {split.name} ({args.dataset}), {len(split.y)} items, {split.X.shape[1]} features, {n_classes} classes")
    print(f"split    : {len(split.seed_idx)} labelled seed / {n_pool} unlabelled pool / {len(split.test_idx)} test (seed {args.seed})")
    print(f"model    : MLP {split.X.shape[1]}-{args.hidden}-{args.hidden}-{n_classes}, dropout {args.dropout:g}, {args.steps} Adam steps (lr {args.lr:g}, L2 {args.weight_decay:g}), final loss {loss:.4f}")
    print(f"seed-model test accuracy: {test_acc:.4f} ({int(round(test_acc * len(y_test)))}/{len(y_test)})")
    print(f"scored   : {n_pool} pool items x {args.samples} MC-dropout samples x {n_classes} classes, {len(U.METRICS)} metrics in one labelwise call")
    print()
    print(f"next {args.batch} to label, ranked by {args.metric} (true label hidden from the learner, shown for the demo; pred = MC-mean class):")
    metric_cols = list(TABLE_METRICS) if args.metric in TABLE_METRICS else [args.metric] + list(TABLE_METRICS)
    rows = []
    for r, pos in enumerate(top, start=1):
        row = {"rank": r, "row": int(split.pool_idx[pos]), "true": split.class_names[split.y[split.pool_idx[pos]]], "pred": split.class_names[pred[pos]]}
        row.update({m: float(scores[m][pos]) for m in metric_cols})
        rows.append(row)
    for line in format_table(rows, metric_cols):
        print(line)
    print()

    b = args.batch
    top_sets = {m: set(rank_by(scores_t[m])[:b].tolist()) for m in OVERLAP_METRICS}
    a, c, d = (top_sets[m] for m in OVERLAP_METRICS)
    print(f"overlap of the top-{b} sets:")
    print(f"  balentacq & bald               : {len(a & c):>3} / {b}")
    print(f"  balentacq & predictive_entropy : {len(a & d):>3} / {b}")
    print(f"  bald & predictive_entropy      : {len(c & d):>3} / {b}")
    print(f"  all three                      : {len(a & c & d):>3} / {b}")

    written = []
    if args.out:
        written = write_outputs(args.out, split, scores, order, pred, b, args.metric)
        print()
        for path in written:
            print(f"wrote {path}")

    return {
        "args": args,
        "split": split,
        "test_accuracy": test_acc,
        "log_probs": log_probs,
        "scores": scores_t,
        "order": order,
        "selected_rows": split.pool_idx[top],
        "written": written,
    }


if __name__ == "__main__":
    main()
