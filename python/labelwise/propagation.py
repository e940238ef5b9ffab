"""Auto-labelling with a certified error rate, and detection of likely wrong human labels.

Humans label a small calibration set; the model labels the pool items it is confident about.
:func:`certified_auto_label` picks the confidence threshold so that, with probability at least
``1 - delta`` over the calibration draw, the expected error rate of an auto-labelled item (the
population rate among items at or above the threshold; the realised rate on a small accepted set
scatters around it binomially) is below ``target_error`` (Clopper–Pearson bounds in a
Learn-then-Test fixed-sequence scan; the guarantee, its assumptions and its proof are in
``docs/propagation.md``). :func:`label_issues` flags labels that
the model confidently contradicts (confident learning, Northcutt et al., JAIR 2021).

Shape contract of :func:`certified_auto_label`
    pool_probs : ``[N, C]`` or ``[N, C, *spatial]`` probabilities (``class_axis`` names the class
        axis), float32 / float64, numpy or torch on the CPU (any strides; nothing is copied).
    calib_probs : ``[M, C, *spatial']``, same rank, class axis and C as ``pool_probs``.
    calib_labels : ``calib_probs`` without its class axis (``[M]`` or ``[M, *spatial']``), integers in
        ``[0, C)`` or ``-1`` (not labelled: skipped, e.g. the unclicked voxels of sparse annotations).
    pool_confidence / calib_confidence (optional, both or neither): higher = more confident, one per
        unit (``pool_probs`` without its class axis; with ``unit="image"`` also ``[N]`` / ``[M]``).
        Pass a negated uncertainty metric, e.g. ``-labelwise.uncertainty.bald(mc_samples)``.
    returns : :class:`AutoLabelResult`; its ``accepted`` (bool) and ``labels`` (int64, ``-1`` where not
        accepted) arrays come back in the caller's framework (numpy or torch).

Errors: ``ValueError`` for NaN / Inf / negative / unnormalised probabilities, NaN confidences, labels
below -1 or >= C, wrong shapes, ``target_error`` / ``delta`` outside (0, 1), empty inputs;
``TypeError`` for non-float probabilities, non-integer labels, and CUDA arrays (certified_auto_label,
certify_threshold, label_issues and label spreading / propagation run on the CPU; their CUDA path is not
implemented yet — pass ``x.cpu()``; knn_graph runs on CUDA, propagate_slices copies GPU arrays to the
host). A calibration set too small to
certify anything is *not* an error: the result has ``certified=False``, accepts nothing and says why
in ``reason``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import numpy as np

from . import _arrays, _core
from . import uncertainty as _uncertainty

__all__ = [
    "AutoLabelResult",
    "ThresholdCertificate",
    "LabelIssues",
    "certified_auto_label",
    "certify_threshold",
    "label_issues",
    "clopper_pearson_upper",
    "beta_quantile",
    "regularized_incomplete_beta",
    "binomial_cdf",
    "min_certifiable_count",
    "SCORES",
]

#: Confidence scores computed from ``pool_probs`` / ``calib_probs`` by name: the maximum class
#: probability, or a single-prediction uncertainty metric (negated: higher = more confident).
SCORES = ("max_prob",) + tuple(m for m in _uncertainty.METRICS if not _core.metric_needs_samples(m))



def regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularized incomplete beta function: the CDF of Beta(a, b) at x (float64).
    x in [0, 1]; a, b > 0 with a + b <= 2**50 (beyond, float64 has no correct digit): else ValueError."""
    return _core.regularized_incomplete_beta(_arrays.check_real(x, "x"), _arrays.check_real(a, "a"), _arrays.check_real(b, "b"))


def beta_quantile(p: float, a: float, b: float) -> float:
    """The p-quantile of Beta(a, b): the x with I_x(a, b) = p (like scipy.special.betaincinv).
    p in [0, 1]; a, b > 0 with a + b <= 2**50: else ValueError."""
    return _core.beta_quantile(_arrays.check_real(p, "p"), _arrays.check_real(a, "a"), _arrays.check_real(b, "b"))


def binomial_cdf(k: int, n: int, theta: float) -> float:
    """P(Binomial(n, theta) <= k). 0 <= n <= 2**50, theta in [0, 1]: else ValueError."""
    return _core.binomial_cdf(_arrays.check_int64(k, "k"), _arrays.check_int64(n, "n", 0),
                              _arrays.check_real(theta, "theta"))


