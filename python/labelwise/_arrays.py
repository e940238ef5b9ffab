"""Array plumbing: any DLPack / buffer-protocol array in, results out in the caller's framework.

Nothing here imports torch or cupy unless the caller's array already comes from them.
"""

from __future__ import annotations

import numbers
import operator
import sys
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

_CPU, _CUDA, _CUDA_HOST, _CUDA_MANAGED = 1, 2, 3, 13


def _framework(x: Any) -> str:
    # isinstance, not the type's module: subclasses (MONAI's MetaTensor, ...) belong to their framework
    for fw, cls in (("torch", "Tensor"), ("cupy", "ndarray")):
        mod = sys.modules.get(fw)
        if mod is not None and isinstance(x, getattr(mod, cls)):
            return fw
    return "numpy" if isinstance(x, np.ndarray) else "other"


def as_array(x: Any, name: str = "x") -> Any:
    """Returns x itself when it speaks DLPack (a torch tensor detached from autograd: no copy), else a
    zero-copy numpy view of it (buffer protocol). Non-numeric input is a TypeError naming ``name``."""
    if _framework(x) == "torch":
        if x.requires_grad:
            x = x.detach()  # the metrics are not differentiable; DLPack refuses tensors that require grad
        if x.is_complex():
            raise TypeError(f"{name}: expected a real numeric tensor, got dtype {str(x.dtype).replace('torch.', '')}")
        if x.is_neg():
            # a lazily negated view (e.g. z.conj().imag): DLPack would export the stored, un-negated values
            x = x.resolve_neg()
        if x.layout != _torch_strided():
            raise TypeError(f"{name}: a torch tensor with layout {str(x.layout).replace('torch.', '')}; expected a "
                            "dense (strided) tensor, e.g. x.to_dense()")
        if x.device.type not in ("cpu", "cuda"):
            raise TypeError(f"{name}: a torch tensor on device {x.device.type!r}; expected a CPU or CUDA tensor")
    if hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
        if isinstance(x, np.ndarray):
            _check_numeric(x, name)
            refuse_masked(x, name)
        return x
    try:
        a = np.asarray(x)
    except Exception as exc:  # pragma: no cover - message path
        raise TypeError(f"{name}: expected an array (numpy, torch, cupy or buffer protocol), got {type(x).__name__}") from exc
    _check_numeric(a, name, type(x).__name__)
    return a


def widen_to_int64(a: Any, name: str, keep: Sequence[str], what: str = "value") -> Any:
    """An integer array (numpy, torch or cupy) as int64 in its framework and on its device, unless its
    dtype is one of ``keep`` (e.g. "int32", "uint8": what the core reads itself); other arrays pass as
    they are (the core names what it refuses). uint64 entries beyond int64 are a ValueError
    "<name>: <what> <v> is beyond the int64 range"."""
    dt = str(a.dtype).replace("torch.", "")
    if not dt.startswith(("int", "uint")) or dt in keep:
        return a
    if dt == "uint64":
        host = to_host_numpy(a)
        if host.size and int(host.max()) >= 2**63:
            raise ValueError(f"{name}: {what} {int(host.max())} is beyond the int64 range")
    if _framework(a) == "torch":
        import torch

        if dt.startswith("int"):
            return a.to(torch.int64)
        return like_device(to_host_numpy(a).astype(np.int64), a)  # torch casts unsigned types on few devices
    return a.astype("int64")


def as_labels(x: Any, name: str) -> Any:
    """as_array for integer label arrays: int8 / int16 / uint16 / uint32 / uint64 (label maps are often
    stored as int16 or uint16, e.g. NIfTI segmentations) become int64, which the core reads; int64,
    int32, uint8, bool and non-integer arrays pass as they are (the core names what it refuses).
    uint64 values beyond int64 are a ValueError naming ``name``."""
    return widen_to_int64(as_array(x, name), name, keep=("int64", "int32", "uint8"))


def _torch_strided() -> Any:
    import torch

    return torch.strided


def _torch_bool() -> Any:
    import torch

    return torch.bool


def _torch_bfloat16() -> Any:
    import torch

    return torch.bfloat16


def _check_numeric(a: np.ndarray, name: str, given: Optional[str] = None) -> None:
    """Real numbers DLPack can carry: booleans, integers, IEEE floats up to 64 bits."""
    if a.dtype.kind not in "biuf" or (a.dtype.kind == "f" and a.dtype.itemsize > 8):
        what = f"{given} (numpy dtype {a.dtype})" if given and given != "ndarray" else f"dtype {a.dtype}"
        raise TypeError(f"{name}: expected a real numeric array (numpy, torch, cupy or buffer protocol) of at "
                        f"most 64-bit floats, got {what}")


def device_of(x: Any) -> Tuple[int, int]:
    kind, index = x.__dlpack_device__()
    return int(kind), int(index)


