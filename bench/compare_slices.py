"""Slice-to-slice mask propagation on the Colin27 T1 (Debian's mricron-data): labelwise's
propagate_slices (C++, sparse Cholesky per slice) against the NumPy / SciPy (SuperLU) formulation it
replaced (tests/python/reference.py), same inputs, same run.

Colin27 downsampled by 2 (91 x 109 x 91), the 9 AAL lobe classes, every 10th axial slice annotated
(~10 %). Prints the best of `--repeats` wall times of each, whether the masks agree, and on the
slices that were not annotated: the voxel accuracy, the mean Dice of the 8 lobes (classes 1-8) and the
mean confidence on wrong and on right voxels (the figures docs/propagation.md quotes).

    PYTHONPATH=python:tests/python .venv/bin/python bench/compare_slices.py
"""

import argparse
import os
import platform
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "python"))
from labelwise import data  # noqa: E402
from labelwise import propagation as P  # noqa: E402
from reference import propagate_slices_ref  # noqa: E402
from _timing import best_of  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    t1, lab = data.colin27()
    v = np.ascontiguousarray(t1.data[::2, ::2, ::2], dtype=np.float64)
    L = np.ascontiguousarray(lab.data[::2, ::2, ::2], dtype=np.int64)
    Z = v.shape[2]
    ann = list(range(4, Z, 10))
    C = len(data.AAL_LOBES)
    t_lw, (mask, conf) = best_of(lambda: P.propagate_slices(v, L, ann, axis=2, num_classes=C), args.repeats)
    t_ref, (mask_ref, conf_ref) = best_of(lambda: propagate_slices_ref(v, L, ann, axis=2, num_classes=C),
                                          args.repeats)
    rest = np.ones(Z, bool)
    rest[ann] = False
    m, t, c = mask[:, :, rest], L[:, :, rest], conf[:, :, rest]
    acc = (m == t).mean()
    dice = np.mean([2 * ((m == k) & (t == k)).sum() / ((m == k).sum() + (t == k).sum()) for k in range(1, C)])
    same = (mask == mask_ref).mean()
    print(f"# slice propagation, Colin27 {v.shape[0]} x {v.shape[1]} x {v.shape[2]}, {len(ann)} of {Z} axial "
          f"slices annotated, {C} classes; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f}")
    print("| implementation | best of %d (s) |" % args.repeats)
    print("|---|---:|")
    print(f"| labelwise propagate_slices | {t_lw:.3f} |")
    print(f"| NumPy / SciPy SuperLU reference | {t_ref:.3f} |")
    print(f"\nspeed-up {t_ref / t_lw:.1f}x; masks equal on {100 * same:.3f} % of the voxels; "
          f"max |confidence difference| {np.abs(conf - conf_ref).max():.2e}; "
          f"voxel accuracy on the other slices {100 * acc:.1f} %, mean lobe Dice {dice:.3f}, mean confidence "
          f"{c[m != t].mean():.3f} on wrong voxels and {c[m == t].mean():.3f} on right ones")


if __name__ == "__main__":
    main()