def clopper_pearson_upper(errors: int, n: int, delta: float) -> float:
    """Exact (Clopper–Pearson) one-sided upper confidence bound at level 1 - delta on an error rate
    after ``errors`` wrong out of ``n``: the (1 - delta) quantile of Beta(errors + 1, n - errors).
    0 <= errors <= n <= 2**50, delta in (0, 1): else ValueError."""
    return _core.clopper_pearson_upper(_arrays.check_int64(errors, "errors", 0),
                                       _arrays.check_int64(n, "n", 0), _arrays.check_real(delta, "delta"))


def min_certifiable_count(target_error: float, delta: float) -> int:
    """The smallest calibration set (all right) whose Clopper–Pearson bound reaches target_error:
    ceil(ln delta / ln(1 - target_error))."""
    return _core.min_certifiable_count(_arrays.check_real(target_error, "target_error"), _arrays.check_real(delta, "delta"))


@dataclass(frozen=True)
class ThresholdCertificate:
    """What the calibration scan found. Accept units whose confidence is ``>= threshold``."""

    certified: bool
    #: accept confidence >= threshold; NaN when nothing is certified (then nothing is accepted)
    threshold: float
    #: Clopper–Pearson upper bound of the error among calibration units at the threshold
    #: (<= target_error); NaN when nothing is certified. The promise is target_error, not this number.
    bound: float
    n_calibration: int  #: labelled calibration units used
    n_calibration_accepted: int  #: calibration units at or above the threshold
    calibration_errors: int  #: wrong ones among them
    min_calibration: int  #: smallest calibration set that can certify anything at (target_error, delta)
    scan_start: int  #: j0 = max(min_calibration, the scan_start asked for)
    #: the pool units that the scan's first test accepts (0 when no test ran): every pool unit down to the next
    #: lower calibration score below the first candidate tested (candidates between two calibration scores
    #: share J and K and are tested once)
    start_rank: int
    target_error: float
    delta: float
    reason: str  #: empty when certified; otherwise why nothing could be certified

    def accept(self, confidence: Any) -> Any:
        """Boolean mask ``confidence >= threshold`` (all False when not certified), in confidence's framework
        (numpy for lists and other buffers; a non-numeric ``confidence`` is a TypeError naming it)."""
        # threshold is NaN when nothing is certified, and x >= NaN is False for every x.
        return _arrays.as_array(confidence, "confidence") >= self.threshold


@dataclass(frozen=True)
class AutoLabelResult(ThresholdCertificate):
    """:class:`ThresholdCertificate` plus the pool's decisions."""

    accepted: Any = None  #: bool mask, [N] / [N, *spatial] (unit "item") or [N] (unit "image")
    labels: Any = None  #: int64 [N] / [N, *spatial]: arg-max class where accepted, -1 elsewhere
    coverage: float = 0.0  #: fraction of pool units accepted
    n_pool: int = 0  #: pool units (items, voxels or images)
    n_accepted: int = 0
    unit: str = "item"
    score: str = "max_prob"  #: the confidence used ("given" for caller-supplied confidences)
    #: per_class=True only: one certificate per predicted class (index = class), each at delta / C'
    #: (C' = classes the pool predicts);
    #: the fields above then summarise them (``threshold`` is NaN: the thresholds are per class)
    class_certificates: Tuple[ThresholdCertificate, ...] = ()

    def accept(self, confidence: Any) -> Any:
        """As :meth:`ThresholdCertificate.accept`; with ``per_class=True`` the threshold depends on the
        predicted class: use ``class_certificates[c].accept(...)`` on the units predicted as class c."""
        if self.class_certificates:
            raise ValueError("accept: this result has one threshold per predicted class (per_class=True); use "
                             "class_certificates[c].accept(confidence) on the units predicted as class c")
        return super().accept(confidence)


@dataclass(frozen=True)
class LabelIssues:
    """Likely wrong labels, most suspicious first."""

    indices: Any  #: int64 [n_issues]: item indices, lowest self-confidence first
    self_confidence: Any  #: [n_issues] probability the model gives the item's given label
    thresholds: Any  #: float64 [C]: per-class thresholds t_j (NaN for a class nobody is labelled with)
    confident_joint: Any  #: int64 [C, C]: counts C[given label][confident true label]


