"""The segmentation side of ``python -m labelwise.campaign``: slices as the pool, region acquisition.

Data: a volume of axial slices ``[S, H, W]`` with a label map of the same shape — Colin27 T1 with its
AAL atlas mapped to 8 lobes + background (9 classes) (``--dataset colin27``, from Debian's
``mricron-data`` through :func:`labelwise.data.colin27`), or your own ``--data FILE.npz`` with
arrays ``image`` and ``labels`` ``[S, H, W]`` (label 0 = background).

Per seed, the slices are split (stratified along the slice axis) into a held-out **test** set (one
random slice of every 4 consecutive ones) and the **pool**. Certified auto-labelling is calibrated on
sparse voxel "clicks" that humans label, drawn uniformly at random from the very pool voxels that are
to be auto-labelled (so the bound holds however the voxels' errors are correlated). The seed set is a
few pool slices chosen so that every class is present (greedy cover; it grows past
``seg_init_slices`` only when it must). The model is :class:`labelwise.models.Segmenter` (a small 2D
U-Net with a :class:`labelwise.torch.MCDropoutHead`, input = intensity + row / column / slice
coordinates), retrained from scratch every round on the labelled voxels (cross-entropy with
``ignore_index`` for the unlabelled ones, class weights ~ 1/sqrt(frequency)).

Strategies (per-voxel maps from ``head.score(features, K, metrics, seed)``):

* whole slices — ``random``; ``entropy`` / ``bald`` / ``balentacq``: top-b slices by the slice mean
  of the per-voxel map (:func:`labelwise.acquisition.slice_scores`); ``powerbald``: stochastic power
  acquisition on the slice-mean BALD; ``coreset``: k-center greedy on per-slice features (the
  U-Net's feature map averaged over the slice);
* regions — ``random_regions`` / ``bald_regions`` / ``balentacq_regions``: the same number of voxels
  per round, as the best non-overlapping ``patch`` x ``patch`` tiles of any pool slice
  (:func:`labelwise.acquisition.top_regions` on the maps, labelled voxels excluded); the slices are
  then only partly labelled.
* not applicable here: ``batchbald`` (its joint entropy treats an item as one categorical variable;
  a slice is thousands of dependent voxels), ``badge`` (gradient embeddings per voxel, C x F each, have
  no agreed per-slice pooling) and ``cluster_margin`` (needs one margin per item); they are skipped
  for segmentation data sets and the report says so.

Metric: mean Dice over the foreground classes present in the test slices (one Dice per class over
all test slices together, see :func:`dice_per_class`), next to the full-data model's Dice (the same
model trained on every pool voxel, with twice the steps and twice the batch). Labelled amounts are counted in voxels.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import acquisition as A
from . import propagation as P
from ._arrays import check_seed

SLICE_STRATEGIES = ("random", "entropy", "bald", "balentacq", "powerbald", "coreset")
REGION_STRATEGIES = ("random_regions", "bald_regions", "balentacq_regions")
STRATEGIES = SLICE_STRATEGIES + REGION_STRATEGIES
NOT_APPLICABLE = {
    "batchbald": "its joint entropy treats an item as one categorical variable; a slice is thousands of "
                 "dependent voxels",
    "badge": "its gradient embeddings are per voxel (C x F each) with no agreed pooling to a slice",
    "cluster_margin": "it needs one margin per item; use entropy / bald maps reduced to slices instead",
}
_METRIC_OF = {"entropy": "predictive_entropy", "bald": "bald", "balentacq": "balentacq", "powerbald": "bald",
              "bald_regions": "bald", "balentacq_regions": "balentacq"}
_FULL_CACHE: Dict = {}  # full-data Dice per (data, seed, settings): the same for every strategy


@dataclass
class SegDataset:
    name: str
    title: str
    image: np.ndarray  #: [S, H, W] float32, normalised; H and W multiples of lcm(4, patch)
    labels: np.ndarray  #: [S, H, W] int64 in [0, C)
    zpos: np.ndarray  #: [S] slice positions in [-1, 1]
    class_names: List[str]
    source: str
    kind: str = "segmentation"
    #: (H, W) of the image before padding: rows >= H and columns >= W are padding (background, not data)
    unpadded: Optional[Tuple[int, int]] = None

    def data_mask(self) -> np.ndarray:
        """[H, W] bool: True on the image, False on the padding added to reach a multiple of the patch."""
        H, W = self.image.shape[1:]
        h, w = self.unpadded or (H, W)
        m = np.zeros((H, W), dtype=bool)
        m[:h, :w] = True
        return m

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ---------------------------------------------------------------------------------------------
# data


def autolabel_summary(r, truth: np.ndarray, *, n_calibration: int, keep: Optional[np.ndarray] = None) -> Dict:
    """The raw numbers of one certified auto-labelling (a propagation.certified_auto_label result) against
    the withheld truth, as the campaigns' results.json stores them (classification and segmentation).
    ``keep``: the pool units that are auto-labelled (default all; the segmentation campaign leaves out
    its calibration clicks, which keep their human label); ``truth`` is over those."""
    acc = np.asarray(r.accepted).reshape(-1)
    labels = np.asarray(r.labels).reshape(-1)
    if keep is not None:
        acc, labels = acc[keep], labels[keep]
    n_acc = int(acc.sum())
    return {
        "certified": bool(r.certified),
        "reason": r.reason,
        "threshold": float(r.threshold),
        "bound": float(r.bound),
        "coverage": n_acc / len(truth) if len(truth) else 0.0,
        "n_rest": int(len(truth)),
        "n_accepted": n_acc,
        "realised_error": float((labels[acc] != truth[acc]).mean()) if n_acc else None,
        "n_calibration": n_calibration,
    }


def _pad_to(img: np.ndarray, seg: np.ndarray, multiple: int) -> Tuple[np.ndarray, np.ndarray]:
    H, W = img.shape[1:]
    ph, pw = (-H) % multiple, (-W) % multiple
    fill = float(img.min()) if img.size else 0.0
    img = np.pad(img, ((0, 0), (0, ph), (0, pw)), constant_values=fill)
    seg = np.pad(seg, ((0, 0), (0, ph), (0, pw)))
    return img, seg


def _normalise(img: np.ndarray) -> np.ndarray:
    sd = float(img.std())
    return ((img - float(img.mean())) / (sd if sd > 0 else 1.0)).astype(np.float32)


def load_colin27(downsample: int, slice_stride: int, patch: int) -> SegDataset:
    """Colin27 axial slices containing brain, downsampled in-plane by ``downsample`` (block mean of the
    image, the label of the block's first voxel) and keeping every ``slice_stride``-th slice."""
    from .data import class_names, colin27

    t1, lab = colin27()
    img, seg = t1.data, lab.data  # [X, Y, Z]
    f = int(downsample)
    X, Y, _ = img.shape
    Xc, Yc = X // f * f, Y // f * f
    img = img[:Xc, :Yc].reshape(Xc // f, f, Yc // f, f, -1).mean(axis=(1, 3))
    seg = seg[:Xc:f, :Yc:f]
    brain = np.nonzero((seg > 0).any(axis=(0, 1)))[0]
    keep = brain[:: int(slice_stride)]
    img, seg = img[:, :, keep], seg[:, :, keep]
    # [S, H, W]: H anterior-posterior (rows), W left-right
    img = np.ascontiguousarray(np.transpose(img, (2, 1, 0))[:, ::-1])
    seg = np.ascontiguousarray(np.transpose(seg, (2, 1, 0))[:, ::-1])
    unpadded = img.shape[1:]
    img, seg = _pad_to(_normalise(img), seg.astype(np.int64), math.lcm(4, int(patch)))
    zpos = (2.0 * (keep - brain[0]) / max(1, brain[-1] - brain[0]) - 1.0).astype(np.float32)
    return SegDataset("colin27", "Colin27 T1 MRI with AAL lobe labels (axial slices, region acquisition)",
                      img, seg, zpos, class_names(),
                      f"Debian mricron-data (Colin27, Holmes et al. 1998; AAL, Tzourio-Mazoyer et al. 2002); "
                      f"{f} mm pixels, every {slice_stride} mm: {len(keep)} of the {len(brain)} 1 mm axial slices "
                      "with brain", unpadded=unpadded)


def load_npz_volume(path: str, name: str, patch: int) -> SegDataset:
    """``image`` and ``labels`` ``[S, H, W]`` (axial slices first) from a .npz file; labels are mapped to
    0..C-1 in sorted order (the smallest, normally 0, is the background)."""
    with np.load(path) as f:
        img, lab = np.asarray(f["image"], dtype=np.float64), np.asarray(f["labels"])
    if img.ndim != 3 or img.shape != lab.shape:
        raise ValueError(f"{name}: expected image and labels [S, H, W] of one shape, got {img.shape} and {lab.shape}")
    if not np.isfinite(img).all():
        first = tuple(int(i) for i in np.argwhere(~np.isfinite(img))[0])
        raise ValueError(f"{name}: image contains NaN or Inf (first at {first})")
    if lab.dtype.kind not in "iub":
        raise ValueError(f"{name}: labels must be integers, got {lab.dtype}")
    values, idx = np.unique(lab, return_inverse=True)
    seg = idx.reshape(lab.shape).astype(np.int64)
    unpadded = img.shape[1:]
    image, seg = _pad_to(_normalise(img), seg, math.lcm(4, int(patch)))
    S = image.shape[0]
    zpos = np.linspace(-1.0, 1.0, S).astype(np.float32)
    names = ["background"] + [f"class {int(v)}" for v in values[1:]]
    return SegDataset(name, f"user volume {os.path.basename(path)}", image, seg, zpos, names, f"user file {path}",
                      unpadded=unpadded)


def validate(d: SegDataset) -> int:
    if d.image.ndim != 3 or d.image.shape != d.labels.shape:
        raise ValueError(f"{d.name}: expected image and labels [S, H, W] of one shape")
    if not np.isfinite(d.image).all():
        raise ValueError(f"{d.name}: image contains NaN or Inf")
    present = np.unique(d.labels)
    if len(present) < 2:
        raise ValueError(f"{d.name}: a campaign needs at least 2 classes, the labels have {len(present)}")
    C = d.num_classes
    slices_with = np.array([(d.labels == c).any(axis=(1, 2)).sum() for c in range(C)])
    if slices_with.min() < 2:
        c = int(np.argmin(slices_with))
        raise ValueError(f"class {c} ({d.class_names[c]}) appears in only {slices_with[c]} slice(s); the seed set "
                         "needs it in a pool slice and the test set in a held-out one (2 slices in all)")
    return C


# ---------------------------------------------------------------------------------------------
# split


@dataclass
class SegSplit:
    test: np.ndarray  #: slice indices
    pool: np.ndarray
    init: np.ndarray  #: indices into pool


def split(d: SegDataset, cfg, seed: int) -> SegSplit:
    S = d.image.shape[0]
    C = d.num_classes
    rng = np.random.default_rng([seed, 27])
    present = np.stack([(d.labels == c).any(axis=(1, 2)) for c in range(C)], axis=1)  # [S, C]
    in_pool = np.ones(S, dtype=bool)

    def removable(s: int) -> bool:  # removing s from the pool keeps every class in the pool
        rest = in_pool.copy()
        rest[s] = False
        return bool(present[rest].any(axis=0).all())

    test = []
    for g0 in range(0, S, 4):  # one random slice of every 4 consecutive ones, if the pool can spare it
        for s in rng.permutation(np.arange(g0, min(S, g0 + 4))):
            if removable(int(s)):
                test.append(int(s))
                in_pool[s] = False
                break
    pool = np.flatnonzero(in_pool)
    missing = [c for c in range(C) if not present[pool, c].any()]
    if missing:  # cannot happen after validate(), kept as a guard for the invariant
        raise ValueError(f"class {missing[0]} does not appear in any pool slice; the seed set needs it")
    # seed set: greedy cover of the classes (most new classes first, ties in a random order); at least
    # seg_init_slices slices
    cover = present[pool]
    init: List[int] = []
    have = np.zeros(C, dtype=bool)
    order = rng.permutation(len(pool))
    while len(init) < cfg.seg_init_slices or not have.all():
        gain = np.array([(cover[i] & ~have).sum() if i not in init else -1 for i in order])
        i = int(order[int(np.argmax(gain))])  # most new classes; ties: the random order
        init.append(i)
        have |= cover[i]
        if len(init) >= len(pool):
            break
    return SegSplit(np.asarray(sorted(test)), pool, np.asarray(init))


# ---------------------------------------------------------------------------------------------
# model, training, scoring


def _torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised only without torch
        raise RuntimeError("the campaigns (labelwise.campaign, labelwise.segcampaign) need PyTorch "
                           "(pip install torch)") from exc
    return torch


# The random streams of one campaign run. Each is seeded from (run seed, stream, round) through
# NumPy's SeedSequence, so no two of them coincide; sums such as ``seed + rnd`` made seed 0's round 1
# reuse seed 1's round 0.
STREAMS = ("init", "train", "train_full", "mc", "select", "autolabel_mc", "calibration")


def stream_seed(seed: int, stream: str, rnd: int = 0) -> int:
    """The seed, in [0, 2^64), of ``stream`` (one of ``STREAMS``) in round ``rnd`` of the run ``seed``
    (below 2^32). torch's CPU generator keeps its low 32 bits; the tests check those differ too."""
    if stream not in STREAMS:
        raise ValueError(f"stream: expected one of {STREAMS}, got {stream!r}")
    if rnd < 0:
        raise ValueError(f"rnd: expected >= 0, got {rnd}")
    seed = check_seed(seed)
    # SeedSequence splits an integer past 32 bits into words and pads short entropy with zeros, so
    # [2^32 + 5, 0, 0] would read as [5, 1, 0]: campaign seeds stay below 2^32 (--seeds allows 10^4)
    if seed >= 2**32:
        raise ValueError(f"seed: a campaign run's seed must be below 2**32, got {seed}")
    entropy = [seed, STREAMS.index(stream), int(rnd)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


@contextlib.contextmanager
def seeded_torch(seed: int):
    """torch's global CPU generator seeded with ``seed`` (an integer in [0, 2^64)) inside the block (module initialisation and
    dropout draw from it), and the caller's generator state restored afterwards: a campaign step is
    reproducible from its seed and leaves the random stream of the code around it untouched."""
    torch = _torch()
    seed = check_seed(seed)
    with torch.random.fork_rng(devices=[]):
        # the CPU generator only: torch.manual_seed would also reseed (and not restore) every CUDA
        # device's generator; the campaigns train and sample on the CPU
        torch.default_generator.manual_seed(seed)
        yield torch


def inputs(d: SegDataset, idx: np.ndarray):
    from .models import with_coords

    return with_coords(d.image[idx][:, None], d.zpos[idx])


def train(d: SegDataset, x, target, cfg, seed: int, progress: bool = False, steps: Optional[int] = None,
          batch: Optional[int] = None):
    """A fresh :class:`labelwise.models.Segmenter` trained on ``x`` [n, 4, H, W] with ``target`` [n, H, W]
    (-1 = unlabelled voxel, ignored): ``steps`` Adam steps (one-cycle schedule) on minibatches of ``batch``
    slices drawn without replacement with probability proportional to their labelled voxels (so partly
    labelled slices from region acquisition are drawn as often as their labels warrant)."""
    torch = _torch()
    from .models import build_segmenter

    with seeded_torch(seed):
        model = build_segmenter(d.num_classes, cfg.dropout, cfg.seg_width)
        C = d.num_classes
        t = torch.as_tensor(target)
        lab = t[t >= 0]
        counts = torch.bincount(lab, minlength=C).double()
        weights = (counts.sum() / counts.clamp(min=1)).sqrt()
        weights = (weights / weights[counts > 0].mean()).float()
        steps = cfg.seg_steps if steps is None else steps
        opt = torch.optim.Adam(model.parameters(), lr=cfg.seg_lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.seg_lr, total_steps=steps, pct_start=0.15)
        gen = torch.Generator().manual_seed(seed)
        n = x.shape[0]
        bs = min(cfg.seg_batch if batch is None else batch, n)
        per_slice = (t >= 0).flatten(1).sum(dim=1).double()
        if not bool((per_slice > 0).all()):
            raise ValueError("train: every training slice needs at least one labelled voxel")
        model.train()
        bar = None
        if progress:
            try:
                from tqdm.auto import tqdm

                bar = tqdm(total=steps, desc="  training", unit="step", leave=False, disable=None)
            except ImportError:  # pragma: no cover
                bar = None
        loss = torch.zeros(())
        for _ in range(steps):
            idx = torch.multinomial(per_slice, bs, replacement=False, generator=gen) if n > bs else torch.arange(n)
            logits = model(x[idx])
            loss = torch.nn.functional.cross_entropy(logits, t[idx], weight=weights, ignore_index=-1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        if not torch.isfinite(loss):
            raise FloatingPointError("training diverged: the loss is NaN or Inf")
        model.eval()
        return model


def features(model, x, chunk: int = 32):
    torch = _torch()
    model.eval()
    with torch.no_grad():
        f = torch.cat([model.backbone(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)])
    if not torch.isfinite(f).all():
        raise FloatingPointError("the model produced NaN or Inf features; its uncertainty maps would be meaningless")
    return f


def mc_maps(model, x, K: int, metrics: Sequence[str], seed: int, return_mean: bool = False,
            index_offset: int = 0) -> Dict:
    """Per-voxel maps ``{metric: [n, H, W]}`` (and ``"mean"`` probabilities [n, C, H, W]) from K MC-dropout
    samples of the head (``head.score``); ``"features"``: the backbone's features. ``index_offset``: the
    index of ``x[0]`` in a larger batch, so that a slice scored alone gets the masks it got there."""
    f = features(model, x)
    res = dict(model.head.score(f, K=K, metrics=tuple(metrics), seed=seed, return_mean=return_mean,
                                index_offset=index_offset))
    for k, v in res.items():
        if k != "balentacq" and not bool(_torch().isfinite(v).all()):
            raise FloatingPointError(f"the model produced NaN or Inf {k} maps")
    res["features"] = f
    return res


def predict(model, x, chunk: int = 32) -> np.ndarray:
    torch = _torch()
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(x[i : i + chunk]).argmax(dim=1) for i in range(0, x.shape[0], chunk)])
    return out.numpy()


def dice_per_class(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """Dice of every foreground class 1..C-1 over all voxels of ``pred`` and ``truth`` together
    (``2 |P ∩ T| / (|P| + |T|)``); NaN for a class absent from ``truth`` (whatever is predicted)."""
    pred, truth = np.asarray(pred).ravel(), np.asarray(truth).ravel()
    if pred.shape != truth.shape:
        raise ValueError(f"dice: prediction and truth differ in size ({pred.size} vs {truth.size})")
    inter = np.bincount(truth[pred == truth], minlength=num_classes)[:num_classes]
    p = np.bincount(pred, minlength=num_classes)[:num_classes]
    t = np.bincount(truth, minlength=num_classes)[:num_classes]
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(t > 0, 2.0 * inter / (p + t), np.nan)
    return d[1:]


def mean_dice(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> float:
    """Mean of :func:`dice_per_class` over the foreground classes present in ``truth``."""
    d = dice_per_class(pred, truth, num_classes)
    return float(np.nanmean(d)) if np.isfinite(d).any() else float("nan")


# ---------------------------------------------------------------------------------------------
# acquisition


def _finite_map(m):
    """BalEntAcq is -inf on certain voxels: those get the smallest finite value of the map."""
    torch = _torch()
    fin = torch.isfinite(m)
    if fin.all():
        return m
    lo = m[fin].min() if fin.any() else torch.zeros((), dtype=m.dtype)
    return torch.where(fin, m, lo)


def acquire(strategy: str, model, x_pool, labmask: np.ndarray, b_slices: int, cfg, seed: int, rnd: int,
            patch: int) -> Tuple[np.ndarray, List[Tuple[int, int, int]]]:
    """Marks the next voxels to label in ``labmask`` [P, H, W] (in place). Returns the slices touched and
    the regions ``(slice, row, col)`` chosen (region strategies)."""
    torch = _torch()
    P_, H, W = labmask.shape
    select_seed, mc_seed = stream_seed(seed, "select", rnd), stream_seed(seed, "mc", rnd)
    rng = np.random.default_rng(select_seed)
    if strategy in SLICE_STRATEGIES:
        cand = np.flatnonzero(~labmask.any(axis=(1, 2)))
        if len(cand) < b_slices:
            raise ValueError(f"{strategy}: {b_slices} slices to acquire but only {len(cand)} unlabelled pool slices")
        if strategy == "random":
            picks = rng.choice(cand, size=b_slices, replace=False)
        elif strategy == "coreset":
            feats = features(model, x_pool).mean(dim=(2, 3)).double().numpy()  # [P, F]
            picks = np.asarray(A.coreset(feats, labmask.any(axis=(1, 2)), b_slices)[0])
        else:
            metric = _METRIC_OF[strategy]
            m = _finite_map(mc_maps(model, x_pool[cand], cfg.samples, [metric], mc_seed)[metric])
            s = A.slice_scores(m[None].contiguous(), axis=1)[0]  # [n_cand]: mean over each slice
            if strategy == "powerbald":
                sel = A.stochastic(s.clamp(min=0), b_slices, mode="power", temperature=1.0, seed=select_seed)
            else:
                sel = A.top_k(s, b_slices)
            picks = cand[np.asarray(sel)]
        picks = np.asarray(picks, dtype=np.int64)
        if labmask[picks].any() or len(np.unique(picks)) != len(picks):
            raise RuntimeError(f"{strategy}: acquired an already labelled or duplicate slice")
        labmask[picks] = True
        return picks, []
    # regions: fixed grid of patch x patch tiles (stride = patch), so tiles never partly overlap labels
    gh, gw = H // patch, W // patch
    b_tiles = b_slices * gh * gw
    tile_lab = labmask[:, : gh * patch, : gw * patch].reshape(P_, gh, patch, gw, patch).any(axis=(2, 4))
    free = np.flatnonzero(~tile_lab.ravel())
    if len(free) < b_tiles:
        raise ValueError(f"{strategy}: {b_tiles} regions to acquire but only {len(free)} unlabelled ones")
    if strategy == "random_regions":
        flat = rng.choice(free, size=b_tiles, replace=False)
        regions = [(int(f // (gh * gw)), int(f // gw % gh) * patch, int(f % gw) * patch) for f in flat]
    else:
        metric = _METRIC_OF[strategy]
        m = _finite_map(mc_maps(model, x_pool, cfg.samples, [metric], mc_seed)[metric]).double()
        # Labelled voxels can never win: one below the map's minimum. Not -inf or -1e30: top_regions takes
        # box means from a summed-area table, where a huge value would swamp the neighbouring tiles' sums.
        m = torch.where(torch.as_tensor(labmask), m.min() - 1.0, m)
        corners, _ = A.top_regions(m.contiguous(), b_tiles, patch)
        regions = [(int(r[0]), int(r[1]), int(r[2])) for r in np.asarray(corners)]
    for s, r, c in regions:
        if labmask[s, r : r + patch, c : c + patch].any():
            raise RuntimeError(f"{strategy}: acquired an already labelled region")
        labmask[s, r : r + patch, c : c + patch] = True
    return np.unique([s for s, _, _ in regions]), regions


# ---------------------------------------------------------------------------------------------
# auto-labelling


def autolabel_rest(model, d: SegDataset, sp: SegSplit, x_pool, labmask: np.ndarray, cfg, seed: int,
                   rnd: int) -> Dict:
    """Certified per-voxel auto-labelling of the unlabelled pool voxels (MC-mean probabilities), with one
    threshold for all voxels and with one per predicted class (``per_class=True``, result in
    ``["per_class"]``).

    The calibration set is ``seg_calib_clicks`` voxels (at most 5 %) drawn uniformly at random, without
    replacement, from the unlabelled pool voxels themselves and labelled by the humans (here: the
    withheld truth). The whole pool, clicks included, is passed as the pool (its confidences are the
    scan's candidate thresholds, so they must not depend on the draw); the clicks keep their human
    label and the others are auto-labelled. Because the clicks are a simple random sample of the voxels
    whose error is bounded, the bound needs no independence between voxels: neighbouring voxels may
    share their errors (they do). Clicks on a few separate slices would measure those slices only
    (docs/propagation.md, "Voxels and images"). The realised error is measured on the auto-labelled
    voxels against the truth."""
    rest = ~labmask & d.data_mask()  # unlabelled voxels of the image (padding is neither labelled nor data)
    mp = mc_maps(model, x_pool, cfg.samples, ["predictive_entropy"], stream_seed(seed, "autolabel_mc", rnd),
                 return_mean=True)["mean"]  # [P, C, H, W]
    probs = np.ascontiguousarray(mp.permute(0, 2, 3, 1).numpy()[rest])  # [n_rest, C]
    truth = d.labels[sp.pool][rest]
    rng = np.random.default_rng(stream_seed(seed, "calibration", rnd))
    # At most 5 % of the voxels: the bound is on the error of all pool voxels above the threshold,
    # clicks included; the auto-labelled rest's can exceed it by the factor N / (N - clicks above).
    n_clicks = min(cfg.seg_calib_clicks, len(truth) // 20)
    clicked = np.zeros(len(truth), dtype=bool)
    clicked[rng.choice(len(truth), size=n_clicks, replace=False)] = True
    calib, truth_cal = np.ascontiguousarray(probs[clicked]), truth[clicked]
    auto, truth = ~clicked, truth[~clicked]

    def summary(r) -> Dict:
        out = autolabel_summary(r, truth, n_calibration=n_clicks, keep=auto)
        acc, labels = np.asarray(r.accepted)[auto], np.asarray(r.labels)[auto]
        fg = truth[acc] > 0
        out["realised_error_foreground"] = float((labels[acc][fg] != truth[acc][fg]).mean()) if fg.any() else None
        # how many truly-foreground voxels were auto-labelled: with only the background certified, the few
        # that pass are all wrong (error 1.0), which reads alarming without the count
        out["n_foreground_accepted"] = int(fg.sum())
        # the realised error of the worst predicted class among those with >= 100 auto-labelled voxels
        per = [float((labels[acc & (labels == c)] != truth[acc & (labels == c)]).mean())
               for c in range(d.num_classes) if (acc & (labels == c)).sum() >= 100]
        out["worst_class_error"] = max(per) if per else None
        out["unit"] = "voxel"
        return out

    out = summary(P.certified_auto_label(probs, calib, truth_cal, target_error=cfg.target_error, delta=cfg.delta))
    out["n_unlabelled"] = int(rest.sum())
    r = P.certified_auto_label(probs, calib, truth_cal, target_error=cfg.target_error, delta=cfg.delta, per_class=True)
    out["per_class"] = summary(r)
    out["per_class"]["classes_certified"] = sum(k.certified for k in r.class_certificates)
    return out


# ---------------------------------------------------------------------------------------------
# one run


class CampaignError(ValueError):
    """A bad argument, data file or output folder: the campaign's cli() prints it on one line and exits
    with 2 (labelwise.campaign re-exports it)."""


def budget_count(name: str, fraction: float, n_pool: int, unit: str) -> int:
    """--budget as a count of the pool's units (items or slices), at least one (else CampaignError)."""
    budget = int(round(fraction * n_pool))
    if budget < 1:  # one unit's fraction, to 2 digits, is within 5 % of 1 / n_pool: it rounds to 1 unit
        raise CampaignError(f"{name}: --budget {fraction:g} of a {n_pool}-{unit} pool is no {unit}; pass at least "
                            f"{1.0 / n_pool:.2g} (one {unit})")
    return budget


def budget_and_batch(d: SegDataset, sp: SegSplit, cfg) -> Tuple[int, int, int]:
    """(slices to acquire, slices per round, rounds)."""
    n_pool = len(sp.pool)
    budget = budget_count(d.name, cfg.budget_fraction, n_pool, "slice")
    b = cfg.batch.get(d.name, min(cfg.seg_batch_slices, budget))  # the default never exceeds a small budget
    if cfg.seg_max_rounds:
        budget = min(budget, cfg.seg_max_rounds * b)  # --quick without an explicit --budget: 2 rounds
    free = n_pool - len(sp.init)
    if budget > free:
        raise ValueError(f"{d.name}: budget {budget} slices is larger than the unlabelled pool ({free} slices after "
                         f"a seed set of {len(sp.init)})")
    if b < 1 or b > max(budget, 1):
        raise ValueError(f"{d.name}: batch size {b} slices must be in [1, budget={budget}]")
    return budget, b, math.ceil(budget / b)


def _setting_key(d: SegDataset, cfg) -> tuple:
    return (d.name, d.image.shape, float(d.image[:, ::7, ::7].sum()), cfg.seg_steps, cfg.seg_width, cfg.seg_lr,
            cfg.seg_batch, cfg.dropout, cfg.seg_init_slices)


def full_data_dice(d: SegDataset, sp: SegSplit, cfg, seed: int, x_pool, x_test) -> float:
    key = _setting_key(d, cfg) + (seed,)
    if key not in _FULL_CACHE:
        # the ceiling, not a peer: twice the steps on twice the slices per step of the campaign's models
        model = train(d, x_pool, d.labels[sp.pool], cfg, stream_seed(seed, "train_full"), progress=True,
                      steps=2 * cfg.seg_steps, batch=2 * cfg.seg_batch)
        _FULL_CACHE[key] = mean_dice(predict(model, x_test), d.labels[sp.test], d.num_classes)
    return _FULL_CACHE[key]


def run_one(d: SegDataset, strategy: str, seed: int, cfg, result_cls):
    """One campaign run; returns ``result_cls`` (campaign.RunResult) with Dice in ``accuracy`` and
    labelled voxel counts in ``labeled``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"{strategy}: not a segmentation strategy ({NOT_APPLICABLE.get(strategy, 'unknown')})")
    validate(d)
    sp = split(d, cfg, seed)
    budget, b, rounds = budget_and_batch(d, sp, cfg)
    C = d.num_classes
    H, W = d.image.shape[1:]
    patch = cfg.seg_patch
    t0 = time.perf_counter()
    x_pool, x_test = inputs(d, sp.pool), inputs(d, sp.test)
    y_pool, y_test = d.labels[sp.pool], d.labels[sp.test]
    n_vox = len(sp.pool) * H * W
    labmask = np.zeros((len(sp.pool), H, W), dtype=bool)
    labmask[sp.init] = True
    counts, dices, per_class, touched = [], [], [], []
    auto10: Dict = {}
    try:
        from tqdm.auto import tqdm

        bar = tqdm(total=rounds + 1, desc=f"  {d.name}/{strategy}/{seed} rounds", unit="round", leave=False,
                   disable=None)
    except ImportError:  # pragma: no cover
        bar = None
    for rnd in range(rounds + 1):
        rows = np.flatnonzero(labmask.any(axis=(1, 2)))
        target = np.where(labmask[rows], y_pool[rows], -1)
        model = train(d, x_pool[rows], target, cfg, stream_seed(seed, "train", rnd))
        pred = predict(model, x_test)
        counts.append(int(labmask.sum()))
        dices.append(mean_dice(pred, y_test, C))
        per_class.append([None if not np.isfinite(v) else float(v) for v in dice_per_class(pred, y_test, C)])
        touched.append(int(len(rows)))
        if not auto10 and counts[-1] >= 0.1 * n_vox:
            auto10 = autolabel_rest(model, d, sp, x_pool, labmask, cfg, seed, rnd)
            auto10["labeled_fraction"] = counts[-1] / n_vox
        if bar is not None:
            bar.set_postfix_str(f"dice {dices[-1]:.3f}")
            bar.update(1)
        if rnd == rounds:
            break
        take = min(b, budget - rnd * b)
        acquire(strategy, model, x_pool, labmask, take, cfg, seed, rnd, patch)
    if bar is not None:
        bar.close()
    auto = autolabel_rest(model, d, sp, x_pool, labmask, cfg, seed, rounds + 1)
    full = full_data_dice(d, sp, cfg, seed, x_pool, x_test)
    extra = {"metric_name": "mean foreground Dice", "dice_per_class": per_class,
             "class_names": list(d.class_names), "slices_touched": touched,
             "pool_slices": int(len(sp.pool)), "test_slices": int(len(sp.test)),
             "seed_slices": int(len(sp.init)),
             "slice_shape": [int(H), int(W)], "batch_slices": int(b), "patch": int(patch),
             "budget_slices": int(budget), "width": int(cfg.seg_width), "steps": int(cfg.seg_steps)}
    return result_cls(d.name, strategy, seed, counts, dices, full, n_vox, time.perf_counter() - t0, auto, auto10,
                      metric="dice", extra=extra)


# ---------------------------------------------------------------------------------------------
# the uncertainty overlay


def overlay(d: SegDataset, cfg, seed: int, out: str) -> Optional[str]:
    """``overlay_<name>.png`` for one pool slice: image / truth / prediction / BALD / BalEntAcq / regions,
    from the model that the ``bald_regions`` run of ``seed`` trains on its seed set (round 0); the slice is
    the one where that run's first acquisition puts the most regions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Rectangle

    sp = split(d, cfg, seed)
    budget, b, _ = budget_and_batch(d, sp, cfg)
    x_pool = inputs(d, sp.pool)
    H, W = d.image.shape[1:]
    labmask = np.zeros((len(sp.pool), H, W), dtype=bool)
    labmask[sp.init] = True
    rows = np.flatnonzero(labmask.any(axis=(1, 2)))
    model = train(d, x_pool[rows], np.where(labmask[rows], d.labels[sp.pool][rows], -1), cfg,
                  stream_seed(seed, "train", 0))
    _, regions = acquire("bald_regions", model, x_pool, labmask.copy(), min(b, budget), cfg, seed, 0, cfg.seg_patch)
    per_slice = np.bincount([s for s, _, _ in regions], minlength=len(sp.pool))
    s = int(np.argmax(per_slice))
    # the maps the acquisition saw: slice s was item s of the pool (same seed, same dropout masks)
    res = mc_maps(model, x_pool[s : s + 1], cfg.samples, ["bald", "balentacq"], stream_seed(seed, "mc", 0),
                  return_mean=True, index_offset=s)
    img = d.image[sp.pool[s]]
    truth = d.labels[sp.pool[s]]
    pred = res["mean"][0].argmax(0).numpy()
    bald = res["bald"][0].numpy()
    bal = _finite_map(res["balentacq"][0]).numpy()
    lo, hi = np.percentile(bal, [2, 98])
    C = d.num_classes
    colors = plt.get_cmap("tab10")(np.arange(C) % 10)
    cmap = ListedColormap(colors)
    fig, axes = plt.subplots(1, 6, figsize=(24, 4.6))

    def seg_panel(ax, lab, title):
        ax.imshow(img, cmap="gray")
        ax.imshow(np.ma.masked_where(lab == 0, lab), cmap=cmap, vmin=-0.5, vmax=C - 0.5, alpha=0.5,
                  interpolation="nearest")
        ax.set_title(title)

    axes[0].imshow(img, cmap="gray")
    axes[0].set_title(f"T1, pool slice {int(sp.pool[s])}")
    seg_panel(axes[1], truth, "truth")
    seg_panel(axes[2], pred, f"prediction (seed set: {len(sp.init)} slices)")
    for ax, m, title, rng_ in ((axes[3], bald, "BALD (nats)", None),
                               (axes[4], bal, "BalEntAcq (2-98th pct)", (lo, hi))):
        im = ax.imshow(m if rng_ is None else np.clip(m, *rng_), cmap="magma")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    axes[5].imshow(img, cmap="gray")
    mine = [(r, c) for ss, r, c in regions if ss == s]
    for r, c in mine:
        for ax in (axes[3], axes[5]):
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), cfg.seg_patch, cfg.seg_patch, fill=False, edgecolor="cyan",
                                   linewidth=1.2))
    axes[5].set_title(f"chosen regions ({len(mine)} of {len(regions)} this round)")
    for ax in axes:
        ax.axis("off")
    handles = [Rectangle((0, 0), 1, 1, color=colors[c]) for c in range(1, C)]
    fig.legend(handles, d.class_names[1:], loc="lower center", ncol=min(C - 1, 9), frameon=False)
    name = f"overlay_{d.name}.png"
    fig.savefig(os.path.join(out, name), dpi=100, bbox_inches="tight")
    plt.close(fig)
    return name
