"""Segmentation heads for active learning, as ``torch.nn.Module`` s: MC dropout, ensemble, evidential.

``import labelwise`` does not import torch; this module does, as do ``labelwise.models`` and the
segmentation campaign (``labelwise.segcampaign``).

* :class:`MCDropoutHead` — dropout + 1x1 (x1) convolution,
* :class:`EnsembleHead` — M independent 1x1 (x1) convolutions,
* :class:`EvidentialHead` — 1x1 (x1) convolution to Dirichlet concentrations ``alpha = softplus(z) + 1``
  with closed-form uncertainty,

for 2D ``[B, F, H, W]`` (``dims=2``) and 3D ``[B, F, D, H, W]`` (``dims=3``) feature maps, as the last
layer of any backbone. ``forward`` returns logits ``[B, C, *spatial]`` and trains like any module.

MC sampling is deterministic and device independent: ``MCDropoutHead.sample(features, K, seed)`` draws
its dropout masks from Philox-4x32-10 (the counter RNG of ``include/labelwise/core/rng.hpp``),
keyed by (seed, sample k, item b, channel f, voxel v) — never from torch's RNG — so that the fused
C++/CUDA kernel reproduces the masks bit for bit (checked on the CPU, and on an NVIDIA H200, where the
CUDA samples equalled the CPU's bit for bit). The counter layout and the arithmetic order are in
``docs/segmentation.md`` and in :func:`dropout_keep_mask`.

``head.sample`` and ``head.score(features, K, metrics, seed)`` run the fused C++/CUDA kernel
(``labelwise::head_sample`` / ``labelwise::head_score``, include/labelwise/segmentation/head_score.hpp) on
the features' device: ``score`` returns per-voxel maps ``{name: [B, *spatial]}`` equal to
:func:`labelwise.uncertainty.score` of ``head.sample(...)``, with every sample drawn, pushed through the
head and reduced voxel by voxel, so memory is O(voxels x outputs), never O(K x C x voxels).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import uncertainty as _U
from . import _arrays, _core

__all__ = [
    "MCDropoutHead",
    "EnsembleHead",
    "EvidentialHead",
    "philox4x32_10",
    "dropout_keep_mask",
    "evidential_loss",
    "save_head_weights",
    "load_head_weights",
    "STREAM_DROPOUT",
    "MAX_DROPOUT",
    "EVIDENTIAL_METRICS",
]

# ---- Philox-4x32-10 in vectorised int64 arithmetic ----------------------------------------------------

_M32 = 0xFFFFFFFF
_PHILOX_M0 = 0xD2511F53
_PHILOX_M1 = 0xCD9E8D57
_PHILOX_W0 = 0x9E3779B9
_PHILOX_W1 = 0xBB67AE85

#: Philox stream of the dropout masks (counter word 2 = STREAM_DROPOUT << 16 | k). Streams 1 and 2 are
#: labelwise::rng::kStreamStochastic and kStreamBatchBald (which put the stream itself in word 2).
STREAM_DROPOUT = 3
_MAX_K = 1 << 16
#: The largest dropout rate (C++ labelwise::kMaxDropout): a channel is kept when its 32-bit random word u
#: has u / 2**32 >= p, so a rate above 1 - 2**-32 would drop every channel.
MAX_DROPOUT = 1.0 - 2.0**-32


def _mulhilo(m: int, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product m * x, for x an int64 tensor in [0, 2^32) and m a
    32-bit constant, without signed overflow: m is split into 16-bit halves so every partial product
    stays below 2^49."""
    m_hi, m_lo = m >> 16, m & 0xFFFF
    t = x * m_lo  # < 2^48
    s = x * m_hi + (t >> 16)  # < 2^49;  x * m = s * 2^16 + (t & 0xFFFF)
    lo = ((s & 0xFFFF) << 16) | (t & 0xFFFF)
    hi = s >> 16
    return hi, lo


