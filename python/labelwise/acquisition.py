"""Batch acquisition from per-item scores: top-k, stochastic (Gumbel-top-k) and the shard merge.

Shape contract (every function)
    scores : array ``[N]`` or a map ``[N, *spatial]`` (e.g. per-voxel uncertainty ``[N, D, H, W]``),
        float32 or float64 (numpy, torch or cupy; CPU or CUDA; any strides — nothing is copied).
        A map is a pool of ``scores.size`` items numbered in row-major (C) order of its shape:
        ``np.unravel_index(indices, scores.shape)`` gives their coordinates.
    b : number of items to select, ``0 <= b <= scores.size``; ``b = 0`` returns an empty batch
        (the scores are still validated).
    returns : int64 indices ``[b]``, best first, in the caller's framework and on its device.
        Ties break by the lower index; ``-0.0 == +0.0``; ``±inf`` are ordinary values.

Definitions, the random numbers and the merge protocol: ``docs/acquisition.md``.

Errors: ``ValueError`` for NaN scores (naming the first bad item), an empty pool, ``b`` outside
``[0, N]``, wrong rank, negative scores in ``"power"`` mode, ``temperature <= 0``, bad ranks or
indices; ``TypeError`` for non-float scores or a non-integer seed; ``RuntimeError`` for CUDA input
to a CPU-only build.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from . import _arrays, _core

MODES = ("power", "softmax", "softrank")

__all__ = ["MODES", "top_k", "stochastic", "stochastic_keys", "merge_top_k"]


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
    try:
        return operator.index(b)
    except TypeError:
        raise TypeError(f"b: expected an integer, got {type(b).__name__}") from None


def _numel(x: Any) -> int:
    return int(math.prod(tuple(int(d) for d in x.shape)))


def _seed(seed: Any) -> int:
    try:
        s = operator.index(seed)
    except TypeError:
        raise TypeError(f"seed: expected an integer, got {type(seed).__name__}") from None
    if not 0 <= s < 2**64:
        raise ValueError(f"seed: expected 0 <= seed < 2**64, got {s}")
    return s


def _offset(index_offset: Any) -> int:
    try:
        return operator.index(index_offset)
    except TypeError:
        raise TypeError(f"index_offset: expected an integer, got {type(index_offset).__name__}") from None


def _out_len(x: Any, b: int) -> int:
    # Never allocate more than the pool: a b outside [0, N] is reported by the core with its message.
    return max(0, min(b, _numel(x)))


def top_k(scores: Any, b: int, *, index_offset: int = 0, return_values: bool = False) -> Union[Any, Tuple[Any, Any]]:
    """Indices of the ``b`` highest scores, best first, ties broken by the lower index.

    O(N) selection (no full sort), then a sort of the ``b`` winners. ``index_offset`` is added to
    every index (the global index of item 0 when ``scores`` is one shard of a larger pool; see
    :func:`merge_top_k`). With ``return_values=True`` returns ``(indices, values)``, the values in
    the scores' dtype.
    """
    x = _arrays.as_array(scores, "scores")
    b = _count(b)
    stream = _stream_of(x)
    xcap = _arrays.capsule(x, stream=stream)
    m = _out_len(x, b)
    idx = _empty(x, (m,), "int64")
    vals = _arrays.empty_like_framework(x, (m,)) if return_values else None
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
    x = _arrays.as_array(scores, "scores")
    b = _count(b)
    stream = _stream_of(x)
    xcap = _arrays.capsule(x, stream=stream)
    m = _out_len(x, b)
    idx = _empty(x, (m,), "int64")
    keys = _empty(x, (m,), "float64") if return_keys else None
    _core.stochastic(
        xcap,
        b,
        _arrays.capsule(idx, stream=stream, writable=True),
        None if keys is None else _arrays.capsule(keys, stream=stream, writable=True),
        mode,
        float(temperature),
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
        float(temperature),
        _seed(seed),
        _offset(index_offset),
        _ranks_capsule(ranks, stream),
        stream,
    )
    return keys


def _concat(parts: Sequence[Any]) -> Any:
    first = _arrays.as_array(parts[0])
    fw = _arrays.framework_name(first)
    if fw == "torch":
        import torch

        return torch.cat([p.reshape(-1) for p in parts])
    if fw == "cupy":
        import cupy

        return cupy.concatenate([cupy.asarray(p).reshape(-1) for p in parts])
    return np.concatenate([np.asarray(p).reshape(-1) for p in parts])


def merge_top_k(
    values: Any, indices: Any, b: int, *, return_values: bool = False
) -> Union[Any, Tuple[Any, Any]]:
    """Top-``b`` of ``(value, global index)`` pairs: value descending, ties by the lower index.

    The merge step of sharded selection. ``values`` / ``indices`` are 1-D arrays (or lists of
    per-shard arrays, concatenated here): the values / keys and the global indices that every
    shard's :func:`top_k` / :func:`stochastic` returned with ``return_values`` / ``return_keys``
    and its ``index_offset``, each shard asked for ``min(b, shard size)`` items. The result is
    exactly the batch that one call on the whole pool returns.
    """
    if isinstance(values, (list, tuple)):
        values = _concat(values)
    if isinstance(indices, (list, tuple)):
        indices = _concat(indices)
    v = _arrays.as_array(values, "values")
    i = _arrays.as_array(indices, "indices")
    b = _count(b)
    stream = _stream_of(v)
    vcap = _arrays.capsule(v, stream=stream)
    icap = _arrays.capsule(i, stream=stream)
    m = _out_len(v, b)
    out = _empty(v, (m,), "int64")
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
