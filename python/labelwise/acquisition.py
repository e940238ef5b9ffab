"""Batch acquisition: from per-item scores (top-k, stochastic Gumbel-top-k, the shard merge), from
samples and embeddings (BatchBALD, core-set, BADGE, cluster-margin, weighted k-means) and from
per-voxel maps (patches, regions, slices). Each function's docstring states its own inputs and
returns; the contract below is that of the score-based selections.

Shape contract (top_k, stochastic, stochastic_keys, merge_top_k)
    scores : array ``[N]`` or a map ``[N, *spatial]`` (e.g. per-voxel uncertainty ``[N, D, H, W]``),
        float32 or float64 (numpy, torch or cupy; CPU or CUDA; any strides — nothing is copied).
        A map is a pool of ``scores.size`` items numbered in row-major (C) order of its shape:
        ``np.unravel_index(indices, scores.shape)`` gives their coordinates.
    b : number of items to select, ``0 <= b <= scores.size``; ``b = 0`` returns an empty batch
        (the scores are still validated).
    returns : int64 indices ``[b]``, best first, in the caller's framework and on its device.
        Ties break by the lower index; ``-0.0 == +0.0``; ``±inf`` are ordinary values.

Definitions, the random numbers and the merge protocol: ``docs/acquisition.md``. CUDA inputs run the
CUDA kernels, whose ``[cuda]`` tests against the CPU passed on an NVIDIA H200 (the same batches).

Errors: ``ValueError`` for NaN scores (naming the first bad item), an empty pool, ``b`` outside
``[0, N]``, wrong rank, negative scores in ``"power"`` mode, finite scores whose score / temperature
(``"softmax"``) or ln(score) / temperature (``"power"``) overflows to +inf, ``temperature <= 0``, bad
ranks or indices; ``TypeError``
for non-float scores or a non-integer seed; ``RuntimeError`` for CUDA input to a CPU-only build.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import numpy as np

from . import _arrays, _core

MODES = ("power", "softmax", "softrank")

__all__ = ["MODES", "top_k", "stochastic", "stochastic_keys", "merge_top_k", "batchbald"]


def _stream_of(x: Any) -> int:
    kind, _ = _arrays.device_of(x)
    return _arrays.current_stream(x) if kind in (2, 13) else 0


def _empty(x: Any, shape: Sequence[int], dtype: str) -> Any:
    """An uninitialised ``dtype`` array of ``shape`` in x's framework and on x's device."""
    fw = _arrays.framework_name(x)
    if fw == "torch":
        import torch

        return torch.empty(tuple(shape), dtype=getattr(torch, dtype), device=x.device)
    if fw == "cupy":
        import cupy

        with cupy.cuda.Device(x.device.id):
            return cupy.empty(tuple(shape), dtype=dtype)
    kind, _ = _arrays.device_of(x)
    if kind not in (1, 3):
        raise TypeError(
            f"cannot allocate results for a {type(x).__module__}.{type(x).__name__} on a GPU; pass a torch or cupy array"
        )
    return np.empty(tuple(shape), dtype=dtype)


def _count(b: Any) -> int:
    return _arrays.check_int64(b, "b")


def _numel(x: Any) -> int:
    return int(math.prod(tuple(int(d) for d in x.shape)))


def _seed(seed: Any) -> int:
    return _arrays.check_seed(seed)


def _offset(index_offset: Any) -> int:
    return _arrays.check_int64(index_offset, "index_offset")


def _out_len(x: Any, b: int) -> int:
    # Never allocate more than the pool: a b outside [0, N] is reported by the core with its message.
    return max(0, min(b, _numel(x)))


def _selection_start(scores: Any, b: Any) -> Tuple[Any, int, int, Any, Any]:
    """The start of a selection from scores: (array, b, stream, its capsule, the int64 index output,
    of min(b, N) entries)."""
    x = _arrays.as_array(scores, "scores")
    b = _count(b)
    stream = _stream_of(x)
    return x, b, stream, _arrays.capsule(x, stream=stream), _empty(x, (_out_len(x, b),), "int64")


def top_k(scores: Any, b: int, *, index_offset: int = 0, return_values: bool = False) -> Union[Any, Tuple[Any, Any]]:
    """Indices of the ``b`` highest scores, best first, ties broken by the lower index.

    O(N) selection (no full sort), then a sort of the ``b`` winners. ``index_offset`` is added to
    every index (the global index of item 0 when ``scores`` is one shard of a larger pool; see
    :func:`merge_top_k`). With ``return_values=True`` returns ``(indices, values)``, the values in
    the scores' dtype.
    """
    x, b, stream, xcap, idx = _selection_start(scores, b)
    return_values = _arrays.check_bool(return_values, "return_values")
    vals = _arrays.empty_like_framework(x, tuple(idx.shape)) if return_values else None
    _core.top_k(
        xcap,
        b,
        _arrays.capsule(idx, stream=stream, writable=True),
        None if vals is None else _arrays.capsule(vals, stream=stream, writable=True),
        _offset(index_offset),
        stream,
    )
    return (idx, vals) if return_values else idx


def _ranks_capsule(ranks: Any, stream: int) -> Any:
    if ranks is None:
        return None
    r = _arrays.as_array(ranks, "ranks")
    return _arrays.capsule(r, stream=stream)


def stochastic(
    scores: Any,
    b: int,
    *,
    mode: str = "power",
    temperature: float = 1.0,
    seed: int,
    index_offset: int = 0,
    ranks: Any = None,
    return_keys: bool = False,
) -> Union[Any, Tuple[Any, Any]]:
    """Stochastic batch acquisition (Kirsch et al., TMLR 2023) by Gumbel-top-k.

    Draws ``b`` items without replacement with probability proportional to a weight
    (Plackett-Luce), ``β = 1 / temperature``:

    - ``"power"``: ``w = score**β`` (scores must be >= 0; a score of 0 has weight 0),
    - ``"softmax"``: ``w = exp(β · score)``,
    - ``"softrank"``: ``w = rank**-β``, rank 1 = highest score, ties by the lower index.

    The batch is a pure function of the arguments: the same for a ``seed`` on every run, thread
    count and device (CPU or CUDA). Items of weight 0 come after all others (lower index first).

    Shards: pass each shard's ``index_offset`` (and, for ``"softrank"``, ``ranks``: int64 global
    1-based ranks of the shard's items) with ``return_keys=True``, then :func:`merge_top_k` the
    concatenated keys and indices: the result equals the one-machine batch. With
    ``return_keys=True`` returns ``(indices, keys)``, keys float64.
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected 'power', 'softmax' or 'softrank', got {mode!r}")
    x, b, stream, xcap, idx = _selection_start(scores, b)
    return_keys = _arrays.check_bool(return_keys, "return_keys")
    keys = _empty(x, tuple(idx.shape), "float64") if return_keys else None
    _core.stochastic(
        xcap,
        b,
        _arrays.capsule(idx, stream=stream, writable=True),
        None if keys is None else _arrays.capsule(keys, stream=stream, writable=True),
        mode,
        _arrays.check_real(temperature, "temperature"),
        _seed(seed),
        _offset(index_offset),
        _ranks_capsule(ranks, stream),
        stream,
    )
    return (idx, keys) if return_keys else idx