def _empty(like: Any, shape, dtype: str) -> Any:
    """An uninitialised CPU array of `shape` in like's framework (torch stays torch; all else numpy)."""
    if _arrays.framework_name(like) == "torch":
        import torch

        tdtype = {"bool": torch.bool, "int64": torch.int64, "float64": torch.float64, "like": like.dtype}[dtype]
        return torch.empty(tuple(shape), dtype=tdtype, device="cpu")
    if dtype == "like":
        kind, _ = _arrays.device_of(like)
        if kind in (_arrays._CPU, _arrays._CUDA_HOST):
            dt = like.dtype if isinstance(like, np.ndarray) else np.from_dlpack(like).dtype
        else:
            dt = np.float64
        return np.empty(tuple(shape), dtype=dt)
    return np.empty(tuple(shape), dtype=np.dtype(dtype))


def _renamed(exc: Exception, name: str) -> Exception:
    msg = str(exc)
    if msg.startswith("x: "):
        msg = f"{name}: " + msg[3:].replace(" of x ", " ")
    return type(exc)(msg)


def _score_confidence(name: str, probs: Any, class_axis: int, what: str) -> Any:
    """-score of probabilities `probs` (argument `what`), with this function's rules and words: float32 /
    float64 probabilities only (the metrics also take float16 / bfloat16 and logits, this function not)."""
    dtype = _arrays.dtype_str(_arrays.as_array(probs, what))
    if dtype not in ("float32", "float64"):
        raise TypeError(f"{what}: expected dtype float32 or float64 (probabilities), got {dtype}")
    try:
        s = _uncertainty.score(probs, (name,), sample_axis=None, class_axis=class_axis)[name]
    except (ValueError, TypeError) as exc:
        renamed = _renamed(exc, what)
        raise type(renamed)(str(renamed).split('; pass input="logits"')[0]) from None
    return -s


