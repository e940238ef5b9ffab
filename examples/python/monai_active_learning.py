#!/usr/bin/env python3
"""labelwise inside a MONAI training loop: active learning of brain-lobe segmentation on real MRI.

MONAI (pip install monai) supplies the network (``monai.networks.nets.UNet`` with dropout), the loss
(``DiceCELoss``) and the metric (``DiceMetric``); labelwise supplies what MONAI does not: per-pixel
uncertainty from MC dropout in one fused pass (``labelwise.uncertainty``), slice acquisition
(``labelwise.acquisition``), and per-slice uncertainty to show the clinician.

Data: axial slices of the Colin27 T1 MRI with the AAL atlas mapped to 9 lobe classes
(``labelwise.data.colin27()``, from Debian's mricron-data; nothing is downloaded). The pool is the
set of brain slices; the script starts with a few labelled slices, then for ``--rounds`` rounds:
trains the UNet on the labelled slices, runs ``--samples`` MC-dropout passes over the unlabelled
slices, scores every pixel with BALD (or ``--metric``), ranks slices by their mean pixel score, and
"asks the annotator" for the top ``--batch`` slices (their atlas labels are revealed). It prints the
Dice on held-out slices after every round, next to a random-acquisition baseline with the same
budget, and writes a PNG of the last round's uncertainty on one slice to ``--out``.

Usage::

    python examples/python/monai_active_learning.py --quick         # ~25 s on 2 CPU cores
    python examples/python/monai_active_learning.py --rounds 4 --out out/
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=4, help="slices acquired per round")
    p.add_argument("--initial", type=int, default=4, help="labelled slices at the start")
    p.add_argument("--samples", type=int, default=8, help="MC-dropout passes")
    p.add_argument("--steps", type=int, default=150, help="training steps per round")
    p.add_argument("--metric", default="bald", choices=("predictive_entropy", "expected_entropy", "bald", "least_confidence",
                                                     "margin", "ratio", "variation_ratio", "max_mean_variation_ratio",
                                                     "mean_std", "balentacq"),
                   help="the uncertainty that ranks the slices (default bald); compared with random selection")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for the PNG of the uncertainty map")
    p.add_argument("--quick", action="store_true", help="fewer steps and rounds (CI)")
    a = p.parse_args(argv)
    if a.quick:  # at most these; smaller values given explicitly are kept
        a.rounds, a.steps, a.samples = min(a.rounds, 2), min(a.steps, 60), min(a.samples, 4)
    if not 0 <= a.seed < 2**32:
        p.error("--seed must be in [0, 2^32)")
    for name in ("rounds", "batch", "initial", "steps"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be >= 1")
    if a.samples < 2:
        p.error("--samples must be >= 2")
    a.parser = p  # main() makes --out with it, once the pool is known to be large enough
    return a


def load_slices(seed: int):
    """Brain slices of Colin27 (axial, downsampled by 2): images [S, 1, H, W] and lobe labels [S, H, W]."""
    from labelwise import data

    t1, lab = data.colin27()
    img = t1.data[::2, ::2, :]  # 91 x 109 x Z
    seg = lab.data[::2, ::2, :]
    keep = [z for z in range(img.shape[2]) if (seg[:, :, z] > 0).mean() > 0.05]  # slices with brain
    x = np.stack([img[:, :, z] for z in keep]).astype(np.float32)
    y = np.stack([seg[:, :, z] for z in keep]).astype(np.int64)
    x = (x - x.mean()) / (x.std() + 1e-6)
    # pad to a multiple of 8 for the UNet (91x109 -> 96x112)
    x = np.pad(x, ((0, 0), (0, 96 - x.shape[1]), (0, 112 - x.shape[2])))
    y = np.pad(y, ((0, 0), (0, 96 - y.shape[1]), (0, 112 - y.shape[2])))
    return x[:, None], y


def step_seed(seed: int, step: str, rnd: int) -> int:
    """An independent 32-bit seed for one random step of one round (NumPy's SeedSequence), so that no
    two (step, round) pairs share a stream, as `seed + rnd` and `seed + 100 + rnd` would from round 100."""
    return int(np.random.SeedSequence([seed, ["train", "mc"].index(step), rnd]).generate_state(1)[0])


def make_net(num_classes: int, seed: int):
    import torch
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    return UNet(spatial_dims=2, in_channels=1, out_channels=num_classes, channels=(8, 16, 32), strides=(2, 2),
                num_res_units=1, dropout=0.2)


def train(net, x, y, steps: int, seed: int):
    import torch
    from monai.losses import DiceCELoss

    torch.manual_seed(seed)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)[:, None]
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(xt), (min(8, len(xt)),))
        opt.zero_grad()
        loss = loss_fn(net(xt[idx]), yt[idx])
        loss.backward()
        opt.step()
    return loss.item()


def dice(net, x, y, num_classes: int) -> float:
    import torch
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    net.eval()
    with torch.no_grad():
        pred = net(torch.from_numpy(x)).argmax(dim=1, keepdim=True)
    metric = DiceMetric(include_background=False, reduction="mean", ignore_empty=True)
    metric(one_hot(pred, num_classes), one_hot(torch.from_numpy(y)[:, None], num_classes))
    return float(metric.aggregate())


def mc_probs(net, x, K: int, seed: int):
    """[S, K, C, H, W] softmax probabilities from K dropout passes (dropout on at inference)."""
    import torch

    torch.manual_seed(seed)
    net.train()
    with torch.no_grad():
        xt = torch.from_numpy(x)
        return torch.stack([torch.softmax(net(xt), dim=1) for _ in range(K)], dim=1)


def campaign(x, y, pool, test, a, strategy: str, num_classes: int, log):
    import labelwise.acquisition as A
    import labelwise.uncertainty as U

    rng = np.random.default_rng(a.seed)
    labelled = list(rng.choice(pool, size=a.initial, replace=False))
    history = []
    net = None
    pixel_map = None
    for rnd in range(a.rounds + 1):
        net = make_net(num_classes, a.seed)
        train(net, x[labelled], y[labelled], a.steps, step_seed(a.seed, "train", rnd))
        d = dice(net, x[test], y[test], num_classes)
        history.append((len(labelled), d))
        log(f"  {strategy:6s} round {rnd}: {len(labelled):3d} labelled slices, held-out Dice {d:.3f}")
        if rnd == a.rounds:
            break
        rest = np.array([s for s in pool if s not in labelled])
        if strategy == "random":
            picks = rng.choice(rest, size=a.batch, replace=False)
        else:
            probs = mc_probs(net, x[rest], a.samples, step_seed(a.seed, "mc", rnd))  # [S, K, C, H, W]
            pixel_map = U.score(probs, [a.metric])[a.metric]  # [S, H, W], one fused pass, torch in/out
            per_slice = A.slice_scores(pixel_map[:, None], axis=1)[:, 0]  # mean pixel score per slice
            picks = rest[np.asarray(A.top_k(per_slice, a.batch))]
            best = int(np.asarray(A.top_k(per_slice, 1))[0])
            campaign.last = (x[rest[best]], pixel_map[best])  # for the figure
        labelled.extend(int(p) for p in picks)
    return history


def main(argv=None):
    a = parse_args(argv)
    try:
        import monai  # noqa: F401
        import torch
    except ImportError as exc:
        sys.exit(f"this example needs MONAI and PyTorch: pip install monai torch ({exc})")
    from labelwise import data

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    t0 = time.perf_counter()
    x, y = load_slices(a.seed)
    C = len(data.AAL_LOBES)
    rng = np.random.default_rng(a.seed)
    order = rng.permutation(len(x))
    test, pool = order[: len(x) // 4], order[len(x) // 4:]
    need = a.initial + a.rounds * a.batch
    if need > len(pool):
        sys.exit(f"--initial + --rounds x --batch = {need} slices, but the pool has only {len(pool)}")
    if a.out:  # made, and proved writable, after every check and before the rounds
        data.make_output_folder_or_exit(a.parser, a.out)
    print(f"Colin27 + AAL lobes: {len(x)} axial brain slices {x.shape[2]}x{x.shape[3]}, {C} classes; "
          f"pool {len(pool)}, held-out {len(test)}")
    results = {}
    for strategy in (a.metric, "random"):
        results[strategy] = campaign(x, y, pool, test, a, strategy, C, print)
    print("\nlabelled slices -> held-out Dice")
    for strategy, hist in results.items():
        print(f"  {strategy:8s} " + "  ".join(f"{n}:{d:.3f}" for n, d in hist))
    if a.out and hasattr(campaign, "last"):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        os.makedirs(a.out, exist_ok=True)
        img, umap = campaign.last
        fig, ax = plt.subplots(1, 2, figsize=(8, 3.6))
        ax[0].imshow(img[0].T, cmap="gray", origin="lower")
        ax[0].set_title("most uncertain slice")
        im = ax[1].imshow(np.asarray(umap).T, cmap="magma", origin="lower")
        ax[1].set_title(f"per-pixel {a.metric}")
        fig.colorbar(im, ax=ax[1], fraction=0.046)
        for axis in ax:
            axis.axis("off")
        fig.tight_layout()
        path = os.path.join(a.out, "monai_uncertainty.png")
        fig.savefig(path, dpi=110)
        print(f"wrote {path}")
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return results


if __name__ == "__main__":
    main()