def current_stream(x: Any) -> int:
    """The caller's current CUDA stream for x's framework (0 = legacy default)."""
    fw = _framework(x)
    if fw == "torch":
        import torch

        return int(torch.cuda.current_stream(x.device).cuda_stream)
    if fw == "cupy":
        import cupy

        with x.device:  # the current stream of x's device, not of the current device
            return int(cupy.cuda.get_current_stream().ptr)
    return 0


def capsule(x: Any, *, stream: int = 0, writable: bool = False) -> Any:
    """A DLPack capsule for x (versioned when the producer supports it, so read-only numpy works)."""
    if _framework(x) == "torch" and x.is_neg():
        # a lazily negated view: DLPack would export the stored, un-negated values
        if writable:
            raise ValueError("a lazily negated torch tensor (is_neg()) cannot be written through; pass a plain tensor")
        x = x.resolve_neg()
    if not writable:
        # elements not aligned to their size (np.frombuffer / torch.frombuffer at an odd offset, a packed
        # structured field): the core refuses such pointers, so an aligned copy goes in
        if isinstance(x, np.ndarray) and not x.flags.aligned:
            x = np.array(x, dtype=x.dtype.newbyteorder("="))
        elif _framework(x) == "torch" and x.numel() and x.data_ptr() % x.element_size():
            x = x.clone()
    kind, _ = device_of(x)
    kwargs = {}
    if kind in (_CUDA, _CUDA_MANAGED):
        # DLPack: 1 names the legacy default stream; 0 is not allowed.
        kwargs["stream"] = stream if stream != 0 else 1
    try:
        try:
            return x.__dlpack__(max_version=(1, 0), **kwargs)
        except (TypeError, NotImplementedError):
            pass  # a producer without versioned DLPack (numpy < 2.1, ...): the legacy call below
        return x.__dlpack__(**kwargs)
    except BufferError:
        if writable:
            raise
        # numpy refuses some inputs DLPack cannot describe: read-only arrays (old numpy), strides that are
        # not whole elements (a field of a structured array), non-native byte order. A native-order copy
        # is the only way in (with misaligned arrays above, the cases where an input is copied).
        if isinstance(x, np.ndarray):
            return np.array(x, dtype=x.dtype.newbyteorder("=")).__dlpack__()
        raise


def dtype_str(x: Any) -> str:
    """x's element type as a plain name ("float32", "float16", "bfloat16", ...), in any framework."""
    return str(x.dtype).replace("torch.", "")


def empty_like_framework(x: Any, shape: Sequence[int], dtype_of: Any = None, dtype: Optional[str] = None) -> Any:
    """An uninitialised array of `shape` in x's framework and on its device; of x's dtype (or
    dtype_of's, or the named ``dtype``)."""
    fw = _framework(x)
    src = x if dtype_of is None else dtype_of
    if fw == "torch":
        import torch

        return torch.empty(tuple(shape), dtype=getattr(torch, dtype) if dtype else src.dtype, device=x.device)
    if fw == "cupy":
        import cupy

        with cupy.cuda.Device(x.device.id):
            return cupy.empty(tuple(shape), dtype=dtype or src.dtype)
    kind, _ = device_of(x)
    if kind not in (_CPU, _CUDA_HOST):
        raise TypeError(
            f"cannot allocate results for a {type(x).__module__}.{type(x).__name__} on a GPU; "
            "pass a torch or cupy array"
        )
    if dtype is None:
        dtype = src.dtype if fw == "numpy" else np.from_dlpack(src).dtype
    return np.empty(tuple(shape), dtype=np.dtype(dtype).newbyteorder("="))  # results in native byte order


def framework_name(x: Any) -> str:
    return _framework(x)


def loaded(module: str) -> bool:
    return module in sys.modules


def check_seed(seed: Any) -> int:
    """A seed for the counter-based RNG: an integer (not bool) in [0, 2**64)."""
    if isinstance(seed, bool):
        raise TypeError("seed: expected an integer, got bool")
    try:
        s = operator.index(seed)
    except TypeError:
        raise TypeError(f"seed: expected an integer, got {type(seed).__name__}") from None
    if not 0 <= s < 2**64:
        raise ValueError(f"seed: expected 0 <= seed < 2**64, got {s}")
    return s


def refuse_masked(x: Any, name: str) -> None:
    """A numpy masked array with masked entries is a ValueError naming ``name``: every reader of its
    buffer (DLPack, np.asarray) would see the hidden values as if they were data."""
    if isinstance(x, np.ma.MaskedArray) and np.ma.getmaskarray(x).any():
        raise ValueError(f"{name}: a masked array with masked entries, which would be read as if "
                         "unmasked; fill them (x.filled(...)) or leave those items out first")