def certified_auto_label(
    pool_probs: Any,
    calib_probs: Any,
    calib_labels: Any,
    *,
    target_error: float,
    delta: float,
    score: Optional[str] = None,
    pool_confidence: Any = None,
    calib_confidence: Any = None,
    class_axis: int = 1,
    unit: str = "item",
    max_voxel_error: Optional[float] = None,
    scan_start: int = 0,
    per_class: bool = False,
) -> AutoLabelResult:
    """Auto-labels the pool items whose confidence passes a threshold certified on the calibration set.

    Guarantee (``docs/propagation.md``): if the calibration units are i.i.d. draws of the distribution
    the pool units come from and the error rate among accepted units does not fall when the threshold
    is lowered, then with probability >= ``1 - delta`` over the calibration draw, the expected error
    rate of an auto-labelled unit is below ``target_error``. The candidate thresholds are the pool's
    own confidences, tested from the most confident down.

    score: ``"max_prob"`` (default), or the name of a single-prediction uncertainty metric of
        :mod:`labelwise.uncertainty` (``"margin"``, ``"predictive_entropy"``, ...; computed from the
        probabilities and negated). For sample-based metrics (BALD, BalEntAcq, ...) pass the negated
        scores as ``pool_confidence`` / ``calib_confidence`` instead (then leave ``score`` unset).
    unit: ``"item"`` — every entry of the label map is accepted or not on its own (an item of
        ``[N, C]``, a voxel of ``[N, C, D, H, W]``; for voxels, draw the calibration voxels uniformly at
        random from the pool voxels to be auto-labelled, see ``docs/propagation.md``, "Voxels and
        images"; label maps more than half labelled warn, ``RuntimeWarning``); ``"image"`` — each image
        (index along the first label-map axis) as a whole: its confidence is the mean of its voxel
        confidences, and a calibration image counts as wrong when more than ``max_voxel_error`` (required, in [0, 1)) of its labelled voxels
        are mislabelled.
    scan_start: j0, instead of the minimum (:func:`min_certifiable_count`): the first test sees at least
        ``max(j0, min(2 * j0, n // 2))`` calibration units, so a larger j0 tolerates a few more errors
        among the most confident; see ``docs/propagation.md``.
    per_class: ``unit="item"`` only. Certify every predicted (arg-max) class on its own, at
        ``delta / C'`` each (C' = classes the pool predicts), with its own threshold: then with
        probability >= ``1 - delta`` the error
        rate among the units auto-labelled c is below ``target_error`` for every class c at once —
        not just overall, where a dominant easy class (background) can hide a rare one that is mostly
        wrong. The thresholds are in ``class_certificates``. The guarantee then needs each class's
        error rate among accepted units not to fall when its threshold is lowered.
    """
    class_axis = _arrays.check_int(class_axis, "class_axis", -64, 63)  # range against the rank in C++
    pool_probs = _arrays.as_array(pool_probs, "pool_probs")
    calib_probs = _arrays.as_array(calib_probs, "calib_probs")
    calib_labels = _arrays.as_labels(calib_labels, "calib_labels")
    if pool_confidence is not None or calib_confidence is not None:
        if score is not None:
            raise ValueError("score: pass either score=<name> or pool_confidence/calib_confidence arrays, not both")
        if pool_confidence is None or calib_confidence is None:
            missing = "pool_confidence" if pool_confidence is None else "calib_confidence"
            raise ValueError(
                f"{missing}: pass both pool_confidence and calib_confidence, or neither "
                "(then score= decides, default the maximum class probability)"
            )
        score_name = "given"
        pconf = _arrays.as_array(pool_confidence, "pool_confidence")
        cconf = _arrays.as_array(calib_confidence, "calib_confidence")
    else:
        score_name = "max_prob" if score is None else score
        pconf = cconf = None
        if score_name != "max_prob":
            if score_name not in _uncertainty.METRICS:
                raise ValueError(f"score: expected one of {', '.join(SCORES)}, or pool_confidence/calib_confidence "
                                 f"arrays; got {score_name!r}")
            if _core.metric_needs_samples(score_name):
                raise ValueError(
                    f"score: '{score_name}' needs MC / ensemble samples, which pool_probs does not have; compute it "
                    f"yourself and pass pool_confidence=-labelwise.uncertainty.{score_name}(pool_samples) and "
                    f"calib_confidence=-labelwise.uncertainty.{score_name}(calib_samples)"
                )
            pconf = _score_confidence(score_name, pool_probs, class_axis, "pool_probs")
            cconf = _score_confidence(score_name, calib_probs, class_axis, "calib_probs")
    if unit not in ("item", "image"):
        raise ValueError(f"unit: expected 'item' or 'image', got {unit!r}")
    if unit == "item" and len(calib_labels.shape) >= 2:
        _warn_if_dense_voxel_calibration(calib_labels)
    pcap = _arrays.capsule(pool_probs)
    acc_shape, lab_shape = _core.auto_label_shapes(pcap, class_axis, unit)
    accepted = _empty(pool_probs, acc_shape, "bool")
    labels = _empty(pool_probs, lab_shape, "int64")
    r = _core.certified_auto_label(
        pcap,
        _arrays.capsule(calib_probs),
        _arrays.capsule(calib_labels),
        _arrays.capsule(accepted, writable=True),
        _arrays.capsule(labels, writable=True),
        _arrays.check_real(target_error, "target_error"),
        _arrays.check_real(delta, "delta"),
        class_axis,
        unit,
        None if max_voxel_error is None else _max_voxel_error(max_voxel_error),
        None if pconf is None else _arrays.capsule(pconf),
        None if cconf is None else _arrays.capsule(cconf),
        _arrays.check_int64(scan_start, "scan_start"),  # an int64; its range is checked in C++
        _arrays.check_bool(per_class, "per_class"),
    )
    classes = tuple(ThresholdCertificate(**c) for c in r.pop("class_certificates"))
    return AutoLabelResult(accepted=accepted, labels=labels, unit=unit, score=score_name,
                           class_certificates=classes, **r)


def _max_voxel_error(value: Any) -> float:
    """A given max_voxel_error: a real number; NaN is refused by name here (the core reads NaN as "not
    set" and would say it is missing)."""
    v = _arrays.check_real(value, "max_voxel_error")
    if math.isnan(v):
        raise ValueError("max_voxel_error: expected the fraction of mislabelled voxels above which a calibration "
                         "image counts as wrong, in [0, 1); got nan")
    return v


def _warn_if_dense_voxel_calibration(calib_labels: Any) -> None:
    """unit="item" on label maps: the guarantee needs calibration voxels drawn at random from the pool
    voxels (sparse clicks, -1 elsewhere). Densely labelled calibration images overstate the calibration
    size by far (docs/propagation.md, "Voxels and images"): say so instead of certifying silently."""
    import warnings

    lab = np.asarray(_arrays.to_host_numpy(calib_labels))
    labelled = float((lab >= 0).mean()) if lab.size else 0.0
    if labelled > 0.5:
        warnings.warn(
            f"calib_labels: {100 * labelled:.0f} % of the calibration voxels are labelled; with unit='item' "
            "each voxel counts as an independent calibration unit, which densely labelled images are not (the "
            "certificate can fail far more often than delta). Use unit='image' with max_voxel_error, or calibrate "
            "on voxels drawn at random from the pool (sparse clicks, -1 elsewhere): docs/propagation.md, "
            "'Voxels and images'.",
            RuntimeWarning,
            stacklevel=3,
        )