def philox4x32_10(counter: Sequence[Any], key: Sequence[int]) -> List[torch.Tensor]:
    """Philox-4x32-10 (Salmon et al., SC'11), as ``labelwise::rng::philox4x32_10`` in rng.hpp.

    ``counter``: four int64 tensors (or ints), broadcastable, with values in [0, 2^32);
    ``key``: two ints in [0, 2^32). Returns the four output words as int64 tensors in [0, 2^32).
    """
    if isinstance(counter, (str, bytes)) or len(counter) != 4:
        raise ValueError("counter: expected four words")
    if isinstance(key, (str, bytes)) or len(key) != 2:
        raise ValueError("key: expected two words")
    dev = next((w.device for w in counter if isinstance(w, torch.Tensor)), torch.device("cpu"))
    c = [_words(w, f"counter[{i}]", 2**32, dev, flat=False) for i, w in enumerate(counter)]
    c0, c1, c2, c3 = torch.broadcast_tensors(*c)
    k0, k1 = (_arrays.check_int(k, f"key[{i}]", 0, _M32) for i, k in enumerate(key))
    for _ in range(10):
        hi0, lo0 = _mulhilo(_PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(_PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _PHILOX_W0) & _M32
        k1 = (k1 + _PHILOX_W1) & _M32
    return [c0, c1, c2, c3]


def _refresh_hooked_weights(module: nn.Module) -> None:
    """torch.nn.utils.weight_norm (the deprecated hook form; its parametrize successor needs nothing)
    recomputes ``weight`` from ``weight_g`` / ``weight_v`` only in a forward pre-hook, so after an
    optimiser step ``conv.weight`` is stale until the next forward. sample / score read the weights
    without a forward: recompute them here, as that hook would."""
    try:
        from torch.nn.utils.weight_norm import WeightNorm
    except ImportError:  # pragma: no cover - a torch without the deprecated form
        return
    for m in module.modules():
        for hook in list(m._forward_pre_hooks.values()):
            if isinstance(hook, WeightNorm):
                with torch.no_grad():
                    setattr(m, hook.name, hook.compute_weight(m))


# ---- argument checks ------------------------------------------------------------------------------------


def _words(values: Any, name: str, hi: int, dev: torch.device, flat: bool = True) -> torch.Tensor:
    """Counter words: an int, a range, an iterable (generators too), a numpy array or a tensor of
    integers, as an int64 tensor on dev (flattened when ``flat``), every value in [0, hi): else a
    TypeError (not integers) or ValueError (out of range) naming ``name``."""

    def check_span(lo: int, top: int) -> None:  # the smallest and the largest value, checked before any cast
        if lo < 0 or top >= hi:
            raise ValueError(f"{name}: expected values in [0, {hi}), got {lo} .. {top}")

    if isinstance(values, torch.Tensor) and str(values.dtype) in ("torch.uint16", "torch.uint32", "torch.uint64"):
        values = values.cpu().numpy()  # checked as numpy unsigned values: a cast to int64 could wrap
    if isinstance(values, range):
        if len(values):  # before torch.arange, which cannot hold values beyond int64
            check_span(min(values[0], values[-1]), max(values[0], values[-1]))
        t = torch.arange(values.start, values.stop, values.step, dtype=torch.int64, device=dev)
    elif isinstance(values, torch.Tensor):
        if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
            raise TypeError(f"{name}: expected integers, got a {values.dtype} tensor")
        t = values.to(device=dev, dtype=torch.int64)
    else:
        if isinstance(values, (str, bytes)) or (flat and not isinstance(values, (Iterable, np.ndarray))):
            raise TypeError(f"{name}: expected a sequence of integers, got {type(values).__name__}")
        try:  # read once: a generator is consumed here; nested lists keep their shape
            a = np.asarray(values if isinstance(values, np.ndarray) or not isinstance(values, Iterable) else list(values))
        except (TypeError, ValueError):
            raise TypeError(f"{name}: expected integers") from None
        if a.dtype == np.bool_:
            raise TypeError(f"{name}: expected integers, got bool")
        if a.dtype == object:  # Python ints beyond 64 bits (or mixed objects)
            if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in a.reshape(-1).tolist()):
                raise TypeError(f"{name}: expected integers")
            raise ValueError(f"{name}: expected values in [0, {hi})")
        if a.size and a.dtype.kind not in "iu":
            raise TypeError(f"{name}: expected integers, got {a.dtype}")
        if a.size and a.dtype.kind == "u":  # before a cast to int64 could wrap
            check_span(int(a.min()), int(a.max()))
        t = torch.as_tensor(a.astype(np.int64), device=dev)
    if t.numel():
        check_span(int(t.min()), int(t.max()))
    return t.reshape(-1) if flat else t


def _seed_arg(seed: Any) -> int:
    return _arrays.check_seed(seed)


def _p_arg(p: Any) -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"p: expected a float in [0, 1), got {type(p).__name__}")
    pf = float(p)
    if not 0.0 <= pf <= MAX_DROPOUT:  # also rejects NaN
        raise ValueError(f"p: the dropout rate must be in [0, 1) and at most 1 - 2**-32 (masks compare 32-bit "
                         f"random words), got {p}")
    return pf


def _dims_arg(dims: Any) -> int:
    d = _arrays.check_int(dims, "dims", 2, 3)
    return d


def _index_offset_arg(index_offset: Any, items: int) -> int:
    """``index_offset`` of sample() / score(): the global index of the call's first item (>= 0, and the
    items' indices below 2^32: the masks' Philox counter holds them in 32 bits)."""
    off = _arrays.check_int(index_offset, "index_offset", 0)
    if off + items > 2**32:
        raise ValueError(f"index_offset: items must have global indices below 2^32, got {off} + {items} items")
    return off


# ---- dropout masks --------------------------------------------------------------------------------------


def _keep_threshold(p: float) -> int:
    # keep <=> u >= p with u = word / 2^32; word * 2^-32 and p * 2^32 are exact in double, so this is
    # word >= ceil(p * 2^32) in integers.
    return int(math.ceil(p * 4294967296.0))