def stochastic_keys(
    scores: Any,
    *,
    mode: str = "power",
    temperature: float = 1.0,
    seed: int,
    index_offset: int = 0,
    ranks: Any = None,
) -> Any:
    """The Gumbel-top-k key ``ln w_i + G_i`` of every item: float64, the scores' shape.

    ``top_k(stochastic_keys(s, ...), b)`` equals ``stochastic(s, b, ...)``.
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected 'power', 'softmax' or 'softrank', got {mode!r}")
    x = _arrays.as_array(scores, "scores")
    stream = _stream_of(x)
    xcap = _arrays.capsule(x, stream=stream)
    keys = _empty(x, tuple(int(d) for d in x.shape), "float64")
    _core.stochastic_keys(
        xcap,
        _arrays.capsule(keys, stream=stream, writable=True),
        mode,
        _arrays.check_real(temperature, "temperature"),
        _seed(seed),
        _offset(index_offset),
        _ranks_capsule(ranks, stream),
        stream,
    )
    return keys


def _concat(parts: Sequence[Any], name: str) -> Any:
    """Per-shard arrays concatenated in the first one's framework (all of them must share it)."""
    if len(parts) == 0:
        raise ValueError(f"{name}: an empty list of shards")
    arrays = [_arrays.as_array(p, name) for p in parts]
    fw = _arrays.framework_name(arrays[0])
    if any(_arrays.framework_name(a) != fw for a in arrays):
        raise TypeError(f"{name}: the shards mix frameworks ({sorted({_arrays.framework_name(a) for a in arrays})}); "
                        "pass them all as numpy, all as torch or all as cupy")
    if fw == "torch":
        import torch

        return torch.cat([p.reshape(-1) for p in arrays])
    if fw == "cupy":
        import cupy

        return cupy.concatenate([p.reshape(-1) for p in arrays])
    for p in arrays:
        _arrays.refuse_masked(p, name)
    return np.concatenate([np.asarray(p).reshape(-1) for p in arrays])