def certify_threshold(
    calib_confidence: Any,
    calib_errors: Any,
    *,
    pool_confidence: Any,
    target_error: float,
    delta: float,
    scan_start: int = 0,
) -> ThresholdCertificate:
    """The calibration scan alone: calibration confidences (any shape, float; higher = more confident),
    their losses (same shape; 0 = right, 1 = wrong; bool or integers) and the confidences of the pool
    to be accepted (any shape, float; the scan's candidate thresholds) -> :class:`ThresholdCertificate`.
    Apply it to the pool with ``certificate.accept(pool_confidence)``. ``target_error``, ``delta`` and
    ``scan_start`` as in :func:`certified_auto_label` (the same guarantee, for these losses). Empty
    calibration or pool arrays are allowed (nothing certified, ``reason`` says why).

    Errors: ``ValueError`` for NaN confidences (naming the entry; ±inf allowed), losses other than
    0 / 1, mismatched calibration shapes, ``target_error`` or ``delta`` outside (0, 1),
    ``scan_start < 0``; ``TypeError`` for non-float confidences, other loss dtypes and GPU arrays
    (CPU only).
    """
    c = _arrays.as_array(calib_confidence, "calib_confidence")
    e = _arrays.as_labels(calib_errors, "calib_errors")
    p = _arrays.as_array(pool_confidence, "pool_confidence")
    r = _core.certify_threshold(
        _arrays.capsule(c), _arrays.capsule(e), _arrays.capsule(p), _arrays.check_real(target_error, "target_error"),
        _arrays.check_real(delta, "delta"),
        _arrays.check_int64(scan_start, "scan_start"),  # an int64; its range is checked in C++
    )
    return ThresholdCertificate(**r)


def label_issues(probs: Any, given_labels: Any, *, class_axis: int = 1) -> LabelIssues:
    """Likely wrong labels by confident learning: the items off the diagonal of the confident joint,
    except those whose given label is the model's own arg-max prediction.

    probs: ``[N, C]`` out-of-sample predicted probabilities (e.g. cross-validated), float32 / float64,
        CPU (``class_axis=0`` for ``[C, N]``). given_labels: ``[N]`` integers in ``[0, C)`` or ``-1``
        (not labelled: ignored). Returns :class:`LabelIssues`: flagged item indices (int64), lowest
        self-confidence first, their self-confidence (probs' dtype), the per-class thresholds and the
        confident joint, in the caller's framework. Method and choices: ``docs/propagation.md``.
    """
    probs = _arrays.as_array(probs, "probs")
    given_labels = _arrays.as_labels(given_labels, "given_labels")
    pcap = _arrays.capsule(probs)
    shape = tuple(int(s) for s in probs.shape)
    if len(shape) != 2:
        raise ValueError(f"probs: expected rank 2 ([N, C]), got shape {list(shape)}")
    class_axis = _arrays.check_int64(class_axis, "class_axis")
    ca = class_axis + 2 if class_axis < 0 else class_axis
    if ca not in (0, 1):
        raise ValueError(f"class_axis: axis {class_axis} is out of range for probs of rank 2")
    N, C = shape[1 - ca], shape[ca]
    idx = _empty(probs, (N,), "int64")
    sc = _empty(probs, (N,), "like")
    thr = _empty(probs, (C,), "float64")
    joint = _empty(probs, (C, C), "int64")
    n = _core.label_issues(
        pcap,
        _arrays.capsule(given_labels),
        _arrays.capsule(idx, writable=True),
        _arrays.capsule(sc, writable=True),
        _arrays.capsule(thr, writable=True),
        _arrays.capsule(joint, writable=True),
        int(class_axis),
    )
    return LabelIssues(indices=idx[:n], self_confidence=sc[:n], thresholds=thr, confident_joint=joint)


# ---------------------------------------------------------------------------------------------------
# kNN graph, label spreading and label propagation (docs/propagation.md, "Label spreading")

DISTANCE_METRICS = _arrays.DISTANCE_METRICS
__all__ += ["DISTANCE_METRICS", "knn_graph", "label_spreading", "label_propagation", "SPREADING_VARIANTS"]