def dropout_keep_mask(
    seed: int,
    p: float,
    items: Sequence[int],
    samples: Sequence[int],
    channels: int,
    voxels: Sequence[int],
    device: Any = None,
) -> torch.Tensor:
    """The dropout keep-mask (bool) ``[len(items), len(samples), channels, len(voxels)]`` of sample k
    of item b, channel f, voxel v (the C-order flat index over the spatial axes of one item). ``items``,
    ``samples``, ``voxels``: ranges, iterables, numpy arrays or tensors of integers in [0, 2^32), [0, 2^16)
    and [0, 2^32) (the counter words' ranges); ``channels`` in [0, 2^28). Values out of range are a
    ValueError, non-integers a TypeError.

    * key ``(seed & 0xFFFFFFFF, seed >> 32)``;
    * counter ``(v, f // 4, STREAM_DROPOUT << 16 | k, b)``, i.e. one Philox block per voxel, group of
      four channels, sample and item;
    * ``u = word[f % 4] / 2^32``; kept iff ``u >= p`` (exactly: ``word >= ceil(p * 2^32)`` in integers),
      so each channel is kept with probability ``1 - p`` (to within 2^-32).
    """
    seed = _seed_arg(seed)
    p = _p_arg(p)
    key = (seed & _M32, seed >> 32)
    thr = _keep_threshold(p)
    dev = torch.device("cpu") if device is None else torch.device(device)
    channels = _arrays.check_int(channels, "channels", 0, 2**28 - 1)
    b = _words(items, "items", 2**32, dev).view(-1, 1, 1)
    k = _words(samples, "samples", 2**16, dev).view(1, -1, 1)
    v = _words(voxels, "voxels", 2**32, dev).view(1, 1, -1)
    word2 = (STREAM_DROPOUT << 16) | k
    groups = (channels + 3) // 4
    out = torch.empty((b.shape[0], k.shape[1], channels, v.shape[2]), dtype=torch.bool, device=dev)
    for g in range(groups):
        words = philox4x32_10((v, g, word2, b), key)
        for j in range(4):
            f = 4 * g + j
            if f < channels:
                out[:, :, f, :] = words[j] >= thr
    return out


# ---- the heads ------------------------------------------------------------------------------------------


class _Head(nn.Module):
    def __init__(self, in_channels: Any, num_classes: Any, dims: Any) -> None:
        super().__init__()
        # 2^31 - 1 each: far beyond any head, and the weight's entry count stays within int64
        self.in_channels = _arrays.check_int(in_channels, "in_channels", 1, 2**31 - 1)
        self.num_classes = _arrays.check_int(num_classes, "num_classes", 2, 2**31 - 1)
        self.dims = _dims_arg(dims)

    def _conv(self) -> nn.Module:
        cls = nn.Conv2d if self.dims == 2 else nn.Conv3d
        return cls(self.in_channels, self.num_classes, kernel_size=1)

    def _check(self, features: Any, name: str = "features") -> torch.Tensor:
        if not isinstance(features, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(features).__name__}")
        if not features.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got {features.dtype}")
        if features.layout != torch.strided:
            raise TypeError(f"{name}: expected a dense (strided) tensor, got layout {features.layout} "
                            "(call .to_dense() first)")
        want = "[B, F, H, W]" if self.dims == 2 else "[B, F, D, H, W]"
        if features.dim() != self.dims + 2:
            raise ValueError(
                f"{name}: expected {want} (rank {self.dims + 2}) for dims={self.dims}, "
                f"got rank {features.dim()} with shape {tuple(features.shape)}"
            )
        if features.shape[1] != self.in_channels:
            raise ValueError(
                f"{name}: expected {self.in_channels} channels (in_channels) on axis 1, "
                f"got {features.shape[1]} in shape {tuple(features.shape)}"
            )
        if features.numel() == 0:
            raise ValueError(f"{name}: empty feature map, shape {tuple(features.shape)}")
        if features.shape[2:].numel() >= 2**32:
            raise ValueError(f"{name}: at most 2^32 - 1 voxels per item, got {features.shape[2:].numel()}")
        return features

    @staticmethod
    def _check_scoring_device(x: torch.Tensor) -> None:
        """forward() runs on any device torch does; scoring (the fused kernel, the closed form) on CPU or CUDA."""
        if x.device.type not in ("cpu", "cuda"):
            raise TypeError(f"features: a torch tensor on device {x.device.type!r}; expected a CPU or CUDA tensor")

    @staticmethod
    def _check_finite(x: torch.Tensor, name: str = "features", last_axis_offset: int = 0) -> None:
        """NaN / Inf in x [B, F, *spatial] (a chunk starting at ``last_axis_offset`` on the last axis): a
        ValueError naming the first item and voxel, as the fused kernel's check does."""
        if not bool(torch.isfinite(x).all()):
            where = torch.nonzero(~torch.isfinite(x))[0].tolist()
            where[-1] += last_axis_offset
            raise ValueError(f"{name}: item {where[0]}, voxel {where[2:]} contains NaN or Inf")

    def _check_parameters(self) -> None:
        """Every parameter finite, else a ValueError naming it and the first bad entry in its own
        coordinates (e.g. ``conv.weight[1, 1, 0, 0]``), before any kernel sees the weights."""
        params = list(self.named_parameters())
        for name, t in params:
            if t.device.type not in ("cpu", "cuda"):
                raise TypeError(f"{name}: the head's parameters are on device {t.device.type!r}; expected CPU or CUDA")
        if not params or bool(torch.stack([torch.isfinite(t.detach()).all() for _, t in params]).all()):
            return  # one device sync when all are finite
        for name, t in params:
            bad = torch.nonzero(~torch.isfinite(t.detach()))
            if bad.shape[0]:
                raise ValueError(f"{name}{bad[0].tolist()} is NaN or Inf ({t.detach()[tuple(bad[0].tolist())].item()}): "
                                 "the head's parameters must be finite")

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, num_classes={self.num_classes}, dims={self.dims}"


def _capsule(t: torch.Tensor, stream: int, writable: bool = False) -> Any:
    return _arrays.capsule(t, stream=stream, writable=writable)


