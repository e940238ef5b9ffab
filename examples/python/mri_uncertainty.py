#!/usr/bin/env python3
"""Per-pixel uncertainty on a real brain MRI: a small 2D U-Net with an MC-dropout head.

The script takes the Colin27 T1 MRI and its hand-drawn AAL atlas, mapped to 9 lobe classes
(background, frontal, insula, limbic, occipital, parietal, subcortical, temporal, cerebellum), from
``labelwise.data.colin27()``; downsamples by 2 in-plane (2x2 mean of the image, the label at the
top-left voxel of each 2x2 block) and keeps every 2nd axial slice; trains a small 2D U-Net
(``labelwise.models``: two down- and two up-sampling levels, 16-32-64 channels) ending in a
``labelwise.torch.MCDropoutHead`` on every 5th of the kept slices that contain brain (about 20 % of
them, every 10th 1 mm slice); then, for one held-out slice between two training
slices, runs ``head.score(features, K, metrics=("bald", "balentacq"), seed)`` — K MC-dropout
samples of the head with masks from the counter-based RNG, scored per pixel — and writes PNGs to
``--out``:

* ``image.png``, ``ground_truth.png``, ``prediction.png`` (the arg-max of the K samples' mean
  probabilities, overlaid on the image), ``bald.png``, ``balentacq.png``, and ``overview.png`` with all of them;
  when ``labelwise.acquisition.top_regions`` is available the 3 most uncertain non-overlapping 12x12
  patches (mean BALD by default, ``--region-metric``) — the regions to label next — are outlined on
  ``overview.png``, on the prediction and on the map that chose them.

BalEntAcq has a heavy upper tail (a pole of the published formula, see docs/metrics.md) and is
``-inf`` on certain pixels; its map is drawn between its 2nd and 98th percentiles.

Besides the image intensity, the network sees three coordinate channels (row, column and slice
position in [-1, 1]), because lobe boundaries are largely a matter of where a pixel is.

Everything runs on the CPU: about a minute and a half with the defaults (300 steps) on 2 cores,
``--quick`` (50 steps, K=8, a narrower U-Net) in well under 30 seconds. Deterministic for a given ``--seed`` and
thread count.

Usage::

    python examples/python/mri_uncertainty.py --out mri-out/
    python examples/python/mri_uncertainty.py --quick --out /tmp/mri

Data (nothing is downloaded): Colin27 average T1 ("ch2"; Holmes et al., J Comput Assist Tomogr
1998, MNI) and the AAL atlas (Tzourio-Mazoyer et al., NeuroImage 2002), as distributed with MRIcron
in Debian's ``mricron-data`` package (``apt-get install mricron-data``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, Tuple

import numpy as np


def load_slices(stride: int = 5) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """(images [S, 1, H, W] float32 normalised, labels [S, H, W] int64, z positions [S] in [-1, 1],
    train index, held-out index) for the axial slices, downsampled by 2 and padded to a multiple of 4."""
    from labelwise.data import colin27

    t1, lab = colin27()
    img, seg = t1.data, lab.data  # [X, Y, Z]: axial slices are [:, :, z]
    X, Y, Z = img.shape
    Xc, Yc = X // 2 * 2, Y // 2 * 2
    img = img[:Xc, :Yc].reshape(Xc // 2, 2, Yc // 2, 2, Z).mean(axis=(1, 3))
    seg = seg[:Xc:2, :Yc:2]
    img = img[:, :, ::2]
    seg = seg[:, :, ::2]
    brain = np.nonzero((seg > 0).any(axis=(0, 1)))[0]
    img, seg = img[:, :, brain], seg[:, :, brain]
    zpos = np.linspace(-1.0, 1.0, len(brain))
    img = (img - img.mean()) / img.std()
    # [S, H, W] with H the anterior-posterior axis (rows) and W left-right, padded to a multiple of 4
    img = np.transpose(img, (2, 1, 0))[:, ::-1]
    seg = np.transpose(seg, (2, 1, 0))[:, ::-1]
    H, W = img.shape[1:]
    ph, pw = (-H) % 4, (-W) % 4
    img = np.pad(img, ((0, 0), (0, ph), (0, pw)), constant_values=float(img.min()))
    seg = np.pad(seg, ((0, 0), (0, ph), (0, pw)))
    S = img.shape[0]
    train = np.arange(0, S, stride)
    held_out = int(train[len(train) // 2] + stride // 2)  # a middle slice between two training slices
    return (np.ascontiguousarray(img[:, None], dtype=np.float32), np.ascontiguousarray(seg, dtype=np.int64),
            zpos.astype(np.float32), train, held_out)


def build_model(num_classes: int, p: float, width: int = 16):
    """The 2D U-Net + MC-dropout head of ``labelwise.models`` (shared with the campaign driver)."""
    from labelwise.models import build_segmenter

    return build_segmenter(num_classes, p, width)


def with_coords(img: np.ndarray, z: np.ndarray):
    """[S, 1, H, W] images + their slice positions -> [S, 4, H, W] (image, row, column, slice)."""
    from labelwise.models import with_coords as _with_coords

    return _with_coords(img, z)


def dice_scores(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> Dict[int, float]:
    out = {}
    for c in range(1, num_classes):
        a, b = pred == c, truth == c
        if b.any():
            out[c] = 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())
    return out


def write_pngs(out: str, image: np.ndarray, truth: np.ndarray, pred: np.ndarray, maps: Dict[str, np.ndarray],
               names, regions=None, region_metric: str = "bald") -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Rectangle

    os.makedirs(out, exist_ok=True)
    C = len(names)
    colors = plt.get_cmap("tab10")(np.arange(C))
    lobe_cmap = ListedColormap(colors)

    def overlay(ax, lab, title):
        ax.imshow(image, cmap="gray")
        ax.imshow(np.ma.masked_where(lab == 0, lab), cmap=lobe_cmap, vmin=-0.5, vmax=C - 0.5, alpha=0.5,
                  interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")

    def heat(ax, m, title, fig):
        im = ax.imshow(m, cmap="magma")
        ax.set_title(title)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)

    written = []

    def save(fig, name):
        path = os.path.join(out, name)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(image, cmap="gray")
    ax.set_title("T1 (held-out slice)")
    ax.axis("off")
    save(fig, "image.png")
    for lab, title, name in ((truth, "AAL lobes (truth)", "ground_truth.png"), (pred, "prediction", "prediction.png")):
        fig, ax = plt.subplots(figsize=(4, 4))
        overlay(ax, lab, title)
        save(fig, name)
    for key, title in (("bald", "BALD (nats)"), ("balentacq", "BalEntAcq (2-98th pct)")):
        fig, ax = plt.subplots(figsize=(4.6, 4))
        heat(ax, maps[key], title, fig)
        save(fig, f"{key}.png")

    fig, axes = plt.subplots(1, 5, figsize=(22, 4.6))
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title("T1 (held-out slice)")
    axes[0].axis("off")
    overlay(axes[1], truth, "AAL lobes (truth)")
    overlay(axes[2], pred, "prediction (MC mean)")
    heat(axes[3], maps["bald"], "BALD (nats)", fig)
    heat(axes[4], maps["balentacq"], "BalEntAcq (2-98th pct)", fig)
    if regions is not None:
        for (r, c, size) in regions:
            # on the prediction and on the map that chose them
            for ax in (axes[2], axes[3] if region_metric == "bald" else axes[4]):
                ax.add_patch(Rectangle((c - 0.5, r - 0.5), size, size, fill=False, edgecolor="cyan", linewidth=1.5))
    handles = [Rectangle((0, 0), 1, 1, color=colors[c]) for c in range(1, C)]
    fig.legend(handles, names[1:], loc="lower center", ncol=C - 1, frameon=False)
    save(fig, "overview.png")
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="mri-out", help="folder for the PNGs (default: mri-out)")
    ap.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    ap.add_argument("--batch", type=int, default=4, help="slices per step (default 4)")
    ap.add_argument("--samples", "-K", type=int, default=20, help="MC-dropout samples K (default 20)")
    ap.add_argument("--width", type=int, default=16, help="channels of the U-Net's first level (default 16)")
    ap.add_argument("--p", type=float, default=0.3, help="dropout rate of the head (default 0.3)")
    ap.add_argument("--lr", type=float, default=1e-2, help="peak learning rate (one-cycle schedule, default 1e-2)")
    ap.add_argument("--seed", type=int, default=0, help="seed of training and of the dropout masks")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--region-metric", choices=("bald", "balentacq"), default="bald",
                    help="map whose 12x12 patch means pick the regions to label next (default bald)")
    ap.add_argument("--quick", action="store_true", help="50 steps, K=8, width 8: a smoke test in well under 30 s")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.samples, args.width = min(args.steps, 50), min(args.samples, 8), min(args.width, 8)
    if args.steps < 1 or args.batch < 1 or args.samples < 2 or args.width < 1:
        ap.error("--steps, --batch and --width must be >= 1 and --samples >= 2")
    if args.threads < 0:
        ap.error("--threads must be >= 0 (0: torch's choice)")
    if not 0 < args.p < 1 or not 0 < args.lr < float("inf") or not 0 <= args.seed < 2**64:
        ap.error("--p must be in (0, 1) (0 would give an all-zero BALD map), --lr finite and > 0 and --seed in [0, 2^64)")
    from labelwise.data import make_output_folder_or_exit

    make_output_folder_or_exit(ap, args.out)  # made, and proved writable, before the training

    import torch

    import labelwise.acquisition as A
    from labelwise.data import class_names

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    img, seg, zpos, train, held = load_slices()
    names = class_names()
    C = len(names)
    x_all = with_coords(img, zpos)
    y_all = torch.as_tensor(seg)
    print(f"Colin27 T1, axial slices downsampled by 2: {img.shape[0]} slices of {img.shape[2]}x{img.shape[3]}; "
          f"training on {len(train)} ({100 * len(train) / img.shape[0]:.0f} %), held-out slice {held}")

    model = build_model(C, args.p, args.width)
    # Class weights ~ 1/sqrt(frequency) on the training slices, so that small lobes are not drowned
    # by the background.
    counts = torch.bincount(y_all[train].reshape(-1), minlength=C).double()
    weights = (counts.sum() / counts.clamp(min=1)).sqrt()
    weights = (weights / weights.mean()).float()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(args.seed)
    model.train()
    for step in range(args.steps):
        idx = torch.as_tensor(train)[torch.randint(len(train), (args.batch,), generator=gen)]
        logits = model(x_all[idx])
        loss = torch.nn.functional.cross_entropy(logits, y_all[idx], weight=weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % max(1, args.steps // 5) == 0 or step == args.steps - 1:
            print(f"  step {step + 1:4d}/{args.steps}  loss {loss.item():.3f}")
    t_train = time.perf_counter() - t0

    model.eval()  # BatchNorm in inference mode; the head's MC dropout comes from sample()/score()
    with torch.no_grad():
        feats = model.backbone(x_all[held : held + 1])
        t1 = time.perf_counter()
        res = model.head.score(feats, K=args.samples, metrics=("bald", "balentacq"), seed=args.seed, return_mean=True)
        t_score = time.perf_counter() - t1
    pred = res["mean"][0].argmax(0).numpy()
    truth = seg[held]
    acc = float((pred == truth).mean())
    dice = dice_scores(pred, truth, C)
    bald = res["bald"][0].numpy()
    bal = res["balentacq"][0].numpy()
    finite = np.isfinite(bal)
    bal_fin = np.where(finite, bal, bal[finite].min() if finite.any() else 0.0)
    lo, hi = np.percentile(bal_fin, [2, 98])
    bal_show = np.clip(bal_fin, lo, hi)
    wrong = pred != truth
    print(f"held-out slice {held}: pixel accuracy {acc:.3f}, mean Dice over {len(dice)} lobes "
          f"{np.mean(list(dice.values())):.3f}")
    print("  Dice: " + ", ".join(f"{names[c]} {d:.2f}" for c, d in dice.items()))
    if wrong.any() and (~wrong).any():
        print(f"  mean BALD on wrong pixels {bald[wrong].mean():.4f} vs right pixels {bald[~wrong].mean():.4f}")
    print(f"  score(K={args.samples}, bald+balentacq) on {bald.size} pixels: {t_score * 1e3:.0f} ms; "
          f"{(~finite).sum()} pixels are certain (BalEntAcq = -inf); BalEntAcq drawn in [{lo:.3g}, {hi:.3g}] "
          f"(2nd-98th percentile; max {bal_fin.max():.3g})")

    regions = None
    if hasattr(A, "top_regions"):
        size = 12
        region_map = bald if args.region_metric == "bald" else bal_fin
        corners, scores = A.top_regions(torch.from_numpy(region_map[None].copy()), 3, size)
        regions = [(int(r[1]), int(r[2]), size) for r in corners]
        print(f"  next regions to label (row, col of a 12x12 patch, mean {args.region_metric}): "
              + "; ".join(f"({r}, {c}) {float(s):.3f}" for (r, c, _), s in zip(regions, scores)))
    files = write_pngs(args.out, img[held, 0], truth, pred, {"bald": bald, "balentacq": bal_show}, names, regions,
                       args.region_metric)
    print(f"trained in {t_train:.1f} s; wrote {', '.join(files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