#: ``variant=`` values of :func:`label_spreading` / :func:`label_propagation`.
SPREADING_VARIANTS = ("symmetric", "sklearn")


def knn_graph(features: Any, k: int, *, metric: str = "euclidean"):
    """Exact k nearest neighbours of every row of ``features`` among the other rows.

    features: ``[N, D]`` float32 / float64, CPU (numpy or torch) or CUDA (torch or CuPy); any
    strides, read in place. Returns ``(indices, distances)`` in the framework and on the device of
    ``features``: int64 ``[N, k]`` (nearest first, never the row itself, ties broken by the lower
    index) and ``[N, k]`` in the dtype of ``features``: the euclidean distance (not squared) or, with
    ``metric="cosine"``, ``1 - cos(x_i, x_j)``. On CUDA (its tests passed on an NVIDIA H200) the same
    exact result, computed on the device on the array's current stream (cuBLAS float32 candidates,
    float64 refinement and certificate; docs/propagation.md, "kNN graph").

    Brute force by blocked float32 GEMM (1024 x 1024 blocks on and above the diagonal, 4 MiB per
    thread; memory O(N (D + threads * (k + max(k, 16)))) plus (N / 1024)^2 / 2 block pairs, never the N^2
    distances), refined and certified in float64, so the result equals a float64 brute force.
    Errors: ``ValueError`` for NaN / Inf (naming the row), ``k < 1`` or ``k >= N``, empty input, a
    rank other than 2, an all-zero row with ``metric="cosine"``, Euclidean rows whose magnitudes span
    more than 2^480; ``TypeError`` for non-float dtypes and non-integer ``k``; ``RuntimeError`` for
    CUDA arrays in a build without CUDA.
    """
    features = _arrays.as_array(features, "features")
    shape = tuple(int(s) for s in features.shape)
    if len(shape) != 2:
        raise ValueError(f"features: expected rank 2 ([N, D]), got shape {list(shape)}")
    metric = _arrays.check_distance_metric(metric)
    k = _arrays.check_int(k, "k", 1)
    N = shape[0]
    if not 1 <= k < max(N, 1):
        raise ValueError(f"k: expected 1 <= k < N = {N} (the point itself is not its own neighbour), got {k}")
    fcap = _arrays.capsule(features)
    kind, _ = _arrays.device_of(features)
    stream = 0
    if kind in (_arrays._CUDA, _arrays._CUDA_MANAGED):
        from .acquisition import _empty as _empty_on_device, _stream_of

        dtype = "float64" if "64" in str(features.dtype) else "float32"
        indices = _empty_on_device(features, (N, k), "int64")
        distances = _empty_on_device(features, (N, k), dtype)
        stream = _stream_of(features)
    else:
        indices = _empty(features, (N, k), "int64")
        distances = _empty(features, (N, k), "like")
    _core.knn_graph(
        fcap, k, _arrays.capsule(indices, writable=True), _arrays.capsule(distances, writable=True), metric, stream
    )
    return indices, distances


def _sklearn_threads() -> int:
    """The number of OpenMP threads scikit-learn's kNN search would use here (it decides which of
    several equidistant points sklearn keeps as neighbours)."""
    try:
        from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

        return int(_openmp_effective_n_threads())
    except Exception:  # sklearn absent or its private helper moved: sklearn's own rule
        import os

        env = os.environ.get("OMP_NUM_THREADS", "")
        try:
            n = int(env.split(",")[0])
            if n > 0:
                return n
        except ValueError:
            pass
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            return os.cpu_count() or 1


