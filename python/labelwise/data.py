"""Loading medical volumes: your NIfTI / NumPy files, and the real MRI that Debian ships.

* :func:`load_volume` reads a volume from ``.nii`` / ``.nii.gz`` (through nibabel) or ``.npy`` / ``.npz``.
* :func:`colin27` returns the Colin27 ("ch2") T1 MRI with the hand-drawn AAL atlas labels from
  Debian's ``mricron-data`` package (``apt-get install mricron-data``), 181 x 217 x 181 voxels of 1 mm,
  in the same space. Nothing is downloaded.
* :func:`aal_lobes` maps the 116 AAL regions to 9 coarse classes (background, frontal, insula,
  limbic/cingulate, occipital, parietal, subcortical, temporal, cerebellum), by the first digit of
  the AAL region code — a segmentation task with few, anatomically meaningful classes.

Sources and licences: Colin27 average brain (Holmes et al., J Comput Assist Tomogr 1998; © Montreal
Neurological Institute, under its own terms) and the AAL atlas (Tzourio-Mazoyer et al., NeuroImage
2002; © GIN Caen, distributed by its authors under the GNU GPL), as redistributed with MRIcron in
Debian's ``mricron-data``; details in the README's "Data and licences".
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ._arrays import check_bool

__all__ = ["MRICRON_TEMPLATES", "AAL_LOBES", "Volume", "load_volume", "aal_region_codes", "aal_lobes", "colin27",
           "class_names", "make_output_folder", "make_output_folder_or_exit"]

MRICRON_TEMPLATES = "/usr/share/mricron/templates"

#: Coarse AAL classes: index -> name (0 = background), keyed by the first digit of the AAL code.
AAL_LOBES: Tuple[str, ...] = ("background", "frontal", "insula", "limbic", "occipital", "parietal",
                              "subcortical", "temporal", "cerebellum")
_LOBE_OF_DIGIT = {2: 1, 3: 2, 4: 3, 5: 4, 6: 5, 7: 6, 8: 7, 9: 8}


@dataclass
class Volume:
    data: np.ndarray  #: the voxels, as stored (use .astype for computation)
    affine: np.ndarray  #: 4 x 4 voxel-to-world matrix (identity for NumPy files)
    spacing: Tuple[float, ...]  #: voxel size in mm (1.0 for NumPy files)
    path: str


def load_volume(path: "str | os.PathLike", key: Optional[str] = None) -> Volume:
    """A 2D / 3D / 4D volume from NIfTI (``.nii``, ``.nii.gz``; needs ``pip install nibabel``) or NumPy
    (``.npy``; ``.npz`` with ``key``, or the file's only array). ``spacing`` has one entry per axis (1.0
    for NumPy files). Errors: ``TypeError`` for a path that is not a str / os.PathLike,
    ``FileNotFoundError``, ``ValueError`` for other file types, missing keys and a ``key`` for a file
    that holds one array (.nii, .npy), ``RuntimeError`` for NIfTI without nibabel."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"load_volume: path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load_volume: no such file: {path}")
    low = path.lower()
    if key is not None and not low.endswith(".npz"):
        raise ValueError(f"load_volume: key={key!r} applies to .npz archives only; {path} holds one array")
    if low.endswith((".nii", ".nii.gz")):
        try:
            import nibabel as nib
        except ImportError as exc:
            raise RuntimeError("load_volume: reading NIfTI needs nibabel (pip install nibabel)") from exc
        img = nib.load(path)
        return Volume(np.asarray(img.dataobj), np.asarray(img.affine, dtype=np.float64),
                      tuple(float(z) for z in img.header.get_zooms()), path)
    if low.endswith(".npy"):
        data = np.load(path)
        return Volume(data, np.eye(4), (1.0,) * data.ndim, path)
    if low.endswith(".npz"):
        with np.load(path) as f:
            if key is None:
                if len(f.files) != 1:
                    raise ValueError(f"load_volume: {path} holds {sorted(f.files)}; pass key=")
                key = f.files[0]
            if key not in f.files:
                raise ValueError(f"load_volume: {path} has no array '{key}' (has {sorted(f.files)})")
            data = f[key]
            return Volume(data, np.eye(4), (1.0,) * data.ndim, path)
    raise ValueError(f"load_volume: unsupported file type {path!r}; expected .nii, .nii.gz, .npy or .npz")


