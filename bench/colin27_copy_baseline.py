"""A label-copy baseline for the Colin27 segmentation campaign (docs/campaign.md, "Limits").

Each test slice of the campaign's split (`segcampaign.split`, the default settings) takes the labels of
the nearest slice that has labels: (a) the nearest pool slice, every pool slice labelled (what the
full-data U-Net sees), (b) the nearest slice of the seed set plus 16 random pool slices (the labelled
slices of the `random` strategy at the end of its budget), (c) the nearest seed-set slice. Prints the
campaign's metric (mean foreground Dice over the test slices) per seed. No model, no training: what a
neighbouring slice alone explains of the test score.

    PYTHONPATH=python .venv/bin/python bench/colin27_copy_baseline.py
"""

import numpy as np

from labelwise import campaign as CA
from labelwise import segcampaign as SEG


def main():
    cfg = CA.Config(datasets=["colin27"], strategies=["random"], seeds=[0, 1, 2])
    d = SEG.load_colin27(cfg.seg_downsample, cfg.seg_slice_stride, cfg.seg_patch)
    C = d.num_classes
    print("| seed | test / pool slices | (a) nearest pool slice | (b) nearest of seed set + 16 random | "
          "(c) nearest seed-set slice |\n|---|---|---|---|---|")
    for seed in cfg.seeds:
        sp = SEG.split(d, cfg, seed)
        truth = d.labels[sp.test]

        def copy_from(slices):
            slices = np.sort(np.asarray(slices))
            return d.labels[[slices[np.argmin(np.abs(slices - t))] for t in sp.test]]

        rest = np.setdiff1d(np.arange(len(sp.pool)), sp.init)
        labelled = np.concatenate([sp.init, np.random.default_rng([seed, 99]).choice(rest, 16, replace=False)])
        a = SEG.mean_dice(copy_from(sp.pool), truth, C)
        b = SEG.mean_dice(copy_from(sp.pool[labelled]), truth, C)
        c = SEG.mean_dice(copy_from(sp.pool[sp.init]), truth, C)
        print(f"| {seed} | {len(sp.test)} / {len(sp.pool)} | {a:.3f} | {b:.3f} | {c:.3f} |")


if __name__ == "__main__":
    main()