def _spread(features, labels, propagation, k, alpha, max_iter, tol, variant, sklearn_threads):
    import warnings

    if variant not in SPREADING_VARIANTS:
        raise ValueError(f"variant: expected one of {', '.join(SPREADING_VARIANTS)}, got {variant!r}")
    features = _arrays.as_array(features, "features")
    # every integer dtype, uint8 too (the spreading core reads int32 / int64 only)
    labels = _arrays.widen_to_int64(_arrays.as_array(labels, "labels"), "labels", keep=("int64", "int32"))
    lcap = _arrays.capsule(labels)
    C = _core.spreading_num_classes(lcap)
    N = int(labels.shape[0])
    dist = _empty(features, (N, C), "float64")
    out = _empty(features, (N,), "int64")
    if variant == "sklearn" and sklearn_threads is None:
        sklearn_threads = _sklearn_threads()
    r = _core.label_spreading(
        _arrays.capsule(features),
        _arrays.capsule(labels),
        _arrays.capsule(dist, writable=True),
        _arrays.capsule(out, writable=True),
        bool(propagation),
        _arrays.check_int64(k, "k", 1),
        _arrays.check_real(alpha, "alpha"),
        _arrays.check_int64(max_iter, "max_iter", 1),
        _arrays.check_real(tol, "tol"),
        variant,
        0 if sklearn_threads is None else _arrays.check_int(sklearn_threads, "sklearn_threads", 0, 2**31 - 1),
    )
    if r["unreached"]:
        shrink = "with every hop of the graph" if propagation else "by about alpha times an edge weight per hop"
        warnings.warn(f"{r['unreached']} items that a label reaches in the graph got no label mass (it shrinks {shrink} "
                      "and underflowed float64, or max_iter ran out first): they keep the label -1.", RuntimeWarning,
                      stacklevel=3)
    elif not r["converged"]:
        warnings.warn(f"max_iter={int(max_iter)} was reached without convergence.", RuntimeWarning, stacklevel=3)
    return dist, out


def label_spreading(
    features: Any,
    labels: Any,
    *,
    k: int = 7,
    alpha: float = 0.2,
    max_iter: int = 30,
    tol: float = 1e-3,
    variant: str = "symmetric",
    sklearn_threads: Optional[int] = None,
):
    """Label spreading (Zhou et al., NIPS 2004) on the kNN graph of ``features``.

    features: ``[N, D]`` float32 / float64 (CPU). labels: ``[N]`` any integer dtype (read as int64), a class in
    ``[0, C)`` or ``-1`` (unlabelled); C = max label + 1 and every class needs a labelled item.
    Returns ``(distributions, labels)``: float64 ``[N, C]`` (rows sum to 1; all zeros for an item no
    label reaches) and int64 ``[N]`` (arg-max class; ``-1`` for unreached items with the symmetric
    variant: items in components without a label, or more than ``max_iter`` hops from every label —
    the symmetric variant does not stop on ``tol`` before every item a label reaches has mass).

    variant: ``"symmetric"`` (default): the symmetrised kNN graph W (the point itself excluded),
    S = D^-1/2 W D^-1/2, F <- alpha S F + (1 - alpha) Y. ``"sklearn"``: exactly
    ``sklearn.semi_supervised.LabelSpreading(kernel="knn", n_neighbors=k, alpha=alpha,
    max_iter=max_iter, tol=tol)`` — ``distributions`` is its ``label_distributions_`` and ``labels``
    its ``transduction_`` (with at most 15 features, where sklearn searches with a KD-tree, its tree
    is replayed: same tied neighbours). ``sklearn_threads``: the OpenMP thread count sklearn's
    brute-force search would use (more than 15 features; it decides which of several equidistant
    points sklearn keeps); default: asked from sklearn when installed, else ``OMP_NUM_THREADS`` or the
    number of CPUs this process may use (as sklearn's OpenMP would); 0: labelwise's own thread count. Warns (``RuntimeWarning``) when max_iter is reached without convergence, as
    sklearn does. Results come in the features' framework (numpy or torch CPU tensors).

    Errors: ``ValueError`` for NaN / Inf features (naming the row), labels below -1, no labelled item,
    a class below the largest label that no item carries, ``k < 1`` or ``k >= N`` (``k > N`` for
    ``"sklearn"``, whose k counts the point itself), ``alpha`` outside (0, 1), ``max_iter < 1``,
    ``tol < 0`` or NaN, wrong ranks or mismatched N, an unknown variant; ``TypeError`` for
    non-float features, non-integer labels, non-integer counts (``k=2.7``) and GPU arrays (CPU only:
    the error says so).
    """
    return _spread(features, labels, False, k, alpha, max_iter, tol, variant, sklearn_threads)


def label_propagation(
    features: Any,
    labels: Any,
    *,
    k: int = 7,
    max_iter: int = 1000,
    tol: float = 1e-3,
    variant: str = "symmetric",
    sklearn_threads: Optional[int] = None,
):
    """Label propagation (Zhu & Ghahramani, 2002) on the kNN graph of ``features``: F <- T F with the
    labelled rows reset to their labels after every step; T = D^-1 W on the symmetrised kNN graph
    (``variant="symmetric"``, default) or sklearn's ``LabelPropagation(kernel="knn", n_neighbors=k,
    max_iter=max_iter, tol=tol)`` exactly (``variant="sklearn"``). Arguments, results and errors as
    :func:`label_spreading` (no ``alpha``)."""
    return _spread(features, labels, True, k, 0.5, max_iter, tol, variant, sklearn_threads)