class _SampledHead(_Head):
    """Shared sample() / score() for the heads whose uncertainty comes from K samples: both call the
    fused kernel (labelwise::head_sample / head_score) with the head's weights as [M, C, F]."""

    _dropout = 0.0

    def _resolve_K(self, K: Any) -> int:
        raise NotImplementedError

    def _check_samples_per_voxel(self, k: int, name: str, symbol: str) -> int:
        """k, or a ValueError naming ``name`` when k · num_classes exceeds 2^24: the fused kernel keeps
        that many probabilities per voxel."""
        if k * self.num_classes > 2**24:
            raise ValueError(f"{name}: {symbol} · num_classes = {k * self.num_classes} probabilities per voxel is more "
                             f"than the fused kernel supports (2^24); got {symbol}={k} with {self.num_classes} classes")
        return k

    def _check_kernel_limits(self, members: int) -> None:
        """The fused sample / score kernel's limits, checked when the head is built (not at its first
        score, after training): F < 2^28 features, C <= 4096 classes, fewer than 65536 members."""
        if self.in_channels >= 2**28:
            raise ValueError(f"in_channels: at most 2^28 - 1 for the fused sample / score kernel, got {self.in_channels}")
        if self.num_classes > 4096:
            raise ValueError(f"num_classes: at most 4096 for the fused sample / score kernel, got {self.num_classes}")
        if members >= 65536:
            raise ValueError(f"members: at most 65535 for the fused sample / score kernel, got {members}")

    def _weights(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """weight [M, C, F] and bias [M, C] (views of the convolutions' parameters where possible)."""
        raise NotImplementedError

    def _prepare(self, features: Any, index_offset: Any) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
        x = self._check(features).detach()
        self._check_scoring_device(x)
        off = _index_offset_arg(index_offset, x.shape[0])
        self._check_parameters()
        if x.dtype not in (torch.float32, torch.float64):
            x = x.to(torch.float32)  # float16 / bfloat16: exact in float32
        _refresh_hooked_weights(self)
        w, b = self._weights()
        w, b = w.detach().to(device=x.device), b.detach().to(device=x.device)
        if w.dtype not in (torch.float32, torch.float64):
            w = w.to(torch.float64)
        if b.dtype not in (torch.float32, torch.float64):
            b = b.to(torch.float64)
        stream = int(torch.cuda.current_stream(x.device).cuda_stream) if x.is_cuda else 0
        return x, w, b, off, stream

    @torch.no_grad()
    def sample(
        self,
        features: torch.Tensor,
        K: Any = 20,
        seed: Any = 0,
        *,
        index_offset: Any = 0,
    ) -> torch.Tensor:
        """Probabilities ``[B, K, C, *spatial]`` (float32, on features' device) of K samples — exactly
        what :meth:`score` reduces. Item b of the call draws the masks of global item ``index_offset + b``
        (a shard of a batch passes its first item's index and gets the masks one call on the whole batch
        would). See docs/segmentation.md for the arithmetic.

        Errors: ``TypeError`` for features that are not a float ``torch.Tensor`` and for a seed that is
        not an integer; ``ValueError`` naming the argument for features of the wrong rank for ``dims``
        or with the wrong channel count, empty or with NaN / Inf (``features: ...``), ``K < 1`` or an
        ensemble's K other than its member count (``K: ...``), a seed outside ``[0, 2^64)`` and an
        ``index_offset`` below 0 or past 2^32 items.
        """
        K = self._resolve_K(K)
        seed = _seed_arg(seed)
        x, w, b, off, stream = self._prepare(features, index_offset)
        B, sp = x.shape[0], tuple(x.shape[2:])
        out = torch.empty((B, K, self.num_classes) + sp, dtype=torch.float32, device=x.device)
        _core.head_sample(_capsule(x, stream), _capsule(w, stream), _capsule(b, stream),
                          _capsule(out, stream, writable=True), K, self._dropout, seed, off, stream)
        return out

    @torch.no_grad()
    def score(
        self,
        features: torch.Tensor,
        K: Any = 20,
        metrics: Iterable[str] = ("bald", "balentacq"),
        seed: Any = 0,
        *,
        return_mean: bool = False,
        index_offset: Any = 0,
    ) -> Dict[str, torch.Tensor]:
        """Per-voxel uncertainty maps ``{metric: [B, *spatial]}`` (float32), equal (to float32 rounding:
        another summation order) to ``labelwise.uncertainty.score(head.sample(features, K, seed), metrics)``,
        computed by the fused
        kernel voxel by voxel (memory O(voxels x outputs)). With ``return_mean=True`` the result also
        holds ``"mean"``: the mean probabilities ``[B, C, *spatial]``. ``index_offset``: global index of
        the first item, as in :meth:`sample`.

        Errors: as :meth:`sample`, and unknown or repeated metric names, ``K < 2`` when a requested
        metric needs samples (``K: ...``).
        """
        names = _arrays.check_metric_names(metrics, _U.METRICS)
        K = self._resolve_K(K)
        if K < 2:
            needing = [m for m in names if _core.metric_needs_samples(m)]
            if needing:
                if isinstance(self, EnsembleHead):
                    raise ValueError(f"metrics: {', '.join(needing)} need at least 2 samples, but this EnsembleHead "
                                     "has members=1 (its members are its samples)")
                raise ValueError(f"K: the metrics {', '.join(needing)} need K >= 2 samples, got K={K}")
        seed = _seed_arg(seed)
        x, w, b, off, stream = self._prepare(features, index_offset)
        B, sp = x.shape[0], tuple(x.shape[2:])
        outs = {m: torch.empty((B,) + sp, dtype=torch.float32, device=x.device) for m in names}
        want_mean = _arrays.check_bool(return_mean, "return_mean")
        mean = torch.empty((B, self.num_classes) + sp, dtype=torch.float32, device=x.device) if want_mean else None
        _core.head_score(
            _capsule(x, stream), _capsule(w, stream), _capsule(b, stream),
            [(m, _capsule(o, stream, writable=True)) for m, o in outs.items()],
            None if mean is None else _capsule(mean, stream, writable=True),
            K, self._dropout, seed, off, stream,
        )
        result: Dict[str, torch.Tensor] = dict(outs)
        if mean is not None:
            result["mean"] = mean
        return result


class MCDropoutHead(_SampledHead):
    """Dropout (rate ``p``, element-wise) followed by a 1x1 (``dims=2``) or 1x1x1 (``dims=3``) convolution.

    Parameters (state_dict keys): ``conv.weight`` [C, F, 1, 1(, 1)], ``conv.bias`` [C].

    ``forward(features)`` -> logits ``[B, C, *spatial]``: in train mode one stochastic pass (torch's
    dropout, for training); in eval mode no dropout. ``sample`` / ``score``: MC dropout with masks from
    the counter RNG (independent of train/eval mode and of torch's RNG).
    """

    def __init__(self, in_channels: int, num_classes: int, p: float = 0.5, dims: int = 2) -> None:
        super().__init__(in_channels, num_classes, dims)
        self._check_kernel_limits(1)
        self.p = p
        self.conv = self._conv()

    @property
    def p(self) -> float:
        """The dropout rate, in [0, 1 - 2**-32] (checked whenever it is set). Not part of the weights
        file: a head loaded elsewhere must be built with the same ``p`` to draw the same samples."""
        return self._p

    @p.setter
    def p(self, value: Any) -> None:
        self._p = _p_arg(value)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", p={self.p}"

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self._check(features)
        return self.conv(F.dropout(x, self.p, training=self.training))

    def _resolve_K(self, K: Any) -> int:
        return self._check_samples_per_voxel(_arrays.check_int(K, "K", 1, _MAX_K - 1), "K", "K")

    @property
    def _dropout(self) -> float:  # type: ignore[override]
        return self.p

    def _weights(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return (self.conv.weight.reshape(1, self.num_classes, self.in_channels),
                self.conv.bias.reshape(1, self.num_classes))


class EnsembleHead(_SampledHead):
    """M independent 1x1 (x1) convolutions; the M members' softmax outputs are the samples (K = M).

    Parameters (state_dict keys): ``members.{m}.weight`` [C, F, 1, 1(, 1)], ``members.{m}.bias`` [C]
    for m = 0 .. M-1.

    ``forward(features)`` -> logits ``[B, C, *spatial]``: in train mode one stochastic pass through a
    member drawn uniformly with torch's RNG (each member learns from its own subset of the batches);
    in eval mode the log of the members' mean softmax (a softmax of it is the ensemble's mean
    prediction). ``forward_members`` returns all members' logits ``[B, M, C, *spatial]`` (e.g. to train
    all members on every batch with a summed loss). ``sample(features)`` returns the M members'
    probabilities (no randomness; ``K`` must be None or M, ``seed`` is checked and unused).
    """

    def __init__(self, in_channels: int, num_classes: int, members: int = 5, dims: int = 2) -> None:
        super().__init__(in_channels, num_classes, dims)
        self.num_members = _arrays.check_int(members, "members", 1)
        self._check_kernel_limits(self.num_members)
        self._check_samples_per_voxel(self.num_members, "members", "M")  # M · C <= 2^24, as K · C
        self.members = nn.ModuleList([self._conv() for _ in range(self.num_members)])

    def extra_repr(self) -> str:
        return super().extra_repr() + f", members={self.num_members}"

    def forward_members(self, features: torch.Tensor) -> torch.Tensor:
        x = self._check(features)
        return torch.stack([m(x) for m in self.members], dim=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self._check(features)
        if self.training:
            m = int(torch.randint(self.num_members, ()).item())
            return self.members[m](x)
        z = self.forward_members(x)
        return torch.logsumexp(F.log_softmax(z, dim=2), dim=1) - math.log(self.num_members)

    def _resolve_K(self, K: Any) -> int:
        if K is not None:
            k = _arrays.check_int(K, "K", 1)
            if k != self.num_members:
                raise ValueError(
                    f"K: an EnsembleHead has exactly {self.num_members} samples (its members); got K={k} (pass K=None)"
                )
        return self.num_members  # an ensemble's K is M; M · C <= 2^24 was checked when it was built

    def sample(
        self,
        features: torch.Tensor,
        K: Any = None,
        seed: Any = 0,
        *,
        index_offset: Any = 0,
    ) -> torch.Tensor:
        return super().sample(features, K, seed, index_offset=index_offset)

    def score(
        self,
        features: torch.Tensor,
        K: Any = None,
        metrics: Iterable[str] = ("bald", "balentacq"),
        seed: Any = 0,
        *,
        return_mean: bool = False,
        index_offset: Any = 0,
    ) -> Dict[str, torch.Tensor]:
        return super().score(features, K, metrics, seed, return_mean=return_mean, index_offset=index_offset)

    def _weights(self) -> Tuple[torch.Tensor, torch.Tensor]:
        C, Fch = self.num_classes, self.in_channels
        return (torch.stack([m.weight.reshape(C, Fch) for m in self.members]),
                torch.stack([m.bias.reshape(C) for m in self.members]))


#: Metrics that EvidentialHead.score computes in closed form from the Dirichlet.
EVIDENTIAL_METRICS = (
    "predictive_entropy",
    "expected_entropy",
    "bald",
    "least_confidence",
    "margin",
    "ratio",
    "max_mean_variation_ratio",
    "mean_std",
    "balentacq",
    "vacuity",
)


def _entropy64(p: torch.Tensor, dim: int) -> torch.Tensor:
    return -torch.where(p > 0, p * torch.log(p), torch.zeros((), dtype=p.dtype, device=p.device)).sum(dim=dim)


def _dirichlet_maps(alpha: torch.Tensor, names: Sequence[str]) -> Dict[str, torch.Tensor]:
    """Closed-form uncertainty of Dir(alpha), alpha [B, C, *spatial] float64 -> {name: [B, *spatial]}."""
    C = alpha.shape[1]
    S = alpha.sum(dim=1, keepdim=True)
    mu = alpha / S
    out: Dict[str, torch.Tensor] = {}
    H = _entropy64(mu, dim=1)
    need_eh = any(m in names for m in ("expected_entropy", "bald"))
    if need_eh:
        eh = torch.digamma(S[:, 0] + 1) - (mu * torch.digamma(alpha + 1)).sum(dim=1)
    top_metrics = ("least_confidence", "margin", "ratio", "max_mean_variation_ratio")
    top2 = torch.topk(mu, 2, dim=1).values if any(m in names for m in top_metrics) else None
    for m in names:
        if m == "predictive_entropy":
            out[m] = H
        elif m == "expected_entropy":
            out[m] = eh
        elif m == "bald":
            out[m] = torch.clamp(H - eh, min=0.0)
        elif m in ("least_confidence", "max_mean_variation_ratio"):
            out[m] = 1 - top2[:, 0]
        elif m == "margin":
            out[m] = 1 - (top2[:, 0] - top2[:, 1])
        elif m == "ratio":
            out[m] = top2[:, 1] / top2[:, 0]
        elif m == "mean_std":
            var = alpha * (S - alpha) / (S * S * (S + 1))
            out[m] = torch.sqrt(var).mean(dim=1)
        elif m == "vacuity":
            out[m] = C / S[:, 0]
        elif m == "balentacq":
            out[m] = _balentacq_dirichlet(S, mu, H)
    return out


def _balentacq_dirichlet(S: torch.Tensor, mu: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """BalEntAcq (docs/metrics.md) from the Dirichlet's exact marginal means and variances: the sample
    metric's formula, floors included (mean and variance at least 1e-9), on mu_c = alpha_c / S and
    var_c = mu_c (1 - mu_c) / (S + 1) — what the sample metric converges to as K -> infinity. Without
    the floors, moment matching gives back Beta(alpha_c, S - alpha_c); with them (var below 1e-9,
    S above ~3e4), the Beta parameters stay below ~1e9, where lgamma / digamma differences keep their
    precision (at S ~ 1e16 the unfloored terms cancelled to noise and ranked certain voxels first)."""
    m = mu.clamp(min=1e-9)
    var = (mu * (1 - mu) / (S + 1)).clamp(min=1e-9)
    a = m * m * (1 - m) / var - m
    b = (1 / m - 1) * a
    ln_beta = torch.lgamma(a + 1) + torch.lgamma(b) - torch.lgamma(a + b + 1)
    ln_beta = torch.logaddexp(ln_beta, torch.full_like(ln_beta, math.log(1e-32)))
    h = ln_beta - a * torch.digamma(a + 1) - (b - 1) * torch.digamma(b) + (a + b - 1) * torch.digamma(a + b + 1)
    t = torch.clamp(mu.clamp(min=1e-9) * h, max=0.0)
    t = torch.where(torch.isfinite(t), t, torch.zeros_like(t))
    mjent = t.sum(dim=1) + H
    s = (H + math.log(2.0)) / (mjent + H)
    s = torch.where(s < 0, 1 / s, s)
    top = mu.max(dim=1).values
    # a certain voxel (top mean 1, or its Bernoulli variance below the floor): -inf, as the sample metric
    return torch.where((H <= 0) | (top * (1 - top) < 1e-9), torch.full_like(s, -math.inf), s)


class EvidentialHead(_Head):
    """1x1 (x1) convolution to Dirichlet concentrations ``alpha = softplus(z) + 1`` (Sensoy et al.,
    NeurIPS 2018), with closed-form uncertainty — no sampling.

    Parameters (state_dict keys): ``conv.weight`` [C, F, 1, 1(, 1)], ``conv.bias`` [C].

    ``forward(features)`` -> the logits z ``[B, C, *spatial]`` (train with :func:`evidential_loss`);
    ``concentrations(features)`` -> alpha; ``uncertainty(features)`` -> expected probabilities
    ``alpha / S`` ``[B, C, *spatial]``, vacuity ``C / S``, predictive entropy ``H[alpha/S]``, expected
    entropy ``psi(S + 1) - sum_c (alpha_c / S) psi(alpha_c + 1)`` and the mutual information (BALD)
    ``H[alpha/S] - E[H]`` (maps ``[B, *spatial]``), with ``S = sum_c alpha_c``.
    """

    def __init__(self, in_channels: int, num_classes: int, dims: int = 2) -> None:
        super().__init__(in_channels, num_classes, dims)
        self.conv = self._conv()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv(self._check(features))

    def concentrations(self, features: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.forward(features)) + 1.0

    #: float64 feature values converted per chunk of the closed form (128 MiB): the float64 copies of a
    #: large volume (512 x 512 x 300 voxels, F = 32: 20 GB) are never made whole.
    _CHUNK_VALUES = 1 << 24

    @torch.no_grad()
    def _closed_form(self, features: torch.Tensor, names: Sequence[str],
                     want_probs: bool) -> Tuple[Dict[str, torch.Tensor], Optional[torch.Tensor]]:
        """The closed-form maps ``names`` ``[B, *spatial]`` and (want_probs) ``alpha / S`` ``[B, C, *spatial]``,
        float32, computed in float64 over chunks of the last spatial axis (per voxel: the same values
        whatever the chunking, up to the convolution's summation order)."""
        x = self._check(features)
        self._check_scoring_device(x)
        B, C, sp = x.shape[0], self.num_classes, tuple(x.shape[2:])
        step = max(1, self._CHUNK_VALUES // max(1, x[..., 0].numel()))
        for a in range(0, sp[-1], step):  # by chunks too: no mask of the whole volume
            self._check_finite(x[..., a:a + step], last_axis_offset=a)
        self._check_parameters()
        outs = {m: torch.empty((B,) + sp, dtype=torch.float32, device=x.device) for m in names}
        probs = torch.empty((B, C) + sp, dtype=torch.float32, device=x.device) if want_probs else None
        w = self.conv.weight.detach().to(device=x.device, dtype=torch.float64)
        b = self.conv.bias.detach().to(device=x.device, dtype=torch.float64)
        conv = F.conv2d if self.dims == 2 else F.conv3d
        for a in range(0, sp[-1], step):
            e = min(sp[-1], a + step)
            alpha = F.softplus(conv(x[..., a:e].to(torch.float64), w, b)) + 1.0
            bad = torch.nonzero(~torch.isfinite(alpha.sum(dim=1)))
            if bad.shape[0]:
                where = bad[0].tolist()
                where[-1] += a
                raise ValueError(f"features: voxel {where} gives concentrations that overflow float64 "
                                 "(features or weights far too large; both are finite)")
            for k, v in _dirichlet_maps(alpha, names).items():
                outs[k][..., a:e] = v
            if probs is not None:
                probs[..., a:e] = alpha / alpha.sum(dim=1, keepdim=True)
        return outs, probs

    @torch.no_grad()
    def uncertainty(self, features: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Closed-form Dirichlet uncertainty (float32): ``{"probs": [B, C, *sp], "vacuity", "predictive_entropy",
        "expected_entropy", "bald": [B, *sp]}``."""
        maps, probs = self._closed_form(features, ("vacuity", "predictive_entropy", "expected_entropy", "bald"), True)
        res = {"probs": probs}
        res.update(maps)
        return res

    @torch.no_grad()
    def score(
        self,
        features: torch.Tensor,
        K: Any = None,
        metrics: Iterable[str] = ("bald", "balentacq"),
        seed: Any = None,
        *,
        return_mean: bool = False,
        index_offset: Any = 0,
    ) -> Dict[str, torch.Tensor]:
        """Per-voxel maps ``{metric: [B, *spatial]}`` (float32) in closed form from the Dirichlet; any of
        :data:`EVIDENTIAL_METRICS`. ``K``, ``seed`` and ``index_offset`` are checked
        against the sampled heads' ranges and otherwise ignored (nothing is sampled; so K < 2 is no
        error here): one call serves every head.
        ``variation_ratio`` has no closed form and is refused."""
        names = _arrays.check_metric_names(metrics, tuple(EVIDENTIAL_METRICS) + ("variation_ratio",))
        if "variation_ratio" in names:
            raise ValueError("metrics: variation_ratio has no closed form for an EvidentialHead (a mode count "
                             "needs samples)")
        if K is not None:
            _arrays.check_int(K, "K", 1, _MAX_K - 1)
        if seed is not None:
            _seed_arg(seed)
        _index_offset_arg(index_offset, int(self._check(features).shape[0]))
        res, probs = self._closed_form(features, names, _arrays.check_bool(return_mean, "return_mean"))
        if probs is not None:
            res["mean"] = probs
        return res


def evidential_loss(logits: torch.Tensor, target: torch.Tensor, kl_weight: float = 0.0,
                    ignore_index: Optional[int] = None) -> torch.Tensor:
    """Mean over voxels of the expected cross-entropy under Dir(alpha), ``psi(S) - psi(alpha_y)``
    (Sensoy et al. 2018, eq. 4), plus ``kl_weight`` times KL(Dir(alpha~) || Dir(1)) of the evidence left
    after removing the target class (alpha~ = y + (1 - y) alpha; their eq. 5 regulariser).

    logits [B, C, *spatial] (EvidentialHead.forward), target integer [B, *spatial] class indices in
    [0, C). ``ignore_index`` (e.g. 255 or -100, as segmentation labels often mark unlabelled voxels):
    such voxels are left out of both means (a batch with none left, or an empty one, gives a loss of 0).
    Any other label outside [0, C) is a ValueError naming the voxel. ``kl_weight``: a finite number
    >= 0, or a one-element tensor (an annealing schedule; its value is not checked, which would
    synchronise the device). Non-float logits are a TypeError."""
    if not isinstance(logits, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError("logits, target: expected torch.Tensors")
    if logits.dim() < 2:
        raise ValueError(f"logits: expected [B, C, *spatial], got shape {tuple(logits.shape)}")
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        want = tuple(logits.shape[:1] + logits.shape[2:])
        raise ValueError(f"target: expected shape {want}, got {tuple(target.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits: expected a floating-point tensor, got {logits.dtype}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target: expected integer class indices, got {target.dtype}")
    if isinstance(kl_weight, torch.Tensor):  # a tensor weight (an annealing schedule): one real value
        if kl_weight.numel() != 1 or kl_weight.is_complex() or kl_weight.dtype == torch.bool:
            raise TypeError(f"kl_weight: expected a real number or a one-element real tensor, got a {kl_weight.dtype} "
                            f"tensor of shape {list(kl_weight.shape)}")
        kl_weight = kl_weight.reshape(()).to(logits.dtype if logits.is_floating_point() else torch.float32)
        use_kl = True  # its value is not read on the host: that would synchronise the device
    else:
        kl_weight = _arrays.check_real(kl_weight, "kl_weight")
        if not (math.isfinite(kl_weight) and kl_weight >= 0):
            raise ValueError(f"kl_weight: expected a finite value >= 0, got {kl_weight}")
        use_kl = kl_weight != 0
    if target.numel() == 0:
        return logits.sum() * 0.0  # no voxel: 0, as when every voxel is ignored (and still differentiable)
    C = logits.shape[1]
    t = target.long()  # labels and ignore_index compared as integers, not in the target's dtype (uint8 wraps)
    valid = None if ignore_index is None else t != _arrays.check_int64(ignore_index, "ignore_index")
    out = (t < 0) | (t >= C)
    if valid is not None:
        out &= valid
    if bool(out.any()):
        where = torch.nonzero(out)[0].tolist()
        hint = "" if ignore_index is not None else " (pass ignore_index= to leave such voxels out)"
        raise ValueError(f"target: voxel {where} has label {t[tuple(where)].item()}, outside [0, {C}){hint}")
    if valid is not None:
        t = torch.where(valid, t, torch.zeros_like(t))
        logits = torch.where(valid.unsqueeze(1), logits, torch.zeros_like(logits))  # ignored: finite, no gradient
    alpha = F.softplus(logits) + 1.0
    S = alpha.sum(dim=1)
    a_y = alpha.gather(1, t.unsqueeze(1)).squeeze(1)
    per_voxel = torch.digamma(S) - torch.digamma(a_y)
    if use_kl:
        y = F.one_hot(t, C).movedim(-1, 1).to(alpha.dtype)
        at = y + (1 - y) * alpha
        St = at.sum(dim=1)
        kl = (torch.lgamma(St) - math.lgamma(C) - torch.lgamma(at).sum(dim=1)
              + ((at - 1) * (torch.digamma(at) - torch.digamma(St).unsqueeze(1))).sum(dim=1))
    if valid is None:
        loss = per_voxel.mean()
        return loss + kl_weight * kl.mean() if use_kl else loss
    # masked means accumulated in float32 at least (half sums overflow past 65504 voxels), in alpha's dtype
    acc = torch.promote_types(alpha.dtype, torch.float32)
    n = valid.sum().clamp(min=1).to(acc)

    def masked_mean(v: torch.Tensor) -> torch.Tensor:
        return (torch.where(valid, v, torch.zeros_like(v)).sum(dtype=acc) / n).to(alpha.dtype)

    loss = masked_mean(per_voxel)
    return loss + kl_weight * masked_mean(kl) if use_kl else loss


# ---- weights files shared with the C++ heads ---------------------------------------------------------


def save_head_weights(module: nn.Module, path: Any) -> None:
    """Saves ``module``'s state dict as a ``torch.save`` archive of a plain ``{name: tensor}`` dict (CPU,
    contiguous): the format that the C++ heads read with ``labelwise::load_head_weights`` (LibTorch's
    unpickler cannot read the ``OrderedDict`` with ``_metadata`` that ``state_dict()`` returns)."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
    torch.save({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, path)


def load_head_weights(module: nn.Module, path: Any, strict: bool = True) -> nn.Module:
    """Loads weights written by :func:`save_head_weights` or by C++'s ``labelwise::save_head_weights``
    (``torch.load(path, weights_only=True)``) into ``module`` with ``load_state_dict(strict=strict)``:
    a head of another shape raises torch's ``RuntimeError`` naming the key; a file that is not such an
    archive a ``ValueError`` naming ``path`` (a missing one ``FileNotFoundError``). Returns ``module``."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
    try:
        import warnings

        with warnings.catch_warnings():  # torch warns about pickle protocols before it refuses the file
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as exc:  # torch.load's KeyError / UnpicklingError / RuntimeError on a foreign file
        raise ValueError(f"path: {path} is not a weights file of save_head_weights / torch.save "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else exc!r})") from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ValueError(f"path: {path} does not hold a {{name: tensor}} dict")
    module.load_state_dict(state, strict=strict)
    return module