def merge_top_k(
    values: Any, indices: Any, b: int, *, return_values: bool = False
) -> Union[Any, Tuple[Any, Any]]:
    """Top-``b`` of ``(value, global index)`` pairs: value descending, ties by the lower index.

    The merge step of sharded selection. ``values`` / ``indices`` are 1-D arrays (or lists of
    per-shard arrays, concatenated here): the values / keys and the global indices that every
    shard's :func:`top_k` / :func:`stochastic` returned with ``return_values`` / ``return_keys``
    and its ``index_offset``, each shard asked for ``min(b, shard size)`` items. The result is
    exactly the batch that one call on the whole pool returns. ``indices`` may have any integer dtype
    (read as int64; uint64 entries beyond int64 are a ValueError).
    """
    if isinstance(values, (list, tuple)):
        values = _concat(values, "values")
    if isinstance(indices, (list, tuple)):
        indices = _concat(indices, "indices")
    v = _arrays.as_array(values, "values")
    # any integer dtype (indices concatenated by hand are often int32): int64, which the core reads
    i = _arrays.widen_to_int64(_arrays.as_array(indices, "indices"), "indices", keep=("int64",), what="index")
    b = _count(b)
    stream = _stream_of(v)
    vcap = _arrays.capsule(v, stream=stream)
    icap = _arrays.capsule(i, stream=stream)
    m = _out_len(v, b)
    out = _empty(v, (m,), "int64")
    return_values = _arrays.check_bool(return_values, "return_values")
    out_v = _arrays.empty_like_framework(v, (m,)) if return_values else None
    _core.merge_top_k(
        vcap,
        icap,
        b,
        _arrays.capsule(out, stream=stream, writable=True),
        None if out_v is None else _arrays.capsule(out_v, stream=stream, writable=True),
        stream,
    )
    return (out, out_v) if return_values else out


def batchbald(
    x: Any,
    b: int,
    *,
    num_samples: int,
    seed: int,
    input: str = "probs",
    sample_axis: int = 1,
    class_axis: int = 2,
) -> Tuple[Any, Any]:
    """Greedy BatchBALD (Kirsch, van Amersfoort and Gal, NeurIPS 2019), as batchbald-redux computes it.

    ``x``: MC / ensemble predictions ``[N, K, C]`` (the sample and class axes are named by
    ``sample_axis`` / ``class_axis``; the remaining axis is the pool), float32 or float64, any strides,
    CPU or CUDA (torch / CuPy; on the GPU every candidate is scored at every step, the same picks). ``input``: ``"probs"``, ``"log_probs"``
    or ``"logits"``, validated like the uncertainty metrics. ``0 <= b <= N`` (``b = 0``: empty batch).

    Joint entropies are exact while ``C**m <= num_samples`` (``m`` = items already chosen, the
    reference's rule) and estimated from ``K * max(1, num_samples // K)`` joint configurations drawn
    with Philox(``seed``) after that; the picks are a pure function of the arguments (any thread
    count), except that candidates tied mathematically but not in their float64 scores (saturated
    or symmetric pools) are ordered by rounding, which may differ between CPU kernels, CUDA and
    batchbald-redux (docs/acquisition.md, "Greedy step").

    Returns ``(indices, scores)``: int64 ``[b]`` in the order chosen (ties by the lower index) and
    float64 ``[b]`` where ``scores[i]`` is the (estimated) joint mutual information between the
    labels of the first ``i + 1`` picks and the model parameters — **cumulative**, as the reference
    returns them; the marginal gains are ``np.diff(scores, prepend=0)``. Both come back in ``x``'s
    framework. See ``docs/acquisition.md``.
    """
    input = _arrays.check_input_kind(input)
    ns = _arrays.check_int64(num_samples, "num_samples")
    sample_axis = _arrays.check_int(sample_axis, "sample_axis", -3, 2)
    class_axis = _arrays.check_int(class_axis, "class_axis", -3, 2)
    xa = _arrays.as_array(x, "x")
    b = _count(b)
    shape = tuple(int(d) for d in xa.shape)
    n_items = 0
    if len(shape) == 3:
        try:
            sa = sample_axis % 3
            ca = class_axis % 3
            n_items = shape[3 - sa - ca] if sa != ca else 0
        except TypeError:
            n_items = 0
    m = max(0, min(b, n_items))
    idx = _empty(xa, (m,), "int64")
    scores = _empty(xa, (m,), "float64")
    stream = _stream_of(xa)
    _core.batchbald(
        _arrays.capsule(xa, stream=stream),
        b,
        _arrays.capsule(idx, stream=stream, writable=True),
        _arrays.capsule(scores, stream=stream, writable=True),
        int(ns),
        _seed(seed),
        input,
        int(sample_axis),
        int(class_axis),
        stream,
    )
    return idx, scores


# ---- diversity: core-set (k-center greedy) and BADGE ---------------------------------------------

DISTANCE_METRICS = _arrays.DISTANCE_METRICS


def _int64_ids(x: Any, name: str) -> Any:
    """Integer ids (numpy, torch or cupy, any integer dtype) as int64, in their framework and on their
    device (a copy only when the dtype differs)."""
    dt = str(x.dtype).replace("torch.", "")
    if not dt.startswith(("int", "uint")):
        raise TypeError(f"{name}: expected integer cluster ids, got dtype {x.dtype}")
    return _arrays.widen_to_int64(x, name, keep=("int64",), what="id")