# ---- slice-to-slice mask propagation in volumes (random walker) ---------------------------------


def propagate_slices(volume: Any, labels: Any, labelled_slices: Any, *, axis: int = 0, num_classes: Optional[int] = None,
                     beta: float = 30.0, erode: int = 2, min_confidence: float = 0.9):
    """3D masks from a few annotated slices: slice-to-slice random-walker propagation
    (``labelwise::propagate_slices`` in C++; method in ``docs/propagation.md``).

    volume [Z, H, W] (any real dtype; ``axis`` names the slice axis), labels: same shape, integer classes
    >= 0, read only on ``labelled_slices`` (slice indices along ``axis``, or a boolean mask over that
    axis). Every other slice is segmented from its neighbour towards the nearest annotated slice: the
    neighbour's labels, eroded by ``erode`` pixels (>= 1; a structure narrower than 2·erode + 1 pixels
    leaves no seed and vanishes, unless nothing on the slice survives the erosion; use ``erode=1`` for
    thin structures) and kept where its confidence is >= ``min_confidence``, seed Grady's random
    walker on this slice's intensities (edge weights exp(-beta·Δg²) on unit-variance intensities).
    A slice between two annotated slices gets the distance-weighted mean of the probabilities
    propagated from both sides. Returns ``(mask, confidence)``: int64 [Z, H, W] and float64 [Z, H, W]
    (the probability of the chosen class; 1 on annotated slices and on the seeds of slices beyond the
    outermost annotated ones — carried over, not measured; between two annotated slices, the
    distance-weighted mix of the two sweeps), in the volume's framework and on its device (the
    propagation itself runs on the host: GPU arrays are copied there and the results back).
    Intervals between annotated slices run in parallel.
    """
    axis = _arrays.check_int(axis, "axis", -3, 2)
    _arrays.refuse_masked(volume, "volume")
    _arrays.refuse_masked(labels, "labels")
    vol = np.asarray(_arrays.to_host_numpy(volume))
    lab = np.asarray(_arrays.to_host_numpy(labels))
    if vol.ndim != 3 or lab.shape != vol.shape:
        raise ValueError(f"volume / labels: expected two [Z, H, W] volumes of the same shape, got {vol.shape} and {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise TypeError(f"labels: expected an integer dtype, got {lab.dtype}")
    if vol.dtype not in (np.float32, np.float64):
        if not (np.issubdtype(vol.dtype, np.integer) or np.issubdtype(vol.dtype, np.floating)):
            raise TypeError(f"volume: expected a real dtype, got {vol.dtype}")
        vol = vol.astype(np.float64)
    lab = _arrays.widen_to_int64(lab, "labels", keep=("int64",), what="class")  # uint64 beyond int64: named
    sel = np.asarray(labelled_slices)
    if sel.dtype == np.bool_:  # a mask over the slice axis
        if sel.shape != (vol.shape[axis],):
            raise ValueError(f"labelled_slices: a boolean mask must have one entry per slice ({vol.shape[axis]}), "
                             f"got shape {sel.shape}")
        ann = [int(v) for v in np.flatnonzero(sel)]
    elif sel.size == 0 or np.issubdtype(sel.dtype, np.integer):
        ann = [_arrays.check_int64(v, "labelled_slices") for v in sel.reshape(-1).tolist()]
    else:
        raise TypeError(f"labelled_slices: expected slice indices (integers) or a boolean mask, got dtype {sel.dtype}")
    mask = np.empty(vol.shape, dtype=np.int64)
    conf = np.empty(vol.shape, dtype=np.float64)
    _core.propagate_slices(_arrays.capsule(vol), _arrays.capsule(lab), ann, _arrays.capsule(mask, writable=True),
                           _arrays.capsule(conf, writable=True), axis,
                           0 if num_classes is None else _arrays.check_int64(num_classes, "num_classes", 0),
                           _arrays.check_real(beta, "beta"), _arrays.check_int64(erode, "erode", 1),
                           _arrays.check_real(min_confidence, "min_confidence"))
    return _arrays.like_device(mask, volume), _arrays.like_device(conf, volume)


__all__ += ["propagate_slices"]