def aal_region_codes(templates: str = MRICRON_TEMPLATES) -> Dict[int, Tuple[str, int]]:
    """AAL label value -> (region name, AAL code), from mricron-data's aal.nii.txt."""
    path = os.path.join(templates, "aal.nii.txt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: install Debian's mricron-data (apt-get install mricron-data)")
    out = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[0].isdigit():
                out[int(parts[0])] = (parts[1], int(parts[2]))
    return out


def aal_lobes(labels: np.ndarray, templates: str = MRICRON_TEMPLATES) -> np.ndarray:
    """Maps AAL region labels (0 = background) to the 9 coarse classes of :data:`AAL_LOBES` (uint8)."""
    codes = aal_region_codes(templates)
    lut = np.zeros(256, dtype=np.uint8)
    for value, (_, code) in codes.items():
        lut[value] = _LOBE_OF_DIGIT[code // 1000]
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"aal_lobes: AAL labels must be integers, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError("aal_lobes: AAL labels must be in [0, 255]")
    known = np.zeros(256, dtype=bool)
    known[0] = True
    known[list(codes)] = True
    unknown = np.setdiff1d(np.unique(labels), np.flatnonzero(known))
    if unknown.size:
        raise ValueError(f"aal_lobes: label values {unknown[:5].tolist()} are not AAL regions (aal.nii.txt)")
    return lut[labels.astype(np.int64)]


def _check_templates(templates: Any) -> None:
    if not isinstance(templates, (str, os.PathLike)):
        raise TypeError(f"templates: expected a folder path (str or os.PathLike), got {type(templates).__name__}")


def colin27(templates: str = MRICRON_TEMPLATES, *, lobes: bool = True) -> Tuple[Volume, Volume]:
    """(T1 image, labels): Colin27 T1 (float32) and its AAL labels — 9 lobe classes by default, the
    116 regions with ``lobes=False`` — on the same 181 x 217 x 181 grid of 1 mm voxels."""
    lobes = check_bool(lobes, "lobes")
    _check_templates(templates)
    t1_path = os.path.join(templates, "ch2.nii.gz")
    aal_path = os.path.join(templates, "aal.nii.gz")
    for p in (t1_path, aal_path):
        if not os.path.exists(p):
            raise FileNotFoundError(f"{p} not found: install Debian's mricron-data (apt-get install mricron-data)")
    t1 = load_volume(t1_path)
    lab = load_volume(aal_path)
    if t1.data.shape != lab.data.shape or not np.allclose(t1.affine, lab.affine):
        raise ValueError("colin27: the T1 and AAL volumes are not on the same grid")
    t1.data = t1.data.astype(np.float32)
    if lobes:
        lab.data = aal_lobes(lab.data, templates)
    return t1, lab


def class_names(templates: str = MRICRON_TEMPLATES, *, lobes: bool = True) -> List[str]:
    """Names of the classes that :func:`colin27` (same arguments) returns, index = class."""
    _check_templates(templates)
    if check_bool(lobes, "lobes"):
        return list(AAL_LOBES)
    codes = aal_region_codes(templates)
    return ["background"] + [codes[v][0] for v in sorted(codes)]


def make_output_folder(path: "str | os.PathLike") -> None:
    """Makes ``path`` (and its parents) if needed and proves that a file can be written there, so that a
    program can refuse an unusable output folder before its long work instead of after it. Raises
    ``OSError`` (``NotADirectoryError`` for an existing file) naming the path."""
    path = os.fsdecode(os.fspath(path))
    if not path:
        raise OSError("the output folder path is empty")
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{path}: exists and is not a folder")
    try:
        os.makedirs(path, exist_ok=True)
        # a probe file of its own (never a file of the user's), removed again
        fd, probe = tempfile.mkstemp(prefix=".labelwise-write-test-", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise OSError(f"{path}: cannot be written ({e.strerror})") from None


def make_output_folder_or_exit(parser: Any, path: "str | os.PathLike", flag: str = "--out") -> None:
    """:func:`make_output_folder` for a command-line program: an unusable folder ends the program
    through ``parser.error`` (an ``argparse.ArgumentParser``; exit status 2) naming ``flag``."""
    try:
        make_output_folder(path)
    except OSError as e:
        parser.error(f"{flag} {e}")