def _labeled_array(labeled: Any, n_items: Optional[int] = None) -> Any:
    """None, a boolean / uint8 mask [N] or integer indices [M]; integer numpy arrays become int64.
    With the pool size ``n_items``, an integer 0/1 vector of length N (a mask that lost its bool dtype)
    is an error."""
    if labeled is None:
        return None
    if isinstance(labeled, (list, tuple)):
        labeled = np.asarray(labeled)
        if labeled.size == 0:
            labeled = labeled.astype(np.int64)
    lab = _arrays.as_array(labeled, "labeled")
    if n_items is not None and len(lab.shape) == 1 and int(lab.shape[0]) == n_items:
        # An integer 0/1 vector as long as the pool is almost surely a mask that lost its bool dtype
        # (mask.long(), mask.astype(int)); read as indices it would mean "items 0 and 1".
        dt = str(lab.dtype).replace("torch.", "")
        if dt.startswith(("int", "uint")) and dt != "uint8":
            vals = np.unique(_arrays.to_host_numpy(lab))
            if vals.size and set(vals.tolist()) <= {0, 1}:
                raise ValueError(f"labeled: an integer 0/1 vector of length N = {n_items} is ambiguous (a mask that "
                                 "lost its bool dtype, or the indices 0 and 1 repeated); pass a mask as bool "
                                 "(mask.astype(bool) / mask.bool()) or the labelled indices without repeats")
    if len(lab.shape) == 1 and int(lab.shape[0]) == 0:
        return np.zeros(0, dtype=np.int64)  # an empty set, whatever its dtype (np.array([]) is float)
    if isinstance(lab, np.ndarray) or _arrays.framework_name(lab) == "torch":  # (cupy: as given)
        lab = _arrays.widen_to_int64(lab, "labeled", keep=("int64", "uint8"), what="index")
    return lab


def coreset(
    features: Any, labeled: Any, b: int, *, metric: str = "euclidean", prune: bool = True
) -> Tuple[Any, Any]:
    """Core-set acquisition by k-center greedy (Sener & Savarese, ICLR 2018).

    Keeps every item's distance to the nearest labelled-or-chosen item and picks, ``b`` times, the
    unlabelled item farthest from that set (ties: lower index); one pass over the pool per pick.

    features : ``[N, D]`` float32 / float64, CPU or CUDA, any strides; finite, with squared row
        norms within float64's reach (Euclidean: at most 2.2e307; cosine: nonzero rows whose squared
        norm is a normal double, 2.2e-308 to 1.8e308) — other rows are named in a ``ValueError``.
    labeled : ``None`` (nothing labelled), a boolean mask ``[N]`` (uint8 also accepted) or an
        integer index array ``[M]`` (0 <= index < N; repeats allowed).
    b : ``0 <= b <=`` number of unlabelled items (``b = 0``: empty result, inputs still validated).
    metric : ``"euclidean"`` (``||x - y||``) or ``"cosine"`` (``1 - cos(x, y)``).

    Returns ``(indices, radii)``: int64 ``[b]``, the picks in the order chosen, and float64 ``[b]``,
    the covering radius after each pick (max over all items of the distance to the nearest
    labelled-or-chosen item; non-increasing, 0 once everything is covered).

    With no labelled item the first pick is the item farthest from the mean feature vector (cosine:
    the unit row farthest from the mean unit row; item 0 if that mean is exactly zero). Duplicate
    rows are at distance exactly 0: they come last, by lower index. ``prune`` skips rows that the
    new centre provably cannot bring closer (triangle inequality, with a margin): the result is the
    same bits either way; ``prune=False`` only measures the plain pass. CUDA arrays (torch / cupy)
    run on the GPU (one pass per pick, no pruning; ``labeled`` may stay on the host) and the results
    come back there. See ``docs/acquisition.md``.
    """
    metric = _arrays.check_distance_metric(metric)
    x = _arrays.as_array(features, "features")
    b = _count(b)
    shape = tuple(int(d) for d in x.shape)
    lab = _labeled_array(labeled, shape[0] if len(shape) == 2 else None)
    m = max(0, min(b, shape[0] if len(shape) == 2 else 0))
    idx = _empty(x, (m,), "int64")
    radii = _empty(x, (m,), "float64")
    stream = _stream_of(x)
    _core.coreset(
        _arrays.capsule(x, stream=stream),
        None if lab is None else _arrays.capsule(lab, stream=stream),
        b,
        _arrays.capsule(idx, stream=stream, writable=True),
        _arrays.capsule(radii, stream=stream, writable=True),
        metric,
        _arrays.check_bool(prune, "prune"),
        stream,
    )
    return idx, radii


def _unlabeled_pool(labeled: Any, shapes: Sequence[Tuple[int, ...]], b: int) -> Optional[np.ndarray]:
    """``labeled=`` of badge / weighted_kmeans: None, or the unlabelled rows (host int64, ascending) of
    a pool whose arrays have ``shapes`` (the first axis is the pool), validated like core-set's
    ``labeled`` by the core (``labelwise::unlabeled_rows``), with b checked against their number.
    Arrays that do not share a first axis are left to the core to report (None)."""
    if labeled is None or not all(len(sh) >= 1 for sh in shapes) or len({sh[0] for sh in shapes}) != 1:
        return None
    n = shapes[0][0]
    if n == 0:
        return None  # an empty pool: the core's own error names it
    lab = _labeled_array(labeled, n)
    rows = np.empty(n, dtype=np.int64)
    count = _core.unlabeled_rows(_arrays.capsule(lab, stream=_stream_of(lab)), n,
                                 _arrays.capsule(rows, writable=True), _stream_of(lab))
    rows = rows[:count]
    if not 0 <= b <= count:
        raise ValueError(f"b: expected 0 <= b <= {count} (the number of unlabelled items), got b = {b}")
    return rows


