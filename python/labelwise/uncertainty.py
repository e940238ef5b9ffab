"""Uncertainty metrics for active learning, fused in one pass, on CPU and CUDA (the CUDA kernel's
``[cuda]`` tests against the CPU ran on an NVIDIA H200; docs/metrics.md says what is still open).

Shape contract (every function)
    x : array, shape ``[N, K, C, *spatial]`` by default — N items, K MC-dropout / ensemble
        samples, C classes, optional spatial axes (2D / 3D segmentation). float32 or float64
        (numpy, torch or cupy; CPU or CUDA; any strides, broadcast views, tensors that require
        grad — nothing is copied, except numpy arrays that DLPack cannot describe: non-native byte
        order or strides that are not whole elements); float16 and bfloat16 too (e.g.
        mixed-precision outputs): widened exactly to a float32 copy on x's device first, results in
        float32.
        ``sample_axis`` / ``class_axis`` name other layouts (e.g. BaaL's ``[N, C, ..., K]``
        is ``sample_axis=-1, class_axis=1``); ``sample_axis=None`` means one prediction per
        item (K = 1, ``[N, C, *spatial]``), for which the sample-based metrics raise ``ValueError``.
        ``class_axis=None`` (default) is 2 with a sample axis and 1 without.
    input : ``"probs"`` (each sample's class vector sums to 1 within 1e-3 for float32, 1e-6 for
        float64, 5e-3 for float16, 4e-2 for bfloat16), ``"log_probs"`` (log-sum-exp within the
        same of 0) or ``"logits"`` (softmax applied inside).
    returns : array of x's shape without the sample and class axes (``[N]``, ``[N, H, W]``,
        ``[N, D, H, W]``), same framework, dtype (float32 for half-precision x) and device as x. Higher = more worth
        labelling; entropies in nats.

Errors: ``ValueError`` for NaN/Inf, negative or unnormalised probabilities, wrong rank or
axes, too few samples or classes, empty input; ``TypeError`` for non-float dtypes or
unsupported devices; ``RuntimeError`` for CUDA input to a CPU-only build.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Optional

from . import _arrays, _core

METRICS = tuple(_core.METRICS)

__all__ = ["METRICS", "score"] + list(METRICS)


def _axis(value: Any, name: str, allow_none: bool) -> Optional[int]:
    if value is None and allow_none:
        return None
    return _arrays.check_int(value, name, -(2**31), 2**31 - 1)


def score(
    x: Any,
    metrics: Optional[Iterable[str]] = None,
    *,
    input: str = "probs",
    sample_axis: Optional[int] = 1,
    class_axis: Optional[int] = None,
) -> Dict[str, Any]:
    """Computes several metrics in one fused pass; returns ``{name: array}``.

    ``metrics`` is any subset of :data:`METRICS`, each at most once (default ``None``: all ten; with
    ``sample_axis=None`` the default drops the metrics that need samples, while naming one of them is
    an error).
    """
    x = _arrays.as_array(x, "x")
    sample_axis = _axis(sample_axis, "sample_axis", True)
    class_axis = _axis(class_axis, "class_axis", True)
    input = _arrays.check_input_kind(input)
    if metrics is None:
        names = [m for m in METRICS if sample_axis is not None or not _core.metric_needs_samples(m)]
    else:
        names = _arrays.check_metric_names(metrics, METRICS)
    if metrics is None and sample_axis is not None and -len(x.shape) <= sample_axis < len(x.shape) \
            and int(x.shape[sample_axis]) == 1:
        need = ", ".join(m for m in METRICS if _core.metric_needs_samples(m))
        raise ValueError(f"x: the sample axis (axis {sample_axis}) holds one sample; the default metric set includes "
                         f"{need}, which need at least 2: pass metrics=[...] without them, or sample_axis=None for "
                         "single predictions")
    kind, _ = _arrays.device_of(x)
    stream = _arrays.current_stream(x) if kind in (2, 13) else 0
    xcap = _arrays.capsule(x, stream=stream)
    shape = _core.score_shape(xcap, input, sample_axis, class_axis)
    half = _arrays.dtype_str(x) in ("float16", "bfloat16")  # results in float32 (x is widened exactly)
    outs = {m: _arrays.empty_like_framework(x, shape, dtype="float32" if half else None) for m in names}
    _core.score(
        xcap,
        [(m, _arrays.capsule(o, stream=stream, writable=True)) for m, o in outs.items()],
        input,
        sample_axis,
        class_axis,
        stream,
    )
    return outs


def _single(name: str, doc: str):
    def fn(x: Any, *, input: str = "probs", sample_axis: Optional[int] = 1, class_axis: Optional[int] = None) -> Any:
        return score(x, (name,), input=input, sample_axis=sample_axis, class_axis=class_axis)[name]

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc + "\n\nShape contract: see the module docstring (x ``[N, K, C, *spatial]`` -> ``[N, *spatial]``)."
    return fn


predictive_entropy = _single("predictive_entropy", "Entropy of the mean prediction, H[p̄] = -Σ_c p̄_c ln p̄_c.")
expected_entropy = _single("expected_entropy", "Mean entropy of the samples, (1/K) Σ_k H[p_k] (aleatoric). Needs K >= 2.")
bald = _single("bald", "BALD mutual information H[p̄] - (1/K) Σ_k H[p_k], clamped at 0. Needs K >= 2.")
least_confidence = _single("least_confidence", "1 - max_c p̄_c.")
margin = _single("margin", "1 - (p̄_(1) - p̄_(2)): a small gap between the top two classes scores high.")
ratio = _single("ratio", "p̄_(2) / p̄_(1), the ratio of the second to the first class probability.")
variation_ratio = _single(
    "variation_ratio", "Gal's variation ratio 1 - f_mode / K (f_mode: samples voting the modal class). Needs K >= 2."
)
max_mean_variation_ratio = _single(
    "max_mean_variation_ratio", "Variation ratio of the mean prediction, 1 - max_c p̄_c (equals least_confidence)."
)
mean_std = _single("mean_std", "Mean over classes of the sample standard deviation (ddof=1) of p_kc. Needs K >= 2.")
balentacq = _single(
    "balentacq",
    "BalEntAcq (Woo, ICLR 2023), computed as the reference implementation does; see docs/metrics.md. Needs K >= 2.",
)