def to_host_numpy(x: Any) -> np.ndarray:
    """A host numpy array for x (torch / cupy copied to the CPU; everything else through np.asarray)."""
    fw = _framework(x)
    if fw == "torch":
        x = x.detach().cpu()
        if x.dtype == _torch_bfloat16():  # numpy has no bfloat16; float32 holds every value exactly
            x = x.float()
        return x.numpy()
    if fw == "cupy":
        return x.get()
    return np.asarray(x)


def like_device(result: np.ndarray, x: Any) -> Any:
    """A host numpy result moved to x's framework and device (torch / cupy on a GPU); x's own
    framework for CPU torch tensors; numpy otherwise."""
    fw = _framework(x)
    if fw == "torch":
        import torch

        return torch.from_numpy(np.ascontiguousarray(result)).to(x.device)
    if fw == "cupy":
        import cupy

        with cupy.cuda.Device(x.device.id):
            return cupy.asarray(result)
    return result


def _scalar_kind(value: Any) -> str:
    """'b' / 'i' / 'u' / 'f' / 'c' for a 0-d numpy, torch or cupy array, else ''."""
    if getattr(value, "ndim", None) != 0:
        return ""
    if _framework(value) == "torch":
        if value.is_complex():
            return "c"
        if value.dtype == _torch_bool():
            return "b"
        return "f" if value.is_floating_point() else "i"
    kind = getattr(getattr(value, "dtype", None), "kind", "")
    return kind if isinstance(kind, str) and len(kind) == 1 else ""


def check_real(value: Any, name: str) -> float:
    """A real-number argument (Python / numpy ints and floats, 0-d real numpy / torch / cupy arrays;
    not a bool, a string, None or a complex) as a float, named in its TypeError. Ranges are checked by
    the callers."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        if _scalar_kind(value) in ("i", "u", "f"):
            return float(value)
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    return float(value)


def check_bool(value: Any, name: str) -> bool:
    """A flag: True / False (Python, numpy, 0-d bool arrays) or the integers 0 / 1, named in its
    TypeError; a string such as "no", None or a float is refused instead of being read as True."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (numbers.Integral, np.integer)) and int(value) in (0, 1):
        return bool(value)
    if _scalar_kind(value) == "b":
        return bool(value)
    raise TypeError(f"{name}: expected True or False, got {value!r}" if isinstance(value, (int, np.integer))
                    else f"{name}: expected True or False, got {type(value).__name__}")


#: What an array of predictions holds (``input=`` of the metrics, BatchBALD and BADGE).
INPUT_KINDS = ("probs", "log_probs", "logits")


def check_input_kind(input: Any) -> str:
    """``input=``: one of INPUT_KINDS; TypeError for a non-string, ValueError for another string."""
    if not isinstance(input, str):
        raise TypeError(f"input: expected 'probs', 'log_probs' or 'logits', got {input!r}")
    if input not in INPUT_KINDS:
        raise ValueError(f"input: expected 'probs', 'log_probs' or 'logits', got {input!r}")
    return input


def check_metric_names(metrics: Any, allowed: Sequence[str]) -> List[str]:
    """``metrics=`` of every function that takes metric names: one name or a non-empty sequence of
    names, each in ``allowed`` and at most once."""
    if isinstance(metrics, str):
        metrics = (metrics,)
    try:
        names = list(metrics)
    except TypeError:
        raise TypeError(
            f"metrics: expected a metric name or a sequence of names, got {type(metrics).__name__}"
        ) from None
    if not names:
        raise ValueError("metrics: expected at least one metric name")
    for m in names:
        if not isinstance(m, str):
            raise TypeError(f"metrics: expected metric names (str), got {type(m).__name__}")
        if m not in allowed:
            raise ValueError(f"metrics: unknown metric {m!r}; expected one of {', '.join(allowed)}")
    for i, m in enumerate(names):
        if m in names[:i]:
            raise ValueError(f"metrics: {m!r} is requested twice")
    return names


#: The distances between feature rows that core-set and the kNN graph take as ``metric=`` (C++:
#: labelwise::DistanceMetric): euclidean ``||x - y||``, cosine ``1 - cos(x, y)``.
DISTANCE_METRICS = ("euclidean", "cosine")


def check_distance_metric(metric: Any) -> str:
    """``metric=`` of core-set and the kNN graph: one of DISTANCE_METRICS, else ValueError."""
    if not isinstance(metric, str) or metric not in DISTANCE_METRICS:
        raise ValueError(f"metric: expected 'euclidean' or 'cosine', got {metric!r}")
    return metric


def check_int64(value: Any, name: str, lo: int = -(2**63)) -> int:
    """check_int for an argument that the core takes as int64: in [lo, 2^63 - 1]."""
    return check_int(value, name, lo, 2**63 - 1)


def check_int(value: Any, name: str, lo: int, hi: Optional[int] = None) -> int:
    """An integer argument in [lo, hi] (hi None: no upper bound): TypeError for bools and non-integers,
    ValueError out of range, both naming the argument."""
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected an integer, got bool")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}") from None
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name}: expected an integer {rng}, got {v}")
    return v