def _pick_from_unlabeled(labeled: Any, b: int, x: Any, other: Any, core_call: Callable[..., None]) -> Any:
    """badge / weighted_kmeans on the pool's unlabelled rows: ``core_call(x, other, b, indices, stream)``
    (capsules) runs on x and other restricted to those rows (gathered in their framework and on their
    device) and the picks come back as indices into the whole pool. Without ``labeled`` it runs on the
    arrays as they are. A fault the core finds in the gathered rows would be reported in their
    numbering: the whole pool is then validated (b = 0, nothing picked), which raises it in the
    caller's rows and shapes."""
    rows = _unlabeled_pool(labeled, [tuple(int(d) for d in a.shape) for a in (x, other)], b)

    def run(xa: Any, oa: Any, count: int) -> Any:
        shape = tuple(int(d) for d in xa.shape)
        idx = _empty(xa, (max(0, min(count, shape[0] if len(shape) == 2 else 0)),), "int64")
        stream = _stream_of(xa)
        core_call(_arrays.capsule(xa, stream=stream), _arrays.capsule(oa, stream=stream), count,
                  _arrays.capsule(idx, stream=stream, writable=True), stream)
        return idx

    if rows is None:
        return run(x, other, b)
    where = _arrays.like_device(rows, x)
    try:
        idx = run(x[where], other[where], b)
    except (ValueError, TypeError):
        run(x, other, 0)  # raises the same fault, numbered in the whole pool
        raise
    return where[idx]


def badge(x: Any, embeddings: Any, b: int, *, seed: int, input: str = "probs", labeled: Any = None) -> Any:
    """BADGE (Ash et al., ICLR 2020): k-means++ seeding on last-layer gradient embeddings.

    The gradient embedding of item ``n`` is ``g_n = (p_n - onehot(argmax p_n)) ⊗ h_n`` (``C·D``
    values), never materialised: ``||a⊗h - a'⊗h'||² = ||a||²||h||² + ||a'||²||h'||² - 2(a·a')(h·h')``.
    The first centre is the item of largest ``||g||`` (as in the reference implementation; ties:
    lower index); then ``b - 1`` k-means++ draws with probability ∝ squared distance to the nearest
    centre, the draw of step ``t`` being :func:`badge_uniform` ``(seed, t)`` — the same batch for a
    seed on every run and thread count.

    x : ``[N, C]`` float32 / float64, one prediction per item, classes on axis 1;
        ``input="probs"`` (rows >= 0 summing to 1), ``"log_probs"`` or ``"logits"`` (softmax inside).
    embeddings : ``[N, D]`` float32 / float64, penultimate-layer features.
    b : ``0 <= b <= N`` (with ``labeled``: ``<=`` the unlabelled items).
    labeled : optional, as in :func:`coreset` (a boolean mask ``[N]`` or integer indices): these items
        are never picked and take no part (BADGE runs on the unlabelled rows; the seed's draws then
        follow the unlabelled pool, not the whole one).
    Returns int64 ``[b]``, indices into the whole pool (``[N]``), the picks in the order chosen, in the
    caller's framework and on its device (CUDA arrays run on the GPU: the same draws, over the same
    blocks). See ``docs/acquisition.md``.
    """
    input = _arrays.check_input_kind(input)
    x = _arrays.as_array(x, "x")
    e = _arrays.as_array(embeddings, "embeddings")
    b = _count(b)
    s = _seed(seed)
    return _pick_from_unlabeled(labeled, b, x, e, lambda xc, ec, count, ic, stream: _core.badge(
        xc, ec, count, ic, s, input, stream))


def weighted_kmeans(features: Any, scores: Any, b: int, *, prefilter: int = 10, max_iter: int = 100,
                    labeled: Any = None) -> Any:
    """Uncertainty-weighted diversity hybrid: "Diverse mini-batch active learning" (Zhdanov, 2019,
    arXiv 1901.05954) — weighted k-means over the most uncertain items, one pick per cluster.

    Keeps the ``M = min(N, prefilter * b)`` items of highest score, clusters them into ``b``
    clusters by k-means weighted by the scores, and picks from each cluster the item nearest its
    centroid. Deterministic (no seed): the centres start from a weighted farthest-first traversal
    (the best-scoring item, then repeatedly the item maximising score × squared distance to its
    nearest centre), then at most ``max_iter`` Lloyd iterations (stopping when no assignment
    changes). Euclidean distances in float64; ties by lower index.

    features : ``[N, D]`` float32 / float64, finite — the unlabelled pool's embeddings (a row whose
        squared norm exceeds 2.2e307 is a ``ValueError``: its squared distances would overflow).
    scores : ``[N]`` float32 / float64, finite, ``>= 0`` — any "higher = more informative" metric
        (e.g. :func:`labelwise.uncertainty.bald`; shift or exponentiate scores that can be negative).
    b : ``0 <= b <= N`` (with ``labeled``: ``<=`` the unlabelled items). prefilter : ``>= 1``
        (Zhdanov's β). max_iter : ``>= 0``.
    labeled : optional, as in :func:`coreset` (a boolean mask ``[N]`` or integer indices): these items
        are never picked and take no part (the method runs on the unlabelled rows).

    Returns int64 ``[b]``, indices into the whole pool: one item per cluster, clusters in decreasing total score; clusters left
    empty are filled with the best-scoring candidates not yet picked. ``prefilter=1`` gives the
    top-``b`` by score. Cost ``O(prefilter · b² · D)`` per iteration. CUDA arrays (both on one device):
    the features are validated and the candidates' rows gathered on the GPU, the clustering runs on
    the host over those ``M x D`` values (the scores are copied too) — the same picks as on the CPU,
    returned on the features' device. See ``docs/acquisition.md`` ("Hybrid").
    """
    x = _arrays.as_array(features, "features")
    s = _arrays.as_array(scores, "scores")
    b = _count(b)
    pre = _arrays.check_int64(prefilter, "prefilter", 1)
    it = _arrays.check_int64(max_iter, "max_iter", 0)
    return _pick_from_unlabeled(labeled, b, x, s, lambda xc, sc, count, ic, stream: _core.weighted_kmeans(
        xc, sc, count, ic, pre, it, stream))


def badge_uniform(seed: int, step: int) -> float:
    """The uniform draw in (0, 1) of BADGE step ``step`` (any step in [0, 2^64); :func:`badge` draws
    steps 1 .. b-1) under ``seed``: Philox-4x32-10 bits of (seed, stream "BADG", step), as
    :func:`badge` uses them. For replaying the sampling."""
    return float(_core.badge_uniform(_seed(seed), _arrays.check_int(step, "step", 0, 2**64 - 1)))


__all__ += ["DISTANCE_METRICS", "coreset", "badge", "badge_uniform", "weighted_kmeans"]


# ---- regions: patches and slices of segmentation uncertainty maps (CPU) ---------------------------


def _spatial(map_: Any, values: Any, name: str, default: Any = None) -> list:
    nsp = len(map_.shape) - 1
    if values is None:
        values = default
    bad = TypeError(f"{name}: expected an integer or one integer per spatial axis, got {values!r}")
    if isinstance(values, (bool, np.bool_)):
        raise bad
    try:
        values = [operator.index(values)] * nsp  # one integer (numpy integers too) for every axis
    except TypeError:
        try:
            values = list(values)
        except TypeError:
            raise bad from None
        if any(isinstance(v, (bool, np.bool_)) for v in values):
            raise bad
        try:
            values = [operator.index(v) for v in values]
        except TypeError:
            raise bad from None
    if len(values) != nsp:
        raise ValueError(f"{name}: expected {nsp} values (one per spatial axis of a map of shape {tuple(map_.shape)}), got {values}")
    for v in values:
        _arrays.check_int64(v, name)  # the core takes int64 sizes; the ranges are checked against the map
    return values


def _host_map(map_: Any) -> Tuple[Any, Any]:
    """(a CPU array of the map, the caller's array): GPU maps (torch / cupy) are copied to the host —
    region acquisition runs on the CPU (window sums), and its results go back to the map's
    device (see ``_back``)."""
    m = _arrays.as_array(map_, "map")
    if not 2 <= len(m.shape) <= 4:  # before the patch / axis arguments are read against it
        raise ValueError(f"map: expected [N, *spatial] with 1 to 3 spatial axes, got shape {list(m.shape)}")
    caller = m
    if str(getattr(m, "dtype", "")).replace("torch.", "") in ("float16", "bfloat16"):  # half maps: widened to float32
        m = m.float() if _arrays.framework_name(m) == "torch" else m.astype("float32")
    if _arrays.device_of(m)[0] in (1, 3):
        return m, caller
    if _arrays.framework_name(m) not in ("torch", "cupy"):
        raise TypeError(f"map: a GPU array of type {type(m).__name__}; pass a torch or cupy array")
    return _arrays.to_host_numpy(m), caller


def _back(result: Any, caller: Any) -> Any:
    """A result computed on the host, in the caller's framework and on its device."""
    if _arrays.device_of(caller)[0] in (1, 3):
        return result
    return _arrays.like_device(_arrays.to_host_numpy(result), caller)


_REGION_ERRORS = """
    Errors: ``ValueError`` for NaN in the map (naming the first voxel; ±inf propagate to the means, a
    patch holding both +inf and -inf is an error naming it), a rank other than 2-4, an empty map, and
    ``patch`` / ``stride`` of the wrong length or out of range; ``TypeError`` for a non-float map and
    for non-integer sizes."""


def patch_scores(map: Any, patch: Any, stride: Any = None) -> Any:
    """Mean of a per-voxel map over every patch: ``map`` [N, *spatial] (1-3 spatial axes; float16,
    bfloat16, float32 or float64, any strides) -> [N, *grid], ``grid_d = (S_d - patch_d) // stride_d + 1``
    (whole patches only; ``patch`` and ``stride``: an int for every axis or one per spatial axis,
    ``1 <= patch_d <= S_d``, ``stride_d >= 1``, default ``patch``, i.e. non-overlapping tiles). Same
    framework, device and dtype as ``map`` (float16 / bfloat16 maps give float32; GPU maps are copied
    to the host for the computation). Window sums in float64 (a huge value in one patch cannot swamp
    its neighbours' means).
    """
    m, caller = _host_map(map)
    if _numel(m) == 0:
        raise ValueError(f"map: empty (shape {list(m.shape)})")
    p = _spatial(m, patch, "patch")
    s = _spatial(m, stride, "stride", default=p)
    for d, (S, pd, sd) in enumerate(zip(m.shape[1:], p, s)):
        if not 1 <= pd <= S or sd < 1:
            raise ValueError(f"patch/stride: axis {d}: need 1 <= patch <= {S} and stride >= 1, got {pd}, {sd}")
    grid = [(S - pd) // sd + 1 for S, pd, sd in zip(m.shape[1:], p, s)]
    out = _arrays.empty_like_framework(m, (m.shape[0], *grid))
    _core.patch_scores(_arrays.capsule(m), p, s, _arrays.capsule(out, writable=True))
    return _back(out, caller)


def top_regions(map: Any, b: int, patch: Any, stride: Any = None) -> Tuple[Any, Any]:
    """The ``b`` best non-overlapping patches of per-voxel maps [N, *spatial], best first.

    ``map``, ``patch``, ``stride``: as in :func:`patch_scores`. ``b >= 0``, at most the number of
    non-overlapping patches the greedy pass finds (else ``ValueError``). Returns ``(corners, scores)``:
    int64 [b, 1 + spatial] rows ``(n, first voxel per axis)`` and the patches' mean scores (float64
    [b]). Greedy: patches in descending score order (ties by the lower index), skipping any that
    overlaps an already chosen patch of the same image. GPU maps are copied to the host; the results
    come back in the map's framework and on its device.
    """
    m, caller = _host_map(map)
    b = _count(b)
    p = _spatial(m, patch, "patch")
    s = _spatial(m, stride, "stride", default=p)
    if b < 0:
        raise ValueError(f"b: must be >= 0, got {b}")
    if not all(0 < pv <= sv for pv, sv in zip(p, m.shape[1:])):
        # the core names the bad patch size (with b = 0: nothing allocated for the outputs yet)
        _core.top_regions(_arrays.capsule(m), 0, p, s, _arrays.capsule(_empty(m, (0, len(m.shape)), "int64"), writable=True),
                          _arrays.capsule(_empty(m, (0,), "float64"), writable=True))
    # Disjoint patches cannot cover more voxels than the maps have: refuse a b beyond that bound here,
    # before allocating [b, ...] outputs; a b within it that the greedy pass cannot reach is the core's
    # error, with the count it found.
    bound = int(m.shape[0]) * (math.prod(int(v) for v in m.shape[1:]) // math.prod(p))
    if b > bound:
        raise ValueError(f"b: asked for {b} non-overlapping patches of size {tuple(p)}, more than the "
                         f"{bound} whose voxels the maps of shape {tuple(m.shape)} could hold")
    corners = _empty(m, (b, len(m.shape)), "int64")
    scores = _empty(m, (b,), "float64")
    _core.top_regions(_arrays.capsule(m), b, p, s, _arrays.capsule(corners, writable=True),
                      _arrays.capsule(scores, writable=True))
    return _back(corners, caller), _back(scores, caller)


def slice_scores(map: Any, axis: int = 1) -> Any:
    """Mean of per-voxel maps [N, *spatial] (1-3 spatial axes, float dtypes as in :func:`patch_scores`)
    over every spatial axis but ``axis`` -> [N, S_axis] (e.g. axis=1 of [N, D, H, W] scores the D
    slices of each volume; ``axis`` counts in the map's shape, negative from the end, and must name a
    spatial axis). GPU maps are copied to the host; the result comes back in the map's framework and
    on its device.
    """
    m, caller = _host_map(map)
    axis = _arrays.check_int64(axis, "axis")
    a = axis + len(m.shape) if axis < 0 else axis
    if not 1 <= a < len(m.shape):
        raise ValueError(f"axis: must name a spatial axis (1..{len(m.shape) - 1} or negative), got {axis}")
    out = _arrays.empty_like_framework(m, (m.shape[0], m.shape[a]))
    _core.slice_scores(_arrays.capsule(m), axis, _arrays.capsule(out, writable=True))
    return _back(out, caller)


for _f in (patch_scores, top_regions, slice_scores):
    _f.__doc__ = _f.__doc__.rstrip() + "\n" + _REGION_ERRORS
del _f

__all__ += ["patch_scores", "top_regions", "slice_scores"]


# ---- cluster-margin (Citovsky et al., NeurIPS 2021) ---------------------------------------------


def average_linkage_clusters(embeddings: Any, *, distance: Optional[float] = None, num_clusters: Optional[int] = None,
                             max_items: int = 20000) -> Any:
    """The once-per-campaign step of cluster-margin: average-linkage (UPGMA) agglomerative clustering
    of the pool's embeddings ``[N, D]`` (Euclidean), cut at the cophenetic ``distance`` (merges of
    height <= distance) or into at most ``num_clusters`` clusters — exactly one of the two. The same
    partitions as SciPy's ``linkage(method="average")`` + ``fcluster`` (criterion ``"distance"`` /
    ``"maxclust"``), computed in C++ (``labelwise::average_linkage_clusters``; nearest-neighbour
    chain, multi-threaded distances). Returns int64 cluster ids ``[N]``, numbered 0, 1, ... in
    the order of each cluster's lowest row index, in the embeddings' framework and on their device
    (ready for :func:`cluster_margin` next to margins computed there). Memory: ``N (N − 1) / 2`` doubles (N = 20000:
    1.6 GB), hence ``max_items`` (raise it deliberately). GPU arrays are copied to the host (the
    clustering runs there). Errors:
    ``ValueError`` naming the row for NaN / Inf or a squared norm above 2.2e307 (distances would
    overflow)."""
    _arrays.refuse_masked(embeddings, "embeddings")
    e = np.asarray(_arrays.to_host_numpy(embeddings))  # GPU arrays of any device: to the host
    _arrays._check_numeric(e, "embeddings")  # complex, strings, objects (None) are refused by name
    if e.dtype not in (np.float32, np.float64):
        e = e.astype(np.float64)  # integers and booleans
    if e.ndim == 2 and len(e) > _arrays.check_int(max_items, "max_items", 1):
        raise ValueError(f"embeddings: {len(e)} items; average-linkage clustering needs O(N^2) memory "
                         f"({len(e) * (len(e) - 1) * 4 / 2**30:.1f} GiB), limit max_items={max_items} "
                         f"(cluster a subsample, or raise the limit)")
    if (distance is None) == (num_clusters is None):
        raise ValueError("pass exactly one of distance= or num_clusters=")
    if distance is not None:
        distance = _arrays.check_real(distance, "distance")
        if not (np.isfinite(distance) and distance > 0):
            raise ValueError(f"distance: must be a finite value > 0, got {distance}")
    k = 0 if num_clusters is None else _arrays.check_int64(num_clusters, "num_clusters", 1)
    ids = np.empty(e.shape[0] if e.ndim >= 1 else 0, dtype=np.int64)
    _core.average_linkage_clusters(_arrays.capsule(e), _arrays.capsule(ids, writable=True),
                                   0.0 if distance is None else distance, k)
    return _arrays.like_device(ids, embeddings)


def cluster_margin(margins: Any, clusters: Any, b: int, *, candidates: Optional[int] = None, seed: int,
                   labeled: Any = None) -> Any:
    """Cluster-margin batch selection (Citovsky et al., NeurIPS 2021).

    ``margins`` [N]: labelwise's margin scores (higher = smaller top-1/top-2 gap = more uncertain);
    ``clusters`` [N]: integer ids, e.g. from :func:`average_linkage_clusters`; ``labeled``: optional
    bool mask [N] or integer indices of items already labelled (never picked). Takes the
    ``candidates`` (default ``min(10·b, unlabelled)``) most uncertain unlabelled items (ties: lower
    index), groups them by cluster, visits the groups from the smallest to the largest (ties: lower
    id) and takes one item from each in turn, cycling until ``b`` are chosen. Within a group the items
    come in the order of their Philox keys ``bits64(seed, "CLMG", item)`` — random, the same for a seed
    on every run and machine, and the same in C++ (``labelwise::cluster_margin``).
    Returns int64 indices [b] in the order chosen, in the margins' framework and on their device
    (``clusters`` on the same device; the O(N) selection itself runs on the host)."""
    m = _arrays.as_array(margins, "margins")
    cl = _int64_ids(_arrays.as_array(clusters, "clusters"), "clusters")
    b = _count(b)
    s = _seed(seed)
    cand = 0 if candidates is None else _arrays.check_int64(candidates, "candidates", 1)
    lab = _labeled_array(labeled, _numel(m))
    idx = _empty(m, (_out_len(m, b),), "int64")
    stream = _stream_of(m)
    _core.cluster_margin(_arrays.capsule(m, stream=stream), _arrays.capsule(cl, stream=stream),
                         None if lab is None else _arrays.capsule(lab, stream=stream), b,
                         _arrays.capsule(idx, stream=stream, writable=True), cand, s, stream)
    return idx


__all__ += ["cluster_margin", "average_linkage_clusters"]
